//! Tests of the K-quant kernels (`fluent_ai_candle_kernels::quant::kquant`) against GGML's
//! definition and candle's quantized matmul and `Q8_K` quantizer, on weights candle quantizes.

use fluent_ai_candle_kernels::quant::kquant::*;
use fluent_ai_candle_kernels::quant::WeightBlock;

/// A weight row in one of the K-quant formats.
#[derive(Clone, Copy)]
enum KRow<'a> {
    /// `Q4_K` blocks.
    Q4K(&'a [BlockQ4K]),
    /// `Q6_K` blocks.
    Q6K(&'a [BlockQ6K]),
    /// `Q5_K` blocks.
    Q5K(&'a [BlockQ5K]),
    /// `Q3_K` blocks.
    Q3K(&'a [BlockQ3K]),
    /// `Q2_K` blocks.
    Q2K(&'a [BlockQ2K]),
}

/// The K-quant formats tested, in the order the tests' format index `f` picks them.
const DTYPES: [candle_core::quantized::GgmlDType; 5] = {
    use candle_core::quantized::GgmlDType::*;
    [Q4K, Q6K, Q5K, Q3K, Q2K]
};

mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use fluent_ai_candle_kernels::buf::WeightBuf;
    use fluent_ai_candle_kernels::quant::{dots, read_blocks, MAX_TILE};
    use fluent_ai_candle_kernels::simd::{Kernels, Simd};
    use proptest::prelude::*;

    /// The widths tested (Gemma 3 270M's K-quant layers have 1024 and 2048).
    const KS: [usize; 4] = [256, 512, 1024, 2048];

    /// Deterministic test values: uniform in `±scale`, with every `outlier_every`-th value
    /// (if any) 40 times larger, like the few huge channels of Gemma's activations.
    fn values(len: usize, seed: u64, scale: f32, outlier_every: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0;
                let big = outlier_every > 0 && i % outlier_every == outlier_every / 2;
                u * scale * if big { 40.0 } else { 1.0 }
            })
            .collect()
    }

    /// A `[n, k]` weight matrix quantized by candle, as candle's tensor and our blocks.
    fn quantized<B: WeightBlock>(
        w: &[f32],
        n: usize,
        k: usize,
        dtype: GgmlDType,
    ) -> (QTensor, WeightBuf<B>) {
        let t = Tensor::from_vec(w.to_vec(), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let blocks = read_blocks(&q.data().unwrap());
        assert_eq!(blocks.len(), n * k / QK_K);
        (q, blocks)
    }

    /// One activation row quantized by [`quantize_row_q8k`].
    fn quantize_acts(x: &[f32]) -> Vec<ActBlockK> {
        let mut a = vec![ActBlockK::default(); x.len() / QK_K];
        quantize_row_q8k(x, &mut a);
        a
    }

    /// Per-value weight magnitudes `|d·scale·q| + |dmin·min|`: what an f32 rounding of the
    /// weight or of a partial sum can be relative to.
    fn magnitudes(w: KRow<'_>) -> Vec<f64> {
        let mut out = Vec::new();
        match w {
            KRow::Q4K(w) => {
                for b in w {
                    for v in 0..QK_K {
                        let (j, l) = (v / 32, v % 32);
                        let byte = b.qs[32 * (j / 2) + l];
                        let q = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                        out.push(
                            (b.d as f64 * b.scales[j] as f64 * q as f64).abs()
                                + (b.dmin as f64 * b.mins[j] as f64).abs(),
                        );
                    }
                }
            }
            KRow::Q6K(w) => {
                for b in w {
                    for c in 0..8 {
                        for (l, &q) in q6_chunk(b, c).iter().enumerate() {
                            let s = b.scales[2 * c + l / 16] as f64;
                            // The kernel's lanes hold the unsigned `q` (q + 32) products and
                            // take the 32s off per sub-block pair: partial sums as large as
                            // `|d·s|·(q + 32 + 32)` per value.
                            out.push((b.d as f64 * s).abs() * (q as f64 + 64.0));
                        }
                    }
                }
            }
            KRow::Q5K(w) => {
                for b in w {
                    for c in 0..8 {
                        for &q in &q5_chunk(b, c) {
                            out.push(
                                (b.d as f64 * b.scales[c] as f64 * q as f64).abs()
                                    + (b.dmin as f64 * b.mins[c] as f64).abs(),
                            );
                        }
                    }
                }
            }
            KRow::Q3K(w) => {
                for b in w {
                    for c in 0..8 {
                        for (l, &q) in q3_chunk(b, c).iter().enumerate() {
                            let s = b.scales[2 * c + l / 16] as f64;
                            out.push((b.d as f64 * s * q as f64).abs());
                        }
                    }
                }
            }
            KRow::Q2K(w) => {
                for b in w {
                    for c in 0..8 {
                        for (l, &q) in q2_chunk(b, c).iter().enumerate() {
                            let s = 2 * c + l / 16;
                            out.push(
                                (b.d as f64 * b.scales[s] as f64 * q as f64).abs()
                                    + (b.dmin as f64 * b.mins[s] as f64).abs(),
                            );
                        }
                    }
                }
            }
        }
        out
    }

    /// The row's values by our dequantizers.
    fn dequantize(w: KRow<'_>) -> Vec<f32> {
        let mut out = Vec::new();
        match w {
            KRow::Q4K(w) => w.iter().for_each(|b| dequantize_q4k(b, &mut out)),
            KRow::Q6K(w) => w.iter().for_each(|b| dequantize_q6k(b, &mut out)),
            KRow::Q5K(w) => w.iter().for_each(|b| dequantize_q5k(b, &mut out)),
            KRow::Q3K(w) => w.iter().for_each(|b| dequantize_q3k(b, &mut out)),
            KRow::Q2K(w) => w.iter().for_each(|b| dequantize_q2k(b, &mut out)),
        }
        out
    }

    /// The scalar twin for the row's format.
    fn scalar(w: KRow<'_>, a: &[ActBlockK]) -> f32 {
        match w {
            KRow::Q4K(w) => dot_q4k(w, a),
            KRow::Q6K(w) => dot_q6k(w, a),
            KRow::Q5K(w) => dot_q5k(w, a),
            KRow::Q3K(w) => dot_q3k(w, a),
            KRow::Q2K(w) => dot_q2k(w, a),
        }
    }

    /// The scalar twin in the prompt order (`Q4_K` grouped, the others tiled).
    fn prompt_scalar(w: KRow<'_>, a: &[ActBlockK]) -> f32 {
        match w {
            KRow::Q4K(w) => dot_q4k_grouped(w, a),
            KRow::Q6K(w) => dot_q6k_tiled(w, a),
            KRow::Q5K(w) => dot_q5k_tiled(w, a),
            KRow::Q3K(w) => dot_q3k_tiled(w, a),
            KRow::Q2K(w) => dot_q2k_tiled(w, a),
        }
    }

    /// GGML's definition of one output in f64: the dequantized weights (candle's) times the
    /// exactly dequantized `Q8_K` activations, and the slack f32 arithmetic may take: 2⁻²⁰
    /// (16 f32 roundings, enough for 8 blocks plus the weights' own rounding) of
    /// `Σ magnitude·|activation|`.
    fn reference(w_deq: &[f32], mags: &[f64], a: &[ActBlockK]) -> (f64, f64) {
        let mut sum = 0f64;
        let mut slack = 0f64;
        for (v, (&w, &m)) in w_deq.iter().zip(mags).enumerate() {
            let b = &a[v / QK_K];
            let x = b.d as f64 * b.qs[v % QK_K] as f64;
            sum += w as f64 * x;
            slack += m * x.abs();
        }
        (sum, slack * 2f64.powi(-20))
    }

    /// GGML's `iscale` for one block: `-127 / max`, `max` its first largest-magnitude value.
    fn iscale(xs: &[f32]) -> f32 {
        let max = xs
            .iter()
            .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
        -127.0 / max
    }

    /// Bit patterns, for exact comparisons.
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// One case: `n` weight rows of width `k` in `dtype`, `m` activation rows.
    struct Case {
        /// One of [`DTYPES`].
        dtype: GgmlDType,
        /// Weight rows.
        n: usize,
        /// Row width.
        k: usize,
        /// Activation rows.
        m: usize,
        /// `[n, k]` weights before quantization.
        w: Vec<f32>,
        /// `[m, k]` activations.
        x: Vec<f32>,
    }

    /// A case in format `DTYPES[f]` of width `KS[ki]`, weights of about
    /// `0.05·10^wexp` and activations of about `10^xexp` (outliers 40 times larger).
    fn case(f: usize, n: usize, ki: usize, m: usize, seed: u64, wexp: i32, xexp: i32) -> Case {
        let k = KS[ki];
        let dtype = DTYPES[f];
        let w = values(n * k, seed ^ 1, 10f32.powi(wexp) * 0.05, 97);
        let mut x = values(m * k, seed ^ 2, 10f32.powi(xexp), 61);
        // A block of zeros now and then (d = 0).
        if seed.is_multiple_of(5) {
            x[..QK_K].fill(0.0);
        }
        Case {
            dtype,
            n,
            k,
            m,
            w,
            x,
        }
    }

    /// Runs `check` with the case's weights as our blocks (and candle's tensor).
    fn with_weights<T>(c: &Case, check: impl FnOnce(QTensor, KRow<'_>) -> T) -> T {
        match c.dtype {
            GgmlDType::Q4K => {
                let (q, b) = quantized::<BlockQ4K>(&c.w, c.n, c.k, c.dtype);
                check(q, KRow::Q4K(&b))
            }
            GgmlDType::Q5K => {
                let (q, b) = quantized::<BlockQ5K>(&c.w, c.n, c.k, c.dtype);
                check(q, KRow::Q5K(&b))
            }
            GgmlDType::Q3K => {
                let (q, b) = quantized::<BlockQ3K>(&c.w, c.n, c.k, c.dtype);
                check(q, KRow::Q3K(&b))
            }
            GgmlDType::Q2K => {
                let (q, b) = quantized::<BlockQ2K>(&c.w, c.n, c.k, c.dtype);
                check(q, KRow::Q2K(&b))
            }
            _ => {
                let (q, b) = quantized::<BlockQ6K>(&c.w, c.n, c.k, c.dtype);
                check(q, KRow::Q6K(&b))
            }
        }
    }

    /// Row `r` of `kb` blocks.
    fn row(w: KRow<'_>, r: usize, kb: usize) -> KRow<'_> {
        match w {
            KRow::Q4K(w) => KRow::Q4K(&w[r * kb..(r + 1) * kb]),
            KRow::Q6K(w) => KRow::Q6K(&w[r * kb..(r + 1) * kb]),
            KRow::Q5K(w) => KRow::Q5K(&w[r * kb..(r + 1) * kb]),
            KRow::Q3K(w) => KRow::Q3K(&w[r * kb..(r + 1) * kb]),
            KRow::Q2K(w) => KRow::Q2K(&w[r * kb..(r + 1) * kb]),
        }
    }

    /// Dequantization, the scalar dot against GGML's definition, and the AVX2 kernels
    /// against the scalar twins (bit for bit, for every row count, batch-invariant).
    fn check_case(c: &Case) -> Result<(), String> {
        let kb = c.k / QK_K;
        let acts: Vec<Vec<ActBlockK>> = c.x.chunks_exact(c.k).map(quantize_acts).collect();
        with_weights(c, |q, w| {
            let ours = dequantize(w);
            let theirs: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            if bits(&ours) != bits(&theirs) {
                return Err(format!(
                    "{:?}: dequantization differs from candle's",
                    c.dtype
                ));
            }
            for r in 0..c.n {
                let wr = row(w, r, kb);
                let mags = magnitudes(wr);
                for (i, a) in acts.iter().enumerate() {
                    let got = scalar(wr, a);
                    let (want, slack) = reference(&ours[r * c.k..(r + 1) * c.k], &mags, a);
                    if (got as f64 - want).abs() > slack {
                        return Err(format!(
                            "{:?} row {r} x {i}: scalar {got} vs GGML {want} (slack {slack})",
                            c.dtype
                        ));
                    }
                }
                check_simd(wr, &acts)?;
            }
            Ok(())
        })
    }

    /// Every SIMD build this CPU has, for 1..=4 rows, equals the scalar twin bit for bit; so
    /// does every row of a multi-row call (the rows cycle through the activation rows given);
    /// both in the one-row order and in the prompt order (`Q4_K` grouped, the others tiled).
    fn check_simd(w: KRow<'_>, acts: &[Vec<ActBlockK>]) -> Result<(), String> {
        let pick = |i: usize| acts[i % acts.len()].as_slice();
        for prompt in [false, true] {
            let twin = |a: &[ActBlockK]| match prompt {
                true => prompt_scalar(w, a),
                false => scalar(w, a),
            };
            let want: Vec<u32> = (0..4).map(|i| twin(pick(i)).to_bits()).collect();
            for simd in Simd::available() {
                let kernels = Kernels::new(simd).unwrap();
                for n in 1..=4 {
                    let rows: Vec<&[ActBlockK]> = (0..n).map(pick).collect();
                    let mut out = [[0f32; MAX_TILE]; 1];
                    match w {
                        KRow::Q4K(w) => dots(kernels, w, w.len(), (&rows, &[]), prompt, &mut out),
                        KRow::Q6K(w) => dots(kernels, w, w.len(), (&rows, &[]), prompt, &mut out),
                        KRow::Q5K(w) => dots(kernels, w, w.len(), (&rows, &[]), prompt, &mut out),
                        KRow::Q3K(w) => dots(kernels, w, w.len(), (&rows, &[]), prompt, &mut out),
                        KRow::Q2K(w) => dots(kernels, w, w.len(), (&rows, &[]), prompt, &mut out),
                    }
                    let g = &out[0][..n];
                    if bits(g) != want[..n] {
                        return Err(format!(
                            "{simd:?} {g:?} vs scalar {:?} (prompt order: {prompt})",
                            &want[..n]
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// How far our product is from candle's `QMatMul` on the same weights (candle quantizes
    /// the activations to `Q8_K` too, rounding ties away from zero).
    #[derive(Debug, Default, Clone, Copy)]
    struct Distance {
        /// Largest `(|ours − candle| − ties) / Σ magnitude·|x|` (the outputs' natural scale),
        /// where `ties` is `Σ magnitude·|Δx|` over the activations candle quantized a step
        /// away from ours (exact halfway cases).
        relative: f64,
        /// How many activation values candle quantized differently (halfway cases).
        ties: usize,
        /// Largest `|ours − candle|`.
        absolute: f64,
        /// Largest `|ours − candle|` over the largest `|candle|` of the same case.
        of_output: f64,
    }

    impl Distance {
        /// The worse of both, field by field.
        fn max(self, o: Self) -> Self {
            Self {
                relative: self.relative.max(o.relative),
                ties: self.ties + o.ties,
                absolute: self.absolute.max(o.absolute),
                of_output: self.of_output.max(o.of_output),
            }
        }
    }

    /// [`Distance`] of our scalar product from candle's for one case.
    fn against_candle(c: &Case) -> Distance {
        let kb = c.k / QK_K;
        let acts: Vec<Vec<ActBlockK>> = c.x.chunks_exact(c.k).map(quantize_acts).collect();
        with_weights(c, |q, w| {
            let x = Tensor::from_vec(c.x.clone(), (c.m, c.k), &Device::Cpu).unwrap();
            let mm = QMatMul::from_qtensor(q).unwrap();
            let theirs: Vec<Vec<f32>> = mm.forward(&x).unwrap().to_vec2().unwrap();
            let largest = theirs
                .iter()
                .flatten()
                .fold(0f64, |m, v| m.max(v.abs() as f64));
            let mut d = Distance::default();
            let rows: Vec<(KRow<'_>, Vec<f64>)> = (0..c.n)
                .map(|r| (row(w, r, kb), magnitudes(row(w, r, kb))))
                .collect();
            for ((a, xr), out) in acts.iter().zip(c.x.chunks_exact(c.k)).zip(&theirs) {
                // Where candle's Q8_K activations differ from ours (ties), by how much.
                let mut cq = vec![BlockQ8K::zeros(); kb];
                BlockQ8K::from_float(xr, &mut cq);
                let mut cx = vec![0f32; c.k];
                BlockQ8K::to_float(&cq, &mut cx);
                let dx: Vec<f64> = cx
                    .iter()
                    .enumerate()
                    .map(|(v, &t)| {
                        let b = &a[v / QK_K];
                        (t as f64 - (b.d * b.qs[v % QK_K] as f32) as f64).abs()
                    })
                    .collect();
                d.ties += dx.iter().filter(|&&e| e > 0.0).count();
                for (&(wr, ref mags), &t) in rows.iter().zip(out) {
                    let scale: f64 = mags.iter().zip(xr).map(|(m, x)| m * x.abs() as f64).sum();
                    let ties: f64 = mags.iter().zip(&dx).map(|(m, e)| m * e).sum();
                    let diff = (scalar(wr, a) as f64 - t as f64).abs();
                    d.absolute = d.absolute.max(diff);
                    if scale > 0.0 {
                        d.relative = d.relative.max((diff - ties).max(0.0) / scale);
                    }
                    if largest > 0.0 {
                        d.of_output = d.of_output.max(diff / largest);
                    }
                }
            }
            d
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Dequantization equals candle's, the scalar dots equal GGML's definition within f32
        /// rounding, and the AVX2 kernels equal the scalar twins bit for bit, over both
        /// formats, widths of 1..=8 super-blocks and magnitudes from 10⁻³ to 10⁴.
        #[test]
        fn kernels_match_the_definition(
            f in 0usize..5,
            n in 1usize..5,
            ki in 0usize..4,
            m in 1usize..5,
            seed in any::<u64>(),
            wexp in -2i32..2,
            xexp in -3i32..3,
        ) {
            let c = case(f, n, ki, m, seed, wexp, xexp);
            let r = check_case(&c);
            prop_assert!(r.is_ok(), "{:?}", r);
        }

        /// Close to candle's quantized matmul on the same weights: within 2⁻¹⁸ of
        /// `Σ magnitude·|x|` (f32 rounding in both) beyond what candle's rounding of halfway
        /// activations away from zero accounts for.
        #[test]
        fn close_to_candle(
            f in 0usize..5,
            ki in 0usize..4,
            m in 1usize..6,
            seed in any::<u64>(),
            xexp in -3i32..3,
        ) {
            let c = case(f, 8, ki, m, seed, 0, xexp);
            let d = against_candle(&c);
            prop_assert!(d.relative <= 2f64.powi(-18), "{:?}: {d:?}", c.dtype);
        }

        /// Our `Q8_K` quantization equals candle's `BlockQ8K::from_float` except on exact
        /// halfway cases, which GGML (and we) round to even and candle away from zero.
        #[test]
        fn q8k_matches_candle_but_for_ties(
            ki in 0usize..4,
            seed in any::<u64>(),
            xexp in -3i32..4,
        ) {
            let k = KS[ki];
            let x = values(k, seed, 10f32.powi(xexp), 61);
            let ours = quantize_acts(&x);
            let mut theirs = vec![BlockQ8K::zeros(); k / QK_K];
            BlockQ8K::from_float(&x, &mut theirs);
            let mut deq = vec![0f32; k];
            BlockQ8K::to_float(&theirs, &mut deq);
            for (v, (&t, &xv)) in deq.iter().zip(&x).enumerate() {
                let b = &ours[v / QK_K];
                let q = b.qs[v % QK_K];
                let o = b.d * q as f32;
                if o.to_bits() != t.to_bits() {
                    let scaled = iscale(&x[v / QK_K * QK_K..][..QK_K]) * xv;
                    prop_assert!(
                        (scaled - scaled.trunc()).abs() == 0.5 && q % 2 == 0,
                        "value {v}: ours {o} ({q}), candle {t}"
                    );
                }
            }
            for b in &ours {
                for (s, q) in b.bsums.iter().zip(b.qs.chunks_exact(16)) {
                    prop_assert_eq!(*s as i32, q.iter().map(|&q| q as i32).sum::<i32>());
                }
            }
        }
    }

    #[test]
    fn q8k_rounds_halfway_cases_to_even_like_ggml() {
        // max = 127 makes iscale exactly -1, so every x·iscale below is exact.
        let mut x = vec![0f32; QK_K];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        x[3] = 0.5;
        x[4] = -126.5;
        let a = quantize_acts(&x);
        assert_eq!(a[0].d, -1.0);
        assert_eq!(&a[0].qs[..5], &[-127, -2, 4, 0, 126]);
        assert_eq!(a[0].bsums[0], -127 - 2 + 4 + 126);
        // candle rounds these away from zero.
        let mut theirs = vec![BlockQ8K::zeros(); 1];
        BlockQ8K::from_float(&x, &mut theirs);
        let mut deq = vec![0f32; QK_K];
        BlockQ8K::to_float(&theirs, &mut deq);
        assert_eq!(&deq[..5], &[127.0, 3.0, -4.0, 1.0, -127.0]);
    }

    #[test]
    fn q8k_takes_the_first_value_of_largest_magnitude() {
        let mut x = vec![0f32; 2 * QK_K];
        x[3] = -5.0;
        x[7] = 5.0;
        x[QK_K + 1] = 5.0;
        x[QK_K + 2] = -5.0;
        let a = quantize_acts(&x);
        assert_eq!(a[0].d, 1.0 / (127.0 / 5.0));
        assert_eq!((a[0].qs[3], a[0].qs[7]), (-127, 127));
        assert_eq!(a[1].d, 1.0 / (-127.0 / 5.0));
        assert_eq!((a[1].qs[1], a[1].qs[2]), (-127, 127));
        assert_eq!(quantize_acts(&[0.0; QK_K])[0], ActBlockK::default());
    }

    #[test]
    fn block_sizes_match_ggml() {
        assert_eq!(BlockQ4K::BYTES, GgmlDType::Q4K.type_size());
        assert_eq!(BlockQ6K::BYTES, GgmlDType::Q6K.type_size());
        assert_eq!(BlockQ5K::BYTES, GgmlDType::Q5K.type_size());
        assert_eq!(BlockQ3K::BYTES, GgmlDType::Q3K.type_size());
        assert_eq!(BlockQ2K::BYTES, GgmlDType::Q2K.type_size());
        assert_eq!(QK_K, GgmlDType::Q4K.block_size());
    }

    /// Prints the largest differences from candle seen over a fixed set of cases (for the
    /// record; the proptests assert the bounds): 1 and 4 activation rows (candle's CPU path
    /// differs), every width, activations of about 0.1 to 100.
    #[test]
    fn largest_difference_from_candle() {
        for f in 0..DTYPES.len() {
            let mut worst = Distance::default();
            for i in 0..32 {
                let m = if i % 2 == 0 { 1 } else { 4 };
                let c = case(f, 8, i % 4, m, 1000 + i as u64, 0, (i / 4) as i32 % 4 - 1);
                worst = worst.max(against_candle(&c));
            }
            eprintln!(
                "{}: relative {:.2e}, absolute {:.2e}, of largest output {:.2e}, {} ties",
                ["Q4_K", "Q6_K", "Q5_K", "Q3_K", "Q2_K"][f],
                worst.relative,
                worst.absolute,
                worst.of_output,
                worst.ties
            );
            assert!(worst.relative <= 2f64.powi(-18));
        }
    }
}
