//! `oneOf`, compiled exactly: every branch's grammar must accept only values that no other
//! branch's schema accepts, so that each output matches exactly one branch. Disjointness is
//! proven from the schemas' top-level keywords (types, `const`/`enum` values checked with the
//! `jsonschema` crate, required properties a branch never writes, discriminating property
//! values); where a required property of another branch is all that tells them apart, the
//! branch is made disjoint by never writing that property. Otherwise the `oneOf` is refused
//! with a typed error before generation, never compiled as `anyOf`. Spec mode (MaskBench's,
//! which must accept every valid text) compiles the branches unchanged when they are proven
//! exclusive as written and keeps the former approximation (`oneOf` as `anyOf`) otherwise.

use super::{unsupported, Ctx, JsonSchemaMode, FORBIDDEN};
use crate::ConstraintError;
use serde_json::{Map, Value};

const ALL_TYPES: [&str; 7] = [
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// What a schema's top-level keywords say about every value it accepts (or, on the generating
/// side, every value its grammar writes).
struct Facts {
    /// Possible JSON types (`integer` stands for integral numbers, also inside `number`).
    types: Vec<&'static str>,
    /// `const`/`enum`: the only values.
    values: Option<Vec<Value>>,
    /// Properties every object has.
    required: Vec<String>,
    /// Declared property schemas.
    props: Map<String, Value>,
    /// Objects hold no key outside `props` (on the generating side: the grammar writes none).
    closed: bool,
    /// Keys never present.
    forbidden: Vec<String>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Facts {
    /// `generating`: facts about the grammar compiled from `s` in `mode` (which may write
    /// fewer keys than `s` allows), else about `s` itself.
    fn of(s: &Value, generating: Option<JsonSchemaMode>) -> Self {
        let m = match s {
            Value::Object(m) => m.clone(),
            Value::Bool(false) => {
                return Self {
                    types: vec![],
                    values: Some(vec![]),
                    required: vec![],
                    props: Map::new(),
                    closed: true,
                    forbidden: vec![],
                }
            }
            _ => Map::new(),
        };
        let mut types: Vec<&'static str> = match m.get("type") {
            Some(Value::String(t)) => ALL_TYPES.iter().copied().filter(|x| x == t).collect(),
            Some(Value::Array(a)) => ALL_TYPES
                .iter()
                .copied()
                .filter(|x| a.iter().any(|t| t == x))
                .collect(),
            _ => ALL_TYPES.to_vec(),
        };
        if m.get("nullable") == Some(&Value::Bool(true)) && !types.contains(&"null") {
            types.push("null");
        }
        if types.contains(&"number") && !types.contains(&"integer") {
            types.push("integer");
        }
        let mut values: Option<Vec<Value>> = m.get("enum").and_then(|e| e.as_array()).cloned();
        if let Some(c) = m.get("const") {
            values = Some(match values {
                Some(v) if !v.contains(c) => vec![],
                _ => vec![c.clone()],
            });
        }
        if let Some(v) = &mut values {
            v.retain(|x| {
                let t = json_type(x);
                types.contains(&t) || (t == "number" && types.contains(&"number"))
            });
        }
        let required: Vec<String> = m
            .get("required")
            .and_then(|r| r.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let props = m
            .get("properties")
            .and_then(|p| p.as_object())
            .cloned()
            .unwrap_or_default();
        let patterns = m
            .get("patternProperties")
            .and_then(|p| p.as_object())
            .is_some_and(|p| !p.is_empty());
        let additional = m.get("additionalProperties");
        let spec_closed = additional == Some(&Value::Bool(false)) && !patterns;
        // branches of a nested `anyOf`/`oneOf` may declare (and so write) more keys
        let nested = m.contains_key("anyOf") || m.contains_key("oneOf");
        let closed = match generating {
            Some(_) if nested => false,
            None | Some(JsonSchemaMode::Spec) => spec_closed,
            Some(JsonSchemaMode::Generation) => {
                let declares = !props.is_empty() || !required.is_empty();
                spec_closed || (additional.is_none() && !patterns && declares)
            }
        };
        let forbidden = match generating {
            Some(_) => m
                .get(FORBIDDEN)
                .and_then(|f| f.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            None => vec![],
        };
        Self {
            types,
            values,
            required,
            props,
            closed,
            forbidden,
        }
    }

    /// Whether the generating side never writes key `k`.
    fn never_writes(&self, k: &str) -> bool {
        self.forbidden.iter().any(|f| f == k) || (self.closed && !self.props.contains_key(k))
    }
}

impl Ctx<'_> {
    /// The `oneOf` branches (each already merged with the sibling keywords `rest`), made
    /// pairwise exclusive: a value the grammar of one writes is valid under no other branch.
    /// Errors when that cannot be proven (in spec mode: the branches as written, see the
    /// module's note).
    pub(super) fn one_of_exclusive(
        &self,
        rest: &Value,
        branches: &[Value],
        path: &str,
    ) -> Result<Vec<Value>, ConstraintError> {
        let spec = self.opts.json_schema_mode == JsonSchemaMode::Spec;
        let mut out = Vec::with_capacity(branches.len());
        for (i, b) in branches.iter().enumerate() {
            let mut gen = self.merge_values(rest, b, path, 0)?;
            for (j, other) in branches.iter().enumerate() {
                if i == j {
                    continue;
                }
                let other = self.merge_values(&Value::Object(Map::new()), other, path, 0)?;
                if self.exclusive(&gen, &other, 0) {
                    continue;
                }
                if spec {
                    return Ok(branches.to_vec());
                }
                // a property the other branch requires and this one does not: never write it
                let g = Facts::of(&gen, Some(self.opts.json_schema_mode));
                let o = Facts::of(&other, None);
                let fix = o.required.iter().find(|r| !g.required.contains(r)).cloned();
                let object_only_overlap = g
                    .types
                    .iter()
                    .filter(|t| o.types.contains(t))
                    .all(|t| *t == "object" || self.exclusive_on(&gen, &other, t, 0));
                match (fix, object_only_overlap, &mut gen) {
                    (Some(r), true, Value::Object(m)) => {
                        let e = m
                            .entry(FORBIDDEN.to_string())
                            .or_insert(Value::Array(vec![]));
                        if let Value::Array(a) = e {
                            a.push(Value::String(r));
                        }
                    }
                    _ => {
                        return Err(unsupported(
                            &format!(
                                "oneOf (branches {i} and {j} may both match one value; \
                                 only provably exclusive branches are compiled)"
                            ),
                            path,
                        ))
                    }
                }
            }
            out.push(gen);
        }
        Ok(out)
    }

    /// Whether no value written by the grammar of `gen` is valid under `other`.
    fn exclusive(&self, gen: &Value, other: &Value, depth: usize) -> bool {
        let g = Facts::of(gen, Some(self.opts.json_schema_mode));
        let o = Facts::of(other, None);
        g.types
            .iter()
            .filter(|t| o.types.contains(t))
            .all(|t| self.exclusive_on(gen, other, t, depth))
    }

    /// [`Self::exclusive`] for the values of type `t`.
    fn exclusive_on(&self, gen: &Value, other: &Value, t: &str, depth: usize) -> bool {
        if depth > 8 {
            return false;
        }
        let g = Facts::of(gen, Some(self.opts.json_schema_mode));
        let o = Facts::of(other, None);
        let of_type = |vs: &Vec<Value>| -> Vec<Value> {
            vs.iter()
                .filter(|v| {
                    let vt = json_type(v);
                    vt == t || (t == "number" && vt == "integer")
                })
                .cloned()
                .collect()
        };
        if let Some(vs) = &g.values {
            return of_type(vs).iter().all(|v| {
                // outside the other's `enum`/`const`, or failing its whole schema
                o.values
                    .as_ref()
                    .is_some_and(|ov| !ov.iter().any(|x| same_json(x, v)))
                    || self.is_valid(other, v) == Some(false)
            });
        }
        if let Some(vs) = &o.values {
            return of_type(vs)
                .iter()
                .all(|v| self.is_valid(gen, v) == Some(false));
        }
        if t != "object" {
            return false;
        }
        // a key the other requires that this grammar never writes
        if o.required.iter().any(|r| g.never_writes(r)) {
            return true;
        }
        // a key this grammar always writes that the other forbids or types apart
        g.required.iter().any(|r| {
            if o.closed && !o.props.contains_key(r) {
                return true;
            }
            match (g.props.get(r), o.props.get(r)) {
                (Some(gp), Some(op)) => {
                    let (Ok(gp), Ok(op)) = (
                        self.merge_values(&Value::Object(Map::new()), gp, "#", 0),
                        self.merge_values(&Value::Object(Map::new()), op, "#", 0),
                    ) else {
                        return false;
                    };
                    self.exclusive(&gp, &op, depth + 1)
                }
                _ => false,
            }
        })
    }

    /// Whether `v` is valid under `schema` (a subschema of the root: its `$ref`s must point
    /// into the root's `$defs`/`definitions`); `None` when that cannot be checked.
    fn is_valid(&self, schema: &Value, v: &Value) -> Option<bool> {
        let mut s = schema.clone();
        if let (Value::Object(m), Value::Object(root)) = (&mut s, self.root) {
            for k in ["$defs", "definitions", "$schema"] {
                if let (Some(x), false) = (root.get(k), m.contains_key(k)) {
                    m.insert(k.to_string(), x.clone());
                }
            }
        }
        if !refs_stay_in_defs(&s) {
            return None;
        }
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&s)
            .ok()?;
        Some(validator.is_valid(v))
    }
}

/// JSON equality as `enum`/`const` see it (numbers by value: `1` equals `1.0`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| same_json(p, q)))
        }
        _ => a == b,
    }
}

/// Whether every `$ref` in `v` points into `#/$defs/` or `#/definitions/`.
fn refs_stay_in_defs(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().all(|(k, x)| {
            if k == "$ref" {
                x.as_str()
                    .is_some_and(|r| r.starts_with("#/$defs/") || r.starts_with("#/definitions/"))
            } else {
                refs_stay_in_defs(x)
            }
        }),
        Value::Array(a) => a.iter().all(refs_stay_in_defs),
        _ => true,
    }
}
