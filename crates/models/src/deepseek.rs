//! Our DeepSeek-V3 decoder (the architecture of DeepSeek-V2/V2.5/V3 and Kimi K2) on
//! candle-core: multi-head latent attention (MLA) and a mixture of experts (MoE), loaded from
//! GGUF files whose `general.architecture` is `deepseek2` (llama.cpp's name for the family).
//!
//! # What is implemented
//!
//! As llama.cpp runs these files (`src/models/deepseek2.cpp`, `build_moe_ffn` in
//! `src/llama-graph.cpp`, the converter's `DeepseekV2Model`):
//! - **Queries**: `attn_q` (`[heads * (nope + rope), hidden]`), or, when
//!   `deepseek2.attention.q_lora_rank` is set (> 0), the low-rank path `attn_q_b ·
//!   rms_norm(attn_q_a · x, attn_q_a_norm)`. Each head's query is its `qk_nope` dimensions,
//!   then its `qk_rope` dimensions.
//! - **Compressed keys and values**: `attn_kv_a_mqa · x` is `kv_lora_rank` dimensions of latent
//!   `c`, RMS-normalized by `attn_kv_a_norm`, then `qk_rope` dimensions of one rope key shared
//!   by every head.
//! - **Decompression**, either layout: `attn_kv_b` (`[heads * (nope + v), kv_lora_rank]`, each
//!   head's key rows then value rows: older files) or `attn_k_b` (`[heads, kv_lora_rank,
//!   nope]`) and `attn_v_b` (`[heads, v, kv_lora_rank]`) (files converted for llama.cpp's MLA
//!   cache, Kimi K2's among them). The head sizes come from `attention.key_length_mla` /
//!   `value_length_mla` when the file has them (its `key_length` / `value_length` then
//!   describe the latent cache and must be `kv_lora_rank + rope` / `kv_lora_rank`), otherwise
//!   from `attention.key_length` / `value_length`.
//! - **RoPE** on the rope dimensions only, in GGML's "normal" mode (adjacent pairs): llama.cpp
//!   runs `deepseek2` with `LLAMA_ROPE_TYPE_NORM` and its converter does not permute the
//!   weights (the Hugging Face code de-interleaves before a half-split rotation, which is the
//!   same rotation). **YaRN** (`rope.scaling.type = yarn`) as GGML computes it: interpolated
//!   and extrapolated frequencies mixed by a ramp between the correction dimensions of
//!   `yarn_beta_fast` (default 32) and `yarn_beta_slow` (default 1) over
//!   `original_context_length`, the rotation itself unscaled, and the attention scale
//!   `1/sqrt(nope + rope)` multiplied by `mscale²` with `mscale = 1 + yarn_log_multiplier ·
//!   ln(factor)` (the converter stores `0.1 · mscale_all_dim`). Other scalings (linear,
//!   LongRoPE...), a YaRN `ext_factor` or `attn_factor` other than 1, and attention temperature
//!   scaling are refused with [`ModelError::UnsupportedFeature`].
//! - **Feed-forward**: the first `leading_dense_block_count` blocks are SwiGLU MLPs
//!   (`ffn_gate`/`ffn_up`/`ffn_down`); the others are MoE blocks: router `ffn_gate_inp`
//!   (`[experts, hidden]`), scores by softmax or sigmoid (`expert_gating_func` 1 or 2; absent
//!   or 0 means softmax, as llama.cpp reads DeepSeek-V2 files), selection by the scores plus
//!   `exp_probs_b.bias` when present (the bias picks experts; it never weighs them),
//!   group-limited when `expert_group_count` > 1 (a group scores the sum of its two best
//!   selection scores, as llama.cpp does for every deepseek2 file, and only the
//!   `expert_group_used_count` best groups compete), the `expert_used_count` best experts
//!   weighted by their scores, normalized to sum 1 when `expert_weights_norm`, times
//!   `expert_weights_scale`; SwiGLU experts from the 3-D `ffn_{gate,up,down}_exps` (one slice
//!   per expert), plus the shared experts `ffn_{gate,up,down}_shexp`.
//!
//! # The cache: the compressed latent, "absorbed" attention
//!
//! Within the [`SequenceCache`] interface (one key and one value tensor per layer, of the same
//! shape), each token caches what MLA needs and nothing more: its latent row `[k_rope ‖ c]`
//! (`qk_rope + kv_lora_rank` values, the rope key already rotated), split in two halves: the
//! first `head_dim` values in the "key" tensor, the rest (zero-padded) in the "value" tensor.
//! [`CacheShape`] is `{ kv_heads: 1, head_dim: max(rope, ceil((rope + rank) / 2)) }`. The
//! rope key sits at the start of the key half, so an eviction's re-rotation (attention sinks,
//! sliding window) rotates it in place.
//!
//! Attention runs on the latent directly ("weight absorption"): each head's query
//! nope part is multiplied by its key decompression matrix (`q · W_kb`, `kv_lora_rank` wide),
//! so the score is `[q_rope ‖ q · W_kb] · [k_rope ‖ c]` (one query row per head against one
//! shared key: multi-query attention), and each head's output is its value decompression
//! matrix times the softmax-weighted sum of latents. This is exact algebra, not an
//! approximation; the tests compare it against the plain per-head (decompressed) attention.
//!
//! Memory: a token takes `rope + kv_lora_rank` (+1 when odd) f32 values per layer (Kimi K2,
//! DeepSeek-V3: 576, 2.25 KiB), against `heads · (nope + rope + v)` for decompressed keys and
//! values (Kimi K2: 64 · 320 = 20 480, 80 KiB): about 35 times less. The price is compute:
//! every step multiplies each query by `W_kb` and each output by `W_vb`. Those two small
//! per-head matrices (`attn_k_b`/`attn_v_b`, or the halves of `attn_kv_b`) are dequantized to
//! f32 at load (Kimi K2: about 2 GiB over 61 layers); every other matrix stays quantized and
//! runs through [`QLinear`]. The router stays f32 too (dequantized at load), so expert
//! selection does not depend on activation quantization.
//!
//! # What is not implemented
//!
//! - Real weights: none can be fetched in this environment, so the decoder is verified only on
//!   small synthetic GGUF files against an independent reference written in the test
//!   (`tests/deepseek.rs`). Nothing here has run a real DeepSeek or Kimi checkpoint.
//! - Fused `ffn_gate_up_exps` experts, the `expert_gating_func` 3 (softmax over the chosen
//!   experts' logits), the multi-token-prediction layers (their tensors are ignored, as
//!   llama.cpp's converter drops them), DeepSeek-V3.2 sparse attention (`deepseek32`), and
//!   the OCR variant: refused with typed errors or not loaded.
//! - Speed: the MoE routes on the host and runs each chosen expert on its tokens; the KV cache
//!   is f32 only.

