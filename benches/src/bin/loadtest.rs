//! `cargo xtask loadtest`: concurrent streaming chat clients against a real server for a
//! bounded time (a soak when long); prints one JSON line of results.
//!
//! ```text
//! cargo run --release -p fluent-ai-candle-benches --bin loadtest -- \
//!     [--duration 60 | --seconds 60] [--clients 32] [--max-tokens 32] [--max-concurrent 32]
//!     [--warmup S] [--model M] [--url http://HOST:PORT --server-pid PID --api-key KEY]
//! ```
//!
//! By default the server runs in-process on a free loopback port (the same `Server` the CLI's
//! `serve` starts); with `--url` an external one is driven instead (its RSS is read from
//! `/proc/PID/status` when `--server-pid` is given). Each client loops: POST a streaming chat
//! completion, time the first content chunk (TTFT), read to `data: [DONE]`, count the tokens
//! from the usage chunk. A request fails on a non-200 status, a transport error, an error event
//! or a stream without `[DONE]`. Clients start no request after the deadline; those in flight
//! finish.
//!
//! The JSON line has the requests and failures, p50/p99 of the whole request's latency and of
//! the TTFT, the tokens per second, and the server's RSS at start (before any request), after
//! the warm-up (`--warmup` seconds into the run, default a tenth of it, at most 60 s), at the
//! end, and its maximum (sampled every second): a soak passes when the end is within ±10% of
//! the after-warm-up figure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fluent_ai_candle_server::{Server, ServerConfig};
use futures::StreamExt;

struct Args {
    seconds: u64,
    warmup: Option<u64>,
    clients: usize,
    max_tokens: usize,
    max_concurrent: usize,
    model: String,
    url: Option<String>,
    server_pid: Option<u32>,
    api_key: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        seconds: 60,
        warmup: None,
        clients: 32,
        max_tokens: 32,
        max_concurrent: 32,
        model: fluent_ai_candle_models::cache::DEFAULT_MODEL.to_string(),
        url: None,
        server_pid: None,
        api_key: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" | "--duration" => a.seconds = value()?.parse()?,
            "--warmup" => a.warmup = Some(value()?.parse()?),
            "--clients" => a.clients = value()?.parse()?,
            "--max-tokens" => a.max_tokens = value()?.parse()?,
            "--max-concurrent" => a.max_concurrent = value()?.parse()?,
            "--model" => a.model = value()?,
            "--url" => a.url = Some(value()?.trim_end_matches('/').to_string()),
            "--server-pid" => a.server_pid = Some(value()?.parse()?),
            "--api-key" => a.api_key = Some(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if a.seconds == 0 || a.clients == 0 || a.max_tokens == 0 {
        bail!("--duration, --clients and --max-tokens must be at least 1");
    }
    if a.warmup.is_some_and(|w| w >= a.seconds) {
        bail!("--warmup must be shorter than --duration");
    }
    Ok(a)
}

/// The resident set size of a process in MiB (`/proc/PID/status`, `VmRSS`); 0 when unknown.
fn rss_mb(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    std::fs::read_to_string(path)
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
    latency_ms: Vec<f64>,
    errors: Vec<String>,
}

/// One streaming request: Ok((ttft, completion tokens)) or why it failed.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &serde_json::Value,
) -> Result<(f64, u64), String> {
    let start = Instant::now();
    let mut r = http.post(url).json(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.map_err(|e| e.to_string())?;
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
    // In-process server unless --url names one.
    let (base, running, pid) = match &args.url {
        Some(url) => (url.clone(), None, args.server_pid),
        None => {
            let config = ServerConfig::default()
                .model(args.model.clone())
                .port(0)
                .max_concurrent(args.max_concurrent)
                .max_queued(args.clients.max(64))
                .max_connections(args.clients.max(64) * 2);
            let server = Server::bind(config).await.context(
                "starting the server (run `cargo xtask fetch-models` if the model is missing)",
            )?;
            let addr = server.local_addr();
            assert!(addr.ip().is_loopback());
            let stop = server.shutdown_handle();
            let task = tokio::spawn(server.run());
            (format!("http://{addr}"), Some((stop, task)), None)
        }
    };
    let url = format!("{base}/v1/chat/completions");
    let key = args.api_key.clone();
    let rss_start = rss_mb(pid);

    // Warm-up request (not counted).
    let http = reqwest::Client::new();
    let warm = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "stream": true});
    one_request(&http, &url, key.as_deref(), &warm)
        .await
        .map_err(|e| anyhow::anyhow!("warm-up failed: {e}"))?;

    let warmup = args
        .warmup
        .unwrap_or_else(|| (args.seconds / 10).clamp(1, 60).min(args.seconds - 1));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    // RSS: after the warm-up, and the maximum, sampled each second while the clients run.
    let rss_warm = Arc::new(AtomicU64::new(0));
    let rss_max = Arc::new(AtomicU64::new(rss_start.to_bits()));
    let sampler = {
        let (rss_warm, rss_max) = (rss_warm.clone(), rss_max.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = rss_mb(pid);
                if now > f64::from_bits(rss_max.load(Ordering::Relaxed)) {
                    rss_max.store(now.to_bits(), Ordering::Relaxed);
                }
                if rss_warm.load(Ordering::Relaxed) == 0
                    && started.elapsed() >= Duration::from_secs(warmup)
                {
                    rss_warm.store(now.to_bits(), Ordering::Relaxed);
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let http = http.clone();
        let url = url.clone();
        let key = key.clone();
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
                let t = Instant::now();
                match one_request(&http, &url, key.as_deref(), &body).await {
                    Ok((ttft, tokens)) => {
                        stats.ttft_ms.push(ttft);
                        stats.latency_ms.push(t.elapsed().as_secs_f64() * 1e3);
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
        total.latency_ms.extend(s.latency_ms);
        total.errors.extend(s.errors);
    }
    let elapsed = started.elapsed().as_secs_f64();
    sampler.abort();
    let rss_end = rss_mb(pid);
    let rss_warm = match rss_warm.load(Ordering::Relaxed) {
        0 => rss_end,
        bits => f64::from_bits(bits),
    };
    let rss_max = f64::from_bits(rss_max.load(Ordering::Relaxed)).max(rss_end);
    if let Some((stop, task)) = running {
        stop.shutdown();
        task.await??;
    }

    total.ttft_ms.sort_by(f64::total_cmp);
    total.latency_ms.sort_by(f64::total_cmp);
    for e in total.errors.iter().take(5) {
        eprintln!("failure: {e}");
    }
    let r1 = |v: f64| (v * 10.0).round() / 10.0;
    let out = serde_json::json!({
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup_s": warmup,
        "elapsed_s": (elapsed * 100.0).round() / 100.0,
        "max_tokens": args.max_tokens,
        "requests": total.requests,
        "failed": total.failed,
        "latency_ms_p50": r1(percentile(&total.latency_ms, 50.0)),
        "latency_ms_p99": r1(percentile(&total.latency_ms, 99.0)),
        "ttft_ms_p50": r1(percentile(&total.ttft_ms, 50.0)),
        "ttft_ms_p99": r1(percentile(&total.ttft_ms, 99.0)),
        "tokens_per_s": r1(total.tokens as f64 / elapsed),
        "rss_mb_start": r1(rss_start),
        "rss_mb_after_warmup": r1(rss_warm),
        "rss_mb_end": r1(rss_end),
        "rss_mb_max": r1(rss_max),
        "rss_end_vs_warmup_pct": r1(if rss_warm > 0.0 { (rss_end / rss_warm - 1.0) * 100.0 } else { 0.0 }),
    });
    println!("{out}");
    if total.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
