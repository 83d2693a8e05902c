//! Whole-sequence confidence from per-token log-probabilities.

use crate::sampler::SampledToken;

/// Accumulates per-token log-probabilities into a confidence score for a whole sequence.
///
/// The score is the geometric mean of the token probabilities, `exp(mean logprob)`, in
/// `(0, 1]`; it is the inverse of the sequence's perplexity (`exp(−mean logprob)`). Feeding
/// the model-distribution logprobs ([`LogprobSource::Model`](crate::LogprobSource::Model))
/// measures how sure the *model* was; the default sampled-distribution logprobs measure how
/// much freedom the sampler actually had. Sums are kept in `f64`; no allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SequenceConfidence {
    count: u64,
    sum_logprob: f64,
    min_logprob: f32,
    sum_entropy: f64,
}

impl SequenceConfidence {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sampled token.
    pub fn push(&mut self, token: &SampledToken) {
        self.push_logprob(token.logprob, token.entropy);
    }

    /// Adds a raw log-probability (natural log) and the step's entropy. Non-finite values are
    /// ignored.
    pub fn push_logprob(&mut self, logprob: f32, entropy: f32) {
        if logprob.is_nan() {
            return;
        }
        if self.count == 0 || logprob < self.min_logprob {
            self.min_logprob = logprob;
        }
        self.count += 1;
        self.sum_logprob += logprob as f64;
        if entropy.is_finite() {
            self.sum_entropy += entropy as f64;
        }
    }

    /// Number of tokens seen.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Mean log-probability per token (`None` when empty).
    pub fn mean_logprob(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_logprob / self.count as f64)
    }

    /// Perplexity `exp(−mean logprob)` (`None` when empty).
    pub fn perplexity(&self) -> Option<f64> {
        self.mean_logprob().map(|m| (-m).exp())
    }

    /// Confidence score in `[0, 1]`: the geometric-mean token probability (`None` when
    /// empty).
    pub fn score(&self) -> Option<f64> {
        self.mean_logprob().map(|m| m.exp().clamp(0.0, 1.0))
    }

    /// The least likely token's log-probability (`None` when empty).
    pub fn min_logprob(&self) -> Option<f32> {
        (self.count > 0).then_some(self.min_logprob)
    }

    /// Mean per-step entropy in nats (`None` when empty).
    pub fn mean_entropy(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_entropy / self.count as f64)
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}
