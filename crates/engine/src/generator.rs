//! [`CandleGenerator`]: a model with its scheduler thread, taking requests from any thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use crossbeam_channel::{Sender, TrySendError};
use fluent_ai_candle_models::{CandleTokenizer, ChatTemplate, Decoder, LoadedModel};

use crate::api::{CandleCompletion, CandleCompletionRequest, CandleCompletionStream};
use crate::config::GenerationConfig;
use crate::config::StreamingConfig;
use crate::metrics::{EngineMetrics, MetricsSnapshot};
use crate::prepare::{prepare, tokenize_prompt, ModelTables, Prepared, Reuse};
use crate::scheduler::{self, Job, SchedulerConfig};
use crate::seed::CandleModel;
use crate::{
    EmbedError, EmbeddingRequest, Embeddings, EngineError, KvCacheConfig, Prompt, Sampling,
};

/// A streaming-first generator: one model, one scheduler thread that decodes every active
/// request together (continuous batching), and any number of handles (it is cheap to clone).
///
/// The scheduler stops once every handle is dropped and the requests in flight are done.
#[derive(Clone, Debug)]
pub struct CandleGenerator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: Arc<str>,
    model: Arc<LoadedModel>,
    config: GenerationConfig,
    tx: Sender<Job>,
    metrics: Arc<EngineMetrics>,
    tables: ModelTables,
    /// Why every request is refused (a generator [`CandleGenerator::new`] could not build).
    refusal: Option<String>,
}

/// True when two tokenizers have the same vocabulary: every token's bytes and the same
/// end-of-generation ids.
fn same_vocabulary(a: &CandleTokenizer, b: &CandleTokenizer) -> bool {
    a.vocab_size() == b.vocab_size()
        && a.eot_ids() == b.eot_ids()
        && (0..a.vocab_size() as u32).all(|id| a.token_bytes_of(id) == b.token_bytes_of(id))
}

/// A response id unique in the process and across restarts: `{prefix}-` then the start time in
/// microseconds and a process-wide counter, in hex.
fn next_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    format!("{prefix}-{t:x}{n:04x}")
}

impl CandleGenerator {
    /// The seed's constructor: a generator for a loaded [`CandleModel`] and a tokenizer,
    /// with `config`'s defaults, on `device`:
    /// `CandleGenerator::new(Arc::new(model), Arc::new(tokenizer), config, device)`.
    ///
    /// The tokenizer is the one requests are encoded and decoded with. When it is the model's
    /// own (the same vocabulary: every token's bytes and the end-of-generation ids), the model
    /// is used as loaded; a different one replaces the model's, when the model is not shared
    /// (no other `Arc` holds it) and its vocabulary fits the model's embedding rows.
    ///
    /// It cannot fail, as the seed writes it (no `?`): a tokenizer that does not fit, weights
    /// that are not on `device` or an invalid `config` make a generator that refuses every
    /// request with that typed error ([`EngineError::InvalidRequest`]; a stream yields it as an
    /// error chunk). [`try_new`](Self::try_new) returns the error instead.
    pub fn new(
        model: impl Into<Arc<CandleModel>>,
        tokenizer: impl Into<Arc<CandleTokenizer>>,
        config: GenerationConfig,
        device: Device,
    ) -> Self {
        let model: Arc<CandleModel> = model.into();
        let shared = model.loaded().clone();
        match Self::try_new(model, tokenizer, config.clone(), device) {
            Ok(g) => g,
            Err(e) => Self::refusing(shared, config, e.to_string()),
        }
    }

