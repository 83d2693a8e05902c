//! The feed-forward of the DeepSeek blocks: SwiGLU MLPs, and the mixture of experts (routed
//! on the host, each chosen expert run once on the rows that chose it, plus shared experts).

use candle_core::{Module, Tensor};

use super::DeepSeek;
use crate::quant::QLinear;
use crate::Result;

/// A SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub(super) struct Mlp {
    pub(super) gate: QLinear,
    pub(super) up: QLinear,
    pub(super) down: QLinear,
}

impl Mlp {
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }
}

/// A mixture-of-experts feed-forward.
#[derive(Debug)]
pub(super) struct Moe {
    /// `[experts, hidden]`, f32.
    pub(super) router: Tensor,
    /// `exp_probs_b.bias`: added to the scores to choose experts, not to weigh them.
    pub(super) selection_bias: Option<Vec<f32>>,
    pub(super) experts: Vec<Mlp>,
    pub(super) shared: Option<Mlp>,
}

impl DeepSeek {
    /// The mixture of experts over `h` (`[rows, hidden]`, normed): each row routed on the
    /// host, each chosen expert run once on all the rows that chose it, plus the shared
    /// experts on every row.
    pub(super) fn moe(&self, m: &Moe, h: &Tensor) -> Result<Tensor> {
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
}
