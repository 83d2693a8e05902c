//! The f16 vector operations of an attention kernel on keys and values read straight from an
//! f16 cache: the dot product of a key with a query, and the running value sum's updates with
//! the sum rounded to f16 after each (llama.cpp keeps it in an f16 buffer). With AVX-512 (and
//! F16C) where [`crate::simd::chosen`] allows AVX-512, sixteen values per instruction
//! converted in registers ([`crate::arch::x86_64::avx512::f16`]); otherwise the scalar twins,
//! which return the same bits (the unit tests require it).
//!
//! ```
//! use fluent_ai_candle_kernels::f16::{dot, mad};
//! use half::f16;
//!
//! let k = [f16::from_f32(1.0), f16::from_f32(2.0)];
//! assert_eq!(dot(&k, &[3.0, 4.0]), 11.0);
//! let mut acc = [0.5f32, 0.25];
//! mad(&mut acc, &k, 2.0);
//! assert_eq!(acc, [2.5, 4.25]);
//! ```

use half::f16;

use crate::simd::Kernels;

/// Values GGML's AVX-512 f16 dot product takes per step (four registers of sixteen).
pub(crate) const DOT_STEP: usize = 64;
/// Lanes per register in that dot product.
pub(crate) const LANES: usize = 16;

/// `x` rounded to the nearest f16 (ties to even), as f32.
#[inline]
fn round16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// The sum of sixteen lanes as GCC's `_mm512_reduce_add_ps` adds them: upper 256 bits +
/// lower, upper 128 + lower, lanes 2,3 + 0,1, lane 1 + lane 0.
#[inline]
pub fn reduce16(x: &[f32]) -> f32 {
    let mut t8 = [0f32; 8];
    for i in 0..8 {
        t8[i] = x[8 + i] + x[i];
    }
    let mut t4 = [0f32; 4];
    for i in 0..4 {
        t4[i] = t8[4 + i] + t8[i];
    }
    (t4[0] + t4[2]) + (t4[1] + t4[3])
}

/// The dot product of the f16 key `k` and the query `q` (each value exactly an f16), summed
/// in the order of GGML's AVX-512 `ggml_vec_dot_f16`: four sixteen-lane accumulators over
/// each 64-value step, reduced `a0+a2, a1+a3, then their sum`, then across lanes by
/// [`reduce16`]; values past the last full step are added in f64. Products of two f16 values
/// are exact in f32, so plain adds equal the kernel's fused multiply-adds.
#[inline]
pub fn dot(k: &[f16], q: &[f32]) -> f32 {
    let n = k.len().min(q.len());
    let full = n - n % DOT_STEP;
    dot_with(Kernels::chosen(), &k[..n], &q[..n], full)
}

/// [`dot`] with the `kernels` given, of `k` and `q` of one length of which `full` is the
/// multiple of 64.
#[inline]
fn dot_with(kernels: Kernels, k: &[f16], q: &[f32], full: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    let lanes = crate::arch::x86_64::avx512::f16::dot_steps(kernels, &k[..full], &q[..full])
        .unwrap_or_else(|| dot_steps(&k[..full], &q[..full]));
    #[cfg(not(target_arch = "x86_64"))]
    let lanes = {
        let _ = kernels;
        dot_steps(&k[..full], &q[..full])
    };
    finish_dot(&lanes, &k[full..], &q[full..])
}

/// The end of [`dot`]: the sixteen `lanes` of the whole steps summed by [`reduce16`], then the
/// products of the values past them (`k_tail`, `q_tail`) added in f64.
#[inline]
pub(crate) fn finish_dot(lanes: &[f32; LANES], k_tail: &[f16], q_tail: &[f32]) -> f32 {
    let mut sum = f64::from(reduce16(lanes));
    for (k, q) in k_tail.iter().zip(q_tail) {
        sum += f64::from(k.to_f32() * q);
    }
    sum as f32
}

/// The scalar twin of the full 64-value steps of [`dot`]: the sixteen lanes before the
/// cross-lane sum.
#[inline]
pub(crate) fn dot_steps(k: &[f16], q: &[f32]) -> [f32; LANES] {
    let mut acc = [[0f32; LANES]; 4];
    for (kc, qc) in k.chunks_exact(DOT_STEP).zip(q.chunks_exact(DOT_STEP)) {
        for (j, a) in acc.iter_mut().enumerate() {
            let ks = &kc[j * LANES..(j + 1) * LANES];
            let qs = &qc[j * LANES..(j + 1) * LANES];
            for ((a, k), q) in a.iter_mut().zip(ks).zip(qs) {
                *a += k.to_f32() * q;
            }
        }
    }
    let mut r = [0f32; LANES];
    for l in 0..LANES {
        r[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    r
}

/// `acc[i] = round16(v[i] · s + acc[i])` (one fused multiply-add, then rounded to f16).
#[inline]
pub fn mad(acc: &mut [f32], v: &[f16], s: f32) {
    mad_with(Kernels::chosen(), acc, v, s)
}

/// [`mad`] with the `kernels` given.
#[inline]
fn mad_with(kernels: Kernels, acc: &mut [f32], v: &[f16], s: f32) {
    let n = acc.len().min(v.len());
    #[cfg(target_arch = "x86_64")]
    let done = crate::arch::x86_64::avx512::f16::mad(kernels, &mut acc[..n], &v[..n], s);
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = kernels;
        0
    };
    mad_tail(&mut acc[done..n], &v[done..n], s);
}

/// The scalar twin of [`mad`] (a SIMD build does a head of it and leaves the rest here).
#[inline]
pub(crate) fn mad_tail(acc: &mut [f32], v: &[f16], s: f32) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a = round16(x.to_f32().mul_add(s, *a));
    }
}

