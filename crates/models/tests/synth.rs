//! Synthetic models (`synth`, `cargo xtask synth-model`): every architecture's `tiny` file loads
//! in our decoders and gives finite logits; the files are the same bytes on every run; the
//! SmolLM2 vocabulary converted from `tokenizer.json` tokenizes as the real SmolLM2 GGUF does.

mod common;

use std::path::PathBuf;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::synth::{self, QuantMix, SynthSpec, Vocabulary, ARCHITECTURES};
use fluent_ai_candle_models::{decoder, GgufFile, LoadedModel};

fn smollm2_vocab() -> Vocabulary {
    Vocabulary::from_tokenizer_json(
        &common::fixture("reference/smollm2-tokenizer.json"),
        "smollm",
        "<|im_start|>",
        "<|im_end|>",
    )
    .unwrap()
}

fn out(name: &str) -> PathBuf {
    let dir = common::scratch_dir("synth-test");
    dir.join(name)
}

#[test]
fn every_architecture_loads_and_runs() {
    let vocab = Vocabulary::byte_level_test(320);
    for arch in ARCHITECTURES {
        for mix in ["q8_0", "q4_k_m"] {
            let spec = SynthSpec::new(
                synth::shape(arch, "tiny").unwrap(),
                QuantMix::parse(mix).unwrap(),
                3,
            );
            let path = out(&format!("{arch}-{mix}.gguf"));
            let summary = synth::write(&spec, &vocab, &path).unwrap();
            assert!(summary.bytes > 0 && summary.tensors > 10, "{arch} {mix}");
            let model = decoder::load(
                &mut GgufFile::open(&path).unwrap(),
                &Device::Cpu,
                &mut |_| {},
            )
            .unwrap_or_else(|e| panic!("{arch} {mix}: {e}"));
            let mut kv = model
                .new_cache(&KvCacheConfig::default().max_entries(16))
                .unwrap();
            let logits = model
                .forward(&[5, 70, 200, 9], &mut kv, false)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(logits.len(), 320, "{arch} {mix}");
            assert!(logits.iter().all(|l| l.is_finite()), "{arch} {mix}");
            // Random weights still give logits that differ from token to token.
            let spread = logits.iter().cloned().fold(f32::MIN, f32::max)
                - logits.iter().cloned().fold(f32::MAX, f32::min);
            assert!(spread > 0.1, "{arch} {mix}: spread {spread}");
            std::fs::remove_file(&path).ok();
        }
    }
}

#[test]
fn the_mix_is_written_and_files_are_deterministic() {
    let vocab = Vocabulary::byte_level_test(320);
    let spec = SynthSpec::new(
        synth::shape("llama", "tiny").unwrap(),
        QuantMix::parse("q4_k_m").unwrap(),
        11,
    );
    let (a, b) = (out("det-a.gguf"), out("det-b.gguf"));
    synth::write(&spec, &vocab, &a).unwrap();
    synth::write(&spec, &vocab, &b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let mut f = std::fs::File::open(&a).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let dtype = |n: &str| content.tensor_infos[n].ggml_dtype;
    use candle_core::quantized::GgmlDType::*;
    // 2 layers: n/8 = 0 in llama.cpp's integer arithmetic, so only layer 1 (≥ 7n/8) gets the
    // extra bits in attn_v and ffn_down.
    assert_eq!(dtype("blk.0.attn_v.weight"), Q4K);
    assert_eq!(dtype("blk.1.attn_v.weight"), Q6K);
    assert_eq!(dtype("blk.0.ffn_down.weight"), Q4K);
    assert_eq!(dtype("blk.1.ffn_down.weight"), Q6K);
    assert_eq!(dtype("blk.0.attn_q.weight"), Q4K);
    assert_eq!(dtype("output.weight"), Q6K);
    assert_eq!(dtype("token_embd.weight"), Q4K);
    assert_eq!(dtype("blk.0.attn_norm.weight"), F32);
    // Another seed, other weights.
    let other = SynthSpec { seed: 12, ..spec };
    synth::write(&other, &vocab, &b).unwrap();
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::remove_file(a).ok();
    std::fs::remove_file(b).ok();
}

#[test]
fn smollm2_vocabulary_tokenizes_as_the_real_file() {
    let path = out("vocab.gguf");
    let spec = SynthSpec::new(
        synth::shape("llama", "tiny").unwrap(),
        QuantMix::parse("q8_0").unwrap(),
        1,
    );
    synth::write(&spec, &smollm2_vocab(), &path).unwrap();
    let synthetic = LoadedModel::load(&path, &Device::Cpu, &mut |_| {}).unwrap();
    let mut checked = 0;
    for line in common::jsonl("reference/smollm2-tokenize.jsonl") {
        let text = line["text"].as_str().unwrap();
        let ids = synthetic.tokenizer.encode(text, false).unwrap();
        assert_eq!(ids, common::ids(&line["ids"]), "{text:?}");
        checked += 1;
    }
    assert!(checked >= 5);
    // The metadata llama.cpp reads is the real file's.
    let real = gguf_file::Content::read(&mut std::fs::File::open(common::smollm2_path()).unwrap())
        .unwrap();
    let ours = gguf_file::Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ] {
        assert_eq!(
            format!("{:?}", ours.metadata[key]),
            format!("{:?}", real.metadata[key]),
            "{key}"
        );
    }
    std::fs::remove_file(path).ok();
}

