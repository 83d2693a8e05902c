//! Sampling: the sampling crate (every logits processor, the [`Sampler`], seeded RNG) and its
//! SIMD kernels in [`simd`].

pub use fluent_ai_candle_sampling::*;

/// The sampling crate's SIMD kernels (AVX2, AVX-512, NEON with a scalar twin, chosen at run
/// time), with the seed's allocating forms of softmax and top-k: [`simd_softmax_f32`] takes
/// the logits and a temperature and returns the probabilities, [`simd_top_k_f32`] returns
/// the `k` best `(token, probability)` pairs. The in-place, allocation-free kernels they run
/// are the sampling crate's: [`softmax_in_place`] and [`top_k_into`] here (its
/// `simd_softmax_f32` and `simd_top_k_f32`).
///
/// ```
/// use fluent_ai_candle::sampling::simd::{simd_cumsum_f32, simd_softmax_f32, simd_top_k_f32};
/// let logits = [1.0f32, 3.0, 2.0, -1.0];
/// let probabilities = simd_softmax_f32(&logits, 0.7)?;
/// let top = simd_top_k_f32(&probabilities, 2)?;
/// assert_eq!(top.iter().map(|&(id, _)| id).collect::<Vec<_>>(), vec![1, 2]);
/// let mut cumulative = probabilities.clone();
/// simd_cumsum_f32(&mut cumulative);
/// assert!((cumulative[3] - 1.0).abs() < 1e-5);
/// # Ok::<(), fluent_ai_candle::SamplingError>(())
/// ```
pub mod simd {
    pub use fluent_ai_candle_sampling::simd::*;
    pub use fluent_ai_candle_sampling::simd::{
        simd_softmax_f32 as softmax_in_place, simd_top_k_f32 as top_k_into,
    };

    use fluent_ai_candle_sampling::SamplingError;

    /// The probabilities of `logits` at `temperature`: `softmax(logits / temperature)`, by
    /// the SIMD kernels. Temperature 0 is greedy (probability 1 on the first largest logit).
    /// Empty logits, a non-finite logit and an invalid temperature (negative, NaN, infinite
    /// or below 1e-30 but not 0) are typed errors.
    pub fn simd_softmax_f32(logits: &[f32], temperature: f32) -> Result<Vec<f32>, SamplingError> {
        if logits.is_empty() {
            return Err(SamplingError::EmptyVocabulary);
        }
        if let Some(index) = logits.iter().position(|l| !l.is_finite()) {
            return Err(SamplingError::NonFiniteLogit {
                index,
                value: logits[index],
            });
        }
        if temperature == 0.0 {
            let mut p = vec![0.0; logits.len()];
            if let Some((i, _)) = argmax_f32(logits) {
                p[i] = 1.0;
            }
            return Ok(p);
        }
        if !temperature.is_finite() || temperature < 1e-30 {
            return Err(SamplingError::InvalidTemperature(temperature));
        }
        let mut p = logits.to_vec();
        scale_f32(&mut p, 1.0 / temperature);
        softmax_in_place(&mut p).ok_or(SamplingError::NoCandidates)?;
        Ok(p)
    }

    /// The `k` largest of `probabilities` (or of any scores) as `(token, value)` pairs, largest
    /// first (ties: lowest id first), by the SIMD top-k kernel; fewer when fewer values are
    /// above `-inf`. `k` of 0 and a NaN value are typed errors.
    pub fn simd_top_k_f32(
        probabilities: &[f32],
        k: usize,
    ) -> Result<Vec<(u32, f32)>, SamplingError> {
        if k == 0 {
            return Err(SamplingError::ZeroTopK);
        }
        if let Some(index) = probabilities.iter().position(|p| p.is_nan()) {
            return Err(SamplingError::NonFiniteLogit {
                index,
                value: probabilities[index],
            });
        }
        let k = k.min(probabilities.len());
        let mut scratch = vec![0u32; (4 * k).max(512)];
        let mut out = vec![0u32; k];
        let n = top_k_into(probabilities, k, &mut scratch, &mut out);
        Ok(out[..n]
            .iter()
            .map(|&id| (id, probabilities[id as usize]))
            .collect())
    }
}