use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Module, Tensor};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};

use crate::config::ModelConfig;
use crate::gguf::GgufFile;
use crate::llama::LoadProgress;
use crate::plugin::DecoderModel;
use crate::quant::{Embedding, QLinear};
use crate::weights::{embedding_and_output, linear, vector};
use crate::{ModelError, Result};

/// The `general.architecture` this module runs (llama.cpp's name for DeepSeek-V2/V3 and
/// Kimi K2).
pub const ARCHITECTURE: &str = "deepseek2";

/// How the router turns logits into expert scores (`deepseek2.expert_gating_func`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertGating {
    /// Softmax over all experts (DeepSeek-V2; value 1, or 0/absent in older files).
    Softmax,
    /// Independent sigmoids (DeepSeek-V3, Kimi K2; value 2).
    Sigmoid,
}

/// YaRN RoPE scaling (`deepseek2.rope.scaling.*` with `type = yarn`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnScaling {
    /// Context extension factor (`rope.scaling.factor`).
    pub factor: f64,
    /// Context the model was trained on before extension
    /// (`rope.scaling.original_context_length`; the context length when absent).
    pub original_context: usize,
    /// Rotations at which frequencies stop being extrapolated (`yarn_beta_fast`, default 32).
    pub beta_fast: f64,
    /// Rotations below which frequencies are fully interpolated (`yarn_beta_slow`, default 1).
    pub beta_slow: f64,
    /// `rope.scaling.yarn_log_multiplier`: `0.1 · mscale_all_dim` as the converter writes it
    /// (0 when absent).
    pub log_multiplier: f64,
}

impl YarnScaling {
    /// The factor YaRN applies to the attention scale, `mscale²`, with
    /// `mscale = 1 + log_multiplier · ln(factor)` (1 when `factor <= 1`).
    pub fn attention_factor(&self) -> f64 {
        let mscale = if self.factor <= 1.0 {
            1.0
        } else {
            1.0 + self.log_multiplier * self.factor.ln()
        };
        mscale * mscale
    }

