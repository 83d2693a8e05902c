//! Engine benchmark: aggregate decode throughput of 1, 4 and 8 concurrent streams through the
//! continuous-batching scheduler, and time to first token with and without a prefix-cache hit.
//!
//! Model: SmolLM2-135M-Instruct (Q4_1) from the model cache, on the CPU. Each stream generates
//! 128 new tokens (end-of-generation tokens ignored so every stream has the same length) with
//! seeded sampling at temperature 0.7 from a short chat prompt. Aggregate tokens/s counts the
//! tokens every stream receives after the last stream's first token (all prefills are done by
//! then: the scheduler admits queued requests before it steps), over the time until the last
//! token arrives. Each configuration runs 2 times; the best is reported.
//!
//! TTFT: a 512-token prompt on a fresh generator (`ttft_cold_ms`), then a request whose first
//! 512 tokens are the same, followed by 16 others (`ttft_prefix_ms`): its prefill copies the
//! cached prefix and runs only the 16 new tokens.
//!
//! Long prompt: a 4,000-token prompt is being prefilled (in chunks of the default
//! `prefill_chunk`, 512 tokens) when a short chat request arrives; `long_prompt_short_ttft_ms`
//! is the short request's time to first token (it overtakes the long prompt between two of
//! its chunks), `long_prompt_ms` the long prompt's own time to first token, and
//! `long_prompt_unchunked_short_ttft_ms` the same short request's TTFT with the prompt in one
//! chunk (the old behaviour: it waits for the whole prefill). `disconnect_free_ms`: a client
//! leaves 1 s into the long prefill; the time from then until another short request has its
//! first token (the model is free again after at most one chunk).
//!
//! Constrained TTFT: a chat request whose output must match a small JSON Schema, one token,
//! on a generator that has already served one constrained request (`ttft_constrained_ms`,
//! the best of 5; the generator's first constrained request is `ttft_constrained_first_ms`).
//! It times what a constrained request adds before its first token: compiling the schema for
//! the model's vocabulary, then the prefill.
//!
//! `cargo xtask bench engine --json` prints one JSON object as its last line:
//! `{"single_tok_s", "concurrent4_tok_s", "concurrent8_tok_s", "ttft_cold_ms", "ttft_prefix_ms",
//! "ttft_constrained_ms", "long_prompt_short_ttft_ms", ...}`.
//! `--streams N` measures only N concurrent streams (one line; for profiling);
//! `--constrained` only the constrained TTFT (one line); `--long` only the long-prompt measures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fluent_ai_candle_engine::{
    CandleCompletionRequest, CandleGenerator, ConstraintSpec, GenerationConfig, Prompt,
};
use fluent_ai_candle_models::{cache, LoadedModel};

const NEW_TOKENS: usize = 128;
const REPEATS: usize = 2;

const PROMPTS: [&str; 8] = [
    "Write a story about a dragon.",
    "Explain how a car engine works.",
    "Describe the city of Paris.",
    "Write a poem about autumn.",
    "Explain photosynthesis.",
    "Tell me about the history of Rome.",
    "Describe a day at the beach.",
    "Write a letter to a friend.",
];

