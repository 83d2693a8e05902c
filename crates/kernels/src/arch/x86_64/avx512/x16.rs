//! The AVX-512 VNNI builds of [`crate::quant::dots_q4k_x16`],
//! [`crate::quant::dots_q4_0_x16`], [`crate::quant::dots_q5k_x16`] and
//! [`crate::quant::dots_q6k_x16`]: sixteen interleaved weight rows, one per 32-bit lane,
//! times up to four activation rows.
//!
//! `Q4_K`: per super-block and 64-value group, each of its eight 512-bit quant registers gives two
//! (low and high nibbles: sub-blocks `2g` and `2g + 1`), and `vpdpbusd` adds their products
//! with four activation bytes broadcast to every lane into one i32 per weight row: no
//! horizontal sums. The sub-block scales are then applied per lane (`vpmulld`), the mins'
//! terms come from one `vpmaddwd` of each row's pair of mins against the pair of activation
//! sums, and each group (prompt order) or super-block (one-row order) is fused into the
//! sixteen lanes' accumulators as in the scalar twins.
//!
//! `Q4_0`: per block, four quant registers give eight `vpdpbusd` (unsigned nibbles times
//! activation bytes, in two chains); `8 · Σa` off each lane makes the exact integer of
//! `(q - 8)·a`, fused into the lane's accumulator with `d_w · d_a`.
//!
//! `Q5_K` and `Q6_K` (prompts, llama.cpp's tiled order): the quants come already widened to
//! bytes (`Q6_K`'s as `q + 32`), so each register feeds `vpdpbusd` with no unpacking; the
//! sub-block scales are applied per lane (`vpmulld`; `Q6_K`'s are signed, one per 16 values),
//! `Q5_K`'s mins and `Q6_K`'s `32·Σ scale·Σa` come from `vpmaddwd` of scale or min pairs
//! against activation-sum pairs, and each super-block is fused into the lanes' accumulators
//! as in the scalar twins.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::quant::blocks::ActBlock;
use crate::quant::interleaved::{BlockQ4Kx16, BlockQ4_0x16, BlockQ5Kx16, BlockQ6Kx16, X16};
use crate::quant::kquant::{ActBlockK, BlockQ5K, BlockQ6K};
use crate::quant::MAX_TILE;
use crate::simd::{Kernels, Simd};

/// [`crate::quant::dots_q4_0_x16`] under [`Simd::Avx512Vnni`] (shapes already checked).
pub(crate) fn dots_q4_0(
    kernels: Kernels,
    w: &[BlockQ4_0x16],
    rows: &[&[ActBlock]],
    out: &mut [[f32; MAX_TILE]],
) {
    assert_eq!(kernels.simd(), Simd::Avx512Vnni);
    // SAFETY: the `Kernels` token proves the CPU has AVX-512 F/VL/DQ/BW/VNNI, AVX2, FMA and
    // F16C; the caller checked that every row holds at least `w.len()` blocks.
    x16_rows!(rows, out, |a| unsafe { q4_0_x16(w, a) });
}

