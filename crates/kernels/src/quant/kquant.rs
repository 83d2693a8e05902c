//! GGML's K-quant weight formats `Q2_K`, `Q3_K`, `Q4_K`, `Q5_K` and `Q6_K` (256-value
//! super-blocks), the 8-bit `Q8_K` activation blocks their dot products consume, and the
//! kernels' scalar twins; the AVX2 (+FMA+F16C) versions
//! ([`crate::arch::x86_64::avx2::kquant`]) unpack each weight block once and multiply it into
//! up to four activation rows.
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
//!   tile in the prompt order of [`super::dots`]).
//! * **`Q6_K`**: not repacked on x86. One activation row (decoding, and prompts of fewer
//!   than eight rows) goes through `ggml_vec_dot_q6_K_q8_K`'s AVX2 path: eight exact i32
//!   lanes per super-block (lane `L` takes values `32c + 4L .. 32c + 4L + 4` of every 32-value
//!   chunk `c`, unsigned `q` times its 16-value sub-block scale; then
//!   `32·(bsums[2L]·scale[2L] + bsums[2L+1]·scale[2L+1])` is taken off lane `L`), each
//!   converted to f32 and fused into
//!   its own accumulator with `d_a·d_w`, the lanes summed as
//!   `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`. Prompts of eight rows or more go through
//!   llama.cpp's tiled matmul: one exact integer per super-block, times `d_w`, fused into the
//!   accumulator with `d_a` ([`dot_q6k_tiled`]). We do exactly both.
//! * **`Q5_K`, `Q3_K`, `Q2_K`**: not repacked on AVX2 machines (llama.cpp repacks `Q2_K` only
//!   with AVX-512, `Q5_K` only on ARM). One activation row goes through llama.cpp's AVX2
//!   `ggml_vec_dot_q{5,3,2}_K_q8_K`: eight exact i32 lanes per super-block as for `Q6_K`
//!   (each product times its sub-block's scale), converted to f32 and fused into eight
//!   accumulators with `d_a·d_w` ([`dot_q5k`], [`dot_q3k`], [`dot_q2k`]; `Q5_K` fuses its mins'
//!   integer into a separate scalar with `−d_a·dmin_w`, added after the lanes' sum; `Q2_K`
//!   fuses eight lanes of mins into the same accumulators first). Prompts of eight rows or
//!   more go through llama.cpp's tiled matmul (its AVX2 microtile): per super-block the exact
//!   integers `s1 = Σ scale·q·a` and (with mins) `s2 = Σ min·Σa` make
//!   `r = fma(−dmin_w, s2, d_w·s1)`, fused into the accumulator with `d_a`
//!   ([`dot_q5k_tiled`], [`dot_q3k_tiled`], [`dot_q2k_tiled`]). Both orders return the bits of
//!   llama.cpp's AVX2 build (llama-cpp-python 0.3.36's; `tests/llama_cpp_kquants.rs`, fixtures
//!   from its public API). Its AVX-512 builds may differ: the VNNI tiled microtile adds
//!   `r·d_a` unfused, and `Q2_K` is repacked there.
//!
//! The scalar twins follow the same order with `f32::mul_add`, so they and the AVX2 kernels
//! return identical bits, and a row's result never depends on the other rows of a call.
//! `Q4_K`'s grouped prompt order and `Q6_K`'s one-row order for one activation row also have
//! an AVX-512 VNNI build ([`crate::arch::x86_64::avx512::kquant`]): 64 values per register,
//! the sub-block scales applied by `vpdpwssd`, and in the prompt order the exact integers of
//! four rows fused into their accumulators together; the same integers and per-row f32
//! operations, so the same bits (the tests assert it). The tiled order of `Q5_K` and `Q6_K`
//! has an interleaved AVX-512 VNNI build instead ([`super::interleaved`]), for sixteen rows
//! at a time.

use half::f16;

