//! Our Phi-2 decoder (GGUF `general.architecture = phi2`: Phi-1, Phi-1.5, Phi-2) on
//! candle-core, with quantized weights ([`QLinear`]) and the same preallocated per-sequence f16
//! KV cache and CPU attention kernel as [`Llama`](crate::Llama).
//!
//! What sets Phi-2 apart, as llama.cpp runs its GGUF files (`src/models/phi2.cpp`):
//! - LayerNorm with a weight and a bias (`attn_norm.weight`/`.bias`, `output_norm.weight`/
//!   `.bias`; epsilon `phi2.attention.layer_norm_epsilon`), not RMSNorm, computed as GGML's
//!   `ggml_norm` computes it ([`fluent_ai_candle_kernels::ggml::layer_norm_row`]);
//! - a parallel block: attention and the feed-forward both read the same normed input, and
//!   the block's output is `(attention + feed_forward) + input`, added in that order;
//! - biases everywhere: the query/key/value projections (one fused `attn_qkv.weight` with
//!   `attn_qkv.bias`, the query rows then the key rows then the value rows; or separate
//!   `attn_q`/`attn_k`/`attn_v` with optional biases), `attn_output.bias`, `ffn_up.bias`,
//!   `ffn_down.bias` and the output projection's `output.bias`;
//! - partial rotary embeddings: RoPE (NEOX, half-split) rotates only the first
//!   `phi2.rope.dimension_count` values of each head (32 of Phi-2's 80), the rest pass through;
//! - queries are scaled by `1/sqrt(head_dim)` after RoPE, before attention (whose own scale
//!   is then 1);
//! - the feed-forward is `down(gelu(up(x)))` with no gate, GELU (tanh form) read from GGML's
//!   f16 table ([`fluent_ai_candle_kernels::ggml::gelu`]);
//! - the output projection is its own matrix (never tied to the embeddings).
//!
//! The head size is `phi2.attention.key_length` or, as in the converter's files, which do not
//! write it, `embedding_length / head_count` (never `rope.dimension_count`, which Phi-2 uses
//! for the rotated part only).

use candle_core::{DType, Device, Module, Tensor, D};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};

use crate::config::ModelConfig;
use crate::decoder::Decoder;
use crate::gguf::GgufFile;
use crate::llama::LoadProgress;
use crate::quant::{Embedding, QLinear};
use crate::weights::{embedding_and_output, linear, vector};
use crate::{ModelError, Result};

/// The `general.architecture` this module runs.
pub const ARCHITECTURE: &str = "phi2";

/// The element type of the KV cache: f16, as llama.cpp's default cache (and what the
/// attention kernel reads).
const KV_DTYPE: DType = DType::F16;

/// The hyper-parameters of a Phi-2 decoder: the common [`ModelConfig`] plus what only Phi-2
/// has.
#[derive(Debug, Clone, PartialEq)]
pub struct Phi2Config {
    /// The common hyper-parameters. `head_dim` is the full head size
    /// (`attention.key_length`, else `embedding_length / head_count`); `rms_eps` holds the
    /// LayerNorm epsilon ([`Phi2Config::norm_eps`]).
    pub base: ModelConfig,
    /// How many leading values of each head RoPE rotates (`rope.dimension_count`, at most
    /// `head_dim`; the head size when absent).
    pub rope_dims: usize,
    /// LayerNorm epsilon (`attention.layer_norm_epsilon`).
    pub norm_eps: f64,
    /// RoPE position scale: `1 / rope.scaling.factor` with linear scaling, 1 without.
    pub rope_freq_scale: f32,
}

impl Phi2Config {
    /// Reads a Phi-2 config. Another architecture, a missing key (as llama.cpp: the sizes and
    /// `attention.layer_norm_epsilon`) and inconsistent values are typed errors naming the
    /// key; a RoPE scaling other than linear is [`ModelError::UnsupportedFeature`].
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.architecture()?;
        if arch != ARCHITECTURE {
            return Err(ModelError::UnsupportedArchitecture(arch));
        }
        let key = |k: &str| format!("{ARCHITECTURE}.{k}");
        let invalid = |k: &str, reason: String| ModelError::InvalidMetadata {
            key: key(k),
            reason,
        };
        for k in [
            "context_length",
            "embedding_length",
            "block_count",
            "feed_forward_length",
            "attention.head_count",
        ] {
            gguf.usize(&key(k))?;
        }
        let eps_key = key("attention.layer_norm_epsilon");
        let norm_eps = gguf
            .f64_opt(&eps_key)
            .ok_or(ModelError::MissingMetadata { key: eps_key })?;
        if !(norm_eps.is_finite() && norm_eps > 0.0) {
            return Err(invalid(
                "attention.layer_norm_epsilon",
                format!("{norm_eps} is not a positive number"),
            ));
        }
        let hidden = gguf.usize(&key("embedding_length"))?;
        let heads = gguf.usize(&key("attention.head_count"))?;
        if heads == 0 {
            return Err(invalid("attention.head_count", "must be at least 1".into()));
        }
        let head_dim = gguf
            .usize_opt(&key("attention.key_length"))
            .unwrap_or(hidden / heads);
        let rope_dims = gguf
            .usize_opt(&key("rope.dimension_count"))
            .unwrap_or(head_dim);
        if rope_dims == 0 || !rope_dims.is_multiple_of(2) || rope_dims > head_dim {
            return Err(invalid(
                "rope.dimension_count",
                format!(
                    "{rope_dims} is not a positive even number of at most the head size {head_dim}"
                ),
            ));
        }
        // The common reader (bounds, counts, vocabulary); its head size falls back to
        // `rope.dimension_count`, which is Phi-2's rotated part only: replaced here.
        let mut base = ModelConfig::from_gguf(gguf)?;
        base.head_dim = head_dim;
        base.rms_eps = norm_eps;
        base.validate()?;
        // llama.cpp sizes the query projection and `attn_output` by the width.
        if base.n_heads * head_dim != hidden {
            return Err(invalid(
                "attention.key_length",
                format!("{heads} heads of {head_dim} do not make the width {hidden}"),
            ));
        }
        if let Some(v) = gguf.usize_opt(&key("attention.value_length")) {
            if v != head_dim {
                return Err(invalid(
                    "attention.value_length",
                    format!("{v} differs from the key length {head_dim}"),
                ));
            }
        }
        let rope_freq_scale = rope_freq_scale(gguf)?;
        Ok(Self {
            base,
            rope_dims,
            norm_eps,
            rope_freq_scale,
        })
    }
}

