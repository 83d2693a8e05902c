//! Multi-head latent attention: the queries, the compressed latent each token caches (split
//! over the cache's key and value halves), the "absorbed" attention over it, and the RoPE /
//! YaRN tables (also used to re-rotate cached rope keys on eviction).

use candle_core::{Module, Tensor};
use fluent_ai_candle_kv_cache::SequenceCache;

use super::{DeepSeek, Segment};
use crate::quant::QLinear;
use crate::Result;

/// How a block computes its queries.
#[derive(Debug)]
pub(super) enum QueryProj {
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
pub(super) struct Mla {
    pub(super) q: QueryProj,
    /// `[rank + rope, hidden]`: the latent, then the shared rope key.
    pub(super) kv_a: QLinear,
    pub(super) kv_a_norm: Tensor,
    /// Per head, the key decompression `[heads, nope, rank]` (f32): `q_nope · k_b` is the
    /// query against the latent.
    pub(super) k_b: Tensor,
    /// Per head, the value decompression transposed `[heads, rank, v]` (f32).
    pub(super) v_b: Tensor,
    pub(super) wo: QLinear,
}

impl DeepSeek {
    /// Rotates the rope keys at the start of cached key halves (`[1, n, head_dim]`) by `delta`
    /// positions (RoPE angles are linear in the position, YaRN's too).
    pub(super) fn rerotate(&self, keys: &Tensor, delta: isize) -> candle_core::Result<Tensor> {
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
    pub(super) fn rope_tables(&self, positions: &[f32]) -> candle_core::Result<(Tensor, Tensor)> {
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

    /// The attention of one block over `h` (`[rows, hidden]`, normed), each segment against
    /// its own cache. Returns the heads' outputs `[rows, heads * v]` (before `attn_output`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
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
}
