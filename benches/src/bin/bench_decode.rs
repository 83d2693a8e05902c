//! `cargo xtask bench decode [--json]`: prefill and decode speed of our llama decoder against
//! candle-transformers' `quantized_llama` on the same GGUF file, in the same process, one after
//! the other: a 128-token prompt, then 128 greedy tokens, median of 3 runs each.
//!
//! With `--quality`, greedy48 agreement with llama.cpp's references instead (identical
//! continuations, mean agreeing prefix) for candle-transformers and for our decoder with each
//! KV-cache / attention option, in the same harness.
//!
//! With `--json`, one line: `{"model", "path", "threads", "ours_prefill_tok_s",
//! "ours_decode_tok_s", "candle_prefill_tok_s", "candle_decode_tok_s"}`.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, D};
use candle_transformers::models::quantized_llama::ModelWeights;
use fluent_ai_candle_benches::{prompt_ids, Speed};
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{cache, Decoder, GgufFile, Llama};

const PROMPT: usize = 128;
const NEW: usize = 128;
const RUNS: usize = 3;

fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits
        .flatten_all()?
        .argmax(D::Minus1)?
        .to_scalar::<u32>()?)
}

fn ours(model: &Llama, prompt: &[u32]) -> Result<Speed> {
    let mut cache = model.new_cache(&KvCacheConfig::default().max_entries(PROMPT + NEW + 1))?;
    let t = Instant::now();
    let logits = model.forward(prompt, &mut cache, false)?;
    let mut next = argmax(&logits)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..NEW {
        let logits = model.forward(&[next], &mut cache, false)?;
        next = argmax(&logits)?;
    }
    let decode = t.elapsed().as_secs_f64();
    Ok(Speed::new(prompt.len(), prefill, NEW, decode))
}

fn candle(path: &std::path::Path, prompt: &[u32]) -> Result<Speed> {
    let mut file = std::fs::File::open(path)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
    let t = Instant::now();
    let input = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&input, 0)?;
    let mut next = argmax(&logits)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..NEW {
        let input = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&input, prompt.len() + i)?;
        next = argmax(&logits)?;
    }
    let decode = t.elapsed().as_secs_f64();
    Ok(Speed::new(prompt.len(), prefill, NEW, decode))
}

/// Greedy continuations against llama.cpp's (fixtures/reference/smollm2-greedy48.jsonl):
/// (identical, mean agreeing prefix). `start(prompt)` begins a sequence and returns a step
/// function `step(tokens, position) -> logits`.
fn greedy_quality<S>(mut start: impl FnMut(&[u32]) -> Result<S>) -> Result<(usize, f64)>
where
    S: FnMut(&[u32], usize) -> Result<Tensor>,
{
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/reference/smollm2-greedy48.jsonl"
    );
    let text = std::fs::read_to_string(path)?;
    let (mut identical, mut prefix, mut n) = (0, 0, 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let ids = |k: &str| -> Vec<u32> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as u32)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (prompt, want) = (ids("ids"), ids("greedy"));
        let mut step = start(&prompt)?;
        let mut got = Vec::new();
        let mut next = argmax(&step(&prompt, 0)?)?;
        loop {
            got.push(next);
            if got.len() == 48 || next == 0 || next == 2 {
                break;
            }
            next = argmax(&step(&[next], prompt.len() + got.len() - 1)?)?;
        }
        identical += (got == want) as usize;
        prefix += got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        n += 1;
    }
    Ok((identical, prefix as f64 / n.max(1) as f64))
}

/// Our decoder as a greedy step function.
fn ours_quality(model: &Llama) -> Result<(usize, f64)> {
    greedy_quality(|prompt| {
        let mut cache =
            model.new_cache(&KvCacheConfig::default().max_entries(prompt.len() + 49))?;
        Ok(move |tokens: &[u32], _pos: usize| -> Result<Tensor> {
            Ok(model.forward(tokens, &mut cache, false)?)
        })
    })
}

/// candle-transformers' `quantized_llama` on the same file, with the same harness.
fn candle_quality(path: &std::path::Path) -> Result<(usize, f64)> {
    greedy_quality(|_prompt| {
        let mut file = std::fs::File::open(path)?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
        let mut weights = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
        Ok(move |tokens: &[u32], pos: usize| -> Result<Tensor> {
            let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
            Ok(weights.forward(&input, pos)?)
        })
    })
}

fn main() -> Result<()> {
    fluent_ai_candle_models::init_cpu_threads();
    let json = std::env::args().any(|a| a == "--json");
    let path = cache::resolve("smollm2-135m-instruct").context("run `cargo xtask fetch-models`")?;
    let mut gguf = GgufFile::open(&path)?;
    let mut model = Llama::load(&mut gguf, &Device::Cpu, &mut |_| {})?;
    if std::env::args().any(|a| a == "--quality") {
        let (identical, prefix) = candle_quality(&path)?;
        println!(
            "candle-transformers quantized_llama: greedy48 {identical} of 34 identical, mean agreeing prefix {prefix:.2}"
        );
        for (dtype, fused) in [
            (candle_core::DType::F32, false),
            (candle_core::DType::F32, true),
            (candle_core::DType::F16, false),
        ] {
            model.set_kv_dtype(dtype)?;
            model.set_fused_attention(fused);
            let (identical, prefix) = ours_quality(&model)?;
            println!(
                "ours, kv {dtype:?}, fused attention {fused}: greedy48 {identical} of 34 identical, mean agreeing prefix {prefix:.2}"
            );
        }
        return Ok(());
    }
    let prompt = prompt_ids(&path, PROMPT)?;
    let mut ours_runs = Vec::new();
    let mut candle_runs = Vec::new();
    // Interleave the runs so both see the same machine state.
    for _ in 0..RUNS {
        ours_runs.push(ours(&model, &prompt)?);
        candle_runs.push(candle(&path, &prompt)?);
    }
    let o = Speed::median_of(&ours_runs);
    let c = Speed::median_of(&candle_runs);
    let threads = candle_core::utils::get_num_threads();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": "smollm2-135m-instruct",
                "path": path.display().to_string(),
                "threads": threads,
                "ours_prefill_tok_s": o.prefill_tok_s,
                "ours_decode_tok_s": o.decode_tok_s,
                "candle_prefill_tok_s": c.prefill_tok_s,
                "candle_decode_tok_s": c.decode_tok_s,
            })
        );
    } else {
        println!("SmolLM2-135M Q4_1, {PROMPT}-token prompt, {NEW} new tokens, {threads} threads, median of {RUNS}");
        println!("{:<28} {:>12} {:>12}", "", "prefill t/s", "decode t/s");
        println!(
            "{:<28} {:>12.1} {:>12.1}",
            "fluent-ai-candle", o.prefill_tok_s, o.decode_tok_s
        );
        println!(
            "{:<28} {:>12.1} {:>12.1}",
            "candle-transformers 0.11.1", c.prefill_tok_s, c.decode_tok_s
        );
    }
    Ok(())
}
