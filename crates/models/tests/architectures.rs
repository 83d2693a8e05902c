//! Our llama-family decoder on the GGUF architectures `qwen2`, `qwen3`, `mistral` and `phi3`,
//! against candle-transformers' implementation of the same architecture (`quantized_qwen2`,
//! `quantized_qwen3`, `quantized_phi3`, and `quantized_llama` for mistral) on the same small
//! synthetic GGUF files:
//! logits of every prompt position, single-token decode steps and batched decode steps;
//! re-rotation of cached keys by an attention-sink cache in each RoPE style; typed errors on
//! bad files.

mod common;

use std::path::PathBuf;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{
    quantized_llama, quantized_phi3, quantized_qwen2, quantized_qwen3,
};
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{decoder, Decoder, GgufFile, Llama, ModelError, RopeStyle};

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 128;
const VOCAB: usize = 256;
const CONTEXT: usize = 64;

/// The prompt, the tokens decoded after it, and a second sequence for batched decoding.
const PROMPT: [u32; 7] = [3, 17, 200, 45, 9, 128, 77];
const DECODE: [u32; 3] = [5, 250, 31];
const OTHER: [u32; 4] = [99, 1, 64, 180];
const OTHER_DECODE: [u32; 3] = [12, 7, 222];

/// What a synthetic file of one architecture holds.
#[derive(Debug, Clone, Copy)]
struct Spec {
    arch: &'static str,
    layers: usize,
    head_dim: usize,
    /// `blk.N.attn_{q,k,v}.bias`.
    bias: bool,
    /// `blk.N.attn_{q,k}_norm.weight`.
    qk_norm: bool,
    /// No `output.weight`: the output shares the token embedding.
    tied: bool,
    /// `blk.N.attn_qkv.weight` and a `blk.N.ffn_up.weight` holding the gate rows then the up
    /// rows, instead of `attn_{q,k,v}` and `ffn_{gate,up}` (phi3).
    fused: bool,
    /// Format of the matrices (vectors are F32).
    weights: GgmlDType,
}

fn spec(arch: &'static str, layers: usize) -> Spec {
    match arch {
        "qwen2" => Spec {
            arch,
            layers,
            head_dim: HIDDEN / HEADS,
            bias: true,
            qk_norm: false,
            tied: true,
            fused: false,
            weights: GgmlDType::Q8_0,
        },
        // A head wider than hidden / heads, as Qwen3's are.
        "qwen3" => Spec {
            arch,
            layers,
            head_dim: 32,
            bias: false,
            qk_norm: true,
            tied: false,
            fused: false,
            weights: GgmlDType::Q8_0,
        },
        "mistral" => Spec {
            arch,
            layers,
            head_dim: HIDDEN / HEADS,
            bias: false,
            qk_norm: false,
            tied: false,
            fused: false,
            weights: GgmlDType::Q8_0,
        },
        // llama.cpp's layout: fused projections, an output of its own (candle-transformers'
        // phi3 requires `output.weight`; ours also runs a tied one).
        "phi3" => Spec {
            arch,
            layers,
            head_dim: HIDDEN / HEADS,
            bias: false,
            qk_norm: false,
            tied: false,
            fused: true,
            weights: GgmlDType::Q8_0,
        },
        other => panic!("no spec for {other}"),
    }
}

