//! GGML's K-quant weight formats `Q4_K` and `Q6_K` (256-value super-blocks), the 8-bit `Q8_K`
//! activation blocks their dot products consume, and the kernels: scalar twins and AVX2
//! (+FMA+F16C) versions that unpack each weight block once and multiply it into up to four
//! activation rows.
//!
//! # What llama.cpp computes, and what we do
//!
//! * **Activations** (`Q8_K`): x86 has no SIMD variant; `quantize_row_q8_K` is
//!   `quantize_row_q8_K_ref`: per 256 values, `max` is the first value of largest magnitude
//!   (signed), `iscale = -127 / max`, `q = min(127, nearest_int(iscale · x))` where GGML's
//!   `nearest_int` (the `+ 1.5·2²³` trick) rounds halfway cases **to even**, `d = 1 / iscale`,
//!   and `bsums` holds the sums of each 16 quants. The repacked 4-row quantizer
//!   (`ggml_quantize_mat_q8_K_4x8`, AVX2) rounds to even too and differs only in the sign it
//!   gives `d` when `+max` and `-max` both occur, which negates `d` and every quant together
//!   and leaves every product unchanged. candle's `BlockQ8K::from_float` rounds halfway cases
//!   away from zero, so it differs from GGML (and us) by one step on exact ties.
//! * **`Q4_K`**: llama.cpp's CPU backend repacks `Q4_K` weights whose row count is a multiple
//!   of 8 (every `Q4_K` matrix of Gemma 3 270M) on AVX2 machines and runs one activation row
//!   (decoding) through `ggml_gemv_q4_K_8x8_q8_K`: per super-block the exact integers
//!   `Σ_j scale_j·Σ q·a` and `Σ_j min_j·Σ a` are each converted to f32 once and fused into two
//!   accumulators with `d_w·d_a` and `dmin_w·d_a`; the output is the first minus the second.
//!   We do exactly that, so decoding rounds as llama.cpp's does. A prompt's rows go four at
//!   a time through `ggml_gemm_q4_K_8x8_q8_K`, which fuses every 64 values instead; the rows
//!   left over (`m mod 4`) through the gemv. We do both ([`dot_q4k_grouped`], chosen per row
//!   tile under `quant::as_prompt`).
//! * **`Q6_K`**: not repacked on x86. One activation row (decoding, and prompts of fewer
//!   than eight rows) goes through `ggml_vec_dot_q6_K_q8_K`'s AVX2 path: eight exact i32
//!   lanes per super-block (lane `L` takes values `32c + 4L .. 32c + 4L + 4` of every 32-value
//!   chunk `c`, unsigned `q` times its 16-value sub-block scale; then `32·(bsums[2L]·scale[2L]
//!   + bsums[2L+1]·scale[2L+1])` is taken off lane `L`), each converted to f32 and fused into
//!   its own accumulator with `d_a·d_w`, the lanes summed as
//!   `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`. Prompts of eight rows or more go through
//!   llama.cpp's tiled matmul: one exact integer per super-block, times `d_w`, fused into the
//!   accumulator with `d_a` ([`dot_q6k_tiled`]). We do exactly both.
//!
//! The scalar twins follow the same order with `f32::mul_add`, so they and the AVX2 kernels
//! return identical bits, and a row's result never depends on the other rows of a call. Both
//! prompt orders also have an AVX-512 VNNI build (`x86::rows_q4k_grouped_vnni`,
//! `x86::rows_q6k_tiled_vnni`): 64 values per register, the sub-block scales applied by
//! `vpdpwssd`, and the exact integers of four rows fused into their accumulators together;
//! the same integers and per-row f32 operations, so the same bits (the tests assert it).

use half::f16;

use super::blocks::WeightBlock;

/// Values per K-quant super-block.
pub(crate) const QK_K: usize = 256;

/// GGML `Q4_K` (144 bytes in the file), with its scales unpacked: value `v` of sub-block
/// `j = v / 32` is `d·scales[j]·q − dmin·mins[j]`, `q` in 0..16. Value `64i + l` (`l < 32`) is
/// the low nibble of `qs[32i + l]`, value `64i + 32 + l` its high nibble.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BlockQ4K {
    /// The super-block scale (the file's f16, exactly).
    pub(crate) d: f32,
    /// The super-block scale of the mins (the file's f16, exactly).
    pub(crate) dmin: f32,
    /// The eight 6-bit sub-block scales.
    pub(crate) scales: [u8; 8],
    /// The eight 6-bit sub-block mins.
    pub(crate) mins: [u8; 8],
    /// The 256 4-bit quants, as in the file.
    pub(crate) qs: [u8; 128],
}

/// GGML `Q6_K` (210 bytes in the file): value `v` is `d·scales[v / 16]·(q − 32)`, `q` in
/// 0..64. In half `h` (values `128h..128h + 128`), value `128h + 32t + l` (`t < 4`, `l < 32`)
/// takes its low four bits from `ql[64h + 32·(t & 1) + l]` (the low nibble for `t < 2`, the
/// high one otherwise) and its high two from bits `2t..2t + 2` of `qh[32h + l]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BlockQ6K {
    /// The super-block scale (the file's f16, exactly).
    pub(crate) d: f32,
    /// The sixteen 8-bit sub-block scales.
    pub(crate) scales: [i8; 16],
    /// The low four bits of each quant, as in the file.
    pub(crate) ql: [u8; 128],
    /// The high two bits of each quant, as in the file.
    pub(crate) qh: [u8; 64],
}

/// One 256-value block of an activation row quantized to 8 bits (GGML's `block_q8_K`):
/// `value = d·qs[i]`, `bsums[j]` the sum of `qs[16j..16j + 16]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ActBlockK {
    /// The scale, `1 / iscale` (negative when the largest-magnitude value is positive).
    pub(crate) d: f32,
    /// The quants, in `-127..=127`.
    pub(crate) qs: [i8; QK_K],
    /// Sums of each 16 quants.
    pub(crate) bsums: [i16; QK_K / 16],
}

