//! Device selection, GGUF loading, tokenizers and chat templates from GGUF metadata, and the
//! decoders (llama family, Gemma 1–3) of fluent-ai-candle.
//!
//! This crate turns a GGUF file into everything a decode loop needs:
//! - [`GgufFile`]: the file's header with typed errors (missing, not GGUF, truncated);
//! - [`ModelConfig`]: the architecture's hyper-parameters from metadata;
//! - [`Llama`]: our llama-family decoder (llama, mistral, qwen2, qwen3, phi3) on candle-core
//!   with quantized weights, run against a preallocated
//!   [`SequenceCache`](fluent_ai_candle_kv_cache::SequenceCache) per sequence;
//! - [`Gemma`]: the Gemma 1, 2 and 3 decoder (sliding-window and global layers, soft-capping,
//!   QK-norm, GELU);
//! - [`Phi2`]: the Phi-2 decoder (`phi2`: Phi-1, Phi-1.5, Phi-2; LayerNorm with biases,
//!   parallel attention and GELU feed-forward, partial rotary embeddings);
//! - [`DeepSeek`]: the DeepSeek-V3 / Kimi K2 decoder (`deepseek2`: multi-head latent
//!   attention over a compressed cache, mixture of experts);
//! - [`Decoder`]: the trait every decoder implements, held as a `Box<dyn Decoder>`;
//!   [`decoder::load`] picks the one `general.architecture` names;
//! - [`plugin`]: [`ArchitecturePlugin`], to add an architecture from outside this crate
//!   ([`decoder::load_with`], [`LoadedModel::load_with`]);
//! - the tokenizer and chat template read from `tokenizer.ggml.*` metadata;
//! - [`safetensors`]: [`Llama::load_safetensors`], a llama/mistral model from the Hugging Face
//!   hub layout (`config.json` and safetensors), quantized on load to a [`QuantizationType`];
//!   with its `tokenizer.json` ([`CandleTokenizer::from_hf_dir`], byte-level BPE) and
//!   `tokenizer_config.json` ([`ChatTemplate::from_hf_dir`]), a whole [`LoadedModel`]
//!   ([`LoadedModel::load_dir`], or [`LoadedModel::load`] given the directory);
//! - [`cache`]: the local model cache filled by `cargo xtask fetch-models`, and name resolution
//!   (a path, a known name, or `hf:ORG/REPO[:FILE]` in the Hugging Face cache: a GGUF file or
//!   a safetensors snapshot directory);
//! - `pull` (the `pull` feature): downloading `hf:ORG/REPO[:FILE]` from a Hugging Face hub
//!   (`HF_ENDPOINT`) into that cache through hf-hub, checked against the repository listing.
//!
//! It knows nothing of sampling policy or HTTP. Loading a real model:
//!
//! ```no_run
//! use fluent_ai_candle_models::{cache, LoadedModel};
//! use fluent_ai_candle_kv_cache::KvCacheConfig;
//!
//! let path = cache::resolve("smollm2-135m-instruct")?;
//! let model = LoadedModel::load(&path, &candle_core::Device::Cpu, &mut |_| {})?;
//! let ids = model.tokenizer.encode("The capital of France is", false)?;
//! let mut kv = model.decoder.new_cache(&KvCacheConfig::default().max_entries(64))?;
//! let logits = model.decoder.forward(&ids, &mut kv, false)?;
//! assert_eq!(logits.dims(), &[model.config().vocab_size]);
//! # Ok::<(), fluent_ai_candle_models::ModelError>(())
//! ```
//!
//! A Hugging Face model directory (or `hf:ORG/REPO`, a snapshot already in the Hugging Face
//! cache) loads the same way, its matrices quantized on load:
//!
//! ```no_run
//! use fluent_ai_candle_models::{cache, LoadedModel, QuantizationType};
//!
//! let dir = cache::resolve("hf:HuggingFaceTB/SmolLM2-135M-Instruct")?;
//! let model = LoadedModel::load_dir(&dir, QuantizationType::Q8_0, &candle_core::Device::Cpu, &mut |_| {})?;
//! let prompt = model.chat_prompt("Name three primary colours.")?;
//! let ids = model.tokenizer.encode(&prompt, false)?;
//! # Ok::<(), fluent_ai_candle_models::ModelError>(())
//! ```
//!
//! Bad input is a typed [`ModelError`], never a panic:
//!
//! ```
//! use fluent_ai_candle_models::{cache, ModelError};
//! assert!(matches!(cache::resolve("no-such-model"), Err(ModelError::UnknownModel { .. })));
//! ```
// The SIMD kernels are in `fluent-ai-candle-kernels`; this crate has no `unsafe` at all.
#![forbid(unsafe_code)]

mod attention;
pub mod cache;
pub mod chat_template;
pub mod config;
pub mod decoder;
pub mod deepseek;
pub mod device;
pub mod error;
mod geglu;
pub mod gemma;
mod ggml_math;
pub mod gguf;
pub mod llama;
pub mod phi2;
pub mod plugin;
mod pool;
#[cfg(feature = "pull")]
pub mod pull;
pub mod quant;
pub mod safetensors;
pub mod synth;
pub mod tokenizer;

mod loaded;
mod step;
mod weights;

pub use chat_template::{
    tool_call_text, tool_system_prompt, ChatMessage, ChatTemplate, ChatToolCall, ToolSupport,
};
pub use config::ModelConfig;
pub use decoder::Decoder;
pub use deepseek::{DeepSeek, DeepSeekConfig, ExpertGating, YarnScaling};
pub use device::{auto_device, device_name, init_cpu_threads, DeviceError, DeviceType};
pub use error::{ModelError, Result};
pub use gemma::{Gemma, Gemma3, Gemma3Config, GemmaConfig, GemmaVersion};
pub use gguf::{CancelToken, GgufFile};
pub use llama::{Llama, LlamaVariant, LoadProgress, RopeStyle};
pub use loaded::LoadedModel;
pub use phi2::{Phi2, Phi2Config};
pub use plugin::ArchitecturePlugin;
pub use quant::QLinear;
pub use safetensors::{HfConfig, QuantizationType};
pub use tokenizer::CandleTokenizer;

/// Largest absolute element-wise difference of two tensors of one shape (unit tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap()
}
