//! The [`Sampler`]: a processor chain plus the buffers and state it needs, built once per
//! vocabulary, then called once per decode step without allocating.

use arrayvec::ArrayVec;
use fluent_ai_candle_mask::TokenMask;

use crate::config::{LogprobSource, ProcessorSpec, SamplingConfig, MAX_TOP_LOGPROBS};
use crate::error::SamplingError;
use crate::rng::Xoshiro256;
use crate::simd;

/// A user-written logits processor, run as one step of a [`SamplerChain`].
///
/// It always sees the full-vocabulary logits (tokens removed by the mask or by earlier
/// truncation steps hold `-inf`) and the token history. It must not produce NaN or `+inf`
/// (the sampler checks and returns [`SamplingError::NonFiniteLogit`]), and to keep the
/// no-allocation guarantee it should not allocate either.
pub trait LogitsProcessor: Send {
    /// A short name, used in errors.
    fn name(&self) -> &'static str;
    /// Edits `logits` in place. `history` is the token history passed to
    /// [`Sampler::sample`].
    fn process(&mut self, logits: &mut [f32], history: &[u32]) -> Result<(), SamplingError>;
    /// Forgets any per-sequence state (called by [`Sampler::reset`]).
    fn reset(&mut self) {}
}

/// One step of a [`SamplerChain`]: a built-in processor or a user one.
pub enum ChainStep {
    /// A built-in processor.
    Builtin(ProcessorSpec),
    /// A user processor.
    Custom(Box<dyn LogitsProcessor>),
}

impl std::fmt::Debug for ChainStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainStep::Builtin(s) => s.fmt(f),
            ChainStep::Custom(p) => write!(f, "Custom({})", p.name()),
        }
    }
}

/// A user-ordered chain of processors (the seed's `CompositeProcessor`): built-in steps from
/// [`ProcessorSpec`] mixed with user [`LogitsProcessor`]s.
#[derive(Debug, Default)]
pub struct SamplerChain {
    steps: Vec<ChainStep>,
}

/// The seed's name for [`SamplerChain`].
pub type CompositeProcessor = SamplerChain;

impl SamplerChain {
    /// An empty chain (plain softmax sampling at temperature 1).
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a built-in step.
    pub fn with(mut self, spec: ProcessorSpec) -> Self {
        self.steps.push(ChainStep::Builtin(spec));
        self
    }
    /// Appends a user processor.
    pub fn with_processor(mut self, p: Box<dyn LogitsProcessor>) -> Self {
        self.steps.push(ChainStep::Custom(p));
        self
    }
    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }
    /// True when the chain has no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl From<Vec<ProcessorSpec>> for SamplerChain {
    fn from(v: Vec<ProcessorSpec>) -> Self {
        Self {
            steps: v.into_iter().map(ChainStep::Builtin).collect(),
        }
    }
}

/// The outcome of one sampling step.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    /// The chosen token id.
    pub token: u32,
    /// Natural-log probability of `token` in the distribution chosen by
    /// [`LogprobSource`] (by default the distribution it was drawn from).
    pub logprob: f32,
    /// The most probable tokens of that same distribution with their natural-log
    /// probabilities, most probable first (ties: lowest id first), as many as
    /// [`SamplingConfig::top_logprobs`] asks (fewer when fewer tokens have non-zero
    /// probability). This is OpenAI's `top_logprobs`.
    pub top_logprobs: ArrayVec<(u32, f32), MAX_TOP_LOGPROBS>,
    /// Entropy (nats) of that same distribution.
    pub entropy: f32,
}

#[derive(Clone, Copy, Debug)]
struct Cand {
    logit: f32,
    id: u32,
}

fn cand_order(a: &Cand, b: &Cand) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then_with(|| a.id.cmp(&b.id))
}

enum StageKind {
    Spec(ProcessorSpec),
    Custom(Box<dyn LogitsProcessor>),
}

struct Stage {
    kind: StageKind,
    /// Mirostat's running surprise target.
    mu: f32,
    /// Dense bias table (LogitBias) indexed by token id.
    table: Vec<f32>,
    /// Sorted sequence breakers (DRY).
    breakers: Vec<u32>,
}

/// Per-step state: either dense (the caller's logits slice, removed tokens at `-inf`) or a
/// candidate list.
struct Work {
    dense: bool,
    sorted: bool,
    cands: Vec<Cand>,
    cands2: Vec<Cand>,
    ebuf: Vec<f32>,
    cbuf: Vec<f32>,
    idx: Vec<u32>,
    topk: Vec<u32>,
    counts: Vec<u32>,
    dry_seq: Vec<u64>,
    dry_z: Vec<u32>,
    dry_max: Vec<u32>,
    dry_touched: Vec<u32>,
    orig: Vec<f32>,
    /// (stage index) of a mirostat step to update after the draw.
    mirostat: Option<usize>,
}