/// The `Q4_0` group `w` (its `kb` blocks) times `R` activation rows: result `r`, lane `j` is
/// weight row `j` · activation row `r`, in llama.cpp's repacked order.
///
/// # Safety
/// As [`q4k_x16`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
unsafe fn q4_0_x16<const R: usize>(w: &[BlockQ4_0x16], a: [&[ActBlock]; R]) -> [[f32; X16]; R] {
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    for (i, b) in w.iter().enumerate() {
        // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
        let xb: [&ActBlock; R] = std::array::from_fn(|r| unsafe { a[r].get_unchecked(i) });
        // SAFETY: reads the 16 f16 (32 bytes) of `b.d`.
        let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(b.d.as_ptr().cast()) });
        let mut lo = [_mm512_setzero_si512(); R];
        let mut hi = [_mm512_setzero_si512(); R];
        for t in 0..4 {
            // SAFETY: the 64 bytes of `b.qs[t]`.
            let v = unsafe { _mm512_loadu_si512(b.qs[t].as_ptr().cast()) };
            let wl = _mm512_and_si512(v, m4);
            let wh = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            for r in 0..R {
                let q = xb[r].qs.as_ptr();
                // SAFETY: bytes `4t..4t + 4` and `16 + 4t..16 + 4t + 4` of the 32 of `qs`
                // (`t < 4`).
                let (xl, xh) = unsafe { (broadcast4(q.add(4 * t)), broadcast4(q.add(16 + 4 * t))) };
                lo[r] = _mm512_dpbusd_epi32(lo[r], wl, xl);
                hi[r] = _mm512_dpbusd_epi32(hi[r], wh, xh);
            }
        }
        for r in 0..R {
            let sumi = _mm512_sub_epi32(
                _mm512_add_epi32(lo[r], hi[r]),
                _mm512_set1_epi32(8 * xb[r].sum),
            );
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(xb[r].d));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), scale, acc[r]);
        }
    }
    let mut out = [[0f32; X16]; R];
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: writes the 16 floats of `o`.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
    }
    out
}

/// [`crate::quant::dots_q4k_x16`] under [`Simd::Avx512Vnni`] (shapes already checked).
pub(crate) fn dots_q4k(
    kernels: Kernels,
    w: &[BlockQ4Kx16],
    rows: &[&[ActBlockK]],
    grouped: bool,
    out: &mut [[f32; MAX_TILE]],
) {
    assert_eq!(kernels.simd(), Simd::Avx512Vnni);
    // SAFETY: the `Kernels` token proves the CPU has AVX-512 F/VL/DQ/BW/VNNI, AVX2, FMA and
    // F16C; the caller checked that every row holds at least `w.len()` blocks.
    x16_rows!(rows, out, |a| unsafe { q4k_x16_in(w, a, grouped) });
}

/// [`q4k_x16`] in the prompt order when `grouped`, else the one-row order.
///
/// # Safety
/// As [`q4k_x16`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
unsafe fn q4k_x16_in<const R: usize>(
    w: &[BlockQ4Kx16],
    a: [&[ActBlockK]; R],
    grouped: bool,
) -> [[f32; X16]; R] {
    // SAFETY: the caller's contract is `q4k_x16`'s.
    unsafe {
        if grouped {
            q4k_x16::<R, true>(w, a)
        } else {
            q4k_x16::<R, false>(w, a)
        }
    }
}

/// Four activation bytes at `p`, as one i32 broadcast to every lane.
///
/// # Safety
/// `p` is valid for reads of 4 bytes (no alignment needed).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn broadcast4(p: *const i8) -> __m512i {
    // SAFETY: the caller's contract; the read is unaligned.
    _mm512_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

/// Sub-blocks `2g` and `2g + 1` of a `Q4_K`/`Q5_K` group: their scales widened to one i32
/// per row, and their mins as the low and high words of one i32 per row.
#[inline]
#[target_feature(enable = "avx512f")]
fn group_scales(
    scales: &[[u8; X16]; 8],
    mins: &[[u8; X16]; 8],
    g: usize,
) -> (__m512i, __m512i, __m512i) {
    let mn = _mm512_or_si512(
        widen16(&mins[2 * g]),
        _mm512_slli_epi32(widen16(&mins[2 * g + 1]), 16),
    );
    (widen16(&scales[2 * g]), widen16(&scales[2 * g + 1]), mn)
}

/// A 64-value group's exact sums per row: `Σ scale·q·a` from the chunk sums `lo`, `hi` (sub-
/// blocks `2g`, `2g + 1`) and [`group_scales`], and `Σ min·Σa` from the activation row's
/// `bsums` (its sub-block pairs' sums as the low and high words of one i32, by `vpmaddwd`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn group_sums(
    (lo, hi): (__m512i, __m512i),
    (sc_lo, sc_hi, mn): (__m512i, __m512i, __m512i),
    bs: &[i16; 16],
    g: usize,
) -> (__m512i, __m512i) {
    let s = _mm512_add_epi32(_mm512_mullo_epi32(lo, sc_lo), _mm512_mullo_epi32(hi, sc_hi));
    let p0 = bs[4 * g] as i32 + bs[4 * g + 1] as i32;
    let p1 = bs[4 * g + 2] as i32 + bs[4 * g + 3] as i32;
    let m = _mm512_madd_epi16(mn, _mm512_set1_epi32((p0 & 0xFFFF) | (p1 << 16)));
    (s, m)
}

