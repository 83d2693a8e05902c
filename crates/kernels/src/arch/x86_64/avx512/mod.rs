//! The VNNI kernels with two activation rows per 512-bit register: lanes 0..8 accumulate one
//! row, lanes 8..16 the next, each exactly as the 256-bit kernels accumulate a row (the same
//! integer lane sums, the same f32 products and fused adds per lane, the same horizontal sum),
//! so results are bit-identical to [`super::vnni`] and [`super::avx2`] with half the instructions per row.
//! A weight block is unpacked once into both halves. One activation row alone (decoding a
//! single sequence), and the last row of an odd count, go through [`super::vnni`]'s 256-bit code.
//!
//! Also the AVX-512 activation quantizer (`quantize_row`), the `Q4_K`/`Q6_K` prompt-order
//! kernels ([`kquant`]) and the f16 vector ops of the attention kernel ([`f16`](mod@f16)).
#![allow(unsafe_code)]

use super::vnni;
use super::*;

pub mod f16;
pub mod kquant;
pub mod x16;

/// [`quantize_row_avx512`] where `kernels` is [`Simd::Avx512Vnni`] (then `true`); `false`,
/// leaving `out` alone, under the other levels.
pub(crate) fn quantize_row(kernels: Kernels, xs: &[f32], out: &mut [ActBlock]) -> bool {
    if kernels.simd() != Simd::Avx512Vnni {
        return false;
    }
    // SAFETY: the token proves AVX-512 F, VL, BW and VNNI (and AVX2, F16C).
    unsafe { quantize_row_avx512(xs, out) };
    true
}

/// [`crate::quant::blocks::quantize_row`] with AVX-512: the same blocks, bit for bit (the largest
/// magnitude is exact in any order, `x · (127 / amax)` is the same product, and the
/// conversion rounds half to even as `round_ties_even` does). A block whose `127 / amax` is
/// not finite (only for subnormal maxima) goes through the scalar code.
#[target_feature(enable = "avx2,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
fn quantize_row_avx512(xs: &[f32], out: &mut [ActBlock]) {
    use crate::quant::blocks::QK;
    let ones = _mm256_set1_epi8(1);
    for (block, xs) in out.iter_mut().zip(xs.chunks_exact(QK)) {
        // SAFETY: `xs` is one chunk of exactly 32 values: both loads of 16 are inside it.
        let (lo, hi) = unsafe {
            (
                _mm512_loadu_ps(xs.as_ptr()),
                _mm512_loadu_ps(xs.as_ptr().add(16)),
            )
        };
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        if !id.is_finite() {
            crate::quant::blocks::quantize_row(xs, std::slice::from_mut(block));
            continue;
        }
        let idv = _mm512_set1_ps(id);
        let qlo = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(lo, idv)));
        let qhi = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(hi, idv)));
        let q = _mm256_inserti128_si256(_mm256_castsi128_si256(qlo), qhi, 1);
        // SAFETY: writes the 32 bytes of `block.qs`, borrowed mutably.
        unsafe { _mm256_storeu_si256(block.qs.as_mut_ptr().cast(), q) };
        // Sums of each four consecutive quants.
        let fours = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, q);
        let sum = {
            let s = _mm_add_epi32(
                _mm256_castsi256_si128(fours),
                _mm256_extracti128_si256(fours, 1),
            );
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
            _mm_cvtsi128_si32(s)
        };
        let neg16 = _mm256_mullo_epi32(fours, _mm256_set1_epi32(-16));
        // SAFETY: writes the 32 bytes of `block.neg16`, borrowed mutably.
        unsafe { _mm256_storeu_si256(block.neg16.as_mut_ptr().cast(), neg16) };
        let d = amax / 127.0;
        block.d =
            f16(_mm_cvtsi128_si32(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(d))) as u16);
        block.s = f16(
            _mm_cvtsi128_si32(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(
                d * sum as f32,
            ))) as u16,
        );
        block.sum = sum;
    }
}

