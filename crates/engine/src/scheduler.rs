//! The scheduler thread: continuous batching of every active sequence.
//!
//! One thread per generator owns the decode loop. Each step it
//! 1. admits queued requests into free slots (a cache, and a prefix-cache lookup),
//! 2. delivers buffered chunks and drops sequences whose stream was dropped,
//! 3. runs one chunk of one prompt's prefill (at most `prefill_chunk` tokens; the prompt with
//!    the fewest tokens left goes first, so a short request is not queued behind a long one;
//!    its last chunk gives the first token),
//! 4. runs one batched forward over every decoding sequence whose consumer has room (the
//!    weights are read once for the whole batch) and lets each sequence sample from its own
//!    row.
//!
//! A long prompt is thus prefilled in chunks interleaved with the other sequences' decode
//! steps (as vLLM's chunked prefill), and a client that leaves during it frees its slot at the
//! next chunk boundary. A chunk's rows are computed as llama.cpp computes a micro-batch of its
//! prompt (`n_ubatch`, 512 by default), so a long prompt's logits are those of llama.cpp.
//! A sequence whose stream buffer is full sits out the step (it pauses; the others go on).
//!
//! With a KV budget (the generator's default KV configuration is `EvictionStrategy::LRU`,
//! see [`KvBudget`]), a request is admitted only when its cache fits beside the running
//! sequences' caches and the cached prefixes: the least recently used prefixes are evicted to
//! make room, and a request that does not fit even then waits at the head of the queue until
//! a running sequence ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use fluent_ai_candle_kv_cache::{
    EvictionStrategy, KvBudget, KvCacheConfig, PrefixCache, PrefixCacheConfig, SequenceCache,
};
use fluent_ai_candle_models::LoadedModel;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

use crate::api::{CandleCompletionChunk, ChunkChoice, ChunkDelta};
use crate::config::StreamingConfig;
use crate::metrics::EngineMetrics;
use crate::sequence::SequenceState;
use crate::EngineError;

/// A request accepted by a generator, waiting for a slot.
pub(crate) struct Job {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model_name: Arc<str>,
    pub(crate) prompt_ids: Vec<u32>,
    pub(crate) seq: SequenceState,
    pub(crate) kv: KvCacheConfig,
    pub(crate) streaming: StreamingConfig,
    pub(crate) tx: Sender<CandleCompletionChunk>,
    pub(crate) enqueued: Instant,
}

/// Limits of one scheduler.
pub(crate) struct SchedulerConfig {
    pub(crate) max_active: usize,
    pub(crate) prefix_cache: Option<PrefixCacheConfig>,
    /// Most prompt tokens one prefill forward runs (≥ 1).
    pub(crate) prefill_chunk: usize,
    /// The KV memory budget shared by every sequence and cached prefix, if any.
    pub(crate) budget: Option<KvBudget>,
}

/// A prompt being prefilled, chunk by chunk.
struct Prefill {
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache (a prefix-cache hit counts).
    done: usize,
    /// Prompt tokens the prefix cache gave.
    reused: usize,
}

/// A sequence holding a slot (or, once `done`, only delivering its last chunks).
struct Active {
    id: String,
    created: u64,
    model_name: Arc<str>,
    seq: SequenceState,
    cache: Option<SequenceCache>,
    streaming: StreamingConfig,
    tx: Sender<CandleCompletionChunk>,
    enqueued: Instant,
    next: u32,
    outbox: VecDeque<CandleCompletionChunk>,
    pending_text: String,
    sent_tokens: usize,
    pending_since: Option<Instant>,
    first_sent: bool,
    /// When the sequence last produced a token (for the inter-token histogram).
    last_token_at: Option<Instant>,
    done: bool,
    /// The prompt still to prefill; `None` once the first token is sampled.
    prefill: Option<Prefill>,
}

