//! Our llama-family decoder on candle-core, with quantized weights ([`QLinear`]) and a
//! preallocated per-sequence KV cache.
//!
//! The weights are shared (`&self` everywhere): many sequences, each with its own
//! [`SequenceCache`], run through one [`Llama`]. Grouped-query attention is computed without
//! repeating keys and values: the query heads that share a key/value head are laid out as
//! extra rows of one matrix product against that head's cache.
//!
//! The same decoder runs the GGUF architectures of the llama family whose blocks differ only
//! in details, read at load into a [`LlamaVariant`]: `llama` and `mistral` (interleaved RoPE),
//! `qwen2` (NEOX RoPE, biases on the query/key/value projections), `qwen3` (NEOX RoPE,
//! RMSNorm of each query and key head before RoPE) and `phi3` (NEOX RoPE, fused projections).
//!
//! Phi-3 as llama.cpp writes it: one `blk.N.attn_qkv.weight` (`[q_dim + 2 * kv_dim, hidden]`,
//! the query rows, then the key rows, then the value rows) instead of `attn_q`/`attn_k`/`attn_v`
//! (which are read instead when a block has no `attn_qkv`), and one `blk.N.ffn_up.weight`
//! (`[2 * ffn, hidden]`, the gate rows then the up rows: SwiGLU is `silu(gate) * up`) instead
//! of `ffn_gate` and `ffn_up`. The fused matrices stay fused: one matrix product, whose output
//! is split by `narrow`, so each weight is read once per step. Not supported, and refused with
//! a typed error at load: LongRoPE scaling (Phi-3 128k, Phi-3.5: `rope_factors_long.weight`,
//! `rope_factors_short.weight`; [`ModelError::UnsupportedFeature`]) and partial rotary
//! embeddings (`phi3.rope.dimension_count` other than the head dimension;
//! [`ModelError::InvalidMetadata`]). A `phi3.attention.sliding_window` is not applied: every
//! layer attends over the whole cache, as candle-transformers' `quantized_phi3` does.

use crate::quant::{Embedding, QLinear};
use candle_core::{DType, Device, Module, Tensor, D};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};

use crate::config::ModelConfig;
use crate::decoder::Decoder;
use crate::gguf::GgufFile;
use crate::weights::{embedding_and_output, linear, vector as norm_weight};
use crate::{ModelError, Result};

/// Progress of loading tensors, reported to a callback.
#[derive(Debug, Clone, Copy)]
pub struct LoadProgress {
    /// Tensors loaded so far.
    pub loaded: usize,
    /// Tensors in all.
    pub total: usize,
}

/// The GGUF architectures (`general.architecture`) this decoder runs.
pub const ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "phi3"];

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i + 1)` (GGML's normal mode): llama and mistral, whose GGUF
    /// weights llama.cpp's converter permutes for it.
    Interleaved,
    /// The two halves `(i, i + d/2)` (GGML's NEOX mode): qwen2, qwen3 and phi3, whose weights
    /// are not permuted.
    Neox,
}

/// What distinguishes one llama-family architecture from another, read at load from
/// `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaVariant {
    /// How RoPE rotates queries and keys (and cached keys, when an attention-sink cache
    /// shifts them).
    pub rope: RopeStyle,
    /// Every block must have biases on its query/key/value projections (`blk.N.attn_q.bias`,
    /// `attn_k.bias`, `attn_v.bias`): qwen2. Other architectures use them when the file has
    /// them.
    pub qkv_bias_required: bool,
    /// Every block has an RMSNorm of each query and key head before RoPE
    /// (`blk.N.attn_q_norm.weight`, `attn_k_norm.weight`, `[head_dim]`): qwen3.
    pub qk_norm: bool,
    /// A block's query, key and value projections may be one matrix,
    /// `blk.N.attn_qkv.weight` (`[q_dim + 2 * kv_dim, hidden]`: query rows, key rows, value
    /// rows), used when the file has it: phi3. Blocks without it read `attn_q`/`attn_k`/`attn_v`.
    pub fused_qkv: bool,
    /// Every block's gate and up projections are one matrix, `blk.N.ffn_up.weight`
    /// (`[2 * ffn, hidden]`: the gate rows, then the up rows), and there is no `ffn_gate`: phi3.
    pub fused_gate_up: bool,
}

