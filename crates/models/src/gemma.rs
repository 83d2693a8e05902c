//! Our Gemma decoder (Gemma 1, Gemma 2 and Gemma 3: `general.architecture` `gemma`, `gemma2`,
//! `gemma3`) on candle-core, with quantized weights ([`QLinear`]) and the same preallocated
//! per-sequence KV cache as [`Llama`](crate::Llama).
//!
//! What every Gemma has, unlike the llama family, as llama.cpp runs its GGUF files:
//! - token embeddings are scaled by `sqrt(hidden)` before the first block;
//! - RoPE is the NEOX (half-split) variant;
//! - the feed-forward is gated with GELU (tanh approximation), not SiLU;
//! - queries are scaled by `1/sqrt(head_dim)` (`1/sqrt(hidden / heads)` for Gemma 2's 46-layer
//!   and Gemma 3's 62-layer 27B, whose `query_pre_attn_scalar` differs);
//! - the output projection is tied to the token embedding.
//!
//! What the generations add ([`GemmaVersion`]):
//! - **Gemma 2**: two more RMSNorms per block, after attention and after the feed-forward (on
//!   the branch output, before the residual add); attention layers alternate sliding-window
//!   ("local": keys limited to the last `sliding_window` positions) and global, the first
//!   sliding; attention scores soft-capped, `c · tanh(s / c)` with `attn_logit_softcapping`
//!   (50 by default), and the logits too with `final_logit_softcapping` (30 by default).
//! - **Gemma 3**: Gemma 2's post-norms without soft-capping; queries and keys RMS-normalized
//!   per head (QK-norm) before RoPE; five sliding layers, whose RoPE base is 10 000, then one
//!   global layer with the file's `rope.freq_base` (and its linear RoPE scaling, when the file
//!   has one).
//!
//! A file's `attention.sliding_window_pattern` (a period, or one flag per layer) overrides the
//! generation's pattern, as in llama.cpp. The norm weights are used as stored: the GGUF
//! converter already folded Gemma's `1 + w` into them.

use std::cell::Cell;

use crate::quant::{Embedding, QLinear};
use candle_core::{DType, Device, Module, Tensor};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};

use crate::config::ModelConfig;
use crate::decoder::Decoder;
use crate::gguf::GgufFile;
use crate::llama::LoadProgress;
use crate::weights::{embedding_and_output, linear, vector};
use crate::{ModelError, Result};

/// The `general.architecture` values this module runs, oldest generation first.
pub const ARCHITECTURES: &[&str] = &["gemma", "gemma2", "gemma3"];

/// Gemma 3's sliding-window period: every `SWA_PATTERN`-th layer (the last of each group) is
/// global; the others slide.
pub const SWA_PATTERN: usize = 6;

/// Gemma 2's sliding-window period: even layers slide, odd layers are global.
pub const GEMMA2_SWA_PATTERN: usize = 2;

/// Gemma 2's sliding window when the file does not say (llama.cpp's default).
pub const GEMMA2_SLIDING_WINDOW: usize = 4096;

/// Gemma 2's attention-score soft-cap when the file does not say.
pub const GEMMA2_ATTN_SOFTCAP: f32 = 50.0;

/// Gemma 2's logit soft-cap when the file does not say.
pub const GEMMA2_FINAL_SOFTCAP: f32 = 30.0;

/// The element type of the KV cache: f16, as llama.cpp's default cache (and its attention
/// numerics, which [`crate::attention`] follows, start from f16 keys and values).
const KV_DTYPE: DType = DType::F16;

/// RoPE base of the sliding-window layers (the GGUF's `rope.freq_base` is the global layers').
pub const LOCAL_ROPE_THETA: f64 = 10_000.0;

/// Gemma's chat turns, used when a Gemma GGUF carries no `tokenizer.chat_template`.
///
/// It renders `<bos><start_of_turn>user\n{content}<end_of_turn>\n` per turn (assistant turns
/// are `model` turns; a leading system message is prepended to the first user turn, as Gemma
/// has no system role) and, with `add_generation_prompt`, opens `<start_of_turn>model\n`.
/// It emits `{{ bos_token }}` itself, so the rendered prompt is encoded without adding BOS.
pub const CHAT_TEMPLATE: &str = concat!(
    "{{ bos_token }}",
    "{%- if messages and messages[0]['role'] == 'system' -%}",
    "{%- set prefix = messages[0]['content'] ~ '\\n\\n' -%}",
    "{%- set turns = messages[1:] -%}",
    "{%- else -%}",
    "{%- set prefix = '' -%}",
    "{%- set turns = messages -%}",
    "{%- endif -%}",
    "{%- for m in turns -%}",
    "{%- if m['role'] == 'assistant' -%}{%- set role = 'model' -%}",
    "{%- else -%}{%- set role = m['role'] -%}{%- endif -%}",
    "{{ '<start_of_turn>' ~ role ~ '\\n' }}",
    "{%- if loop.first -%}{{ prefix }}{%- endif -%}",
    "{{ m['content'] | trim }}{{ '<end_of_turn>\\n' }}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}",
);

