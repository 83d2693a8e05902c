//! The scalar twins of the SIMD dot products: the same sums in the same order (so every
//! machine computes the same bits, llama.cpp's), the definition the SIMD kernels are tested
//! against, and what runs where no SIMD kernel applies.

use super::blocks::{
    f16_bits, ActBlock, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK,
};

/// Eight f32 lanes summed as llama.cpp's `hsum_float_8` (and our SIMD kernels) sum them.
fn hsum8(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// The SIMD kernels' order: per block, lane `L` holds the exact integer sum of values
/// `4L..4L + 4` (`products(block, value)`), converted to f32 and fused into its own
/// accumulator with the block's `scale`; the lanes summed at the end.
fn lanes<W, A>(
    w: &[W],
    a: &[A],
    products: impl Fn(&W, &A, usize) -> i32,
    scale: impl Fn(&W, &A) -> f32,
) -> f32 {
    let mut acc = [0f32; 8];
    for (w, a) in w.iter().zip(a) {
        let sc = scale(w, a);
        for (l, acc) in acc.iter_mut().enumerate() {
            let lane: i32 = (4 * l..4 * l + 4).map(|v| products(w, a, v)).sum();
            *acc = sc.mul_add(lane as f32, *acc);
        }
    }
    hsum8(acc)
}

/// Element `v` (0..32) of a block's 32 nibbles: the low nibble of `qs[v]`, or the high one of
/// `qs[v - 16]`.
fn nibble(qs: &[u8; 16], v: usize) -> i32 {
    if v < 16 {
        (qs[v] & 0x0F) as i32
    } else {
        (qs[v - 16] >> 4) as i32
    }
}

/// `Σ w·a` over the blocks of one `Q4_0` weight row and one activation row, in the order of
/// llama.cpp's x86 `ggml_vec_dot_q4_0_q8_0` (and our SIMD kernels).
pub fn dot_q4_0(w: &[BlockQ4_0], a: &[ActBlock]) -> f32 {
    lanes(
        w,
        a,
        |w, a, v| (nibble(&w.qs, v) - 8) * a.qs[v] as i32,
        |w, a| f16_bits(w.d) * a.d,
    )
}

/// `Σ w·a` over the blocks of one `Q4_0` weight row and one activation row, in the order of
/// llama.cpp's repacked x86 kernels (`ggml_gemv_q4_0_8x8_q8_0` and `ggml_gemm_q4_0_8x8_q8_0`,
/// which its CPU backend uses for every `Q4_0` matrix whose row count is a multiple of 8):
/// one exact integer per block, converted to f32 and fused into the accumulator with
/// `d_w · d_a`. The interleaved kernels ([`super::interleaved::dots_q4_0_x16`]) compute
/// exactly this.
pub fn dot_q4_0_blocks(w: &[BlockQ4_0], a: &[ActBlock]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi: i32 = (0..QK)
            .map(|v| (nibble(&w.qs, v) - 8) * a.qs[v] as i32)
            .sum();
        acc = (sumi as f32).mul_add(f16_bits(w.d) * a.d, acc);
    }
    acc
}

/// `Σ w·a` over the blocks of one `Q4_1` weight row and one activation row, in the order of
/// llama.cpp's x86 `ggml_vec_dot_q4_1_q8_1` (and our SIMD kernels): eight lanes, then the
/// `m · s` terms added one by one.
pub fn dot_q4_1(w: &[BlockQ4_1], a: &[ActBlock]) -> f32 {
    let dot = lanes(
        w,
        a,
        |w, a, v| nibble(&w.qs, v) * a.qs[v] as i32,
        |w, a| f16_bits(w.d) * a.d,
    );
    let mut ms = 0f32;
    for (w, a) in w.iter().zip(a) {
        ms += f16_bits(w.m) * a.s;
    }
    dot + ms
}