impl LlamaVariant {
    /// The variant of a GGUF architecture, or `None` when this decoder does not run it.
    pub fn for_architecture(arch: &str) -> Option<Self> {
        let (rope, qkv_bias_required, qk_norm, fused) = match arch {
            "llama" | "mistral" => (RopeStyle::Interleaved, false, false, false),
            "qwen2" => (RopeStyle::Neox, true, false, false),
            "qwen3" => (RopeStyle::Neox, false, true, false),
            "phi3" => (RopeStyle::Neox, false, false, true),
            _ => return None,
        };
        Some(Self {
            rope,
            qkv_bias_required,
            qk_norm,
            fused_qkv: fused,
            fused_gate_up: fused,
        })
    }
}

/// Optional per-block attention extras: projection biases, query/key head norms.
#[derive(Debug)]
struct AttnExtras {
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

/// A block's query, key and value projections.
#[derive(Debug)]
enum Qkv {
    /// `attn_q`, `attn_k`, `attn_v`.
    Separate {
        wq: QLinear,
        wk: QLinear,
        wv: QLinear,
    },
    /// `attn_qkv`: query, key and value rows in one matrix (phi3).
    Fused(QLinear),
}

/// A block's gate and up projections.
#[derive(Debug)]
enum GateUp {
    /// `ffn_gate`, `ffn_up`.
    Separate { gate: QLinear, up: QLinear },
    /// `ffn_up` of `2 * ffn` rows: the gate rows, then the up rows (phi3).
    Fused(QLinear),
}

/// The weights of one block with separate projections and no extras, for
/// [`Llama::from_parts`].
pub(crate) struct BlockWeights {
    pub(crate) attn_norm: Tensor,
    pub(crate) wq: QLinear,
    pub(crate) wk: QLinear,
    pub(crate) wv: QLinear,
    pub(crate) wo: QLinear,
    pub(crate) ffn_norm: Tensor,
    pub(crate) gate: QLinear,
    pub(crate) up: QLinear,
    pub(crate) down: QLinear,
}

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    qkv: Qkv,
    extras: AttnExtras,
    wo: QLinear,
    ffn_norm: Tensor,
    gate_up: GateUp,
    down: QLinear,
}

impl Block {
    /// The query, key and value projections of `h` (`[rows, hidden]`), biases added; the
    /// fused matrix is one product split by columns (`q_dim`, then `kv_dim` twice).
    fn qkv(
        &self,
        h: &Tensor,
        q_dim: usize,
        kv_dim: usize,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let e = &self.extras;
        match &self.qkv {
            Qkv::Separate { wq, wk, wv } => {
                let q = add_bias(wq.forward(h)?, &e.bq)?;
                let k = add_bias(wk.forward(h)?, &e.bk)?;
                let v = add_bias(wv.forward(h)?, &e.bv)?;
                Ok((q, k, v))
            }
            Qkv::Fused(w) => {
                let qkv = w.forward(h)?;
                Ok((
                    qkv.narrow(D::Minus1, 0, q_dim)?,
                    qkv.narrow(D::Minus1, q_dim, kv_dim)?,
                    qkv.narrow(D::Minus1, q_dim + kv_dim, kv_dim)?,
                ))
            }
        }
    }

    /// The feed-forward block of `h` (already normed): `down(silu(gate(h)) * up(h))`.
    fn ffn(&self, h: &Tensor, ffn: usize) -> candle_core::Result<Tensor> {
        let (g, u) = match &self.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(h)?, up.forward(h)?),
            GateUp::Fused(w) => {
                let gu = w.forward(h)?;
                (
                    gu.narrow(D::Minus1, 0, ffn)?,
                    gu.narrow(D::Minus1, ffn, ffn)?,
                )
            }
        };
        self.down.forward(&crate::ggml_math::swiglu(&g, &u)?)
    }
}

