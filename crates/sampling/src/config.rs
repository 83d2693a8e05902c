//! Plain-data configuration: the processor chain ([`ProcessorSpec`]), the whole sampler setup
//! ([`SamplingConfig`] and its [`SamplingConfigBuilder`]) and the preset shortcuts
//! ([`Sampling`]).

use crate::error::SamplingError;

/// Largest `top_logprobs` a step can report (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Smallest non-zero temperature. `logits / T` stays finite for every logit of magnitude
/// below 3.4e8 at or above it; below it (a subnormal `T` such as `1e-45` turns every ordinary
/// logit into `inf`) values are refused. `0` itself means greedy.
pub const MIN_TEMPERATURE: f32 = 1e-30;

/// Smallest repetition penalty: dividing a logit of magnitude below 3.4e8 by it stays finite.
pub const MIN_PENALTY: f32 = 1e-30;
/// Largest repetition penalty, and largest magnitude of a frequency or presence penalty:
/// multiplying a logit (or a count of at most 2^20 tokens) by it stays finite.
pub const MAX_PENALTY: f32 = 1e30;

/// One built-in step of the processor chain. Steps run in the order of the chain.
///
/// Formulas follow the canonical sources cited on each variant; where llama.cpp's
/// `src/llama-sampling.cpp` implements the same sampler, its semantics are used.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ProcessorSpec {
    /// Divides the logits by `T`. `T = 0` is greedy: only the argmax survives (ties → lowest
    /// id), exactly as llama.cpp's greedy sampler.
    Temperature(f32),
    /// Keeps the `k` highest logits (Fan et al. 2018, "Hierarchical Neural Story Generation").
    /// Ties at the boundary keep the lowest ids.
    TopK(usize),
    /// Nucleus sampling (Holtzman et al. 2019, "The Curious Case of Neural Text
    /// Degeneration"): the smallest set of most probable tokens whose probability (softmax of
    /// the current candidates) reaches `p`. `p = 1` keeps everything.
    TopP(f32),
    /// Min-p (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling"): keeps tokens with
    /// `prob >= p * max_prob`, i.e. `logit >= max_logit + ln p`.
    MinP(f32),
    /// Locally typical sampling (Meister et al. 2022, "Locally Typical Sampling"): sorts tokens
    /// by `|−ln p_i − H|` (distance of their surprisal from the entropy `H`) and keeps the
    /// smallest such set reaching mass `p`.
    TypicalP(f32),
    /// Top-nσ (Tang et al. 2024, "Top-nσ: Not All Logits Are You Need"): keeps logits
    /// `>= max − n·σ`, σ the standard deviation of the finite logits.
    TopNSigma(f32),
    /// XTC, "exclude top choices" (p-e-w, text-generation-webui PR #6335; llama.cpp
    /// `llama_sampler_xtc`): with chance `probability`, when at least two tokens have
    /// probability `>= threshold`, removes all of them but the least probable one.
    Xtc {
        /// Chance per step that XTC acts, in `[0, 1]`.
        probability: f32,
        /// Probability threshold, in `[0, 1]` (above 0.5 it can never act).
        threshold: f32,
    },
    /// DRY, "don't repeat yourself" (p-e-w, text-generation-webui PR #5677; llama.cpp
    /// `llama_sampler_dry`): if the history ends with a sequence of length `L >=
    /// allowed_length` that occurred before followed by token `t`, `t`'s logit is lowered by
    /// `multiplier · base^(L − allowed_length)`. Matches never extend across a sequence breaker.
    Dry {
        /// Penalty scale; 0 disables.
        multiplier: f32,
        /// Exponential base, `>= 1`.
        base: f32,
        /// Shortest repeated sequence that is penalised, `>= 1`.
        allowed_length: usize,
        /// How many of the most recent history tokens are searched (1..=65536; buffers are
        /// sized for it once).
        last_n: usize,
        /// Token ids that break a match (llama.cpp takes strings: tokenize `"\n"`, `":"`,
        /// `"\""`, `"*"` with your tokenizer and pass their ids).
        sequence_breakers: Vec<u32>,
    },
    /// Repetition penalty (Keskar et al. 2019, CTRL; llama.cpp/HF semantics) plus OpenAI
    /// frequency and presence penalties, over the last `last_n` history tokens (`None`: all).
    /// For each distinct token with count `c > 0` in the window: a positive logit is divided
    /// by `repeat`, a non-positive one multiplied by it; then `logit -= c·frequency +
    /// presence`.
    Penalties {
        /// Window: the last `n` history tokens, `None` for the whole history.
        last_n: Option<usize>,
        /// Repetition penalty, `> 0` (1 = off).
        repeat: f32,
        /// Frequency penalty (OpenAI: −2..=2).
        frequency: f32,
        /// Presence penalty (OpenAI: −2..=2).
        presence: f32,
    },
    /// Adds a bias to given tokens' logits (OpenAI `logit_bias`); `-inf` bans a token.
    LogitBias(Vec<(u32, f32)>),
    /// Mirostat 1.0 (Basu et al. 2021, "Mirostat: A Neural Text Decoding Algorithm that
    /// Directly Controls Perplexity", Algorithm 1; llama.cpp `llama_sampler_mirostat`):
    /// estimates the Zipf exponent from the top `m` tokens and picks `k` so that the expected
    /// surprise is `mu`; after each step `mu -= eta · (surprise − tau)`. Stateful.
    MirostatV1 {
        /// Target surprise (cross-entropy, in bits), `> 0`.
        tau: f32,
        /// Learning rate, `> 0`.
        eta: f32,
        /// Tokens used to estimate the Zipf exponent (the paper uses 100), `>= 2`.
        m: usize,
    },
    /// Mirostat 2.0 (Basu et al. 2021, Algorithm 2; llama.cpp `llama_sampler_mirostat_v2`):
    /// keeps tokens whose surprise `−log2 p` is at most `mu`, then `mu -= eta · (surprise −
    /// tau)`. Stateful; `mu` starts at `2 · tau`.
    MirostatV2 {
        /// Target surprise in bits, `> 0`.
        tau: f32,
        /// Learning rate, `> 0`.
        eta: f32,
    },
}

