//! `cargo xtask loadtest`: concurrent streaming chat clients against a real server for a
//! bounded time (a soak when long); prints one JSON line of results.
//!
//! ```text
//! cargo run --release -p fluent-ai-candle-benches --bin loadtest -- \
//!     [--duration 60 | --seconds 60] [--clients 32] [--max-tokens 32] [--max-concurrent 32]
//!     [--warmup S] [--model M] [--url http://127.0.0.1:PORT [--server-pid PID]] [--api-key KEY]
//!     [--workload chat|shared-prefix] [--groups 24] [--tag T]
//! ```
//!
//! Without `--url` the server runs in-process on a free loopback port (the same `Server` the
//! CLI's `serve` starts); with it the clients drive that server (a loopback address only: a
//! replica or a load balancer in front of several, as `cargo xtask cluster-test` does; its RSS
//! is read from `/proc/PID/status` when `--server-pid` is given). Each client loops: POST a
//! streaming request, time the first content chunk (TTFT), read to `data: [DONE]`, count the
//! tokens from the usage chunk. A request fails on a non-200 status, a transport error, an
//! error event or a stream without `[DONE]`. Clients start no request after the deadline; those
//! in flight finish.
//!
//! Workloads: `chat` (the default) sends a distinct short chat message per request;
//! `shared-prefix` sends text completions whose prompts start with one of `--groups` long
//! shared prefixes (a group per request, drawn pseudo-randomly; `--tag` makes the texts of one
//! run differ from another's) and end with a distinct question, with the group as the
//! `X-Routing-Key` header, so a balancer hashing on that header sends a group to one replica.
//! A response's `X-Upstream` header (the replica a balancer chose) is kept: failures are
//! counted per upstream, and apart for streams cut after they had started.
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
    workload: Workload,
    groups: u64,
    tag: String,
    server_pid: Option<u32>,
    api_key: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Chat,
    SharedPrefix,
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
        workload: Workload::Chat,
        groups: 24,
        tag: "run".to_string(),
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
            "--workload" => {
                a.workload = match value()?.as_str() {
                    "chat" => Workload::Chat,
                    "shared-prefix" => Workload::SharedPrefix,
                    w => bail!("unknown workload {w} (chat, shared-prefix)"),
                }
            }
            "--groups" => a.groups = value()?.parse()?,
            "--tag" => a.tag = value()?,
            "--server-pid" => a.server_pid = Some(value()?.parse()?),
            "--api-key" => a.api_key = Some(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if a.seconds == 0 || a.clients == 0 || a.max_tokens == 0 || a.groups == 0 {
        bail!("--duration, --clients, --max-tokens and --groups must be at least 1");
    }
    if a.warmup.is_some_and(|w| w >= a.seconds) {
        bail!("--warmup must be shorter than --duration");
    }
    if let Some(url) = &a.url {
        if !is_loopback_url(url) {
            bail!("--url must be a loopback address (127.0.0.0/8, localhost or [::1]): {url}");
        }
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

/// True for `http://127.x.x.x[:port]…`, `http://localhost…` and `http://[::1]…`.
fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Default)]
struct ClientStats {
    requests: u64,
    failed: u64,
    tokens: u64,
    ttft_ms: Vec<f64>,
    latency_ms: Vec<f64>,
    errors: Vec<String>,
    /// Failures per upstream (`X-Upstream`, or `none`).
    failed_by_upstream: std::collections::BTreeMap<String, u64>,
    /// Of those, streams that had started (status 200 received) and were then cut.
    cut_by_upstream: std::collections::BTreeMap<String, u64>,
}

/// Why a request failed, and which upstream served it when a balancer said so.
struct Failure {
    why: String,
    upstream: Option<String>,
    /// The response had started (status 200) when it failed.
    started: bool,
}

/// The last address of an `X-Upstream` header (nginx lists every upstream it tried).
fn upstream_of(r: &reqwest::Response) -> Option<String> {
    let v = r.headers().get("x-upstream")?.to_str().ok()?;
    v.rsplit(',').next().map(|s| s.trim().to_string())
}

