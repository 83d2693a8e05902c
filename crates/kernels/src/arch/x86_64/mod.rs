//! x86-64 kernels: dot products of quantized weight rows with a tile of 8-bit activation rows
//! at once (each weight block unpacked once and multiplied into every row, so a batch or a
//! prefill tile reads the weights once per tile), the AVX-512 activation quantizer and the
//! AVX-512 f16 vector ops. The row loops (`rows_*`) run a work item's weight rows inside the
//! kernels' instruction set, prefetching weights ahead.
//!
//! Three builds of the 32-value formats' kernels: [`avx2`] (AVX2 + FMA + F16C; bytes
//! multiplied with `vpmaddubsw` then summed in pairs with `vpmaddwd`), [`vnni`] (adds AVX-512
//! VNNI on 256-bit registers: `vpdpbusd` does both steps in one instruction; used for one
//! activation row) and [`avx512`] (two activation rows per 512-bit register, tiles of up to
//! eight rows, the rows paired once per matmul by [`avx512::pair_up`]). All compute the same
//! eight lane sums per block and row (each the sum of four consecutive byte products;
//! `maddubs` never saturates for these formats) and the same f32 operations per lane, so they
//! return bit-identical results. The integer products are exact; the f32 steps are those of
//! the scalar twins in [`crate::quant::scalar`]. The K-quant kernels are in
//! [`avx2::kquant`] and [`avx512::kquant`]. Callers check the CPU features at run time
//! ([`crate::simd`]) and that every activation row has at least as many blocks as the weight
//! row ([`crate::quant::dots`]).
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::quant::blocks::{ActBlock, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::quant::kquant::{ActBlockK, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use crate::quant::{check_shapes, MAX_TILE};
use crate::simd::{Kernels, Simd};

/// How far ahead of the block being multiplied the kernels prefetch weights, in bytes. Rows
/// are short (360 bytes for a 576-wide `Q4_1` row) and the CPU's stream prefetchers barely
/// ramp up on them: measured on SmolLM2 decode (2 threads), 91 tok/s without, 123-130 with
/// 256-2048 bytes. From DRAM (a 1B model's 0.6 GB of weights, AVX-512 EPYC), 4 KiB reads
/// faster than 1 KiB: one thread streamed `Q4_K` rows at 17.4 against 15.6 GB/s.
const PREFETCH: usize = 4096;

/// Hints the CPU to bring the bytes `PREFETCH` after `block` into L1 (a hint: never faults,
/// even past the end of the weights).
#[inline(always)]
fn prefetch<T>(block: &T) {
    let p = (block as *const T).cast::<i8>().wrapping_add(PREFETCH);
    // SAFETY: a prefetch is a hint that never faults and reads nothing into the program; `p`
    // is only computed (`wrapping_add`), never dereferenced.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p) }
}

/// [`crate::quant::prefetch_l2`] on x86-64: one `prefetcht1` per 64 bytes of `data`.
pub(crate) fn prefetch_l2<T>(data: &[T]) {
    let p = data.as_ptr().cast::<i8>();
    for at in (0..std::mem::size_of_val(data)).step_by(64) {
        // SAFETY: a prefetch is a hint that never faults and reads nothing into the program;
        // the address is inside `data`.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(at)) }
    }
}

/// An f16 bit pattern as f32 (`vcvtph2ps`, which rounds as `half` does: exactly).
#[inline]
#[target_feature(enable = "f16c")]
fn f16(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// An f16 bit pattern as f32 in all eight lanes (exactly, as [`f16`]). A kernel's block
/// scale goes through this rather than `_mm256_set1_ps(f16(..))`: there LLVM loads the bits
/// with a `vpinsrw` whose other lanes come from a register it picks (in the `Q8_0` loop the
/// accumulator), so every block waited for the previous block's sum: one `Q8_0` row streamed
/// from L2 at 11 GB/s.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x8(bits: u16) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
}

/// A block format that is `repr(C)` with its f16 `d` and `m` (two u16) as its first four
/// bytes, which [`f16_pair`] loads together: implemented only for `Q4_1` and `Q5_1`, whose
/// definitions say so.
trait ScaleMinFirst: Sized {}
impl ScaleMinFirst for BlockQ4_1 {}
impl ScaleMinFirst for BlockQ5_1 {}

/// A `Q4_1`/`Q5_1` block's `d` and `m` as f32 in lanes 0 and 1.
#[inline]
#[target_feature(enable = "f16c")]
fn f16_pair<B: ScaleMinFirst>(b: &B) -> __m128 {
    // SAFETY: every `ScaleMinFirst` block is `repr(C)` with `d` and `m` (two u16) in its
    // first four bytes, all inside the borrowed block; the read is unaligned.
    let bits = unsafe { std::ptr::read_unaligned((b as *const B).cast::<i32>()) };
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
}

/// An activation block's `d` and `s` in lanes 0 and 1.
#[inline]
#[target_feature(enable = "avx")]
fn d_s(x: &ActBlock) -> __m128 {
    // SAFETY: `ActBlock` is `repr(C)` with `d` and `s` (two f32) in its first eight bytes,
    // all inside the borrowed block; `movsd` needs no alignment.
    _mm_castpd_ps(unsafe { _mm_load_sd((x as *const ActBlock).cast::<f64>()) })
}

/// The eight f32 lanes summed in llama.cpp's `hsum_float_8` order.
#[inline]
#[target_feature(enable = "avx")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The 32 nibbles of a 16-byte block: low nibbles in bytes 0..16, high ones in 16..32.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // Both lanes hold the 16 bytes; the upper lane is shifted down by a nibble.
    // SAFETY: reads the 16 bytes of `qs`; `movdqu` needs no alignment.
    let q = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(qs.as_ptr().cast()) });
    let q = _mm256_srlv_epi64(q, _mm256_set_epi64x(4, 4, 0, 0));
    _mm256_and_si256(q, _mm256_set1_epi8(0x0F))
}

