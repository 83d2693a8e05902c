//! Quantized linear layers with our own CPU kernels.
//!
//! candle 0.11's CPU quantized matmul computes `Q4_1` and `Q5_0` dot products with scalar
//! code (SmolLM2's and most of Gemma 3 270M's layers), so [`QLinear`] runs those formats,
//! the other 32-value formats (`Q4_0`, `Q5_1`, `Q8_0`: both models' output layer) and the
//! K-quants `Q2_K`..`Q6_K` with the kernels of
//! [`fluent_ai_candle_kernels::quant`] (x86 SIMD chosen at run time by
//! [`fluent_ai_candle_kernels::simd`]: AVX2, or AVX-512 with VNNI; `FLUENT_AI_CANDLE_SIMD=scalar`
//! forces the scalar twins, `=avx2` leaves AVX-512 out), on candle's own CPU thread pool.
//! Every other format, and every non-CPU device, goes through candle's `QMatMul` unchanged.
//! `FLUENT_AI_CANDLE_QMATMUL=candle` sends every format to candle (for side-by-side
//! benchmarks).
//!
//! This module is the candle-facing half: it reads a `QTensor`'s blocks once, quantizes a
//! matmul's activation rows (over the pool for prefill sizes) into per-thread buffers, and
//! splits the output over the pool in work items of [`COL_GROUP`] weight rows by one tile of
//! activation rows, each item one [`dots`] call. `Q4_0` (rows a multiple of 8, every level)
//! and `Q4_K` (rows a multiple of 16, AVX-512 VNNI) are stored interleaved sixteen rows at a
//! time instead (the kernels crate's `quant::interleaved`), their items one 16-row group by
//! up to four activation rows; `Q4_0` is then summed in llama.cpp's repacked order, as
//! llama.cpp sums such a matrix. The kernels' arithmetic is llama.cpp's (see
//! the kernels crate): together with the attention kernel and `ggml_math`, a decoder's logits
//! are llama.cpp's to the bit. Every output is one accumulation whatever is computed beside
//! it, which keeps batched decoding batch-invariant; the one exception is asked for: under
//! [`as_prompt`] (a sequence's prompt), K-quant rows are summed in the orders llama.cpp uses
//! for prompts (`Q4_K`: its 4-row repacked gemm; the others: its tiled matmul for eight rows
//! or more).

#[cfg(test)]
mod kquant;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Tensor};

use fluent_ai_candle_kernels::buf::WeightBuf;
use fluent_ai_candle_kernels::quant::{
    dots, dots_q4_0_x16, dots_q4k_x16, dots_q5k_x16, dots_q6k_x16, interleave_q4_0_bytes,
    interleave_q4k_bytes, prefetch_l2, read_blocks, ActBlock, ActBlockK, Activation, BlockQ2K,
    BlockQ3K, BlockQ4K, BlockQ4Kx16, BlockQ4_0, BlockQ4_0x16, BlockQ4_1, BlockQ5K, BlockQ5Kx16,
    BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ6Kx16, BlockQ8_0, Kernel, Pair, MAX_TILE, QK, QK_K, X16,
};
pub use fluent_ai_candle_kernels::simd::Kernels;
use fluent_ai_candle_kernels::simd::Simd;

/// The kernels [`QLinear`] uses on this machine: [`Kernels::chosen`] (once per process, the
/// best the CPU has, capped by `FLUENT_AI_CANDLE_SIMD`).
pub fn kernels() -> Kernels {
    Kernels::chosen()
}

fn candle_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("FLUENT_AI_CANDLE_QMATMUL").is_ok_and(|v| v == "candle"))
}

/// Weight rows (one per output feature) in a format with our kernels.
#[derive(Debug, Clone)]
enum Weights {
    Q4_0(WeightBuf<BlockQ4_0>),
    Q4_1(WeightBuf<BlockQ4_1>),
    Q5_0(WeightBuf<BlockQ5_0>),
    Q5_1(WeightBuf<BlockQ5_1>),
    Q8_0(WeightBuf<BlockQ8_0>),
    Q2K(WeightBuf<BlockQ2K>),
    Q3K(WeightBuf<BlockQ3K>),
    Q4K(WeightBuf<BlockQ4K>),
    /// `Q4_K` rows interleaved sixteen at a time (see [`BlockQ4Kx16`]): the layout of the
    /// AVX-512 VNNI kernels, chosen at load under [`Simd::Avx512Vnni`] when the row count
    /// is a multiple of 16.
    Q4Kx16(WeightBuf<BlockQ4Kx16>),
    /// `Q4_0` rows interleaved sixteen at a time (see [`BlockQ4_0x16`]), the last group
    /// padded: llama.cpp repacks every `Q4_0` matrix whose row count is a multiple of 8 and
    /// sums it in the repacked kernels' order, which these kernels compute on every level.
    Q4_0x16(WeightBuf<BlockQ4_0x16>),
    Q5K(WeightBuf<BlockQ5K>),
    Q6K(WeightBuf<BlockQ6K>),
}

/// Runs `$body` with `$w` bound to the blocks of whichever row-major format `$weights`
/// holds, or `$k16` / `$z16` with `$x` bound to interleaved `Q4_K` / `Q4_0` groups.
macro_rules! with_blocks {
    ($weights:expr, $w:ident => $body:expr, $x:ident => $k16:expr, $x0:ident => $z16:expr) => {
        match $weights {
            Weights::Q4Kx16($x) => $k16,
            Weights::Q4_0x16($x0) => $z16,
            Weights::Q4_0($w) => $body,
            Weights::Q4_1($w) => $body,
            Weights::Q5_0($w) => $body,
            Weights::Q5_1($w) => $body,
            Weights::Q8_0($w) => $body,
            Weights::Q2K($w) => $body,
            Weights::Q3K($w) => $body,
            Weights::Q4K($w) => $body,
            Weights::Q5K($w) => $body,
            Weights::Q6K($w) => $body,
        }
    };
}

/// A weight matrix `[n, k]` run by our kernels.
#[derive(Debug, Clone)]
struct OurMatMul {
    weights: Weights,
    n: usize,
    k: usize,
    kernels: Kernels,
}

