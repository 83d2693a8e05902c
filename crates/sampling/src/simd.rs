//! Vector kernels with run-time CPU dispatch: the only module of this crate that uses `unsafe`.
//!
//! Every kernel exists as a scalar twin and, where the CPU offers it, as an AVX-512, AVX2+FMA
//! (x86-64) or NEON (aarch64) version. The backend is chosen **at run time** — never by cargo
//! feature or `cfg(target_feature)` — once per process with `is_x86_feature_detected!` /
//! `is_aarch64_feature_detected!`, and cached in an atomic. The choice is the workspace's one
//! dispatcher's ([`fluent_ai_candle_kernels::simd::chosen`]), so `FLUENT_AI_CANDLE_SIMD` means
//! the same here as for the quantized kernels: `scalar` forces the scalar twin, `avx2` caps
//! the choice at AVX2, `avx512` (or unset) takes the best the CPU has. Call
//! [`set_backend_override`] to force a backend from code (tests do).
//!
//! # Bit-exact backends
//!
//! Sampling must be reproducible across machines, so every backend returns **the same bits** as
//! the scalar twin, not merely close values:
//!
//! * sums ([`exp_sum_f32`], the softmax denominator) use a canonical 16-lane layout: element `i`
//!   is added to lane `i % 16`, lanes are then folded by a fixed tree (`j + j+8`, `j + j+4`,
//!   `j + j+2`, `j + j+1`). A 4- or 8-lane machine keeps 4 or 2 registers to emulate the 16
//!   lanes; the final fold is shared scalar code;
//! * `exp` is one polynomial (the Cephes `expf` coefficients, Moshier 1984) evaluated with
//!   fused multiply-adds in the same order everywhere; `f32::mul_add` is a correctly rounded
//!   fused operation on every platform, so the scalar twin matches the vector units;
//! * the prefix sum ([`simd_cumsum_f32`]) is a 16-lane Hillis–Steele scan per block plus a
//!   running carry, again emulated exactly by the scalar twin;
//! * max, argmax, masked fill, scaling and threshold selection are exact by nature.
//!
//! The property tests in `tests/simd_props.rs` compare every available backend with the
//! scalar twin bit for bit.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU8, Ordering};

/// Number of lanes of the canonical reduction layout shared by every backend.
pub const LANES: usize = 16;

/// A kernel implementation family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Portable scalar code: the reference every other backend must match bit for bit.
    Scalar,
    /// x86-64 AVX2 with FMA (8 lanes).
    Avx2,
    /// x86-64 AVX-512F (16 lanes).
    Avx512,
    /// aarch64 Advanced SIMD (4 lanes).
    Neon,
}

impl Backend {
    fn code(self) -> u8 {
        match self {
            Backend::Scalar => 1,
            Backend::Avx2 => 2,
            Backend::Avx512 => 3,
            Backend::Neon => 4,
        }
    }

    fn from_code(c: u8) -> Option<Backend> {
        match c {
            1 => Some(Backend::Scalar),
            2 => Some(Backend::Avx2),
            3 => Some(Backend::Avx512),
            4 => Some(Backend::Neon),
            _ => None,
        }
    }

    /// True when this CPU can run the backend.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Lower-case name (`scalar`, `avx2`, `avx512`, `neon`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Neon => "neon",
        }
    }
}

/// Cached automatic choice (0 = not decided yet).
static DETECTED: AtomicU8 = AtomicU8::new(0);
/// Programmatic override (0 = none).
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// The workspace dispatcher's choice ([`fluent_ai_candle_kernels::simd::chosen`]) as one of
/// these kernels' backends: AVX-512 needs only its F subset here.
fn detect() -> Backend {
    use fluent_ai_candle_kernels::simd::{chosen, Simd};
    let b = match chosen() {
        Simd::Scalar => Backend::Scalar,
        Simd::Avx2 => Backend::Avx2,
        Simd::Avx512 | Simd::Avx512Vnni => Backend::Avx512,
        Simd::Neon => Backend::Neon,
    };
    usable(b)
}

/// The backend the kernels use now: the override if one is set, else the best one this CPU
/// supports under `FLUENT_AI_CANDLE_SIMD` (see the module docs).
#[inline]
pub fn backend() -> Backend {
    if let Some(b) = Backend::from_code(OVERRIDE.load(Ordering::Relaxed)) {
        return b;
    }
    if let Some(b) = Backend::from_code(DETECTED.load(Ordering::Relaxed)) {
        return b;
    }
    let b = detect();
    DETECTED.store(b.code(), Ordering::Relaxed);
    b
}

/// Forces a backend for the whole process (`None` restores automatic choice). Returns `false`
/// and changes nothing when this CPU cannot run `backend`.
pub fn set_backend_override(backend: Option<Backend>) -> bool {
    match backend {
        None => {
            OVERRIDE.store(0, Ordering::Relaxed);
            true
        }
        Some(b) if b.is_supported() => {
            OVERRIDE.store(b.code(), Ordering::Relaxed);
            true
        }
        Some(_) => false,
    }
}