/// The decoder's name from when it ran Gemma 3 only.
pub type Gemma3 = Gemma;

/// The config's name from when it described Gemma 3 only.
pub type Gemma3Config = GemmaConfig;

/// Which Gemma generation a file holds (its `general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmaVersion {
    /// `gemma`: Gemma 1 (2B, 7B) and CodeGemma.
    Gemma1,
    /// `gemma2`: Gemma 2 (2B, 9B, 27B).
    Gemma2,
    /// `gemma3`: Gemma 3's text decoder (270M to 27B).
    Gemma3,
}

impl GemmaVersion {
    /// The generation of `architecture`, if it is a Gemma.
    pub fn of(architecture: &str) -> Option<Self> {
        match architecture {
            "gemma" => Some(Self::Gemma1),
            "gemma2" => Some(Self::Gemma2),
            "gemma3" => Some(Self::Gemma3),
            _ => None,
        }
    }

    /// Its `general.architecture`.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Gemma1 => "gemma",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
        }
    }

    /// Whether blocks norm the attention and feed-forward outputs (Gemma 2 and 3).
    pub fn has_post_norms(self) -> bool {
        self != Self::Gemma1
    }

    /// Whether queries and keys are RMS-normalized per head (Gemma 3).
    pub fn has_qk_norm(self) -> bool {
        self == Self::Gemma3
    }
}

/// The hyper-parameters of a Gemma decoder: the common [`ModelConfig`] plus what only Gemma
/// has.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaConfig {
    /// The generation.
    pub version: GemmaVersion,
    /// The common hyper-parameters (`rope_theta` is the global layers' base).
    pub base: ModelConfig,
    /// Keys a sliding-window layer sees: the last `sliding_window` positions, its own included
    /// (`usize::MAX` for Gemma 1, which has no sliding layers).
    pub sliding_window: usize,
    /// Per layer, whether it is a sliding-window layer.
    pub sliding: Vec<bool>,
    /// RoPE base of the sliding-window layers.
    pub rope_theta_local: f64,
    /// RoPE position scale of the sliding-window layers.
    pub rope_scale_local: f64,
    /// RoPE position scale of the global layers (`1 / rope.scaling.factor`, 1 when unscaled).
    pub rope_scale_global: f64,
    /// Factor applied to queries before the key product.
    pub attention_scale: f64,
    /// Attention scores become `c · tanh(s / c)` with this `c` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Logits become `c · tanh(l / c)` with this `c` (Gemma 2).
    pub final_softcap: Option<f32>,
}

