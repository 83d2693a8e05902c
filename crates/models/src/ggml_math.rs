//! RMS norm, SwiGLU and RoPE computed as llama.cpp's CPU backend computes them, so that
//! near-tied logits break the same way (the reference outputs in `../shared/reference` are
//! llama.cpp's):
//!
//! - **RMS norm** (`ggml_compute_forward_rms_norm_f32`): the squares summed in f64, the mean
//!   rounded to f32, `scale = 1 / sqrtf(mean + eps)`, then `x · scale · w` (two f32
//!   products), where candle sums in f32 and divides by the root;
//! - **SwiGLU** (`ggml_vec_swiglu_f32`): `silu(gate) · up` with `silu(x) = x / (1 + e^-x)` and
//!   `e^-x` from GGML's AVX-512 polynomial (`ggml_v_expf`, ~1.5 ulp), evaluated here lane by
//!   lane with the same fused multiply-adds, so every machine gets the same bits;
//! - **RoPE** (`rotate_pairs`): each pair rotated with its first product fused, as GCC
//!   contracts it.
//!
//! All run on f32 CPU tensors (element-wise ops split over candle's pool for prefill sizes,
//! [`zip_map`]) and fall back to candle's ops elsewhere.

use std::sync::atomic::{AtomicU32, Ordering};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

/// `e^x` as GGML's AVX-512 `ggml_v_expf` computes each lane: `x = n·ln2 + b` with `n` rounded
/// to an integer, a degree-5 polynomial in `b`, scaled by `2^n`; `|n| > 192` saturates to 0
/// or infinity.
pub(crate) fn v_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // log2(e) = 0x1.715476p+0
    let n = z - r;
    let inner = (-n).mul_add(f32::from_bits(0x3f31_7200), x); // 0x1.62e4p-1
    let b = (-n).mul_add(f32::from_bits(0x35bf_be8e), inner); // 0x1.7f7d1cp-20
    let u = b * b;
    let c5 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7
    let c4 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
    let c3 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
    let c2 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
    let c1 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
    let j = c5
        .mul_add(b, c4)
        .mul_add(u, c3.mul_add(b, c2))
        .mul_add(u, c1.mul_add(b, 1.0));
    if n.abs() <= 125.0 {
        // j is within [0.7, 1.5), so j · 2^n is a normal f32: scaling by the power of two
        // (built from its exponent bits) is exact, as `_mm512_scalef_ps` is.
        return j * f32::from_bits(((n as i32 + 127) as u32) << 23);
    }
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // Near the ends of the range: j · 2^n rounded once (exact in f64, then one rounding).
    (f64::from(j) * 2f64.powi(n as i32)) as f32
}

/// `silu(x) · g` as `ggml_vec_swiglu_f32` computes it.
#[inline]
fn swiglu_one(x: f32, g: f32) -> f32 {
    x / (1.0 + v_expf(0.0 - x)) * g
}

/// Values per work item on the pool: small enough that a few rows (a batched decode step:
/// 4 × 1536 values) split evenly over the threads.
const CHUNK: usize = 1024;
/// Up to this many values, the calling thread does it alone (one row of a decode step).
const SERIAL: usize = 2048;

/// The values of two contiguous f32 CPU tensors, or an error naming `what`.
fn f32_slices<'a>(
    what: &str,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(&'a [f32], &'a [f32])> {
    let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
        candle_core::bail!("{what}: f32 inputs expected");
    };
    let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("{what}: contiguous inputs expected");
    };
    Ok((&a[a0..a1], &b[b0..b1]))
}

/// `f(a[i], b[i])` for every element of two f32 CPU tensors of one contiguous shape, on the
/// calling thread up to [`SERIAL`] values and split over candle's CPU pool beyond: the body of an
/// element-wise [`CustomOp2`] (`what` names it in errors).
pub(crate) fn zip_map(
    what: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (a, b) = f32_slices(what, (s1, l1), (s2, l2))?;
    if l1.shape() != l2.shape() {
        candle_core::bail!(
            "{what}: shapes {:?} and {:?} differ",
            l1.shape(),
            l2.shape()
        );
    }
    if a.len() <= SERIAL {
        let out = a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
        return Ok((CpuStorage::F32(out), l1.shape().clone()));
    }
    let out: Vec<AtomicU32> = (0..a.len()).map(|_| AtomicU32::new(0)).collect();
    let work = |items: std::ops::Range<usize>| {
        for item in items {
            for i in item * CHUNK..a.len().min((item + 1) * CHUNK) {
                out[i].store(f(a[i], b[i]).to_bits(), Ordering::Relaxed);
            }
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(a.len().div_ceil(CHUNK), work);
    let out = out
        .into_iter()
        .map(|v| f32::from_bits(v.into_inner()))
        .collect();
    Ok((CpuStorage::F32(out), l1.shape().clone()))
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fluent-ai-candle-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        zip_map("swiglu", (s1, l1), (s2, l2), swiglu_one)
    }
}

/// `silu(gate) · up` element-wise, as llama.cpp's CPU backend computes it (module docs), for
/// f32 CPU tensors of one shape; candle's `silu` otherwise.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if gate.device().is_cpu() && gate.dtype() == DType::F32 && up.dtype() == DType::F32 {
        gate.contiguous()?
            .apply_op2_no_bwd(&up.contiguous()?, &SwiGlu)
    } else {
        candle_nn::ops::silu(gate)? * up
    }
}

