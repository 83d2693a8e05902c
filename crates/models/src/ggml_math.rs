//! RMS norm, LayerNorm, SwiGLU and RoPE as candle ops computed as llama.cpp's CPU backend computes them,
//! so that near-tied logits break the same way (the reference outputs in `../shared/reference`
//! are llama.cpp's): the arithmetic is [`fluent_ai_candle_kernels::ggml`]'s (see there); this
//! module runs it on f32 CPU tensors (element-wise ops split over candle's pool for prefill
//! sizes, [`zip_map`]) and falls back to candle's ops elsewhere.

use std::sync::atomic::{AtomicU32, Ordering};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use fluent_ai_candle_kernels::ggml::{layer_norm_row, rms_norm_row, rotate, swiglu as swiglu_one};

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
    crate::pool::for_items(a.len().div_ceil(CHUNK), crate::pool::Split::Guided, work);
    let out = out
        .into_iter()
        .map(|v| f32::from_bits(v.into_inner()))
        .collect();
    Ok((CpuStorage::F32(out), l1.shape().clone()))
}

/// `f(a[i])` for every element of a contiguous f32 CPU tensor, on the calling thread up to
/// [`SERIAL`] values and split over candle's CPU pool beyond: the body of an element-wise
/// [`CustomOp1`](candle_core::CustomOp1) (`what` names it in errors).
pub(crate) fn map(
    what: &str,
    (s, l): (&CpuStorage, &Layout),
    f: impl Fn(f32) -> f32 + Sync,
) -> candle_core::Result<(CpuStorage, Shape)> {
    // The same pool split as `zip_map`, with the input as both operands.
    zip_map(what, (s, l), (s, l), |x, _| f(x))
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
            rms_norm_row(row, w, self.eps, &mut out);
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

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fluent-ai-candle-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = f32_slices("layer_norm", (s1, l1), (s2, l2))?;
        let (_, b) = f32_slices("layer_norm", (s1, l1), (s3, l3))?;
        let dim = l1.dims().last().copied().unwrap_or(0);
        if dim == 0 || w.len() != dim || b.len() != dim {
            candle_core::bail!(
                "layer_norm: weight of {} and bias of {} values for rows of {dim}",
                w.len(),
                b.len()
            );
        }
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(dim) {
            layer_norm_row(row, w, b, self.eps, &mut out);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm of the last dimension of `x`, times `w`, plus `b` (llama.cpp's `LLM_NORM` with
/// weight and bias), as llama.cpp's CPU backend computes it
/// ([`layer_norm_row`]), for f32 CPU tensors; candle's `layer_norm` otherwise.
pub(crate) fn layer_norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    let f32s = [x, w, b].iter().all(|t| t.dtype() == DType::F32);
    if x.device().is_cpu() && f32s {
        x.contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &LayerNorm { eps })
    } else {
        candle_nn::ops::layer_norm(x, w, b, eps)
    }
}

/// RoPE's cos and sin tables (`[positions, rot_dims / 2]`) for rotating the first `rot_dims`
/// values of a head, as GGML computes the angles (`ggml_rope_cache_init`: f32, the frequency
/// stepped by repeated multiplication by `theta^(-2 / rot_dims)`, each angle scaled by
/// `freq_scale`, 1 without RoPE scaling), so near-tied logits break the way llama.cpp's do.
/// Positions may be negative (re-rotating cached keys back).
pub(crate) fn rope_tables(
    rot_dims: usize,
    theta: f64,
    freq_scale: f32,
    positions: impl ExactSizeIterator<Item = f32>,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = rot_dims / 2;
    let rows = positions.len();
    let mut cos = Vec::with_capacity(rows * half);
    let mut sin = Vec::with_capacity(rows * half);
    let step = (theta as f32).powf(-2.0 / rot_dims as f32);
    for p in positions {
        let mut angle = p;
        for _ in 0..half {
            let a = freq_scale * angle;
            cos.push(a.cos());
            sin.push(a.sin());
            angle *= step;
        }
    }
    Ok((
        Tensor::from_vec(cos, (rows, half), device)?,
        Tensor::from_vec(sin, (rows, half), device)?,
    ))
}

/// RoPE of `x` (`[b, h, t, d]`) by the angles whose cosines and sines are `cos` / `sin`
/// (`[t, r/2]`, or `[b, t, r/2]` for one position per sequence), rotating the first `r <= d`
/// values of each head (`r < d`: partial rotary embeddings, the rest passed through as GGML
/// does), as adjacent pairs (`interleaved`, llama.cpp's normal mode) or as the two halves of
/// those `r` values (NeoX mode), with llama.cpp's arithmetic (see [`rotate`]); candle's
/// `rope_i` / `rope` off the CPU.
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
    let (b, h, t, d) = x.dims4()?;
    let half = cos.dims().last().copied().unwrap_or(0);
    let per_batch = match cos.dims() {
        [ct, _] if *ct == t => false,
        [cb, ct, _] if *cb == b && *ct == t => true,
        other => candle_core::bail!("rope: angles {other:?} for x {:?}", x.dims()),
    };
    if sin.dims() != cos.dims() || d % 2 != 0 || half == 0 || 2 * half > d {
        candle_core::bail!("rope: sin {:?} / cos {:?} / d {d}", sin.dims(), cos.dims());
    }
    if !cpu_f32 {
        let rot = x.narrow(3, 0, 2 * half)?.contiguous()?;
        let rot = if interleaved {
            candle_nn::rotary_emb::rope_i(&rot, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(&rot, cos, sin)?
        };
        return if 2 * half == d {
            Ok(rot)
        } else {
            Tensor::cat(&[&rot, &x.narrow(3, 2 * half, d - 2 * half)?], 3)
        };
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
                dst[2 * half..].copy_from_slice(&src[2 * half..]);
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

    #[test]
    fn layer_norm_matches_candle_within_rounding() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0.3f32, 1.5, (5, 2560), &dev).unwrap() + 0.7).unwrap();
        let w = Tensor::randn(1f32, 0.1, 2560, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 2560, &dev).unwrap();
        let ours = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let theirs = candle_nn::ops::layer_norm(&x, &w, &b, 1e-5).unwrap();
        let diff = crate::max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-4, "{diff}");
        let bad = Tensor::ones(7, DType::F32, &dev).unwrap();
        assert!(layer_norm(&x, &bad, &b, 1e-5).is_err());
        assert!(layer_norm(&x, &w, &bad, 1e-5).is_err());
    }

    #[test]
    fn partial_rope_rotates_the_first_dims_and_passes_the_rest() {
        let dev = Device::Cpu;
        let (d, r) = (10, 4);
        let x = Tensor::randn(0f32, 1.0, (1, 2, 3, d), &dev).unwrap();
        let (cos, sin) = rope_tables(r, 10_000.0, 1.0, (5..8).map(|p| p as f32), &dev).unwrap();
        assert_eq!(cos.dims(), &[3, r / 2]);
        for interleaved in [false, true] {
            let y = rope(&x, &cos, &sin, interleaved).unwrap();
            // The passed-through values are the input's.
            let tail = |t: &Tensor| t.narrow(3, r, d - r).unwrap().flatten_all().unwrap();
            assert_eq!(
                tail(&y).to_vec1::<f32>().unwrap(),
                tail(&x).to_vec1::<f32>().unwrap()
            );
            // The rotated ones are candle's rope of the first r values, within rounding.
            let head = x.narrow(3, 0, r).unwrap().contiguous().unwrap();
            let want = if interleaved {
                candle_nn::rotary_emb::rope_i(&head, &cos, &sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope(&head, &cos, &sin).unwrap()
            };
            let diff = crate::max_abs_diff(&y.narrow(3, 0, r).unwrap(), &want);
            assert!(diff < 1e-5, "{diff}");
        }
        // Angles wider than the head are an error.
        let (c, s) = rope_tables(12, 10_000.0, 1.0, (0..3).map(|p| p as f32), &dev).unwrap();
        assert!(rope(&x, &c, &s, false).is_err());
    }

    #[test]
    fn rope_tables_scale_positions_and_accept_negative_ones() {
        let dev = Device::Cpu;
        let (c, s) = rope_tables(8, 10_000.0, 1.0, [-3.0f32, 0.0, 3.0].into_iter(), &dev).unwrap();
        let (c, s): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (c.to_vec2().unwrap(), s.to_vec2().unwrap());
        assert_eq!(c[1], vec![1.0; 4]);
        assert_eq!(c[0], c[2]);
        assert_eq!(s[0][0], -s[2][0]);
        let (c2, _) = rope_tables(8, 10_000.0, 0.5, [6.0f32].into_iter(), &dev).unwrap();
        assert_eq!(c2.to_vec2::<f32>().unwrap()[0][0], c[2][0]);
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
