//! JSON Schema → grammar. Objects list their properties in the schema's order (optional ones
//! may be skipped; objects with few properties take them in any order).
//!
//! Two readings of a schema ([`JsonSchemaMode`]): *generation* (the default) writes undeclared
//! object properties only where the schema allows them explicitly and lays out JSON in one
//! style (`json.dumps`'s: `", "` and `": "`, no other whitespace); *spec* accepts every JSON
//! text the schema accepts (undeclared properties unless `additionalProperties: false`,
//! whitespace between tokens free up to 20 characters per gap).
//!
//! The module is divided by concern: this file dispatches on a schema's keywords (`$ref`,
//! `not`, `allOf`, `anyOf`/`oneOf`, `const`/`enum`, `type`); [`merge`] conjoins and negates
//! schemas; [`object`], [`array`] and [`scalar`] build the grammar of each JSON type;
//! [`formats`], [`pattern`] and [`range_regex`] write the regexes of string formats, string
//! patterns and number bounds.

mod array;
mod formats;
mod merge;
mod object;
mod one_of;
mod pattern;
mod range_regex;
mod scalar;

use crate::grammar::{GrammarBuilder, Sym};
use crate::{CompileOptions, ConstraintError};
use serde_json::Value;
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
const NUMBER: &str = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?";
const INTEGER: &str = r"-?(?:0|[1-9][0-9]*)";
/// One JSON string character in generation mode: [`STR_CHAR`] without `\u` escapes of
/// surrogates (characters outside the BMP are written as UTF-8), so a counted string's
/// automaton stays small and never holds a lone surrogate (which JSON parsers reject).
const STR_CHAR_GEN: &str = concat!(
    r#"(?:[^"\\\x00-\x1F]|\\["\\/bfnrt]|"#,
    r"\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))"
);
/// Generation mode: an integer as written ([`INTEGER`] with at most 18 digits: every integer
/// an `i64` holds but the 19-digit ones), so a model cannot run on writing digits. Number
/// bounds are read only below 10^17, so every bound's value still fits.
const GEN_INTEGER: &str = r"-?(?:0|[1-9][0-9]{0,17})";
/// Generation mode: a number as written ([`NUMBER`] with at most 18 digits before the point,
/// 16 after it and a two-digit exponent, so every value is a finite `f64`: an unbounded
/// exponent lets `1e999` through, which JSON parsers reject).
const GEN_NUMBER: &str = r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,16})?(?:[eE][+-]?[0-9]{1,2})?";
/// Whitespace between JSON tokens in spec mode: bounded, so a model cannot loop on blank
/// space (room for a newline plus indentation).
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

/// How a JSON Schema is read when it is compiled (a [`CompileOptions`] field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum JsonSchemaMode {
    /// For generating (the default): object properties that `properties` does not declare are
    /// written only where the schema allows them explicitly (`additionalProperties: true` or
    /// a schema, `patternProperties`, or an object schema that declares no property at all),
    /// and the JSON is laid out in one style, `json.dumps`'s (`", "` between items, `": "`
    /// after keys, no other whitespace). Every output is still valid under the schema; a
    /// model cannot spend its budget inventing properties or blank space.
    #[default]
    Generation,
    /// Faithful to the specification: every JSON text the schema accepts, undeclared
    /// properties allowed unless `additionalProperties: false`, whitespace free between
    /// tokens (up to 20 characters per gap). MaskBench tests this mode.
    Spec,
}

impl std::str::FromStr for JsonSchemaMode {
    type Err = String;

    /// `generation` or `spec`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "generation" => Ok(Self::Generation),
            "spec" => Ok(Self::Spec),
            other => Err(format!(
                "unknown JSON Schema mode {other:?} (expected `generation` or `spec`)"
            )),
        }
    }
}

