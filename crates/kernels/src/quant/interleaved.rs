//! Weight rows interleaved sixteen at a time (`Q4_K`: [`BlockQ4Kx16`]; `Q4_0`:
//! [`BlockQ4_0x16`]; for prompts, `Q5_K` and `Q6_K`: [`BlockQ5Kx16`], [`BlockQ6Kx16`]), the
//! layout of the kernels that keep one output per 32-bit lane, and their dot products
//! ([`dots_q4k_x16`], [`dots_q4_0_x16`], [`dots_q5k_x16`], [`dots_q6k_x16`]).
//!
//! A row-major kernel sums each weight row's products across a register and must reduce
//! the register to one integer per block (or per 64 values in `Q4_K`'s prompt order):
//! those horizontal sums, and the weight unpacking done once per row, are most of its work.
//! Here lane `j` of every register belongs to weight row `j` of the group: four consecutive
//! quants of each of the sixteen rows fill one 512-bit register, `vpdpbusd` multiplies them
//! by four activation bytes broadcast to every lane, and the sums are already per row (as
//! in llama.cpp's repacked `Q4_K` and `Q4_0` gemv/gemm, whose layouts interleave eight rows).
//! A group's blocks are read in order: one linear stream.
//!
//! * `Q4_K`: the exact integers and the f32 operations per (weight row, activation row) are
//!   those of [`super::kquant::dot_q4k`] (one-row order) and
//!   [`super::kquant::dot_q4k_grouped`] (prompt order), so the results are the same bits.
//! * `Q4_0`: llama.cpp's CPU backend repacks every `Q4_0` matrix whose row count is a
//!   multiple of 8 on AVX2 and AVX-512 machines, and its repacked kernels sum differently
//!   from its row-major `ggml_vec_dot_q4_0_q8_0` (eight f32 lanes per row): one exact integer
//!   per block, fused into the accumulator with `d_w · d_a`
//!   ([`super::scalar::dot_q4_0_blocks`]). These kernels compute exactly that, for a prompt
//!   and for decoding alike, on every level (AVX-512 VNNI, AVX2, portable), so a `Q4_0`
//!   matrix gives llama.cpp's bits wherever it repacks.
//! * `Q5_K`, `Q6_K`: not stored interleaved. Their decode order (llama.cpp's `vec_dot`:
//!   eight f32 lanes per row) is faster on row-major weights; a prompt's tiled order (one
//!   exact integer per super-block and row, [`super::kquant::dot_q5k_tiled`],
//!   [`super::kquant::dot_q6k_tiled`]) is not. So a worker copies a group of sixteen rows
//!   into one of these blocks (`fill`, quants widened to bytes) when a prompt needs it, and
//!   every activation tile of the prompt reuses the copy.
//!
//! The tests assert every level against the scalar twins.

use super::blocks::{f16_bits, ActBlock, BlockQ4_0, WeightBlock};
use super::kquant::{q5_chunk, q6_chunk, ActBlockK, BlockQ4K, BlockQ5K, BlockQ6K};
use super::MAX_TILE;
use crate::buf::WeightBuf;
use crate::simd::{Kernels, Simd};

/// Weight rows per interleaved group.
pub const X16: usize = 16;

/// Super-block `i` of sixteen `Q4_K` weight rows (a group), interleaved: row `j`'s values
/// are in lane `j` (bytes `4j..4j + 4` of each `qs` register, entry `j` of the per-row
/// arrays). 2,432 bytes, as the sixteen [`BlockQ4K`]s it holds. The scales come first, in
/// the order the kernels read them, so a matrix streams from memory in one direction: with
/// `qs` first (each block read end, then start) one thread decoding from DRAM read 19.8
/// GB/s, with this order 23 (two threads: 36 → 37; 1B `Q4_K_M` decode +3.5%).
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub struct BlockQ4Kx16 {
    /// Each row's super-block scale.
    pub d: [f32; X16],
    /// Each row's super-block scale of the mins.
    pub dmin: [f32; X16],
    /// `scales[s][j]`: row `j`'s scale of sub-block `s`.
    pub scales: [[u8; X16]; 8],
    /// `mins[s][j]`: row `j`'s min of sub-block `s`.
    pub mins: [[u8; X16]; 8],
    /// `qs[t][4j + b]` is byte `4t + b` of row `j`'s 128 quant bytes (`t < 32`): the low
    /// nibbles of `qs[t]` are values `64(t/8) + 4(t%8) .. + 4` of each row (sub-block
    /// `2(t/8)`), the high nibbles the 32 values after them (sub-block `2(t/8) + 1`).
    pub qs: [[u8; 64]; 32],
}

impl BlockQ4Kx16 {
    /// Super-block `i` of sixteen rows: `rows[j]` is row `j`'s block.
    pub fn interleave(rows: [&BlockQ4K; X16]) -> Self {
        let mut out = Self {
            qs: [[0; 64]; 32],
            scales: [[0; X16]; 8],
            mins: [[0; X16]; 8],
            d: [0.0; X16],
            dmin: [0.0; X16],
        };
        for (j, b) in rows.iter().enumerate() {
            for (t, q) in out.qs.iter_mut().enumerate() {
                q[4 * j..4 * j + 4].copy_from_slice(&b.qs[4 * t..4 * t + 4]);
            }
            for s in 0..8 {
                out.scales[s][j] = b.scales[s];
                out.mins[s][j] = b.mins[s];
            }
            out.d[j] = b.d;
            out.dmin[j] = b.dmin;
        }
        out
    }