/// Block `i` of activation rows `2p` and `2p + 1` side by side, as the kernels load them:
/// the quants of row `2p` in bytes 0..32 and of row `2p + 1` in 32..64, each row's `d`
/// over its eight lanes, each row's `neg16` lane starts (`Q5_0`, `Q4_0`).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Pair {
    qs: [i8; 64],
    d: [f32; 16],
    neg16: [i32; 16],
}

const EMPTY: Pair = Pair {
    qs: [0; 64],
    d: [0.0; 16],
    neg16: [0; 16],
};

/// Pairs the `m` activation rows of `acts` (`kb` blocks each) block by block into `out`
/// (pair `p` of rows `2p` and `2p + 1` at `p · kb`; an odd last row stays out): built once
/// per matmul and read by every kernel call, instead of each call assembling them again.
pub fn pair_up(acts: &[ActBlock], m: usize, kb: usize, out: &mut Vec<Pair>) {
    out.clear();
    out.resize(m / 2 * kb, EMPTY);
    for (p, pairs) in out.chunks_exact_mut(kb.max(1)).enumerate() {
        let (r0, r1) = (&acts[2 * p * kb..], &acts[(2 * p + 1) * kb..]);
        for (i, t) in pairs.iter_mut().enumerate() {
            let (x0, x1) = (&r0[i], &r1[i]);
            t.qs[..32].copy_from_slice(&x0.qs);
            t.qs[32..].copy_from_slice(&x1.qs);
            t.d[..8].fill(x0.d);
            t.d[8..].fill(x1.d);
            t.neg16[..8].copy_from_slice(&x0.neg16);
            t.neg16[8..].copy_from_slice(&x1.neg16);
        }
    }
}

/// An f16 bit pattern as f32 in all sixteen lanes (see `f16x8`).
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn f16x16(bits: u16) -> __m512 {
    _mm512_cvtph_ps(_mm256_set1_epi16(bits as i16))
}

/// The 64 quants of a pair.
#[inline]
#[target_feature(enable = "avx512f")]
fn quants(p: &Pair) -> __m512i {
    // SAFETY: reads the 64 bytes of `p.qs`, 64-byte aligned (`Pair` is `align(64)` and `qs`
    // its first field).
    unsafe { _mm512_load_si512(p.qs.as_ptr().cast()) }
}

/// The two rows' `d`, each over its half.
#[inline]
#[target_feature(enable = "avx512f")]
fn scales(p: &Pair) -> __m512 {
    // SAFETY: reads the 64 bytes of `p.d`, 64-byte aligned (at offset 64 of an `align(64)`
    // `repr(C)` struct).
    unsafe { _mm512_load_ps(p.d.as_ptr()) }
}

/// The two rows' outputs of a paired accumulator: the horizontal sum of each half.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn hsum_halves(v: __m512) -> (f32, f32) {
    (
        hsum(_mm512_castps512_ps256(v)),
        hsum(_mm512_extractf32x8_ps(v, 1)),
    )
}

/// Rows `2p, 2p + 1` of the paired accumulators and the last row of an odd `R` from its
/// 256-bit accumulator.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn finish2<const C: usize, const R: usize>(
    acc: [[__m512; MAX_TILE / 2]; C],
    odd: [__m256; C],
) -> [[f32; R]; C] {
    let mut out = [[0f32; R]; C];
    for c in 0..C {
        for p in 0..R / 2 {
            (out[c][2 * p], out[c][2 * p + 1]) = hsum_halves(acc[c][p]);
        }
        if R % 2 == 1 {
            out[c][R - 1] = hsum(odd[c]);
        }
    }
    out
}

/// The 32 nibbles of a `Q4_0`/`Q4_1`/`Q5_0`/`Q5_1` block (as [`nibbles`]) in both 256-bit halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn nibbles2(qs: &[u8; 16]) -> __m512i {
    // SAFETY: reads the 16 bytes of `qs`; `movdqu` needs no alignment.
    let q = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(qs.as_ptr().cast()) });
    let q = _mm512_srlv_epi64(q, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    _mm512_and_si512(q, _mm512_set1_epi8(0x0F))
}