    /// Per rotated pair `i` of a `dims`-wide rope part with base `base`: how much of the
    /// extrapolated (unscaled) angle is kept, between 0 (fully interpolated, the angle divided
    /// by `factor`) and 1. GGML's `rope_yarn_ramp` over `ggml_rope_yarn_corr_dims`.
    fn extrapolation_mix(&self, dims: usize, base: f64) -> Vec<f32> {
        let corr_dim = |rotations: f64| {
            dims as f64
                * (self.original_context as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let low = corr_dim(self.beta_fast).floor().max(0.0);
        let high = corr_dim(self.beta_slow).ceil().min(dims as f64 - 1.0);
        (0..dims / 2)
            .map(|i| {
                let y = (i as f64 - low) / (high - low).max(0.001);
                (1.0 - y.clamp(0.0, 1.0)) as f32
            })
            .collect()
    }
}

/// The hyper-parameters of a DeepSeek-V3 decoder: the common [`ModelConfig`] plus MLA and MoE.
///
/// In [`base`](Self::base), `head_dim` is a head's query/key size (`qk_nope + qk_rope`),
/// `n_kv_heads` is 1 (one latent shared by all heads), and `ffn_size` is the dense blocks'
/// feed-forward width (0 when every block is MoE and the file has no `feed_forward_length`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeepSeekConfig {
    /// The common hyper-parameters.
    pub base: ModelConfig,
    /// Rank of the query compression (`attention.q_lora_rank`); `None` for a plain `attn_q`.
    pub q_lora_rank: Option<usize>,
    /// Rank of the key/value compression (`attention.kv_lora_rank`): the latent's width.
    pub kv_lora_rank: usize,
    /// Per-head query/key dimensions without RoPE.
    pub qk_nope_head_dim: usize,
    /// Per-head query/key dimensions with RoPE (`rope.dimension_count`), shared by all heads'
    /// keys.
    pub qk_rope_head_dim: usize,
    /// Per-head value dimensions.
    pub v_head_dim: usize,
    /// Leading blocks with a dense feed-forward (`leading_dense_block_count`); the rest are MoE.
    pub leading_dense_blocks: usize,
    /// Routed experts per MoE block (`expert_count`).
    pub expert_count: usize,
    /// Experts each token uses (`expert_used_count`).
    pub experts_used: usize,
    /// Shared experts, run on every token (`expert_shared_count`).
    pub shared_experts: usize,
    /// Feed-forward width of one expert (`expert_feed_forward_length`).
    pub expert_ffn_size: usize,
    /// How router logits become scores.
    pub gating: ExpertGating,
    /// Whether the chosen experts' weights are normalized to sum 1 (`expert_weights_norm`).
    pub expert_weights_norm: bool,
    /// Factor on the chosen experts' weights (`expert_weights_scale`; 1 when absent or 0).
    pub expert_weights_scale: f64,
    /// Expert groups for group-limited routing (`expert_group_count`; 1 = no grouping).
    pub expert_groups: usize,
    /// Groups a token may route to (`expert_group_used_count`).
    pub expert_groups_used: usize,
    /// YaRN scaling, when the file has it.
    pub yarn: Option<YarnScaling>,
}

impl DeepSeekConfig {
    /// Reads a `deepseek2` config. Another architecture, a missing key, inconsistent sizes and
    /// unsupported features are typed errors naming the key.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.architecture()?;
        if arch != ARCHITECTURE {
            return Err(ModelError::UnsupportedArchitecture(arch));
        }
        crate::config::check_metadata_bounds(gguf)?;
        let key = |k: &str| format!("{ARCHITECTURE}.{k}");
        let req = |k: &str| gguf.usize(&key(k));
        let opt = |k: &str| gguf.usize_opt(&key(k));
        let invalid = |k: &str, reason: String| ModelError::InvalidMetadata {
            key: key(k),
            reason,
        };
        let positive = |k: &str| -> Result<usize> {
            match req(k)? {
                0 => Err(invalid(k, "must be positive".into())),
                v => Ok(v),
            }
        };
        let hidden_size = positive("embedding_length")?;
        let n_layers = positive("block_count")?;
        let context_length = positive("context_length")?;
        let n_heads = positive("attention.head_count")?;
        let eps_key = key("attention.layer_norm_rms_epsilon");
        let rms_eps = gguf
            .f64_opt(&eps_key)
            .ok_or(ModelError::MissingMetadata { key: eps_key })?;
        let kv_lora_rank = positive("attention.kv_lora_rank")?;
        let q_lora_rank = opt("attention.q_lora_rank").filter(|&r| r > 0);
        if q_lora_rank.is_none() && gguf.has_tensor("blk.0.attn_q_a.weight") {
            // Query compression in the tensors but not in the metadata.
            return Err(ModelError::MissingMetadata {
                key: key("attention.q_lora_rank"),
            });
        }
        let rope = positive("rope.dimension_count")?;
        if rope % 2 != 0 {
            return Err(invalid(
                "rope.dimension_count",
                format!("{rope} is not even"),
            ));
        }
        // Files converted for llama.cpp's MLA cache give the per-head sizes under `_mla` and
        // the latent's under the plain keys; older files give the per-head sizes plainly.
        let (k_head, v_head) = match (
            opt("attention.key_length_mla"),
            opt("attention.value_length_mla"),
        ) {
            (Some(k), Some(v)) if k > 0 && v > 0 => {
                for (name, want) in [
                    ("attention.key_length", kv_lora_rank + rope),
                    ("attention.value_length", kv_lora_rank),
                ] {
                    if let Some(got) = opt(name) {
                        if got != want {
                            return Err(invalid(
                                name,
                                format!(
                                    "{got} differs from the latent cache width {want} \
                                     (kv_lora_rank {kv_lora_rank}, rope {rope}) of an MLA file"
                                ),
                            ));
                        }
                    }
                }
                (k, v)
            }
            (Some(_), None) => {
                return Err(ModelError::MissingMetadata {
                    key: key("attention.value_length_mla"),
                })
            }
            (None, Some(_)) => {
                return Err(ModelError::MissingMetadata {
                    key: key("attention.key_length_mla"),
                })
            }
            _ => (
                positive("attention.key_length")?,
                positive("attention.value_length")?,
            ),
        };
        if k_head <= rope {
            return Err(invalid(
                "rope.dimension_count",
                format!("{rope} leaves no non-rotated dimension in key heads of {k_head}"),
            ));
        }
        let vocab_size = match opt("vocab_size") {
            Some(v) => v,
            None => match gguf.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => {
                    return Err(ModelError::MissingMetadata {
                        key: key("vocab_size"),
                    })
                }
            },
        };
        let leading_dense_blocks = opt("leading_dense_block_count").unwrap_or(0);
        if leading_dense_blocks > n_layers {
            return Err(invalid(
                "leading_dense_block_count",
                format!("{leading_dense_blocks} exceeds the {n_layers} blocks"),
            ));
        }
        let ffn_size = if leading_dense_blocks > 0 {
            positive("feed_forward_length")?
        } else {
            opt("feed_forward_length").unwrap_or(0)
        };
        let has_moe = leading_dense_blocks < n_layers;
        let (mut expert_count, mut experts_used, mut shared_experts, mut expert_ffn_size) =
            (0, 0, 0, 0);
        let (mut expert_groups, mut expert_groups_used) = (1, 1);
        let mut gating = ExpertGating::Softmax;
        if has_moe {
            expert_count = positive("expert_count")?;
            experts_used = positive("expert_used_count")?;
            if experts_used > expert_count {
                return Err(invalid(
                    "expert_used_count",
                    format!("{experts_used} exceeds expert_count {expert_count}"),
                ));
            }
            shared_experts = req("expert_shared_count")?;
            expert_ffn_size = positive("expert_feed_forward_length")?;
            gating = match opt("expert_gating_func") {
                None | Some(0) | Some(1) => ExpertGating::Softmax,
                Some(2) => ExpertGating::Sigmoid,
                Some(3) => {
                    return Err(ModelError::UnsupportedFeature {
                        name: key("expert_gating_func"),
                        reason: "gating 3 (softmax over the chosen experts' logits) is not \
                                 implemented"
                            .into(),
                    })
                }
                Some(other) => {
                    return Err(invalid(
                        "expert_gating_func",
                        format!("unknown gating function {other}"),
                    ))
                }
            };
            let groups = opt("expert_group_count").unwrap_or(0);
            if groups > 1 {
                if expert_count % groups != 0 {
                    return Err(invalid(
                        "expert_group_count",
                        format!("{groups} groups do not divide {expert_count} experts"),
                    ));
                }
                let used = positive("expert_group_used_count")?;
                let reachable = used * (expert_count / groups);
                if used > groups || reachable < experts_used {
                    return Err(invalid(
                        "expert_group_used_count",
                        format!("{used} of {groups} groups cannot supply {experts_used} experts"),
                    ));
                }
                (expert_groups, expert_groups_used) = (groups, used);
            }
        }
        let expert_weights_scale = match gguf.f64_opt(&key("expert_weights_scale")) {
            Some(s) if s != 0.0 => s,
            _ => 1.0,
        };
        let expert_weights_norm = match gguf.get(&key("expert_weights_norm")) {
            Some(Value::Bool(b)) => *b,
            Some(v) => crate::gguf::value_as_u64(v).is_some_and(|x| x != 0),
            None => false,
        };
        if let Some(t) = gguf.f64_opt(&key("attention.temperature_scale")) {
            if t != 0.0 {
                return Err(ModelError::UnsupportedFeature {
                    name: key("attention.temperature_scale"),
                    reason: "attention temperature scaling (Mistral Large 3) is not implemented"
                        .into(),
                });
            }
        }
        let yarn = read_rope_scaling(gguf, context_length)?;
        Ok(Self {
            base: ModelConfig {
                architecture: arch,
                vocab_size,
                context_length,
                hidden_size,
                n_layers,
                n_heads,
                n_kv_heads: 1,
                head_dim: k_head,
                ffn_size,
                rms_eps,
                rope_theta: gguf.f64_opt(&key("rope.freq_base")).unwrap_or(10_000.0),
            },
            q_lora_rank,
            kv_lora_rank,
            qk_nope_head_dim: k_head - rope,
            qk_rope_head_dim: rope,
            v_head_dim: v_head,
            leading_dense_blocks,
            expert_count,
            experts_used,
            shared_experts,
            expert_ffn_size,
            gating,
            expert_weights_norm,
            expert_weights_scale,
            expert_groups,
            expert_groups_used,
            yarn,
        })
    }

    /// Whether block `layer` has a mixture of experts (otherwise a dense feed-forward).
    pub fn is_moe(&self, layer: usize) -> bool {
        layer >= self.leading_dense_blocks
    }

    /// The factor on query·key products: `1/sqrt(qk_nope + qk_rope)`, times YaRN's `mscale²`.
    pub fn softmax_scale(&self) -> f64 {
        let base = 1.0 / (self.base.head_dim as f64).sqrt();
        match &self.yarn {
            Some(y) => base * y.attention_factor(),
            None => base,
        }
    }

    /// Width of a token's cached latent row: the rope key, then the normalized latent.
    pub fn latent_width(&self) -> usize {
        self.qk_rope_head_dim + self.kv_lora_rank
    }

    /// The cache's `head_dim`: half the latent row, rounded up, and at least the rope key (so
    /// the key half holds it whole).
    pub fn cache_head_dim(&self) -> usize {
        self.latent_width().div_ceil(2).max(self.qk_rope_head_dim)
    }

    /// Chooses the experts of one token from its router `logits` (`expert_count` values) and
    /// the optional selection bias: `(expert, weight)` pairs, best first. See the module docs
    /// for the rules (llama.cpp's `build_moe_ffn`).
    pub fn route(&self, logits: &[f32], bias: Option<&[f32]>) -> Vec<(usize, f32)> {
        let probs: Vec<f32> = match self.gating {
            ExpertGating::Sigmoid => logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
            ExpertGating::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                exps.iter().map(|e| e / sum).collect()
            }
        };
        let mut choice: Vec<f32> = match bias {
            Some(b) => probs.iter().zip(b).map(|(p, b)| p + b).collect(),
            None => probs.clone(),
        };
        if self.expert_groups > 1 {
            let size = choice.len() / self.expert_groups;
            let group_scores: Vec<f32> = choice
                .chunks(size)
                .map(|g| best(g, 2.min(size)).iter().map(|&i| g[i]).sum())
                .collect();
            let kept = best(&group_scores, self.expert_groups_used);
            for (g, chunk) in choice.chunks_mut(size).enumerate() {
                if !kept.contains(&g) {
                    chunk.iter_mut().for_each(|c| *c = f32::NEG_INFINITY);
                }
            }
        }
        let chosen = best(&choice, self.experts_used);
        let mut weights: Vec<f32> = chosen.iter().map(|&e| probs[e]).collect();
        if self.expert_weights_norm {
            // llama.cpp clamps the sum to the smallest normal f16.
            let sum = weights.iter().sum::<f32>().max(6.103_515_6e-5);
            weights.iter_mut().for_each(|w| *w /= sum);
        }
        let scale = self.expert_weights_scale as f32;
        chosen
            .into_iter()
            .zip(weights)
            .map(|(e, w)| (e, w * scale))
            .collect()
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn best(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// The file's RoPE scaling: `None`, YaRN, or a typed error for anything else.
fn read_rope_scaling(gguf: &GgufFile, context_length: usize) -> Result<Option<YarnScaling>> {
    let key = |k: &str| format!("{ARCHITECTURE}.rope.scaling.{k}");
    let factor = gguf.f64_opt(&key("factor"));
    let kind = match gguf.get(&key("type")) {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ModelError::MissingMetadata { key: key("type") }),
        None => None,
    };
    let unscaled = factor.is_none_or(|f| f == 1.0);
    match kind {
        Some("yarn") => {}
        // llama.cpp reads a factor without a type as linear scaling.
        None | Some("none") | Some("linear") if unscaled => return Ok(None),
        other => {
            return Err(ModelError::UnsupportedFeature {
                name: key("type"),
                reason: format!(
                    "RoPE scaling '{}' (factor {factor:?}) is not implemented (only YaRN is)",
                    other.unwrap_or("linear")
                ),
            })
        }
    }
    let factor = factor.ok_or(ModelError::MissingMetadata { key: key("factor") })?;
    if factor <= 0.0 {
        return Err(ModelError::InvalidMetadata {
            key: key("factor"),
            reason: format!("{factor} is not positive"),
        });
    }
    for k in ["yarn_ext_factor", "yarn_attn_factor", "attn_factor"] {
        if let Some(v) = gguf.f64_opt(&key(k)) {
            if v != 1.0 {
                return Err(ModelError::UnsupportedFeature {
                    name: key(k),
                    reason: format!("YaRN with {k} {v} (other than 1) is not implemented"),
                });
            }
        }
    }
    Ok(Some(YarnScaling {
        factor,
        original_context: gguf
            .usize_opt(&key("original_context_length"))
            .unwrap_or(context_length),
        beta_fast: gguf.f64_opt(&key("yarn_beta_fast")).unwrap_or(32.0),
        beta_slow: gguf.f64_opt(&key("yarn_beta_slow")).unwrap_or(1.0),
        log_multiplier: gguf.f64_opt(&key("yarn_log_multiplier")).unwrap_or(0.0),
    }))
}

