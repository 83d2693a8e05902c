//! The constraint of one sequence, adapted from the constraints crate to the model's tokenizer.

use std::sync::Arc;

use fluent_ai_candle_constraints::{
    CompileOptions, CompiledConstraint, Constraint, ConstraintState, Vocabulary,
};
use fluent_ai_candle_mask::TokenMask;
use fluent_ai_candle_models::CandleTokenizer;

pub use fluent_ai_candle_constraints::{ConstraintSpec, GenerationConstraint, JsonSchemaMode};

use crate::EngineError;

/// The constraints crate's vocabulary for a model's tokenizer: every token's bytes, the
/// end-of-generation tokens as EOS (allowed exactly where the constraint may end) and the
/// other control tokens as never allowed.
///
/// Building it (and its token trie) walks the whole vocabulary: a generator builds it once per
/// model, on its first constrained request, and shares it with every later one.
pub fn vocabulary_for(tokenizer: &CandleTokenizer) -> Arc<Vocabulary> {
    let bytes = tokenizer.token_bytes();
    let eos = tokenizer.eot_ids().to_vec();
    let special: Vec<u32> = (0..bytes.len() as u32)
        .filter(|&id| tokenizer.is_control(id) && !eos.contains(&id))
        .collect();
    let bytes = bytes
        .into_iter()
        .enumerate()
        .map(|(id, b)| {
            if tokenizer.is_control(id as u32) {
                Vec::new()
            } else {
                b
            }
        })
        .collect();
    Arc::new(Vocabulary::new(bytes, &eos, &special))
}

/// Compiles a constraint for a model's vocabulary (see [`vocabulary_for`]).
pub fn compile(
    spec: &ConstraintSpec,
    vocab: Arc<Vocabulary>,
) -> Result<Arc<CompiledConstraint>, EngineError> {
    Ok(Constraint::compile(
        spec,
        vocab,
        &CompileOptions::default(),
    )?)
}

/// How many tokens before `max_tokens` the engine starts checking whether a constrained
/// output must be closed (the check walks the parser chart; far from the end it is skipped).
const CLOSE_WINDOW: usize = 256;

/// A running constraint: the per-sequence state of a compiled constraint.
#[derive(Debug)]
pub struct ActiveConstraint {
    state: ConstraintState,
    /// Set once a token was forced to close the output: every later token is forced too.
    closing: bool,
}

impl ActiveConstraint {
    /// Starts a state of an already compiled constraint.
    pub fn from_compiled(compiled: &Arc<CompiledConstraint>) -> Self {
        Self {
            state: compiled.start(),
            closing: false,
        }
    }

    /// The compiled constraint this state runs (with the vocabulary it was compiled for).
    pub fn compiled(&self) -> &Arc<CompiledConstraint> {
        self.state.constraint()
    }

    /// True when nothing but the end may follow.
    pub fn is_finished(&mut self) -> bool {
        self.state.is_finished()
    }

    /// Writes the allowed tokens into `mask`.
    pub fn compute_mask(&mut self, mask: &mut TokenMask) -> Result<(), EngineError> {
        Ok(self.state.compute_mask(mask)?)
    }

    /// Commits the sampled token.
    pub fn commit(&mut self, token: u32) -> Result<(), EngineError> {
        Ok(self.state.commit_token(token)?)
    }

    /// The token to force next so the output ends complete within `remaining` tokens (this
    /// one included), or `None` while the model may still choose freely. Once closing has
    /// begun every later token is forced, along the shortest completion (an EOS token once
    /// the text is complete). Closing begins when the shortest completion, tokenized
    /// greedily, plus [`closing_slack`](fluent_ai_candle_constraints::closing_slack) tokens
    /// no longer fits in the tokens after this one; [`commit_if_closable`](Self::commit_if_closable)
    /// keeps the model's own tokens from outgrowing the budget before that.
    pub fn closing_token(&mut self, remaining: usize) -> Option<u32> {
        if !self.closing {
            if remaining > CLOSE_WINDOW {
                return None;
            }
            self.state.completion_tokens()?;
            if self.state.can_close_within(remaining.saturating_sub(1)) {
                return None;
            }
        }
        self.force_closing_token()
    }

