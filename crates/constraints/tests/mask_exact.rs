//! The mask is exact: with the real SmolLM2 vocabulary (49,152 tokens), at every step of a
//! seeded random walk through each fixture schema and grammar, the token set that
//! `compute_mask` allows (cache miss or hit, fast single-lexeme walk or the general one) is
//! exactly the set of tokens `is_token_allowed` accepts one by one.

#![cfg(feature = "tokenizers")]

use fluent_ai_candle_constraints::{
    CompileOptions, CompiledConstraint, Constraint, ConstraintSpec, TokenMask, Vocabulary,
};
use std::path::PathBuf;
use std::sync::Arc;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn constraints(vocab: &Arc<Vocabulary>) -> Vec<(String, Arc<CompiledConstraint>)> {
    let opts = CompileOptions::default();
    let mut out = Vec::new();
    let text =
        std::fs::read_to_string(fixtures().join("maskbench/generation_schemas.jsonl")).unwrap();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let spec = ConstraintSpec::JsonSchema(v["schema"].clone());
        let c = Constraint::compile(&spec, vocab.clone(), &opts).unwrap();
        out.push((v["name"].as_str().unwrap_or("?").to_string(), c));
    }
    for name in ["json.gbnf", "arithmetic.gbnf", "list.gbnf", "chess.gbnf"] {
        let g = std::fs::read_to_string(fixtures().join("grammars").join(name)).unwrap();
        let c = Constraint::compile(&ConstraintSpec::Grammar(g), vocab.clone(), &opts).unwrap();
        out.push((name.to_string(), c));
    }
    out
}

#[test]
fn mask_equals_token_by_token_checks() {
    let tok = tokenizers::Tokenizer::from_file(fixtures().join("reference/smollm2-tokenizer.json"))
        .expect("tokenizer");
    let vocab = Arc::new(Vocabulary::from_tokenizer(&tok, &[0, 2]).unwrap());
    let all = constraints(&vocab);
    assert!(all.len() >= 25);
    let mut mask = TokenMask::forbid_all(vocab.len());
    let mut checked = 0usize;
    for (k, (name, c)) in all.iter().enumerate() {
        // Two walks per constraint: the second starts with a warm mask cache.
        for walk in 0..2u64 {
            let mut st = c.start();
            let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (k as u64 * 31 + walk);
            for step in 0..10 {
                st.compute_mask(&mut mask).unwrap();
                let mut allowed = Vec::new();
                for id in 0..vocab.len() as u32 {
                    let one = st.is_token_allowed(id);
                    assert_eq!(
                        mask.is_allowed(id),
                        one,
                        "{name} walk {walk} step {step} after {:?}: token {id} {:?}",
                        String::from_utf8_lossy(st.text_bytes()),
                        String::from_utf8_lossy(vocab.token_bytes(id))
                    );
                    if one && !vocab.is_eos(id) {
                        allowed.push(id);
                    }
                }
                checked += 1;
                if allowed.is_empty() {
                    break;
                }
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                st.commit_token(allowed[(s % allowed.len() as u64) as usize])
                    .unwrap();
            }
        }
    }
    eprintln!("{checked} masks of {} tokens checked", vocab.len());
}