    /// Row `j`'s block (`j < 16`), as it was before [`interleave`](Self::interleave).
    pub fn row(&self, j: usize) -> BlockQ4K {
        let mut qs = [0u8; 128];
        for (t, q) in self.qs.iter().enumerate() {
            qs[4 * t..4 * t + 4].copy_from_slice(&q[4 * j..4 * j + 4]);
        }
        BlockQ4K {
            d: self.d[j],
            dmin: self.dmin[j],
            scales: std::array::from_fn(|s| self.scales[s][j]),
            mins: std::array::from_fn(|s| self.mins[s][j]),
            qs,
        }
    }
}

/// `n` row-major `Q4_K` weight rows of `kb` blocks each, interleaved by groups of sixteen
/// (group `g`'s super-block `i` at `g·kb + i`); `None` unless `n` is a multiple of 16 and
/// `w` holds `n·kb` blocks.
pub fn interleave_q4k(w: &[BlockQ4K], n: usize, kb: usize) -> Option<WeightBuf<BlockQ4Kx16>> {
    if !n.is_multiple_of(X16) || w.len() != n * kb {
        return None;
    }
    let block = |row: usize, i: usize| w[row * kb + i];
    Some(interleave(
        n,
        kb,
        (ZERO_Q4K, block),
        BlockQ4Kx16::interleave,
    ))
}

/// [`interleave_q4k`] straight from a tensor's bytes (GGML's 144-byte blocks), with no
/// row-major copy in between; `None` unless `n` is a multiple of 16 and `bytes` holds exactly
/// `n·kb` blocks.
pub fn interleave_q4k_bytes(bytes: &[u8], n: usize, kb: usize) -> Option<WeightBuf<BlockQ4Kx16>> {
    if !n.is_multiple_of(X16) {
        return None;
    }
    interleave_bytes(bytes, n, kb, ZERO_Q4K, BlockQ4Kx16::interleave)
}

/// A `Q4_K` block whose values are all zero (never made as padding: `Q4_K` groups are only
/// made from a multiple of 16 rows).
const ZERO_Q4K: BlockQ4K = BlockQ4K {
    d: 0.0,
    dmin: 0.0,
    scales: [0; 8],
    mins: [0; 8],
    qs: [0; 128],
};

/// `n` rows of `kb` blocks of format `B` read from a tensor's bytes and interleaved as
/// [`interleave`] does; `None` unless `bytes` holds exactly `n·kb` blocks.
fn interleave_bytes<B: WeightBlock, X: bytemuck::Pod + Send + Sync>(
    bytes: &[u8],
    n: usize,
    kb: usize,
    zero: B,
    make: fn([&B; X16]) -> X,
) -> Option<WeightBuf<X>> {
    let size = B::BYTES;
    if bytes.len() != n * kb * size {
        return None;
    }
    let block = |row: usize, i: usize| {
        let at = (row * kb + i) * size;
        B::read(&bytes[at..at + size])
    };
    Some(interleave(n, kb, (zero, block), make))
}

/// Groups of sixteen rows (`n` of them, `kb` blocks each; `block(row, i)`), the last padded
/// with `zero` rows, each block of a group made by `make`.
fn interleave<B: Copy + Sync, X: bytemuck::Pod + Send + Sync>(
    n: usize,
    kb: usize,
    (zero, block): (B, impl Fn(usize, usize) -> B + Sync),
    make: fn([&B; X16]) -> X,
) -> WeightBuf<X> {
    let groups = n.div_ceil(X16);
    WeightBuf::from_fn(groups * kb, |at| {
        let (g, i) = (at / kb, at % kb);
        let rows: [B; X16] = std::array::from_fn(|j| {
            let row = g * X16 + j;
            if row < n {
                block(row, i)
            } else {
                zero
            }
        });
        make(std::array::from_fn(|j| &rows[j]))
    })
}

/// The sixteen weight rows of one group (`w`: its `kb` blocks) times 1..=4 activation rows
/// (`rows`, at least `kb` blocks each), into `out[j][r]` (`out`: sixteen entries). In the
/// prompt order (`grouped`: llama.cpp's 4-row repacked gemm, fused every 64 values) or the
/// one-row order, the bits of [`super::kquant::dot_q4k_grouped`] or
/// [`super::kquant::dot_q4k`] for each pair, under every [`Kernels`]: the AVX-512 VNNI build
/// under [`Simd::Avx512Vnni`], a portable loop on the interleaved layout otherwise.
///
/// # Panics
/// If the shapes disagree: `w` not `kb` blocks, no rows or more than four, a row shorter
/// than `kb`, `out` not sixteen entries.
pub fn dots_q4k_x16(
    kernels: Kernels,
    w: &[BlockQ4Kx16],
    kb: usize,
    rows: &[&[ActBlockK]],
    grouped: bool,
    out: &mut [[f32; MAX_TILE]],
) {
    check_x16(w.len(), kb, rows, out.len());
    #[cfg(target_arch = "x86_64")]
    if kernels.simd() == Simd::Avx512Vnni {
        crate::arch::x86_64::avx512::x16::dots_q4k(kernels, w, rows, grouped, out);
        return;
    }
    let _ = kernels;
    for (r, a) in rows.iter().enumerate() {
        for (j, o) in out.iter_mut().enumerate() {
            o[r] = portable(w, a, j, grouped);
        }
    }
}

