//! `--model DIR` and `--model hf:ORG/REPO` for a Hugging Face safetensors model, through the
//! real binary, offline: a tiny random llama (`config.json`, `model.safetensors`) with a
//! hand-written byte-level `tokenizer.json`, in a directory laid out like the Hugging Face
//! cache (`HF_HUB_CACHE`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::DType;

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fluent-ai-candle-cli-hf-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tiny random llama shared with the models crate's safetensors tests (f32 here; config
/// with BOS and EOS ids).
#[path = "../../models/tests/common/tiny_hf.rs"]
mod tiny_hf;

fn write_weights(dir: &Path) {
    tiny_hf::write_tiny_llama(
        dir,
        DType::F32,
        None,
        serde_json::json!({"bos_token_id": 1, "eos_token_id": 2}),
    );
}

/// A byte-level BPE `tokenizer.json` in the hub's format: 3 special tokens, the 26 letters,
/// `Ġ` (a space) and 5 merged tokens (ids 35-39 unused); and a `tokenizer_config.json` with
/// a chat template.
fn write_tokenizer(dir: &Path) {
    let special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut vocab: Vec<String> = special.map(String::from).to_vec();
    vocab.extend(('a'..='z').map(String::from));
    vocab.push("Ġ".into());
    let merges = [
        ("h", "e"),
        ("l", "l"),
        ("he", "ll"),
        ("hell", "o"),
        ("Ġ", "w"),
    ];
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": special.iter().enumerate().map(|(id, content)| serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true,
        })).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i)))
                .collect::<serde_json::Map<_, _>>(),
            "merges": merges.iter().map(|(a, b)| serde_json::json!([a, b])).collect::<Vec<_>>(),
        },
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let config = serde_json::json!({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

/// A hub cache under `root` holding `Org/Tiny` as a safetensors model; returns the snapshot.
fn fake_hub(root: &Path) -> PathBuf {
    let repo = root.join("models--Org--Tiny");
    let rev = "00112233445566778899aabbccddeeff00112233";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), rev).unwrap();
    let snapshot = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snapshot).unwrap();
    write_weights(&snapshot);
    write_tokenizer(&snapshot);
    snapshot
}

fn cli(hub: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluent-ai-candle"))
        .args(args)
        .env("HF_HUB_CACHE", hub)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn safetensors_directories_and_hub_snapshots_generate() {
    let tmp = TempDir::new("gen");
    let snapshot = fake_hub(&tmp.0);
    let dir = snapshot.to_str().unwrap();

    for model in [dir, "hf:Org/Tiny"] {
        let ids = ok(&cli(&tmp.0, &["tokenize", "--model", model, "hello world"]));
        assert_eq!(ids.trim(), "[33,34,17,20,14,6]", "{model}");
    }

    let generate = |model: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model,
            "--temperature",
            "0",
            "--max-tokens",
            "4",
            "--json",
        ];
        args.extend_from_slice(extra);
        args.push("hello");
        cli(&tmp.0, &args)
    };
    let last_json = |stdout: &str| -> serde_json::Value {
        serde_json::from_str(stdout.trim_end().lines().last().unwrap()).unwrap()
    };
    // The chat template of tokenizer_config.json: im_start, u s e r, hello, im_end,
    // im_start, a s s i s t a n t (newlines are not in this vocabulary).
    let from_dir = ok(&generate(dir, &[]));
    let out = last_json(&from_dir);
    assert_eq!(out["usage"]["prompt_tokens"], 17, "{out}");
    let generated = out["token_ids"].as_array().unwrap().len();
    assert!((1..=4).contains(&generated), "{out}");
    // The hub reference is the same model, quantized the same way by default.
    assert_eq!(ok(&generate("hf:Org/Tiny", &[])), from_dir);
    assert_eq!(ok(&generate(dir, &["--quant", "q8_0"])), from_dir);
    let raw = last_json(&ok(&generate(dir, &["--quant", "f32", "--raw"])));
    assert_eq!(raw["usage"]["prompt_tokens"], 1, "{raw}");

    // Bad input is an error message, never a panic.
    let err = failure(&generate(dir, &["--quant", "q4_k"]));
    assert!(err.contains("Q4K"), "{err}");
    let err = failure(&generate(dir, &["--quant", "q3"]));
    assert!(err.contains("q4_0, q4_k, q8_0, f16, bf16, f32"), "{err}");
    let gguf = fluent_ai_candle_models::cache::model_path("smollm2-135m-instruct").unwrap();
    assert!(
        gguf.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        gguf.display()
    );
    // A GGUF is re-quantized only to fewer bits than it stores (Q4_1 here).
    let err = failure(&generate(gguf.to_str().unwrap(), &["--quant", "f32"]));
    assert!(err.contains("cannot go up in precision"), "{err}");
    std::fs::remove_file(snapshot.join("tokenizer.json")).unwrap();
    let err = failure(&generate(dir, &[]));
    assert!(err.contains("tokenizer.json"), "{err}");
    let err = failure(&generate("hf:Org/Tiny", &[]));
    assert!(err.contains("lacks tokenizer.json"), "{err}");
}
