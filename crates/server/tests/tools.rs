//! Tool calling over real loopback HTTP on the real SmolLM2 model: forced calls whose
//! arguments always validate, streamed calls, `auto`/`none`, a follow-up turn with a tool
//! result, and the 400s of bad tool input.

mod common;

use common::*;
use serde_json::{json, Value};

fn weather_params() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 40},
            "unit": {"enum": ["celsius", "fahrenheit"]}
        },
        "required": ["city", "unit"],
        "additionalProperties": false
    })
}

fn time_params() -> Value {
    json!({
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 40}, "hours": {"type": "integer", "minimum": 0, "maximum": 23}},
        "required": ["timezone"],
        "additionalProperties": false
    })
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather",
            "description": "Current weather of a city.", "parameters": weather_params()}},
        {"type": "function", "function": {"name": "get_time",
            "description": "Current time in a timezone.", "parameters": time_params()}}
    ])
}

fn request(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris right now?"}],
        "tools": tools(),
        "max_tokens": 90,
        "temperature": 0.7,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Checks every call against its tool's schema; returns (name, arguments) pairs.
fn validated_calls(message: &Value) -> Vec<(String, String)> {
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert!(!calls.is_empty());
    calls
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "function");
            assert!(c["id"].as_str().unwrap().starts_with("call_"));
            let name = c["function"]["name"].as_str().unwrap().to_string();
            let args = c["function"]["arguments"].as_str().unwrap().to_string();
            let schema = match name.as_str() {
                "get_weather" => weather_params(),
                "get_time" => time_params(),
                other => panic!("unknown tool {other}"),
            };
            let value: Value = serde_json::from_str(&args).expect("arguments are JSON");
            let validator = jsonschema::validator_for(&schema).unwrap();
            assert!(
                validator.is_valid(&value),
                "{name}({args}) does not validate"
            );
            (name, args)
        })
        .collect()
}

#[tokio::test]
async fn forced_calls_validate_over_many_seeds() {
    let addr = shared();
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    for seed in 0..10 {
        for (choice, parallel) in [(json!("required"), true), (named.clone(), false)] {
            let body = request(json!({
                "seed": seed, "tool_choice": choice, "parallel_tool_calls": parallel}));
            let (status, out) = post(addr, "/v1/chat/completions", body).await;
            assert_eq!(status, 200, "{out}");
            let choice0 = &out["choices"][0];
            // With parallel calls a small model may go on calling until `max_tokens`: the
            // calls are closed in time (still valid) and the reason says `length`.
            // A call started too late to fit is cut; it is returned as content, never as a
            // call (the whole calls before it are kept).
            let finish = choice0["finish_reason"].as_str().unwrap();
            assert!(
                finish == "tool_calls" || (parallel && finish == "length"),
                "{out}"
            );
            if finish == "tool_calls" {
                assert!(choice0["message"]["content"].is_null(), "{out}");
            }
            let calls = validated_calls(&choice0["message"]);
            if !parallel {
                assert_eq!(calls.len(), 1);
                assert_eq!(calls[0].0, "get_weather");
            }
        }
    }
}

