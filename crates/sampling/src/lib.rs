//! # fluent-ai-candle-sampling
//!
//! Token sampling for LLM decoding on any `&mut [f32]` of logits, with no ML framework behind
//! it: no candle, no tokenizers, no async runtime. Give it the logits of one decode step, the
//! token history and, optionally, the allowed-token bitset from the constraints crate
//! ([`TokenMask`]); get back the token, its log-probability, the top-N alternatives
//! (OpenAI's `top_logprobs`) and the step's entropy.
//!
//! * **Processors** ([`ProcessorSpec`]), run in the order you choose: temperature (0 =
//!   greedy argmax, ties to the lowest id), top-k, top-p, min-p, typical-p, top-nσ, XTC, DRY,
//!   repetition penalty (llama.cpp / Hugging Face semantics), frequency and presence
//!   penalties (OpenAI semantics), logit bias, and the stateful mirostat 1.0 and 2.0. User
//!   processors implement [`LogitsProcessor`] and join a [`SamplerChain`] (alias
//!   [`CompositeProcessor`]). Presets ([`Sampling`]) are shortcuts for common chains.
//! * **Reproducible**: a self-contained xoshiro256** generator ([`Xoshiro256`]) and kernels
//!   that return the same bits on every backend, so the same seed and logits give the same
//!   token on every run and platform.
//! * **No allocation per step**: a [`Sampler`] sizes its buffers for the vocabulary once;
//!   [`Sampler::sample`] allocates nothing (tested with a counting global allocator).
//! * **Fast**: the work per step is a few vectorised passes over the vocabulary (finiteness
//!   check, mask, threshold top-k selection) chosen at run time for AVX-512, AVX2 or NEON,
//!   with a scalar twin ([`simd`]). Set `FLUENT_AI_CANDLE_SIMD=scalar` to force the twin.
//! * **Typed errors, never a panic** on bad input: NaN or infinite logits, an empty
//!   vocabulary, `k = 0`, `p` outside `(0, 1]`, a negative temperature, a mask that allows
//!   nothing all return a [`SamplingError`].
//!
//! ## Standalone use
//!
//! ```
//! use fluent_ai_candle_sampling::{Sampler, SamplingConfig, Sampling, SequenceConfidence, TokenMask};
//!
//! // Build once per vocabulary: top-k 40 → top-p 0.95 → temperature 0.8, with a repetition
//! // penalty of 1.1 over the last 64 tokens, reporting 3 alternatives per step.
//! let config = SamplingConfig::builder()
//!     .repetition_penalty(1.1, 64)
//!     .top_k(40)
//!     .top_p(0.95)
//!     .temperature(0.8)
//!     .top_logprobs(3)
//!     .build()?;
//! let vocab = 1000;
//! let mut sampler = Sampler::new(config, vocab, 42)?;
//!
//! let mut history = vec![1u32, 2, 3];
//! let mut confidence = SequenceConfidence::new();
//! for step in 0..5 {
//!     // Logits would come from your model; any &mut [f32] will do.
//!     let mut logits: Vec<f32> = (0..vocab).map(|i| ((i * 7 + step) % 13) as f32).collect();
//!     let out = sampler.sample(&mut logits, None, &history)?;
//!     assert!(out.logprob <= 0.0 && out.top_logprobs.len() <= 3);
//!     confidence.push(&out);
//!     history.push(out.token);
//! }
//! assert!(confidence.score().unwrap() > 0.0);
//!
//! // Greedy decoding with a mask: the argmax over the allowed tokens.
//! let mut greedy = Sampler::new(Sampling::Greedy.into(), 4, 0)?;
//! let mut mask = TokenMask::forbid_all(4);
//! mask.allow(1);
//! mask.allow(2);
//! let out = greedy.sample(&mut [0.0, 0.5, 3.0, 9.0], Some(&mask), &[])?;
//! assert_eq!(out.token, 2);
//!
//! // Bad input is a typed error, not a panic.
//! assert!(greedy.sample(&mut [0.0, f32::NAN, 0.0, 0.0], None, &[]).is_err());
//! # Ok::<(), fluent_ai_candle_sampling::SamplingError>(())
//! ```
//!
//! ## Log-probabilities
//!
//! By default ([`LogprobSource::Sampled`]) `logprob`, `top_logprobs` and `entropy` describe
//! the distribution the token was actually drawn from (after the whole chain); choose
//! [`LogprobSource::Model`] for the model's own distribution over the allowed tokens (one
//! extra pass per step). [`SequenceConfidence`] turns the per-token values into a score for
//! the whole sequence.

mod confidence;
mod config;
mod error;
mod rng;
mod sampler;
pub mod simd;

pub use confidence::SequenceConfidence;
pub use config::{
    LogprobSource, ProcessorSpec, Sampling, SamplingConfig, SamplingConfigBuilder, MAX_PENALTY,
    MAX_TOP_LOGPROBS, MIN_PENALTY, MIN_TEMPERATURE,
};
pub use error::SamplingError;
pub use fluent_ai_candle_mask::TokenMask;
pub use rng::{splitmix64, Xoshiro256};
pub use sampler::{
    ChainStep, CompositeProcessor, LogitsProcessor, SampledToken, Sampler, SamplerChain,
};
pub use simd::{simd_cumsum_f32, simd_softmax_f32, simd_top_k_f32};