impl GemmaConfig {
    /// Reads a Gemma config. Another architecture, a missing key and inconsistent head sizes
    /// are typed errors naming the problem.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.architecture()?;
        let Some(version) = GemmaVersion::of(&arch) else {
            return Err(ModelError::UnsupportedArchitecture(arch));
        };
        let key = |k: &str| format!("{arch}.{k}");
        // Keys Gemma cannot run without; the common reader has fallbacks for some of them.
        for k in [
            "context_length",
            "embedding_length",
            "block_count",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.key_length",
            "attention.value_length",
        ] {
            gguf.usize(&key(k))?;
        }
        if version == GemmaVersion::Gemma3 {
            gguf.usize(&key("attention.sliding_window"))?;
        }
        let eps_key = key("attention.layer_norm_rms_epsilon");
        gguf.f64_opt(&eps_key)
            .ok_or(ModelError::MissingMetadata { key: eps_key })?;
        let base = ModelConfig::from_gguf(gguf)?;
        let value_length = gguf.usize(&key("attention.value_length"))?;
        if value_length != base.head_dim {
            return Err(ModelError::InvalidMetadata {
                key: key("attention.value_length"),
                reason: format!(
                    "{value_length} differs from attention.key_length {}",
                    base.head_dim
                ),
            });
        }
        if base.head_dim == 0 || base.head_dim % 2 != 0 {
            return Err(ModelError::InvalidMetadata {
                key: key("attention.key_length"),
                reason: format!("{} is not a positive even head size", base.head_dim),
            });
        }
        let sliding_window = match version {
            GemmaVersion::Gemma1 => usize::MAX,
            GemmaVersion::Gemma2 if gguf.get(&key("attention.sliding_window")).is_none() => {
                GEMMA2_SLIDING_WINDOW
            }
            _ => gguf.usize(&key("attention.sliding_window"))?,
        };
        if sliding_window == 0 {
            return Err(ModelError::InvalidMetadata {
                key: key("attention.sliding_window"),
                reason: "must be positive".into(),
            });
        }
        let sliding = sliding_layers(gguf, version, base.n_layers)?;
        let rope_scale = match gguf.f64_opt(&key("rope.scaling.factor")) {
            Some(f) if f > 0.0 => 1.0 / f,
            Some(f) => {
                return Err(ModelError::InvalidMetadata {
                    key: key("rope.scaling.factor"),
                    reason: format!("{f} is not positive"),
                })
            }
            None => 1.0,
        };
        // llama.cpp: the 27Bs (Gemma 2's 46 layers, Gemma 3's 62) scale by their
        // query_pre_attn_scalar = hidden / heads.
        let big = match version {
            GemmaVersion::Gemma1 => false,
            GemmaVersion::Gemma2 => base.n_layers == 46,
            GemmaVersion::Gemma3 => base.n_layers == 62,
        };
        let attention_scale = if big {
            1.0 / ((base.hidden_size / base.n_heads) as f64).sqrt()
        } else {
            1.0 / (base.head_dim as f64).sqrt()
        };
        let softcap = |k: &str, default: f32| -> Result<Option<f32>> {
            if version != GemmaVersion::Gemma2 {
                return Ok(None);
            }
            let c = gguf.f64_opt(&key(k)).map_or(default, |c| c as f32);
            if !(c.is_finite() && c > 0.0) {
                return Err(ModelError::InvalidMetadata {
                    key: key(k),
                    reason: format!("{c} is not a positive soft-cap"),
                });
            }
            Ok(Some(c))
        };
        // Gemma 3's local layers rotate with base 10 000, unscaled; Gemma 2's as the global
        // ones unless the file gives them a base of their own.
        let (rope_theta_local, rope_scale_local) = match version {
            GemmaVersion::Gemma3 => (LOCAL_ROPE_THETA, 1.0),
            _ => (
                gguf.f64_opt(&key("rope.freq_base_swa"))
                    .unwrap_or(base.rope_theta),
                rope_scale,
            ),
        };
        Ok(Self {
            version,
            base,
            sliding_window,
            sliding,
            rope_theta_local,
            rope_scale_local,
            rope_scale_global: rope_scale,
            attention_scale,
            attn_softcap: softcap("attn_logit_softcapping", GEMMA2_ATTN_SOFTCAP)?,
            final_softcap: softcap("final_logit_softcapping", GEMMA2_FINAL_SOFTCAP)?,
        })
    }

    /// True for the sliding-window layers.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding.get(layer).copied().unwrap_or(false)
    }

    /// RoPE base and position scale of a sliding (`true`) or global layer.
    pub fn rope_for(&self, sliding: bool) -> (f64, f64) {
        if sliding {
            (self.rope_theta_local, self.rope_scale_local)
        } else {
            (self.base.rope_theta, self.rope_scale_global)
        }
    }

    /// RoPE base and position scale of `layer`.
    pub fn rope_of(&self, layer: usize) -> (f64, f64) {
        self.rope_for(self.is_sliding(layer))
    }
}

/// Layer `i` of `layers` slides when `i % n < n - 1` (the last of every `n` is global); a
/// period of 0 makes every layer slide (llama.cpp's `set_swa_pattern`).
fn sliding_by_period(n: usize, layers: usize) -> Vec<bool> {
    (0..layers).map(|i| n == 0 || i % n < n - 1).collect()
}