/// A configured sampler for one vocabulary: call [`Sampler::sample`] once per decode step.
///
/// Every buffer is sized for the vocabulary in [`Sampler::new`]; [`Sampler::sample`] never
/// allocates (an integration test proves it with a counting global allocator).
pub struct Sampler {
    stages: Vec<Stage>,
    vocab_size: usize,
    seed: u64,
    rng: Xoshiro256,
    top_logprobs: usize,
    logprob_source: LogprobSource,
    w: Work,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("vocab_size", &self.vocab_size)
            .field("seed", &self.seed)
            .field("stages", &self.stages.len())
            .finish()
    }
}

const TOPK_MIN_SCRATCH: usize = 512;

impl Sampler {
    /// Builds a sampler for `vocab_size` tokens whose random draws start from `seed`.
    pub fn new(
        config: SamplingConfig,
        vocab_size: usize,
        seed: u64,
    ) -> Result<Sampler, SamplingError> {
        config.validate(vocab_size)?;
        Self::with_chain(
            config.chain.into(),
            config.top_logprobs,
            config.logprob_source,
            vocab_size,
            seed,
        )
    }

    /// Builds a sampler from a [`SamplerChain`] (which may hold user processors).
    pub fn with_chain(
        chain: SamplerChain,
        top_logprobs: usize,
        logprob_source: LogprobSource,
        vocab_size: usize,
        seed: u64,
    ) -> Result<Sampler, SamplingError> {
        if vocab_size == 0 {
            return Err(SamplingError::EmptyVocabulary);
        }
        if top_logprobs > MAX_TOP_LOGPROBS {
            return Err(SamplingError::TooManyTopLogprobs(top_logprobs));
        }
        let v = vocab_size;
        let mut need_counts = false;
        let mut dry_cap = 0usize;
        let mut stages = Vec::with_capacity(chain.steps.len());
        for step in chain.steps {
            let mut stage = Stage {
                kind: StageKind::Custom(Box::new(Noop)),
                mu: 0.0,
                table: Vec::new(),
                breakers: Vec::new(),
            };
            match step {
                ChainStep::Custom(p) => stage.kind = StageKind::Custom(p),
                ChainStep::Builtin(spec) => {
                    spec.validate(v)?;
                    match &spec {
                        ProcessorSpec::Penalties { .. } => need_counts = true,
                        ProcessorSpec::LogitBias(list) => {
                            stage.table = vec![0.0; v];
                            for &(t, b) in list {
                                stage.table[t as usize] += b;
                            }
                        }
                        ProcessorSpec::Dry {
                            last_n,
                            sequence_breakers,
                            ..
                        } => {
                            dry_cap = dry_cap.max(*last_n);
                            stage.breakers = sequence_breakers.clone();
                            stage.breakers.sort_unstable();
                        }
                        ProcessorSpec::MirostatV1 { tau, .. }
                        | ProcessorSpec::MirostatV2 { tau, .. } => stage.mu = 2.0 * tau,
                        _ => {}
                    }
                    stage.kind = StageKind::Spec(spec);
                }
            }
            stages.push(stage);
        }
        let w = Work {
            dense: true,
            sorted: false,
            cands: Vec::with_capacity(v),
            cands2: Vec::with_capacity(v),
            ebuf: vec![0.0; v],
            cbuf: vec![0.0; v],
            idx: vec![0; v + simd::LANES + TOPK_MIN_SCRATCH],
            topk: vec![0; v],
            counts: if need_counts { vec![0; v] } else { Vec::new() },
            dry_seq: vec![0; dry_cap],
            dry_z: vec![0; dry_cap],
            dry_max: if dry_cap > 0 { vec![0; v] } else { Vec::new() },
            dry_touched: Vec::with_capacity(dry_cap),
            orig: if logprob_source == LogprobSource::Model {
                vec![0.0; v]
            } else {
                Vec::new()
            },
            mirostat: None,
        };
        Ok(Sampler {
            stages,
            vocab_size,
            seed,
            rng: Xoshiro256::seed_from_u64(seed),
            top_logprobs,
            logprob_source,
            w,
        })
    }

    /// The vocabulary size this sampler was built for.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Restores the state right after construction: the RNG restarts from the seed, mirostat's
    /// `mu` returns to `2·tau`, user processors are reset.
    pub fn reset(&mut self) {
        self.reseed(self.seed);
    }