/// One row: `x · scale · w` with llama.cpp's `scale`.
fn rms_row(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    out.extend(x.iter().zip(w).map(|(&v, &w)| v * scale * w));
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fluent-ai-candle-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = f32_slices("rms_norm", (s1, l1), (s2, l2))?;
        let dim = l1.dims().last().copied().unwrap_or(0);
        if dim == 0 || w.len() != dim {
            candle_core::bail!("rms_norm: weight of {} values for rows of {dim}", w.len());
        }
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(dim) {
            rms_row(row, w, self.eps, &mut out);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// RMS norm of the last dimension of `x` times `w`, as llama.cpp's CPU backend computes it
/// (module docs), for f32 CPU tensors; candle's `rms_norm` otherwise.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        x.contiguous()?
            .apply_op2_no_bwd(&w.contiguous()?, &RmsNorm { eps })
    } else {
        candle_nn::ops::rms_norm(x, w, eps)
    }
}

/// Rotates one pair as llama.cpp's `rotate_pairs` does, compiled by GCC with contraction:
/// `x0·cos - x1·sin` and `x0·sin + x1·cos`, each with its first product fused.
#[inline]
fn rotate(x0: f32, x1: f32, cos: f32, sin: f32) -> (f32, f32) {
    (x0.mul_add(cos, -(x1 * sin)), x0.mul_add(sin, x1 * cos))
}

/// RoPE of `x` (`[b, h, t, d]`) by the angles whose cosines and sines are `cos` / `sin`
/// (`[t, d/2]`, or `[b, t, d/2]` for one position per sequence), rotating adjacent pairs
/// (`interleaved`, llama.cpp's normal mode) or the two halves (NeoX mode), with llama.cpp's
/// arithmetic (see [`rotate`]); candle's `rope_i` / `rope` off the CPU.
pub(crate) fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> candle_core::Result<Tensor> {
    let cpu_f32 = x.device().is_cpu()
        && [x.dtype(), cos.dtype(), sin.dtype()]
            .iter()
            .all(|&t| t == DType::F32);
    if !cpu_f32 {
        return if interleaved {
            candle_nn::rotary_emb::rope_i(x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope(x, cos, sin)
        };
    }
    let (b, h, t, d) = x.dims4()?;
    let half = d / 2;
    let per_batch = match cos.dims() {
        [ct, ch] if *ct == t && *ch == half => false,
        [cb, ct, ch] if *cb == b && *ct == t && *ch == half => true,
        other => candle_core::bail!("rope: angles {other:?} for x {:?}", x.dims()),
    };
    if sin.dims() != cos.dims() || d % 2 != 0 {
        candle_core::bail!("rope: sin {:?} / cos {:?} / d {d}", sin.dims(), cos.dims());
    }
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let cs = cos.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let ss = sin.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; xs.len()];
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                let base = ((bi * h + hi) * t + ti) * d;
                let ang = if per_batch {
                    (bi * t + ti) * half
                } else {
                    ti * half
                };
                let (src, dst) = (&xs[base..base + d], &mut out[base..base + d]);
                for i in 0..half {
                    let (c, s) = (cs[ang + i], ss[ang + i]);
                    let (i0, i1) = if interleaved {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + half)
                    };
                    let (y0, y1) = rotate(src[i0], src[i1], c, s);
                    dst[i0] = y0;
                    dst[i1] = y1;
                }
            }
        }
    }
    Tensor::from_vec(out, (b, h, t, d), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn v_expf_is_within_two_ulp_of_exp(x in -87f32..88.0) {
            let want = f64::from(x).exp();
            let got = f64::from(v_expf(x));
            let ulp = f64::from(f32::EPSILON) * want;
            prop_assert!((got - want).abs() <= 2.0 * ulp, "{x}: {got} vs {want}");
        }

        #[test]
        fn swiglu_is_silu_times_up(x in -30f32..30.0, g in -4f32..4.0) {
            let want = f64::from(x) / (1.0 + (-f64::from(x)).exp()) * f64::from(g);
            let got = f64::from(swiglu_one(x, g));
            prop_assert!((got - want).abs() <= want.abs() * 1e-6 + 1e-30, "{got} vs {want}");
        }
    }

    #[test]
    fn v_expf_saturates_like_ggml() {
        assert_eq!(v_expf(-200.0), 0.0);
        assert_eq!(v_expf(200.0), f32::INFINITY);
        assert_eq!(v_expf(0.0), 1.0);
        // Deep in the subnormal range the result is rounded once.
        assert!(v_expf(-100.0) > 0.0 && v_expf(-100.0) < f32::MIN_POSITIVE);
        // Both sides of the fast path's edge (n = ±125) stay within two ulps of e^x.
        for x in [-86.64f32, -86.7, -87.3, 86.6, 86.7, 87.3] {
            let (got, want) = (f64::from(v_expf(x)), f64::from(x).exp());
            assert!(
                (got - want).abs() <= 2.0 * f64::from(f32::EPSILON) * want,
                "{x}"
            );
        }
    }

    #[test]
    fn ops_match_candle_within_rounding_and_split_over_the_pool_unchanged() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 2048), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 2048), &dev).unwrap();
        let ours = swiglu(&x, &g).unwrap();
        let theirs = (candle_nn::ops::silu(&x).unwrap() * &g).unwrap();
        let diff = crate::max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-5, "{diff}");
        let serial: Vec<f32> = x
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .zip(g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .map(|(&a, b)| swiglu_one(a, b))
            .collect();
        assert_eq!(
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            serial
        );

        let w = Tensor::randn(1f32, 0.1, 2048, &dev).unwrap();
        let ours = rms_norm(&x, &w, 1e-5).unwrap();
        let theirs = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap();
        let diff = crate::max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-5, "{diff}");
        assert!(rms_norm(&x, &Tensor::ones(7, DType::F32, &dev).unwrap(), 1e-5).is_err());
    }
}