/// Sixteen bytes, each widened to an i32 lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn widen16(p: &[u8; X16]) -> __m512i {
    // SAFETY: reads the 16 bytes of `p`.
    _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p.as_ptr().cast()) })
}

/// The group `w` (its `kb` blocks) times `R` activation rows: result `r`, lane `j` is weight
/// row `j` · activation row `r`, in the prompt order when `GROUPED`.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C and AVX-512 F, VL, DQ, BW and VNNI; every `a[r]` has at
/// least `w.len()` blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
unsafe fn q4k_x16<const R: usize, const GROUPED: bool>(
    w: &[BlockQ4Kx16],
    a: [&[ActBlockK]; R],
) -> [[f32; X16]; R] {
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    let mut acc_min = [_mm512_setzero_ps(); R];
    for (i, b) in w.iter().enumerate() {
        // No software prefetch: a group's blocks are one linear stream, which the hardware
        // prefetchers follow; prefetching each line 4-16 KiB ahead made a 0.5 GB matrix
        // stream from DRAM at 11-12 GB/s on one thread instead of 20-21.
        // SAFETY: reads the 16 floats of `b.d` and of `b.dmin`.
        let (d, dmin) = unsafe {
            (
                _mm512_loadu_ps(b.d.as_ptr()),
                _mm512_loadu_ps(b.dmin.as_ptr()),
            )
        };
        // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
        let xb: [&ActBlockK; R] = std::array::from_fn(|r| unsafe { a[r].get_unchecked(i) });
        let mut isum = [_mm512_setzero_si512(); R];
        let mut msum = [_mm512_setzero_si512(); R];
        for g in 0..4 {
            let (sc_lo, sc_hi, mn) = group_scales(&b.scales, &b.mins, g);
            let mut lo = [_mm512_setzero_si512(); R];
            let mut hi = [_mm512_setzero_si512(); R];
            for l in 0..8 {
                let t = 8 * g + l;
                // SAFETY: the 64 bytes of `b.qs[t]` (64-byte aligned: the struct is).
                let v = unsafe { _mm512_load_si512(b.qs[t].as_ptr().cast()) };
                let wl = _mm512_and_si512(v, m4);
                let wh = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                for r in 0..R {
                    let q = xb[r].qs.as_ptr();
                    // SAFETY: bytes `64g + 4l .. + 4` and `64g + 32 + 4l .. + 4` of the 256
                    // of `qs` (`g < 4`, `l < 8`).
                    let (xl, xh) = unsafe {
                        (
                            broadcast4(q.add(64 * g + 4 * l)),
                            broadcast4(q.add(64 * g + 32 + 4 * l)),
                        )
                    };
                    lo[r] = _mm512_dpbusd_epi32(lo[r], wl, xl);
                    hi[r] = _mm512_dpbusd_epi32(hi[r], wh, xh);
                }
            }
            for r in 0..R {
                let (s, m) = group_sums((lo[r], hi[r]), (sc_lo, sc_hi, mn), &xb[r].bsums, g);
                if GROUPED {
                    let xd = _mm512_set1_ps(xb[r].d);
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, xd), acc[r]);
                    acc_min[r] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(m), _mm512_mul_ps(dmin, xd), acc_min[r]);
                } else {
                    isum[r] = _mm512_add_epi32(isum[r], s);
                    msum[r] = _mm512_add_epi32(msum[r], m);
                }
            }
        }
        if !GROUPED {
            for r in 0..R {
                let xd = _mm512_set1_ps(xb[r].d);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(d, xd), acc[r]);
                acc_min[r] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(msum[r]),
                    _mm512_mul_ps(dmin, xd),
                    acc_min[r],
                );
            }
        }
    }
    let mut out = [[0f32; X16]; R];
    for (o, (a, m)) in out.iter_mut().zip(acc.iter().zip(&acc_min)) {
        // SAFETY: writes the 16 floats of `o`.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_sub_ps(*a, *m)) };
    }
    out
}

