//! The scalar twins of the SIMD dot products: the definition the SIMD kernels are tested
//! against, and what runs where no SIMD kernel applies.

use super::blocks::{f16_bits, ActBlock, BlockQ4_1, BlockQ5_0, BlockQ8_0};

/// `Σ w·a` over the blocks of one `Q4_1` weight row and one activation row.
pub(crate) fn dot_q4_1(w: &[BlockQ4_1], a: &[ActBlock]) -> f32 {
    let mut sum = 0f32;
    for (w, a) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = (w.qs[j] & 0x0F) as i32;
            let hi = (w.qs[j] >> 4) as i32;
            sumi += lo * a.qs[j] as i32 + hi * a.qs[j + 16] as i32;
        }
        sum += sumi as f32 * (f16_bits(w.d) * a.d) + f16_bits(w.m) * a.s;
    }
    sum
}

/// `Σ w·a` over the blocks of one `Q5_0` weight row and one activation row.
pub(crate) fn dot_q5_0(w: &[BlockQ5_0], a: &[ActBlock]) -> f32 {
    let mut sum = 0f32;
    for (w, a) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = (w.qs[j] & 0x0F) as i32 | (((w.qh >> j) & 1) << 4) as i32;
            let hi = (w.qs[j] >> 4) as i32 | (((w.qh >> (j + 16)) & 1) << 4) as i32;
            sumi += (lo - 16) * a.qs[j] as i32 + (hi - 16) * a.qs[j + 16] as i32;
        }
        sum += sumi as f32 * (f16_bits(w.d) * a.d);
    }
    sum
}

/// `Σ w·a` over the blocks of one `Q8_0` weight row and one activation row.
pub(crate) fn dot_q8_0(w: &[BlockQ8_0], a: &[ActBlock]) -> f32 {
    let mut sum = 0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi: i32 =
            w.qs.iter()
                .zip(&a.qs)
                .map(|(&x, &y)| x as i32 * y as i32)
                .sum();
        sum += sumi as f32 * (f16_bits(w.d) * a.d);
    }
    sum
}

/// Appends a `Q4_1` block's 32 values to `out`.
pub(crate) fn dequantize_q4_1(b: &BlockQ4_1, out: &mut Vec<f32>) {
    let (d, m) = (f16_bits(b.d), f16_bits(b.m));
    out.extend(b.qs.iter().map(|&q| d * (q & 0x0F) as f32 + m));
    out.extend(b.qs.iter().map(|&q| d * (q >> 4) as f32 + m));
}

/// Appends a `Q5_0` block's 32 values to `out`.
pub(crate) fn dequantize_q5_0(b: &BlockQ5_0, out: &mut Vec<f32>) {
    let d = f16_bits(b.d);
    let fifth = |j: usize| (((b.qh >> j) & 1) << 4) as i32;
    out.extend((0..16).map(|j| d * (((b.qs[j] & 0x0F) as i32 | fifth(j)) - 16) as f32));
    out.extend((0..16).map(|j| d * (((b.qs[j] >> 4) as i32 | fifth(j + 16)) - 16) as f32));
}

/// Appends a `Q8_0` block's 32 values to `out`.
pub(crate) fn dequantize_q8_0(b: &BlockQ8_0, out: &mut Vec<f32>) {
    let d = f16_bits(b.d);
    out.extend(b.qs.iter().map(|&q| d * q as f32));
}
