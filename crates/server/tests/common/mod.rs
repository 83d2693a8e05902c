//! Shared helpers: real servers on 127.0.0.1 with the real SmolLM2 model, an HTTP client and
//! an SSE reader.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use fluent_ai_candle_server::{Server, ServerConfig, ShutdownHandle};
use futures::StreamExt;

/// The model every test server loads.
pub const MODEL: &str = "smollm2-135m-instruct";
/// The shared server's API key.
pub const KEY: &str = "test-key-123";
/// The shared server's body limit.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Fails (never skips) when the model is not cached.
pub fn require_model() {
    if let Err(e) = fluent_ai_candle_engine::cache::resolve(MODEL) {
        panic!("the server tests need {MODEL}: {e}. Run `cargo xtask fetch-models` first.");
    }
}

/// Binds a server for `config` (model SmolLM2 added) on a free loopback port, inside a
/// runtime of its own on a background thread. Returns its address and its shutdown handle and
/// a receiver that yields when `run` has returned.
pub fn start(config: ServerConfig) -> (SocketAddr, ShutdownHandle, std::sync::mpsc::Receiver<()>) {
    let s = start_server(config);
    let done = s.done.into_inner().unwrap_or_else(|e| e.into_inner());
    (s.addr, s.handle, done)
}

/// A server started by [`start_server`].
pub struct Started {
    /// The TCP address.
    pub addr: SocketAddr,
    /// The HTTP/3 (UDP) address, when served.
    pub http3: Option<SocketAddr>,
    /// The TLS certificate (PEM), when TLS is on.
    pub certificate_pem: Option<String>,
    /// Stops it.
    pub handle: ShutdownHandle,
    /// Yields when `run` has returned (in a mutex so a `Started` can live in a static).
    pub done: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

/// [`start`], returning what a TLS or HTTP/3 client needs too.
pub fn start_server(config: ServerConfig) -> Started {
    require_model();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let config = config.model(MODEL).port(0);
            let server = Server::bind(config).await.expect("server starts");
            assert!(server.local_addr().ip().is_loopback());
            tx.send((
                server.local_addr(),
                server.http3_addr(),
                server.tls_certificate_pem().map(str::to_string),
                server.shutdown_handle(),
            ))
            .unwrap();
            server.run().await.expect("server runs");
            let _ = done_tx.send(());
        });
    });
    let (addr, http3, certificate_pem, handle) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("server ready");
    Started {
        addr,
        http3,
        certificate_pem,
        handle,
        done: std::sync::Mutex::new(done_rx),
    }
}

/// The server most tests share: API key required (not for `/metrics`), 64 KiB body limit.
pub fn shared() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (addr, handle, _) = start(
            // `/metrics` is behind the key once one is set; this server opens it so the
            // format test reads it as a scraper would (the key rule: tests/hardening.rs).
            ServerConfig::default()
                .api_key(KEY)
                .body_limit(BODY_LIMIT)
                .max_concurrent(8)
                .metrics_open(true),
        );
        std::mem::forget(handle);
        addr
    })
}

/// An HTTP client with a generous timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// `http://{addr}{path}`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// POSTs JSON with the shared key; the response as it arrives (for streams and headers).
pub async fn post_raw(addr: SocketAddr, path: &str, body: &serde_json::Value) -> reqwest::Response {
    client()
        .post(url(addr, path))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .expect("request")
}

/// POSTs JSON with the shared key; returns status and body JSON (or the text as a string).
pub async fn post(
    addr: SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = post_raw(addr, path, &body).await;
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

/// GETs with the shared key; returns status and body text.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = client()
        .get(url(addr, path))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// The `data:` payloads of a whole SSE body.
pub fn sse_payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// Reads SSE `data:` payloads until the stream ends.
pub async fn sse_events(response: reqwest::Response) -> Vec<String> {
    let mut reader = SseReader::new(response);
    let mut out = Vec::new();
    while let Some(e) = reader.next().await {
        out.push(e);
    }
    out
}

/// An incremental SSE reader over a response body.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, Result<Vec<u8>, String>>,
    buf: String,
}

impl SseReader {
    /// Reads `response`'s body.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response
                .bytes_stream()
                .map(|b| b.map(|b| b.to_vec()).map_err(|e| e.to_string()))
                .boxed(),
            buf: String::new(),
        }
    }

    /// The next `data:` payload, or `None` at the end of the body.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|l| l.strip_prefix(' ').unwrap_or(l))
                    .collect();
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(data.join("\n"));
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}

/// Polls `/metrics` until `metric{model="…"}` reaches at least `min` (or the time is up).
pub async fn wait_metric(addr: SocketAddr, metric: &str, min: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric_value(addr, metric).await;
        if v >= min || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of a metric's samples in `/metrics`.
pub async fn metric_value(addr: SocketAddr, metric: &str) -> f64 {
    let (_, text) = get(addr, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter(|l| l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