/// Row `j` of the group times activation row `a`, on the interleaved layout, in the order
/// of [`super::kquant::dot_q4k`] (or `dot_q4k_grouped` when `grouped`).
fn portable(w: &[BlockQ4Kx16], a: &[ActBlockK], j: usize, grouped: bool) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (b, a) in w.iter().zip(a) {
        let (dd, dm) = (b.d[j] * a.d, b.dmin[j] * a.d);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for g in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..8 {
                let q = &b.qs[8 * g + l][4 * j..4 * j + 4];
                for (k, &q) in q.iter().enumerate() {
                    lo += (q & 0x0F) as i32 * a.qs[64 * g + 4 * l + k] as i32;
                    hi += (q >> 4) as i32 * a.qs[64 * g + 32 + 4 * l + k] as i32;
                }
            }
            let s = b.scales[2 * g][j] as i32 * lo + b.scales[2 * g + 1][j] as i32 * hi;
            let m = b.mins[2 * g][j] as i32 * (a.bsums[4 * g] as i32 + a.bsums[4 * g + 1] as i32)
                + b.mins[2 * g + 1][j] as i32
                    * (a.bsums[4 * g + 2] as i32 + a.bsums[4 * g + 3] as i32);
            if grouped {
                acc = (s as f32).mul_add(dd, acc);
                acc_min = (m as f32).mul_add(dm, acc_min);
            } else {
                sumi += s;
                summ += m;
            }
        }
        if !grouped {
            acc = (sumi as f32).mul_add(dd, acc);
            acc_min = (summ as f32).mul_add(dm, acc_min);
        }
    }
    acc - acc_min
}

/// Block `i` of sixteen `Q4_0` weight rows (a group), interleaved: `qs[t][4j + b]` is byte
/// `4t + b` of row `j`'s 16 quant bytes (`t < 4`), so the low nibbles of `qs[t]` are values
/// `4t..4t + 4` of each row and the high nibbles values `16 + 4t..16 + 4t + 4`; `d[j]` is row
/// `j`'s scale (f16 bits). 288 bytes, as the sixteen [`BlockQ4_0`]s it holds.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ4_0x16 {
    /// The quants, four bytes of each row per 64-byte register.
    pub qs: [[u8; 64]; 4],
    /// Each row's scale, as f16 bits.
    pub d: [u16; X16],
}

impl BlockQ4_0x16 {
    /// Block `i` of sixteen rows: `rows[j]` is row `j`'s block.
    pub fn interleave(rows: [&BlockQ4_0; X16]) -> Self {
        let mut out = Self {
            qs: [[0; 64]; 4],
            d: [0; X16],
        };
        for (j, b) in rows.iter().enumerate() {
            for (t, q) in out.qs.iter_mut().enumerate() {
                q[4 * j..4 * j + 4].copy_from_slice(&b.qs[4 * t..4 * t + 4]);
            }
            out.d[j] = b.d;
        }
        out
    }

    /// Row `j`'s block (`j < 16`), as it was before [`interleave`](Self::interleave).
    pub fn row(&self, j: usize) -> BlockQ4_0 {
        let mut qs = [0u8; 16];
        for (t, q) in self.qs.iter().enumerate() {
            qs[4 * t..4 * t + 4].copy_from_slice(&q[4 * j..4 * j + 4]);
        }
        BlockQ4_0 { d: self.d[j], qs }
    }
}

/// The padding row's block: every value zero.
const ZERO_Q4_0: BlockQ4_0 = BlockQ4_0 { d: 0, qs: [0; 16] };

/// `n` row-major `Q4_0` weight rows of `kb` blocks each, interleaved by groups of sixteen
/// (group `g`'s block `i` at `g·kb + i`), the last group padded with zero rows when `n` is
/// not a multiple of 16 (their outputs are never read); `None` unless `w` holds `n·kb`
/// blocks.
pub fn interleave_q4_0(w: &[BlockQ4_0], n: usize, kb: usize) -> Option<WeightBuf<BlockQ4_0x16>> {
    if w.len() != n * kb {
        return None;
    }
    let block = |row: usize, i: usize| w[row * kb + i];
    Some(interleave(
        n,
        kb,
        (ZERO_Q4_0, block),
        BlockQ4_0x16::interleave,
    ))
}

/// [`interleave_q4_0`] straight from a tensor's bytes (GGML's 18-byte blocks), with no
/// row-major copy in between; `None` unless `bytes` holds exactly `n·kb` blocks.
pub fn interleave_q4_0_bytes(bytes: &[u8], n: usize, kb: usize) -> Option<WeightBuf<BlockQ4_0x16>> {
    interleave_bytes(bytes, n, kb, ZERO_Q4_0, BlockQ4_0x16::interleave)
}