/// Which layers slide: the file's `attention.sliding_window_pattern` when it has one (a
/// period `n`: layer `i` slides when `i % n < n - 1`; or one flag per layer), else the
/// generation's (Gemma 1: none; Gemma 2: every other layer; Gemma 3: five of six).
fn sliding_layers(gguf: &GgufFile, version: GemmaVersion, layers: usize) -> Result<Vec<bool>> {
    let key = format!(
        "{}.attention.sliding_window_pattern",
        version.architecture()
    );
    let by_period = |n: usize| sliding_by_period(n, layers);
    use candle_core::quantized::gguf_file::Value;
    let bad = |reason: String| ModelError::InvalidMetadata {
        key: key.clone(),
        reason,
    };
    match gguf.get(&key) {
        None => Ok(match version {
            GemmaVersion::Gemma1 => vec![false; layers],
            GemmaVersion::Gemma2 => by_period(GEMMA2_SWA_PATTERN),
            GemmaVersion::Gemma3 => by_period(SWA_PATTERN),
        }),
        Some(Value::Array(flags)) => {
            if flags.len() != layers {
                return Err(bad(format!("{} flags for {layers} layers", flags.len())));
            }
            flags
                .iter()
                .map(|f| match f {
                    Value::Bool(b) => Ok(*b),
                    other => Err(bad(format!("{other:?} is not a flag"))),
                })
                .collect()
        }
        Some(_) => Ok(by_period(gguf.usize(&key)?)),
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    /// Gemma 3's per-head query and key norms.
    qk_norm: Option<(Tensor, Tensor)>,
    wo: QLinear,
    /// Gemma 2 and 3's norms of the attention and feed-forward outputs.
    post_norms: Option<(Tensor, Tensor)>,
    ffn_norm: Tensor,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

impl Block {
    /// Gemma 3's query and key norms, or `None` for both.
    fn qk_norms(&self) -> (Option<&Tensor>, Option<&Tensor>) {
        match &self.qk_norm {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        }
    }
}

/// A Gemma decoder (Gemma 1, 2 or 3's text part), e.g. `gemma-3-270m`.
#[derive(Debug)]
pub struct Gemma {
    config: GemmaConfig,
    embedding: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    output: QLinear,
    device: Device,
}

impl Gemma {
    /// Loads the weights of a Gemma GGUF (`gemma`, `gemma2` or `gemma3`) onto `device`,
    /// calling `progress` after each tensor. A missing tensor or one of the wrong shape is a
    /// [`ModelError::BadTensor`] naming it.
    pub fn load(
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let config = GemmaConfig::from_gguf(gguf)?;
        let c = &config.base;
        let v = config.version;
        // Tensors per block (for progress).
        let per_block = 9 + 2 * usize::from(v.has_qk_norm()) + 2 * usize::from(v.has_post_norms());
        let total = c.n_layers * per_block + 3;
        let mut loaded = 0;
        let mut tick = |n: usize| {
            loaded += n;
            progress(LoadProgress { loaded, total });
        };
        let (embedding, output) = embedding_and_output(gguf, c, device)?;
        tick(2);
        let norm = vector(gguf, "output_norm.weight", c.hidden_size, device)?;
        tick(1);
        let (h, d) = (c.hidden_size, c.head_dim);
        let q_dim = c.n_heads * d;
        let kv_dim = c.n_kv_heads * d;
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let name = |t: &str| format!("blk.{i}.{t}.weight");
            let qk_norm = if v.has_qk_norm() {
                Some((
                    vector(gguf, &name("attn_q_norm"), d, device)?,
                    vector(gguf, &name("attn_k_norm"), d, device)?,
                ))
            } else {
                None
            };
            let post_norms = if v.has_post_norms() {
                Some((
                    vector(gguf, &name("post_attention_norm"), h, device)?,
                    vector(gguf, &name("post_ffw_norm"), h, device)?,
                ))
            } else {
                None
            };
            blocks.push(Block {
                attn_norm: vector(gguf, &name("attn_norm"), h, device)?,
                wq: linear(gguf, &name("attn_q"), q_dim, h, device)?,
                wk: linear(gguf, &name("attn_k"), kv_dim, h, device)?,
                wv: linear(gguf, &name("attn_v"), kv_dim, h, device)?,
                qk_norm,
                wo: linear(gguf, &name("attn_output"), h, q_dim, device)?,
                post_norms,
                ffn_norm: vector(gguf, &name("ffn_norm"), h, device)?,
                gate: linear(gguf, &name("ffn_gate"), c.ffn_size, h, device)?,
                up: linear(gguf, &name("ffn_up"), c.ffn_size, h, device)?,
                down: linear(gguf, &name("ffn_down"), h, c.ffn_size, device)?,
            });
            tick(per_block);
        }
        Ok(Self {
            config,
            embedding,
            blocks,
            norm,
            output,
            device: device.clone(),
        })
    }

    /// All of Gemma's hyper-parameters.
    pub fn gemma_config(&self) -> &GemmaConfig {
        &self.config
    }

    /// Evicts per the cache's strategy, re-rotating kept keys with each layer's own RoPE.
    fn make_room(&self, cache: &mut SequenceCache, n: usize) -> Result<()> {
        // The cache re-rotates layer after layer, in order, without naming the layer: count.
        let layers = self.config.base.n_layers;
        let next_layer = Cell::new(0usize);
        let rerotate = |k: &Tensor, _from: usize, delta: isize| {
            let layer = next_layer.get() % layers;
            next_layer.set(layer + 1);
            self.rerotate(k, layer, delta)
        };
        cache.make_room(n, &rerotate)?;
        Ok(())
    }

    /// `[n, head_dim / 2]` cos and sin tables of `positions` for the RoPE of a sliding
    /// (`true`) or global layer.
    fn rope_tables(&self, sliding: bool, positions: &[f64]) -> Result<(Tensor, Tensor)> {
        let (theta, scale) = self.config.rope_for(sliding);
        Ok(crate::ggml_math::rope_tables(
            self.config.base.head_dim,
            theta,
            scale as f32,
            positions.iter().map(|&p| p as f32),
            &self.device,
        )?)
    }

    /// Both RoPE tables (local, global) for consecutive positions `pos..pos + n`.
    fn tables_for_range(&self, pos: usize, n: usize) -> Result<[(Tensor, Tensor); 2]> {
        let positions: Vec<f64> = (pos..pos + n).map(|p| p as f64).collect();
        let local = self.rope_tables(true, &positions)?;
        let global = self.rope_tables(false, &positions)?;
        Ok([local, global])
    }

    /// The first key position a sliding layer needs for queries starting at `pos`.
    fn window_start(&self, pos: usize) -> usize {
        (pos + 1).saturating_sub(self.config.sliding_window)
    }

    /// Normalizes (Gemma 3) `[heads, n, d]`-shaped per-head vectors given as
    /// `[n, heads * d]`, applies RoPE, and returns `[heads, n, d]`.
    fn qk(
        &self,
        x: &Tensor,
        heads: usize,
        norm: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.config.base;
        let n = x.dim(0)?;
        let mut x = x.reshape((n, heads, c.head_dim))?;
        if let Some(norm) = norm {
            x = crate::ggml_math::rms_norm(&x, norm, c.rms_eps as f32)?;
        }
        let x = x.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
        Ok(crate::ggml_math::rope(&x, cos, sin, false)?.squeeze(0)?)
    }

    /// Attention of `q` (`[heads, n, d]`, scaled) over `keys`/`values` (`[kv, L, d]`) with an
    /// optional additive `[n, L]` mask; returns `[n, heads * d]`.
    fn attend(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config.base;
        let n = q.dim(1)?;
        let total = keys.dim(1)?;
        let rep = c.n_heads / c.n_kv_heads;
        // Query heads sharing a kv head become rows: [kv, rep * n, d].
        let q = q.reshape((c.n_kv_heads, rep * n, c.head_dim))?;
        let keys = keys.to_dtype(DType::F32)?;
        let values = values.to_dtype(DType::F32)?;
        let att = q.matmul(&keys.t()?)?; // [kv, rep * n, L]
        let att = match self.config.attn_softcap {
            Some(cap) => softcap(&att, cap)?,
            None => att,
        };
        let att = match mask {
            Some(m) => att
                .reshape((c.n_kv_heads, rep, n, total))?
                .broadcast_add(m)?
                .reshape((c.n_kv_heads, rep * n, total))?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&values.contiguous()?)?; // [kv, rep * n, d]
        Ok(y.reshape((c.n_heads, n, c.head_dim))?
            .transpose(0, 1)?
            .reshape((n, c.n_heads * c.head_dim))?)
    }

    /// The feed-forward branch and both residual adds of a block, given the attention output
    /// after its output projection.
    fn finish_block(&self, b: &Block, x: &Tensor, attn: &Tensor) -> Result<Tensor> {
        let eps = self.config.base.rms_eps as f32;
        let post = |t: Tensor, norm: Option<&Tensor>| -> Result<Tensor> {
            Ok(match norm {
                Some(w) => crate::ggml_math::rms_norm(&t, w, eps)?,
                None => t,
            })
        };
        let attn = post(attn.clone(), b.post_norms.as_ref().map(|p| &p.0))?;
        let x = (x + attn)?;
        let h = crate::ggml_math::rms_norm(&x, &b.ffn_norm, eps)?;
        let gu = crate::geglu::geglu(&b.gate.forward(&h)?, &b.up.forward(&h)?)?;
        let f = post(b.down.forward(&gu)?, b.post_norms.as_ref().map(|p| &p.1))?;
        Ok((x + f)?)
    }

    /// The attention scores' recipe: no extra scale (queries are scaled before), soft-capped
    /// for Gemma 2.
    fn scores(&self) -> crate::attention::Scores {
        crate::attention::Scores::capped(1.0, self.config.attn_softcap)
    }

    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let x = self.embedding.lookup(tokens, &self.device)?;
        Ok((x * f64::from((self.config.base.hidden_size as f32).sqrt()))?)
    }

    /// The final RMSNorm (the hidden states embeddings are pooled from).
    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        let eps = self.config.base.rms_eps as f32;
        Ok(crate::ggml_math::rms_norm(x, &self.norm, eps)?)
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.output.forward(&self.final_norm(x)?)?;
        match self.config.final_softcap {
            Some(cap) => softcap(&logits, cap),
            None => Ok(logits),
        }
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        pos: usize,
        all_logits: bool,
    ) -> Result<Tensor> {
        let x = self.layers(tokens, cache, pos, all_logits)?;
        if all_logits {
            self.logits(&x)
        } else {
            Ok(self.logits(&x.narrow(0, x.dim(0)? - 1, 1)?)?.squeeze(0)?)
        }
    }

    /// The blocks over `tokens` at cache position `pos`, before the final norm: `[n, hidden]`,
    /// or the last row alone (the last block's feed-forward run on it only) when not
    /// `all_rows` and `n > 1`.
    fn layers(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        pos: usize,
        all_rows: bool,
    ) -> Result<Tensor> {
        let c = &self.config.base;
        let eps = c.rms_eps as f32;
        let n = tokens.len();
        let total = pos + n;
        let window = self.config.sliding_window;
        let local_start = self.window_start(pos);
        let tables = self.tables_for_range(pos, n)?;
        // The masks of the general attention path, built only if it is taken.
        let masks = std::cell::OnceCell::new();
        let masks = || -> Result<&(Option<Tensor>, Option<Tensor>)> {
            if let Some(m) = masks.get() {
                return Ok(m);
            }
            let m = if n > 1 {
                (
                    Some(attention_mask(n, pos, 0, usize::MAX, &self.device)?),
                    Some(attention_mask(n, pos, local_start, window, &self.device)?),
                )
            } else {
                (None, None)
            };
            Ok(masks.get_or_init(|| m))
        };
        let mut x = self.embed(tokens)?; // [n, hidden]
        for (layer, b) in self.blocks.iter().enumerate() {
            let sliding = self.config.is_sliding(layer);
            let (cos, sin) = &tables[usize::from(!sliding)];
            let h = crate::ggml_math::rms_norm(&x, &b.attn_norm, eps)?;
            let (qn, kn) = b.qk_norms();
            let q = self.qk(&b.wq.forward(&h)?, c.n_heads, qn, cos, sin)?;
            let q = (q * self.config.attention_scale)?;
            let k = self.qk(&b.wk.forward(&h)?, c.n_kv_heads, kn, cos, sin)?;
            let v =
                b.wv.forward(&h)?
                    .reshape((n, c.n_kv_heads, c.head_dim))?
                    .transpose(0, 1)?;
            let (keys, values) =
                cache.append(layer, &k.to_dtype(KV_DTYPE)?, &v.to_dtype(KV_DTYPE)?)?; // [kv, total, d]
            let job = crate::attention::Job {
                q: &q,
                keys: &keys,
                values: &values,
                first: total - n,
                window: if sliding { window } else { usize::MAX },
            };
            let y = if let Some(y) = crate::attention::attention(&[job], self.scores())? {
                y
            } else if sliding {
                let keys = keys.narrow(1, local_start, total - local_start)?;
                let values = values.narrow(1, local_start, total - local_start)?;
                self.attend(&q, &keys, &values, masks()?.1.as_ref())?
            } else {
                self.attend(&q, &keys, &values, masks()?.0.as_ref())?
            };
            let mut attn = b.wo.forward(&y)?;
            if !all_rows && n > 1 && layer + 1 == self.blocks.len() {
                // Only the last position's logits are wanted: as llama.cpp, the last
                // block's feed-forward runs on that row alone.
                attn = attn.narrow(0, n - 1, 1)?;
                x = x.narrow(0, n - 1, 1)?;
            }
            x = self.finish_block(b, &x, &attn)?;
        }
        Ok(x)
    }

    fn forward_batch_inner(
        &self,
        tokens: &[u32],
        caches: &mut [&mut SequenceCache],
        positions: &[usize],
    ) -> Result<Tensor> {
        let c = &self.config.base;
        let bsz = tokens.len();
        let eps = c.rms_eps as f32;
        let pos_f: Vec<f64> = positions.iter().map(|&p| p as f64).collect();
        // [b, 1, d/2] tables: one position per sequence.
        let table = |sliding: bool| -> Result<(Tensor, Tensor)> {
            let (cos, sin) = self.rope_tables(sliding, &pos_f)?;
            Ok((cos.unsqueeze(1)?, sin.unsqueeze(1)?))
        };
        let tables = [table(true)?, table(false)?];
        let rope = |x: &Tensor,
                    heads: usize,
                    norm: Option<&Tensor>,
                    cos: &Tensor,
                    sin: &Tensor|
         -> Result<Tensor> {
            let mut x = x.reshape((bsz, heads, 1, c.head_dim))?;
            if let Some(norm) = norm {
                x = crate::ggml_math::rms_norm(&x, norm, eps)?;
            }
            Ok(crate::ggml_math::rope(&x, cos, sin, false)?)
        };
        let mut x = self.embed(tokens)?; // [b, hidden]
        for (layer, b) in self.blocks.iter().enumerate() {
            let sliding = self.config.is_sliding(layer);
            let (cos, sin) = &tables[usize::from(!sliding)];
            let h = crate::ggml_math::rms_norm(&x, &b.attn_norm, eps)?;
            let (qn, kn) = b.qk_norms();
            let q = rope(&b.wq.forward(&h)?, c.n_heads, qn, cos, sin)?;
            let q = (q * self.config.attention_scale)?;
            let k = rope(&b.wk.forward(&h)?, c.n_kv_heads, kn, cos, sin)?;
            let v =
                b.wv.forward(&h)?
                    .reshape((bsz, c.n_kv_heads, 1, c.head_dim))?;
            let mut kvs = Vec::with_capacity(bsz);
            for (i, cache) in caches.iter_mut().enumerate() {
                kvs.push(cache.append(
                    layer,
                    &k.get(i)?.to_dtype(KV_DTYPE)?,
                    &v.get(i)?.to_dtype(KV_DTYPE)?,
                )?);
            }
            let window = if sliding {
                self.config.sliding_window
            } else {
                usize::MAX
            };
            let y = match crate::attention::decode_step(&q, &kvs, window, self.scores())? {
                Some(y) => y,
                None => {
                    let mut ys = Vec::with_capacity(bsz);
                    for (i, (keys, values)) in kvs.iter().enumerate() {
                        let (keys, values) = if sliding {
                            let start = self.window_start(positions[i]);
                            let len = positions[i] + 1 - start;
                            (keys.narrow(1, start, len)?, values.narrow(1, start, len)?)
                        } else {
                            (keys.clone(), values.clone())
                        };
                        ys.push(self.attend(&q.get(i)?, &keys, &values, None)?);
                    }
                    Tensor::cat(&ys, 0)?
                }
            };
            x = self.finish_block(b, &x, &b.wo.forward(&y)?)?;
        }
        self.logits(&x)
    }

    /// Rotates cached keys (`[kv, n, d]`) of `layer` by `delta` positions (RoPE composes
    /// additively).
    fn rerotate(&self, keys: &Tensor, layer: usize, delta: isize) -> candle_core::Result<Tensor> {
        let n = keys.dim(1)?;
        let (cos, sin) = self
            .rope_tables(self.config.is_sliding(layer), &vec![delta as f64; n])
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        crate::ggml_math::rope(&keys.unsqueeze(0)?.contiguous()?, &cos, &sin, false)?.squeeze(0)
    }
}

