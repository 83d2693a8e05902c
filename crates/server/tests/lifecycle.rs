//! Overload (429), disconnect cancellation, draining (503) and bounded graceful shutdown, each
//! on a server of its own over real loopback HTTP.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fluent_ai_candle_server::ServerConfig;
use serde_json::{json, Value};

fn long_stream() -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "Count to a million."}],
        "max_tokens": 100000, "ignore_eos": true, "temperature": 0, "stream": true})
}

async fn open_stream(addr: std::net::SocketAddr, body: &Value) -> reqwest::Response {
    client()
        .post(url(addr, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn full_queue_is_429_and_a_disconnect_cancels_its_generation() {
    let (addr, _handle, _) = start(ServerConfig::default().max_concurrent(1).max_queued(1));
    // A decodes (the only slot); B waits (the only queue place); C is refused.
    let a = open_stream(addr, &long_stream()).await;
    assert_eq!(a.status(), 200);
    let mut a = SseReader::new(a);
    assert!(a.next().await.is_some(), "A streams");
    let b = open_stream(addr, &long_stream()).await;
    assert_eq!(b.status(), 200);
    let c = open_stream(addr, &long_stream()).await;
    assert_eq!(c.status(), 429);
    assert_eq!(c.headers()["retry-after"], "1");
    let body: Value = c.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "overloaded_error");

    // Dropping the clients cancels both generations and frees the slot.
    drop(a);
    drop(b);
    let cancelled = wait_metric(addr, "fluent_ai_candle_engine_cancelled_total", 2.0).await;
    assert!(cancelled >= 2.0, "cancelled = {cancelled}");
    let (status, r) = post(
        addr,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200, "{r}: the slot was freed");
}

#[tokio::test]
async fn shutdown_drains_with_503_and_lets_requests_in_flight_finish() {
    let (addr, handle, done) = start(ServerConfig::default());
    let mut body = long_stream();
    body["max_tokens"] = json!(40);
    let mut a = SseReader::new(open_stream(addr, &body).await);
    assert!(a.next().await.is_some());
    handle.shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client().get(url(addr, "/health")).send().await.unwrap();
        if r.status() == 503 {
            let b: Value = r.json().await.unwrap();
            assert_eq!(b["status"], "draining");
            break;
        }
        assert!(Instant::now() < deadline, "never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, r) = post(
        addr,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["error"]["type"], "overloaded_error");
    // The stream in flight runs to its end.
    let mut last = String::new();
    while let Some(e) = a.next().await {
        last = e;
    }
    assert_eq!(last, "[DONE]");
    let waited = tokio::task::spawn_blocking(move || done.recv_timeout(Duration::from_secs(10)));
    assert!(
        waited.await.unwrap().is_ok(),
        "server stopped after draining"
    );
}

#[tokio::test]
async fn shutdown_cuts_what_outlives_the_bound() {
    let (addr, handle, done) =
        start(ServerConfig::default().shutdown_timeout(Duration::from_millis(500)));
    let mut a = SseReader::new(open_stream(addr, &long_stream()).await);
    assert!(a.next().await.is_some());
    let t = Instant::now();
    handle.shutdown();
    let mut last = String::new();
    while let Some(e) = a.next().await {
        last = e;
    }
    assert!(
        last.contains("shutting down"),
        "the cut stream says why: {last}"
    );
    let waited = tokio::task::spawn_blocking(move || done.recv_timeout(Duration::from_secs(10)));
    assert!(waited.await.unwrap().is_ok());
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
}