/// How a block computes its queries.
#[derive(Debug)]
enum QueryProj {
    /// `attn_q`.
    Direct(QLinear),
    /// `attn_q_b · rms_norm(attn_q_a · x, attn_q_a_norm)`.
    LowRank {
        a: QLinear,
        norm: Tensor,
        b: QLinear,
    },
}

/// A block's multi-head latent attention.
#[derive(Debug)]
struct Mla {
    q: QueryProj,
    /// `[rank + rope, hidden]`: the latent, then the shared rope key.
    kv_a: QLinear,
    kv_a_norm: Tensor,
    /// Per head, the key decompression `[heads, nope, rank]` (f32): `q_nope · k_b` is the
    /// query against the latent.
    k_b: Tensor,
    /// Per head, the value decompression transposed `[heads, rank, v]` (f32).
    v_b: Tensor,
    wo: QLinear,
}

/// A SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
struct Mlp {
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }
}

/// A mixture-of-experts feed-forward.
#[derive(Debug)]
struct Moe {
    /// `[experts, hidden]`, f32.
    router: Tensor,
    /// `exp_probs_b.bias`: added to the scores to choose experts, not to weigh them.
    selection_bias: Option<Vec<f32>>,
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
}

#[derive(Debug)]
enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    attn: Mla,
    ffn_norm: Tensor,
    ffn: Ffn,
}

/// A DeepSeek-V3 decoder (DeepSeek-V2/V2.5/V3, Kimi K2): MLA attention over a compressed
/// latent cache, and mixture-of-experts feed-forward blocks. See the [module docs](self).
#[derive(Debug)]
pub struct DeepSeek {
    config: DeepSeekConfig,
    embedding: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    output: QLinear,
    /// Per rotated pair, the share of the extrapolated angle (all 1 without YaRN).
    rope_mix: Vec<f32>,
    device: Device,
}

/// A tensor of shape `dims`, dequantized to f32; a wrong shape is explained by `why`.
fn dense(
    gguf: &mut GgufFile,
    name: &str,
    dims: &[usize],
    why: &str,
    device: &Device,
) -> Result<Tensor> {
    let t = gguf.tensor(name, device)?;
    check_shape(name, t.shape().dims(), dims, why)?;
    Ok(t.dequantize(device)?)
}

fn check_shape(name: &str, got: &[usize], want: &[usize], why: &str) -> Result<()> {
    if got != want {
        return Err(ModelError::BadTensor {
            name: name.to_string(),
            reason: format!("expected shape {want:?} ({why}), found {got:?}"),
        });
    }
    Ok(())
}

