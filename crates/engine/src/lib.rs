//! The engine of fluent-ai-candle: everything between a request and its tokens. It takes one
//! request type, [`CandleCompletionRequest`] (a prompt — text, token ids or a chat it renders
//! through the model's template — one sampling description, limits, stop sequences, a
//! constraint, the seed and what to report), prepares it (template, tokenizer, constraint
//! compiled for the model's vocabulary, which is built once per model) and decodes it: alone
//! with [`generate`], or batched with every other request of a [`CandleGenerator`]'s
//! scheduler. Its output carries all a protocol layer needs: text, token ids, log-probabilities
//! with each token's bytes, ids and usage.
//!
//! Every sampling decision is made by `fluent-ai-candle-sampling`; constrained outputs use
//! `fluent-ai-candle-constraints` (and JSON outputs are validated with the `jsonschema` crate
//! before they are returned). Models are loaded by spec ([`ModelRegistry::load`],
//! [`load_model`]): a cached model name, a GGUF file, a Hugging Face directory or
//! `hf:ORG/REPO[:FILE]`.
//!
//! ```no_run
//! use fluent_ai_candle_engine::{generate, load_model, CandleCompletionRequest, Device, Prompt};
//!
//! let model = load_model("smollm2-135m-instruct", None, &Device::Cpu, &mut |_| {})?;
//! let request = CandleCompletionRequest {
//!     max_tokens: Some(16),
//!     temperature: Some(0.0),
//!     ..CandleCompletionRequest::new(Prompt::user("Name a colour."))
//! };
//! let out = generate(&model, &request, &mut |piece| print!("{piece}"))?;
//! println!("\n{:?} after {} tokens", out.finish_reason, out.usage.completion_tokens);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The building blocks stand alone too:
//!
//! ```
//! use fluent_ai_candle_engine::{Detokenizer, StopMatcher, StopOutcome};
//!
//! let mut detok = Detokenizer::new();
//! let mut text = String::new();
//! for byte in "😀".as_bytes() {
//!     detok.push(&[*byte], &mut text); // nothing is emitted until the emoji is whole
//! }
//! assert_eq!(text, "😀");
//!
//! let mut stops = StopMatcher::new(&["\n\n".to_string()]);
//! assert_eq!(stops.push("one\n"), StopOutcome::Continue("one".into()));
//! assert_eq!(stops.push("\ntwo"), StopOutcome::Stopped(String::new()));
//! ```
#![forbid(unsafe_code)]

mod api;
mod client;
mod config;
pub mod constraint;
mod detok;
mod embed;
mod generate;
mod generator;
mod metrics;
mod prepare;
mod registry;
mod scheduler;
mod seed;
mod sequence;
mod stop;
pub mod tools;

pub use api::{
    CandleCompletion, CandleCompletionChunk, CandleCompletionRequest, CandleCompletionResponse,
    CandleCompletionStream, ChunkChoice, ChunkDelta, CompletionChoice, ProcessorFactory, Prompt,
};
pub use candle_core::Device;
pub use client::{CandleClientBuilder, Quantization};
pub use config::{GenerationConfig, StreamingConfig};
pub use constraint::{ActiveConstraint, ConstraintSpec, GenerationConstraint, JsonSchemaMode};
pub use detok::Detokenizer;
pub use embed::{EmbedError, EmbeddingRequest, Embeddings, Pooling};
pub use fluent_ai_candle_kv_cache::{EvictionStrategy, KvCacheConfig, PrefixCacheConfig};
pub use fluent_ai_candle_models::{
    cache, device_name, CancelToken, CandleTokenizer, ChatMessage, ChatToolCall, DeviceError,
    DeviceType, LoadProgress, LoadedModel, ModelError, QuantizationType,
};
pub use fluent_ai_candle_sampling::{
    LogitsProcessor, LogprobSource, ProcessorSpec, Sampling, SamplingConfig, SequenceConfidence,
};
pub use generate::{generate, DEFAULT_PREFILL_CHUNK, MAX_TOKENS_LIMIT};
pub use generator::{run_blocking, CandleGenerator};
pub use metrics::{
    EngineMetrics, HistogramSnapshot, MetricsSnapshot, LATENCY_BUCKETS, TOKEN_BUCKETS,
};
pub use registry::{load_model, load_model_cancellable, model_name, resolve_model, ModelRegistry};
pub use seed::CandleModel;
pub use stop::{StopMatcher, StopOutcome};
pub use tools::{ToolChoice, ToolDefinition};