fn metadata(s: &Spec) -> Vec<(String, Value)> {
    let a = s.arch;
    let mut md = vec![
        ("general.architecture".to_string(), Value::String(a.into())),
        (format!("{a}.context_length"), Value::U32(CONTEXT as u32)),
        (format!("{a}.embedding_length"), Value::U32(HIDDEN as u32)),
        (format!("{a}.block_count"), Value::U32(s.layers as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(FFN as u32)),
        (
            format!("{a}.attention.head_count"),
            Value::U32(HEADS as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(KV_HEADS as u32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(10_000.0)),
        (format!("{a}.vocab_size"), Value::U32(VOCAB as u32)),
    ];
    match a {
        "qwen3" => {
            md.push((
                format!("{a}.attention.key_length"),
                Value::U32(s.head_dim as u32),
            ));
            md.push((
                format!("{a}.attention.value_length"),
                Value::U32(s.head_dim as u32),
            ));
            // candle-transformers' qwen3 builds its RoPE tables in f16 unless told f32.
            md.push(("general.dtype".into(), Value::U32(0)));
        }
        "mistral" | "phi3" => md.push((
            format!("{a}.rope.dimension_count"),
            Value::U32(s.head_dim as u32),
        )),
        _ => {}
    }
    md
}

fn tensors(s: &Spec) -> Vec<(String, Vec<usize>)> {
    let (q, kv) = (HEADS * s.head_dim, KV_HEADS * s.head_dim);
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("output_norm.weight".to_string(), vec![HIDDEN]),
    ];
    if !s.tied {
        t.push(("output.weight".to_string(), vec![VOCAB, HIDDEN]));
    }
    for i in 0..s.layers {
        let mut layer = if s.fused {
            vec![
                ("attn_norm.weight", vec![HIDDEN]),
                ("attn_qkv.weight", vec![q + 2 * kv, HIDDEN]),
                ("attn_output.weight", vec![HIDDEN, q]),
                ("ffn_norm.weight", vec![HIDDEN]),
                ("ffn_up.weight", vec![2 * FFN, HIDDEN]),
                ("ffn_down.weight", vec![HIDDEN, FFN]),
            ]
        } else {
            vec![
                ("attn_norm.weight", vec![HIDDEN]),
                ("attn_q.weight", vec![q, HIDDEN]),
                ("attn_k.weight", vec![kv, HIDDEN]),
                ("attn_v.weight", vec![kv, HIDDEN]),
                ("attn_output.weight", vec![HIDDEN, q]),
                ("ffn_norm.weight", vec![HIDDEN]),
                ("ffn_gate.weight", vec![FFN, HIDDEN]),
                ("ffn_up.weight", vec![FFN, HIDDEN]),
                ("ffn_down.weight", vec![HIDDEN, FFN]),
            ]
        };
        if s.bias {
            layer.push(("attn_q.bias", vec![q]));
            layer.push(("attn_k.bias", vec![kv]));
            layer.push(("attn_v.bias", vec![kv]));
        }
        if s.qk_norm {
            layer.push(("attn_q_norm.weight", vec![s.head_dim]));
            layer.push(("attn_k_norm.weight", vec![s.head_dim]));
        }
        for (name, shape) in layer {
            t.push((format!("blk.{i}.{name}"), shape));
        }
    }
    t
}

/// Writes a GGUF of random weights (fixed seed): matrices in `weights`, vectors in F32.
fn write(
    name: &str,
    metadata: &[(String, Value)],
    tensors: &[(String, Vec<usize>)],
    weights: GgmlDType,
) -> PathBuf {
    common::write_synthetic_gguf(
        "architectures-test",
        name,
        metadata,
        tensors,
        0x9e37_79b9_7f4a_7c15,
        |n, r| {
            if n.contains("norm") {
                1.0 + r * 0.5
            } else if n.contains("bias") {
                r * 2.0
            } else {
                r * 0.5
            }
        },
        |shape| {
            if shape.len() == 2 {
                weights
            } else {
                GgmlDType::F32
            }
        },
    )
}

fn write_spec(s: &Spec) -> PathBuf {
    write(
        &format!("{}-{}-{:?}.gguf", s.arch, s.layers, s.weights),
        &metadata(s),
        &tensors(s),
        s.weights,
    )
}

fn load(path: &PathBuf) -> Result<Box<dyn Decoder>, ModelError> {
    decoder::load(&mut GgufFile::open(path)?, &Device::Cpu, &mut |_| {})
}

/// candle-transformers' model of the architecture, loaded from the same file.
enum Reference {
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
    Llama(quantized_llama::ModelWeights),
    Phi3(quantized_phi3::ModelWeights),
}

impl Reference {
    fn load(path: &PathBuf, arch: &str) -> Self {
        let mut f = std::fs::File::open(path).unwrap();
        let mut ct = gguf_file::Content::read(&mut f).unwrap();
        let dev = &Device::Cpu;
        match arch {
            "qwen2" => {
                Self::Qwen2(quantized_qwen2::ModelWeights::from_gguf(ct, &mut f, dev).unwrap())
            }
            "qwen3" => {
                Self::Qwen3(quantized_qwen3::ModelWeights::from_gguf(ct, &mut f, dev).unwrap())
            }
            "mistral" => {
                // quantized_llama reads its hyper-parameters under `llama.` only (and picks
                // the RoPE style from `general.architecture`, interleaved for mistral): the
                // `mistral.` keys are aliased in memory; the file and its tensors are the same.
                let aliases: Vec<(String, Value)> = ct
                    .metadata
                    .iter()
                    .filter_map(|(k, v)| {
                        k.strip_prefix("mistral.")
                            .map(|rest| (format!("llama.{rest}"), v.clone()))
                    })
                    .collect();
                ct.metadata.extend(aliases);
                Self::Llama(quantized_llama::ModelWeights::from_gguf(ct, &mut f, dev).unwrap())
            }
            "phi3" => {
                Self::Phi3(quantized_phi3::ModelWeights::from_gguf(false, ct, &mut f, dev).unwrap())
            }
            other => panic!("no reference for {other}"),
        }
    }

    /// Logits of the last of `tokens`, run after `pos` cached tokens (a fresh start at 0).
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Vec<f32> {
        let x = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        if pos == 0 {
            match self {
                Self::Qwen2(m) => m.clear_kv_cache(),
                Self::Qwen3(m) => m.clear_kv_cache(),
                Self::Llama(m) => m.clear_kv_cache(),
                // Resets its caches itself when run at position 0.
                Self::Phi3(_) => {}
            }
        }
        let logits = match self {
            Self::Qwen2(m) => m.forward(&x, pos),
            Self::Qwen3(m) => m.forward(&x, pos),
            Self::Llama(m) => m.forward(&x, pos),
            Self::Phi3(m) => m.forward(&x, pos),
        };
        logits.unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
}

use common::{diff, row};

/// Runs prompt, decode and batched decode through our decoder and candle-transformers', and
/// checks every logit agrees within 1e-3 of the logit scale with an f32 KV cache (candle's
/// attention is f32 throughout), within 1e-2 with the default f16 cache and llama.cpp's f16
/// attention. Returns (max diff, scale).
fn compare_with_candle_transformers(
    arch: &'static str,
    weights: GgmlDType,
    kv: DType,
) -> (f32, f32) {
    let s = Spec {
        weights,
        ..spec(arch, 2)
    };
    let path = write_spec(&s);
    let mut model = load(&path).unwrap();
    if let Some(l) = model.downcast_mut::<Llama>() {
        l.set_kv_dtype(kv).unwrap();
    }
    let tolerance = if kv == DType::F32 { 1e-3 } else { 1e-2 };
    let Some(llama) = model.downcast_ref::<Llama>() else {
        panic!("{arch} did not load as the llama-family decoder");
    };
    let want_rope = if arch == "mistral" {
        RopeStyle::Interleaved
    } else {
        RopeStyle::Neox
    };
    assert_eq!(llama.variant().rope, want_rope);
    assert_eq!(model.config().head_dim, s.head_dim);
    let mut reference = Reference::load(&path, arch);
    let cfg = KvCacheConfig::default().max_entries(16);
    let (mut worst, mut scale) = (0f32, 0f32);
    let mut check = |what: String, ours: &[f32], theirs: &[f32]| {
        let (d, m) = diff(ours, theirs);
        worst = worst.max(d);
        scale = scale.max(m);
        assert!(
            m > 0.5,
            "{arch} {what}: degenerate logits (max |logit| {m})"
        );
        assert!(
            d <= tolerance * m.max(1.0),
            "{arch} {what} ({kv:?} cache): max diff {d}, scale {m}"
        );
    };

    // Every prompt position at once, against the reference's prefix prefills.
    let mut cache = model.new_cache(&cfg).unwrap();
    let all = model.forward(&PROMPT, &mut cache, true).unwrap();
    assert_eq!(all.dims(), &[PROMPT.len(), VOCAB]);
    for i in 0..PROMPT.len() {
        let theirs = reference.forward(&PROMPT[..=i], 0);
        check(
            format!("prompt position {i}"),
            &row(&all.get(i).unwrap()),
            &theirs,
        );
    }
    // Single-token decode steps after the whole prompt (the reference's cache holds it).
    let mut decoded = Vec::new();
    for (j, &t) in DECODE.iter().enumerate() {
        let ours = row(&model.forward(&[t], &mut cache, false).unwrap());
        let theirs = reference.forward(&[t], PROMPT.len() + j);
        check(format!("decode step {j}"), &ours, &theirs);
        decoded.push(theirs);
    }
    // Batched decode steps of two sequences of different lengths.
    let mut other_ref = Reference::load(&path, arch);
    other_ref.forward(&OTHER, 0);
    let mut a = model.new_cache(&cfg).unwrap();
    model.forward(&PROMPT, &mut a, false).unwrap();
    let mut b = model.new_cache(&cfg).unwrap();
    model.forward(&OTHER, &mut b, false).unwrap();
    for j in 0..DECODE.len() {
        let batch = model
            .forward_batch(&[DECODE[j], OTHER_DECODE[j]], &mut [&mut a, &mut b])
            .unwrap();
        assert_eq!(batch.dims(), &[2, VOCAB]);
        check(
            format!("batched step {j}, sequence 0"),
            &row(&batch.get(0).unwrap()),
            &decoded[j],
        );
        let theirs = other_ref.forward(&[OTHER_DECODE[j]], OTHER.len() + j);
        check(
            format!("batched step {j}, sequence 1"),
            &row(&batch.get(1).unwrap()),
            &theirs,
        );
    }
    eprintln!(
        "{arch} ({weights:?} weights, {kv:?} cache): max |ours - candle-transformers| = {worst:.3e} over logits of scale {scale:.3} ({:.2e} relative)",
        worst / scale
    );
    (worst, scale)
}

#[test]
fn qwen2_matches_candle_transformers() {
    compare_with_candle_transformers("qwen2", GgmlDType::F32, DType::F32);
    compare_with_candle_transformers("qwen2", GgmlDType::F32, DType::F16);
    compare_with_candle_transformers("qwen2", GgmlDType::Q8_0, DType::F32);
}

#[test]
fn qwen3_matches_candle_transformers() {
    compare_with_candle_transformers("qwen3", GgmlDType::F32, DType::F32);
    compare_with_candle_transformers("qwen3", GgmlDType::F32, DType::F16);
    compare_with_candle_transformers("qwen3", GgmlDType::Q8_0, DType::F32);
}

#[test]
fn phi3_matches_candle_transformers() {
    compare_with_candle_transformers("phi3", GgmlDType::F32, DType::F32);
    compare_with_candle_transformers("phi3", GgmlDType::F32, DType::F16);
    compare_with_candle_transformers("phi3", GgmlDType::Q8_0, DType::F32);
}

#[test]
fn mistral_matches_candle_transformers_llama() {
    compare_with_candle_transformers("mistral", GgmlDType::F32, DType::F32);
    compare_with_candle_transformers("mistral", GgmlDType::F32, DType::F16);
    compare_with_candle_transformers("mistral", GgmlDType::Q8_0, DType::F32);
}

/// `FLUENT_AI_CANDLE_ATTENTION=candle` goes through the trait object: a llama-family decoder
/// turns its attention kernel off and creates f32 caches; `downcast_ref` reaches the concrete
/// decoder only when it is one.
#[test]
fn candle_attention_switch_works_through_the_trait_object() {
    let path = write_spec(&Spec {
        weights: GgmlDType::F32,
        ..spec("qwen2", 1)
    });
    let mut model = load(&path).unwrap();
    assert!(model
        .downcast_ref::<fluent_ai_candle_models::Gemma3>()
        .is_none());
    let llama = model.downcast_ref::<Llama>().unwrap();
    assert!(llama.fused_attention());
    assert_eq!(model.cache_shape().dtype, DType::F16);
    model.use_candle_attention().unwrap();
    let llama = model.downcast_ref::<Llama>().unwrap();
    assert!(!llama.fused_attention());
    assert_eq!(llama.kv_dtype(), DType::F32);
    let cache = model
        .new_cache(&KvCacheConfig::default().max_entries(8))
        .unwrap();
    assert_eq!(cache.shape().dtype, DType::F32);
}

/// With one layer a token's keys and values depend only on the token and its position, so
/// after an attention-sink eviction re-rotates the kept keys, the next token's logits equal
/// those of a fresh cache holding just the kept tokens: true only when the re-rotation uses
/// the architecture's RoPE style.
#[test]
fn sink_rerotation_uses_each_architectures_rope_style() {
    for arch in ["qwen2", "qwen3", "mistral", "phi3"] {
        // F32 weights: Q8_0 would requantize the activations and hide small differences.
        let path = write_spec(&Spec {
            weights: GgmlDType::F32,
            ..spec(arch, 1)
        });
        let mut model = load(&path).unwrap();
        // An f32 cache: with f16 keys, re-rotating stored keys and rotating fresh ones round
        // differently, which would hide the RoPE style this checks.
        if let Some(l) = model.downcast_mut::<Llama>() {
            l.set_kv_dtype(DType::F32).unwrap();
        }
        let worst = common::sink_rerotation_max_diff(model.as_ref(), VOCAB, arch);
        eprintln!("{arch}: sink re-rotation max diff {worst:.3e}");
    }
}

fn load_err(name: &str, md: &[(String, Value)], tensors: &[(String, Vec<usize>)]) -> ModelError {
    let path = write(name, md, tensors, GgmlDType::F32);
    load(&path).unwrap_err()
}

#[test]
fn bad_files_are_typed_errors() {
    // qwen2's projection biases are required (llama.cpp requires them too).
    let s = spec("qwen2", 2);
    let ts: Vec<_> = tensors(&s)
        .into_iter()
        .filter(|(n, _)| n != "blk.1.attn_k.bias")
        .collect();
    let err = load_err("qwen2-no-bias.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, .. } if name == "blk.1.attn_k.bias"),
        "{err}"
    );
    // ...and must have the projection's width.
    let mut ts = tensors(&s);
    for (n, shape) in ts.iter_mut() {
        if n == "blk.0.attn_q.bias" {
            *shape = vec![KV_HEADS * s.head_dim];
        }
    }
    let err = load_err("qwen2-bad-bias.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, reason } if name == "blk.0.attn_q.bias" && reason.contains("expected shape")),
        "{err}"
    );
    // qwen3's query/key norms are required, one weight per head dimension.
    let s = spec("qwen3", 2);
    let ts: Vec<_> = tensors(&s)
        .into_iter()
        .filter(|(n, _)| n != "blk.0.attn_q_norm.weight")
        .collect();
    let err = load_err("qwen3-no-norm.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, .. } if name == "blk.0.attn_q_norm.weight"),
        "{err}"
    );
    let mut ts = tensors(&s);
    for (n, shape) in ts.iter_mut() {
        if n == "blk.1.attn_k_norm.weight" {
            *shape = vec![HIDDEN];
        }
    }
    let err = load_err("qwen3-bad-norm.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, .. } if name == "blk.1.attn_k_norm.weight"),
        "{err}"
    );
    // A missing hyper-parameter under the architecture's own prefix.
    let md: Vec<_> = metadata(&s)
        .into_iter()
        .filter(|(k, _)| k != "qwen3.block_count")
        .collect();
    let err = load_err("qwen3-no-blocks.gguf", &md, &tensors(&s));
    assert!(
        matches!(&err, ModelError::MissingMetadata { key } if key == "qwen3.block_count"),
        "{err}"
    );
    // Keys under `llama.` do not stand in for a mistral file's own.
    let s = spec("mistral", 2);
    let md: Vec<_> = metadata(&s)
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("mistral.") {
            Some(rest) if rest == "embedding_length" => (format!("llama.{rest}"), v),
            _ => (k, v),
        })
        .collect();
    let err = load_err("mistral-llama-keys.gguf", &md, &tensors(&s));
    assert!(
        matches!(&err, ModelError::MissingMetadata { key } if key == "mistral.embedding_length"),
        "{err}"
    );
    // An unknown architecture, through the dispatching loader and the llama-family one.
    let mut md = metadata(&spec("qwen2", 2));
    md[0].1 = Value::String("mamba".into());
    let path = write(
        "mamba.gguf",
        &md,
        &tensors(&spec("qwen2", 2)),
        GgmlDType::F32,
    );
    let err = load(&path).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture(a) if a == "mamba"),
        "{err}"
    );
    let err = Llama::load(
        &mut GgufFile::open(&path).unwrap(),
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture(a) if a == "mamba"),
        "{err}"
    );
    // A supported architecture that is not llama-family is refused by the llama loader.
    let md: Vec<_> = metadata(&spec("qwen2", 2))
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("qwen2.") {
            Some(rest) => (format!("gemma3.{rest}"), v),
            None if k == "general.architecture" => (k, Value::String("gemma3".into())),
            None => (k, v),
        })
        .collect();
    let path = write(
        "gemma3-as-llama.gguf",
        &md,
        &tensors(&spec("qwen2", 2)),
        GgmlDType::F32,
    );
    let err = Llama::load(
        &mut GgufFile::open(&path).unwrap(),
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture(a) if a == "gemma3"),
        "{err}"
    );
}

