//! Strings (length, `pattern`, `format`, excluded values) and numbers (integer and decimal
//! bounds) as lexemes.

use super::formats::format_regex;
use super::pattern::pattern_to_content;
use super::range_regex::{int_range_regex, number_range_regex};
use super::{
    invalid, unsupported, Ctx, JsonSchemaMode, NOT_ENUM, NOT_PATTERN, STR_CHAR, STR_CHAR_GEN,
    STR_CHAR_LOOSE,
};
use crate::grammar::Sym;
use crate::ConstraintError;
use serde_json::{Map, Value};

impl Ctx<'_> {
    pub(super) fn string(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
    ) -> Result<Sym, ConstraintError> {
        let get_u = |k: &str| -> Result<Option<u64>, ConstraintError> {
            match m.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| {
                        v.as_f64()
                            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                            .map(|f| f as u64)
                    })
                    .map(Some)
                    .ok_or_else(|| invalid(path, format!("{k} must be a non-negative integer"))),
            }
        };
        let min = get_u("minLength")?;
        let max = get_u("maxLength")?;
        let pattern = m.get("pattern");
        let format = m.get("format").and_then(|f| f.as_str());
        let format_re = match format {
            None => None,
            Some(f) => format_regex(f, path)?,
        };
        let mut pos: Vec<String> = Vec::new();
        if let Some(p) = pattern {
            let p = p
                .as_str()
                .ok_or_else(|| invalid(path, "pattern must be a string"))?;
            let content = pattern_to_content(p, path)?;
            pos.push(format!("\"(?:{content})\""));
        }
        for f in format_re.into_iter().flatten() {
            pos.push(format!("\"(?:{f})\""));
        }
        let lim = self.opts.max_length_bound as u64;
        if min.unwrap_or(0) > lim || max.unwrap_or(0) > lim {
            return Err(ConstraintError::Budget(format!(
                "string length bound over {lim}"
            )));
        }
        // Generation mode counts characters that never spell a lone surrogate, and bounds
        // the length of a string that nothing else shapes (see `free_string`).
        let generation = self.opts.json_schema_mode == JsonSchemaMode::Generation;
        let ch = if generation {
            STR_CHAR_GEN
        } else {
            STR_CHAR_LOOSE
        };
        let shaped = !pos.is_empty();
        match (min, max) {
            (mn, None) if generation && !shaped => pos.push(self.free_string(mn.unwrap_or(0))),
            (None | Some(0), None) => {}
            (mn, None) => pos.push(format!("\"{ch}{{{},}}\"", mn.unwrap_or(0))),
            (mn, Some(mx)) => {
                if mn.unwrap_or(0) > mx {
                    return Ok(self.nothing());
                }
                pos.push(format!("\"{ch}{{{},{}}}\"", mn.unwrap_or(0), mx));
            }
        }
        if pos.is_empty() {
            pos.push(format!("\"{STR_CHAR}*\""));
        }
        let mut neg: Vec<String> = Vec::new();
        for v in m
            .get(NOT_ENUM)
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            if let Value::String(x) = v {
                neg.push(regex_syntax::escape(
                    &serde_json::to_string(x).unwrap_or_default(),
                ));
            }
        }
        for p in m
            .get(NOT_PATTERN)
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            let p = p
                .as_str()
                .ok_or_else(|| invalid(path, "pattern must be a string"))?;
            let content = pattern_to_content(p, path)?;
            neg.push(format!("\"(?:{content})\""));
        }
        Ok(self.b.lexeme_combo(&pos, &neg))
    }

    pub(super) fn number(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        integer: bool,
    ) -> Result<Sym, ConstraintError> {
        if let Some(mo) = m.get("multipleOf") {
            let ok = integer && mo.as_f64() == Some(1.0);
            if !ok {
                return Err(unsupported("multipleOf", path));
            }
        }
        let num = |k: &str| -> Result<Option<f64>, ConstraintError> {
            match m.get(k) {
                None => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(Value::Bool(_)) => Ok(None),
                Some(_) => Err(invalid(path, format!("{k} must be a number"))),
            }
        };
        let mut lo: Option<(f64, bool)> = num("minimum")?.map(|x| (x, false));
        let mut hi: Option<(f64, bool)> = num("maximum")?.map(|x| (x, false));
        // draft-4 boolean exclusivity
        if m.get("exclusiveMinimum") == Some(&Value::Bool(true)) {
            lo = lo.map(|(x, _)| (x, true));
        }
        if m.get("exclusiveMaximum") == Some(&Value::Bool(true)) {
            hi = hi.map(|(x, _)| (x, true));
        }
        if let Some(x) = num("exclusiveMinimum")? {
            if lo.is_none_or(|(l, _)| x >= l) {
                lo = Some((x, true));
            }
        }
        if let Some(x) = num("exclusiveMaximum")? {
            if hi.is_none_or(|(h, _)| x <= h) {
                hi = Some((x, true));
            }
        }
        const BIG: f64 = 1e17;
        let lo = lo.filter(|(x, _)| x.abs() < BIG);
        let hi = hi.filter(|(x, _)| x.abs() < BIG);
        let re = if integer {
            // integer bounds: inclusive integers
            let l = lo.map(|(x, e)| {
                if e {
                    x.floor() as i128 + 1
                } else {
                    x.ceil() as i128
                }
            });
            let h = hi.map(|(x, e)| {
                if e {
                    x.ceil() as i128 - 1
                } else {
                    x.floor() as i128
                }
            });
            if l.is_none() && h.is_none() {
                self.number_regex(true)
            } else {
                match int_range_regex(l, h) {
                    Some(r) => r,
                    None => return Ok(self.nothing()),
                }
            }
        } else if lo.is_none() && hi.is_none() {
            self.number_regex(false)
        } else {
            for (b, kw) in [(lo, "minimum"), (hi, "maximum")] {
                if let Some((x, _)) = b {
                    if x.fract() != 0.0 {
                        return Err(unsupported(
                            &format!("{kw} (non-integer bound on a number)"),
                            path,
                        ));
                    }
                }
            }
            match number_range_regex(
                lo.map(|(x, e)| (x as i128, e)),
                hi.map(|(x, e)| (x as i128, e)),
            ) {
                Some(r) => r,
                None => return Ok(self.nothing()),
            }
        };
        let neg: Vec<String> = m
            .get(NOT_ENUM)
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
            .filter(|v| v.is_number())
            .map(|v| regex_syntax::escape(&v.to_string()))
            .collect();
        // Generation mode: digits bounded on an open side too (bounds are below 10^17, so
        // the values at the bounds keep their spellings).
        let mut pos = vec![re];
        let open_side = lo.is_none() || hi.is_none() || !integer;
        if self.opts.json_schema_mode == JsonSchemaMode::Generation && open_side {
            let cap = self.number_regex(integer);
            if pos[0] != cap {
                pos.push(cap);
            }
        }
        Ok(self.b.lexeme_combo(&pos, &neg))
    }
}