/// A 512-bit kernel of a format whose values are `d · q + m` with unsigned `q` (`Q4_1`,
/// `Q5_1`; see `offset_kernel!`): `$unpack` makes the 32 `q` of the block `$b` as bytes in
/// both 256-bit halves.
macro_rules! offset512 {
    ($name:ident, $block:ty, |$b:ident| $unpack:expr) => {
        #[doc = concat!("[`vnni::", stringify!($name), "`] with two rows per register.")]
        /// The `m · s` terms of all rows of a weight
        /// row go in one 256-bit register (lane `r` for row `r`), added block by block as there.
        ///
        /// # Safety
        /// As [`vnni::q4_1`], and the CPU supports AVX-512 F, VL, DQ, BW and VNNI.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
        pub(crate) unsafe fn $name<const C: usize, const R: usize>(
            w: [&[$block]; C],
            a: [&[ActBlock]; R],
            pairs: [&[Pair]; MAX_TILE / 2],
        ) -> [[f32; R]; C] {
            let mut acc = [[_mm512_setzero_ps(); MAX_TILE / 2]; C];
            let mut odd = [_mm256_setzero_ps(); C];
            // Up to four rows in 128 bits, more in 256 (the narrower form measured 7% faster).
            let mut ms4 = [_mm_setzero_ps(); C];
            let mut ms8 = [_mm256_setzero_ps(); C];
            for i in 0..w[0].len() {
                let mut u = [_mm512_setzero_si512(); C];
                let mut d = [_mm512_setzero_ps(); C];
                let mut m = [_mm_setzero_ps(); C];
                for c in 0..C {
                    // SAFETY: `i < w[0].len()`, the length of every `w[c]` (the contract).
                    let $b = unsafe { w[c].get_unchecked(i) };
                    prefetch($b);
                    u[c] = $unpack;
                    let dm = f16_pair($b);
                    d[c] = _mm512_broadcastss_ps(dm);
                    m[c] = _mm_permute_ps::<0b01_01_01_01>(dm);
                }
                // Every row's `s` in its lane.
                let mut s = [0f32; MAX_TILE];
                for r in 0..R {
                    // SAFETY: `i < w[0].len()`, at most the length of every `a[r]` (the contract).
                    s[r] = unsafe { a[r].get_unchecked(i) }.s;
                }
                if R <= 4 {
                    // SAFETY: reads the first 4 of the 8 floats of `s`.
                    let s = unsafe { _mm_loadu_ps(s.as_ptr()) };
                    for c in 0..C {
                        ms4[c] = _mm_add_ps(ms4[c], _mm_mul_ps(m[c], s));
                    }
                } else {
                    // SAFETY: reads the 8 floats of `s`.
                    let s = unsafe { _mm256_loadu_ps(s.as_ptr()) };
                    for c in 0..C {
                        let m = _mm256_broadcastss_ps(m[c]);
                        ms8[c] = _mm256_add_ps(ms8[c], _mm256_mul_ps(m, s));
                    }
                }
                for p in 0..R / 2 {
                    // SAFETY: `pairs[p]` holds the `w[0].len()` blocks of its two rows (the contract).
                    let pb = unsafe { pairs[p].get_unchecked(i) };
                    let (xq, xd) = (quants(pb), scales(pb));
                    for c in 0..C {
                        let scale = _mm512_mul_ps(d[c], xd);
                        let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(
                            _mm512_setzero_si512(),
                            u[c],
                            xq,
                        ));
                        acc[c][p] = _mm512_fmadd_ps(scale, prod, acc[c][p]);
                    }
                }
                if R % 2 == 1 {
                    // SAFETY: `i < w[0].len()`, at most the length of every `a[r]` (the contract).
                    let x = unsafe { a[R - 1].get_unchecked(i) };
                    let (xq, xd) = (load(&x.qs), _mm256_set1_ps(x.d));
                    for c in 0..C {
                        let scale = _mm256_mul_ps(_mm512_castps512_ps256(d[c]), xd);
                        let prod = mul_sum_vnni(_mm512_castsi512_si256(u[c]), xq);
                        odd[c] = _mm256_fmadd_ps(scale, prod, odd[c]);
                    }
                }
            }
            let mut out = finish2::<C, R>(acc, odd);
            for c in 0..C {
                let mut lanes = [0f32; MAX_TILE];
                if R <= 4 {
                    // SAFETY: writes the first 4 of the 8 floats of `lanes`.
                    unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), ms4[c]) };
                } else {
                    // SAFETY: writes the 8 floats of `lanes`.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), ms8[c]) };
                }
                for r in 0..R {
                    out[c][r] += lanes[r];
                }
            }
            out
        }
    };
}