/// Output features per work item.
const COL_GROUP: usize = 8;

thread_local! {
    /// Set while a model runs the rows of one prompt (see [`as_prompt`]).
    static PROMPT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ACTIVATIONS: RefCell<Vec<ActBlock>> = const { RefCell::new(Vec::new()) };
    static ACTIVATIONS_K: RefCell<Vec<ActBlockK>> = const { RefCell::new(Vec::new()) };
    static OUTPUT: RefCell<Vec<AtomicU32>> = const { RefCell::new(Vec::new()) };
    static PAIRED: RefCell<Vec<Pair>> = const { RefCell::new(Vec::new()) };
    /// The `Q5_K` / `Q6_K` group this worker last interleaved for a prompt (see
    /// [`OurMatMul::matmul_prompt_x16`]).
    static Q5K_GROUP: RefCell<InterleavedGroup<BlockQ5Kx16>> =
        const { RefCell::new((None, Vec::new(), 0)) };
    static Q6K_GROUP: RefCell<InterleavedGroup<BlockQ6Kx16>> =
        const { RefCell::new((None, Vec::new(), 0)) };
}

/// A group of sixteen weight rows interleaved by a worker (its blocks), which (call, group)
/// it holds, and how many blocks of the next group it has prefetched.
type InterleavedGroup<X> = (Option<(u64, usize)>, Vec<X>, usize);

/// An interleaved kernel: a group's blocks times 1..=4 activation rows (`dots_q5k_x16`).
type GroupDots<X> = fn(Kernels, &[X], usize, &[&[ActBlockK]], &mut [[f32; MAX_TILE]]);

/// Numbers the calls of [`OurMatMul::matmul_prompt_x16`], so a worker's interleaved group
/// from an earlier call is never taken for this one's.
static PROMPT_X16_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs `f` with every matmul on this thread taking its rows as consecutive tokens of one
/// prompt: each full group of four rows is then summed in the order of llama.cpp's repacked
/// 4-row gemm where that differs from its one-row kernel (`Q4_K`), as llama.cpp does in a
/// prefill. Rows of different sequences (a batched decode step) must not be run inside, so
/// that a sequence's results do not depend on its neighbours.
pub(crate) fn as_prompt<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            PROMPT.set(self.0);
        }
    }
    let _reset = Reset(PROMPT.replace(true));
    f()
}

/// Quantized activation blocks, each kind with its own per-thread buffer (sized once, reused
/// by every call on the thread).
trait ActBuffer: Activation {
    /// Runs `f` with this thread's buffer.
    fn with_buffer<T>(f: impl FnOnce(&mut Vec<Self>) -> T) -> T;
}

impl ActBuffer for ActBlock {
    fn with_buffer<T>(f: impl FnOnce(&mut Vec<Self>) -> T) -> T {
        ACTIVATIONS.with(|b| f(&mut b.borrow_mut()))
    }
}

impl ActBuffer for ActBlockK {
    fn with_buffer<T>(f: impl FnOnce(&mut Vec<Self>) -> T) -> T {
        ACTIVATIONS_K.with(|b| f(&mut b.borrow_mut()))
    }
}

/// Rows from which quantizing the activations is split over the pool (below, the hand-off
/// costs more than it saves: with the AVX-512 quantizer a batched decode step's eight rows
/// take about a microsecond).
const PARALLEL_QUANTIZE_ROWS: usize = 32;

/// Quantizes the rows of `x` (`k` values each) into `acts` (`kb` blocks each): on the calling
/// thread for a few rows, else one contiguous share of the rows per thread of candle's pool
/// (the other threads would otherwise spin while one quantizes a prefill's activations).
fn quantize_rows<B: Kernel>(x: &[f32], k: usize, acts: &mut [B::Act], kb: usize) {
    let serial = |x: &[f32], acts: &mut [B::Act]| {
        for (row, blocks) in x.chunks_exact(k).zip(acts.chunks_exact_mut(kb)) {
            B::quantize(row, blocks);
        }
    };
    let m = acts.len() / kb.max(1);
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    if m < PARALLEL_QUANTIZE_ROWS || threads == 1 {
        serial(x, acts);
        return;
    }
    let per = m.div_ceil(threads);
    // One share per thread, each behind its own (uncontended) lock.
    type Share<'a, A> = std::sync::Mutex<(&'a [f32], &'a mut [A])>;
    let shares: Vec<Share<'_, B::Act>> = x
        .chunks(per * k)
        .zip(acts.chunks_mut(per * kb))
        .map(std::sync::Mutex::new)
        .collect();
    pool.execute(|tid| {
        if let Some(share) = shares.get(tid) {
            let mut share = share.lock().unwrap_or_else(|e| e.into_inner());
            let (x, acts) = &mut *share;
            serial(x, acts);
        }
    });
}

