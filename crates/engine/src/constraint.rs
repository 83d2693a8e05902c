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
}

impl ActiveConstraint {
    /// Starts a state of an already compiled constraint.
    pub fn from_compiled(compiled: &Arc<CompiledConstraint>) -> Self {
        Self {
            state: compiled.start(),
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
    /// one included), or `None` while the model may still choose freely. Forces once the
    /// shortest completion, tokenized greedily, needs at least `remaining - 1` tokens (one
    /// step of slack: a freely chosen token may lengthen the completion).
    pub fn closing_token(&mut self, remaining: usize) -> Option<u32> {
        if remaining > CLOSE_WINDOW {
            return None;
        }
        let rest = self.state.shortest_completion()?;
        if rest.is_empty() {
            return None;
        }
        let need = self
            .state
            .constraint()
            .vocabulary()
            .greedy_tokenize(&rest)
            .len();
        if need + 1 < remaining {
            return None;
        }
        self.state.closing_token(&rest)
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
