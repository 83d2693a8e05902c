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
use crate::metrics::{EngineMetrics, MetricsSnapshot};
use crate::prepare::{prepare, tokenize_prompt, ModelTables, Prepared, Reuse};
use crate::scheduler::{self, Job, SchedulerConfig};
use crate::{EngineError, Prompt};

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
    /// A generator for `model` (a loaded `Box<dyn Decoder>` or a concrete decoder such as
    /// [`Llama`](fluent_ai_candle_models::Llama)) and `tokenizer` (the seed's constructor). The
    /// weights must live on `device`.
    pub fn new(
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

    /// The token ids a request's prompt becomes: a chat rendered through the model's template
    /// and tokenized, a text tokenized, token ids as they are.
    pub fn tokenize_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        tokenize_prompt(&self.inner.model, prompt, &[])
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

    /// Starts a request and returns its stream of chunks, preparing the request (chat
    /// template, tokenizing, constraint compilation) on the calling thread: from async code,
    /// [`submit`](Self::submit) keeps that work off the runtime's worker threads.
    ///
    /// Bad input is refused here with a typed error before anything runs: `max_tokens` of 0
    /// or above [`MAX_TOKENS_LIMIT`](crate::MAX_TOKENS_LIMIT), an empty prompt, a prompt that
    /// does not fit the context (or the request's KV cache), two descriptions of the prompt or
    /// of the sampling at once, an invalid sampling, cache or constraint configuration, a chat
    /// the template refuses, and a full queue ([`EngineError::QueueFull`]).
    pub fn generate_stream(
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
        tokio::task::spawn_blocking(move || this.generate_streams(&requests))
            .await
            .map_err(|e| EngineError::Internal(format!("preparing the request failed: {e}")))?
    }

    fn submit_one(
        &self,
        request: &CandleCompletionRequest,
        reuse: &mut Reuse,
    ) -> Result<CandleCompletionStream, EngineError> {
        let inner = &*self.inner;
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
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.streaming.buffer_size);
        let job = Job {
            id: id.clone(),
            created,
            model_name: inner.name.clone(),
            prompt_ids,
            seq,
            kv,
            streaming: cfg.streaming,
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
                })
            }
            Err(TrySendError::Full(_)) => Err(EngineError::QueueFull {
                capacity: cfg.max_queued_requests,
            }),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Shutdown),
        }
    }
}
