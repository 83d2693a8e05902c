//! Quantized blocks in GGML's formats, read safely from a tensor's bytes, and the 8-bit
//! quantization of activations that the integer dot products consume.
//!
//! Weight blocks keep the file's bit layout (scales as f16 bits), so a weight matrix takes
//! the same memory as in the GGUF file, give or take alignment padding.

use half::f16;

use crate::buf::WeightBuf;

/// Values per block in every format here.
pub const QK: usize = 32;

/// GGML `Q4_0`: `value = d * (q - 8)`, `q` in 0..16; element `j` is the low nibble of
/// `qs[j]`, element `j + 16` its high nibble. 18 bytes in the file.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// The scale, as f16 bits.
    pub d: u16,
    /// The 32 nibbles.
    pub qs: [u8; 16],
}

/// GGML `Q4_1`: `value = d * q + m`, `q` in 0..16; element `j` is the low nibble of
/// `qs[j]`, element `j + 16` its high nibble. 20 bytes in the file. `repr(C)`: the kernels
/// load `d` and `m` together.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// The scale, as f16 bits.
    pub d: u16,
    /// The offset, as f16 bits.
    pub m: u16,
    /// The 32 nibbles.
    pub qs: [u8; 16],
}

/// GGML `Q5_0`: `value = d * (q - 16)`, `q` in 0..32: the nibbles as in `Q4_1`, plus bit `j`
/// of `qh` as the fifth bit of element `j`. 22 bytes in the file.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    /// The scale, as f16 bits.
    pub d: u16,
    /// Zero: the two bytes the alignment of `qh` would leave undefined, named so the block
    /// has none (it is [`bytemuck::Pod`], as [`crate::buf::WeightBuf`] needs).
    pub(crate) pad: u16,
    /// The fifth bit of each value (bit `j` for element `j`).
    pub qh: u32,
    /// The low four bits of each value, as nibbles.
    pub qs: [u8; 16],
}

/// GGML `Q5_1`: `value = d * q + m`, `q` in 0..32: the nibbles as in `Q4_1`, plus bit `j`
/// of `qh` as the fifth bit of element `j`. 24 bytes in the file. `repr(C)`: the kernels load
/// `d` and `m` together.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    /// The scale, as f16 bits.
    pub d: u16,
    /// The offset, as f16 bits.
    pub m: u16,
    /// The fifth bit of each value (bit `j` for element `j`).
    pub qh: u32,
    /// The low four bits of each value, as nibbles.
    pub qs: [u8; 16],
}

/// GGML `Q8_0`: `value = d * q`, `q` in -127..=127. 34 bytes in the file.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// The scale, as f16 bits.
    pub d: u16,
    /// The 32 quants.
    pub qs: [i8; 32],
}

/// One block of an activation row quantized to 8 bits (GGML's `Q8_0`/`Q8_1`): `d` and `s`
/// hold the values GGML stores as f16 (so products round as llama.cpp's do), `sum` is the
/// exact sum of `qs`. `repr(C)`: the kernels load `d` and `s` together.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct ActBlock {
    /// The scale `amax / 127`, rounded through f16.
    pub d: f32,
    /// `d · sum`, rounded through f16.
    pub s: f32,
    /// The exact sum of `qs`.
    pub sum: i32,
    /// The 32 quants.
    pub qs: [i8; 32],
    /// `-16 ×` the sum of each four consecutive `qs` (one per 32-bit lane): the VNNI `Q5_0`
    /// kernel starts its lane sums here (and the `Q4_0` one from half of it), so the unsigned
    /// weight values (`q + 16`, `q + 8`) need no sign fix-up per row.
    pub neg16: [i32; 8],
}

impl Default for ActBlock {
    fn default() -> Self {
        Self {
            d: 0.0,
            s: 0.0,
            sum: 0,
            qs: [0; 32],
            neg16: [0; 8],
        }
    }
}

/// A weight format read from a GGUF tensor's bytes.
pub trait WeightBlock: bytemuck::Pod + Send + Sync + 'static {
    /// Bytes per block in the file.
    const BYTES: usize;
    /// Reads one block from exactly `Self::BYTES` bytes.
    fn read(b: &[u8]) -> Self;
}

/// The little-endian u16 at byte `i`.
fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

impl WeightBlock for BlockQ4_0 {
    const BYTES: usize = 18;
    fn read(b: &[u8]) -> Self {
        let mut qs = [0u8; 16];
        qs.copy_from_slice(&b[2..18]);
        Self {
            d: u16_at(b, 0),
            qs,
        }
    }
}

