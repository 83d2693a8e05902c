//! x86 dot products of quantized weight rows with a tile of 8-bit activation rows at once:
//! each weight block is unpacked once and multiplied into every row, so a batch (or a prefill
//! tile) reads the weights once per tile. The row loops (`rows_*`) run a work item's weight
//! rows inside the kernels' instruction set, prefetching weights ahead.
//!
//! Three builds of the same kernels: [`avx2`] (AVX2 + FMA + F16C; bytes multiplied with
//! `vpmaddubsw` then summed in pairs with `vpmaddwd`), [`vnni`] (adds AVX-512 VNNI on
//! 256-bit registers: `vpdpbusd` does both steps in one instruction; used for one activation
//! row) and [`vnni512`] (two activation rows per 512-bit register, tiles of up to eight rows,
//! the rows paired once per matmul by [`vnni512::pair_up`]). All compute the same eight lane
//! sums per block and row (each the sum of four consecutive byte products; `maddubs` never
//! saturates for these formats) and the same f32 operations per lane, so they return
//! bit-identical results. The integer products are exact; only the f32 accumulation order
//! differs from the scalar twins in `scalar.rs`. Callers check the CPU features at run time and
//! that every activation row has at least as many blocks as the weight row.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::blocks::{ActBlock, BlockQ4_1, BlockQ5_0, BlockQ8_0};
use super::MAX_TILE;

/// How far ahead of the block being multiplied the kernels prefetch weights, in bytes. Rows
/// are short (360 bytes for a 576-wide `Q4_1` row) and the CPU's stream prefetchers barely
/// ramp up on them: measured on SmolLM2 decode (2 threads), 91 tok/s without, 123-130 with
/// 256-2048 bytes.
const PREFETCH: usize = 1024;

/// Hints the CPU to bring the bytes `PREFETCH` after `block` into L1 (a hint: never faults,
/// even past the end of the weights).
#[inline(always)]
unsafe fn prefetch<T>(block: &T) {
    unsafe { _mm_prefetch::<_MM_HINT_T0>((block as *const T).cast::<i8>().wrapping_add(PREFETCH)) }
}

#[inline(always)]
unsafe fn f16(bits: u16) -> f32 {
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
}

/// Two adjacent f16 values (a block's `d` and `m`) as f32 in lanes 0 and 1.
#[inline(always)]
unsafe fn f16_pair(first: &u16) -> __m128 {
    unsafe {
        let bits = std::ptr::read_unaligned((first as *const u16).cast::<i32>());
        _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
    }
}

/// An activation block's `d` and `s` in lanes 0 and 1.
#[inline(always)]
unsafe fn d_s(x: &ActBlock) -> __m128 {
    unsafe { _mm_castpd_ps(_mm_load_sd((&x.d as *const f32).cast::<f64>())) }
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
        // Both lanes hold the 16 bytes; the upper lane is shifted down by a nibble.
        let q = _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.as_ptr().cast()));
        let q = _mm256_srlv_epi64(q, _mm256_set_epi64x(4, 4, 0, 0));
        _mm256_and_si256(q, _mm256_set1_epi8(0x0F))
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

