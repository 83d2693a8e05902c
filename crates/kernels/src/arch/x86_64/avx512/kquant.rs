//! AVX-512 (BW, VNNI) builds of row-major K-quant loops: `Q4_K`'s prompt order (grouped, four
//! rows, llama.cpp's repacked gemm) and `Q6_K`'s one-row order for one activation row
//! (decoding). The same exact integers and per-row f32 operations as the AVX2 builds in
//! [`super::super::avx2::kquant`], so the same bits. (`Q4_K`'s decoding, and the tiled prompt
//! order of `Q5_K` and `Q6_K` with a multiple of 16 rows, run interleaved: [`super::x16`].)
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::arch::x86_64::avx2::kquant::{hsum_f32, load, prefetch, rows_q4k_grouped, rows_q6k};
#[cfg(doc)]
use crate::arch::x86_64::avx2::kquant::{q4k_grouped, q6k};
use crate::quant::kquant::{ActBlockK, BlockQ4K, BlockQ6K};

/// [`rows_q4k_grouped`] with AVX-512 BW and VNNI for a full tile of four activation rows
/// (the only tile the grouped order takes): each 64-value group of a super-block is one
/// 512-bit register (low nibbles in the lower half, high nibbles in the upper), its byte
/// products summed into i16 pairs and then, times the sub-block scales, into i32 lanes by
/// `vpdpwssd`; the exact group sums of the four rows go into one register (lane `r` for
/// row `r`) and are fused into the four rows' accumulators together: the same integers and
/// the same f32 operations per row as [`q4k_grouped`], so the same bits. Other tiles go
/// to [`rows_q4k_grouped`].
///
/// # Safety
/// The CPU supports AVX2, FMA, F16C and AVX-512 F, VL, DQ, BW and VNNI; shapes as
/// [`rows_q4k_grouped`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
pub(crate) unsafe fn rows_q4k_grouped_vnni<const R: usize>(
    w: &[BlockQ4K],
    kb: usize,
    a: [&[ActBlockK]; R],
    out: &mut [[f32; crate::quant::MAX_TILE]],
) {
    if R != 4 {
        // SAFETY: the caller's contract covers the AVX2 loop's (a subset of the features).
        return unsafe { rows_q4k_grouped::<R>(w, kb, a, out) };
    }
    let s: &[&[ActBlockK]] = &a;
    let a4 = [s[0], s[1], s[2], s[3]];
    for (c, o) in out.iter_mut().enumerate() {
        // SAFETY: `c < out.len()` and `w` holds `out.len()` rows of `kb` blocks, every `a[r]`
        // at least `kb` (the contract).
        let r = unsafe { q4k_grouped4(w.get_unchecked(c * kb..(c + 1) * kb), a4) };
        o[..4].copy_from_slice(&r);
    }
}

/// The sums of the i32 lanes of each of four registers: lane `k` of the result is the sum
/// of `g[k]` (exact).
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce4(g: [__m512i; 4]) -> __m128i {
    let t01 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(g[0], g[1]),
        _mm512_unpackhi_epi32(g[0], g[1]),
    );
    let t23 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(g[2], g[3]),
        _mm512_unpackhi_epi32(g[2], g[3]),
    );
    let u = _mm512_add_epi32(
        _mm512_unpacklo_epi64(t01, t23),
        _mm512_unpackhi_epi64(t01, t23),
    );
    let v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1))
}

/// For each of a super-block's four 512-bit registers, which sub-block scale each of its
/// 32 words takes: register `g`, word `l` takes scale `g · 32 / width + l / width` when a
/// scale covers `width` words (a `vpermw` index into the scales widened to 16 bits).
const fn scale_words(width: usize) -> [[i16; 32]; 4] {
    let mut t = [[0i16; 32]; 4];
    let mut g = 0;
    while g < 4 {
        let mut l = 0;
        while l < 32 {
            t[g][l] = (g * 32 / width + l / width) as i16;
            l += 1;
        }
        g += 1;
    }
    t
}

/// `Q4_K`: a register holds sub-blocks 2g and 2g + 1 (16 words of byte-pair sums each).
const Q4K_SCALES: [[i16; 32]; 4] = scale_words(16);
/// `Q6_K`: a register holds sub-blocks 4g..4g + 4 (8 words each).
const Q6K_SCALES: [[i16; 32]; 4] = scale_words(8);