/// Byte `j` is `0x10` where bit `j` of `qh` is set, else 0.
#[inline]
#[target_feature(enable = "avx2")]
fn fifth_bits(qh: u32) -> __m256i {
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

/// Unsigned bytes times signed bytes, four consecutive products summed per i32 lane, as f32
/// (AVX2: `maddubs` into i16 pairs, then pairs of pairs).
#[inline]
#[target_feature(enable = "avx2")]
fn mul_sum_avx2(u: __m256i, y: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(u, y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// [`mul_sum_avx2`] in one VNNI instruction: the same lane sums.
#[inline]
#[target_feature(enable = "avx2,avx512vl,avx512vnni")]
fn mul_sum_vnni(u: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, y))
}

/// The horizontal sum of every accumulator.
#[inline]
#[target_feature(enable = "avx")]
fn finish<const C: usize, const R: usize>(acc: [[__m256; R]; C]) -> [[f32; R]; C] {
    let mut out = [[0f32; R]; C];
    for c in 0..C {
        for r in 0..R {
            out[c][r] = hsum(acc[c][r]);
        }
    }
    out
}

/// One `Q5_0`/`Q4_0` block row's lane sums with AVX2: signed weights `q` (their magnitudes
/// `abs`) times the activations, through the sign trick (`maddubs` wants one unsigned
/// operand). `SHIFT` is [`signed_vnni`]'s, unused here.
#[inline]
#[target_feature(enable = "avx2")]
fn signed_avx2<const SHIFT: i32>(_u: __m256i, q: __m256i, abs: __m256i, x: &ActBlock) -> __m256 {
    mul_sum_avx2(abs, _mm256_sign_epi8(load(&x.qs), q))
}

/// The same lane sums with VNNI: the unsigned values `u = q + (16 >> SHIFT)` times the
/// activations, started from `-(16 >> SHIFT) Σa` per lane (`x.neg16 >> SHIFT`, exact: a
/// multiple of 16): exact, and no sign fix-up per row. `SHIFT` 0 for `Q5_0` (`q + 16`), 1
/// for `Q4_0` (`q + 8`).
#[inline]
#[target_feature(enable = "avx2,avx512vl,avx512vnni")]
fn signed_vnni<const SHIFT: i32>(u: __m256i, _q: __m256i, _abs: __m256i, x: &ActBlock) -> __m256 {
    // SAFETY: reads the 32 bytes of `x.neg16`; `vmovdqu` needs no alignment.
    let start = unsafe { _mm256_loadu_si256(x.neg16.as_ptr().cast()) };
    let start = _mm256_srai_epi32::<SHIFT>(start);
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, u, load(&x.qs)))
}