impl Decoder for Gemma {
    /// The common hyper-parameters.
    fn config(&self) -> &ModelConfig {
        &self.config.base
    }

    /// The device the weights live on.
    fn device(&self) -> &Device {
        &self.device
    }

    /// What one token occupies in a KV cache of this model.
    fn cache_shape(&self) -> CacheShape {
        CacheShape {
            layers: self.config.base.n_layers,
            kv_heads: self.config.base.n_kv_heads,
            head_dim: self.config.base.head_dim,
            dtype: KV_DTYPE,
        }
    }

    /// A new, empty cache for one sequence. Its capacity may not exceed the context length.
    fn new_cache(&self, config: &KvCacheConfig) -> Result<SequenceCache> {
        crate::step::new_cache(
            self.config.base.context_length,
            self.cache_shape(),
            config,
            &self.device,
        )
    }

    /// Runs `tokens` of one sequence after what `cache` holds, appending their keys and values.
    /// Returns logits `[vocab]` of the last position, or `[tokens.len(), vocab]` when
    /// `all_logits` is set.
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        crate::step::single(
            tokens,
            cache,
            |cache| self.make_room(cache, tokens.len()),
            |cache, start| {
                crate::quant::as_prompt(|| self.forward_inner(tokens, cache, start, all_logits))
            },
        )
    }

    /// The final-norm hidden states of `tokens` (`[n, hidden]`), run as a prompt is by
    /// [`forward`](Decoder::forward) but without the output projection.
    fn hidden_states(&self, tokens: &[u32], cache: &mut SequenceCache) -> Result<Tensor> {
        crate::step::single(
            tokens,
            cache,
            |cache| self.make_room(cache, tokens.len()),
            |cache, start| {
                crate::quant::as_prompt(|| {
                    self.final_norm(&self.layers(tokens, cache, start, true)?)
                })
            },
        )
    }

    /// One decode step for several sequences at once: `tokens[i]` is the next token of the
    /// sequence cached in `caches[i]`. The weights are read once for the whole batch; the
    /// attention runs per sequence over its own cache. Returns logits `[batch, vocab]`.
    fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut SequenceCache]) -> Result<Tensor> {
        crate::step::check_batch(tokens, caches)?;
        if tokens.len() == 1 {
            return Ok(self.forward(tokens, caches[0], false)?.unsqueeze(0)?);
        }
        crate::step::batch(
            caches,
            |cache| self.make_room(cache, 1),
            |caches, starts| self.forward_batch_inner(tokens, caches, starts),
        )
    }
}

