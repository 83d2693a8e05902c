//! Embeddings from the loaded decoder: each input's final hidden states (after the final
//! norm, before the output projection, [`Decoder::hidden_states`]) pooled into one vector
//! and L2-normalised.
//!
//! Each input runs alone in a fresh KV cache of its own length (the scheduler's caches and
//! the prefix cache are not touched, so generation is not disturbed), in chunks of
//! [`GenerationConfig::prefill_chunk`](crate::GenerationConfig::prefill_chunk) tokens as a
//! prompt's prefill runs: an input's vector does not depend on the other inputs of its
//! request.

use fluent_ai_candle_kv_cache::{EvictionStrategy, KvCacheConfig};
use fluent_ai_candle_models::{Decoder, LoadedModel, ModelError};

use crate::prepare::tokenize_prompt;
use crate::{EngineError, Prompt};

/// How the hidden states of an input's tokens become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The mean over every token's hidden state (the default).
    #[default]
    Mean,
    /// The last token's hidden state (the one that has attended to the whole input).
    Last,
}

impl Pooling {
    /// The name used on the wire: `mean`, `last`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Last => "last",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = EmbedError;

    /// `mean` or `last`; anything else is [`EmbedError::UnknownPooling`].
    fn from_str(s: &str) -> Result<Self, EmbedError> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "last" => Ok(Pooling::Last),
            other => Err(EmbedError::UnknownPooling(other.to_string())),
        }
    }
}

/// A request for embeddings: one vector per input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbeddingRequest {
    /// The inputs: texts (tokenized with a BOS token when the model's tokenizer asks for
    /// one) or token ids. A [`Prompt::Chat`] is rendered through the chat template without
    /// the assistant turn opened.
    pub inputs: Vec<Prompt>,
    /// How token states are pooled.
    pub pooling: Pooling,
    /// Keep only the first `dimensions` components (then normalise again), as OpenAI's
    /// `dimensions` shortens its embeddings; `None`: the model's hidden size. At most the
    /// hidden size.
    pub dimensions: Option<usize>,
}

/// The vectors of an [`EmbeddingRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One unit-length vector per input, in the inputs' order.
    pub vectors: Vec<Vec<f32>>,
    /// The tokens of every input together (OpenAI's `usage.prompt_tokens`).
    pub prompt_tokens: usize,
}

/// Why an [`EmbeddingRequest`] was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The request has no inputs.
    #[error("the input is empty: give at least one text or token list")]
    NoInput,
    /// An input is empty (no text, or no tokens after tokenizing).
    #[error("input {index} is empty")]
    EmptyInput {
        /// The input's position in the request.
        index: usize,
    },
    /// An input is longer than the model's context.
    #[error(
        "input {index} has {tokens} tokens, more than the model's context of {context_length}"
    )]
    TooLong {
        /// The input's position in the request.
        index: usize,
        /// Its tokens.
        tokens: usize,
        /// The model's context length.
        context_length: usize,
    },
    /// A token id of an input is outside the model's vocabulary.
    #[error("input {index}: token id {id} out of range for a vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The input's position in the request.
        index: usize,
        /// The id.
        id: u32,
        /// The vocabulary's size.
        vocab_size: usize,
    },
    /// `dimensions` is 0 or larger than the model's hidden size.
    #[error(
        "dimensions must be between 1 and the model's hidden size {hidden_size}, not {requested}"
    )]
    Dimensions {
        /// What was asked.
        requested: usize,
        /// The model's hidden size.
        hidden_size: usize,
    },
    /// A pooling name other than `mean` or `last`.
    #[error("unknown pooling '{0}' (use 'mean' or 'last')")]
    UnknownPooling(String),
    /// The model's architecture does not expose its hidden states.
    #[error("this model cannot compute embeddings: {0}")]
    Unsupported(String),
    /// Tokenizing or rendering an input failed, or the generator refuses every request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The forward pass failed.
    #[error("embedding failed: {0}")]
    Model(ModelError),
    /// The job running the forward passes panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EmbedError {
    /// True when the request is to blame (a protocol layer answers 400), false for a
    /// failure inside the engine.
    pub fn is_client_error(&self) -> bool {
        match self {
            EmbedError::Model(_) | EmbedError::Internal(_) => false,
            EmbedError::Engine(e) => matches!(e, EngineError::InvalidRequest(_)),
            _ => true,
        }
    }
}

impl From<ModelError> for EmbedError {
    fn from(e: ModelError) -> Self {
        match e {
            e @ ModelError::UnsupportedOperation { .. } => EmbedError::Unsupported(e.to_string()),
            e => EmbedError::Model(e),
        }
    }
}

