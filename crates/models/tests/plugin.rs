//! Architecture plugins: a GGUF whose `general.architecture` ("toy") this crate does not know is
//! refused by the built-in loaders and loaded by a plugin given to `decoder::load_with` /
//! `LoadedModel::load_with`, whose decoder then serves `new_cache`, `forward` and
//! `forward_batch`; a plugin can reuse our llama-family decoder for a llama clone under another
//! name, and is chosen before a built-in decoder of the same architecture.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};
use fluent_ai_candle_models::plugin::ArchitecturePlugin;
use fluent_ai_candle_models::{
    decoder, Decoder, GgufFile, Llama, LlamaVariant, LoadProgress, LoadedModel, ModelConfig,
    ModelError, Result,
};

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 64;
const VOCAB: usize = 64;
const CONTEXT: usize = 32;
const LAYERS: usize = 2;

/// Writes a GGUF with llama's tensors (random F32, fixed seed) under `general.architecture =
/// arch` (hyper-parameters under `{arch}.`), with a small BPE vocabulary.
fn write(name: &str, arch: &str) -> PathBuf {
    let head_dim = HIDDEN / HEADS;
    let (q, kv) = (HEADS * head_dim, KV_HEADS * head_dim);
    let mut shapes = vec![
        ("token_embd.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("output_norm.weight".to_string(), vec![HIDDEN]),
    ];
    for i in 0..LAYERS {
        for (t, shape) in [
            ("attn_norm.weight", vec![HIDDEN]),
            ("attn_q.weight", vec![q, HIDDEN]),
            ("attn_k.weight", vec![kv, HIDDEN]),
            ("attn_v.weight", vec![kv, HIDDEN]),
            ("attn_output.weight", vec![HIDDEN, q]),
            ("ffn_norm.weight", vec![HIDDEN]),
            ("ffn_gate.weight", vec![FFN, HIDDEN]),
            ("ffn_up.weight", vec![FFN, HIDDEN]),
            ("ffn_down.weight", vec![HIDDEN, FFN]),
        ] {
            shapes.push((format!("blk.{i}.{t}"), shape));
        }
    }
    let tokens: Vec<Value> = (0..VOCAB)
        .map(|i| {
            Value::String(
                ((b'A' + (i % 26) as u8) as char)
                    .to_string()
                    .repeat(1 + i / 26),
            )
        })
        .collect();
    let md = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        (format!("{arch}.context_length"), Value::U32(CONTEXT as u32)),
        (
            format!("{arch}.embedding_length"),
            Value::U32(HIDDEN as u32),
        ),
        (format!("{arch}.block_count"), Value::U32(LAYERS as u32)),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(FFN as u32),
        ),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(HEADS as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(KV_HEADS as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.vocab_size"), Value::U32(VOCAB as u32)),
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(1)),
    ];
    common::write_synthetic_gguf(
        "plugin-test",
        name,
        &md,
        &shapes,
        0x2545_f491_4f6c_dd1d,
        |n, r| {
            if n.contains("norm") {
                1.0 + r * 0.5
            } else {
                r * 0.5
            }
        },
        |_| GgmlDType::F32,
    )
}

/// Counts the plugin decoder's `forward` calls.
#[derive(Debug, Default)]
struct Calls {
    forward: AtomicUsize,
}

/// A decoder that ignores its weights: the logits of a position are `token + position` at
/// every vocabulary entry but `(token + 1) % vocab`, where they are 100.
#[derive(Debug)]
struct Fixed {
    config: ModelConfig,
    device: Device,
    calls: Arc<Calls>,
}

impl Fixed {
    fn logits(&self, token: u32, position: usize) -> Vec<f32> {
        let v = self.config.vocab_size;
        let mut row = vec![(token as usize + position) as f32; v];
        row[(token as usize + 1) % v] = 100.0;
        row
    }
}