use super::blocks::WeightBlock;

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// GGML `Q4_K` (144 bytes in the file), with its scales unpacked: value `v` of sub-block
/// `j = v / 32` is `d·scales[j]·q − dmin·mins[j]`, `q` in 0..16. Value `64i + l` (`l < 32`) is
/// the low nibble of `qs[32i + l]`, value `64i + 32 + l` its high nibble.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ4K {
    /// The super-block scale (the file's f16, exactly).
    pub d: f32,
    /// The super-block scale of the mins (the file's f16, exactly).
    pub dmin: f32,
    /// The eight 6-bit sub-block scales.
    pub scales: [u8; 8],
    /// The eight 6-bit sub-block mins.
    pub mins: [u8; 8],
    /// The 256 4-bit quants, as in the file.
    pub qs: [u8; 128],
}

/// GGML `Q6_K` (210 bytes in the file): value `v` is `d·scales[v / 16]·(q − 32)`, `q` in
/// 0..64. In half `h` (values `128h..128h + 128`), value `128h + 32t + l` (`t < 4`, `l < 32`)
/// takes its low four bits from `ql[64h + 32·(t & 1) + l]` (the low nibble for `t < 2`, the
/// high one otherwise) and its high two from bits `2t..2t + 2` of `qh[32h + l]`.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    /// The super-block scale (the file's f16, exactly).
    pub d: f32,
    /// The sixteen 8-bit sub-block scales.
    pub scales: [i8; 16],
    /// The low four bits of each quant, as in the file.
    pub ql: [u8; 128],
    /// The high two bits of each quant, as in the file.
    pub qh: [u8; 64],
}

/// One 256-value block of an activation row quantized to 8 bits (GGML's `block_q8_K`):
/// `value = d·qs[i]`, `bsums[j]` the sum of `qs[16j..16j + 16]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActBlockK {
    /// The scale, `1 / iscale` (negative when the largest-magnitude value is positive).
    pub d: f32,
    /// The quants, in `-127..=127`.
    pub qs: [i8; QK_K],
    /// Sums of each 16 quants.
    pub bsums: [i16; QK_K / 16],
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

/// The eight 6-bit scales and eight 6-bit mins of GGML's 12-byte `Q4_K`/`Q5_K` packing:
/// scales and mins 0..4 are the low six bits of bytes 0..4 and 4..8; 4..8 take their low
/// four bits from the nibbles of bytes 8..12 and their top two from the spare top bits of
/// bytes 0..8.
fn scales_mins_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
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
    (scales, mins)
}

