//! AVX2 + FMA + F16C with AVX-512 VNNI (256-bit `vpdpbusd`, which needs AVX-512VL): the
//! 32-value formats' kernels for one activation row at a time, inside [`super::avx512`]'s row
//! loops.
#![allow(unsafe_code)]

use super::*;

q32_kernels!(
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    mul_sum_vnni,
    signed_vnni
);