impl OurMatMul {
    /// `x` (`[m, k]`, row-major) times the weights transposed: `[m, n]`.
    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let interleaved = match &self.weights {
            Weights::Q5K(w) => {
                self.matmul_prompt_x16(w, x, m, &Q5K_GROUP, BlockQ5Kx16::fill, dots_q5k_x16)
            }
            Weights::Q6K(w) => {
                self.matmul_prompt_x16(w, x, m, &Q6K_GROUP, BlockQ6Kx16::fill, dots_q6k_x16)
            }
            _ => None,
        };
        if let Some(out) = interleaved {
            return out;
        }
        with_blocks!(
            &self.weights,
            w => self.matmul_rows(w, x, m),
            w => self.matmul_with::<BlockQ4K>(x, m, |(acts, _), outs| {
                let (prompt, kb) = (PROMPT.get(), self.k / QK_K);
                self.run_x16(kb, acts, outs, m, |blocks, rows, out| {
                    let grouped = prompt && BlockQ4K::prompt_order(m, rows.len());
                    dots_q4k_x16(self.kernels, &w[blocks], kb, rows, grouped, out)
                })
            }),
            w => self.matmul_with::<BlockQ4_0>(x, m, |(acts, _), outs| {
                let kb = self.k / QK;
                self.run_x16(kb, acts, outs, m, |blocks, rows, out| {
                    dots_q4_0_x16(self.kernels, &w[blocks], kb, rows, out)
                })
            })
        )
    }

    /// A prompt's rows (llama.cpp's tiled order: eight rows or more) times row-major `Q5_K`
    /// or `Q6_K` weights `w` under [`Simd::Avx512Vnni`] with a multiple of sixteen rows: each
    /// worker interleaves a group of sixteen weight rows, its quants widened to bytes
    /// ([`BlockQ5Kx16`], [`BlockQ6Kx16`]: `fill`), into a buffer of its own (`group_buf`)
    /// when it first needs it, and runs every activation tile of that group through the
    /// interleaved kernel (`dots`), which takes four activation rows per weight load with no
    /// unpacking and no horizontal sums. The copy costs about four tiles' work; a 128-token
    /// prompt has 32 tiles. The same bits as the row-major tiled kernels. Decoding keeps the
    /// row-major layout, whose one-row loop is the faster one there (`Q5_K` interleaved for
    /// both was measured: prefill 102 → 149–178 tok/s, decode 34–37 → 28.6 at the 1B shape).
    /// `None` where this does not apply.
    fn matmul_prompt_x16<B: Kernel<Act = ActBlockK>, X: Default + Clone + 'static>(
        &self,
        w: &[B],
        x: &[f32],
        m: usize,
        group_buf: &'static std::thread::LocalKey<RefCell<InterleavedGroup<X>>>,
        fill: fn(&mut X, Kernels, [&B; X16]),
        dots: GroupDots<X>,
    ) -> Option<Vec<f32>> {
        let applies = self.kernels.simd() == Simd::Avx512Vnni
            && self.n.is_multiple_of(X16)
            && PROMPT.get()
            && B::prompt_order(m, ROW_TILE_X16);
        if !applies {
            return None;
        }
        let kb = self.k / QK_K;
        let call = PROMPT_X16_CALLS.fetch_add(1, Ordering::Relaxed);
        Some(self.matmul_with::<B>(x, m, |(acts, _), outs| {
            self.run_x16(kb, acts, outs, m, |blocks, rows, out| {
                let group = blocks.start / kb.max(1);
                group_buf.with(|g| {
                    let (key, buf, ahead) = &mut *g.borrow_mut();
                    let rows0 = group * X16;
                    if *key != Some((call, group)) {
                        buf.resize(kb, X::default());
                        for (i, x) in buf.iter_mut().enumerate() {
                            fill(
                                x,
                                self.kernels,
                                std::array::from_fn(|j| &w[(rows0 + j) * kb + i]),
                            );
                        }
                        *key = Some((call, group));
                        *ahead = 0;
                    }
                    // The group this worker most likely copies next, one row's worth of
                    // blocks per tile (a sixteenth of it). Asked for all at once after the
                    // copy, the 1B `Q5_K_M` prefill was 8-12% slower (10 of 10
                    // alternations), most likely the worker stalling on full miss queues.
                    if let Some(next) = w.get((rows0 + X16) * kb..(rows0 + 2 * X16) * kb) {
                        if let Some(part) = next.get(*ahead..*ahead + kb) {
                            prefetch_l2(part);
                            *ahead += kb;
                        }
                    }
                    dots(self.kernels, buf, kb, rows, out)
                })
            })
        }))
    }

    /// [`matmul`](Self::matmul) for row-major weights `w`.
    fn matmul_rows<B: Kernel>(&self, w: &[B], x: &[f32], m: usize) -> Vec<f32>
    where
        B::Act: ActBuffer,
    {
        self.matmul_with::<B>(x, m, |acts, outs| self.run(w, acts, outs, m))
    }

    /// Quantizes the `m` rows of `x` into this thread's activation buffer (and pairs them
    /// for the 512-bit kernels), has `run` fill the outputs, and returns them.
    fn matmul_with<B: Kernel>(
        &self,
        x: &[f32],
        m: usize,
        run: impl FnOnce((&[B::Act], &[Pair]), &[AtomicU32]),
    ) -> Vec<f32>
    where
        B::Act: ActBuffer,
    {
        let (n, k) = (self.n, self.k);
        let kb = k / B::VALUES;
        B::Act::with_buffer(|acts| {
            OUTPUT.with(|outs| {
                acts.resize(m * kb, B::Act::default());
                quantize_rows::<B>(x, k, &mut acts[..m * kb], kb);
                let mut outs = outs.borrow_mut();
                if outs.len() < m * n {
                    outs.resize_with(m * n, || AtomicU32::new(0));
                }
                PAIRED.with(|paired| {
                    let mut paired = paired.borrow_mut();
                    B::Act::pair_rows(self.kernels, &acts[..m * kb], m, kb, &mut paired);
                    run((&acts[..m * kb], &paired), &outs[..m * n]);
                });
                // Through `get_mut` (the pool is done with them): plain loads, which vectorize.
                outs[..m * n]
                    .iter_mut()
                    .map(|v| f32::from_bits(*v.get_mut()))
                    .collect()
            })
        })
    }

    /// Splits the work over candle's CPU pool: items are (column group, row tile) pairs,
    /// column-group major, so a worker keeps a few weight rows in L1 while it walks the
    /// activation tiles.
    /// `pairs`: the activation rows paired for the 512-bit kernels (pair `p` of row `2p` and
    /// `2p + 1`, `kb` blocks each), empty for the others.
    fn run<B: Kernel>(
        &self,
        w: &[B],
        (acts, pairs): (&[B::Act], &[Pair]),
        outs: &[AtomicU32],
        m: usize,
    ) {
        let (n, kb) = (self.n, self.k / B::VALUES);
        let kernels = self.kernels;
        let tile = B::tile(kernels);
        let tiles = m.div_ceil(tile);
        let groups = n.div_ceil(COL_GROUP);
        let prompt = PROMPT.get();
        let work = |items: std::ops::Range<usize>| {
            let mut out = [[0f32; MAX_TILE]; COL_GROUP];
            for item in items {
                let (group, t) = (item / tiles, item % tiles);
                let r0 = t * tile;
                let rows_here = tile.min(m - r0);
                let mut rows: [&[B::Act]; MAX_TILE] = [&[]; MAX_TILE];
                for (i, r) in rows.iter_mut().take(rows_here).enumerate() {
                    *r = &acts[(r0 + i) * kb..(r0 + i + 1) * kb];
                }
                let c0 = group * COL_GROUP;
                let cols = COL_GROUP.min(n - c0);
                let out = &mut out[..cols];
                let (w, rows) = (&w[c0 * kb..(c0 + cols) * kb], &rows[..rows_here]);
                // Tiles start at even rows: the tile's pairs are consecutive.
                let tile_pairs = if pairs.is_empty() {
                    &[][..]
                } else {
                    &pairs[r0 / 2 * kb..(r0 + rows_here) / 2 * kb]
                };
                // Tiles start at multiples of four, so the full ones are the rows llama.cpp's
                // repacked gemm takes four at a time.
                let prompt = prompt && B::prompt_order(m, rows_here);
                dots(kernels, w, kb, (rows, tile_pairs), prompt, out);
                store(outs, n, (r0, rows_here), c0, out);
            }
        };
        crate::pool::for_items(groups * tiles, split(tiles), work);
    }

    /// [`run`](Self::run) for weights interleaved by sixteen rows (`kb` blocks per group):
    /// items are (group, tile of four activation rows), group major; `call(blocks, rows,
    /// out)` multiplies the group whose blocks are `blocks` by `rows` into `out[j][r]`. The
    /// padding rows of the last group are computed but not stored.
    fn run_x16<A: Sync>(
        &self,
        kb: usize,
        acts: &[A],
        outs: &[AtomicU32],
        m: usize,
        call: impl Fn(std::ops::Range<usize>, &[&[A]], &mut [[f32; MAX_TILE]]) + Sync,
    ) {
        let n = self.n;
        let tile = ROW_TILE_X16;
        let tiles = m.div_ceil(tile);
        let work = |items: std::ops::Range<usize>| {
            let mut out = [[0f32; MAX_TILE]; X16];
            for item in items {
                let (group, t) = (item / tiles, item % tiles);
                let r0 = t * tile;
                let rows_here = tile.min(m - r0);
                let mut rows: [&[A]; ROW_TILE_X16] = [&[]; ROW_TILE_X16];
                for (i, r) in rows.iter_mut().take(rows_here).enumerate() {
                    *r = &acts[(r0 + i) * kb..(r0 + i + 1) * kb];
                }
                call(group * kb..(group + 1) * kb, &rows[..rows_here], &mut out);
                let c0 = group * X16;
                store(outs, n, (r0, rows_here), c0, &out[..X16.min(n - c0)]);
            }
        };
        crate::pool::for_items(n.div_ceil(X16) * tiles, split(tiles), work);
    }
}