/// The four index registers of a [`scale_words`] table (always inlined: a call per weight
/// row showed up in the row loops, which `#[target_feature]` functions cannot force).
///
/// # Safety
/// The CPU has AVX-512 F.
#[inline(always)]
unsafe fn scale_index(t: &[[i16; 32]; 4]) -> [__m512i; 4] {
    // SAFETY: AVX-512 F (the contract); each load reads the 64 bytes of one `[i16; 32]` of
    // `t`.
    unsafe {
        [
            _mm512_loadu_si512(t[0].as_ptr().cast()),
            _mm512_loadu_si512(t[1].as_ptr().cast()),
            _mm512_loadu_si512(t[2].as_ptr().cast()),
            _mm512_loadu_si512(t[3].as_ptr().cast()),
        ]
    }
}

/// The activation sums of a block's eight 32-value sub-blocks (sub-block `j`'s is
/// `bsums[2j] + bsums[2j + 1]`), as eight i16 words (exact: at most 32·127 in magnitude).
#[inline]
#[target_feature(enable = "ssse3")]
fn subblock_sums(x: &ActBlockK) -> __m128i {
    // SAFETY: the two halves of the 16 i16 (32 bytes) of `x.bsums`.
    unsafe {
        _mm_hadd_epi16(
            _mm_loadu_si128(x.bsums.as_ptr().cast()),
            _mm_loadu_si128(x.bsums.as_ptr().add(8).cast()),
        )
    }
}

/// A 4×4 transpose: lane `r` of result `k` is lane `k` of `s[r]`.
#[inline]
#[target_feature(enable = "sse2")]
fn transpose4(s: [__m128i; 4]) -> [__m128i; 4] {
    let t0 = _mm_unpacklo_epi32(s[0], s[1]);
    let t1 = _mm_unpacklo_epi32(s[2], s[3]);
    let t2 = _mm_unpackhi_epi32(s[0], s[1]);
    let t3 = _mm_unpackhi_epi32(s[2], s[3]);
    [
        _mm_unpacklo_epi64(t0, t1),
        _mm_unpackhi_epi64(t0, t1),
        _mm_unpacklo_epi64(t2, t3),
        _mm_unpackhi_epi64(t2, t3),
    ]
}

/// One `Q4_K` weight row · four activation rows in the grouped order (see
/// [`rows_q4k_grouped_vnni`]).
///
/// # Safety
/// As [`rows_q4k_grouped_vnni`]; every `a[r]` has at least `w.len()` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
unsafe fn q4k_grouped4(w: &[BlockQ4K], a: [&[ActBlockK]; 4]) -> [f32; 4] {
    let m4 = _mm512_set1_epi8(0x0F);
    // The upper half takes the high nibbles.
    let shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    // Group k's scales: words 0..16 take sub-block 2k's, words 16..32 sub-block 2k+1's.
    // SAFETY: this function's features include AVX-512 F.
    let idx = unsafe { scale_index(&Q4K_SCALES) };
    let mut acc = _mm_setzero_ps();
    let mut acc_min = _mm_setzero_ps();
    for (i, b) in w.iter().enumerate() {
        prefetch(b);
        // SAFETY: reads the 8 bytes of `b.scales` and the 8 of `b.mins`.
        let (scales, mins) = unsafe {
            (
                _mm_loadl_epi64(b.scales.as_ptr().cast()),
                _mm_loadl_epi64(b.mins.as_ptr().cast()),
            )
        };
        let scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(scales));
        let mins = _mm_cvtepu8_epi16(mins);
        let mut q = [_mm512_setzero_si512(); 4];
        let mut sc = [_mm512_setzero_si512(); 4];
        for k in 0..4 {
            // SAFETY: bytes `32k..32k + 32` of the 128 of `b.qs` (`k < 4`).
            let raw = _mm512_broadcast_i64x4(unsafe { load(b.qs.as_ptr().add(32 * k)) });
            q[k] = _mm512_and_si512(_mm512_srlv_epi64(raw, shift), m4);
            sc[k] = _mm512_permutexvar_epi16(idx[k], scales);
        }
        let mut sums = [_mm_setzero_si128(); 4];
        let mut ms = [_mm_setzero_si128(); 4];
        let mut xd = [0f32; 4];
        for r in 0..4 {
            // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
            let x = unsafe { a[r].get_unchecked(i) };
            let mut g = [_mm512_setzero_si512(); 4];
            for k in 0..4 {
                // SAFETY: bytes `64k..64k + 64` of the 256 of `x.qs` (`k < 4`).
                let xq = unsafe { _mm512_loadu_si512(x.qs.as_ptr().add(64 * k).cast()) };
                let p = _mm512_maddubs_epi16(q[k], xq);
                g[k] = _mm512_dpwssd_epi32(_mm512_setzero_si512(), p, sc[k]);
            }
            sums[r] = reduce4(g);
            ms[r] = _mm_madd_epi16(subblock_sums(x), mins);
            xd[r] = x.d;
        }
        let (sums, ms) = (transpose4(sums), transpose4(ms));
        // SAFETY: reads the 4 floats of `xd`.
        let xd = unsafe { _mm_loadu_ps(xd.as_ptr()) };
        let dd = _mm_mul_ps(_mm_set1_ps(b.d), xd);
        let dm = _mm_mul_ps(_mm_set1_ps(b.dmin), xd);
        for k in 0..4 {
            acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sums[k]), dd, acc);
            acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(ms[k]), dm, acc_min);
        }
    }
    let mut out = [0f32; 4];
    // SAFETY: writes the 4 floats of `out`.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc, acc_min)) };
    out
}