/// Every backend this CPU can run, scalar first.
pub fn available_backends() -> Vec<Backend> {
    [
        Backend::Scalar,
        Backend::Avx2,
        Backend::Avx512,
        Backend::Neon,
    ]
    .into_iter()
    .filter(|b| b.is_supported())
    .collect()
}

/// Resolves a requested backend to one that is safe to run here.
#[inline]
fn usable(b: Backend) -> Backend {
    if b == Backend::Scalar || b.is_supported() {
        b
    } else {
        Backend::Scalar
    }
}

// ---------------------------------------------------------------------------------------------
// Shared scalar pieces (also used for the tails of the vector loops, so tails are bit-exact).
// ---------------------------------------------------------------------------------------------

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.0;
const P0: f32 = 1.987_569_1e-4;
const P1: f32 = 1.398_199_9e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
const P5: f32 = 0.5;

/// `exp(x)` with the canonical polynomial; 0 for `x < -87.34` (and for `-inf`); inputs above 88
/// are clamped. Relative error about 2 ulp. Bit-identical to every vector backend.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    if x.is_nan() || x < EXP_LO {
        return 0.0;
    }
    let x = x.min(EXP_HI);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = P0;
    p = p.mul_add(r, P1);
    p = p.mul_add(r, P2);
    p = p.mul_add(r, P3);
    p = p.mul_add(r, P4);
    p = p.mul_add(r, P5);
    let r2 = r * r;
    let y = p.mul_add(r2, r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    y * scale
}

/// Folds the 16 canonical lanes with the fixed tree `j + j+8`, `j + j+4`, `j + j+2`, `j + j+1`.
#[inline]
fn fold16(mut acc: [f32; LANES]) -> f32 {
    let mut step = LANES / 2;
    while step > 0 {
        for j in 0..step {
            acc[j] += acc[j + step];
        }
        step /= 2;
    }
    acc[0]
}

fn scan_scalar(x: &[f32], from: usize, mut max: f32, mut bad: f32) -> (f32, bool) {
    for &v in &x[from..] {
        max = max.max(v);
        bad += v * 0.0; // NaN for NaN and ±inf, else 0
    }
    (max, bad == 0.0)
}

fn cumsum_scalar_from(x: &mut [f32], from: usize, carry: f32) {
    let mut carry = carry;
    let mut start = from;
    while start < x.len() {
        let end = (start + LANES).min(x.len());
        let mut y = [0.0f32; LANES];
        y[..end - start].copy_from_slice(&x[start..end]);
        let mut s = 1;
        while s < LANES {
            let old = y;
            for i in 0..LANES {
                y[i] = old[i] + if i >= s { old[i - s] } else { 0.0 };
            }
            s *= 2;
        }
        for v in y.iter_mut() {
            *v += carry;
        }
        x[start..end].copy_from_slice(&y[..end - start]);
        carry = y[LANES - 1];
        start = end;
    }
}

fn collect_gt_scalar(
    x: &[f32],
    start: usize,
    threshold: f32,
    out: &mut [u32],
    mut written: usize,
) -> (usize, usize) {
    // Works in whole 16-element blocks (like the vector versions) so that results agree.
    let mut i = start;
    while i < x.len() {
        let end = (i + LANES).min(x.len());
        if out.len() - written < LANES {
            return (i, written);
        }
        for (j, &v) in x[i..end].iter().enumerate() {
            if v > threshold {
                out[written] = (i + j) as u32;
                written += 1;
            }
        }
        i = end;
    }
    (x.len(), written)
}

