//! Basic behaviour on hand-made vocabularies.

use fluent_ai_candle_constraints::{
    CompileOptions, Constraint, ConstraintError, ConstraintSpec, JsonSchemaMode, TokenMask,
    Vocabulary,
};
use std::sync::Arc;

/// A byte vocabulary (ids 0..256 = single bytes) plus a few multi-byte tokens; EOS = 256.
fn byte_vocab() -> Arc<Vocabulary> {
    let mut t: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    t.push(Vec::new()); // 256: EOS
    for s in ["{\"", "\": ", ", \"", "true", "null", "\"}", "12", "ab"] {
        t.push(s.as_bytes().to_vec());
    }
    Arc::new(Vocabulary::new(t, &[256], &[]))
}

/// These tests check the spec-faithful reading of JSON Schema (compact JSON, undeclared
/// properties); generation mode is tested in `schema_modes.rs`.
fn spec_opts() -> CompileOptions {
    CompileOptions {
        json_schema_mode: JsonSchemaMode::Spec,
        ..CompileOptions::default()
    }
}

fn accepts(spec: &ConstraintSpec, text: &str) -> Result<bool, ConstraintError> {
    let v = byte_vocab();
    let c = Constraint::compile(spec, v.clone(), &spec_opts())?;
    let mut st = c.start();
    let mut mask = TokenMask::forbid_all(v.len());
    for &b in text.as_bytes() {
        st.compute_mask(&mut mask)?;
        if !mask.is_allowed(b as u32) {
            return Ok(false);
        }
        st.commit_token(b as u32)?;
    }
    Ok(st.is_accepting())
}

#[test]
fn regex_constraint() {
    let spec = ConstraintSpec::Regex("a[0-9]+b?".into());
    assert!(accepts(&spec, "a12").unwrap());
    assert!(accepts(&spec, "a1b").unwrap());
    assert!(!accepts(&spec, "a").unwrap());
    assert!(!accepts(&spec, "ab").unwrap());
}

