//! AVX2 (+ FMA + F16C) kernels of the K-quant formats: each weight block is unpacked once and
//! multiplied into all `R` activation rows; integer products are exact (`maddubs` sees
//! weights of at most 15 or 32 in magnitude against activations in `-127..=127`, far from
//! i16 saturation) and the f32 steps are those of the scalar twins in
//! [`crate::quant::kquant`], so results are bit-identical to them.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::quant::kquant::{ActBlockK, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};

/// The sum of the eight i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    hsum_i32_4(s)
}

/// The sum of the four i32 lanes (exact).
#[inline]
#[target_feature(enable = "sse2")]
fn hsum_i32_4(s: __m128i) -> i32 {
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01));
    _mm_cvtsi128_si32(s)
}

/// The eight f32 lanes summed in llama.cpp's `hsum_float_8` order (the scalar twins'
/// `hsum8`).
#[inline]
#[target_feature(enable = "avx")]
pub(crate) fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Hints the CPU to bring the block 4 KiB after `block` (its three cache lines) into L1,
/// as the 32-value kernels do (see `PREFETCH` there): the hardware prefetchers barely ramp
/// up on rows this short. A hint: never faults, even past the end of the weights.
#[inline(always)]
pub(crate) fn prefetch<T>(block: &T) {
    let p = (block as *const T).cast::<i8>().wrapping_add(4096);
    // SAFETY: a prefetch is a hint that never faults and reads nothing into the program; the
    // addresses are only computed (`wrapping_add`), never dereferenced.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(p);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128));
    }
}

/// 32 bytes from `p`.
///
/// # Safety
/// `p` is valid for reads of 32 bytes (no alignment needed).
#[inline]
#[target_feature(enable = "avx")]
pub(crate) unsafe fn load<T>(p: *const T) -> __m256i {
    // SAFETY: the caller's contract.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// Every weight row of `w` (`out.len()` rows of `kb` blocks) · `R` activation rows,
/// `out[c][r]`, with `$kernel` inlined (a call per row costs as much as a short row).
macro_rules! rows {
    ($name:ident, $kernel:ident, $block:ty) => {
        /// Every weight row of `w` (`out.len()` rows of `kb` blocks) · `R` activation
        /// rows: `out[c][r]`.
        ///
        /// # Safety
        /// The CPU supports AVX2, FMA and F16C; `w` holds `out.len() * kb` blocks and
        /// every `a[r]` at least `kb`.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn $name<const R: usize>(
            w: &[$block],
            kb: usize,
            a: [&[ActBlockK]; R],
            out: &mut [[f32; crate::quant::MAX_TILE]],
        ) {
            for (c, o) in out.iter_mut().enumerate() {
                // SAFETY: `c < out.len()` and `w` holds `out.len()` rows of `kb` blocks, every
                // `a[r]` at least `kb`; the CPU has AVX2, FMA and F16C (the contract).
                let r = unsafe { $kernel::<R>(w.get_unchecked(c * kb..(c + 1) * kb), a) };
                o[..R].copy_from_slice(&r);
            }
        }
    };
}

rows!(rows_q4k, q4k, BlockQ4K);
rows!(rows_q4k_grouped, q4k_grouped, BlockQ4K);
rows!(rows_q6k, q6k, BlockQ6K);
rows!(rows_q6k_tiled, q6k_tiled, BlockQ6K);
rows!(rows_q5k, q5k, BlockQ5K);
rows!(rows_q5k_tiled, q5k_tiled, BlockQ5K);
rows!(rows_q3k, q3k, BlockQ3K);
rows!(rows_q3k_tiled, q3k_tiled, BlockQ3K);
rows!(rows_q2k, q2k, BlockQ2K);
rows!(rows_q2k_tiled, q2k_tiled, BlockQ2K);

/// `Q4_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q4k`] for each row.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C, and every `a[r]` has at least `w.len()` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4k<const R: usize>(w: &[BlockQ4K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q4k_order`'s.
    unsafe { q4k_order::<R, false>(w, a) }
}