impl WeightBlock for BlockQ4K {
    const BYTES: usize = 144;
    fn read(b: &[u8]) -> Self {
        let (scales, mins) = scales_mins_k4(&b[4..16]);
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
pub fn q6_chunk(b: &BlockQ6K, c: usize) -> [i8; 32] {
    let (h, t) = (c / 4, c % 4);
    let ql = &b.ql[64 * h + 32 * (t & 1)..][..32];
    let qh = &b.qh[32 * h..][..32];
    // Nibble `t / 2` of `ql`, bits `2t..2t + 2` of `qh` (shifts fixed for the chunk: a loop
    // the compiler vectorizes).
    let (low_shift, high_shift) = (4 * (t / 2), 2 * t);
    let mut q = [0i8; 32];
    for (q, (&l, &h)) in q.iter_mut().zip(ql.iter().zip(qh)) {
        *q = (((l >> low_shift) & 0x0F) | (((h >> high_shift) & 3) << 4)) as i8 - 32;
    }
    q
}

/// Appends the block's 256 values to `out`, computed as GGML's `dequantize_row_q4_K` (and
/// candle) does: `(d·scale)·q − dmin·min`, each product rounded to f32.
pub fn dequantize_q4k(b: &BlockQ4K, out: &mut Vec<f32>) {
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
pub fn dequantize_q6k(b: &BlockQ6K, out: &mut Vec<f32>) {
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
pub fn quantize_row_q8k(xs: &[f32], out: &mut [ActBlockK]) {
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
pub fn dot_q4k(w: &[BlockQ4K], a: &[ActBlockK]) -> f32 {
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
pub fn dot_q4k_grouped(w: &[BlockQ4K], a: &[ActBlockK]) -> f32 {
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
pub fn dot_q6k(w: &[BlockQ6K], a: &[ActBlockK]) -> f32 {
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
pub fn dot_q6k_tiled(w: &[BlockQ6K], a: &[ActBlockK]) -> f32 {
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

/// GGML `Q5_K` (176 bytes in the file), with its scales unpacked: value `v` of sub-block
/// `j = v / 32` is `d·scales[j]·q − dmin·mins[j]`, `q` in 0..32. Value `64i + l` (`l < 32`)
/// takes its low four bits from the low nibble of `qs[32i + l]`, value `64i + 32 + l` from its
/// high nibble; value `32j + l` takes its fifth bit from bit `j` of `qh[l]`.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ5K {
    /// The super-block scale (the file's f16, exactly).
    pub d: f32,
    /// The super-block scale of the mins (the file's f16, exactly).
    pub dmin: f32,
    /// The eight 6-bit sub-block scales.
    pub scales: [u8; 8],
    /// The eight 6-bit sub-block mins.
    pub mins: [u8; 8],
    /// The fifth bit of each quant, as in the file.
    pub qh: [u8; 32],
    /// The low four bits of each quant, as in the file.
    pub qs: [u8; 128],
}

/// GGML `Q3_K` (110 bytes in the file), with its scales unpacked: value `v` is
/// `d·scales[v / 16]·q`, `q` in −4..4. Value `128h + 32t + l` (`h < 2`, `t < 4`, `l < 32`)
/// takes its low two bits from bits `2t..2t + 2` of `qs[32h + l]`; `q` is those minus 4
/// unless bit `4h + t` of `hmask[l]` is set.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ3K {
    /// The super-block scale (the file's f16, exactly).
    pub d: f32,
    /// The sixteen 6-bit sub-block scales, minus 32 (in −32..32).
    pub scales: [i8; 16],
    /// The high bit of each quant, as in the file.
    pub hmask: [u8; 32],
    /// The low two bits of each quant, as in the file.
    pub qs: [u8; 64],
}

/// GGML `Q2_K` (84 bytes in the file), with its scales unpacked: value `v` of sub-block
/// `s = v / 16` is `d·scales[s]·q − dmin·mins[s]`, `q` in 0..4: value `128h + 32t + l`
/// (`h < 2`, `t < 4`, `l < 32`) is bits `2t..2t + 2` of `qs[32h + l]`.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ2K {
    /// The super-block scale (the file's f16, exactly).
    pub d: f32,
    /// The super-block scale of the mins (the file's f16, exactly).
    pub dmin: f32,
    /// The sixteen 4-bit sub-block scales.
    pub scales: [u8; 16],
    /// The sixteen 4-bit sub-block mins.
    pub mins: [u8; 16],
    /// The 2-bit quants, as in the file.
    pub qs: [u8; 64],
}

impl WeightBlock for BlockQ5K {
    const BYTES: usize = 176;
    fn read(b: &[u8]) -> Self {
        let (scales, mins) = scales_mins_k4(&b[4..16]);
        let mut qh = [0u8; 32];
        qh.copy_from_slice(&b[16..48]);
        let mut qs = [0u8; 128];
        qs.copy_from_slice(&b[48..176]);
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales,
            mins,
            qh,
            qs,
        }
    }
}

impl WeightBlock for BlockQ3K {
    const BYTES: usize = 110;
    fn read(b: &[u8]) -> Self {
        let mut hmask = [0u8; 32];
        hmask.copy_from_slice(&b[..32]);
        let mut qs = [0u8; 64];
        qs.copy_from_slice(&b[32..96]);
        // GGML's 12-byte packing of sixteen 6-bit scales: scale `j`'s low four bits are the
        // low (j < 8) or high (j >= 8) nibble of byte `j mod 8`, its top two bits
        // `2(j / 4)..2(j / 4) + 2` of byte `8 + j mod 4`; stored plus 32.
        let s = &b[96..108];
        let scales = std::array::from_fn(|j| {
            let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
            let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
            (low | (high << 4)) as i8 - 32
        });
        Self {
            d: f16_at(b, 108),
            scales,
            hmask,
            qs,
        }
    }
}

impl WeightBlock for BlockQ2K {
    const BYTES: usize = 84;
    fn read(b: &[u8]) -> Self {
        let mut qs = [0u8; 64];
        qs.copy_from_slice(&b[16..80]);
        Self {
            d: f16_at(b, 80),
            dmin: f16_at(b, 82),
            scales: std::array::from_fn(|s| b[s] & 0x0F),
            mins: std::array::from_fn(|s| b[s] >> 4),
            qs,
        }
    }
}

/// The unsigned quants `q` (0..32) of values `32c..32c + 32` of a `Q5_K` block.
pub fn q5_chunk(b: &BlockQ5K, c: usize) -> [u8; 32] {
    let qs = &b.qs[32 * (c / 2)..][..32];
    // The low or high nibble of `qs`, bit `c` of `qh` (shifts fixed for the chunk: a loop the
    // compiler vectorizes).
    let low_shift = 4 * (c % 2);
    let mut q = [0u8; 32];
    for (q, (&l, &h)) in q.iter_mut().zip(qs.iter().zip(&b.qh)) {
        *q = ((l >> low_shift) & 0x0F) | (((h >> c) & 1) << 4);
    }
    q
}

/// The signed quants `q` (−4..4) of values `32c..32c + 32` of a `Q3_K` block.
pub fn q3_chunk(b: &BlockQ3K, c: usize) -> [i8; 32] {
    let (h, t) = (c / 4, c % 4);
    let qs = &b.qs[32 * h..][..32];
    std::array::from_fn(|l| {
        let low = ((qs[l] >> (2 * t)) & 3) as i8;
        if (b.hmask[l] >> c) & 1 == 1 {
            low
        } else {
            low - 4
        }
    })
}

/// The unsigned quants `q` (0..4) of values `32c..32c + 32` of a `Q2_K` block.
pub fn q2_chunk(b: &BlockQ2K, c: usize) -> [u8; 32] {
    let (h, t) = (c / 4, c % 4);
    let qs = &b.qs[32 * h..][..32];
    std::array::from_fn(|l| (qs[l] >> (2 * t)) & 3)
}

/// Appends the block's 256 values to `out`, computed as GGML's `dequantize_row_q5_K` (and
/// candle) does: `(d·scale)·q − dmin·min`, each product rounded to f32.
pub fn dequantize_q5k(b: &BlockQ5K, out: &mut Vec<f32>) {
    for c in 0..8 {
        let (ds, m) = (b.d * b.scales[c] as f32, b.dmin * b.mins[c] as f32);
        out.extend(q5_chunk(b, c).iter().map(|&q| ds * q as f32 - m));
    }
}

/// Appends the block's 256 values to `out`, computed as GGML's `dequantize_row_q3_K` (and
/// candle) does: `(d·scale)·q`.
pub fn dequantize_q3k(b: &BlockQ3K, out: &mut Vec<f32>) {
    for c in 0..8 {
        let q = q3_chunk(b, c);
        for (half, q) in q.chunks_exact(16).enumerate() {
            let ds = b.d * b.scales[2 * c + half] as f32;
            out.extend(q.iter().map(|&q| ds * q as f32));
        }
    }
}

/// Appends the block's 256 values to `out`, computed as GGML's `dequantize_row_q2_K` (and
/// candle) does: `(d·scale)·q − dmin·min`.
pub fn dequantize_q2k(b: &BlockQ2K, out: &mut Vec<f32>) {
    for c in 0..8 {
        let q = q2_chunk(b, c);
        for (half, q) in q.chunks_exact(16).enumerate() {
            let s = 2 * c + half;
            let (ds, m) = (b.d * b.scales[s] as f32, b.dmin * b.mins[s] as f32);
            out.extend(q.iter().map(|&q| ds * q as f32 - m));
        }
    }
}

/// The eight exact lane sums of llama.cpp's AVX2 K-quant dot products for one super-block:
/// lane `L` takes values `32c + 4L .. 32c + 4L + 4` of every 32-value chunk `c`, each
/// product times the scale `scale(c, L)` of its sub-block (what `vpmaddubsw` then
/// `vpmaddwd` with the scales compute).
fn k_lanes(
    quants: impl Fn(usize) -> [i32; 32],
    scale: impl Fn(usize, usize) -> i32,
    a: &ActBlockK,
) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for c in 0..8 {
        let q = quants(c);
        for (l, lane) in lanes.iter_mut().enumerate() {
            let p: i32 = (4 * l..4 * l + 4)
                .map(|b| q[b] * a.qs[32 * c + b] as i32)
                .sum();
            *lane += scale(c, l) * p;
        }
    }
    lanes
}

/// [`k_lanes`] summed: the super-block's exact `Σ scale·q·a`.
fn k_sum(
    quants: impl Fn(usize) -> [i32; 32],
    scale: impl Fn(usize, usize) -> i32,
    a: &ActBlockK,
) -> i32 {
    k_lanes(quants, scale, a).iter().sum()
}

/// A `Q5_K` block's chunk `c` as i32.
fn q5_ints(b: &BlockQ5K, c: usize) -> [i32; 32] {
    q5_chunk(b, c).map(i32::from)
}

/// A `Q3_K` block's chunk `c` as i32.
fn q3_ints(b: &BlockQ3K, c: usize) -> [i32; 32] {
    q3_chunk(b, c).map(i32::from)
}

/// A `Q2_K` block's chunk `c` as i32.
fn q2_ints(b: &BlockQ2K, c: usize) -> [i32; 32] {
    q2_chunk(b, c).map(i32::from)
}

/// `Σ min·Σa` of a `Q5_K` block: sub-block `j`'s activation sum is `bsums[2j] + bsums[2j+1]`.
fn q5_mins(w: &BlockQ5K, a: &ActBlockK) -> i32 {
    (0..8)
        .map(|j| w.mins[j] as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32))
        .sum()
}

/// `Σ w·a` over the blocks of one `Q5_K` weight row and one activation row, rounded as
/// llama.cpp's AVX2 `ggml_vec_dot_q5_K_q8_K` rounds it: eight exact lanes per super-block
/// (see [`k_lanes`]; 32-value sub-blocks, so every lane of chunk `c` takes scale `c`), each
/// fused into its own accumulator with `d_a·d_w`; the mins' exact integer fused into one
/// scalar with `−(d_a·dmin_w)`; the lanes summed as `hsum_float_8`, then the scalar added.
pub fn dot_q5k(w: &[BlockQ5K], a: &[ActBlockK]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (w, a) in w.iter().zip(a) {
        summs = (-(a.d * w.dmin)).mul_add(q5_mins(w, a) as f32, summs);
        let lanes = k_lanes(|c| q5_ints(w, c), |c, _| w.scales[c] as i32, a);
        let d = a.d * w.d;
        for (acc, &lane) in acc.iter_mut().zip(&lanes) {
            *acc = d.mul_add(lane as f32, *acc);
        }
    }
    hsum8(acc) + summs
}

/// `Σ w·a` as llama.cpp's tiled K-quant matmul (`ggml-cpu/tiled`, its AVX2 microtile, taken
/// for eight or more activation rows) rounds it for formats with mins (`Q5_K`, `Q2_K`): per
/// super-block the exact integers `s1 = Σ scale·q·a` and `s2 = Σ min·Σa` give
/// `r = d_w·s1 − dmin_w·s2` (the product rounded, the difference fused), then `r` is fused
/// into the accumulator with `d_a`.
fn tiled_with_mins(acc: f32, s1: i32, s2: i32, d: f32, dmin: f32, da: f32) -> f32 {
    let r = (-dmin).mul_add(s2 as f32, s1 as f32 * d);
    r.mul_add(da, acc)
}

/// `Σ w·a` as llama.cpp's tiled matmul rounds it for `Q5_K` (prompts of eight rows or more;
/// see [`tiled_with_mins`]).
pub fn dot_q5k_tiled(w: &[BlockQ5K], a: &[ActBlockK]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let s1 = k_sum(|c| q5_ints(w, c), |c, _| w.scales[c] as i32, a);
        acc = tiled_with_mins(acc, s1, q5_mins(w, a), w.d, w.dmin, a.d);
    }
    acc
}

/// `Σ w·a` over the blocks of one `Q3_K` weight row and one activation row, rounded as
/// llama.cpp's AVX2 `ggml_vec_dot_q3_K_q8_K` rounds it: eight exact lanes per super-block
/// (see [`k_lanes`]; 16-value sub-blocks, so lanes 0..4 of chunk `c` take scale `2c`,
/// lanes 4..8 scale `2c + 1`), each fused into its own accumulator with `d_a·d_w`, summed as
/// `hsum_float_8`.
pub fn dot_q3k(w: &[BlockQ3K], a: &[ActBlockK]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, a) in w.iter().zip(a) {
        let lanes = k_lanes(|c| q3_ints(w, c), |c, l| w.scales[2 * c + l / 4] as i32, a);
        let d = a.d * w.d;
        for (acc, &lane) in acc.iter_mut().zip(&lanes) {
            *acc = d.mul_add(lane as f32, *acc);
        }
    }
    hsum8(acc)
}

/// `Σ w·a` as llama.cpp's tiled matmul rounds it for `Q3_K` (prompts of eight rows or more):
/// per super-block the exact `Σ scale·q·a`, converted to f32 and multiplied by `d_w`, fused
/// into the accumulator with `d_a` (as [`dot_q6k_tiled`]).
pub fn dot_q3k_tiled(w: &[BlockQ3K], a: &[ActBlockK]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let s = k_sum(|c| q3_ints(w, c), |c, l| w.scales[2 * c + l / 4] as i32, a);
        acc = (s as f32 * w.d).mul_add(a.d, acc);
    }
    acc
}

