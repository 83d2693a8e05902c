//! Basic behaviour on hand-made vocabularies.

use fluent_ai_candle_constraints::{
    CompileOptions, Constraint, ConstraintError, ConstraintSpec, TokenMask, Vocabulary,
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

fn accepts(spec: &ConstraintSpec, text: &str) -> Result<bool, ConstraintError> {
    let v = byte_vocab();
    let c = Constraint::compile(spec, v.clone(), &CompileOptions::default())?;
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

#[test]
fn debug_where() {
    let v = byte_vocab();
    for (schema, text) in [
        (serde_json::json!({"type":"null"}), "null"),
        (
            serde_json::json!({"type":"object", "additionalProperties": false}),
            "{}",
        ),
        (
            serde_json::json!({"type":"object", "properties": {"a": {"type":"integer"}}, "additionalProperties": false}),
            "{\"a\":1}",
        ),
        (
            serde_json::json!({"type":"object", "properties": {"a": {"type":"integer"}}}),
            "{\"a\":1}",
        ),
    ] {
        let c = Constraint::compile(
            &ConstraintSpec::JsonSchema(schema.clone()),
            v.clone(),
            &CompileOptions::default(),
        )
        .unwrap();
        let mut st = c.start();
        for (i, &b) in text.as_bytes().iter().enumerate() {
            if st.commit_token(b as u32).is_err() {
                eprintln!("{schema}: fails at byte {i} of {text}");
                break;
            }
        }
        eprintln!("{schema}: accepting {}", st.is_accepting());
    }
}
