//! GGML's quantized weight formats and their dot products with 8-bit activations.
//!
//! candle 0.11's CPU quantized matmul computes `Q4_1` and `Q5_0` dot products with scalar
//! code, so these kernels run those formats, `Q4_0`, `Q5_1`, `Q8_0` and `Q2_K`..`Q6_K` with x86
//! SIMD chosen at run time ([`Kernels`]: AVX2, or AVX-512 with VNNI byte products and two activation rows per
//! 512-bit register for batches and prompts), each with a portable scalar twin
//! ([`scalar`], [`kquant`]) that returns the same bits.
//!
//! Activations are quantized to 8 bits per 32-value block exactly as llama.cpp's x86 code
//! does (`127 / amax`, half to even, scales rounded through f16: candle rounds half away from
//! zero), so the integer products are llama.cpp's; the f32 accumulation follows llama.cpp's
//! x86 kernels (eight lanes, one FMA per block, the same horizontal sum). A kernel multiplies
//! each weight row with a tile of activation rows (prefill, batched decode: each weight block
//! unpacked once per tile, and two or four weight rows per call share each activation block's
//! loads): tiles of eight with the AVX-512 kernels, which hold two activation rows per 512-bit
//! register (the rows paired once per matmul, [`Activation::pair_rows`]), four otherwise. A
//! call's weight rows are walked inside the kernel's instruction set and the weights
//! prefetched 1 KiB ahead (rows are a few hundred bytes, too short for the hardware
//! prefetchers: SmolLM2 decode went from 91 to ~125 tok/s). Every output is one accumulation
//! whatever is computed beside it: a row's result does not depend on how many rows are
//! multiplied with it, which keeps batched decoding batch-invariant. The one exception is
//! asked for: in the prompt order (`prompt` of [`dots`], a sequence's prompt), K-quant rows
//! are summed in the orders llama.cpp uses for prompts (`Q4_K`: its 4-row repacked gemm; the
//! others: its tiled matmul for eight rows or more).
//!
//! ```
//! use fluent_ai_candle_kernels::quant::{dots, Activation, BlockQ8_0, Kernel, MAX_TILE, QK};
//! use fluent_ai_candle_kernels::simd::Kernels;
//!
//! // Two weight rows of one block each: all ones, and all twos (d = 1.0 as f16 bits).
//! let one = BlockQ8_0 { d: 0x3C00, qs: [1; QK] };
//! let two = BlockQ8_0 { d: 0x3C00, qs: [2; QK] };
//! let w = [one, two];
//! // One activation row of 32 values, quantized.
//! let x = [0.5f32; QK];
//! let mut a = [Default::default(); 1];
//! BlockQ8_0::quantize(&x, &mut a);
//! let kernels = Kernels::chosen();
//! let mut pairs = Vec::new();
//! <BlockQ8_0 as Kernel>::Act::pair_rows(kernels, &a, 1, 1, &mut pairs);
//! let mut out = [[0f32; MAX_TILE]; 2];
//! dots(kernels, &w, 1, (&[&a[..]], &pairs), false, &mut out);
//! assert!((out[0][0] - 16.0).abs() < 0.1 && (out[1][0] - 32.0).abs() < 0.2);
//! ```

pub mod blocks;
pub mod interleaved;
pub mod kquant;
pub mod scalar;

pub use blocks::{
    read_blocks, ActBlock, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, WeightBlock, QK,
};
pub use interleaved::{
    dots_q4_0_x16, dots_q4k_x16, dots_q5k_x16, dots_q6k_x16, interleave_q4_0,
    interleave_q4_0_bytes, interleave_q4k, interleave_q4k_bytes, BlockQ4Kx16, BlockQ4_0x16,
    BlockQ5Kx16, BlockQ6Kx16, X16,
};
pub use kquant::{ActBlockK, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, QK_K};

use crate::simd::{Kernels, Simd};

/// Block `i` of two consecutive activation rows side by side, as the 512-bit kernels load
/// them ([`crate::arch::x86_64::avx512::Pair`]).
#[cfg(target_arch = "x86_64")]
pub use crate::arch::x86_64::avx512::Pair;
/// Paired activation blocks exist only for the x86 512-bit kernels.
#[cfg(not(target_arch = "x86_64"))]
pub type Pair = ();

