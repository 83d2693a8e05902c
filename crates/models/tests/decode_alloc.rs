//! Heap allocations per decode step of the real SmolLM2 (the seed's first principle: no
//! allocation per token on the hot path).
//!
//! A counting global allocator counts every allocation of the process (candle's pool workers
//! included) while `forward` runs one token after a 32-token prompt, for 32 steps. The
//! decode path is not allocation-free yet: every candle op returns a freshly allocated tensor,
//! and our matmul and attention calls allocate their outputs — see `docs/PERFORMANCE.md`
//! ("Allocations per decode step"). The test pins the count, so a new allocation on the decode
//! path fails it, and checks the count does not grow with the position.

// The counting allocator must implement the unsafe `GlobalAlloc` trait (test code only).
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Device;
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{Decoder, GgufFile, Llama};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwards the caller's layout to the system allocator unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with `layout`; forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per decode step: 4,614 measured (every step the same; 1.9 MB per step) on a
/// 2-core machine when this test was written, plus headroom for a different pool split on
/// other core counts. Lower it when a change removes allocations; never raise it without
/// naming the new allocation in PERFORMANCE.md.
const MAX_ALLOCS_PER_STEP: u64 = 5_000;

#[test]
fn decode_steps_allocate_a_fixed_bounded_amount() {
    let mut gguf = GgufFile::open(common::smollm2_path()).unwrap();
    let model = Llama::load(&mut gguf, &Device::Cpu, &mut |_| {}).unwrap();
    let prompt: Vec<u32> = (0..32).map(|i| 1000 + i * 37).collect();
    let mut cache = model
        .new_cache(&KvCacheConfig::default().max_entries(prompt.len() + 64))
        .unwrap();
    let logits = model.forward(&prompt, &mut cache, false).unwrap();
    let mut token = common::argmax(&logits.to_vec1::<f32>().unwrap());
    // Two warm-up steps: first-use tables and the pool's per-thread scratch.
    for _ in 0..2 {
        let logits = model.forward(&[token], &mut cache, false).unwrap();
        token = common::argmax(&logits.to_vec1::<f32>().unwrap());
    }
    let mut per_step = Vec::new();
    let mut bytes_per_step = Vec::new();
    for _ in 0..32 {
        let (a0, b0) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
        let logits = model.forward(&[token], &mut cache, false).unwrap();
        per_step.push(ALLOCS.load(Ordering::SeqCst) - a0);
        bytes_per_step.push(BYTES.load(Ordering::SeqCst) - b0);
        token = common::argmax(&logits.to_vec1::<f32>().unwrap());
    }
    let max = *per_step.iter().max().unwrap();
    let min = *per_step.iter().min().unwrap();
    let mean_bytes = bytes_per_step.iter().sum::<u64>() / bytes_per_step.len() as u64;
    eprintln!(
        "decode step allocations: min {min} max {max}, mean {mean_bytes} bytes per step \
         (32 steps after a 32-token prompt)"
    );
    assert!(
        max <= MAX_ALLOCS_PER_STEP,
        "a decode step allocated {max} times (budget {MAX_ALLOCS_PER_STEP}): {per_step:?}"
    );
    // The count depends on the work, not on the position: no growth with the cache.
    assert!(
        max - min <= min / 10 + 8,
        "allocations per step vary with the position: {per_step:?}"
    );
}
