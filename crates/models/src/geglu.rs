//! GEGLU, `gelu(gate) · up` (Gemma's feed-forward), and GELU alone (Phi-2's), as candle ops
//! computed as llama.cpp's CPU backend computes them ([`fluent_ai_candle_kernels::ggml::geglu`],
//! [`fluent_ai_candle_kernels::ggml::gelu`]): GELU (tanh form) is
//! read from a table indexed by the gate value rounded to f16, holding `gelu(v)` rounded to
//! f16 for every f16 `v`; gates at or below -10 give 0 and at or above 10 pass through. That
//! is both what the reference logits were computed with and much cheaper than a `tanhf` per
//! value (measured ~10% of Gemma 3's prefill with candle's exact `gelu`).
//!
//! On the CPU the op is split over candle's pool; elsewhere it falls back to candle's `gelu`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use fluent_ai_candle_kernels::ggml::{geglu as one, gelu as gelu_one, GeluTable};

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fluent-ai-candle-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let table = GeluTable::get();
        crate::ggml_math::map("gelu", (s, l), |x| gelu_one(table, x))
    }
}

/// `gelu(x)` element-wise (tanh GELU as llama.cpp's CPU backend computes it, see the module
/// docs) for an f32 CPU tensor; candle's `gelu` otherwise.
pub(crate) fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&Gelu)
    } else {
        x.gelu()
    }
}

struct Geglu;

impl CustomOp2 for Geglu {
    fn name(&self) -> &'static str {
        "fluent-ai-candle-geglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let table = GeluTable::get();
        crate::ggml_math::zip_map("geglu", (s1, l1), (s2, l2), |x, g| one(table, x, g))
    }
}

/// `gelu(gate) · up` element-wise (tanh GELU as llama.cpp's CPU backend computes it, see the
/// module docs) for f32 CPU tensors of one shape; candle's `gelu` otherwise.
pub(crate) fn geglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if gate.device().is_cpu()
        && gate.dtype() == candle_core::DType::F32
        && up.dtype() == candle_core::DType::F32
    {
        gate.contiguous()?
            .apply_op2_no_bwd(&up.contiguous()?, &Geglu)
    } else {
        gate.gelu()? * up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use fluent_ai_candle_kernels::ggml::gelu_f32;
    use half::f16;

    #[test]
    fn matches_gelu_within_f16_rounding_and_follows_llama_cpp_at_the_edges() {
        let xs: Vec<f32> = (-1200..1200).map(|i| i as f32 * 0.01).collect();
        let gs: Vec<f32> = xs.iter().map(|x| 1.5 - x * 0.25).collect();
        let n = xs.len();
        let gate = Tensor::from_vec(xs.clone(), n, &Device::Cpu).unwrap();
        let up = Tensor::from_vec(gs.clone(), n, &Device::Cpu).unwrap();
        let got: Vec<f32> = geglu(&gate, &up).unwrap().to_vec1().unwrap();
        let exact: Vec<f32> = (gate.gelu().unwrap() * &up).unwrap().to_vec1().unwrap();
        for i in 0..n {
            let (x, g) = (xs[i], gs[i]);
            if x <= -10.0 {
                assert_eq!(got[i], 0.0, "x = {x}");
            } else if x >= 10.0 {
                assert_eq!(got[i], x * g, "x = {x}");
            } else {
                // Two f16 roundings (the input, then the table value): a few parts in 1e3.
                let tol = 4e-3 * exact[i].abs() + 1e-3 * g.abs();
                assert!(
                    (got[i] - exact[i]).abs() <= tol,
                    "x = {x}: {} vs {}",
                    got[i],
                    exact[i]
                );
                // Exactly the table entry of the f16-rounded gate.
                let t = f16::from_f32(gelu_f32(f16::from_f32(x).to_f32())).to_f32();
                assert_eq!(got[i], t * g, "x = {x}");
            }
        }
    }

    #[test]
    fn gelu_alone_is_geglu_with_a_unit_up() {
        let n = 5000; // split over the pool
        let xs: Vec<f32> = (0..n).map(|i| (i as f32 - 2500.0) * 0.0053).collect();
        let x = Tensor::from_vec(xs.clone(), (2, n / 2), &Device::Cpu).unwrap();
        let got: Vec<f32> = gelu(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let table = GeluTable::get();
        for i in 0..n {
            assert_eq!(got[i], gelu_one(table, xs[i]));
            assert_eq!(got[i], one(table, xs[i], 1.0));
        }
    }

    #[test]
    fn large_inputs_split_over_the_pool_equal_the_serial_definition() {
        let n = 17 * 800; // more than three work items
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 2001) as f32 - 1000.0) * 0.013)
            .collect();
        let gs: Vec<f32> = (0..n)
            .map(|i| ((i * 11 % 97) as f32 - 48.0) * 0.1)
            .collect();
        let gate = Tensor::from_vec(xs.clone(), (n / 17, 17), &Device::Cpu).unwrap();
        let up = Tensor::from_vec(gs.clone(), (n / 17, 17), &Device::Cpu).unwrap();
        let got: Vec<f32> = geglu(&gate, &up)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let table = GeluTable::get();
        for i in 0..n {
            assert_eq!(got[i], one(table, xs[i], gs[i]));
        }
        let bad = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(geglu(&gate, &bad).is_err());
    }
}
