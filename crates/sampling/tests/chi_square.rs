//! Statistics, not single draws: for each processor, the frequencies of many seeded draws
//! must match the intended distribution (Pearson chi-square at p < 0.001, fixed seeds so the
//! test is deterministic).

use fluent_ai_candle_sampling::*;

const DRAWS: usize = 20_000;

/// Chi-square critical value at p = 0.001 (Wilson–Hilferty approximation, z = 3.0902).
fn critical(df: usize) -> f64 {
    let d = df as f64;
    let z = 3.0902;
    d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Keeps `keep` tokens' probabilities (others 0) and renormalises.
fn restrict(p: &[f64], keep: impl Fn(usize) -> bool) -> Vec<f64> {
    let q: Vec<f64> = p
        .iter()
        .enumerate()
        .map(|(i, &x)| if keep(i) { x } else { 0.0 })
        .collect();
    let z: f64 = q.iter().sum();
    q.into_iter().map(|x| x / z).collect()
}

const L: [f64; 10] = [2.0, 1.5, 1.0, 0.7, 0.3, 0.0, -0.5, -1.0, -2.0, -3.0];

fn check(name: &str, cfg: SamplingConfig, logits: &[f64], history: &[u32], expect: &[f64]) {
    let v = logits.len();
    let mut s = Sampler::new(cfg, v, 0xC0FFEE).unwrap();
    let base: Vec<f32> = logits.iter().map(|&x| x as f32).collect();
    let mut counts = vec![0usize; v];
    let mut buf = base.clone();
    for i in 0..DRAWS {
        buf.copy_from_slice(&base);
        // Reseeding also resets stateful processors (mirostat), so every draw sees the same
        // distribution; the seeds still give independent uniform draws.
        s.reseed(i as u64 * 7919 + 1);
        counts[s.sample(&mut buf, None, history).unwrap().token as usize] += 1;
    }
    let mut chi2 = 0.0;
    let mut df = 0usize;
    for i in 0..v {
        let e = expect[i] * DRAWS as f64;
        if expect[i] == 0.0 {
            assert_eq!(counts[i], 0, "{name}: token {i} must never be drawn");
        } else {
            chi2 += (counts[i] as f64 - e).powi(2) / e;
            df += 1;
        }
    }
    if df >= 2 {
        let crit = critical(df - 1);
        assert!(
            chi2 < crit,
            "{name}: chi2 {chi2:.1} >= {crit:.1}; counts {counts:?}"
        );
    }
}

fn b() -> SamplingConfigBuilder {
    SamplingConfig::builder()
}

#[test]
fn temperature() {
    for t in [0.5f64, 1.0, 1.7] {
        let p = softmax(&L.iter().map(|x| x / t).collect::<Vec<_>>());
        check(
            "temperature",
            b().temperature(t as f32).build().unwrap(),
            &L,
            &[],
            &p,
        );
    }
    check("empty chain", b().build().unwrap(), &L, &[], &softmax(&L));
}

#[test]
fn top_k_top_p_min_p() {
    let p = softmax(&L);
    check(
        "top-k 4",
        b().top_k(4).build().unwrap(),
        &L,
        &[],
        &restrict(&p, |i| i < 4),
    );
    // top-p 0.7: smallest prefix reaching 0.7.
    let mut cum = 0.0;
    let mut n = 0;
    for x in &p {
        cum += x;
        n += 1;
        if cum >= 0.7 {
            break;
        }
    }
    check(
        "top-p",
        b().top_p(0.7).build().unwrap(),
        &L,
        &[],
        &restrict(&p, |i| i < n),
    );
    let thr = 0.2 * p[0];
    check(
        "min-p",
        b().min_p(0.2).build().unwrap(),
        &L,
        &[],
        &restrict(&p, |i| p[i] >= thr),
    );
    // top-k → top-p → temperature: the benchmark chain on a small vocabulary.
    let pk = restrict(&p, |i| i < 6);
    let mut cum = 0.0;
    let mut n = 0;
    for x in &pk {
        cum += x;
        n += 1;
        if cum >= 0.8 {
            break;
        }
    }
    let pt = softmax(&L.iter().map(|x| x / 0.8).collect::<Vec<_>>());
    check(
        "top-k → top-p → temperature",
        b().top_k(6).top_p(0.8).temperature(0.8).build().unwrap(),
        &L,
        &[],
        &restrict(&pt, |i| i < n),
    );
}

#[test]
fn typical_and_top_n_sigma() {
    let p = softmax(&L);
    let h: f64 = -p.iter().map(|x| x * x.ln()).sum::<f64>();
    let mut order: Vec<usize> = (0..L.len()).collect();
    order.sort_by(|&a, &b| (-p[a].ln() - h).abs().total_cmp(&(-p[b].ln() - h).abs()));
    let mut keep = vec![false; L.len()];
    let mut cum = 0.0;
    for &i in &order {
        cum += p[i];
        keep[i] = true;
        if cum >= 0.6 {
            break;
        }
    }
    check(
        "typical",
        b().typical_p(0.6).build().unwrap(),
        &L,
        &[],
        &restrict(&p, |i| keep[i]),
    );
    let n = L.len() as f64;
    let mean = L.iter().sum::<f64>() / n;
    let sd = (L.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let thr = L[0] - 1.0 * sd;
    check(
        "top-n-sigma",
        b().top_n_sigma(1.0).build().unwrap(),
        &L,
        &[],
        &restrict(&p, |i| L[i] >= thr),
    );
}

#[test]
fn xtc_mixture() {
    let p = softmax(&L);
    let thr = 0.12;
    let above: Vec<usize> = (0..L.len()).filter(|&i| p[i] >= thr).collect();
    assert!(above.len() >= 2);
    let last = *above.last().unwrap();
    let cut = restrict(&p, |i| i >= last);
    // Acts with chance 0.5: the mixture of both distributions.
    let mix: Vec<f64> = p.iter().zip(&cut).map(|(a, b)| 0.5 * a + 0.5 * b).collect();
    check(
        "xtc",
        b().xtc(0.5, thr as f32).build().unwrap(),
        &L,
        &[],
        &mix,
    );
}

#[test]
fn penalties_bias_dry() {
    let hist = [0u32, 0, 2, 5];
    let mut l = L;
    for t in [0usize, 2, 5] {
        l[t] = if l[t] <= 0.0 { l[t] * 1.3 } else { l[t] / 1.3 };
    }
    check(
        "repeat",
        b().repetition_penalty(1.3, 64).build().unwrap(),
        &L,
        &hist,
        &softmax(&l),
    );
    let mut l = L;
    l[0] -= 2.0 * 0.4 + 0.3;
    l[2] -= 0.4 + 0.3;
    l[5] -= 0.4 + 0.3;
    check(
        "freq/presence",
        b().frequency_presence(0.4, 0.3).build().unwrap(),
        &L,
        &hist,
        &softmax(&l),
    );
    let mut l = L;
    l[9] += 4.0;
    l[0] = f64::NEG_INFINITY;
    check(
        "bias",
        b().logit_bias(vec![(9, 4.0), (0, f32::NEG_INFINITY)])
            .build()
            .unwrap(),
        &L,
        &[],
        &softmax(&l),
    );
    // DRY: history "3 4 1 3 4" → token 1 follows a repeat of length 2: −0.8·1.75^0.
    let mut l = L;
    l[1] -= 0.8;
    check(
        "dry",
        b().dry(0.8, 1.75, 2, 256, vec![]).build().unwrap(),
        &L,
        &[3, 4, 1, 3, 4],
        &softmax(&l),
    );
}

#[test]
fn mirostat_first_step() {
    // v2, mu = 2·tau: keep −log2 p ≤ mu.
    let p = softmax(&L);
    let tau = 1.5f64;
    check(
        "mirostat v2",
        b().mirostat_v2(tau as f32, 0.1).build().unwrap(),
        &L,
        &[],
        &restrict(&p, |i| -p[i].log2() <= 2.0 * tau),
    );
}

#[test]
fn large_vocab_dense_path() {
    // 5000 tokens, 12 plausible ones: the SIMD top-k / dense paths must give the same law.
    let mut l = vec![-30.0f64; 5000];
    for (j, i) in [
        17usize, 400, 401, 999, 1500, 2048, 3000, 3001, 4095, 4096, 4500, 4999,
    ]
    .iter()
    .enumerate()
    {
        l[*i] = 1.0 - j as f64 * 0.2;
    }
    let p = softmax(&l);
    check(
        "dense temperature",
        b().temperature(1.0).build().unwrap(),
        &l,
        &[],
        &p,
    );
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
    let top5: Vec<usize> = idx[..5].to_vec();
    check(
        "dense top-k",
        b().top_k(5).build().unwrap(),
        &l,
        &[],
        &restrict(&p, |i| top5.contains(&i)),
    );
}