/// The sixteen weight rows of one `Q4_0` group (`w`: its `kb` blocks) times 1..=4
/// activation rows (`rows`, at least `kb` blocks each), into `out[j][r]` (`out`: sixteen
/// entries), in llama.cpp's repacked order: the bits of [`super::scalar::dot_q4_0_blocks`]
/// for each pair under every [`Kernels`] (AVX-512 VNNI under [`Simd::Avx512Vnni`], AVX2
/// under the other x86 levels, a portable loop otherwise).
///
/// # Panics
/// If the shapes disagree, as [`dots_q4k_x16`].
pub fn dots_q4_0_x16(
    kernels: Kernels,
    w: &[BlockQ4_0x16],
    kb: usize,
    rows: &[&[ActBlock]],
    out: &mut [[f32; MAX_TILE]],
) {
    check_x16(w.len(), kb, rows, out.len());
    #[cfg(target_arch = "x86_64")]
    match kernels.simd() {
        Simd::Avx512Vnni => {
            crate::arch::x86_64::avx512::x16::dots_q4_0(kernels, w, rows, out);
            return;
        }
        Simd::Avx2 | Simd::Avx512 => {
            crate::arch::x86_64::avx2::x16::dots_q4_0(kernels, w, rows, out);
            return;
        }
        _ => {}
    }
    let _ = kernels;
    for (r, a) in rows.iter().enumerate() {
        for (j, o) in out.iter_mut().enumerate() {
            o[r] = portable_q4_0(w, a, j);
        }
    }
}

/// Row `j` of a `Q4_0` group times activation row `a`, on the interleaved layout, in the
/// order of [`super::scalar::dot_q4_0_blocks`].
fn portable_q4_0(w: &[BlockQ4_0x16], a: &[ActBlock], j: usize) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for (t, q) in b.qs.iter().enumerate() {
            for (k, &q) in q[4 * j..4 * j + 4].iter().enumerate() {
                sumi += ((q & 0x0F) as i32 - 8) * a.qs[4 * t + k] as i32;
                sumi += ((q >> 4) as i32 - 8) * a.qs[16 + 4 * t + k] as i32;
            }
        }
        acc = (sumi as f32).mul_add(f16_bits(b.d[j]) * a.d, acc);
    }
    acc
}

/// Copies a kernel's results (`r[row][j]`: weight row `j` of the group · activation row
/// `row`) into `out[j][row]`.
pub(crate) fn transpose_into<const R: usize>(r: &[[f32; X16]; R], out: &mut [[f32; MAX_TILE]]) {
    for (j, o) in out.iter_mut().enumerate() {
        for (v, r) in o.iter_mut().zip(r) {
            *v = r[j];
        }
    }
}

/// Super-block `i` of sixteen `Q5_K` weight rows (a group) for a prompt's tiled order, every
/// quant widened to a byte (0..32), so a kernel multiplies them with no unpacking: a
/// worker's scratch copy of a group, made from row-major blocks when a prompt needs it (the
/// copy is reused by every activation tile of the prompt), not a layout weights are stored
/// in. 4,480 bytes (sixteen [`BlockQ5K`]s take 2,816).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
pub struct BlockQ5Kx16 {
    /// For `t = 8g + l` (`g < 4`, `l < 8`): bytes `4j..4j + 4` of `q[2t]` are row `j`'s
    /// quants of values `64g + 4l..64g + 4l + 4` (chunk `2g`), those of `q[2t + 1]` of values
    /// `64g + 32 + 4l..` (chunk `2g + 1`). In the order the kernels read them.
    pub q: [[u8; 64]; 64],
    /// `scales[s][j]`: row `j`'s scale of sub-block `s` (32 values).
    pub scales: [[u8; X16]; 8],
    /// `mins[s][j]`: row `j`'s min of sub-block `s`.
    pub mins: [[u8; X16]; 8],
    /// Each row's super-block scale.
    pub d: [f32; X16],
    /// Each row's super-block scale of the mins.
    pub dmin: [f32; X16],
}

/// All zeros (a buffer's first state).
impl Default for BlockQ5Kx16 {
    fn default() -> Self {
        Self {
            q: [[0; 64]; 64],
            scales: [[0; X16]; 8],
            mins: [[0; X16]; 8],
            d: [0.0; X16],
            dmin: [0.0; X16],
        }
    }
}

impl BlockQ5Kx16 {
    /// Super-block `i` of sixteen rows: `rows[j]` is row `j`'s block.
    pub fn interleave(rows: [&BlockQ5K; X16]) -> Self {
        let mut out = Self::default();
        out.fill(Kernels::scalar(), rows);
        out
    }