/// [`crate::quant::dots_q5k_x16`] under [`Simd::Avx512Vnni`] (shapes already checked).
pub(crate) fn dots_q5k(
    kernels: Kernels,
    w: &[BlockQ5Kx16],
    rows: &[&[ActBlockK]],
    out: &mut [[f32; MAX_TILE]],
) {
    assert_eq!(kernels.simd(), Simd::Avx512Vnni);
    // SAFETY: the `Kernels` token proves the CPU has AVX-512 F/VL/DQ/BW/VNNI, AVX2, FMA and
    // F16C; the caller checked that every row holds at least `w.len()` blocks.
    x16_rows!(rows, out, |a| unsafe { q5k_x16(w, a) });
}

/// The `Q5_K` group `w` (quants widened to bytes) times `R` activation rows in llama.cpp's
/// tiled order: result `r`, lane `j` is weight row `j` · activation row `r`. Per super-block
/// and row the exact `s1 = Σ scale·q·a` (chunk sums by `vpdpbusd`, times the chunk's scale
/// per lane) and `s2 = Σ min·Σa` (pairs of mins by `vpmaddwd`), then
/// `fma(fma(−dmin, s2, s1·d), d_a, acc)` per lane, as [`crate::quant::kquant::dot_q5k_tiled`].
///
/// # Safety
/// As [`q4k_x16`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
unsafe fn q5k_x16<const R: usize>(w: &[BlockQ5Kx16], a: [&[ActBlockK]; R]) -> [[f32; X16]; R] {
    let mut acc = [_mm512_setzero_ps(); R];
    for (i, b) in w.iter().enumerate() {
        // SAFETY: reads the 16 floats of `b.d` and of `b.dmin`.
        let (d, dmin) = unsafe {
            (
                _mm512_loadu_ps(b.d.as_ptr()),
                _mm512_loadu_ps(b.dmin.as_ptr()),
            )
        };
        // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
        let xb: [&ActBlockK; R] = std::array::from_fn(|r| unsafe { a[r].get_unchecked(i) });
        let mut s1 = [_mm512_setzero_si512(); R];
        let mut s2 = [_mm512_setzero_si512(); R];
        for g in 0..4 {
            let (sc_lo, sc_hi, mn) = group_scales(&b.scales, &b.mins, g);
            let mut lo = [_mm512_setzero_si512(); R];
            let mut hi = [_mm512_setzero_si512(); R];
            for l in 0..8 {
                let t = 8 * g + l;
                // SAFETY: the 64 bytes of `b.q[2t]` and `b.q[2t + 1]` (64-byte aligned: the
                // struct is).
                let (wl, wh) = unsafe {
                    (
                        _mm512_load_si512(b.q[2 * t].as_ptr().cast()),
                        _mm512_load_si512(b.q[2 * t + 1].as_ptr().cast()),
                    )
                };
                for r in 0..R {
                    let q = xb[r].qs.as_ptr();
                    // SAFETY: bytes `64g + 4l .. + 4` and `64g + 32 + 4l .. + 4` of the 256
                    // of `qs` (`g < 4`, `l < 8`).
                    let (xl, xh) = unsafe {
                        (
                            broadcast4(q.add(64 * g + 4 * l)),
                            broadcast4(q.add(64 * g + 32 + 4 * l)),
                        )
                    };
                    lo[r] = _mm512_dpbusd_epi32(lo[r], wl, xl);
                    hi[r] = _mm512_dpbusd_epi32(hi[r], wh, xh);
                }
            }
            for r in 0..R {
                let (s, m) = group_sums((lo[r], hi[r]), (sc_lo, sc_hi, mn), &xb[r].bsums, g);
                s1[r] = _mm512_add_epi32(s1[r], s);
                s2[r] = _mm512_add_epi32(s2[r], m);
            }
        }
        let neg_dmin = _mm512_sub_ps(_mm512_setzero_ps(), dmin);
        for r in 0..R {
            let mins = _mm512_cvtepi32_ps(s2[r]);
            let r1 = _mm512_fmadd_ps(neg_dmin, mins, _mm512_mul_ps(_mm512_cvtepi32_ps(s1[r]), d));
            acc[r] = _mm512_fmadd_ps(r1, _mm512_set1_ps(xb[r].d), acc[r]);
        }
    }
    let mut out = [[0f32; X16]; R];
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: writes the 16 floats of `o`.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
    }
    out
}