fn masked_fill_scalar(x: &mut [f32], words: &[u64], fill: f32, from: usize) {
    for (i, v) in x.iter_mut().enumerate().skip(from) {
        let w = words.get(i / 64).copied().unwrap_or(0);
        if (w >> (i % 64)) & 1 == 0 {
            *v = fill;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Public dispatching kernels.
// ---------------------------------------------------------------------------------------------

/// One pass over `x`: its maximum and whether every value is finite (no NaN, no ±inf).
/// The maximum is `-inf` for an empty slice and unspecified when the slice is not finite.
pub fn scan_f32(x: &[f32]) -> (f32, bool) {
    scan_f32_with(backend(), x)
}

/// [`scan_f32`] on an explicit backend (falls back to scalar when unsupported here).
pub fn scan_f32_with(b: Backend, x: &[f32]) -> (f32, bool) {
    match usable(b) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified that this CPU supports AVX-512F.
        Backend::Avx512 => unsafe { x86::scan_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified that this CPU supports AVX2 and FMA.
        Backend::Avx2 => unsafe { x86::scan_avx2(x) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `usable` verified that this CPU supports NEON.
        Backend::Neon => unsafe { arm::scan_neon(x) },
        _ => scan_scalar(x, 0, f32::NEG_INFINITY, 0.0),
    }
}

/// Maximum of `x` (`-inf` when empty). NaN must not be present.
pub fn max_f32(x: &[f32]) -> f32 {
    scan_f32(x).0
}

/// Index and value of the largest element, the lowest index on ties; `None` when `x` is empty
/// or holds no value above `-inf`. NaN must not be present.
pub fn argmax_f32(x: &[f32]) -> Option<(usize, f32)> {
    argmax_f32_with(backend(), x)
}

/// [`argmax_f32`] on an explicit backend.
pub fn argmax_f32_with(b: Backend, x: &[f32]) -> Option<(usize, f32)> {
    let (max, _) = scan_f32_with(b, x);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return None;
    }
    // Second pass: the first element equal to the maximum (a threshold scan just below it).
    let below = f32::from_bits(if max > 0.0 {
        max.to_bits() - 1
    } else if max == 0.0 {
        (-f32::MIN_POSITIVE * f32::EPSILON).to_bits()
    } else {
        max.to_bits() + 1
    });
    let mut out = [0u32; LANES];
    let mut start = 0;
    loop {
        let (next, n) = collect_gt_with(b, x, start, below, &mut out);
        if n > 0 {
            let i = out[0] as usize;
            return Some((i, x[i]));
        }
        if next >= x.len() {
            return None;
        }
        start = next;
    }
}

/// Writes `exp(x[i] - max)` into `x` and returns their sum (canonical 16-lane order).
pub fn exp_sub_sum_f32(x: &mut [f32], max: f32) -> f32 {
    exp_sub_sum_f32_with(backend(), x, max)
}

/// `Σ exp(x[i] - max)` without writing (canonical 16-lane order, same bits as
/// [`exp_sub_sum_f32`]).
pub fn exp_sum_f32(x: &[f32], max: f32) -> f32 {
    exp_sum_f32_with(backend(), x, max)
}

/// Runs the vector part of the exp-sum over the whole 16-element blocks at `p`.
///
/// # Safety
/// `p` must be valid for reads of `len` floats, and for writes too when `WRITE`.
unsafe fn exp_blocks<const WRITE: bool>(
    b: Backend,
    p: *mut f32,
    len: usize,
    max: f32,
) -> ([f32; LANES], usize) {
    let blocks = len / LANES;
    match usable(b) {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => (
            // SAFETY: `usable` verified AVX-512F; the caller vouches for `p` over `len` floats.
            unsafe { x86::exp_lanes_avx512::<WRITE>(p, blocks, max) },
            blocks * LANES,
        ),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => (
            // SAFETY: `usable` verified AVX2 and FMA; the caller vouches for `p`.
            unsafe { x86::exp_lanes_avx2::<WRITE>(p, blocks, max) },
            blocks * LANES,
        ),
        #[cfg(target_arch = "aarch64")]
        Backend::Neon => (
            // SAFETY: `usable` verified NEON; the caller vouches for `p`.
            unsafe { arm::exp_lanes_neon::<WRITE>(p, blocks, max) },
            blocks * LANES,
        ),
        _ => ([0.0; LANES], 0),
    }
}

/// [`exp_sub_sum_f32`] on an explicit backend.
pub fn exp_sub_sum_f32_with(b: Backend, x: &mut [f32], max: f32) -> f32 {
    // SAFETY: `x` is a live, mutably borrowed slice of `x.len()` floats.
    let (mut acc, done) = unsafe { exp_blocks::<true>(b, x.as_mut_ptr(), x.len(), max) };
    for i in done..x.len() {
        let e = exp_f32(x[i] - max);
        x[i] = e;
        acc[i % LANES] += e;
    }
    fold16(acc)
}

/// [`exp_sum_f32`] on an explicit backend.
pub fn exp_sum_f32_with(b: Backend, x: &[f32], max: f32) -> f32 {
    // SAFETY: `x` is valid for reads of `x.len()` floats; with `WRITE = false` the kernel
    // never writes through the pointer, so casting away `const` is sound.
    let (mut acc, done) = unsafe { exp_blocks::<false>(b, x.as_ptr() as *mut f32, x.len(), max) };
    for i in done..x.len() {
        acc[i % LANES] += exp_f32(x[i] - max);
    }
    fold16(acc)
}

/// In-place softmax: `x[i] = exp(x[i] - max) / Σ`. Returns the log-sum-exp
/// `max + ln Σ exp(x - max)`, or `None` when `x` is empty or holds no value above `-inf`.
pub fn simd_softmax_f32(x: &mut [f32]) -> Option<f32> {
    let (max, _) = scan_f32(x);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return None;
    }
    let sum = exp_sub_sum_f32(x, max);
    scale_f32(x, 1.0 / sum);
    Some(max + sum.ln())
}

/// `ln Σ exp(x)` computed stably, without writing; `None` when empty or all `-inf`.
pub fn log_sum_exp_f32(x: &[f32]) -> Option<f32> {
    let (max, _) = scan_f32(x);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return None;
    }
    Some(max + exp_sum_f32(x, max).ln())
}

/// `x[i] *= s` for every element.
pub fn scale_f32(x: &mut [f32], s: f32) {
    scale_f32_with(backend(), x, s)
}

/// [`scale_f32`] on an explicit backend.
pub fn scale_f32_with(b: Backend, x: &mut [f32], s: f32) {
    match usable(b) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified AVX-512F support.
        Backend::Avx512 => unsafe { x86::scale_avx512(x, s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified AVX2 and FMA support.
        Backend::Avx2 => unsafe { x86::scale_avx2(x, s) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `usable` verified NEON support.
        Backend::Neon => unsafe { arm::scale_neon(x, s) },
        _ => x.iter_mut().for_each(|v| *v *= s),
    }
}

/// In-place inclusive prefix sum in the canonical blocked order (16-lane Hillis–Steele scan per
/// block plus a running carry). Bit-identical on every backend.
pub fn simd_cumsum_f32(x: &mut [f32]) {
    simd_cumsum_f32_with(backend(), x)
}

/// [`simd_cumsum_f32`] on an explicit backend.
pub fn simd_cumsum_f32_with(b: Backend, x: &mut [f32]) {
    match usable(b) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified AVX-512F support.
        Backend::Avx512 => unsafe { x86::cumsum_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified AVX2 and FMA support.
        Backend::Avx2 => unsafe { x86::cumsum_avx2(x) },
        _ => cumsum_scalar_from(x, 0, 0.0),
    }
}

/// Sets `x[i] = fill` wherever bit `i` of `words` (64 ids per word, as in
/// `TokenMask::words`) is clear; ids past the words count as clear.
pub fn masked_fill_f32(x: &mut [f32], words: &[u64], fill: f32) {
    masked_fill_f32_with(backend(), x, words, fill)
}

/// [`masked_fill_f32`] on an explicit backend.
pub fn masked_fill_f32_with(b: Backend, x: &mut [f32], words: &[u64], fill: f32) {
    match usable(b) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified AVX-512F support.
        Backend::Avx512 => unsafe { x86::masked_fill_avx512(x, words, fill) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified AVX2 and FMA support.
        Backend::Avx2 => unsafe { x86::masked_fill_avx2(x, words, fill) },
        _ => masked_fill_scalar(x, words, fill, 0),
    }
}

/// Appends to `out` the indices `i >= start` with `x[i] > threshold`, in increasing order, in
/// whole 16-element blocks, stopping before a block when fewer than 16 slots of `out` are
/// free. Returns `(next_start, written)`: scanning resumes at `next_start` (`== x.len()` when
/// done).
pub fn collect_gt_f32(x: &[f32], start: usize, threshold: f32, out: &mut [u32]) -> (usize, usize) {
    collect_gt_with(backend(), x, start, threshold, out)
}

/// [`collect_gt_f32`] on an explicit backend.
pub fn collect_gt_with(
    b: Backend,
    x: &[f32],
    start: usize,
    threshold: f32,
    out: &mut [u32],
) -> (usize, usize) {
    let start = start.min(x.len());
    match usable(b) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified AVX-512F support.
        Backend::Avx512 => unsafe { x86::collect_gt_avx512(x, start, threshold, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` verified AVX2 and FMA support.
        Backend::Avx2 => unsafe { x86::collect_gt_avx2(x, start, threshold, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `usable` verified NEON support.
        Backend::Neon => unsafe { arm::collect_gt_neon(x, start, threshold, out) },
        _ => collect_gt_scalar(x, start, threshold, out, 0),
    }
}

/// Top-k selection: writes into `out` the indices of the `k` largest values of `x` above
/// `-inf`, sorted by value descending then index ascending (ties keep the lowest ids), and
/// returns how many were written (`min(k, count of values > -inf)`). `scratch` must hold at
/// least `k + 16` slots (more makes it faster; `max(4k, 512)` is plenty); `out` at least `k`.
/// NaN must not be present. Never allocates.
pub fn simd_top_k_f32(x: &[f32], k: usize, scratch: &mut [u32], out: &mut [u32]) -> usize {
    simd_top_k_f32_with(backend(), x, k, scratch, out)
}

/// [`simd_top_k_f32`] on an explicit backend.
pub fn simd_top_k_f32_with(
    b: Backend,
    x: &[f32],
    k: usize,
    scratch: &mut [u32],
    out: &mut [u32],
) -> usize {
    let k = k.min(out.len());
    if k == 0 || x.is_empty() {
        return 0;
    }
    assert!(scratch.len() >= k + LANES, "scratch too small for top-k");
    let cmp = |a: &u32, b: &u32| {
        x[*b as usize]
            .total_cmp(&x[*a as usize])
            .then_with(|| a.cmp(b))
    };
    let mut threshold = f32::NEG_INFINITY;
    let mut len = 0usize;
    let mut start = 0usize;
    loop {
        let (next, n) = collect_gt_with(b, x, start, threshold, &mut scratch[len..]);
        len += n;
        start = next;
        if start >= x.len() {
            break;
        }
        // Buffer full: keep the best k, raise the threshold to the k-th value.
        if len > k {
            scratch[..len].select_nth_unstable_by(k - 1, cmp);
            len = k;
            let kth = scratch[..k]
                .iter()
                .map(|&i| x[i as usize])
                .fold(f32::INFINITY, f32::min);
            threshold = kth;
        }
        // Ties with the k-th value at later (higher) ids lose, so a strict `>` is exact.
    }
    if len > k {
        scratch[..len].select_nth_unstable_by(k - 1, cmp);
        len = k;
    }
    scratch[..len].sort_unstable_by(cmp);
    out[..len].copy_from_slice(&scratch[..len]);
    len
}

// ---------------------------------------------------------------------------------------------
// x86-64 backends.
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    // ---- AVX-512 ----

    #[target_feature(enable = "avx512f")]
    fn exp_avx512(x: __m512) -> __m512 {
        let valid = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(EXP_LO));
        let x = _mm512_min_ps(x, _mm512_set1_ps(EXP_HI));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
        let mut p = _mm512_set1_ps(P0);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P4));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P5));
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        let ni = _mm512_cvtps_epi32(n);
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127)));
        let res = _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
        _mm512_maskz_mov_ps(valid, res)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn scan_avx512(x: &[f32]) -> (f32, bool) {
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut vbad = _mm512_setzero_ps();
        let blocks = x.len() / LANES;
        for i in 0..blocks {
            // SAFETY: i * 16 + 16 <= x.len(), so the 16 loaded floats are inside `x`.
            let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(i * LANES)) };
            vmax = _mm512_max_ps(vmax, v);
            vbad = _mm512_add_ps(vbad, _mm512_sub_ps(v, v));
        }
        let max = _mm512_reduce_max_ps(vmax);
        let bad = _mm512_reduce_add_ps(vbad);
        scan_scalar(x, blocks * LANES, max, bad)
    }

    /// # Safety
    /// `p` valid for reads of `blocks * 16` floats (and writes when `WRITE`); AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_lanes_avx512<const WRITE: bool>(
        p: *mut f32,
        blocks: usize,
        max: f32,
    ) -> [f32; LANES] {
        let vm = _mm512_set1_ps(max);
        let mut acc = _mm512_setzero_ps();
        for i in 0..blocks {
            // SAFETY: i < blocks, so the 16 floats at i * 16 are inside the caller's range.
            let q = unsafe { p.add(i * LANES) };
            // SAFETY: see above.
            let v = unsafe { _mm512_loadu_ps(q) };
            let e = exp_avx512(_mm512_sub_ps(v, vm));
            if WRITE {
                // SAFETY: the caller guarantees `p` is writable when `WRITE`.
                unsafe { _mm512_storeu_ps(q, e) };
            }
            acc = _mm512_add_ps(acc, e);
        }
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` holds exactly 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn scale_avx512(x: &mut [f32], s: f32) {
        let vs = _mm512_set1_ps(s);
        let blocks = x.len() / LANES;
        for i in 0..blocks {
            // SAFETY: the 16 floats at i * 16 are inside `x`, borrowed mutably.
            unsafe {
                let p = x.as_mut_ptr().add(i * LANES);
                _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_loadu_ps(p), vs));
            }
        }
        x[blocks * LANES..].iter_mut().for_each(|v| *v *= s);
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn cumsum_avx512(x: &mut [f32]) {
        let zero = _mm512_setzero_si512();
        let mut carry = _mm512_setzero_ps();
        let blocks = x.len() / LANES;
        for i in 0..blocks {
            // SAFETY: the 16 floats at i * 16 are inside `x`.
            let p = unsafe { x.as_mut_ptr().add(i * LANES) };
            // SAFETY: see above.
            let mut y = unsafe { _mm512_loadu_ps(p) };
            let yi = _mm512_castps_si512(y);
            y = _mm512_add_ps(y, _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(yi, zero)));
            let yi = _mm512_castps_si512(y);
            y = _mm512_add_ps(y, _mm512_castsi512_ps(_mm512_alignr_epi32::<14>(yi, zero)));
            let yi = _mm512_castps_si512(y);
            y = _mm512_add_ps(y, _mm512_castsi512_ps(_mm512_alignr_epi32::<12>(yi, zero)));
            let yi = _mm512_castps_si512(y);
            y = _mm512_add_ps(y, _mm512_castsi512_ps(_mm512_alignr_epi32::<8>(yi, zero)));
            y = _mm512_add_ps(y, carry);
            // SAFETY: see above; `x` is borrowed mutably.
            unsafe { _mm512_storeu_ps(p, y) };
            carry = _mm512_permutexvar_ps(_mm512_set1_epi32(15), y);
        }
        let c = _mm512_cvtss_f32(carry);
        cumsum_scalar_from(x, blocks * LANES, c);
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn masked_fill_avx512(x: &mut [f32], words: &[u64], fill: f32) {
        let vf = _mm512_set1_ps(fill);
        let blocks = (x.len() / LANES).min(words.len() * 4);
        for i in 0..blocks {
            let k = (words[i / 4] >> ((i % 4) * 16)) as u16;
            if k == u16::MAX {
                continue;
            }
            // SAFETY: the 16 floats at i * 16 are inside `x`, borrowed mutably.
            unsafe {
                let p = x.as_mut_ptr().add(i * LANES);
                _mm512_storeu_ps(p, _mm512_mask_mov_ps(vf, k, _mm512_loadu_ps(p)));
            }
        }
        masked_fill_scalar(x, words, fill, blocks * LANES);
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn collect_gt_avx512(
        x: &[f32],
        start: usize,
        threshold: f32,
        out: &mut [u32],
    ) -> (usize, usize) {
        let vt = _mm512_set1_ps(threshold);
        let mut written = 0usize;
        let mut i = start;
        while i + LANES <= x.len() {
            if out.len() - written < LANES {
                return (i, written);
            }
            // SAFETY: i + 16 <= x.len().
            let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
            let mut m = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, vt);
            while m != 0 {
                out[written] = (i + m.trailing_zeros() as usize) as u32;
                written += 1;
                m &= m - 1;
            }
            i += LANES;
        }
        collect_gt_scalar(x, i, threshold, out, written)
    }

    // ---- AVX2 + FMA (two 8-lane registers emulate the 16 canonical lanes) ----

    #[target_feature(enable = "avx2,fma")]
    fn exp_avx2(x: __m256) -> __m256 {
        let valid = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(EXP_LO));
        let x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(P0);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let ni = _mm256_cvtps_epi32(n);
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(ni, _mm256_set1_epi32(127)));
        let res = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
        _mm256_and_ps(res, valid)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn scan_avx2(x: &[f32]) -> (f32, bool) {
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut vbad = _mm256_setzero_ps();
        let blocks = x.len() / 8;
        for i in 0..blocks {
            // SAFETY: i * 8 + 8 <= x.len().
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i * 8)) };
            vmax = _mm256_max_ps(vmax, v);
            vbad = _mm256_add_ps(vbad, _mm256_sub_ps(v, v));
        }
        let mut m = [0.0f32; 8];
        let mut b = [0.0f32; 8];
        // SAFETY: both arrays hold exactly 8 floats.
        unsafe {
            _mm256_storeu_ps(m.as_mut_ptr(), vmax);
            _mm256_storeu_ps(b.as_mut_ptr(), vbad);
        }
        let max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let bad = b.iter().sum::<f32>();
        scan_scalar(x, blocks * 8, max, bad)
    }

    /// # Safety
    /// `p` valid for reads of `blocks * 16` floats (and writes when `WRITE`); AVX2+FMA present.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_lanes_avx2<const WRITE: bool>(
        p: *mut f32,
        blocks: usize,
        max: f32,
    ) -> [f32; LANES] {
        let vm = _mm256_set1_ps(max);
        let mut lo = _mm256_setzero_ps();
        let mut hi = _mm256_setzero_ps();
        for i in 0..blocks {
            // SAFETY: i < blocks: the 16 floats at i * 16 are inside the caller's range.
            let q = unsafe { p.add(i * LANES) };
            // SAFETY: see above.
            let (a, b) = unsafe { (_mm256_loadu_ps(q), _mm256_loadu_ps(q.add(8))) };
            let ea = exp_avx2(_mm256_sub_ps(a, vm));
            let eb = exp_avx2(_mm256_sub_ps(b, vm));
            if WRITE {
                // SAFETY: the caller guarantees `p` is writable when `WRITE`.
                unsafe {
                    _mm256_storeu_ps(q, ea);
                    _mm256_storeu_ps(q.add(8), eb);
                }
            }
            lo = _mm256_add_ps(lo, ea);
            hi = _mm256_add_ps(hi, eb);
        }
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` holds 16 floats: two stores of 8.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
        }
        lanes
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn scale_avx2(x: &mut [f32], s: f32) {
        let vs = _mm256_set1_ps(s);
        let blocks = x.len() / 8;
        for i in 0..blocks {
            // SAFETY: the 8 floats at i * 8 are inside `x`, borrowed mutably.
            unsafe {
                let p = x.as_mut_ptr().add(i * 8);
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), vs));
            }
        }
        x[blocks * 8..].iter_mut().for_each(|v| *v *= s);
    }

    /// One Hillis–Steele step of distance `S` (< 8) over the 16 canonical lanes held as
    /// `lo` (lanes 0..8) and `hi` (lanes 8..16): `y[i] += y[i - S]`, zero below lane `S`.
    #[target_feature(enable = "avx2,fma")]
    fn scan_step_avx2<const S: i32>(lo: __m256, hi: __m256) -> (__m256, __m256) {
        let idx = _mm256_sub_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(S),
        );
        let idx_mod = _mm256_and_si256(idx, _mm256_set1_epi32(7));
        let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)));
        let pl = _mm256_permutevar8x32_ps(lo, idx_mod);
        let ph = _mm256_permutevar8x32_ps(hi, idx_mod);
        let shifted_lo = _mm256_and_ps(pl, keep);
        let shifted_hi = _mm256_blendv_ps(pl, ph, keep);
        (_mm256_add_ps(lo, shifted_lo), _mm256_add_ps(hi, shifted_hi))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn cumsum_avx2(x: &mut [f32]) {
        let zero = _mm256_setzero_ps();
        let mut carry = _mm256_setzero_ps();
        let blocks = x.len() / LANES;
        for i in 0..blocks {
            // SAFETY: the 16 floats at i * 16 are inside `x`.
            let p = unsafe { x.as_mut_ptr().add(i * LANES) };
            // SAFETY: see above.
            let (lo, hi) = unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) };
            let (lo, hi) = scan_step_avx2::<1>(lo, hi);
            let (lo, hi) = scan_step_avx2::<2>(lo, hi);
            let (lo, hi) = scan_step_avx2::<4>(lo, hi);
            // Step 8: lanes 8..16 take lanes 0..8; lanes 0..8 add zero (as the scalar twin).
            let (lo, hi) = (_mm256_add_ps(lo, zero), _mm256_add_ps(hi, lo));
            let (lo, hi) = (_mm256_add_ps(lo, carry), _mm256_add_ps(hi, carry));
            // SAFETY: see above; `x` is borrowed mutably.
            unsafe {
                _mm256_storeu_ps(p, lo);
                _mm256_storeu_ps(p.add(8), hi);
            }
            carry = _mm256_permutevar8x32_ps(hi, _mm256_set1_epi32(7));
        }
        let c = _mm256_cvtss_f32(carry);
        cumsum_scalar_from(x, blocks * LANES, c);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn masked_fill_avx2(x: &mut [f32], words: &[u64], fill: f32) {
        let vf = _mm256_set1_ps(fill);
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let blocks = (x.len() / 8).min(words.len() * 8);
        for i in 0..blocks {
            let byte = ((words[i / 8] >> ((i % 8) * 8)) & 0xff) as i32;
            if byte == 0xff {
                continue;
            }
            let sel = _mm256_and_si256(_mm256_set1_epi32(byte), bits);
            let keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(sel, bits));
            // SAFETY: the 8 floats at i * 8 are inside `x`, borrowed mutably.
            unsafe {
                let p = x.as_mut_ptr().add(i * 8);
                _mm256_storeu_ps(p, _mm256_blendv_ps(vf, _mm256_loadu_ps(p), keep));
            }
        }
        masked_fill_scalar(x, words, fill, blocks * 8);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn collect_gt_avx2(
        x: &[f32],
        start: usize,
        threshold: f32,
        out: &mut [u32],
    ) -> (usize, usize) {
        let vt = _mm256_set1_ps(threshold);
        let mut written = 0usize;
        let mut i = start;
        while i + LANES <= x.len() {
            if out.len() - written < LANES {
                return (i, written);
            }
            // SAFETY: i + 16 <= x.len(): both 8-float loads are inside `x`.
            let (a, b) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                )
            };
            let ma = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(a, vt)) as u32;
            let mb = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(b, vt)) as u32;
            let mut m = ma | (mb << 8);
            while m != 0 {
                out[written] = (i + m.trailing_zeros() as usize) as u32;
                written += 1;
                m &= m - 1;
            }
            i += LANES;
        }
        collect_gt_scalar(x, i, threshold, out, written)
    }
}

// ---------------------------------------------------------------------------------------------
// aarch64 NEON backend (four 4-lane registers emulate the 16 canonical lanes). Kernels without
// a NEON version (prefix sum, masked fill) use the scalar twin.
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
mod arm {
    // Some toolchains still declare NEON value intrinsics `unsafe`; the safe `fn`s below
    // wrap their bodies in `unsafe` blocks for those, which newer toolchains find redundant.
    #![allow(unused_unsafe)]
    use super::*;
    use std::arch::aarch64::*;

    #[target_feature(enable = "neon")]
    fn exp_neon(x: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled for this function; the only memory accesses are the
        // bounds-checked loads commented below.
        unsafe {
            let valid = vcgeq_f32(x, vdupq_n_f32(EXP_LO));
            let x = vminq_f32(x, vdupq_n_f32(EXP_HI));
            let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
            // vfmaq_f32(a, b, c) = a + b * c, fused.
            let r = vfmaq_f32(x, n, vdupq_n_f32(-LN2_HI));
            let r = vfmaq_f32(r, n, vdupq_n_f32(-LN2_LO));
            let mut p = vdupq_n_f32(P0);
            p = vfmaq_f32(vdupq_n_f32(P1), p, r);
            p = vfmaq_f32(vdupq_n_f32(P2), p, r);
            p = vfmaq_f32(vdupq_n_f32(P3), p, r);
            p = vfmaq_f32(vdupq_n_f32(P4), p, r);
            p = vfmaq_f32(vdupq_n_f32(P5), p, r);
            let r2 = vmulq_f32(r, r);
            let y = vaddq_f32(vfmaq_f32(r, p, r2), vdupq_n_f32(1.0));
            let ni = vcvtq_s32_f32(n);
            let bits = vshlq_n_s32::<23>(vaddq_s32(ni, vdupq_n_s32(127)));
            let res = vmulq_f32(y, vreinterpretq_f32_s32(bits));
            vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(res), valid))
        }
    }

    #[target_feature(enable = "neon")]
    pub(super) fn scan_neon(x: &[f32]) -> (f32, bool) {
        // SAFETY: NEON is enabled for this function; the only memory accesses are the
        // bounds-checked loads commented below.
        unsafe {
            let mut vmax = vdupq_n_f32(f32::NEG_INFINITY);
            let mut vbad = vdupq_n_f32(0.0);
            let blocks = x.len() / 4;
            for i in 0..blocks {
                // SAFETY: i * 4 + 4 <= x.len().
                let v = unsafe { vld1q_f32(x.as_ptr().add(i * 4)) };
                vmax = vmaxq_f32(vmax, v);
                vbad = vaddq_f32(vbad, vsubq_f32(v, v));
            }
            let max = vmaxvq_f32(vmax);
            let bad = vaddvq_f32(vbad);
            scan_scalar(x, blocks * 4, max, bad)
        }
    }

    /// # Safety
    /// `p` valid for reads of `blocks * 16` floats (and writes when `WRITE`); NEON present.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn exp_lanes_neon<const WRITE: bool>(
        p: *mut f32,
        blocks: usize,
        max: f32,
    ) -> [f32; LANES] {
        let vm = vdupq_n_f32(max);
        let mut acc = [vdupq_n_f32(0.0); 4];
        for i in 0..blocks {
            for (q, a) in acc.iter_mut().enumerate() {
                // SAFETY: i < blocks and q < 4: the 4 floats are inside the caller's range.
                let ptr = unsafe { p.add(i * LANES + q * 4) };
                // SAFETY: see above.
                let v = unsafe { vld1q_f32(ptr) };
                let e = exp_neon(vsubq_f32(v, vm));
                if WRITE {
                    // SAFETY: the caller guarantees `p` is writable when `WRITE`.
                    unsafe { vst1q_f32(ptr, e) };
                }
                *a = vaddq_f32(*a, e); // inside an `unsafe fn`
            }
        }
        let mut lanes = [0.0f32; LANES];
        for (q, a) in acc.iter().enumerate() {
            // SAFETY: lanes[q * 4..q * 4 + 4] is inside the 16-float array.
            unsafe { vst1q_f32(lanes.as_mut_ptr().add(q * 4), *a) };
        }
        lanes
    }

    #[target_feature(enable = "neon")]
    pub(super) fn scale_neon(x: &mut [f32], s: f32) {
        // SAFETY: value intrinsic, NEON enabled here.
        let vs = unsafe { vdupq_n_f32(s) };
        let blocks = x.len() / 4;
        for i in 0..blocks {
            // SAFETY: the 4 floats at i * 4 are inside `x`, borrowed mutably.
            unsafe {
                let p = x.as_mut_ptr().add(i * 4);
                vst1q_f32(p, vmulq_f32(vld1q_f32(p), vs));
            }
        }
        x[blocks * 4..].iter_mut().for_each(|v| *v *= s);
    }

    #[target_feature(enable = "neon")]
    pub(super) fn collect_gt_neon(
        x: &[f32],
        start: usize,
        threshold: f32,
        out: &mut [u32],
    ) -> (usize, usize) {
        // SAFETY: value intrinsic, NEON enabled here.
        let vt = unsafe { vdupq_n_f32(threshold) };
        let mut written = 0usize;
        let mut i = start;
        while i + LANES <= x.len() {
            if out.len() - written < LANES {
                return (i, written);
            }
            for q in 0..4 {
                // SAFETY: i + 16 <= x.len(), so the 4 floats at i + q * 4 are inside `x`.
                let v = unsafe { vld1q_f32(x.as_ptr().add(i + q * 4)) };
                // SAFETY: value intrinsics, NEON enabled here.
                if unsafe { vmaxvq_u32(vcgtq_f32(v, vt)) } != 0 {
                    for j in 0..4 {
                        if x[i + q * 4 + j] > threshold {
                            out[written] = (i + q * 4 + j) as u32;
                            written += 1;
                        }
                    }
                }
            }
            i += LANES;
        }
        collect_gt_scalar(x, i, threshold, out, written)
    }
}
