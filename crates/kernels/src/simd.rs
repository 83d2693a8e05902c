//! The one run-time SIMD dispatcher of the workspace: which instruction sets the kernels may
//! use, chosen once per process from the CPU's features and the `FLUENT_AI_CANDLE_SIMD`
//! environment variable.
//!
//! `FLUENT_AI_CANDLE_SIMD` (read once, at the first call of [`chosen`]) caps the choice; its
//! value is matched without regard to case or surrounding spaces:
//!
//! | value            | x86-64                                              | aarch64 |
//! |------------------|-----------------------------------------------------|---------|
//! | `scalar`         | the portable scalar twins                           | scalar  |
//! | `avx2`           | AVX2 (+FMA, F16C) at most                           | NEON    |
//! | `avx512`, unset, or anything else | the best the CPU has (AVX-512 with VNNI) | NEON |
//! | `neon`           | as `avx512`                                         | NEON    |
//!
//! Every family of kernels maps the [`Simd`] chosen here onto the builds it has (the sampling
//! crate's kernels need only AVX-512 F of [`Simd::Avx512`]; the quantized kernels' 512-bit
//! builds need [`Simd::Avx512Vnni`] and run their AVX2 build under [`Simd::Avx512`]). Every
//! build returns the scalar twin's bits, so the choice changes speed, never results.
//!
//! ```
//! use fluent_ai_candle_kernels::simd::{chosen, Simd};
//!
//! let s = chosen();
//! assert!(s.is_supported());
//! assert!(Simd::Scalar.is_supported());
//! // The order the variable caps along.
//! assert!(Simd::Avx2 <= Simd::Avx512Vnni);
//! ```

use std::sync::OnceLock;

/// A set of instruction sets kernels may use. On x86-64 each level includes the ones before
/// it (`Scalar < Avx2 < Avx512 < Avx512Vnni`); [`Simd::Neon`] is aarch64's only level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Simd {
    /// Portable scalar code: the twins every other build matches bit for bit.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// [`Simd::Avx2`] plus AVX-512 F.
    Avx512,
    /// [`Simd::Avx512`] plus AVX-512 VL, DQ, BW and VNNI.
    Avx512Vnni,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Simd {
    /// Whether this CPU can run the level (detected at run time, never from compile flags).
    pub fn is_supported(self) -> bool {
        match self {
            Simd::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => Simd::Avx2.is_supported() && is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512Vnni => {
                Simd::Avx512.is_supported()
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The lower-case name `FLUENT_AI_CANDLE_SIMD` uses for the level (`avx512vnni` is what
    /// `avx512` selects on a CPU with VNNI).
    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
            Simd::Avx512Vnni => "avx512vnni",
            Simd::Neon => "neon",
        }
    }

    /// Every level this CPU supports, scalar first.
    pub fn available() -> Vec<Simd> {
        [
            Simd::Scalar,
            Simd::Avx2,
            Simd::Avx512,
            Simd::Avx512Vnni,
            Simd::Neon,
        ]
        .into_iter()
        .filter(|s| s.is_supported())
        .collect()
    }

    /// The best level this CPU supports under the cap `FLUENT_AI_CANDLE_SIMD=value` sets
    /// (see the module docs; `None` or an unknown value: no cap).
    pub fn best_under(value: Option<&str>) -> Simd {
        let cap = value.map(|v| v.trim().to_ascii_lowercase());
        let cap = match cap.as_deref() {
            Some("scalar") => return Simd::Scalar,
            Some("avx2") => Simd::Avx2,
            _ => Simd::Avx512Vnni,
        };
        if Simd::Neon.is_supported() {
            return Simd::Neon;
        }
        [Simd::Avx512Vnni, Simd::Avx512, Simd::Avx2]
            .into_iter()
            .find(|s| *s <= cap && s.is_supported())
            .unwrap_or(Simd::Scalar)
    }
}

/// The level chosen for this process: the best the CPU supports, capped by
/// `FLUENT_AI_CANDLE_SIMD` (module docs). Decided at the first call, then a cached load.
#[inline]
pub fn chosen() -> Simd {
    static CHOSEN: OnceLock<Simd> = OnceLock::new();
    *CHOSEN.get_or_init(|| Simd::best_under(std::env::var("FLUENT_AI_CANDLE_SIMD").ok().as_deref()))
}

/// A [`Simd`] level this CPU was checked to support: the proof the SIMD builds take before
/// they run (only [`Kernels::new`] and [`Kernels::chosen`] make one, and both check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernels(Simd);

impl Kernels {
    /// The level, if this CPU supports it.
    pub fn new(simd: Simd) -> Option<Kernels> {
        simd.is_supported().then_some(Kernels(simd))
    }

    /// The process's choice ([`chosen`]).
    #[inline]
    pub fn chosen() -> Kernels {
        Kernels(chosen())
    }

    /// The portable scalar twins.
    pub fn scalar() -> Kernels {
        Kernels(Simd::Scalar)
    }

    /// The level.
    #[inline]
    pub fn simd(self) -> Simd {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_caps_the_choice() {
        assert_eq!(Simd::best_under(Some("scalar")), Simd::Scalar);
        assert_eq!(Simd::best_under(Some(" Scalar ")), Simd::Scalar);
        let best = Simd::best_under(None);
        assert!(best.is_supported());
        assert_eq!(Simd::best_under(Some("avx512")), best);
        assert_eq!(Simd::best_under(Some("no-such-level")), best);
        let avx2 = Simd::best_under(Some("avx2"));
        assert!(avx2.is_supported());
        if cfg!(target_arch = "x86_64") {
            assert!(avx2 <= Simd::Avx2);
            assert_eq!(avx2 == Simd::Avx2, Simd::Avx2.is_supported());
        }
        assert_eq!(Simd::available()[0], Simd::Scalar);
        assert!(Simd::available().contains(&chosen()));
        assert_eq!(Kernels::chosen().simd(), chosen());
        for s in Simd::available() {
            assert_eq!(Kernels::new(s).map(Kernels::simd), Some(s));
        }
    }
}
