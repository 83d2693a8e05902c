//! `cargo xtask synth-model --arch ARCH --shape SHAPE --quant MIX --seed N --out FILE
//! [--vocab tokenizer.json|test] [--pre NAME] [--json]`: writes a deterministic GGUF with random
//! weights in a real model's shape (see `fluent_ai_candle_models::synth`).
//!
//! The vocabulary defaults to SmolLM2's `tokenizer.json` in `fixtures/reference/` (49,152
//! tokens, pre-tokenizer `smollm`), so llama.cpp and our tokenizer read the file alike;
//! `--vocab test` takes a 320-token byte-level vocabulary for small test files.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use fluent_ai_candle_models::synth::{self, QuantMix, SynthSpec, Vocabulary, SHAPES};

fn usage() -> String {
    let mut shapes: Vec<String> = SHAPES
        .iter()
        .map(|s| format!("{}/{}", s.arch, s.name))
        .collect();
    shapes.dedup();
    format!(
        "usage: synth-model --arch ARCH --shape SHAPE --quant MIX [--seed N] --out FILE \
         [--vocab FILE|test] [--pre NAME] [--json]\n  shapes: {}\n  mixes: {}",
        shapes.join(", "),
        QuantMix::NAMES.join(", ")
    )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", usage());
        return Ok(());
    }
    let value = |flag: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let need = |flag: &str| value(flag).with_context(|| format!("{flag} is required\n{}", usage()));
    let json = args.iter().any(|a| a == "--json");
    let shape = synth::shape(need("--arch")?, need("--shape")?)?;
    let mix = QuantMix::parse(need("--quant")?)?;
    let seed: u64 = value("--seed")
        .unwrap_or("0")
        .parse()
        .context("--seed takes an unsigned integer")?;
    let out = PathBuf::from(need("--out")?);
    if out.extension().and_then(|e| e.to_str()) != Some("gguf") {
        bail!("--out must name a .gguf file");
    }
    let vocab = match value("--vocab") {
        Some("test") => Vocabulary::byte_level_test(320),
        path => {
            let path = path.map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../fixtures/reference/smollm2-tokenizer.json")
            });
            Vocabulary::from_tokenizer_json(
                &path,
                value("--pre").unwrap_or("smollm"),
                "<|im_start|>",
                "<|im_end|>",
            )?
        }
    };
    let started = Instant::now();
    let summary = synth::write(&SynthSpec::new(shape, mix, seed), &vocab, &out)?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "path": out.display().to_string(),
                "arch": shape.arch,
                "shape": shape.name,
                "quant": need("--quant")?.to_ascii_lowercase(),
                "seed": seed,
                "tensors": summary.tensors,
                "parameters": summary.parameters,
                "bytes": summary.bytes,
                "formats": summary.formats.iter().map(|(f, n)| (f.clone(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
                "seconds": secs,
            })
        );
    } else {
        let formats: Vec<String> = summary
            .formats
            .iter()
            .map(|(f, n)| format!("{n} {f}"))
            .collect();
        println!(
            "{}: {} {} ({:.2} B parameters, {} tensors: {}), {:.1} MB in {secs:.1} s",
            out.display(),
            shape.arch,
            shape.name,
            summary.parameters as f64 / 1e9,
            summary.tensors,
            formats.join(", "),
            summary.bytes as f64 / 1e6
        );
    }
    Ok(())
}