/// How a matmul of `tiles` activation tiles splits its items over the pool: one tile (a
/// decode step, a small batch) streams the weights once and is bound by memory bandwidth,
/// so each thread takes one contiguous share; more are compute-bound, guided chunks.
fn split(tiles: usize) -> crate::pool::Split {
    if tiles == 1 {
        crate::pool::Split::Static
    } else {
        crate::pool::Split::Guided
    }
}

/// Activation rows per [`dots_q4k_x16`] / [`dots_q4_0_x16`] call (their tile, as
/// llama.cpp's repacked gemm).
const ROW_TILE_X16: usize = 4;

/// Writes a work item's results (`out[j][i]`: weight row `c0 + j`, activation row `r0 + i`,
/// `i < rows`) into the `[m, n]` outputs.
fn store(
    outs: &[AtomicU32],
    n: usize,
    (r0, rows): (usize, usize),
    c0: usize,
    out: &[[f32; MAX_TILE]],
) {
    for (j, o) in out.iter().enumerate() {
        for (i, v) in o.iter().take(rows).enumerate() {
            outs[(r0 + i) * n + c0 + j].store(v.to_bits(), Ordering::Relaxed);
        }
    }
}

impl OurMatMul {
    /// Appends row `row` of the weights, dequantized, to `out`.
    fn dequantize_row(&self, row: usize, out: &mut Vec<f32>) {
        fn rows<B: Kernel>(w: &[B], k: usize, row: usize, out: &mut Vec<f32>) {
            let kb = k / B::VALUES;
            for b in &w[row * kb..(row + 1) * kb] {
                B::dequantize(b, out);
            }
        }
        with_blocks!(
            &self.weights,
            w => rows(w, self.k, row, out),
            w => {
                let kb = self.k / QK_K;
                for b in &w[row / X16 * kb..(row / X16 + 1) * kb] {
                    BlockQ4K::dequantize(&b.row(row % X16), out);
                }
            },
            w => {
                let kb = self.k / QK;
                for b in &w[row / X16 * kb..(row / X16 + 1) * kb] {
                    BlockQ4_0::dequantize(&b.row(row % X16), out);
                }
            }
        )
    }
}

/// Token embeddings looked up row by row from the quantized table, which is never dequantized
/// whole. When the model ties its output projection to the embeddings,
/// [`output`](Self::output) runs the same blocks (no second copy of the table).
#[derive(Debug)]
pub(crate) struct Embedding {
    rows: usize,
    hidden: usize,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Ours(Arc<OurMatMul>),
    Table {
        table: Arc<QTensor>,
        dtype: GgmlDType,
        row_bytes: usize,
    },
}

impl Embedding {
    /// Wraps a `[vocab, hidden]` table (on the CPU).
    pub(crate) fn new(table: QTensor) -> crate::Result<Self> {
        let (rows, hidden) = table
            .shape()
            .dims2()
            .map_err(|e| crate::ModelError::BadTensor {
                name: "token_embd.weight".into(),
                reason: e.to_string(),
            })?;
        let table = Arc::new(table);
        let source = match QLinear::from_qtensor(table.clone())?.inner {
            Inner::Ours(op) => Source::Ours(op),
            Inner::Candle(_) => {
                let dtype = table.dtype();
                Source::Table {
                    row_bytes: hidden / dtype.block_size() * dtype.type_size(),
                    table,
                    dtype,
                }
            }
        };
        Ok(Self {
            rows,
            hidden,
            source,
        })
    }

