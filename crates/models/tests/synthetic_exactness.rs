//! Every architecture against llama.cpp: the `tiny` synthetic file of each (written here by
//! `synth`, the same bytes llama.cpp read) run teacher-forced on three prompts, compared with
//! llama.cpp's logits at every position (`fixtures/reference/synthetic-logits.jsonl`, made by
//! `fixtures/reference/tools/make_synthetic.sh`; provenance in `synthetic.README.md`).
//!
//! Architectures: llama (which also covers `mistral`, an architecture name llama.cpp does not
//! have: Mistral GGUF files say `llama`), qwen2, qwen3, phi3, gemma (Gemma 1), gemma2
//! (soft-capped scores and logits, alternating sliding-window layers), gemma3 and phi2, each in
//! `Q8_0` and `Q4_K_M`, and llama, qwen2, phi3 and gemma3 in `Q4_0`. Not here: deepseek2
//! (covered against an independent reference in `deepseek.rs`).
//!
//! Where llama.cpp is clear (its best logit ahead of the second by ≥ 0.5) our argmax must be
//! its argmax at every position. The logits themselves are llama.cpp's to the bit (the top
//! five at every position), save the known exceptions in [`NOT_BIT_EQUAL`]; our kernels give
//! the same bits on every SIMD level, so this holds on any machine.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Device;
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::synth::{self, QuantMix, SynthSpec, Vocabulary};
use fluent_ai_candle_models::{decoder, GgufFile};

/// Models whose top-5 logits may differ from llama.cpp's at some positions, with the fewest
/// of the 545 that must still be bit-equal: phi3 `Q4_K_M` matches 535 (the largest difference
/// 9.5e-7), the cause not yet found.
const NOT_BIT_EQUAL: [(&str, usize); 1] = [("phi3 q4_k_m", 535)];

fn file(arch: &str, quant: &str, seed: u64, vocab: &Vocabulary) -> PathBuf {
    let dir = common::scratch_dir("synth-exact");
    let path = dir.join(format!("{arch}-{quant}-{seed}.gguf"));
    if !path.is_file() {
        let spec = SynthSpec::new(
            synth::shape(arch, "tiny").unwrap(),
            QuantMix::parse(quant).unwrap(),
            seed,
        );
        synth::write(&spec, vocab, &path).unwrap();
    }
    path
}

#[test]
fn every_architecture_agrees_with_llama_cpp() {
    let vocab = Vocabulary::from_tokenizer_json(
        &common::fixture("reference/smollm2-tokenizer.json"),
        "smollm",
        "<|im_start|>",
        "<|im_end|>",
    )
    .unwrap();
    let lines = common::jsonl("reference/synthetic-logits.jsonl");
    assert!(!lines.is_empty());
    let mut report: BTreeMap<String, (usize, usize, f32, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for line in &lines {
        let arch = line["arch"].as_str().unwrap();
        let quant = line["quant"].as_str().unwrap();
        let seed = line["seed"].as_u64().unwrap();
        let path = file(arch, quant, seed, &vocab);
        let model = decoder::load(
            &mut GgufFile::open(&path).unwrap(),
            &Device::Cpu,
            &mut |_| {},
        )
        .unwrap();
        let ids = common::ids(&line["ids"]);
        let mut kv = model
            .new_cache(&KvCacheConfig::default().max_entries(ids.len() + 1))
            .unwrap();
        let logits = model
            .forward(&ids, &mut kv, true)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let positions = line["positions"].as_array().unwrap();
        assert_eq!(positions.len(), ids.len());
        let entry = report
            .entry(format!("{arch} {quant}"))
            .or_insert((0, 0, 0.0, 0));
        for (i, (ours, theirs)) in logits.iter().zip(positions).enumerate() {
            let argmax = theirs["argmax"].as_u64().unwrap() as u32;
            let margin = theirs["margin"].as_f64().unwrap() as f32;
            entry.0 += 1;
            if common::argmax(ours) == argmax {
                entry.1 += 1;
            } else if margin >= 0.5 {
                failures.push(format!(
                    "{arch} {quant} position {i}: ours {} llama.cpp {argmax} (margin {margin})",
                    common::argmax(ours)
                ));
            }
            for pair in theirs["top5"].as_array().unwrap() {
                let id = pair[0].as_u64().unwrap() as usize;
                let logit = pair[1].as_f64().unwrap() as f32;
                entry.2 = entry.2.max((ours[id] - logit).abs());
                entry.3 += usize::from(ours[id].to_bits() == logit.to_bits());
            }
        }
    }
    for (model, (positions, agree, max_diff, bit_equal)) in &report {
        eprintln!(
            "{model}: argmax agrees at {agree}/{positions} positions; top-5 logits: \
             {bit_equal}/{} bit-equal, largest difference {max_diff:.2e}",
            positions * 5
        );
    }
    // Every architecture the fixture must cover, in both formats (a line lost from the
    // fixture must not quietly drop an architecture from the test).
    for arch in [
        "llama", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "phi2",
    ] {
        for quant in ["q8_0", "q4_k_m"] {
            assert!(
                report.contains_key(&format!("{arch} {quant}")),
                "no reference lines for {arch} {quant}"
            );
        }
    }
    for arch in ["llama", "qwen2", "phi3", "gemma3"] {
        assert!(
            report.contains_key(&format!("{arch} q4_0")),
            "no reference lines for {arch} q4_0"
        );
    }
    for (model, (positions, _, _, bit_equal)) in &report {
        let floor = NOT_BIT_EQUAL
            .iter()
            .find(|(m, _)| m == model)
            .map_or(positions * 5, |&(_, floor)| floor);
        if *bit_equal < floor {
            failures.push(format!(
                "{model}: {bit_equal}/{} top-5 logits bit-equal to llama.cpp's, {floor} expected",
                positions * 5
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
