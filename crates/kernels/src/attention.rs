//! One query row's attention, computed whole, the way llama.cpp's CPU flash attention
//! computes it (`ggml_compute_forward_flash_attn_ext_f16`), so that near-tied logits break as
//! they do there. Two paths, as there:
//!
//! - [`attend_row`], for decode steps and short prompts: keys and values read in place from
//!   an f16 cache ([`Rows`]), the query rounded to f16, each score the f16 dot product in
//!   GGML's AVX-512 order ([`crate::f16::dot`]), an online softmax whose running maximum
//!   moves per key (rescaling by the C library's `expf`), and the weighted sum of values kept
//!   in **f16** (rounded after every key, as llama.cpp's f16 buffer rounds it). One call
//!   runs the whole row in one build ([`Kernels`]): with AVX-512 the dot products and the
//!   value updates are sixteen lanes per instruction, converted in registers, with no call per
//!   key. The scalar twin returns the same bits.
//! - [`attend_row_tiled`], for prompts of [`TILE`] rows or more
//!   (`ggml_compute_forward_flash_attn_ext_tiled`): f32 keys transposed per tile of 64
//!   positions ([`transpose_tiles`]), the scores as fused multiply-add chains over the head
//!   dimension, the maximum moved once per tile, the weights from GGML's polynomial `expf`
//!   ([`crate::ggml::v_expf`]) summed sixteen at a time into an f64 sum, and the values
//!   accumulated in f32.
//!
//! Scores are `dot · scale`, or soft-capped `c · tanhf(dot · scale / c)` ([`Scores`]).
//!
//! ```
//! use fluent_ai_candle_kernels::attention::{attend_row, Rows, Scores};
//! use fluent_ai_candle_kernels::simd::Kernels;
//! use half::f16;
//!
//! // Two cached positions of a head of two values; the query [1, 0] (exact in f16).
//! let keys: Vec<f16> = [0.0, 0.0, 4.0, 0.0].map(f16::from_f32).to_vec();
//! let values: Vec<f16> = [1.0, 0.0, 0.0, 1.0].map(f16::from_f32).to_vec();
//! let (k, v) = (Rows::new(&keys, 2, 2, 2).unwrap(), Rows::new(&values, 2, 2, 2).unwrap());
//! let mut out = [0f32; 2];
//! attend_row(Kernels::chosen(), &[1.0, 0.0], k, v, Scores::from(1.0), &mut out);
//! // Scores 0 and 4: weights 1 / (1 + e^4) and e^4 / (1 + e^4), to f16 precision.
//! let w = 1.0 / (1.0 + 4f32.exp());
//! assert!((out[0] - w).abs() < 1e-3 && (out[1] - (1.0 - w)).abs() < 1e-3);
//! // The scalar twin returns the same bits.
//! let mut twin = [0f32; 2];
//! attend_row(Kernels::scalar(), &[1.0, 0.0], k, v, Scores::from(1.0), &mut twin);
//! assert_eq!(out, twin);
//! ```

use half::f16;

use crate::f16::{dot_steps, finish_dot, mad_tail, reduce16, scale_tail, DOT_STEP, LANES};
use crate::simd::Kernels;

/// How a query·key dot product becomes an attention score: times a scale and, for models with
/// attention logit soft-capping (Gemma 2), squashed to `c · tanh(s / c)`. Computed as
/// llama.cpp's flash attention computes it: the scale divided by `c` once, then
/// `c · tanhf(dot · scale / c)` per score (the C library's `tanhf`, as there).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    /// The factor on the dot product (already divided by the cap when there is one).
    scale: f32,
    /// The soft-cap `c`, or 0 for none.
    softcap: f32,
}

impl Scores {
    /// Scores scaled by `scale`, soft-capped at `softcap` when it is given (and not 0).
    pub fn capped(scale: f32, softcap: Option<f32>) -> Self {
        match softcap {
            Some(c) if c != 0.0 => Self {
                scale: scale / c,
                softcap: c,
            },
            _ => Self {
                scale,
                softcap: 0.0,
            },
        }
    }

    /// The score of one dot product.
    #[inline]
    pub fn of(self, dot: f32) -> f32 {
        let s = dot * self.scale;
        if self.softcap != 0.0 {
            self.softcap * s.tanh()
        } else {
            s
        }
    }
}

