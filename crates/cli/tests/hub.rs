//! `--model hf:ORG/REPO[:FILE]` through the real binary, offline, against a directory laid out
//! like the Hugging Face cache (`HF_HUB_CACHE`) whose snapshot links to the real SmolLM2 file.

use std::path::PathBuf;
use std::process::Command;

fn fake_hub() -> PathBuf {
    let model = fluent_ai_candle_models::cache::model_path("smollm2-135m-instruct").unwrap();
    assert!(
        model.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        model.display()
    );
    let root =
        std::env::temp_dir().join(format!("fluent-ai-candle-cli-hub-{}", std::process::id()));
    let repo = root.join("models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF");
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    let link = snap.join("smollm2-135m-instruct-q4_1.gguf");
    if !link.exists() {
        std::os::unix::fs::symlink(&model, &link).unwrap();
    }
    root
}

fn cli(hub: &PathBuf, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fluent-ai-candle"))
        .args(args)
        .env("HF_HUB_CACHE", hub)
        .output()
        .unwrap()
}

#[test]
fn hub_reference_loads_the_cached_file_and_misses_are_clear_errors() {
    let hub = fake_hub();
    let direct = cli(&hub, &["tokenize", "Hello world"]);
    assert!(direct.status.success());
    for spec in [
        "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:smollm2-135m-instruct-q4_1.gguf",
        "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
    ] {
        let out = cli(&hub, &["tokenize", "--model", spec, "Hello world"]);
        assert!(
            out.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, direct.stdout, "{spec}");
    }
    let out = cli(
        &hub,
        &["tokenize", "--model", "hf:Someone/Not-Cached", "Hello"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(hub).ok();
}