/// Progress counts every tensor loaded, biases and query/key norms included.
#[test]
fn progress_counts_the_extra_tensors() {
    for arch in ["qwen2", "qwen3", "mistral", "phi3"] {
        let s = spec(arch, 2);
        let path = write_spec(&s);
        let mut last = None;
        decoder::load(
            &mut GgufFile::open(&path).unwrap(),
            &Device::Cpu,
            &mut |p| last = Some(p),
        )
        .unwrap();
        let p = last.unwrap();
        // The tied output is counted although it is not a tensor of its own.
        let want = tensors(&s).len() + s.tied as usize;
        assert_eq!((p.loaded, p.total), (want, want), "{arch}");
    }
}

/// Writes a copy of the GGUF at `src` (metadata as is, tensors dequantized to F32) with its
/// tensors passed through `edit`.
fn rewrite(
    src: &PathBuf,
    name: &str,
    edit: impl FnOnce(Vec<(String, Tensor)>) -> Vec<(String, Tensor)>,
) -> PathBuf {
    let mut f = std::fs::File::open(src).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, Tensor)> = names
        .into_iter()
        .map(|n| {
            let t = ct.tensor(&mut f, n, &Device::Cpu).unwrap();
            (n.clone(), t.dequantize(&Device::Cpu).unwrap())
        })
        .collect();
    let qtensors: Vec<(String, QTensor)> = edit(tensors)
        .into_iter()
        .map(|(n, t)| {
            // A fresh copy: `quantize` reads a narrowed tensor's whole storage.
            let t = t.force_contiguous().unwrap();
            (n, QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    let path = src.with_file_name(name);
    let md: Vec<(&str, &Value)> = ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    common::write_atomically(&path, |out| gguf_file::write(out, &md, &ts).unwrap());
    path
}

/// Logits of every prompt position, then of each decode step, of the model at `path`.
fn run_all(path: &PathBuf) -> Vec<f32> {
    let model = load(path).unwrap();
    let mut cache = model
        .new_cache(&KvCacheConfig::default().max_entries(16))
        .unwrap();
    let mut out = row(&model.forward(&PROMPT, &mut cache, true).unwrap());
    for &t in &DECODE {
        out.extend(row(&model.forward(&[t], &mut cache, false).unwrap()));
    }
    out
}

/// A phi3 file whose blocks have `attn_q`/`attn_k`/`attn_v` instead of `attn_qkv` (llama.cpp
/// accepts both), and one whose output is tied to the token embedding, run as the fused,
/// untied file they were cut from.
#[test]
fn phi3_split_projections_and_tied_output_match_the_fused_file() {
    let s = Spec {
        weights: GgmlDType::F32,
        ..spec("phi3", 2)
    };
    let fused = write_spec(&s);
    let want = run_all(&fused);
    let (q, kv) = (HEADS * s.head_dim, KV_HEADS * s.head_dim);
    let split = rewrite(&fused, "phi3-split-qkv.gguf", |ts| {
        ts.into_iter()
            .flat_map(|(n, t)| match n.strip_suffix("attn_qkv.weight") {
                Some(p) => vec![
                    (format!("{p}attn_q.weight"), t.narrow(0, 0, q).unwrap()),
                    (format!("{p}attn_k.weight"), t.narrow(0, q, kv).unwrap()),
                    (
                        format!("{p}attn_v.weight"),
                        t.narrow(0, q + kv, kv).unwrap(),
                    ),
                ],
                None => vec![(n, t)],
            })
            .collect()
    });
    let (d, m) = diff(&run_all(&split), &want);
    assert!(d <= 1e-5 * m, "split q/k/v: max diff {d}, scale {m}");
    eprintln!("phi3 split q/k/v vs fused: max diff {d:.3e} (scale {m:.3})");
    // The untied output replaced by the token embedding, in both files.
    let embd_as_output = |ts: Vec<(String, Tensor)>| {
        let embd = ts
            .iter()
            .find(|(n, _)| n == "token_embd.weight")
            .unwrap()
            .1
            .clone();
        ts.into_iter()
            .map(|(n, t)| match n.as_str() {
                "output.weight" => (n, embd.clone()),
                _ => (n, t),
            })
            .collect::<Vec<_>>()
    };
    let untied = rewrite(&fused, "phi3-output-is-embd.gguf", embd_as_output);
    let tied = rewrite(&fused, "phi3-tied.gguf", |ts| {
        ts.into_iter()
            .filter(|(n, _)| n != "output.weight")
            .collect()
    });
    let (d, m) = diff(&run_all(&tied), &run_all(&untied));
    assert!(d <= 1e-5 * m, "tied output: max diff {d}, scale {m}");
    eprintln!("phi3 tied vs untied copy of the embedding: max diff {d:.3e} (scale {m:.3})");
}

#[test]
fn phi3_bad_files_are_typed_errors() {
    let s = spec("phi3", 2);
    // LongRoPE (Phi-3 128k, Phi-3.5) is refused by name.
    for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        let mut ts = tensors(&s);
        ts.push((name.to_string(), vec![s.head_dim / 2]));
        let err = load_err(&format!("phi3-{name}.gguf"), &metadata(&s), &ts);
        assert!(
            matches!(&err, ModelError::UnsupportedFeature { name: n, reason } if n == name && reason.contains("LongRoPE")),
            "{err}"
        );
    }
    // The fused gate/up matrix has 2 * ffn rows.
    let mut ts = tensors(&s);
    for (n, shape) in ts.iter_mut() {
        if n == "blk.1.ffn_up.weight" {
            *shape = vec![FFN, HIDDEN];
        }
    }
    let err = load_err("phi3-half-ffn-up.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, reason } if name == "blk.1.ffn_up.weight" && reason.contains("expected shape [256, 64]")),
        "{err}"
    );
    // The fused query/key/value matrix has q_dim + 2 * kv_dim rows.
    let mut ts = tensors(&s);
    for (n, shape) in ts.iter_mut() {
        if n == "blk.0.attn_qkv.weight" {
            *shape = vec![3 * HIDDEN, HIDDEN];
        }
    }
    let err = load_err("phi3-bad-qkv.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, .. } if name == "blk.0.attn_qkv.weight"),
        "{err}"
    );
    // Without `attn_qkv` a block needs the separate projections.
    let ts: Vec<_> = tensors(&s)
        .into_iter()
        .filter(|(n, _)| n != "blk.1.attn_qkv.weight")
        .collect();
    let err = load_err("phi3-no-qkv.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, .. } if name == "blk.1.attn_q.weight"),
        "{err}"
    );
    // Partial rotary embeddings are not implemented.
    let md: Vec<_> = metadata(&s)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "phi3.rope.dimension_count" => (k, Value::U32(s.head_dim as u32 / 2)),
            _ => (k, v),
        })
        .collect();
    let err = load_err("phi3-partial-rope.gguf", &md, &tensors(&s));
    assert!(
        matches!(&err, ModelError::InvalidMetadata { key, .. } if key == "phi3.rope.dimension_count"),
        "{err}"
    );
}