/// Reads a chat stream into (content, calls as (name, arguments), finish reason).
async fn streamed(
    addr: std::net::SocketAddr,
    body: Value,
) -> (String, Vec<(String, String)>, String) {
    let r = post_raw(addr, "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = String::new();
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        let Some(choice) = chunk["choices"].as_array().unwrap().first() else {
            continue;
        };
        let delta = &choice["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        for piece in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = piece["index"].as_u64().expect("index") as usize;
            if index == calls.len() {
                assert!(piece["id"].as_str().unwrap().starts_with("call_"));
                assert_eq!(piece["type"], "function");
                calls.push((String::new(), String::new()));
            }
            let call = &mut calls[index];
            call.0
                .push_str(piece["function"]["name"].as_str().unwrap_or(""));
            call.1
                .push_str(piece["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (content, calls, finish)
}

#[tokio::test]
async fn streamed_calls_assemble_into_the_whole_response() {
    let addr = shared();
    for (seed, choice) in [
        (1, json!("required")),
        (2, json!("required")),
        (3, json!("auto")),
    ] {
        let body = request(json!({"seed": seed, "tool_choice": choice}));
        let (status, whole) = post(addr, "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, 200, "{whole}");
        let message = &whole["choices"][0]["message"];
        let whole_calls: Vec<(String, String)> = message["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["function"]["name"].as_str().unwrap().to_string(),
                    c["function"]["arguments"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut stream_body = body;
        stream_body["stream"] = json!(true);
        let (content, calls, finish) = streamed(addr, stream_body).await;
        assert_eq!(calls, whole_calls, "seed {seed}");
        assert_eq!(
            content,
            message["content"].as_str().unwrap_or(""),
            "seed {seed}"
        );
        assert_eq!(
            finish,
            whole["choices"][0]["finish_reason"].as_str().unwrap()
        );
        if choice == "required" {
            assert!(!calls.is_empty() && finish == "tool_calls");
        }
    }
}

#[tokio::test]
async fn auto_lets_the_model_choose_and_none_writes_text() {
    let addr = shared();
    for seed in 0..4 {
        let (status, out) =
            post(addr, "/v1/chat/completions", request(json!({"seed": seed}))).await;
        assert_eq!(status, 200, "{out}");
        let choice = &out["choices"][0];
        let message = &choice["message"];
        if message["tool_calls"].is_array() {
            assert_eq!(choice["finish_reason"], "tool_calls");
        } else {
            assert!(message["content"].is_string(), "{out}");
            assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
        }
        let (status, out) = post(
            addr,
            "/v1/chat/completions",
            request(json!({"seed": seed, "tool_choice": "none", "max_tokens": 20})),
        )
        .await;
        assert_eq!(status, 200, "{out}");
        assert!(out["choices"][0]["message"]["tool_calls"].is_null());
        assert!(out["choices"][0]["message"]["content"].is_string());
    }
}

#[tokio::test]
async fn a_follow_up_turn_with_a_tool_result_generates() {
    let addr = shared();
    let body = request(json!({
        "messages": [
            {"role": "user", "content": "What is the weather in Paris right now?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_abc", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "{\"temperature\": 21, \"sky\": \"clear\"}"}
        ],
        "max_tokens": 24,
        "seed": 5,
        "tool_choice": "none"
    }));
    let (status, out) = post(addr, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{out}");
    assert!(!out["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    // The same history with the model free to call again.
    let mut auto = body;
    auto["tool_choice"] = json!("auto");
    let (status, out) = post(addr, "/v1/chat/completions", auto).await;
    assert_eq!(status, 200, "{out}");
}

#[tokio::test]
async fn bad_tool_input_is_400() {
    let addr = shared();
    let user = json!([{"role": "user", "content": "hi"}]);
    let unsupported = json!([{"type": "function", "function": {"name": "pick",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}}}]);
    for (body, param) in [
        (
            request(json!({"tools": {"type": "function"}})),
            Some("tools"),
        ),
        (
            request(json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}})),
            Some("tool_choice"),
        ),
        (
            json!({"model": MODEL, "messages": user, "tool_choice": "required"}),
            Some("tool_choice"),
        ),
        (
            request(json!({"tool_choice": "required", "response_format": {"type": "json_object"}})),
            Some("tool_choice"),
        ),
        (
            request(json!({"tools": unsupported, "tool_choice": "required"})),
            None,
        ),
        (
            request(json!({"messages": [{"role": "user", "content": "hi"},
                {"role": "tool", "content": "42"}]})),
            Some("messages"),
        ),
    ] {
        let (status, out) = post(addr, "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {out}");
        assert_eq!(out["error"]["type"], "invalid_request_error", "{out}");
        if let Some(param) = param {
            assert_eq!(out["error"]["param"], param, "{out}");
        }
    }
    // The schema the compiler refuses is only compiled when a call is forced.
    let (status, out) = post(
        addr,
        "/v1/chat/completions",
        request(json!({"tools": unsupported, "max_tokens": 4})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
}
