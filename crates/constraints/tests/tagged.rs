//! `ConstraintSpec::TaggedJson`: JSON values between literal texts (forced tool calls).

mod common;

use common::byte_vocab;
use fluent_ai_candle_constraints::{
    CompileOptions, Constraint, ConstraintError, ConstraintSpec, TaggedJson, TokenMask,
};
use serde_json::json;

fn call_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": false
            }
        },
        "required": ["name", "arguments"],
        "additionalProperties": false
    })
}

fn calls(min: u32, max: Option<u32>) -> ConstraintSpec {
    ConstraintSpec::TaggedJson(TaggedJson {
        prefix: "<tool_call>\n".into(),
        suffix: "\n</tool_call>".into(),
        separator: "\n".into(),
        min,
        max,
        ..TaggedJson::new(call_schema())
    })
}

/// Feeds `text` byte by byte: `Ok(Some(finished))` when every byte was allowed (and whether
/// nothing may follow), `Ok(None)` at the first refused byte.
fn run(spec: &ConstraintSpec, text: &str) -> Result<Option<(bool, bool)>, ConstraintError> {
    let v = byte_vocab();
    let c = Constraint::compile(spec, v.clone(), &CompileOptions::default())?;
    let mut st = c.start();
    let mut mask = TokenMask::forbid_all(v.len());
    for &b in text.as_bytes() {
        st.compute_mask(&mut mask)?;
        if !mask.is_allowed(b as u32) {
            return Ok(None);
        }
        st.commit_token(b as u32)?;
    }
    let accepting = st.is_accepting();
    if accepting {
        c.validate(text)?;
    }
    Ok(Some((accepting, st.is_finished())))
}

const ONE: &str =
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

#[test]
fn one_call_between_its_tags_and_nothing_after() {
    assert_eq!(run(&calls(1, Some(1)), ONE).unwrap(), Some((true, true)));
    // The literal prefix is forced; a different name or a missing argument is refused.
    assert_eq!(run(&calls(1, Some(1)), "{").unwrap(), None);
    let bad_name = ONE.replace("get_weather", "get_wether");
    assert_eq!(run(&calls(1, Some(1)), &bad_name).unwrap(), None);
    let extra = ONE.replace("\"Paris\"}", "\"Paris\", \"unit\": \"C\"}");
    assert_eq!(run(&calls(1, Some(1)), &extra).unwrap(), None);
    // Incomplete: not accepting.
    assert_eq!(
        run(&calls(1, Some(1)), &ONE[..ONE.len() - 3]).unwrap(),
        Some((false, false))
    );
    // A second call is refused when at most one is allowed.
    assert_eq!(run(&calls(1, Some(1)), &format!("{ONE}\n")).unwrap(), None);
}

#[test]
fn several_calls_joined_by_the_separator() {
    let two = format!("{ONE}\n{ONE}");
    assert_eq!(run(&calls(1, None), ONE).unwrap(), Some((true, false)));
    assert_eq!(run(&calls(1, None), &two).unwrap(), Some((true, false)));
    assert_eq!(run(&calls(2, Some(2)), ONE).unwrap(), Some((false, false)));
    assert_eq!(run(&calls(2, Some(2)), &two).unwrap(), Some((true, true)));
}

#[test]
fn validate_checks_the_layout_and_every_value() {
    let v = byte_vocab();
    let c = Constraint::compile(&calls(1, None), v, &CompileOptions::default()).unwrap();
    c.validate(ONE).unwrap();
    c.validate(&format!("{ONE}\n{ONE}")).unwrap();
    for bad in [
        String::new(),
        ONE.replace("<tool_call>", "<tool>"),
        ONE.replace("</tool_call>", ""),
        ONE.replace("Paris\"", "Paris\", \"x\": 1"),
        format!("{ONE} trailing"),
        format!("{ONE}\n"),
    ] {
        assert!(
            matches!(c.validate(&bad), Err(ConstraintError::Validation(_))),
            "accepted {bad:?}"
        );
    }
    let one =
        Constraint::compile(&calls(1, Some(1)), byte_vocab(), &CompileOptions::default()).unwrap();
    assert!(one.validate(&format!("{ONE}\n{ONE}")).is_err());
}

#[test]
fn bad_counts_and_schemas_are_typed_errors() {
    let opts = CompileOptions::default();
    for (min, max) in [(0, Some(1)), (2, Some(1))] {
        assert!(matches!(
            Constraint::compile(&calls(min, max), byte_vocab(), &opts),
            Err(ConstraintError::InvalidSchema { .. })
        ));
    }
    let unsat = ConstraintSpec::TaggedJson(TaggedJson::new(json!({"enum": []})));
    assert!(Constraint::compile(&unsat, byte_vocab(), &opts).is_err());
}
