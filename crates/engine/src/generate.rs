//! One sequence, start to finish: the decode loop that the CLI uses and the scheduler repeats.
//!
//! Per step: the model's logits for the last position → the constraint's allowed-token mask →
//! the sampler (the sampling crate makes every decision) → commit the token to the constraint,
//! the detokenizer and the stop matcher → stream the text.

use fluent_ai_candle_kv_cache::EvictionStrategy;
use fluent_ai_candle_models::LoadedModel;

use crate::api::CandleCompletionRequest;
use crate::config::GenerationConfig;
use crate::prepare::{prepare, ModelTables, Reuse};
use crate::{EngineError, FinishReason, Generation};

/// Largest `max_tokens` accepted (anything larger is an error, not a silent clamp).
pub const MAX_TOKENS_LIMIT: usize = 1 << 20;

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
    let logits = model.decoder.forward(&prompt[start..end], cache, false)?;
    if end < prompt.len() {
        return Ok(None);
    }
    let mut logits = logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    logits.resize(vocab, f32::NEG_INFINITY);
    Ok(Some(logits))
}

/// Generates a completion of `request` with `model` on the calling thread, calling `on_text`
/// with each piece of text as soon as it is complete (UTF-8 safe, stop sequences cut). Fields
/// the request leaves unset take [`GenerationConfig::default`]'s values.
///
/// The prompt is prepared as a [`CandleGenerator`](crate::CandleGenerator) prepares it (a chat
/// rendered through the model's template, text tokenized). A failure before the first token is
/// an `Err`; a failure after it returns `Ok` with the text so far, `finish_reason`
/// [`FinishReason::Error`] and the error in `error`.
///
/// [`FinishReason::Error`]: crate::FinishReason::Error
pub fn generate(
    model: &LoadedModel,
    request: &CandleCompletionRequest,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, EngineError> {
    let tables = ModelTables::new(model);
    let defaults = GenerationConfig::default();
    let prepared = prepare(model, &tables, request, &defaults, &mut Reuse::default())?;
    let mut kv = model.decoder.new_cache(&prepared.kv)?;
    let evicts = prepared.kv.eviction_strategy != EvictionStrategy::None;
    let vocab = model.config().vocab_size;
    let mut seq = prepared.seq;
    let mut input = prepared.prompt_ids;
    let mut piece = String::new();
    while seq.wants_forward() {
        if !evicts && kv.len() + input.len() > kv.capacity() {
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
