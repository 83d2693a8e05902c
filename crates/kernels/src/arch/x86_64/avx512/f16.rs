//! AVX-512 (F, with F16C and FMA) builds of the f16 vector ops ([`crate::f16`]) and of the
//! one-row attention kernel built on them ([`crate::attention::attend_row`]): sixteen values
//! per instruction, converted in registers.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use half::f16;

use crate::attention::{online_softmax, Rows, Scores};
use crate::f16::{finish_dot, DOT_STEP, LANES};
use crate::simd::{Kernels, Simd};

/// Whether `kernels` has AVX-512 F (and, with the AVX2 level under it, F16C and FMA).
#[inline]
fn avx512(kernels: Kernels) -> bool {
    matches!(kernels.simd(), Simd::Avx512 | Simd::Avx512Vnni)
}

/// The sixteen lanes of `crate::f16::dot_steps` over the whole 64-value steps of `k` and `q`
/// with AVX-512, or `None` where `kernels` lacks it.
#[inline]
pub(crate) fn dot_steps(kernels: Kernels, k: &[f16], q: &[f32]) -> Option<[f32; LANES]> {
    // SAFETY: the token proves AVX-512 F, F16C and FMA.
    avx512(kernels).then(|| unsafe { dot_steps_avx512(k, q) })
}

/// [`crate::f16::mad`] on the first multiple of sixteen values with AVX-512: how many it did
/// (0 where `kernels` lacks AVX-512).
#[inline]
pub(crate) fn mad(kernels: Kernels, acc: &mut [f32], v: &[f16], s: f32) -> usize {
    if !avx512(kernels) {
        return 0;
    }
    // SAFETY: the token proves AVX-512 F, F16C and FMA.
    unsafe { mad_avx512(acc, v, s) }
}

/// [`crate::f16::scale`] on the first multiple of sixteen values with AVX-512: how many it did
/// (0 where `kernels` lacks AVX-512).
#[inline]
pub(crate) fn scale(kernels: Kernels, acc: &mut [f32], s: f32) -> usize {
    if !avx512(kernels) {
        return 0;
    }
    // SAFETY: the token proves AVX-512 F, F16C and FMA.
    unsafe { scale_avx512(acc, s) }
}

/// [`crate::attention::attend_row`]'s online softmax with AVX-512: the sum of weights, with
/// the unnormalized sum of values in `acc`; `None` where `kernels` lacks AVX-512.
#[inline]
pub(crate) fn attend_row(
    kernels: Kernels,
    q: &[f32],
    keys: Rows<'_>,
    values: Rows<'_>,
    scores: Scores,
    acc: &mut [f32],
) -> Option<f32> {
    // SAFETY: the token proves AVX-512 F, F16C and FMA.
    avx512(kernels).then(|| unsafe { attend_row_avx512(q, keys, values, scores, acc) })
}

/// The whole row in one `#[target_feature]` function: the steps below inline into the loop.
/// Heads of 64, 128 or 256 values keep the running sum in registers ([`attend_row_in_regs`]).
#[target_feature(enable = "avx512f,f16c,fma")]
fn attend_row_avx512(
    q: &[f32],
    keys: Rows<'_>,
    values: Rows<'_>,
    scores: Scores,
    acc: &mut [f32],
) -> f32 {
    match q.len() {
        64 => return attend_row_in_regs::<4>(q, (keys, values), scores, acc),
        128 => return attend_row_in_regs::<8>(q, (keys, values), scores, acc),
        256 => return attend_row_in_regs::<16>(q, (keys, values), scores, acc),
        _ => {}
    }
    online_softmax(
        q,
        (keys, values),
        scores,
        acc,
        (
            |k: &[f16], q: &[f32]| dot_steps_avx512(k, q),
            |acc: &mut [f32], v: &[f16], s: f32| mad_avx512(acc, v, s),
            |acc: &mut [f32], s: f32| scale_avx512(acc, s),
        ),
    )
}