/// The `experts` slices of a 3-D expert tensor `[experts, out, inp]`, each its own
/// [`QLinear`] (the bytes of one slice, in the file's format).
fn expert_slices(
    gguf: &mut GgufFile,
    name: &str,
    [experts, out, inp]: [usize; 3],
    device: &Device,
) -> Result<Vec<QLinear>> {
    let t = gguf.tensor(name, &Device::Cpu)?;
    check_shape(
        name,
        t.shape().dims(),
        &[experts, out, inp],
        &format!("expert_count {experts}, {out} x {inp} per expert"),
    )?;
    let bad = |e: candle_core::Error| ModelError::BadTensor {
        name: name.to_string(),
        reason: e.to_string(),
    };
    let dtype = t.dtype();
    let bytes = out * inp / dtype.block_size() * dtype.type_size();
    let data = t.data().map_err(bad)?;
    (0..experts)
        .map(|e| {
            let raw = &data[e * bytes..(e + 1) * bytes];
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                dtype,
                raw,
                vec![out, inp],
                device,
            )
            .map_err(bad)?;
            QLinear::from_qtensor(Arc::new(q)).map_err(bad)
        })
        .collect()
}

/// `[n, pos + n]` additive mask: 0 where query `i` (at position `pos + i`) may attend.
fn causal_mask(n: usize, pos: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = pos + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j <= pos + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (n, total), device)
}

/// One sequence's rows in a step: `len` tokens from row `start`, at cache positions
/// `pos..pos + len`.
struct Segment {
    start: usize,
    len: usize,
    pos: usize,
}

