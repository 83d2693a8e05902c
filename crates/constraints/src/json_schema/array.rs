//! Arrays: `items`/`prefixItems`/`additionalItems` with `minItems`/`maxItems` bounds.

use super::{invalid, Ctx, JsonSchemaMode};
use crate::grammar::Sym;
use crate::ConstraintError;
use serde_json::{Map, Value};

impl Ctx<'_> {
    pub(super) fn array(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
    ) -> Result<Sym, ConstraintError> {
        let mut prefix: Vec<Sym> = Vec::new();
        let mut rest: Option<Sym>;
        let items = m.get("items");
        let prefix_items = m.get("prefixItems");
        if let Some(Value::Array(p)) = prefix_items {
            for (i, s) in p.iter().enumerate() {
                prefix.push(self.schema(s, &format!("{path}/prefixItems/{i}"))?);
            }
            rest = match items {
                None => Some(self.any_value()),
                Some(s) => Some(self.schema(s, &format!("{path}/items"))?),
            };
        } else if let Some(Value::Array(p)) = items {
            for (i, s) in p.iter().enumerate() {
                prefix.push(self.schema(s, &format!("{path}/items/{i}"))?);
            }
            rest = match m.get("additionalItems") {
                None => Some(self.any_value()),
                Some(s) => Some(self.schema(s, &format!("{path}/additionalItems"))?),
            };
        } else {
            rest = match items {
                None => Some(self.any_value()),
                Some(s) => Some(self.schema(s, &format!("{path}/items"))?),
            };
        }
        if matches!(items, Some(Value::Bool(false)))
            || matches!(m.get("additionalItems"), Some(Value::Bool(false)))
                && matches!(items, Some(Value::Array(_)))
        {
            rest = None;
        }
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
        let min = get_u("minItems")?.unwrap_or(0) as usize;
        let mut max = get_u("maxItems")?.map(|x| x as usize);
        let k = prefix.len();
        // Generation mode: an array that sets no `maxItems` takes at most
        // `generation_max_items` items (more where `minItems` or the prefix needs them).
        if self.opts.json_schema_mode == JsonSchemaMode::Generation && max.is_none() {
            max = Some(k.max(min).max(self.opts.generation_max_items as usize));
        }
        let limit = k.max(min).max(max.unwrap_or(0));
        if limit > self.opts.max_repeat {
            return Err(ConstraintError::Budget(format!(
                "array bounds of {limit} items exceed the limit of {}",
                self.opts.max_repeat
            )));
        }
        let comma = self.lit(",");
        // tail(j): elements from index j on; j > 0 means each starts with a comma
        let mut memo: Vec<Option<Sym>> = vec![None; limit + 2];
        let tail = |j: usize, this: &mut Self, memo: &mut Vec<Option<Sym>>| -> Sym {
            // built iteratively from the end below
            let _ = (j, this);
            memo[j].unwrap_or(Sym::N(0))
        };
        // loop rule for j >= limit when unbounded
        let loop_sym = match (max, rest) {
            (None, Some(r)) => Some(self.b.star(vec![comma, r])),
            _ => None,
        };
        for j in (0..=limit).rev() {
            let elem = if j < k { Some(prefix[j]) } else { rest };
            let can_stop = j >= min;
            let can_continue = elem.is_some() && max.is_none_or(|mx| j < mx);
            let mut alts = Vec::new();
            if can_stop {
                alts.push(vec![]);
            }
            if can_continue {
                let e = elem.unwrap_or(Sym::N(0));
                let mut seq = if j > 0 { vec![comma, e] } else { vec![e] };
                if j == limit {
                    // unbounded tail
                    if let Some(l) = loop_sym {
                        seq.push(l);
                        alts.push(seq);
                    }
                } else {
                    seq.push(tail(j + 1, self, &mut memo));
                    alts.push(seq);
                }
            }
            memo[j] = Some(self.b.rule("items", alts));
        }
        let body = tail(0, self, &mut memo);
        let (lb, rb) = (self.lit("["), self.lit("]"));
        Ok(self.b.rule("array", vec![vec![lb, body, rb]]))
    }
}