/// The 32 bytes of `qs`.
#[inline]
#[target_feature(enable = "avx")]
fn load(qs: &[i8; 32]) -> __m256i {
    // SAFETY: reads the 32 bytes of `qs`; `vmovdqu` needs no alignment.
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
            let n = out.len();
            // SAFETY (every `row(c)` below): `c < n` and `w` holds `n` rows of `kb` blocks.
            let row = |c: usize| unsafe { w.get_unchecked(c * kb..(c + 1) * kb) };
            let mut c = 0;
            // Two weight rows per call where the activation rows are several (prefill,
            // batches): each activation block is loaded once for both. Not for one row
            // (decode), which streams the weights from memory: two interleaved streams
            // there cost more than the loads they save.
            if R > 1 {
                while c + 2 <= n {
                    // SAFETY: the rows have `kb` blocks and every `a[r]` at least `kb`; the
                    // CPU has this module's instruction set (the contract).
                    let r = unsafe { $kernel::<2, R>([row(c), row(c + 1)], a) };
                    out[c][..R].copy_from_slice(&r[0]);
                    out[c + 1][..R].copy_from_slice(&r[1]);
                    c += 2;
                }
            }
            while c < n {
                // SAFETY: as above.
                let r = unsafe { $kernel::<1, R>([row(c)], a) };
                out[c][..R].copy_from_slice(&r[0]);
                c += 1;
            }
        }
    };
}