/// [`super::blocks::quantize_row`] with AVX-512: the same blocks, bit for bit (the largest
/// magnitude is exact in any order, `x · (127 / amax)` is the same product, and the
/// conversion rounds half to even as `round_ties_even` does). A block whose `127 / amax` is
/// not finite (only for subnormal maxima) goes through the scalar code.
///
/// # Safety
/// The CPU supports AVX-512 F, VL, BW and VNNI; `xs` holds `QK * out.len()` values.
#[target_feature(enable = "avx2,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(crate) unsafe fn quantize_row(xs: &[f32], out: &mut [ActBlock]) {
    use super::blocks::QK;
    unsafe {
        let ones = _mm256_set1_epi8(1);
        for (block, xs) in out.iter_mut().zip(xs.chunks_exact(QK)) {
            let lo = _mm512_loadu_ps(xs.as_ptr());
            let hi = _mm512_loadu_ps(xs.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            if !id.is_finite() {
                super::blocks::quantize_row(xs, std::slice::from_mut(block));
                continue;
            }
            let idv = _mm512_set1_ps(id);
            let qlo = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(lo, idv)));
            let qhi = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(hi, idv)));
            let q = _mm256_inserti128_si256(_mm256_castsi128_si256(qlo), qhi, 1);
            _mm256_storeu_si256(block.qs.as_mut_ptr().cast(), q);
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
            _mm256_storeu_si256(
                block.neg16.as_mut_ptr().cast(),
                _mm256_mullo_epi32(fours, _mm256_set1_epi32(-16)),
            );
            let d = amax / 127.0;
            block.d = f16(
                _mm_cvtsi128_si32(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(d))) as u16,
            );
            block.s = f16(
                _mm_cvtsi128_si32(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(
                    d * sum as f32,
                ))) as u16,
            );
            block.sum = sum;
        }
    }
}

/// Unsigned bytes times signed bytes, four consecutive products summed per i32 lane, as f32
/// (AVX2: `maddubs` into i16 pairs, then pairs of pairs).
#[inline(always)]
unsafe fn mul_sum_avx2(u: __m256i, y: __m256i) -> __m256 {
    unsafe {
        let p16 = _mm256_maddubs_epi16(u, y);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }
}

/// [`mul_sum_avx2`] in one VNNI instruction: the same lane sums.
#[inline(always)]
unsafe fn mul_sum_vnni(u: __m256i, y: __m256i) -> __m256 {
    unsafe { _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, y)) }
}

/// The horizontal sum of every accumulator.
#[inline(always)]
unsafe fn finish<const C: usize, const R: usize>(acc: [[__m256; R]; C]) -> [[f32; R]; C] {
    let mut out = [[0f32; R]; C];
    for c in 0..C {
        for r in 0..R {
            out[c][r] = unsafe { hsum(acc[c][r]) };
        }
    }
    out
}

/// One `Q5_0` block row's lane sums with AVX2: signed weights `q` (their magnitudes `abs`)
/// times the activations, through the sign trick (`maddubs` wants one unsigned operand).
#[inline(always)]
unsafe fn q5_avx2(_u: __m256i, q: __m256i, abs: __m256i, x: &ActBlock) -> __m256 {
    unsafe { mul_sum_avx2(abs, _mm256_sign_epi8(load(&x.qs), q)) }
}

/// The same lane sums with VNNI: the unsigned nibbles `u = q + 16` times the activations,
/// started from `-16 Σa` per lane (`x.neg16`): exact, and no sign fix-up per row.
#[inline(always)]
unsafe fn q5_vnni(u: __m256i, _q: __m256i, _abs: __m256i, x: &ActBlock) -> __m256 {
    unsafe {
        let start = _mm256_loadu_si256(x.neg16.as_ptr().cast());
        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, u, load(&x.qs)))
    }
}

#[inline(always)]
unsafe fn load(qs: &[i8; 32]) -> __m256i {
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// A loop over weight rows around a kernel, in the kernel's instruction set so the kernel
/// inlines (a call per row costs as much as the work on a short row). With one activation row
/// the weight rows are walked one after the other: interleaving four (independent
/// accumulations to hide the FMA latency) was 2.4x faster on weights in cache but slower on
/// real models, whose weights stream from memory (Gemma 3 decode 78 vs 95 tok/s).
macro_rules! rows {
    ($features:literal, $name:ident, $kernel:ident, $block:ty) => {
        /// Every weight row of `w` (`out.len()` rows of `kb` blocks) · `R` activation rows:
        /// `out[c][r]`.
        ///
        /// # Safety
        /// The CPU supports this module's instruction set; `w` holds `out.len() * kb`
        /// blocks and every `a[r]` at least `kb`.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name<const R: usize>(
            w: &[$block],
            kb: usize,
            a: [&[ActBlock]; R],
            out: &mut [[f32; MAX_TILE]],
        ) {
            unsafe {
                let n = out.len();
                let row = |c: usize| w.get_unchecked(c * kb..(c + 1) * kb);
                let mut c = 0;
                // Two weight rows per call where the activation rows are several (prefill,
                // batches): each activation block is loaded once for both. Not for one row
                // (decode), which streams the weights from memory: two interleaved streams
                // there cost more than the loads they save.
                if R > 1 {
                    while c + 2 <= n {
                        let r = $kernel::<2, R>([row(c), row(c + 1)], a);
                        out.get_unchecked_mut(c)[..R].copy_from_slice(&r[0]);
                        out.get_unchecked_mut(c + 1)[..R].copy_from_slice(&r[1]);
                        c += 2;
                    }
                }
                while c < n {
                    let r = $kernel::<1, R>([row(c)], a);
                    out.get_unchecked_mut(c)[..R].copy_from_slice(&r[0]);
                    c += 1;
                }
            }
        }
    };
}

