//! JSON Schema → grammar. Objects list their properties in the schema's order (optional ones
//! may be skipped; objects with few properties take them in any order); whitespace between
//! tokens is free up to 20 characters per gap (at least what `json.dumps` writes).

use crate::grammar::{GrammarBuilder, Sym};
use crate::{CompileOptions, ConstraintError};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Instant;

/// One JSON string character, as it appears in JSON text. A `\u` escape names a character
/// that is not a surrogate, or a high surrogate followed by a low one (JSON parsers such as
/// `serde_json` reject a lone surrogate).
pub(crate) const STR_CHAR: &str = concat!(
    r#"(?:[^"\\\x00-\x1F]|\\["\\/bfnrt]|"#,
    r"\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}",
    r"|[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}))"
);
/// [`STR_CHAR`] where the automaton repeats it per position: strings whose length is counted
/// (`minLength`/`maxLength`) and object keys that must differ from the declared names (one
/// copy per node of the names' trie). Any four hex digits after `\u`: telling surrogates
/// apart there multiplies the states (about 100 more MaskBench schemas went over the DFA
/// budget), so such a string may still contain a lone escaped surrogate (a known
/// approximation).
const STR_CHAR_LOOSE: &str = r#"(?:[^"\\\x00-\x1F]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})"#;
/// One character of a URI (format `uri`, `uri-reference`).
const URI_CHAR: &str = r#"(?:[\x21-\x7E&&[^<>`{|}^\\"%]]|%[0-9a-fA-F]{2})"#;
const NUMBER: &str = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?";
const INTEGER: &str = r"-?(?:0|[1-9][0-9]*)";
/// Whitespace between JSON tokens: bounded, so a model cannot loop on blank space (room for a
/// newline plus indentation).
const WS: &str = r"[ \t\n\r]{0,20}";
/// Objects with at most this many declared properties accept them in any order.
const MAX_FREE_ORDER: usize = 8;
/// Internal keyword: property names an object may not have (from `not: {required: [..]}`).
const FORBIDDEN: &str = "$fluent_forbidden";
/// Internal keyword: values excluded by `not: {enum/const}`.
const NOT_ENUM: &str = "$fluent_not_enum";
/// Internal keyword: string patterns excluded by `not: {pattern}`.
const NOT_PATTERN: &str = "$fluent_not_pattern";

/// Keywords that only annotate (never constrain).
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$schema",
    "$id",
    "id",
    "$comment",
    "default",
    "examples",
    "example",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
    "contentMediaType",
    "contentEncoding",
    "$anchor",
    "$vocabulary",
    "discriminator",
];

/// Standard validation keywords this compiler does not implement.
const UNSUPPORTED: &[&str] = &[
    "propertyNames",
    "maxProperties",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
    "if",
    "then",
    "else",
    "contains",
    "minContains",
    "maxContains",
    "uniqueItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "$recursiveRef",
    "$dynamicAnchor",
    "$recursiveAnchor",
];

fn unsupported(keyword: &str, path: &str) -> ConstraintError {
    ConstraintError::Unsupported {
        keyword: keyword.to_string(),
        path: if path.is_empty() {
            "#".into()
        } else {
            path.into()
        },
    }
}

