//! The AVX2 (+ FMA + F16C) build of the 32-value formats' kernels and row loops, and the
//! K-quant kernels ([`kquant`]).
#![allow(unsafe_code)]

use super::*;

pub mod kquant;
pub mod x16;

q32_kernels!("avx2,fma,f16c", mul_sum_avx2, signed_avx2, with_rows);