    /// Overwrites every byte with super-block `i` of sixteen rows (`rows[j]`: row `j`'s
    /// block): [`interleave`](Self::interleave) into a buffer that is reused. The quants,
    /// scales and mins go through an AVX-512 transpose under [`Simd::Avx512Vnni`] (the level
    /// whose kernels read this layout; twice as fast: a group of 16 rows × 4096 values from
    /// cache in 3.0 µs against 6.2), a portable loop otherwise: the same bytes.
    pub fn fill(&mut self, kernels: Kernels, rows: [&BlockQ5K; X16]) {
        let out = self;
        for (j, b) in rows.iter().enumerate() {
            out.d[j] = b.d;
            out.dmin[j] = b.dmin;
        }
        #[cfg(target_arch = "x86_64")]
        if kernels.simd() == Simd::Avx512Vnni {
            crate::arch::x86_64::avx512::x16::fill_q5k(kernels, out, rows);
            return;
        }
        let _ = kernels;
        for (j, b) in rows.iter().enumerate() {
            for s in 0..8 {
                out.scales[s][j] = b.scales[s];
                out.mins[s][j] = b.mins[s];
            }
            for c in 0..8 {
                let q = q5_chunk(b, c);
                for l in 0..8 {
                    let t = 8 * (c / 2) + l;
                    out.q[2 * t + c % 2][4 * j..4 * j + 4].copy_from_slice(&q[4 * l..4 * l + 4]);
                }
            }
        }
    }

    /// Row `j`'s quant of value `v` (`j < 16`, `v < 256`).
    fn quant(&self, j: usize, v: usize) -> u8 {
        let (c, m) = (v / 32, v % 32);
        self.q[2 * (8 * (c / 2) + m / 4) + c % 2][4 * j + m % 4]
    }

    /// Row `j`'s block (`j < 16`), as it was before [`interleave`](Self::interleave).
    pub fn row(&self, j: usize) -> BlockQ5K {
        let mut qs = [0u8; 128];
        let mut qh = [0u8; 32];
        for v in 0..256 {
            let q = self.quant(j, v);
            let (i, l) = (v / 64, v % 64);
            qs[32 * i + l % 32] |= if l < 32 { q & 0x0F } else { (q & 0x0F) << 4 };
            qh[v % 32] |= (q >> 4) << (v / 32);
        }
        BlockQ5K {
            d: self.d[j],
            dmin: self.dmin[j],
            scales: std::array::from_fn(|s| self.scales[s][j]),
            mins: std::array::from_fn(|s| self.mins[s][j]),
            qh,
            qs,
        }
    }
}

/// The sixteen weight rows of one `Q5_K` group (`w`: its `kb` blocks) times 1..=4
/// activation rows (`rows`), into `out[j][r]`, in llama.cpp's tiled order (its prompts of
/// eight rows or more): the bits of [`super::kquant::dot_q5k_tiled`] for each pair, under
/// every [`Kernels`] (AVX-512 VNNI under [`Simd::Avx512Vnni`], a portable loop otherwise).
///
/// # Panics
/// If the shapes disagree, as [`dots_q4k_x16`].
pub fn dots_q5k_x16(
    kernels: Kernels,
    w: &[BlockQ5Kx16],
    kb: usize,
    rows: &[&[ActBlockK]],
    out: &mut [[f32; MAX_TILE]],
) {
    check_x16(w.len(), kb, rows, out.len());
    #[cfg(target_arch = "x86_64")]
    if kernels.simd() == Simd::Avx512Vnni {
        crate::arch::x86_64::avx512::x16::dots_q5k(kernels, w, rows, out);
        return;
    }
    let _ = kernels;
    for (r, a) in rows.iter().enumerate() {
        for (j, o) in out.iter_mut().enumerate() {
            o[r] = portable_q5k(w, a, j);
        }
    }
}

/// Row `j` of a `Q5_K` group times activation row `a`, on the interleaved layout, in the
/// order of [`super::kquant::dot_q5k_tiled`].
fn portable_q5k(w: &[BlockQ5Kx16], a: &[ActBlockK], j: usize) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.iter().zip(a) {
        let s1: i32 = (0..256)
            .map(|v| b.scales[v / 32][j] as i32 * b.quant(j, v) as i32 * a.qs[v] as i32)
            .sum();
        let mins: i32 = (0..8)
            .map(|s| b.mins[s][j] as i32 * (a.bsums[2 * s] as i32 + a.bsums[2 * s + 1] as i32))
            .sum();
        let r = (-b.dmin[j]).mul_add(mins as f32, s1 as f32 * b.d[j]);
        acc = r.mul_add(a.d, acc);
    }
    acc
}

/// Super-block `i` of sixteen `Q6_K` weight rows (a group) for a prompt's tiled order, every
/// quant widened to an unsigned byte `q + 32` (0..64): a worker's scratch copy, as
/// [`BlockQ5Kx16`]. 4,416 bytes (sixteen [`BlockQ6K`]s take 3,392).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
pub struct BlockQ6Kx16 {
    /// For `t = 8c + l` (`c < 8`, `l < 8`): bytes `4j..4j + 4` of `q[t]` are row `j`'s
    /// `q + 32` of values `32c + 4l..32c + 4l + 4` (sub-block `2c + l / 4`).
    pub q: [[u8; 64]; 64],
    /// `scales[s][j]`: row `j`'s scale of sub-block `s` (16 values).
    pub scales: [[i8; X16]; 16],
    /// Each row's super-block scale.
    pub d: [f32; X16],
}