/// The token ids of every input, checked (not empty, inside the context and the
/// vocabulary) before any model work.
fn tokenize_inputs(model: &LoadedModel, inputs: &[Prompt]) -> Result<Vec<Vec<u32>>, EmbedError> {
    if inputs.is_empty() {
        return Err(EmbedError::NoInput);
    }
    let config = model.config();
    let vocab_size = config.vocab_size;
    let mut all = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let ids = match input {
            Prompt::Text(t) if t.is_empty() => return Err(EmbedError::EmptyInput { index }),
            Prompt::Chat(messages) => {
                if messages.is_empty() {
                    return Err(EmbedError::EmptyInput { index });
                }
                let text = model
                    .chat_template
                    .render(messages, false)
                    .map_err(|e| EngineError::InvalidRequest(format!("chat template: {e}")))?;
                model
                    .tokenizer
                    .encode(&text, false)
                    .map_err(|e| EngineError::InvalidRequest(format!("tokenizer: {e}")))?
            }
            other => tokenize_prompt(model, other, &[])?,
        };
        if ids.is_empty() {
            return Err(EmbedError::EmptyInput { index });
        }
        if ids.len() > config.context_length {
            return Err(EmbedError::TooLong {
                index,
                tokens: ids.len(),
                context_length: config.context_length,
            });
        }
        if let Some(&id) = ids.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(EmbedError::TokenOutOfRange {
                index,
                id,
                vocab_size,
            });
        }
        all.push(ids);
    }
    Ok(all)
}

/// One input's pooled vector (not normalised), its tokens run in chunks of `chunk` through a
/// cache of its own.
fn pooled(
    decoder: &dyn Decoder,
    ids: &[u32],
    pooling: Pooling,
    chunk: usize,
) -> Result<Vec<f32>, EmbedError> {
    let kv = KvCacheConfig {
        max_entries: ids.len(),
        eviction_strategy: EvictionStrategy::None,
    };
    let mut cache = decoder.new_cache(&kv)?;
    let mut sum: Vec<f64> = Vec::new();
    let mut last: Vec<f32> = Vec::new();
    for piece in ids.chunks(chunk.max(1)) {
        let states = decoder
            .hidden_states(piece, &mut cache)?
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(|e| EmbedError::Model(e.into()))?;
        match pooling {
            Pooling::Mean => {
                for row in &states {
                    if sum.is_empty() {
                        sum = vec![0.0; row.len()];
                    }
                    for (s, &v) in sum.iter_mut().zip(row) {
                        *s += f64::from(v);
                    }
                }
            }
            Pooling::Last => {
                if let Some(row) = states.into_iter().last() {
                    last = row;
                }
            }
        }
    }
    Ok(match pooling {
        Pooling::Mean => {
            let n = ids.len() as f64;
            sum.into_iter().map(|s| (s / n) as f32).collect()
        }
        Pooling::Last => last,
    })
}

/// `v` scaled to unit L2 norm (left as is when it is all zeros).
fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
    v
}

/// Embeds every input of `request` with `model` on the calling thread (see the module
/// documentation); every input is checked before the first forward pass.
pub(crate) fn embed(
    model: &LoadedModel,
    request: &EmbeddingRequest,
    chunk: usize,
) -> Result<Embeddings, EmbedError> {
    let hidden_size = model.config().hidden_size;
    if let Some(d) = request.dimensions {
        if d == 0 || d > hidden_size {
            return Err(EmbedError::Dimensions {
                requested: d,
                hidden_size,
            });
        }
    }
    let inputs = tokenize_inputs(model, &request.inputs)?;
    let mut vectors = Vec::with_capacity(inputs.len());
    for ids in &inputs {
        let mut v = normalise(pooled(&*model.decoder, ids, request.pooling, chunk)?);
        if let Some(d) = request.dimensions.filter(|&d| d < v.len()) {
            v.truncate(d);
            v = normalise(v);
        }
        vectors.push(v);
    }
    Ok(Embeddings {
        vectors,
        prompt_tokens: inputs.iter().map(Vec::len).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_makes_unit_vectors_and_keeps_zeros() {
        let v = normalise(vec![3.0, 4.0]);
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(normalise(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn pooling_parses_its_two_names_only() {
        assert_eq!("mean".parse::<Pooling>().unwrap(), Pooling::Mean);
        assert_eq!("last".parse::<Pooling>().unwrap(), Pooling::Last);
        assert!(matches!(
            "cls".parse::<Pooling>(),
            Err(EmbedError::UnknownPooling(p)) if p == "cls"
        ));
        assert_eq!(Pooling::default(), Pooling::Mean);
    }

    #[test]
    fn unsupported_architectures_are_their_own_error() {
        let e = EmbedError::from(ModelError::UnsupportedOperation {
            architecture: "deepseek2".into(),
            operation: "hidden states (embeddings)",
        });
        assert!(matches!(e, EmbedError::Unsupported(_)));
        assert!(e.is_client_error());
        assert!(!EmbedError::Internal("x".into()).is_client_error());
    }
}
