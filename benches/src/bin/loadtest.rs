//! `cargo xtask loadtest`: 32 concurrent streaming chat clients against a real server on
//! 127.0.0.1 for a bounded time; prints one JSON line of results.
//!
//! ```text
//! cargo run --release -p fluent-ai-candle-benches --bin loadtest -- \
//!     [--seconds 60] [--clients 32] [--max-tokens 32] [--max-concurrent 32] [--model M]
//! ```
//!
//! The server runs in-process on a free loopback port (the same `Server` the CLI's `serve`
//! starts). Each client loops: POST a streaming chat completion, time the first content chunk
//! (TTFT), read to `data: [DONE]`, count the tokens from the usage chunk. A request fails on a
//! non-200 status, a transport error, an error event or a stream without `[DONE]`. Clients
//! start no request after the deadline; those in flight finish.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fluent_ai_candle_server::{Server, ServerConfig};
use futures::StreamExt;

struct Args {
    seconds: u64,
    clients: usize,
    max_tokens: usize,
    max_concurrent: usize,
    model: String,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        seconds: 60,
        clients: 32,
        max_tokens: 32,
        max_concurrent: 32,
        model: fluent_ai_candle_models::cache::DEFAULT_MODEL.to_string(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value()?.parse()?,
            "--clients" => a.clients = value()?.parse()?,
            "--max-tokens" => a.max_tokens = value()?.parse()?,
            "--max-concurrent" => a.max_concurrent = value()?.parse()?,
            "--model" => a.model = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if a.seconds == 0 || a.clients == 0 || a.max_tokens == 0 {
        bail!("--seconds, --clients and --max-tokens must be at least 1");
    }
    Ok(a)
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[derive(Default)]
struct ClientStats {
    requests: u64,
    failed: u64,
    tokens: u64,
    ttft_ms: Vec<f64>,
    errors: Vec<String>,
}

/// One streaming request: Ok((ttft, completion tokens)) or why it failed.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(f64, u64), String> {
    let start = Instant::now();
    let r = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let mut bytes = r.bytes_stream();
    let mut buf = String::new();
    let mut ttft = None;
    let mut tokens = 0;
    while let Some(piece) = bytes.next().await {
        let piece = piece.map_err(|e| e.to_string())?;
        buf.push_str(&String::from_utf8_lossy(&piece));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            if data == "[DONE]" {
                return Ok((ttft.unwrap_or(0.0), tokens));
            }
            let v: serde_json::Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
            if v.get("error").is_some() {
                return Err(format!("error event: {data}"));
            }
            let has_text = v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty());
            if ttft.is_none() && has_text {
                ttft = Some(start.elapsed().as_secs_f64() * 1e3);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n;
            }
        }
    }
    Err("stream ended without [DONE]".into())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    // Before the runtime's threads start: see `init_cpu_threads`.
    fluent_ai_candle_models::init_cpu_threads();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    let config = ServerConfig::default()
        .model(args.model.clone())
        .port(0)
        .max_concurrent(args.max_concurrent)
        .max_queued(args.clients.max(64));
    let server = Server::bind(config)
        .await
        .context("starting the server (run `cargo xtask fetch-models` if the model is missing)")?;
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());
    let stop = server.shutdown_handle();
    let running = tokio::spawn(server.run());
    let url = format!("http://{addr}/v1/chat/completions");

    // Warm-up request (not counted).
    let http = reqwest::Client::new();
    let warm = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "stream": true});
    one_request(&http, &url, &warm)
        .await
        .map_err(|e| anyhow::anyhow!("warm-up failed: {e}"))?;

    let rss_before = rss_mb();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let http = http.clone();
        let url = url.clone();
        let max_tokens = args.max_tokens;
        tasks.push(tokio::spawn(async move {
            let mut stats = ClientStats::default();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let body = serde_json::json!({
                    "messages": [{"role": "user",
                        "content": format!("Client {c}, request {i}: write a short poem about the sea.")}],
                    "max_tokens": max_tokens,
                    "temperature": 0.7,
                    "seed": c as u64 * 1_000_003 + i,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                });
                stats.requests += 1;
                match one_request(&http, &url, &body).await {
                    Ok((ttft, tokens)) => {
                        stats.ttft_ms.push(ttft);
                        stats.tokens += tokens;
                    }
                    Err(e) => {
                        stats.failed += 1;
                        if stats.errors.len() < 3 {
                            stats.errors.push(e);
                        }
                    }
                }
                i += 1;
            }
            stats
        }));
    }
    let mut total = ClientStats::default();
    for t in tasks {
        let s = t.await?;
        total.requests += s.requests;
        total.failed += s.failed;
        total.tokens += s.tokens;
        total.ttft_ms.extend(s.ttft_ms);
        total.errors.extend(s.errors);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = rss_mb();
    stop.shutdown();
    running.await??;

    total.ttft_ms.sort_by(f64::total_cmp);
    for e in total.errors.iter().take(5) {
        eprintln!("failure: {e}");
    }
    let out = serde_json::json!({
        "clients": args.clients,
        "seconds": args.seconds,
        "elapsed_s": (elapsed * 100.0).round() / 100.0,
        "max_tokens": args.max_tokens,
        "requests": total.requests,
        "failed": total.failed,
        "ttft_ms_p50": (percentile(&total.ttft_ms, 50.0) * 10.0).round() / 10.0,
        "ttft_ms_p99": (percentile(&total.ttft_ms, 99.0) * 10.0).round() / 10.0,
        "tokens_per_s": (total.tokens as f64 / elapsed * 10.0).round() / 10.0,
        "rss_mb_before": (rss_before * 10.0).round() / 10.0,
        "rss_mb_after": (rss_after * 10.0).round() / 10.0,
    });
    println!("{out}");
    if total.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
