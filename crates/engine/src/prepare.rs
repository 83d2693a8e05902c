//! From a [`CandleCompletionRequest`] to a sequence ready for the decode loop: the prompt
//! rendered (chat template) and tokenized, the sampling chain, limits and KV cache resolved
//! against the [`GenerationConfig`] defaults, and the constraint compiled for the model's
//! vocabulary.
//!
//! This is the CPU work a request costs before its prefill. [`CandleGenerator`] does it on
//! tokio's blocking pool when called from async code
//! ([`submit`](crate::CandleGenerator::submit)), never on the async worker threads; the tables
//! it needs from the model (token bytes, end-of-generation ids, the constraint vocabulary and
//! its trie) are built once per loaded model in [`ModelTables`], not per request.
//!
//! [`CandleGenerator`]: crate::CandleGenerator

use std::sync::{Arc, OnceLock};

use fluent_ai_candle_constraints::{CompiledConstraint, ConstraintSpec, Vocabulary};
use fluent_ai_candle_kv_cache::{EvictionStrategy, KvCacheConfig};
use fluent_ai_candle_models::{LoadedModel, ModelError};

use crate::api::{CandleCompletionRequest, Prompt};
use crate::config::GenerationConfig;
use crate::constraint::{compile, vocabulary_for};
use crate::sequence::{SequenceParams, SequenceState};
use crate::tools::{ToolChoice, ToolDefinition};
use crate::{EngineError, MAX_TOKENS_LIMIT};

/// What the engine derives once from a loaded model: every token's bytes (detokenizing and
/// logprobs), the end-of-generation ids, and — on the first constrained request — the
/// constraint vocabulary with its trie.
pub(crate) struct ModelTables {
    pub(crate) token_bytes: Arc<Vec<Vec<u8>>>,
    pub(crate) eog: Arc<[u32]>,
    vocabulary: OnceLock<Arc<Vocabulary>>,
}

impl std::fmt::Debug for ModelTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTables")
            .field("tokens", &self.token_bytes.len())
            .field("eog", &self.eog)
            .field("vocabulary_built", &self.vocabulary.get().is_some())
            .finish()
    }
}

impl ModelTables {
    /// The tables of `model` (the constraint vocabulary waits for its first use).
    pub(crate) fn new(model: &LoadedModel) -> Self {
        let vocab = model.config().vocab_size as u32;
        Self {
            token_bytes: Arc::new(model.tokenizer.token_bytes()),
            eog: (0..vocab).filter(|&t| model.tokenizer.is_eog(t)).collect(),
            vocabulary: OnceLock::new(),
        }
    }

    /// The constraint vocabulary, built on first use and shared by every constrained request
    /// of the model from then on.
    pub(crate) fn vocabulary(&self, model: &LoadedModel) -> Arc<Vocabulary> {
        self.vocabulary
            .get_or_init(|| vocabulary_for(&model.tokenizer))
            .clone()
    }
}

/// A request turned into what the decode loop runs.
pub(crate) struct Prepared {
    /// The prompt's token ids (checked against the context and the vocabulary).
    pub(crate) prompt_ids: Vec<u32>,
    /// The sequence's KV cache configuration.
    pub(crate) kv: KvCacheConfig,
    /// The sequence: sampler, constraint state, stop rules, limits.
    pub(crate) seq: SequenceState,
}

/// What a prompt's token ids depend on: the prompt and the tools shown to the template.
type PromptKey = (Prompt, Vec<serde_json::Value>);

/// Work already done for an earlier request of the same batch (a request's `n` choices share
/// their prompt and constraint): reused when the next request has the same prompt or
/// constraint.
#[derive(Default)]
pub(crate) struct Reuse {
    prompt: Option<(PromptKey, Vec<u32>)>,
    constraint: Option<(ConstraintSpec, Arc<CompiledConstraint>)>,
}

/// The token ids of a prompt: chats rendered through the model's template (with `tools`,
/// OpenAI's tool objects, when there are any), text tokenized (BOS as the tokenizer says),
/// token ids as they are.
pub(crate) fn tokenize_prompt(
    model: &LoadedModel,
    prompt: &Prompt,
    tools: &[serde_json::Value],
) -> Result<Vec<u32>, EngineError> {
    let tok = &model.tokenizer;
    let bad = |what: &str, e: ModelError| EngineError::InvalidRequest(format!("{what}: {e}"));
    match prompt {
        Prompt::Tokens(ids) => Ok(ids.clone()),
        Prompt::Text(text) => tok
            .encode(text, tok.add_bos())
            .map_err(|e| bad("tokenizer", e)),
        Prompt::Chat(messages) => {
            if messages.is_empty() {
                return Err(EngineError::InvalidRequest(
                    "the chat has no messages".into(),
                ));
            }
            let text = model
                .chat_template
                .render_with_tools(messages, tools, true)
                .map_err(|e| bad("chat template", e))?;
            tok.encode(&text, false).map_err(|e| bad("tokenizer", e))
        }
    }
}