/// All zeros (a buffer's first state).
impl Default for BlockQ6Kx16 {
    fn default() -> Self {
        Self {
            q: [[0; 64]; 64],
            scales: [[0; X16]; 16],
            d: [0.0; X16],
        }
    }
}

impl BlockQ6Kx16 {
    /// Super-block `i` of sixteen rows: `rows[j]` is row `j`'s block.
    pub fn interleave(rows: [&BlockQ6K; X16]) -> Self {
        let mut out = Self::default();
        out.fill(Kernels::scalar(), rows);
        out
    }

    /// Overwrites every byte with super-block `i` of sixteen rows (`rows[j]`: row `j`'s
    /// block): [`interleave`](Self::interleave) into a buffer that is reused, the quants and
    /// scales through AVX-512 under [`Simd::Avx512Vnni`] as [`BlockQ5Kx16::fill`].
    pub fn fill(&mut self, kernels: Kernels, rows: [&BlockQ6K; X16]) {
        for (j, b) in rows.iter().enumerate() {
            self.d[j] = b.d;
        }
        #[cfg(target_arch = "x86_64")]
        if kernels.simd() == Simd::Avx512Vnni {
            crate::arch::x86_64::avx512::x16::fill_q6k(kernels, self, rows);
            return;
        }
        let _ = kernels;
        for (j, b) in rows.iter().enumerate() {
            for s in 0..16 {
                self.scales[s][j] = b.scales[s];
            }
            for c in 0..8 {
                // `q + 32`: the chunk's signed quants moved back to 0..64.
                let q = q6_chunk(b, c).map(|q| (q + 32) as u8);
                for l in 0..8 {
                    self.q[8 * c + l][4 * j..4 * j + 4].copy_from_slice(&q[4 * l..4 * l + 4]);
                }
            }
        }
    }

    /// Row `j`'s quant `q` (−32..32) of value `v` (`j < 16`, `v < 256`).
    fn quant(&self, j: usize, v: usize) -> i32 {
        let (c, m) = (v / 32, v % 32);
        self.q[8 * c + m / 4][4 * j + m % 4] as i32 - 32
    }
}

/// The sixteen weight rows of one `Q6_K` group (`w`: its `kb` blocks) times 1..=4
/// activation rows (`rows`), into `out[j][r]`, in llama.cpp's tiled order (its prompts of
/// eight rows or more): the bits of [`super::kquant::dot_q6k_tiled`] for each pair, under
/// every [`Kernels`] (AVX-512 VNNI under [`Simd::Avx512Vnni`], a portable loop otherwise).
///
/// # Panics
/// If the shapes disagree, as [`dots_q4k_x16`].
pub fn dots_q6k_x16(
    kernels: Kernels,
    w: &[BlockQ6Kx16],
    kb: usize,
    rows: &[&[ActBlockK]],
    out: &mut [[f32; MAX_TILE]],
) {
    check_x16(w.len(), kb, rows, out.len());
    #[cfg(target_arch = "x86_64")]
    if kernels.simd() == Simd::Avx512Vnni {
        crate::arch::x86_64::avx512::x16::dots_q6k(kernels, w, rows, out);
        return;
    }
    let _ = kernels;
    for (r, a) in rows.iter().enumerate() {
        for (j, o) in out.iter_mut().enumerate() {
            o[r] = portable_q6k(w, a, j);
        }
    }
}

/// Row `j` of a `Q6_K` group times activation row `a`, on the interleaved layout, in the
/// order of [`super::kquant::dot_q6k_tiled`].
fn portable_q6k(w: &[BlockQ6Kx16], a: &[ActBlockK], j: usize) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.iter().zip(a) {
        let sum: i32 = (0..256)
            .map(|v| b.scales[v / 16][j] as i32 * b.quant(j, v) * a.qs[v] as i32)
            .sum();
        acc = (sum as f32 * b.d[j]).mul_add(a.d, acc);
    }
    acc
}