impl DeepSeek {
    /// Loads the weights of a `deepseek2` GGUF onto `device`, calling `progress` after each
    /// tensor. A missing or misshapen tensor is [`ModelError::BadTensor`] naming it; a missing
    /// or inconsistent hyper-parameter is [`ModelError::MissingMetadata`] or
    /// [`ModelError::InvalidMetadata`] naming the key; a feature this decoder does not
    /// implement is [`ModelError::UnsupportedFeature`].
    pub fn load(
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let config = DeepSeekConfig::from_gguf(gguf)?;
        let cfg = &config;
        let c = &cfg.base;
        let blk = |i: usize, t: &str| format!("blk.{i}.{t}");
        // Per block: which tensors the file has decides the layouts.
        let split_kv_b = |gguf: &GgufFile, i: usize| gguf.has_tensor(&blk(i, "attn_k_b.weight"));
        let mut total = 3;
        for i in 0..c.n_layers {
            if gguf.has_tensor(&blk(i, "ffn_gate_up_exps.weight")) {
                return Err(ModelError::UnsupportedFeature {
                    name: blk(i, "ffn_gate_up_exps.weight"),
                    reason: "fused gate/up expert tensors are not implemented".into(),
                });
            }
            let q = if cfg.q_lora_rank.is_some() { 3 } else { 1 };
            let kv_b = if split_kv_b(gguf, i) { 2 } else { 1 };
            let ffn = if !cfg.is_moe(i) {
                3
            } else {
                let bias = gguf.has_tensor(&blk(i, "exp_probs_b.bias")) as usize;
                let shared = if cfg.shared_experts > 0 { 3 } else { 0 };
                1 + bias + 3 + shared
            };
            total += 5 + q + kv_b + ffn;
        }
        let mut loaded = 0;
        let mut tick = |n: usize| {
            loaded += n;
            progress(LoadProgress { loaded, total });
        };

        let (embedding, output) = embedding_and_output(gguf, c, device)?;
        tick(2);
        let norm = vector(gguf, "output_norm.weight", c.hidden_size, device)?;
        tick(1);

        let (h, heads) = (c.hidden_size, c.n_heads);
        let (nope, rope, v, rank) = (
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        );
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |t: &str| blk(i, t);
            let attn_norm = vector(gguf, &n("attn_norm.weight"), h, device)?;
            let q = match cfg.q_lora_rank {
                Some(qr) => QueryProj::LowRank {
                    a: linear(gguf, &n("attn_q_a.weight"), qr, h, device)?,
                    norm: vector(gguf, &n("attn_q_a_norm.weight"), qr, device)?,
                    b: linear(gguf, &n("attn_q_b.weight"), heads * c.head_dim, qr, device)?,
                },
                None => QueryProj::Direct(linear(
                    gguf,
                    &n("attn_q.weight"),
                    heads * c.head_dim,
                    h,
                    device,
                )?),
            };
            let kv_a = linear(gguf, &n("attn_kv_a_mqa.weight"), rank + rope, h, device)?;
            let kv_a_norm = vector(gguf, &n("attn_kv_a_norm.weight"), rank, device)?;
            let (k_b, v_b) = if split_kv_b(gguf, i) {
                let k_b = dense(
                    gguf,
                    &n("attn_k_b.weight"),
                    &[heads, rank, nope],
                    "heads, kv_lora_rank, qk_nope",
                    device,
                )?;
                let v_b = dense(
                    gguf,
                    &n("attn_v_b.weight"),
                    &[heads, v, rank],
                    "heads, v_head, kv_lora_rank",
                    device,
                )?;
                (
                    k_b.transpose(1, 2)?.contiguous()?,
                    v_b.transpose(1, 2)?.contiguous()?,
                )
            } else {
                let name = n("attn_kv_b.weight");
                if !gguf.has_tensor(&name) {
                    return Err(ModelError::BadTensor {
                        name,
                        reason: "missing from the GGUF file (and so are attn_k_b/attn_v_b)".into(),
                    });
                }
                let kv_b = dense(
                    gguf,
                    &name,
                    &[heads * (nope + v), rank],
                    "heads x (qk_nope + v_head), kv_lora_rank",
                    device,
                )?
                .reshape((heads, nope + v, rank))?;
                (
                    kv_b.narrow(1, 0, nope)?.contiguous()?,
                    kv_b.narrow(1, nope, v)?.transpose(1, 2)?.contiguous()?,
                )
            };
            let wo = linear(gguf, &n("attn_output.weight"), h, heads * v, device)?;
            let ffn_norm = vector(gguf, &n("ffn_norm.weight"), h, device)?;
            let mlp = |gguf: &mut GgufFile, suffix: &str, width: usize| -> Result<Mlp> {
                Ok(Mlp {
                    gate: linear(
                        gguf,
                        &n(&format!("ffn_gate{suffix}.weight")),
                        width,
                        h,
                        device,
                    )?,
                    up: linear(
                        gguf,
                        &n(&format!("ffn_up{suffix}.weight")),
                        width,
                        h,
                        device,
                    )?,
                    down: linear(
                        gguf,
                        &n(&format!("ffn_down{suffix}.weight")),
                        h,
                        width,
                        device,
                    )?,
                })
            };
            let ffn = if cfg.is_moe(i) {
                let (e, ff) = (cfg.expert_count, cfg.expert_ffn_size);
                let why = format!("expert_count {e}, embedding_length {h}");
                let router = dense(gguf, &n("ffn_gate_inp.weight"), &[e, h], &why, device)?;
                let bias_name = n("exp_probs_b.bias");
                let selection_bias = if gguf.has_tensor(&bias_name) {
                    let b = dense(gguf, &bias_name, &[e], &format!("expert_count {e}"), device)?;
                    Some(b.to_vec1::<f32>()?)
                } else {
                    None
                };
                let gate = expert_slices(gguf, &n("ffn_gate_exps.weight"), [e, ff, h], device)?;
                let up = expert_slices(gguf, &n("ffn_up_exps.weight"), [e, ff, h], device)?;
                let down = expert_slices(gguf, &n("ffn_down_exps.weight"), [e, h, ff], device)?;
                let experts = gate
                    .into_iter()
                    .zip(up)
                    .zip(down)
                    .map(|((gate, up), down)| Mlp { gate, up, down })
                    .collect();
                let shared = if cfg.shared_experts > 0 {
                    Some(mlp(gguf, "_shexp", ff * cfg.shared_experts)?)
                } else {
                    None
                };
                Ffn::Moe(Moe {
                    router,
                    selection_bias,
                    experts,
                    shared,
                })
            } else {
                Ffn::Dense(mlp(gguf, "", c.ffn_size)?)
            };
            blocks.push(Block {
                attn_norm,
                attn: Mla {
                    q,
                    kv_a,
                    kv_a_norm,
                    k_b,
                    v_b,
                    wo,
                },
                ffn_norm,
                ffn,
            });
            let q_tensors = if cfg.q_lora_rank.is_some() { 3 } else { 1 };
            let kv_b_tensors = if split_kv_b(gguf, i) { 2 } else { 1 };
            let ffn_tensors = match &blocks[i].ffn {
                Ffn::Dense(_) => 3,
                Ffn::Moe(m) => {
                    4 + m.selection_bias.is_some() as usize + 3 * m.shared.is_some() as usize
                }
            };
            tick(5 + q_tensors + kv_b_tensors + ffn_tensors);
        }
        let rope_mix = match &cfg.yarn {
            Some(y) => y.extrapolation_mix(rope, c.rope_theta),
            None => vec![1.0; rope / 2],
        };
        Ok(Self {
            config,
            embedding,
            blocks,
            norm,
            output,
            rope_mix,
            device: device.clone(),
        })
    }

    /// The common hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config.base
    }

    /// All of the DeepSeek hyper-parameters (MLA, MoE, YaRN).
    pub fn deepseek_config(&self) -> &DeepSeekConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What one token occupies in a KV cache of this model: its latent row split over the key
    /// and value tensors of one "head" (see the module docs).
    pub fn cache_shape(&self) -> CacheShape {
        CacheShape {
            layers: self.config.base.n_layers,
            kv_heads: 1,
            head_dim: self.config.cache_head_dim(),
            dtype: DType::F32,
        }
    }

    /// A new, empty cache for one sequence. Its capacity may not exceed the context length.
    pub fn new_cache(&self, config: &KvCacheConfig) -> Result<SequenceCache> {
        crate::step::new_cache(
            self.config.base.context_length,
            self.cache_shape(),
            config,
            &self.device,
        )
    }

    /// Runs `tokens` of one sequence after what `cache` holds, appending their latents.
    /// Returns logits `[vocab]` of the last position, or `[tokens.len(), vocab]` when
    /// `all_logits` is set.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        crate::step::single(
            tokens,
            cache,
            |cache| self.make_room(cache, tokens.len()),
            |mut cache, pos| {
                let n = tokens.len();
                let segment = Segment {
                    start: 0,
                    len: n,
                    pos,
                };
                let x = self.run(tokens, &[segment], std::slice::from_mut(&mut cache))?;
                if all_logits {
                    self.logits(&x)
                } else {
                    Ok(self.logits(&x.narrow(0, n - 1, 1)?)?.squeeze(0)?)
                }
            },
        )
    }

    /// One decode step for several sequences at once: `tokens[i]` is the next token of the
    /// sequence cached in `caches[i]`. The projections and experts run once for the whole
    /// batch; the attention runs per sequence over its own cache. Returns logits
    /// `[batch, vocab]`.
    pub fn forward_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut SequenceCache],
    ) -> Result<Tensor> {
        crate::step::check_batch(tokens, caches)?;
        if tokens.len() == 1 {
            return Ok(self.forward(tokens, caches[0], false)?.unsqueeze(0)?);
        }
        crate::step::batch(
            caches,
            |cache| self.make_room(cache, 1),
            |caches, starts| {
                let segments: Vec<Segment> = starts
                    .iter()
                    .enumerate()
                    .map(|(i, &pos)| Segment {
                        start: i,
                        len: 1,
                        pos,
                    })
                    .collect();
                let x = self.run(tokens, &segments, caches)?;
                self.logits(&x)
            },
        )
    }

    /// Evicts per the cache's strategy, re-rotating the kept rope keys by their shift.
    fn make_room(&self, cache: &mut SequenceCache, n: usize) -> Result<()> {
        let rerotate = |k: &Tensor, _from: usize, delta: isize| self.rerotate(k, delta);
        cache.make_room(n, &rerotate)?;
        Ok(())
    }

    /// Rotates the rope keys at the start of cached key halves (`[1, n, head_dim]`) by `delta`
    /// positions (RoPE angles are linear in the position, YaRN's too).
    fn rerotate(&self, keys: &Tensor, delta: isize) -> candle_core::Result<Tensor> {
        let n = keys.dim(1)?;
        let rope = self.config.qk_rope_head_dim;
        let (cos, sin) = self.rope_tables(&vec![delta as f32; n])?;
        let k_pe = keys.narrow(2, 0, rope)?.contiguous()?.unsqueeze(0)?;
        let k_pe = candle_nn::rotary_emb::rope_i(&k_pe, &cos, &sin)?.squeeze(0)?;
        let width = keys.dim(2)?;
        if width == rope {
            return Ok(k_pe);
        }
        Tensor::cat(&[&k_pe, &keys.narrow(2, rope, width - rope)?], 2)
    }

    /// `[positions.len(), rope / 2]` cos and sin tables: GGML's angles (f32, the frequency
    /// stepped by repeated multiplication), mixed between interpolation and extrapolation by
    /// YaRN's ramp when the file has YaRN.
    fn rope_tables(&self, positions: &[f32]) -> candle_core::Result<(Tensor, Tensor)> {
        let d = self.config.qk_rope_head_dim;
        let half = d / 2;
        let step = (self.config.base.rope_theta as f32).powf(-2.0 / d as f32);
        let inv_factor = self.config.yarn.map_or(1.0, |y| 1.0 / y.factor as f32);
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let mut extrapolated = p;
            for &mix in &self.rope_mix {
                let interpolated = extrapolated * inv_factor;
                let angle = interpolated * (1.0 - mix) + extrapolated * mix;
                cos.push(angle.cos());
                sin.push(angle.sin());
                extrapolated *= step;
            }
        }
        Ok((
            Tensor::from_vec(cos, (positions.len(), half), &self.device)?,
            Tensor::from_vec(sin, (positions.len(), half), &self.device)?,
        ))
    }

    /// Splits latent rows `[n, rope + rank]` into the cache's key and value halves
    /// (`[1, n, head_dim]` each, the value half zero-padded).
    fn pack(&self, latent: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (n, width) = latent.dims2()?;
        let hd = self.config.cache_head_dim();
        let padded = if 2 * hd > width {
            let pad = Tensor::zeros((n, 2 * hd - width), latent.dtype(), latent.device())?;
            Tensor::cat(&[latent, &pad], 1)?
        } else {
            latent.clone()
        };
        Ok((
            padded.narrow(1, 0, hd)?.unsqueeze(0)?,
            padded.narrow(1, hd, hd)?.unsqueeze(0)?,
        ))
    }

    /// Joins cached key and value halves (`[1, L, head_dim]`) back into latent rows
    /// `[L, rope + rank]`.
    fn unpack(&self, keys: &Tensor, values: &Tensor) -> candle_core::Result<Tensor> {
        let rows = Tensor::cat(&[keys.squeeze(0)?, values.squeeze(0)?], 1)?;
        rows.narrow(1, 0, self.config.latent_width())?.contiguous()
    }

    /// Runs the blocks over `tokens` (the rows of every segment), appending each segment's
    /// latents to its cache (`caches[i]` for `segments[i]`). Returns the last hidden states
    /// `[rows, hidden]`, before the output norm.
    fn run(
        &self,
        tokens: &[u32],
        segments: &[Segment],
        caches: &mut [&mut SequenceCache],
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let eps = cfg.base.rms_eps as f32;
        let positions: Vec<f32> = segments
            .iter()
            .flat_map(|s| (s.pos..s.pos + s.len).map(|p| p as f32))
            .collect();
        let (cos, sin) = self.rope_tables(&positions)?;
        let masks = segments
            .iter()
            .map(|s| match s.len {
                1 => Ok(None),
                n => causal_mask(n, s.pos, &self.device).map(Some),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut x = self.embedding.lookup(tokens, &self.device)?; // [rows, hidden]
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let y = self.attention(layer, &b.attn, &h, (&cos, &sin), segments, &masks, caches)?;
            x = (x + b.attn.wo.forward(&y)?)?;
            let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
            let f = match &b.ffn {
                Ffn::Dense(mlp) => mlp.forward(&h)?,
                Ffn::Moe(moe) => self.moe(moe, &h)?,
            };
            x = (x + f)?;
        }
        Ok(x)
    }

    /// The attention of one block over `h` (`[rows, hidden]`, normed), each segment against
    /// its own cache. Returns the heads' outputs `[rows, heads * v]` (before `attn_output`).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        a: &Mla,
        h: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        segments: &[Segment],
        masks: &[Option<Tensor>],
        caches: &mut [&mut SequenceCache],
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let c = &cfg.base;
        let eps = c.rms_eps as f32;
        let rows = h.dim(0)?;
        let heads = c.n_heads;
        let (nope, rope, rank) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank);
        let q = match &a.q {
            QueryProj::Direct(w) => w.forward(h)?,
            QueryProj::LowRank { a, norm, b } => {
                b.forward(&candle_nn::ops::rms_norm(&a.forward(h)?, norm, eps)?)?
            }
        };
        // [rows, heads * (nope + rope)] -> [heads, rows, nope + rope]
        let q = q.reshape((rows, heads, c.head_dim))?.transpose(0, 1)?;
        let q_nope = q.narrow(2, 0, nope)?.contiguous()?;
        let q_pe = q.narrow(2, nope, rope)?.contiguous()?.unsqueeze(0)?;
        let q_pe = candle_nn::rotary_emb::rope_i(&q_pe, cos, sin)?.squeeze(0)?;
        // The query against the latent: [heads, rows, rope + rank].
        let q_latent = Tensor::cat(&[&q_pe, &q_nope.matmul(&a.k_b)?], 2)?;
        let kv = a.kv_a.forward(h)?; // [rows, rank + rope]
        let latent =
            candle_nn::ops::rms_norm(&kv.narrow(1, 0, rank)?.contiguous()?, &a.kv_a_norm, eps)?;
        let k_pe = kv
            .narrow(1, rank, rope)?
            .contiguous()?
            .reshape((1, 1, rows, rope))?;
        let k_pe = candle_nn::rotary_emb::rope_i(&k_pe, cos, sin)?.reshape((rows, rope))?;
        let latent = Tensor::cat(&[&k_pe, &latent], 1)?; // [rows, rope + rank]
        let scale = cfg.softmax_scale();
        let mut outs = Vec::with_capacity(segments.len());
        for ((s, mask), cache) in segments.iter().zip(masks).zip(caches.iter_mut()) {
            let (k, v) = self.pack(&latent.narrow(0, s.start, s.len)?)?;
            let (keys, values) = cache.append(layer, &k, &v)?;
            let all = self.unpack(&keys, &values)?; // [L, rope + rank]
            let total = all.dim(0)?;
            // One query row per (head, token) against the shared latent keys.
            let q = q_latent
                .narrow(1, s.start, s.len)?
                .contiguous()?
                .reshape((heads * s.len, rope + rank))?;
            let att = (q.matmul(&all.t()?)? * scale)?;
            let att = match mask {
                Some(m) => att
                    .reshape((heads, s.len, total))?
                    .broadcast_add(m)?
                    .reshape((heads * s.len, total))?,
                None => att,
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let c_all = all.narrow(1, rope, rank)?.contiguous()?;
            outs.push(att.matmul(&c_all)?.reshape((heads, s.len, rank))?);
        }
        let o = Tensor::cat(&outs, 1)?; // [heads, rows, rank]
        let y = o.matmul(&a.v_b)?; // [heads, rows, v]
        Ok(y.transpose(0, 1)?.reshape((rows, heads * cfg.v_head_dim))?)
    }

    /// The mixture of experts over `h` (`[rows, hidden]`, normed): each row routed on the
    /// host, each chosen expert run once on all the rows that chose it, plus the shared
    /// experts on every row.
    fn moe(&self, m: &Moe, h: &Tensor) -> Result<Tensor> {
        let rows = h.dim(0)?;
        let logits: Vec<Vec<f32>> = h.matmul(&m.router.t()?)?.to_vec2()?;
        let mut assigned: Vec<(Vec<u32>, Vec<f32>)> =
            vec![(Vec::new(), Vec::new()); m.experts.len()];
        for (row, l) in logits.iter().enumerate() {
            for (e, w) in self.config.route(l, m.selection_bias.as_deref()) {
                assigned[e].0.push(row as u32);
                assigned[e].1.push(w);
            }
        }
        let mut out = match &m.shared {
            Some(shared) => shared.forward(h)?,
            None => h.zeros_like()?,
        };
        for (expert, (idx, weights)) in m.experts.iter().zip(assigned) {
            if idx.is_empty() {
                continue;
            }
            let n = idx.len();
            let idx = Tensor::from_vec(idx, n, &self.device)?;
            let weights = Tensor::from_vec(weights, (n, 1), &self.device)?;
            let y = expert
                .forward(&h.index_select(&idx, 0)?)?
                .broadcast_mul(&weights)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        debug_assert_eq!(out.dim(0)?, rows);
        Ok(out)
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = candle_nn::ops::rms_norm(x, &self.norm, self.config.base.rms_eps as f32)?;
        Ok(self.output.forward(&x)?)
    }
}

