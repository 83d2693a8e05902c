//! The crate's typed error.

/// Everything that can go wrong when configuring a sampler or sampling one step.
///
/// Errors never allocate (their fields are numbers and `&'static str`), so returning one does
/// not break the no-allocation-per-step guarantee.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplingError {
    /// The vocabulary (or the logits slice) is empty.
    #[error("the vocabulary is empty")]
    EmptyVocabulary,
    /// The logits slice does not have the vocabulary size the sampler was built for.
    #[error("expected {expected} logits (the vocabulary size), got {got}")]
    LogitsLength {
        /// The sampler's vocabulary size.
        expected: usize,
        /// The length of the slice passed in.
        got: usize,
    },
    /// The mask does not cover the sampler's vocabulary.
    #[error("the token mask covers {got} ids but the vocabulary has {expected}")]
    MaskLength {
        /// The sampler's vocabulary size.
        expected: usize,
        /// `TokenMask::len()` of the mask passed in.
        got: usize,
    },
    /// A logit is NaN or infinite.
    #[error("logit {index} is not finite ({value})")]
    NonFiniteLogit {
        /// Token id of the first offending logit.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// `top_k` is zero.
    #[error("top-k must be at least 1")]
    ZeroTopK,
    /// A probability parameter lies outside its allowed range.
    #[error("{name} = {value} is outside {range}")]
    InvalidProbability {
        /// Parameter name (`top_p`, `min_p`, ...).
        name: &'static str,
        /// The rejected value.
        value: f32,
        /// The allowed range, in words.
        range: &'static str,
    },
    /// The temperature is negative, NaN, infinite or below
    /// [`MIN_TEMPERATURE`](crate::MIN_TEMPERATURE) without being 0.
    #[error("temperature must be 0 (greedy) or a finite number >= 1e-30, got {0}")]
    InvalidTemperature(f32),
    /// Another numeric parameter is out of range.
    #[error("{name} = {value} is invalid: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// The rejected value (as `f64`).
        value: f64,
        /// Why.
        reason: &'static str,
    },
    /// A token id in the configuration (logit bias, DRY breakers) is outside the vocabulary.
    #[error("token {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// More alternatives were requested than [`MAX_TOP_LOGPROBS`](crate::MAX_TOP_LOGPROBS).
    #[error("top_logprobs = {0} exceeds the maximum of 20")]
    TooManyTopLogprobs(usize),
    /// After the mask and the processors, no token is left to sample (for example a mask that
    /// allows nothing).
    #[error("no token is allowed: the mask or the processors removed every candidate")]
    NoCandidates,
    /// A user [`LogitsProcessor`](crate::LogitsProcessor) reported a failure.
    #[error("logits processor `{0}` failed")]
    Processor(&'static str),
}