#[test]
fn bad_input_is_a_typed_error() {
    let e = Vocabulary::from_tokenizer_json(
        &common::fixture("grammars/json.gbnf"),
        "smollm",
        "<|im_start|>",
        "<|im_end|>",
    )
    .unwrap_err();
    assert!(matches!(e, synth::SynthError::Vocabulary { .. }), "{e}");
    let vocab = Vocabulary::byte_level_test(300);
    let spec = SynthSpec::new(
        synth::shape("llama", "tiny").unwrap(),
        QuantMix::parse("f16").unwrap(),
        1,
    );
    let e = synth::write(&spec, &vocab, &out("no-such-dir/x.gguf")).unwrap_err();
    assert!(matches!(e, synth::SynthError::Write { .. }), "{e}");
}

/// Gemma 2's sliding window (16 on the tiny shape) and soft-caps act the same in a prompt, in
/// one-token decode steps and in batched decode steps: a 24-token sequence reaches past the
/// window, and each path's logits at every position agree with the prompt's.
#[test]
fn gemma2_window_and_caps_agree_across_prompt_decode_and_batch() {
    let vocab = Vocabulary::byte_level_test(320);
    let spec = SynthSpec::new(
        synth::shape("gemma2", "tiny").unwrap(),
        QuantMix::parse("q8_0").unwrap(),
        5,
    );
    let path = out("gemma2-paths.gguf");
    synth::write(&spec, &vocab, &path).unwrap();
    let model = decoder::load(
        &mut GgufFile::open(&path).unwrap(),
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % 320).collect();
    let cache = || {
        model
            .new_cache(&KvCacheConfig::default().max_entries(32))
            .unwrap()
    };
    let mut kv = cache();
    let prompt: Vec<Vec<f32>> = model
        .forward(&tokens, &mut kv, true)
        .unwrap()
        .to_vec2()
        .unwrap();
    let (mut one, mut a, mut b) = (cache(), cache(), cache());
    let mut worst = 0f32;
    for (i, &t) in tokens.iter().enumerate() {
        let step: Vec<f32> = model
            .forward(&[t], &mut one, false)
            .unwrap()
            .to_vec1()
            .unwrap();
        let batch: Vec<Vec<f32>> = model
            .forward_batch(&[t, t], &mut [&mut a, &mut b])
            .unwrap()
            .to_vec2()
            .unwrap();
        for got in [&step, &batch[0], &batch[1]] {
            for (x, y) in got.iter().zip(&prompt[i]) {
                worst = worst.max((x - y).abs());
            }
        }
        assert_eq!(batch[0], batch[1], "position {i}");
    }
    // Logits are capped at 10; a wrong window or a missing cap moves them by whole units.
    assert!(worst < 1e-2, "largest difference {worst}");
    std::fs::remove_file(&path).ok();
}