/// `acc[i] = round16(acc[i] · s)`.
#[inline]
pub fn scale(acc: &mut [f32], s: f32) {
    scale_with(Kernels::chosen(), acc, s)
}

/// [`scale`] with the `kernels` given.
#[inline]
fn scale_with(kernels: Kernels, acc: &mut [f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    let done = crate::arch::x86_64::avx512::f16::scale(kernels, acc, s);
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = kernels;
        0
    };
    scale_tail(&mut acc[done..], s);
}

/// The scalar twin of [`scale`] (a SIMD build does a head of it and leaves the rest here).
#[inline]
pub(crate) fn scale_tail(acc: &mut [f32], s: f32) {
    for a in acc {
        *a = round16(*a * s);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32s(x: &[f16]) -> Vec<f32> {
        x.iter().map(|v| v.to_f32()).collect()
    }

    /// The dot product the plain way, in f64: the order-exact one must stay within f32
    /// rounding of it.
    fn dot_f64(k: &[f16], q: &[f16]) -> f64 {
        k.iter()
            .zip(q)
            .map(|(a, b)| f64::from(a.to_f32()) * f64::from(b.to_f32()))
            .sum()
    }

    proptest! {
        #[test]
        fn dot_is_the_dot_product(
            vals in proptest::collection::vec((-4f32..4.0, -4f32..4.0), 1..300)
        ) {
            let k: Vec<f16> = vals.iter().map(|v| f16::from_f32(v.0)).collect();
            let q: Vec<f16> = vals.iter().map(|v| f16::from_f32(v.1)).collect();
            let want = dot_f64(&k, &q);
            let mag: f64 = k.iter().zip(&q)
                .map(|(a, b)| f64::from(a.to_f32() * b.to_f32()).abs()).sum();
            let got = f64::from(dot(&k, &f32s(&q)));
            prop_assert!((got - want).abs() <= mag * 1e-6 + 1e-9, "{got} vs {want}");
        }
    }

    #[test]
    fn dot_sums_in_ggml_order() {
        // Lane 0 of accumulator 0 holds a large value; lane 8 of accumulator 2 its negation,
        // and lane 4 a small one: GGML adds accumulators 0 and 2 first (cancelling exactly),
        // so the small value survives, which a left-to-right sum would lose.
        let mut k = vec![f16::ZERO; 64];
        let q = vec![f16::ONE; 64];
        k[0] = f16::from_f32(2048.0);
        k[32] = f16::from_f32(-2048.0);
        k[4] = f16::from_f32(0.000_122_070_31);
        let q = f32s(&q);
        assert_eq!(dot(&k, &q), 0.000_122_070_31);
        let left_to_right = f32s(&k).iter().fold(0f32, |s, x| s + x);
        assert_ne!(left_to_right, dot(&k, &q));
    }

    /// `n` f16 values in `[-mag, mag)` from a generator seeded with `seed`.
    pub(crate) fn halves(seed: u64, n: usize, mag: f32) -> Vec<f16> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                f16::from_f32(((s >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * mag)
            })
            .collect()
    }

    proptest! {
        /// The kernels in use and the scalar twins return the same bits.
        #[test]
        fn simd_and_scalar_twins_agree(
            seed in any::<u64>(),
            n in 0usize..300,
            s in -4f32..4.0,
            mag in prop_oneof![Just(1e-3f32), Just(1.0f32), Just(300.0f32), Just(6e4f32)],
        ) {
            let k = halves(seed, n, mag);
            let q: Vec<f32> = halves(seed ^ 7, n, 2.0).iter().map(|x| x.to_f32()).collect();
            let full = n - n % DOT_STEP;
            let want = {
                let mut sum = f64::from(reduce16(&dot_steps(&k[..full], &q[..full])));
                for (k, q) in k[full..].iter().zip(&q[full..]) {
                    sum += f64::from(k.to_f32() * q);
                }
                sum as f32
            };
            prop_assert_eq!(dot(&k, &q).to_bits(), want.to_bits());
            let acc0: Vec<f32> = halves(seed ^ 9, n, mag).iter().map(|x| x.to_f32()).collect();
            let mut got = acc0.clone();
            mad(&mut got, &k, s);
            let want: Vec<u32> = acc0
                .iter()
                .zip(&k)
                .map(|(a, x)| round16(x.to_f32().mul_add(s, *a)).to_bits())
                .collect();
            prop_assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
            let mut got = acc0.clone();
            scale(&mut got, s);
            let want: Vec<u32> = acc0.iter().map(|a| round16(a * s).to_bits()).collect();
            prop_assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        }
    }
}