impl DecoderModel for DeepSeek {
    fn config(&self) -> &ModelConfig {
        DeepSeek::config(self)
    }

    fn device(&self) -> &Device {
        DeepSeek::device(self)
    }

    fn cache_shape(&self) -> CacheShape {
        DeepSeek::cache_shape(self)
    }

    fn new_cache(&self, config: &KvCacheConfig) -> Result<SequenceCache> {
        DeepSeek::new_cache(self, config)
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        DeepSeek::forward(self, tokens, cache, all_logits)
    }

    fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut SequenceCache]) -> Result<Tensor> {
        DeepSeek::forward_batch(self, tokens, caches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(gating: ExpertGating, groups: (usize, usize), used: usize) -> DeepSeekConfig {
        DeepSeekConfig {
            base: ModelConfig {
                architecture: ARCHITECTURE.into(),
                vocab_size: 8,
                context_length: 16,
                hidden_size: 8,
                n_layers: 1,
                n_heads: 1,
                n_kv_heads: 1,
                head_dim: 4,
                ffn_size: 8,
                rms_eps: 1e-6,
                rope_theta: 10_000.0,
            },
            q_lora_rank: None,
            kv_lora_rank: 5,
            qk_nope_head_dim: 2,
            qk_rope_head_dim: 2,
            v_head_dim: 2,
            leading_dense_blocks: 0,
            expert_count: 8,
            experts_used: used,
            shared_experts: 0,
            expert_ffn_size: 4,
            gating,
            expert_weights_norm: true,
            expert_weights_scale: 2.0,
            expert_groups: groups.0,
            expert_groups_used: groups.1,
            yarn: None,
        }
    }

    #[test]
    fn grouped_routing_keeps_the_best_groups_and_weighs_by_unbiased_scores() {
        // Four groups of two. Group scores (sum of both): 0.3, 1.1, 0.9, 0.2 -> groups 1, 2.
        let c = config(ExpertGating::Sigmoid, (4, 2), 3);
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let probs = [0.2, 0.1, 0.6, 0.5, 0.45, 0.45, 0.15, 0.05];
        let logits: Vec<f32> = probs.iter().map(|&p| logit(p)).collect();
        let chosen = c.route(&logits, None);
        let experts: Vec<usize> = chosen.iter().map(|&(e, _)| e).collect();
        assert_eq!(experts, vec![2, 3, 4]);
        let sum = 0.6 + 0.5 + 0.45;
        for (&(e, w), p) in chosen.iter().zip([0.6, 0.5, 0.45]) {
            assert!((w - 2.0 * p / sum).abs() < 1e-5, "expert {e}: {w}");
        }
        // A bias that lifts expert 0 above everyone picks it (group 0 wins), but its weight
        // stays its unbiased score.
        let mut bias = [0.0f32; 8];
        bias[0] = 1.0;
        let chosen = c.route(&logits, Some(&bias));
        assert_eq!(chosen[0].0, 0);
        let experts: Vec<usize> = chosen.iter().map(|&(e, _)| e).collect();
        assert_eq!(experts, vec![0, 2, 3]);
        let sum = 0.2 + 0.6 + 0.5;
        assert!((chosen[0].1 - 2.0 * 0.2 / sum).abs() < 1e-5);
    }

    #[test]
    fn softmax_routing_without_groups() {
        let mut c = config(ExpertGating::Softmax, (1, 1), 2);
        c.expert_weights_norm = false;
        c.expert_weights_scale = 1.0;
        let logits = [0.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0];
        let z: f32 = logits.iter().map(|l: &f32| l.exp()).sum();
        let chosen = c.route(&logits, None);
        assert_eq!(chosen.len(), 2);
        assert_eq!((chosen[0].0, chosen[1].0), (2, 3));
        assert!((chosen[0].1 - 3f32.exp() / z).abs() < 1e-6);
        assert!((chosen[1].1 - 2f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn yarn_ramp_and_attention_factor() {
        // rope 8 over base 100, trained on 64 positions: correction dims floor(-0.99) -> 0 and
        // ceil(2.01) = 3, so the pairs keep 1, 2/3, 1/3, 0 of the extrapolated angle.
        let y = YarnScaling {
            factor: 4.0,
            original_context: 64,
            beta_fast: 32.0,
            beta_slow: 1.0,
            log_multiplier: 0.1,
        };
        let mix = y.extrapolation_mix(8, 100.0);
        let want = [1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0];
        for (m, w) in mix.iter().zip(want) {
            assert!((m - w).abs() < 1e-6, "{mix:?}");
        }
        let m = 1.0 + 0.1 * 4f64.ln();
        assert!((y.attention_factor() - m * m).abs() < 1e-12);
    }

    #[test]
    fn cache_halves_hold_the_rope_key_first() {
        let c = config(ExpertGating::Softmax, (1, 1), 2);
        // rope 2 + rank 5 = 7 values: halves of 4, the value half padded by one zero.
        assert_eq!(c.latent_width(), 7);
        assert_eq!(c.cache_head_dim(), 4);
        let mut wide = c.clone();
        wide.qk_rope_head_dim = 8;
        wide.kv_lora_rank = 2;
        assert_eq!(wide.cache_head_dim(), 8);
    }
}