impl ProcessorSpec {
    /// Checks the step's parameters against a vocabulary size.
    pub fn validate(&self, vocab_size: usize) -> Result<(), SamplingError> {
        fn prob(name: &'static str, v: f32) -> Result<(), SamplingError> {
            if v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(SamplingError::InvalidProbability {
                    name,
                    value: v,
                    range: "(0, 1]",
                })
            }
        }
        fn closed01(name: &'static str, v: f32) -> Result<(), SamplingError> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(SamplingError::InvalidProbability {
                    name,
                    value: v,
                    range: "[0, 1]",
                })
            }
        }
        fn param(
            name: &'static str,
            ok: bool,
            v: f64,
            reason: &'static str,
        ) -> Result<(), SamplingError> {
            if ok {
                Ok(())
            } else {
                Err(SamplingError::InvalidParameter {
                    name,
                    value: v,
                    reason,
                })
            }
        }
        match self {
            ProcessorSpec::Temperature(t) => {
                if !(t.is_finite() && (*t == 0.0 || *t >= MIN_TEMPERATURE)) {
                    return Err(SamplingError::InvalidTemperature(*t));
                }
            }
            ProcessorSpec::TopK(k) => {
                if *k == 0 {
                    return Err(SamplingError::ZeroTopK);
                }
            }
            ProcessorSpec::TopP(p) => prob("top_p", *p)?,
            ProcessorSpec::MinP(p) => prob("min_p", *p)?,
            ProcessorSpec::TypicalP(p) => prob("typical_p", *p)?,
            ProcessorSpec::TopNSigma(n) => param(
                "top_n_sigma",
                n.is_finite() && *n >= 0.0,
                *n as f64,
                "must be a finite number >= 0",
            )?,
            ProcessorSpec::Xtc {
                probability,
                threshold,
            } => {
                closed01("xtc_probability", *probability)?;
                closed01("xtc_threshold", *threshold)?;
            }
            ProcessorSpec::Dry {
                multiplier,
                base,
                allowed_length,
                last_n,
                sequence_breakers,
            } => {
                param(
                    "dry_multiplier",
                    multiplier.is_finite() && *multiplier >= 0.0,
                    *multiplier as f64,
                    "must be finite and >= 0",
                )?;
                param(
                    "dry_base",
                    base.is_finite() && *base >= 1.0,
                    *base as f64,
                    "must be finite and >= 1",
                )?;
                param(
                    "dry_allowed_length",
                    *allowed_length >= 1,
                    *allowed_length as f64,
                    "must be >= 1",
                )?;
                param(
                    "dry_last_n",
                    (1..=65_536).contains(last_n),
                    *last_n as f64,
                    "must be in 1..=65536",
                )?;
                for &t in sequence_breakers {
                    if t as usize >= vocab_size {
                        return Err(SamplingError::TokenOutOfRange {
                            token: t,
                            vocab_size,
                        });
                    }
                }
            }
            ProcessorSpec::Penalties {
                last_n: _,
                repeat,
                frequency,
                presence,
            } => {
                param(
                    "repeat_penalty",
                    (MIN_PENALTY..=MAX_PENALTY).contains(repeat),
                    *repeat as f64,
                    "must be in [1e-30, 1e30] (1 is off)",
                )?;
                param(
                    "frequency_penalty",
                    frequency.is_finite() && frequency.abs() <= MAX_PENALTY,
                    *frequency as f64,
                    "must be finite with a magnitude of at most 1e30",
                )?;
                param(
                    "presence_penalty",
                    presence.is_finite() && presence.abs() <= MAX_PENALTY,
                    *presence as f64,
                    "must be finite with a magnitude of at most 1e30",
                )?;
            }
            ProcessorSpec::LogitBias(list) => {
                for &(t, b) in list {
                    if t as usize >= vocab_size {
                        return Err(SamplingError::TokenOutOfRange {
                            token: t,
                            vocab_size,
                        });
                    }
                    param(
                        "logit_bias",
                        !b.is_nan() && b != f32::INFINITY,
                        b as f64,
                        "must not be NaN or +inf",
                    )?;
                }
                // Every token banned: nothing could ever be sampled.
                let banned = list.iter().filter(|(_, b)| *b == f32::NEG_INFINITY);
                if banned.clone().count() >= vocab_size {
                    let mut ids: Vec<u32> = banned.map(|&(t, _)| t).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    param(
                        "logit_bias",
                        ids.len() < vocab_size,
                        ids.len() as f64,
                        "bans every token of the vocabulary (nothing could be sampled)",
                    )?;
                }
            }
            ProcessorSpec::MirostatV1 { tau, eta, m } => {
                param(
                    "mirostat_tau",
                    tau.is_finite() && *tau > 0.0,
                    *tau as f64,
                    "must be finite and > 0",
                )?;
                param(
                    "mirostat_eta",
                    eta.is_finite() && *eta > 0.0,
                    *eta as f64,
                    "must be finite and > 0",
                )?;
                param("mirostat_m", *m >= 2, *m as f64, "must be >= 2")?;
            }
            ProcessorSpec::MirostatV2 { tau, eta } => {
                param(
                    "mirostat_tau",
                    tau.is_finite() && *tau > 0.0,
                    *tau as f64,
                    "must be finite and > 0",
                )?;
                param(
                    "mirostat_eta",
                    eta.is_finite() && *eta > 0.0,
                    *eta as f64,
                    "must be finite and > 0",
                )?;
            }
        }
        Ok(())
    }
}

