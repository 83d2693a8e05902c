//! Sampling micro-benchmark: our chain vs candle-transformers' `LogitsProcessor`.
//!
//! Chain: repetition penalty 1.1 over 64 history tokens → top-k 40 → top-p 0.95 →
//! temperature 0.8, on random logits (fixed seed) for three vocabulary sizes. candle runs
//! `apply_repeat_penalty` + `LogitsProcessor::from_sampling(seed, TopKThenTopP { k: 40,
//! p: 0.95, temperature: 0.8 })` on the same logits. Each timing is the median of 200
//! iterations after 20 warm-up ones. Copying the logits into a fresh buffer is excluded from
//! both: ours copies before the timer starts (the sampler uses its input as scratch), candle
//! reads a tensor built once.
//!
//! `cargo run --release -p fluent-ai-candle-benches --bin bench-sampling -- --json` prints one
//! JSON object per line: `{"vocab": V, "ours_us": X, "candle_us": Y}`.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling as CandleSampling};
use candle_transformers::utils::apply_repeat_penalty;
use fluent_ai_candle_sampling::{Sampler, SamplingConfig, Xoshiro256};

const VOCABS: [usize; 3] = [49_152, 128_256, 262_144];
const WARMUP: usize = 20;
const ITERS: usize = 200;
const HISTORY: usize = 64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn inputs(vocab: usize) -> (Vec<f32>, Vec<u32>) {
    let mut r = Xoshiro256::seed_from_u64(0x5EED ^ vocab as u64);
    // Roughly LLM-like logits: a normal-ish bulk (sum of uniforms) scaled to a few nats.
    let logits = (0..vocab)
        .map(|_| (r.next_f32() + r.next_f32() + r.next_f32() - 1.5) * 6.0)
        .collect();
    let history = (0..HISTORY)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect();
    (logits, history)
}

fn ours(logits: &[f32], history: &[u32]) -> Result<f64> {
    let cfg = SamplingConfig::builder()
        .repetition_penalty(1.1, HISTORY)
        .top_k(40)
        .top_p(0.95)
        .temperature(0.8)
        .build()?;
    let mut sampler = Sampler::new(cfg, logits.len(), 42)?;
    let mut buf = logits.to_vec();
    let mut times = Vec::with_capacity(ITERS);
    for i in 0..WARMUP + ITERS {
        buf.copy_from_slice(logits);
        let t0 = Instant::now();
        let out = sampler.sample(&mut buf, None, history)?;
        let dt = t0.elapsed().as_secs_f64() * 1e6;
        std::hint::black_box(out);
        if i >= WARMUP {
            times.push(dt);
        }
    }
    Ok(median(times))
}

fn candle(logits: &[f32], history: &[u32]) -> Result<f64> {
    let tensor = Tensor::from_slice(logits, logits.len(), &Device::Cpu)?;
    let mut lp = LogitsProcessor::from_sampling(
        42,
        CandleSampling::TopKThenTopP {
            k: 40,
            p: 0.95,
            temperature: 0.8,
        },
    );
    let mut times = Vec::with_capacity(ITERS);
    for i in 0..WARMUP + ITERS {
        let t0 = Instant::now();
        let penalised = apply_repeat_penalty(&tensor, 1.1, history)?;
        let token = lp.sample(&penalised)?;
        let dt = t0.elapsed().as_secs_f64() * 1e6;
        std::hint::black_box(token);
        if i >= WARMUP {
            times.push(dt);
        }
    }
    Ok(median(times))
}

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    if !json {
        println!(
            "sampling: rep-penalty 1.1/64 → top-k 40 → top-p 0.95 → temperature 0.8 (median of {ITERS})"
        );
        println!(
            "SIMD backend: {}",
            fluent_ai_candle_sampling::simd::backend().name()
        );
        println!(
            "{:>8} {:>12} {:>12} {:>9}",
            "vocab", "ours (µs)", "candle (µs)", "speed-up"
        );
    }
    for &v in &VOCABS {
        let (logits, history) = inputs(v);
        let o = ours(&logits, &history)?;
        let c = candle(&logits, &history)?;
        if json {
            // Fixed key order, as documented: {"vocab": V, "ours_us": X, "candle_us": Y}.
            println!(
                "{{\"vocab\": {v}, \"ours_us\": {}, \"candle_us\": {}}}",
                serde_json::Number::from_f64((o * 100.0).round() / 100.0)
                    .map_or("null".into(), |n| n.to_string()),
                serde_json::Number::from_f64((c * 100.0).round() / 100.0)
                    .map_or("null".into(), |n| n.to_string()),
            );
        } else {
            println!("{v:>8} {o:>12.2} {c:>12.2} {:>8.1}x", c / o);
        }
    }
    Ok(())
}
