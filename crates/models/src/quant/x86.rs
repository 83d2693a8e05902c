//! AVX2 dot products of quantized weight rows with up to four 8-bit activation rows at once:
//! each weight block is unpacked once and multiplied into every row, so a batch (or a prefill
//! tile) reads the weights once per four rows.
//!
//! The integer products are exact (`maddubs` of unsigned weights by signed activations never
//! saturates for these formats); only the f32 accumulation order differs from the scalar
//! twins in `scalar.rs`. Callers check `avx2`, `fma` and `f16c` at run time and that every
//! activation row has at least as many blocks as the weight row.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::blocks::{ActBlock, BlockQ4_1, BlockQ5_0, BlockQ8_0};

#[inline(always)]
unsafe fn f16(bits: u16) -> f32 {
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// The 32 nibbles of a 16-byte block: low nibbles in bytes 0..16, high ones in 16..32.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    unsafe {
        let q = _mm_loadu_si128(qs.as_ptr().cast());
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(q, m);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
        _mm256_set_m128i(hi, lo)
    }
}

/// Byte `j` is `0x10` where bit `j` of `qh` is set, else 0.
#[inline(always)]
unsafe fn fifth_bits(qh: u32) -> __m256i {
    unsafe {
        let q = _mm256_set1_epi32(qh as i32);
        // Byte j takes byte j / 8 of qh (the shuffle works inside each 128-bit lane).
        let pick = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(q, pick);
        let select = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, select), select);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// Unsigned bytes times signed bytes, summed into eight f32 lanes.
#[inline(always)]
unsafe fn mul_sum(u: __m256i, y: __m256i) -> __m256 {
    unsafe {
        let p16 = _mm256_maddubs_epi16(u, y);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }
}

#[inline(always)]
unsafe fn load(qs: &[i8; 32]) -> __m256i {
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// `Q4_1` weights · `R` activation rows.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; every `a[r]` has at least `w.len()` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_1<const R: usize>(w: &[BlockQ4_1], a: [&[ActBlock]; R]) -> [f32; R] {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut ms = [0f32; R];
        for (i, b) in w.iter().enumerate() {
            let u = nibbles(&b.qs);
            let d = f16(b.d);
            let m = f16(b.m);
            for r in 0..R {
                let x = a[r].get_unchecked(i);
                let p = mul_sum(u, load(&x.qs));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), p, acc[r]);
                ms[r] += m * x.s;
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]) + ms[r];
        }
        out
    }
}

/// `Q5_0` weights · `R` activation rows. The weights are made signed (`q - 16`) before the
/// products, so each block's integer sum is exact: taking `q` unsigned and subtracting
/// `16 Σa` afterwards in f32 cancels catastrophically on Gemma's very large activations.
///
/// # Safety
/// As [`q4_1`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q5_0<const R: usize>(w: &[BlockQ5_0], a: [&[ActBlock]; R]) -> [f32; R] {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for (i, b) in w.iter().enumerate() {
            let u = _mm256_or_si256(nibbles(&b.qs), fifth_bits(b.qh));
            let q = _mm256_sub_epi8(u, _mm256_set1_epi8(16));
            let abs = _mm256_sign_epi8(q, q);
            let d = f16(b.d);
            for r in 0..R {
                let x = a[r].get_unchecked(i);
                let p = mul_sum(abs, _mm256_sign_epi8(load(&x.qs), q));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), p, acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
        out
    }
}

/// `Q8_0` weights · `R` activation rows (signs moved onto the activations so `maddubs`
/// sees unsigned weights).
///
/// # Safety
/// As [`q4_1`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_0<const R: usize>(w: &[BlockQ8_0], a: [&[ActBlock]; R]) -> [f32; R] {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for (i, b) in w.iter().enumerate() {
            let q = load(&b.qs);
            let u = _mm256_sign_epi8(q, q);
            let d = f16(b.d);
            for r in 0..R {
                let x = a[r].get_unchecked(i);
                let p = mul_sum(u, _mm256_sign_epi8(load(&x.qs), q));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), p, acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
        out
    }
}
