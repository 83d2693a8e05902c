//! Objects: declared properties (any order for a few, else the schema's order), `required`,
//! `additionalProperties`, `patternProperties` and `minProperties`.

use super::pattern::pattern_to_content;
use super::{invalid, Ctx, JsonSchemaMode, FORBIDDEN, MAX_FREE_ORDER, STR_CHAR, STR_CHAR_LOOSE};
use crate::grammar::Sym;
use crate::ConstraintError;
use serde_json::{Map, Value};

/// The named properties of an object and the value symbol of its undeclared keys.
type NamedProps = (Vec<Prop>, Option<Sym>);

/// A `patternProperties` entry.
struct KeyPattern {
    /// Regex for the JSON-encoded key (quotes included).
    key_re: String,
    /// Matches the key's content (between the quotes).
    matcher: regex_automata::meta::Regex,
    /// The schema of values under matching keys.
    schema: Value,
}

/// One property the object may write.
struct Prop {
    name: String,
    value: Sym,
    required: bool,
}

/// An object schema's keywords, read and checked once.
struct ObjectKeywords<'m> {
    props: Option<&'m Map<String, Value>>,
    required: Vec<&'m str>,
    /// Names the object may not have (from `not: {required: [..]}`).
    forbidden: Vec<&'m str>,
    /// The schema of undeclared keys (`None`: none allowed).
    additional: Option<Value>,
    /// Whether extra pairs under `additional` are written (generation mode writes them only
    /// where the schema allows them explicitly; required names are written either way).
    extras: bool,
    patterns: Vec<KeyPattern>,
    min_props: usize,
}

impl<'m> ObjectKeywords<'m> {
    fn read(
        m: &'m Map<String, Value>,
        path: &str,
        mode: JsonSchemaMode,
    ) -> Result<Self, ConstraintError> {
        let props = match m.get("properties") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(invalid(path, "properties must be an object")),
        };
        let mut required: Vec<&str> = Vec::new();
        match m.get("required") {
            None => {}
            Some(Value::Array(a)) => {
                for r in a {
                    required.push(
                        r.as_str()
                            .ok_or_else(|| invalid(path, "required entries must be strings"))?,
                    );
                }
            }
            // draft-3 style `required: true` inside a property is handled by the parent
            Some(Value::Bool(_)) => {}
            Some(_) => return Err(invalid(path, "required must be an array")),
        }
        let forbidden: Vec<&str> = m
            .get(FORBIDDEN)
            .and_then(|f| f.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let additional: Option<Value> = match m.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Some(Value::Bool(true)),
            Some(Value::Bool(false)) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(invalid(path, "additionalProperties must be a schema")),
        };
        let mut patterns = Vec::new();
        match m.get("patternProperties") {
            None => {}
            Some(Value::Object(pp)) => {
                for (pat, sch) in pp {
                    let pp_path = format!("{path}/patternProperties");
                    let content = pattern_to_content(pat, &pp_path)?;
                    let matcher = regex_automata::meta::Regex::new(&format!("^(?:{content})$"))
                        .map_err(|e| invalid(&pp_path, format!("pattern {pat:?}: {e}")))?;
                    patterns.push(KeyPattern {
                        key_re: format!("\"(?:{content})\""),
                        matcher,
                        schema: sch.clone(),
                    });
                }
            }
            Some(_) => return Err(invalid(path, "patternProperties must be an object")),
        }
        let min_props = match m.get("minProperties") {
            None => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| invalid(path, "minProperties must be a non-negative integer"))?
                as usize,
        };
        if min_props > 32 {
            return Err(ConstraintError::Budget(format!(
                "minProperties {min_props} over 32"
            )));
        }
        let declares =
            props.is_some_and(|p| !p.is_empty()) || !patterns.is_empty() || !required.is_empty();
        let extras = match mode {
            JsonSchemaMode::Spec => true,
            JsonSchemaMode::Generation => m.contains_key("additionalProperties") || !declares,
        };
        Ok(Self {
            props,
            required,
            forbidden,
            additional,
            extras,
            patterns,
            min_props,
        })
    }
}

