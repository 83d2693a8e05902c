//! RMS norm, LayerNorm, SwiGLU, GELU, GEGLU and RoPE computed as llama.cpp's CPU backend
//! computes them, so that near-tied logits break the same way (a decoder's reference outputs
//! are llama.cpp's), on plain values and slices:
//!
//! - **RMS norm** ([`rms_norm_row`], `ggml_compute_forward_rms_norm_f32`): the squares summed
//!   in f64, the mean rounded to f32, `scale = 1 / sqrtf(mean + eps)`, then `x · scale · w`
//!   (two f32 products), where candle sums in f32 and divides by the root;
//! - **LayerNorm** ([`layer_norm_row`], `ggml_compute_forward_norm_f32` then `ggml_mul` and
//!   `ggml_add`): the mean from an f64 sum rounded to f32, the variance of the centred values
//!   summed as GGML's AVX-512 `ggml_vec_cvar_f32` sums them, `scale = 1 / sqrtf(var + eps)`,
//!   then `(x - mean) · scale · w + b`, every step rounded to f32;
//! - **SwiGLU** ([`swiglu`], `ggml_vec_swiglu_f32`): `silu(gate) · up` with
//!   `silu(x) = x / (1 + e^-x)` and `e^-x` from GGML's AVX-512 polynomial ([`v_expf`],
//!   `ggml_v_expf`, ~1.5 ulp), evaluated here lane by lane with the same fused multiply-adds,
//!   so every machine gets the same bits;
//! - **GELU** ([`gelu`], `ggml_vec_gelu_f32`) and **GEGLU** ([`geglu`], `ggml_vec_geglu_f32`):
//!   tanh GELU read from a table indexed by the input rounded to f16 ([`GeluTable`]);
//! - **RoPE** ([`rotate`], `rotate_pairs`): each pair rotated with its first product fused, as
//!   GCC contracts it.
//!
//! The element-wise functions are `#[inline]` so a caller's loop (or a thread pool's work
//! item) compiles them in place.
//!
//! ```
//! use fluent_ai_candle_kernels::ggml::{rms_norm_row, swiglu, v_expf};
//!
//! assert_eq!(v_expf(0.0), 1.0);
//! assert!((swiglu(2.0, 3.0) - 2.0 / (1.0 + (-2f32).exp()) * 3.0).abs() < 1e-6);
//! let mut out = Vec::new();
//! rms_norm_row(&[3.0, 4.0], &[1.0, 1.0], 0.0, &mut out);
//! assert!((out[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
//! ```

use std::sync::OnceLock;

use half::f16;

/// `e^x` as GGML's AVX-512 `ggml_v_expf` computes each lane: `x = n·ln2 + b` with `n` rounded
/// to an integer, a degree-5 polynomial in `b`, scaled by `2^n`; `|n| > 192` saturates to 0
/// or infinity.
#[inline]
pub fn v_expf(x: f32) -> f32 {
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
pub fn swiglu(x: f32, g: f32) -> f32 {
    x / (1.0 + v_expf(0.0 - x)) * g
}

/// One row of RMS norm: appends `x · scale · w` to `out`, with llama.cpp's `scale` (module
/// docs). `w` holds at least `x.len()` values (extra ones are ignored).
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    out.extend(x.iter().zip(w).map(|(&v, &w)| v * scale * w));
}

/// One row of LayerNorm with weight `w` and bias `b`: appends `(x - mean) · scale · w + b` to
/// `out`, as llama.cpp's CPU backend computes `ggml_norm` (built with AVX-512) followed by
/// `ggml_mul` and `ggml_add`:
/// - the mean is the f64 sum of `x` rounded to f32, divided by the length in f32;
/// - the variance: the centred values' squares summed sixteen at a time across lanes
///   ([`crate::f16::reduce16`], `_mm512_reduce_add_ps`), those sums (and the squares of the
///   values past the last sixteen) accumulated in f64, divided by the length in f64 and
///   rounded to f32;
/// - `scale = 1 / sqrtf(variance + eps)`; each product and the bias add rounded to f32.
///
/// `w` and `b` hold at least `x.len()` values (extra ones are ignored). An AVX2 build of
/// llama.cpp sums the squares eight at a time instead, which can move the variance by an ulp.
pub fn layer_norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut Vec<f32>) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
    let mean = sum as f32 / n as f32;
    let start = out.len();
    out.extend(x.iter().map(|&v| v - mean));
    let centred = &out[start..];
    let full = n - n % 16;
    let mut var = 0f64;
    let mut squares = [0f32; 16];
    for chunk in centred[..full].chunks_exact(16) {
        for (s, &v) in squares.iter_mut().zip(chunk) {
            *s = v * v;
        }
        var += f64::from(crate::f16::reduce16(&squares));
    }
    for &v in &centred[full..] {
        var += f64::from(v * v);
    }
    let variance = (var / n as f64) as f32;
    let scale = 1.0 / (variance + eps).sqrt();
    for ((y, &w), &b) in out[start..].iter_mut().zip(w).zip(b) {
        *y = *y * scale * w + b;
    }
}

/// Rotates one pair as llama.cpp's `rotate_pairs` does, compiled by GCC with contraction:
/// `x0·cos - x1·sin` and `x0·sin + x1·cos`, each with its first product fused.
#[inline]
pub fn rotate(x0: f32, x1: f32, cos: f32, sin: f32) -> (f32, f32) {
    (x0.mul_add(cos, -(x1 * sin)), x0.mul_add(sin, x1 * cos))
}