/// The shape checks of the `dots_*_x16` functions.
fn check_x16<A>(w: usize, kb: usize, rows: &[&[A]], out: usize) {
    assert!(
        w == kb
            && !rows.is_empty()
            && rows.len() <= 4
            && rows.iter().all(|r| r.len() >= kb)
            && out == X16,
        "quant::dots_*_x16: {w} blocks for {kb}, {} activation rows, {out} outputs",
        rows.len(),
    );
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::quant::blocks::{quantize_row, QK};
    use crate::quant::kquant::{
        dot_q4k, dot_q4k_grouped, dot_q5k_tiled, dot_q6k_tiled, q6_chunk, quantize_row_q8k, QK_K,
    };
    use crate::quant::scalar::dot_q4_0_blocks;
    use crate::quant::tests::{Lcg, Random};
    use proptest::test_runner::TestCaseError;

    /// Four activation rows of `kb` `Q8_K` blocks, values up to `mag`.
    fn k_rows(g: &mut Lcg, kb: usize, mag: f32) -> Vec<ActBlockK> {
        let mut acts = vec![ActBlockK::default(); 4 * kb];
        for a in acts.chunks_exact_mut(kb) {
            let xs: Vec<f32> = (0..kb * QK_K).map(|_| g.unit() * mag).collect();
            quantize_row_q8k(&xs, a);
        }
        acts
    }

    /// On every level this CPU has and for the first 1..=4 of `rows`, `run` (an entry point
    /// on one group) gives `want(j, row)` (weight row `j`'s scalar twin) bit for bit.
    fn every_level_gives<A>(
        rows: &[&[A]],
        run: impl Fn(Kernels, &[&[A]], &mut [[f32; MAX_TILE]]),
        want: impl Fn(usize, &[A]) -> f32,
    ) -> Result<(), TestCaseError> {
        for simd in Simd::available() {
            let kernels = Kernels::new(simd).unwrap();
            for m in 1..=rows.len() {
                let mut out = [[0f32; MAX_TILE]; X16];
                run(kernels, &rows[..m], &mut out);
                for (j, o) in out.iter().enumerate() {
                    for (r, a) in rows[..m].iter().enumerate() {
                        let want = want(j, a);
                        prop_assert_eq!(
                            o[r].to_bits(),
                            want.to_bits(),
                            "{:?}, {} rows, weight row {}, row {}: {} vs {}",
                            simd,
                            m,
                            j,
                            r,
                            o[r],
                            want
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn interleaving_round_trips() {
        let mut g = Lcg(7);
        let w: Vec<BlockQ4K> = (0..32 * 3).map(|_| BlockQ4K::random(&mut g)).collect();
        let x = interleave_q4k(&w, 32, 3).unwrap();
        for row in 0..32 {
            for i in 0..3 {
                assert_eq!(x[(row / X16) * 3 + i].row(row % X16), w[row * 3 + i]);
            }
        }
        assert!(interleave_q4k(&w, 24, 4).is_none());
    }

    /// The byte readers give what reading the blocks and then interleaving gives.
    #[test]
    fn interleaving_from_bytes_is_interleaving_the_blocks() {
        let mut g = Lcg(11);
        let bytes: Vec<u8> = (0..32 * 2 * BlockQ4K::BYTES).map(|_| g.byte()).collect();
        let blocks = crate::quant::read_blocks::<BlockQ4K>(&bytes);
        // Random bytes make NaN scales, which `==` never equals: compare the printed forms.
        assert_eq!(
            format!("{:?}", interleave_q4k_bytes(&bytes, 32, 2)),
            format!("{:?}", interleave_q4k(&blocks, 32, 2))
        );
        assert!(interleave_q4k_bytes(&bytes[1..], 32, 2).is_none());
        let bytes: Vec<u8> = (0..20 * 3 * BlockQ4_0::BYTES).map(|_| g.byte()).collect();
        let blocks = crate::quant::read_blocks::<BlockQ4_0>(&bytes);
        assert_eq!(
            format!("{:?}", interleave_q4_0_bytes(&bytes, 20, 3)),
            format!("{:?}", interleave_q4_0(&blocks, 20, 3))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Every level (the AVX-512 VNNI build where the CPU has it, the portable loop
        /// otherwise) gives the scalar twins' bits, in both orders, for 1..=4 rows.
        #[test]
        fn every_level_is_the_twin(
            seed in any::<u64>(),
            kb in 1usize..5,
            mag in prop_oneof![Just(1e-3f32), Just(1f32), Just(3e3f32)],
        ) {
            let mut g = Lcg(seed);
            let w: Vec<BlockQ4K> = (0..X16 * kb).map(|_| BlockQ4K::random(&mut g)).collect();
            let x = interleave_q4k(&w, X16, kb).unwrap();
            let acts = k_rows(&mut g, kb, mag);
            let rows: Vec<&[ActBlockK]> = acts.chunks_exact(kb).collect();
            for grouped in [false, true] {
                every_level_gives(
                    &rows,
                    |k, rows, out| dots_q4k_x16(k, &x, kb, rows, grouped, out),
                    |j, a| {
                        let wr = &w[j * kb..(j + 1) * kb];
                        if grouped { dot_q4k_grouped(wr, a) } else { dot_q4k(wr, a) }
                    },
                )?;
            }
        }
    }

    #[test]
    fn q4_0_interleaving_round_trips_and_pads() {
        let mut g = Lcg(9);
        let w: Vec<BlockQ4_0> = (0..20 * 3).map(|_| BlockQ4_0::random(&mut g)).collect();
        let x = interleave_q4_0(&w, 20, 3).unwrap();
        assert_eq!(x.len(), 2 * 3);
        for row in 0..20 {
            for i in 0..3 {
                assert_eq!(x[(row / X16) * 3 + i].row(row % X16), w[row * 3 + i]);
            }
        }
        assert_eq!(x[3 + 1].row(15), BlockQ4_0 { d: 0, qs: [0; 16] });
        assert!(interleave_q4_0(&w, 21, 3).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// `Q4_0`: every level gives the bits of the scalar twin in llama.cpp's repacked
        /// order, for 1..=4 rows.
        #[test]
        fn q4_0_every_level_is_the_twin(
            seed in any::<u64>(),
            kb in 1usize..6,
            mag in prop_oneof![Just(1e-3f32), Just(1f32), Just(3e3f32)],
        ) {
            let mut g = Lcg(seed);
            let w: Vec<BlockQ4_0> = (0..X16 * kb).map(|_| BlockQ4_0::random(&mut g)).collect();
            let x = interleave_q4_0(&w, X16, kb).unwrap();
            let mut acts = vec![ActBlock::default(); 4 * kb];
            for a in acts.chunks_exact_mut(kb) {
                let xs: Vec<f32> = (0..kb * QK).map(|_| g.unit() * mag).collect();
                quantize_row(&xs, a);
            }
            let rows: Vec<&[ActBlock]> = acts.chunks_exact(kb).collect();
            every_level_gives(
                &rows,
                |k, rows, out| dots_q4_0_x16(k, &x, kb, rows, out),
                |j, a| dot_q4_0_blocks(&w[j * kb..(j + 1) * kb], a),
            )?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// `Q5_K` (tiled order): every level gives the scalar twin's bits, for 1..=4 rows,
        /// and the interleaved group gives back its rows.
        #[test]
        fn q5k_every_level_is_the_twin(
            seed in any::<u64>(),
            kb in 1usize..4,
            mag in prop_oneof![Just(1e-3f32), Just(1f32), Just(3e3f32)],
        ) {
            let mut g = Lcg(seed);
            let w: Vec<BlockQ5K> = (0..X16 * kb).map(|_| BlockQ5K::random(&mut g)).collect();
            let groups: Vec<BlockQ5Kx16> = (0..kb)
                .map(|i| BlockQ5Kx16::interleave(std::array::from_fn(|j| &w[j * kb + i])))
                .collect();
            for (i, x) in groups.iter().enumerate() {
                for j in 0..X16 {
                    prop_assert_eq!(x.row(j), w[j * kb + i]);
                }
                // `fill` on every level overwrites every byte with the same group.
                for simd in Simd::available() {
                    let mut buf = BlockQ5Kx16 {
                        q: [[0xA5; 64]; 64],
                        scales: [[0x5A; X16]; 8],
                        mins: [[0x5A; X16]; 8],
                        d: [7.0; X16],
                        dmin: [7.0; X16],
                    };
                    buf.fill(Kernels::new(simd).unwrap(), std::array::from_fn(|j| &w[j * kb + i]));
                    prop_assert_eq!(&buf, x, "{:?}", simd);
                }
            }
            let acts = k_rows(&mut g, kb, mag);
            let rows: Vec<&[ActBlockK]> = acts.chunks_exact(kb).collect();
            every_level_gives(
                &rows,
                |k, rows, out| dots_q5k_x16(k, &groups, kb, rows, out),
                |j, a| dot_q5k_tiled(&w[j * kb..(j + 1) * kb], a),
            )?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// `Q6_K` (tiled order): every level gives the scalar twin's bits, for 1..=4 rows.
        #[test]
        fn q6k_every_level_is_the_twin(
            seed in any::<u64>(),
            kb in 1usize..4,
            mag in prop_oneof![Just(1e-3f32), Just(1f32), Just(3e3f32)],
        ) {
            let mut g = Lcg(seed);
            let w: Vec<BlockQ6K> = (0..X16 * kb).map(|_| BlockQ6K::random(&mut g)).collect();
            let groups: Vec<BlockQ6Kx16> = (0..kb)
                .map(|i| BlockQ6Kx16::interleave(std::array::from_fn(|j| &w[j * kb + i])))
                .collect();
            for (i, x) in groups.iter().enumerate() {
                for j in 0..X16 {
                    let want = &w[j * kb + i];
                    for v in 0..QK_K {
                        prop_assert_eq!(x.quant(j, v), q6_chunk(want, v / 32)[v % 32] as i32);
                    }
                }
                for simd in Simd::available() {
                    let mut buf = BlockQ6Kx16 {
                        q: [[0xA5; 64]; 64],
                        scales: [[0x5A; X16]; 16],
                        d: [7.0; X16],
                    };
                    buf.fill(Kernels::new(simd).unwrap(), std::array::from_fn(|j| &w[j * kb + i]));
                    prop_assert_eq!(&buf, x, "{:?}", simd);
                }
            }
            let acts = k_rows(&mut g, kb, mag);
            let rows: Vec<&[ActBlockK]> = acts.chunks_exact(kb).collect();
            every_level_gives(
                &rows,
                |k, rows, out| dots_q6k_x16(k, &groups, kb, rows, out),
                |j, a| dot_q6k_tiled(&w[j * kb..(j + 1) * kb], a),
            )?;
        }
    }

    #[test]
    #[should_panic(expected = "dots_*_x16")]
    fn bad_shapes_panic() {
        let w = interleave_q4k(&[BlockQ4K::random(&mut Lcg(1)); X16], X16, 1).unwrap();
        let a = [ActBlockK::default(); 1];
        let mut out = [[0f32; MAX_TILE]; X16];
        dots_q4k_x16(Kernels::chosen(), &w, 2, &[&a[..]], false, &mut out);
    }
}