impl Default for ActBlockK {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// The f16 at byte `i`, as f32.
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

impl WeightBlock for BlockQ4K {
    const BYTES: usize = 144;
    fn read(b: &[u8]) -> Self {
        // GGML's 12-byte packing: scales and mins 0..4 are the low six bits of bytes 0..4 and
        // 4..8; 4..8 take their low four bits from the nibbles of bytes 8..12 and their top
        // two from the spare top bits of bytes 0..8.
        let s = &b[4..16];
        let mut scales = [0u8; 8];
        let mut mins = [0u8; 8];
        for j in 0..8 {
            (scales[j], mins[j]) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                (
                    (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
                    (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                )
            };
        }
        let mut qs = [0u8; 128];
        qs.copy_from_slice(&b[16..144]);
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales,
            mins,
            qs,
        }
    }
}

impl WeightBlock for BlockQ6K {
    const BYTES: usize = 210;
    fn read(b: &[u8]) -> Self {
        let mut ql = [0u8; 128];
        ql.copy_from_slice(&b[..128]);
        let mut qh = [0u8; 64];
        qh.copy_from_slice(&b[128..192]);
        let mut scales = [0i8; 16];
        for (s, &x) in scales.iter_mut().zip(&b[192..208]) {
            *s = x as i8;
        }
        Self {
            d: f16_at(b, 208),
            scales,
            ql,
            qh,
        }
    }
}

/// The signed quants `q − 32` of values `32c..32c + 32` of a `Q6_K` block.
fn q6_chunk(b: &BlockQ6K, c: usize) -> [i8; 32] {
    let (h, t) = (c / 4, c % 4);
    let ql = &b.ql[64 * h + 32 * (t & 1)..][..32];
    let qh = &b.qh[32 * h..][..32];
    std::array::from_fn(|l| {
        let low = if t < 2 { ql[l] & 0x0F } else { ql[l] >> 4 };
        let high = (qh[l] >> (2 * t)) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

/// Appends the block's 256 values to `out`, computed as GGML's `dequantize_row_q4_K` (and
/// candle) does: `(d·scale)·q − dmin·min`, each product rounded to f32.
pub(crate) fn dequantize_q4k(b: &BlockQ4K, out: &mut Vec<f32>) {
    for (i, q) in b.qs.chunks_exact(32).enumerate() {
        let (d1, m1) = (b.d * b.scales[2 * i] as f32, b.dmin * b.mins[2 * i] as f32);
        let (d2, m2) = (
            b.d * b.scales[2 * i + 1] as f32,
            b.dmin * b.mins[2 * i + 1] as f32,
        );
        out.extend(q.iter().map(|&q| d1 * (q & 0x0F) as f32 - m1));
        out.extend(q.iter().map(|&q| d2 * (q >> 4) as f32 - m2));
    }
}

/// Appends the block's 256 values to `out`, computed as GGML's `dequantize_row_q6_K` (and
/// candle) does: `(d·scale)·(q − 32)`.
pub(crate) fn dequantize_q6k(b: &BlockQ6K, out: &mut Vec<f32>) {
    for c in 0..8 {
        let q = q6_chunk(b, c);
        for (half, q) in q.chunks_exact(16).enumerate() {
            let ds = b.d * b.scales[2 * c + half] as f32;
            out.extend(q.iter().map(|&q| ds * q as f32));
        }
    }
}

/// GGML's `nearest_int`: `v` rounded to the nearest integer, halfway cases to even, by adding
/// `1.5·2²³` in f32 and reading the low mantissa bits (exact for `|v| < 2²²`; here `|v| ≤ 127`
/// unless the block's largest magnitude is so small that `iscale` overflows, and then
/// `d = 0` makes the quants irrelevant, as in GGML). The product fed to it is rounded to f32
/// first, as in GGML's unfused C; this also avoids a libm call per value.
#[inline]
fn nearest_int(v: f32) -> i32 {
    let biased = v + 12_582_912.0;
    (biased.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// Quantizes one row of `256 · out.len()` values into `out` exactly as GGML's
/// `quantize_row_q8_K_ref` (llama.cpp's x86 activation quantizer for K-quant matmuls) does;
/// see the module docs. A block of zeros gets `d = 0` and zero quants and sums.
pub(crate) fn quantize_row_q8k(xs: &[f32], out: &mut [ActBlockK]) {
    assert_eq!(xs.len(), out.len() * QK_K, "quantize_row_q8k: row length");
    for (block, xs) in out.iter_mut().zip(xs.chunks_exact(QK_K)) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &x in xs {
            if x.abs() > amax {
                amax = x.abs();
                max = x;
            }
        }
        if amax == 0.0 {
            *block = ActBlockK::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &x) in block.qs.iter_mut().zip(xs) {
            *q = nearest_int(iscale * x).min(127) as i8;
        }
        for (s, q) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
            *s = q.iter().map(|&q| q as i16).sum();
        }
        block.d = 1.0 / iscale;
    }
}

/// `Σ w·a` over the blocks of one `Q4_K` weight row and one activation row, rounded as
/// llama.cpp's repacked x86 gemv rounds it (see the module docs).
pub(crate) fn dot_q4k(w: &[BlockQ4K], a: &[ActBlockK]) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (w, a) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for (j, q) in w.qs.chunks_exact(32).enumerate() {
            let (mut lo, mut hi) = (0i32, 0i32);
            for (l, &q) in q.iter().enumerate() {
                lo += (q & 0x0F) as i32 * a.qs[64 * j + l] as i32;
                hi += (q >> 4) as i32 * a.qs[64 * j + 32 + l] as i32;
            }
            sumi += w.scales[2 * j] as i32 * lo + w.scales[2 * j + 1] as i32 * hi;
        }
        let mut summ = 0i32;
        for (j, &m) in w.mins.iter().enumerate() {
            summ += m as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
        }
        acc = (sumi as f32).mul_add(w.d * a.d, acc);
        acc_min = (summ as f32).mul_add(w.dmin * a.d, acc_min);
    }
    acc - acc_min
}

/// `Σ w·a` as llama.cpp's repacked x86 4-row gemm (`ggml_gemm_q4_K_8x8_q8_K`, the rows of a
/// prompt taken four at a time) rounds it: the same exact integers, but fused into the
/// accumulators every 64 values (two sub-blocks) instead of once per super-block.
pub(crate) fn dot_q4k_grouped(w: &[BlockQ4K], a: &[ActBlockK]) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (w, a) in w.iter().zip(a) {
        for (j, q) in w.qs.chunks_exact(32).enumerate() {
            let (mut lo, mut hi) = (0i32, 0i32);
            for (l, &q) in q.iter().enumerate() {
                lo += (q & 0x0F) as i32 * a.qs[64 * j + l] as i32;
                hi += (q >> 4) as i32 * a.qs[64 * j + 32 + l] as i32;
            }
            let sumi = w.scales[2 * j] as i32 * lo + w.scales[2 * j + 1] as i32 * hi;
            let summ = w.mins[2 * j] as i32 * (a.bsums[4 * j] as i32 + a.bsums[4 * j + 1] as i32)
                + w.mins[2 * j + 1] as i32
                    * (a.bsums[4 * j + 2] as i32 + a.bsums[4 * j + 3] as i32);
            acc = (sumi as f32).mul_add(w.d * a.d, acc);
            acc_min = (summ as f32).mul_add(w.dmin * a.d, acc_min);
        }
    }
    acc - acc_min
}

/// The eight f32 lanes summed as llama.cpp's `hsum_float_8` sums them.
fn hsum8(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// `Σ w·a` over the blocks of one `Q6_K` weight row and one activation row, rounded as
/// llama.cpp's AVX2 `ggml_vec_dot_q6_K_q8_K` rounds it (see the module docs).
pub(crate) fn dot_q6k(w: &[BlockQ6K], a: &[ActBlockK]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, a) in w.iter().zip(a) {
        let mut lanes = [0i32; 8];
        for c in 0..8 {
            let q = q6_chunk(w, c);
            let y = &a.qs[32 * c..][..32];
            for (b, (&q, &y)) in q.iter().zip(y).enumerate() {
                let scale = w.scales[2 * c + b / 16] as i32;
                // `q6_chunk` gives `q - 32`; the kernel multiplies the unsigned `q`.
                lanes[b / 4] += scale * ((q as i32 + 32) * y as i32);
            }
        }
        // The `- 32` goes in afterwards, lane `l` taking sub-blocks `2l` and `2l + 1`.
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane -= 32
                * (a.bsums[2 * l] as i32 * w.scales[2 * l] as i32
                    + a.bsums[2 * l + 1] as i32 * w.scales[2 * l + 1] as i32);
        }
        let d = a.d * w.d;
        for (acc, &lane) in acc.iter_mut().zip(&lanes) {
            *acc = d.mul_add(lane as f32, *acc);
        }
    }
    hsum8(acc)
}