impl Decoder for Fixed {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn cache_shape(&self) -> CacheShape {
        CacheShape {
            layers: 3,
            kv_heads: 1,
            head_dim: 2,
            dtype: DType::F32,
        }
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        self.calls.forward.fetch_add(1, Ordering::SeqCst);
        cache.make_room(tokens.len(), &|k: &Tensor, _, _| Ok(k.clone()))?;
        let start = cache.len();
        let rows: Vec<f32> = tokens
            .iter()
            .enumerate()
            .skip(if all_logits { 0 } else { tokens.len() - 1 })
            .flat_map(|(i, &t)| self.logits(t, start + i))
            .collect();
        cache.commit(tokens.len());
        let v = self.config.vocab_size;
        let logits = Tensor::from_vec(rows, (rows_len(tokens, all_logits), v), &self.device)?;
        Ok(if all_logits {
            logits
        } else {
            logits.squeeze(0)?
        })
    }
    // `new_cache` and `forward_batch`: the trait's defaults.
}

fn rows_len(tokens: &[u32], all_logits: bool) -> usize {
    if all_logits {
        tokens.len()
    } else {
        1
    }
}

/// Loads [`Fixed`] for one architecture, with the hyper-parameters under its own keys.
struct FixedPlugin {
    arch: &'static str,
    calls: Arc<Calls>,
}

impl ArchitecturePlugin for FixedPlugin {
    fn architecture(&self) -> &str {
        self.arch
    }

    fn load(
        &self,
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Box<dyn Decoder>> {
        let config = ModelConfig::from_gguf_unchecked(gguf)?;
        progress(LoadProgress {
            loaded: 1,
            total: 1,
        });
        Ok(Box::new(Fixed {
            config,
            device: device.clone(),
            calls: self.calls.clone(),
        }))
    }
}

/// A llama clone under another name: our llama decoder with llama's variant.
struct LlamaClonePlugin;

impl ArchitecturePlugin for LlamaClonePlugin {
    fn architecture(&self) -> &str {
        "toy"
    }

    fn load(
        &self,
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Box<dyn Decoder>> {
        let config = ModelConfig::from_gguf_unchecked(gguf)?;
        let variant = LlamaVariant::for_architecture("llama").unwrap();
        Ok(Box::new(Llama::load_variant(
            gguf, device, progress, config, variant,
        )?))
    }
}

fn open(path: &PathBuf) -> GgufFile {
    GgufFile::open(path).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn a_plugin_loads_and_runs_an_unknown_architecture() {
    let path = write("toy.gguf", "toy");
    let dev = &Device::Cpu;
    // Without the plugin the architecture is refused, by every loader.
    let err = decoder::load(&mut open(&path), dev, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture(a) if a == "toy"),
        "{err}"
    );
    let err = LoadedModel::load(&path, dev, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture(a) if a == "toy"),
        "{err}"
    );
    let calls = Arc::new(Calls::default());
    let other = FixedPlugin {
        arch: "other",
        calls: calls.clone(),
    };
    let err = decoder::load_with(&mut open(&path), dev, &mut |_| {}, &[&other]).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture(a) if a == "toy"),
        "{err}"
    );

    // With it (after a plugin of another architecture), the plugin's decoder.
    let toy = FixedPlugin {
        arch: "toy",
        calls: calls.clone(),
    };
    let mut progress = Vec::new();
    let model = decoder::load_with(
        &mut open(&path),
        dev,
        &mut |p| progress.push((p.loaded, p.total)),
        &[&other, &toy],
    )
    .unwrap();
    assert!(model.downcast_ref::<Fixed>().is_some(), "{model:?}");
    assert_eq!(progress, [(1, 1)]);
    assert_eq!(model.config().architecture, "toy");
    assert_eq!(model.config().vocab_size, VOCAB);
    assert_eq!(model.cache_shape().layers, 3);

    let cfg = KvCacheConfig::default().max_entries(16);
    // The plugin's cache shape (3 layers, where the file's hyper-parameters say 2).
    let mut a = model.new_cache(&cfg).unwrap();
    assert_eq!(a.shape(), model.cache_shape());
    assert_eq!(a.shape().layers, 3);
    let all = model.forward(&[5, 9, 2], &mut a, true).unwrap();
    assert_eq!(all.dims(), &[3, VOCAB]);
    assert_eq!(values(&all.get(1).unwrap())[10], 100.0);
    assert_eq!(values(&all.get(2).unwrap())[0], 4.0);
    let last = model.forward(&[7], &mut a, false).unwrap();
    assert_eq!(last.dims(), &[VOCAB]);
    assert_eq!(values(&last)[8], 100.0);
    assert_eq!(values(&last)[0], 10.0);
    assert_eq!(a.len(), 4);
    assert_eq!(calls.forward.load(Ordering::SeqCst), 2);

    // The default batched step: one forward per sequence, logits stacked.
    let mut b = model.new_cache(&cfg).unwrap();
    model.forward(&[1], &mut b, false).unwrap();
    let batch = model.forward_batch(&[3, 4], &mut [&mut a, &mut b]).unwrap();
    assert_eq!(batch.dims(), &[2, VOCAB]);
    assert_eq!(values(&batch.get(0).unwrap())[1], 7.0);
    assert_eq!(values(&batch.get(1).unwrap())[5], 100.0);
    assert_eq!(values(&batch.get(1).unwrap())[0], 5.0);
    assert_eq!((a.len(), b.len()), (5, 2));
    assert_eq!(calls.forward.load(Ordering::SeqCst), 5);
    // The default `new_cache` bounds the cache by the context length.
    let err = model
        .new_cache(&KvCacheConfig::default().max_entries(CONTEXT + 1))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, ModelError::ContextOverflow { .. }), "{err}");

    // Through `LoadedModel`, with the tokenizer and template read from the file as usual.
    let loaded = LoadedModel::load_with(&path, dev, &mut |_| {}, &[&toy]).unwrap();
    assert!(loaded.decoder.downcast_ref::<Fixed>().is_some());
    assert_eq!(loaded.config().architecture, "toy");
    let ids = loaded.tokenizer.encode("ABC", false).unwrap();
    assert!(!ids.is_empty());
    let mut c = loaded.decoder.new_cache(&cfg).unwrap();
    let logits = loaded.decoder.forward(&ids, &mut c, false).unwrap();
    assert_eq!(logits.dims(), &[VOCAB]);
}