/// One streaming request: Ok((ttft, completion tokens)) or why it failed.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &serde_json::Value,
    routing_key: Option<&str>,
) -> Result<(f64, u64), Failure> {
    let start = Instant::now();
    let mut req = http.post(url).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(k) = routing_key {
        req = req.header("X-Routing-Key", k);
    }
    let r = req.send().await.map_err(|e| Failure {
        why: e.to_string(),
        upstream: None,
        started: false,
    })?;
    let upstream = upstream_of(&r);
    if r.status() != 200 {
        return Err(Failure {
            why: format!("status {}", r.status()),
            upstream,
            started: false,
        });
    }
    let fail = |why: String| Failure {
        why,
        upstream: upstream.clone(),
        started: true,
    };
    let mut bytes = r.bytes_stream();
    let mut buf = String::new();
    let mut ttft = None;
    let mut tokens = 0;
    while let Some(piece) = bytes.next().await {
        let piece = piece.map_err(|e| fail(e.to_string()))?;
        buf.push_str(&String::from_utf8_lossy(&piece));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            if data == "[DONE]" {
                return Ok((ttft.unwrap_or(0.0), tokens));
            }
            let v: serde_json::Value =
                serde_json::from_str(data).map_err(|e| fail(e.to_string()))?;
            if v.get("error").is_some() {
                return Err(fail(format!("error event: {data}")));
            }
            // Chat chunks carry `delta.content`, text completions `text`.
            let choice = &v["choices"][0];
            let has_text = choice["delta"]["content"]
                .as_str()
                .or(choice["text"].as_str())
                .is_some_and(|s| !s.is_empty());
            if ttft.is_none() && has_text {
                ttft = Some(start.elapsed().as_secs_f64() * 1e3);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n;
            }
        }
    }
    Err(fail("stream ended without [DONE]".into()))
}

/// A cheap deterministic mix (splitmix64) for drawing groups and words.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The long shared prefix of group `g`: ~150 words drawn from the group's own seed, so two
/// groups' prompts part after a few tokens (fewer than the prefix cache's 16-token minimum).
fn group_prefix(tag: &str, g: u64) -> String {
    const WORDS: &[&str] = &[
        "river", "stone", "market", "winter", "lantern", "harbor", "copper", "meadow", "signal",
        "orchard", "engine", "valley", "thunder", "garden", "ledger", "bridge", "canvas", "falcon",
        "station", "pepper", "island", "mirror", "castle", "forest", "rocket", "silver", "candle",
        "tunnel", "planet", "basket", "anchor", "velvet",
    ];
    let seed = tag.bytes().fold(g.wrapping_mul(0x100_0000_01B3), |h, b| {
        mix(h ^ u64::from(b))
    });
    let mut out = format!("Notes {g} ({tag}):");
    for k in 0..150u64 {
        out.push(' ');
        out.push_str(WORDS[(mix(seed ^ k) % WORDS.len() as u64) as usize]);
    }
    out
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
    let path = match args.workload {
        Workload::Chat => "/v1/chat/completions",
        Workload::SharedPrefix => "/v1/completions",
    };
    let url = format!("{base}{path}");
    let key = args.api_key.clone();
    let rss_start = rss_mb(pid);

    // Warm-up request (not counted).
    let http = reqwest::Client::new();
    let warm = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "stream": true});
    one_request(
        &http,
        &format!("{base}/v1/chat/completions"),
        key.as_deref(),
        &warm,
        None,
    )
    .await
    .map_err(|e| anyhow::anyhow!("warm-up failed: {}", e.why))?;

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
        let (workload, groups, tag) = (args.workload, args.groups, args.tag.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = ClientStats::default();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let seed = c as u64 * 1_000_003 + i;
                let (body, routing) = match workload {
                    Workload::Chat => (
                        serde_json::json!({
                            "messages": [{"role": "user",
                                "content": format!("Client {c}, request {i}: write a short poem about the sea.")}],
                            "max_tokens": max_tokens,
                            "temperature": 0.7,
                            "seed": seed,
                            "stream": true,
                            "stream_options": {"include_usage": true},
                        }),
                        None,
                    ),
                    Workload::SharedPrefix => {
                        let g = mix(seed) % groups;
                        let prompt = format!(
                            "{}\nQuestion {c}-{i}: which word comes up most often above?\nAnswer:",
                            group_prefix(&tag, g)
                        );
                        (
                            serde_json::json!({
                                "prompt": prompt,
                                "max_tokens": max_tokens,
                                "temperature": 0.7,
                                "seed": seed,
                                "stream": true,
                                "stream_options": {"include_usage": true},
                            }),
                            Some(format!("{tag}-{g}")),
                        )
                    }
                };
                stats.requests += 1;
                let t0 = Instant::now();
                match one_request(&http, &url, key.as_deref(), &body, routing.as_deref()).await {
                    Ok((ttft, tokens)) => {
                        stats.ttft_ms.push(ttft);
                        stats.latency_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                        stats.tokens += tokens;
                    }
                    Err(e) => {
                        stats.failed += 1;
                        let up = e.upstream.clone().unwrap_or_else(|| "none".into());
                        *stats.failed_by_upstream.entry(up.clone()).or_default() += 1;
                        if e.started {
                            *stats.cut_by_upstream.entry(up).or_default() += 1;
                        }
                        if stats.errors.len() < 3 {
                            stats.errors.push(e.why);
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
        for (k, n) in s.failed_by_upstream {
            *total.failed_by_upstream.entry(k).or_default() += n;
        }
        for (k, n) in s.cut_by_upstream {
            *total.cut_by_upstream.entry(k).or_default() += n;
        }
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
        "failed_by_upstream": total.failed_by_upstream,
        "cut_by_upstream": total.cut_by_upstream,
    });
    println!("{out}");
    if total.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
