//! Engine-wide configuration: generation defaults, streaming and scheduling limits.

use std::time::Duration;

use fluent_ai_candle_kv_cache::{KvCacheConfig, PrefixCacheConfig};

use crate::EngineError;

/// How generated text is grouped into stream chunks and buffered per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamingConfig {
    /// Tokens per chunk: a chunk is sent once this many tokens are generated (≥ 1).
    pub chunk_size: usize,
    /// A chunk with fewer tokens is sent anyway once its first token is this old.
    pub buffer_timeout: Duration,
    /// Chunks buffered per stream; when a consumer falls this far behind, its sequence pauses
    /// (the other sequences keep going) until it reads again (≥ 1).
    pub buffer_size: usize,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            chunk_size: 1,
            buffer_timeout: Duration::from_millis(50),
            buffer_size: 64,
        }
    }
}

impl StreamingConfig {
    /// Sets the tokens per chunk.
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = n;
        self
    }

    /// Sets how long a partial chunk may wait.
    pub fn buffer_timeout(mut self, t: Duration) -> Self {
        self.buffer_timeout = t;
        self
    }

    /// Sets the chunks buffered per stream.
    pub fn buffer_size(mut self, n: usize) -> Self {
        self.buffer_size = n;
        self
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.chunk_size == 0 || self.buffer_size == 0 {
            return Err(EngineError::InvalidRequest(
                "streaming chunk_size and buffer_size must be ≥ 1".into(),
            ));
        }
        Ok(())
    }
}

/// Defaults of every request and limits of the engine, built in the seed's style:
/// `GenerationConfig::builder().max_tokens(128).temperature(0.0).build()`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Default `max_tokens` of a request.
    pub max_tokens: usize,
    /// Default temperature (0 is greedy).
    pub temperature: f32,
    /// Default nucleus threshold.
    pub top_p: Option<f32>,
    /// Default top-k.
    pub top_k: Option<usize>,
    /// Default seed.
    pub seed: u64,
    /// Default stop sequences.
    pub stop: Vec<String>,
    /// Default KV cache of a sequence; `None` sizes it to prompt + `max_tokens` (capped at the
    /// context length) with eviction off.
    pub kv_cache: Option<KvCacheConfig>,
    /// Streaming chunking and buffering.
    pub streaming: StreamingConfig,
    /// Sequences decoded together (the batch size; also the slots).
    pub max_concurrent_requests: usize,
    /// Requests waiting for a slot; one more is refused with [`EngineError::QueueFull`].
    pub max_queued_requests: usize,
    /// Bounds of the prefix cache shared across requests; `None` turns it off.
    pub prefix_cache: Option<PrefixCacheConfig>,
    /// Most prompt tokens one prefill forward runs (≥ 1; default
    /// [`DEFAULT_PREFILL_CHUNK`](crate::DEFAULT_PREFILL_CHUNK), llama.cpp's `n_ubatch`): a long
    /// prompt is prefilled in chunks of this size, with the other sequences' decode steps
    /// between them, and is dropped between two chunks when its client leaves. Smaller chunks
    /// let other requests in sooner; other sizes than llama.cpp's may change the last bits of
    /// a long prompt's logits.
    pub prefill_chunk: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.7,
            top_p: None,
            top_k: None,
            seed: 299_792_458,
            stop: Vec::new(),
            kv_cache: None,
            streaming: StreamingConfig::default(),
            max_concurrent_requests: 8,
            max_queued_requests: 64,
            prefix_cache: Some(PrefixCacheConfig::default()),
            prefill_chunk: crate::DEFAULT_PREFILL_CHUNK,
        }
    }
}

impl GenerationConfig {
    /// The defaults, to be changed with the setters and finished with [`build`](Self::build).
    pub fn builder() -> Self {
        Self::default()
    }

    /// Finishes the builder.
    pub fn build(self) -> Self {
        self
    }

    /// Sets the default `max_tokens`.
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    /// Sets the default temperature.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Sets the default nucleus threshold.
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Sets the default top-k.
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = Some(k);
        self
    }

    /// Sets the default seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the default stop sequences.
    pub fn stop(mut self, stop: Vec<String>) -> Self {
        self.stop = stop;
        self
    }

    /// Sets the default KV cache of a sequence (capacity and eviction).
    pub fn kv_cache(mut self, config: KvCacheConfig) -> Self {
        self.kv_cache = Some(config);
        self
    }

    /// Sets the streaming configuration.
    pub fn streaming(mut self, config: StreamingConfig) -> Self {
        self.streaming = config;
        self
    }

    /// Sets the number of sequences decoded together.
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_concurrent_requests = n;
        self
    }

    /// Sets the number of requests that may wait for a slot.
    pub fn max_queued_requests(mut self, n: usize) -> Self {
        self.max_queued_requests = n;
        self
    }

    /// Sets (or, with `None`, turns off) the prefix cache.
    pub fn prefix_cache(mut self, config: Option<PrefixCacheConfig>) -> Self {
        self.prefix_cache = config;
        self
    }

    /// Sets the most prompt tokens one prefill forward runs.
    pub fn prefill_chunk(mut self, n: usize) -> Self {
        self.prefill_chunk = n;
        self
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), EngineError> {
        self.streaming.validate()?;
        if self.prefill_chunk == 0 {
            return Err(EngineError::InvalidRequest(
                "prefill_chunk must be ≥ 1".into(),
            ));
        }
        if self.max_concurrent_requests == 0 || self.max_queued_requests == 0 {
            return Err(EngineError::InvalidRequest(
                "max_concurrent_requests and max_queued_requests must be ≥ 1".into(),
            ));
        }
        if let Some(kv) = &self.kv_cache {
            kv.validate()?;
        }
        Ok(())
    }
}
