//! Helpers shared by the real-model tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The real SmolLM2 file from the model cache, or a failure naming the command that fetches it.
pub fn smollm2_path() -> PathBuf {
    let path = fluent_ai_candle_models::cache::model_path("smollm2-135m-instruct").unwrap();
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        path.display()
    );
    path
}

/// The real Gemma 3 270M file from the model cache, or a failure naming the command that
/// fetches it.
pub fn gemma3_path() -> PathBuf {
    let path = fluent_ai_candle_models::cache::model_path("gemma3-270m").unwrap();
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        path.display()
    );
    path
}

/// A file of `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// The JSON lines of a fixture file.
pub fn jsonl(rel: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A JSON array of integers as token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