/// A 512-bit kernel of a format whose values are `d · (q - (16 >> $shift))` (`Q5_0`: shift
/// 0, `Q4_0`: shift 1; see `signed_kernel!`): `$unpack` makes the 32 unsigned `q` of the
/// block `$b` as bytes in both 256-bit halves.
macro_rules! signed512 {
    ($name:ident, $block:ty, $shift:literal, |$b:ident| $unpack:expr) => {
        #[doc = concat!("[`vnni::", stringify!($name), "`] with two rows per register.")]
        ///
        /// # Safety
        /// As [`q4_1`].
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
        pub(crate) unsafe fn $name<const C: usize, const R: usize>(
            w: [&[$block]; C],
            a: [&[ActBlock]; R],
            pairs: [&[Pair]; MAX_TILE / 2],
        ) -> [[f32; R]; C] {
            let mut acc = [[_mm512_setzero_ps(); MAX_TILE / 2]; C];
            let mut odd = [_mm256_setzero_ps(); C];
            for i in 0..w[0].len() {
                let mut u = [_mm512_setzero_si512(); C];
                let mut d = [_mm512_setzero_ps(); C];
                for c in 0..C {
                    // SAFETY: `i < w[0].len()`, the length of every `w[c]` (the contract).
                    let $b = unsafe { w[c].get_unchecked(i) };
                    prefetch($b);
                    u[c] = $unpack;
                    d[c] = f16x16($b.d);
                }
                for p in 0..R / 2 {
                    // SAFETY: `pairs[p]` holds the `w[0].len()` blocks of its two rows (the contract).
                    let pb = unsafe { pairs[p].get_unchecked(i) };
                    let (xq, xd) = (quants(pb), scales(pb));
                    // SAFETY: reads the 64 bytes of `pb.neg16`, 64-byte aligned (offset 128 of an
                    // `align(64)`, `repr(C)` struct).
                    let start = unsafe { _mm512_load_si512(pb.neg16.as_ptr().cast()) };
                    let start = _mm512_srai_epi32::<$shift>(start);
                    for c in 0..C {
                        let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u[c], xq));
                        let scale = _mm512_mul_ps(d[c], xd);
                        acc[c][p] = _mm512_fmadd_ps(scale, prod, acc[c][p]);
                    }
                }
                if R % 2 == 1 {
                    // SAFETY: `i < w[0].len()`, at most the length of every `a[r]` (the contract).
                    let x = unsafe { a[R - 1].get_unchecked(i) };
                    let xd = _mm256_set1_ps(x.d);
                    for c in 0..C {
                        let u = _mm512_castsi512_si256(u[c]);
                        let prod = signed_vnni::<$shift>(u, u, u, x);
                        let scale = _mm256_mul_ps(_mm512_castps512_ps256(d[c]), xd);
                        odd[c] = _mm256_fmadd_ps(scale, prod, odd[c]);
                    }
                }
            }
            finish2(acc, odd)
        }
    };
}