/// [`online_softmax`] for a head of `16 N` values (`N` a multiple of four: whole dot steps,
/// no tails), the running sum in `N` registers from the first position to the last instead
/// of in `acc`: each position's multiply-add then waits on the previous one's rounding, not
/// on its store and reload (the 1B shape's decode attention, 64-value heads: ~30 cycles per
/// position and head with the sum in memory). The same operations in the same order, so
/// the same bits.
#[inline]
#[target_feature(enable = "avx512f,f16c,fma")]
fn attend_row_in_regs<const N: usize>(
    q: &[f32],
    (keys, values): (Rows<'_>, Rows<'_>),
    scores: Scores,
    acc: &mut [f32],
) -> f32 {
    let d = N * LANES;
    debug_assert!(N.is_multiple_of(DOT_STEP / LANES) && q.len() == d && acc.len() == d);
    // Every row of `values` has one width: the first row checks them all.
    assert!(
        values.count() == 0 || values.row(0).len() >= d,
        "value rows of {} values for a head of {d}",
        values.row(0).len()
    );
    let mut sum_v = [_mm512_setzero_ps(); N];
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
    for j in 0..keys.count() {
        let k = keys.row(j);
        let lanes = dot_steps_avx512(k, q);
        let score = scores.of(finish_dot(&lanes, &[], &[]));
        let (ms, vs) = if score > max {
            let ms = (max - score).exp();
            max = score;
            let s = _mm512_set1_ps(ms);
            for a in sum_v.iter_mut() {
                *a = round(_mm512_mul_ps(*a, s));
            }
            (ms, 1.0)
        } else {
            (1.0, (score - max).exp())
        };
        let v = values.row(j);
        let s = _mm512_set1_ps(vs);
        for (i, a) in sum_v.iter_mut().enumerate() {
            // SAFETY: `16 i + 16 <= d <= v.len()` (asserted for every row before the loop).
            *a = round(_mm512_fmadd_ps(unsafe { load16(v, i * LANES) }, s, *a));
        }
        sum = sum.mul_add(ms, vs);
    }
    for (out, a) in acc.chunks_exact_mut(LANES).zip(sum_v) {
        // SAFETY: writes the sixteen floats of `out`, borrowed mutably.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), a) };
    }
    sum
}

/// Sixteen f16 values from `v` at `i` as f32.
///
/// # Safety
/// `i + 16 <= v.len()`.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn load16(v: &[f16], i: usize) -> __m512 {
    // SAFETY: the 32 bytes of `v[i..i + 16]`, inside `v` (the contract); no alignment needed.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(v.as_ptr().add(i).cast()) })
}

/// Every lane rounded to f16 and back.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn round(x: __m512) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// `crate::f16::dot_steps` over the whole 64-value steps of the shorter of `k` and `q`.
#[inline]
#[target_feature(enable = "avx512f,f16c,fma")]
fn dot_steps_avx512(k: &[f16], q: &[f32]) -> [f32; LANES] {
    let n = k.len().min(q.len());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + DOT_STEP <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let at = i + j * LANES;
            // SAFETY: `at + 16 <= i + 64 <= n`, inside both `k` and `q`.
            let (kv, qv) = unsafe { (load16(k, at), _mm512_loadu_ps(q.as_ptr().add(at))) };
            *a = _mm512_fmadd_ps(kv, qv, *a);
        }
        i += DOT_STEP;
    }
    let r = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
    let mut out = [0f32; LANES];
    // SAFETY: writes the 16 floats of `out`.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), r) };
    out
}

/// [`crate::f16::mad`] on the first multiple of sixteen values of the shorter of `acc` and
/// `v`: how many it did.
#[inline]
#[target_feature(enable = "avx512f,f16c,fma")]
fn mad_avx512(acc: &mut [f32], v: &[f16], s: f32) -> usize {
    let n = acc.len().min(v.len()) / LANES * LANES;
    let s = _mm512_set1_ps(s);
    let mut i = 0;
    while i + LANES <= n {
        // SAFETY: `i + 16 <= n`, inside both `acc` (borrowed mutably) and `v`.
        unsafe {
            let p = acc.as_mut_ptr().add(i);
            let x = _mm512_fmadd_ps(load16(v, i), s, _mm512_loadu_ps(p));
            _mm512_storeu_ps(p, round(x));
        }
        i += LANES;
    }
    n
}

/// [`crate::f16::scale`] on the first multiple of sixteen values of `acc`: how many it did.
#[inline]
#[target_feature(enable = "avx512f,f16c,fma")]
fn scale_avx512(acc: &mut [f32], s: f32) -> usize {
    let n = acc.len() / LANES * LANES;
    let s = _mm512_set1_ps(s);
    let mut i = 0;
    while i + LANES <= n {
        // SAFETY: `i + 16 <= n`, inside `acc` (borrowed mutably).
        unsafe {
            let p = acc.as_mut_ptr().add(i);
            _mm512_storeu_ps(p, round(_mm512_mul_ps(_mm512_loadu_ps(p), s)));
        }
        i += LANES;
    }
    n
}