/// The RoPE position scale, as llama.cpp reads it: `rope.scaling.type` `none` gives 1;
/// `linear` (the default when the key is absent) gives `1 / rope.scaling.factor` (1 without
/// a factor); other types are not implemented.
fn rope_freq_scale(gguf: &GgufFile) -> Result<f32> {
    let type_key = format!("{ARCHITECTURE}.rope.scaling.type");
    let factor_key = format!("{ARCHITECTURE}.rope.scaling.factor");
    match gguf.get(&type_key) {
        None => {}
        Some(candle_core::quantized::gguf_file::Value::String(t)) => match t.as_str() {
            "none" => return Ok(1.0),
            "linear" => {}
            other => {
                return Err(ModelError::UnsupportedFeature {
                    name: type_key,
                    reason: format!("RoPE scaling '{other}' is not implemented for phi2"),
                })
            }
        },
        Some(_) => return Err(ModelError::MissingMetadata { key: type_key }),
    }
    match gguf.f64_opt(&factor_key) {
        None => Ok(1.0),
        Some(0.0) => Ok(1.0),
        Some(f) if f.is_finite() && f > 0.0 => Ok(1.0 / f as f32),
        Some(f) => Err(ModelError::InvalidMetadata {
            key: factor_key,
            reason: format!("{f} is not a positive number"),
        }),
    }
}

/// The separate query, key and value biases of a block.
const QKV_BIASES: [&str; 3] = ["attn_q.bias", "attn_k.bias", "attn_v.bias"];

/// The tensors block `i` of `gguf` has that [`Phi2::load`] reads: the two norm vectors, the
/// output, up and down projections with their biases, and the query/key/value projections as
/// stored (fused or not) with the biases llama.cpp reads for them.
fn block_tensors(gguf: &GgufFile, i: usize) -> usize {
    let has = |t: &str| gguf.has_tensor(&format!("blk.{i}.{t}"));
    let separate_biases = QKV_BIASES.iter().filter(|t| has(t)).count();
    let qkv = match (has("attn_qkv.weight"), has("attn_qkv.bias")) {
        (true, true) => 2,
        (true, false) => 1 + separate_biases,
        (false, _) => 3 + separate_biases,
    };
    8 + qkv
}

/// A block's query, key and value projections, biases included.
#[derive(Debug)]
enum Qkv {
    /// `attn_qkv`: query, key and value rows in one matrix, and one bias (`attn_qkv.bias`, or
    /// the separate biases joined, as llama.cpp does for files that have both).
    Fused { w: QLinear, b: Option<Tensor> },
    /// `attn_q`, `attn_k`, `attn_v`, each with an optional bias.
    Separate {
        wq: QLinear,
        wk: QLinear,
        wv: QLinear,
        bq: Option<Tensor>,
        bk: Option<Tensor>,
        bv: Option<Tensor>,
    },
}

#[derive(Debug)]
struct Block {
    norm_w: Tensor,
    norm_b: Tensor,
    qkv: Qkv,
    wo: QLinear,
    wo_b: Tensor,
    up: QLinear,
    up_b: Tensor,
    down: QLinear,
    down_b: Tensor,
}

/// Adds `bias` (`[out]`) to every row of `x` when there is one.
fn add_bias(x: Tensor, bias: &Option<Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(b) => x.broadcast_add(b),
        None => Ok(x),
    }
}

impl Block {
    /// The query, key and value projections of `h` (`[rows, hidden]`), biases added.
    fn qkv(&self, h: &Tensor, q_dim: usize, kv_dim: usize) -> Result<(Tensor, Tensor, Tensor)> {
        Ok(match &self.qkv {
            Qkv::Fused { w, b } => {
                let qkv = add_bias(w.forward(h)?, b)?;
                (
                    qkv.narrow(D::Minus1, 0, q_dim)?,
                    qkv.narrow(D::Minus1, q_dim, kv_dim)?,
                    qkv.narrow(D::Minus1, q_dim + kv_dim, kv_dim)?,
                )
            }
            Qkv::Separate {
                wq,
                wk,
                wv,
                bq,
                bk,
                bv,
            } => (
                add_bias(wq.forward(h)?, bq)?,
                add_bias(wk.forward(h)?, bk)?,
                add_bias(wv.forward(h)?, bv)?,
            ),
        })
    }