    /// The rows of `tokens` (`[tokens.len(), hidden]`, f32) on `device`.
    pub(crate) fn lookup(
        &self,
        tokens: &[u32],
        device: &candle_core::Device,
    ) -> crate::Result<Tensor> {
        let mut out = Vec::with_capacity(tokens.len() * self.hidden);
        for &t in tokens {
            let row = t as usize;
            if row >= self.rows {
                return Err(crate::ModelError::Tokenizer(format!(
                    "token id {t} out of range for a vocabulary of {}",
                    self.rows
                )));
            }
            match &self.source {
                Source::Ours(op) => op.dequantize_row(row, &mut out),
                Source::Table {
                    table,
                    dtype,
                    row_bytes,
                } => {
                    let data = table.data()?;
                    let raw = &data[row * row_bytes..(row + 1) * row_bytes];
                    let v = candle_core::quantized::ggml_file::qtensor_from_ggml(
                        *dtype,
                        raw,
                        vec![self.hidden],
                        &candle_core::Device::Cpu,
                    )?
                    .dequantize(&candle_core::Device::Cpu)?;
                    out.extend(v.to_vec1::<f32>()?);
                }
            }
        }
        Ok(Tensor::from_vec(out, (tokens.len(), self.hidden), device)?)
    }

    /// The tied output projection (`[vocab, hidden]`): the same weights, shared.
    pub(crate) fn output(&self) -> candle_core::Result<QLinear> {
        Ok(match &self.source {
            Source::Ours(op) => QLinear {
                inner: Inner::Ours(op.clone()),
            },
            Source::Table { table, .. } => QLinear::shared(table.clone())?,
        })
    }
}

impl CustomOp1 for OurMatMul {
    fn name(&self) -> &'static str {
        "fluent-ai-candle-qmatmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("quantized matmul: f32 input expected");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quantized matmul: contiguous input expected");
        };
        let dims = layout.shape().dims();
        let k = dims.last().copied().unwrap_or(0);
        if k != self.k {
            candle_core::bail!(
                "quantized matmul: input has {k} features, weights expect {}",
                self.k
            );
        }
        let m = layout.shape().elem_count() / k;
        let out = self.matmul(&data[start..end], m);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.n;
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// A quantized linear layer `y = x Wᵀ` (`W`: `[out, in]`), on our kernels where they apply
/// and on candle's `QMatMul` otherwise (see the module docs).
///
/// ```
/// use candle_core::quantized::{GgmlDType, QTensor};
/// use candle_core::{Device, Module, Tensor};
/// use fluent_ai_candle_models::QLinear;
///
/// let w = Tensor::randn(0f32, 1.0, (64, 96), &Device::Cpu)?;
/// let layer = QLinear::from_qtensor(QTensor::quantize(&w, GgmlDType::Q4_1)?.into())?;
/// let x = Tensor::randn(0f32, 1.0, (2, 96), &Device::Cpu)?;
/// assert_eq!(layer.forward(&x)?.dims(), &[2, 64]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QLinear {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Ours(Arc<OurMatMul>),
    Candle(QMatMul),
}

impl Weights {
    /// The weights of a `[n, k]` tensor of format `dtype` (`kb` blocks per row) from its
    /// bytes, in the layout their kernels read on this machine: `Q4_0` interleaved by sixteen
    /// where llama.cpp repacks it (`n` a multiple of 8), on every level, so that it sums in
    /// llama.cpp's order; `Q4_K` interleaved by sixteen under [`Simd::Avx512Vnni`] when `n` is
    /// a multiple of 16 (the same bits as row-major, faster); every other format row-major.
    /// Interleaved weights are made straight from the bytes (no row-major copy between).
    /// `None` for a format without our kernels.
    fn read(dtype: GgmlDType, bytes: &[u8], n: usize, kb: usize) -> Option<Self> {
        let vnni = kernels().simd() == Simd::Avx512Vnni;
        Some(match dtype {
            GgmlDType::Q4_0 if n.is_multiple_of(8) => interleave_q4_0_bytes(bytes, n, kb)
                .map_or_else(|| Weights::Q4_0(read_blocks(bytes)), Weights::Q4_0x16),
            GgmlDType::Q4_0 => Weights::Q4_0(read_blocks(bytes)),
            GgmlDType::Q4K if vnni => interleave_q4k_bytes(bytes, n, kb)
                .map_or_else(|| Weights::Q4K(read_blocks(bytes)), Weights::Q4Kx16),
            GgmlDType::Q4K => Weights::Q4K(read_blocks(bytes)),
            GgmlDType::Q4_1 => Weights::Q4_1(read_blocks(bytes)),
            GgmlDType::Q5_0 => Weights::Q5_0(read_blocks(bytes)),
            GgmlDType::Q5_1 => Weights::Q5_1(read_blocks(bytes)),
            GgmlDType::Q8_0 => Weights::Q8_0(read_blocks(bytes)),
            GgmlDType::Q2K => Weights::Q2K(read_blocks(bytes)),
            GgmlDType::Q3K => Weights::Q3K(read_blocks(bytes)),
            GgmlDType::Q5K => Weights::Q5K(read_blocks(bytes)),
            GgmlDType::Q6K => Weights::Q6K(read_blocks(bytes)),
            _ => return None,
        })
    }

    /// Weight rows held (`n` once read), the padding rows of an interleaved group left out.
    fn blocks(&self, kb: usize, n: usize) -> usize {
        with_blocks!(
            self,
            w => w.len(),
            w => w.len() * X16,
            w => (w.len() * X16).min(n * kb)
        )
    }
}

