//! Architecture hyper-parameters read from GGUF metadata.

use crate::gguf::GgufFile;
use crate::{ModelError, Result};

/// The hyper-parameters common to our decoders (llama family: llama, mistral, qwen2, qwen3,
/// phi3; Gemma 3), and to those of [plugins](crate::plugin), which may read it with
/// [`ModelConfig::from_gguf_unchecked`] or build it field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// Vocabulary size (rows of the token embedding).
    pub vocab_size: usize,
    /// Trained context length.
    pub context_length: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Number of decoder blocks.
    pub n_layers: usize,
    /// Attention (query) heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Width of the feed-forward block.
    pub ffn_size: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE frequency base (Gemma 3: of its global layers).
    pub rope_theta: f64,
}

/// Architectures this crate can run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma3",
    "deepseek2",
];

impl ModelConfig {
    /// Reads the common config of a supported GGUF (keys under `{architecture}.`). An unknown
    /// architecture or a missing key is a typed error.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.architecture()?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(ModelError::UnsupportedArchitecture(arch));
        }
        Self::from_gguf_unchecked(gguf)
    }

    /// Reads the same keys as [`ModelConfig::from_gguf`] under `{general.architecture}.` for
    /// any architecture, supported by this crate or not: for an
    /// [`ArchitecturePlugin`](crate::plugin::ArchitecturePlugin) whose architecture uses the
    /// common key names. A missing key is a typed error.
    pub fn from_gguf_unchecked(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = gguf.usize(&key("embedding_length"))?;
        let n_heads = gguf.usize(&key("attention.head_count"))?;
        let n_kv_heads = gguf
            .usize_opt(&key("attention.head_count_kv"))
            .unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::MissingMetadata {
                key: key("attention.head_count_kv"),
            });
        }
        let head_dim = gguf
            .usize_opt(&key("attention.key_length"))
            .or_else(|| gguf.usize_opt(&key("rope.dimension_count")))
            .unwrap_or(hidden_size / n_heads);
        let vocab_size = match gguf.usize_opt(&key("vocab_size")) {
            Some(v) => v,
            None => match gguf.get("tokenizer.ggml.tokens") {
                Some(candle_core::quantized::gguf_file::Value::Array(a)) => a.len(),
                _ => {
                    return Err(ModelError::MissingMetadata {
                        key: key("vocab_size"),
                    })
                }
            },
        };
        Ok(Self {
            vocab_size,
            context_length: gguf.usize(&key("context_length"))?,
            hidden_size,
            n_layers: gguf.usize(&key("block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size: gguf.usize(&key("feed_forward_length"))?,
            rms_eps: gguf
                .f64_opt(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: gguf.f64_opt(&key("rope.freq_base")).unwrap_or(10_000.0),
            architecture: arch,
        })
    }
}
