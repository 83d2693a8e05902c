//! Attention over an f16 KV cache on the CPU, computed the way llama.cpp's CPU flash attention
//! computes it for decode steps and prompts, so that near-tied logits break as they do in
//! llama.cpp: this module takes candle tensors apart and hands each query row to the kernels
//! crate's whole-row kernels ([`fluent_ai_candle_kernels::attention`], whose docs give the
//! arithmetic: [`attend_row`] reads keys and values in place from the f16 cache for decode
//! steps and short prompts, [`attend_row_tiled`] takes prompts of [`TILE`] rows or more, as
//! llama.cpp does).
//!
//! Every row is computed alone, so its result does not depend on the other rows of the step:
//! a token's attention is the same in a prefill, in a decode step and inside a batch of
//! sequences (batch invariance). Measured on the reference continuations
//! (`../shared/reference`, made by llama.cpp with flash attention): llama.cpp's own build
//! reproduces all of them with flash attention on and 7 of SmolLM2's 34 with it off; candle's
//! matmul → softmax → matmul chain, which this replaces on the CPU, matched 12.
//!
//! Work items (sequence, head, row) are split over candle's CPU thread pool. Inputs are read in
//! place through their layouts (cache views are strided): the one-row path takes keys and
//! values straight from the f16 cache (the kernel converts in registers), the tiled
//! path has each worker widen the kv heads its items need to f32 once per call; anything that is not an f32 query
//! and f16 keys and values on the CPU returns `None`, and the caller takes the general path.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use candle_core::{CpuStorage, Layout, Storage, Tensor};
use fluent_ai_candle_kernels::attention::{
    attend_row, attend_row_tiled, transpose_tiles, Rows, TILE,
};
use fluent_ai_candle_kernels::simd::Kernels;
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Rounds every value of `x` to f16 precision (as storing it into an f16 buffer does), using
/// `buf` (as long as `x`) for the vectorized conversions.
#[inline]
fn round_to_f16(x: &mut [f32], buf: &mut [f16]) {
    buf.convert_from_f32_slice(x);
    buf.convert_to_f32_slice(x);
}

/// A rank-3 view of a tensor's CPU storage whose last dimension is contiguous.
struct View<'a, T> {
    data: &'a [T],
    start: usize,
    strides: [usize; 2],
    dims: [usize; 3],
}

impl<'a, T> View<'a, T> {
    fn new(data: &'a [T], layout: &Layout) -> Option<Self> {
        let (dims, strides) = (layout.dims(), layout.stride());
        if dims.len() != 3 || (strides[2] != 1 && dims[2] > 1) {
            return None;
        }
        Some(Self {
            data,
            start: layout.start_offset(),
            strides: [strides[0], strides[1]],
            dims: [dims[0], dims[1], dims[2]],
        })
    }

    /// The contiguous row `[a, b, ..]`.
    #[inline]
    fn row(&self, a: usize, b: usize) -> &'a [T] {
        let at = self.start + a * self.strides[0] + b * self.strides[1];
        &self.data[at..at + self.dims[2]]
    }
}

fn f16_view<'a>(storage: &'a Storage, layout: &Layout) -> Option<View<'a, f16>> {
    match storage {
        Storage::Cpu(CpuStorage::F16(data)) => View::new(data, layout),
        _ => None,
    }
}

fn f32_view<'a>(storage: &'a Storage, layout: &Layout) -> Option<View<'a, f32>> {
    match storage {
        Storage::Cpu(CpuStorage::F32(data)) => View::new(data, layout),
        _ => None,
    }
}

pub(crate) use fluent_ai_candle_kernels::attention::Scores;