    /// The next token along the shortest completion (EOS when the text is complete); closing
    /// has begun once it returns one.
    fn force_closing_token(&mut self) -> Option<u32> {
        let rest = self.state.shortest_completion()?;
        let token = self.state.closing_token(&rest)?;
        self.closing = true;
        Some(token)
    }

    /// Whether a freely sampled token should be committed with
    /// [`commit_if_closable`](Self::commit_if_closable) at this step: near the end of the
    /// budget, while the output can still be closed in time.
    pub fn guards_budget(&mut self, remaining: usize) -> bool {
        !self.closing
            && remaining <= CLOSE_WINDOW
            && self.state.can_close_within(remaining.saturating_sub(1))
    }

    /// Commits a freely sampled `token` if the output can still be closed within the
    /// `remaining - 1` tokens after it. Otherwise commits nothing and returns the token to
    /// force instead (the next one along the shortest completion: closing begins); `None`
    /// when the token was committed.
    pub fn commit_if_closable(
        &mut self,
        token: u32,
        remaining: usize,
    ) -> Result<Option<u32>, EngineError> {
        if self
            .state
            .commit_if_closable(token, remaining.saturating_sub(1))?
        {
            return Ok(None);
        }
        match self.force_closing_token() {
            Some(forced) => Ok(Some(forced)),
            None => {
                // no token leads along the completion: keep the model's
                self.commit(token)?;
                Ok(None)
            }
        }
    }

    /// True when the text so far is complete.
    pub fn is_accepting(&self) -> bool {
        self.state.is_accepting()
    }

    /// Final validation of the output (JSON Schema constraints: with the jsonschema crate).
    pub fn validate_output(&self, text: &str) -> Result<(), EngineError> {
        Ok(self.state.constraint().validate(text)?)
    }
}

/// The seed's JSON Schema constraint: a schema (and how it is read), checked against a
/// tokenizer's vocabulary by [`for_tokenizer`](Self::for_tokenizer) and put in a request as
/// the [`ConstraintSpec`] it becomes.
///
/// ```
/// use fluent_ai_candle_engine::constraint::{ConstraintSpec, JsonConstraint};
/// let spec: ConstraintSpec = JsonConstraint::new(serde_json::json!({"type": "integer"})).into();
/// assert!(matches!(spec, ConstraintSpec::JsonSchemaWithMode(..)));
/// ```
#[derive(Debug, Clone)]
pub struct JsonConstraint {
    /// The JSON Schema.
    pub schema: serde_json::Value,
    /// How it is read ([`JsonSchemaMode::Generation`] by default).
    pub mode: JsonSchemaMode,
}

impl JsonConstraint {
    /// A constraint to JSON valid under `schema`, read in generation mode.
    pub fn new(schema: serde_json::Value) -> Self {
        Self {
            schema,
            mode: JsonSchemaMode::Generation,
        }
    }

    /// Reads the schema in `mode`.
    pub fn mode(mut self, mode: JsonSchemaMode) -> Self {
        self.mode = mode;
        self
    }

    /// Compiles the schema for `tokenizer`'s vocabulary, so a schema no output could satisfy
    /// (or an invalid one) is a typed error here rather than at the first request, and
    /// returns the request's constraint. The compiled form is not kept: a generator compiles
    /// a request's constraint against its model's shared vocabulary (and reuses it across the
    /// choices of one request).
    pub fn for_tokenizer(self, tokenizer: &CandleTokenizer) -> Result<ConstraintSpec, EngineError> {
        let spec = ConstraintSpec::from(self);
        compile(&spec, vocabulary_for(tokenizer))?;
        Ok(spec)
    }
}

impl From<JsonConstraint> for ConstraintSpec {
    fn from(c: JsonConstraint) -> Self {
        ConstraintSpec::JsonSchemaWithMode(c.schema, c.mode)
    }
}