/// A plugin that runs our llama decoder for a llama clone under another name gives the logits
/// of the same tensors loaded as `llama`, bit for bit.
#[test]
fn a_plugin_can_reuse_the_llama_decoder() {
    let toy = write("toy-llama.gguf", "toy");
    let llama = write("llama.gguf", "llama");
    let dev = &Device::Cpu;
    let ours = decoder::load_with(&mut open(&toy), dev, &mut |_| {}, &[&LlamaClonePlugin]).unwrap();
    // The plugin's: a llama decoder for an architecture the built-in loaders refuse.
    assert!(ours.downcast_ref::<Llama>().is_some());
    assert_eq!(ours.config().architecture, "toy");
    let reference = decoder::load(&mut open(&llama), dev, &mut |_| {}).unwrap();
    assert!(reference.downcast_ref::<Llama>().is_some());
    let cfg = KvCacheConfig::default().max_entries(16);
    let run = |m: &dyn Decoder| {
        let mut a = m.new_cache(&cfg).unwrap();
        let mut out = values(&m.forward(&[3, 17, 60, 45], &mut a, true).unwrap());
        let mut b = m.new_cache(&cfg).unwrap();
        m.forward(&[9, 1], &mut b, false).unwrap();
        out.extend(values(
            &m.forward_batch(&[5, 6], &mut [&mut a, &mut b]).unwrap(),
        ));
        out
    };
    let (got, want) = (run(ours.as_ref()), run(reference.as_ref()));
    assert!(want.iter().any(|v| v.abs() > 0.5));
    assert_eq!(got, want);
}

/// Plugins come first: one for a built-in architecture replaces the built-in decoder.
#[test]
fn a_plugin_replaces_a_built_in_architecture() {
    let path = write("llama-replaced.gguf", "llama");
    let plugin = FixedPlugin {
        arch: "llama",
        calls: Arc::new(Calls::default()),
    };
    let model =
        decoder::load_with(&mut open(&path), &Device::Cpu, &mut |_| {}, &[&plugin]).unwrap();
    assert!(model.downcast_ref::<Fixed>().is_some());
    let model = decoder::load_with(&mut open(&path), &Device::Cpu, &mut |_| {}, &[]).unwrap();
    assert!(model.downcast_ref::<Llama>().is_some());
}