/// [`crate::quant::dots_q6k_x16`] under [`Simd::Avx512Vnni`] (shapes already checked).
pub(crate) fn dots_q6k(
    kernels: Kernels,
    w: &[BlockQ6Kx16],
    rows: &[&[ActBlockK]],
    out: &mut [[f32; MAX_TILE]],
) {
    assert_eq!(kernels.simd(), Simd::Avx512Vnni);
    // SAFETY: the `Kernels` token proves the CPU has AVX-512 F/VL/DQ/BW/VNNI, AVX2, FMA and
    // F16C; the caller checked that every row holds at least `w.len()` blocks.
    x16_rows!(rows, out, |a| unsafe { q6k_x16(w, a) });
}

/// Sixteen signed bytes, each widened to an i32 lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn widen16_signed(p: &[i8; X16]) -> __m512i {
    // SAFETY: reads the 16 bytes of `p`.
    _mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(p.as_ptr().cast()) })
}

/// The `Q6_K` group `w` (quants widened to `q + 32`) times `R` activation rows in llama.cpp's
/// tiled order: result `r`, lane `j` is weight row `j` · activation row `r`. Per super-block
/// and row the exact `Σ scale·(q + 32)·a` (sub-block sums by `vpdpbusd`, times the signed
/// scale per lane) less `32·Σ scale·Σa` (pairs of scales against pairs of activation sums by
/// `vpmaddwd`), then `fma(s·d, d_a, acc)` per lane, as
/// [`crate::quant::kquant::dot_q6k_tiled`].
///
/// # Safety
/// As [`q4k_x16`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
unsafe fn q6k_x16<const R: usize>(w: &[BlockQ6Kx16], a: [&[ActBlockK]; R]) -> [[f32; X16]; R] {
    let mut acc = [_mm512_setzero_ps(); R];
    for (i, b) in w.iter().enumerate() {
        // SAFETY: reads the 16 floats of `b.d`.
        let d = unsafe { _mm512_loadu_ps(b.d.as_ptr()) };
        // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
        let xb: [&ActBlockK; R] = std::array::from_fn(|r| unsafe { a[r].get_unchecked(i) });
        let mut sum = [_mm512_setzero_si512(); R];
        let mut offset = [_mm512_setzero_si512(); R];
        for c in 0..8 {
            let (sc_a, sc_b) = (
                widen16_signed(&b.scales[2 * c]),
                widen16_signed(&b.scales[2 * c + 1]),
            );
            // The two scales as the low and high words of each lane.
            let sc_pair = _mm512_or_si512(
                _mm512_and_si512(sc_a, _mm512_set1_epi32(0xFFFF)),
                _mm512_slli_epi32(sc_b, 16),
            );
            let mut sa = [_mm512_setzero_si512(); R];
            let mut sb = [_mm512_setzero_si512(); R];
            for l in 0..8 {
                // SAFETY: the 64 bytes of `b.q[8c + l]` (64-byte aligned: the struct is).
                let v = unsafe { _mm512_load_si512(b.q[8 * c + l].as_ptr().cast()) };
                for r in 0..R {
                    // SAFETY: bytes `32c + 4l .. + 4` of the 256 of `qs` (`c < 8`, `l < 8`).
                    let x = unsafe { broadcast4(xb[r].qs.as_ptr().add(32 * c + 4 * l)) };
                    if l < 4 {
                        sa[r] = _mm512_dpbusd_epi32(sa[r], v, x);
                    } else {
                        sb[r] = _mm512_dpbusd_epi32(sb[r], v, x);
                    }
                }
            }
            for r in 0..R {
                let s = _mm512_add_epi32(
                    _mm512_mullo_epi32(sa[r], sc_a),
                    _mm512_mullo_epi32(sb[r], sc_b),
                );
                sum[r] = _mm512_add_epi32(sum[r], s);
                let bs = &xb[r].bsums;
                let pair = (bs[2 * c] as u16 as i32) | ((bs[2 * c + 1] as i32) << 16);
                let o = _mm512_madd_epi16(sc_pair, _mm512_set1_epi32(pair));
                offset[r] = _mm512_add_epi32(offset[r], o);
            }
        }
        for r in 0..R {
            let s = _mm512_sub_epi32(sum[r], _mm512_slli_epi32(offset[r], 5));
            let sd = _mm512_mul_ps(_mm512_cvtepi32_ps(s), d);
            acc[r] = _mm512_fmadd_ps(sd, _mm512_set1_ps(xb[r].d), acc[r]);
        }
    }
    let mut out = [[0f32; X16]; R];
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: writes the 16 floats of `o`.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
    }
    out
}