/// One sequence's share of an attention step.
pub(crate) struct Job<'a> {
    /// Queries `[heads, n, d]` (f32).
    pub q: &'a Tensor,
    /// Cached keys `[kv_heads, len, d]` (f16), the step's own keys included.
    pub keys: &'a Tensor,
    /// Cached values, as `keys`.
    pub values: &'a Tensor,
    /// The cache index of the first query row's own key (row `i` sees keys up to
    /// `first + i`, causal).
    pub first: usize,
    /// How many keys back a row sees, itself included (`usize::MAX`: all).
    pub window: usize,
}

/// Per-thread scratch of one row's computation, sized once per head size.
#[derive(Default)]
struct Scratch {
    /// The query rounded to f16, as f32.
    q: Vec<f32>,
    /// f16 buffer for the conversions.
    half: Vec<f16>,
    /// One row's output.
    out: Vec<f32>,
}

impl Scratch {
    fn size(&mut self, d: usize) {
        for v in [&mut self.q, &mut self.out] {
            v.resize(d, 0.0);
        }
        self.half.resize(d, f16::ZERO);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static HEADS: RefCell<Heads> = RefCell::new(Heads::default());
}

/// Numbers the calls of [`attention`], so a worker's [`Heads`] from an earlier call (whose
/// caches may have grown since) are never taken for this one's.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// For llama.cpp's tiled path (a prompt of [`TILE`] rows or more): one kv head's keys and
/// values widened to f32 (`[len, d]` each) and the keys transposed per tile, converted by a
/// worker the first time one of its work items needs that head in a call and reused by its
/// next items (every f16 converted once per worker and call, in parallel, into buffers sized
/// once per thread). The one-row path reads the f16 cache in place.
#[derive(Default)]
struct Heads {
    /// (call, job, kv head) the buffers hold, if any.
    key: Option<(u64, usize, usize)>,
    k: Vec<f32>,
    v: Vec<f32>,
    kt: Vec<f32>,
}

impl Heads {
    /// Fills the buffers with kv head `key.2` of job `key.1`'s first `len` positions (and the
    /// keys transposed), unless they hold it already.
    fn load(
        &mut self,
        key: (u64, usize, usize),
        views: (&View<'_, f16>, &View<'_, f16>),
        len: usize,
    ) {
        if self.key == Some(key) {
            return;
        }
        let (k, v) = views;
        let (h, d) = (key.2, k.dims[2]);
        for (buf, view) in [(&mut self.k, k), (&mut self.v, v)] {
            if buf.len() < len * d {
                buf.resize(len * d, 0.0);
            }
            for (j, row) in buf[..len * d].chunks_exact_mut(d.max(1)).enumerate() {
                view.row(h, j).convert_to_f32_slice(row);
            }
        }
        transpose_tiles(&self.k[..len * d], d, &mut self.kt);
        self.key = Some(key);
    }
}

impl<'a> View<'a, f16> {
    /// Positions `lo..hi` of head `h` as the kernels' [`Rows`].
    fn rows(&self, h: usize, (lo, hi): (usize, usize)) -> Rows<'a> {
        let at = self.start + h * self.strides[0] + lo * self.strides[1];
        Rows::new(&self.data[at..], self.strides[1], self.dims[2], hi - lo)
            .expect("a view's rows lie in its storage")
    }
}

/// One query row of one head over the keys `lo..hi` of kv head `h`, read in place from the
/// f16 cache ([`attend_row`]): writes the attention output (`d` values) into `out`.
fn row(
    q: &[f32],
    (k, v): (&View<'_, f16>, &View<'_, f16>),
    h: usize,
    (lo, hi): (usize, usize),
    scores: Scores,
    s: &mut Scratch,
    out: &mut [f32],
) {
    s.q.copy_from_slice(q);
    round_to_f16(&mut s.q, &mut s.half);
    let (keys, values) = (k.rows(h, (lo, hi)), v.rows(h, (lo, hi)));
    attend_row(Kernels::chosen(), &s.q, keys, values, scores, out);
}