/// Rows multiplied together by one kernel call of the K-quant formats and of the 256-bit
/// kernels (and the rows llama.cpp's repacked `Q4_K` gemm takes at a time).
pub const ROW_TILE: usize = 4;
/// Rows multiplied together by one call of the 512-bit kernels of the 32-value formats (four
/// pairs of rows: each weight block unpacked once for eight rows); the most any kernel takes.
pub const MAX_TILE: usize = 8;

/// Hints the CPU to bring `data` into its level-2 cache ahead of use (`prefetcht1` on
/// x86-64, nothing elsewhere): no effect on any result. The models prefetch the next group
/// of weight rows a prompt's interleaved kernels will copy (see
/// [`BlockQ5Kx16::fill`](interleaved::BlockQ5Kx16::fill)), whose short rows the hardware
/// prefetchers do not follow.
pub fn prefetch_l2<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    crate::arch::x86_64::prefetch_l2(data);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Quantizes one activation row into 32-value blocks ([`blocks::quantize_row`]), with
/// AVX-512 where the chosen kernels have it (the same bits).
pub fn quantize_acts(xs: &[f32], out: &mut [ActBlock]) {
    #[cfg(target_arch = "x86_64")]
    if crate::arch::x86_64::avx512::quantize_row(Kernels::chosen(), xs, out) {
        return;
    }
    blocks::quantize_row(xs, out)
}

/// Quantized activation blocks (the 32-value [`ActBlock`] or the K-quants' [`ActBlockK`]).
pub trait Activation: Copy + Default + Send + Sync + 'static {
    /// Fills `out` with the `m` rows (`kb` blocks each) of `acts` paired as the `kernels`
    /// want them (two consecutive rows side by side, for the 512-bit kernels), or leaves it
    /// empty where they take rows as they are.
    fn pair_rows(kernels: Kernels, acts: &[Self], m: usize, kb: usize, out: &mut Vec<Pair>) {
        let _ = (kernels, acts, m, kb);
        out.clear();
    }
}

impl Activation for ActBlock {
    fn pair_rows(kernels: Kernels, acts: &[Self], m: usize, kb: usize, out: &mut Vec<Pair>) {
        out.clear();
        #[cfg(target_arch = "x86_64")]
        if kernels.simd() == Simd::Avx512Vnni && m > 1 {
            crate::arch::x86_64::avx512::pair_up(acts, m, kb, out);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (kernels, acts, m, kb);
    }
}

impl Activation for ActBlockK {}

/// Dot products of every weight row of `w` (`out.len()` rows of `kb` blocks) with the
/// activation rows `rows` (1..=[`Kernel::tile`]), into `out[c][r]`, in the format's prompt
/// order when `prompt` (see [`Kernel::prompt_order`]), with the `kernels` given. `pairs`: the
/// rows paired by [`Activation::pair_rows`] for the same `kernels` (empty where they want
/// none). Every output is the same whatever else is computed beside it (batch invariance),
/// given the order, and the same bits under every [`Kernels`].
///
/// # Panics
/// If the shapes disagree: no rows or more than [`MAX_TILE`], `w` not `out.len() * kb` blocks,
/// an activation row shorter than `kb`, or `pairs` neither empty nor the pairs of `rows`.
pub fn dots<B: Kernel>(
    kernels: Kernels,
    w: &[B],
    kb: usize,
    (rows, pairs): (&[&[B::Act]], &[Pair]),
    prompt: bool,
    out: &mut [[f32; MAX_TILE]],
) {
    match kernels.simd() {
        // The SIMD dispatch checks the shapes itself.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 | Simd::Avx512Vnni => {
            B::simd(kernels, w, kb, (rows, pairs), prompt, out)
        }
        _ => {
            check_shapes(w.len(), kb, rows, pairs.len(), out.len());
            let twin = if prompt { B::prompt_scalar } else { B::scalar };
            for (o, w) in out.iter_mut().zip(w.chunks_exact(kb.max(1))) {
                for (o, r) in o.iter_mut().zip(rows) {
                    *o = twin(w, r);
                }
            }
        }
    }
}