/// The quants, scales and mins of [`BlockQ5Kx16::fill`] under [`Simd::Avx512Vnni`]: the
/// same bytes as the portable loop. Each row's `qs` and `qh` are read as 32-bit words and
/// transposed sixteen rows at a time (the word of row `j` into lane `j`), so every register
/// of the group's layout is a few shifts and masks of two transposed words, with no per-row
/// stores; the scales and mins are a transpose of bytes.
pub(crate) fn fill_q5k(kernels: Kernels, out: &mut BlockQ5Kx16, rows: [&BlockQ5K; X16]) {
    assert_eq!(kernels.simd(), Simd::Avx512Vnni);
    // SAFETY: the `Kernels` token proves the CPU has AVX-512 F and BW.
    unsafe { q5k_fill(out, &rows) }
}

/// [`fill_q5k`]'s body. Loops rather than closures keep every step inlined.
#[target_feature(enable = "avx512f,avx512bw")]
fn q5k_fill(out: &mut BlockQ5Kx16, rows: &[&BlockQ5K; X16]) {
    let mut sm = [_mm_setzero_si128(); X16];
    let (mut qs_lo, mut qs_hi, mut qh) = (
        [_mm512_setzero_si512(); X16],
        [_mm512_setzero_si512(); X16],
        [_mm512_setzero_si512(); X16],
    );
    for (j, b) in rows.iter().enumerate() {
        sm[j] = _mm_set_epi64x(i64::from_le_bytes(b.mins), i64::from_le_bytes(b.scales));
        // SAFETY: bytes 0..64 and 64..128 of the row's 128 `qs`, and its 32 `qh`.
        unsafe {
            qs_lo[j] = load64(b.qs.as_ptr());
            qs_hi[j] = load64(b.qs.as_ptr().add(64));
            qh[j] = _mm512_zextsi256_si512(_mm256_loadu_si256(b.qh.as_ptr().cast()));
        }
    }
    let t = transpose_bytes16(&sm);
    // SAFETY: each store writes four of the eight rows of 16 bytes of `scales` or `mins`.
    unsafe {
        store64(out.scales.as_mut_ptr().cast(), t[0]);
        store64(out.scales[4..].as_mut_ptr().cast(), t[1]);
        store64(out.mins.as_mut_ptr().cast(), t[2]);
        store64(out.mins[4..].as_mut_ptr().cast(), t[3]);
    }
    let (qs_lo, qs_hi, qh) = (transpose16(&qs_lo), transpose16(&qs_hi), transpose16(&qh));
    let (m4, bit4) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x10));
    for c in 0..8 {
        // Chunk `c`: the low or high nibbles of `qs` bytes `32(c/2)..`, bit `c` of `qh`.
        let low_shift = _mm_cvtsi32_si128(4 * (c as i32 % 2));
        for (l, &qh) in qh[..8].iter().enumerate() {
            let t = 8 * (c / 2) + l;
            let qs = if t < 16 { qs_lo[t] } else { qs_hi[t - 16] };
            let low = _mm512_and_si512(_mm512_srl_epi16(qs, low_shift), m4);
            let high = _mm512_and_si512(shift_bit_to(qh, c, 4), bit4);
            // SAFETY: writes the 64 bytes of one register of the layout.
            unsafe {
                store64(
                    out.q[2 * t + c % 2].as_mut_ptr(),
                    _mm512_or_si512(low, high),
                )
            };
        }
    }
}