    /// The feed-forward branch of `h` (the block's normed input):
    /// `down(gelu(up(h) + up_b)) + down_b`.
    fn ffn(&self, h: &Tensor) -> Result<Tensor> {
        let up = self.up.forward(h)?.broadcast_add(&self.up_b)?;
        let act = crate::geglu::gelu(&up)?;
        Ok(self.down.forward(&act)?.broadcast_add(&self.down_b)?)
    }
}

/// A Phi-2 decoder (Phi-1, Phi-1.5, Phi-2).
#[derive(Debug)]
pub struct Phi2 {
    config: Phi2Config,
    embedding: Embedding,
    blocks: Vec<Block>,
    norm_w: Tensor,
    norm_b: Tensor,
    output: QLinear,
    output_b: Tensor,
    device: Device,
}

impl Phi2 {
    /// Loads the weights of a Phi-2 GGUF onto `device`, calling `progress` after each tensor.
    /// A missing tensor the architecture needs, or one of the wrong shape, is a
    /// [`ModelError::BadTensor`] naming it; bad metadata as [`Phi2Config::from_gguf`].
    pub fn load(
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let config = Phi2Config::from_gguf(gguf)?;
        let c = &config.base;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.n_heads * d, c.n_kv_heads * d);
        let total = 5
            + (0..c.n_layers)
                .map(|i| block_tensors(gguf, i))
                .sum::<usize>();
        let mut loaded = 0;
        let mut tick = |n: usize| {
            loaded += n;
            progress(LoadProgress { loaded, total });
        };
        // llama.cpp requires the output projection: no tying to the embeddings.
        if !gguf.has_tensor("output.weight") {
            return Err(ModelError::BadTensor {
                name: "output.weight".into(),
                reason: "missing (phi2's output projection is not tied to the embeddings)".into(),
            });
        }
        let (embedding, output) = embedding_and_output(gguf, c, device)?;
        let output_b = vector(gguf, "output.bias", c.vocab_size, device)?;
        tick(3);
        let norm_w = vector(gguf, "output_norm.weight", h, device)?;
        let norm_b = vector(gguf, "output_norm.bias", h, device)?;
        tick(2);
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let name = |t: &str| format!("blk.{i}.{t}");
            let vec =
                |gguf: &mut GgufFile, t: &str, size: usize| vector(gguf, &name(t), size, device);
            let mat = |gguf: &mut GgufFile, t: &str, out: usize, inp: usize| {
                linear(gguf, &name(t), out, inp, device)
            };
            // The separate biases, each when the file has it.
            let separate_biases = |gguf: &mut GgufFile| -> Result<Vec<Option<Tensor>>> {
                let mut biases = Vec::with_capacity(3);
                for (t, size) in QKV_BIASES.iter().zip([q_dim, kv_dim, kv_dim]) {
                    biases.push(match gguf.has_tensor(&name(t)) {
                        true => Some(vec(gguf, t, size)?),
                        false => None,
                    });
                }
                Ok(biases)
            };
            let qkv = if gguf.has_tensor(&name("attn_qkv.weight")) {
                let w = mat(gguf, "attn_qkv.weight", q_dim + 2 * kv_dim, h)?;
                let b = if gguf.has_tensor(&name("attn_qkv.bias")) {
                    Some(vec(gguf, "attn_qkv.bias", q_dim + 2 * kv_dim)?)
                } else {
                    // As llama.cpp: the separate biases joined, used only when all three are
                    // there.
                    match separate_biases(gguf)?.as_slice() {
                        [Some(bq), Some(bk), Some(bv)] => Some(Tensor::cat(&[bq, bk, bv], 0)?),
                        _ => None,
                    }
                };
                Qkv::Fused { w, b }
            } else {
                let mut biases = separate_biases(gguf)?.into_iter();
                let mut next = || biases.next().flatten();
                Qkv::Separate {
                    wq: mat(gguf, "attn_q.weight", q_dim, h)?,
                    wk: mat(gguf, "attn_k.weight", kv_dim, h)?,
                    wv: mat(gguf, "attn_v.weight", kv_dim, h)?,
                    bq: next(),
                    bk: next(),
                    bv: next(),
                }
            };
            blocks.push(Block {
                norm_w: vec(gguf, "attn_norm.weight", h)?,
                norm_b: vec(gguf, "attn_norm.bias", h)?,
                qkv,
                wo: mat(gguf, "attn_output.weight", h, q_dim)?,
                wo_b: vec(gguf, "attn_output.bias", h)?,
                up: mat(gguf, "ffn_up.weight", c.ffn_size, h)?,
                up_b: vec(gguf, "ffn_up.bias", c.ffn_size)?,
                down: mat(gguf, "ffn_down.weight", h, c.ffn_size)?,
                down_b: vec(gguf, "ffn_down.bias", h)?,
            });
            tick(block_tensors(gguf, i));
        }
        Ok(Self {
            config,
            embedding,
            blocks,
            norm_w,
            norm_b,
            output,
            output_b,
            device: device.clone(),
        })
    }

    /// All of Phi-2's hyper-parameters.
    pub fn phi2_config(&self) -> &Phi2Config {
        &self.config
    }

    fn eps(&self) -> f32 {
        self.config.norm_eps as f32
    }

    /// RoPE's cos and sin rows (`[positions, rope_dims / 2]`) of `positions`.
    fn rope_rows(&self, positions: impl ExactSizeIterator<Item = f32>) -> Result<(Tensor, Tensor)> {
        let c = &self.config;
        Ok(crate::ggml_math::rope_tables(
            c.rope_dims,
            c.base.rope_theta,
            c.rope_freq_scale,
            positions,
            &self.device,
        )?)
    }

    /// Partial NEOX RoPE of `x` (`[b, heads, n, d]`, contiguous).
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        crate::ggml_math::rope(x, cos, sin, false)
    }

    /// The factor the queries are scaled by after RoPE, `1 / sqrtf(head_dim)` in f32 as
    /// llama.cpp computes it.
    fn query_scale(&self) -> f64 {
        f64::from(1.0f32 / (self.config.base.head_dim as f32).sqrt())
    }

    /// Evicts per the cache's strategy, re-rotating kept keys by their shift.
    fn make_room(&self, cache: &mut SequenceCache, n: usize) -> Result<()> {
        let rerotate = |k: &Tensor, _from: usize, delta: isize| self.rerotate(k, delta);
        cache.make_room(n, &rerotate)?;
        Ok(())
    }

    /// Rotates cached keys (`[kv, n, d]`) by `delta` positions (RoPE composes additively), as
    /// llama.cpp's cache shift does: the first `rope_dims` values of each head only.
    fn rerotate(&self, keys: &Tensor, delta: isize) -> candle_core::Result<Tensor> {
        let n = keys.dim(1)?;
        let (cos, sin) = self
            .rope_rows(std::iter::repeat_n(delta as f32, n))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let dtype = keys.dtype();
        let keys = keys.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?;
        self.rope(&keys, &cos, &sin)?.squeeze(0)?.to_dtype(dtype)
    }

    /// Attention of `q` (`[heads, n, d]`, already scaled) over `keys`/`values` (`[kv, L, d]`)
    /// with an optional additive `[n, L]` mask, by candle's op chain in f32 (the path off the
    /// CPU); returns `[n, heads * d]`.
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
        let q = q.reshape((c.n_kv_heads, rep * n, c.head_dim))?;
        let keys = keys.to_dtype(DType::F32)?;
        let values = values.to_dtype(DType::F32)?.contiguous()?;
        let att = q.matmul(&keys.t()?)?; // [kv, rep * n, L]
        let att = match mask {
            Some(m) => att
                .reshape((c.n_kv_heads, rep, n, total))?
                .broadcast_add(m)?
                .reshape((c.n_kv_heads, rep * n, total))?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&values)?; // [kv, rep * n, d]
        Ok(y.reshape((c.n_heads, n, c.head_dim))?
            .transpose(0, 1)?
            .reshape((n, c.n_heads * c.head_dim))?)
    }

    /// The final LayerNorm (the hidden states embeddings are pooled from).
    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::ggml_math::layer_norm(
            x,
            &self.norm_w,
            &self.norm_b,
            self.eps(),
        )?)
    }

    /// The output projection and its bias.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.output.forward(x)?.broadcast_add(&self.output_b)?)
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        pos: usize,
        all_logits: bool,
    ) -> Result<Tensor> {
        let x = self.layers(tokens, cache, pos, all_logits)?;
        let logits = self.logits(&self.final_norm(&x)?)?;
        Ok(if all_logits {
            logits
        } else {
            logits.squeeze(0)?
        })
    }

    /// The blocks over `tokens` at cache position `pos`, before the final norm: `[n, hidden]`,
    /// or the last row alone (the last block's feed-forward run on it only) when not
    /// `all_rows`.
    fn layers(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        pos: usize,
        all_rows: bool,
    ) -> Result<Tensor> {
        let c = &self.config.base;
        let n = tokens.len();
        let total = pos + n;
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let (cos, sin) = self.rope_rows((pos..total).map(|p| p as f32))?;
        // The mask of the general attention path, built only if it is taken.
        let mask = std::cell::OnceCell::new();
        let mask = || -> Result<Option<&Tensor>> {
            if n == 1 {
                return Ok(None);
            }
            if mask.get().is_none() {
                let m = crate::llama::causal_mask(n, pos, &self.device)?;
                let _ = mask.set(m);
            }
            Ok(mask.get())
        };
        let mut x = self.embedding.lookup(tokens, &self.device)?; // [n, hidden]
        for (layer, b) in self.blocks.iter().enumerate() {
            let mut h = crate::ggml_math::layer_norm(&x, &b.norm_w, &b.norm_b, self.eps())?;
            let (q, k, v) = b.qkv(&h, q_dim, kv_dim)?;
            // [n, heads * d] -> [1, heads, n, d]
            let heads = |t: Tensor, count: usize| -> Result<Tensor> {
                Ok(t.reshape((n, count, c.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .unsqueeze(0)?)
            };
            let q = self.rope(&heads(q, c.n_heads)?, &cos, &sin)?.squeeze(0)?;
            let q = (q * self.query_scale())?;
            let k = self
                .rope(&heads(k, c.n_kv_heads)?, &cos, &sin)?
                .squeeze(0)?;
            let v = v.reshape((n, c.n_kv_heads, c.head_dim))?.transpose(0, 1)?;
            let (keys, values) =
                cache.append(layer, &k.to_dtype(KV_DTYPE)?, &v.to_dtype(KV_DTYPE)?)?; // [kv, total, d]
            let job = crate::attention::Job {
                q: &q,
                keys: &keys,
                values: &values,
                first: total - n,
                window: usize::MAX,
            };
            let y = match crate::attention::attention(&[job], 1.0)? {
                Some(y) => y,
                None => self.attend(&q, &keys, &values, mask()?)?,
            };
            let mut attn = b.wo.forward(&y)?.broadcast_add(&b.wo_b)?;
            if !all_rows && n > 1 && layer + 1 == self.blocks.len() {
                // Only the last position's logits are wanted: as llama.cpp, the last block's
                // feed-forward runs on that row alone.
                attn = attn.narrow(0, n - 1, 1)?;
                x = x.narrow(0, n - 1, 1)?;
                h = h.narrow(0, n - 1, 1)?;
            }
            x = ((attn + b.ffn(&h)?)? + x)?;
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
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let (cos, sin) = self.rope_rows(positions.iter().map(|&p| p as f32))?;
        let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?); // [b, 1, r/2]
        let mut x = self.embedding.lookup(tokens, &self.device)?; // [b, hidden]
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = crate::ggml_math::layer_norm(&x, &b.norm_w, &b.norm_b, self.eps())?;
            let (q, k, v) = b.qkv(&h, q_dim, kv_dim)?;
            let q = q.reshape((bsz, c.n_heads, 1, c.head_dim))?.contiguous()?;
            let k = k
                .reshape((bsz, c.n_kv_heads, 1, c.head_dim))?
                .contiguous()?;
            let v = v.reshape((bsz, c.n_kv_heads, 1, c.head_dim))?;
            let q = (self.rope(&q, &cos, &sin)? * self.query_scale())?;
            let k = self.rope(&k, &cos, &sin)?;
            let mut kvs = Vec::with_capacity(bsz);
            for (i, cache) in caches.iter_mut().enumerate() {
                kvs.push(cache.append(
                    layer,
                    &k.get(i)?.to_dtype(KV_DTYPE)?,
                    &v.get(i)?.to_dtype(KV_DTYPE)?,
                )?);
            }
            let y = match crate::attention::decode_step(&q, &kvs, usize::MAX, 1.0)? {
                Some(y) => y,
                None => {
                    let mut ys = Vec::with_capacity(bsz);
                    for (i, (keys, values)) in kvs.iter().enumerate() {
                        ys.push(self.attend(&q.get(i)?, keys, values, None)?);
                    }
                    Tensor::cat(&ys, 0)?
                }
            };
            let attn = b.wo.forward(&y)?.broadcast_add(&b.wo_b)?;
            x = ((attn + b.ffn(&h)?)? + x)?;
        }
        self.logits(&self.final_norm(&x)?)
    }
}