/// The shapes [`dots`] takes (see there), asserted: every SIMD build relies on them.
#[inline]
pub(crate) fn check_shapes<A>(w: usize, kb: usize, rows: &[&[A]], pairs: usize, out: usize) {
    assert!(
        !rows.is_empty()
            && rows.len() <= MAX_TILE
            && w == out * kb
            && rows.iter().all(|r| r.len() >= kb)
            && (pairs == 0 || pairs == rows.len() / 2 * kb),
        "quant::dots: {out} weight rows of {kb} blocks in {w}, {} activation rows, {pairs} pairs",
        rows.len()
    );
}

/// A weight format with kernels.
pub trait Kernel: WeightBlock {
    /// The activation blocks it multiplies with.
    type Act: Activation;
    /// Values per block (of weights and of activations).
    const VALUES: usize;
    /// Quantizes one activation row of `VALUES * out.len()` values.
    fn quantize(xs: &[f32], out: &mut [Self::Act]);
    /// Appends the block's values to `out`.
    fn dequantize(b: &Self, out: &mut Vec<f32>);
    /// The scalar twin: one weight row · one activation row.
    fn scalar(w: &[Self], a: &[Self::Act]) -> f32;
    /// Whether, in a prompt of `m` rows, a call with `rows` of them is summed in the order
    /// llama.cpp uses for prompts where that differs from its one-row kernel: `Q4_K`'s
    /// repacked 4-row gemm (full tiles of four rows), the tiled matmul of `Q2_K`, `Q3_K`,
    /// `Q5_K` and `Q6_K` (prompts of eight rows or more). Never for the 32-value formats.
    fn prompt_order(m: usize, rows: usize) -> bool {
        let _ = (m, rows);
        false
    }
    /// The scalar twin in the prompt order (see [`Kernel::prompt_order`]).
    fn prompt_scalar(w: &[Self], a: &[Self::Act]) -> f32 {
        Self::scalar(w, a)
    }
    /// Activation rows per kernel call with `kernels` (tiles start at multiples of it).
    fn tile(kernels: Kernels) -> usize {
        let _ = kernels;
        ROW_TILE
    }
    /// The SIMD row loops for `kernels` (an x86 level), in the prompt order when `prompt`:
    /// [`dots`] under an x86 level (same arguments, same panics).
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    fn simd(
        kernels: Kernels,
        w: &[Self],
        kb: usize,
        rows: (&[&[Self::Act]], &[Pair]),
        prompt: bool,
        out: &mut [[f32; MAX_TILE]],
    );
}

/// Implements [`Kernel`] for a weight format: its activation blocks (`$act`, `$values` values
/// per block, quantized by `$quantize`), scalar twin, dequantization, the tile of the 512-bit
/// builds, the SIMD row loops (`$simd`, in [`crate::arch::x86_64`]) and optionally
/// (`prompt:`) when its prompt order applies and that order's scalar twin.
macro_rules! kernel {
    (
        $block:ty,
        $act:ty,
        $values:expr,
        $quantize:path,
        $scalar:path,
        $dequantize:path,
        simd: $simd:ident,
        vnni_tile: $vnni_tile:tt
        $(, prompt: $when:expr, $gscalar:path)? $(,)?
    ) => {
        impl Kernel for $block {
            type Act = $act;
            const VALUES: usize = $values;
            fn quantize(xs: &[f32], out: &mut [$act]) {
                $quantize(xs, out)
            }
            fn dequantize(b: &Self, out: &mut Vec<f32>) {
                $dequantize(b, out)
            }
            fn scalar(w: &[Self], a: &[$act]) -> f32 {
                $scalar(w, a)
            }
            fn tile(kernels: Kernels) -> usize {
                if kernels.simd() == Simd::Avx512Vnni {
                    $vnni_tile
                } else {
                    ROW_TILE
                }
            }
            $(
            fn prompt_order(m: usize, rows: usize) -> bool {
                let when: fn(usize, usize) -> bool = $when;
                when(m, rows)
            }
            fn prompt_scalar(w: &[Self], a: &[$act]) -> f32 {
                $gscalar(w, a)
            }
            )?
            #[cfg(target_arch = "x86_64")]
            fn simd(
                kernels: Kernels,
                w: &[Self],
                kb: usize,
                rows: (&[&[$act]], &[Pair]),
                prompt: bool,
                out: &mut [[f32; MAX_TILE]],
            ) {
                crate::arch::x86_64::$simd(kernels, w, kb, rows, prompt, out)
            }
        }
    };
}