/// The quants (`q + 32`) and scales of [`BlockQ6Kx16::fill`] under [`Simd::Avx512Vnni`],
/// as [`fill_q5k`]: the same bytes as the portable loop.
pub(crate) fn fill_q6k(kernels: Kernels, out: &mut BlockQ6Kx16, rows: [&BlockQ6K; X16]) {
    assert_eq!(kernels.simd(), Simd::Avx512Vnni);
    // SAFETY: the `Kernels` token proves the CPU has AVX-512 F and BW.
    unsafe { q6k_fill(out, &rows) }
}

/// [`fill_q6k`]'s body.
#[target_feature(enable = "avx512f,avx512bw")]
fn q6k_fill(out: &mut BlockQ6Kx16, rows: &[&BlockQ6K; X16]) {
    let mut sc = [_mm_setzero_si128(); X16];
    let (mut ql_lo, mut ql_hi, mut qh) = (
        [_mm512_setzero_si512(); X16],
        [_mm512_setzero_si512(); X16],
        [_mm512_setzero_si512(); X16],
    );
    for (j, b) in rows.iter().enumerate() {
        // SAFETY: the row's 16 `scales`, bytes 0..64 and 64..128 of its 128 `ql`, its 64 `qh`.
        unsafe {
            sc[j] = _mm_loadu_si128(b.scales.as_ptr().cast());
            ql_lo[j] = load64(b.ql.as_ptr());
            ql_hi[j] = load64(b.ql.as_ptr().add(64));
            qh[j] = load64(b.qh.as_ptr());
        }
    }
    let t = transpose_bytes16(&sc);
    for (i, t) in t.into_iter().enumerate() {
        // SAFETY: writes rows `4i..4i + 4` of the sixteen rows of 16 bytes of `scales`.
        unsafe { store64(out.scales[4 * i..].as_mut_ptr().cast(), t) };
    }
    let (ql_lo, ql_hi, qh) = (transpose16(&ql_lo), transpose16(&ql_hi), transpose16(&qh));
    let (m4, bits45) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    for c in 0..8 {
        // Chunk `c` (half `h`, quarter `t`): nibble `t / 2` of `ql` bytes
        // `64h + 32(t & 1)..`, bits `2t..2t + 2` of `qh` bytes `32h..`.
        let (h, t) = (c / 4, c % 4);
        let low_shift = _mm_cvtsi32_si128(4 * (t as i32 / 2));
        for l in 0..8 {
            let w = 8 * (t & 1) + l;
            let ql = if h == 0 { ql_lo[w] } else { ql_hi[w] };
            let low = _mm512_and_si512(_mm512_srl_epi16(ql, low_shift), m4);
            let high = _mm512_and_si512(shift_bit_to(qh[8 * h + l], 2 * t, 4), bits45);
            // SAFETY: writes the 64 bytes of one register of the layout.
            unsafe { store64(out.q[8 * c + l].as_mut_ptr(), _mm512_or_si512(low, high)) };
        }
    }
}

/// `v` shifted so that bit `from` of each byte lands on bit `to` (`from, to < 8`): a 16-bit
/// shift, whose bits crossing into the next byte land only above or below `to`'s place in
/// it, so a mask of the bits wanted keeps each byte's own.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn shift_bit_to(v: __m512i, from: usize, to: usize) -> __m512i {
    if from <= to {
        _mm512_sll_epi16(v, _mm_cvtsi32_si128((to - from) as i32))
    } else {
        _mm512_srl_epi16(v, _mm_cvtsi32_si128((from - to) as i32))
    }
}

