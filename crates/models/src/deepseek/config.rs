//! [`DeepSeekConfig`]: the DeepSeek hyper-parameters from `deepseek2.*` metadata (MLA sizes,
//! experts and their routing, YaRN), and the routing of one token to its experts.

use candle_core::quantized::gguf_file::Value;

use super::ARCHITECTURE;
use crate::config::ModelConfig;
use crate::gguf::GgufFile;
use crate::{ModelError, Result};

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
    pub(super) fn extrapolation_mix(&self, dims: usize, base: f64) -> Vec<f32> {
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