/// The eight exact lanes `mins[2L]·bsums[2L] + mins[2L + 1]·bsums[2L + 1]` of a `Q2_K` block
/// (`vpmaddwd` of the mins with the activation sums).
fn q2_min_lanes(w: &BlockQ2K, a: &ActBlockK) -> [i32; 8] {
    std::array::from_fn(|l| {
        w.mins[2 * l] as i32 * a.bsums[2 * l] as i32
            + w.mins[2 * l + 1] as i32 * a.bsums[2 * l + 1] as i32
    })
}

/// `Σ w·a` over the blocks of one `Q2_K` weight row and one activation row, rounded as
/// llama.cpp's AVX2 `ggml_vec_dot_q2_K_q8_K` rounds it: per super-block, the eight exact
/// mins lanes ([`q2_min_lanes`]) fused into the eight accumulators with `−(d_a·dmin_w)`,
/// then the eight exact lanes of the quants ([`k_lanes`], 16-value sub-blocks) with
/// `d_a·d_w`; summed as `hsum_float_8`.
pub fn dot_q2k(w: &[BlockQ2K], a: &[ActBlockK]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, a) in w.iter().zip(a) {
        let dmin = -(a.d * w.dmin);
        for (acc, &m) in acc.iter_mut().zip(&q2_min_lanes(w, a)) {
            *acc = dmin.mul_add(m as f32, *acc);
        }
        let lanes = k_lanes(|c| q2_ints(w, c), |c, l| w.scales[2 * c + l / 4] as i32, a);
        let d = a.d * w.d;
        for (acc, &lane) in acc.iter_mut().zip(&lanes) {
            *acc = d.mul_add(lane as f32, *acc);
        }
    }
    hsum8(acc)
}

/// `Σ w·a` as llama.cpp's tiled matmul rounds it for `Q2_K` (prompts of eight rows or more;
/// see [`tiled_with_mins`]).
pub fn dot_q2k_tiled(w: &[BlockQ2K], a: &[ActBlockK]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let s1 = k_sum(|c| q2_ints(w, c), |c, l| w.scales[2 * c + l / 4] as i32, a);
        let s2 = q2_min_lanes(w, a).iter().sum();
        acc = tiled_with_mins(acc, s1, s2, w.d, w.dmin, a.d);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// [`nearest_int`] is round-half-to-even on the range it is used on.
        #[test]
        fn nearest_int_rounds_half_to_even(v in -130f32..130f32, half in any::<bool>()) {
            let v = if half { v.trunc() + 0.5f32.copysign(v) } else { v };
            prop_assert_eq!(nearest_int(v), v.round_ties_even() as i32);
        }
    }
}