/// The kernels, built once per instruction set (`$features`) with its byte product.
macro_rules! kernels {
    (
        $(#[$doc:meta])* $name:ident,
        $features:literal,
        $mul_sum:ident,
        $q5:ident
        $(, $with_rows:ident)?
    ) => {
        $(#[$doc])*
        pub(crate) mod $name {
            use super::*;

            /// `C` `Q4_1` weight rows · `R` activation rows (`out[c][r]`). Each output is
            /// one independent accumulation, the same whatever `C` and `R` are; each weight
            /// block is unpacked once for the `R` rows and each activation block loaded once
            /// for the `C` weight rows.
            ///
            /// # Safety
            /// The CPU supports this module's instruction set; the `w[c]` have one length and
            /// every `a[r]` at least that many blocks.
            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q4_1<const C: usize, const R: usize>(
                w: [&[BlockQ4_1]; C],
                a: [&[ActBlock]; R],
            ) -> [[f32; R]; C] {
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); R]; C];
                    // Lane 1 accumulates the `m · s` terms (lane 0 is unused).
                    let mut ms = [[_mm_setzero_ps(); R]; C];
                    for i in 0..w[0].len() {
                        let mut u = [_mm256_setzero_si256(); C];
                        let mut dm = [_mm_setzero_ps(); C];
                        for c in 0..C {
                            let b = w[c].get_unchecked(i);
                            prefetch(b);
                            u[c] = nibbles(&b.qs);
                            dm[c] = f16_pair(&b.d);
                        }
                        for r in 0..R {
                            let x = a[r].get_unchecked(i);
                            let (xq, xds) = (load(&x.qs), d_s(x));
                            for c in 0..C {
                                // Lane 0: d · x.d; lane 1: m · x.s.
                                let scales = _mm_mul_ps(dm[c], xds);
                                let p = $mul_sum(u[c], xq);
                                acc[c][r] = _mm256_fmadd_ps(
                                    _mm256_broadcastss_ps(scales),
                                    p,
                                    acc[c][r],
                                );
                                ms[c][r] = _mm_add_ps(ms[c][r], scales);
                            }
                        }
                    }
                    let mut out = [[0f32; R]; C];
                    for c in 0..C {
                        for r in 0..R {
                            let m = _mm_cvtss_f32(_mm_shuffle_ps(ms[c][r], ms[c][r], 1));
                            out[c][r] = hsum(acc[c][r]) + m;
                        }
                    }
                    out
                }
            }

            /// `C` `Q5_0` weight rows · `R` activation rows. The integer sums are exact
            /// (see [`q5_avx2`] and [`q5_vnni`]): subtracting `16 Σa` from unsigned products
            /// in f32 instead cancels catastrophically on Gemma's very large activations.
            ///
            /// # Safety
            /// As [`q4_1`].
            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q5_0<const C: usize, const R: usize>(
                w: [&[BlockQ5_0]; C],
                a: [&[ActBlock]; R],
            ) -> [[f32; R]; C] {
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); R]; C];
                    for i in 0..w[0].len() {
                        let mut u = [_mm256_setzero_si256(); C];
                        let mut q = [_mm256_setzero_si256(); C];
                        let mut abs = [_mm256_setzero_si256(); C];
                        let mut d = [_mm256_setzero_ps(); C];
                        for c in 0..C {
                            let b = w[c].get_unchecked(i);
                            prefetch(b);
                            u[c] = _mm256_or_si256(nibbles(&b.qs), fifth_bits(b.qh));
                            q[c] = _mm256_sub_epi8(u[c], _mm256_set1_epi8(16));
                            abs[c] = _mm256_sign_epi8(q[c], q[c]);
                            d[c] = _mm256_set1_ps(f16(b.d));
                        }
                        for r in 0..R {
                            let x = a[r].get_unchecked(i);
                            let xd = _mm256_set1_ps(x.d);
                            for c in 0..C {
                                let p = $q5(u[c], q[c], abs[c], x);
                                // d · x.d, one product broadcast (as the scalar `d * x.d`).
                                let scale = _mm256_mul_ps(d[c], xd);
                                acc[c][r] = _mm256_fmadd_ps(scale, p, acc[c][r]);
                            }
                        }
                    }
                    finish(acc)
                }
            }

            /// `C` `Q8_0` weight rows · `R` activation rows (signs moved onto the
            /// activations so the byte product sees unsigned weights).
            ///
            /// # Safety
            /// As [`q4_1`].
            #[inline]
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q8_0<const C: usize, const R: usize>(
                w: [&[BlockQ8_0]; C],
                a: [&[ActBlock]; R],
            ) -> [[f32; R]; C] {
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); R]; C];
                    for i in 0..w[0].len() {
                        let mut q = [_mm256_setzero_si256(); C];
                        let mut u = [_mm256_setzero_si256(); C];
                        let mut d = [_mm256_setzero_ps(); C];
                        for c in 0..C {
                            let b = w[c].get_unchecked(i);
                            prefetch(b);
                            q[c] = load(&b.qs);
                            u[c] = _mm256_sign_epi8(q[c], q[c]);
                            d[c] = _mm256_set1_ps(f16(b.d));
                        }
                        for r in 0..R {
                            let x = a[r].get_unchecked(i);
                            let (xq, xd) = (load(&x.qs), _mm256_set1_ps(x.d));
                            for c in 0..C {
                                let p = $mul_sum(u[c], _mm256_sign_epi8(xq, q[c]));
                                let scale = _mm256_mul_ps(d[c], xd);
                                acc[c][r] = _mm256_fmadd_ps(scale, p, acc[c][r]);
                            }
                        }
                    }
                    finish(acc)
                }
            }

            $(all_rows!($with_rows, $features);)?
        }
    };
}

