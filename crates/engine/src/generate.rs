//! One sequence, start to finish: the decode loop that the CLI uses and the scheduler repeats.
//!
//! Per step: the model's logits for the last position → the constraint's allowed-token mask →
//! the sampler (the sampling crate makes every decision) → commit the token to the constraint,
//! the detokenizer and the stop matcher → stream the text.

use std::sync::Arc;

use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::LoadedModel;
use fluent_ai_candle_sampling::SamplingConfig;

use crate::constraint::ConstraintSpec;
use crate::sequence::SequenceState;
use crate::{EngineError, FinishReason, Generation};

/// What to generate: limits, sampling and constraints.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate (≥ 1).
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling threshold, if any.
    pub top_p: Option<f32>,
    /// Top-k cut-off, if any.
    pub top_k: Option<usize>,
    /// A complete sampling configuration; when set it overrides temperature/top_p/top_k.
    pub sampling: Option<SamplingConfig>,
    /// Seed of the sampler's random generator.
    pub seed: u64,
    /// Stop sequences (cut from the output).
    pub stop: Vec<String>,
    /// An output constraint (JSON Schema, grammar, regex...).
    pub constraint: Option<ConstraintSpec>,
    /// Record each generated token's log-probability (and the `top_logprobs` alternatives the
    /// sampling configuration asks for) in [`Generation::logprobs`] and in stream chunks.
    ///
    /// [`Generation::logprobs`]: crate::Generation::logprobs
    pub logprobs: bool,
    /// Close a constrained output before `max_tokens` runs out (default on): once the
    /// shortest completion of the text so far (see
    /// [`ConstraintState::shortest_completion`]) needs about as many tokens as remain, each
    /// next token is taken along it, so the output ends complete and valid. `finish_reason`
    /// stays `length`: the content was cut short. Off: the output is cut mid-value, as
    /// OpenAI's API does.
    ///
    /// [`ConstraintState::shortest_completion`]: fluent_ai_candle_constraints::ConstraintState::shortest_completion
    pub close_constraint: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.7,
            top_p: None,
            top_k: None,
            sampling: None,
            seed: 299_792_458,
            stop: Vec::new(),
            constraint: None,
            logprobs: false,
            close_constraint: true,
        }
    }
}

/// Largest `max_tokens` accepted (anything larger is an error, not a silent clamp).
pub const MAX_TOKENS_LIMIT: usize = 1 << 20;

impl GenerateParams {
    /// The sampling configuration these parameters describe.
    pub fn sampling_config(&self) -> Result<SamplingConfig, EngineError> {
        if let Some(s) = &self.sampling {
            return Ok(s.clone());
        }
        let mut b = SamplingConfig::builder().temperature(self.temperature);
        if let Some(k) = self.top_k {
            b = b.top_k(k);
        }
        if let Some(p) = self.top_p {
            b = b.top_p(p);
        }
        Ok(b.build()?)
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS_LIMIT {
            return Err(EngineError::InvalidRequest(format!(
                "max_tokens must be in 1..={MAX_TOKENS_LIMIT}, got {}",
                self.max_tokens
            )));
        }
        Ok(())
    }
}

/// Checks a prompt against the model before any work: not empty, shorter than the context.
pub(crate) fn check_prompt(model: &LoadedModel, prompt_ids: &[u32]) -> Result<(), EngineError> {
    let context_length = model.config().context_length;
    if prompt_ids.is_empty() {
        return Err(EngineError::InvalidRequest(
            "the prompt has no tokens".into(),
        ));
    }
    if prompt_ids.len() >= context_length {
        return Err(EngineError::Model(
            fluent_ai_candle_models::ModelError::ContextOverflow {
                prompt_tokens: prompt_ids.len(),
                context_length,
            },
        ));
    }
    Ok(())
}

/// Prompt tokens run by one prefill forward unless configured otherwise
/// ([`GenerationConfig::prefill_chunk`](crate::GenerationConfig::prefill_chunk)): llama.cpp's
/// default micro-batch (`n_ubatch`), so that a long prompt's rows are computed in the groups
/// llama.cpp computes them in, and its logits are llama.cpp's.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// Runs `prompt[start..end]` (the next chunk of a prefill; the tokens before `start` are in
/// `cache`) and, when `end` is the prompt's end, returns the last position's logits (`vocab`
/// wide, padded with `-inf`).
pub(crate) fn prefill_chunk(
    model: &LoadedModel,
    prompt: &[u32],
    start: usize,
    end: usize,
    cache: &mut fluent_ai_candle_kv_cache::SequenceCache,
    vocab: usize,
) -> Result<Option<Vec<f32>>, EngineError> {
    let logits = model.model.forward(&prompt[start..end], cache, false)?;
    if end < prompt.len() {
        return Ok(None);
    }
    let mut logits = logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    logits.resize(vocab, f32::NEG_INFINITY);
    Ok(Some(logits))
}

/// Generates a completion of `prompt_ids` with `model`, calling `on_text` with each piece of
/// text as soon as it is complete (UTF-8 safe, stop sequences cut).
///
/// A failure before the first token is an `Err`; a failure after it returns `Ok` with the text
/// so far, `finish_reason` [`FinishReason::Error`] and the error in `error`.
///
/// [`FinishReason::Error`]: crate::FinishReason::Error
pub fn generate(
    model: &LoadedModel,
    prompt_ids: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, EngineError> {
    params.validate()?;
    check_prompt(model, prompt_ids)?;
    let config = model.config();
    let capacity = (prompt_ids.len() + params.max_tokens).min(config.context_length);
    let mut kv = model
        .model
        .new_cache(&KvCacheConfig::default().max_entries(capacity))?;
    let vocab = config.vocab_size;
    let token_bytes = Arc::new(model.tokenizer.token_bytes());
    let mut seq = SequenceState::new(model, token_bytes, prompt_ids, params)?;
    let mut input: Vec<u32> = prompt_ids.to_vec();
    let mut piece = String::new();
    while seq.wants_forward() {
        if kv.len() + input.len() > kv.capacity() {
            seq.end(FinishReason::Length);
            break;
        }
        piece.clear();
        let step = (|| -> Result<Option<u32>, EngineError> {
            // The prompt in chunks, as the scheduler runs it (the same logits).
            let mut start = 0;
            loop {
                let end = (start + DEFAULT_PREFILL_CHUNK).min(input.len());
                if let Some(mut logits) = prefill_chunk(model, &input, start, end, &mut kv, vocab)?
                {
                    return seq.advance(&mut logits, &mut piece);
                }
                start = end;
            }
        })();
        if !piece.is_empty() {
            on_text(&piece);
        }
        match step {
            Ok(Some(token)) => {
                input.clear();
                input.push(token);
            }
            Ok(None) => break,
            Err(e) if seq.generated().is_empty() => return Err(e),
            Err(e) => {
                seq.fail(&e);
                break;
            }
        }
    }
    piece.clear();
    seq.finalize(&mut piece);
    if !piece.is_empty() {
        on_text(&piece);
    }
    Ok(seq.into_generation())
}
