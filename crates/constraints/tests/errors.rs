//! Bad input: typed errors with positions, named unsupported keywords, budgets; never a panic
//! or a hang (proptest over the GBNF, regex and JSON Schema compile paths).

use fluent_ai_candle_constraints::{
    CompileOptions, Constraint, ConstraintError, ConstraintSpec, TokenMask, Vocabulary,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

fn vocab() -> Arc<Vocabulary> {
    static V: OnceLock<Arc<Vocabulary>> = OnceLock::new();
    V.get_or_init(|| {
        let mut t: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        t.push(Vec::new());
        for s in ["{\"", "\":", "\"}", "true", "null", "12", ", "] {
            t.push(s.as_bytes().to_vec());
        }
        Arc::new(Vocabulary::new(t, &[256], &[]))
    })
    .clone()
}

fn opts() -> CompileOptions {
    CompileOptions {
        max_compile_time: Duration::from_millis(500),
        ..CompileOptions::default()
    }
}

fn compile(spec: ConstraintSpec) -> Result<(), ConstraintError> {
    let c = Constraint::compile(&spec, vocab(), &opts())?;
    // and run a few greedy steps: never panic
    let mut st = c.start();
    let mut mask = TokenMask::forbid_all(vocab().len());
    for _ in 0..8 {
        st.compute_mask(&mut mask)?;
        match mask.iter_allowed().find(|&t| t != 256) {
            Some(t) => st.commit_token(t)?,
            None => break,
        }
    }
    let _ = st.forced_bytes();
    Ok(())
}

#[test]
fn unsupported_keywords_are_named() {
    for (schema, kw) in [
        (json!({"type": "array", "uniqueItems": true}), "uniqueItems"),
        (
            json!({"type": "object", "maxProperties": 2}),
            "maxProperties",
        ),
        (json!({"not": {"properties": {"a": {}}}}), "not"),
        (json!({"type": "number", "multipleOf": 3}), "multipleOf"),
        (json!({"if": {}, "then": {}}), "if"),
        (
            json!({"type": "string", "format": "uri-template"}),
            "format: uri-template",
        ),
    ] {
        match compile(ConstraintSpec::JsonSchema(schema.clone())) {
            Err(ConstraintError::Unsupported { keyword, .. }) => {
                assert!(keyword.contains(kw), "{schema}: {keyword}")
            }
            other => panic!("{schema}: {other:?}"),
        }
    }
}

#[test]
fn malformed_inputs_are_typed_errors() {
    assert!(matches!(
        compile(ConstraintSpec::JsonSchema(json!({"type": 5}))),
        Err(ConstraintError::InvalidSchema { .. })
    ));
    assert!(matches!(
        compile(ConstraintSpec::JsonSchema(
            json!({"$ref": "#/definitions/missing"})
        )),
        Err(ConstraintError::InvalidSchema { .. })
    ));
    match compile(ConstraintSpec::Regex("ab(c".into())) {
        Err(ConstraintError::Regex { offset, .. }) => assert_eq!(offset, 2),
        other => panic!("{other:?}"),
    }
    match compile(ConstraintSpec::JsonSchema(
        json!({"type": "string", "pattern": "a[b"}),
    )) {
        Err(ConstraintError::Regex { offset, .. }) => assert_eq!(offset, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn budgets_stop_blowups() {
    for spec in [
        ConstraintSpec::JsonSchema(json!({"type": "string", "maxLength": 1_000_000})),
        ConstraintSpec::JsonSchema(json!({"type": "array", "minItems": 1_000_000})),
        ConstraintSpec::Regex("[a-z]{1000}[0-9]{1000}(?:[a-z]{1,1000}){1,1000}".into()),
        ConstraintSpec::Grammar("root ::= \"a\"{1000000}".into()),
    ] {
        match compile(spec.clone()) {
            Err(ConstraintError::Budget(_)) => {}
            other => panic!("{spec:?}: {other:?}"),
        }
    }
    // exponential anyOf nesting
    let mut s = json!({"type": "integer"});
    for _ in 0..7 {
        s = json!({"anyOf": [s.clone(), s.clone(), s.clone(), s.clone(), s.clone(), {"type": "array", "items": s.clone()}]});
    }
    let t = std::time::Instant::now();
    let r = compile(ConstraintSpec::JsonSchema(s));
    assert!(matches!(r, Err(ConstraintError::Budget(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn recursive_refs_compile() {
    let s = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}
        }, "required": ["v"], "additionalProperties": false}},
        "$ref": "#/$defs/node"
    });
    let c = Constraint::compile(&ConstraintSpec::JsonSchema(s), vocab(), &opts()).unwrap();
    let mut st = c.start();
    st.commit_bytes(br#"{"v": 1, "kids": [{"v": 2, "kids": []}, {"v": 3}]}"#)
        .unwrap();
    assert!(st.is_accepting());
    assert!(st.is_finished());
}

fn arb_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "type",
        "properties",
        "required",
        "items",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "additionalProperties",
        "prefixItems",
        "$defs",
        "a",
        "nullable",
        "exclusiveMinimum",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(|x| json!(x)),
        (-10.0f64..10.0).prop_map(|x| json!(x)),
        prop::sample::select(vec![
            "object",
            "array",
            "string",
            "integer",
            "number",
            "boolean",
            "null",
            "#",
            "#/$defs/a",
            "date",
            "email",
            "^[a-z]+$",
            "a(",
            "uuid",
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 40, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..5).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn gbnf_never_panics(s in "[a-z:=|()\"\\[\\]^*+?{}0-9 \\n\\\\.#-]{0,60}") {
        let _ = compile(ConstraintSpec::Grammar(s.clone()));
        let _ = compile(ConstraintSpec::Grammar(format!("root ::= {s}")));
    }

    #[test]
    fn regex_never_panics(s in "[a-c()|*+?{}0-9,\\[\\]^$.\\\\-]{0,30}") {
        let _ = compile(ConstraintSpec::Regex(s));
    }

    #[test]
    fn schema_never_panics(v in arb_json()) {
        let _ = compile(ConstraintSpec::JsonSchema(v));
    }
}