impl QLinear {
    /// A `[n, k]` weight matrix of format `dtype` on the CPU, read for our kernels straight
    /// from its stored bytes (GGML's blocks, as in a GGUF file); `None` when the format has no
    /// kernels of ours (or candle's are forced, or a row does not hold whole blocks): read it
    /// as a `QTensor` and use [`QLinear::from_qtensor`].
    pub fn from_bytes(
        dtype: GgmlDType,
        (n, k): (usize, usize),
        bytes: &[u8],
    ) -> Option<candle_core::Result<Self>> {
        if candle_forced() {
            return None;
        }
        // A row must hold whole blocks (GGML's own files always do).
        let values = dtype.block_size();
        if !k.is_multiple_of(values) {
            return None;
        }
        let kb = k / values;
        let weights = Weights::read(dtype, bytes, n, kb)?;
        let blocks = weights.blocks(kb, n);
        if blocks != n * kb {
            return Some(Err(candle_core::Error::Msg(format!(
                "quantized weights hold {blocks} blocks, [{n}, {k}] needs {}",
                n * kb
            ))));
        }
        Some(Ok(Self {
            inner: Inner::Ours(Arc::new(OurMatMul {
                weights,
                n,
                k,
                kernels: kernels(),
            })),
        }))
    }

    /// Wraps a quantized `[out, in]` weight tensor, repacking it for our kernels when its
    /// format has them (and it is on the CPU).
    pub fn from_qtensor(t: Arc<QTensor>) -> candle_core::Result<Self> {
        let dims = t.shape().dims().to_vec();
        if t.device().is_cpu() && dims.len() == 2 {
            if let Some(ours) = Self::from_bytes(t.dtype(), (dims[0], dims[1]), &t.data()?) {
                return ours;
            }
        }
        // candle's 32-value block dot products assert (in debug builds) an even number of
        // blocks per row; a row of an odd number is valid GGUF, so such a layer runs on its
        // dequantized f32 weights instead (correct in every build; only unusual shapes).
        let legacy = matches!(
            t.dtype(),
            GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q5_0
                | GgmlDType::Q5_1
                | GgmlDType::Q8_0
                | GgmlDType::Q8_1
        );
        if legacy && dims.last().is_some_and(|k| (k / QK) % 2 == 1) {
            let device = t.device();
            return Ok(Self {
                inner: Inner::Candle(QMatMul::Tensor(t.dequantize(&device)?)),
            });
        }
        Ok(Self {
            inner: Inner::Candle(QMatMul::from_arc(t)?),
        })
    }

    /// Runs `t` on candle's `QMatMul` without copying it (for a table shared with the token
    /// embeddings, which read it row by row).
    pub fn shared(t: Arc<QTensor>) -> candle_core::Result<Self> {
        Ok(Self {
            inner: Inner::Candle(QMatMul::from_arc(t)?),
        })
    }

    /// Whether our kernels run this layer (rather than candle's `QMatMul`).
    pub fn is_ours(&self) -> bool {
        matches!(self.inner, Inner::Ours(_))
    }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.inner {
            Inner::Candle(m) => m.forward(x),
            Inner::Ours(op) => {
                let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
                x.apply_op1_no_bwd(op.as_ref())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use fluent_ai_candle_kernels::quant::blocks;
    use fluent_ai_candle_kernels::simd::Simd;
    use proptest::prelude::*;

    fn both(dtype: GgmlDType, w: &Tensor) -> (QLinear, QMatMul) {
        let q = Arc::new(QTensor::quantize(w, dtype).unwrap());
        (
            QLinear::from_qtensor(q.clone()).unwrap(),
            QMatMul::from_arc(q).unwrap(),
        )
    }

    /// Element-wise closeness up to `1e-4` of the largest magnitude, plus `slack[i]`.
    fn close_with(a: &Tensor, b: &Tensor, slack: &[f32]) -> Result<(), String> {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        if a.len() != b.len() {
            return Err(format!("lengths {} vs {}", a.len(), b.len()));
        }
        let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let tol = 1e-4 * scale + slack.get(i).copied().unwrap_or(0.0);
            if (x - y).abs() > tol {
                return Err(format!("element {i}: {x} vs {y} (tolerance {tol})"));
            }
        }
        Ok(())
    }

    /// `Q4_1` and `Q5_1` against candle: GGML (and we) round `s = d·Σq` to f16 once, candle
    /// rounds `Σq` and the product separately, so each block's `m·s` term may differ by an
    /// f16 ulp of `s`: the slack is `Σ_blocks |m|·|s|·2⁻¹⁰` per output.
    fn q4_1_slack(layer: &QLinear, x: &[f32], m: usize) -> Vec<f32> {
        let Inner::Ours(op) = &layer.inner else {
            return Vec::new();
        };
        let ms: Vec<u16> = match &op.weights {
            Weights::Q4_1(w) => w.iter().map(|b| b.m).collect(),
            Weights::Q5_1(w) => w.iter().map(|b| b.m).collect(),
            _ => return Vec::new(),
        };
        let kb = op.k / QK;
        let mut acts = vec![ActBlock::default(); m * kb];
        for (row, a) in x.chunks_exact(op.k).zip(acts.chunks_exact_mut(kb)) {
            blocks::quantize_row(row, a);
        }
        let mut slack = Vec::with_capacity(m * op.n);
        for r in 0..m {
            for c in 0..op.n {
                let s: f32 = (0..kb)
                    .map(|b| {
                        let mw = blocks::f16_bits(ms[c * kb + b]).abs();
                        mw * acts[r * kb + b].s.abs() / 1024.0
                    })
                    .sum();
                slack.push(s);
            }
        }
        slack
    }

    /// The 32-value formats with our kernels. `Q4_0` and `Q5_0` products are exact integers
    /// times one f32 scale per block, so against GGML's definition only the f32 summation
    /// order differs (the `1e-4 · max` tolerance of `close_with`); `Q4_1`/`Q5_1` add the
    /// f16 rounding of `m·s` (`q4_1_slack`).
    const FORMATS: [GgmlDType; 5] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ];
    /// The K-quant formats with our kernels (256-value blocks; `kquant`'s own tests check
    /// their arithmetic against GGML's definition and candle).
    const K_FORMATS: [GgmlDType; 5] = [
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q5K,
        GgmlDType::Q3K,
        GgmlDType::Q2K,
    ];