/// Attention of several sequences' query rows over their caches, each row attending to the
/// keys its job makes visible, with scores made by `scores` (a plain `f32` scale, or
/// [`Scores::capped`]). Returns `[rows, heads · d]`
/// (the rows of every job in order, each row's heads side by side), or `None` when a query is
/// not f32 or a cache not f16 on the CPU (or not of matching shapes): the caller then takes
/// the general path.
pub(crate) fn attention(
    jobs: &[Job<'_>],
    scores: impl Into<Scores>,
) -> candle_core::Result<Option<Tensor>> {
    let scores = scores.into();
    let Some(first) = jobs.first() else {
        return Ok(None);
    };
    if !first.q.device().is_cpu() {
        return Ok(None);
    }
    let guards: Vec<_> = jobs
        .iter()
        .map(|j| {
            (
                j.q.storage_and_layout(),
                j.keys.storage_and_layout(),
                j.values.storage_and_layout(),
            )
        })
        .collect();
    struct Prepared<'a> {
        q: View<'a, f32>,
        k: View<'a, f16>,
        v: View<'a, f16>,
        /// Positions visible to the last row.
        len: usize,
        /// Whether the job takes llama.cpp's tiled path ([`TILE`] rows or more).
        tiled: bool,
        first: usize,
        window: usize,
        /// The first output row of this job.
        row0: usize,
    }
    let mut prepared = Vec::with_capacity(jobs.len());
    let (mut heads, mut d, mut rows) = (0, 0, 0);
    for (job, ((qs, ql), (ks, kl), (vs, vl))) in jobs.iter().zip(&guards) {
        let (Some(q), Some(k), Some(v)) = (f32_view(qs, ql), f16_view(ks, kl), f16_view(vs, vl))
        else {
            return Ok(None);
        };
        let [h, n, qd] = q.dims;
        if prepared.is_empty() {
            (heads, d) = (h, qd);
        }
        let [kv, len, kd] = k.dims;
        if h != heads
            || qd != d
            || kd != d
            || v.dims != k.dims
            || kv == 0
            || heads % kv != 0
            || job.first + n > len
        {
            candle_core::bail!(
                "attention: queries {:?} do not fit keys {:?} / values {:?} from {}",
                q.dims,
                k.dims,
                v.dims,
                job.first
            );
        }
        prepared.push(Prepared {
            len: job.first + n,
            tiled: n >= TILE,
            k,
            v,
            q,
            first: job.first,
            window: job.window.max(1),
            row0: rows,
        });
        rows += n;
    }
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let out: Vec<AtomicU32> = (0..rows * heads * d).map(|_| AtomicU32::new(0)).collect();
    // Items: (job, head, row), job-major then head-major, so that the items of a chunk mostly
    // share a kv head; `starts[i]` is job i's first item.
    let mut starts = Vec::with_capacity(prepared.len() + 1);
    let mut items = 0;
    for p in &prepared {
        starts.push(items);
        items += heads * p.q.dims[1];
    }
    starts.push(items);
    let work = |range: std::ops::Range<usize>| {
        SCRATCH.with(|s| {
            HEADS.with(|kv| {
                let (s, kv) = (&mut *s.borrow_mut(), &mut *kv.borrow_mut());
                s.size(d);
                // The row functions take the rest of the scratch mutably beside it.
                let mut o = std::mem::take(&mut s.out);
                for item in range {
                    let job = starts.partition_point(|&s| s <= item) - 1;
                    let p = &prepared[job];
                    let n = p.q.dims[1];
                    let (head, i) = ((item - starts[job]) / n, (item - starts[job]) % n);
                    let rep = heads / p.k.dims[0];
                    let hi = p.first + i + 1;
                    let lo = hi.saturating_sub(p.window);
                    if p.tiled {
                        kv.load((call, job, head / rep), (&p.k, &p.v), p.len);
                        let v = &kv.v[..p.len * d];
                        attend_row_tiled(p.q.row(head, i), (&kv.kt, v), (lo, hi), scores, &mut o);
                    } else {
                        let views = (&p.k, &p.v);
                        row(
                            p.q.row(head, i),
                            views,
                            head / rep,
                            (lo, hi),
                            scores,
                            s,
                            &mut o,
                        );
                    }
                    let base = ((p.row0 + i) * heads + head) * d;
                    for (slot, x) in out[base..base + d].iter().zip(&o) {
                        slot.store(x.to_bits(), Ordering::Relaxed);
                    }
                }
                s.out = o;
            })
        });
    };
    crate::pool::for_items(items, crate::pool::Split::Guided, work);
    let out: Vec<f32> = out
        .into_iter()
        .map(|x| f32::from_bits(x.into_inner()))
        .collect();
    Ok(Some(Tensor::from_vec(
        out,
        (rows, heads * d),
        first.q.device(),
    )?))
}

