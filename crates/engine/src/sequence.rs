//! The per-sequence decode step shared by [`generate`](crate::generate) and the scheduler.
//!
//! A [`SequenceState`] holds everything one sequence needs between forward passes except its
//! KV cache: the sampler with its own seed, the constraint state, the UTF-8-safe detokenizer,
//! the stop matcher and the token history. The caller runs the model (alone or in a batch) and
//! hands the logits to [`SequenceState::advance`], so a sequence samples exactly the same way
//! whether it runs alone or inside a batch.

use std::sync::Arc;

use fluent_ai_candle_constraints::CompiledConstraint;
use fluent_ai_candle_mask::TokenMask;
use fluent_ai_candle_sampling::{Sampler, SamplerChain, SamplingConfig, SequenceConfidence};

use crate::constraint::ActiveConstraint;
use crate::detok::Detokenizer;
use crate::prepare::ModelTables;
use crate::stop::{StopMatcher, StopOutcome};
use crate::{EngineError, FinishReason, Generation, TokenLogprob, Usage};

/// The state of one sequence between decode steps.
pub(crate) struct SequenceState {
    sampler: Sampler,
    constraint: Option<ActiveConstraint>,
    mask: TokenMask,
    detok: Detokenizer,
    stops: StopMatcher,
    token_bytes: Arc<Vec<Vec<u8>>>,
    eog: Arc<[u32]>,
    history: Vec<u32>,
    prompt_len: usize,
    /// Every sampled token's log-probability and entropy, summed (no allocation).
    confidence: SequenceConfidence,
    /// Prompt tokens the prefix cache supplied.
    cached_tokens: usize,
    generated: Vec<u32>,
    text: String,
    max_tokens: usize,
    finish: Option<FinishReason>,
    error: Option<String>,
    stopped_by_sequence: bool,
    finalized: bool,
    ignore_eos: bool,
    record_logprobs: bool,
    logprobs: Vec<TokenLogprob>,
    close_constraint: bool,
    /// Set once a token was forced to close the constraint: the output then ends with
    /// `Length` (cut short by the budget), whatever token ends it.
    closing: bool,
    /// The logits of a step whose sampled token is checked against the budget (see
    /// `ActiveConstraint::commit_if_closable`), to sample the closing token from instead.
    guard_logits: Vec<f32>,
}

/// What a sequence is asked to do, resolved from a request (see `prepare`).
pub(crate) struct SequenceParams<'a> {
    pub(crate) sampling: SamplingConfig,
    pub(crate) seed: u64,
    pub(crate) constraint: Option<Arc<CompiledConstraint>>,
    pub(crate) stop: &'a [String],
    pub(crate) max_tokens: usize,
    pub(crate) logprobs: bool,
    pub(crate) close_constraint: bool,
    pub(crate) ignore_eos: bool,
    /// User processors, run before the built-in chain.
    pub(crate) processors: &'a [crate::ProcessorFactory],
}

impl SequenceState {
    /// Starts a sequence for `prompt_ids` (validated by the caller) over a vocabulary of
    /// `vocab` tokens.
    pub(crate) fn new(
        vocab: usize,
        tables: &ModelTables,
        prompt_ids: &[u32],
        params: SequenceParams<'_>,
    ) -> Result<Self, EngineError> {
        // The user's processors, then the built-in chain (what `Sampler::new` builds alone).
        params.sampling.validate(vocab)?;
        let mut chain = params
            .processors
            .iter()
            .fold(SamplerChain::new(), |c, f| c.with_processor(f.build()));
        for spec in params.sampling.chain {
            chain = chain.with(spec);
        }
        let sampler = Sampler::with_chain(
            chain,
            params.sampling.top_logprobs,
            params.sampling.logprob_source,
            vocab,
            params.seed,
        )?;
        let constraint = params
            .constraint
            .as_ref()
            .map(ActiveConstraint::from_compiled);
        let mut history = Vec::with_capacity(prompt_ids.len() + params.max_tokens.min(4096));
        history.extend_from_slice(prompt_ids);
        Ok(Self {
            sampler,
            constraint,
            mask: TokenMask::allow_all(vocab),
            detok: Detokenizer::new(),
            stops: StopMatcher::new(params.stop),
            token_bytes: tables.token_bytes.clone(),
            eog: tables.eog.clone(),
            history,
            prompt_len: prompt_ids.len(),
            cached_tokens: 0,
            confidence: SequenceConfidence::new(),
            generated: Vec::new(),
            text: String::new(),
            max_tokens: params.max_tokens,
            finish: None,
            error: None,
            stopped_by_sequence: false,
            finalized: false,
            ignore_eos: params.ignore_eos,
            record_logprobs: params.logprobs,
            logprobs: Vec::new(),
            close_constraint: params.close_constraint,
            closing: false,
            guard_logits: Vec::new(),
        })
    }