/// `Σ w·a` as llama.cpp's tiled K-quant matmul (`ggml-cpu/tiled`, taken for eight or more
/// activation rows, i.e. prompts) rounds it on x86: per super-block the exact integer
/// `Σ scale·(q − 32)·a` is converted to f32 and multiplied by the weight scale, then fused
/// into the accumulator with the activation scale (checked value for value against
/// llama.cpp's outputs on Gemma 3's `Q6_K` layers).
pub(crate) fn dot_q6k_tiled(w: &[BlockQ6K], a: &[ActBlockK]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let mut sum = 0i32;
        for c in 0..8 {
            let q = q6_chunk(w, c);
            let y = &a.qs[32 * c..][..32];
            for (b, (&q, &y)) in q.iter().zip(y).enumerate() {
                sum += w.scales[2 * c + b / 16] as i32 * (q as i32 * y as i32);
            }
        }
        acc = (sum as f32 * w.d).mul_add(a.d, acc);
    }
    acc
}

/// AVX2 kernels: each weight block is unpacked once and multiplied into all `R` activation
/// rows; integer products are exact (`maddubs` sees weights of at most 15 or 32 in magnitude
/// against activations in `-127..=127`, far from i16 saturation) and the f32 steps are those
/// of the scalar twins, so results are bit-identical to them.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{ActBlockK, BlockQ4K, BlockQ6K};

    /// The sum of the eight i32 lanes (exact).
    #[inline(always)]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        unsafe {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            hsum_i32_4(s)
        }
    }

    /// The sum of the four i32 lanes (exact).
    #[inline(always)]
    unsafe fn hsum_i32_4(s: __m128i) -> i32 {
        unsafe {
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01));
            _mm_cvtsi128_si32(s)
        }
    }

    /// The eight f32 lanes summed in llama.cpp's `hsum_float_8` order (the scalar twins'
    /// `hsum8`).
    #[inline(always)]
    unsafe fn hsum_f32(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// Hints the CPU to bring the block 1 KiB after `block` (its three cache lines) into L1,
    /// as the 32-value kernels do (`quant::x86`): the hardware prefetchers barely ramp up on
    /// rows this short. A hint: never faults, even past the end of the weights.
    #[inline(always)]
    unsafe fn prefetch<T>(block: &T) {
        let p = (block as *const T).cast::<i8>().wrapping_add(1024);
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128));
        }
    }

    /// 32 bytes from `p`.
    #[inline(always)]
    unsafe fn load<T>(p: *const T) -> __m256i {
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
                    unsafe {
                        let r = $kernel::<R>(w.get_unchecked(c * kb..(c + 1) * kb), a);
                        o[..R].copy_from_slice(&r);
                    }
                }
            }
        };
    }

    rows!(rows_q4k, q4k, BlockQ4K);
    rows!(rows_q4k_grouped, q4k_grouped, BlockQ4K);
    rows!(rows_q6k, q6k, BlockQ6K);
    rows!(rows_q6k_tiled, q6k_tiled, BlockQ6K);

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
        unsafe {
            if R != 4 {
                return rows_q4k_grouped::<R>(w, kb, a, out);
            }
            let s: &[&[ActBlockK]] = &a;
            let a4 = [s[0], s[1], s[2], s[3]];
            for (c, o) in out.iter_mut().enumerate() {
                let r = q4k_grouped4(w.get_unchecked(c * kb..(c + 1) * kb), a4);
                o[..4].copy_from_slice(&r);
            }
        }
    }

    /// The sums of the i32 lanes of each of four registers: lane `k` of the result is the sum
    /// of `g[k]` (exact).
    #[inline(always)]
    unsafe fn reduce4(g: [__m512i; 4]) -> __m128i {
        unsafe {
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

    /// The four index registers of a [`scale_words`] table.
    #[inline(always)]
    unsafe fn scale_index(t: &[[i16; 32]; 4]) -> [__m512i; 4] {
        unsafe {
            [
                _mm512_loadu_si512(t[0].as_ptr().cast()),
                _mm512_loadu_si512(t[1].as_ptr().cast()),
                _mm512_loadu_si512(t[2].as_ptr().cast()),
                _mm512_loadu_si512(t[3].as_ptr().cast()),
            ]
        }
    }

    /// A 4×4 transpose: lane `r` of result `k` is lane `k` of `s[r]`.
    #[inline(always)]
    unsafe fn transpose4(s: [__m128i; 4]) -> [__m128i; 4] {
        unsafe {
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
    }

    /// One `Q4_K` weight row · four activation rows in the grouped order (see
    /// [`rows_q4k_grouped_vnni`]).
    ///
    /// # Safety
    /// As [`rows_q4k_grouped_vnni`]; every `a[r]` has at least `w.len()` blocks.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
    unsafe fn q4k_grouped4(w: &[BlockQ4K], a: [&[ActBlockK]; 4]) -> [f32; 4] {
        unsafe {
            let m4 = _mm512_set1_epi8(0x0F);
            // The upper half takes the high nibbles.
            let shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
            // Group k's scales: words 0..16 take sub-block 2k's, words 16..32 sub-block 2k+1's.
            let idx = scale_index(&Q4K_SCALES);
            let mut acc = _mm_setzero_ps();
            let mut acc_min = _mm_setzero_ps();
            for (i, b) in w.iter().enumerate() {
                prefetch(b);
                let scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                    b.scales.as_ptr().cast(),
                )));
                let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(b.mins.as_ptr().cast()));
                let mut q = [_mm512_setzero_si512(); 4];
                let mut sc = [_mm512_setzero_si512(); 4];
                for k in 0..4 {
                    let raw = _mm512_broadcast_i64x4(load(b.qs.as_ptr().add(32 * k)));
                    q[k] = _mm512_and_si512(_mm512_srlv_epi64(raw, shift), m4);
                    sc[k] = _mm512_permutexvar_epi16(idx[k], scales);
                }
                let mut sums = [_mm_setzero_si128(); 4];
                let mut ms = [_mm_setzero_si128(); 4];
                let mut xd = [0f32; 4];
                for r in 0..4 {
                    let x = a[r].get_unchecked(i);
                    let mut g = [_mm512_setzero_si512(); 4];
                    for k in 0..4 {
                        let xq = _mm512_loadu_si512(x.qs.as_ptr().add(64 * k).cast());
                        let p = _mm512_maddubs_epi16(q[k], xq);
                        g[k] = _mm512_dpwssd_epi32(_mm512_setzero_si512(), p, sc[k]);
                    }
                    sums[r] = reduce4(g);
                    let pairs = _mm_hadd_epi16(
                        _mm_loadu_si128(x.bsums.as_ptr().cast()),
                        _mm_loadu_si128(x.bsums.as_ptr().add(8).cast()),
                    );
                    ms[r] = _mm_madd_epi16(pairs, mins);
                    xd[r] = x.d;
                }
                let (sums, ms) = (transpose4(sums), transpose4(ms));
                let xd = _mm_loadu_ps(xd.as_ptr());
                let dd = _mm_mul_ps(_mm_set1_ps(b.d), xd);
                let dm = _mm_mul_ps(_mm_set1_ps(b.dmin), xd);
                for k in 0..4 {
                    acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sums[k]), dd, acc);
                    acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(ms[k]), dm, acc_min);
                }
            }
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc, acc_min));
            out
        }
    }

    /// [`rows_q6k_tiled`] with AVX-512 BW and VNNI: two 32-value chunks of a super-block per
    /// 512-bit register, their byte products summed into i16 pairs and then, times the
    /// sub-block scales, into i32 lanes by `vpdpwssd`, the `- 32` taken off through the
    /// activation sums as there; the exact integer of each row and super-block is then fused
    /// into the rows' accumulators together (lane `r` for row `r`), with the same f32
    /// operations per row as [`q6k_tiled`]: the same bits.
    ///
    /// # Safety
    /// As [`rows_q4k_grouped_vnni`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
    pub(crate) unsafe fn rows_q6k_tiled_vnni<const R: usize>(
        w: &[BlockQ6K],
        kb: usize,
        a: [&[ActBlockK]; R],
        out: &mut [[f32; crate::quant::MAX_TILE]],
    ) {
        for (c, o) in out.iter_mut().enumerate() {
            unsafe {
                let r = q6k_tiled_vnni::<R>(w.get_unchecked(c * kb..(c + 1) * kb), a);
                o[..R].copy_from_slice(&r);
            }
        }
    }

    /// One `Q6_K` weight row · `R` (1..=4) activation rows in the tiled order (see
    /// [`rows_q6k_tiled_vnni`]).
    ///
    /// # Safety
    /// As [`rows_q4k_grouped_vnni`]; every `a[r]` has at least `w.len()` blocks.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512vnni")]
    unsafe fn q6k_tiled_vnni<const R: usize>(w: &[BlockQ6K], a: [&[ActBlockK]; R]) -> [f32; R] {
        unsafe {
            let m4 = _mm512_set1_epi8(0x0F);
            let m3 = _mm512_set1_epi8(3);
            // The high bits of the two chunks of a register: bits 0..2 and 2..4 of `qh`
            // (pair A), 4..6 and 6..8 (pair B), as 16-bit shifts per half.
            let words = |lo: i64, hi: i64| {
                let (lo, hi) = (lo * 0x0001_0001_0001_0001, hi * 0x0001_0001_0001_0001);
                _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo)
            };
            let (shift_a, shift_b) = (words(0, 2), words(4, 6));
            // Register m (chunks 2m, 2m + 1) takes sub-blocks 4m..4m + 4, eight words each.
            let idx = scale_index(&Q6K_SCALES);
            let mut tiled = _mm_setzero_ps();
            for (i, b) in w.iter().enumerate() {
                prefetch(b);
                let mut q = [_mm512_setzero_si512(); 4];
                for h in 0..2 {
                    let l = _mm512_loadu_si512(b.ql.as_ptr().add(64 * h).cast());
                    let hb = _mm512_broadcast_i64x4(load(b.qh.as_ptr().add(32 * h)));
                    let ha =
                        _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(hb, shift_a), m3), 4);
                    let hbb =
                        _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(hb, shift_b), m3), 4);
                    q[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), ha);
                    q[2 * h + 1] =
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), hbb);
                }
                let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.scales.as_ptr().cast()));
                let scales = _mm512_castsi256_si512(scales16);
                let mut sc = [_mm512_setzero_si512(); 4];
                for m in 0..4 {
                    sc[m] = _mm512_permutexvar_epi16(idx[m], scales);
                }
                let mut g = [_mm512_setzero_si512(); 4];
                let mut xd = [0f32; 4];
                for r in 0..R {
                    let x = a[r].get_unchecked(i);
                    let mut sum = _mm512_setzero_si512();
                    for m in 0..4 {
                        let xq = _mm512_loadu_si512(x.qs.as_ptr().add(64 * m).cast());
                        sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q[m], xq), sc[m]);
                    }
                    // 32 · Σ bsums·scale off the total.
                    let bsums = _mm256_loadu_si256(x.bsums.as_ptr().cast());
                    let sub = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
                    g[r] = _mm512_sub_epi32(sum, _mm512_zextsi256_si512(sub));
                    xd[r] = x.d;
                }
                let t = _mm_mul_ps(_mm_cvtepi32_ps(reduce4(g)), _mm_set1_ps(b.d));
                tiled = _mm_fmadd_ps(t, _mm_loadu_ps(xd.as_ptr()), tiled);
            }
            let mut all = [0f32; 4];
            _mm_storeu_ps(all.as_mut_ptr(), tiled);
            let mut out = [0f32; R];
            out.copy_from_slice(&all[..R]);
            out
        }
    }

    /// `Q4_K` weights · `R` activation rows, as [`super::dot_q4k`] for each row.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C, and every `a[r]` has at least `w.len()` blocks.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn q4k<const R: usize>(w: &[BlockQ4K], a: [&[ActBlockK]; R]) -> [f32; R] {
        unsafe { q4k_order::<R, false>(w, a) }
    }

    /// `Q4_K` weights · `R` activation rows, as [`super::dot_q4k_grouped`] for each row.
    ///
    /// # Safety
    /// As [`q4k`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn q4k_grouped<const R: usize>(
        w: &[BlockQ4K],
        a: [&[ActBlockK]; R],
    ) -> [f32; R] {
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
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let mut acc = [0f32; R];
            let mut acc_min = [0f32; R];
            for (i, b) in w.iter().enumerate() {
                prefetch(b);
                // Chunk j holds values 32j..32j + 32: the low nibbles of qs[32(j/2)..] for
                // even j, the high ones for odd j.
                let mut q = [_mm256_setzero_si256(); 8];
                for j in 0..4 {
                    let raw = load(b.qs.as_ptr().add(32 * j));
                    q[2 * j] = _mm256_and_si256(raw, m4);
                    q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                }
                let mut scales = [_mm256_setzero_si256(); 8];
                for (v, &s) in scales.iter_mut().zip(&b.scales) {
                    *v = _mm256_set1_epi16(s as i16);
                }
                let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(b.mins.as_ptr().cast()));
                for r in 0..R {
                    let x = a[r].get_unchecked(i);
                    // One i32 vector per 64 values (sub-blocks 2k and 2k + 1).
                    let mut sums = [_mm256_setzero_si256(); 4];
                    for j in 0..8 {
                        let p = _mm256_maddubs_epi16(q[j], load(x.qs.as_ptr().add(32 * j)));
                        sums[j / 2] =
                            _mm256_add_epi32(sums[j / 2], _mm256_madd_epi16(p, scales[j]));
                    }
                    // Sub-block j's activation sum is bsums[2j] + bsums[2j + 1]; the madd
                    // leaves one min term per 64 values in each 32-bit lane.
                    let pairs = _mm_hadd_epi16(
                        _mm_loadu_si128(x.bsums.as_ptr().cast()),
                        _mm_loadu_si128(x.bsums.as_ptr().add(8).cast()),
                    );
                    let mins64 = _mm_madd_epi16(pairs, mins);
                    let (dd, dm) = (b.d * x.d, b.dmin * x.d);
                    if GROUPED {
                        let mut m = [0i32; 4];
                        _mm_storeu_si128(m.as_mut_ptr().cast(), mins64);
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
    }

    /// `Q6_K` weights · `R` activation rows, as [`super::dot_q6k`] for each row.
    ///
    /// # Safety
    /// As [`q4k`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn q6k<const R: usize>(w: &[BlockQ6K], a: [&[ActBlockK]; R]) -> [f32; R] {
        unsafe { q6k_order::<R, false>(w, a) }
    }

    /// `Q6_K` weights · `R` activation rows, as [`super::dot_q6k_tiled`] for each row.
    ///
    /// # Safety
    /// As [`q4k`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn q6k_tiled<const R: usize>(
        w: &[BlockQ6K],
        a: [&[ActBlockK]; R],
    ) -> [f32; R] {
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
        unsafe {
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
                    let l1 = load(b.ql.as_ptr().add(64 * h));
                    let l2 = load(b.ql.as_ptr().add(64 * h + 32));
                    let hb = load(b.qh.as_ptr().add(32 * h));
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
                let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.scales.as_ptr().cast()));
                for r in 0..R {
                    let x = a[r].get_unchecked(i);
                    let mut sum = _mm256_setzero_si256();
                    for c in 0..8 {
                        let p = _mm256_maddubs_epi16(q[c], load(x.qs.as_ptr().add(32 * c)));
                        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, scales[c]));
                    }
                    // 32 · (bsums[2l]·scale[2l] + bsums[2l + 1]·scale[2l + 1]) off lane l.
                    let bsums = _mm256_loadu_si256(x.bsums.as_ptr().cast());
                    let sub = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
                    let sum = _mm256_sub_epi32(sum, sub);
                    if TILED {
                        tiled[r] = (hsum_i32(sum) as f32 * b.d).mul_add(x.d, tiled[r]);
                    } else {
                        acc[r] = _mm256_fmadd_ps(
                            _mm256_set1_ps(x.d * b.d),
                            _mm256_cvtepi32_ps(sum),
                            acc[r],
                        );
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
    }

    /// Where the CPU has the AVX-512 prompt-order loops: asserts that `vnni` (one weight row
    /// into `out`) returns the bits of the AVX2 result `avx2` (`what` names the order).
    /// Returns `avx2`.
    #[cfg(test)]
    fn also_vnni<const R: usize>(
        avx2: [f32; R],
        what: &str,
        vnni: impl FnOnce(&mut [[f32; crate::quant::MAX_TILE]]),
    ) -> [f32; R] {
        if crate::quant::kernels() == crate::quant::Kernels::Avx512Vnni {
            let mut out = [[0f32; crate::quant::MAX_TILE]; 1];
            vnni(&mut out);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out[0][..R]), bits(&avx2), "AVX-512 vs AVX2, {what}");
        }
        avx2
    }

    /// Test access to the kernels: `None` where the CPU lacks AVX2, FMA or F16C.
    #[cfg(test)]
    pub(crate) fn checked<const R: usize>(
        w: super::KRow<'_>,
        a: [&[ActBlockK]; R],
        prompt: bool,
    ) -> Option<[f32; R]> {
        let n = match w {
            super::KRow::Q4K(w) => w.len(),
            super::KRow::Q6K(w) => w.len(),
        };
        assert!(a.iter().all(|r| r.len() >= n));
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return None;
        }
        // SAFETY: the features were just detected and every row is long enough.
        Some(unsafe {
            match (w, prompt) {
                (super::KRow::Q4K(w), false) => q4k(w, a),
                (super::KRow::Q4K(w), true) => also_vnni(q4k_grouped(w, a), "grouped", |out| {
                    rows_q4k_grouped_vnni::<R>(w, w.len(), a, out)
                }),
                (super::KRow::Q6K(w), false) => q6k(w, a),
                (super::KRow::Q6K(w), true) => also_vnni(q6k_tiled(w, a), "tiled", |out| {
                    rows_q6k_tiled_vnni::<R>(w, w.len(), a, out)
                }),
            }
        })
    }
}

