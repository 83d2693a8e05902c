//! [`CandleGenerator`]: a model with its scheduler thread, taking requests from any thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use crossbeam_channel::{Sender, TrySendError};
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{ChatTemplate, Decoder, GgufTokenizer, LoadedModel, ModelError};

use crate::api::{CandleCompletion, CandleCompletionRequest, CandleCompletionStream};
use crate::config::GenerationConfig;
use crate::generate::{check_prompt, GenerateParams};
use crate::metrics::{EngineMetrics, MetricsSnapshot};
use crate::scheduler::{self, Job, SchedulerConfig};
use crate::sequence::SequenceState;
use crate::EngineError;

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
    token_bytes: Arc<Vec<Vec<u8>>>,
    next_id: AtomicU64,
}

impl CandleGenerator {
    /// A generator for `model` (a [`Decoder`] or a concrete decoder such as
    /// [`Llama`](fluent_ai_candle_models::Llama)) and `tokenizer` (the seed's constructor). The
    /// weights must live on `device`.
    pub fn new(
        model: impl Into<Decoder>,
        tokenizer: GgufTokenizer,
        config: GenerationConfig,
        device: Device,
    ) -> Result<Self, EngineError> {
        let model = model.into();
        if !model.device().same_device(&device) {
            return Err(EngineError::InvalidRequest(format!(
                "the model's weights are on {:?}, not on {device:?}",
                model.device()
            )));
        }
        let loaded = LoadedModel {
            model,
            tokenizer,
            chat_template: ChatTemplate::chatml(),
            file_size: 0,
        };
        Self::from_loaded("model", Arc::new(loaded), config)
    }

    /// Loads a GGUF file onto `device` and starts its generator.
    pub fn load(
        path: impl AsRef<Path>,
        device: &Device,
        config: GenerationConfig,
    ) -> Result<Self, EngineError> {
        let path = path.as_ref();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let model = LoadedModel::load(path, device, &mut |_| {})?;
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
        let token_bytes = Arc::new(model.tokenizer.token_bytes());
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
                token_bytes,
                next_id: AtomicU64::new(1),
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

    /// Tokenizes a prompt the way requests are tokenized.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let tok = &self.inner.model.tokenizer;
        Ok(tok.encode(text, tok.add_bos())?)
    }

    /// Starts a request; `.collect().await` on the result gives the whole response.
    pub fn generate(&self, request: &CandleCompletionRequest) -> CandleCompletion {
        CandleCompletion {
            inner: self.generate_stream(request),
        }
    }

    /// Starts a request and returns its stream of chunks.
    ///
    /// Bad input is refused here with a typed error before anything runs: `max_tokens` of 0
    /// or above [`MAX_TOKENS_LIMIT`](crate::MAX_TOKENS_LIMIT), an empty prompt, a prompt that
    /// does not fit the context (or the request's KV cache), an invalid sampling, cache or
    /// constraint configuration, and a full queue ([`EngineError::QueueFull`]).
    pub fn generate_stream(
        &self,
        request: &CandleCompletionRequest,
    ) -> Result<CandleCompletionStream, EngineError> {
        let result = self.submit(request);
        if result.is_err() {
            self.inner.metrics.rejected();
        }
        result
    }

    fn submit(
        &self,
        request: &CandleCompletionRequest,
    ) -> Result<CandleCompletionStream, EngineError> {
        let inner = &*self.inner;
        let cfg = &inner.config;
        let params = GenerateParams {
            max_tokens: request.max_tokens.unwrap_or(cfg.max_tokens),
            temperature: request.temperature.unwrap_or(cfg.temperature),
            top_p: request.top_p.or(cfg.top_p),
            top_k: request.top_k.or(cfg.top_k),
            sampling: request.sampling.clone(),
            seed: request.seed.unwrap_or(cfg.seed),
            stop: if request.stop.is_empty() {
                cfg.stop.clone()
            } else {
                request.stop.clone()
            },
            constraint: request.constraints.clone(),
            logprobs: request.logprobs,
            close_constraint: request.close_constraint.unwrap_or(true),
        };
        params.validate()?;
        let prompt_ids = match &request.prompt_tokens {
            Some(ids) => ids.clone(),
            None => self.tokenize(&request.prompt)?,
        };
        check_prompt(&inner.model, &prompt_ids)?;
        let vocab = inner.model.config().vocab_size;
        if let Some(bad) = prompt_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} out of range for a vocabulary of {vocab}"
            )));
        }
        let context = inner.model.config().context_length;
        let kv = match request.kv_cache.clone().or_else(|| cfg.kv_cache.clone()) {
            Some(kv) => {
                kv.validate()?;
                if kv.max_entries > context {
                    return Err(EngineError::InvalidRequest(format!(
                        "KV cache of {} tokens exceeds the context length {context}",
                        kv.max_entries
                    )));
                }
                if prompt_ids.len() >= kv.max_entries {
                    return Err(EngineError::Model(ModelError::ContextOverflow {
                        prompt_tokens: prompt_ids.len(),
                        context_length: kv.max_entries,
                    }));
                }
                kv
            }
            None => KvCacheConfig::default()
                .max_entries((prompt_ids.len() + params.max_tokens).min(context)),
        };
        let mut seq = SequenceState::new(
            &inner.model,
            inner.token_bytes.clone(),
            &prompt_ids,
            &params,
        )?;
        seq.set_ignore_eos(request.ignore_eos);
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.streaming.buffer_size);
        let job = Job {
            id: format!("cmpl-{}", inner.next_id.fetch_add(1, Ordering::Relaxed)),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
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
                })
            }
            Err(TrySendError::Full(_)) => Err(EngineError::QueueFull {
                capacity: cfg.max_queued_requests,
            }),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Shutdown),
        }
    }
}