/// Which distribution the reported `logprob`, `top_logprobs` and `entropy` come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogprobSource {
    /// The distribution the token was actually drawn from: softmax of the logits after the
    /// whole chain (penalties, truncation, temperature). Free: no extra pass over the
    /// vocabulary. Tokens removed by the chain have probability 0 and never appear.
    #[default]
    Sampled,
    /// The model's own distribution: log-softmax of the input logits over the tokens the mask
    /// allows, before any processor (what vLLM and OpenAI report by default). Costs one extra
    /// pass over the vocabulary per step.
    Model,
}

/// Everything a [`Sampler`](crate::Sampler) needs besides the vocabulary size and the seed:
/// plain data, cheap to clone.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// The processor chain, applied in order before the final draw. An empty chain samples
    /// from the softmax of the logits (temperature 1).
    pub chain: Vec<ProcessorSpec>,
    /// How many alternatives (`0..=20`) each step reports in `top_logprobs`.
    pub top_logprobs: usize,
    /// Which distribution `logprob`, `top_logprobs` and `entropy` describe.
    pub logprob_source: LogprobSource,
}

impl Default for SamplingConfig {
    /// Greedy decoding with no alternatives reported.
    fn default() -> Self {
        Sampling::Greedy.into()
    }
}

impl SamplingConfig {
    /// Starts an empty builder; each processor call appends a step, in call order.
    pub fn builder() -> SamplingConfigBuilder {
        SamplingConfigBuilder::default()
    }