/// The seed's spelling of [`KvCacheConfig`].
pub type KVCacheConfig = KvCacheConfig;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// An end-of-generation token, a stop sequence, or a finished constraint.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    /// A failure mid-generation; the text so far is kept.
    Error,
}

impl FinishReason {
    /// The OpenAI spelling: `stop`, `length`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Error => "error",
        }
    }
}

/// Token counts of one generation (OpenAI's `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache instead of a forward
    /// pass (OpenAI's `usage.prompt_tokens_details.cached_tokens`); counted in `prompt_tokens`.
    pub cached_tokens: usize,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text (stop sequences cut).
    pub text: String,
    /// The generated token ids (without the prompt).
    pub token_ids: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// The error that ended it, when `finish_reason` is [`FinishReason::Error`].
    pub error: Option<String>,
    /// One entry per generated token when the request's
    /// [`logprobs`](CandleCompletionRequest::logprobs) is set, else empty.
    pub logprobs: Vec<TokenLogprob>,
    /// How sure the sampling was over the whole output: the geometric-mean token probability,
    /// perplexity, least likely token and mean entropy of the distribution each token was
    /// drawn from (the model's own with [`LogprobSource::Model`]); `None` before any token.
    ///
    /// [`LogprobSource::Model`]: fluent_ai_candle_sampling::LogprobSource::Model
    pub confidence: Option<SequenceConfidence>,
}

/// The log-probability of one generated token, and the most probable alternatives at its
/// position (OpenAI's `logprobs.content[i]`, as token ids).
///
/// Which distribution the numbers describe is the sampling configuration's
/// [`LogprobSource`]: the one the token was drawn
/// from (after temperature, top-p...) by default, or the model's raw softmax.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The generated token.
    pub token: u32,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The most probable tokens with their natural-log probabilities, most probable first
    /// (as many as `top_logprobs` asks).
    pub top_logprobs: Vec<(u32, f32)>,
    /// The generated token's bytes as the tokenizer defines them (a token may hold part of a
    /// UTF-8 character: OpenAI's `bytes`).
    pub bytes: Vec<u8>,
    /// The bytes of each `top_logprobs` token, in the same order.
    pub top_bytes: Vec<Vec<u8>>,
}

/// What went wrong before any token was produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The request's parameters are invalid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The model failed (including a prompt longer than the context).
    #[error(transparent)]
    Model(#[from] fluent_ai_candle_models::ModelError),
    /// The KV cache refused (full with eviction off...).
    #[error(transparent)]
    KvCache(#[from] fluent_ai_candle_kv_cache::KvCacheError),
    /// The sampling configuration or a sampling step failed.
    #[error(transparent)]
    Sampling(#[from] fluent_ai_candle_sampling::SamplingError),
    /// The constraint failed to compile or rejected the output.
    #[error(transparent)]
    Constraint(#[from] fluent_ai_candle_constraints::ConstraintError),
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The request queue is full; try again later.
    #[error("request queue full ({capacity} requests waiting)")]
    QueueFull {
        /// Requests the queue holds.
        capacity: usize,
    },
    /// No model is registered under this name.
    #[error("unknown model '{name}' (loaded: {})", known.join(", "))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The names registered.
        known: Vec<String>,
    },
    /// The generator's scheduler has stopped.
    #[error("the generator has shut down")]
    Shutdown,
    /// A failure inside the engine (a preparation task that panicked...).
    #[error("internal error: {0}")]
    Internal(String),
}
