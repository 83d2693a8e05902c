//! `cargo xtask bench e2e [--json] [--model NAME|FILE] [--runs N]`: prefill and decode speed of
//! our decoders on real model files, the way a user runs them (GGUF → [`Decoder`] → greedy
//! tokens): a 128-token prompt, then 128 new tokens, median of 3 runs (or `--runs N`), on
//! candle's CPU thread pool. `--model` takes a known name, `hf:ORG/REPO:FILE` or any GGUF file
//! (e.g. one `cargo xtask synth-model` wrote); without it, the two default models.
//!
//! With `--json`, one line per model: `{"model", "path", "prefill_tok_s", "decode_tok_s",
//! "threads", "peak_rss_mb" (the peak while decoding), "load_peak_rss_mb", "model_file_mb",
//! "kv_cache_mb", "rss_over_file_and_kv", "load_s"}` (`load_s`: opening the file and loading
//! the decoder, weights repacked).
//! Without `--model`, each model runs in its own child process so that its peak resident set
//! (`VmHWM`) is its own.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, D};
use fluent_ai_candle_benches::{prompt_ids, Speed};
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{cache, decoder, Decoder, GgufFile};

const PROMPT: usize = 128;
const NEW: usize = 128;
const RUNS: usize = 3;

const MODELS: [&str; 2] = ["smollm2-135m-instruct", "gemma3-270m"];

fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits
        .flatten_all()?
        .argmax(D::Minus1)?
        .to_scalar::<u32>()?)
}

/// One run: prefill the prompt, then decode `NEW` greedy tokens. Returns the speeds and the
/// bytes the KV cache allocated.
fn run(model: &dyn Decoder, prompt: &[u32]) -> Result<(Speed, usize)> {
    let mut cache = model.new_cache(&KvCacheConfig::default().max_entries(PROMPT + NEW + 1))?;
    let t = Instant::now();
    let mut next = argmax(&model.forward(prompt, &mut cache, false)?)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..NEW {
        next = argmax(&model.forward(&[next], &mut cache, false)?)?;
    }
    let decode = t.elapsed().as_secs_f64();
    Ok((
        Speed::new(prompt.len(), prefill, NEW, decode),
        cache.allocated_bytes(),
    ))
}

/// Peak resident set of this process in bytes (`VmHWM`), when the OS reports it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak resident set to the current one (Linux: `5` to `/proc/self/clear_refs`),
/// so the next [`peak_rss`] is the peak since now. False where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn bench_one(name: &str, json: bool, runs_wanted: usize) -> Result<()> {
    let path = cache::resolve(name).context("run `cargo xtask fetch-models`")?;
    let prompt = prompt_ids(&path, PROMPT)?;
    let loading = Instant::now();
    let mut gguf = GgufFile::open(&path)?;
    let model = decoder::load(&mut gguf, &Device::Cpu, &mut |_| {})?;
    drop(gguf);
    let load_s = loading.elapsed().as_secs_f64();
    let load_peak = peak_rss();
    // The peak while decoding is what the KV cache and the weights cost; loading has a
    // transient peak of its own (a tensor is read before it is repacked).
    let reset = reset_peak_rss();
    let mut runs = Vec::new();
    let mut kv_bytes = 0;
    for _ in 0..runs_wanted {
        let (speed, kv) = run(model.as_ref(), &prompt)?;
        runs.push(speed);
        kv_bytes = kv;
    }
    let s = Speed::median_of(&runs);
    let mb = |b: f64| b / 1e6;
    let file = std::fs::metadata(&path)?.len() as f64;
    let rss = if reset { peak_rss() } else { None }.map(|b| b as f64);
    let load_peak = load_peak.map(|b| b as f64);
    let threads = candle_core::utils::get_num_threads();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": name,
                "path": path.display().to_string(),
                "prefill_tok_s": s.prefill_tok_s,
                "decode_tok_s": s.decode_tok_s,
                "threads": threads,
                "peak_rss_mb": rss.map(mb),
                "load_peak_rss_mb": load_peak.map(mb),
                "model_file_mb": mb(file),
                "kv_cache_mb": mb(kv_bytes as f64),
                "rss_over_file_and_kv": rss.map(|r| r / (file + kv_bytes as f64)),
                "load_s": load_s,
            })
        );
    } else {
        println!(
            "{name}: prefill {:.1} tok/s, decode {:.1} tok/s ({PROMPT}-token prompt, {NEW} new \
             tokens, {threads} threads, median of {runs_wanted}); peak RSS while decoding {} MB (while \
             loading {} MB) for a {:.1} MB file + {:.1} MB KV cache",
            s.prefill_tok_s,
            s.decode_tok_s,
            rss.map_or("?".into(), |r| format!("{:.1}", mb(r))),
            load_peak.map_or("?".into(), |r| format!("{:.1}", mb(r))),
            mb(file),
            mb(kv_bytes as f64),
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    fluent_ai_candle_models::init_cpu_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let runs = match args.iter().position(|a| a == "--runs") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .context("--runs takes a positive whole number")?,
        None => RUNS,
    };
    if let Some(i) = args.iter().position(|a| a == "--model") {
        let name = args.get(i + 1).context("--model needs a model name")?;
        return bench_one(name, json, runs);
    }
    let me = std::env::current_exe()?;
    for name in MODELS {
        let mut cmd = std::process::Command::new(&me);
        cmd.args(["--model", name, "--runs", &runs.to_string()]);
        if json {
            cmd.arg("--json");
        }
        let status = cmd.status()?;
        anyhow::ensure!(
            status.success(),
            "bench-e2e --model {name} failed: {status}"
        );
    }
    Ok(())
}
