//! Criterion bench of the sampling chain (repetition penalty 1.1/64 → top-k 40 → top-p 0.95 →
//! temperature 0.8) against candle-transformers' `LogitsProcessor` on the same logits.
//! The logits copy is part of each iteration for ours (the sampler uses its input as
//! scratch) and candle builds its penalised tensor from the input every iteration.

#![allow(missing_docs)] // criterion_group! generates an undocumented fn

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling as CandleSampling};
use candle_transformers::utils::apply_repeat_penalty;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fluent_ai_candle_sampling::{Sampler, SamplingConfig, Xoshiro256};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sampling");
    for &v in &[49_152usize, 128_256, 262_144] {
        let mut r = Xoshiro256::seed_from_u64(0x5EED ^ v as u64);
        let logits: Vec<f32> = (0..v)
            .map(|_| (r.next_f32() + r.next_f32() + r.next_f32() - 1.5) * 6.0)
            .collect();
        let history: Vec<u32> = (0..64).map(|_| (r.next_u64() % v as u64) as u32).collect();

        let cfg = SamplingConfig::builder()
            .repetition_penalty(1.1, 64)
            .top_k(40)
            .top_p(0.95)
            .temperature(0.8)
            .build()
            .unwrap();
        let mut sampler = Sampler::new(cfg, v, 42).unwrap();
        let mut buf = logits.clone();
        group.bench_with_input(BenchmarkId::new("ours", v), &v, |b, _| {
            b.iter(|| {
                buf.copy_from_slice(&logits);
                sampler.sample(&mut buf, None, &history).unwrap()
            })
        });

        let tensor = Tensor::from_slice(&logits, v, &Device::Cpu).unwrap();
        let mut lp = LogitsProcessor::from_sampling(
            42,
            CandleSampling::TopKThenTopP {
                k: 40,
                p: 0.95,
                temperature: 0.8,
            },
        );
        group.bench_with_input(BenchmarkId::new("candle", v), &v, |b, _| {
            b.iter(|| {
                let t = apply_repeat_penalty(&tensor, 1.1, &history).unwrap();
                lp.sample(&t).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
