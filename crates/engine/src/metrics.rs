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
    prefix_evictions: AtomicU64,
    kv_tokens_in_use: AtomicU64,
    latencies: Latencies,
}

/// Upper bounds (seconds) of the time-to-first-token and request-duration buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds (seconds) of the per-token (inter-token latency) buckets.
pub const TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];
/// Most buckets a histogram has (the `+Inf` bucket is the count).
const MAX_BUCKETS: usize = 14;

/// A latency histogram with fixed buckets: one atomic counter per bucket, so recording is
/// lock-free and allocation-free on the scheduler's thread.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last slot counts those above every bound.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.len() <= MAX_BUCKETS);
        Self {
            bounds,
            counts: Default::default(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, nanos: u64) {
        let seconds = nanos as f64 * 1e-9;
        let i = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0; MAX_BUCKETS + 1];
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate().take(self.bounds.len() + 1) {
            total += c.load(Relaxed);
            cumulative[i] = total;
        }
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            count: total,
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 * 1e-9,
        }
    }
}

/// A histogram's state at one moment, in Prometheus' shape: cumulative counts per upper bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets, in seconds, ascending.
    pub bounds: &'static [f64],
    /// `cumulative[i]`: observations ≤ `bounds[i]` (entries past `bounds.len()` are unused).
    pub cumulative: [u64; MAX_BUCKETS + 1],
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// `(upper bound, cumulative count)` per bucket, `+Inf` (`f64::INFINITY`) last.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .copied()
            .zip(self.cumulative.iter().copied())
            .chain(std::iter::once((f64::INFINITY, self.count)))
    }
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Histogram::new(&[]).snapshot()
    }
}

/// The three latency histograms, with their buckets.
#[derive(Debug)]
struct Latencies {
    ttft: Histogram,
    inter_token: Histogram,
    request: Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            ttft: Histogram::new(LATENCY_BUCKETS),
            inter_token: Histogram::new(TOKEN_BUCKETS),
            request: Histogram::new(LATENCY_BUCKETS),
        }
    }
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
    /// Cached prefixes evicted, least recently used first, to keep the prefix cache's
    /// bounds or the KV budget (`EvictionStrategy::LRU`).
    pub prefix_cache_evictions: u64,
    /// Tokens of KV memory in use: the live sequences' caches (as allocated) plus the cached
    /// prefixes; at most the KV budget when there is one.
    pub kv_tokens_in_use: u64,
    /// Time to first token (from enqueue), per request.
    pub ttft_seconds: HistogramSnapshot,
    /// Time between consecutive tokens of one sequence (a step that yields several tokens
    /// counts each at the step's time divided by their number).
    pub inter_token_seconds: HistogramSnapshot,
    /// Whole request time, from enqueue to the last token, per finished request.
    pub request_seconds: HistogramSnapshot,
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
            prefix_cache_evictions: self.prefix_evictions.load(Relaxed),
            kv_tokens_in_use: self.kv_tokens_in_use.load(Relaxed),
            ttft_seconds: self.latencies.ttft.snapshot(),
            inter_token_seconds: self.latencies.inter_token.snapshot(),
            request_seconds: self.latencies.request.snapshot(),
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
        self.latencies.ttft.observe(nanos);
    }
    pub(crate) fn inter_token(&self, nanos: u64) {
        self.latencies.inter_token.observe(nanos);
    }
    pub(crate) fn request_done(&self, nanos: u64) {
        self.latencies.request.observe(nanos);
    }
    pub(crate) fn set_kv(&self, prefix_evictions: u64, tokens_in_use: usize) {
        self.prefix_evictions.store(prefix_evictions, Relaxed);
        self.kv_tokens_in_use.store(tokens_in_use as u64, Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let m = EngineMetrics::default();
        for ms in [3, 7, 7, 400, 200_000] {
            m.ttft(ms * 1_000_000);
        }
        let h = m.snapshot().ttft_seconds;
        assert_eq!(h.count, 5);
        assert!((h.sum_seconds - 200.417).abs() < 1e-9);
        let buckets: Vec<(f64, u64)> = h.buckets().collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(buckets[0], (0.005, 1));
        assert_eq!(buckets[1], (0.01, 3));
        assert_eq!(buckets[6], (0.5, 4));
        assert_eq!(buckets[13], (120.0, 4), "200 s is above every bound");
        assert_eq!(buckets[14], (f64::INFINITY, 5));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1));
        // A bound is inclusive (Prometheus' `le`).
        m.inter_token(1_000_000);
        assert_eq!(
            m.snapshot().inter_token_seconds.buckets().next(),
            Some((0.001, 1))
        );
    }
}
