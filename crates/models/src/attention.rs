//! Fused attention for decode steps on the CPU: one new token per sequence attends over that
//! sequence's cached keys and values in a single pass (scores, softmax, weighted sum), without
//! the temporaries and per-op dispatch of a matmul → scale → softmax → matmul chain. A batch of
//! sequences is split over candle's CPU pool by (sequence, key/value head).
//!
//! Inputs are read in place through their layouts (the cache views are strided); anything that
//! is not an f32 CPU tensor returns `None` and the caller takes the general path.

use std::sync::atomic::{AtomicU32, Ordering};

use candle_core::{CpuStorage, Layout, Storage, Tensor};

/// A rank-3 f32 view of a tensor's storage.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    strides: [usize; 3],
    dims: [usize; 3],
}

impl<'a> View<'a> {
    fn new(storage: &'a Storage, layout: &Layout) -> Option<Self> {
        let Storage::Cpu(CpuStorage::F32(data)) = storage else {
            return None;
        };
        let (dims, strides) = (layout.dims(), layout.stride());
        if dims.len() != 3 {
            return None;
        }
        Some(Self {
            data,
            start: layout.start_offset(),
            strides: [strides[0], strides[1], strides[2]],
            dims: [dims[0], dims[1], dims[2]],
        })
    }

    #[inline]
    fn at(&self, a: usize, b: usize, c: usize) -> f32 {
        self.data[self.start + a * self.strides[0] + b * self.strides[1] + c * self.strides[2]]
    }
}

/// One query head's attention over one key/value head: writes `Σ softmax(q·k·scale) v` into
/// `out` (`d` values). `scores` is scratch of at least `len` values.
#[allow(clippy::too_many_arguments)]
fn head(
    q: &View<'_>,
    (qh, qr): (usize, usize),
    k: &View<'_>,
    v: &View<'_>,
    h: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (len, d) = (k.dims[1], k.dims[2]);
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores.iter_mut().enumerate().take(len) {
        let mut dot = 0f32;
        for i in 0..d {
            dot += q.at(qh, qr, i) * k.at(h, j, i);
        }
        *s = dot * scale;
        max = max.max(*s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut().take(len) {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for (j, &p) in scores.iter().enumerate().take(len) {
        for (i, o) in out.iter_mut().enumerate() {
            *o += p * v.at(h, j, i);
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Decode attention of a batch: `q` is `[batch, kv_heads, rep, d]` (the `rep` query heads that
/// share a key/value head), `caches[b]` the keys and values (`[kv_heads, len_b, d]`) of
/// sequence `b`. Returns `[batch, kv_heads · rep · d]`, or `None` when an input is not an f32
/// CPU tensor of those ranks.
pub(crate) fn decode_batch(
    q: &Tensor,
    caches: &[(Tensor, Tensor)],
    scale: f32,
) -> candle_core::Result<Option<Tensor>> {
    let dims = q.dims();
    let &[batch, kv, rep, d] = dims else {
        return Ok(None);
    };
    if caches.len() != batch || !q.device().is_cpu() {
        return Ok(None);
    }
    let q3 = q.reshape((batch * kv, rep, d))?;
    let (qs, ql) = q3.storage_and_layout();
    let Some(qv) = View::new(&qs, ql) else {
        return Ok(None);
    };
    let guards: Vec<_> = caches
        .iter()
        .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()))
        .collect();
    let mut views = Vec::with_capacity(batch);
    let mut longest = 0;
    for ((ks, kl), (vs, vl)) in &guards {
        let (Some(k), Some(v)) = (View::new(ks, kl), View::new(vs, vl)) else {
            return Ok(None);
        };
        if k.dims[0] != kv || k.dims[2] != d || v.dims != k.dims {
            candle_core::bail!(
                "decode attention: cache {:?}/{:?} does not fit queries {dims:?}",
                k.dims,
                v.dims
            );
        }
        longest = longest.max(k.dims[1]);
        views.push((k, v));
    }
    let out: Vec<AtomicU32> = (0..batch * kv * rep * d)
        .map(|_| AtomicU32::new(0))
        .collect();
    let work = |items: std::ops::Range<usize>| {
        let mut scores = vec![0f32; longest];
        let mut row = vec![0f32; d];
        for item in items {
            let (b, h) = (item / kv, item % kv);
            let (k, v) = &views[b];
            for r in 0..rep {
                head(&qv, (item, r), k, v, h, scale, &mut scores, &mut row);
                let base = ((b * kv + h) * rep + r) * d;
                for (i, x) in row.iter().enumerate() {
                    out[base + i].store(x.to_bits(), Ordering::Relaxed);
                }
            }
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(batch * kv, work);
    let out: Vec<f32> = out
        .iter()
        .map(|x| f32::from_bits(x.load(Ordering::Relaxed)))
        .collect();
    Ok(Some(Tensor::from_vec(
        out,
        (batch, kv * rep * d),
        q.device(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    /// The reference: matmul, scale, softmax, matmul (what the decoders did before).
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let att = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
        att.matmul(v).unwrap()
    }

    #[test]
    fn matches_the_op_chain_on_strided_caches() {
        let dev = Device::Cpu;
        let (kv, rep, d, cap) = (3, 3, 16, 20);
        let q = Tensor::randn(0f32, 1.0, (2, kv, rep, d), &dev).unwrap();
        // Two caches of different lengths, as narrowed views of a larger buffer (strided).
        let full_k = Tensor::randn(0f32, 1.0, (2, kv, cap, d), &dev).unwrap();
        let full_v = Tensor::randn(0f32, 1.0, (2, kv, cap, d), &dev).unwrap();
        let lens = [7, 13];
        let caches: Vec<(Tensor, Tensor)> = (0..2)
            .map(|b| {
                (
                    full_k.get(b).unwrap().narrow(1, 0, lens[b]).unwrap(),
                    full_v.get(b).unwrap().narrow(1, 0, lens[b]).unwrap(),
                )
            })
            .collect();
        let scale = 1.0 / (d as f64).sqrt();
        let got = decode_batch(&q, &caches, scale as f32).unwrap().unwrap();
        for (b, (k, v)) in caches.iter().enumerate() {
            let want = reference(
                &q.get(b).unwrap(),
                &k.contiguous().unwrap(),
                &v.contiguous().unwrap(),
                scale,
            )
            .flatten_all()
            .unwrap();
            let diff = (got.get(b).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "sequence {b}: {diff}");
        }
    }

    #[test]
    fn other_dtypes_fall_back() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 1, 1, 4), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 4), DType::F16, &dev).unwrap();
        assert!(decode_batch(&q, &[(k.clone(), k)], 1.0).unwrap().is_none());
    }
}