impl Decoder for Phi2 {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use candle_core::quantized::{gguf_file, QTensor};
    use candle_core::IndexOp;
    use fluent_ai_candle_kv_cache::EvictionStrategy;

    use super::*;
    use crate::synth::{self, QuantMix, SynthSpec, Vocabulary};

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("phi2-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The synthetic `tiny` phi2 (4 heads of 64, 32 of them rotated) in `mix`.
    fn tiny(mix: &str) -> PathBuf {
        let path = dir().join(format!("tiny-{mix}.gguf"));
        if !path.is_file() {
            let spec = SynthSpec::new(
                synth::shape("phi2", "tiny").unwrap(),
                QuantMix::parse(mix).unwrap(),
                5,
            );
            synth::write(&spec, &Vocabulary::byte_level_test(320), &path).unwrap();
        }
        path
    }

    type Metadata = Vec<(String, gguf_file::Value)>;
    type Tensors = Vec<(String, QTensor)>;

    /// `src` rewritten to `name` after `edit` changed its metadata and tensors.
    fn rewrite(
        src: &PathBuf,
        name: &str,
        edit: impl FnOnce(&mut Metadata, &mut Tensors),
    ) -> PathBuf {
        let mut f = std::fs::File::open(src).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let mut md: Metadata = content.metadata.clone().into_iter().collect();
        md.sort_by(|a, b| a.0.cmp(&b.0));
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let mut ts: Tensors = names
            .into_iter()
            .map(|n| (n.clone(), content.tensor(&mut f, n, &Device::Cpu).unwrap()))
            .collect();
        edit(&mut md, &mut ts);
        let out = dir().join(name);
        let mut w = std::fs::File::create(&out).unwrap();
        let md: Vec<_> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<_> = ts.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut w, &md, &ts).unwrap();
        out
    }

