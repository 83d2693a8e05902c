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
            let logits = model.decoder.forward(&input, &mut kv, false)?;
            let mut logits = logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            logits.resize(vocab, f32::NEG_INFINITY);
            seq.advance(&mut logits, &mut piece)
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