    /// [`new`](Self::new), returning the typed error instead of a refusing generator.
    pub fn try_new(
        model: impl Into<Arc<CandleModel>>,
        tokenizer: impl Into<Arc<CandleTokenizer>>,
        config: GenerationConfig,
        device: Device,
    ) -> Result<Self, EngineError> {
        let model: Arc<CandleModel> = model.into();
        let tokenizer: Arc<CandleTokenizer> = tokenizer.into();
        if !model.decoder.device().same_device(&device) {
            return Err(EngineError::InvalidRequest(format!(
                "the model's weights are on {:?}, not on {device:?}",
                model.decoder.device()
            )));
        }
        let loaded = if same_vocabulary(&model.tokenizer, &tokenizer) {
            model.loaded().clone()
        } else {
            let rows = model.decoder.config().vocab_size;
            if tokenizer.vocab_size() > rows {
                return Err(EngineError::InvalidRequest(format!(
                    "the tokenizer has {} tokens, the model's embedding {rows} rows",
                    tokenizer.vocab_size()
                )));
            }
            let owned = Arc::try_unwrap(model)
                .ok()
                .and_then(|m| m.into_loaded().ok())
                .ok_or_else(|| {
                    EngineError::InvalidRequest(
                        "a tokenizer other than the model's own needs a model no other                          generator shares"
                            .into(),
                    )
                })?;
            let tokenizer = Arc::try_unwrap(tokenizer).unwrap_or_else(|t| (*t).clone());
            Arc::new(LoadedModel { tokenizer, ..owned })
        };
        Self::from_loaded("model", loaded, config)
    }

    /// The seed's constructor with everything set at once: `sampling` (the sampling crate's
    /// preset) becomes the default chain of every request that describes no sampling of its
    /// own (see [`GenerationConfig::sampling`]), `streaming` the chunking and
    /// buffering, and `kv_cache` (when given) every request's default KV cache (capacity and
    /// eviction). Invalid settings are a typed error; the rest is [`try_new`](Self::try_new).
    #[allow(clippy::too_many_arguments)]
    pub fn with_sophisticated_features(
        model: impl Into<Arc<CandleModel>>,
        tokenizer: impl Into<Arc<CandleTokenizer>>,
        mut config: GenerationConfig,
        device: Device,
        sampling: Sampling,
        streaming: StreamingConfig,
        kv_cache: Option<KvCacheConfig>,
    ) -> Result<Self, EngineError> {
        let model: Arc<CandleModel> = model.into();
        let sampling = fluent_ai_candle_sampling::SamplingConfig::from(sampling);
        // Checked now (a bad preset is a typed error here, not at the first request).
        fluent_ai_candle_sampling::Sampler::new(
            sampling.clone(),
            model.decoder.config().vocab_size,
            0,
        )?;
        config.sampling = Some(sampling);
        config.streaming = streaming;
        if let Some(kv) = kv_cache {
            kv.validate()?;
            config.kv_cache = Some(kv);
        }
        Self::try_new(model, tokenizer, config, device)
    }

    /// A generator that refuses every request with `reason` (see [`new`](Self::new)).
    fn refusing(model: Arc<LoadedModel>, config: GenerationConfig, reason: String) -> Self {
        let (tx, _) = crossbeam_channel::bounded(1);
        let tables = ModelTables::new(&model);
        Self {
            inner: Arc::new(Inner {
                name: "model".into(),
                model,
                config,
                tx,
                metrics: Arc::new(EngineMetrics::default()),
                tables,
                refusal: Some(reason),
            }),
        }
    }

    /// A generator for a bare decoder (a loaded `Box<dyn Decoder>` or a concrete decoder
    /// such as [`Llama`](fluent_ai_candle_models::Llama)) and its `tokenizer`, with the
    /// ChatML chat template. The weights must live on `device`.
    pub fn from_decoder(
        model: impl Into<Box<dyn Decoder>>,
        tokenizer: CandleTokenizer,
        config: GenerationConfig,
        device: Device,
    ) -> Result<Self, EngineError> {
        let decoder = model.into();
        if !decoder.device().same_device(&device) {
            return Err(EngineError::InvalidRequest(format!(
                "the model's weights are on {:?}, not on {device:?}",
                decoder.device()
            )));
        }
        let loaded = LoadedModel {
            decoder,
            tokenizer,
            chat_template: ChatTemplate::chatml(),
            file_size: 0,
        };
        Self::from_loaded("model", Arc::new(loaded), config)
    }

    /// Loads a model onto `device` and starts its generator, named as
    /// [`model_name`](crate::model_name) names `spec`. `spec` is a model spec: a GGUF file, a
    /// Hugging Face model directory, a cached model name or `hf:ORG/REPO[:FILE]` (see
    /// [`resolve_model`](crate::resolve_model)).
    pub fn load(
        spec: impl AsRef<Path>,
        device: &Device,
        config: GenerationConfig,
    ) -> Result<Self, EngineError> {
        let spec = spec.as_ref();
        let model = crate::registry::load_model(spec, None, device, &mut |_| {})?;
        let name = crate::registry::model_name(spec);
        Self::from_loaded(&name, Arc::new(model), config)
    }