/// `Q4_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q4k_grouped`] for each row.
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4k_grouped<const R: usize>(w: &[BlockQ4K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q4k_order`'s.
    unsafe { q4k_order::<R, true>(w, a) }
}

/// [`q4k`] (`GROUPED` false: one fused step per super-block) or [`q4k_grouped`] (one per
/// 64 values).
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_order<const R: usize, const GROUPED: bool>(
    w: &[BlockQ4K],
    a: [&[ActBlockK]; R],
) -> [f32; R] {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [0f32; R];
    let mut acc_min = [0f32; R];
    for (i, b) in w.iter().enumerate() {
        prefetch(b);
        // Chunk j holds values 32j..32j + 32: the low nibbles of qs[32(j/2)..] for
        // even j, the high ones for odd j.
        let mut q = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            // SAFETY: bytes `32j..32j + 32` of the 128 of `b.qs` (`j < 4`).
            let raw = unsafe { load(b.qs.as_ptr().add(32 * j)) };
            q[2 * j] = _mm256_and_si256(raw, m4);
            q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        }
        let mut scales = [_mm256_setzero_si256(); 8];
        for (v, &s) in scales.iter_mut().zip(&b.scales) {
            *v = _mm256_set1_epi16(s as i16);
        }
        // SAFETY: reads the 8 bytes of `b.mins`.
        let mins = _mm_cvtepu8_epi16(unsafe { _mm_loadl_epi64(b.mins.as_ptr().cast()) });
        for r in 0..R {
            // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
            let x = unsafe { a[r].get_unchecked(i) };
            // One i32 vector per 64 values (sub-blocks 2k and 2k + 1).
            let mut sums = [_mm256_setzero_si256(); 4];
            for j in 0..8 {
                // SAFETY: bytes `32j..32j + 32` of the 256 of `x.qs` (`j < 8`).
                let y = unsafe { load(x.qs.as_ptr().add(32 * j)) };
                let p = _mm256_maddubs_epi16(q[j], y);
                sums[j / 2] = _mm256_add_epi32(sums[j / 2], _mm256_madd_epi16(p, scales[j]));
            }
            // Sub-block j's activation sum is bsums[2j] + bsums[2j + 1]; the madd
            // leaves one min term per 64 values in each 32-bit lane.
            // SAFETY: the two halves of the 16 i16 (32 bytes) of `x.bsums`.
            let (lo, hi) = unsafe {
                (
                    _mm_loadu_si128(x.bsums.as_ptr().cast()),
                    _mm_loadu_si128(x.bsums.as_ptr().add(8).cast()),
                )
            };
            let pairs = _mm_hadd_epi16(lo, hi);
            let mins64 = _mm_madd_epi16(pairs, mins);
            let (dd, dm) = (b.d * x.d, b.dmin * x.d);
            if GROUPED {
                let mut m = [0i32; 4];
                // SAFETY: writes the 4 i32 (16 bytes) of `m`.
                unsafe { _mm_storeu_si128(m.as_mut_ptr().cast(), mins64) };
                for (k, s) in sums.iter().enumerate() {
                    acc[r] = (hsum_i32(*s) as f32).mul_add(dd, acc[r]);
                    acc_min[r] = (m[k] as f32).mul_add(dm, acc_min[r]);
                }
            } else {
                let sum = _mm256_add_epi32(
                    _mm256_add_epi32(sums[0], sums[1]),
                    _mm256_add_epi32(sums[2], sums[3]),
                );
                acc[r] = (hsum_i32(sum) as f32).mul_add(dd, acc[r]);
                acc_min[r] = (hsum_i32_4(mins64) as f32).mul_add(dm, acc_min[r]);
            }
        }
    }
    let mut out = [0f32; R];
    for ((o, &a), &m) in out.iter_mut().zip(&acc).zip(&acc_min) {
        *o = a - m;
    }
    out
}

/// `Q6_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q6k`] for each row.
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6k<const R: usize>(w: &[BlockQ6K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q6k_order`'s.
    unsafe { q6k_order::<R, false>(w, a) }
}

/// `Q6_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q6k_tiled`] for each row.
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6k_tiled<const R: usize>(w: &[BlockQ6K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q6k_order`'s.
    unsafe { q6k_order::<R, true>(w, a) }
}

/// [`q6k`] (`TILED` false: eight f32 lanes) or [`q6k_tiled`] (one exact integer per
/// super-block).
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_order<const R: usize, const TILED: bool>(
    w: &[BlockQ6K],
    a: [&[ActBlockK]; R],
) -> [f32; R] {
    let mut tiled = [0f32; R];
    let m4 = _mm256_set1_epi8(0x0F);
    let m3 = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, b) in w.iter().enumerate() {
        prefetch(b);
        // Chunk c holds values 32c..32c + 32 as unsigned `q` (0..64); the `- 32` is
        // applied afterwards through the activation sums, as llama.cpp does.
        let mut q = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            // SAFETY: bytes `64h..64h + 64` of the 128 of `b.ql` and `32h..32h + 32` of the
            // 64 of `b.qh` (`h < 2`).
            let (l1, l2, hb) = unsafe {
                (
                    load(b.ql.as_ptr().add(64 * h)),
                    load(b.ql.as_ptr().add(64 * h + 32)),
                    load(b.qh.as_ptr().add(32 * h)),
                )
            };
            // Bits 2t..2t + 2 of qh, moved to bits 4..6 of each byte.
            let h0 = _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4);
            let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4);
            let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4);
            let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4);
            let lo1 = _mm256_and_si256(l1, m4);
            let lo2 = _mm256_and_si256(l2, m4);
            let hi1 = _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4);
            let hi2 = _mm256_and_si256(_mm256_srli_epi16(l2, 4), m4);
            q[4 * h] = _mm256_or_si256(lo1, h0);
            q[4 * h + 1] = _mm256_or_si256(lo2, h1);
            q[4 * h + 2] = _mm256_or_si256(hi1, h2);
            q[4 * h + 3] = _mm256_or_si256(hi2, h3);
        }
        // Lanes 0..4 of chunk c take sub-block 2c's scale, lanes 4..8 sub-block 2c+1's.
        let mut scales = [_mm256_setzero_si256(); 8];
        for (v, s) in scales.iter_mut().zip(b.scales.chunks_exact(2)) {
            *v = _mm256_set_m128i(_mm_set1_epi16(s[1] as i16), _mm_set1_epi16(s[0] as i16));
        }
        // SAFETY: reads the 16 bytes of `b.scales`.
        let scales16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(b.scales.as_ptr().cast()) });
        for r in 0..R {
            // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
            let x = unsafe { a[r].get_unchecked(i) };
            let mut sum = _mm256_setzero_si256();
            for c in 0..8 {
                // SAFETY: bytes `32c..32c + 32` of the 256 of `x.qs` (`c < 8`).
                let y = unsafe { load(x.qs.as_ptr().add(32 * c)) };
                let p = _mm256_maddubs_epi16(q[c], y);
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, scales[c]));
            }
            // 32 · (bsums[2l]·scale[2l] + bsums[2l + 1]·scale[2l + 1]) off lane l.
            // SAFETY: reads the 16 i16 (32 bytes) of `x.bsums`.
            let bsums = unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) };
            let sub = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
            let sum = _mm256_sub_epi32(sum, sub);
            if TILED {
                tiled[r] = (hsum_i32(sum) as f32 * b.d).mul_add(x.d, tiled[r]);
            } else {
                acc[r] =
                    _mm256_fmadd_ps(_mm256_set1_ps(x.d * b.d), _mm256_cvtepi32_ps(sum), acc[r]);
            }
        }
    }
    if TILED {
        return tiled;
    }
    let mut out = [0f32; R];
    for (o, &a) in out.iter_mut().zip(&acc) {
        *o = hsum_f32(a);
    }
    out
}

/// A super-block's eight 32-value chunks of unsigned quants `q` times one activation block,
/// each 16-bit pair product times its sub-block scale (`scales[c]`: the scale of every 16-bit
/// lane of chunk `c`): the eight exact i32 lane sums of [`crate::quant::kquant`]'s `k_lanes`.
/// `maddubs` sees weights below 32 against activations in `-127..=127`: no saturation.
#[inline]
#[target_feature(enable = "avx2")]
fn lanes_unsigned(q: &[__m256i; 8], scales: &[__m256i; 8], x: &ActBlockK) -> __m256i {
    let mut sum = _mm256_setzero_si256();
    for c in 0..8 {
        // SAFETY: bytes `32c..32c + 32` of the 256 of `x.qs` (`c < 8`).
        let y = unsafe { load(x.qs.as_ptr().add(32 * c)) };
        let p = _mm256_maddubs_epi16(q[c], y);
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, scales[c]));
    }
    sum
}

/// [`lanes_unsigned`] for signed quants: their magnitudes `abs` times the activations with
/// the quants' signs (`q` zero where the quant is, as `vpsignb` wants).
#[inline]
#[target_feature(enable = "avx2")]
fn lanes_signed(
    abs: &[__m256i; 8],
    q: &[__m256i; 8],
    scales: &[__m256i; 8],
    x: &ActBlockK,
) -> __m256i {
    let mut sum = _mm256_setzero_si256();
    for c in 0..8 {
        // SAFETY: bytes `32c..32c + 32` of the 256 of `x.qs` (`c < 8`).
        let y = unsafe { load(x.qs.as_ptr().add(32 * c)) };
        let p = _mm256_maddubs_epi16(abs[c], _mm256_sign_epi8(y, q[c]));
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, scales[c]));
    }
    sum
}

/// The scale vectors of a format with 16-value sub-blocks: chunk `c`'s lanes 0..4 (its first
/// 16 values) take `scales[2c]`, lanes 4..8 `scales[2c + 1]`.
#[inline]
#[target_feature(enable = "avx2")]
fn scales16(scales: [i16; 16]) -> [__m256i; 8] {
    let mut out = [_mm256_setzero_si256(); 8];
    for (v, s) in out.iter_mut().zip(scales.chunks_exact(2)) {
        *v = _mm256_set_m128i(_mm_set1_epi16(s[1]), _mm_set1_epi16(s[0]));
    }
    out
}

/// The 16 activation sums of `x` (exact i16).
#[inline]
#[target_feature(enable = "avx")]
fn bsums(x: &ActBlockK) -> __m256i {
    // SAFETY: reads the 16 i16 (32 bytes) of `x.bsums`.
    unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) }
}

/// `Q5_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q5k`] for each row.
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q5k<const R: usize>(w: &[BlockQ5K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q5k_order`'s.
    unsafe { q5k_order::<R, false>(w, a) }
}

/// `Q5_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q5k_tiled`] for
/// each row.
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q5k_tiled<const R: usize>(w: &[BlockQ5K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q5k_order`'s.
    unsafe { q5k_order::<R, true>(w, a) }
}

/// [`q5k`] (`TILED` false: eight f32 lanes and the mins apart) or [`q5k_tiled`] (one step
/// per super-block).
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5k_order<const R: usize, const TILED: bool>(
    w: &[BlockQ5K],
    a: [&[ActBlockK]; R],
) -> [f32; R] {
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut summs = [0f32; R];
    let mut tiled = [0f32; R];
    for (i, b) in w.iter().enumerate() {
        prefetch(b);
        // SAFETY: the 32 bytes of `b.qh`.
        let hb = unsafe { load(b.qh.as_ptr()) };
        // Chunk c: the low nibbles of qs[32(c/2)..] for even c, the high ones for odd c,
        // plus bit c of qh as 16.
        let mut q = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            // SAFETY: bytes `32j..32j + 32` of the 128 of `b.qs` (`j < 4`).
            let raw = unsafe { load(b.qs.as_ptr().add(32 * j)) };
            for (h, low) in [
                _mm256_and_si256(raw, m4),
                _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4),
            ]
            .into_iter()
            .enumerate()
            {
                let c = 2 * j + h;
                // Bit c of each byte, moved to bit 4 (a byte's bits never cross into its
                // neighbour: shifted right by c then masked to bit 0).
                let bit = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(c as i32)), one);
                q[c] = _mm256_or_si256(low, _mm256_slli_epi16(bit, 4));
            }
        }
        let mut scales = [_mm256_setzero_si256(); 8];
        for (v, &s) in scales.iter_mut().zip(&b.scales) {
            *v = _mm256_set1_epi16(s as i16);
        }
        // SAFETY: reads the 8 bytes of `b.mins`.
        let mins = _mm_cvtepu8_epi16(unsafe { _mm_loadl_epi64(b.mins.as_ptr().cast()) });
        for r in 0..R {
            // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
            let x = unsafe { a[r].get_unchecked(i) };
            let sum = lanes_unsigned(&q, &scales, x);
            // Sub-block j's activation sum is bsums[2j] + bsums[2j + 1].
            let s = bsums(x);
            let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let summ = hsum_i32_4(_mm_madd_epi16(pairs, mins));
            if TILED {
                let r1 = (-b.dmin).mul_add(summ as f32, hsum_i32(sum) as f32 * b.d);
                tiled[r] = r1.mul_add(x.d, tiled[r]);
            } else {
                summs[r] = (-(x.d * b.dmin)).mul_add(summ as f32, summs[r]);
                acc[r] =
                    _mm256_fmadd_ps(_mm256_set1_ps(x.d * b.d), _mm256_cvtepi32_ps(sum), acc[r]);
            }
        }
    }
    if TILED {
        return tiled;
    }
    let mut out = [0f32; R];
    for ((o, &a), &m) in out.iter_mut().zip(&acc).zip(&summs) {
        *o = hsum_f32(a) + m;
    }
    out
}

/// `Q3_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q3k`] for each row.
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q3k<const R: usize>(w: &[BlockQ3K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q3k_order`'s.
    unsafe { q3k_order::<R, false>(w, a) }
}

/// `Q3_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q3k_tiled`] for
/// each row.
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q3k_tiled<const R: usize>(w: &[BlockQ3K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q3k_order`'s.
    unsafe { q3k_order::<R, true>(w, a) }
}

/// [`q3k`] (`TILED` false: eight f32 lanes) or [`q3k_tiled`] (one exact integer per
/// super-block).
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3k_order<const R: usize, const TILED: bool>(
    w: &[BlockQ3K],
    a: [&[ActBlockK]; R],
) -> [f32; R] {
    let m3 = _mm256_set1_epi8(3);
    let one = _mm256_set1_epi8(1);
    let four = _mm256_set1_epi8(4);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut tiled = [0f32; R];
    for (i, b) in w.iter().enumerate() {
        prefetch(b);
        // SAFETY: the 32 bytes of `b.hmask`.
        let hb = unsafe { load(b.hmask.as_ptr()) };
        // Chunk c = 4h + t: bits 2t..2t + 2 of qs[32h..], minus 4 where bit c of hmask is
        // clear; kept as magnitudes and signs for `maddubs`.
        let mut q = [_mm256_setzero_si256(); 8];
        let mut abs = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            // SAFETY: bytes `32h..32h + 32` of the 64 of `b.qs` (`h < 2`).
            let raw = unsafe { load(b.qs.as_ptr().add(32 * h)) };
            for t in 0..4 {
                let c = 4 * h + t;
                let low =
                    _mm256_and_si256(_mm256_srl_epi16(raw, _mm_cvtsi32_si128(2 * t as i32)), m3);
                let set = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(c as i32)), one);
                // 4 where the bit is clear, else 0.
                let minus = _mm256_andnot_si256(_mm256_slli_epi16(set, 2), four);
                q[c] = _mm256_sub_epi8(low, minus);
                abs[c] = _mm256_sign_epi8(q[c], q[c]);
            }
        }
        let scales = scales16(b.scales.map(i16::from));
        for r in 0..R {
            // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
            let x = unsafe { a[r].get_unchecked(i) };
            let sum = lanes_signed(&abs, &q, &scales, x);
            if TILED {
                tiled[r] = (hsum_i32(sum) as f32 * b.d).mul_add(x.d, tiled[r]);
            } else {
                acc[r] =
                    _mm256_fmadd_ps(_mm256_set1_ps(x.d * b.d), _mm256_cvtepi32_ps(sum), acc[r]);
            }
        }
    }
    if TILED {
        return tiled;
    }
    let mut out = [0f32; R];
    for (o, &a) in out.iter_mut().zip(&acc) {
        *o = hsum_f32(a);
    }
    out
}

/// `Q2_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q2k`] for each row.
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q2k<const R: usize>(w: &[BlockQ2K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q2k_order`'s.
    unsafe { q2k_order::<R, false>(w, a) }
}

/// `Q2_K` weights · `R` activation rows, as [`crate::quant::kquant::dot_q2k_tiled`] for
/// each row.
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q2k_tiled<const R: usize>(w: &[BlockQ2K], a: [&[ActBlockK]; R]) -> [f32; R] {
    // SAFETY: the caller's contract is `q2k_order`'s.
    unsafe { q2k_order::<R, true>(w, a) }
}

/// [`q2k`] (`TILED` false: eight f32 lanes, mins first) or [`q2k_tiled`] (one step per
/// super-block).
///
/// # Safety
/// As [`q4k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2k_order<const R: usize, const TILED: bool>(
    w: &[BlockQ2K],
    a: [&[ActBlockK]; R],
) -> [f32; R] {
    let m3 = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut tiled = [0f32; R];
    for (i, b) in w.iter().enumerate() {
        prefetch(b);
        // Chunk c = 4h + t: bits 2t..2t + 2 of qs[32h..].
        let mut q = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            // SAFETY: bytes `32h..32h + 32` of the 64 of `b.qs` (`h < 2`).
            let raw = unsafe { load(b.qs.as_ptr().add(32 * h)) };
            q[4 * h] = _mm256_and_si256(raw, m3);
            q[4 * h + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 2), m3);
            q[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m3);
            q[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16(raw, 6), m3);
        }
        let scales = scales16(b.scales.map(i16::from));
        // SAFETY: reads the 16 bytes of `b.mins`.
        let mins = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(b.mins.as_ptr().cast()) });
        for r in 0..R {
            // SAFETY: `i < w.len()`, at most the length of every `a[r]` (the contract).
            let x = unsafe { a[r].get_unchecked(i) };
            let sum = lanes_unsigned(&q, &scales, x);
            let prod = _mm256_madd_epi16(mins, bsums(x));
            if TILED {
                let r1 = (-b.dmin).mul_add(hsum_i32(prod) as f32, hsum_i32(sum) as f32 * b.d);
                tiled[r] = r1.mul_add(x.d, tiled[r]);
            } else {
                let dmin = _mm256_set1_ps(-(x.d * b.dmin));
                acc[r] = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(prod), acc[r]);
                acc[r] =
                    _mm256_fmadd_ps(_mm256_set1_ps(x.d * b.d), _mm256_cvtepi32_ps(sum), acc[r]);
            }
        }
    }
    if TILED {
        return tiled;
    }
    let mut out = [0f32; R];
    for (o, &a) in out.iter_mut().zip(&acc) {
        *o = hsum_f32(a);
    }
    out
}
