//! Every route and every error status over real loopback HTTP, on the real SmolLM2 model.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 6,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn health_is_open_and_reports_models() {
    let addr = shared();
    let r = client().get(url(addr, "/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert!(body["models"].as_array().unwrap().contains(&json!(MODEL)));
    assert_eq!(body["device"], "cpu", "{body}");
}

#[tokio::test]
async fn models_list_and_lookup() {
    let addr = shared();
    let (status, text) = get(addr, "/v1/models").await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["object"], "list");
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == MODEL && m["object"] == "model" && m["device"] == "cpu"));
    let (status, text) = get(addr, &format!("/v1/models/{MODEL}")).await;
    assert_eq!(status, 200);
    let one: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(one["device"], "cpu", "{one}");
    let (status, text) = get(addr, "/v1/models/no-such-model").await;
    assert_eq!(status, 404);
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn chat_completion_has_openai_shape() {
    let addr = shared();
    let (status, body) = post(addr, "/v1/chat/completions", chat("Say hi.", json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let u = &body["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(u["completion_tokens"].as_u64().unwrap() <= 6);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn chat_streaming_sse_matches_the_whole_response() {
    let addr = shared();
    let (_, whole) = post(
        addr,
        "/v1/chat/completions",
        chat("Name a colour.", json!({})),
    )
    .await;
    let body = chat(
        "Name a colour.",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let r = client()
        .post(url(addr, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        if let Some(choice) = c["choices"].as_array().unwrap().first() {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if !choice["finish_reason"].is_null() {
                finish = Some(choice["finish_reason"].clone());
            }
            assert!(c["usage"].is_null(), "usage only on the last chunk");
        }
    }
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(finish.unwrap(), whole["choices"][0]["finish_reason"]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    // The same counts; the streamed request's prompt may come from the prefix cache that the
    // whole one filled, so only its `cached_tokens` may differ.
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(last["usage"][field], whole["usage"][field], "{field}");
    }
    let cached = |u: &Value| {
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    assert!(cached(&last["usage"]) >= cached(&whole["usage"]));
}

/// `usage.prompt_tokens_details.cached_tokens` counts the prompt tokens the prefix cache gave:
/// a repeated long prompt gets most of them from the cache.
#[tokio::test]
async fn repeated_prompt_reports_cached_tokens() {
    let addr = shared();
    let text = "List three facts about the planet Saturn and its rings, briefly. ".repeat(4);
    let (status, first) = post(addr, "/v1/chat/completions", chat(&text, json!({}))).await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = post(addr, "/v1/chat/completions", chat(&text, json!({}))).await;
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= prompt / 2 && cached < prompt,
        "cached {cached} of {prompt} prompt tokens: {second}"
    );
    assert!(first["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());
}

#[tokio::test]
async fn text_completions_whole_and_streamed_with_n_and_stop() {
    let addr = shared();
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5,
        "temperature": 0, "seed": 11, "n": 2, "stop": ["\n\n"]});
    let (status, whole) = post(addr, "/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(
        (choices[0]["index"].clone(), choices[1]["index"].clone()),
        (json!(0), json!(1))
    );
    // Greedy: the same request gives the same text.
    let (_, again) = post(addr, "/v1/completions", body.clone()).await;
    assert_eq!(again["choices"], whole["choices"]);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = client()
        .post(url(addr, "/v1/completions"))
        .bearer_auth(KEY)
        .json(&streamed)
        .send()
        .await
        .unwrap();
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut texts = [String::new(), String::new()];
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert_eq!(c["object"], "text_completion");
        assert!(c.get("usage").is_none(), "no usage without include_usage");
        let choice = &c["choices"][0];
        texts[choice["index"].as_u64().unwrap() as usize]
            .push_str(choice["text"].as_str().unwrap());
    }
    assert_eq!(texts[0], choices[0]["text"].as_str().unwrap());
    assert_eq!(texts[1], choices[1]["text"].as_str().unwrap());
}

/// `logprobs` + `top_logprobs`: chat (whole and streamed) and legacy completions shapes.
#[tokio::test]
async fn logprobs_whole_streamed_and_legacy() {
    let addr = shared();
    let extra = json!({"logprobs": true, "top_logprobs": 2});
    let (status, whole) = post(addr, "/v1/chat/completions", chat("Name a colour.", extra)).await;
    assert_eq!(status, 200, "{whole}");
    let content = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(
        content.len() as u64,
        whole["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut text = String::new();
    for entry in content {
        let lp = entry["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{entry}");
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        // Greedy: the chosen token is the most probable one.
        assert_eq!(top[0]["token"], entry["token"]);
        assert!(top[0]["logprob"].as_f64().unwrap() >= top[1]["logprob"].as_f64().unwrap());
        let bytes: Vec<u8> = entry["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            entry["token"].as_str().unwrap()
        );
        text.push_str(entry["token"].as_str().unwrap());
    }
    let message = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with(message), "{text:?} vs {message:?}");
    // Without the flag: null.
    let (_, plain) = post(
        addr,
        "/v1/chat/completions",
        chat("Name a colour.", json!({})),
    )
    .await;
    assert!(plain["choices"][0]["logprobs"].is_null());

    // Streamed: the chunks' entries add up to the whole response's.
    let body = chat(
        "Name a colour.",
        json!({"logprobs": true, "top_logprobs": 2, "stream": true}),
    );
    let r = client()
        .post(url(addr, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let events = sse_events(r).await;
    let mut streamed = Vec::new();
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        if let Some(l) = c["choices"][0]["logprobs"]["content"].as_array() {
            streamed.extend(l.iter().cloned());
        }
    }
    assert_eq!(&streamed, content);

    // Legacy completions: parallel arrays and character offsets.
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5,
        "temperature": 0, "logprobs": 3});
    let (status, done) = post(addr, "/v1/completions", body).await;
    assert_eq!(status, 200, "{done}");
    let l = &done["choices"][0]["logprobs"];
    let tokens = l["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    assert_eq!(l["token_logprobs"].as_array().unwrap().len(), 5);
    assert_eq!(l["text_offset"][0], 0);
    let top = l["top_logprobs"].as_array().unwrap();
    assert!(top.iter().all(|m| m.as_object().unwrap().len() <= 3));
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, done["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test]
async fn json_schema_and_json_object_response_formats() {
    let addr = shared();
    let schema = json!({"type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"], "additionalProperties": false});
    let body = chat(
        "Is water wet? Answer in JSON.",
        json!({"max_tokens": 60, "response_format": {"type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": true}}}),
    );
    let (status, r) = post(addr, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    let v: Value = serde_json::from_str(content).expect("schema output is JSON");
    assert!(v["answer"] == "yes" || v["answer"] == "no", "{content}");
    assert!(v["sure"].is_boolean(), "{content}");
    assert_eq!(v.as_object().unwrap().len(), 2);

    let body = chat(
        "Give a JSON object with your name.",
        json!({"max_tokens": 40, "response_format": {"type": "json_object"}}),
    );
    let (status, r) = post(addr, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    if r["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).unwrap().is_object());
    } else {
        assert!(content.trim_start().starts_with('{'), "{content}");
    }

    // A budget too small for what the model writes but enough to close the object: valid
    // JSON with finish_reason "length"; with `close_constraint: false`, cut mid-value.
    let story = json!({"type": "object", "properties": {"title": {"type": "string"},
        "story": {"type": "string"}, "moral": {"type": "string"}},
        "required": ["title", "story", "moral"], "additionalProperties": false});
    for close in [true, false] {
        let body = chat(
            "Write a very long story about a brave cat, as a JSON object.",
            json!({"max_tokens": 24, "temperature": 0, "close_constraint": close,
                "response_format": {"type": "json_schema",
                "json_schema": {"name": "story", "schema": story}}}),
        );
        let (status, r) = post(addr, "/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "length", "{r}");
        let content = r["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed = serde_json::from_str::<Value>(content);
        if close {
            let v = parsed.expect(content);
            assert!(
                v["title"].is_string() && v["moral"].is_string(),
                "{content}"
            );
        } else {
            assert!(parsed.is_err(), "{content}");
        }
    }

    // Cut by max_tokens before even the shortest completion fits: 200 with the partial JSON
    // and finish_reason "length", not an error.
    let body = chat(
        "Is water wet? Answer in JSON.",
        json!({"max_tokens": 3, "response_format": {"type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema}}}),
    );
    let (status, r) = post(addr, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length", "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with('{'), "{content}");
    assert!(serde_json::from_str::<Value>(content).is_err(), "{content}");
}

#[tokio::test]
async fn regex_and_grammar_extensions_constrain_the_output() {
    let addr = shared();
    let (status, r) = post(
        addr,
        "/v1/chat/completions",
        chat(
            "Pick a number.",
            json!({"regex": "[0-9]{3}", "max_tokens": 8}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.len() == 3 && content.bytes().all(|b| b.is_ascii_digit()),
        "{content}"
    );

    let (status, r) = post(
        addr,
        "/v1/chat/completions",
        chat(
            "Is the sky blue?",
            json!({"grammar": "root ::= \"yes\" | \"no\"", "max_tokens": 8}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content == "yes" || content == "no", "{content}");
}

#[tokio::test]
async fn every_sampling_parameter_is_accepted_and_seeds_reproduce() {
    let addr = shared();
    let extra = json!({"temperature": 0.9, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
        "typical_p": 0.98, "repetition_penalty": 1.1, "frequency_penalty": 0.5,
        "presence_penalty": 0.3, "logit_bias": {"0": -100}, "seed": 42,
        "max_completion_tokens": 6});
    let (s1, a) = post(
        addr,
        "/v1/chat/completions",
        chat("Tell a story.", extra.clone()),
    )
    .await;
    let (s2, b) = post(addr, "/v1/chat/completions", chat("Tell a story.", extra)).await;
    assert_eq!((s1, s2), (200, 200), "{a} {b}");
    // Same seed, same sampling: the same first token (later ones may differ by a rounding of
    // the batched forward pass when other requests share the batch).
    let (ta, tb) = (
        a["choices"][0]["message"]["content"].as_str().unwrap(),
        b["choices"][0]["message"]["content"].as_str().unwrap(),
    );
    assert!(!ta.is_empty() && !tb.is_empty());
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
    for m in [1, 2] {
        let (s, r) = post(
            addr,
            "/v1/chat/completions",
            chat("Hi", json!({"temperature": 1.0, "mirostat": m, "mirostat_tau": 4.0, "mirostat_eta": 0.2})),
        )
        .await;
        assert_eq!(s, 200, "mirostat {m}: {r}");
    }
}

#[tokio::test]
async fn bad_parameters_are_400_with_openai_errors() {
    let addr = shared();
    for (extra, param) in [
        (json!({"temperature": 2.5}), Some("temperature")),
        (json!({"top_p": 1.5}), Some("top_p")),
        (json!({"max_tokens": 0}), Some("max_tokens")),
        (json!({"n": 99}), Some("n")),
        (json!({"logit_bias": {"abc": 1}}), Some("logit_bias")),
        (json!({"top_logprobs": 3}), Some("top_logprobs")),
        (json!({"mirostat": 5}), Some("mirostat")),
        (json!({"response_format": {"type": "xml"}}), None),
        (json!({"grammar": "root ::= ("}), None),
        (json!({"regex": "a", "grammar": "root ::= \"a\""}), None),
        (json!({"messages": []}), Some("messages")),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            Some("messages"),
        ),
    ] {
        let (status, body) = post(addr, "/v1/chat/completions", chat("x", extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert!(body["error"]["message"].as_str().is_some());
        if let Some(p) = param {
            assert_eq!(body["error"]["param"], p, "{extra}: {body}");
        }
    }
    let r = client()
        .post(url(addr, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = post(
        addr,
        "/v1/completions",
        json!({"prompt": "x", "logprobs": 9}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn wrong_or_missing_key_is_401() {
    let addr = shared();
    for key in [
        None,
        Some("wrong"),
        Some("test-key-12"),
        Some("test-key-1234"),
    ] {
        let mut r = client()
            .post(url(addr, "/v1/chat/completions"))
            .json(&chat("x", json!({})));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401, "{key:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    let r = client().get(url(addr, "/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn unknown_model_and_route_are_404() {
    let addr = shared();
    let mut body = chat("x", json!({}));
    body["model"] = json!("gpt-4o");
    let (status, r) = post(addr, "/v1/chat/completions", body).await;
    assert_eq!(status, 404);
    assert_eq!(r["error"]["code"], "model_not_found");
    assert_eq!(r["error"]["param"], "model");
    let (status, r) = post(
        addr,
        "/v1/completions",
        json!({"model": "nope", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 404, "{r}");
    let (status, text) = get(addr, "/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert!(text.contains("\"error\""));
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let addr = shared();
    let big = "a".repeat(BODY_LIMIT + 1);
    let (status, body) = post(addr, "/v1/chat/completions", chat(&big, json!({}))).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large");
    // Without a Content-Length (chunked), the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(b"{\"messages\":\"".to_vec()),
        Ok(vec![b'a'; BODY_LIMIT]),
        Ok(b"\"}".to_vec()),
    ];
    let r = client()
        .post(url(addr, "/v1/completions"))
        .bearer_auth(KEY)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let addr = shared();
    let (status, _) = post(
        addr,
        "/v1/chat/completions",
        chat("Hi", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(status, 200);
    let r = client().get(url(addr, "/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(text.contains("# TYPE fluent_ai_candle_http_requests_total counter"));
    assert!(text.contains(
        "fluent_ai_candle_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"
    ));
    assert!(text.contains(&format!(
        "fluent_ai_candle_engine_requests_total{{model=\"{MODEL}\"}}"
    )));
    assert!(text.contains("fluent_ai_candle_engine_ttft_mean_ms"));
    // Latency histograms: at least this request is counted in each, with a +Inf bucket.
    for h in ["ttft", "inter_token", "request"] {
        let name = format!("fluent_ai_candle_engine_{h}_seconds");
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{name}");
        let inf = format!("{name}_bucket{{model=\"{MODEL}\",le=\"+Inf\"}} ");
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&inf))
            .unwrap_or_else(|| panic!("no {inf}"))
            .parse()
            .unwrap();
        assert!(count >= 1, "{name}: {count}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line: {line}");
    }
}

#[tokio::test]
async fn models_hot_swap_only_from_the_models_directory() {
    let addr = shared();
    let file = fluent_ai_candle_engine::cache::known_model(MODEL)
        .unwrap()
        .file;
    let (status, r) = post(
        addr,
        "/v1/models/load",
        json!({"model": "smol-b", "file": file}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["id"], "smol-b");
    let mut body = chat("Hi", json!({"max_tokens": 2}));
    body["model"] = json!("smol-b");
    let (status, r) = post(addr, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"], "smol-b");
    // Replacing a loaded model in place is allowed.
    let (status, _) = post(
        addr,
        "/v1/models/load",
        json!({"model": "smol-b", "file": file}),
    )
    .await;
    assert_eq!(status, 200);

    let (status, r) = post(addr, "/v1/models/unload", json!({"model": "smol-b"})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["deleted"], true);
    let (status, _) = post(addr, "/v1/chat/completions", body).await;
    assert_eq!(status, 404);
    let (status, _) = post(addr, "/v1/models/unload", json!({"model": "smol-b"})).await;
    assert_eq!(status, 404);

    for bad in ["../etc/passwd.gguf", "/etc/x.gguf", "sub/x.gguf", "x.bin"] {
        let (status, r) = post(
            addr,
            "/v1/models/load",
            json!({"model": "evil", "file": bad}),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {r}");
    }
    let (status, _) = post(
        addr,
        "/v1/models/load",
        json!({"model": "ghost", "file": "missing.gguf"}),
    )
    .await;
    assert_eq!(status, 404);
}

async fn ws_next_text<S>(ws: &mut S) -> String
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await.expect("socket open").expect("frame") {
            Message::Text(t) => return t.to_string(),
            Message::Close(_) => panic!("closed"),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn websocket_streams_one_message_per_chunk() {
    let addr = shared();
    let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");

    // A chat request: the same JSON as /v1/chat/completions.
    let body = chat(
        "Name a fruit.",
        json!({"stream_options": {"include_usage": true}}),
    );
    let (_, whole) = post(addr, "/v1/chat/completions", body.clone()).await;
    ws.send(Message::Text(body.to_string().into()))
        .await
        .unwrap();
    let mut text = String::new();
    let mut usage = None;
    loop {
        let m = ws_next_text(&mut ws).await;
        if m == "[DONE]" {
            break;
        }
        let c: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(c["object"], "chat.completion.chunk", "{m}");
        if let Some(choice) = c["choices"].as_array().unwrap().first() {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        } else {
            usage = Some(c["usage"].clone());
        }
    }
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // The same counts; the socket's request found the prompt in the prefix cache that the
    // HTTP one filled, so only `cached_tokens` may differ.
    let usage = usage.unwrap();
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[field], whole["usage"][field], "{field}");
    }

    // The same socket takes a completion request next, and reports errors as messages.
    ws.send(Message::Text(
        json!({"prompt": "1, 2, 3,", "max_tokens": 3})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut n = 0;
    loop {
        let m = ws_next_text(&mut ws).await;
        if m == "[DONE]" {
            break;
        }
        let c: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(c["object"], "text_completion", "{m}");
        n += 1;
    }
    assert!(n >= 1);
    ws.send(Message::Text(
        chat("x", json!({"temperature": 9})).to_string().into(),
    ))
    .await
    .unwrap();
    let e: Value = serde_json::from_str(&ws_next_text(&mut ws).await).unwrap();
    assert_eq!(e["error"]["param"], "temperature");
    let mut body = chat("x", json!({}));
    body["model"] = json!("unknown");
    ws.send(Message::Text(body.to_string().into()))
        .await
        .unwrap();
    let e: Value = serde_json::from_str(&ws_next_text(&mut ws).await).unwrap();
    assert_eq!(e["error"]["code"], "model_not_found");
    ws.close(None).await.unwrap();

    // Without the key the upgrade is refused with 401.
    let err = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .expect_err("needs the key");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 401),
        other => panic!("expected HTTP 401, got {other}"),
    }
}

/// Log lines captured by the JSON subscriber that `request_log_lines` installs.
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The request line of `id`, waiting for it (it is written when the body ends).
async fn log_line(id: &str) -> Value {
    for _ in 0..100 {
        let text = String::from_utf8(LOG.lock().unwrap().clone()).unwrap();
        if let Some(line) = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["id"] == id)
        {
            return line;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no log line for {id}");
}

/// One `tracing` line per request (here as JSON, as `serve --log-format json` writes them),
/// with the status, and for generation the model, token counts and time to first token; the
/// client's `x-request-id` names the line and comes back in the response.
#[tokio::test]
async fn request_log_lines() {
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(|| LogWriter)
        .try_init();
    let addr = shared();
    let send = |id: &'static str, body: Value, path: &'static str| {
        client()
            .post(url(addr, path))
            .bearer_auth(KEY)
            .header("x-request-id", id)
            .json(&body)
            .send()
    };
    let r = send(
        "log-chat-1",
        chat("Hi", json!({"max_tokens": 3})),
        "/v1/chat/completions",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "log-chat-1");
    let body: Value = r.json().await.unwrap();
    let line = log_line("log-chat-1").await;
    assert_eq!(line["target"], "fluent_ai_candle::request", "{line}");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "/v1/chat/completions");
    assert_eq!(line["model"], MODEL);
    assert_eq!(line["completion_id"], body["id"]);
    assert_eq!(line["prompt_tokens"], body["usage"]["prompt_tokens"]);
    assert_eq!(
        line["completion_tokens"],
        body["usage"]["completion_tokens"]
    );
    let (ttft, total) = (
        line["ttft_ms"].as_f64().unwrap(),
        line["duration_ms"].as_f64().unwrap(),
    );
    assert!(ttft > 0.0 && ttft <= total, "{line}");
    assert_eq!(line["finish_reason"], body["choices"][0]["finish_reason"]);
    // A streamed request: the line is written when the stream ends.
    let r = send(
        "log-stream-1",
        chat("Hi", json!({"max_tokens": 3, "stream": true})),
        "/v1/chat/completions",
    )
    .await
    .unwrap();
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let line = log_line("log-stream-1").await;
    assert_eq!(line["status"], 200);
    assert!(line["completion_tokens"].as_u64().unwrap() >= 1, "{line}");
    // A refused request still gets its line, without generation fields.
    let r = send("log-bad-1", json!({"model": MODEL}), "/v1/chat/completions")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let line = log_line("log-bad-1").await;
    assert_eq!(line["status"], 400);
    assert!(line.get("model").is_none(), "{line}");
}

/// `POST /v1/responses`, whole: a `message` item with `output_text`, usage in the Responses
/// names, `incomplete` when `max_output_tokens` cut it; streamed: the typed events, whose
/// deltas add up to the whole answer, ending with the response object.
#[tokio::test]
async fn responses_whole_and_streamed() {
    let addr = shared();
    let body = json!({
        "model": MODEL,
        "instructions": "Answer in one short sentence.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}],
        "max_output_tokens": 5,
        "temperature": 0,
    });
    let (status, whole) = post(addr, "/v1/responses", body.clone()).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "response");
    assert!(whole["id"].as_str().unwrap().starts_with("resp_"));
    let item = &whole["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    let text = item["content"][0]["text"].as_str().unwrap();
    assert_eq!(item["content"][0]["type"], "output_text");
    assert!(!text.is_empty());
    let u = &whole["usage"];
    assert!(u["input_tokens"].as_u64().unwrap() > 0);
    let out = u["output_tokens"].as_u64().unwrap();
    assert!((1..=5).contains(&out), "{u}");
    if out == 5 {
        assert_eq!(whole["status"], "incomplete");
        assert_eq!(whole["incomplete_details"]["reason"], "max_output_tokens");
    } else {
        assert_eq!(whole["status"], "completed");
    }
    assert_eq!(whole["store"], false);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = client()
        .post(url(addr, "/v1/responses"))
        .bearer_auth(KEY)
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let raw = r.text().await.unwrap();
    let mut events = Vec::new();
    for block in raw.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let name = block.lines().find_map(|l| l.strip_prefix("event: "));
        let data = block.lines().find_map(|l| l.strip_prefix("data: "));
        if let (Some(name), Some(data)) = (name, data) {
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["type"], name, "event name and type agree");
            assert_eq!(v["sequence_number"], events.len() as u64);
            events.push(v);
        }
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
    assert!(matches!(
        *kinds.last().unwrap(),
        "response.completed" | "response.incomplete"
    ));
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        deltas, text,
        "greedy: the stream says what the whole response said"
    );
    let last = &events.last().unwrap()["response"];
    assert_eq!(last["output"][0]["content"][0]["text"], text);
    assert_eq!(last["usage"]["output_tokens"], u["output_tokens"]);

    // Stateless: a previous response id is refused, with OpenAI's error shape.
    let (status, err) = post(
        addr,
        "/v1/responses",
        json!({"model": MODEL, "input": "hi", "previous_response_id": "resp_x"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "previous_response_id");
}

/// A forced function call through `/v1/responses` comes back as a `function_call` item whose
/// arguments parse, and a follow-up turn with its output answers in text.
#[tokio::test]
async fn responses_function_call_round_trip() {
    let addr = shared();
    let tools = json!([{
        "type": "function",
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false},
    }]);
    let (status, r) = post(
        addr,
        "/v1/responses",
        json!({"model": MODEL, "input": "What is the weather in Paris?", "tools": tools,
               "tool_choice": "required", "max_output_tokens": 60, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let call = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("no function_call item: {r}"))
        .clone();
    assert_eq!(call["name"], "get_weather");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    let (status, r2) = post(
        addr,
        "/v1/responses",
        json!({"model": MODEL, "tools": tools, "max_output_tokens": 8, "temperature": 0,
        "input": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": call["call_id"], "name": "get_weather",
             "arguments": call["arguments"]},
            {"type": "function_call_output", "call_id": call["call_id"],
             "output": "{\"temperature_c\": 18, \"sky\": \"clear\"}"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{r2}");
    assert!(!r2["output"].as_array().unwrap().is_empty(), "{r2}");
}