offset512!(q4_1, BlockQ4_1, |b| nibbles2(&b.qs));
offset512!(q5_1, BlockQ5_1, |b| _mm512_or_si512(
    nibbles2(&b.qs),
    _mm512_broadcast_i64x4(fifth_bits(b.qh))
));
signed512!(q5_0, BlockQ5_0, 0, |b| _mm512_or_si512(
    nibbles2(&b.qs),
    _mm512_broadcast_i64x4(fifth_bits(b.qh))
));
signed512!(q4_0, BlockQ4_0, 1, |b| nibbles2(&b.qs));

/// [`vnni::q8_0`] with two rows per register. 512-bit registers have no byte sign
/// instruction, so the weights are made unsigned instead (`q + 128`, a flipped top bit) and
/// each lane starts from `-128 ×` the sum of its four activations (the pair's `neg16`, times
/// eight): the same exact integer lane sums. The weight rows then need one register each,
/// which lets a prompt's tiles take four of them per call beside the 16 accumulators
/// ([`rows_q8_0`]); with the `+128` on the activations instead (a correction register per
/// weight row), four rows spilled and stayed at two.
///
/// # Safety
/// As [`q4_1`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
pub(crate) unsafe fn q8_0<const C: usize, const R: usize>(
    w: [&[BlockQ8_0]; C],
    a: [&[ActBlock]; R],
    pairs: [&[Pair]; MAX_TILE / 2],
) -> [[f32; R]; C] {
    let mut acc = [[_mm512_setzero_ps(); MAX_TILE / 2]; C];
    let mut odd = [_mm256_setzero_ps(); C];
    let top = _mm512_set1_epi8(-128);
    for i in 0..w[0].len() {
        let mut u = [_mm512_setzero_si512(); C];
        let mut d = [_mm512_setzero_ps(); C];
        for c in 0..C {
            // SAFETY: `i < w[0].len()`, the length of every `w[c]` (the contract).
            let b = unsafe { w[c].get_unchecked(i) };
            prefetch(b);
            u[c] = _mm512_xor_si512(_mm512_broadcast_i64x4(load(&b.qs)), top);
            d[c] = f16x16(b.d);
        }
        for p in 0..R / 2 {
            // SAFETY: `pairs[p]` holds the `w[0].len()` blocks of its two rows (the contract).
            let pb = unsafe { pairs[p].get_unchecked(i) };
            let (xq, xd) = (quants(pb), scales(pb));
            // SAFETY: reads the 64 bytes of `pb.neg16`, 64-byte aligned (offset 128 of an
            // `align(64)`, `repr(C)` struct).
            let start = unsafe { _mm512_load_si512(pb.neg16.as_ptr().cast()) };
            let start = _mm512_slli_epi32::<3>(start);
            for c in 0..C {
                let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u[c], xq));
                let scale = _mm512_mul_ps(d[c], xd);
                acc[c][p] = _mm512_fmadd_ps(scale, prod, acc[c][p]);
            }
        }
        if R % 2 == 1 {
            // SAFETY: `i < w[0].len()`, at most the length of every `a[r]` (the contract).
            let x = unsafe { a[R - 1].get_unchecked(i) };
            // SAFETY: reads the 32 bytes of `x.neg16`; `movdqu` needs no alignment.
            let start = unsafe { _mm256_loadu_si256(x.neg16.as_ptr().cast()) };
            let start = _mm256_slli_epi32::<3>(start);
            let (xq, xd) = (load(&x.qs), _mm256_set1_ps(x.d));
            for c in 0..C {
                let u = _mm512_castsi512_si256(u[c]);
                let prod = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, u, xq));
                let scale = _mm256_mul_ps(_mm512_castps512_ps256(d[c]), xd);
                odd[c] = _mm256_fmadd_ps(scale, prod, odd[c]);
            }
        }
    }
    finish2(acc, odd)
}