#[test]
fn simple_schema() {
    let spec = ConstraintSpec::JsonSchema(serde_json::json!({
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
        "required": ["a"]
    }));
    assert!(accepts(&spec, r#"{"a": 1}"#).unwrap());
    assert!(accepts(&spec, r#"{"a": 1, "b": "x"}"#).unwrap());
    assert!(accepts(&spec, r#"{"a":12,"c":[1,{"d":null}]}"#).unwrap());
    assert!(!accepts(&spec, r#"{"b": "x"}"#).unwrap());
    assert!(!accepts(&spec, r#"{"a": "x"}"#).unwrap());
    assert!(!accepts(&spec, r#"{"a": 1"#).unwrap());
}

struct DigitsThenStop;

impl fluent_ai_candle_constraints::GenerationConstraint for DigitsThenStop {
    fn is_valid_next_token(&self, current_text: &str, next_token: &str) -> bool {
        current_text.len() + next_token.len() <= 3 && next_token.chars().all(|c| c.is_ascii_digit())
    }
    fn is_complete(&self, text: &str) -> bool {
        !text.is_empty()
    }
}

#[test]
fn custom_text_constraint_is_adapted() {
    let v = byte_vocab();
    let c = Constraint::compile(
        &ConstraintSpec::Custom(Arc::new(DigitsThenStop)),
        v.clone(),
        &CompileOptions::default(),
    )
    .unwrap();
    let mut st = c.start();
    let mut mask = TokenMask::forbid_all(v.len());
    st.compute_mask(&mut mask).unwrap();
    assert!(mask.is_allowed(b'7' as u32) && !mask.is_allowed(b'a' as u32));
    assert!(!mask.is_allowed(256), "not complete yet: no EOS");
    st.commit_token(263).unwrap(); // "12"
    st.compute_mask(&mut mask).unwrap();
    assert!(mask.is_allowed(256) && mask.is_allowed(b'3' as u32) && !mask.is_allowed(263));
    assert!(st.commit_token(b'x' as u32).is_err());
    st.commit_token(256).unwrap();
    assert!(st.is_finished());
}

#[test]
fn forced_bytes_and_eos() {
    let v = byte_vocab();
    let spec = ConstraintSpec::JsonSchema(serde_json::json!({
        "type": "object",
        "properties": {"name": {"const": "x"}},
        "required": ["name"],
        "additionalProperties": false
    }));
    let c = Constraint::compile(&spec, v.clone(), &spec_opts()).unwrap();
    let mut st = c.start();
    st.commit_token(b'{' as u32).unwrap();
    // after `{` only whitespace or the key may follow: nothing is forced (whitespace is free)
    assert!(st.forced_bytes().is_empty());
    st.commit_bytes(b"\"n").unwrap();
    assert_eq!(st.forced_bytes(), b"ame\"");
    let forced = st.forced_tokens();
    assert!(!forced.is_empty());
    st.commit_bytes(b"ame\": \"x\"}").unwrap();
    assert!(st.is_accepting() && st.is_finished());
    assert!(c.validate(r#"{"name": "x"}"#).is_ok());
    assert!(c.validate(r#"{"name": "y"}"#).is_err());
    // special tokens are never allowed
    let v2 = Arc::new(Vocabulary::new(
        vec![b"a".to_vec(), b"<s>".to_vec(), vec![]],
        &[2],
        &[1],
    ));
    let c2 = Constraint::compile(
        &ConstraintSpec::Regex("(?s:.*)".into()),
        v2,
        &CompileOptions::default(),
    )
    .unwrap();
    let mut st2 = c2.start();
    let mut m = TokenMask::forbid_all(3);
    st2.compute_mask(&mut m).unwrap();
    assert_eq!(m.iter_allowed().collect::<Vec<_>>(), vec![0, 2]);
}

#[test]
fn pattern_properties_and_additional() {
    let spec = ConstraintSpec::JsonSchema(serde_json::json!({
        "type": "object",
        "properties": {"id": {"type": "integer"}},
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": {"type": "boolean"}
    }));
    for (text, want) in [
        (r#"{"id":1,"x-a":"s"}"#, true),
        (r#"{"x-a":"s","id":1}"#, true),
        (r#"{"x-a":1}"#, false),
        (r#"{"other":true}"#, true),
        (r#"{"other":"s"}"#, false),
        (r#"{"id":"s"}"#, false),
    ] {
        assert_eq!(accepts(&spec, text).unwrap(), want, "{text}");
    }
}

#[test]
fn not_forms() {
    let cases = [
        (serde_json::json!({"not": {"type": "string"}}), "1", true),
        (
            serde_json::json!({"not": {"type": "string"}}),
            "\"a\"",
            false,
        ),
        (
            serde_json::json!({"type": "string", "not": {"enum": ["a", "b"]}}),
            "\"a\"",
            false,
        ),
        (
            serde_json::json!({"type": "string", "not": {"enum": ["a", "b"]}}),
            "\"ab\"",
            true,
        ),
        (
            serde_json::json!({"type": "string", "not": {"pattern": "^x"}}),
            "\"xy\"",
            false,
        ),
        (
            serde_json::json!({"type": "string", "not": {"pattern": "^x"}}),
            "\"yx\"",
            true,
        ),
        (
            serde_json::json!({"type": "object", "not": {"required": ["a"]}}),
            r#"{"a":1}"#,
            false,
        ),
        (
            serde_json::json!({"type": "object", "not": {"required": ["a"]}}),
            r#"{"b":1}"#,
            true,
        ),
        (
            serde_json::json!({"not": {"not": {"type": "null"}}}),
            "null",
            true,
        ),
        (
            serde_json::json!({"not": {"not": {"type": "null"}}}),
            "1",
            false,
        ),
        (serde_json::json!({"not": {}}), "1", false),
    ];
    for (schema, text, want) in cases {
        let spec = ConstraintSpec::JsonSchema(schema.clone());
        assert_eq!(accepts(&spec, text).unwrap(), want, "{schema} on {text}");
    }
}

#[test]
fn any_order_min_properties_and_pattern_lengths() {
    let obj = ConstraintSpec::JsonSchema(serde_json::json!({
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {}},
        "required": ["a", "b"],
        "additionalProperties": false,
        "minProperties": 1
    }));
    for (text, want) in [
        (r#"{"b":1,"a":2}"#, true),
        (r#"{"c":0,"b":1,"a":2}"#, true),
        (r#"{"a":1,"a":2}"#, false),
        (r#"{"a":1}"#, false),
    ] {
        assert_eq!(accepts(&obj, text).unwrap(), want, "{text}");
    }
    let min2 =
        ConstraintSpec::JsonSchema(serde_json::json!({"type": "object", "minProperties": 2}));
    assert!(!accepts(&min2, r#"{"a":1}"#).unwrap());
    assert!(accepts(&min2, r#"{"a":1,"b":2}"#).unwrap());
    let s = ConstraintSpec::JsonSchema(serde_json::json!({
        "type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 3
    }));
    for (text, want) in [
        ("\"ab\"", true),
        ("\"abc\"", true),
        ("\"a\"", false),
        ("\"abcd\"", false),
        ("\"a1\"", false),
    ] {
        assert_eq!(accepts(&s, text).unwrap(), want, "{text}");
    }
}
