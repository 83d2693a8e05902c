//! The `Q5_K`, `Q3_K` and `Q2_K` scalar twins (and so every SIMD build, which the unit tests
//! hold to the twins bit for bit) against llama.cpp's own one-row dot product:
//! `fixtures/reference/kquant-vec-dot.jsonl`, made by `kquant-vec-dot.c` next to it (see
//! `kquant-vec-dot.README.md`): weights quantized by `ggml_quantize_chunk`, activations by
//! llama.cpp's `Q8_K` quantizer, dotted by its AVX2 `ggml_vec_dot_q{5,3,2}_K_q8_K`. Our
//! quantizer runs on the same f32 activations, so this checks it too. The prompt order against
//! llama.cpp's tiled matmul (8+ rows): `kquant-tiled.jsonl`, made by `kquant-tiled.c`.

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
    let w = read_blocks::<B>(&c.w);
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

/// The activations of a `kquant-tiled.c` case: `m·k` values `v·2^-e`, `v` from its LCG,
/// every 61st times 32 (after the `n·k` weights' draws, as the C program does).
fn tiled_acts(seed: u64, n: usize, k: usize, m: usize, e: i32) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    };
    for _ in 0..n * k {
        next();
    }
    (0..m * k)
        .map(|i| {
            let v = ((next() % 20001) as i32 - 10000) as f32 * 2f32.powi(-e);
            if i % 61 == 30 {
                v * 32.0
            } else {
                v
            }
        })
        .collect()
}

/// Every output of a `kquant-tiled.jsonl` case by our prompt-order twin and by `dots` in the
/// prompt order under every level (tiles of up to four rows), as `out[j·n + i]`.
fn ours_tiled<B: Kernel<Act = ActBlockK>>(line: &str) -> (Vec<u32>, Vec<Vec<u32>>) {
    let num = |key: &str| field(line, key).parse::<usize>().unwrap();
    let (n, k, m) = (num("n"), num("k"), num("m"));
    let x = tiled_acts(num("seed") as u64, n, k, m, num("e") as i32);
    let w = read_blocks::<B>(&unhex(field(line, "w")));
    let kb = k / QK_K;
    assert_eq!(w.len(), n * kb);
    let mut a = vec![ActBlockK::default(); m * kb];
    for (x, a) in x.chunks_exact(k).zip(a.chunks_exact_mut(kb)) {
        B::quantize(x, a);
    }
    let rows: Vec<&[ActBlockK]> = a.chunks_exact(kb).collect();
    let twin: Vec<u32> = rows
        .iter()
        .flat_map(|r| {
            w.chunks_exact(kb)
                .map(|wr| B::prompt_scalar(wr, r).to_bits())
        })
        .collect();
    let mut levels = Vec::new();
    for simd in Simd::available() {
        let kernels = Kernels::new(simd).unwrap();
        let mut got = vec![0u32; n * m];
        for (t, tile) in rows.chunks(B::tile(kernels)).enumerate() {
            let mut out = vec![[0f32; MAX_TILE]; n];
            assert!(B::prompt_order(m, tile.len()));
            dots(kernels, &w, kb, (tile, &[]), true, &mut out);
            for (i, o) in out.iter().enumerate() {
                for (r, v) in o[..tile.len()].iter().enumerate() {
                    got[(t * B::tile(kernels) + r) * n + i] = v.to_bits();
                }
            }
        }
        levels.push(got);
    }
    (twin, levels)
}

#[test]
fn prompt_order_is_llama_cpps_tiled_matmul() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/reference/kquant-tiled.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        let want: Vec<u32> = field_array(line, "out");
        let (twin, levels) = match field(line, "format") {
            "Q5_K" => ours_tiled::<BlockQ5K>(line),
            "Q3_K" => ours_tiled::<BlockQ3K>(line),
            "Q2_K" => ours_tiled::<BlockQ2K>(line),
            f => panic!("unexpected format {f}"),
        };
        assert_eq!(twin, want, "line {i}: the twin");
        for got in levels {
            assert_eq!(got, want, "line {i}: a SIMD level");
        }
        count += 1;
    }
    assert_eq!(count, 9);
}

/// The numbers of the array field `key` in a flat JSON line.
fn field_array(line: &str, key: &str) -> Vec<u32> {
    let at = line.find(&format!("\"{key}\":[")).unwrap() + key.len() + 4;
    let rest = &line[at..];
    rest[..rest.find(']').unwrap()]
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect()
}