impl WeightBlock for BlockQ4_1 {
    const BYTES: usize = 20;
    fn read(b: &[u8]) -> Self {
        let mut qs = [0u8; 16];
        qs.copy_from_slice(&b[4..20]);
        Self {
            d: u16_at(b, 0),
            m: u16_at(b, 2),
            qs,
        }
    }
}

impl WeightBlock for BlockQ5_0 {
    const BYTES: usize = 22;
    fn read(b: &[u8]) -> Self {
        let mut qs = [0u8; 16];
        qs.copy_from_slice(&b[6..22]);
        Self {
            d: u16_at(b, 0),
            pad: 0,
            qh: u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
            qs,
        }
    }
}

impl WeightBlock for BlockQ5_1 {
    const BYTES: usize = 24;
    fn read(b: &[u8]) -> Self {
        let mut qs = [0u8; 16];
        qs.copy_from_slice(&b[8..24]);
        Self {
            d: u16_at(b, 0),
            m: u16_at(b, 2),
            qh: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            qs,
        }
    }
}

impl WeightBlock for BlockQ8_0 {
    const BYTES: usize = 34;
    fn read(b: &[u8]) -> Self {
        let mut qs = [0i8; 32];
        for (q, &x) in qs.iter_mut().zip(&b[2..34]) {
            *q = x as i8;
        }
        Self {
            d: u16_at(b, 0),
            qs,
        }
    }
}

/// Reads every block of a tensor's bytes (`bytes.len()` a multiple of `B::BYTES`; a partial
/// block at the end is left out) into a [`WeightBuf`] (2 MiB pages where the OS lends them).
pub fn read_blocks<B: WeightBlock>(bytes: &[u8]) -> WeightBuf<B> {
    WeightBuf::from_fn(bytes.len() / B::BYTES, |i| {
        B::read(&bytes[i * B::BYTES..(i + 1) * B::BYTES])
    })
}

/// An f16 bit pattern as f32.
#[inline(always)]
pub fn f16_bits(b: u16) -> f32 {
    f16::from_bits(b).to_f32()
}

/// Quantizes one row of `QK * out.len()` values into `out` the way llama.cpp's x86
/// `quantize_row_q8_1` does: `d = amax / 127`, `q = x · (127 / amax)` rounded half to even;
/// `d` and `s = d * Σq` rounded through f16. The portable twin of
/// [`quantize_acts`](super::quantize_acts), which picks the SIMD build.
pub fn quantize_row(xs: &[f32], out: &mut [ActBlock]) {
    debug_assert_eq!(xs.len(), out.len() * QK);
    for (block, xs) in out.iter_mut().zip(xs.chunks_exact(QK)) {
        let amax = xs.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let d = amax / 127.0;
        // As llama.cpp's x86 `quantize_row_q8_0` / `_q8_1` (not GGML's scalar reference,
        // which candle follows): `127 / amax`, rounded half to even.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &x) in block.qs.iter_mut().zip(xs) {
            let v = (x * id).round_ties_even() as i8;
            *q = v;
            sum += v as i32;
        }
        block.d = f16::from_f32(d).to_f32();
        block.s = f16::from_f32(d * sum as f32).to_f32();
        block.sum = sum;
        for (n, q) in block.neg16.iter_mut().zip(block.qs.chunks_exact(4)) {
            *n = -16 * q.iter().map(|&q| q as i32).sum::<i32>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_row_round_trips_within_half_a_step() {
        let xs: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13)
            .collect();
        let mut out = vec![ActBlock::default(); 2];
        quantize_row(&xs, &mut out);
        for (b, xs) in out.iter().zip(xs.chunks_exact(QK)) {
            assert_eq!(b.sum, b.qs.iter().map(|&q| q as i32).sum::<i32>());
            for (l, n) in b.neg16.iter().enumerate() {
                assert_eq!(
                    *n,
                    -16 * b.qs[4 * l..4 * l + 4]
                        .iter()
                        .map(|&q| q as i32)
                        .sum::<i32>()
                );
            }
            for (&q, &x) in b.qs.iter().zip(xs) {
                assert!(
                    (q as f32 * b.d - x).abs() <= b.d * 0.51 + 1e-3,
                    "{q} {x} {}",
                    b.d
                );
            }
        }
    }

    #[test]
    fn zero_row_quantizes_to_zero() {
        let mut out = vec![ActBlock::default(); 1];
        quantize_row(&[0.0; 32], &mut out);
        assert_eq!(out[0], ActBlock::default());
    }
}
