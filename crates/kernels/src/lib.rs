//! # fluent-ai-candle-kernels
//!
//! The CPU kernels of fluent-ai-candle's decoders, on plain slices (no ML framework, no
//! tensors: the `models` crate wraps them in candle ops):
//!
//! - [`quant`]: GGML's quantized block formats (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`,
//!   `Q4_K`, `Q6_K`) read from a GGUF tensor's bytes, the 8-bit quantization of activations,
//!   and their dot products in llama.cpp's summation order, so a model's logits are llama.cpp's to the bit;
//! - [`attention`]: one query row's attention, whole, as llama.cpp's CPU flash attention
//!   computes it (the one-row path on an f16 cache read in place, and the tiled prompt path);
//! - [`f16`](mod@f16): the f16 vector ops it is built of (GGML's order);
//! - [`ggml`]: RMS norm, SwiGLU, GEGLU and RoPE arithmetic as llama.cpp's CPU backend does it;
//! - [`buf`]: the buffers weights are loaded into, on 2 MiB pages where the OS lends them;
//! - [`simd`]: the workspace's one run-time SIMD dispatcher (`FLUENT_AI_CANDLE_SIMD`), which
//!   the sampling crate's kernels follow too.
//!
//! Laid out as memchr is: each kernel has a portable scalar twin beside its dispatch code,
//! and one build per instruction set under [`arch`] (a folder per architecture:
//! `arch/x86_64/{avx2, vnni, avx512}`). Every build returns the scalar twin's bits (the
//! property tests of each module run every build this CPU has against the twin), so the
//! dispatcher changes speed, never results. `unsafe` lives only in the `arch` modules: the
//! builds are `#[target_feature]` functions reached through the [`simd::Kernels`] token,
//! which proves the CPU has the instruction set, and every `unsafe` block says why it is sound
//! in a `// SAFETY:` line.
//!
//! A `Q8_0` weight row times an activation row, with whatever SIMD this CPU has:
//!
//! ```
//! use fluent_ai_candle_kernels::quant::{dots, BlockQ8_0, Kernel, MAX_TILE, QK};
//! use fluent_ai_candle_kernels::simd::Kernels;
//!
//! // One weight row of two blocks, the bytes as a GGUF file holds them: an f16 scale (1.0)
//! // and 32 signed quants per block.
//! let mut bytes = Vec::new();
//! for q in [1i8, -2] {
//!     bytes.extend(0x3C00u16.to_le_bytes());
//!     bytes.extend([q as u8; QK]);
//! }
//! let w = fluent_ai_candle_kernels::quant::read_blocks::<BlockQ8_0>(&bytes);
//! // The activations, quantized to 8 bits per 32 values as llama.cpp does.
//! let x: Vec<f32> = (0..2 * QK).map(|i| if i < QK { 0.25 } else { 0.5 }).collect();
//! let mut a = vec![Default::default(); 2];
//! BlockQ8_0::quantize(&x, &mut a);
//! let mut out = [[0f32; MAX_TILE]; 1];
//! dots(Kernels::chosen(), &w, 2, (&[&a[..]], &[]), false, &mut out);
//! // 32 · (1 · 0.25) + 32 · (-2 · 0.5), up to the activations' 8-bit rounding.
//! assert!((out[0][0] - (8.0 - 32.0)).abs() < 0.1);
//! // The scalar twin returns the same bits.
//! let mut twin = [[0f32; MAX_TILE]; 1];
//! dots(Kernels::scalar(), &w, 2, (&[&a[..]], &[]), false, &mut twin);
//! assert_eq!(out[0][0].to_bits(), twin[0][0].to_bits());
//! ```

// Every unsafe operation in its own block with its own `// SAFETY:` line, also in `unsafe fn`s.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod arch;
pub mod attention;
pub mod buf;
pub mod f16;
pub mod ggml;
pub mod quant;
pub mod simd;
