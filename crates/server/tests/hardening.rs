//! Hostile and careless clients (issue #13, items 5–9), each on a server of its own over real
//! loopback HTTP with the real SmolLM2: the connection cap, slow and idle connections, client
//! mistakes answered 400 before generating, browser safety (CORS, `Content-Type`, WebSocket
//! `Origin`, `/metrics` behind the key), `--max-models`, no absolute paths in error bodies,
//! readiness, and `/health` staying fast while heavy requests are prepared.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use fluent_ai_candle_server::{Server, ServerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Reads from `s` until the peer closes (Ok(bytes read)) or `within` passes (Err).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return Err(out),
        }
    }
}

async fn health_status(addr: SocketAddr) -> (u16, Value) {
    let r = client().get(url(addr, "/health")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 3,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn connections_past_the_cap_get_503_and_the_server_stays_reachable() {
    let (addr, _h, _) = start(
        ServerConfig::default()
            .max_connections(4)
            .idle_timeout(Duration::from_secs(30))
            .header_timeout(Duration::from_secs(30)),
    );
    // Four idle sockets hold every slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The fifth is answered 503 at once and closed: it holds no descriptor.
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let answer = read_until_closed(&mut fifth, Duration::from_secs(5))
        .await
        .expect("closed at once");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("overloaded_error"), "{text}");
    // A slot freed is usable again.
    drop(idle.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client().get(url(addr, "/health")).send().await {
            Ok(r) if r.status() == 200 => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "never reachable again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(idle);
    let refused = wait_metric(addr, "fluent_ai_candle_http_connections_refused_total", 1.0).await;
    assert!(refused >= 1.0, "refused = {refused}");
}

#[tokio::test]
async fn slow_headers_silent_and_idle_connections_are_closed() {
    let (addr, _h, _) = start(
        ServerConfig::default()
            .header_timeout(Duration::from_millis(300))
            .idle_timeout(Duration::from_millis(800)),
    );
    // A head that never ends.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("slow head closed");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    // A connection that sends nothing at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    read_until_closed(&mut silent, Duration::from_secs(5))
        .await
        .expect("silent connection closed");
    // A keep-alive connection: answered, then closed once idle for the idle timeout (longer
    // than the header timeout: waiting for the next request is not a slow head).
    let mut keep = TcpStream::connect(addr).await.unwrap();
    keep.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let answer = read_until_closed(&mut keep, Duration::from_secs(5))
        .await
        .expect("idle connection closed");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    let timed_out = metric_value(addr, "fluent_ai_candle_http_connections_timed_out_total").await;
    assert!(timed_out >= 3.0, "timed out = {timed_out}");
}

#[tokio::test]
async fn a_slow_body_is_408() {
    let (addr, _h, _) = start(ServerConfig::default().body_timeout(Duration::from_millis(300)));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"messages\":",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

#[tokio::test]
async fn sampling_mistakes_are_400_before_generating() {
    // The default body limit (2 MiB) takes a logit_bias over the whole vocabulary.
    let (addr, _h, _) = start(ServerConfig::default());
    let vocab = 49_152;
    let ban_all: serde_json::Map<String, Value> =
        (0..vocab).map(|t| (t.to_string(), json!(-100))).collect();
    for (extra, param) in [
        (json!({"temperature": 1e-45}), "temperature"),
        (json!({"temperature": 1e-38}), "temperature"),
        (json!({"repetition_penalty": 1e-45}), "repetition_penalty"),
        (json!({"logit_bias": ban_all}), "logit_bias"),
    ] {
        let shown = extra.to_string().chars().take(60).collect::<String>();
        let r = client()
            .post(url(addr, "/v1/chat/completions"))
            .json(&chat_body(extra))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{shown}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["param"], param, "{shown}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    // Banning all but one token is fine: the answer is that token.
    let mut most: serde_json::Map<String, Value> =
        (0..vocab).map(|t| (t.to_string(), json!(-100))).collect();
    most.remove("28");
    let (status, body) = post(
        addr,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 2, "logit_bias": most, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Nothing refused started generating (none failed, one completed).
    let completed = metric_value(addr, "fluent_ai_candle_engine_completed_total").await;
    let failed = metric_value(addr, "fluent_ai_candle_engine_failed_total").await;
    assert_eq!((completed, failed), (1.0, 0.0));
}

#[tokio::test]
async fn browser_safety_cors_content_type_ws_origin_metrics_key() {
    let origin = "https://app.example.com";
    let (addr, _h, _) = start(ServerConfig::default().api_key(KEY).cors_origin(origin));
    let path = url(addr, "/v1/chat/completions");
    // A preflight from a listed origin needs no key.
    let r = client()
        .request(reqwest::Method::OPTIONS, &path)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], origin);
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    // From another origin: no grant.
    let r = client()
        .request(reqwest::Method::OPTIONS, &path)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // The real request from the listed origin carries the grant.
    let r = client()
        .post(&path)
        .bearer_auth(KEY)
        .header("origin", origin)
        .json(&chat_body(json!({"max_tokens": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], origin);

    // POST bodies must be declared JSON (a form post from any page is not).
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut r = client()
            .post(&path)
            .bearer_auth(KEY)
            .body(chat_body(json!({})).to_string());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 415, "{ct:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    // `bearer` in any case.
    let r = client()
        .get(url(addr, "/v1/models"))
        .header("authorization", format!("bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // /metrics is behind the key when one is set.
    let r = client().get(url(addr, "/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (status, _) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    // /health and /health/live are not.
    let r = client()
        .get(url(addr, "/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // WebSocket: a browser origin must be listed; non-browser clients send none.
    let ws = |origin: Option<&str>| {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    match ws(Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    ws(Some(origin)).await.expect("listed origin");
    ws(None).await.expect("no origin");
}

#[tokio::test]
async fn without_cors_origins_browsers_get_no_grant_and_metrics_can_be_opened() {
    let (addr, _h, _) = start(ServerConfig::default().api_key(KEY).metrics_open(true));
    let r = client()
        .request(reqwest::Method::OPTIONS, url(addr, "/v1/chat/completions"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let r = client().get(url(addr, "/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200, "--metrics-open");
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fac-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn max_models_readiness_and_no_absolute_paths_in_errors() {
    let dir = temp_dir("models");
    let cached = fluent_ai_candle_engine::cache::resolve(MODEL).unwrap();
    // A second copy to hot-load, and a file that is not a GGUF.
    std::fs::copy(&cached, dir.join("second.gguf")).unwrap();
    std::fs::write(dir.join("broken.gguf"), b"GGUF not really").unwrap();
    let (addr, _h, _) = start(ServerConfig::default().models_dir(&dir).max_models(1));
    let (status, body) = health_status(addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["models"], json!([MODEL]));

    // One model is the limit.
    let (status, r) = post(addr, "/v1/models/load", json!({"model": "second"})).await;
    assert_eq!(status, 409, "{r}");
    assert_eq!(r["error"]["code"], "model_limit_reached");
    // Errors name files relative to the models directory, never its absolute path.
    let secret = dir.display().to_string();
    for (body, expected) in [
        (json!({"model": "broken"}), 400),
        (json!({"model": "ghost"}), 404),
    ] {
        // Free the slot first so the load is attempted.
        let _ = post(addr, "/v1/models/unload", json!({"model": MODEL})).await;
        let (status, r) = post(addr, "/v1/models/load", body.clone()).await;
        assert_eq!(status, expected, "{body}: {r}");
        let text = r.to_string();
        assert!(!text.contains(&secret), "{text}");
        assert!(
            !text.contains(&std::env::temp_dir().display().to_string()),
            "{text}"
        );
    }

    // No model loaded: not ready (a balancer sends nothing), but alive.
    let (status, body) = health_status(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "no_model");
    assert_eq!(body["ready"], false);
    let r = client()
        .get(url(addr, "/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ready = metric_value(addr, "fluent_ai_candle_ready").await;
    assert_eq!(ready, 0.0);

    // Loading one makes it ready again.
    let (status, r) = post(addr, "/v1/models/load", json!({"model": "second"})).await;
    assert_eq!(status, 200, "{r}");
    let (status, body) = health_status(addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["models"], json!(["second"]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn listen_answers_while_the_start_up_models_load() {
    require_model();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Server::listen(ServerConfig::default().model(MODEL).port(0))
                .await
                .unwrap();
            assert!(server.models().is_empty(), "nothing loaded yet");
            tx.send(server.local_addr()).unwrap();
            server.run().await.unwrap();
        });
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    // Every answer until the model is in is 503 `loading`; then 200.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = health_status(addr).await;
        if status == 200 {
            assert_eq!(body["models"], json!([MODEL]));
            break;
        }
        assert_eq!(status, 503);
        assert_eq!(body["status"], "loading", "{body}");
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, r) = post(
        addr,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
}

#[tokio::test]
async fn draining_closes_connections_after_each_answer() {
    let (addr, handle, _done) =
        start(ServerConfig::default().shutdown_timeout(Duration::from_secs(20)));
    // Keep the drain open with a stream in flight.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Count."}],
        "max_tokens": 40, "ignore_eos": true, "stream": true});
    let r = client()
        .post(url(addr, "/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = SseReader::new(r);
    assert!(stream.next().await.is_some());
    handle.shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client().get(url(addr, "/health")).send().await.unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["connection"], "close");
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while stream.next().await.is_some() {}
}

/// A JSON Schema whose only property is an enum of `n` distinct strings.
fn huge_enum(n: usize) -> Value {
    let values: Vec<Value> = (0..n).map(|i| json!(format!("v{i:06}"))).collect();
    json!({"type": "object", "properties": {"pick": {"enum": values}},
        "required": ["pick"], "additionalProperties": false})
}

/// Issue 13 item 5: request bodies of 64 KiB and more are parsed, and requests prepared
/// (template, tokenizing, constraint compiling), on the blocking pool, at most one per core but
/// one at a time, so `/health` stays prompt while sixteen 100k-value enums are compiled.
/// The handlers also build the engine's requests (which clone the schema) and drop the parsed
/// body there: those clones on the async threads were the last 80 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_in_under_50_ms_while_16_heavy_requests_are_prepared() {
    let (addr, _h, _) = start(ServerConfig::default().max_concurrent(16));
    let schema = huge_enum(100_000);
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Pick one."}],
        "max_tokens": 4,
        "response_format": {"type": "json_schema",
            "json_schema": {"name": "pick", "schema": schema}},
    });
    // One connection for the probes, warmed before the load starts.
    let probe = client();
    // The probes run on their own task of this multi-threaded runtime, so the sixteen senders
    // do not delay them.
    assert_eq!(
        probe
            .get(url(addr, "/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Serialized once, before the probes start: the probes share this test's thread with the
    // sixteen clients, and what is timed is the server.
    // Likewise the clients are built before (building one loads TLS roots: tens of ms).
    let body = serde_json::to_vec(&body).unwrap();
    let senders: Vec<_> = (0..16).map(|_| client()).collect();
    let heavy: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let body = body.clone();
            tokio::spawn(async move {
                sender
                    .post(url(addr, "/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut probes = 0;
    while !heavy.iter().all(|h| h.is_finished()) {
        let t = Instant::now();
        let r = probe.get(url(addr, "/health")).send().await.unwrap();
        let took = t.elapsed();
        assert_eq!(r.status(), 200);
        worst = worst.max(took);
        if took > Duration::from_millis(50) {
            eprintln!("slow probe {probes}: {took:?}");
        }
        probes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for h in heavy {
        let status = h.await.unwrap().expect("heavy request answered");
        assert!(
            [200, 400, 429].contains(&status),
            "a heavy request ends in an answer, got {status}"
        );
    }
    assert!(probes >= 3, "the heavy requests took {probes} probes only");
    eprintln!("/health: worst {worst:?} over {probes} probes");
    assert!(
        worst < Duration::from_millis(50),
        "/health took {worst:?} at worst over {probes} probes"
    );
}
