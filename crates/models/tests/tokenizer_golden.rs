//! Golden tests of the GGUF tokenizer and chat template against the real
//! SmolLM2 file and the reference tokenizations in `fixtures/reference/`.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Content;
use fluent_ai_candle_models::chat_template::{ChatMessage, ChatTemplate};
use fluent_ai_candle_models::tokenizer::CandleTokenizer;

/// The SmolLM2 GGUF from the model cache; fails (never skips) when absent.
fn smollm2_path() -> PathBuf {
    let path = fluent_ai_candle_models::cache::model_path("smollm2-135m-instruct")
        .expect("smollm2-135m-instruct is a known model");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        path.display()
    );
    path
}

fn read_content(path: &std::path::Path) -> Content {
    let mut f = std::fs::File::open(path).expect("open model file");
    Content::read(&mut f).expect("read GGUF header")
}

fn smollm2_content() -> Content {
    read_content(&smollm2_path())
}

/// The SmolLM2 tokenizer, built once for the property test.
fn smollm2_tokenizer() -> &'static CandleTokenizer {
    static TOK: OnceLock<CandleTokenizer> = OnceLock::new();
    TOK.get_or_init(|| CandleTokenizer::from_gguf(&smollm2_content()).unwrap())
}

fn fixture_lines(rel: &str) -> Vec<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("integer id")).expect("u32 id"))
        .collect()
}

#[test]
fn smollm2_encode_matches_reference() {
    let tok = CandleTokenizer::from_gguf(&smollm2_content()).unwrap();
    let lines = fixture_lines("reference/smollm2-tokenize.jsonl");
    assert!(!lines.is_empty());
    let mut failures = Vec::new();
    for line in &lines {
        let text = line["text"].as_str().expect("text");
        let want = ids_of(&line["ids"]);
        let got = tok.encode(text, false).unwrap();
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} lines differ:\n{}",
        failures.len(),
        lines.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_decode_round_trips() {
    let tok = CandleTokenizer::from_gguf(&smollm2_content()).unwrap();
    for line in fixture_lines("reference/smollm2-tokenize.jsonl") {
        let text = line["text"].as_str().expect("text");
        let ids = ids_of(&line["ids"]);
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "ids {ids:?}");
    }
    // Control tokens are dropped when asked.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");
}

#[test]
fn smollm2_special_facts() {
    let tok = CandleTokenizer::from_gguf(&smollm2_content()).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.add_bos(), "SmolLM2's GGUF sets add_bos_token = false");
    assert!(tok.is_eog(2), "<|im_end|> ends generation");
    assert!(tok.is_eog(0), "<|endoftext|> ends generation");
    assert!(!tok.is_eog(1));
    assert_eq!(tok.encode("Hi", true).unwrap()[0], 1);
    let bytes = tok.token_bytes();
    assert_eq!(bytes.len(), 49152);
    assert_eq!(bytes[1], b"<|im_start|>");
    assert_eq!(bytes[216], b" ");
    assert_eq!(bytes[198], b"\n");
    // Every id's bytes concatenate to what decode gives.
    let ids = tok.encode("Café 日本 🚀 x", false).unwrap();
    let cat: Vec<u8> = ids
        .iter()
        .flat_map(|&i| bytes[i as usize].clone())
        .collect();
    assert_eq!(cat, "Café 日本 🚀 x".as_bytes());
    // The inner `tokenizers` tokenizer agrees.
    let enc = tok.inner().encode("Hello, world!", false).unwrap();
    assert_eq!(enc.get_ids(), &[19556, 28, 905, 17]);
}

#[test]
fn smollm2_chat_template_renders_chatml() {
    let content = smollm2_content();
    let source = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .expect("SmolLM2 has a chat template")
        .clone();
    let tmpl = ChatTemplate::new(&source, "<|im_start|>", "<|im_end|>").unwrap();
    let user = ChatMessage::new("user", "Hi");
    let out = tmpl.render(std::slice::from_ref(&user), true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // An explicit system message replaces the default one.
    let msgs = [ChatMessage::new("system", "Be brief."), user.clone()];
    let out = tmpl.render(&msgs, false).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
    // The rendered prompt tokenizes with the chat markers as single tokens.
    let tok = CandleTokenizer::from_gguf(&content).unwrap();
    let ids = tok.encode(&out, false).unwrap();
    assert_eq!(ids[0], 1);
    assert!(ids.contains(&2));
}

proptest::proptest! {
    #[test]
    fn smollm2_round_trips_arbitrary_text(s in proptest::prelude::any::<String>()) {
        let tok = smollm2_tokenizer();
        let ids = tok.encode(&s, false).unwrap();
        // Special-token strings in `s` come back verbatim too.
        proptest::prop_assert_eq!(tok.decode(&ids, false).unwrap(), s);
    }
}

/// Gemma 3's SPM vocabulary against its reference tokenizations (fails, naming
/// `cargo xtask fetch-models`, when the file is absent).
#[test]
fn gemma3_encode_matches_reference() {
    let path = fluent_ai_candle_models::cache::model_path("gemma3-270m")
        .expect("gemma3-270m is a known model");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        path.display()
    );
    let tok = CandleTokenizer::from_gguf(&read_content(&path)).unwrap();
    let lines = fixture_lines("reference/gemma3-tokenize.jsonl");
    let mut failures = Vec::new();
    for line in &lines {
        let text = line["text"].as_str().expect("text");
        let want = ids_of(&line["ids"]);
        let got = tok.encode(text, false).unwrap();
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            text,
            "decode of {want:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} lines differ:\n{}",
        failures.len(),
        lines.len(),
        failures.join("\n")
    );
}