/// `c · tanh(x / c)` element-wise, as llama.cpp computes a soft-cap (scale by `1/c`, `tanhf`,
/// scale by `c`).
fn softcap(x: &Tensor, cap: f32) -> Result<Tensor> {
    Ok(((x * f64::from(1.0 / cap))?.tanh()? * f64::from(cap))?)
}

/// `[n, total - first]` additive mask over key positions `first..pos + n`: query `i` (at
/// position `pos + i`) sees key `j` when `j <= pos + i` and `pos + i - j < window`.
fn attention_mask(
    n: usize,
    pos: usize,
    first: usize,
    window: usize,
    device: &Device,
) -> Result<Tensor> {
    let total = pos + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            let q = pos + i;
            (first..total).map(move |j| {
                if j <= q && q - j < window {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (n, total - first), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma2_alternates_sliding_and_global_layers_starting_with_sliding() {
        assert_eq!(
            sliding_by_period(GEMMA2_SWA_PATTERN, 5),
            vec![true, false, true, false, true]
        );
        assert_eq!(sliding_by_period(0, 2), vec![true, true]);
        let six = sliding_by_period(SWA_PATTERN, 12);
        assert_eq!(
            six.iter()
                .enumerate()
                .filter(|(_, s)| !**s)
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            vec![5, 11]
        );
    }

    #[test]
    fn every_generation_names_its_architecture() {
        for v in [
            GemmaVersion::Gemma1,
            GemmaVersion::Gemma2,
            GemmaVersion::Gemma3,
        ] {
            assert_eq!(GemmaVersion::of(v.architecture()), Some(v));
            assert!(ARCHITECTURES.contains(&v.architecture()));
        }
        assert_eq!(GemmaVersion::of("gemma3n"), None);
        assert!(!GemmaVersion::Gemma1.has_post_norms() && GemmaVersion::Gemma2.has_post_norms());
        assert!(GemmaVersion::Gemma3.has_qk_norm() && !GemmaVersion::Gemma2.has_qk_norm());
    }

    #[test]
    fn soft_capping_bounds_and_keeps_small_values() {
        let x = Tensor::new(&[-1000f32, -1.0, 0.0, 0.5, 1000.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = softcap(&x, 30.0).unwrap().to_vec1().unwrap();
        assert_eq!(y[0], -30.0);
        assert_eq!(y[4], 30.0);
        assert_eq!(y[2], 0.0);
        assert!((y[3] - 30.0 * (0.5f32 / 30.0).tanh()).abs() < 1e-6);
        assert!((y[1] + 1.0).abs() < 1e-3);
    }

    #[test]
    fn sliding_pattern_has_every_sixth_layer_global() {
        let globals: Vec<usize> = (0..18)
            .filter(|&l| l % SWA_PATTERN == SWA_PATTERN - 1)
            .collect();
        assert_eq!(globals, vec![5, 11, 17]);
    }

    #[test]
    fn sliding_mask_keeps_the_last_window_positions() {
        // Queries at positions 3 and 4, window 2: each sees itself and one before.
        let m = attention_mask(2, 3, 2, 2, &Device::Cpu).unwrap();
        let m: Vec<Vec<f32>> = m.to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![vec![0.0, 0.0, inf], vec![inf, 0.0, 0.0]]);
        // The global mask is plain causal.
        let g: Vec<Vec<f32>> = attention_mask(2, 1, 0, usize::MAX, &Device::Cpu)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(g, vec![vec![0.0, 0.0, inf], vec![0.0, 0.0, 0.0]]);
    }
}
