//! Generation mode bounds the lexemes a model could otherwise run on forever (issue 18): free
//! strings (values and undeclared keys) up to `CompileOptions::generation_max_string_length`
//! characters unless the schema asks for more, numbers up to 18 integer digits, 16 fraction
//! digits and a two-digit exponent (so every value is a finite `f64`). Spec mode keeps
//! accepting every spelling the schema accepts.

mod common;

use common::{accepts, byte_vocab};
use fluent_ai_candle_constraints::{
    CompileOptions, CompiledConstraint, Constraint, ConstraintSpec, JsonSchemaMode,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::Arc;

use JsonSchemaMode::{Generation, Spec};

fn compile(schema: &Value, mode: JsonSchemaMode) -> Arc<CompiledConstraint> {
    Constraint::compile(
        &ConstraintSpec::JsonSchemaWithMode(schema.clone(), mode),
        byte_vocab(),
        &CompileOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{schema}: {e}"))
}

fn quoted(n: usize) -> String {
    format!("\"{}\"", "a".repeat(n))
}

#[test]
fn free_strings_are_bounded_in_generation_mode_only() {
    assert_eq!(CompileOptions::default().generation_max_string_length, 128);
    let string = json!({"type": "string"});
    let g = compile(&string, Generation);
    assert!(accepts(&g, &quoted(0)));
    assert!(accepts(&g, &quoted(128)));
    assert!(!accepts(&g, &quoted(129)));
    assert!(accepts(&compile(&string, Spec), &quoted(1000)));
    // the schema asks for longer strings: written
    let long = json!({"type": "string", "maxLength": 1000});
    assert!(accepts(&compile(&long, Generation), &quoted(1000)));
    let min = json!({"type": "string", "minLength": 300});
    let g = compile(&min, Generation);
    assert!(accepts(&g, &quoted(300)));
    assert!(!accepts(&g, &quoted(299)));
    assert!(!accepts(&g, &quoted(301)));
    // a pattern shapes the string itself: not bounded
    let pattern = json!({"type": "string", "pattern": "^a+$"});
    assert!(accepts(&compile(&pattern, Generation), &quoted(600)));
    // any value, and undeclared keys where the schema allows them
    let any = compile(&json!({}), Generation);
    assert!(accepts(&any, &quoted(128)));
    assert!(!accepts(&any, &quoted(129)));
    let open = json!({"type": "object", "properties": {"a": {"type": "integer"}},
        "additionalProperties": true});
    let g = compile(&open, Generation);
    assert!(accepts(&g, &format!("{{{}: 1}}", quoted(128))));
    assert!(!accepts(&g, &format!("{{{}: 1}}", quoted(129))));
    assert!(accepts(
        &compile(&open, Spec),
        &format!("{{{}: 1}}", quoted(400))
    ));
    // a lone escaped surrogate is not JSON a parser takes: never written in generation mode
    assert!(!accepts(&compile(&string, Generation), r#""\ud800""#));
    assert!(!accepts(&compile(&long, Generation), r#""\ud800""#));
    assert!(accepts(&compile(&string, Generation), r#""\u00e9\n""#));
}

#[test]
fn numbers_are_bounded_in_generation_mode_only() {
    let integer = json!({"type": "integer"});
    let g = compile(&integer, Generation);
    let digits = |n: usize| format!("1{}", "0".repeat(n - 1));
    assert!(accepts(&g, &digits(18)));
    assert!(accepts(&g, &format!("-{}", digits(18))));
    assert!(!accepts(&g, &digits(19)));
    assert!(accepts(&compile(&integer, Spec), &digits(40)));
    let min = json!({"type": "integer", "minimum": -5});
    let g = compile(&min, Generation);
    assert!(accepts(&g, &digits(18)));
    assert!(!accepts(&g, &digits(19)));
    assert!(accepts(&g, "-5"));
    assert!(!accepts(&g, "-6"));
    assert!(accepts(&compile(&min, Spec), &digits(30)));
    let number = json!({"type": "number"});
    let g = compile(&number, Generation);
    for ok in ["0", "-1.5", "1e99", "2.5E-7", "0.1234567890123456"] {
        assert!(accepts(&g, ok), "{ok}");
    }
    for no in [
        "1e999",
        "1e100",
        "0.12345678901234567",
        "1000000000000000000",
    ] {
        assert!(!accepts(&g, no), "{no}");
    }
    assert!(accepts(&compile(&number, Spec), "1e999"));
    let range = json!({"type": "number", "minimum": 0, "maximum": 10});
    let g = compile(&range, Generation);
    assert!(accepts(&g, "3.1234567890123456"));
    assert!(!accepts(&g, "3.12345678901234567"));
    assert!(accepts(&g, "10"));
    assert!(!accepts(&g, "10.5"));
    assert!(accepts(&compile(&range, Spec), "3.12345678901234567"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A free string in generation mode: exactly the JSON strings of at most 128 characters
    /// (as `serde_json` writes them), every one of which validates.
    #[test]
    fn generation_strings_are_the_short_ones(s in "\\PC{0,160}|[a-z\"\\\\\\n\\x00-\\x1f]{120,136}") {
        let schema = json!({"type": "string"});
        let text = serde_json::to_string(&s).unwrap();
        let ok = accepts(&compile(&schema, Generation), &text);
        prop_assert_eq!(ok, s.chars().count() <= 128, "{}", text);
    }

    /// Every number spelling generation mode accepts parses to a finite value within the
    /// schema; it accepts exactly the spellings within its digit bounds.
    #[test]
    fn generation_numbers_parse_and_validate(
        int in "-?(0|[1-9][0-9]{0,22})",
        frac in proptest::option::of("[0-9]{1,20}"),
        exp in proptest::option::of("[eE][+-]?[0-9]{1,3}"),
    ) {
        let text = format!(
            "{int}{}{}",
            frac.as_ref().map(|f| format!(".{f}")).unwrap_or_default(),
            exp.clone().unwrap_or_default()
        );
        for schema in [json!({"type": "number"}), json!({"type": "number", "minimum": -100})] {
            let c = compile(&schema, Generation);
            let ok = accepts(&c, &text);
            let int_digits = int.trim_start_matches('-').len();
            let exp_digits = exp.as_ref().map_or(0, |e| e.trim_start_matches(['e', 'E', '+', '-']).len());
            let within = int_digits <= 18
                && frac.as_ref().is_none_or(|f| f.len() <= 16)
                && exp_digits <= 2;
            if ok {
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{text}: {e}"));
                prop_assert!(v.as_f64().is_some_and(f64::is_finite), "{}", text);
                prop_assert!(jsonschema::is_valid(&schema, &v), "{} under {}", text, schema);
            }
            if schema.get("minimum").is_none() {
                prop_assert_eq!(ok, within, "{}", text);
            }
        }
    }
}

#[test]
fn lists_are_bounded_in_generation_mode_only() {
    assert_eq!(CompileOptions::default().generation_max_items, 32);
    let list = |n: usize| format!("[{}]", vec!["1"; n].join(", "));
    let array = json!({"type": "array", "items": {"type": "integer"}});
    let g = compile(&array, Generation);
    assert!(accepts(&g, "[]"));
    assert!(accepts(&g, &list(32)));
    assert!(!accepts(&g, &list(33)));
    assert!(accepts(
        &compile(&array, Spec),
        &list(33).replace(", ", ",")
    ));
    let long = json!({"type": "array", "items": {"type": "integer"}, "maxItems": 40});
    assert!(accepts(&compile(&long, Generation), &list(40)));
    let min = json!({"type": "array", "items": {"type": "integer"}, "minItems": 35});
    let g = compile(&min, Generation);
    assert!(accepts(&g, &list(35)));
    assert!(!accepts(&g, &list(34)));
    // an object that declares nothing: at most 1 + 32 pairs
    let pairs = |n: usize| {
        let p: Vec<String> = (0..n).map(|i| format!("\"k{i}\": 1")).collect();
        format!("{{{}}}", p.join(", "))
    };
    let free = json!({"type": "object"});
    let g = compile(&free, Generation);
    assert!(accepts(&g, &pairs(33)));
    assert!(!accepts(&g, &pairs(34)));
    assert!(accepts(
        &compile(&free, Spec),
        &pairs(40).replace(", ", ",")
    ));
}