    /// The vocabulary the sequence's constraint was compiled for.
    #[cfg(test)]
    pub(crate) fn constraint_vocabulary(
        &self,
    ) -> Option<&Arc<fluent_ai_candle_constraints::Vocabulary>> {
        self.constraint.as_ref().map(|c| c.compiled().vocabulary())
    }

    /// Tokens generated so far.
    pub(crate) fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// One entry per generated token when logprobs were asked for, else empty.
    pub(crate) fn logprobs(&self) -> &[TokenLogprob] {
        &self.logprobs
    }

    /// Why the sequence ended, once it has.
    pub(crate) fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// True once the sequence has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Ends the sequence with `reason` (for example when its cache is full).
    pub(crate) fn end(&mut self, reason: FinishReason) {
        if self.finish.is_none() {
            self.finish = Some(reason);
        }
    }

    /// Ends the sequence with an error; the text so far is kept.
    pub(crate) fn fail(&mut self, error: &EngineError) {
        self.finish = Some(FinishReason::Error);
        self.error = Some(error.to_string());
    }

    /// The error that ended the sequence, if any.
    pub(crate) fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Usage so far.
    pub(crate) fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated.len(),
            total_tokens: self.prompt_len + self.generated.len(),
            cached_tokens: self.cached_tokens,
        }
    }

    /// The whole output's confidence so far (`None` before the first token).
    pub(crate) fn confidence(&self) -> Option<SequenceConfidence> {
        (!self.confidence.is_empty()).then_some(self.confidence)
    }

    /// Records that the prefix cache supplied the first `n` prompt tokens.
    pub(crate) fn set_cached_tokens(&mut self, n: usize) {
        self.cached_tokens = n.min(self.prompt_len);
    }

    /// How an end chosen by the model or the constraint is reported: `Stop`, or `Length` when
    /// the output had to be closed before the budget ran out.
    fn natural_end(&self) -> FinishReason {
        if self.closing {
            FinishReason::Length
        } else {
            FinishReason::Stop
        }
    }

    /// Whether another forward pass is needed: false (and the sequence ends) once `max_tokens`
    /// are generated or the constraint admits nothing but the end.
    pub(crate) fn wants_forward(&mut self) -> bool {
        if self.finish.is_some() {
            return false;
        }
        if self.generated.len() >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
            return false;
        }
        if let Some(c) = self.constraint.as_mut() {
            if c.is_finished() {
                self.finish = Some(self.natural_end());
                return false;
            }
        }
        true
    }

    /// Samples the next token from `logits` (`[vocab]`, modified in place), commits it and
    /// appends the text that is now safe to emit to `out`. Returns the token to feed the model
    /// next, or `None` when the sequence ended (end-of-generation token, stop sequence,
    /// `max_tokens`). An error leaves the sequence unchanged.
    pub(crate) fn advance(
        &mut self,
        logits: &mut [f32],
        out: &mut String,
    ) -> Result<Option<u32>, EngineError> {
        let remaining = self.max_tokens.saturating_sub(self.generated.len());
        let close = self.close_constraint;
        let mut guard = false;
        let mask = match self.constraint.as_mut() {
            Some(c) => {
                // Near the end of the budget, the next token may be forced along the
                // shortest completion so the output closes (see `close_constraint`).
                let forced = if close {
                    c.closing_token(remaining)
                } else {
                    None
                };
                match forced {
                    Some(forced) => {
                        self.closing = true;
                        self.mask.set_all(false);
                        self.mask.allow(forced);
                    }
                    None => {
                        c.compute_mask(&mut self.mask)?;
                        guard = close && c.guards_budget(remaining);
                    }
                }
                Some(&self.mask)
            }
            None => None,
        };
        if guard {
            // kept to sample again should the model's token leave no room to close
            self.guard_logits.clear();
            self.guard_logits.extend_from_slice(logits);
        }
        let mut sampled = self.sampler.sample(logits, mask, &self.history)?;
        if let Some(c) = self.constraint.as_mut() {
            if !guard {
                c.commit(sampled.token)?;
            } else if let Some(forced) = c.commit_if_closable(sampled.token, remaining)? {
                // The sampled token opens more than the budget can close (a new array item
                // with required properties, say): the closing token is taken instead.
                self.closing = true;
                self.mask.set_all(false);
                self.mask.allow(forced);
                logits.copy_from_slice(&self.guard_logits);
                sampled = self
                    .sampler
                    .sample(logits, Some(&self.mask), &self.history)?;
                c.commit(sampled.token)?;
            }
        }
        let token = sampled.token;
        self.confidence.push(&sampled);
        if self.record_logprobs {
            let bytes_of = |t: u32| {
                self.token_bytes
                    .get(t as usize)
                    .cloned()
                    .unwrap_or_default()
            };
            self.logprobs.push(TokenLogprob {
                token,
                logprob: sampled.logprob,
                top_logprobs: sampled.top_logprobs.to_vec(),
                bytes: bytes_of(token),
                top_bytes: sampled
                    .top_logprobs
                    .iter()
                    .map(|&(t, _)| bytes_of(t))
                    .collect(),
            });
        }
        self.generated.push(token);
        self.history.push(token);
        if !self.ignore_eos && self.eog.contains(&token) {
            self.finish = Some(self.natural_end());
            return Ok(None);
        }
        let mut piece = String::new();
        if let Some(bytes) = self.token_bytes.get(token as usize) {
            self.detok.push(bytes, &mut piece);
        }
        match self.stops.push(&piece) {
            StopOutcome::Continue(s) => {
                out.push_str(&s);
                self.text.push_str(&s);
            }
            StopOutcome::Stopped(s) => {
                out.push_str(&s);
                self.text.push_str(&s);
                self.finish = Some(FinishReason::Stop);
                self.stopped_by_sequence = true;
                return Ok(None);
            }
        }
        if self.generated.len() >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
            return Ok(None);
        }
        Ok(Some(token))
    }

    /// Ends the sequence (reason `Length` unless already set): releases held-back text into
    /// `out` and validates the constraint's output. Idempotent.
    pub(crate) fn finalize(&mut self, out: &mut String) {
        if self.finalized {
            return;
        }
        self.finalized = true;
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Length);
        }
        if !self.stopped_by_sequence {
            let mut rest = String::new();
            self.detok.finish(&mut rest);
            let mut tail = match self.stops.push(&rest) {
                StopOutcome::Continue(s) => s,
                StopOutcome::Stopped(s) => {
                    self.finish = Some(FinishReason::Stop);
                    self.stopped_by_sequence = true;
                    s
                }
            };
            if !self.stopped_by_sequence {
                tail.push_str(&self.stops.finish());
            }
            out.push_str(&tail);
            self.text.push_str(&tail);
        }
        // A constrained output is validated when it claims to be complete, or when it was
        // closed before `max_tokens` (complete text, `finish_reason: length`). One cut
        // mid-value keeps `length` (as OpenAI reports a truncated JSON response): the reason
        // already says it is unfinished, and the text so far is kept.
        let closed = self.constraint.as_ref().is_some_and(|c| c.is_accepting());
        let complete = self.finish == Some(FinishReason::Stop) || closed;
        if let (Some(c), None, true) = (self.constraint.as_ref(), self.error.as_ref(), complete) {
            if let Err(e) = c.validate_output(&self.text) {
                self.finish = Some(FinishReason::Error);
                self.error = Some(e.to_string());
            }
        }
    }

    /// The finished generation.
    pub(crate) fn into_generation(mut self) -> Generation {
        let mut sink = String::new();
        self.finalize(&mut sink);
        let usage = self.usage();
        let confidence = self.confidence();
        Generation {
            text: self.text,
            token_ids: self.generated,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            usage,
            error: self.error,
            logprobs: self.logprobs,
            confidence,
        }
    }
}
