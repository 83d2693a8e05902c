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
//!
//! # Layout
//!
//! `config`: [`DeepSeekConfig`] from the file's metadata, expert routing, YaRN; `load`: the
//! weights and their shapes; `mla`: multi-head latent attention, RoPE/YaRN tables and the
//! cache's latent halves; `moe`: the SwiGLU experts and the mixture; this module: the decoder,
//! its block loop and [`Decoder`].

mod config;
mod load;
mod mla;
mod moe;

use candle_core::{DType, Device, Module, Tensor};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};

use crate::config::ModelConfig;
use crate::decoder::Decoder;
use crate::quant::{Embedding, QLinear};
use crate::Result;
pub use config::{DeepSeekConfig, ExpertGating, YarnScaling};
use mla::Mla;
use moe::{Mlp, Moe};

/// The `general.architecture` this module runs (llama.cpp's name for DeepSeek-V2/V3 and
/// Kimi K2).
pub const ARCHITECTURE: &str = "deepseek2";

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
    /// All of the DeepSeek hyper-parameters (MLA, MoE, YaRN).
    pub fn deepseek_config(&self) -> &DeepSeekConfig {
        &self.config
    }

    /// Evicts per the cache's strategy, re-rotating the kept rope keys by their shift.
    fn make_room(&self, cache: &mut SequenceCache, n: usize) -> Result<()> {
        let rerotate = |k: &Tensor, _from: usize, delta: isize| self.rerotate(k, delta);
        cache.make_room(n, &rerotate)?;
        Ok(())
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

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = candle_nn::ops::rms_norm(x, &self.norm, self.config.base.rms_eps as f32)?;
        Ok(self.output.forward(&x)?)
    }
}

impl Decoder for DeepSeek {
    /// The common hyper-parameters.
    fn config(&self) -> &ModelConfig {
        &self.config.base
    }

    /// The device the weights live on.
    fn device(&self) -> &Device {
        &self.device
    }

    /// What one token occupies in a KV cache of this model: its latent row split over the key
    /// and value tensors of one "head" (see the module docs).
    fn cache_shape(&self) -> CacheShape {
        CacheShape {
            layers: self.config.base.n_layers,
            kv_heads: 1,
            head_dim: self.config.cache_head_dim(),
            dtype: DType::F32,
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

    /// Runs `tokens` of one sequence after what `cache` holds, appending their latents.
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
    fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut SequenceCache]) -> Result<Tensor> {
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
}