    #[test]
    fn our_formats_use_our_kernels_and_others_fall_back() {
        let w = Tensor::randn(0f32, 1.0, (8, 256), &Device::Cpu).unwrap();
        for f in FORMATS {
            assert!(both(f, &w).0.is_ours() || candle_forced(), "{f:?}");
        }
        for f in K_FORMATS {
            assert!(both(f, &w).0.is_ours() || candle_forced(), "{f:?}");
        }
        assert!(!both(GgmlDType::F16, &w).0.is_ours());
    }

    /// Row lookups, row-major and interleaved alike (32 rows: `Q4_0` and, under AVX-512
    /// VNNI, `Q4_K` interleaved; 40: `Q4_0` with a padded last group).
    #[test]
    fn embedding_rows_equal_candle_dequantization() {
        for rows in [5usize, 32, 40] {
            let w = Tensor::randn(0f32, 1.0, (rows, 512), &Device::Cpu).unwrap();
            for f in FORMATS.into_iter().chain(K_FORMATS) {
                let q = QTensor::quantize(&w, f).unwrap();
                let want: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
                let e = Embedding::new(q).unwrap();
                let ids = [3, 0, rows as u32 - 1];
                let got: Vec<Vec<f32>> = e.lookup(&ids, &Device::Cpu).unwrap().to_vec2().unwrap();
                let expect: Vec<Vec<f32>> = ids.iter().map(|&i| want[i as usize].clone()).collect();
                assert_eq!(got, expect, "{f:?}, {rows} rows");
                assert!(e.lookup(&[rows as u32], &Device::Cpu).is_err());
            }
        }
    }