/// The kernel of a format whose values are `d · q + m` with unsigned `q` (`Q4_1`, `Q5_1`):
/// `$unpack` makes the 32 `q` of the block `$b` as bytes.
macro_rules! offset_kernel {
    (
        $features:literal,
        $mul_sum:ident,
        $name:ident,
        $block:ty,
        $format:literal,
        |$b:ident| $unpack:expr
    ) => {
        #[doc = concat!("`C` `", $format, "` weight rows · `R` activation rows (`out[c][r]`).")]
        /// Each output is
        /// one independent accumulation, the same whatever `C` and `R` are; each weight
        /// block is unpacked once for the `R` rows and each activation block loaded once
        /// for the `C` weight rows.
        ///
        /// # Safety
        /// The CPU supports this module's instruction set; the `w[c]` have one length and
        /// every `a[r]` at least that many blocks.
        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name<const C: usize, const R: usize>(
            w: [&[$block]; C],
            a: [&[ActBlock]; R],
        ) -> [[f32; R]; C] {
            let mut acc = [[_mm256_setzero_ps(); R]; C];
            // Lane 1 accumulates the `m · s` terms (lane 0 is unused).
            let mut ms = [[_mm_setzero_ps(); R]; C];
            for i in 0..w[0].len() {
                let mut u = [_mm256_setzero_si256(); C];
                let mut dm = [_mm_setzero_ps(); C];
                for c in 0..C {
                    // SAFETY: `i < w[0].len()`, the length of every `w[c]` (the contract).
                    let $b = unsafe { w[c].get_unchecked(i) };
                    prefetch($b);
                    u[c] = $unpack;
                    dm[c] = f16_pair($b);
                }
                for r in 0..R {
                    // SAFETY: `i < w[0].len()`, at most the length of every `a[r]` (the
                    // contract).
                    let x = unsafe { a[r].get_unchecked(i) };
                    let (xq, xds) = (load(&x.qs), d_s(x));
                    for c in 0..C {
                        // Lane 0: d · x.d; lane 1: m · x.s.
                        let scales = _mm_mul_ps(dm[c], xds);
                        let p = $mul_sum(u[c], xq);
                        acc[c][r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(scales), p, acc[c][r]);
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
    };
}

/// The kernel of a format whose values are `d · (q - (16 >> $shift))` with unsigned `q`
/// (`Q5_0`: shift 0, `Q4_0`: shift 1), multiplied as signed bytes by `$signed` (see
/// [`signed_avx2`], [`signed_vnni`]): `$unpack` makes the 32 `q` of the block `$b` as bytes.
macro_rules! signed_kernel {
    (
        $features:literal,
        $signed:ident,
        $name:ident,
        $block:ty,
        $format:literal,
        $shift:literal,
        |$b:ident| $unpack:expr
    ) => {
        #[doc = concat!("`C` `", $format, "` weight rows · `R` activation rows. The integer sums")]
        /// are exact (see [`signed_avx2`] and [`signed_vnni`]): subtracting `16 Σa` from
        /// unsigned products in f32 instead cancels catastrophically on Gemma's very large
        /// activations.
        ///
        /// # Safety
        /// As [`q4_1`].
        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name<const C: usize, const R: usize>(
            w: [&[$block]; C],
            a: [&[ActBlock]; R],
        ) -> [[f32; R]; C] {
            let mut acc = [[_mm256_setzero_ps(); R]; C];
            for i in 0..w[0].len() {
                let mut u = [_mm256_setzero_si256(); C];
                let mut q = [_mm256_setzero_si256(); C];
                let mut abs = [_mm256_setzero_si256(); C];
                let mut d = [_mm256_setzero_ps(); C];
                for c in 0..C {
                    // SAFETY: `i < w[0].len()`, the length of every `w[c]` (the contract).
                    let $b = unsafe { w[c].get_unchecked(i) };
                    prefetch($b);
                    u[c] = $unpack;
                    q[c] = _mm256_sub_epi8(u[c], _mm256_set1_epi8(16 >> $shift));
                    abs[c] = _mm256_sign_epi8(q[c], q[c]);
                    d[c] = f16x8($b.d);
                }
                for r in 0..R {
                    // SAFETY: `i < w[0].len()`, at most the length of every `a[r]` (the
                    // contract).
                    let x = unsafe { a[r].get_unchecked(i) };
                    let xd = _mm256_set1_ps(x.d);
                    for c in 0..C {
                        let p = $signed::<$shift>(u[c], q[c], abs[c], x);
                        // d · x.d, one product broadcast (as the scalar `d * x.d`).
                        let scale = _mm256_mul_ps(d[c], xd);
                        acc[c][r] = _mm256_fmadd_ps(scale, p, acc[c][r]);
                    }
                }
            }
            finish(acc)
        }
    };
}

/// The kernels of the 32-value formats, built in the module that invokes it (after `use
/// super::*`) for one instruction set (`$features`) with its byte product.
macro_rules! q32_kernels {
    (
        $features:literal,
        $mul_sum:ident,
        $signed:ident
        $(, $with_rows:ident)?
    ) => {

        offset_kernel!($features, $mul_sum, q4_1, BlockQ4_1, "Q4_1", |b| nibbles(&b.qs));
        offset_kernel!($features, $mul_sum, q5_1, BlockQ5_1, "Q5_1", |b| _mm256_or_si256(
            nibbles(&b.qs),
            fifth_bits(b.qh)
        ));
        signed_kernel!($features, $signed, q5_0, BlockQ5_0, "Q5_0", 0, |b| _mm256_or_si256(
            nibbles(&b.qs),
            fifth_bits(b.qh)
        ));
        signed_kernel!($features, $signed, q4_0, BlockQ4_0, "Q4_0", 1, |b| nibbles(&b.qs));

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
            let mut acc = [[_mm256_setzero_ps(); R]; C];
            for i in 0..w[0].len() {
                let mut q = [_mm256_setzero_si256(); C];
                let mut u = [_mm256_setzero_si256(); C];
                let mut d = [_mm256_setzero_ps(); C];
                for c in 0..C {
                    // SAFETY: `i < w[0].len()`, the length of every `w[c]` (the contract).
                    let b = unsafe { w[c].get_unchecked(i) };
                    prefetch(b);
                    q[c] = load(&b.qs);
                    u[c] = _mm256_sign_epi8(q[c], q[c]);
                    d[c] = f16x8(b.d);
                }
                for r in 0..R {
                    // SAFETY: `i < w[0].len()`, at most the length of every `a[r]` (the
                    // contract).
                    let x = unsafe { a[r].get_unchecked(i) };
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

        $(all_rows!($with_rows, $features);)?
    };
}

/// The row loops of the five formats (`with_rows` asks for them).
macro_rules! all_rows {
    (with_rows, $features:literal) => {
        rows!($features, rows_q4_0, q4_0, BlockQ4_0);
        rows!($features, rows_q4_1, q4_1, BlockQ4_1);
        rows!($features, rows_q5_0, q5_0, BlockQ5_0);
        rows!($features, rows_q5_1, q5_1, BlockQ5_1);
        rows!($features, rows_q8_0, q8_0, BlockQ8_0);
    };
}

/// Calls an interleaved (x16) kernel with the 1..=4 activation rows `$rows` as an array
/// bound to `$a` (its row count inferred from the array) and copies its results
/// (`r[row][j]`) into `$out[j][row]`.
macro_rules! x16_rows {
    ($rows:expr, $out:expr, |$a:ident| $call:expr) => {
        match *$rows {
            [a] => {
                let $a = [a];
                crate::quant::interleaved::transpose_into(&$call, $out)
            }
            [a, b] => {
                let $a = [a, b];
                crate::quant::interleaved::transpose_into(&$call, $out)
            }
            [a, b, c] => {
                let $a = [a, b, c];
                crate::quant::interleaved::transpose_into(&$call, $out)
            }
            [a, b, c, d] => {
                let $a = [a, b, c, d];
                crate::quant::interleaved::transpose_into(&$call, $out)
            }
            _ => unreachable!("1..=4 rows, checked by the caller"),
        }
    };
}

pub mod avx2;
pub mod avx512;
pub mod vnni;

/// Calls the row loop `$k` (one of the `rows_*` functions) for the 1..=4 activation rows
/// (`4`), or 1..=8 (`8`, for the 512-bit loops, which also take the paired rows `$pairs`).
macro_rules! call_rows {
    (4, $($k:ident)::+, $w:ident, $kb:ident, $rows:ident, $out:ident) => {
        // SAFETY: the `Kernels` token proves the CPU has this row loop's instruction set (every
        // loop called under a level needs at most what the level has), and the caller checked
        // (`quant::check_shapes`) that `w` holds `out.len()` rows of `kb` blocks and every
        // activation row at least `kb` blocks.
        unsafe {
            match *$rows {
                [a] => $($k)::+::<1>($w, $kb, [a], $out),
                [a, b] => $($k)::+::<2>($w, $kb, [a, b], $out),
                [a, b, c] => $($k)::+::<3>($w, $kb, [a, b, c], $out),
                [a, b, c, d] => $($k)::+::<4>($w, $kb, [a, b, c, d], $out),
                _ => {}
            }
        }
    };
    (8, $($k:ident)::+, $w:ident, $kb:ident, $rows:ident, $out:ident, $pairs:ident) => {
        // SAFETY: as above; the caller also checked `pairs` holds the pairs of `rows`.
        unsafe {
            match *$rows {
                [a] => $($k)::+::<1>($w, $kb, [a], $out, $pairs),
                [a, b] => $($k)::+::<2>($w, $kb, [a, b], $out, $pairs),
                [a, b, c] => $($k)::+::<3>($w, $kb, [a, b, c], $out, $pairs),
                [a, b, c, d] => $($k)::+::<4>($w, $kb, [a, b, c, d], $out, $pairs),
                [a, b, c, d, e] => $($k)::+::<5>($w, $kb, [a, b, c, d, e], $out, $pairs),
                [a, b, c, d, e, f] => $($k)::+::<6>($w, $kb, [a, b, c, d, e, f], $out, $pairs),
                [a, b, c, d, e, f, g] => {
                    $($k)::+::<7>($w, $kb, [a, b, c, d, e, f, g], $out, $pairs)
                }
                [a, b, c, d, e, f, g, h] => {
                    $($k)::+::<8>($w, $kb, [a, b, c, d, e, f, g, h], $out, $pairs)
                }
                _ => {}
            }
        }
    };
}

/// The dispatch of one 32-value format: the 512-bit row loop (tiles of up to eight rows,
/// paired) under [`Simd::Avx512Vnni`], the AVX2 one under the other x86 levels.
macro_rules! dots_q32 {
    ($name:ident, $block:ty, $rows:ident) => {
        /// The SIMD dot products of [`crate::quant::dots`] for this format (`kernels` an x86
        /// level).
        ///
        /// # Panics
        /// On the shapes [`crate::quant::dots`] rejects.
        pub(crate) fn $name(
            kernels: Kernels,
            w: &[$block],
            kb: usize,
            (rows, pairs): (&[&[ActBlock]], &[avx512::Pair]),
            _prompt: bool,
            out: &mut [[f32; MAX_TILE]],
        ) {
            check_shapes(w.len(), kb, rows, pairs.len(), out.len());
            match kernels.simd() {
                Simd::Avx512Vnni => call_rows!(8, avx512::$rows, w, kb, rows, out, pairs),
                Simd::Avx2 | Simd::Avx512 => call_rows!(4, avx2::$rows, w, kb, rows, out),
                _ => unreachable!("an x86 level"),
            }
        }
    };
}

dots_q32!(dots_q4_0, BlockQ4_0, rows_q4_0);
dots_q32!(dots_q4_1, BlockQ4_1, rows_q4_1);
dots_q32!(dots_q5_0, BlockQ5_0, rows_q5_0);
dots_q32!(dots_q5_1, BlockQ5_1, rows_q5_1);
dots_q32!(dots_q8_0, BlockQ8_0, rows_q8_0);

/// The dispatch of one K-quant format: under [`Simd::Avx512Vnni`] the AVX-512 row loops
/// where the format has them (`$rows_vnni` in the one-row order, `$prompt_vnni` in the
/// prompt order, or `prompt_vnni:` alone), else the AVX2 ones.
macro_rules! dots_k {
    (
        $name:ident, $block:ty, $rows:ident, $prompt_rows:ident,
        one_row_vnni: $($rv:ident)::+, prompt_vnni: $($pv:ident)::+
    ) => {
        /// The SIMD dot products of [`crate::quant::dots`] for this format (`kernels` an x86
        /// level).
        ///
        /// # Panics
        /// On the shapes [`crate::quant::dots`] rejects.
        pub(crate) fn $name(
            kernels: Kernels,
            w: &[$block],
            kb: usize,
            (rows, pairs): (&[&[ActBlockK]], &[avx512::Pair]),
            prompt: bool,
            out: &mut [[f32; MAX_TILE]],
        ) {
            check_shapes(w.len(), kb, rows, pairs.len(), out.len());
            match (kernels.simd(), prompt) {
                (Simd::Avx512Vnni, true) => call_rows!(4, $($pv)::+, w, kb, rows, out),
                (Simd::Avx2 | Simd::Avx512, true) => {
                    call_rows!(4, avx2::kquant::$prompt_rows, w, kb, rows, out)
                }
                (Simd::Avx512Vnni, false) => call_rows!(4, $($rv)::+, w, kb, rows, out),
                (Simd::Avx2 | Simd::Avx512, false) => {
                    call_rows!(4, avx2::kquant::$rows, w, kb, rows, out)
                }
                _ => unreachable!("an x86 level"),
            }
        }
    };
    ($name:ident, $block:ty, $rows:ident, $prompt_rows:ident) => {
        dots_k!(
            $name, $block, $rows, $prompt_rows,
            one_row_vnni: avx2::kquant::$rows, prompt_vnni: avx2::kquant::$prompt_rows
        );
    };
    ($name:ident, $block:ty, $rows:ident, $prompt_rows:ident, prompt_vnni: $pv:ident) => {
        dots_k!(
            $name, $block, $rows, $prompt_rows,
            one_row_vnni: avx2::kquant::$rows, prompt_vnni: avx512::kquant::$pv
        );
    };
    ($name:ident, $block:ty, $rows:ident, $prompt_rows:ident, one_row_vnni: $rv:ident) => {
        dots_k!(
            $name, $block, $rows, $prompt_rows,
            one_row_vnni: avx512::kquant::$rv, prompt_vnni: avx2::kquant::$prompt_rows
        );
    };
}

// Under AVX-512 VNNI the models keep `Q4_K` with a multiple of 16 rows interleaved
// (`quant::interleaved`); the row-major one-row order left here runs the AVX2 loop. A
// prompt's `Q5_K` and `Q6_K` with a multiple of 16 rows go through the interleaved kernels
// too (copied group by group), so their row-major tiled order keeps only the AVX2 loop.
dots_k!(
    dots_q4k,
    BlockQ4K,
    rows_q4k,
    rows_q4k_grouped,
    prompt_vnni: rows_q4k_grouped_vnni
);
dots_k!(
    dots_q6k,
    BlockQ6K,
    rows_q6k,
    rows_q6k_tiled,
    one_row_vnni: rows_q6k_vnni
);
dots_k!(dots_q5k, BlockQ5K, rows_q5k, rows_q5k_tiled);
dots_k!(dots_q3k, BlockQ3K, rows_q3k, rows_q3k_tiled);
dots_k!(dots_q2k, BlockQ2K, rows_q2k, rows_q2k_tiled);