fn invalid(path: &str, message: impl Into<String>) -> ConstraintError {
    ConstraintError::InvalidSchema {
        path: if path.is_empty() {
            "#".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

/// Compiles `schema` into a grammar builder and its root symbol.
pub(crate) fn compile(
    schema: &Value,
    opts: &CompileOptions,
    started: Instant,
) -> Result<(GrammarBuilder, Sym), ConstraintError> {
    let mut c = Ctx {
        b: GrammarBuilder::default(),
        root: schema,
        opts,
        started,
        refs: HashMap::new(),
        any: None,
        depth: 0,
    };
    c.b.skip = Some(WS.to_string());
    let root = c.schema(schema, "")?;
    Ok((c.b, root))
}

struct Ctx<'a> {
    b: GrammarBuilder,
    root: &'a Value,
    opts: &'a CompileOptions,
    started: Instant,
    refs: HashMap<String, u32>,
    any: Option<Sym>,
    depth: usize,
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                "integer"
            } else {
                "number"
            }
        }
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl<'a> Ctx<'a> {
    fn check_budget(&self) -> Result<(), ConstraintError> {
        if self.started.elapsed() > self.opts.max_compile_time {
            return Err(ConstraintError::Budget(format!(
                "compile time over {:?}",
                self.opts.max_compile_time
            )));
        }
        if self.b.rules.len() > self.opts.max_rules {
            return Err(ConstraintError::Budget(format!(
                "over {} grammar rules",
                self.opts.max_rules
            )));
        }
        Ok(())
    }

    fn lit(&mut self, s: &str) -> Sym {
        self.b.literal(s)
    }

    /// Any JSON value.
    fn any_value(&mut self) -> Sym {
        if let Some(a) = self.any {
            return a;
        }
        let value = self.b.new_rule("value");
        self.any = Some(Sym::N(value));
        let string = self.b.lexeme(&format!("\"{STR_CHAR}*\""));
        let number = self.b.lexeme(NUMBER);
        let (lb, rb, lk, rk, comma, colon) = (
            self.lit("{"),
            self.lit("}"),
            self.lit("["),
            self.lit("]"),
            self.lit(","),
            self.lit(":"),
        );
        let (t, f, n) = (self.lit("true"), self.lit("false"), self.lit("null"));
        let pair = self
            .b
            .rule("pair", vec![vec![string, colon, Sym::N(value)]]);
        let pairs = self.b.new_rule("pairs");
        self.b
            .set_rule(pairs, vec![vec![pair], vec![Sym::N(pairs), comma, pair]]);
        let elems = self.b.new_rule("elems");
        self.b.set_rule(
            elems,
            vec![
                vec![Sym::N(value)],
                vec![Sym::N(elems), comma, Sym::N(value)],
            ],
        );
        self.b.set_rule(
            value,
            vec![
                vec![lb, rb],
                vec![lb, Sym::N(pairs), rb],
                vec![lk, rk],
                vec![lk, Sym::N(elems), rk],
                vec![string],
                vec![number],
                vec![t],
                vec![f],
                vec![n],
            ],
        );
        Sym::N(value)
    }

    fn nothing(&mut self) -> Sym {
        self.b.rule("false", vec![])
    }

    fn resolve(&self, r: &str, path: &str) -> Result<&'a Value, ConstraintError> {
        let Some(frag) = r.strip_prefix('#') else {
            return Err(unsupported("$ref (remote or relative reference)", path));
        };
        if frag.is_empty() {
            return Ok(self.root);
        }
        if !frag.starts_with('/') {
            return Err(unsupported("$ref (anchor)", path));
        }
        let mut cur = self.root;
        for raw in frag[1..].split('/') {
            let tok = percent_decode(raw).replace("~1", "/").replace("~0", "~");
            cur = match cur {
                Value::Object(m) => m.get(&tok),
                Value::Array(a) => tok.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            }
            .ok_or_else(|| invalid(path, format!("$ref {r:?} points nowhere")))?;
        }
        Ok(cur)
    }

    fn schema(&mut self, s: &Value, path: &str) -> Result<Sym, ConstraintError> {
        self.check_budget()?;
        self.depth += 1;
        if self.depth > 150 {
            self.depth -= 1;
            return Err(ConstraintError::Budget(
                "schema nesting deeper than 150".into(),
            ));
        }
        let r = self.schema_inner(s, path);
        self.depth -= 1;
        r
    }

    fn schema_inner(&mut self, s: &Value, path: &str) -> Result<Sym, ConstraintError> {
        let m = match s {
            Value::Bool(true) => return Ok(self.any_value()),
            Value::Bool(false) => return Ok(self.nothing()),
            Value::Object(m) => m,
            _ => return Err(invalid(path, "a schema must be an object or a boolean")),
        };
        if let Some(r) = m.get("$ref") {
            let r = r
                .as_str()
                .ok_or_else(|| invalid(path, "$ref must be a string"))?;
            let has_siblings = m
                .keys()
                .any(|k| k != "$ref" && !ANNOTATIONS.contains(&k.as_str()));
            if !has_siblings {
                return self.ref_rule(r, path);
            }
            let target = self.resolve(r, path)?.clone();
            let mut rest = m.clone();
            rest.remove("$ref");
            let merged = self.merge_values(&target, &Value::Object(rest), path, 0)?;
            return self.schema(&merged, path);
        }
        if let Some(n) = m.get("not") {
            let mut rest = m.clone();
            rest.remove("not");
            let n = n.clone();
            self.negate_into(&mut rest, &n, path, 0)?;
            return self.schema(&Value::Object(rest), path);
        }
        for k in m.keys() {
            if UNSUPPORTED.contains(&k.as_str()) {
                // trivially true forms are fine
                let v = &m[k];
                let trivial = match k.as_str() {
                    "uniqueItems" => v == &Value::Bool(false),
                    "minContains" => v.as_u64() == Some(0),
                    _ => false,
                };
                if !trivial {
                    return Err(unsupported(k, path));
                }
            }
        }
        if let Some(all) = m.get("allOf") {
            let all = all
                .as_array()
                .ok_or_else(|| invalid(path, "allOf must be an array"))?;
            let mut rest = m.clone();
            rest.remove("allOf");
            let only_annotations = rest.keys().all(|k| ANNOTATIONS.contains(&k.as_str()));
            let non_trivial: Vec<&Value> = all
                .iter()
                .filter(|x| **x != Value::Bool(true) && **x != serde_json::json!({}))
                .collect();
            if only_annotations && non_trivial.len() == 1 {
                // keep `$ref`s as rules (recursion-safe) instead of inlining them
                return self.schema(non_trivial[0], path);
            }
            let mut acc = Value::Object(rest);
            for sub in all {
                acc = self.merge_values(&acc, sub, path, 0)?;
            }
            return self.schema(&acc, path);
        }
        let any_of = m.get("anyOf");
        let one_of = m.get("oneOf");
        if any_of.is_some() || one_of.is_some() {
            let mut rest = m.clone();
            rest.remove("anyOf");
            rest.remove("oneOf");
            let mut options: Vec<Value> = vec![Value::Object(rest)];
            for (kw, list) in [("anyOf", any_of), ("oneOf", one_of)] {
                let Some(list) = list else { continue };
                let list = list
                    .as_array()
                    .ok_or_else(|| invalid(path, format!("{kw} must be an array")))?;
                let mut next = Vec::new();
                for o in &options {
                    for sub in list {
                        next.push(self.merge_values(o, sub, path, 0)?);
                        if next.len() > 256 {
                            return Err(ConstraintError::Budget(format!(
                                "{kw} expands to over 256 alternatives"
                            )));
                        }
                    }
                }
                options = next;
            }
            let mut alts = Vec::new();
            for (i, o) in options.iter().enumerate() {
                let p = format!("{path}/anyOf/{i}");
                alts.push(vec![self.schema(o, &p)?]);
            }
            return Ok(self.b.rule("anyOf", alts));
        }
        // type set
        let mut types: Vec<&str> = match m.get("type") {
            None => vec!["object", "array", "string", "number", "boolean", "null"],
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(a)) => {
                let mut v = Vec::new();
                for t in a {
                    v.push(
                        t.as_str()
                            .ok_or_else(|| invalid(path, "type entries must be strings"))?,
                    );
                }
                v
            }
            Some(_) => return Err(invalid(path, "type must be a string or an array")),
        };
        if m.get("nullable") == Some(&Value::Bool(true)) && !types.contains(&"null") {
            types.push("null");
        }
        if types.contains(&"number") {
            types.retain(|t| *t != "integer");
        }
        let not_enum: Vec<Value> = m
            .get(NOT_ENUM)
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default();
        if not_enum.contains(&Value::Null) {
            types.retain(|t| *t != "null");
        }
        let type_ok = |t: &str| types.contains(&t) || (t == "integer" && types.contains(&"number"));
        if let Some(c) = m.get("const") {
            if !type_ok(type_of(c)) || not_enum.contains(c) {
                return Ok(self.nothing());
            }
            if let Some(e) = m.get("enum").and_then(|e| e.as_array()) {
                if !e.contains(c) {
                    return Ok(self.nothing());
                }
            }
            let v = self.value_literal(c)?;
            return Ok(self.b.rule("const", vec![vec![v]]));
        }
        if let Some(e) = m.get("enum") {
            let e = e
                .as_array()
                .ok_or_else(|| invalid(path, "enum must be an array"))?;
            let mut alts = Vec::new();
            for v in e {
                let ty = type_of(v);
                let ok = type_ok(ty)
                    || (ty == "number"
                        && types.contains(&"integer")
                        && v.as_f64().is_some_and(|f| f.fract() == 0.0));
                if ok && !not_enum.contains(v) {
                    alts.push(vec![self.value_literal(v)?]);
                }
            }
            return Ok(self.b.rule("enum", alts));
        }
        let mut alts = Vec::new();
        for t in types {
            let sym = match t {
                "object" => self.object(m, path)?,
                "array" => self.array(m, path)?,
                "string" => self.string(m, path)?,
                "number" => self.number(m, path, false)?,
                "integer" => self.number(m, path, true)?,
                "boolean" => {
                    let mut alts = Vec::new();
                    for (v, text) in [(true, "true"), (false, "false")] {
                        if !not_enum.contains(&Value::Bool(v)) {
                            alts.push(vec![self.lit(text)]);
                        }
                    }
                    self.b.rule("bool", alts)
                }
                "null" => self.lit("null"),
                other => return Err(invalid(path, format!("unknown type {other:?}"))),
            };
            alts.push(vec![sym]);
        }
        Ok(self.b.rule("types", alts))
    }

    /// Adds the negation of schema `n` to the schema `m` (for `not`), as type restrictions,
    /// forbidden properties or excluded values/patterns; other forms are unsupported.
    fn negate_into(
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

    fn ref_rule(&mut self, r: &str, path: &str) -> Result<Sym, ConstraintError> {
        if let Some(&id) = self.refs.get(r) {
            return Ok(Sym::N(id));
        }
        let id = self.b.new_rule("ref");
        self.refs.insert(r.to_string(), id);
        let target = self.resolve(r, path)?;
        let p = r.trim_start_matches('#').to_string();
        let s = self.schema(target, &p)?;
        self.b.set_rule(id, vec![vec![s]]);
        Ok(Sym::N(id))
    }

    /// Resolves a top-level `$ref` of a schema for merging.
    fn deref(&self, v: &Value, path: &str, depth: usize) -> Result<Value, ConstraintError> {
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
    fn merge_values(
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

    /// A grammar for exactly this JSON value (with free whitespace between tokens).
    fn value_literal(&mut self, v: &Value) -> Result<Sym, ConstraintError> {
        Ok(match v {
            Value::Array(a) => {
                let mut seq = vec![self.lit("[")];
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        seq.push(self.lit(","));
                    }
                    seq.push(self.value_literal(x)?);
                }
                seq.push(self.lit("]"));
                self.b.rule("lit", vec![seq])
            }
            Value::Object(m) => {
                let mut seq = vec![self.lit("{")];
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        seq.push(self.lit(","));
                    }
                    let key = serde_json::to_string(k).unwrap_or_default();
                    seq.push(self.lit(&key));
                    seq.push(self.lit(":"));
                    seq.push(self.value_literal(x)?);
                }
                seq.push(self.lit("}"));
                self.b.rule("lit", vec![seq])
            }
            other => {
                let s = serde_json::to_string(other).unwrap_or_default();
                self.lit(&s)
            }
        })
    }

    fn object(&mut self, m: &Map<String, Value>, path: &str) -> Result<Sym, ConstraintError> {
        let empty = Map::new();
        let props = match m.get("properties") {
            None => &empty,
            Some(Value::Object(p)) => p,
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
        if required.iter().any(|r| forbidden.contains(r)) {
            return Ok(self.nothing());
        }
        let additional: Option<Value> = match m.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Some(Value::Bool(true)),
            Some(Value::Bool(false)) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(invalid(path, "additionalProperties must be a schema")),
        };
        // patternProperties: (key regex for the JSON-encoded key, matcher of the content, schema)
        let mut patterns: Vec<(String, regex_automata::meta::Regex, Value)> = Vec::new();
        match m.get("patternProperties") {
            None => {}
            Some(Value::Object(pp)) => {
                for (pat, sch) in pp {
                    let pp_path = format!("{path}/patternProperties");
                    let content = pattern_to_content(pat, &pp_path)?;
                    let matcher = regex_automata::meta::Regex::new(&format!("^(?:{content})$"))
                        .map_err(|e| invalid(&pp_path, format!("pattern {pat:?}: {e}")))?;
                    patterns.push((format!("\"(?:{content})\""), matcher, sch.clone()));
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
        // the schema a key must satisfy: its property schema and every matching pattern's
        let key_schema = |c: &Self,
                          name: &str,
                          base: Option<&Value>|
         -> Result<Option<Value>, ConstraintError> {
            let enc = serde_json::to_string(name).unwrap_or_default();
            let inner = &enc[1..enc.len() - 1];
            let mut acc: Option<Value> = base.cloned();
            for (_, matcher, sch) in &patterns {
                if matcher.is_match(inner) {
                    acc = Some(match acc {
                        None => sch.clone(),
                        Some(a) => c.merge_values(&a, sch, path, 0)?,
                    });
                }
            }
            Ok(acc)
        };
        // (name, schema, required)
        let mut list: Vec<(String, Sym, bool)> = Vec::new();
        for (name, s) in props {
            if forbidden.contains(&name.as_str()) {
                continue;
            }
            let p = format!(
                "{path}/properties/{}",
                name.replace('~', "~0").replace('/', "~1")
            );
            let sym = match key_schema(self, name, Some(s))? {
                Some(merged) if !patterns.is_empty() => self.schema(&merged, &p)?,
                _ => self.schema(s, &p)?,
            };
            let req =
                required.contains(&name.as_str()) || s.get("required") == Some(&Value::Bool(true));
            list.push((name.clone(), sym, req));
        }
        let add_sym = match &additional {
            Some(a) => Some(self.schema(a, &format!("{path}/additionalProperties"))?),
            None => None,
        };
        for r in &required {
            if !props.contains_key(*r) {
                match key_schema(self, r, None)? {
                    Some(sch) => {
                        let sym = self.schema(&sch, &format!("{path}/patternProperties"))?;
                        list.push((r.to_string(), sym, true));
                    }
                    None => match add_sym {
                        Some(a) => list.push((r.to_string(), a, true)),
                        None => return Ok(self.nothing()),
                    },
                }
            }
        }
        let (comma, colon) = (self.lit(","), self.lit(":"));
        // names that extra pairs may not use
        let mut names: Vec<String> = list.iter().map(|(n, _, _)| n.clone()).collect();
        names.extend(forbidden.iter().map(|f| f.to_string()));
        // extra pairs: keys matching a pattern, then the remaining keys (additionalProperties)
        let extra_pair = if patterns.is_empty() {
            match add_sym {
                Some(a) => {
                    // the declared names are excluded by a product with a trie of them
                    // (determinizing one excluding regex per schema dominated compile time)
                    let key = if !names.is_empty() {
                        let neg: Vec<String> = names
                            .iter()
                            .map(|n| {
                                regex_syntax::escape(&serde_json::to_string(n).unwrap_or_default())
                            })
                            .collect();
                        self.b.lexeme_combo(&[format!("\"{STR_CHAR}*\"")], &neg)
                    } else {
                        self.b.lexeme(&string_excluding(&names))
                    };
                    Some(self.b.rule("addpair", vec![vec![key, colon, a]]))
                }
                None => None,
            }
        } else {
            let name_res: Vec<String> = names
                .iter()
                .map(|n| regex_syntax::escape(&serde_json::to_string(n).unwrap_or_default()))
                .collect();
            let mut alts = Vec::new();
            for (i, (key_re, _, sch)) in patterns.iter().enumerate() {
                let key = self.b.lexeme_combo(std::slice::from_ref(key_re), &name_res);
                let v = self.schema(sch, &format!("{path}/patternProperties/{i}"))?;
                alts.push(vec![key, colon, v]);
            }
            if let Some(a) = add_sym {
                let mut neg = name_res.clone();
                neg.extend(patterns.iter().map(|p| p.0.clone()));
                let key = self.b.lexeme_combo(&[format!("\"{STR_CHAR}*\"")], &neg);
                alts.push(vec![key, colon, a]);
            }
            Some(self.b.rule("extrapair", alts))
        };
        let (lb, rb) = (self.lit("{"), self.lit("}"));
        // few declared properties: any order, each at most once (one rule per subset written)
        let k = list.len();
        if (1..=MAX_FREE_ORDER).contains(&k) && min_props <= 1 {
            let full = 1usize << k;
            // rule ids: subset index for started states, `full` for "nothing written yet"
            let ids: Vec<u32> = (0..=full).map(|_| self.b.new_rule("props")).collect();
            let req_mask: usize = list
                .iter()
                .enumerate()
                .filter(|(_, x)| x.2)
                .fold(0, |a, (i, _)| a | (1 << i));
            let keys: Vec<Sym> = list
                .iter()
                .map(|(name, _, _)| self.lit(&serde_json::to_string(name).unwrap_or_default()))
                .collect();
            for st in 0..=full {
                let (mask, started) = if st == full { (0, false) } else { (st, true) };
                let mut alts = Vec::new();
                for (i, (_, sym, _)) in list.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        continue;
                    }
                    let mut seq = if started { vec![comma] } else { vec![] };
                    seq.extend([keys[i], colon, *sym, Sym::N(ids[mask | (1 << i)])]);
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
            return Ok(self.b.rule("object", vec![vec![lb, Sym::N(ids[full]), rb]]));
        }
        // tails by count of pairs written so far (capped at n); count > 0 means a comma first
        let n = min_props.max(1);
        let mut next: Vec<Sym> = Vec::with_capacity(n + 1);
        match extra_pair {
            Some(p) => {
                let more = self.b.star(vec![comma, p]);
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
        for (name, sym, req) in list.iter().rev() {
            let key = serde_json::to_string(name).unwrap_or_default();
            let k = self.lit(&key);
            let mut cur = Vec::with_capacity(n + 1);
            for c in 0..=n {
                let after = next[(c + 1).min(n)];
                let mut alts = vec![if c == 0 {
                    vec![k, colon, *sym, after]
                } else {
                    vec![comma, k, colon, *sym, after]
                }];
                if !req {
                    alts.push(vec![next[c]]);
                }
                cur.push(self.b.rule("prop", alts));
            }
            next = cur;
            self.check_budget()?;
        }
        Ok(self.b.rule("object", vec![vec![lb, next[0], rb]]))
    }

    fn array(&mut self, m: &Map<String, Value>, path: &str) -> Result<Sym, ConstraintError> {
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
        let max = get_u("maxItems")?.map(|x| x as usize);
        let k = prefix.len();
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

    fn string(&mut self, m: &Map<String, Value>, path: &str) -> Result<Sym, ConstraintError> {
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
        if let Some(f) = format_re {
            pos.push(format!("\"(?:{f})\""));
        }
        let lim = self.opts.max_length_bound as u64;
        if min.unwrap_or(0) > lim || max.unwrap_or(0) > lim {
            return Err(ConstraintError::Budget(format!(
                "string length bound over {lim}"
            )));
        }
        match (min, max) {
            (None | Some(0), None) => {}
            (mn, None) => pos.push(format!("\"{STR_CHAR_LOOSE}{{{},}}\"", mn.unwrap_or(0))),
            (mn, Some(mx)) => {
                if mn.unwrap_or(0) > mx {
                    return Ok(self.nothing());
                }
                pos.push(format!(
                    "\"{STR_CHAR_LOOSE}{{{},{}}}\"",
                    mn.unwrap_or(0),
                    mx
                ));
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

    fn number(
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
                INTEGER.to_string()
            } else {
                match int_range_regex(l, h) {
                    Some(r) => r,
                    None => return Ok(self.nothing()),
                }
            }
        } else if lo.is_none() && hi.is_none() {
            NUMBER.to_string()
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
        Ok(self.b.lexeme_combo(&[re], &neg))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Regex for the *content* of a JSON string (between the quotes) for a known `format`;
/// `Ok(None)` for formats that are only annotations here (not validated by the spec's
/// default vocabulary and unknown to us).
fn format_regex(f: &str, path: &str) -> Result<Option<String>, ConstraintError> {
    const DATE: &str = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])";
    const TIME: &str = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";
    const LABEL: &str = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?";
    const OCTET: &str = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    Ok(Some(match f {
        "date" => DATE.to_string(),
        "time" => TIME.to_string(),
        "date-time" => format!("{DATE}[Tt]{TIME}"),
        "email" => format!(r"[a-zA-Z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{LABEL}(?:\.{LABEL})*"),
        "hostname" => format!(r"{LABEL}(?:\.{LABEL})*"),
        "uuid" => r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
            .to_string(),
        "ipv4" => format!(r"(?:{OCTET}\.){{3}}{OCTET}"),
        // RFC 3986: printable ASCII but for a few delimiters, `%` only before two hex digits
        // (non-ASCII characters make an IRI, which the `uri` validators reject).
        "uri" => format!("[a-zA-Z][a-zA-Z0-9+.\\-]*:{URI_CHAR}*"),
        "uri-reference" => format!("{URI_CHAR}*"),
        "ipv6"
        | "duration"
        | "idn-email"
        | "idn-hostname"
        | "iri"
        | "iri-reference"
        | "uri-template"
        | "json-pointer"
        | "relative-json-pointer"
        | "regex" => return Err(unsupported(&format!("format: {f}"), path)),
        _ => return Ok(None),
    }))
}

/// Converts an ECMA-style `pattern` (a search, unless anchored) into a regex for the content
/// of a JSON string: characters that JSON would escape are left out.
fn pattern_to_content(p: &str, path: &str) -> Result<String, ConstraintError> {
    use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Hir, HirKind, Look};
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(p)
        .map_err(|e| {
            let offset = match &e {
                regex_syntax::Error::Parse(x) => x.span().start.offset,
                regex_syntax::Error::Translate(x) => x.span().start.offset,
                _ => 0,
            };
            ConstraintError::Regex {
                pattern: p.to_string(),
                offset,
                message: format!("{e} (in `pattern` at {path})"),
            }
        })?;
    // characters allowed unescaped in a JSON string
    let mut allowed = ClassUnicode::new([ClassUnicodeRange::new('\u{20}', '\u{10FFFF}')]);
    allowed.difference(&ClassUnicode::new([
        ClassUnicodeRange::new('"', '"'),
        ClassUnicodeRange::new('\\', '\\'),
    ]));
    fn strip(h: &Hir) -> (Hir, bool, bool) {
        match h.kind() {
            HirKind::Concat(xs) => {
                let mut v: Vec<Hir> = xs.clone();
                let mut s = false;
                let mut e = false;
                if let Some(HirKind::Look(Look::Start | Look::StartLF)) =
                    v.first().map(|x| x.kind())
                {
                    v.remove(0);
                    s = true;
                }
                if let Some(HirKind::Look(Look::End | Look::EndLF)) = v.last().map(|x| x.kind()) {
                    v.pop();
                    e = true;
                }
                (Hir::concat(v), s, e)
            }
            HirKind::Capture(c) => strip(&c.sub),
            HirKind::Look(Look::Start | Look::StartLF) => (Hir::empty(), true, false),
            HirKind::Look(Look::End | Look::EndLF) => (Hir::empty(), false, true),
            HirKind::Alternation(xs) => {
                let parts: Vec<(Hir, bool, bool)> = xs.iter().map(strip).collect();
                let all_s = parts.iter().all(|p| p.1);
                let all_e = parts.iter().all(|p| p.2);
                if (all_s || parts.iter().all(|p| !p.1)) && (all_e || parts.iter().all(|p| !p.2)) {
                    (
                        Hir::alternation(parts.into_iter().map(|p| p.0).collect()),
                        all_s,
                        all_e,
                    )
                } else {
                    (h.clone(), false, false)
                }
            }
            _ => (h.clone(), false, false),
        }
    }
    fn map(h: &Hir, allowed: &ClassUnicode) -> Result<Hir, String> {
        Ok(match h.kind() {
            HirKind::Empty => Hir::empty(),
            HirKind::Literal(l) => {
                let s = String::from_utf8_lossy(&l.0).into_owned();
                if s.chars()
                    .any(|c| c == '"' || c == '\\' || (c as u32) < 0x20)
                {
                    return Ok(Hir::fail());
                }
                h.clone()
            }
            HirKind::Class(Class::Unicode(c)) => {
                let mut c = c.clone();
                c.intersect(allowed);
                Hir::class(Class::Unicode(c))
            }
            HirKind::Class(Class::Bytes(_)) => return Err("byte classes".into()),
            HirKind::Look(_) => return Err("anchors or word boundaries inside".into()),
            HirKind::Repetition(r) => {
                let mut r = r.clone();
                let sub = map(&r.sub, allowed)?;
                // group the operand so that printing cannot fuse operators (`+` `?` → `+?`)
                r.sub = Box::new(Hir::capture(regex_syntax::hir::Capture {
                    index: 1,
                    name: None,
                    sub: Box::new(sub),
                }));
                Hir::repetition(r)
            }
            HirKind::Capture(c) => map(&c.sub, allowed)?,
            HirKind::Concat(xs) => Hir::concat(
                xs.iter()
                    .map(|x| map(x, allowed))
                    .collect::<Result<_, _>>()?,
            ),
            HirKind::Alternation(xs) => Hir::alternation(
                xs.iter()
                    .map(|x| map(x, allowed))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
    let (core, s, e) = strip(&hir);
    let core = map(&core, &allowed).map_err(|m| unsupported(&format!("pattern ({m})"), path))?;
    let any = Hir::repetition(regex_syntax::hir::Repetition {
        min: 0,
        max: None,
        greedy: true,
        sub: Box::new(Hir::class(Class::Unicode(allowed.clone()))),
    });
    let mut parts = Vec::new();
    if !s {
        parts.push(any.clone());
    }
    parts.push(core);
    if !e {
        parts.push(any);
    }
    Ok(Hir::concat(parts).to_string())
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

fn digits(x: u128) -> usize {
    x.to_string().len()
}

fn same_len(lo: &[u8], hi: &[u8], out: &mut String) {
    if lo.is_empty() {
        return;
    }
    if lo == hi {
        out.push_str(std::str::from_utf8(lo).unwrap_or(""));
        return;
    }
    if lo[0] == hi[0] {
        out.push(lo[0] as char);
        same_len(&lo[1..], &hi[1..], out);
        return;
    }
    let rest = lo.len() - 1;
    if lo[1..].iter().all(|&c| c == b'0') && hi[1..].iter().all(|&c| c == b'9') {
        out.push_str(&format!("[{}-{}]", lo[0] as char, hi[0] as char));
        if rest > 0 {
            out.push_str(&format!("[0-9]{{{rest}}}"));
        }
        return;
    }
    out.push_str("(?:");
    out.push(lo[0] as char);
    same_len(&lo[1..], &vec![b'9'; rest], out);
    if lo[0] + 1 < hi[0] {
        out.push_str(&format!(
            "|[{}-{}]",
            (lo[0] + 1) as char,
            (hi[0] - 1) as char
        ));
        if rest > 0 {
            out.push_str(&format!("[0-9]{{{rest}}}"));
        }
    }
    out.push('|');
    out.push(hi[0] as char);
    same_len(&vec![b'0'; rest], &hi[1..], out);
    out.push(')');
}

/// Regex for the decimal spellings (no leading zeros) of the integers in `[lo, hi]`.
fn nonneg_range(lo: u128, hi: Option<u128>) -> Option<String> {
    if hi.is_some_and(|h| h < lo) {
        return None;
    }
    let mut parts = Vec::new();
    let dl = digits(lo);
    let dh = hi.map_or(dl, digits);
    for len in dl..=dh {
        let a = if len == 1 {
            0
        } else {
            10u128.pow(len as u32 - 1)
        }
        .max(lo);
        let b = (10u128.pow(len as u32) - 1).min(hi.unwrap_or(u128::MAX));
        if a <= b {
            let mut s = String::new();
            same_len(a.to_string().as_bytes(), b.to_string().as_bytes(), &mut s);
            parts.push(s);
        }
    }
    if hi.is_none() {
        parts.push(format!("[1-9][0-9]{{{dl},}}"));
    }
    Some(format!("(?:{})", parts.join("|")))
}

/// Regex for integers in `[lo, hi]` (either side open).
pub(crate) fn int_range_regex(lo: Option<i128>, hi: Option<i128>) -> Option<String> {
    if let (Some(l), Some(h)) = (lo, hi) {
        if l > h {
            return None;
        }
    }
    let mut parts = Vec::new();
    // non-negative side
    if hi.is_none_or(|h| h >= 0) {
        let a = lo.map_or(0, |l| l.max(0)) as u128;
        if let Some(r) = nonneg_range(a, hi.map(|h| h as u128)) {
            parts.push(r);
        }
    }
    // negative side: -v with v in [max(1, -hi), -lo]
    if lo.is_none_or(|l| l < 0) {
        let a = hi.map_or(1, |h| (-h).max(1)) as u128;
        if let Some(r) = nonneg_range(a, lo.map(|l| (-l) as u128)) {
            parts.push(format!("-{r}"));
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!("(?:{})", parts.join("|")))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frac {
    Any,
    Zero,
    NonZero,
}

type Piece = (u128, Option<u128>, Frac);

fn lower_pieces(a: i128, excl: bool) -> Vec<Piece> {
    if a < 0 || (a == 0 && !excl) {
        return vec![(0, None, Frac::Any)];
    }
    let a = a as u128;
    if excl {
        vec![(a + 1, None, Frac::Any), (a, Some(a), Frac::NonZero)]
    } else {
        vec![(a, None, Frac::Any)]
    }
}

fn upper_pieces(c: i128, excl: bool) -> Vec<Piece> {
    if c < 0 || (c == 0 && excl) {
        return vec![];
    }
    let c = c as u128;
    let mut v = Vec::new();
    if c >= 1 {
        v.push((0, Some(c - 1), Frac::Any));
    }
    if !excl {
        v.push((c, Some(c), Frac::Zero));
    }
    v
}

fn intersect(a: &[Piece], b: &[Piece]) -> Vec<Piece> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let lo = x.0.max(y.0);
            let hi = match (x.1, y.1) {
                (Some(p), Some(q)) => Some(p.min(q)),
                (p, None) => p,
                (None, q) => q,
            };
            if hi.is_some_and(|h| h < lo) {
                continue;
            }
            let f = match (x.2, y.2) {
                (Frac::Any, f) | (f, Frac::Any) => f,
                (p, q) if p == q => p,
                _ => continue,
            };
            out.push((lo, hi, f));
        }
    }
    out
}

/// Regex for decimal numbers (no exponent) in the range given by integer bounds.
fn number_range_regex(lo: Option<(i128, bool)>, hi: Option<(i128, bool)>) -> Option<String> {
    let all = vec![(0u128, None, Frac::Any)];
    let frac = |f: Frac| match f {
        Frac::Any => r"(?:\.[0-9]+)?",
        Frac::Zero => r"(?:\.0+)?",
        Frac::NonZero => r"\.[0-9]*[1-9][0-9]*",
    };
    let mut parts = Vec::new();
    // x >= 0
    let pos = intersect(
        &lo.map_or(all.clone(), |(a, e)| lower_pieces(a, e)),
        &hi.map_or(all.clone(), |(c, e)| upper_pieces(c, e)),
    );
    for (a, b, f) in pos {
        if let Some(r) = nonneg_range(a, b) {
            parts.push(format!("{r}{}", frac(f)));
        }
    }
    // x < 0: x = -v, v > 0
    let nonzero = vec![(1u128, None, Frac::Any), (0, Some(0), Frac::NonZero)];
    let neg = intersect(
        &intersect(
            &hi.map_or(all.clone(), |(c, e)| lower_pieces(-c, e)),
            &lo.map_or(all.clone(), |(a, e)| upper_pieces(-a, e)),
        ),
        &nonzero,
    );
    for (a, b, f) in neg {
        if let Some(r) = nonneg_range(a, b) {
            parts.push(format!("-{r}{}", frac(f)));
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!("(?:{})", parts.join("|")))
    }
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
    fn integer_ranges_are_exact() {
        for (lo, hi) in [
            (Some(0), Some(100)),
            (Some(-15), Some(7)),
            (Some(3), None),
            (None, Some(-4)),
            (Some(18), Some(18)),
        ] {
            let re = int_range_regex(lo, hi).unwrap();
            for x in -250i128..250 {
                let want = lo.is_none_or(|l| x >= l) && hi.is_none_or(|h| x <= h);
                assert_eq!(
                    full(&re, &x.to_string()),
                    want,
                    "{x} in {lo:?}..{hi:?}: {re}"
                );
            }
        }
    }

    #[test]
    fn number_ranges_are_exact() {
        let cases = [
            (Some((0, false)), Some((10, false))),
            (Some((0, true)), None),
            (Some((-3, true)), Some((2, true))),
            (None, Some((-1, false))),
        ];
        for (lo, hi) in cases {
            let re = number_range_regex(lo, hi).unwrap();
            for s in [
                "0", "0.0", "0.5", "1", "2", "2.0", "2.5", "-1", "-1.0", "-0.5", "-3", "-3.5",
                "10", "10.0", "10.01", "11", "-2.99",
            ] {
                let x: f64 = s.parse().unwrap();
                let want = lo.is_none_or(|(l, e)| if e { x > l as f64 } else { x >= l as f64 })
                    && hi.is_none_or(|(h, e)| if e { x < h as f64 } else { x <= h as f64 });
                assert_eq!(full(&re, s), want, "{s} in {lo:?}..{hi:?}: {re}");
            }
        }
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

#[cfg(test)]
mod pattern_tests {
    use super::*;

    #[test]
    fn patterns_match_like_search() {
        for (p, s, want) in [
            (
                r"^pbj:([a-z0-9-]+):([a-z0-9\.-]+):([a-z0-9-]+)?:([a-z0-9-]+):([0-9]+-[0-9]+-[0-9]+)$",
                "pbj:gdbots:contexts::app:1-0-0",
                true,
            ),
            ("^[a-z]+$", "abc", true),
            ("^[a-z]+$", "abc1", false),
            ("[0-9]", "x1y", true),
        ] {
            let c = pattern_to_content(p, "#").unwrap();
            let re = regex_automata::meta::Regex::new(&format!("^(?:{c})$")).unwrap();
            assert_eq!(re.is_match(s), want, "{p} on {s}: {c}");
        }
    }
}
