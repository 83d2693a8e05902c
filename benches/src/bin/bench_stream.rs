//! `cargo xtask bench stream [--json] [--rounds N] [--tokens N]`: the streaming overhead per
//! token of the server's SSE (the seed claims < 1 ms), measured end to end on the real model.
//!
//! One process runs the server (`Server::bind`, SmolLM2-135M-Instruct from the model cache, on
//! the CPU, HTTP/1.1 and h2c on a loopback port) and an in-process generator of the same model
//! (`CandleClientBuilder`, the engine the server wraps). The same greedy chat (`temperature`
//! 0, `ignore_eos`, 128 new tokens by default) is timed from sending the request to the end of
//! its response four ways, alternated round by round (9 rounds by default, after one warm-up
//! of each that also puts the prompt in both prefix caches):
//!
//! - `in_process`: `CandleGenerator::submit` and reading the chunk stream to its end;
//! - `http1_collected`: `stream: false` over HTTP/1.1 (one JSON body: the HTTP costs paid once);
//! - `http1_sse`: `stream: true` over HTTP/1.1, the SSE events read as they arrive;
//! - `h2c_sse`: the same over HTTP/2 with prior knowledge.
//!
//! Each way's median is reported, and the overhead per token: the median over rounds of
//! (that round's SSE run − its in-process run) / tokens, paired so that a change in the
//! machine's load between rounds cancels; and the same for SSE − collected, the part that is
//! per event. The process's CPU time (all threads: server, engine, client) is paired the same
//! way: the CPU the HTTP side costs per token, which the machine's other load hardly moves. Everything runs on the
//! same two cores as the model, so the overhead includes the CPU the HTTP side takes from
//! decoding, which is what a user of the server pays.
//!
//! With `--json`, one line: `{"tokens", "rounds", "in_process_ms", "http1_collected_ms",
//! "http1_sse_ms", "h2c_sse_ms", "sse_overhead_ms_per_token" (HTTP/1.1 SSE vs in-process),
//! "h2c_overhead_ms_per_token", "sse_vs_collected_ms_per_token", "sse_cpu_ms_per_token",
//! "h2c_cpu_ms_per_token", "threads"}`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fluent_ai_candle_benches::median;
use fluent_ai_candle_engine::{
    CandleClientBuilder, CandleCompletionRequest, CandleGenerator, DeviceType, Prompt,
};
use fluent_ai_candle_server::{Server, ServerConfig};
use futures::StreamExt;
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";
const PROMPT: &str = "Write a long story about a lighthouse keeper.";
const ROUNDS: usize = 9;
const TOKENS: usize = 128;

/// The value of `--name N` (a positive whole number), or `default`.
fn arg(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .with_context(|| format!("{name} takes a positive whole number")),
    }
}

/// CPU time this process's threads have used so far, in ms (Linux: the sum of
/// `/proc/self/task/*/schedstat`'s first field, nanoseconds on a CPU); `None` elsewhere.
fn cpu_ms() -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e6)
}

/// Seconds from sending the request to the end of its response, and the completion tokens the
/// response reports.
async fn over_http(
    client: &reqwest::Client,
    addr: SocketAddr,
    body: &Value,
) -> Result<(f64, usize)> {
    let start = Instant::now();
    let response = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(body)
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "the server answered {}",
        response.status()
    );
    if body["stream"] != json!(true) {
        let v: Value = response.json().await?;
        let n = v["usage"]["completion_tokens"].as_u64().context("usage")?;
        return Ok((start.elapsed().as_secs_f64(), n as usize));
    }
    // Read events as they arrive (as a client rendering tokens would), to `[DONE]`.
    let mut body = response.bytes_stream();
    let mut buf = String::new();
    let mut tokens = 0;
    while let Some(piece) = body.next().await {
        buf.push_str(std::str::from_utf8(&piece?)?);
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.strip_prefix("data: ") else {
                continue;
            };
            let data = data.trim_end();
            if data == "[DONE]" {
                return Ok((start.elapsed().as_secs_f64(), tokens));
            }
            let v: Value = serde_json::from_str(data)?;
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as usize;
            }
        }
    }
    bail!("the stream ended without [DONE]")
}

/// Seconds from submitting the request to the end of its chunk stream, and its tokens.
async fn in_process(
    generator: &CandleGenerator,
    request: &CandleCompletionRequest,
) -> Result<(f64, usize)> {
    let start = Instant::now();
    let mut stream = generator.submit(request.clone()).await?;
    let mut tokens = 0;
    while let Some(chunk) = stream.next().await {
        if let Some(u) = chunk.usage {
            tokens = u.completion_tokens;
        }
    }
    Ok((start.elapsed().as_secs_f64(), tokens))
}

