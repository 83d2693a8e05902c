//! `/v1/embeddings`, `/tokenize` and `/detokenize` over real loopback HTTP on the real SmolLM2
//! model: OpenAI's (and vLLM's) shapes, the vectors' properties, and every refusal as a 400
//! with OpenAI's error JSON.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

const CAT: &str = "The cat sat on the mat.";
const CAT2: &str = "A cat was sitting on the mat.";
const TAX: &str = "Quarterly tax filings are due in April.";

fn vector(item: &Value) -> Vec<f32> {
    item["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

async fn embed(body: Value) -> Vec<Vec<f32>> {
    let (status, out) = post(shared(), "/v1/embeddings", body).await;
    assert_eq!(status, 200, "{out}");
    out["data"].as_array().unwrap().iter().map(vector).collect()
}

/// A 400 with OpenAI's error object (blaming `param` when given).
fn assert_400(status: u16, body: &Value, param: Option<&str>) {
    assert_eq!(status, 400, "{body}");
    let error = &body["error"];
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    if let Some(p) = param {
        assert_eq!(error["param"], p, "{body}");
    }
}

#[tokio::test]
async fn embeddings_have_openai_shape_unit_norm_and_meaning() {
    let (status, out) = post(
        shared(),
        "/v1/embeddings",
        json!({"model": MODEL, "input": [CAT, CAT2, TAX]}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["object"], "list");
    assert_eq!(out["model"], MODEL);
    let data = out["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let mut vectors = Vec::new();
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let v = vector(item);
        assert_eq!(v.len(), 576, "SmolLM2-135M's hidden size");
        assert!((dot(&v, &v).sqrt() - 1.0).abs() < 1e-5);
        vectors.push(v);
    }
    let tokens = out["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens >= 3);
    assert_eq!(out["usage"]["total_tokens"], tokens);
    let (similar, unrelated) = (dot(&vectors[0], &vectors[1]), dot(&vectors[0], &vectors[2]));
    assert!(similar > unrelated, "{similar} <= {unrelated}");

    // One text alone, again: the same vector as in the batch, and deterministic.
    let single = embed(json!({"input": CAT})).await;
    assert!(max_diff(&single[0], &vectors[0]) <= 1e-5);
    let other = embed(json!({"input": [TAX]})).await;
    assert!(max_diff(&other[0], &vectors[2]) <= 1e-5);
    assert_eq!(embed(json!({"input": CAT})).await, single);

    // Counted per route as every other request is.
    let (_, metrics) = get(shared(), "/metrics").await;
    assert!(
        metrics.contains(r#"route="/v1/embeddings",status="200""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn token_inputs_base64_pooling_and_dimensions() {
    let (_, tok) = post(shared(), "/tokenize", json!({"prompt": CAT})).await;
    let ids = tok["tokens"].clone();
    let text = embed(json!({"input": CAT})).await;
    assert_eq!(embed(json!({"input": ids})).await, text);
    let lists = embed(json!({"input": [ids, ids]})).await;
    assert_eq!(lists, vec![text[0].clone(), text[0].clone()]);

    // base64: the same floats, little-endian f32.
    let (status, out) = post(
        shared(),
        "/v1/embeddings",
        json!({"input": CAT, "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(out["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, text[0]);
    let float = embed(json!({"input": CAT, "encoding_format": "float"})).await;
    assert_eq!(float, text);

    let last = embed(json!({"input": CAT, "pooling": "last"})).await;
    assert_eq!(last[0].len(), 576);
    assert!(
        max_diff(&last[0], &text[0]) > 1e-3,
        "mean and last pooling differ"
    );

    let short = embed(json!({"input": CAT, "dimensions": 64})).await;
    assert_eq!(short[0].len(), 64);
    assert!((dot(&short[0], &short[0]).sqrt() - 1.0).abs() < 1e-5);
    assert_eq!(embed(json!({"input": CAT, "dimensions": 576})).await, text);
}

#[tokio::test]
async fn bad_embedding_requests_are_400_with_openai_errors() {
    let addr = shared();
    let (_, tok) = post(addr, "/tokenize", json!({"prompt": CAT})).await;
    let context = tok["max_model_len"].as_u64().unwrap() as usize;
    let cases = [
        (json!({"input": ""}), Some("input")),
        (json!({"input": []}), Some("input")),
        (json!({"input": [CAT, ""]}), Some("input")),
        (json!({"input": [[]]}), Some("input")),
        (json!({"input": [1, 49152]}), Some("input")),
        (json!({"input": vec![1u32; context + 1]}), Some("input")),
        (json!({"input": CAT, "dimensions": 0}), Some("dimensions")),
        (json!({"input": CAT, "dimensions": 577}), Some("dimensions")),
        (json!({"input": CAT, "dimensions": -3}), Some("dimensions")),
        (
            json!({"input": CAT, "encoding_format": "hex"}),
            Some("encoding_format"),
        ),
        (json!({"input": CAT, "pooling": "cls"}), Some("pooling")),
        (json!({"model": MODEL}), None),
        (json!({"input": {"text": CAT}}), None),
    ];
    for (body, param) in cases {
        let (status, out) = post(addr, "/v1/embeddings", body.clone()).await;
        assert_400(status, &out, param);
    }
    let (_, out) = post(
        addr,
        "/v1/embeddings",
        json!({"input": vec![1u32; context + 1]}),
    )
    .await;
    assert_eq!(out["error"]["code"], "context_length_exceeded", "{out}");

    let (status, out) = post(
        addr,
        "/v1/embeddings",
        json!({"model": "nope", "input": CAT}),
    )
    .await;
    assert_eq!(status, 404, "{out}");
    let r = client()
        .post(url(addr, "/v1/embeddings"))
        .json(&json!({"input": CAT}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn tokenize_and_detokenize_round_trip() {
    let addr = shared();
    let text = "Héllo wörld — 😀 tokens, 123!\nSecond line.";
    let (status, tok) = post(addr, "/tokenize", json!({"model": MODEL, "prompt": text})).await;
    assert_eq!(status, 200, "{tok}");
    let tokens = tok["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty());
    assert_eq!(tok["count"], tokens.len());
    assert_eq!(tok["max_model_len"], 8192, "SmolLM2's context");
    let (status, detok) = post(
        addr,
        "/detokenize",
        json!({"model": MODEL, "tokens": tok["tokens"]}),
    )
    .await;
    assert_eq!(status, 200, "{detok}");
    assert_eq!(detok["prompt"], text);

    // A chat: rendered by the template, with or without the assistant turn opened.
    let messages = json!([{"role": "user", "content": "Hi there"}]);
    let (status, open) = post(addr, "/tokenize", json!({"messages": messages})).await;
    assert_eq!(status, 200, "{open}");
    let (_, closed) = post(
        addr,
        "/tokenize",
        json!({"messages": messages, "add_generation_prompt": false}),
    )
    .await;
    let (open, closed) = (
        open["tokens"].as_array().unwrap(),
        closed["tokens"].as_array().unwrap(),
    );
    assert!(open.len() > closed.len());
    assert_eq!(&open[..closed.len()], &closed[..]);
    let (_, rendered) = post(addr, "/detokenize", json!({"tokens": open})).await;
    let rendered = rendered["prompt"].as_str().unwrap();
    assert!(rendered.contains("Hi there"), "{rendered}");
    assert!(
        rendered.ends_with("<|im_start|>assistant\n"),
        "{rendered:?}"
    );
}

#[tokio::test]
async fn bad_tokenize_requests_are_400_with_openai_errors() {
    let addr = shared();
    let (status, out) = post(addr, "/detokenize", json!({"tokens": [1, 49152]})).await;
    assert_400(status, &out, Some("tokens"));
    let (status, out) = post(addr, "/detokenize", json!({"tokens": [-1]})).await;
    assert_400(status, &out, None);
    let (status, out) = post(addr, "/tokenize", json!({})).await;
    assert_400(status, &out, Some("prompt"));
    let (status, out) = post(
        addr,
        "/tokenize",
        json!({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}),
    )
    .await;
    assert_400(status, &out, Some("prompt"));
    let (status, out) = post(addr, "/tokenize", json!({"messages": []})).await;
    assert_400(status, &out, Some("messages"));
    let (status, out) = post(
        addr,
        "/tokenize",
        json!({"messages": [{"role": "wizard", "content": "b"}]}),
    )
    .await;
    assert_400(status, &out, Some("messages"));
    for path in ["/tokenize", "/detokenize"] {
        let r = client()
            .post(url(addr, path))
            .json(&json!({"prompt": "a", "tokens": [1]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} needs the key");
    }
}
