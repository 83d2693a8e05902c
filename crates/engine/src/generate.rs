//! One sequence, start to finish: the decode loop that the CLI uses and the scheduler repeats.
//!
//! Per step: the model's logits for the last position → the constraint's allowed-token mask →
//! the sampler (the sampling crate makes every decision) → commit the token to the constraint,
//! the detokenizer and the stop matcher → stream the text.

use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_mask::TokenMask;
use fluent_ai_candle_models::LoadedModel;
use fluent_ai_candle_sampling::{Sampler, SamplingConfig};

use crate::constraint::{ActiveConstraint, ConstraintSpec};
use crate::detok::Detokenizer;
use crate::stop::{StopMatcher, StopOutcome};
use crate::{EngineError, FinishReason, Generation, Usage};

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

/// Generates a completion of `prompt_ids` with `model`, calling `on_text` with each piece of
/// text as soon as it is complete (UTF-8 safe, stop sequences cut).
///
/// A failure before the first token is an `Err`; a failure after it returns `Ok` with the text
/// so far, `finish_reason` [`FinishReason::Error`] and the error in `error`.
pub fn generate(
    model: &LoadedModel,
    prompt_ids: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, EngineError> {
    params.validate()?;
    let config = model.config();
    if prompt_ids.is_empty() {
        return Err(EngineError::InvalidRequest("the prompt has no tokens".into()));
    }
    if prompt_ids.len() >= config.context_length {
        return Err(EngineError::Model(
            fluent_ai_candle_models::ModelError::ContextOverflow {
                prompt_tokens: prompt_ids.len(),
                context_length: config.context_length,
            },
        ));
    }
    let capacity = (prompt_ids.len() + params.max_tokens).min(config.context_length);
    let mut kv = model
        .model
        .new_cache(&KvCacheConfig::default().max_entries(capacity))?;
    let vocab = config.vocab_size;
    let mut sampler = Sampler::new(params.sampling_config()?, vocab, params.seed)?;
    let token_bytes = model.tokenizer.token_bytes();
    let mut constraint = match &params.constraint {
        Some(spec) => Some(ActiveConstraint::start(spec, &model.tokenizer)?),
        None => None,
    };
    let mut mask = TokenMask::allow_all(vocab);
    let mut detok = Detokenizer::new();
    let mut stops = StopMatcher::new(&params.stop);
    let mut history: Vec<u32> = Vec::with_capacity(prompt_ids.len() + params.max_tokens);
    history.extend_from_slice(prompt_ids);
    let mut generated: Vec<u32> = Vec::with_capacity(params.max_tokens);
    let mut text = String::new();
    let mut piece = String::new();
    let mut logits_buf = vec![0f32; vocab];

    let mut input: Vec<u32> = prompt_ids.to_vec();
    let mut finish = FinishReason::Length;
    let mut error = None;
    let mut stopped_by_sequence = false;
    while generated.len() < params.max_tokens {
        if kv.len() + input.len() > kv.capacity() {
            finish = FinishReason::Length;
            break;
        }
        let step = (|| -> Result<Option<u32>, EngineError> {
            let logits = model.model.forward(&input, &mut kv, false)?;
            let logits = logits.to_dtype(candle_core::DType::F32)?;
            let v = logits.to_vec1::<f32>()?;
            logits_buf[..v.len().min(vocab)].copy_from_slice(&v[..v.len().min(vocab)]);
            let mask_ref = match constraint.as_mut() {
                Some(c) => {
                    if c.is_finished() {
                        return Ok(None);
                    }
                    c.compute_mask(&mut mask)?;
                    Some(&mask)
                }
                None => None,
            };
            let sampled = sampler.sample(&mut logits_buf, mask_ref, &history)?;
            if let Some(c) = constraint.as_mut() {
                c.commit(sampled.token)?;
            }
            Ok(Some(sampled.token))
        })();
        let token = match step {
            Ok(Some(t)) => t,
            Ok(None) => {
                finish = FinishReason::Stop;
                break;
            }
            Err(e) if generated.is_empty() => return Err(e),
            Err(e) => {
                finish = FinishReason::Error;
                error = Some(e.to_string());
                break;
            }
        };
        generated.push(token);
        history.push(token);
        if model.tokenizer.is_eog(token) {
            finish = FinishReason::Stop;
            break;
        }
        piece.clear();
        if let Some(bytes) = token_bytes.get(token as usize) {
            detok.push(bytes, &mut piece);
        }
        match stops.push(&piece) {
            StopOutcome::Continue(s) => {
                if !s.is_empty() {
                    on_text(&s);
                    text.push_str(&s);
                }
            }
            StopOutcome::Stopped(s) => {
                if !s.is_empty() {
                    on_text(&s);
                    text.push_str(&s);
                }
                finish = FinishReason::Stop;
                stopped_by_sequence = true;
                break;
            }
        }
        input.clear();
        input.push(token);
    }
    if !stopped_by_sequence {
        let mut rest = String::new();
        detok.finish(&mut rest);
        let mut tail = match stops.push(&rest) {
            StopOutcome::Continue(s) | StopOutcome::Stopped(s) => s,
        };
        tail.push_str(&stops.finish());
        if !tail.is_empty() {
            on_text(&tail);
            text.push_str(&tail);
        }
    }
    if let (Some(c), None) = (constraint.as_ref(), error.as_ref()) {
        if let Err(e) = c.validate_output(&text) {
            finish = FinishReason::Error;
            error = Some(e.to_string());
        }
    }
    let usage = Usage {
        prompt_tokens: prompt_ids.len(),
        completion_tokens: generated.len(),
        total_tokens: prompt_ids.len() + generated.len(),
    };
    Ok(Generation {
        text,
        token_ids: generated,
        finish_reason: finish,
        usage,
        error,
    })
}