/// Sixteen registers of sixteen 32-bit lanes, transposed: lane `j` of result `w` is lane `w`
/// of `r[j]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: &[__m512i; 16]) -> [__m512i; 16] {
    // Within each 128-bit lane `k`: `a[2p]` and `a[2p + 1]` interleave rows `2p` and
    // `2p + 1`; then `b[4q + m]` holds word `4k + m` of rows `4q..4q + 4`.
    let mut a = [_mm512_setzero_si512(); 16];
    for p in 0..8 {
        a[2 * p] = _mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
        a[2 * p + 1] = _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
    }
    let mut b = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        let (a0, a1, a2, a3) = (a[4 * q], a[4 * q + 1], a[4 * q + 2], a[4 * q + 3]);
        b[4 * q] = _mm512_unpacklo_epi64(a0, a2);
        b[4 * q + 1] = _mm512_unpackhi_epi64(a0, a2);
        b[4 * q + 2] = _mm512_unpacklo_epi64(a1, a3);
        b[4 * q + 3] = _mm512_unpackhi_epi64(a1, a3);
    }
    // Then a 4×4 transpose of 128-bit lanes for each `m`: result `4k + m` takes lane `k` of
    // `b[m]`, `b[4 + m]`, `b[8 + m]`, `b[12 + m]`.
    let mut out = [_mm512_setzero_si512(); 16];
    for m in 0..4 {
        let c0 = _mm512_shuffle_i32x4::<0x88>(b[m], b[4 + m]);
        let c1 = _mm512_shuffle_i32x4::<0xDD>(b[m], b[4 + m]);
        let c2 = _mm512_shuffle_i32x4::<0x88>(b[8 + m], b[12 + m]);
        let c3 = _mm512_shuffle_i32x4::<0xDD>(b[8 + m], b[12 + m]);
        out[m] = _mm512_shuffle_i32x4::<0x88>(c0, c2);
        out[8 + m] = _mm512_shuffle_i32x4::<0xDD>(c0, c2);
        out[4 + m] = _mm512_shuffle_i32x4::<0x88>(c1, c3);
        out[12 + m] = _mm512_shuffle_i32x4::<0xDD>(c1, c3);
    }
    out
}

/// Sixteen rows of sixteen bytes, transposed: result `i` holds rows `4i..4i + 4` of the
/// transpose, 16 bytes each (byte `j` of its row `s` is byte `4i + s` of `rows[j]`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn transpose_bytes16(rows: &[__m128i; 16]) -> [__m512i; 4] {
    let mut wide = [_mm512_setzero_si512(); 16];
    for (w, r) in wide.iter_mut().zip(rows) {
        *w = _mm512_zextsi128_si512(*r);
    }
    // Lane `j` of `t[i]`: bytes `4i..4i + 4` of row `j`.
    let t = transpose16(&wide);
    // Within each 128-bit lane (rows `4k..4k + 4`), byte `4r + s` to `4s + r`; then dword
    // `4k + s` to `4s + k`.
    let bytes = _mm512_broadcast_i32x4(_mm_setr_epi8(
        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
    ));
    let dwords = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let mut out = [_mm512_setzero_si512(); 4];
    for (o, t) in out.iter_mut().zip(t) {
        *o = _mm512_permutexvar_epi32(dwords, _mm512_shuffle_epi8(t, bytes));
    }
    out
}

/// 64 bytes at `p`, unaligned.
///
/// # Safety
/// `p` is valid for reads of 64 bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load64(p: *const u8) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe { _mm512_loadu_si512(p.cast()) }
}

/// Stores `v` as the 64 bytes at `p`, unaligned.
///
/// # Safety
/// `p` is valid for writes of 64 bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store64(p: *mut u8, v: __m512i) {
    // SAFETY: the caller's contract.
    unsafe { _mm512_storeu_si512(p.cast(), v) }
}