kernel!(
    BlockQ4_0,
    ActBlock,
    QK,
    quantize_acts,
    scalar::dot_q4_0,
    scalar::dequantize_q4_0,
    simd: dots_q4_0,
    vnni_tile: 8,
);
kernel!(
    BlockQ4_1,
    ActBlock,
    QK,
    quantize_acts,
    scalar::dot_q4_1,
    scalar::dequantize_q4_1,
    simd: dots_q4_1,
    vnni_tile: 8,
);
kernel!(
    BlockQ5_0,
    ActBlock,
    QK,
    quantize_acts,
    scalar::dot_q5_0,
    scalar::dequantize_q5_0,
    simd: dots_q5_0,
    vnni_tile: 8,
);
kernel!(
    BlockQ5_1,
    ActBlock,
    QK,
    quantize_acts,
    scalar::dot_q5_1,
    scalar::dequantize_q5_1,
    simd: dots_q5_1,
    vnni_tile: 8,
);
kernel!(
    BlockQ8_0,
    ActBlock,
    QK,
    quantize_acts,
    scalar::dot_q8_0,
    scalar::dequantize_q8_0,
    simd: dots_q8_0,
    vnni_tile: 8,
);
kernel!(
    BlockQ4K,
    ActBlockK,
    QK_K,
    kquant::quantize_row_q8k,
    kquant::dot_q4k,
    kquant::dequantize_q4k,
    simd: dots_q4k,
    vnni_tile: 4,
    // llama.cpp's repacked gemm takes a prompt's rows four at a time.
    prompt: |_, rows| rows == ROW_TILE,
    kquant::dot_q4k_grouped,
);
kernel!(
    BlockQ6K,
    ActBlockK,
    QK_K,
    kquant::quantize_row_q8k,
    kquant::dot_q6k,
    kquant::dequantize_q6k,
    simd: dots_q6k,
    vnni_tile: 4,
    // llama.cpp's tiled matmul takes prompts of eight rows or more.
    prompt: |m, _| m >= 8,
    kquant::dot_q6k_tiled,
);
kernel!(
    BlockQ5K,
    ActBlockK,
    QK_K,
    kquant::quantize_row_q8k,
    kquant::dot_q5k,
    kquant::dequantize_q5k,
    simd: dots_q5k,
    vnni_tile: 4,
    // llama.cpp's tiled matmul takes prompts of eight rows or more.
    prompt: |m, _| m >= 8,
    kquant::dot_q5k_tiled,
);
kernel!(
    BlockQ3K,
    ActBlockK,
    QK_K,
    kquant::quantize_row_q8k,
    kquant::dot_q3k,
    kquant::dequantize_q3k,
    simd: dots_q3k,
    vnni_tile: 4,
    // llama.cpp's tiled matmul takes prompts of eight rows or more.
    prompt: |m, _| m >= 8,
    kquant::dot_q3k_tiled,
);
kernel!(
    BlockQ2K,
    ActBlockK,
    QK_K,
    kquant::quantize_row_q8k,
    kquant::dot_q2k,
    kquant::dequantize_q2k,
    simd: dots_q2k,
    vnni_tile: 4,
    // llama.cpp's tiled matmul takes prompts of eight rows or more.
    prompt: |m, _| m >= 8,
    kquant::dot_q2k_tiled,
);

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use proptest::prelude::*;

    /// A linear congruential generator seeded with `seed` (test data that proptest's seed
    /// reproduces).
    pub(super) struct Lcg(pub(super) u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        /// A value in [-1, 1).
        pub(super) fn unit(&mut self) -> f32 {
            (self.next() as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        }
        pub(super) fn byte(&mut self) -> u8 {
            self.next() as u8
        }
        /// An f16 scale of about `mag`, as bits.
        fn scale(&mut self, mag: f32) -> u16 {
            f16::from_f32(self.unit() * mag).to_bits()
        }
    }

    /// Random blocks of a format, every bit pattern of the quants allowed, scales finite.
    pub(super) trait Random: Kernel {
        fn random(g: &mut Lcg) -> Self;
    }

    impl Random for BlockQ4_0 {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: g.scale(0.1),
                qs: std::array::from_fn(|_| g.byte()),
            }
        }
    }

    impl Random for BlockQ5_1 {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: g.scale(0.1),
                m: g.scale(0.5),
                qh: g.next() as u32 ^ ((g.next() as u32) << 16),
                qs: std::array::from_fn(|_| g.byte()),
            }
        }
    }

    impl Random for BlockQ4_1 {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: g.scale(0.1),
                m: g.scale(0.5),
                qs: std::array::from_fn(|_| g.byte()),
            }
        }
    }

    impl Random for BlockQ5_0 {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: g.scale(0.1),
                pad: 0,
                qh: g.next() as u32 ^ ((g.next() as u32) << 16),
                qs: std::array::from_fn(|_| g.byte()),
            }
        }
    }

    impl Random for BlockQ8_0 {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: g.scale(0.01),
                // GGML's quants are in -127..=127.
                qs: std::array::from_fn(|_| ((g.next() % 255) as i32 - 127) as i8),
            }
        }
    }

    impl Random for BlockQ4K {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: f16::from_bits(g.scale(0.01)).to_f32(),
                dmin: f16::from_bits(g.scale(0.01)).to_f32(),
                scales: std::array::from_fn(|_| g.byte() & 63),
                mins: std::array::from_fn(|_| g.byte() & 63),
                qs: std::array::from_fn(|_| g.byte()),
            }
        }
    }

    impl Random for BlockQ6K {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: f16::from_bits(g.scale(0.001)).to_f32(),
                scales: std::array::from_fn(|_| g.byte() as i8),
                ql: std::array::from_fn(|_| g.byte()),
                qh: std::array::from_fn(|_| g.byte()),
            }
        }
    }

    impl Random for BlockQ5K {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: f16::from_bits(g.scale(0.01)).to_f32(),
                dmin: f16::from_bits(g.scale(0.01)).to_f32(),
                scales: std::array::from_fn(|_| g.byte() & 63),
                mins: std::array::from_fn(|_| g.byte() & 63),
                qh: std::array::from_fn(|_| g.byte()),
                qs: std::array::from_fn(|_| g.byte()),
            }
        }
    }

    impl Random for BlockQ3K {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: f16::from_bits(g.scale(0.01)).to_f32(),
                scales: std::array::from_fn(|_| (g.byte() & 63) as i8 - 32),
                hmask: std::array::from_fn(|_| g.byte()),
                qs: std::array::from_fn(|_| g.byte()),
            }
        }
    }

    impl Random for BlockQ2K {
        fn random(g: &mut Lcg) -> Self {
            Self {
                d: f16::from_bits(g.scale(0.01)).to_f32(),
                dmin: f16::from_bits(g.scale(0.01)).to_f32(),
                scales: std::array::from_fn(|_| g.byte() & 15),
                mins: std::array::from_fn(|_| g.byte() & 15),
                qs: std::array::from_fn(|_| g.byte()),
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every SIMD level this CPU has against the scalar twin, bit for bit: `n` weight rows of
    /// `kb` blocks times every tile size the level takes (1..=[`Kernel::tile`] rows, paired
    /// as the level wants), in both orders.
    fn every_level_is_the_twin<B: Random>(
        seed: u64,
        n: usize,
        kb: usize,
        mag: f32,
    ) -> Result<(), String> {
        let mut g = Lcg(seed);
        let w: Vec<B> = (0..n * kb).map(|_| B::random(&mut g)).collect();
        let xs: Vec<f32> = (0..MAX_TILE * kb * B::VALUES)
            .map(|_| g.unit() * mag)
            .collect();
        let mut acts = vec![B::Act::default(); MAX_TILE * kb];
        for (x, a) in xs
            .chunks_exact(kb * B::VALUES)
            .zip(acts.chunks_exact_mut(kb))
        {
            B::quantize(x, a);
        }
        let rows: Vec<&[B::Act]> = acts.chunks_exact(kb).collect();
        for prompt in [false, true] {
            let twin = if prompt { B::prompt_scalar } else { B::scalar };
            let want: Vec<Vec<u32>> = w
                .chunks_exact(kb)
                .map(|wr| rows.iter().map(|a| twin(wr, a).to_bits()).collect())
                .collect();
            for simd in Simd::available() {
                let kernels = Kernels::new(simd).unwrap();
                for m in 1..=B::tile(kernels) {
                    let mut pairs = Vec::new();
                    B::Act::pair_rows(kernels, &acts[..m * kb], m, kb, &mut pairs);
                    let mut out = vec![[0f32; MAX_TILE]; n];
                    dots(kernels, &w, kb, (&rows[..m], &pairs), prompt, &mut out);
                    for (c, o) in out.iter().enumerate() {
                        if bits(&o[..m]) != want[c][..m] {
                            return Err(format!(
                                "{simd:?}, {m} rows, prompt order {prompt}, weight row {c}: {:?} vs twin {:?}",
                                &o[..m],
                                want[c][..m].iter().map(|b| f32::from_bits(*b)).collect::<Vec<_>>()
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The 32-value formats: every build this CPU has equals the scalar twin.
        #[test]
        fn q32_builds_are_the_scalar_twin(
            f in 0usize..5,
            seed in any::<u64>(),
            n in 1usize..7,
            kb in 1usize..5,
            mag in prop_oneof![Just(1e-3f32), Just(1f32), Just(3e3f32)],
        ) {
            let r = match f {
                0 => every_level_is_the_twin::<BlockQ4_1>(seed, n, kb, mag),
                1 => every_level_is_the_twin::<BlockQ5_0>(seed, n, kb, mag),
                2 => every_level_is_the_twin::<BlockQ8_0>(seed, n, kb, mag),
                3 => every_level_is_the_twin::<BlockQ4_0>(seed, n, kb, mag),
                _ => every_level_is_the_twin::<BlockQ5_1>(seed, n, kb, mag),
            };
            prop_assert!(r.is_ok(), "format {f}: {:?}", r);
        }

        /// The K-quant formats: every build this CPU has equals the scalar twin, in the
        /// one-row order and in the prompt order.
        #[test]
        fn k_builds_are_the_scalar_twin(
            f in 0usize..5,
            seed in any::<u64>(),
            // Up to two groups of four weight rows (the 512-bit one-row loops) and a rest.
            n in 1usize..11,
            kb in 1usize..4,
            mag in prop_oneof![Just(1e-3f32), Just(1f32), Just(3e3f32)],
        ) {
            let r = match f {
                0 => every_level_is_the_twin::<BlockQ4K>(seed, n, kb, mag),
                1 => every_level_is_the_twin::<BlockQ6K>(seed, n, kb, mag),
                2 => every_level_is_the_twin::<BlockQ5K>(seed, n, kb, mag),
                3 => every_level_is_the_twin::<BlockQ3K>(seed, n, kb, mag),
                _ => every_level_is_the_twin::<BlockQ2K>(seed, n, kb, mag),
            };
            prop_assert!(r.is_ok(), "format {f}: {:?}", r);
        }

        /// The AVX-512 activation quantizer returns the scalar one's blocks, bit for bit,
        /// on rows with ties, zeros, tiny and huge magnitudes.
        #[test]
        fn simd_quantizer_is_the_scalar_one(
            seed in any::<u64>(),
            kb in 1usize..6,
            scale in prop_oneof![Just(0f32), Just(1e-40f32), Just(1e-30f32), Just(1f32), Just(3e4f32)],
            ties in any::<bool>(),
        ) {
            let mut g = Lcg(seed);
            let mut xs: Vec<f32> = (0..kb * QK).map(|_| g.unit() * scale).collect();
            if ties {
                // Multiples of amax / 127 / 2: exact halves after scaling.
                let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (i, x) in xs.iter_mut().enumerate().skip(1).step_by(3) {
                    *x = amax * ((i % 255) as f32 - 127.0) / 254.0;
                }
            }
            let mut want = vec![ActBlock::default(); kb];
            blocks::quantize_row(&xs, &mut want);
            let mut got = vec![ActBlock::default(); kb];
            quantize_acts(&xs, &mut got);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn bad_shapes_panic_rather_than_read_out_of_bounds() {
        let w = [BlockQ8_0 { d: 0, qs: [0; QK] }; 2];
        let a = [ActBlock::default(); 1];
        for k in Simd::available() {
            let k = Kernels::new(k).unwrap();
            // Two blocks per weight row, but the activation row has one.
            let r = std::panic::catch_unwind(|| {
                let mut out = [[0f32; MAX_TILE]; 1];
                dots(k, &w, 2, (&[&a[..]], &[]), false, &mut out);
            });
            assert!(r.is_err(), "{k:?}");
        }
    }
}
