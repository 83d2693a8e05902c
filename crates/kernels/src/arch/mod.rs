//! The SIMD builds, a folder per architecture (the portable twins live beside the dispatch
//! code in [`crate::quant`], [`crate::f16`]): only these modules use `unsafe`, each block
//! with a `// SAFETY:` line.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