/// Compiles `schema` into a grammar builder and its root symbol, with the `jsonschema`
/// validator that checks outputs. In generation mode a schema is refused before any
/// generation when it is not valid against its meta-schema (the validator does not build) or
/// no JSON value satisfies it. Spec mode (MaskBench's) keeps accepting what it accepted: the
/// validator is built when the first output is checked, and an unsatisfiable schema simply
/// accepts nothing.
pub(crate) fn compile(
    schema: &Value,
    opts: &CompileOptions,
    started: Instant,
) -> Result<(GrammarBuilder, Sym, Option<jsonschema::Validator>), ConstraintError> {
    let mut c = Ctx {
        b: GrammarBuilder::default(),
        root: schema,
        opts,
        started,
        refs: HashMap::new(),
        any: None,
        depth: 0,
    };
    if opts.json_schema_mode == JsonSchemaMode::Spec {
        c.b.skip = Some(WS.to_string());
    }
    let root = c.schema(schema, "")?;
    if opts.json_schema_mode == JsonSchemaMode::Spec {
        return Ok((c.b, root, None));
    }
    // after the grammar (whose budgets stop blow-ups early), before generation
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| {
            let at = e.instance_path().as_str().to_string();
            invalid(&at, e.to_string())
        })?;
    crate::satisfiable::check_productive(&c.b, root, "JSON value")?;
    Ok((c.b, root, Some(validator)))
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

    /// A literal JSON token; in generation mode `,` and `:` carry the one space that follows
    /// them.
    fn lit(&mut self, s: &str) -> Sym {
        if self.opts.json_schema_mode == JsonSchemaMode::Generation {
            match s {
                "," => return self.b.literal(", "),
                ":" => return self.b.literal(": "),
                _ => {}
            }
        }
        self.b.literal(s)
    }

    /// The regex of a JSON string with no `maxLength`, `pattern` or `format` and at least
    /// `min` characters: any string in spec mode; in generation mode at most
    /// [`CompileOptions::generation_max_string_length`] characters (or `min`, when more).
    fn free_string(&self, min: u64) -> String {
        match self.opts.json_schema_mode {
            JsonSchemaMode::Spec if min == 0 => format!("\"{STR_CHAR}*\""),
            JsonSchemaMode::Spec => format!("\"{STR_CHAR_LOOSE}{{{min},}}\""),
            JsonSchemaMode::Generation => {
                let max = min.max(self.opts.generation_max_string_length as u64);
                format!("\"{STR_CHAR_GEN}{{{min},{max}}}\"")
            }
        }
    }

    /// The regex of an unbounded number (`integer`: of an integer), digits bounded in
    /// generation mode (see [`GEN_NUMBER`]).
    fn number_regex(&self, integer: bool) -> String {
        match (self.opts.json_schema_mode, integer) {
            (JsonSchemaMode::Spec, true) => INTEGER.to_string(),
            (JsonSchemaMode::Spec, false) => NUMBER.to_string(),
            (JsonSchemaMode::Generation, true) => GEN_INTEGER.to_string(),
            (JsonSchemaMode::Generation, false) => GEN_NUMBER.to_string(),
        }
    }

    /// Any JSON value.
    fn any_value(&mut self) -> Sym {
        if let Some(a) = self.any {
            return a;
        }
        let value = self.b.new_rule("value");
        self.any = Some(Sym::N(value));
        let string = self.b.lexeme(&self.free_string(0));
        let number = self.b.lexeme(&self.number_regex(false));
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
            // oneOf: branches made exclusive (each merged with the siblings) or refused
            let exclusive = match one_of {
                None => None,
                Some(list) => {
                    let list = list
                        .as_array()
                        .ok_or_else(|| invalid(path, "oneOf must be an array"))?;
                    Some(self.one_of_exclusive(&Value::Object(rest.clone()), list, path)?)
                }
            };
            let exclusive = exclusive.map(Value::Array);
            let mut options: Vec<Value> = vec![Value::Object(rest)];
            for (kw, list) in [("anyOf", any_of), ("oneOf", exclusive.as_ref())] {
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
