//! The `Q5_K`, `Q3_K` and `Q2_K` scalar twins (and so every SIMD build, which the unit tests
//! hold to the twins bit for bit) against llama.cpp's own one-row dot product:
//! `fixtures/reference/kquant-vec-dot.jsonl`, made by `kquant-vec-dot.c` next to it (see
//! `kquant-vec-dot.README.md`): weights quantized by `ggml_quantize_chunk`, activations by
//! llama.cpp's `Q8_K` quantizer, dotted by its AVX2 `ggml_vec_dot_q{5,3,2}_K_q8_K`. Our
//! quantizer runs on the same f32 activations, so this checks it too.

use fluent_ai_candle_kernels::quant::kquant::*;
use fluent_ai_candle_kernels::quant::{dots, read_blocks, Kernel, MAX_TILE};
use fluent_ai_candle_kernels::simd::{Kernels, Simd};

/// One fixture line: the format's name, the row length, the weights' GGUF bytes, the
/// activations and llama.cpp's result.
struct Case {
    format: String,
    k: usize,
    w: Vec<u8>,
    x: Vec<f32>,
    dot: f32,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The value of the field `key` in a flat JSON line (the fixture's own simple shape).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
    let rest = &line[at..];
    match rest.strip_prefix('"') {
        Some(s) => &s[..s.find('"').unwrap()],
        None => &rest[..rest.find([',', '}']).unwrap()],
    }
}

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/reference/kquant-vec-dot.jsonl"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| Case {
            format: field(l, "format").to_string(),
            k: field(l, "k").parse().unwrap(),
            w: unhex(field(l, "w")),
            x: unhex(field(l, "x"))
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            dot: f32::from_bits(field(l, "dot").parse().unwrap()),
        })
        .collect()
}

/// Our twin's result for the case, then the same through `dots` under every level this CPU
/// has (one row, the one-row order).
fn ours<B: Kernel<Act = ActBlockK>>(c: &Case) -> Vec<f32> {
    let w: Vec<B> = read_blocks(&c.w);
    assert_eq!(w.len() * QK_K, c.k);
    let mut a = vec![ActBlockK::default(); c.k / QK_K];
    B::quantize(&c.x, &mut a);
    let mut out = vec![B::scalar(&w, &a)];
    for simd in Simd::available() {
        let mut o = [[0f32; MAX_TILE]; 1];
        dots(
            Kernels::new(simd).unwrap(),
            &w,
            w.len(),
            (&[&a[..]], &[]),
            false,
            &mut o,
        );
        out.push(o[0][0]);
    }
    out
}

#[test]
fn one_row_dot_products_are_llama_cpps_bits() {
    let cases = cases();
    assert_eq!(cases.len(), 24);
    let mut seen = [0; 3];
    for (i, c) in cases.iter().enumerate() {
        let got = match c.format.as_str() {
            "Q5_K" => ours::<BlockQ5K>(c),
            "Q3_K" => ours::<BlockQ3K>(c),
            "Q2_K" => ours::<BlockQ2K>(c),
            f => panic!("unexpected format {f}"),
        };
        let f = ["Q5_K", "Q3_K", "Q2_K"].iter().position(|f| *f == c.format);
        seen[f.unwrap()] += 1;
        for g in got {
            assert_eq!(
                g.to_bits(),
                c.dot.to_bits(),
                "line {i} ({}, k = {}): ours {g} vs llama.cpp {}",
                c.format,
                c.k,
                c.dot
            );
        }
    }
    assert_eq!(seen, [8, 8, 8]);
}
