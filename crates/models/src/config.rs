//! Architecture hyper-parameters read from GGUF metadata.

use crate::gguf::GgufFile;
use crate::{ModelError, Result};

/// The hyper-parameters common to our decoders (llama family: llama, mistral, qwen2, qwen3,
/// phi3; Gemma 1–3; Phi-2), and to those of [plugins](crate::plugin), which may read it with
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
    /// RMSNorm epsilon (for Phi-2, whose norms are LayerNorms, the LayerNorm epsilon:
    /// [`Phi2Config`](crate::Phi2Config) reads it).
    pub rms_eps: f64,
    /// RoPE frequency base (Gemma 2 and 3: of their global layers).
    pub rope_theta: f64,
}

/// The largest context length accepted (2^24 tokens, above every released model's): RoPE
/// takes positions as `f32`, exact only up to 2^24, and a larger value is a damaged or hostile
/// file.
pub const MAX_CONTEXT_LENGTH: usize = 1 << 24;

/// Metadata keys (under `{architecture}.`) whose integer values size a tensor dimension, a
/// head split or an expert table: none may exceed the file's largest tensor dimension.
const DIMENSION_KEYS: &[&str] = &[
    "embedding_length",
    "feed_forward_length",
    "expert_feed_forward_length",
    "vocab_size",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.key_length_mla",
    "attention.value_length_mla",
    "attention.kv_lora_rank",
    "attention.q_lora_rank",
    "rope.dimension_count",
    "expert_count",
    "expert_used_count",
    "expert_shared_count",
    "expert_group_count",
    "expert_group_used_count",
];

/// Metadata keys (under `{architecture}.`) that count tokens: each at most
/// [`MAX_CONTEXT_LENGTH`].
const TOKEN_COUNT_KEYS: &[&str] = &[
    "context_length",
    "attention.sliding_window",
    "rope.scaling.original_context_length",
];

/// Checks the metadata values of `gguf` (under its `general.architecture`) that size an
/// allocation or a loop against what the file holds, before anything is sized by them: every
/// dimension-like value (widths, head counts and sizes, vocabulary, expert counts) at most the
/// largest tensor dimension, the block count at most the number of tensors (every block has
/// some), token counts at most [`MAX_CONTEXT_LENGTH`]. A value out of bounds is [`ModelError::InvalidMetadata`] naming its
/// key; absent keys and non-integer values are left to the readers that need them.
pub fn check_metadata_bounds(gguf: &GgufFile) -> Result<()> {
    let arch = gguf.architecture()?;
    let value = |k: &str| {
        let key = format!("{arch}.{k}");
        let v = gguf.get(&key).and_then(crate::gguf::value_as_u64);
        (key, v)
    };
    let largest = gguf.largest_dimension() as u64;
    for k in DIMENSION_KEYS {
        if let (key, Some(v)) = value(k) {
            if v > largest {
                return Err(ModelError::InvalidMetadata {
                    key,
                    reason: format!(
                        "{v} exceeds every dimension of the file's tensors (largest {largest})"
                    ),
                });
            }
        }
    }
    if let (key, Some(v)) = value("block_count") {
        let tensors = gguf.tensor_count() as u64;
        if v > tensors {
            return Err(ModelError::InvalidMetadata {
                key,
                reason: format!("{v} blocks, but the file has only {tensors} tensors"),
            });
        }
    }
    for k in TOKEN_COUNT_KEYS {
        if let (key, Some(v)) = value(k) {
            if v > MAX_CONTEXT_LENGTH as u64 {
                return Err(ModelError::InvalidMetadata {
                    key,
                    reason: format!("{v} exceeds the largest supported {MAX_CONTEXT_LENGTH}"),
                });
            }
        }
    }
    Ok(())
}

/// Architectures this crate can run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3",
    "phi2",
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
    /// common key names. A missing key is a typed error; so is a value that does not fit the
    /// file ([`check_metadata_bounds`]) or the others ([`ModelConfig::validate`]).
    pub fn from_gguf_unchecked(gguf: &GgufFile) -> Result<Self> {
        check_metadata_bounds(gguf)?;
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
        let config = Self {
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
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the values against each other and against what the decoders can run, so that
    /// nothing is sized or looped over by a value of 0 or one whose products overflow: vocabulary,
    /// width, blocks, heads and head size positive, the head size even (RoPE rotates pairs),
    /// the context length between 1 and [`MAX_CONTEXT_LENGTH`], the norm epsilon and RoPE base
    /// finite and positive. A bad value is [`ModelError::InvalidMetadata`] naming its GGUF key
    /// (`{architecture}.…`).
    pub fn validate(&self) -> Result<()> {
        let key = |k: &str| format!("{}.{k}", self.architecture);
        let bad = |k: &str, reason: String| {
            Err(ModelError::InvalidMetadata {
                key: key(k),
                reason,
            })
        };
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("embedding_length", self.hidden_size),
            ("block_count", self.n_layers),
            ("attention.head_count", self.n_heads),
            ("attention.head_count_kv", self.n_kv_heads),
            ("attention.key_length", self.head_dim),
            ("context_length", self.context_length),
        ] {
            if v == 0 {
                return bad(k, "must be at least 1".into());
            }
        }
        if self.context_length > MAX_CONTEXT_LENGTH {
            return bad(
                "context_length",
                format!(
                    "{} exceeds the largest supported {MAX_CONTEXT_LENGTH}",
                    self.context_length
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(
                "attention.key_length",
                format!("{} is not an even head size", self.head_dim),
            );
        }
        if self.n_kv_heads > self.n_heads || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "attention.head_count_kv",
                format!(
                    "{} key/value heads do not divide {} query heads",
                    self.n_kv_heads, self.n_heads
                ),
            );
        }
        // Products the decoders form: query width, the embedding table, the feed-forward
        // matrices (with room for fused ones, twice as wide).
        let products = [
            (
                "attention.head_count",
                self.n_heads.checked_mul(self.head_dim),
            ),
            ("vocab_size", self.vocab_size.checked_mul(self.hidden_size)),
            (
                "feed_forward_length",
                self.ffn_size
                    .checked_mul(2)
                    .and_then(|f| f.checked_mul(self.hidden_size)),
            ),
        ];
        for (k, p) in products {
            if p.is_none_or(|p| p > isize::MAX as usize) {
                return bad(k, "the tensor it sizes overflows".into());
            }
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return bad(
                "attention.layer_norm_rms_epsilon",
                format!("{} is not a positive number", self.rms_eps),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(
                "rope.freq_base",
                format!("{} is not a positive number", self.rope_theta),
            );
        }
        Ok(())
    }
}
