//! Every GBNF grammar users have (fixtures/grammars, copies of shared/grammars) loads, and
//! hand-made accept / reject strings (fixtures/grammars/cases.json) behave.

use fluent_ai_candle_constraints::{
    CompileOptions, Constraint, ConstraintSpec, TokenMask, Vocabulary,
};
use std::path::PathBuf;
use std::sync::Arc;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/grammars")
}

/// Single-byte tokens 0..256, EOS = 256.
fn byte_vocab() -> Arc<Vocabulary> {
    let mut t: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    t.push(Vec::new());
    Arc::new(Vocabulary::new(t, &[256], &[]))
}

/// Feeds `text` byte by byte, checking the mask agrees with each commit; true when accepted.
fn run(c: &Arc<fluent_ai_candle_constraints::CompiledConstraint>, text: &str) -> bool {
    let mut st = c.start();
    let mut mask = TokenMask::forbid_all(257);
    for &b in text.as_bytes() {
        st.compute_mask(&mut mask).unwrap();
        let allowed = mask.is_allowed(b as u32);
        assert_eq!(
            allowed,
            st.is_token_allowed(b as u32),
            "mask vs. check on {text:?}"
        );
        if !allowed {
            assert!(st.commit_token(b as u32).is_err());
            return false;
        }
        st.commit_token(b as u32).unwrap();
    }
    st.compute_mask(&mut mask).unwrap();
    assert_eq!(mask.is_allowed(256), st.is_accepting());
    st.is_accepting()
}

#[test]
fn every_grammar_loads_and_behaves() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let vocab = byte_vocab();
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("gbnf") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let c = Constraint::compile(
            &ConstraintSpec::Grammar(text),
            vocab.clone(),
            &CompileOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let case = &cases[&name];
        assert!(case.is_object(), "no accept/reject cases for {name}");
        for s in case["accept"].as_array().unwrap() {
            let s = s.as_str().unwrap();
            assert!(run(&c, s), "{name} should accept {s:?}");
        }
        for s in case["reject"].as_array().unwrap() {
            let s = s.as_str().unwrap();
            assert!(!run(&c, s), "{name} should reject {s:?}");
        }
        seen += 1;
    }
    assert!(seen >= 8, "expected the 8 grammars, found {seen}");
}

#[test]
fn syntax_errors_have_positions() {
    let vocab = byte_vocab();
    let bad = [
        ("root ::= \"abc", 1, 10),
        ("root ::= foo\n", 1, 10),
        ("root ::= [a-\n", 1, 11),
        ("x ::= \"a\"\n", 0, 0),
        ("root ::= (\"a\"\n", 1, 10),
        ("root = \"a\"", 1, 6),
    ];
    for (g, line, col) in bad {
        match Constraint::compile(
            &ConstraintSpec::Grammar(g.into()),
            vocab.clone(),
            &CompileOptions::default(),
        ) {
            Err(fluent_ai_candle_constraints::ConstraintError::GrammarSyntax {
                position, ..
            }) => {
                assert_eq!((position.line, position.column), (line, col), "{g:?}");
            }
            Err(fluent_ai_candle_constraints::ConstraintError::InvalidGrammar(_)) if line == 0 => {}
            other => panic!("{g:?}: {other:?}"),
        }
    }
}

#[test]
fn token_references_are_unsupported_not_ignored() {
    let e = Constraint::compile(
        &ConstraintSpec::Grammar("root ::= <think> \"a\"".into()),
        byte_vocab(),
        &CompileOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("token reference"), "{e}");
}
