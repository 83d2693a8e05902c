//! The models crate's error type.

use std::path::PathBuf;

/// What went wrong while finding, reading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model file does not exist.
    #[error("model file not found: {path}")]
    NotFound {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// A model name that is neither a file nor a known cached model.
    #[error(
        "unknown model '{name}': expected a GGUF file, a Hugging Face model directory, hf:ORG/REPO, or one of: {known}"
    )]
    UnknownModel {
        /// The name the user gave.
        name: String,
        /// The names that are known, comma-separated.
        known: String,
    },
    /// A known model name whose file is not in the local model cache.
    #[error("model '{name}' is not in the model cache ({path}); run `cargo xtask fetch-models`")]
    NotCached {
        /// The model name.
        name: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// An `hf:ORG/REPO[:FILE]` reference that is malformed, or names a file (or a repository
    /// snapshot) that is not in the local Hugging Face cache. Nothing is downloaded at run
    /// time: fetch it on a connected machine (`huggingface-cli download ORG/REPO FILE`).
    #[error("hugging face reference '{spec}': {reason}")]
    HubReference {
        /// The reference as given.
        spec: String,
        /// What is wrong (malformed, not cached, ambiguous).
        reason: String,
    },
    /// The file is not a valid GGUF file (bad magic, truncated, corrupt).
    #[error("invalid GGUF file {path}: {reason}")]
    InvalidGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A metadata key the architecture needs (in GGUF metadata, or a Hugging Face
    /// `config.json`) is missing or has the wrong type.
    #[error("metadata key '{key}' is missing or has the wrong type")]
    MissingMetadata {
        /// The key.
        key: String,
    },
    /// A metadata value is present but unusable (inconsistent with another key, out of range).
    #[error("metadata key '{key}': {reason}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// A Hugging Face model file (`config.json`, a `.safetensors` shard or its index,
    /// `tokenizer.json`, `tokenizer_config.json`) that cannot be parsed.
    #[error("invalid model file {path}: {reason}")]
    InvalidModelFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is missing or has the wrong shape.
    #[error("tensor '{name}': {reason}")]
    BadTensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The GGUF declares an architecture this crate does not implement (and no
    /// [`ArchitecturePlugin`](crate::plugin::ArchitecturePlugin) given to the loader handles).
    #[error(
        "unsupported architecture '{0}' (supported: llama, mistral, qwen2, qwen3, phi3, gemma3, deepseek2)"
    )]
    UnsupportedArchitecture(String),
    /// The architecture is supported but the file uses a feature of it that this crate does
    /// not implement (e.g. Phi-3's LongRoPE scaling, `rope_factors_long.weight`).
    #[error("unsupported feature '{name}': {reason}")]
    UnsupportedFeature {
        /// The tensor or metadata key that carries the feature.
        name: String,
        /// What the feature is and why it is refused.
        reason: String,
    },
    /// The architecture's decoder does not offer this operation (e.g. its final hidden
    /// states for embeddings, [`Decoder::hidden_states`](crate::Decoder::hidden_states)).
    #[error("architecture '{architecture}' does not support {operation}")]
    UnsupportedOperation {
        /// `general.architecture` of the model.
        architecture: String,
        /// What was asked of it.
        operation: &'static str,
    },
    /// A Hugging Face `tokenizer.json` that parses but describes a tokenizer this crate does
    /// not run (a model type other than byte-level BPE, e.g. WordPiece, Unigram, or a
    /// sentencepiece-style BPE without a `ByteLevel` pre-tokenizer).
    #[error("unsupported tokenizer {path}: {reason}")]
    UnsupportedTokenizer {
        /// The `tokenizer.json` file.
        path: PathBuf,
        /// What it uses that is not supported.
        reason: String,
    },
    /// The tokenizer could not be built or failed to encode/decode.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template error: {0}")]
    ChatTemplate(String),
    /// The prompt plus the tokens to generate do not fit in the model's context.
    #[error(
        "prompt of {prompt_tokens} tokens does not fit the context of {context_length} tokens"
    )]
    ContextOverflow {
        /// Number of tokens in the prompt.
        prompt_tokens: usize,
        /// The model's (or cache's) context length.
        context_length: usize,
    },
    /// Re-quantizing a GGUF's weights was asked to a format of more bits per value than
    /// they are stored in (quantizing on load only lowers precision).
    #[error(
        "{path} stores its weights as {stored} ({stored_bits} bits per value): re-quantizing \
         to {requested} ({requested_bits} bits) cannot go up in precision"
    )]
    PrecisionIncrease {
        /// The GGUF file.
        path: PathBuf,
        /// The GGML format of most of its matrices.
        stored: String,
        /// Bits per value of that format.
        stored_bits: u32,
        /// The format asked for.
        requested: crate::QuantizationType,
        /// Bits per value of the format asked for.
        requested_bits: u32,
    },
    /// The KV cache refused an append.
    #[error(transparent)]
    KvCache(#[from] fluent_ai_candle_kv_cache::KvCacheError),
    /// A tensor operation failed inside candle.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The load was cancelled through its [`CancelToken`](crate::gguf::CancelToken).
    #[error("model load cancelled")]
    Cancelled,
    /// Reading a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