/// The row loops of the three formats (`with_rows` asks for them).
macro_rules! all_rows {
    (with_rows, $features:literal) => {
        rows!($features, rows_q4_1, q4_1, BlockQ4_1);
        rows!($features, rows_q5_0, q5_0, BlockQ5_0);
        rows!($features, rows_q8_0, q8_0, BlockQ8_0);
    };
}

kernels!(
    /// AVX2 + FMA + F16C.
    avx2,
    "avx2,fma,f16c",
    mul_sum_avx2,
    q5_avx2,
    with_rows
);
kernels!(
    /// AVX2 + FMA + F16C with AVX-512 VNNI (256-bit `vpdpbusd`, which needs AVX-512VL): one
    /// activation row at a time, inside [`vnni512`]'s row loops.
    vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    mul_sum_vnni,
    q5_vnni
);

/// The VNNI kernels with two activation rows per 512-bit register: lanes 0..8 accumulate one
/// row, lanes 8..16 the next, each exactly as the 256-bit kernels accumulate a row (the same
/// integer lane sums, the same f32 products and fused adds per lane, the same horizontal sum),
/// so results are bit-identical to [`vnni`] and [`avx2`] with half the instructions per row.
/// A weight block is unpacked once into both halves. One activation row alone (decoding a
/// single sequence), and the last row of an odd count, go through [`vnni`]'s 256-bit code.
pub(crate) mod vnni512 {
    use super::*;