/// What unpacking a `Q6_K` block into 512-bit registers needs, built once per call.
#[derive(Clone, Copy)]
struct Q6kUnpack {
    m4: __m512i,
    m3: __m512i,
    shift_a: __m512i,
    shift_b: __m512i,
    idx: [__m512i; 4],
}

impl Q6kUnpack {
    /// The masks, shifts and scale indices.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new() -> Self {
        // The high bits of the two chunks of a register: bits 0..2 and 2..4 of `qh`
        // (pair A), 4..6 and 6..8 (pair B), as 16-bit shifts per half.
        let words = |lo: i64, hi: i64| {
            let (lo, hi) = (lo * 0x0001_0001_0001_0001, hi * 0x0001_0001_0001_0001);
            _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo)
        };
        Self {
            m4: _mm512_set1_epi8(0x0F),
            m3: _mm512_set1_epi8(3),
            shift_a: words(0, 2),
            shift_b: words(4, 6),
            // Register m (chunks 2m, 2m + 1) takes sub-blocks 4m..4m + 4, eight words each.
            // SAFETY: this function's features include AVX-512 F.
            idx: unsafe { scale_index(&Q6K_SCALES) },
        }
    }

    /// Block `b`'s unsigned quants (register `m`: chunks `2m` and `2m + 1`, values
    /// `64m..64m + 64`), each register's sub-block scale per 16-bit word, and the sixteen
    /// scales widened to 16 bits.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    fn block(&self, b: &BlockQ6K) -> ([__m512i; 4], [__m512i; 4], __m256i) {
        let mut q = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            // SAFETY: bytes `64h..64h + 64` of the 128 of `b.ql` and `32h..32h + 32` of the
            // 64 of `b.qh` (`h < 2`).
            let (l, hb) = unsafe {
                (
                    _mm512_loadu_si512(b.ql.as_ptr().add(64 * h).cast()),
                    load(b.qh.as_ptr().add(32 * h)),
                )
            };
            let hb = _mm512_broadcast_i64x4(hb);
            let ha = _mm512_slli_epi16(
                _mm512_and_si512(_mm512_srlv_epi16(hb, self.shift_a), self.m3),
                4,
            );
            let hbb = _mm512_slli_epi16(
                _mm512_and_si512(_mm512_srlv_epi16(hb, self.shift_b), self.m3),
                4,
            );
            q[2 * h] = _mm512_or_si512(_mm512_and_si512(l, self.m4), ha);
            q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), self.m4), hbb);
        }
        // SAFETY: reads the 16 bytes of `b.scales`.
        let scales16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(b.scales.as_ptr().cast()) });
        let scales = _mm512_castsi256_si512(scales16);
        let sc = self.idx.map(|idx| _mm512_permutexvar_epi16(idx, scales));
        (q, sc, scales16)
    }
}

