//! Shortest completions close any reachable prefix: for the MaskBench schemas in
//! `fixtures/maskbench` and the GBNF grammars in `fixtures/grammars`, a random walk over
//! allowed bytes gives a prefix; the completion appended to it, byte by byte through the
//! constraint, must end accepting, and JSON outputs must validate with `jsonschema`. Two
//! known approximations of the JSON grammar (not of completion) are let through: `oneOf` is
//! treated as `anyOf` (a value matching two branches parses but does not validate), a
//! number's exponent is unbounded (`1e999` parses but overflows `serde_json`'s f64), and
//! length-bounded strings and keys that must differ from declared names accept any `\u`
//! escape, a lone surrogate included (which `serde_json` rejects).

use fluent_ai_candle_constraints::{
    CompileOptions, CompiledConstraint, Constraint, ConstraintSpec, Vocabulary,
};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A byte-level vocabulary: token `b` is byte `b`, token 256 is EOS.
fn bytes_vocab() -> Arc<Vocabulary> {
    let mut toks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    toks.push(Vec::new());
    Arc::new(Vocabulary::new(toks, &[256], &[]))
}

/// Every fixture constraint that compiles, with its name.
/// A fixture constraint: its name, the compiled constraint, and whether outputs must validate.
type Case = (String, Arc<CompiledConstraint>, bool);

fn constraints() -> &'static Vec<Case> {
    static ALL: OnceLock<Vec<Case>> = OnceLock::new();
    ALL.get_or_init(|| {
        let vocab = bytes_vocab();
        let opts = CompileOptions::default();
        let mut out = Vec::new();
        for file in ["generation_schemas.jsonl", "sample.jsonl"] {
            let text = std::fs::read_to_string(fixtures().join("maskbench").join(file)).unwrap();
            for (i, line) in text.lines().enumerate() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let spec = ConstraintSpec::JsonSchema(v["schema"].clone());
                let exact = !v["schema"].to_string().contains("\"oneOf\"");
                if let Ok(c) = Constraint::compile(&spec, vocab.clone(), &opts) {
                    out.push((format!("{file}:{}", i + 1), c, exact));
                }
            }
        }
        let mut grammars: Vec<PathBuf> = std::fs::read_dir(fixtures().join("grammars"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "gbnf"))
            .collect();
        grammars.sort();
        for g in grammars {
            let spec = ConstraintSpec::Grammar(std::fs::read_to_string(&g).unwrap());
            let c = Constraint::compile(&spec, vocab.clone(), &opts).unwrap();
            out.push((
                g.file_name().unwrap().to_string_lossy().into_owned(),
                c,
                true,
            ));
        }
        assert!(out.len() >= 70, "{} constraints compiled", out.len());
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn completion_closes_every_random_prefix(
        which in 0usize..1000,
        steps in 0usize..80,
        seed in any::<u64>(),
    ) {
        let all = constraints();
        let (name, c, exact) = &all[which % all.len()];
        let mut st = c.start();
        let mut s = seed | 1;
        for _ in 0..steps {
            if st.is_finished() {
                break;
            }
            let allowed: Vec<u32> = (0..256u32).filter(|&b| st.is_token_allowed(b)).collect();
            if allowed.is_empty() {
                break;
            }
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            st.commit_token(allowed[(s % allowed.len() as u64) as usize]).unwrap();
        }
        let prefix = String::from_utf8_lossy(st.text_bytes()).into_owned();
        let rest = st.shortest_completion();
        prop_assert!(rest.is_some(), "{name}: no completion after {prefix:?}");
        let rest = rest.unwrap_or_default();
        for &b in &rest {
            prop_assert!(
                st.is_token_allowed(b as u32),
                "{name}: {prefix:?} + {:?} stops at byte {:?}",
                String::from_utf8_lossy(&rest),
                b as char
            );
            st.commit_token(b as u32).unwrap();
        }
        prop_assert!(
            st.is_accepting(),
            "{name}: {prefix:?} + {:?} is not complete",
            String::from_utf8_lossy(&rest)
        );
        let text = String::from_utf8(st.text_bytes().to_vec()).unwrap();
        let valid = c.validate(&text);
        let known = |e: &str| {
            let exact = *exact;
            (!exact && e.contains("more than one of the schemas listed in the 'oneOf'"))
                || e.contains("number out of range")
                || e.contains("hex escape")
                || e.contains("lone leading surrogate")
        };
        let ok = match &valid {
            Ok(()) => true,
            Err(e) => known(&e.to_string()),
        };
        prop_assert!(ok, "{name}: {text:?}: {valid:?}");
    }
}