    /// Block `i` of activation rows `2p` and `2p + 1` side by side, as the kernels load them:
    /// the quants of row `2p` in bytes 0..32 and of row `2p + 1` in 32..64, each row's `d`
    /// over its eight lanes, each row's `neg16` lane starts (`Q5_0`).
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    pub(crate) struct Pair {
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
    pub(crate) fn pair_up(acts: &[ActBlock], m: usize, kb: usize, out: &mut Vec<Pair>) {
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

    /// The 64 quants of a pair.
    #[inline(always)]
    unsafe fn quants(p: &Pair) -> __m512i {
        unsafe { _mm512_load_si512(p.qs.as_ptr().cast()) }
    }

    /// The two rows' `d`, each over its half.
    #[inline(always)]
    unsafe fn scales(p: &Pair) -> __m512 {
        unsafe { _mm512_load_ps(p.d.as_ptr()) }
    }

    /// The two rows' outputs of a paired accumulator: the horizontal sum of each half.
    #[inline(always)]
    unsafe fn hsum_halves(v: __m512) -> (f32, f32) {
        unsafe {
            (
                hsum(_mm512_castps512_ps256(v)),
                hsum(_mm512_extractf32x8_ps(v, 1)),
            )
        }
    }

    /// Rows `2p, 2p + 1` of the paired accumulators and the last row of an odd `R` from its
    /// 256-bit accumulator.
    #[inline(always)]
    unsafe fn finish2<const C: usize, const R: usize>(
        acc: [[__m512; MAX_TILE / 2]; C],
        odd: [__m256; C],
    ) -> [[f32; R]; C] {
        let mut out = [[0f32; R]; C];
        for c in 0..C {
            for p in 0..R / 2 {
                (out[c][2 * p], out[c][2 * p + 1]) = unsafe { hsum_halves(acc[c][p]) };
            }
            if R % 2 == 1 {
                out[c][R - 1] = unsafe { hsum(odd[c]) };
            }
        }
        out
    }

    /// The 32 nibbles of a `Q4_1`/`Q5_0` block (as [`nibbles`]) in both 256-bit halves.
    #[inline(always)]
    unsafe fn nibbles2(qs: &[u8; 16]) -> __m512i {
        unsafe {
            let q = _mm512_broadcast_i32x4(_mm_loadu_si128(qs.as_ptr().cast()));
            let q = _mm512_srlv_epi64(q, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
            _mm512_and_si512(q, _mm512_set1_epi8(0x0F))
        }
    }

    /// [`vnni::q4_1`] with two rows per register. The `m · s` terms of all rows of a weight
    /// row go in one 256-bit register (lane `r` for row `r`), added block by block as there.
    ///
    /// # Safety
    /// As [`vnni::q4_1`], and the CPU supports AVX-512 F, VL, DQ, BW and VNNI.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
    pub(crate) unsafe fn q4_1<const C: usize, const R: usize>(
        w: [&[BlockQ4_1]; C],
        a: [&[ActBlock]; R],
        pairs: [&[Pair]; MAX_TILE / 2],
    ) -> [[f32; R]; C] {
        unsafe {
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
                    let b = w[c].get_unchecked(i);
                    prefetch(b);
                    u[c] = nibbles2(&b.qs);
                    let dm = f16_pair(&b.d);
                    d[c] = _mm512_broadcastss_ps(dm);
                    m[c] = _mm_permute_ps::<0b01_01_01_01>(dm);
                }
                // Every row's `s` in its lane.
                let mut s = [0f32; MAX_TILE];
                for r in 0..R {
                    s[r] = a[r].get_unchecked(i).s;
                }
                if R <= 4 {
                    let s = _mm_loadu_ps(s.as_ptr());
                    for c in 0..C {
                        ms4[c] = _mm_add_ps(ms4[c], _mm_mul_ps(m[c], s));
                    }
                } else {
                    let s = _mm256_loadu_ps(s.as_ptr());
                    for c in 0..C {
                        let m = _mm256_broadcastss_ps(m[c]);
                        ms8[c] = _mm256_add_ps(ms8[c], _mm256_mul_ps(m, s));
                    }
                }
                for p in 0..R / 2 {
                    let pb = pairs[p].get_unchecked(i);
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
                    let x = a[R - 1].get_unchecked(i);
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
                    _mm_storeu_ps(lanes.as_mut_ptr(), ms4[c]);
                } else {
                    _mm256_storeu_ps(lanes.as_mut_ptr(), ms8[c]);
                }
                for r in 0..R {
                    out[c][r] += lanes[r];
                }
            }
            out
        }
    }

    /// [`vnni::q5_0`] with two rows per register.
    ///
    /// # Safety
    /// As [`q4_1`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
    pub(crate) unsafe fn q5_0<const C: usize, const R: usize>(
        w: [&[BlockQ5_0]; C],
        a: [&[ActBlock]; R],
        pairs: [&[Pair]; MAX_TILE / 2],
    ) -> [[f32; R]; C] {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); MAX_TILE / 2]; C];
            let mut odd = [_mm256_setzero_ps(); C];
            for i in 0..w[0].len() {
                let mut u = [_mm512_setzero_si512(); C];
                let mut d = [_mm512_setzero_ps(); C];
                for c in 0..C {
                    let b = w[c].get_unchecked(i);
                    prefetch(b);
                    u[c] =
                        _mm512_or_si512(nibbles2(&b.qs), _mm512_broadcast_i64x4(fifth_bits(b.qh)));
                    d[c] = _mm512_set1_ps(f16(b.d));
                }
                for p in 0..R / 2 {
                    let pb = pairs[p].get_unchecked(i);
                    let (xq, xd) = (quants(pb), scales(pb));
                    let start = _mm512_load_si512(pb.neg16.as_ptr().cast());
                    for c in 0..C {
                        let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u[c], xq));
                        let scale = _mm512_mul_ps(d[c], xd);
                        acc[c][p] = _mm512_fmadd_ps(scale, prod, acc[c][p]);
                    }
                }
                if R % 2 == 1 {
                    let x = a[R - 1].get_unchecked(i);
                    let xd = _mm256_set1_ps(x.d);
                    for c in 0..C {
                        let u = _mm512_castsi512_si256(u[c]);
                        let prod = q5_vnni(u, u, u, x);
                        let scale = _mm256_mul_ps(_mm512_castps512_ps256(d[c]), xd);
                        odd[c] = _mm256_fmadd_ps(scale, prod, odd[c]);
                    }
                }
            }
            finish2(acc, odd)
        }
    }

    /// [`vnni::q8_0`] with two rows per register. 512-bit registers have no byte sign
    /// instruction, so the activations are made unsigned instead (`x + 128`, a flipped top
    /// bit) and each lane starts from `-128 ×` the sum of its four weights: the same exact
    /// integer lane sums.
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
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); MAX_TILE / 2]; C];
            let mut odd = [_mm256_setzero_ps(); C];
            let top = _mm512_set1_epi8(-128);
            for i in 0..w[0].len() {
                let mut q = [_mm512_setzero_si512(); C];
                let mut start = [_mm512_setzero_si512(); C];
                let mut d = [_mm512_setzero_ps(); C];
                for c in 0..C {
                    let b = w[c].get_unchecked(i);
                    prefetch(b);
                    q[c] = _mm512_broadcast_i64x4(load(&b.qs));
                    start[c] = _mm512_sub_epi32(
                        _mm512_setzero_si512(),
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), top, q[c]),
                    );
                    d[c] = _mm512_set1_ps(f16(b.d));
                }
                for p in 0..R / 2 {
                    let pb = pairs[p].get_unchecked(i);
                    let (xu, xd) = (_mm512_xor_si512(quants(pb), top), scales(pb));
                    for c in 0..C {
                        let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start[c], xu, q[c]));
                        let scale = _mm512_mul_ps(d[c], xd);
                        acc[c][p] = _mm512_fmadd_ps(scale, prod, acc[c][p]);
                    }
                }
                if R % 2 == 1 {
                    let x = a[R - 1].get_unchecked(i);
                    let xu = _mm256_xor_si256(load(&x.qs), _mm512_castsi512_si256(top));
                    let xd = _mm256_set1_ps(x.d);
                    for c in 0..C {
                        let prod = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(
                            _mm512_castsi512_si256(start[c]),
                            xu,
                            _mm512_castsi512_si256(q[c]),
                        ));
                        let scale = _mm256_mul_ps(_mm512_castps512_ps256(d[c]), xd);
                        odd[c] = _mm256_fmadd_ps(scale, prod, odd[c]);
                    }
                }
            }
            finish2(acc, odd)
        }
    }

    /// The row loop of a 512-bit kernel: one activation row goes through [`vnni`]'s kernel
    /// one weight row at a time (as [`rows!`] does); several, paired beforehand
    /// ([`pair_up`]), are multiplied with `$wide` weight rows per call for up to four activation rows, two
    /// for more (the accumulators must fit the 32 registers).
    macro_rules! rows512 {
        ($name:ident, $kernel:ident, $block:ty, $wide:literal) => {
            /// Every weight row of `w` (`out.len()` rows of `kb` blocks) · `R` activation
            /// rows: `out[c][r]`.
            ///
            /// # Safety
            /// The CPU supports AVX2, FMA, F16C and AVX-512 F, VL, DQ, BW and VNNI; `w` holds
            /// `out.len() * kb` blocks, every `a[r]` at least `kb`, and `paired` the rows
            /// of `a` paired ([`pair_up`]: `R / 2 · kb` blocks).
            #[target_feature(
                enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni"
            )]
            pub(crate) unsafe fn $name<const R: usize>(
                w: &[$block],
                kb: usize,
                a: [&[ActBlock]; R],
                out: &mut [[f32; MAX_TILE]],
                paired: &[Pair],
            ) {
                unsafe {
                    let n = out.len();
                    let row = |c: usize| w.get_unchecked(c * kb..(c + 1) * kb);
                    // One row: the 256-bit kernel (a pair would leave half of each register
                    // idle).
                    if R == 1 {
                        for c in 0..n {
                            let r = vnni::$kernel::<1, R>([row(c)], a);
                            out.get_unchecked_mut(c)[..R].copy_from_slice(&r[0]);
                        }
                        return;
                    }
                    let mut pairs: [&[Pair]; MAX_TILE / 2] = [&[]; MAX_TILE / 2];
                    for (p, s) in pairs.iter_mut().enumerate().take(R / 2) {
                        // Checked: a missing pairing panics rather than reads out of bounds.
                        *s = &paired[p * kb..(p + 1) * kb];
                    }
                    let mut c = 0;
                    if $wide >= 4 && R <= 4 {
                        while c + 4 <= n {
                            let w4 = [row(c), row(c + 1), row(c + 2), row(c + 3)];
                            let r = $kernel::<4, R>(w4, a, pairs);
                            for (j, r) in r.iter().enumerate() {
                                out.get_unchecked_mut(c + j)[..R].copy_from_slice(r);
                            }
                            c += 4;
                        }
                    }
                    while c + 2 <= n {
                        let r = $kernel::<2, R>([row(c), row(c + 1)], a, pairs);
                        out.get_unchecked_mut(c)[..R].copy_from_slice(&r[0]);
                        out.get_unchecked_mut(c + 1)[..R].copy_from_slice(&r[1]);
                        c += 2;
                    }
                    while c < n {
                        let r = $kernel::<1, R>([row(c)], a, pairs);
                        out.get_unchecked_mut(c)[..R].copy_from_slice(&r[0]);
                        c += 1;
                    }
                }
            }
        };
    }

    rows512!(rows_q4_1, q4_1, BlockQ4_1, 4);
    rows512!(rows_q5_0, q5_0, BlockQ5_0, 4);
    // Q8_0's output layer, tens of MB streaming from memory, measured 9% slower with four
    // weight rows per call.
    rows512!(rows_q8_0, q8_0, BlockQ8_0, 2);
}
