//! Proves that `Sampler::sample` performs no heap allocation after construction, with a
//! counting global allocator.

// The counting allocator must implement the unsafe `GlobalAlloc` trait (test code only).
#![allow(unsafe_code)]
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use fluent_ai_candle_sampling::{
    LogprobSource, ProcessorSpec, Sampler, SamplingConfig, TokenMask, Xoshiro256,
};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the test's own thread while it measures: allocations by other threads (the
    /// test harness's) are not the sampler's.
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn counted() -> bool {
    COUNTING.try_with(|c| c.get()).unwrap_or(false)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn run(config: SamplingConfig, vocab: usize, with_mask: bool) {
    let mut sampler = Sampler::new(config, vocab, 7).unwrap();
    let mut rng = Xoshiro256::seed_from_u64(1);
    let base: Vec<f32> = (0..vocab).map(|_| rng.next_f32() * 12.0 - 6.0).collect();
    let mut logits = base.clone();
    let mut history: Vec<u32> = Vec::with_capacity(4096);
    history.extend((0..200).map(|i| (i * 37 % vocab) as u32));
    let mut mask = TokenMask::allow_all(vocab);
    for i in (0..vocab as u32).step_by(3) {
        mask.forbid(i);
    }
    let mask = with_mask.then_some(&mask);
    // Warm-up step (nothing lazily allocated, but be fair to any one-time setup).
    sampler.sample(&mut logits, mask, &history).unwrap();

    let before = ALLOCS.load(Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    for step in 0..50 {
        logits.copy_from_slice(&base);
        logits[step % vocab] += 3.0;
        let out = sampler.sample(&mut logits, mask, &history).unwrap();
        history.push(out.token);
    }
    // Bad input is rejected without allocating too.
    logits[0] = f32::NAN;
    assert!(sampler.sample(&mut logits, mask, &history).is_err());
    COUNTING.with(|c| c.set(false));
    let after = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(
        after - before,
        0,
        "sample() allocated {} times",
        after - before
    );
}

#[test]
fn no_allocation_per_step() {
    let v = 49_152;
    // The benchmark chain.
    run(
        SamplingConfig::builder()
            .repetition_penalty(1.1, 64)
            .top_k(40)
            .top_p(0.95)
            .temperature(0.8)
            .top_logprobs(20)
            .build()
            .unwrap(),
        v,
        true,
    );
    // Every processor, dense paths first (no top-k in front), model logprobs.
    run(
        SamplingConfig::builder()
            .logit_bias(vec![(5, 2.0), (9, f32::NEG_INFINITY)])
            .frequency_presence(0.5, 0.3)
            .dry(0.8, 1.75, 2, 1024, vec![11, 12])
            .xtc(0.5, 0.1)
            .min_p(0.05)
            .top_n_sigma(2.0)
            .typical_p(0.9)
            .top_p(0.9)
            .temperature(0.7)
            .mirostat_v2(5.0, 0.1)
            .top_logprobs(5)
            .logprob_source(LogprobSource::Model)
            .build()
            .unwrap(),
        v,
        true,
    );
    run(
        SamplingConfig::builder()
            .mirostat_v1(5.0, 0.1)
            .top_logprobs(3)
            .build()
            .unwrap(),
        v,
        false,
    );
    run(
        SamplingConfig {
            chain: vec![ProcessorSpec::TopP(0.5), ProcessorSpec::Temperature(1.3)],
            top_logprobs: 4,
            logprob_source: LogprobSource::Sampled,
        },
        v,
        false,
    );
    run(SamplingConfig::default(), v, true);
}