/// The seed's `create_json_constraint_for_tokenizer(&schema, &tokenizer)?`: a
/// [`JsonConstraint`] for `schema`, checked against `tokenizer`'s vocabulary (see
/// [`JsonConstraint::for_tokenizer`]), as the [`ConstraintSpec`] a request's `constraints`
/// list takes.
pub fn create_json_constraint_for_tokenizer(
    schema: &serde_json::Value,
    tokenizer: &CandleTokenizer,
) -> Result<ConstraintSpec, EngineError> {
    JsonConstraint::new(schema.clone()).for_tokenizer(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluent_ai_candle_constraints::ConstraintSpec;
    use proptest::prelude::*;

    /// Every byte as a token, a few multi-byte JSON pieces (so one token can open a whole
    /// array item), and EOS last.
    fn vocab() -> Arc<Vocabulary> {
        let mut t: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for piece in [
            "{\"", "\", \"", "\": \"", "\"}", "[{\"", "}, {\"", "\"}, {\"", "}]", "\": [", "\": 1",
            ", ", "aaaa", "123",
        ] {
            t.push(piece.as_bytes().to_vec());
        }
        t.push(Vec::new());
        let eos = t.len() as u32 - 1;
        Arc::new(Vocabulary::new(t, &[eos], &[]))
    }

    fn schema() -> serde_json::Value {
        serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "label": {"type": "string"},
                            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}
                        },
                        "required": ["id", "label", "tags"]
                    }
                },
                "n": {"type": "number"}
            },
            "required": ["name", "items"]
        })
    }

    /// The fewest tokens in which the closing rule can bring an empty output to a complete
    /// one: the start's shortest completion plus its slack, plus the first step.
    fn start_budget() -> usize {
        let compiled = compile(&ConstraintSpec::JsonSchema(schema()), vocab()).unwrap();
        let need = compiled.start().completion_tokens().unwrap();
        need + fluent_ai_candle_constraints::closing_slack(need) + 1
    }

    /// Runs the engine's decode loop (`SequenceState::advance`) with an adversary for a model:
    /// at each free step it takes the allowed token `choices` points at, never EOS while
    /// anything else is allowed. Returns the text and whether it ended complete.
    fn run(max_tokens: usize, choices: &[u16]) -> (String, bool) {
        let v = vocab();
        let eos = v.len() as u32 - 1;
        let compiled = compile(&ConstraintSpec::JsonSchema(schema()), v.clone()).unwrap();
        let mut c = ActiveConstraint::from_compiled(&compiled);
        let mut mask = TokenMask::forbid_all(v.len());
        let mut ended = false;
        for step in 0..max_tokens {
            if c.is_finished() {
                ended = true;
                break;
            }
            let remaining = max_tokens - step;
            let token = match c.closing_token(remaining) {
                Some(forced) => {
                    c.commit(forced).unwrap();
                    forced
                }
                None => {
                    c.compute_mask(&mut mask).unwrap();
                    let allowed: Vec<u32> = (0..v.len() as u32)
                        .filter(|&t| mask.is_allowed(t) && t != eos)
                        .collect();
                    let pick = if allowed.is_empty() {
                        eos
                    } else {
                        allowed[choices[step % choices.len()] as usize % allowed.len()]
                    };
                    if c.guards_budget(remaining) {
                        match c.commit_if_closable(pick, remaining).unwrap() {
                            Some(forced) => {
                                c.commit(forced).unwrap();
                                forced
                            }
                            None => pick,
                        }
                    } else {
                        c.commit(pick).unwrap();
                        pick
                    }
                }
            };
            if token == eos {
                ended = true;
                break;
            }
        }
        let text = String::from_utf8(c.state.text_bytes().to_vec()).unwrap_or_default();
        (text, ended || c.is_accepting())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the model picks, an output whose shortest completion fits the budget at
        /// the start ends complete and valid within `max_tokens` (without the check of each
        /// sampled token, tokens such as `[{"` open more than the last few tokens can close).
        #[test]
        fn every_output_closes_within_the_budget(
            extra in 0usize..100,
            choices in proptest::collection::vec(any::<u16>(), 1..64),
        ) {
            let (text, complete) = run(start_budget() + extra, &choices);
            prop_assert!(complete, "{}", text);
            let compiled = compile(&ConstraintSpec::JsonSchema(schema()), vocab()).unwrap();
            prop_assert!(compiled.validate(&text).is_ok(), "{}", text);
        }
    }
}