impl Active {
    fn chunk(&mut self, finish: bool) -> CandleCompletionChunk {
        let tokens = self.seq.generated()[self.sent_tokens..].to_vec();
        let logprobs = self
            .seq
            .logprobs()
            .get(self.sent_tokens..)
            .unwrap_or_default()
            .to_vec();
        self.sent_tokens = self.seq.generated().len();
        let text = std::mem::take(&mut self.pending_text);
        self.pending_since = None;
        CandleCompletionChunk {
            id: self.id.clone(),
            created: self.created,
            model: self.model_name.to_string(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: ChunkDelta {
                    content: if text.is_empty() { None } else { Some(text) },
                    token_ids: tokens,
                    logprobs,
                },
                finish_reason: if finish {
                    self.seq.finish_reason()
                } else {
                    None
                },
                error: if finish {
                    self.seq.error().map(str::to_string)
                } else {
                    None
                },
                confidence: if finish { self.seq.confidence() } else { None },
            }],
            usage: if finish { Some(self.seq.usage()) } else { None },
        }
    }

    /// Queues the last chunk and frees the cache.
    fn finish(&mut self, metrics: &EngineMetrics) {
        if self.done {
            return;
        }
        let mut tail = String::new();
        self.seq.finalize(&mut tail);
        self.pending_text.push_str(&tail);
        let chunk = self.chunk(true);
        self.outbox.push_back(chunk);
        self.done = true;
        self.cache = None;
        metrics.completed(self.seq.error().is_some());
        metrics.request_done(self.enqueued.elapsed().as_nanos() as u64);
    }

    /// Feeds one row of logits to the sequence and queues what it produced.
    fn on_logits(&mut self, logits: &mut [f32], metrics: &EngineMetrics) {
        let before = self.seq.generated().len();
        let mut text = String::new();
        match self.seq.advance(logits, &mut text) {
            Ok(Some(token)) => self.next = token,
            Ok(None) => {}
            Err(e) => self.seq.fail(&e),
        }
        let produced = self.seq.generated().len() - before;
        metrics.generated(produced);
        if produced > 0 {
            let now = Instant::now();
            if let Some(last) = self.last_token_at {
                let per_token = now.duration_since(last).as_nanos() as u64 / produced as u64;
                for _ in 0..produced {
                    metrics.inter_token(per_token);
                }
            }
            self.last_token_at = Some(now);
            if !self.first_sent {
                self.first_sent = true;
                metrics.ttft(now.duration_since(self.enqueued).as_nanos() as u64);
            }
        }
        if !text.is_empty() && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
        self.pending_text.push_str(&text);
        if self.seq.is_finished() {
            self.finish(metrics);
            return;
        }
        let pending_tokens = self.seq.generated().len() - self.sent_tokens;
        if pending_tokens >= self.streaming.chunk_size {
            let chunk = self.chunk(false);
            self.outbox.push_back(chunk);
        }
    }

    /// Sends a partial chunk that waited longer than the buffer timeout.
    fn flush_timeout(&mut self, now: Instant) {
        if let Some(since) = self.pending_since {
            if !self.done && now.duration_since(since) >= self.streaming.buffer_timeout {
                let chunk = self.chunk(false);
                self.outbox.push_back(chunk);
            }
        }
    }

    /// Delivers queued chunks while the stream has room. Returns false if the stream is gone.
    fn deliver(&mut self) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        while let Some(chunk) = self.outbox.pop_front() {
            match self.tx.try_send(chunk) {
                Ok(()) => {}
                Err(TrySendError::Full(chunk)) => {
                    self.outbox.push_front(chunk);
                    break;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Whether the sequence may take part in the next decode step.
    fn runnable(&mut self, metrics: &EngineMetrics) -> bool {
        if self.done || !self.outbox.is_empty() || self.prefill.is_some() {
            return false;
        }
        let full = match &self.cache {
            Some(c) => {
                c.config().eviction_strategy == EvictionStrategy::None && c.len() >= c.capacity()
            }
            None => true,
        };
        if full || !self.seq.wants_forward() {
            if full {
                self.seq.end(crate::FinishReason::Length);
            }
            self.finish(metrics);
            return false;
        }
        true
    }
}

struct Scheduler {
    model: Arc<LoadedModel>,
    metrics: Arc<EngineMetrics>,
    prefix: Option<PrefixCache>,
    vocab: usize,
    prefill_chunk: usize,
    budget: Option<KvBudget>,
}

/// Tokens the live sequences' caches are allocated for (what they take of a [`KvBudget`]).
fn kv_in_use(active: &[Active]) -> usize {
    active
        .iter()
        .filter_map(|a| a.cache.as_ref())
        .map(SequenceCache::capacity)
        .sum()
}

fn row_logits(t: &candle_core::Tensor, vocab: usize) -> Result<Vec<Vec<f32>>, EngineError> {
    let mut rows = t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    for r in &mut rows {
        r.resize(vocab, f32::NEG_INFINITY);
    }
    Ok(rows)
}

impl Scheduler {
    /// Whether `job`'s cache fits the KV budget beside `in_use` tokens of live sequences,
    /// after evicting the least recently used prefixes as needed (always, without a budget).
    /// A job that fits nothing but an empty budget is let in alone (preparation refuses a
    /// cache larger than the budget, so this does not happen).
    fn fits(&mut self, job: &Job, in_use: usize) -> bool {
        let Some(budget) = self.budget else {
            return true;
        };
        // The prefix this request will start from is the most recently used one now.
        if let Some(pc) = self.prefix.as_mut() {
            pc.touch(&job.prompt_ids);
        }
        let fits = budget.admit(in_use, job.kv.max_entries, self.prefix.as_mut());
        self.publish_kv(in_use);
        fits || in_use == 0
    }

    /// Publishes the prefix cache's evictions and the budget's use.
    fn publish_kv(&self, in_use: usize) {
        let evictions = self.prefix.as_ref().map_or(0, PrefixCache::evictions);
        let used = in_use + self.prefix.as_ref().map_or(0, PrefixCache::tokens);
        self.metrics.set_kv(evictions, used);
    }

    /// Takes a job into a slot: its cache and a prefix lookup; the prefill runs in chunks
    /// from the loop ([`Scheduler::prefill_step`]).
    fn admit(&mut self, job: Job) -> Option<Active> {
        if job.tx.is_closed() {
            self.metrics.cancelled();
            return None;
        }
        let mut a = Active {
            id: job.id,
            created: job.created,
            model_name: job.model_name,
            seq: job.seq,
            cache: None,
            streaming: job.streaming,
            tx: job.tx,
            enqueued: job.enqueued,
            next: 0,
            outbox: VecDeque::new(),
            pending_text: String::new(),
            sent_tokens: 0,
            pending_since: None,
            first_sent: false,
            last_token_at: None,
            done: false,
            prefill: None,
        };
        self.metrics.prompt(job.prompt_ids.len());
        match self.start_prefill(&job.prompt_ids, &job.kv) {
            Ok((cache, done)) => {
                a.cache = Some(cache);
                a.seq.set_cached_tokens(done);
                a.prefill = Some(Prefill {
                    prompt: job.prompt_ids,
                    done,
                    reused: done,
                });
            }
            Err(e) => {
                a.seq.fail(&e);
                a.finish(&self.metrics);
            }
        }
        Some(a)
    }

    /// A new cache for `prompt`, holding what the prefix cache has of it; returns the cache
    /// and the number of prompt tokens it holds.
    fn start_prefill(
        &mut self,
        prompt: &[u32],
        kv: &KvCacheConfig,
    ) -> Result<(SequenceCache, usize), EngineError> {
        let mut cache = self.model.decoder.new_cache(kv)?;
        let mut start = 0;
        if let Some(pc) = self.prefix.as_mut() {
            let mut reused = None;
            if let Some(hit) = pc.lookup(prompt) {
                if hit.len < cache.capacity()
                    && cache
                        .copy_prefix_from(&hit.keys, &hit.values, hit.len)
                        .is_ok()
                {
                    start = hit.len;
                    reused = Some(hit.len);
                } else {
                    cache.truncate(0);
                }
            }
            self.metrics.prefix(reused);
        }
        Ok((cache, start))
    }

    /// Runs the next chunk of `a`'s prefill. After the last chunk the prompt goes into the
    /// prefix cache and the sequence samples its first token; a failure ends the sequence.
    fn prefill_step(&mut self, a: &mut Active, in_use: usize) {
        let (Some(p), Some(cache)) = (a.prefill.as_mut(), a.cache.as_mut()) else {
            return;
        };
        let start = p.done;
        let end = (start + self.prefill_chunk).min(p.prompt.len());
        let step =
            crate::generate::prefill_chunk(&self.model, &p.prompt, start, end, cache, self.vocab);
        match step {
            Ok(None) => p.done = end,
            Ok(Some(mut logits)) => {
                let reused = p.reused;
                let prompt = std::mem::take(&mut p.prompt);
                a.prefill = None;
                if let Some(pc) = self.prefix.as_mut() {
                    if cache.evicted() == 0
                        && reused + 1 < prompt.len()
                        && cache.len() == prompt.len()
                    {
                        if let Ok((k, v)) = cache.snapshot(prompt.len()) {
                            pc.insert(prompt, k, v);
                            if let Some(budget) = self.budget {
                                budget.trim(in_use, pc);
                            }
                        }
                    }
                }
                a.on_logits(&mut logits, &self.metrics);
            }
            Err(e) => {
                a.prefill = None;
                a.seq.fail(&e);
                a.finish(&self.metrics);
            }
        }
    }

    /// One batched decode step over `batch`.
    fn step(&mut self, batch: &mut [&mut Active]) {
        let tokens: Vec<u32> = batch.iter().map(|a| a.next).collect();
        let t0 = Instant::now();
        let result = {
            let mut caches: Vec<&mut SequenceCache> =
                batch.iter_mut().filter_map(|a| a.cache.as_mut()).collect();
            self.model
                .decoder
                .forward_batch(&tokens, &mut caches)
                .map_err(EngineError::from)
                .and_then(|t| row_logits(&t, self.vocab))
        };
        match result {
            Ok(rows) => {
                self.metrics
                    .decode_step(batch.len(), t0.elapsed().as_nanos() as u64);
                for (a, mut row) in batch.iter_mut().zip(rows) {
                    a.on_logits(&mut row, &self.metrics);
                }
            }
            Err(e) if batch.len() == 1 => {
                batch[0].seq.fail(&e);
                batch[0].finish(&self.metrics);
            }
            Err(_) => {
                // Run each sequence alone so that one failure does not end the others.
                for a in batch.iter_mut() {
                    let result = match a.cache.as_mut() {
                        Some(cache) => self
                            .model
                            .decoder
                            .forward_batch(&[a.next], &mut [cache])
                            .map_err(EngineError::from)
                            .and_then(|t| row_logits(&t, self.vocab)),
                        None => continue,
                    };
                    match result {
                        Ok(mut rows) => match rows.first_mut() {
                            Some(row) => a.on_logits(row, &self.metrics),
                            None => {
                                a.seq.fail(&EngineError::InvalidRequest("no logits".into()));
                                a.finish(&self.metrics);
                            }
                        },
                        Err(e) => {
                            a.seq.fail(&e);
                            a.finish(&self.metrics);
                        }
                    }
                }
            }
        }
    }
}

/// Runs the decode loop until every generator handle is dropped and every sequence is done.
pub(crate) fn run(
    model: Arc<LoadedModel>,
    rx: Receiver<Job>,
    metrics: Arc<EngineMetrics>,
    config: SchedulerConfig,
) {
    let vocab = model.config().vocab_size;
    let mut s = Scheduler {
        model,
        metrics,
        prefix: config.prefix_cache.map(PrefixCache::new),
        vocab,
        prefill_chunk: config.prefill_chunk.max(1),
        budget: config.budget,
    };
    let max_active = config.max_active.max(1);
    let mut active: Vec<Active> = Vec::new();
    // The oldest request, taken from the queue but not yet fitting the KV budget: it is
    // admitted first, and nothing overtakes it.
    let mut waiting: Option<Job> = None;
    let mut disconnected = false;
    loop {
        if active.is_empty() && waiting.is_none() {
            s.metrics.set_active(0);
            if disconnected {
                return;
            }
            match rx.recv() {
                // Admitted below, through the budget like any other.
                Ok(job) => waiting = Some(job),
                Err(_) => return,
            }
        }
        while active.iter().filter(|a| !a.done).count() < max_active {
            let job = match waiting.take() {
                Some(job) => job,
                None if disconnected => break,
                None => match rx.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                },
            };
            if !job.tx.is_closed() && !s.fits(&job, kv_in_use(&active)) {
                waiting = Some(job);
                break;
            }
            if let Some(a) = s.admit(job) {
                active.push(a);
            }
        }
        s.metrics
            .set_queue_depth(rx.len() + usize::from(waiting.is_some()));

        let now = Instant::now();
        let metrics = &s.metrics;
        active.retain_mut(|a| {
            a.flush_timeout(now);
            if !a.deliver() {
                if !a.done {
                    metrics.cancelled();
                }
                return false;
            }
            !(a.done && a.outbox.is_empty())
        });
        s.metrics
            .set_active(active.iter().filter(|a| !a.done).count());

        let in_use = kv_in_use(&active);
        s.publish_kv(in_use);
        // One chunk of the prefill with the fewest tokens left (a short prompt overtakes a
        // long one between its chunks).
        let prefilling = active
            .iter_mut()
            .filter(|a| !a.done)
            .filter_map(|a| {
                let left = a.prefill.as_ref().map(|p| p.prompt.len() - p.done)?;
                Some((left, a))
            })
            .min_by_key(|(left, _)| *left);
        let prefilled = prefilling.is_some();
        if let Some((_, a)) = prefilling {
            s.prefill_step(a, in_use);
        }
        let metrics = &s.metrics;

        let mut batch: Vec<&mut Active> = active
            .iter_mut()
            .filter_map(|a| if a.runnable(metrics) { Some(a) } else { None })
            .collect();
        if batch.is_empty() {
            if !active.is_empty() && !prefilled {
                // Every sequence waits for its consumer (or just finished): don't spin.
                std::thread::sleep(Duration::from_micros(500));
            }
            continue;
        }
        s.step(&mut batch);
    }
}