/// A llama-family decoder: llama (SmolLM2, TinyLlama, Llama 2/3...), mistral, qwen2, qwen3.
#[derive(Debug)]
pub struct Llama {
    config: ModelConfig,
    variant: LlamaVariant,
    embedding: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    output: QLinear,
    device: Device,
    kv_dtype: DType,
    fused_attention: bool,
}

/// A vector tensor when `required` or present in the file, `None` otherwise.
fn optional_vector(
    gguf: &mut GgufFile,
    name: &str,
    size: usize,
    required: bool,
    device: &Device,
) -> Result<Option<Tensor>> {
    if required || gguf.has_tensor(name) {
        Ok(Some(norm_weight(gguf, name, size, device)?))
    } else {
        Ok(None)
    }
}

/// Adds `bias` (`[out]`) to every row of `x` when there is one.
fn add_bias(x: Tensor, bias: &Option<Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(b) => x.broadcast_add(b),
        None => Ok(x),
    }
}

/// RMSNorm of each head (`x`'s last dimension) when there is a norm.
fn head_norm(x: Tensor, norm: &Option<Tensor>, eps: f32) -> candle_core::Result<Tensor> {
    match norm {
        Some(w) => crate::ggml_math::rms_norm(&x, w, eps),
        None => Ok(x),
    }
}

impl Llama {
    /// Loads the weights of a llama-family GGUF (one of [`ARCHITECTURES`]) onto `device`,
    /// calling `progress` after each tensor. Another architecture is
    /// [`ModelError::UnsupportedArchitecture`]; a missing or misshapen tensor the architecture
    /// needs is [`ModelError::BadTensor`]; a feature of the architecture this decoder does not
    /// implement (Phi-3's LongRoPE) is [`ModelError::UnsupportedFeature`].
    pub fn load(
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let config = ModelConfig::from_gguf(gguf)?;
        let variant = LlamaVariant::for_architecture(&config.architecture)
            .ok_or_else(|| ModelError::UnsupportedArchitecture(config.architecture.clone()))?;
        Self::load_variant(gguf, device, progress, config, variant)
    }