/// One decode step of a batch: `q` is `[batch, heads, 1, d]`, `caches[b]` sequence `b`'s keys
/// and values with the step's own key last; each row sees `window` keys back. As
/// [`attention`]: `[batch, heads · d]`, or `None` for the general path.
pub(crate) fn decode_step(
    q: &Tensor,
    caches: &[(Tensor, Tensor)],
    window: usize,
    scores: impl Into<Scores>,
) -> candle_core::Result<Option<Tensor>> {
    let qs: Vec<Tensor> = (0..caches.len())
        .map(|i| q.get(i))
        .collect::<candle_core::Result<_>>()?;
    let mut jobs = Vec::with_capacity(caches.len());
    for ((keys, values), q) in caches.iter().zip(&qs) {
        jobs.push(Job {
            q,
            keys,
            values,
            first: keys.dim(1)? - 1,
            window,
        });
    }
    attention(&jobs, scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    /// matmul, scale, mask, softmax, matmul in f32 on the same f16 inputs.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, first: usize) -> Tensor {
        reference_capped(q, k, v, scale, None, first)
    }

    /// As [`reference`], the scores soft-capped (`c · tanh(s / c)`) when `cap` is given.
    fn reference_capped(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        cap: Option<f64>,
        first: usize,
    ) -> Tensor {
        let (heads, n, _) = q.dims3().unwrap();
        let kv = k.dim(0).unwrap();
        let len = k.dim(1).unwrap();
        let k = k.to_dtype(DType::F32).unwrap();
        let v = v.to_dtype(DType::F32).unwrap();
        let q = q.reshape((kv, heads / kv * n, ())).unwrap();
        let mut att = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        if let Some(c) = cap {
            att = ((att / c).unwrap().tanh().unwrap() * c).unwrap();
        }
        let mask: Vec<f32> = (0..heads / kv * n)
            .flat_map(|r| {
                let i = r % n;
                (0..len).map(move |j| {
                    if j <= first + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (heads / kv * n, len), &Device::Cpu).unwrap();
        let att = att.broadcast_add(&mask).unwrap();
        let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
        att.matmul(&v)
            .unwrap()
            .reshape((heads, n, ()))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
    }

    #[test]
    fn matches_the_op_chain_within_f16_rounding_and_is_batch_invariant() {
        let dev = Device::Cpu;
        let (heads, kv, d, cap) = (6, 2, 64, 40);
        let full_k = Tensor::randn(0f32, 1.0, (2, kv, cap, d), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let full_v = Tensor::randn(0f32, 1.0, (2, kv, cap, d), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let lens = [9usize, 30];
        // Caches as narrowed (strided) views of a larger buffer, as the KV cache hands out.
        let caches: Vec<(Tensor, Tensor)> = (0..2)
            .map(|b| {
                (
                    full_k.get(b).unwrap().narrow(1, 0, lens[b]).unwrap(),
                    full_v.get(b).unwrap().narrow(1, 0, lens[b]).unwrap(),
                )
            })
            .collect();
        let n = [3usize, 1];
        let qs: Vec<Tensor> = (0..2)
            .map(|b| Tensor::randn(0f32, 1.0, (heads, n[b], d), &dev).unwrap())
            .collect();
        let scale = 0.125;
        let jobs: Vec<Job<'_>> = (0..2)
            .map(|b| Job {
                q: &qs[b],
                keys: &caches[b].0,
                values: &caches[b].1,
                first: lens[b] - n[b],
                window: usize::MAX,
            })
            .collect();
        let both = attention(&jobs, scale).unwrap().unwrap();
        assert_eq!(both.dims(), &[4, heads * d]);
        for b in 0..2 {
            let alone = attention(&jobs[b..=b], scale).unwrap().unwrap();
            let rows = if b == 0 { 0..3 } else { 3..4 };
            let in_both: Vec<Vec<f32>> = both
                .narrow(0, rows.start, rows.len())
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(in_both, alone.to_vec2::<f32>().unwrap(), "sequence {b}");
            let want = reference(&qs[b], &caches[b].0, &caches[b].1, 0.125, lens[b] - n[b]);
            let diff = crate::max_abs_diff(&alone, &want);
            // f16 queries and an f16 running sum: a few f16 ulps of values of size ~1.
            assert!(diff < 2e-2, "sequence {b}: {diff}");
        }
    }

    #[test]
    fn soft_capped_scores_match_the_capped_op_chain_on_both_paths() {
        let dev = Device::Cpu;
        let (heads, kv, d) = (2, 1, 64);
        // Keys and queries large enough that the cap (2) bends most scores.
        let k = (Tensor::randn(0f32, 1.0, (kv, 80, d), &dev).unwrap() * 3.0)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let v = Tensor::randn(0f32, 1.0, (kv, 80, d), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let scores = Scores::capped(0.125, Some(2.0));
        // 70 rows take the tiled path (64 or more), 1 row the one-row path.
        for n in [70usize, 1] {
            let q = Tensor::randn(0f32, 1.0, (heads, n, d), &dev).unwrap();
            let job = Job {
                q: &q,
                keys: &k,
                values: &v,
                first: 80 - n,
                window: usize::MAX,
            };
            let got = attention(&[job], scores).unwrap().unwrap();
            let want = reference_capped(&q, &k, &v, 0.125, Some(2.0), 80 - n);
            let diff = crate::max_abs_diff(&got, &want);
            assert!(diff < 2e-2, "{n} rows: {diff}");
            // Without the cap the answer is clearly different: the cap did act.
            let uncapped = reference(&q, &k, &v, 0.125, 80 - n);
            assert!(crate::max_abs_diff(&got, &uncapped) > 0.1, "{n} rows");
        }
    }

    #[test]
    fn a_window_limits_what_a_row_sees() {
        let dev = Device::Cpu;
        let k = Tensor::randn(0f32, 1.0, (1, 5, 64), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 5, 64), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let q = Tensor::randn(0f32, 1.0, (1, 1, 64), &dev).unwrap();
        // Window 1: the last row sees only its own key, so the output is that value.
        let job = Job {
            q: &q,
            keys: &k,
            values: &v,
            first: 4,
            window: 1,
        };
        let got: Vec<f32> = attention(&[job], 0.125)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = v
            .get(0)
            .unwrap()
            .get(4)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn other_dtypes_fall_back_and_bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 1, 4), DType::F32, &dev).unwrap();
        let k32 = Tensor::zeros((1, 2, 4), DType::F32, &dev).unwrap();
        let job = Job {
            q: &q,
            keys: &k32,
            values: &k32,
            first: 1,
            window: usize::MAX,
        };
        assert!(attention(&[job], 1.0).unwrap().is_none());
        let k16 = k32.to_dtype(DType::F16).unwrap();
        let job = Job {
            q: &q,
            keys: &k16,
            values: &k16,
            first: 2,
            window: usize::MAX,
        };
        assert!(attention(&[job], 1.0).is_err(), "row 0 at 2 of 2 keys");
    }
}