/// A weight row in either format (for the tests).
#[cfg(test)]
#[derive(Clone, Copy)]
pub(crate) enum KRow<'a> {
    /// `Q4_K` blocks.
    Q4K(&'a [BlockQ4K]),
    /// `Q6_K` blocks.
    Q6K(&'a [BlockQ6K]),
}

#[cfg(test)]
mod tests {
    use super::super::blocks::read_blocks;
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use proptest::prelude::*;

    /// The widths tested (Gemma 3 270M's K-quant layers have 1024 and 2048).
    const KS: [usize; 4] = [256, 512, 1024, 2048];

    /// Deterministic test values: uniform in `±scale`, with every `outlier_every`-th value
    /// (if any) 40 times larger, like the few huge channels of Gemma's activations.
    fn values(len: usize, seed: u64, scale: f32, outlier_every: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0;
                let big = outlier_every > 0 && i % outlier_every == outlier_every / 2;
                u * scale * if big { 40.0 } else { 1.0 }
            })
            .collect()
    }

    /// A `[n, k]` weight matrix quantized by candle, as candle's tensor and our blocks.
    fn quantized<B: WeightBlock>(
        w: &[f32],
        n: usize,
        k: usize,
        dtype: GgmlDType,
    ) -> (QTensor, Vec<B>) {
        let t = Tensor::from_vec(w.to_vec(), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let blocks = read_blocks(&q.data().unwrap());
        assert_eq!(blocks.len(), n * k / QK_K);
        (q, blocks)
    }

    /// One activation row quantized by [`quantize_row_q8k`].
    fn quantize_acts(x: &[f32]) -> Vec<ActBlockK> {
        let mut a = vec![ActBlockK::default(); x.len() / QK_K];
        quantize_row_q8k(x, &mut a);
        a
    }

    /// Per-value weight magnitudes `|d·scale·q| + |dmin·min|`: what an f32 rounding of the
    /// weight or of a partial sum can be relative to.
    fn magnitudes(w: KRow<'_>) -> Vec<f64> {
        let mut out = Vec::new();
        match w {
            KRow::Q4K(w) => {
                for b in w {
                    for v in 0..QK_K {
                        let (j, l) = (v / 32, v % 32);
                        let byte = b.qs[32 * (j / 2) + l];
                        let q = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                        out.push(
                            (b.d as f64 * b.scales[j] as f64 * q as f64).abs()
                                + (b.dmin as f64 * b.mins[j] as f64).abs(),
                        );
                    }
                }
            }
            KRow::Q6K(w) => {
                for b in w {
                    for c in 0..8 {
                        for (l, &q) in q6_chunk(b, c).iter().enumerate() {
                            let s = b.scales[2 * c + l / 16] as f64;
                            // The kernel's lanes hold the unsigned `q` (q + 32) products and
                            // take the 32s off per sub-block pair: partial sums as large as
                            // `|d·s|·(q + 32 + 32)` per value.
                            out.push((b.d as f64 * s).abs() * (q as f64 + 64.0));
                        }
                    }
                }
            }
        }
        out
    }

    /// The row's values by our dequantizers.
    fn dequantize(w: KRow<'_>) -> Vec<f32> {
        let mut out = Vec::new();
        match w {
            KRow::Q4K(w) => w.iter().for_each(|b| dequantize_q4k(b, &mut out)),
            KRow::Q6K(w) => w.iter().for_each(|b| dequantize_q6k(b, &mut out)),
        }
        out
    }

    /// The scalar twin for the row's format.
    fn scalar(w: KRow<'_>, a: &[ActBlockK]) -> f32 {
        match w {
            KRow::Q4K(w) => dot_q4k(w, a),
            KRow::Q6K(w) => dot_q6k(w, a),
        }
    }

    /// GGML's definition of one output in f64: the dequantized weights (candle's) times the
    /// exactly dequantized `Q8_K` activations, and the slack f32 arithmetic may take: 2⁻²⁰
    /// (16 f32 roundings, enough for 8 blocks plus the weights' own rounding) of
    /// `Σ magnitude·|activation|`.
    fn reference(w_deq: &[f32], mags: &[f64], a: &[ActBlockK]) -> (f64, f64) {
        let mut sum = 0f64;
        let mut slack = 0f64;
        for (v, (&w, &m)) in w_deq.iter().zip(mags).enumerate() {
            let b = &a[v / QK_K];
            let x = b.d as f64 * b.qs[v % QK_K] as f64;
            sum += w as f64 * x;
            slack += m * x.abs();
        }
        (sum, slack * 2f64.powi(-20))
    }

    /// GGML's `iscale` for one block: `-127 / max`, `max` its first largest-magnitude value.
    fn iscale(xs: &[f32]) -> f32 {
        let max = xs
            .iter()
            .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
        -127.0 / max
    }

    /// Bit patterns, for exact comparisons.
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// One case: `n` weight rows of width `k` in `dtype`, `m` activation rows.
    struct Case {
        /// `Q4K` or `Q6K`.
        dtype: GgmlDType,
        /// Weight rows.
        n: usize,
        /// Row width.
        k: usize,
        /// Activation rows.
        m: usize,
        /// `[n, k]` weights before quantization.
        w: Vec<f32>,
        /// `[m, k]` activations.
        x: Vec<f32>,
    }

    /// A case in format `f` (0: `Q4_K`, 1: `Q6_K`) of width `KS[ki]`, weights of about
    /// `0.05·10^wexp` and activations of about `10^xexp` (outliers 40 times larger).
    fn case(f: usize, n: usize, ki: usize, m: usize, seed: u64, wexp: i32, xexp: i32) -> Case {
        let k = KS[ki];
        let dtype = [GgmlDType::Q4K, GgmlDType::Q6K][f];
        let w = values(n * k, seed ^ 1, 10f32.powi(wexp) * 0.05, 97);
        let mut x = values(m * k, seed ^ 2, 10f32.powi(xexp), 61);
        // A block of zeros now and then (d = 0).
        if seed.is_multiple_of(5) {
            x[..QK_K].fill(0.0);
        }
        Case {
            dtype,
            n,
            k,
            m,
            w,
            x,
        }
    }

    /// Runs `check` with the case's weights as our blocks (and candle's tensor).
    fn with_weights<T>(c: &Case, check: impl FnOnce(QTensor, KRow<'_>) -> T) -> T {
        match c.dtype {
            GgmlDType::Q4K => {
                let (q, b) = quantized::<BlockQ4K>(&c.w, c.n, c.k, c.dtype);
                check(q, KRow::Q4K(&b))
            }
            _ => {
                let (q, b) = quantized::<BlockQ6K>(&c.w, c.n, c.k, c.dtype);
                check(q, KRow::Q6K(&b))
            }
        }
    }

    /// Row `r` of `kb` blocks.
    fn row(w: KRow<'_>, r: usize, kb: usize) -> KRow<'_> {
        match w {
            KRow::Q4K(w) => KRow::Q4K(&w[r * kb..(r + 1) * kb]),
            KRow::Q6K(w) => KRow::Q6K(&w[r * kb..(r + 1) * kb]),
        }
    }

    /// Dequantization, the scalar dot against GGML's definition, and the AVX2 kernels
    /// against the scalar twins (bit for bit, for every row count, batch-invariant).
    fn check_case(c: &Case) -> Result<(), String> {
        let kb = c.k / QK_K;
        let acts: Vec<Vec<ActBlockK>> = c.x.chunks_exact(c.k).map(quantize_acts).collect();
        with_weights(c, |q, w| {
            let ours = dequantize(w);
            let theirs: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            if bits(&ours) != bits(&theirs) {
                return Err(format!(
                    "{:?}: dequantization differs from candle's",
                    c.dtype
                ));
            }
            for r in 0..c.n {
                let wr = row(w, r, kb);
                let mags = magnitudes(wr);
                for (i, a) in acts.iter().enumerate() {
                    let got = scalar(wr, a);
                    let (want, slack) = reference(&ours[r * c.k..(r + 1) * c.k], &mags, a);
                    if (got as f64 - want).abs() > slack {
                        return Err(format!(
                            "{:?} row {r} x {i}: scalar {got} vs GGML {want} (slack {slack})",
                            c.dtype
                        ));
                    }
                }
                #[cfg(target_arch = "x86_64")]
                check_simd(wr, &acts)?;
            }
            Ok(())
        })
    }

    /// The AVX2 kernel for 1..=4 rows equals the scalar twin bit for bit; so does every row
    /// of a multi-row call (the rows cycle through the activation rows given); both in the
    /// one-row order and in the prompt order (`Q4_K` grouped, `Q6_K` tiled).
    #[cfg(target_arch = "x86_64")]
    fn check_simd(w: KRow<'_>, acts: &[Vec<ActBlockK>]) -> Result<(), String> {
        let pick = |i: usize| acts[i % acts.len()].as_slice();
        for prompt in [false, true] {
            let twin = |a: &[ActBlockK]| match (w, prompt) {
                (KRow::Q4K(w), true) => dot_q4k_grouped(w, a),
                (KRow::Q6K(w), true) => dot_q6k_tiled(w, a),
                _ => scalar(w, a),
            };
            let want: Vec<u32> = (0..4).map(|i| twin(pick(i)).to_bits()).collect();
            let got: Vec<Vec<f32>> = [
                x86::checked(w, [pick(0)], prompt).map(|r| r.to_vec()),
                x86::checked(w, [pick(0), pick(1)], prompt).map(|r| r.to_vec()),
                x86::checked(w, [pick(0), pick(1), pick(2)], prompt).map(|r| r.to_vec()),
                x86::checked(w, [pick(0), pick(1), pick(2), pick(3)], prompt).map(|r| r.to_vec()),
            ]
            .into_iter()
            .flatten()
            .collect();
            for g in got {
                if bits(&g) != want[..g.len()] {
                    return Err(format!(
                        "AVX2 {g:?} vs scalar {:?} (prompt order: {prompt})",
                        &want[..g.len()]
                    ));
                }
            }
        }
        Ok(())
    }

    /// How far our product is from candle's `QMatMul` on the same weights (candle quantizes
    /// the activations to `Q8_K` too, rounding ties away from zero).
    #[derive(Debug, Default, Clone, Copy)]
    struct Distance {
        /// Largest `(|ours − candle| − ties) / Σ magnitude·|x|` (the outputs' natural scale),
        /// where `ties` is `Σ magnitude·|Δx|` over the activations candle quantized a step
        /// away from ours (exact halfway cases).
        relative: f64,
        /// How many activation values candle quantized differently (halfway cases).
        ties: usize,
        /// Largest `|ours − candle|`.
        absolute: f64,
        /// Largest `|ours − candle|` over the largest `|candle|` of the same case.
        of_output: f64,
    }

    impl Distance {
        /// The worse of both, field by field.
        fn max(self, o: Self) -> Self {
            Self {
                relative: self.relative.max(o.relative),
                ties: self.ties + o.ties,
                absolute: self.absolute.max(o.absolute),
                of_output: self.of_output.max(o.of_output),
            }
        }
    }

    /// [`Distance`] of our scalar product from candle's for one case.
    fn against_candle(c: &Case) -> Distance {
        let kb = c.k / QK_K;
        let acts: Vec<Vec<ActBlockK>> = c.x.chunks_exact(c.k).map(quantize_acts).collect();
        with_weights(c, |q, w| {
            let x = Tensor::from_vec(c.x.clone(), (c.m, c.k), &Device::Cpu).unwrap();
            let mm = QMatMul::from_qtensor(q).unwrap();
            let theirs: Vec<Vec<f32>> = mm.forward(&x).unwrap().to_vec2().unwrap();
            let largest = theirs
                .iter()
                .flatten()
                .fold(0f64, |m, v| m.max(v.abs() as f64));
            let mut d = Distance::default();
            let rows: Vec<(KRow<'_>, Vec<f64>)> = (0..c.n)
                .map(|r| (row(w, r, kb), magnitudes(row(w, r, kb))))
                .collect();
            for ((a, xr), out) in acts.iter().zip(c.x.chunks_exact(c.k)).zip(&theirs) {
                // Where candle's Q8_K activations differ from ours (ties), by how much.
                let mut cq = vec![BlockQ8K::zeros(); kb];
                BlockQ8K::from_float(xr, &mut cq);
                let mut cx = vec![0f32; c.k];
                BlockQ8K::to_float(&cq, &mut cx);
                let dx: Vec<f64> = cx
                    .iter()
                    .enumerate()
                    .map(|(v, &t)| {
                        let b = &a[v / QK_K];
                        (t as f64 - (b.d * b.qs[v % QK_K] as f32) as f64).abs()
                    })
                    .collect();
                d.ties += dx.iter().filter(|&&e| e > 0.0).count();
                for (&(wr, ref mags), &t) in rows.iter().zip(out) {
                    let scale: f64 = mags.iter().zip(xr).map(|(m, x)| m * x.abs() as f64).sum();
                    let ties: f64 = mags.iter().zip(&dx).map(|(m, e)| m * e).sum();
                    let diff = (scalar(wr, a) as f64 - t as f64).abs();
                    d.absolute = d.absolute.max(diff);
                    if scale > 0.0 {
                        d.relative = d.relative.max((diff - ties).max(0.0) / scale);
                    }
                    if largest > 0.0 {
                        d.of_output = d.of_output.max(diff / largest);
                    }
                }
            }
            d
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Dequantization equals candle's, the scalar dots equal GGML's definition within f32
        /// rounding, and the AVX2 kernels equal the scalar twins bit for bit, over both
        /// formats, widths of 1..=8 super-blocks and magnitudes from 10⁻³ to 10⁴.
        #[test]
        fn kernels_match_the_definition(
            f in 0usize..2,
            n in 1usize..5,
            ki in 0usize..4,
            m in 1usize..5,
            seed in any::<u64>(),
            wexp in -2i32..2,
            xexp in -3i32..3,
        ) {
            let c = case(f, n, ki, m, seed, wexp, xexp);
            let r = check_case(&c);
            prop_assert!(r.is_ok(), "{:?}", r);
        }

        /// Close to candle's quantized matmul on the same weights: within 2⁻¹⁸ of
        /// `Σ magnitude·|x|` (f32 rounding in both) beyond what candle's rounding of halfway
        /// activations away from zero accounts for.
        #[test]
        fn close_to_candle(
            f in 0usize..2,
            ki in 0usize..4,
            m in 1usize..6,
            seed in any::<u64>(),
            xexp in -3i32..3,
        ) {
            let c = case(f, 8, ki, m, seed, 0, xexp);
            let d = against_candle(&c);
            prop_assert!(d.relative <= 2f64.powi(-18), "{:?}: {d:?}", c.dtype);
        }

        /// Our `Q8_K` quantization equals candle's `BlockQ8K::from_float` except on exact
        /// halfway cases, which GGML (and we) round to even and candle away from zero.
        #[test]
        fn q8k_matches_candle_but_for_ties(
            ki in 0usize..4,
            seed in any::<u64>(),
            xexp in -3i32..4,
        ) {
            let k = KS[ki];
            let x = values(k, seed, 10f32.powi(xexp), 61);
            let ours = quantize_acts(&x);
            let mut theirs = vec![BlockQ8K::zeros(); k / QK_K];
            BlockQ8K::from_float(&x, &mut theirs);
            let mut deq = vec![0f32; k];
            BlockQ8K::to_float(&theirs, &mut deq);
            for (v, (&t, &xv)) in deq.iter().zip(&x).enumerate() {
                let b = &ours[v / QK_K];
                let q = b.qs[v % QK_K];
                let o = b.d * q as f32;
                if o.to_bits() != t.to_bits() {
                    let scaled = iscale(&x[v / QK_K * QK_K..][..QK_K]) * xv;
                    prop_assert!(
                        (scaled - scaled.trunc()).abs() == 0.5 && q % 2 == 0,
                        "value {v}: ours {o} ({q}), candle {t}"
                    );
                }
            }
            for b in &ours {
                for (s, q) in b.bsums.iter().zip(b.qs.chunks_exact(16)) {
                    prop_assert_eq!(*s as i32, q.iter().map(|&q| q as i32).sum::<i32>());
                }
            }
        }
    }

    #[test]
    fn q8k_rounds_halfway_cases_to_even_like_ggml() {
        // max = 127 makes iscale exactly -1, so every x·iscale below is exact.
        let mut x = vec![0f32; QK_K];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        x[3] = 0.5;
        x[4] = -126.5;
        let a = quantize_acts(&x);
        assert_eq!(a[0].d, -1.0);
        assert_eq!(&a[0].qs[..5], &[-127, -2, 4, 0, 126]);
        assert_eq!(a[0].bsums[0], -127 - 2 + 4 + 126);
        // candle rounds these away from zero.
        let mut theirs = vec![BlockQ8K::zeros(); 1];
        BlockQ8K::from_float(&x, &mut theirs);
        let mut deq = vec![0f32; QK_K];
        BlockQ8K::to_float(&theirs, &mut deq);
        assert_eq!(&deq[..5], &[127.0, 3.0, -4.0, 1.0, -127.0]);
    }

    #[test]
    fn q8k_takes_the_first_value_of_largest_magnitude() {
        let mut x = vec![0f32; 2 * QK_K];
        x[3] = -5.0;
        x[7] = 5.0;
        x[QK_K + 1] = 5.0;
        x[QK_K + 2] = -5.0;
        let a = quantize_acts(&x);
        assert_eq!(a[0].d, 1.0 / (127.0 / 5.0));
        assert_eq!((a[0].qs[3], a[0].qs[7]), (-127, 127));
        assert_eq!(a[1].d, 1.0 / (-127.0 / 5.0));
        assert_eq!((a[1].qs[1], a[1].qs[2]), (-127, 127));
        assert_eq!(quantize_acts(&[0.0; QK_K])[0], ActBlockK::default());
    }

    #[test]
    fn block_sizes_match_ggml() {
        assert_eq!(BlockQ4K::BYTES, GgmlDType::Q4K.type_size());
        assert_eq!(BlockQ6K::BYTES, GgmlDType::Q6K.type_size());
        assert_eq!(QK_K, GgmlDType::Q4K.block_size());
    }

    /// Prints the largest differences from candle seen over a fixed set of cases (for the
    /// record; the proptests assert the bounds): 1 and 4 activation rows (candle's CPU path
    /// differs), every width, activations of about 0.1 to 100.
    #[test]
    fn largest_difference_from_candle() {
        for f in 0..2 {
            let mut worst = Distance::default();
            for i in 0..32 {
                let m = if i % 2 == 0 { 1 } else { 4 };
                let c = case(f, 8, i % 4, m, 1000 + i as u64, 0, (i / 4) as i32 % 4 - 1);
                worst = worst.max(against_candle(&c));
            }
            eprintln!(
                "{}: relative {:.2e}, absolute {:.2e}, of largest output {:.2e}, {} ties",
                ["Q4_K", "Q6_K"][f],
                worst.relative,
                worst.absolute,
                worst.of_output,
                worst.ties
            );
            assert!(worst.relative <= 2f64.powi(-18));
        }
    }

    proptest! {
        /// [`nearest_int`] is round-half-to-even on the range it is used on.
        #[test]
        fn nearest_int_rounds_half_to_even(v in -130f32..130f32, half in any::<bool>()) {
            let v = if half { v.trunc() + 0.5f32.copysign(v) } else { v };
            prop_assert_eq!(nearest_int(v), v.round_ties_even() as i32);
        }
    }
}