    /// Checks every parameter against `vocab_size`.
    pub fn validate(&self, vocab_size: usize) -> Result<(), SamplingError> {
        if vocab_size == 0 {
            return Err(SamplingError::EmptyVocabulary);
        }
        if vocab_size > u32::MAX as usize {
            return Err(SamplingError::InvalidParameter {
                name: "vocab_size",
                value: vocab_size as f64,
                reason: "token ids are u32",
            });
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(SamplingError::TooManyTopLogprobs(self.top_logprobs));
        }
        self.chain.iter().try_for_each(|s| s.validate(vocab_size))
    }

    /// True when the chain ends in greedy decoding (a temperature of 0 somewhere in it).
    pub fn is_greedy(&self) -> bool {
        self.chain
            .iter()
            .any(|s| matches!(s, ProcessorSpec::Temperature(t) if *t == 0.0))
    }
}

/// Builds a [`SamplingConfig`]; processors run in the order they are added.
///
/// ```
/// use fluent_ai_candle_sampling::SamplingConfig;
/// let cfg = SamplingConfig::builder()
///     .repetition_penalty(1.1, 64)
///     .top_k(40)
///     .top_p(0.95)
///     .temperature(0.8)
///     .top_logprobs(5)
///     .build()
///     .unwrap();
/// assert_eq!(cfg.chain.len(), 4);
/// assert!(SamplingConfig::builder().top_k(0).build().is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct SamplingConfigBuilder {
    chain: Vec<ProcessorSpec>,
    top_logprobs: usize,
    logprob_source: LogprobSource,
}

