//! The decode loop of fluent-ai-candle: sampling, constraints, UTF-8-safe streaming and stop
//! rules around a model from the models crate.
//!
//! [`generate`] runs one sequence start to finish and calls back with each piece of text as
//! soon as it is complete. Every sampling decision is made by `fluent-ai-candle-sampling`;
//! constrained outputs use `fluent-ai-candle-constraints` (and JSON outputs are validated with
//! the `jsonschema` crate before they are returned).
//!
//! ```no_run
//! use fluent_ai_candle_engine::{generate, GenerateParams};
//! use fluent_ai_candle_models::{cache, LoadedModel};
//!
//! let model = LoadedModel::load(cache::resolve("smollm2-135m-instruct")?, &candle_core::Device::Cpu, &mut |_| {})?;
//! let prompt = model.chat_prompt("Name a colour.")?;
//! let ids = model.tokenizer.encode(&prompt, false)?;
//! let params = GenerateParams { max_tokens: 16, temperature: 0.0, ..Default::default() };
//! let out = generate(&model, &ids, &params, &mut |piece| print!("{piece}"))?;
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
mod generate;
mod generator;
mod metrics;
mod registry;
mod scheduler;
mod sequence;
mod stop;

pub use api::{
    CandleCompletion, CandleCompletionChunk, CandleCompletionRequest, CandleCompletionResponse,
    CandleCompletionStream, ChunkChoice, ChunkDelta, CompletionChoice,
};
pub use client::{CandleClientBuilder, Quantization};
pub use config::{GenerationConfig, StreamingConfig};
pub use constraint::{ActiveConstraint, ConstraintSpec, GenerationConstraint};
pub use detok::Detokenizer;
pub use fluent_ai_candle_kv_cache::{EvictionStrategy, KvCacheConfig, PrefixCacheConfig};
pub use fluent_ai_candle_models::DeviceType;
pub use fluent_ai_candle_sampling::{LogprobSource, SamplingConfig};
pub use generate::{generate, GenerateParams, DEFAULT_PREFILL_CHUNK, MAX_TOKENS_LIMIT};
pub use generator::CandleGenerator;
pub use metrics::{EngineMetrics, MetricsSnapshot};
pub use registry::ModelRegistry;
pub use stop::{StopMatcher, StopOutcome};

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
    /// One entry per generated token when [`GenerateParams::logprobs`] is set, else empty.
    pub logprobs: Vec<TokenLogprob>,
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
}
