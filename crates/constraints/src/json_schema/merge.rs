//! Schema algebra: the conjunction of two schemas (`allOf`, `$ref` with siblings, `anyOf`
//! distribution) and the negation forms of `not` folded into internal keywords.

use super::{invalid, type_of, unsupported, Ctx, ANNOTATIONS, FORBIDDEN, NOT_ENUM, NOT_PATTERN};
use crate::ConstraintError;
use serde_json::{Map, Value};

impl Ctx<'_> {
    /// Adds the negation of schema `n` to the schema `m` (for `not`), as type restrictions,
    /// forbidden properties or excluded values/patterns; other forms are unsupported.
    pub(super) fn negate_into(
        &self,
        m: &mut Map<String, Value>,
        n: &Value,
        path: &str,
        depth: usize,
    ) -> Result<(), ConstraintError> {
        if depth > 16 {
            return Err(unsupported("not (nested too deeply)", path));
        }
        let n = self.deref(n, path, depth)?;
        let o = match n {
            Value::Bool(false) => return Ok(()),
            Value::Bool(true) => {
                m.insert("enum".into(), Value::Array(vec![]));
                return Ok(());
            }
            Value::Object(o) => o,
            _ => return Err(invalid(path, "not must be a schema")),
        };
        let keys: Vec<&str> = o
            .keys()
            .map(|k| k.as_str())
            .filter(|k| !ANNOTATIONS.contains(k))
            .collect();
        let push = |m: &mut Map<String, Value>, kw: &str, v: Value| {
            let e = m.entry(kw.to_string()).or_insert(Value::Array(vec![]));
            if let Value::Array(a) = e {
                if !a.contains(&v) {
                    a.push(v);
                }
            }
        };
        match keys.as_slice() {
            [] => {
                m.insert("enum".into(), Value::Array(vec![]));
                Ok(())
            }
            ["not"] => {
                let merged =
                    self.merge_values(&Value::Object(m.clone()), &o["not"], path, depth)?;
                match merged {
                    Value::Object(x) => *m = x,
                    _ => {
                        m.insert("enum".into(), Value::Array(vec![]));
                    }
                }
                Ok(())
            }
            ["anyOf"] => {
                for sub in o["anyOf"].as_array().into_iter().flatten() {
                    self.negate_into(m, sub, path, depth + 1)?;
                }
                Ok(())
            }
            ["required"] => match o["required"].as_array().map(|a| a.as_slice()) {
                Some([one]) if one.is_string() => {
                    push(m, FORBIDDEN, one.clone());
                    Ok(())
                }
                Some([]) => {
                    m.insert("enum".into(), Value::Array(vec![]));
                    Ok(())
                }
                _ => Err(unsupported("not (required with several names)", path)),
            },
            ["type"] => {
                let neg: Vec<&str> = match &o["type"] {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(a) => a.iter().filter_map(|t| t.as_str()).collect(),
                    _ => return Err(invalid(path, "type must be a string or an array")),
                };
                let mut cur: Vec<String> = match m.get("type") {
                    None => ["object", "array", "string", "number", "boolean", "null"]
                        .iter()
                        .map(|t| t.to_string())
                        .collect(),
                    Some(Value::String(t)) => vec![t.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|t| t.as_str().map(String::from))
                        .collect(),
                    Some(_) => return Err(invalid(path, "type must be a string or an array")),
                };
                if m.get("nullable") == Some(&Value::Bool(true)) && !cur.iter().any(|t| t == "null")
                {
                    cur.push("null".into());
                }
                m.remove("nullable");
                if neg.contains(&"integer")
                    && !neg.contains(&"number")
                    && cur.iter().any(|t| t == "number")
                {
                    return Err(unsupported("not (type integer within number)", path));
                }
                cur.retain(|t| {
                    !(neg.contains(&t.as_str()) || t == "integer" && neg.contains(&"number"))
                });
                m.insert(
                    "type".into(),
                    Value::Array(cur.into_iter().map(Value::String).collect()),
                );
                Ok(())
            }
            ks if ks.iter().all(|k| matches!(*k, "enum" | "const" | "type")) => {
                let mut vals: Vec<Value> = o
                    .get("enum")
                    .and_then(|e| e.as_array())
                    .cloned()
                    .unwrap_or_default();
                if let Some(c) = o.get("const") {
                    vals.push(c.clone());
                }
                if let Some(t) = o.get("type") {
                    // `not {type: T, enum: E}` equals `not {enum: E}` when E lies within T
                    let ts: Vec<&str> = match t {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(a) => a.iter().filter_map(|t| t.as_str()).collect(),
                        _ => vec![],
                    };
                    if !vals.iter().all(|v| {
                        let ty = type_of(v);
                        ts.contains(&ty) || (ty == "integer" && ts.contains(&"number"))
                    }) {
                        return Err(unsupported("not (type with enum)", path));
                    }
                }
                for v in vals {
                    match v {
                        Value::Object(_) | Value::Array(_) => {
                            return Err(unsupported("not (enum of objects or arrays)", path))
                        }
                        v => push(m, NOT_ENUM, v),
                    }
                }
                Ok(())
            }
            ks if ks.iter().all(|k| matches!(*k, "pattern" | "type"))
                && ks.contains(&"pattern")
                && o.get("type").is_none_or(|t| t == "string") =>
            {
                let p = o["pattern"]
                    .as_str()
                    .ok_or_else(|| invalid(path, "pattern must be a string"))?;
                push(m, NOT_PATTERN, Value::String(p.to_string()));
                Ok(())
            }
            _ => Err(unsupported("not", path)),
        }
    }

    pub(super) fn deref(
        &self,
        v: &Value,
        path: &str,
        depth: usize,
    ) -> Result<Value, ConstraintError> {
        if let Value::Object(m) = v {
            if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                if depth > 16 {
                    return Err(unsupported("allOf (recursive $ref)", path));
                }
                let target = self.resolve(r, path)?.clone();
                let mut rest = m.clone();
                rest.remove("$ref");
                return self.merge_values(&target, &Value::Object(rest), path, depth + 1);
            }
        }
        Ok(v.clone())
    }

    /// The conjunction of two schemas as one schema (for `allOf`, `$ref` with siblings, and
    /// distributing `anyOf`).
    pub(super) fn merge_values(
        &self,
        a: &Value,
        b: &Value,
        path: &str,
        depth: usize,
    ) -> Result<Value, ConstraintError> {
        self.check_budget()?;
        if depth > 64 {
            return Err(ConstraintError::Budget(
                "allOf/$ref merging nested too deeply".into(),
            ));
        }
        let a = self.deref(a, path, depth)?;
        let b = self.deref(b, path, depth)?;
        let (a, b) = match (a, b) {
            (Value::Bool(false), _) | (_, Value::Bool(false)) => return Ok(Value::Bool(false)),
            (Value::Bool(true), x) | (x, Value::Bool(true)) => return Ok(x),
            (Value::Object(a), Value::Object(b)) => (a, b),
            _ => return Err(invalid(path, "a schema must be an object or a boolean")),
        };
        let mut out: Map<String, Value> = a.clone();
        // allOf nested inside: flatten first
        if let Some(Value::Array(all)) = b.get("allOf") {
            let mut rest = b.clone();
            rest.remove("allOf");
            let mut acc = Value::Object(out);
            acc = self.merge_values(&acc, &Value::Object(rest), path, depth + 1)?;
            for s in all {
                acc = self.merge_values(&acc, s, path, depth + 1)?;
            }
            return Ok(acc);
        }
        for (k, v) in &b {
            let Some(old) = out.get(k).cloned() else {
                out.insert(k.clone(), v.clone());
                continue;
            };
            if &old == v || ANNOTATIONS.contains(&k.as_str()) {
                continue;
            }
            let merged = match k.as_str() {
                "required" => {
                    let mut r = old.as_array().cloned().unwrap_or_default();
                    for x in v.as_array().into_iter().flatten() {
                        if !r.contains(x) {
                            r.push(x.clone());
                        }
                    }
                    Value::Array(r)
                }
                "properties" => {
                    let mut p = old.as_object().cloned().unwrap_or_default();
                    for (name, s) in v.as_object().into_iter().flatten() {
                        let new = match p.get(name) {
                            Some(o) => self.merge_values(o, s, path, depth + 1)?,
                            None => s.clone(),
                        };
                        p.insert(name.clone(), new);
                    }
                    Value::Object(p)
                }
                "type" => {
                    let list = |t: &Value| -> Vec<String> {
                        match t {
                            Value::String(s) => vec![s.clone()],
                            Value::Array(a) => a
                                .iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect(),
                            _ => vec![],
                        }
                    };
                    let (x, y) = (list(&old), list(v));
                    let mut r = Vec::new();
                    for t in &x {
                        if y.contains(t) {
                            r.push(t.clone());
                        } else if t == "integer" && y.iter().any(|s| s == "number") {
                            r.push("integer".into());
                        }
                    }
                    for t in &y {
                        if t == "integer" && x.iter().any(|s| s == "number") && !r.contains(t) {
                            r.push("integer".into());
                        }
                    }
                    Value::Array(r.into_iter().map(Value::String).collect())
                }
                "minimum" | "minLength" | "minItems" | "exclusiveMinimum"
                    if old.is_number() && v.is_number() =>
                {
                    if old.as_f64() >= v.as_f64() {
                        old
                    } else {
                        v.clone()
                    }
                }
                "maximum" | "maxLength" | "maxItems" | "exclusiveMaximum"
                    if old.is_number() && v.is_number() =>
                {
                    if old.as_f64() <= v.as_f64() {
                        old
                    } else {
                        v.clone()
                    }
                }
                "enum" => Value::Array(
                    old.as_array()
                        .into_iter()
                        .flatten()
                        .filter(|x| v.as_array().is_some_and(|b| b.contains(x)))
                        .cloned()
                        .collect(),
                ),
                "additionalProperties" | "items" => self.merge_values(&old, v, path, depth + 1)?,
                "not" => serde_json::json!({ "anyOf": [old, v] }),
                FORBIDDEN | NOT_ENUM | NOT_PATTERN => {
                    let mut r = old.as_array().cloned().unwrap_or_default();
                    for x in v.as_array().into_iter().flatten() {
                        if !r.contains(x) {
                            r.push(x.clone());
                        }
                    }
                    Value::Array(r)
                }
                "patternProperties" => {
                    let mut p = old.as_object().cloned().unwrap_or_default();
                    for (name, s) in v.as_object().into_iter().flatten() {
                        let new = match p.get(name) {
                            Some(o) => self.merge_values(o, s, path, depth + 1)?,
                            None => s.clone(),
                        };
                        p.insert(name.clone(), new);
                    }
                    Value::Object(p)
                }
                "$defs" | "definitions" => old,
                _ => return Err(unsupported(&format!("allOf (conflicting `{k}`)"), path)),
            };
            out.insert(k.clone(), merged);
        }
        Ok(Value::Object(out))
    }
}