    /// Loads a llama-family decoder with the given hyper-parameters and variant, whatever
    /// `general.architecture` says: for an
    /// [`ArchitecturePlugin`](crate::plugin::ArchitecturePlugin) whose architecture is a
    /// llama-family one under another name (its config read with
    /// [`ModelConfig::from_gguf_unchecked`], or built by hand). The tensors are read under
    /// llama.cpp's names, with the same checks as [`Llama::load`].
    pub fn load_variant(
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
        config: ModelConfig,
        variant: LlamaVariant,
    ) -> Result<Self> {
        let c = &config;
        let value_key = format!("{}.attention.value_length", c.architecture);
        if let Some(v) = gguf.usize_opt(&value_key) {
            if v != c.head_dim {
                return Err(ModelError::InvalidMetadata {
                    key: value_key,
                    reason: format!("{v} differs from the key length {}", c.head_dim),
                });
            }
        }
        for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
            if gguf.has_tensor(name) {
                return Err(ModelError::UnsupportedFeature {
                    name: name.into(),
                    reason: "LongRoPE scaling (Phi-3 128k, Phi-3.5) is not implemented".into(),
                });
            }
        }
        if variant.fused_qkv {
            // Phi-3's head is `attention.key_length` wide or, without it, hidden / heads
            // (not `rope.dimension_count`, which could rotate only part of it).
            let rope_key = format!("{}.rope.dimension_count", c.architecture);
            let key_length = format!("{}.attention.key_length", c.architecture);
            let head_dim = gguf
                .usize_opt(&key_length)
                .unwrap_or(c.hidden_size / c.n_heads);
            if let Some(r) = gguf.usize_opt(&rope_key) {
                if r != head_dim || r != c.head_dim {
                    return Err(ModelError::InvalidMetadata {
                        key: rope_key,
                        reason: format!(
                            "{r} differs from the head dimension {head_dim} (partial rotary \
                             embeddings are not implemented)"
                        ),
                    });
                }
            }
        }
        let fused_qkv = |gguf: &GgufFile, i: usize| {
            variant.fused_qkv && gguf.has_tensor(&format!("blk.{i}.attn_qkv.weight"))
        };
        let extra_names = |i: usize, fused: bool| {
            let bias = ["attn_q.bias", "attn_k.bias", "attn_v.bias"];
            let norm = ["attn_q_norm.weight", "attn_k_norm.weight"];
            let mut names = Vec::new();
            if !fused {
                for t in bias {
                    names.push((format!("blk.{i}.{t}"), variant.qkv_bias_required));
                }
            }
            if variant.qk_norm {
                for t in norm {
                    names.push((format!("blk.{i}.{t}"), true));
                }
            }
            names
        };
        // Per block: the two norms, the output and down projections, and the projections
        // that may be fused.
        let block_tensors: usize = (0..c.n_layers)
            .map(|i| {
                let fused = fused_qkv(gguf, i);
                let extras = extra_names(i, fused)
                    .into_iter()
                    .filter(|(name, required)| *required || gguf.has_tensor(name))
                    .count();
                let qkv = if fused { 1 } else { 3 };
                let gate_up = if variant.fused_gate_up { 1 } else { 2 };
                4 + qkv + gate_up + extras
            })
            .sum();
        let total = block_tensors + 3;
        let mut loaded = 0;
        let mut tick = |n: usize| {
            loaded += n;
            progress(LoadProgress { loaded, total });
        };
        let (embedding, output) = embedding_and_output(gguf, c, device)?;
        tick(2);
        let norm = norm_weight(gguf, "output_norm.weight", c.hidden_size, device)?;
        tick(1);
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = format!("blk.{i}");
            let fused = fused_qkv(gguf, i);
            let req = variant.qkv_bias_required && !fused;
            let vector = |gguf: &mut GgufFile, t: &str, size: usize, required: bool| {
                optional_vector(gguf, &format!("{p}.{t}"), size, required, device)
            };
            let bias = |gguf: &mut GgufFile, t: &str, size: usize| match fused {
                true => Ok(None),
                false => vector(gguf, t, size, req),
            };
            let extras = AttnExtras {
                bq: bias(gguf, "attn_q.bias", q_dim)?,
                bk: bias(gguf, "attn_k.bias", kv_dim)?,
                bv: bias(gguf, "attn_v.bias", kv_dim)?,
                q_norm: match variant.qk_norm {
                    true => vector(gguf, "attn_q_norm.weight", c.head_dim, true)?,
                    false => None,
                },
                k_norm: match variant.qk_norm {
                    true => vector(gguf, "attn_k_norm.weight", c.head_dim, true)?,
                    false => None,
                },
            };
            let n_extras = [
                &extras.bq,
                &extras.bk,
                &extras.bv,
                &extras.q_norm,
                &extras.k_norm,
            ]
            .iter()
            .filter(|t| t.is_some())
            .count();
            let mat = |gguf: &mut GgufFile, t: &str, out: usize, inp: usize| {
                linear(gguf, &format!("{p}.{t}"), out, inp, device)
            };
            let attn_norm = norm_weight(
                gguf,
                &format!("{p}.attn_norm.weight"),
                c.hidden_size,
                device,
            )?;
            let qkv = if fused {
                let w = mat(gguf, "attn_qkv.weight", q_dim + 2 * kv_dim, c.hidden_size)?;
                Qkv::Fused(w)
            } else {
                Qkv::Separate {
                    wq: mat(gguf, "attn_q.weight", q_dim, c.hidden_size)?,
                    wk: mat(gguf, "attn_k.weight", kv_dim, c.hidden_size)?,
                    wv: mat(gguf, "attn_v.weight", kv_dim, c.hidden_size)?,
                }
            };
            let wo = mat(gguf, "attn_output.weight", c.hidden_size, q_dim)?;
            let ffn_norm =
                norm_weight(gguf, &format!("{p}.ffn_norm.weight"), c.hidden_size, device)?;
            let gate_up = if variant.fused_gate_up {
                GateUp::Fused(mat(gguf, "ffn_up.weight", 2 * c.ffn_size, c.hidden_size)?)
            } else {
                GateUp::Separate {
                    gate: mat(gguf, "ffn_gate.weight", c.ffn_size, c.hidden_size)?,
                    up: mat(gguf, "ffn_up.weight", c.ffn_size, c.hidden_size)?,
                }
            };
            let down = mat(gguf, "ffn_down.weight", c.hidden_size, c.ffn_size)?;
            let n_mats = match (fused, variant.fused_gate_up) {
                (true, true) => 2,
                (true, false) | (false, true) => 3,
                (false, false) => 5,
            };
            blocks.push(Block {
                attn_norm,
                qkv,
                extras,
                wo,
                ffn_norm,
                gate_up,
                down,
            });
            tick(4 + n_mats + n_extras);
        }
        Ok(Self {
            config,
            variant,
            embedding,
            blocks,
            norm,
            output,
            device: device.clone(),
            kv_dtype: DType::F16,
            fused_attention: true,
        })
    }

    /// Builds a llama/mistral decoder from weights another loader made (the Hugging Face
    /// safetensors loader): blocks with separate projections and no biases or head norms,
    /// already in this decoder's layout (query/key rows permuted for
    /// [`RopeStyle::Interleaved`] when `variant` uses it). `output` is `None` when the output
    /// projection is tied to the embeddings.
    pub(crate) fn from_parts(
        config: ModelConfig,
        variant: LlamaVariant,
        embedding: Embedding,
        blocks: Vec<BlockWeights>,
        norm: Tensor,
        output: Option<QLinear>,
        device: &Device,
    ) -> Result<Self> {
        let output = match output {
            Some(o) => o,
            None => embedding.output()?,
        };
        let blocks = blocks
            .into_iter()
            .map(|b| Block {
                attn_norm: b.attn_norm,
                qkv: Qkv::Separate {
                    wq: b.wq,
                    wk: b.wk,
                    wv: b.wv,
                },
                extras: AttnExtras {
                    bq: None,
                    bk: None,
                    bv: None,
                    q_norm: None,
                    k_norm: None,
                },
                wo: b.wo,
                ffn_norm: b.ffn_norm,
                gate_up: GateUp::Separate {
                    gate: b.gate,
                    up: b.up,
                },
                down: b.down,
            })
            .collect();
        config.validate()?;
        Ok(Self {
            config,
            variant,
            embedding,
            blocks,
            norm,
            output,
            device: device.clone(),
            kv_dtype: DType::F16,
            fused_attention: true,
        })
    }

    /// The architecture's variant (RoPE style, biases, query/key norms).
    pub fn variant(&self) -> LlamaVariant {
        self.variant
    }

    /// RoPE's cos and sin rows (`[positions, head_dim / 2]`) of `positions`, computed for each
    /// step rather than tabled for the whole context (whose length a file declares: a table
    /// would be sized by it).
    fn rope_rows(
        &self,
        positions: impl ExactSizeIterator<Item = usize>,
    ) -> Result<(Tensor, Tensor)> {
        let c = &self.config;
        rope_tables(c.head_dim, c.rope_theta, positions, &self.device)
    }

    /// Applies RoPE in this architecture's style to `x` (`[b, heads, n, d]`, contiguous).
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        crate::ggml_math::rope(
            x,
            cos,
            sin,
            matches!(self.variant.rope, RopeStyle::Interleaved),
        )
    }

    /// Chooses the attention computation on the CPU. On (the default): every query row in one
    /// pass over the f16 KV cache, computed as llama.cpp's CPU flash attention computes it
    /// (f16 queries and running sum, online softmax; see the `attention` module), split over
    /// the CPU pool by (sequence, head, row), so a token's attention does not depend on the
    /// other rows of its step. Off, or with an f32 cache, or off the CPU: candle's
    /// matmul → softmax → matmul chain in f32. Measured on the reference continuations: all 34
    /// of SmolLM2's identical to llama.cpp's with the kernel and the rest of the decoder's
    /// llama.cpp arithmetic, 12 with candle's chain.
    pub fn set_fused_attention(&mut self, on: bool) {
        self.fused_attention = on;
    }

    /// Whether attention runs the CPU kernel (see [`Llama::set_fused_attention`]).
    pub fn fused_attention(&self) -> bool {
        self.fused_attention
    }

    /// Sets the element type of the KV caches this model creates: `F16` (the default, as
    /// llama.cpp's cache; half the memory, and what the attention kernel reads) or `F32`
    /// (attention then runs candle's f32 op chain, as candle-transformers computes it).
    pub fn set_kv_dtype(&mut self, dtype: DType) -> Result<()> {
        match dtype {
            DType::F16 | DType::F32 => {
                self.kv_dtype = dtype;
                Ok(())
            }
            other => Err(ModelError::BadTensor {
                name: "kv-cache".into(),
                reason: format!("unsupported KV cache dtype {other:?} (use F16 or F32)"),
            }),
        }
    }

    /// The element type of the KV caches this model creates.
    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    /// Attention of `q` (`[kv, rows, d]`, f32) over cached `keys`/`values` (`[kv, L, d]`, in
    /// the cache's dtype), with an optional additive mask applied by `masked`.
    fn attend(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        masked: impl Fn(Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Tensor> {
        let scale = 1.0 / (self.config.head_dim as f64).sqrt();
        let keys = keys.to_dtype(DType::F32)?;
        let values = values.to_dtype(DType::F32)?;
        let att = (q.matmul(&keys.t()?)? * scale)?;
        let att = candle_nn::ops::softmax_last_dim(&masked(att)?)?;
        Ok(att.matmul(&values)?)
    }

    /// Evicts per the cache's strategy, re-rotating kept keys by their shift.
    fn make_room(&self, cache: &mut SequenceCache, n: usize) -> Result<()> {
        let rerotate = |k: &Tensor, _from: usize, delta: isize| self.rerotate(k, delta);
        cache.make_room(n, &rerotate)?;
        Ok(())
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        pos: usize,
        all_logits: bool,
    ) -> Result<Tensor> {
        let x = self.hidden_inner(tokens, cache, pos, all_logits)?;
        let logits = self.output.forward(&x)?;
        Ok(if all_logits {
            logits
        } else {
            logits.squeeze(0)?
        })
    }

    /// The blocks and the final norm over `tokens` at cache position `pos`: `[n, hidden]`, or
    /// the last row alone (`[1, hidden]`, the last block's feed-forward run on it only) when
    /// not `all_rows`.
    fn hidden_inner(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        pos: usize,
        all_rows: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let n = tokens.len();
        let eps = c.rms_eps as f32;
        let mut x = self.embedding.lookup(tokens, &self.device)?; // [n, hidden]
        let (cos, sin) = self.rope_rows(pos..pos + n)?;
        // The mask of the general attention path, built only if it is taken.
        let mask = std::cell::OnceCell::new();
        let mask = || -> Result<Option<&Tensor>> {
            if n == 1 {
                return Ok(None);
            }
            if mask.get().is_none() {
                let m = causal_mask(n, pos, &self.device)?;
                let _ = mask.set(m);
            }
            Ok(mask.get())
        };
        let rep = c.n_heads / c.n_kv_heads;
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = crate::ggml_math::rms_norm(&x, &b.attn_norm, eps)?;
            let e = &b.extras;
            let (q, k, v) = b.qkv(&h, q_dim, kv_dim)?;
            // [n, heads * d] -> [1, heads, n, d]
            let q = q
                .reshape((n, c.n_heads, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?;
            let k = k
                .reshape((n, c.n_kv_heads, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?;
            let v = v.reshape((n, c.n_kv_heads, c.head_dim))?.transpose(0, 1)?;
            let q = head_norm(q, &e.q_norm, eps)?;
            let k = head_norm(k, &e.k_norm, eps)?;
            let q = self.rope(&q.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let k = self.rope(&k.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let kd = self.kv_dtype;
            let (keys, values) = cache.append(layer, &k.to_dtype(kd)?, &v.to_dtype(kd)?)?; // [kv, L, d]
            let total = keys.dim(1)?;
            let scale = 1.0 / (c.head_dim as f32).sqrt();
            let fused = if self.fused_attention {
                let job = crate::attention::Job {
                    q: &q,
                    keys: &keys,
                    values: &values,
                    first: total - n,
                    window: usize::MAX,
                };
                crate::attention::attention(&[job], scale)?
            } else {
                None
            };
            let y = match fused {
                Some(y) => y, // [n, heads * d]
                None => {
                    // Query heads sharing a kv head become rows: [kv, rep * n, d].
                    let q = q.reshape((c.n_kv_heads, rep * n, c.head_dim))?;
                    let mask = mask()?;
                    self.attend(&q, &keys, &values, |att| match mask {
                        Some(m) => att
                            .reshape((c.n_kv_heads, rep, n, total))?
                            .broadcast_add(m)?
                            .reshape((c.n_kv_heads, rep * n, total)),
                        None => Ok(att),
                    })? // [kv, rep * n, d]
                    .reshape((c.n_heads, n, c.head_dim))?
                    .transpose(0, 1)?
                    .reshape((n, c.n_heads * c.head_dim))?
                }
            };
            let mut attn = b.wo.forward(&y)?;
            if !all_rows && n > 1 && layer + 1 == self.blocks.len() {
                // Only the last position's logits are wanted: as llama.cpp, the last
                // block's feed-forward runs on that row alone.
                attn = attn.narrow(0, n - 1, 1)?;
                x = x.narrow(0, n - 1, 1)?;
            }
            x = (x + attn)?;
            let h = crate::ggml_math::rms_norm(&x, &b.ffn_norm, eps)?;
            x = (x + b.ffn(&h, c.ffn_size)?)?;
        }
        Ok(crate::ggml_math::rms_norm(&x, &self.norm, eps)?)
    }

    fn forward_batch_inner(
        &self,
        tokens: &[u32],
        caches: &mut [&mut SequenceCache],
        positions: &[usize],
    ) -> Result<Tensor> {
        let c = &self.config;
        let bsz = tokens.len();
        let eps = c.rms_eps as f32;
        let rep = c.n_heads / c.n_kv_heads;
        let (cos, sin) = self.rope_rows(positions.iter().copied())?;
        let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?); // [b, 1, d/2]
        let mut x = self.embedding.lookup(tokens, &self.device)?; // [b, hidden]
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = crate::ggml_math::rms_norm(&x, &b.attn_norm, eps)?;
            let e = &b.extras;
            let (q, k, v) = b.qkv(&h, q_dim, kv_dim)?;
            let q = q.reshape((bsz, c.n_heads, 1, c.head_dim))?;
            let k = k.reshape((bsz, c.n_kv_heads, 1, c.head_dim))?;
            let v = v.reshape((bsz, c.n_kv_heads, 1, c.head_dim))?;
            let q = head_norm(q, &e.q_norm, eps)?;
            let k = head_norm(k, &e.k_norm, eps)?;
            let q = self.rope(&q, &cos, &sin)?;
            let k = self.rope(&k, &cos, &sin)?;
            let kd = self.kv_dtype;
            let mut kvs = Vec::with_capacity(bsz);
            for (i, cache) in caches.iter_mut().enumerate() {
                kvs.push(cache.append(
                    layer,
                    &k.get(i)?.to_dtype(kd)?,
                    &v.get(i)?.to_dtype(kd)?,
                )?);
            }
            // Every sequence's rows in one pass over the CPU pool; the op chain otherwise.
            let scale = 1.0 / (c.head_dim as f32).sqrt();
            let fused = if self.fused_attention {
                crate::attention::decode_step(&q, &kvs, usize::MAX, scale)?
            } else {
                None
            };
            let y = match fused {
                Some(y) => y,
                None => {
                    let grouped = q.reshape((bsz, c.n_kv_heads, rep, c.head_dim))?;
                    let mut ys = Vec::with_capacity(bsz);
                    for (i, (keys, values)) in kvs.iter().enumerate() {
                        let qi = grouped.get(i)?;
                        let y = self.attend(&qi, keys, values, Ok)?;
                        ys.push(y.reshape((1, c.n_heads * c.head_dim))?);
                    }
                    Tensor::cat(&ys, 0)?
                }
            };
            x = (x + b.wo.forward(&y)?)?;
            let h = crate::ggml_math::rms_norm(&x, &b.ffn_norm, eps)?;
            x = (x + b.ffn(&h, c.ffn_size)?)?;
        }
        let x = crate::ggml_math::rms_norm(&x, &self.norm, eps)?;
        Ok(self.output.forward(&x)?)
    }

    /// Rotates cached keys (`[kv, n, d]`) by `delta` positions (RoPE composes additively).
    fn rerotate(&self, keys: &Tensor, delta: isize) -> candle_core::Result<Tensor> {
        let n = keys.dim(1)?;
        let half = self.config.head_dim / 2;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for _ in 0..n {
            for i in 0..half {
                let freq = 1.0
                    / self
                        .config
                        .rope_theta
                        .powf(2.0 * i as f64 / self.config.head_dim as f64);
                let angle = delta as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), keys.device())?;
        let sin = Tensor::from_vec(sin, (n, half), keys.device())?;
        let dtype = keys.dtype();
        let keys = keys.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?;
        self.rope(&keys, &cos, &sin)?.squeeze(0)?.to_dtype(dtype)
    }
}

impl Decoder for Llama {
    /// The model's hyper-parameters.
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    fn device(&self) -> &Device {
        &self.device
    }

    /// What one token occupies in a KV cache of this model.
    fn cache_shape(&self) -> CacheShape {
        CacheShape {
            layers: self.config.n_layers,
            kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
            dtype: self.kv_dtype,
        }
    }

    /// A new, empty cache for one sequence. Its capacity may not exceed the context length.
    fn new_cache(&self, config: &KvCacheConfig) -> Result<SequenceCache> {
        crate::step::new_cache(
            self.config.context_length,
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
            |cache, pos| {
                crate::quant::as_prompt(|| self.forward_inner(tokens, cache, pos, all_logits))
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
            |cache, pos| crate::quant::as_prompt(|| self.hidden_inner(tokens, cache, pos, true)),
        )
    }

    /// One decode step for several sequences at once: `tokens[i]` is the next token of the
    /// sequence cached in `caches[i]`. The weights are read once for the whole batch; the
    /// attention runs per sequence over its own cache. Returns logits `[batch, vocab]`.
    fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut SequenceCache]) -> Result<Tensor> {
        crate::step::check_batch(tokens, caches)?;
        if tokens.len() == 1 {
            return self
                .forward(tokens, caches[0], false)?
                .unsqueeze(0)
                .map_err(Into::into);
        }
        crate::step::batch(
            caches,
            |cache| self.make_room(cache, 1),
            |caches, starts| self.forward_batch_inner(tokens, caches, starts),
        )
    }

    /// Turns the attention kernel off ([`Llama::set_fused_attention`]) and makes the caches
    /// f32 ([`Llama::set_kv_dtype`]).
    fn use_candle_attention(&mut self) -> Result<()> {
        self.set_fused_attention(false);
        self.set_kv_dtype(DType::F32)
    }
}

/// `[n, pos + n]` additive mask: 0 where query `i` (at position `pos + i`) may attend, -inf after.
pub(crate) fn causal_mask(n: usize, pos: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = pos + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j <= pos + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (n, total), device)
}

/// RoPE's cos and sin tables `[positions, head_dim / 2]`.
fn rope_tables(
    head_dim: usize,
    theta: f64,
    positions: impl ExactSizeIterator<Item = usize>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    // As GGML computes the angles (f32, the frequency stepped by repeated multiplication), so
    // near-tied logits break the way llama.cpp's do: measured on SmolLM2's greedy references,
    // 12 of 34 identical continuations with these tables, 11 with exact f64 angles.
    Ok(crate::ggml_math::rope_tables(
        head_dim,
        theta,
        1.0,
        positions.map(|p| p as f32),
        device,
    )?)
}
