//! # fluent-ai-candle
//!
//! Run large language models locally on [Candle](https://github.com/huggingface/candle):
//! sampling, constrained generation, streaming, a preallocated KV cache with eviction, and
//! continuous batching of many requests on one machine.
//!
//! The crate is a facade over the workspace's crates; everything a user needs is re-exported
//! here. A [`CandleGenerator`] owns a model and a scheduler thread that decodes every active
//! request in one batched forward pass per step (the weights are read once for the whole
//! batch), admits new requests between steps and frees finished or cancelled ones at once.
//!
//! ## Generating and streaming
//!
//! ```no_run
//! use fluent_ai_candle::{
//!     CandleClientBuilder, CandleCompletionRequest, DeviceType, EvictionStrategy,
//!     GenerationConfig, KVCacheConfig, Prompt, StreamingConfig,
//! };
//! use futures::StreamExt;
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let generator = CandleClientBuilder::new()
//!     .model_path("smollm2-135m-instruct")
//!     .device_type(DeviceType::Auto)
//!     .max_concurrent_requests(8)
//!     .generation_config(
//!         GenerationConfig::builder()
//!             .temperature(0.7)
//!             .max_tokens(256)
//!             .streaming(StreamingConfig::default().chunk_size(1).buffer_timeout(Duration::from_millis(50)))
//!             .build(),
//!     )
//!     .build()?;
//!
//! // A chat: the engine renders the model's template and tokenizes.
//! let request = CandleCompletionRequest {
//!     max_tokens: Some(64),
//!     temperature: Some(0.0),
//!     stop: vec!["\n\n".into()],
//!     ..CandleCompletionRequest::new(Prompt::user("Write a haiku about Rust."))
//! };
//!
//! // The whole response at once.
//! let response = generator.generate(&request).collect().await?;
//! println!("{} ({})", response.choices[0].text, response.choices[0].finish_reason.as_str());
//!
//! // Or chunk by chunk (OpenAI's chunk shape); dropping the stream cancels the request.
//! // `submit` prepares the request (template, tokenizer, constraint) off the async threads.
//! let mut stream = generator.submit(request.clone()).await?;
//! while let Some(chunk) = stream.next().await {
//!     if let Some(text) = &chunk.choices[0].delta.content {
//!         print!("{text}");
//!     }
//!     if let Some(usage) = chunk.usage {
//!         println!("\n{} tokens", usage.completion_tokens);
//!     }
//! }
//!
//! // Past the context: attention sinks (StreamingLLM) evict old tokens as it goes.
//! let long = CandleCompletionRequest {
//!     kv_cache: Some(
//!         KVCacheConfig::default()
//!             .max_entries(2048)
//!             .eviction_strategy(EvictionStrategy::AttentionSinks { sink_tokens: 4, window: 1024 }),
//!     ),
//!     max_tokens: Some(8192),
//!     ..request.clone()
//! };
//! let _ = generator.generate(&long).collect().await?;
//! println!("{:?}", generator.metrics());
//! # Ok(())
//! # }
//! ```
//!
//! ## One request type
//!
//! [`CandleCompletionRequest`] is the request everywhere — [`CandleGenerator::generate`], the
//! one-sequence [`generate`](engine::generate()), the CLI and the HTTP server: a prompt (text,
//! token ids or a chat), one sampling description (the seed's `temperature`/`top_p`/`top_k`,
//! or a whole [`SamplingConfig`] chain), limits, stop sequences, a constraint, the seed and
//! logprobs. What it leaves unset comes from the generator's [`GenerationConfig`], built in
//! the seed's style:
//!
//! ```
//! use fluent_ai_candle::{CandleCompletionRequest, GenerationConfig};
//! let config = GenerationConfig::default().temperature(0.7).max_tokens(512).top_p(0.9);
//! let request = CandleCompletionRequest {
//!     prompt: "Explain quantum computing in simple terms:".to_string(),
//!     temperature: Some(0.8),
//!     ..Default::default()
//! };
//! // temperature 0.8 from the request, top-p 0.9 from the defaults
//! assert_eq!(request.sampling_config(&config)?.chain.len(), 2);
//! # Ok::<(), fluent_ai_candle::EngineError>(())
//! ```
//!
//! ## Bad input is a typed error
//!
//! ```
//! use fluent_ai_candle::{EngineError, ModelRegistry};
//! let registry = ModelRegistry::new();
//! let err = registry.get("no-such-model").unwrap_err();
//! assert!(matches!(err, EngineError::UnknownModel { .. }));
//! ```
//!
//! ## One client interface
//!
//! [`CompletionClient`] is "something that completes requests": the [`CandleGenerator`]
//! in-process, or [`HttpCompletionClient`] against any OpenAI-compatible server (this
//! project's `serve` included), with the same request and response types (see [`client`]).
//!
//! ## The parts
//! - [`sampling`]: temperature, top-k/p, min-p, penalties, seeded RNG — every sampling decision
//!   (and [`sampling::simd`], its kernels, with the seed's allocating forms);
//! - [`constraints`]: JSON Schema, regex and GBNF constraints compiled to token masks (and
//!   the seed's [`constraints::create_json_constraint_for_tokenizer`]);
//! - [`device`]: device selection (the seed's [`device::auto_device`]);
//! - [`kv_cache`]: per-sequence caches with eviction, and the LRU prefix cache;
//! - [`models`]: GGUF loading, tokenizer, chat templates and the llama-family decoder;
//! - [`engine`]: the request type, its preparation (chat template, tokenizer, constraint),
//!   the scheduler, streaming, stop rules, metrics and the model registry (loading by spec).
#![forbid(unsafe_code)]

pub use fluent_ai_candle_engine as engine;
pub use fluent_ai_candle_kv_cache as kv_cache;
pub use fluent_ai_candle_mask as mask;
pub use fluent_ai_candle_models as models;

pub mod client;
pub mod constraints;
pub mod device;
pub mod sampling;

pub use client::{ClientError, CompletionClient, HttpCompletionClient};
pub use fluent_ai_candle_engine::{
    CandleClientBuilder, CandleCompletion, CandleCompletionChunk, CandleCompletionRequest,
    CandleCompletionResponse, CandleCompletionStream, CandleGenerator, CandleModel,
    CandleTokenizer, ChatMessage, ChunkChoice, ChunkDelta, CompletionChoice, ConstraintSpec,
    Device, DeviceType, EngineError, EngineMetrics, EvictionStrategy, FinishReason,
    GenerationConfig, KVCacheConfig, KvCacheConfig, MetricsSnapshot, ModelRegistry,
    PrefixCacheConfig, Prompt, Quantization, QuantizationType, Sampling, StreamingConfig,
    TokenLogprob, Usage,
};
pub use fluent_ai_candle_models::{init_cpu_threads, LoadedModel, ModelError};
pub use fluent_ai_candle_sampling::{SamplingConfig, SamplingError};

/// The README's examples, compiled (and the standalone ones run) as doctests so they stay true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
