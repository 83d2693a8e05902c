//! The AVX2 (+ FMA + F16C) build of [`crate::quant::dots_q4_0_x16`]: sixteen interleaved
//! `Q4_0` weight rows, eight per 256-bit register (one per 32-bit lane), times up to four
//! activation rows. Per block and half, each quant register's unsigned nibbles times four
//! activation bytes broadcast to every lane (`vpmaddubsw`, then `vpmaddwd` by ones: exact,
//! at most `2·15·127` per word), summed into one i32 per row; `8 · Σa` off each lane makes
//! the exact integer of `(q - 8)·a`, fused into the lane's accumulator with `d_w · d_a`: the
//! same integers and f32 operations as the scalar twin and the AVX-512 build.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::quant::blocks::ActBlock;
use crate::quant::interleaved::{BlockQ4_0x16, X16};
use crate::quant::MAX_TILE;
use crate::simd::{Kernels, Simd};

/// [`crate::quant::dots_q4_0_x16`] under [`Simd::Avx2`] or [`Simd::Avx512`] (shapes already
/// checked).
pub(crate) fn dots_q4_0(
    kernels: Kernels,
    w: &[BlockQ4_0x16],
    rows: &[&[ActBlock]],
    out: &mut [[f32; MAX_TILE]],
) {
    assert!(matches!(kernels.simd(), Simd::Avx2 | Simd::Avx512));
    // SAFETY: the `Kernels` token proves the CPU has AVX2, FMA and F16C; the caller checked
    // that every row holds at least `w.len()` blocks.
    x16_rows!(rows, out, |a| unsafe { q4_0_x16(w, a) });
}

/// The group `w` times `R` activation rows: result `r`, lane `j` is weight row `j` ·
/// activation row `r`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; every `a[r]` has at least `w.len()` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_x16<const R: usize>(w: &[BlockQ4_0x16], a: [&[ActBlock]; R]) -> [[f32; X16]; R] {
    let m4 = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    // Rows 0..8 of the group in `acc[0][r]`, 8..16 in `acc[1][r]`.
    let mut acc = [[_mm256_setzero_ps(); R]; 2];
    for (i, b) in w.iter().enumerate() {
        // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
        let xb: [&ActBlock; R] = std::array::from_fn(|r| unsafe { a[r].get_unchecked(i) });
        for (h, acc) in acc.iter_mut().enumerate() {
            // SAFETY: reads 8 of the 16 f16 (16 bytes) of `b.d`.
            let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.d.as_ptr().add(8 * h).cast()) });
            let mut s = [_mm256_setzero_si256(); R];
            for t in 0..4 {
                // SAFETY: bytes `32h..32h + 32` of the 64 of `b.qs[t]`.
                let v = unsafe { _mm256_loadu_si256(b.qs[t].as_ptr().add(32 * h).cast()) };
                let wl = _mm256_and_si256(v, m4);
                let wh = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                for r in 0..R {
                    let q = xb[r].qs.as_ptr();
                    // SAFETY: bytes `4t..4t + 4` and `16 + 4t..16 + 4t + 4` of the 32 of `qs`
                    // (`t < 4`), read unaligned.
                    let (xl, xh) = unsafe {
                        (
                            _mm256_set1_epi32(q.add(4 * t).cast::<i32>().read_unaligned()),
                            _mm256_set1_epi32(q.add(16 + 4 * t).cast::<i32>().read_unaligned()),
                        )
                    };
                    let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(wl, xl), ones);
                    let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(wh, xh), ones);
                    s[r] = _mm256_add_epi32(s[r], _mm256_add_epi32(pl, ph));
                }
            }
            for r in 0..R {
                let sumi = _mm256_sub_epi32(s[r], _mm256_set1_epi32(8 * xb[r].sum));
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb[r].d));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), scale, acc[r]);
            }
        }
    }
    let mut out = [[0f32; X16]; R];
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: writes the 16 floats of `o`, eight at a time.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), acc[0][r]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), acc[1][r]);
        }
    }
    out
}