/// Checks a prompt against the model before any work: not empty, shorter than the context,
/// every id inside the vocabulary.
pub(crate) fn check_prompt(model: &LoadedModel, prompt_ids: &[u32]) -> Result<(), EngineError> {
    let config = model.config();
    if prompt_ids.is_empty() {
        return Err(EngineError::InvalidRequest(
            "the prompt has no tokens".into(),
        ));
    }
    if prompt_ids.len() >= config.context_length {
        return Err(EngineError::Model(ModelError::ContextOverflow {
            prompt_tokens: prompt_ids.len(),
            context_length: config.context_length,
        }));
    }
    let vocab = config.vocab_size;
    if let Some(bad) = prompt_ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(EngineError::InvalidRequest(format!(
            "token id {bad} out of range for a vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// The same constraint (the compiled one can be shared).
fn same_constraint(a: &ConstraintSpec, b: &ConstraintSpec) -> bool {
    use ConstraintSpec as C;
    match (a, b) {
        (C::JsonSchema(x), C::JsonSchema(y)) => x == y,
        (C::JsonObject, C::JsonObject) => true,
        (C::Regex(x), C::Regex(y)) | (C::Grammar(x), C::Grammar(y)) => x == y,
        (C::Custom(x), C::Custom(y)) => Arc::ptr_eq(x, y),
        (C::TaggedJson(x), C::TaggedJson(y)) => x == y,
        _ => false,
    }
}

/// Resolves `request` against `defaults` and `model`: every limit checked, the prompt
/// tokenized, the constraint compiled. Bad input is a typed error here, before any model work.
pub(crate) fn prepare(
    model: &LoadedModel,
    tables: &ModelTables,
    request: &CandleCompletionRequest,
    defaults: &GenerationConfig,
    reuse: &mut Reuse,
) -> Result<Prepared, EngineError> {
    let max_tokens = request.max_tokens.unwrap_or(defaults.max_tokens);
    if max_tokens == 0 || max_tokens > MAX_TOKENS_LIMIT {
        return Err(EngineError::InvalidRequest(format!(
            "max_tokens must be in 1..={MAX_TOKENS_LIMIT}, got {max_tokens}"
        )));
    }
    let sampling = request.sampling_config(defaults)?;
    let prompt = request.prompt_input()?;
    crate::tools::check(request, &prompt)?;
    // `tool_choice: none` hides the tools: the model writes plain text.
    let tools: Vec<serde_json::Value> = match request.tool_choice {
        ToolChoice::None => Vec::new(),
        _ => request.tools.iter().map(ToolDefinition::to_json).collect(),
    };
    let key = (prompt, tools);
    let prompt_ids = match &reuse.prompt {
        Some((k, ids)) if *k == key => ids.clone(),
        _ => {
            let ids = tokenize_prompt(model, &key.0, &key.1)?;
            reuse.prompt = Some((key, ids.clone()));
            ids
        }
    };
    check_prompt(model, &prompt_ids)?;
    let context = model.config().context_length;
    let budget = defaults.kv_cache.as_ref().and_then(KvCacheConfig::budget);
    let explicit = match (&request.kv_cache, budget) {
        (Some(kv), _) => Some(kv.clone()),
        // A default that is a budget shared by the generator's sequences: this sequence's
        // own cache is sized as without a configuration, capped by the budget, and a full
        // one drops its oldest tokens (LRU in one sequence).
        (None, Some(_)) => None,
        (None, None) => defaults.kv_cache.clone(),
    };
    if let (Some(kv), Some(budget)) = (&explicit, budget) {
        if kv.max_entries > budget.max_tokens() {
            return Err(EngineError::InvalidRequest(format!(
                "KV cache of {} tokens exceeds the generator's KV budget of {} tokens",
                kv.max_entries,
                budget.max_tokens()
            )));
        }
    }
    let kv = match explicit {
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
        None => match budget {
            None => {
                KvCacheConfig::default().max_entries((prompt_ids.len() + max_tokens).min(context))
            }
            Some(budget) => {
                let max_entries = (prompt_ids.len() + max_tokens)
                    .min(context)
                    .min(budget.max_tokens());
                if prompt_ids.len() >= max_entries {
                    return Err(EngineError::Model(ModelError::ContextOverflow {
                        prompt_tokens: prompt_ids.len(),
                        context_length: max_entries,
                    }));
                }
                KvCacheConfig::default()
                    .max_entries(max_entries)
                    .eviction_strategy(EvictionStrategy::LRU)
            }
        },
    };
    let forced = crate::tools::forced_call_constraint(
        &request.tools,
        &request.tool_choice,
        request.parallel_tool_calls.unwrap_or(true),
    )?;
    let constraint = match forced.as_ref().or(request.constraint()?) {
        None => None,
        Some(spec) => Some(match &reuse.constraint {
            Some((s, compiled)) if same_constraint(s, spec) => compiled.clone(),
            _ => {
                let compiled = compile(spec, tables.vocabulary(model))?;
                reuse.constraint = Some((spec.clone(), compiled.clone()));
                compiled
            }
        }),
    };
    let stop = if request.stop.is_empty() {
        &defaults.stop
    } else {
        &request.stop
    };
    let seq = SequenceState::new(
        model.config().vocab_size,
        tables,
        &prompt_ids,
        SequenceParams {
            sampling,
            seed: request.seed.unwrap_or(defaults.seed),
            constraint,
            stop,
            max_tokens,
            logprobs: request.logprobs,
            close_constraint: request.close_constraint.unwrap_or(true),
            ignore_eos: request.ignore_eos,
            processors: &request.processors,
        },
    )?;
    Ok(Prepared {
        prompt_ids,
        kv,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> LoadedModel {
        let path = fluent_ai_candle_models::cache::model_path("smollm2-135m-instruct").unwrap();
        assert!(
            path.is_file(),
            "{} is missing: run `cargo xtask fetch-models` first",
            path.display()
        );
        LoadedModel::load(&path, &candle_core::Device::Cpu, &mut |_| {}).unwrap()
    }

    /// Two constrained requests, prepared separately (nothing reused between them), compile
    /// against one vocabulary: it is built once per model, not per request.
    #[test]
    fn constraint_vocabulary_is_built_once_per_model() {
        let model = smollm2();
        let tables = ModelTables::new(&model);
        assert!(tables.vocabulary.get().is_none(), "built before first use");
        let request = CandleCompletionRequest {
            prompt: "Colour:".into(),
            max_tokens: Some(4),
            constraints: Some(vec![ConstraintSpec::Regex("(red|blue)".into())]),
            ..Default::default()
        };
        let defaults = GenerationConfig::default();
        let a = prepare(&model, &tables, &request, &defaults, &mut Reuse::default()).unwrap();
        let b = prepare(&model, &tables, &request, &defaults, &mut Reuse::default()).unwrap();
        let (va, vb) = (
            a.seq.constraint_vocabulary().unwrap(),
            b.seq.constraint_vocabulary().unwrap(),
        );
        assert!(Arc::ptr_eq(va, vb), "a vocabulary per request");
        assert!(Arc::ptr_eq(va, &tables.vocabulary(&model)));
        // A request without a constraint never builds it.
        let fresh = ModelTables::new(&model);
        let plain = CandleCompletionRequest {
            constraints: None,
            ..request
        };
        prepare(&model, &fresh, &plain, &defaults, &mut Reuse::default()).unwrap();
        assert!(fresh.vocabulary.get().is_none());
    }

    /// The seed's `constraints: Some(vec![..])`: one constraint applies, an empty list is none,
    /// and a second one is a typed error before anything is compiled.
    #[test]
    fn constraints_list_takes_one() {
        let model = smollm2();
        let tables = ModelTables::new(&model);
        let defaults = GenerationConfig::default();
        let regex = |r: &str| ConstraintSpec::Regex(r.into());
        let request = |c: Option<Vec<ConstraintSpec>>| CandleCompletionRequest {
            prompt: "Colour:".into(),
            max_tokens: Some(4),
            constraints: c,
            ..Default::default()
        };
        let one = prepare(
            &model,
            &tables,
            &request(Some(vec![regex("red")])),
            &defaults,
            &mut Reuse::default(),
        )
        .unwrap();
        assert!(one.seq.constraint_vocabulary().is_some());
        let empty = prepare(
            &model,
            &tables,
            &request(Some(vec![])),
            &defaults,
            &mut Reuse::default(),
        )
        .unwrap();
        assert!(empty.seq.constraint_vocabulary().is_none());
        let two = prepare(
            &model,
            &tables,
            &request(Some(vec![regex("red"), regex("blue")])),
            &defaults,
            &mut Reuse::default(),
        );
        assert!(matches!(two, Err(EngineError::InvalidRequest(_))));
    }
}