/// The row loop of a 512-bit kernel: one activation row goes through [`vnni`]'s kernel
/// one weight row at a time (as [`rows!`] does); several, paired beforehand
/// ([`pair_up`]), are multiplied with four weight rows per call where `$four` says so
/// (`few`: for up to four activation rows; `many`: for more than four), else two.
macro_rules! rows512 {
    (@four few, $r:ident) => {
        $r <= 4
    };
    (@four many, $r:ident) => {
        $r > 4
    };
    ($name:ident, $kernel:ident, $block:ty, $four:ident) => {
        /// Every weight row of `w` (`out.len()` rows of `kb` blocks) · `R` activation
        /// rows: `out[c][r]`.
        ///
        /// # Safety
        /// The CPU supports AVX2, FMA, F16C and AVX-512 F, VL, DQ, BW and VNNI; `w` holds
        /// `out.len() * kb` blocks, every `a[r]` at least `kb`, and `paired` the rows
        /// of `a` paired ([`pair_up`]: `R / 2 · kb` blocks).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
        pub(crate) unsafe fn $name<const R: usize>(
            w: &[$block],
            kb: usize,
            a: [&[ActBlock]; R],
            out: &mut [[f32; MAX_TILE]],
            paired: &[Pair],
        ) {
            let n = out.len();
            // SAFETY (every `row(c)` below): `c < n` and `w` holds `n` rows of `kb` blocks.
            let row = |c: usize| unsafe { w.get_unchecked(c * kb..(c + 1) * kb) };
            // One row: the 256-bit kernel (a pair would leave half of each register
            // idle).
            if R == 1 {
                for c in 0..n {
                    // SAFETY: the row has `kb` blocks and `a[0]` at least `kb`; the CPU has
                    // the 256-bit kernels' instruction set (a subset of this one's).
                    let r = unsafe { vnni::$kernel::<1, R>([row(c)], a) };
                    out[c][..R].copy_from_slice(&r[0]);
                }
                return;
            }
            let mut pairs: [&[Pair]; MAX_TILE / 2] = [&[]; MAX_TILE / 2];
            for (p, s) in pairs.iter_mut().enumerate().take(R / 2) {
                // Checked: a missing pairing panics rather than reads out of bounds.
                *s = &paired[p * kb..(p + 1) * kb];
            }
            let mut c = 0;
            if rows512!(@four $four, R) {
                while c + 4 <= n {
                    let w4 = [row(c), row(c + 1), row(c + 2), row(c + 3)];
                    // SAFETY: the rows have `kb` blocks, every `a[r]` at least `kb`, every
                    // pair slice exactly `kb`; the CPU has this loop's instruction set.
                    let r = unsafe { $kernel::<4, R>(w4, a, pairs) };
                    for (j, r) in r.iter().enumerate() {
                        out[c + j][..R].copy_from_slice(r);
                    }
                    c += 4;
                }
            }
            while c + 2 <= n {
                // SAFETY: as above.
                let r = unsafe { $kernel::<2, R>([row(c), row(c + 1)], a, pairs) };
                out[c][..R].copy_from_slice(&r[0]);
                out[c + 1][..R].copy_from_slice(&r[1]);
                c += 2;
            }
            while c < n {
                // SAFETY: as above.
                let r = unsafe { $kernel::<1, R>([row(c)], a, pairs) };
                out[c][..R].copy_from_slice(&r[0]);
                c += 1;
            }
        }
    };
}

rows512!(rows_q4_0, q4_0, BlockQ4_0, few);
rows512!(rows_q4_1, q4_1, BlockQ4_1, few);
rows512!(rows_q5_0, q5_0, BlockQ5_0, few);
rows512!(rows_q5_1, q5_1, BlockQ5_1, few);
// Q8_0's output layer, tens of MB streaming from memory, measured 9% slower with four
// weight rows per call for a few activation rows; a prompt's tiles of eight, reading each
// pair of activation rows for four weight rows instead of two, went from 64 to 70 GMAC/s
// on one core (the four weight rows' registers fit beside the 16 accumulators once the
// weights, not the activations, carry the `+128`).
rows512!(rows_q8_0, q8_0, BlockQ8_0, many);