/// A plain scale, without soft-capping.
impl From<f32> for Scores {
    fn from(scale: f32) -> Self {
        Self::capped(scale, None)
    }
}

/// `count` rows of `width` f16 values, `stride` values apart, read in place: the positions of
/// one kv head in a cache whose rows need not be adjacent.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    data: &'a [f16],
    stride: usize,
    width: usize,
    count: usize,
}

impl<'a> Rows<'a> {
    /// Rows `j < count` at `data[j · stride..][..width]`, or `None` if they do not all lie in
    /// `data`.
    pub fn new(data: &'a [f16], stride: usize, width: usize, count: usize) -> Option<Self> {
        let end = match count {
            0 => 0,
            _ => (count - 1).checked_mul(stride)?.checked_add(width)?,
        };
        (end <= data.len()).then_some(Self {
            data,
            stride,
            width,
            count,
        })
    }

    /// How many rows there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Row `j`.
    #[inline]
    pub(crate) fn row(&self, j: usize) -> &'a [f16] {
        &self.data[j * self.stride..][..self.width]
    }
}

/// One query row's attention over `keys` and `values` (the positions the row sees, in
/// order), as llama.cpp's one-row flash attention computes it (module docs), written to `out`
/// (the head's `q.len()` values; also the running sum while it runs).
///
/// `q` must hold f16 values (llama.cpp converts the query to f16 first: round it with
/// [`half::slice::HalfFloatSliceExt`] or `f16::from_f32`). `keys` and `values` must be
/// rows of `q.len()` values and of one count. No visible position (a count of 0) gives zeros.
/// Every build `kernels` may pick returns the scalar twin's bits.
pub fn attend_row(
    kernels: Kernels,
    q: &[f32],
    keys: Rows<'_>,
    values: Rows<'_>,
    scores: Scores,
    out: &mut [f32],
) {
    let d = q.len();
    assert!(
        keys.width == d && values.width == d && values.count == keys.count && out.len() == d,
        "attend_row: a query of {d} values, keys {}×{}, values {}×{}, out {}",
        keys.count,
        keys.width,
        values.count,
        values.width,
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    let sum = crate::arch::x86_64::avx512::f16::attend_row(kernels, q, keys, values, scores, out);
    #[cfg(not(target_arch = "x86_64"))]
    let sum = {
        let _ = kernels;
        None
    };
    let sum = sum.unwrap_or_else(|| {
        online_softmax(
            q,
            (keys, values),
            scores,
            out,
            (
                dot_steps,
                |_: &mut [f32], _: &[f16], _: f32| 0,
                |_: &mut [f32], _: f32| 0,
            ),
        )
    });
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for o in out {
        *o *= inv;
    }
}

/// The online softmax of [`attend_row`] over one build's vector steps: `steps.0` the sixteen
/// lanes of [`crate::f16::dot`]'s whole 64-value steps, `steps.1` and `steps.2` the heads of
/// [`crate::f16::mad`] and [`crate::f16::scale`] (how many values they did; the scalar
/// twins do the rest). Leaves the unnormalized sum of values in `acc` and returns the sum of
/// weights. Inlined into each build's `#[target_feature]` function, so the steps inline too.
#[inline(always)]
pub(crate) fn online_softmax<D, M, S>(
    q: &[f32],
    (keys, values): (Rows<'_>, Rows<'_>),
    scores: Scores,
    acc: &mut [f32],
    (dot_steps, mad_head, scale_head): (D, M, S),
) -> f32
where
    D: Fn(&[f16], &[f32]) -> [f32; LANES],
    M: Fn(&mut [f32], &[f16], f32) -> usize,
    S: Fn(&mut [f32], f32) -> usize,
{
    let full = q.len() - q.len() % DOT_STEP;
    acc.fill(0.0);
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
    for j in 0..keys.count {
        let k = keys.row(j);
        let lanes = dot_steps(&k[..full], &q[..full]);
        let score = scores.of(finish_dot(&lanes, &k[full..], &q[full..]));
        let (ms, vs) = if score > max {
            let ms = (max - score).exp();
            max = score;
            let done = scale_head(acc, ms);
            scale_tail(&mut acc[done..], ms);
            (ms, 1.0)
        } else {
            (1.0, (score - max).exp())
        };
        let v = values.row(j);
        let done = mad_head(acc, v, vs);
        mad_tail(&mut acc[done..], &v[done..], vs);
        sum = sum.mul_add(ms, vs);
    }
    sum
}

/// Query rows and key positions per tile of llama.cpp's tiled flash attention
/// (`GGML_FA_TILE_Q`, `GGML_FA_TILE_KV`), which it takes for 64 query rows or more.
pub const TILE: usize = 64;

/// Keys `[len, d]` (f32) in tiles of [`TILE`] positions, each transposed to `[d][TILE]` (zero
/// beyond the last position), into `out`: the layout [`attend_row_tiled`] reads.
pub fn transpose_tiles(k: &[f32], d: usize, out: &mut Vec<f32>) {
    let len = k.len() / d.max(1);
    out.clear();
    out.resize(len.div_ceil(TILE) * d * TILE, 0.0);
    for (j, row) in k.chunks_exact(d.max(1)).enumerate() {
        let base = (j / TILE) * d * TILE + j % TILE;
        for (i, &x) in row.iter().enumerate() {
            out[base + i * TILE] = x;
        }
    }
}

/// One query row over the keys at positions `lo..hi`, as llama.cpp's tiled flash attention
/// computes a prompt of [`TILE`] rows or more (module docs): `q` in f32, `kt` the keys from
/// [`transpose_tiles`] (tiles aligned at position 0), `v` the values `[len, d]` in f32.
/// Writes the `q.len()` outputs to `out` (also the running sum while it runs).
pub fn attend_row_tiled(
    q: &[f32],
    (kt, v): (&[f32], &[f32]),
    (lo, hi): (usize, usize),
    scores: Scores,
    out: &mut [f32],
) {
    let d = q.len();
    let acc = out;
    acc.fill(0.0);
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
    let mut p = [0f32; TILE];
    for tile in lo / TILE..hi.div_ceil(TILE) {
        let t0 = tile * TILE;
        let (a, b) = (lo.max(t0) - t0, hi.min(t0 + TILE) - t0);
        // Scores of the tile's slots: one fused chain per slot, over the head dimension.
        let kb = &kt[tile * d * TILE..][..d * TILE];
        let mut sc = [0f32; TILE];
        for (k, &qk) in q.iter().enumerate() {
            let col = &kb[k * TILE..(k + 1) * TILE];
            for (acc, &x) in sc.iter_mut().zip(col) {
                *acc = x.mul_add(qk, *acc);
            }
        }
        let mut tile_max = f32::NEG_INFINITY;
        for (j, x) in sc.iter_mut().enumerate() {
            if j < a || j >= b {
                *x = f32::NEG_INFINITY;
            } else {
                *x = scores.of(*x);
                tile_max = tile_max.max(*x);
            }
        }
        if tile_max == f32::NEG_INFINITY {
            continue;
        }
        let new_max = max.max(tile_max);
        if new_max > max {
            let ms = (max - new_max).exp();
            for x in acc.iter_mut() {
                *x *= ms;
            }
            sum *= ms;
        }
        max = new_max;
        let mut tile_sum = 0f64;
        for (pc, sc) in p.chunks_exact_mut(16).zip(sc.chunks_exact(16)) {
            for (pv, &x) in pc.iter_mut().zip(sc) {
                *pv = crate::ggml::v_expf(x - max);
            }
            tile_sum += f64::from(reduce16(pc));
        }
        sum = (f64::from(sum) + tile_sum) as f32;
        for (j, &w) in p.iter().enumerate().take(b).skip(a) {
            for (acc, &x) in acc.iter_mut().zip(&v[(t0 + j) * d..(t0 + j + 1) * d]) {
                *acc = x.mul_add(w, *acc);
            }
        }
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for o in acc.iter_mut() {
        *o *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f16::tests::halves;
    use crate::simd::Simd;
    use proptest::prelude::*;

    /// The row the plain way: f64 softmax of the f16 inputs' scores, weighted sum of values.
    fn reference(q: &[f32], k: Rows<'_>, v: Rows<'_>, scores: Scores) -> Vec<f64> {
        let s: Vec<f64> = (0..k.count())
            .map(|j| {
                let dot: f64 = k
                    .row(j)
                    .iter()
                    .zip(q)
                    .map(|(a, b)| f64::from(a.to_f32()) * f64::from(*b))
                    .sum();
                f64::from(scores.of(dot as f32))
            })
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let total: f64 = w.iter().sum();
        (0..q.len())
            .map(|i| {
                (0..k.count())
                    .map(|j| w[j] * f64::from(v.row(j)[i].to_f32()))
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    proptest! {
        /// Every build this CPU has returns the scalar twin's bits, and the twin is the
        /// softmax-weighted sum of values within f16 rounding.
        #[test]
        fn every_build_matches_the_scalar_twin(
            seed in any::<u64>(),
            d in prop_oneof![Just(64usize), Just(128), Just(80), Just(256), 1usize..200],
            count in 0usize..40,
            gap in 0usize..9,
            mag in prop_oneof![Just(0.1f32), Just(1.0f32), Just(4.0f32)],
            cap in prop_oneof![Just(None), Just(Some(2.0f32)), Just(Some(30.0f32))],
        ) {
            let stride = d + gap;
            let keys = halves(seed, stride * count + d, mag);
            let values = halves(seed ^ 5, stride * count + d, 1.0);
            let q: Vec<f32> = halves(seed ^ 11, d, mag).iter().map(|x| x.to_f32()).collect();
            let (k, v) = (Rows::new(&keys, stride, d, count).unwrap(), Rows::new(&values, stride, d, count).unwrap());
            let scores = Scores::capped(0.125, cap);
            let mut twin = vec![0f32; d];
            attend_row(Kernels::scalar(), &q, k, v, scores, &mut twin);
            for simd in Simd::available() {
                let mut got = vec![1f32; d];
                attend_row(Kernels::new(simd).unwrap(), &q, k, v, scores, &mut got);
                let (g, t): (Vec<u32>, Vec<u32>) = (got.iter().map(|x| x.to_bits()).collect(), twin.iter().map(|x| x.to_bits()).collect());
                prop_assert_eq!(g, t, "{:?}", simd);
            }
            if count == 0 {
                prop_assert!(twin.iter().all(|&x| x == 0.0));
            } else {
                for (got, want) in twin.iter().zip(reference(&q, k, v, scores)) {
                    // f16 rounding of the running sum, values of size ≤ 1, ≤ 40 keys.
                    prop_assert!((f64::from(*got) - want).abs() < 2e-2, "{got} vs {want}");
                }
            }
        }

        /// The tiled row is the softmax-weighted sum of the values it sees, in f32.
        #[test]
        fn the_tiled_row_is_the_softmax_of_its_window(
            seed in any::<u64>(),
            d in prop_oneof![Just(64usize), 1usize..100],
            len in 1usize..150,
            lo_frac in 0f64..1.0,
            cap in prop_oneof![Just(None), Just(Some(2.0f32))],
        ) {
            let keys = halves(seed, len * d, 2.0);
            let values = halves(seed ^ 5, len * d, 1.0);
            let q: Vec<f32> = halves(seed ^ 11, d, 2.0).iter().map(|x| x.to_f32()).collect();
            let (k32, v32): (Vec<f32>, Vec<f32>) = (keys.iter().map(|x| x.to_f32()).collect(), values.iter().map(|x| x.to_f32()).collect());
            let mut kt = Vec::new();
            transpose_tiles(&k32, d, &mut kt);
            let hi = len;
            let lo = ((len as f64) * lo_frac) as usize % len;
            let scores = Scores::capped(0.125, cap);
            let mut out = vec![0f32; d];
            attend_row_tiled(&q, (&kt, &v32), (lo, hi), scores, &mut out);
            let (k, v) = (Rows::new(&keys[lo * d..], d, d, hi - lo).unwrap(), Rows::new(&values[lo * d..], d, d, hi - lo).unwrap());
            for (got, want) in out.iter().zip(reference(&q, k, v, scores)) {
                prop_assert!((f64::from(*got) - want).abs() < 1e-4, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn rows_must_lie_in_their_slice() {
        let data = [f16::ZERO; 10];
        assert!(Rows::new(&data, 4, 2, 3).is_some(), "rows at 0, 4, 8");
        assert!(
            Rows::new(&data, 4, 3, 3).is_none(),
            "the last row ends at 11"
        );
        assert!(Rows::new(&data, 4, 3, 0).is_some());
        assert!(Rows::new(&data, usize::MAX, 1, 3).is_none());
    }
}