impl SamplingConfigBuilder {
    /// Appends any step.
    pub fn push(mut self, step: ProcessorSpec) -> Self {
        self.chain.push(step);
        self
    }
    /// Appends [`ProcessorSpec::Temperature`] (0 = greedy).
    pub fn temperature(self, t: f32) -> Self {
        self.push(ProcessorSpec::Temperature(t))
    }
    /// Appends [`ProcessorSpec::TopK`].
    pub fn top_k(self, k: usize) -> Self {
        self.push(ProcessorSpec::TopK(k))
    }
    /// Appends [`ProcessorSpec::TopP`].
    pub fn top_p(self, p: f32) -> Self {
        self.push(ProcessorSpec::TopP(p))
    }
    /// Appends [`ProcessorSpec::MinP`].
    pub fn min_p(self, p: f32) -> Self {
        self.push(ProcessorSpec::MinP(p))
    }
    /// Appends [`ProcessorSpec::TypicalP`].
    pub fn typical_p(self, p: f32) -> Self {
        self.push(ProcessorSpec::TypicalP(p))
    }
    /// Appends [`ProcessorSpec::TopNSigma`].
    pub fn top_n_sigma(self, n: f32) -> Self {
        self.push(ProcessorSpec::TopNSigma(n))
    }
    /// Appends [`ProcessorSpec::Xtc`].
    pub fn xtc(self, probability: f32, threshold: f32) -> Self {
        self.push(ProcessorSpec::Xtc {
            probability,
            threshold,
        })
    }
    /// Appends [`ProcessorSpec::Dry`].
    pub fn dry(
        self,
        multiplier: f32,
        base: f32,
        allowed_length: usize,
        last_n: usize,
        sequence_breakers: Vec<u32>,
    ) -> Self {
        self.push(ProcessorSpec::Dry {
            multiplier,
            base,
            allowed_length,
            last_n,
            sequence_breakers,
        })
    }
    /// Appends a repetition penalty (HF/llama.cpp) over the last `last_n` history tokens.
    pub fn repetition_penalty(self, penalty: f32, last_n: usize) -> Self {
        self.push(ProcessorSpec::Penalties {
            last_n: Some(last_n),
            repeat: penalty,
            frequency: 0.0,
            presence: 0.0,
        })
    }
    /// Appends OpenAI frequency and presence penalties over the whole history.
    pub fn frequency_presence(self, frequency: f32, presence: f32) -> Self {
        self.push(ProcessorSpec::Penalties {
            last_n: None,
            repeat: 1.0,
            frequency,
            presence,
        })
    }
    /// Appends [`ProcessorSpec::LogitBias`].
    pub fn logit_bias(self, bias: Vec<(u32, f32)>) -> Self {
        self.push(ProcessorSpec::LogitBias(bias))
    }
    /// Appends [`ProcessorSpec::MirostatV1`] with `m = 100`.
    pub fn mirostat_v1(self, tau: f32, eta: f32) -> Self {
        self.push(ProcessorSpec::MirostatV1 { tau, eta, m: 100 })
    }
    /// Appends [`ProcessorSpec::MirostatV2`].
    pub fn mirostat_v2(self, tau: f32, eta: f32) -> Self {
        self.push(ProcessorSpec::MirostatV2 { tau, eta })
    }
    /// Sets how many alternatives to report (`0..=20`).
    pub fn top_logprobs(mut self, n: usize) -> Self {
        self.top_logprobs = n;
        self
    }
    /// Sets which distribution the log-probabilities describe.
    pub fn logprob_source(mut self, source: LogprobSource) -> Self {
        self.logprob_source = source;
        self
    }
    /// Validates (vocabulary-independent checks) and returns the configuration. Token ids are
    /// checked against the vocabulary by [`Sampler::new`](crate::Sampler::new).
    pub fn build(self) -> Result<SamplingConfig, SamplingError> {
        let cfg = SamplingConfig {
            chain: self.chain,
            top_logprobs: self.top_logprobs,
            logprob_source: self.logprob_source,
        };
        cfg.validate(u32::MAX as usize)?;
        Ok(cfg)
    }
}

/// The seed's preset strategies (named as in candle-transformers' `Sampling`), each a shortcut
/// for a chain.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Sampling {
    /// Argmax over the allowed tokens, ties to the lowest id.
    Greedy,
    /// Softmax of `logits / temperature`.
    Temperature {
        /// Temperature (0 = greedy).
        temperature: f32,
    },
    /// Top-k, then temperature.
    TopK {
        /// Tokens kept.
        k: usize,
        /// Temperature.
        temperature: f32,
    },
    /// Top-p, then temperature.
    TopP {
        /// Nucleus mass.
        p: f32,
        /// Temperature.
        temperature: f32,
    },
    /// Top-k, then top-p (on the renormalised top-k distribution, as llama.cpp; candle
    /// measures `p` against the full-vocabulary mass instead), then temperature.
    TopKThenTopP {
        /// Tokens kept by top-k.
        k: usize,
        /// Nucleus mass.
        p: f32,
        /// Temperature.
        temperature: f32,
    },
    /// Min-p, then temperature.
    MinP {
        /// Minimum probability relative to the most likely token.
        p: f32,
        /// Temperature.
        temperature: f32,
    },
    /// Mirostat 2.0 at temperature 1.
    Mirostat {
        /// Target surprise (bits).
        tau: f32,
        /// Learning rate.
        eta: f32,
    },
    /// Mirostat 1.0 at temperature 1 (`m = 100`).
    MirostatV1 {
        /// Target surprise (bits).
        tau: f32,
        /// Learning rate.
        eta: f32,
    },
}