/// Aggregate decode tokens/s of `n` simultaneous streams.
fn concurrent(model: &Arc<LoadedModel>, n: usize) -> Result<f64> {
    let g = CandleGenerator::from_loaded(
        "smollm2",
        model.clone(),
        GenerationConfig::default()
            .max_concurrent_requests(n)
            .prefix_cache(None),
    )?;
    let mut streams = Vec::new();
    for (i, p) in PROMPTS.iter().take(n).enumerate() {
        let req = CandleCompletionRequest {
            prompt: model.chat_prompt(p)?,
            max_tokens: Some(NEW_TOKENS),
            temperature: Some(0.7),
            seed: Some(i as u64 + 1),
            ignore_eos: true,
            ..Default::default()
        };
        streams.push(g.generate_stream(&req)?);
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut times = Vec::with_capacity(NEW_TOKENS);
                while let Some(c) = s.blocking_next() {
                    let now = Instant::now();
                    for _ in &c.choices[0].delta.token_ids {
                        times.push(now);
                    }
                }
                times
            })
        })
        .collect();
    let times: Vec<Vec<Instant>> = readers
        .into_iter()
        .map(|r| r.join().map_err(|_| anyhow::anyhow!("reader panicked")))
        .collect::<Result<_>>()?;
    let t0 = times
        .iter()
        .filter_map(|t| t.first())
        .max()
        .context("no tokens")?;
    let t1 = times
        .iter()
        .filter_map(|t| t.last())
        .max()
        .context("no tokens")?;
    let tokens: usize = times
        .iter()
        .map(|t| t.iter().filter(|&x| x > t0).count())
        .sum();
    let secs = t1.duration_since(*t0).as_secs_f64();
    Ok(tokens as f64 / secs)
}

fn first_token(g: &CandleGenerator, ids: Vec<u32>) -> Result<Duration> {
    let t = Instant::now();
    let mut s = g.generate_stream(&CandleCompletionRequest {
        input: Some(Prompt::Tokens(ids)),
        max_tokens: Some(1),
        temperature: Some(0.0),
        ..Default::default()
    })?;
    s.blocking_next().context("no first chunk")?;
    let elapsed = t.elapsed();
    while s.blocking_next().is_some() {}
    Ok(elapsed)
}

/// The first request of a constrained generator, then the best of 5 later ones (ms).
fn ttft_constrained(model: &Arc<LoadedModel>) -> Result<(f64, f64)> {
    let g = CandleGenerator::from_loaded("smollm2", model.clone(), GenerationConfig::default())?;
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "skills": {"type": "array", "items": {"type": "string"}}
        },
        "required": ["name", "age"]
    });
    let request = CandleCompletionRequest {
        prompt: model.chat_prompt("Describe a person as a JSON object.")?,
        max_tokens: Some(1),
        temperature: Some(0.0),
        constraints: Some(ConstraintSpec::JsonSchema(schema)),
        ..Default::default()
    };
    let once = || -> Result<f64> {
        let t = Instant::now();
        let mut s = g.generate_stream(&request)?;
        s.blocking_next().context("no first chunk")?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        while s.blocking_next().is_some() {}
        Ok(ms)
    };
    let first = once()?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        best = best.min(once()?);
    }
    Ok((first, best))
}

/// TTFT of a cold 512-token prompt and of a second one sharing its first 512 tokens.
fn ttft(model: &Arc<LoadedModel>, round: u64) -> Result<(f64, f64)> {
    let g = CandleGenerator::from_loaded("smollm2", model.clone(), GenerationConfig::default())?;
    let text = format!(
        "Round {round}. The quick brown fox jumps over the lazy dog near the river bank while the sun sets behind the hills. "
    )
    .repeat(40);
    let all = g.tokenize(&text)?;
    anyhow::ensure!(all.len() >= 528, "prompt too short: {}", all.len());
    let cold = first_token(&g, all[..512].to_vec())?;
    let warm = first_token(&g, all[..528].to_vec())?;
    anyhow::ensure!(g.metrics().prefix_cache_hits == 1, "no prefix-cache hit");
    Ok((cold.as_secs_f64() * 1e3, warm.as_secs_f64() * 1e3))
}

/// The 4,000 tokens of the long prompt.
fn long_prompt(g: &CandleGenerator) -> Result<Vec<u32>> {
    let text = "The quick brown fox jumps over the lazy dog near the river bank while the sun \
                sets behind the hills, and the birds sing their evening songs. "
        .repeat(200);
    let ids = g.tokenize(&text)?;
    anyhow::ensure!(ids.len() >= 4000, "prompt too short: {}", ids.len());
    Ok(ids[..4000].to_vec())
}