async fn bench(json_out: bool, rounds: usize, tokens: usize) -> Result<()> {
    fluent_ai_candle_engine::cache::resolve(MODEL).context("run `cargo xtask fetch-models`")?;
    let server = Server::bind(ServerConfig::default().model(MODEL).port(0)).await?;
    let addr = server.local_addr();
    let handle = server.shutdown_handle();
    let serving = tokio::spawn(server.run());
    let generator = CandleClientBuilder::new()
        .model_path(MODEL)
        .device_type(DeviceType::Cpu)
        .build()?;

    let request = CandleCompletionRequest {
        max_tokens: Some(tokens),
        temperature: Some(0.0),
        ignore_eos: true,
        ..CandleCompletionRequest::new(Prompt::user(PROMPT))
    };
    let streamed = json!({
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens, "temperature": 0, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut collected = streamed.clone();
    collected["stream"] = json!(false);
    if let Some(o) = collected.as_object_mut() {
        o.remove("stream_options");
    }
    let h1 = reqwest::Client::builder().http1_only().build()?;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build()?;

    // Warm-up: the server loads its model (503 until then), both prefix caches take the prompt.
    let deadline = Instant::now() + Duration::from_secs(120);
    while over_http(&h1, addr, &streamed).await.is_err() {
        ensure!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    over_http(&h2, addr, &streamed).await?;
    over_http(&h1, addr, &collected).await?;
    in_process(&generator, &request).await?;

    let mut runs: [Vec<f64>; 4] = Default::default();
    let mut cpu: [Vec<f64>; 4] = Default::default();
    for round in 0..rounds {
        let mut results = [(0.0, 0); 4];
        let mut cpu_used = [f64::NAN; 4];
        // Alternate the order so no way always runs right after another.
        for k in 0..4 {
            let way = (k + round) % 4;
            let cpu_before = cpu_ms();
            results[way] = match way {
                0 => in_process(&generator, &request).await?,
                1 => over_http(&h1, addr, &collected).await?,
                2 => over_http(&h1, addr, &streamed).await?,
                _ => over_http(&h2, addr, &streamed).await?,
            };
            if let (Some(a), Some(b)) = (cpu_before, cpu_ms()) {
                cpu_used[way] = b - a;
            }
        }
        for (run, (secs, n)) in runs.iter_mut().zip(results) {
            ensure!(n == tokens, "a run generated {n} tokens, not {tokens}");
            run.push(secs * 1e3);
        }
        for (c, used) in cpu.iter_mut().zip(cpu_used) {
            c.push(used);
        }
    }
    handle.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;

    // Paired: each round's difference to the in-process run of the same round (adjacent in
    // time, so a change in the machine's load cancels), per token; the median over rounds.
    let paired_in = |runs: &[Vec<f64>; 4], way: usize, base: usize| {
        let mut d: Vec<f64> = (0..rounds)
            .map(|r| (runs[way][r] - runs[base][r]) / tokens as f64)
            .collect();
        median(&mut d)
    };
    let paired = |way: usize, base: usize| paired_in(&runs, way, base);
    // The same for the process's CPU time (server, engine and client together): what the HTTP
    // side costs, whatever else the machine runs. NaN where the OS does not report it.
    let cpu_paired = |way: usize| paired_in(&cpu, way, 0);
    let (cpu_sse1, cpu_sse2) = (cpu_paired(2), cpu_paired(3));
    let (sse1_paired, sse2_paired, sse_vs_whole_paired) =
        (paired(2, 0), paired(3, 0), paired(2, 1));
    let [engine, whole, sse1, sse2] = runs.map(|mut r| median(&mut r));
    let threads = candle_core::utils::get_num_threads();
    if json_out {
        println!(
            "{}",
            json!({
                "tokens": tokens,
                "rounds": rounds,
                "in_process_ms": engine,
                "http1_collected_ms": whole,
                "http1_sse_ms": sse1,
                "h2c_sse_ms": sse2,
                "sse_overhead_ms_per_token": sse1_paired,
                "h2c_overhead_ms_per_token": sse2_paired,
                "sse_vs_collected_ms_per_token": sse_vs_whole_paired,
                "sse_cpu_ms_per_token": cpu_sse1,
                "h2c_cpu_ms_per_token": cpu_sse2,
                "threads": threads,
            })
        );
    } else {
        println!(
            "{tokens} greedy tokens, median of {rounds} rounds, {threads} threads: in-process \
             {engine:.1} ms, HTTP/1.1 collected {whole:.1} ms, HTTP/1.1 SSE {sse1:.1} ms, h2c SSE \
             {sse2:.1} ms"
        );
        println!(
            "overhead per token (median of the rounds' paired differences): HTTP/1.1 SSE vs \
             in-process {sse1_paired:+.3} ms, h2c SSE vs in-process {sse2_paired:+.3} ms, SSE vs \
             collected (HTTP/1.1) {sse_vs_whole_paired:+.3} ms"
        );
        println!(
            "CPU time per token over in-process (server, engine and client): HTTP/1.1 SSE \
             {cpu_sse1:+.3} ms, h2c SSE {cpu_sse2:+.3} ms"
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    fluent_ai_candle_models::init_cpu_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    const USAGE: &str = "usage: bench-stream [--json] [--rounds N] [--tokens N]";
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    // An unknown flag is an error, not a benchmark run with the defaults.
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--json" => i += 1,
            "--rounds" | "--tokens" => i += 2,
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    let json_out = args.iter().any(|a| a == "--json");
    let rounds = arg(&args, "--rounds", ROUNDS)?;
    let tokens = arg(&args, "--tokens", TOKENS)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(json_out, rounds, tokens))
}