/// `Σ w·a` over the blocks of one `Q5_0` weight row and one activation row, in the order of
/// llama.cpp's x86 `ggml_vec_dot_q5_0_q8_0` (and our SIMD kernels).
pub fn dot_q5_0(w: &[BlockQ5_0], a: &[ActBlock]) -> f32 {
    let value = |w: &BlockQ5_0, v: usize| {
        let low = if v < 16 {
            w.qs[v] & 0x0F
        } else {
            w.qs[v - 16] >> 4
        };
        (low as i32 | (((w.qh >> v) & 1) << 4) as i32) - 16
    };
    lanes(
        w,
        a,
        |w, a, v| value(w, v) * a.qs[v] as i32,
        |w, a| f16_bits(w.d) * a.d,
    )
}

/// `Σ w·a` over the blocks of one `Q5_1` weight row and one activation row, in the order of
/// llama.cpp's x86 `ggml_vec_dot_q5_1_q8_1` (and our SIMD kernels): eight lanes, then the
/// `m · s` terms added one by one.
pub fn dot_q5_1(w: &[BlockQ5_1], a: &[ActBlock]) -> f32 {
    let value = |w: &BlockQ5_1, v: usize| nibble(&w.qs, v) | (((w.qh >> v) & 1) << 4) as i32;
    let dot = lanes(
        w,
        a,
        |w, a, v| value(w, v) * a.qs[v] as i32,
        |w, a| f16_bits(w.d) * a.d,
    );
    let mut ms = 0f32;
    for (w, a) in w.iter().zip(a) {
        ms += f16_bits(w.m) * a.s;
    }
    dot + ms
}

/// `Σ w·a` over the blocks of one `Q8_0` weight row and one activation row, in the order of
/// llama.cpp's x86 `ggml_vec_dot_q8_0_q8_0` (and our SIMD kernels).
pub fn dot_q8_0(w: &[BlockQ8_0], a: &[ActBlock]) -> f32 {
    lanes(
        w,
        a,
        |w, a, v| w.qs[v] as i32 * a.qs[v] as i32,
        |w, a| f16_bits(w.d) * a.d,
    )
}

/// Appends a `Q4_0` block's 32 values to `out`.
pub fn dequantize_q4_0(b: &BlockQ4_0, out: &mut Vec<f32>) {
    let d = f16_bits(b.d);
    out.extend(b.qs.iter().map(|&q| d * ((q & 0x0F) as i32 - 8) as f32));
    out.extend(b.qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
}

/// Appends a `Q4_1` block's 32 values to `out`.
pub fn dequantize_q4_1(b: &BlockQ4_1, out: &mut Vec<f32>) {
    let (d, m) = (f16_bits(b.d), f16_bits(b.m));
    out.extend(b.qs.iter().map(|&q| d * (q & 0x0F) as f32 + m));
    out.extend(b.qs.iter().map(|&q| d * (q >> 4) as f32 + m));
}

/// Appends a `Q5_0` block's 32 values to `out`.
pub fn dequantize_q5_0(b: &BlockQ5_0, out: &mut Vec<f32>) {
    let d = f16_bits(b.d);
    let fifth = |j: usize| (((b.qh >> j) & 1) << 4) as i32;
    out.extend((0..16).map(|j| d * (((b.qs[j] & 0x0F) as i32 | fifth(j)) - 16) as f32));
    out.extend((0..16).map(|j| d * (((b.qs[j] >> 4) as i32 | fifth(j + 16)) - 16) as f32));
}

/// Appends a `Q5_1` block's 32 values to `out`.
pub fn dequantize_q5_1(b: &BlockQ5_1, out: &mut Vec<f32>) {
    let (d, m) = (f16_bits(b.d), f16_bits(b.m));
    let fifth = |j: usize| (((b.qh >> j) & 1) << 4) as i32;
    out.extend((0..16).map(|j| d * ((b.qs[j] & 0x0F) as i32 | fifth(j)) as f32 + m));
    out.extend((0..16).map(|j| d * ((b.qs[j] >> 4) as i32 | fifth(j + 16)) as f32 + m));
}

/// Appends a `Q8_0` block's 32 values to `out`.
pub fn dequantize_q8_0(b: &BlockQ8_0, out: &mut Vec<f32>) {
    let d = f16_bits(b.d);
    out.extend(b.qs.iter().map(|&q| d * q as f32));
}