/// llama.cpp's `GELU_COEF_A`.
const COEF_A: f32 = 0.044715;
/// llama.cpp's `SQRT_2_OVER_PI`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU, tanh form, in f32 as llama.cpp's `ggml_gelu_f32` is compiled (GCC contracts
/// `1 + a·x·x` into one fused multiply-add).
pub fn gelu_f32(x: f32) -> f32 {
    let inner = (COEF_A * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh())
}

/// llama.cpp's GELU table: `gelu(v)` rounded to f16, as f32, for every f16 bit pattern `v`
/// (built once per process, 256 KiB). Reading it is both what llama.cpp's reference logits
/// were computed with and much cheaper than a `tanhf` per value (measured ~10% of Gemma 3's
/// prefill with candle's exact `gelu`).
#[derive(Debug, Clone, Copy)]
pub struct GeluTable(&'static [f32]);

impl GeluTable {
    /// The process's table (built at the first call).
    pub fn get() -> Self {
        static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
        GeluTable(TABLE.get_or_init(|| {
            (0..=u16::MAX)
                .map(|bits| f16::from_f32(gelu_f32(f16::from_bits(bits).to_f32())).to_f32())
                .collect()
        }))
    }
}

/// `gelu(x)` the way llama.cpp's `ggml_vec_gelu_f32` computes it (`GGML_GELU_FP16`): inputs at
/// or below -10 give 0, at or above 10 pass through, others read `table` at the input rounded
/// to f16.
#[inline]
pub fn gelu(table: GeluTable, x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table.0[f16::from_f32(x).to_bits() as usize]
    }
}

/// `gelu(x) · g` the way llama.cpp's `ggml_vec_geglu_f32` computes it: gates at or below -10
/// give 0, at or above 10 pass through, others read `table` at the gate rounded to f16.
#[inline]
pub fn geglu(table: GeluTable, x: f32, g: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x * g
    } else {
        table.0[f16::from_f32(x).to_bits() as usize] * g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let got = f64::from(swiglu(x, g));
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
    fn rotate_is_a_rotation_with_the_first_product_fused() {
        let (c, s) = (0.6f32, 0.8f32);
        let (y0, y1) = rotate(1.0, 2.0, c, s);
        assert!((y0 - (0.6 - 1.6)).abs() < 1e-6 && (y1 - (0.8 + 1.2)).abs() < 1e-6);
        assert_eq!(y0, 1f32.mul_add(c, -(2.0 * s)));
    }

    #[test]
    fn layer_norm_matches_the_definition_and_sums_as_ggml() {
        // 37 values: two sixteen-lane steps and five left over.
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7 % 11) as f32 - 4.5) * 0.37)
            .collect();
        let w: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..37).map(|i| i as f32 * -0.02).collect();
        let mut out = vec![9.0]; // appended after what is there
        layer_norm_row(&x, &w, &b, 1e-5, &mut out);
        assert_eq!(out.len(), 38);
        assert_eq!(out[0], 9.0);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        for i in 0..37 {
            let want =
                (f64::from(x[i]) - mean) / (var + 1e-5).sqrt() * f64::from(w[i]) + f64::from(b[i]);
            assert!((f64::from(out[i + 1]) - want).abs() < 1e-5, "{i}");
        }
        // The step by step definition, bit for bit.
        let mean = (x.iter().map(|&v| f64::from(v)).sum::<f64>() as f32) / 37.0;
        let c: Vec<f32> = x.iter().map(|&v| v - mean).collect();
        let mut var = 0f64;
        for k in 0..2 {
            let sq: Vec<f32> = c[16 * k..16 * k + 16].iter().map(|v| v * v).collect();
            var += f64::from(crate::f16::reduce16(&sq));
        }
        var += c[32..].iter().map(|v| f64::from(v * v)).sum::<f64>();
        let scale = 1.0 / ((var / 37.0) as f32 + 1e-5).sqrt();
        for i in 0..37 {
            assert_eq!(out[i + 1], c[i] * scale * w[i] + b[i]);
        }
        let mut empty = Vec::new();
        layer_norm_row(&[], &[], &[], 1e-5, &mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn gelu_reads_the_table_and_passes_large_inputs_through() {
        let t = GeluTable::get();
        assert_eq!(gelu(t, -10.0), 0.0);
        assert_eq!(gelu(t, 12.5), 12.5);
        for x in [-3.2f32, -0.4, 0.0, 0.7, 4.1] {
            let want = f16::from_f32(gelu_f32(f16::from_f32(x).to_f32())).to_f32();
            assert_eq!(gelu(t, x), want);
            assert_eq!(gelu(t, x) * 2.0, geglu(t, x, 2.0));
        }
    }

    #[test]
    fn geglu_reads_the_table_and_follows_llama_cpp_at_the_edges() {
        let t = GeluTable::get();
        assert_eq!(geglu(t, -10.0, 3.0), 0.0);
        assert_eq!(geglu(t, 12.0, 0.5), 6.0);
        let x = 0.7f32;
        let want = f16::from_f32(gelu_f32(f16::from_f32(x).to_f32())).to_f32() * 2.0;
        assert_eq!(geglu(t, x, 2.0), want);
    }
}
