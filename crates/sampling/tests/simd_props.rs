//! Every SIMD backend available on this CPU must return exactly the scalar twin's bits.

use fluent_ai_candle_sampling::simd::{self, Backend};
use proptest::prelude::*;

fn backends() -> Vec<Backend> {
    simd::available_backends()
        .into_iter()
        .filter(|b| *b != Backend::Scalar)
        .collect()
}

fn logits() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![
            8 => -30.0f32..30.0,
            1 => Just(f32::NEG_INFINITY),
            1 => (-3i32..3).prop_map(|i| i as f32), // ties
        ],
        0..300,
    )
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn scan_and_argmax_match(x in logits()) {
        let s = simd::scan_f32_with(Backend::Scalar, &x);
        let a = simd::argmax_f32_with(Backend::Scalar, &x);
        for b in backends() {
            let t = simd::scan_f32_with(b, &x);
            prop_assert_eq!(s.1, t.1, "{:?}", b);
            prop_assert_eq!(s.0.to_bits(), t.0.to_bits(), "{:?}", b);
            prop_assert_eq!(a, simd::argmax_f32_with(b, &x), "{:?}", b);
        }
        // argmax: lowest index among the maxima.
        if let Some((i, v)) = a {
            prop_assert!(x.iter().all(|&y| y <= v));
            prop_assert!(x[..i].iter().all(|&y| y < v));
        }
    }

    #[test]
    fn exp_sums_match_bitwise(x in logits()) {
        let max = simd::scan_f32_with(Backend::Scalar, &x).0;
        let max = if max.is_finite() { max } else { 0.0 };
        let mut xs = x.clone();
        let s = simd::exp_sub_sum_f32_with(Backend::Scalar, &mut xs, max);
        prop_assert_eq!(s.to_bits(), simd::exp_sum_f32_with(Backend::Scalar, &x, max).to_bits());
        for b in backends() {
            let mut xb = x.clone();
            let sb = simd::exp_sub_sum_f32_with(b, &mut xb, max);
            prop_assert_eq!(s.to_bits(), sb.to_bits(), "{:?}", b);
            prop_assert_eq!(bits(&xs), bits(&xb), "{:?}", b);
            prop_assert_eq!(s.to_bits(), simd::exp_sum_f32_with(b, &x, max).to_bits(), "{:?}", b);
        }
    }

    #[test]
    fn cumsum_matches_bitwise(x in prop::collection::vec(0.0f32..1.0, 0..300)) {
        let mut xs = x.clone();
        simd::simd_cumsum_f32_with(Backend::Scalar, &mut xs);
        // Close to the sequential prefix sum.
        let mut acc = 0.0f64;
        for (i, v) in x.iter().enumerate() {
            acc += *v as f64;
            prop_assert!((xs[i] as f64 - acc).abs() <= 1e-4 * acc.max(1.0));
        }
        for b in backends() {
            let mut xb = x.clone();
            simd::simd_cumsum_f32_with(b, &mut xb);
            prop_assert_eq!(bits(&xs), bits(&xb), "{:?}", b);
        }
    }

    #[test]
    fn masked_fill_and_scale_match(x in logits(), seed in any::<u64>(), s in 0.1f32..4.0) {
        let words: Vec<u64> = (0..x.len().div_ceil(64))
            .map(|i| seed.rotate_left(i as u32 * 7) ^ (i as u64).wrapping_mul(0x9E37_79B9))
            .collect();
        let mut xs = x.clone();
        simd::masked_fill_f32_with(Backend::Scalar, &mut xs, &words, -1.0);
        for (i, v) in xs.iter().enumerate() {
            let allowed = (words[i / 64] >> (i % 64)) & 1 == 1;
            prop_assert_eq!(v.to_bits(), if allowed { x[i] } else { -1.0 }.to_bits());
        }
        let mut ys = x.clone();
        simd::scale_f32_with(Backend::Scalar, &mut ys, s);
        for b in backends() {
            let mut xb = x.clone();
            simd::masked_fill_f32_with(b, &mut xb, &words, -1.0);
            prop_assert_eq!(bits(&xs), bits(&xb), "{:?}", b);
            let mut yb = x.clone();
            simd::scale_f32_with(b, &mut yb, s);
            prop_assert_eq!(bits(&ys), bits(&yb), "{:?}", b);
        }
    }

    #[test]
    fn top_k_matches_sort(x in logits(), k in 1usize..50) {
        let mut expect: Vec<u32> = (0..x.len() as u32).filter(|&i| x[i as usize] > f32::NEG_INFINITY).collect();
        expect.sort_by(|&a, &b| x[b as usize].total_cmp(&x[a as usize]).then(a.cmp(&b)));
        expect.truncate(k);
        for b in simd::available_backends() {
            let mut scratch = vec![0u32; k + 16];
            let mut out = vec![0u32; k];
            let n = simd::simd_top_k_f32_with(b, &x, k, &mut scratch, &mut out);
            prop_assert_eq!(&out[..n], &expect[..], "{:?}", b);
        }
    }
}

#[test]
fn exp_is_accurate() {
    let mut x = -87.3f32; // below -87.34 the kernel flushes to 0 by design
    while x < 0.0 {
        let got = simd::exp_f32(x) as f64;
        let want = (x as f64).exp();
        assert!(
            (got - want).abs() <= 4e-7 * want + 1e-38,
            "exp({x}) = {got}, want {want}"
        );
        x += 0.0137;
    }
    assert_eq!(simd::exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(simd::exp_f32(0.0), 1.0);
}

#[test]
fn softmax_and_lse() {
    let mut x = vec![1.0f32, 2.0, 3.0, f32::NEG_INFINITY];
    let lse = simd::simd_softmax_f32(&mut x).unwrap();
    let want = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    assert!((lse as f64 - want).abs() < 1e-5);
    assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert_eq!(x[3], 0.0);
    assert!(simd::simd_softmax_f32(&mut []).is_none());
    assert!(simd::log_sum_exp_f32(&[f32::NEG_INFINITY]).is_none());
}

#[test]
fn large_inputs_match_across_backends() {
    // Long vectors exercise the steady state of every loop.
    let mut r = fluent_ai_candle_sampling::Xoshiro256::seed_from_u64(3);
    let x: Vec<f32> = (0..49_157).map(|_| r.next_f32() * 20.0 - 10.0).collect();
    let max = simd::scan_f32_with(Backend::Scalar, &x).0;
    let s = simd::exp_sum_f32_with(Backend::Scalar, &x, max);
    let mut c = x.iter().map(|v| v.abs()).collect::<Vec<_>>();
    let mut cs = c.clone();
    simd::simd_cumsum_f32_with(Backend::Scalar, &mut cs);
    for b in backends() {
        assert_eq!(s.to_bits(), simd::exp_sum_f32_with(b, &x, max).to_bits());
        simd::simd_cumsum_f32_with(b, &mut c);
        assert_eq!(bits(&cs), bits(&c));
        c = x.iter().map(|v| v.abs()).collect();
    }
}

#[test]
fn override_switches_backend() {
    assert!(simd::set_backend_override(Some(Backend::Scalar)));
    assert_eq!(simd::backend(), Backend::Scalar);
    assert!(simd::set_backend_override(None));
    if std::env::var("FLUENT_AI_CANDLE_SIMD").as_deref() == Ok("scalar") {
        assert_eq!(simd::backend(), Backend::Scalar);
    }
}