fn short_request(model: &LoadedModel) -> Result<CandleCompletionRequest> {
    Ok(CandleCompletionRequest {
        prompt: model.chat_prompt("What is the capital of France?")?,
        max_tokens: Some(1),
        temperature: Some(0.0),
        ..Default::default()
    })
}

/// Waits until the generator's scheduler holds `n` sequences.
fn wait_active(g: &CandleGenerator, n: u64) {
    while g.metrics().active_sequences < n {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// With the 4,000-token prompt being prefilled in chunks of `chunk`: (the short request's
/// TTFT, the long prompt's TTFT), in ms.
fn long_prompt_ttft(model: &Arc<LoadedModel>, chunk: usize) -> Result<(f64, f64)> {
    let g = CandleGenerator::from_loaded(
        "smollm2",
        model.clone(),
        GenerationConfig::default()
            .prefix_cache(None)
            .prefill_chunk(chunk),
    )?;
    let ids = long_prompt(&g)?;
    let t_long = Instant::now();
    let mut long = g.generate_stream(&CandleCompletionRequest {
        input: Some(Prompt::Tokens(ids)),
        max_tokens: Some(1),
        temperature: Some(0.0),
        ..Default::default()
    })?;
    let long_reader = std::thread::spawn(move || {
        let first = long.blocking_next().map(|_| t_long.elapsed());
        while long.blocking_next().is_some() {}
        first
    });
    wait_active(&g, 1);
    // Into the prefill: the short request arrives mid-chunk.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let mut short = g.generate_stream(&short_request(model)?)?;
    short.blocking_next().context("no first chunk")?;
    let short_ttft = t.elapsed();
    while short.blocking_next().is_some() {}
    let long_ttft = long_reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?
        .context("no first chunk of the long prompt")?;
    Ok((
        short_ttft.as_secs_f64() * 1e3,
        long_ttft.as_secs_f64() * 1e3,
    ))
}

/// A client leaves 1 s into the 4,000-token prefill: ms from then until another short
/// request has its first token.
fn disconnect_free(model: &Arc<LoadedModel>) -> Result<f64> {
    let g = CandleGenerator::from_loaded(
        "smollm2",
        model.clone(),
        GenerationConfig::default().prefix_cache(None),
    )?;
    let ids = long_prompt(&g)?;
    let long = g.generate_stream(&CandleCompletionRequest {
        input: Some(Prompt::Tokens(ids)),
        max_tokens: Some(16),
        temperature: Some(0.0),
        ..Default::default()
    })?;
    wait_active(&g, 1);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    drop(long);
    let mut short = g.generate_stream(&short_request(model)?)?;
    short.blocking_next().context("no first chunk")?;
    let freed = t.elapsed();
    while short.blocking_next().is_some() {}
    anyhow::ensure!(
        g.metrics().cancelled == 1,
        "the long request was not cancelled"
    );
    Ok(freed.as_secs_f64() * 1e3)
}

/// The long-prompt measures, best of [`REPEATS`]: (short TTFT chunked, long TTFT chunked,
/// short TTFT unchunked, disconnect-to-free).
fn long_prompt_measures(model: &Arc<LoadedModel>) -> Result<[f64; 4]> {
    let mut best = [f64::INFINITY; 4];
    for _ in 0..REPEATS {
        let (short, long) =
            long_prompt_ttft(model, fluent_ai_candle_engine::DEFAULT_PREFILL_CHUNK)?;
        let (unchunked, _) = long_prompt_ttft(model, usize::MAX)?;
        let freed = disconnect_free(model)?;
        for (b, v) in best.iter_mut().zip([short, long, unchunked, freed]) {
            *b = b.min(v);
        }
    }
    Ok(best)
}

fn main() -> Result<()> {
    fluent_ai_candle_models::init_cpu_threads();
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    // `--streams N`: only N concurrent streams, printed as one line (for profiling).
    let only: Option<usize> = args
        .iter()
        .position(|a| a == "--streams")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()
        .context("--streams takes a number")?;
    let path = cache::resolve("smollm2-135m-instruct")
        .context("the model is missing: run `cargo xtask fetch-models` first")?;
    let model = Arc::new(LoadedModel::load(
        &path,
        &candle_core::Device::Cpu,
        &mut |_| {},
    )?);
    if args.iter().any(|a| a == "--constrained") {
        let (first, best) = ttft_constrained(&model)?;
        println!(
            "constrained TTFT: first request {first:.1} ms, later requests {best:.1} ms (best of 5)"
        );
        return Ok(());
    }
    // Warm-up: thread pools, page cache.
    concurrent(&model, 2)?;
    let best = |n: usize| -> Result<f64> {
        let mut best: f64 = 0.0;
        for _ in 0..REPEATS {
            best = best.max(concurrent(&model, n)?);
        }
        Ok(best)
    };
    if let Some(n) = only {
        println!("{n} streams: {:.1} tok/s", best(n)?);
        return Ok(());
    }
    if args.iter().any(|a| a == "--long") {
        let [short, long, unchunked, freed] = long_prompt_measures(&model)?;
        println!(
            "4000-token prompt: short request TTFT {short:.0} ms (unchunked {unchunked:.0} ms), \
             long prompt TTFT {long:.0} ms, disconnect frees the model in {freed:.0} ms"
        );
        return Ok(());
    }
    let single = best(1)?;
    let c4 = best(4)?;
    let c8 = best(8)?;
    let mut cold_ms = f64::INFINITY;
    let mut prefix_ms = f64::INFINITY;
    for round in 0..REPEATS as u64 {
        let (c, p) = ttft(&model, round)?;
        cold_ms = cold_ms.min(c);
        prefix_ms = prefix_ms.min(p);
    }
    let [long_short, long_ms, long_unchunked, freed_ms] = long_prompt_measures(&model)?;
    let (constrained_first_ms, constrained_ms) = ttft_constrained(&model)?;
    let threads = std::env::var("CANDLE_NUM_THREADS")
        .or_else(|_| std::env::var("RAYON_NUM_THREADS"))
        .unwrap_or_else(|_| "default".into());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": "smollm2-135m-instruct",
                "new_tokens": NEW_TOKENS,
                "threads": threads,
                "single_tok_s": round2(single),
                "concurrent4_tok_s": round2(c4),
                "concurrent8_tok_s": round2(c8),
                "speedup4": round2(c4 / single),
                "speedup8": round2(c8 / single),
                "ttft_cold_ms": round2(cold_ms),
                "ttft_prefix_ms": round2(prefix_ms),
                "ttft_speedup": round2(cold_ms / prefix_ms),
                "long_prompt_short_ttft_ms": round2(long_short),
                "long_prompt_unchunked_short_ttft_ms": round2(long_unchunked),
                "long_prompt_ms": round2(long_ms),
                "disconnect_free_ms": round2(freed_ms),
                "ttft_constrained_first_ms": round2(constrained_first_ms),
                "ttft_constrained_ms": round2(constrained_ms),
            })
        );
    } else {
        println!("streams  aggregate tok/s  speedup");
        println!("1        {single:>15.1}  1.00x");
        println!("4        {c4:>15.1}  {:.2}x", c4 / single);
        println!("8        {c8:>15.1}  {:.2}x", c8 / single);
        println!(
            "TTFT 512-token prompt: cold {cold_ms:.1} ms, prefix hit {prefix_ms:.1} ms ({:.1}x)",
            cold_ms / prefix_ms
        );
        println!(
            "4000-token prompt: short request TTFT {long_short:.0} ms (unchunked \
             {long_unchunked:.0} ms), long prompt TTFT {long_ms:.0} ms, disconnect frees the \
             model in {freed_ms:.0} ms"
        );
        println!(
            "TTFT JSON-Schema-constrained chat request: {constrained_ms:.1} ms \
             (first request {constrained_first_ms:.1} ms)"
        );
    }
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