impl Ctx<'_> {
    /// An object: the declared properties, then extra pairs where `patternProperties` or
    /// `additionalProperties` allow them.
    pub(super) fn object(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
    ) -> Result<Sym, ConstraintError> {
        let kw = ObjectKeywords::read(m, path, self.opts.json_schema_mode)?;
        if kw.required.iter().any(|r| kw.forbidden.contains(r)) {
            return Ok(self.nothing());
        }
        let Some((list, additional)) = self.object_props(&kw, path)? else {
            return Ok(self.nothing());
        };
        let extra_pair = self.extra_pair(&kw, &list, additional, path)?;
        if (1..=MAX_FREE_ORDER).contains(&list.len()) && kw.min_props <= 1 {
            self.props_any_order(&list, extra_pair, kw.min_props)
        } else {
            self.props_in_order(&list, extra_pair, kw.min_props)
        }
    }

    /// The schema a key must satisfy: its property schema (`base`) and every matching
    /// pattern's; `None` when neither applies.
    fn key_schema(
        &self,
        kw: &ObjectKeywords<'_>,
        name: &str,
        base: Option<&Value>,
        path: &str,
    ) -> Result<Option<Value>, ConstraintError> {
        let enc = serde_json::to_string(name).unwrap_or_default();
        let inner = &enc[1..enc.len() - 1];
        let mut acc: Option<Value> = base.cloned();
        for p in &kw.patterns {
            if p.matcher.is_match(inner) {
                acc = Some(match acc {
                    None => p.schema.clone(),
                    Some(a) => self.merge_values(&a, &p.schema, path, 0)?,
                });
            }
        }
        Ok(acc)
    }

    /// The named properties: the declared ones (but forbidden names) and the required ones
    /// that only a pattern or `additionalProperties` describes, with the value symbol of
    /// undeclared keys. `None`: a required property cannot be written.
    fn object_props(
        &mut self,
        kw: &ObjectKeywords<'_>,
        path: &str,
    ) -> Result<Option<NamedProps>, ConstraintError> {
        let mut list = Vec::new();
        for (name, s) in kw.props.into_iter().flatten() {
            if kw.forbidden.contains(&name.as_str()) {
                continue;
            }
            let p = format!(
                "{path}/properties/{}",
                name.replace('~', "~0").replace('/', "~1")
            );
            let value = match self.key_schema(kw, name, Some(s), path)? {
                Some(merged) if !kw.patterns.is_empty() => self.schema(&merged, &p)?,
                _ => self.schema(s, &p)?,
            };
            let required = kw.required.contains(&name.as_str())
                || s.get("required") == Some(&Value::Bool(true));
            list.push(Prop {
                name: name.clone(),
                value,
                required,
            });
        }
        let additional = match &kw.additional {
            Some(a) => Some(self.schema(a, &format!("{path}/additionalProperties"))?),
            None => None,
        };
        for r in &kw.required {
            if kw.props.is_some_and(|p| p.contains_key(*r)) {
                continue;
            }
            let value = match self.key_schema(kw, r, None, path)? {
                Some(sch) => self.schema(&sch, &format!("{path}/patternProperties"))?,
                None => match additional {
                    Some(a) => a,
                    None => return Ok(None),
                },
            };
            list.push(Prop {
                name: r.to_string(),
                value,
                required: true,
            });
        }
        Ok(Some((list, additional)))
    }

    /// One extra `key: value` pair (keys matching a pattern, then the remaining keys under
    /// `additionalProperties`), never reusing a named property's key; `None` when the object
    /// allows no extra keys.
    fn extra_pair(
        &mut self,
        kw: &ObjectKeywords<'_>,
        list: &[Prop],
        add_sym: Option<Sym>,
        path: &str,
    ) -> Result<Option<Sym>, ConstraintError> {
        let colon = self.lit(":");
        let add_sym = add_sym.filter(|_| kw.extras);
        let mut names: Vec<String> = list.iter().map(|p| p.name.clone()).collect();
        names.extend(kw.forbidden.iter().map(|f| f.to_string()));
        if kw.patterns.is_empty() {
            let Some(a) = add_sym else {
                return Ok(None);
            };
            // the declared names are excluded by a product with a trie of them
            // (determinizing one excluding regex per schema dominated compile time)
            let key = if !names.is_empty() {
                let neg: Vec<String> = names.iter().map(|n| key_regex(n)).collect();
                self.b.lexeme_combo(&[self.free_string(0)], &neg)
            } else if self.opts.json_schema_mode == JsonSchemaMode::Generation {
                self.b.lexeme(&self.free_string(0))
            } else {
                self.b.lexeme(&string_excluding(&names))
            };
            return Ok(Some(self.b.rule("addpair", vec![vec![key, colon, a]])));
        }
        let name_res: Vec<String> = names.iter().map(|n| key_regex(n)).collect();
        let mut alts = Vec::new();
        for (i, p) in kw.patterns.iter().enumerate() {
            let key = self
                .b
                .lexeme_combo(std::slice::from_ref(&p.key_re), &name_res);
            let v = self.schema(&p.schema, &format!("{path}/patternProperties/{i}"))?;
            alts.push(vec![key, colon, v]);
        }
        if let Some(a) = add_sym {
            let mut neg = name_res;
            neg.extend(kw.patterns.iter().map(|p| p.key_re.clone()));
            let key = self.b.lexeme_combo(&[self.free_string(0)], &neg);
            alts.push(vec![key, colon, a]);
        }
        Ok(Some(self.b.rule("extrapair", alts)))
    }

    /// Few named properties: any order, each at most once (one rule per subset written).
    fn props_any_order(
        &mut self,
        list: &[Prop],
        extra_pair: Option<Sym>,
        min_props: usize,
    ) -> Result<Sym, ConstraintError> {
        let (comma, colon) = (self.lit(","), self.lit(":"));
        let (lb, rb) = (self.lit("{"), self.lit("}"));
        let full = 1usize << list.len();
        // rule ids: subset index for started states, `full` for "nothing written yet"
        let ids: Vec<u32> = (0..=full).map(|_| self.b.new_rule("props")).collect();
        let req_mask: usize = list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.required)
            .fold(0, |a, (i, _)| a | (1 << i));
        let keys: Vec<Sym> = list
            .iter()
            .map(|p| self.lit(&serde_json::to_string(&p.name).unwrap_or_default()))
            .collect();
        for st in 0..=full {
            let (mask, started) = if st == full { (0, false) } else { (st, true) };
            let mut alts = Vec::new();
            for (i, p) in list.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    continue;
                }
                let mut seq = if started { vec![comma] } else { vec![] };
                seq.extend([keys[i], colon, p.value, Sym::N(ids[mask | (1 << i)])]);
                alts.push(seq);
            }
            if let Some(p) = extra_pair {
                let mut seq = if started { vec![comma] } else { vec![] };
                seq.extend([p, Sym::N(ids[mask])]);
                alts.push(seq);
            }
            if mask & req_mask == req_mask && (min_props == 0 || started) {
                alts.push(vec![]);
            }
            self.b.set_rule(ids[st], alts);
        }
        self.check_budget()?;
        Ok(self.b.rule("object", vec![vec![lb, Sym::N(ids[full]), rb]]))
    }

    /// Many named properties (or `minProperties` over 1): the schema's order, optional ones
    /// skippable, extra pairs after them; rules count the pairs written so far up to
    /// `min_props`.
    fn props_in_order(
        &mut self,
        list: &[Prop],
        extra_pair: Option<Sym>,
        min_props: usize,
    ) -> Result<Sym, ConstraintError> {
        let (comma, colon) = (self.lit(","), self.lit(":"));
        let (lb, rb) = (self.lit("{"), self.lit("}"));
        // tails by count of pairs written so far (capped at n); count > 0 means a comma first
        let n = min_props.max(1);
        let mut next: Vec<Sym> = Vec::with_capacity(n + 1);
        match extra_pair {
            Some(p) => {
                // Generation mode: at most `generation_max_items` extra pairs after the
                // counted ones.
                let more = match self.opts.json_schema_mode {
                    JsonSchemaMode::Spec => self.b.star(vec![comma, p]),
                    JsonSchemaMode::Generation => self.b.repeat(
                        vec![comma, p],
                        0,
                        Some(self.opts.generation_max_items),
                        self.opts.max_repeat,
                    )?,
                };
                // built from c = n down to 0
                let mut rev: Vec<Sym> = Vec::new();
                for c in (0..=n).rev() {
                    let sym = if c == n {
                        if c == 0 {
                            self.b.rule("addA", vec![vec![], vec![p, more]])
                        } else {
                            more
                        }
                    } else {
                        let after = *rev.last().unwrap_or(&more);
                        let mut seq = if c == 0 { vec![p] } else { vec![comma, p] };
                        seq.push(after);
                        let mut alts = vec![seq];
                        if c >= min_props {
                            alts.push(vec![]);
                        }
                        self.b.rule("addN", alts)
                    };
                    rev.push(sym);
                }
                rev.reverse();
                next = rev;
            }
            None => {
                for c in 0..=n {
                    let alts = if c >= min_props { vec![vec![]] } else { vec![] };
                    next.push(self.b.rule("end", alts));
                }
            }
        }
        for p in list.iter().rev() {
            let k = self.lit(&serde_json::to_string(&p.name).unwrap_or_default());
            let mut cur = Vec::with_capacity(n + 1);
            for c in 0..=n {
                let after = next[(c + 1).min(n)];
                let mut alts = vec![if c == 0 {
                    vec![k, colon, p.value, after]
                } else {
                    vec![comma, k, colon, p.value, after]
                }];
                if !p.required {
                    alts.push(vec![next[c]]);
                }
                cur.push(self.b.rule("prop", alts));
            }
            next = cur;
            self.check_budget()?;
        }
        Ok(self.b.rule("object", vec![vec![lb, next[0], rb]]))
    }
}

