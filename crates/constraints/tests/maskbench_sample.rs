//! The MaskBench protocol on a 63-schema sample of the visible split (fixtures/maskbench) with
//! the SmolLM2 tokenizer; asserts the measured pass count as a floor.

#![cfg(feature = "tokenizers")]

use fluent_ai_candle_constraints::{maskbench, Vocabulary};
use std::path::PathBuf;
use std::sync::Arc;

#[test]
fn sample_pass_count_floor() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let tok = tokenizers::Tokenizer::from_file(root.join("reference/smollm2-tokenizer.json"))
        .expect("tokenizer");
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    let vocab = Arc::new(Vocabulary::from_tokenizer(&tok, &[0, 2]).unwrap());
    assert_eq!(vocab.len(), 49_152);
    assert!(
        vocab.token_bytes(1).is_empty(),
        "<|im_start|> is special: no bytes"
    );
    let id = tok.token_to_id("\u{0120}hello").unwrap();
    assert_eq!(vocab.token_bytes(id), b" hello");
    let cases =
        maskbench::read_cases(root.join("maskbench/sample.jsonl").to_str().unwrap()).unwrap();
    assert_eq!(cases.len(), 63);
    let s = maskbench::run(&cases, &tok, vocab, None, |_, _| {});
    eprintln!("{}", s.json_line());
    assert_eq!(s.schemas, 63);
    assert!(s.compiled >= 55, "compiled {}", s.compiled);
    assert!(s.passing >= 53, "passing {} (floor 53)", s.passing);
}