/// An activation block's quants (register `m`: values `64m..64m + 64`) and its sixteen
/// 16-value sums.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
fn q6k_act(x: &ActBlockK) -> ([__m512i; 4], __m256i) {
    let mut xq = [_mm512_setzero_si512(); 4];
    for (m, v) in xq.iter_mut().enumerate() {
        // SAFETY: bytes `64m..64m + 64` of the 256 of `x.qs` (`m < 4`).
        *v = unsafe { _mm512_loadu_si512(x.qs.as_ptr().add(64 * m).cast()) };
    }
    // SAFETY: reads the 16 i16 (32 bytes) of `x.bsums`.
    let bsums = unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) };
    (xq, bsums)
}

/// The byte products of a `Q6_K` block's unsigned quants `q` and an activation block `xq`,
/// times the sub-block scales, in 16 exact i32 lanes: lane `k < 8` holds the values of the
/// even chunks that the AVX2 build's lane `k` holds, lane `8 + k` those of the odd chunks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q6k_products(q: &[__m512i; 4], sc: &[__m512i; 4], xq: &[__m512i; 4]) -> __m512i {
    let mut sum = _mm512_setzero_si512();
    for m in 0..4 {
        sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q[m], xq[m]), sc[m]);
    }
    sum
}

/// The AVX2 lanes' `32 · (bsums[2l]·scale[2l] + bsums[2l + 1]·scale[2l + 1])` (the
/// quants' `- 32`), exact.
#[inline]
#[target_feature(enable = "avx2")]
fn q6k_offset(bsums: __m256i, scales16: __m256i) -> __m256i {
    _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5)
}

/// [`rows_q6k`] with AVX-512 BW and VNNI for one activation row (decoding), each weight row
/// read in order: every super-block unpacked by [`Q6kUnpack`] (two 32-value chunks per
/// 512-bit register, byte products summed into i16 pairs and then, times the sub-block
/// scales, by `vpdpwssd`) into 16 exact i32 lanes whose two halves add up to the AVX2 build's
/// eight lanes, then converted and
/// fused into the row's eight f32 lanes as there, and summed in the same order at the end:
/// the same bits as [`q6k`]. More activation rows go through the AVX2 build.
///
/// # Safety
/// As [`rows_q4k_grouped_vnni`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
pub(crate) unsafe fn rows_q6k_vnni<const R: usize>(
    w: &[BlockQ6K],
    kb: usize,
    a: [&[ActBlockK]; R],
    out: &mut [[f32; crate::quant::MAX_TILE]],
) {
    if R != 1 {
        // SAFETY: the caller's contract covers the AVX2 loop's (a subset of the features).
        return unsafe { rows_q6k::<R>(w, kb, a, out) };
    }
    let s: &[&[ActBlockK]] = &a;
    let x = s[0];
    let unpack = Q6kUnpack::new();
    for (c, o) in out.iter_mut().enumerate() {
        // SAFETY: `c < out.len()` and `w` holds `out.len()` rows of `kb` blocks, `x` at least
        // `kb` (the contract).
        let row = unsafe { w.get_unchecked(c * kb..(c + 1) * kb) };
        let mut acc = _mm256_setzero_ps();
        for (i, b) in row.iter().enumerate() {
            prefetch(b);
            // SAFETY: `i < kb`, at most the length of `x` (the contract).
            let xb = unsafe { x.get_unchecked(i) };
            let (xq, bsums) = q6k_act(xb);
            let (q, sc, scales16) = unpack.block(b);
            let sum = q6k_products(&q, &sc, &xq);
            let eight = _mm256_add_epi32(
                _mm512_castsi512_si256(sum),
                _mm512_extracti64x4_epi64(sum, 1),
            );
            let lanes = _mm256_sub_epi32(eight, q6k_offset(bsums, scales16));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(xb.d * b.d), _mm256_cvtepi32_ps(lanes), acc);
        }
        o[0] = hsum_f32(acc);
    }
}