    /// Like [`reset`](Self::reset) with a new seed.
    pub fn reseed(&mut self, seed: u64) {
        self.seed = seed;
        self.rng = Xoshiro256::seed_from_u64(seed);
        for s in &mut self.stages {
            match &mut s.kind {
                StageKind::Spec(
                    ProcessorSpec::MirostatV1 { tau, .. } | ProcessorSpec::MirostatV2 { tau, .. },
                ) => s.mu = 2.0 * *tau,
                StageKind::Custom(p) => p.reset(),
                _ => {}
            }
        }
    }

    /// Mirostat's current `mu` for each mirostat step, in chain order (for inspection).
    pub fn mirostat_mu(&self) -> impl Iterator<Item = f32> + '_ {
        self.stages.iter().filter_map(|s| match s.kind {
            StageKind::Spec(
                ProcessorSpec::MirostatV1 { .. } | ProcessorSpec::MirostatV2 { .. },
            ) => Some(s.mu),
            _ => None,
        })
    }

    /// Samples one token.
    ///
    /// * `logits`: one logit per vocabulary id. It is used as scratch space: on return it holds
    ///   the processed logits of the tokens still in play when the chain stayed dense, and
    ///   unspecified values otherwise. NaN and infinite values are rejected.
    /// * `mask`: the allowed-token bitset (from the constraints crate); `None` allows all.
    /// * `history`: the tokens so far (prompt and generated), oldest first; used by the
    ///   penalty and DRY steps. Ids outside the vocabulary are ignored.
    ///
    /// Never allocates, never panics on bad input.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        mask: Option<&TokenMask>,
        history: &[u32],
    ) -> Result<SampledToken, SamplingError> {
        let v = self.vocab_size;
        if logits.is_empty() {
            return Err(SamplingError::EmptyVocabulary);
        }
        if logits.len() != v {
            return Err(SamplingError::LogitsLength {
                expected: v,
                got: logits.len(),
            });
        }
        if let Some(m) = mask {
            if m.len() != v {
                return Err(SamplingError::MaskLength {
                    expected: v,
                    got: m.len(),
                });
            }
        }
        let (_, finite) = simd::scan_f32(logits);
        if !finite {
            return Err(first_non_finite(logits));
        }
        if let Some(m) = mask {
            if m.is_all_forbidden() {
                return Err(SamplingError::NoCandidates);
            }
            simd::masked_fill_f32(logits, m.words(), f32::NEG_INFINITY);
        }
        if self.logprob_source == LogprobSource::Model {
            self.w.orig.copy_from_slice(logits);
        }
        self.w.dense = true;
        self.w.sorted = false;
        self.w.cands.clear();
        self.w.mirostat = None;

        for si in 0..self.stages.len() {
            self.run_stage(si, logits, history)?;
        }
        self.finish(logits)
    }

    fn run_stage(
        &mut self,
        si: usize,
        logits: &mut [f32],
        history: &[u32],
    ) -> Result<(), SamplingError> {
        let w = &mut self.w;
        let stage = &mut self.stages[si];
        let spec = match &mut stage.kind {
            StageKind::Custom(p) => {
                if !w.dense {
                    logits.fill(f32::NEG_INFINITY);
                    for c in &w.cands {
                        logits[c.id as usize] = c.logit;
                    }
                    w.dense = true;
                }
                p.process(logits, history)?;
                if logits.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
                    return Err(SamplingError::Processor(p.name()));
                }
                return Ok(());
            }
            StageKind::Spec(spec) => spec,
        };
        match spec {
            ProcessorSpec::Temperature(t) => {
                let t = *t;
                if t == 0.0 {
                    let best = if w.dense {
                        simd::argmax_f32(logits).map(|(i, l)| Cand {
                            logit: l,
                            id: i as u32,
                        })
                    } else {
                        w.cands
                            .iter()
                            .filter(|c| c.logit > f32::NEG_INFINITY)
                            .min_by(|a, b| cand_order(a, b))
                            .copied()
                    };
                    let best = best.ok_or(SamplingError::NoCandidates)?;
                    w.cands.clear();
                    w.cands.push(best);
                    w.dense = false;
                    w.sorted = true;
                } else if t != 1.0 {
                    let inv = 1.0 / t;
                    if w.dense {
                        simd::scale_f32(logits, inv);
                    } else {
                        w.cands.iter_mut().for_each(|c| c.logit *= inv);
                    }
                }
            }
            ProcessorSpec::TopK(k) => {
                let k = *k;
                if w.dense {
                    w.top_k_dense(logits, k);
                } else {
                    w.ensure_sorted();
                    w.cands.truncate(k);
                }
            }
            ProcessorSpec::TopP(p) => {
                let p = *p;
                if p < 1.0 {
                    if w.dense {
                        w.top_p_dense(logits, p);
                    } else {
                        w.ensure_sorted();
                        let sum = w.exp_cands();
                        let keep = prefix_reaching(&w.ebuf[..w.cands.len()], sum, p);
                        w.cands.truncate(keep);
                    }
                }
            }
            ProcessorSpec::MinP(p) => {
                let ln_p = p.ln();
                if w.dense {
                    let max = simd::max_f32(logits);
                    if max == f32::NEG_INFINITY {
                        return Err(SamplingError::NoCandidates);
                    }
                    w.collect_at_least(logits, max + ln_p);
                } else {
                    let max = w
                        .cands
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, c| m.max(c.logit));
                    let thr = max + ln_p;
                    w.cands.retain(|c| c.logit >= thr);
                }
            }
            ProcessorSpec::TypicalP(p) => {
                let p = *p;
                if p < 1.0 {
                    w.ensure_sparse(logits);
                    w.typical(p);
                }
            }
            ProcessorSpec::TopNSigma(n) => {
                let n = *n;
                if n > 0.0 {
                    let (max, sigma) = if w.dense {
                        max_sigma(logits.iter().copied())
                    } else {
                        max_sigma(w.cands.iter().map(|c| c.logit))
                    };
                    if max > f32::NEG_INFINITY {
                        let thr = max - n * sigma;
                        if w.dense {
                            w.collect_at_least(logits, thr);
                        } else {
                            w.cands.retain(|c| c.logit >= thr);
                        }
                    }
                }
            }
            ProcessorSpec::Xtc {
                probability,
                threshold,
            } => {
                let (prob, thr) = (*probability, *threshold);
                if prob > 0.0 && thr <= 0.5 {
                    let chance = self.rng.next_f32();
                    if chance <= prob {
                        w.xtc(logits, thr);
                    }
                }
            }
            ProcessorSpec::Dry {
                multiplier,
                base,
                allowed_length,
                last_n,
                ..
            } => {
                if *multiplier > 0.0 {
                    let start = history.len().saturating_sub(*last_n);
                    w.dry(
                        logits,
                        &history[start..],
                        &stage.breakers,
                        *multiplier,
                        *base,
                        *allowed_length,
                    );
                }
            }
            ProcessorSpec::Penalties {
                last_n,
                repeat,
                frequency,
                presence,
            } => {
                let start = match last_n {
                    Some(n) => history.len().saturating_sub(*n),
                    None => 0,
                };
                w.penalties(logits, &history[start..], *repeat, *frequency, *presence);
            }
            ProcessorSpec::LogitBias(list) => {
                if w.dense {
                    for &(t, b) in list.iter() {
                        let l = &mut logits[t as usize];
                        *l += b;
                    }
                } else {
                    for c in w.cands.iter_mut() {
                        c.logit += stage.table[c.id as usize];
                    }
                    w.sorted = false;
                }
            }
            ProcessorSpec::MirostatV1 { m, .. } => {
                let m = *m;
                let mu = stage.mu;
                w.mirostat_v1(logits, m, mu, self.vocab_size);
                w.mirostat = Some(si);
            }
            ProcessorSpec::MirostatV2 { .. } => {
                let mu = stage.mu;
                w.mirostat_v2(logits, mu);
                w.mirostat = Some(si);
            }
        }
        if !w.dense && w.cands.is_empty() {
            return Err(SamplingError::NoCandidates);
        }
        Ok(())
    }

    fn finish(&mut self, logits: &mut [f32]) -> Result<SampledToken, SamplingError> {
        let w = &mut self.w;
        // Final distribution: logits in `lv` (dense: the caller's slice; sparse: candidates).
        let n = if w.dense { logits.len() } else { w.cands.len() };
        if n == 0 {
            return Err(SamplingError::NoCandidates);
        }
        if w.dense {
            w.ebuf[..n].copy_from_slice(logits);
        } else {
            for (e, c) in w.ebuf.iter_mut().zip(&w.cands) {
                *e = c.logit;
            }
        }
        let lv: &[f32] = logits;
        let max = simd::max_f32(&w.ebuf[..n]);
        if max == f32::NEG_INFINITY {
            return Err(SamplingError::NoCandidates);
        }
        if !max.is_finite() {
            let i = w.ebuf[..n].iter().position(|x| !x.is_finite()).unwrap_or(0);
            let id = if w.dense { i } else { w.cands[i].id as usize };
            return Err(SamplingError::NonFiniteLogit {
                index: id,
                value: max,
            });
        }
        let sum = simd::exp_sub_sum_f32(&mut w.ebuf[..n], max);
        let ln_sum = sum.ln();
        w.cbuf[..n].copy_from_slice(&w.ebuf[..n]);
        simd::simd_cumsum_f32(&mut w.cbuf[..n]);
        let total = w.cbuf[n - 1];
        let target = self.rng.next_f32() * total;
        let mut i = search_gt(&w.cbuf[..n], target);
        if i >= n || w.ebuf[i] == 0.0 {
            // Rounding at the edges: take the nearest token with non-zero probability.
            i = (i.min(n - 1)..n)
                .find(|&j| w.ebuf[j] > 0.0)
                .or_else(|| (0..i.min(n)).rev().find(|&j| w.ebuf[j] > 0.0))
                .ok_or(SamplingError::NoCandidates)?;
        }
        let (token, logit) = if w.dense {
            (i as u32, lv[i])
        } else {
            (w.cands[i].id, w.cands[i].logit)
        };
        let sampled_logprob = (logit - max) - ln_sum;

        if let Some(si) = w.mirostat.take() {
            let stage = &mut self.stages[si];
            let (tau, eta) = match &stage.kind {
                StageKind::Spec(ProcessorSpec::MirostatV1 { tau, eta, .. })
                | StageKind::Spec(ProcessorSpec::MirostatV2 { tau, eta }) => (*tau, *eta),
                _ => (0.0, 0.0),
            };
            let surprise = -sampled_logprob / std::f32::consts::LN_2;
            stage.mu -= eta * (surprise - tau);
        }

        let nt = self.top_logprobs;
        let mut out = SampledToken {
            token,
            logprob: sampled_logprob,
            top_logprobs: ArrayVec::new(),
            entropy: 0.0,
        };
        match self.logprob_source {
            LogprobSource::Sampled => {
                out.entropy = entropy(
                    &w.ebuf[..n],
                    sum,
                    |j| {
                        if w.dense {
                            lv[j]
                        } else {
                            w.cands[j].logit
                        }
                    },
                    max,
                );
                if nt > 0 {
                    if w.dense {
                        let k = simd::simd_top_k_f32(lv, nt, &mut w.idx, &mut w.topk);
                        for &j in &w.topk[..k] {
                            out.top_logprobs.push((j, (lv[j as usize] - max) - ln_sum));
                        }
                    } else if w.sorted {
                        for c in w.cands.iter().take(nt) {
                            if c.logit > f32::NEG_INFINITY {
                                out.top_logprobs.push((c.id, (c.logit - max) - ln_sum));
                            }
                        }
                    } else {
                        for (d, c) in w.cbuf.iter_mut().zip(&w.cands) {
                            *d = c.logit;
                        }
                        let k = simd::simd_top_k_f32(&w.cbuf[..n], nt, &mut w.idx, &mut w.topk);
                        // Equal logits: order by token id, not by position.
                        let top = &mut w.topk[..k];
                        let cands = &w.cands;
                        top.sort_unstable_by(|a, b| {
                            cand_order(&cands[*a as usize], &cands[*b as usize])
                        });
                        for &j in top.iter() {
                            let c = cands[j as usize];
                            out.top_logprobs.push((c.id, (c.logit - max) - ln_sum));
                        }
                    }
                }
            }
            LogprobSource::Model => {
                let orig = &w.orig;
                let mmax = simd::max_f32(orig);
                w.ebuf.copy_from_slice(orig);
                let msum = simd::exp_sub_sum_f32(&mut w.ebuf, mmax);
                let mln = msum.ln();
                out.logprob = (orig[token as usize] - mmax) - mln;
                out.entropy = entropy(&w.ebuf, msum, |j| orig[j], mmax);
                if nt > 0 {
                    let k = simd::simd_top_k_f32(orig, nt, &mut w.idx, &mut w.topk);
                    for &j in &w.topk[..k] {
                        out.top_logprobs.push((j, (orig[j as usize] - mmax) - mln));
                    }
                }
            }
        }
        Ok(out)
    }
}