    #[test]
    fn wrong_input_width_is_an_error() {
        let w = Tensor::randn(0f32, 1.0, (8, 64), &Device::Cpu).unwrap();
        let (ours, _) = both(GgmlDType::Q4_1, &w);
        let x = Tensor::zeros((1, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(ours.forward(&x).is_err());
    }

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        // Batch invariance: a row's result is bit-identical alone and inside any tile.
        let w = Tensor::randn(0f32, 1.0, (24, 512), &Device::Cpu).unwrap();
        // 33 rows: activations quantized over the pool (from `PARALLEL_QUANTIZE_ROWS`), full
        // tiles of 4 and a tile of 1.
        let m = PARALLEL_QUANTIZE_ROWS + 1;
        let x = Tensor::randn(0f32, 1.0, (m, 512), &Device::Cpu).unwrap();
        for f in FORMATS.into_iter().chain(K_FORMATS) {
            let (ours, _) = both(f, &w);
            let all: Vec<Vec<f32>> = ours.forward(&x).unwrap().to_vec2().unwrap();
            for (r, row) in all.iter().enumerate() {
                let alone: Vec<Vec<f32>> = ours
                    .forward(&x.narrow(0, r, 1).unwrap())
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                assert_eq!(&alone[0], row, "{f:?} row {r}");
            }
        }
    }

    #[test]
    fn prompts_interleaved_on_the_fly_give_the_tiled_bits() {
        // `Q5_K` and `Q6_K` weights of 3 super-blocks per row: two matrices of one group of
        // sixteen rows, run in turn (a worker's interleaved group must never be reused across
        // calls), and one of three groups; prompts of 8, 9 and 13 rows (llama.cpp's tiled
        // order).
        let dev = Device::Cpu;
        let k = 3 * QK_K;
        for dtype in [GgmlDType::Q5K, GgmlDType::Q6K] {
            let mats: Vec<QLinear> = [(0u64, 16usize), (1, 16), (2, 48)]
                .into_iter()
                .map(|(s, n)| {
                    let w = Tensor::from_vec(uniform(s + 7, n * k), (n, k), &dev).unwrap();
                    both(dtype, &w).0
                })
                .collect();
            for m in [8usize, 9, 13] {
                for (i, q) in mats.iter().chain(&mats).enumerate() {
                    let Inner::Ours(op) = &q.inner else {
                        assert!(candle_forced());
                        return;
                    };
                    let xs = uniform(m as u64 * 31 + i as u64, m * k);
                    let twin = OurMatMul {
                        kernels: Kernels::scalar(),
                        ..op.as_ref().clone()
                    };
                    let fast = as_prompt(|| op.matmul(&xs, m));
                    let slow = as_prompt(|| twin.matmul(&xs, m));
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fast), bits(&slow), "{dtype:?}, {m} rows, matrix {i}");
                    // And the tiled order is what ran: the one-row order differs somewhere.
                    let one_row = twin.matmul(&xs, m);
                    assert_ne!(bits(&one_row), bits(&slow), "{dtype:?}, {m} rows");
                }
            }
        }
    }

    /// The scalar twin against the kernel in use, through the same blocks: bit for bit.
    fn twin_matches(dtype: GgmlDType, w: &Tensor, x: &Tensor) -> Result<(), String> {
        let (ours, _) = both(dtype, w);
        let Inner::Ours(op) = &ours.inner else {
            return Ok(());
        };
        let twin = OurMatMul {
            kernels: Kernels::scalar(),
            ..op.as_ref().clone()
        };
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let m = x.dim(0).unwrap();
        let fast = op.matmul(&xs, m);
        // The VNNI build computes the same lane sums as the AVX2 one: bit-identical.
        if op.kernels.simd() == Simd::Avx512Vnni {
            let avx2 = OurMatMul {
                kernels: Kernels::new(Simd::Avx2).unwrap(),
                ..twin.clone()
            };
            if avx2.matmul(&xs, m) != fast {
                return Err("VNNI and AVX2 kernels differ".into());
            }
        }
        // The scalar twins sum in the kernels' order: bit-identical too.
        let slow = twin.matmul(&xs, m);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        if bits(&fast) != bits(&slow) {
            return Err(format!("{dtype:?}: SIMD and scalar twin differ"));
        }
        Ok(())
    }

    /// GGML's definition of the product, in f64: candle's dequantized weights times the
    /// activations after llama.cpp's x86 32-wide 8-bit activation quantization
    /// (`quantize_row_q8_0`; `Q8_1` has the same values).
    fn ggml_reference(w: &QTensor, x: &Tensor) -> Vec<f32> {
        let dev = Device::Cpu;
        let w: Vec<Vec<f32>> = w.dequantize(&dev).unwrap().to_vec2().unwrap();
        // llama.cpp's x86 activation quantizer (`127 / amax`, half to even), which ours is.
        let xq: Vec<Vec<f32>> = x
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|row| {
                let mut blocks = vec![ActBlock::default(); row.len() / QK];
                blocks::quantize_row(row, &mut blocks);
                blocks
                    .iter()
                    .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
                    .collect()
            })
            .collect();
        xq.iter()
            .flat_map(|xr| {
                w.iter().map(move |wr| {
                    wr.iter()
                        .zip(xr)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>() as f32
                })
            })
            .collect()
    }

    /// How far any two 8-bit activation quantizations may move one output: candle's CPU path
    /// on AVX-512 VNNI machines takes a repacked `Q8_0` kernel (when `n % 16 == 0` and
    /// `k % 256 == 0`) that quantizes activations in 256-wide `Q8_K` blocks instead of GGML's
    /// 32-wide ones. Each element then moves by at most half a step on either side, and a
    /// 256-wide step (`amax/127`, at most) bounds both: `Σ_j |w_j|·amax₂₅₆(j)/127`.
    fn activation_slack(w: &QTensor, x: &Tensor) -> Vec<f32> {
        let dev = Device::Cpu;
        let w: Vec<Vec<f32>> = w.dequantize(&dev).unwrap().to_vec2().unwrap();
        let x: Vec<Vec<f32>> = x.to_vec2().unwrap();
        x.iter()
            .flat_map(|xr| {
                let steps: Vec<f32> = xr
                    .chunks(256)
                    .map(|c| c.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0)
                    .collect();
                w.iter().map(move |wr| {
                    wr.iter()
                        .enumerate()
                        .map(|(j, v)| v.abs() * steps[j / 256])
                        .sum::<f32>()
                })
            })
            .collect()
    }

    /// `len` values in [-1, 1) from a linear congruential generator seeded with `seed` (test
    /// data that proptest's seed reproduces).
    fn uniform(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Against GGML's definition of the quantized product (see `ggml_reference`) and
        /// against candle's quantized matmul on the same quantized weights, for every format,
        /// every tile shape (1..=9 rows) and widths of 1..=8 blocks. Against the definition
        /// the only slack is f32 summation order (and `Q4_1`'s f16 rounding of `d·Σq`, which
        /// GGML also does); against candle, whose CPU kernels may quantize activations more
        /// finely on some machines, also the activation-quantization bound.
        #[test]
        fn matches_candle(
            f in 0usize..5,
            m in 1usize..10,
            n in 1usize..20,
            kb in 1usize..9,
            seed in any::<u64>(),
        ) {
            let device = Device::Cpu;
            // candle's Q4_1/Q5_0 kernels want an even number of blocks.
            let k = 2 * kb * QK;
            let gen = |len: usize, salt: u64| uniform(seed ^ salt, len);
            let w = Tensor::from_vec(gen(n * k, 1), (n, k), &device).unwrap();
            let x = Tensor::from_vec(gen(m * k, 2), (m, k), &device).unwrap();
            let q = QTensor::quantize(&w, FORMATS[f]).unwrap();
            let (ours, theirs) = both(FORMATS[f], &w);
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let slack = q4_1_slack(&ours, &xs, m);
            let got = ours.forward(&x).unwrap();
            let reference = Tensor::from_vec(ggml_reference(&q, &x), (m, n), &device).unwrap();
            let r = close_with(&got, &reference, &slack);
            prop_assert!(r.is_ok(), "{:?} vs GGML: {:?}", FORMATS[f], r);
            let wide: Vec<f32> = activation_slack(&q, &x)
                .iter()
                .zip(slack.iter().chain(std::iter::repeat(&0.0)))
                .map(|(a, b)| a + b)
                .collect();
            let r = close_with(&got, &theirs.forward(&x).unwrap(), &wide);
            prop_assert!(r.is_ok(), "{:?} vs candle: {:?}", FORMATS[f], r);
            let t = twin_matches(FORMATS[f], &w, &x);
            prop_assert!(t.is_ok(), "twin {:?}: {:?}", FORMATS[f], t);
        }

        /// The K-quant formats through the whole layer (tiles of rows, groups of columns):
        /// against the scalar twin and against candle's quantized matmul. candle also
        /// quantizes activations to 256-wide `Q8_K` blocks but rounds exact halves away from
        /// zero where GGML rounds to even (and its repacked paths may order sums otherwise),
        /// so the comparison with candle allows the two-quantization bound of
        /// `activation_slack`, as `matches_candle` does.
        #[test]
        fn k_formats_match_candle(
            f in 0usize..5,
            m in 1usize..10,
            n in 1usize..20,
            kb in 1usize..5,
            seed in any::<u64>(),
        ) {
            let device = Device::Cpu;
            let k = kb * QK_K;
            // Deterministic in the proptest seed; activations up to ±100.
            let w = Tensor::from_vec(uniform(seed ^ 1, n * k), (n, k), &device).unwrap();
            let x = (Tensor::from_vec(uniform(seed ^ 2, m * k), (m, k), &device).unwrap()
                * (1.0 + (seed % 100) as f64))
                .unwrap();
            let (ours, theirs) = both(K_FORMATS[f], &w);
            prop_assert!(ours.is_ours() || candle_forced());
            let q = QTensor::quantize(&w, K_FORMATS[f]).unwrap();
            let r = close_with(
                &ours.forward(&x).unwrap(),
                &theirs.forward(&x).unwrap(),
                &activation_slack(&q, &x),
            );
            prop_assert!(r.is_ok(), "{:?} vs candle: {:?}", K_FORMATS[f], r);
            let t = twin_matches(K_FORMATS[f], &w, &x);
            prop_assert!(t.is_ok(), "twin {:?}: {:?}", K_FORMATS[f], t);
        }
    }
}
