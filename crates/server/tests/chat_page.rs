//! The built-in chat page at `GET /` (issue #15): served without the key as HTML with a strict
//! Content-Security-Policy, absent (404) when turned off, and the API calls it makes from its
//! own origin pass the request guard with the key (and only with it). The page running in a
//! real browser: `cargo xtask chat-page-test`.

mod common;

use common::*;
use fluent_ai_candle_server::ServerConfig;
use serde_json::json;

#[tokio::test]
async fn the_page_is_served_without_the_key_with_a_strict_policy() {
    let addr = shared();
    // No Authorization header: the page is static and public; its API calls need the key.
    let r = client().get(url(addr, "/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("style-src 'sha256-"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = r.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for needle in [
        "/v1/models",
        "/v1/chat/completions",
        "include_usage",
        "json_schema",
        "sessionStorage",
        "Authorization",
        "id=\"send\"",
    ] {
        assert!(html.contains(needle), "the page lacks {needle}");
    }
    // Nothing is fetched from elsewhere.
    assert!(!html.contains("http://") && !html.contains("https://"));
    // HEAD works too (some monitors probe with it).
    let r = client().head(url(addr, "/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn same_origin_calls_from_the_page_pass_the_guard_with_the_key_only() {
    let addr = shared();
    let origin = format!("http://{addr}");
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    // What a browser sends for the page's fetch: Origin (its own), Referer and the key.
    let call = |key: Option<&str>| {
        let mut r = client()
            .post(url(addr, "/v1/chat/completions"))
            .header("origin", &origin)
            .header("referer", format!("{origin}/"))
            .header("sec-fetch-site", "same-origin")
            .json(&body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let r = call(Some(KEY)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(call(None).await.unwrap().status().as_u16(), 401);
    assert_eq!(call(Some("wrong")).await.unwrap().status().as_u16(), 401);
    let r = client()
        .get(url(addr, "/v1/models"))
        .header("origin", &origin)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn the_page_can_be_turned_off() {
    let (addr, handle, _) = start(ServerConfig::default().chat_page(false));
    let r = client().get(url(addr, "/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.headers().get("content-security-policy").is_none());
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
    // The API is unaffected.
    let r = client().get(url(addr, "/v1/models")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    handle.shutdown();
}