impl Sampling {
    /// The chain this preset stands for.
    pub fn chain(&self) -> Vec<ProcessorSpec> {
        use ProcessorSpec as P;
        match *self {
            Sampling::Greedy => vec![P::Temperature(0.0)],
            Sampling::Temperature { temperature } => vec![P::Temperature(temperature)],
            Sampling::TopK { k, temperature } => vec![P::TopK(k), P::Temperature(temperature)],
            Sampling::TopP { p, temperature } => vec![P::TopP(p), P::Temperature(temperature)],
            Sampling::TopKThenTopP { k, p, temperature } => {
                vec![P::TopK(k), P::TopP(p), P::Temperature(temperature)]
            }
            Sampling::MinP { p, temperature } => vec![P::MinP(p), P::Temperature(temperature)],
            Sampling::Mirostat { tau, eta } => vec![P::MirostatV2 { tau, eta }],
            Sampling::MirostatV1 { tau, eta } => vec![P::MirostatV1 { tau, eta, m: 100 }],
        }
    }
}

impl From<Sampling> for SamplingConfig {
    fn from(s: Sampling) -> Self {
        SamplingConfig {
            chain: s.chain(),
            top_logprobs: 0,
            logprob_source: LogprobSource::Sampled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> SamplingConfigBuilder {
        SamplingConfig::builder()
    }

    #[test]
    fn subnormal_and_overflowing_parameters_are_refused_before_sampling() {
        for t in [1e-45, f32::MIN_POSITIVE, 1e-31] {
            assert_eq!(
                b().temperature(t).build().unwrap_err(),
                SamplingError::InvalidTemperature(t)
            );
        }
        assert!(b().temperature(0.0).build().is_ok());
        assert!(b().temperature(MIN_TEMPERATURE).build().is_ok());
        for r in [1e-45, 0.0, 1e31, f32::INFINITY] {
            assert!(
                matches!(
                    b().repetition_penalty(r, 64).build(),
                    Err(SamplingError::InvalidParameter {
                        name: "repeat_penalty",
                        ..
                    })
                ),
                "{r}"
            );
        }
        assert!(b().repetition_penalty(1.1, 64).build().is_ok());
        assert!(b().frequency_presence(1e31, 0.0).build().is_err());
        assert!(b().frequency_presence(0.0, -1e31).build().is_err());
    }

    #[test]
    fn a_bias_that_bans_every_token_is_refused() {
        let ban = |ids: &[u32]| {
            b().logit_bias(ids.iter().map(|&t| (t, f32::NEG_INFINITY)).collect())
                .build()
                .unwrap()
        };
        let all = ban(&[0, 1, 2, 3]);
        assert!(matches!(
            all.validate(4),
            Err(SamplingError::InvalidParameter {
                name: "logit_bias",
                ..
            })
        ));
        // Repeated ids are counted once: token 3 stays allowed.
        assert!(ban(&[0, 1, 2, 2]).validate(4).is_ok());
        assert!(ban(&[0, 1, 2]).validate(4).is_ok());
        // A strong negative bias is not a ban.
        let strong = b()
            .logit_bias((0..4).map(|t| (t, -100.0)).collect())
            .build()
            .unwrap();
        assert!(strong.validate(4).is_ok());
    }
}