    fn load(path: &PathBuf) -> Result<Phi2> {
        Phi2::load(&mut GgufFile::open(path)?, &Device::Cpu, &mut |_| {})
    }

    fn set(md: &mut Metadata, key: &str, value: Option<gguf_file::Value>) {
        md.retain(|(k, _)| k != key);
        if let Some(v) = value {
            md.push((key.into(), v));
        }
    }

    fn logits(model: &Phi2, tokens: &[u32]) -> Vec<Vec<f32>> {
        let mut kv = model
            .new_cache(&KvCacheConfig::default().max_entries(32))
            .unwrap();
        model
            .forward(tokens, &mut kv, true)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    const TOKENS: [u32; 7] = [5, 70, 200, 9, 33, 310, 17];

    #[test]
    fn config_reads_partial_rotary_and_the_layer_norm_epsilon() {
        let model = load(&tiny("q8_0")).unwrap();
        let c = model.phi2_config();
        assert_eq!(c.base.head_dim, 64);
        assert_eq!(c.rope_dims, 32);
        assert_eq!(c.base.n_kv_heads, 4);
        assert!((c.norm_eps - 1e-5).abs() < 1e-12);
        assert_eq!(c.base.rms_eps, c.norm_eps);
        assert_eq!(c.rope_freq_scale, 1.0);
        assert_eq!(model.cache_shape().head_dim, 64);
    }

    #[test]
    fn bad_metadata_is_a_typed_error_naming_the_key() {
        use gguf_file::Value;
        let src = tiny("q8_0");
        let cases: Vec<(&str, Option<Value>, &str)> = vec![
            ("phi2.attention.layer_norm_epsilon", None, "missing"),
            (
                "phi2.attention.layer_norm_epsilon",
                Some(Value::F32(-1.0)),
                "invalid",
            ),
            ("phi2.rope.dimension_count", Some(Value::U32(33)), "invalid"),
            (
                "phi2.rope.dimension_count",
                Some(Value::U32(128)),
                "invalid",
            ),
            ("phi2.attention.key_length", Some(Value::U32(32)), "invalid"),
            (
                "phi2.attention.value_length",
                Some(Value::U32(32)),
                "invalid",
            ),
            (
                "phi2.rope.scaling.type",
                Some(Value::String("yarn".into())),
                "feature",
            ),
            (
                "phi2.rope.scaling.factor",
                Some(Value::F32(-2.0)),
                "invalid",
            ),
        ];
        for (i, (key, value, kind)) in cases.into_iter().enumerate() {
            let path = rewrite(&src, &format!("bad-md-{i}.gguf"), |md, _| {
                set(md, key, value)
            });
            let err = load(&path).unwrap_err();
            let named = match (&err, kind) {
                (ModelError::MissingMetadata { key: k }, "missing") => k == key,
                (ModelError::InvalidMetadata { key: k, .. }, "invalid") => k == key,
                (ModelError::UnsupportedFeature { name, .. }, "feature") => name == key,
                _ => false,
            };
            assert!(named, "{key}: {err}");
        }
        // Linear RoPE scaling is read as llama.cpp reads it.
        let path = rewrite(&src, "linear.gguf", |md, _| {
            set(md, "phi2.rope.scaling.factor", Some(Value::F32(4.0)))
        });
        assert_eq!(load(&path).unwrap().phi2_config().rope_freq_scale, 0.25);
    }

    #[test]
    fn missing_or_misshapen_tensors_are_typed_errors_naming_them() {
        let src = tiny("q8_0");
        for name in [
            "output.weight",
            "output.bias",
            "output_norm.bias",
            "blk.1.attn_norm.bias",
            "blk.0.attn_output.bias",
            "blk.1.ffn_up.bias",
            "blk.0.ffn_down.weight",
        ] {
            let path = rewrite(&src, &format!("no-{name}.gguf"), |_, ts| {
                ts.retain(|(n, _)| n != name)
            });
            match load(&path).unwrap_err() {
                ModelError::BadTensor { name: n, .. } => assert_eq!(n, name),
                e => panic!("{name}: {e}"),
            }
        }
        let path = rewrite(&src, "short-bias.gguf", |_, ts| {
            for (n, t) in ts.iter_mut() {
                if n == "blk.0.attn_qkv.bias" {
                    let short = Tensor::zeros(100, DType::F32, &Device::Cpu).unwrap();
                    *t = QTensor::quantize(&short, candle_core::quantized::GgmlDType::F32).unwrap();
                }
            }
        });
        assert!(
            matches!(load(&path).unwrap_err(), ModelError::BadTensor { name, .. } if name == "blk.0.attn_qkv.bias")
        );
    }

    /// The decoder computed in plain f32 candle ops from the dequantized weights: exact GELU,
    /// candle's LayerNorm, exact f64 RoPE angles, softmax attention over f32 keys.
    fn reference(path: &PathBuf, tokens: &[u32]) -> Vec<Vec<f32>> {
        let dev = Device::Cpu;
        let mut f = std::fs::File::open(path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let mut t = |name: &str| {
            content
                .tensor(&mut f, name, &dev)
                .unwrap()
                .dequantize(&dev)
                .unwrap()
        };
        let (heads, d, r, eps) = (4, 64, 32, 1e-5);
        let n = tokens.len();
        let lin = |x: &Tensor, w: &Tensor, b: &Tensor| {
            x.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap()
        };
        let ids = Tensor::new(tokens, &dev).unwrap();
        let mut x = t("token_embd.weight").index_select(&ids, 0).unwrap();
        let (mut cos, mut sin) = (vec![], vec![]);
        for p in 0..n {
            for i in 0..r / 2 {
                let a = p as f64 * 10_000f64.powf(-2.0 * i as f64 / r as f64);
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (n, r / 2), &dev).unwrap();
        let sin = Tensor::from_vec(sin, (n, r / 2), &dev).unwrap();
        let rope = |x: Tensor| {
            // [n, heads * d] -> [1, heads, n, d], the first r of each head rotated
            let x = x.reshape((n, heads, d)).unwrap().transpose(0, 1).unwrap();
            let x = x.unsqueeze(0).unwrap().contiguous().unwrap();
            let rot = x.narrow(3, 0, r).unwrap().contiguous().unwrap();
            let rot = candle_nn::rotary_emb::rope(&rot, &cos, &sin).unwrap();
            Tensor::cat(&[&rot, &x.narrow(3, r, d - r).unwrap()], 3).unwrap()
        };
        let mask: Vec<f32> = (0..n * n)
            .map(|i| {
                if i % n <= i / n {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), &dev).unwrap();
        for l in 0..2 {
            let w = |s: &str| format!("blk.{l}.{s}");
            let h = candle_nn::ops::layer_norm(
                &x,
                &t(&w("attn_norm.weight")),
                &t(&w("attn_norm.bias")),
                eps,
            )
            .unwrap();
            let qkv = lin(&h, &t(&w("attn_qkv.weight")), &t(&w("attn_qkv.bias")));
            let q = (rope(qkv.narrow(1, 0, 256).unwrap()) / 8.0).unwrap();
            let k = rope(qkv.narrow(1, 256, 256).unwrap());
            let v = qkv
                .narrow(1, 512, 256)
                .unwrap()
                .reshape((n, heads, d))
                .unwrap();
            let v = v
                .transpose(0, 1)
                .unwrap()
                .unsqueeze(0)
                .unwrap()
                .contiguous()
                .unwrap();
            let att = q
                .matmul(&k.t().unwrap())
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
            let y = att
                .matmul(&v)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .transpose(0, 1)
                .unwrap();
            let y = y.reshape((n, heads * d)).unwrap();
            let attn = lin(&y, &t(&w("attn_output.weight")), &t(&w("attn_output.bias")));
            let up = lin(&h, &t(&w("ffn_up.weight")), &t(&w("ffn_up.bias")));
            let ffn = lin(
                &up.gelu().unwrap(),
                &t(&w("ffn_down.weight")),
                &t(&w("ffn_down.bias")),
            );
            x = ((attn + ffn).unwrap() + x).unwrap();
        }
        let x =
            candle_nn::ops::layer_norm(&x, &t("output_norm.weight"), &t("output_norm.bias"), eps)
                .unwrap();
        lin(&x, &t("output.weight"), &t("output.bias"))
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn logits_follow_the_plain_f32_definition() {
        let path = tiny("f32");
        let model = load(&path).unwrap();
        let ours = logits(&model, &TOKENS);
        let want = reference(&path, &TOKENS);
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            // f16 keys, values and queries and the f16 GELU table against exact f32.
            let diff = max_diff(a, b);
            assert!(diff < 5e-3, "position {i}: {diff}");
            let argmax = |l: &[f32]| (0..l.len()).max_by(|&x, &y| l[x].total_cmp(&l[y])).unwrap();
            let spread = b.iter().cloned().fold(f32::MIN, f32::max)
                - b.iter().cloned().fold(f32::MAX, f32::min);
            assert!(spread > 0.5, "{spread}");
            let (ia, ib) = (argmax(a), argmax(b));
            assert!(ia == ib || (b[ia] - b[ib]).abs() < 0.05, "position {i}");
        }
    }

    #[test]
    fn separate_projections_give_the_fused_result() {
        let src = tiny("f32");
        let fused = load(&src).unwrap();
        // attn_qkv split by rows into attn_q/k/v (f32: exactly the same values), with the
        // bias split too.
        let split = rewrite(&src, "separate.gguf", |_, ts| {
            let mut out = Vec::new();
            for (n, t) in ts.drain(..) {
                let Some(prefix) = n
                    .strip_suffix("attn_qkv.weight")
                    .or(n.strip_suffix("attn_qkv.bias"))
                else {
                    out.push((n, t));
                    continue;
                };
                let kind = if n.ends_with("weight") {
                    "weight"
                } else {
                    "bias"
                };
                let full = t.dequantize(&Device::Cpu).unwrap();
                for (j, part) in ["attn_q", "attn_k", "attn_v"].iter().enumerate() {
                    let rows = full
                        .narrow(0, 256 * j, 256)
                        .unwrap()
                        .force_contiguous()
                        .unwrap();
                    let q =
                        QTensor::quantize(&rows, candle_core::quantized::GgmlDType::F32).unwrap();
                    out.push((format!("{prefix}{part}.{kind}"), q));
                }
            }
            *ts = out;
        });
        let separate = load(&split).unwrap();
        assert!(matches!(
            separate.blocks[0].qkv,
            Qkv::Separate { bq: Some(_), .. }
        ));
        assert_eq!(logits(&fused, &TOKENS), logits(&separate, &TOKENS));
        // Fused weights with separate biases: joined, as llama.cpp joins them.
        let mixed = rewrite(&split, "mixed.gguf", |_, ts| {
            let mut out = Vec::new();
            let src_ts = std::mem::take(ts);
            for l in 0..2 {
                let parts: Vec<Tensor> = ["attn_q", "attn_k", "attn_v"]
                    .iter()
                    .map(|p| {
                        let name = format!("blk.{l}.{p}.weight");
                        let t = &src_ts.iter().find(|(n, _)| *n == name).unwrap().1;
                        t.dequantize(&Device::Cpu).unwrap()
                    })
                    .collect();
                let w = Tensor::cat(&parts, 0).unwrap();
                let q = QTensor::quantize(&w, candle_core::quantized::GgmlDType::F32).unwrap();
                out.push((format!("blk.{l}.attn_qkv.weight"), q));
            }
            let separate_weight = |n: &str| {
                ["attn_q.weight", "attn_k.weight", "attn_v.weight"]
                    .iter()
                    .any(|w| n.ends_with(w))
            };
            out.extend(src_ts.into_iter().filter(|(n, _)| !separate_weight(n)));
            *ts = out;
        });
        let joined = load(&mixed).unwrap();
        assert!(matches!(
            joined.blocks[1].qkv,
            Qkv::Fused { b: Some(_), .. }
        ));
        assert_eq!(logits(&fused, &TOKENS), logits(&joined, &TOKENS));
    }

    #[test]
    fn prefill_decode_batch_and_hidden_states_agree() {
        let model = load(&tiny("q8_0")).unwrap();
        let all = logits(&model, &TOKENS);
        // Token by token: the attention kernel is batch invariant; the matmuls of a prompt
        // sum groups of rows as llama.cpp's prefill does, so allow rounding.
        let mut kv = model
            .new_cache(&KvCacheConfig::default().max_entries(32))
            .unwrap();
        for (i, &t) in TOKENS.iter().enumerate() {
            let l: Vec<f32> = model
                .forward(&[t], &mut kv, false)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(max_diff(&l, &all[i]) < 1e-3, "position {i}");
        }
        // The last row alone (the last block's feed-forward on one row) is the same row.
        let mut kv = model
            .new_cache(&KvCacheConfig::default().max_entries(32))
            .unwrap();
        let last: Vec<f32> = model
            .forward(&TOKENS, &mut kv, false)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(max_diff(&last, &all[TOKENS.len() - 1]) < 1e-4);
        // A batched decode step: each row as that sequence's own step.
        let prompts: [&[u32]; 3] = [&TOKENS[..3], &TOKENS[2..7], &TOKENS[1..2]];
        let mut caches: Vec<SequenceCache> = prompts
            .iter()
            .map(|p| {
                let mut kv = model
                    .new_cache(&KvCacheConfig::default().max_entries(16))
                    .unwrap();
                model.forward(p, &mut kv, false).unwrap();
                kv
            })
            .collect();
        let next = [11u32, 12, 13];
        let mut refs: Vec<&mut SequenceCache> = caches.iter_mut().collect();
        let batch: Vec<Vec<f32>> = model
            .forward_batch(&next, &mut refs)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let mut seq = p.to_vec();
            seq.push(next[i]);
            let want = logits(&model, &seq);
            assert!(
                max_diff(&batch[i], &want[seq.len() - 1]) < 1e-3,
                "sequence {i}"
            );
            assert_eq!(caches[i].len(), seq.len());
        }
        let mut kv = model
            .new_cache(&KvCacheConfig::default().max_entries(16))
            .unwrap();
        let h = model.hidden_states(&TOKENS, &mut kv).unwrap();
        assert_eq!(h.dims(), &[TOKENS.len(), 256]);
        // The output projection of the hidden states is the logits.
        let l = model
            .logits(&h.i(TOKENS.len() - 1..).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(max_diff(&l[0], &all[TOKENS.len() - 1]) < 1e-4);
    }

    #[test]
    fn eviction_rerotates_only_the_rotated_part_of_kept_keys() {
        let model = load(&tiny("q8_0")).unwrap();
        let keys = Tensor::randn(0f32, 1.0, (4, 3, 64), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let moved = model.rerotate(&keys, 5).unwrap();
        let back = model.rerotate(&moved, -5).unwrap();
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        // The unrotated values are untouched; the rotated ones come back within f16 rounding.
        assert_eq!(
            f(&moved.narrow(2, 32, 32).unwrap())
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            f(&keys.narrow(2, 32, 32).unwrap())
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert!(crate::max_abs_diff(&f(&moved), &f(&keys)) > 0.01);
        assert!(crate::max_abs_diff(&f(&back), &f(&keys)) < 1e-2);
        // A sliding-window cache keeps running past its capacity; the first layer's keys it
        // keeps (which depend on their token and position only) are those of the kept tokens
        // at the positions they moved to.
        let config = KvCacheConfig::default()
            .max_entries(6)
            .eviction_strategy(EvictionStrategy::SlidingWindow { window: 4 });
        let mut kv = model.new_cache(&config).unwrap();
        for &t in &TOKENS {
            let l = model
                .forward(&[t], &mut kv, false)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(l.iter().all(|x| x.is_finite()));
        }
        assert_eq!((kv.evicted(), kv.len()), (2, 5));
        let kept = &TOKENS[2..];
        let mut fresh = model
            .new_cache(&KvCacheConfig::default().max_entries(8))
            .unwrap();
        model.forward(kept, &mut fresh, false).unwrap();
        let (k, v) = kv.layer(0).unwrap();
        let (fk, fv) = fresh.layer(0).unwrap();
        // The values are moved as they are; the keys re-rotated, within f16 rounding.
        assert_eq!(
            crate::max_abs_diff(
                &f(&v.narrow(1, 0, 4).unwrap()),
                &f(&fv.narrow(1, 0, 4).unwrap())
            ),
            0.0
        );
        let diff = crate::max_abs_diff(&f(&k), &f(&fk));
        assert!(diff < 2e-2, "{diff}");
        let tail = |t: &Tensor| f(&t.narrow(2, 32, 32).unwrap());
        assert_eq!(crate::max_abs_diff(&tail(&k), &tail(&fk)), 0.0);
    }
}
