//! Counters kept by the scheduler, read at any time with [`EngineMetrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters of one generator (atomics: the scheduler writes, anyone reads).
#[derive(Debug, Default)]
pub struct EngineMetrics {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    queue_depth: AtomicU64,
    active: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    decode_steps: AtomicU64,
    decode_tokens: AtomicU64,
    decode_nanos: AtomicU64,
    ttft_count: AtomicU64,
    ttft_nanos: AtomicU64,
    last_ttft_nanos: AtomicU64,
    prefix_hits: AtomicU64,
    prefix_misses: AtomicU64,
    prefix_tokens_reused: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MetricsSnapshot {
    /// Requests accepted.
    pub requests: u64,
    /// Requests that ran to a finish reason.
    pub completed: u64,
    /// Requests whose stream was dropped before the end.
    pub cancelled: u64,
    /// Requests that ended with an error.
    pub failed: u64,
    /// Requests refused (queue full, bad input).
    pub rejected: u64,
    /// Requests waiting for a slot.
    pub queue_depth: u64,
    /// Sequences holding a slot.
    pub active_sequences: u64,
    /// Prompt tokens processed.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Batched decode steps run.
    pub decode_steps: u64,
    /// Aggregate decode throughput: tokens of decode steps per second spent in them.
    pub tokens_per_second: f64,
    /// Mean time to first token, in milliseconds (from enqueue).
    pub mean_ttft_ms: f64,
    /// Time to first token of the latest request, in milliseconds.
    pub last_ttft_ms: f64,
    /// Prompts that reused a cached prefix.
    pub prefix_cache_hits: u64,
    /// Prompts that found no cached prefix.
    pub prefix_cache_misses: u64,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub prefix_tokens_reused: u64,
}

impl EngineMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let decode_nanos = self.decode_nanos.load(Relaxed);
        let decode_tokens = self.decode_tokens.load(Relaxed);
        let ttft_count = self.ttft_count.load(Relaxed);
        MetricsSnapshot {
            requests: self.requests.load(Relaxed),
            completed: self.completed.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            failed: self.failed.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            queue_depth: self.queue_depth.load(Relaxed),
            active_sequences: self.active.load(Relaxed),
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            generated_tokens: self.generated_tokens.load(Relaxed),
            decode_steps: self.decode_steps.load(Relaxed),
            tokens_per_second: if decode_nanos == 0 {
                0.0
            } else {
                decode_tokens as f64 / (decode_nanos as f64 * 1e-9)
            },
            mean_ttft_ms: if ttft_count == 0 {
                0.0
            } else {
                self.ttft_nanos.load(Relaxed) as f64 / ttft_count as f64 * 1e-6
            },
            last_ttft_ms: self.last_ttft_nanos.load(Relaxed) as f64 * 1e-6,
            prefix_cache_hits: self.prefix_hits.load(Relaxed),
            prefix_cache_misses: self.prefix_misses.load(Relaxed),
            prefix_tokens_reused: self.prefix_tokens_reused.load(Relaxed),
        }
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }
    pub(crate) fn rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }
    pub(crate) fn completed(&self, error: bool) {
        self.completed.fetch_add(1, Relaxed);
        if error {
            self.failed.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn cancelled(&self) {
        self.cancelled.fetch_add(1, Relaxed);
    }
    pub(crate) fn set_queue_depth(&self, n: usize) {
        self.queue_depth.store(n as u64, Relaxed);
    }
    pub(crate) fn set_active(&self, n: usize) {
        self.active.store(n as u64, Relaxed);
    }
    pub(crate) fn prompt(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Relaxed);
    }
    pub(crate) fn generated(&self, n: usize) {
        self.generated_tokens.fetch_add(n as u64, Relaxed);
    }
    pub(crate) fn decode_step(&self, tokens: usize, nanos: u64) {
        self.decode_steps.fetch_add(1, Relaxed);
        self.decode_tokens.fetch_add(tokens as u64, Relaxed);
        self.decode_nanos.fetch_add(nanos, Relaxed);
    }
    pub(crate) fn ttft(&self, nanos: u64) {
        self.ttft_count.fetch_add(1, Relaxed);
        self.ttft_nanos.fetch_add(nanos, Relaxed);
        self.last_ttft_nanos.store(nanos, Relaxed);
    }
    pub(crate) fn prefix(&self, reused: Option<usize>) {
        match reused {
            Some(n) => {
                self.prefix_hits.fetch_add(1, Relaxed);
                self.prefix_tokens_reused.fetch_add(n as u64, Relaxed);
            }
            None => {
                self.prefix_misses.fetch_add(1, Relaxed);
            }
        }
    }
}