    /// A generator named `name` for an already loaded model (shared: other generators may use
    /// the same weights).
    pub fn from_loaded(
        name: &str,
        model: Arc<LoadedModel>,
        config: GenerationConfig,
    ) -> Result<Self, EngineError> {
        config.validate()?;
        let (tx, rx) = crossbeam_channel::bounded(config.max_queued_requests);
        let metrics = Arc::new(EngineMetrics::default());
        let tables = ModelTables::new(&model);
        let sched = SchedulerConfig {
            max_active: config.max_concurrent_requests,
            prefix_cache: config.prefix_cache,
            prefill_chunk: config.prefill_chunk,
            budget: config.kv_cache.as_ref().and_then(KvCacheConfig::budget),
        };
        {
            let model = model.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("fluent-ai-candle-scheduler-{name}"))
                .spawn(move || scheduler::run(model, rx, metrics, sched))
                .map_err(|e| EngineError::InvalidRequest(format!("cannot start scheduler: {e}")))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.into(),
                model,
                config,
                tx,
                metrics,
                tables,
                refusal: None,
            }),
        })
    }

    /// The name given at construction.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The model and its tokenizer.
    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.inner.model
    }

    /// The configuration.
    pub fn config(&self) -> &GenerationConfig {
        &self.inner.config
    }

    /// The engine's counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Tokenizes a text prompt the way requests' text prompts are tokenized (BOS as the
    /// model's tokenizer says).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.tokenize_prompt(&Prompt::Text(text.to_string()))
    }

    /// Tokenizes a text with the tokenizer's special tokens (its BOS, when it asks for one)
    /// when `add_special_tokens` is set — as [`tokenize`](Self::tokenize) — or without them.
    pub fn tokenize_text(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, EngineError> {
        let tok = &self.inner.model.tokenizer;
        tok.encode(text, add_special_tokens && tok.add_bos())
            .map_err(|e| EngineError::InvalidRequest(format!("tokenizer: {e}")))
    }

    /// The token ids a request's prompt becomes: a chat rendered through the model's template
    /// and tokenized, a text tokenized, token ids as they are.
    pub fn tokenize_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        tokenize_prompt(&self.inner.model, prompt, &[])
    }

    /// Tokenizes a conversation as the model's chat template renders it, with the
    /// assistant turn opened when `add_generation_prompt` is set (a chat request's prompt
    /// is rendered with it set). An empty conversation is [`EngineError::InvalidRequest`].
    pub fn tokenize_chat(
        &self,
        messages: &[crate::ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, EngineError> {
        if messages.is_empty() {
            return Err(EngineError::InvalidRequest(
                "the chat has no messages".into(),
            ));
        }
        let model = &self.inner.model;
        let bad = |what: &str, e: fluent_ai_candle_models::ModelError| {
            EngineError::InvalidRequest(format!("{what}: {e}"))
        };
        let text = model
            .chat_template
            .render(messages, add_generation_prompt)
            .map_err(|e| bad("chat template", e))?;
        model
            .tokenizer
            .encode(&text, false)
            .map_err(|e| bad("tokenizer", e))
    }

    /// The text of token ids, special tokens included (so tokenizing a text and detokenizing
    /// its ids gives the text back). An id outside the tokenizer's vocabulary is
    /// [`EngineError::InvalidRequest`].
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        let tok = &self.inner.model.tokenizer;
        let vocab = tok.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} out of range for a vocabulary of {vocab}"
            )));
        }
        tok.decode(ids, false)
            .map_err(|e| EngineError::InvalidRequest(format!("tokenizer: {e}")))
    }

    /// The model's context length in tokens (the longest prompt plus output it can run).
    pub fn context_length(&self) -> usize {
        self.inner.model.config().context_length
    }

    /// The width of the model's hidden states: the length of its embeddings.
    pub fn hidden_size(&self) -> usize {
        self.inner.model.config().hidden_size
    }

    /// Embeds `request`'s inputs on the calling thread: each input's final hidden states
    /// pooled and L2-normalised (see [`EmbeddingRequest`]). Every input is checked before
    /// any forward pass; each runs in a cache of its own, so requests being generated are
    /// not disturbed (they share the CPU). From async code use [`embed`](Self::embed).
    pub fn embed_blocking(&self, request: &EmbeddingRequest) -> Result<Embeddings, EmbedError> {
        if let Some(reason) = &self.inner.refusal {
            return Err(EngineError::InvalidRequest(reason.clone()).into());
        }
        crate::embed::embed(&self.inner.model, request, self.inner.config.prefill_chunk)
    }

    /// [`embed_blocking`](Self::embed_blocking) on tokio's blocking pool through
    /// [`run_blocking`] (without a tokio runtime, on the calling thread), so the forward
    /// passes never hold up an async worker.
    pub async fn embed(&self, request: EmbeddingRequest) -> Result<Embeddings, EmbedError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.embed_blocking(&request);
        }
        let this = self.clone();
        run_blocking(move || this.embed_blocking(&request))
            .await
            .map_err(|e| EmbedError::Internal(format!("the embedding job failed: {e}")))?
    }

    /// The bytes of a token (for a token's text in logprobs, use
    /// [`TokenLogprob::bytes`](crate::TokenLogprob::bytes) instead).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.inner
            .tables
            .token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
    }

    /// Starts a request; `.collect().await` on the result gives the whole response.
    ///
    /// Nothing runs until the result is read: `.collect().await` prepares the request (chat
    /// template, tokenizing, constraint compilation) on tokio's blocking pool, as
    /// [`submit`](Self::submit) does; `blocking_collect` and `into_stream` prepare it on the
    /// calling thread.
    pub fn generate(&self, request: &CandleCompletionRequest) -> CandleCompletion {
        CandleCompletion {
            generator: self.clone(),
            request: Box::new(request.clone()),
        }
    }

    /// Starts a request and returns its stream of chunks, as the seed writes it
    /// (`let mut stream = generator.generate_stream(&request);`): a request refused before it
    /// started (see [`try_generate_stream`](Self::try_generate_stream)) is a stream of one
    /// chunk with [`FinishReason::Error`](crate::FinishReason::Error) and the error's text in
    /// `choices[0].error`; its [`refusal`](CandleCompletionStream::refusal) is the typed error
    /// and its `collect()` returns it.
    ///
    /// ```no_run
    /// # use fluent_ai_candle_engine::{CandleCompletionRequest, CandleGenerator, FinishReason};
    /// # async fn run(generator: CandleGenerator) {
    /// use futures::StreamExt;
    /// let request = CandleCompletionRequest { prompt: "Once".into(), ..Default::default() };
    /// let mut stream = generator.generate_stream(&request);
    /// while let Some(chunk) = stream.next().await {
    ///     if let Some(content) = &chunk.choices[0].delta.content {
    ///         print!("{content}");
    ///     }
    ///     if chunk.choices[0].finish_reason == Some(FinishReason::Error) {
    ///         eprintln!("failed: {:?}", chunk.choices[0].error);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn generate_stream(&self, request: &CandleCompletionRequest) -> CandleCompletionStream {
        match self.try_generate_stream(request) {
            Ok(stream) => stream,
            Err(e) => CandleCompletionStream::refused(e, self.inner.name.clone()),
        }
    }

    /// Starts a request and returns its stream of chunks, preparing the request (chat
    /// template, tokenizing, constraint compilation) on the calling thread: from async code,
    /// [`submit`](Self::submit) keeps that work off the runtime's worker threads.
    ///
    /// Bad input is refused here with a typed error before anything runs: `max_tokens` of 0
    /// or above [`MAX_TOKENS_LIMIT`](crate::MAX_TOKENS_LIMIT), an empty prompt, a prompt that
    /// does not fit the context (or the request's KV cache), two descriptions of the prompt or
    /// of the sampling at once, an invalid sampling, cache or constraint configuration, a chat
    /// the template refuses, and a full queue ([`EngineError::QueueFull`]).
    pub fn try_generate_stream(
        &self,
        request: &CandleCompletionRequest,
    ) -> Result<CandleCompletionStream, EngineError> {
        let mut streams = self.generate_streams(std::slice::from_ref(request))?;
        streams.pop().ok_or(EngineError::Shutdown)
    }

    /// Starts several requests (OpenAI's `n` choices, several prompts) as one: all are
    /// started or, on the first refusal, none (the ones started are cancelled). Requests that
    /// share a prompt or a constraint with the one before them share its tokens or its
    /// compiled constraint. Prepares on the calling thread, as
    /// [`generate_stream`](Self::generate_stream).
    pub fn generate_streams(
        &self,
        requests: &[CandleCompletionRequest],
    ) -> Result<Vec<CandleCompletionStream>, EngineError> {
        let mut reuse = Reuse::default();
        let mut streams = Vec::with_capacity(requests.len());
        for request in requests {
            match self.submit_one(request, &mut reuse) {
                Ok(s) => streams.push(s),
                Err(e) => {
                    self.inner.metrics.rejected();
                    return Err(e);
                }
            }
        }
        Ok(streams)
    }

    /// [`generate_stream`](Self::generate_stream) for async code: the request is prepared on
    /// tokio's blocking pool (without a tokio runtime, on the calling thread), so chat
    /// templates, tokenizing and constraint compilation never hold up an async worker.
    pub async fn submit(
        &self,
        request: CandleCompletionRequest,
    ) -> Result<CandleCompletionStream, EngineError> {
        let mut streams = self.submit_all(vec![request]).await?;
        streams.pop().ok_or(EngineError::Shutdown)
    }

    /// [`generate_streams`](Self::generate_streams) on tokio's blocking pool (see
    /// [`submit`](Self::submit)).
    pub async fn submit_all(
        &self,
        requests: Vec<CandleCompletionRequest>,
    ) -> Result<Vec<CandleCompletionStream>, EngineError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.generate_streams(&requests);
        }
        let this = self.clone();
        run_blocking(move || this.generate_streams(&requests))
            .await
            .map_err(|e| EngineError::Internal(format!("preparing the request failed: {e}")))?
    }

    fn submit_one(
        &self,
        request: &CandleCompletionRequest,
        reuse: &mut Reuse,
    ) -> Result<CandleCompletionStream, EngineError> {
        let inner = &*self.inner;
        if let Some(reason) = &inner.refusal {
            return Err(EngineError::InvalidRequest(reason.clone()));
        }
        let cfg = &inner.config;
        let Prepared {
            prompt_ids,
            kv,
            seq,
        } = prepare(&inner.model, &inner.tables, request, cfg, reuse)?;
        let chat = matches!(&request.input, Some(p) if p.is_chat());
        let id = next_id(if chat { "chatcmpl" } else { "cmpl" });
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let streaming = request.streaming.unwrap_or(cfg.streaming);
        streaming.validate()?;
        let (tx, rx) = tokio::sync::mpsc::channel(streaming.buffer_size);
        let job = Job {
            id: id.clone(),
            created,
            model_name: inner.name.clone(),
            prompt_ids,
            seq,
            kv,
            streaming,
            tx,
            enqueued: Instant::now(),
        };
        match inner.tx.try_send(job) {
            Ok(()) => {
                inner.metrics.request();
                Ok(CandleCompletionStream {
                    rx,
                    finished: false,
                    id,
                    created,
                    model: inner.name.clone(),
                    refused: None,
                })
            }
            Err(TrySendError::Full(_)) => Err(EngineError::QueueFull {
                capacity: cfg.max_queued_requests,
            }),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Shutdown),
        }
    }
}

/// Runs CPU-heavy request work (parsing a large body, a chat template, tokenizing, compiling a
/// constraint) on tokio's blocking pool, at most one such job per core but one (at least one)
/// in the whole process at a time: on a small machine sixteen schema compiles at once would
/// otherwise take every core from the async threads (a server's `/health` answered in ~1 s on
/// two cores). Jobs beyond that wait here without holding a thread. Call it from a tokio
/// runtime; the error is the job's panic.
pub async fn run_blocking<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(cores.saturating_sub(1).max(1))
    });
    // The semaphore is never closed, so `acquire` cannot fail; without a permit the job
    // simply runs.
    let permit = slots.acquire().await.ok();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        job()
    })
    .await
}