/// Regex for exactly this key, JSON-encoded with its quotes.
fn key_regex(name: &str) -> String {
    regex_syntax::escape(&serde_json::to_string(name).unwrap_or_default())
}

/// Regex for a JSON object key that is *not* one of `names` (so additional properties cannot
/// reuse a declared name with another schema).
fn string_excluding(names: &[String]) -> String {
    #[derive(Default)]
    struct Node {
        word: bool,
        kids: std::collections::BTreeMap<char, Node>,
    }
    let mut root = Node::default();
    for n in names {
        let enc = serde_json::to_string(n).unwrap_or_default();
        let inner = &enc[1..enc.len().saturating_sub(1).max(1)];
        if inner.contains('\\') {
            continue; // names needing escapes are not excluded
        }
        let mut cur = &mut root;
        for c in inner.chars() {
            cur = cur.kids.entry(c).or_default();
        }
        cur.word = true;
    }
    if root.kids.is_empty() && !root.word {
        return format!("\"{STR_CHAR}*\"");
    }
    fn go(n: &Node, out: &mut String) {
        out.push_str("(?:");
        let mut first = true;
        let mut alt = |out: &mut String| {
            if !first {
                out.push('|');
            }
            first = false;
        };
        if !n.word {
            alt(out);
        }
        // a character that leaves the trie, then anything
        alt(out);
        out.push_str(r#"(?:[^"\\\x00-\x1F"#);
        for c in n.kids.keys() {
            out.push_str(&regex_syntax::escape(&c.to_string()));
        }
        out.push(']');
        out.push_str(&STR_CHAR_LOOSE[r#"(?:[^"\\\x00-\x1F]"#.len()..]);
        out.push_str(STR_CHAR_LOOSE);
        out.push('*');
        for (c, k) in &n.kids {
            alt(out);
            out.push_str(&regex_syntax::escape(&c.to_string()));
            go(k, out);
        }
        out.push(')');
    }
    let mut s = String::from("\"");
    go(&root, &mut s);
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(re: &str, s: &str) -> bool {
        regex_automata::meta::Regex::new(&format!("^(?:{re})$"))
            .unwrap()
            .is_match(s)
    }

    #[test]
    fn excluded_keys() {
        let re = string_excluding(&["ab".into(), "a".into(), "b".into()]);
        for (s, want) in [
            ("\"ab\"", false),
            ("\"a\"", false),
            ("\"abc\"", true),
            ("\"\"", true),
            ("\"c\"", true),
            ("\"ba\"", true),
        ] {
            assert_eq!(full(&re, s), want, "{s}");
        }
    }
}