struct Noop;
impl LogitsProcessor for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }
    fn process(&mut self, _: &mut [f32], _: &[u32]) -> Result<(), SamplingError> {
        Ok(())
    }
}

fn first_non_finite(logits: &[f32]) -> SamplingError {
    match logits.iter().position(|x| !x.is_finite()) {
        Some(index) => SamplingError::NonFiniteLogit {
            index,
            value: logits[index],
        },
        None => SamplingError::NoCandidates,
    }
}

/// First index whose cumulative value exceeds `target` (a fixed binary search, so the result
/// does not depend on the standard library's version).
fn search_gt(cum: &[f32], target: f32) -> usize {
    let (mut lo, mut hi) = (0usize, cum.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if cum[mid] > target {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Number of leading entries of `e` (unnormalised probabilities, sorted descending) whose
/// normalised cumulative mass first reaches `p` (llama.cpp's top-p rule), at least 1.
fn prefix_reaching(e: &[f32], sum: f32, p: f32) -> usize {
    let mut cum = 0.0f32;
    let inv = 1.0 / sum;
    for (i, &x) in e.iter().enumerate() {
        cum += x * inv;
        if cum >= p {
            return i + 1;
        }
    }
    e.len().max(1)
}

/// Entropy in nats of the distribution `e / sum`, where `e[j] = exp(l(j) - max)`:
/// `H = ln sum − Σ e_j (l_j − max) / sum`. 16 independent accumulators keep the order fixed
/// (and let the compiler vectorise).
fn entropy(e: &[f32], sum: f32, l: impl Fn(usize) -> f32, max: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    for (j, &x) in e.iter().enumerate() {
        if x > 0.0 {
            acc[j % 16] += x * (l(j) - max);
        }
    }
    let s: f32 = acc.iter().sum();
    (sum.ln() - s / sum).max(0.0)
}

/// Maximum and population standard deviation of the finite values.
fn max_sigma(it: impl Iterator<Item = f32> + Clone) -> (f32, f32) {
    let mut n = 0u64;
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0.0f64;
    for x in it.clone().filter(|x| x.is_finite()) {
        n += 1;
        max = max.max(x);
        sum += x as f64;
    }
    if n == 0 {
        return (max, 0.0);
    }
    let mean = sum / n as f64;
    let var = it
        .filter(|x| x.is_finite())
        .map(|x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    (max, var.sqrt() as f32)
}

impl Work {
    fn ensure_sparse(&mut self, logits: &[f32]) {
        if self.dense {
            self.collect_at_least(logits, f32::MIN);
        }
    }

    fn ensure_sorted(&mut self) {
        if !self.sorted {
            self.cands.sort_unstable_by(cand_order);
            self.sorted = true;
        }
    }

    /// Dense → sparse: every token with `logit >= thr` (ids ascending).
    fn collect_at_least(&mut self, logits: &[f32], thr: f32) {
        let below = thr.next_down();
        self.cands.clear();
        let mut start = 0;
        while start < logits.len() {
            let (next, n) = simd::collect_gt_f32(logits, start, below, &mut self.idx);
            for &i in &self.idx[..n] {
                self.cands.push(Cand {
                    logit: logits[i as usize],
                    id: i,
                });
            }
            start = next;
        }
        self.dense = false;
        self.sorted = false;
    }

    fn top_k_dense(&mut self, logits: &[f32], k: usize) {
        let k = k.min(logits.len());
        let scratch_len = (4 * k).max(TOPK_MIN_SCRATCH).min(self.idx.len());
        let n = simd::simd_top_k_f32(logits, k, &mut self.idx[..scratch_len], &mut self.topk);
        self.cands.clear();
        for &i in &self.topk[..n] {
            self.cands.push(Cand {
                logit: logits[i as usize],
                id: i,
            });
        }
        self.dense = false;
        self.sorted = true;
    }

    /// Writes `exp(logit - max)` of the candidates into `ebuf`; returns the sum.
    fn exp_cands(&mut self) -> f32 {
        let n = self.cands.len();
        let mut max = f32::NEG_INFINITY;
        for (e, c) in self.ebuf.iter_mut().zip(&self.cands) {
            *e = c.logit;
            max = max.max(c.logit);
        }
        if max == f32::NEG_INFINITY {
            self.ebuf[..n].fill(0.0);
            return 0.0;
        }
        simd::exp_sub_sum_f32(&mut self.ebuf[..n], max)
    }

    fn top_p_dense(&mut self, logits: &[f32], p: f32) {
        let Some(lse) = simd::log_sum_exp_f32(logits) else {
            self.cands.clear();
            self.dense = false;
            return;
        };
        let mut k = 64usize;
        loop {
            self.top_k_dense(logits, k);
            let mut cum = 0.0f32;
            for i in 0..self.cands.len() {
                cum += simd::exp_f32(self.cands[i].logit - lse);
                if cum >= p {
                    self.cands.truncate(i + 1);
                    return;
                }
            }
            if self.cands.len() < k || k >= logits.len() {
                return;
            }
            self.dense = true;
            k = k.saturating_mul(8);
        }
    }

    fn typical(&mut self, p: f32) {
        let n = self.cands.len();
        let sum = self.exp_cands();
        if sum <= 0.0 || n <= 1 {
            return;
        }
        let ln_sum = sum.ln();
        let max = self
            .cands
            .iter()
            .fold(f32::NEG_INFINITY, |m, c| m.max(c.logit));
        // Entropy of the candidates' distribution.
        let mut h = 0.0f32;
        for (c, &e) in self.cands.iter().zip(&self.ebuf) {
            if e > 0.0 {
                let logp = (c.logit - max) - ln_sum;
                h -= (e / sum) * logp;
            }
        }
        // Shifted scores |−ln p − H| stored in cands2.logit; probability kept in cbuf by id
        // order of cands2.
        self.cands2.clear();
        for (j, c) in self.cands.iter().enumerate() {
            let logp = (c.logit - max) - ln_sum;
            let score = if self.ebuf[j] > 0.0 {
                (-logp - h).abs()
            } else {
                f32::INFINITY
            };
            // Encode position j in the id slot; ties resolved by token id below.
            self.cands2.push(Cand {
                logit: score,
                id: j as u32,
            });
        }
        let cands = &self.cands;
        self.cands2.sort_unstable_by(|a, b| {
            a.logit
                .total_cmp(&b.logit)
                .then_with(|| cands[a.id as usize].id.cmp(&cands[b.id as usize].id))
        });
        let mut cum = 0.0f32;
        let mut keep = n;
        for (i, c) in self.cands2.iter().enumerate() {
            cum += self.ebuf[c.id as usize] / sum;
            if cum >= p {
                keep = i + 1;
                break;
            }
        }
        self.cands2.truncate(keep);
        for c in self.cands2.iter_mut() {
            let orig = self.cands[c.id as usize];
            *c = orig;
        }
        std::mem::swap(&mut self.cands, &mut self.cands2);
        self.sorted = false;
    }

    fn xtc(&mut self, logits: &mut [f32], thr: f32) {
        if self.dense {
            // Tokens with p >= thr: logit >= lse + ln thr. At most 1/thr of them.
            let Some(lse) = simd::log_sum_exp_f32(logits) else {
                return;
            };
            let cut = lse + thr.ln();
            let below = cut.next_down();
            let (_, n) = simd::collect_gt_f32(logits, 0, below, &mut self.idx);
            if n < 2 {
                return;
            }
            // Keep the least probable of them (highest id among equal logits loses).
            let idx = &mut self.idx[..n];
            idx.sort_unstable_by(|a, b| {
                cand_order(
                    &Cand {
                        logit: logits[*a as usize],
                        id: *a,
                    },
                    &Cand {
                        logit: logits[*b as usize],
                        id: *b,
                    },
                )
            });
            for &i in &idx[..n - 1] {
                logits[i as usize] = f32::NEG_INFINITY;
            }
        } else {
            if self.cands.len() < 2 {
                return;
            }
            self.ensure_sorted();
            let sum = self.exp_cands();
            if sum <= 0.0 {
                return;
            }
            let mut pos_last = 0;
            for (i, &e) in self.ebuf[..self.cands.len()].iter().enumerate() {
                if e / sum >= thr {
                    pos_last = i;
                } else {
                    break;
                }
            }
            if pos_last > 0 {
                self.cands.drain(..pos_last);
            }
        }
    }

    fn penalties(
        &mut self,
        logits: &mut [f32],
        window: &[u32],
        repeat: f32,
        frequency: f32,
        presence: f32,
    ) {
        let v = self.counts.len();
        for &t in window {
            if (t as usize) < v {
                self.counts[t as usize] += 1;
            }
        }
        let apply = |l: &mut f32, c: u32| {
            if repeat != 1.0 {
                if *l <= 0.0 {
                    *l *= repeat;
                } else {
                    *l /= repeat;
                }
            }
            *l -= c as f32 * frequency + presence;
        };
        if self.dense {
            for &t in window {
                let t = t as usize;
                if t < v && self.counts[t] > 0 {
                    apply(&mut logits[t], self.counts[t]);
                    self.counts[t] = 0;
                }
            }
        } else {
            for c in self.cands.iter_mut() {
                let n = self.counts[c.id as usize];
                if n > 0 {
                    apply(&mut c.logit, n);
                }
            }
            for &t in window {
                if (t as usize) < v {
                    self.counts[t as usize] = 0;
                }
            }
            self.sorted = false;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dry(
        &mut self,
        logits: &mut [f32],
        window: &[u32],
        breakers: &[u32],
        multiplier: f32,
        base: f32,
        allowed: usize,
    ) {
        let n = window.len().min(self.dry_seq.len());
        let window = &window[window.len() - n..];
        if n < 2 {
            return;
        }
        let v = self.dry_max.len();
        // Reversed sequence; each breaker becomes a unique value that matches nothing.
        for j in 0..n {
            let t = window[n - 1 - j];
            self.dry_seq[j] = if breakers.binary_search(&t).is_ok() || t as usize >= v {
                (1u64 << 32) | j as u64
            } else {
                t as u64
            };
        }
        // Z-algorithm: z[k] = longest common prefix of seq and seq[k..].
        let (s, z) = (&self.dry_seq[..n], &mut self.dry_z[..n]);
        z[0] = n as u32;
        let (mut l, mut r) = (0usize, 0usize);
        for k in 1..n {
            let mut len = if k < r {
                (r - k).min(z[k - l] as usize)
            } else {
                0
            };
            while k + len < n && s[len] == s[k + len] {
                len += 1;
            }
            z[k] = len as u32;
            if k + len > r {
                l = k;
                r = k + len;
            }
        }
        // The token after each earlier match is s[k - 1]; record its longest match.
        self.dry_touched.clear();
        for k in 1..n {
            let len = z[k] as usize;
            if len >= allowed {
                let next = s[k - 1];
                if next >> 32 != 0 {
                    continue; // never penalise a breaker
                }
                let t = next as usize;
                if self.dry_max[t] == 0 {
                    self.dry_touched.push(t as u32);
                }
                self.dry_max[t] = self.dry_max[t].max(len as u32);
            }
        }
        let penalty = |len: u32| {
            let p = multiplier * base.powi((len as usize - allowed).min(1 << 20) as i32);
            if p.is_finite() {
                p
            } else {
                f32::MAX
            }
        };
        if self.dense {
            for &t in &self.dry_touched {
                logits[t as usize] -= penalty(self.dry_max[t as usize]);
            }
        } else {
            for c in self.cands.iter_mut() {
                let len = self.dry_max[c.id as usize];
                if len > 0 {
                    c.logit -= penalty(len);
                }
            }
            self.sorted = false;
        }
        for &t in &self.dry_touched {
            self.dry_max[t as usize] = 0;
        }
    }

    fn mirostat_v1(&mut self, logits: &[f32], m: usize, mu: f32, vocab: usize) {
        let was_dense = self.dense;
        if was_dense {
            self.top_k_dense(logits, m.max(2));
        } else {
            self.ensure_sorted();
        }
        // s_hat from the top m tokens; p_i / p_{i+1} = exp(l_i − l_{i+1}) needs no softmax.
        let (mut sum_ti_bi, mut sum_ti_sq) = (0.0f32, 0.0f32);
        let lim = (m - 1).min(self.cands.len().saturating_sub(1));
        for i in 0..lim {
            let b = self.cands[i].logit - self.cands[i + 1].logit;
            if !b.is_finite() {
                break;
            }
            let t = ((i + 2) as f32 / (i + 1) as f32).ln();
            sum_ti_bi += t * b;
            sum_ti_sq += t * t;
        }
        let s_hat = sum_ti_bi / sum_ti_sq;
        let eps = s_hat - 1.0;
        let k = ((eps * 2f32.powf(mu)) / (1.0 - (vocab as f32).powf(-eps))).powf(1.0 / s_hat);
        let k = if k.is_finite() && k >= 1.0 {
            (k as usize).min(vocab)
        } else if k.is_finite() {
            1
        } else {
            vocab
        };
        if k > self.cands.len() && was_dense {
            self.top_k_dense(logits, k);
        } else {
            self.cands.truncate(k.max(1));
        }
    }

    fn mirostat_v2(&mut self, logits: &[f32], mu: f32) {
        // Keep tokens with −log2 p <= mu  ⇔  logit >= lse − mu·ln 2.
        if self.dense {
            let Some(lse) = simd::log_sum_exp_f32(logits) else {
                return;
            };
            let thr = lse - mu * std::f32::consts::LN_2;
            let best = simd::argmax_f32(logits);
            self.collect_at_least(logits, thr);
            if self.cands.is_empty() {
                if let Some((i, l)) = best {
                    self.cands.push(Cand {
                        logit: l,
                        id: i as u32,
                    });
                }
            }
        } else {
            self.ensure_sorted();
            let sum = self.exp_cands();
            if sum <= 0.0 {
                return;
            }
            let limit = (-mu * std::f32::consts::LN_2).exp();
            let keep = self.ebuf[..self.cands.len()]
                .iter()
                .take_while(|&&e| e / sum >= limit)
                .count()
                .max(1);
            self.cands.truncate(keep);
        }
    }
}
