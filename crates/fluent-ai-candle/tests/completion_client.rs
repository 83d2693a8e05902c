//! `CompletionClient`: the engine in-process and the HTTP client against this project's server
//! (spawned here) give the same greedy text for the same request, whole and streamed, on the
//! real SmolLM2 model.

use std::net::SocketAddr;
use std::time::Duration;

use fluent_ai_candle::client::{ClientError, CompletionClient, HttpCompletionClient};
use fluent_ai_candle::{
    CandleClientBuilder, CandleCompletionRequest, DeviceType, FinishReason, Prompt,
};
use fluent_ai_candle_server::{Server, ServerConfig};
use futures::StreamExt;

const MODEL: &str = "smollm2-135m-instruct";

/// Starts the server on a free port in a runtime of its own; returns its address.
fn spawn_server(key: &'static str) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let config = ServerConfig::default().model(MODEL).port(0).api_key(key);
            let server = Server::bind(config).await.expect("server starts");
            tx.send(server.local_addr()).unwrap();
            server.run().await.expect("server runs");
        });
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("server ready")
}

/// The text, finish reason and completion tokens of a whole completion and of a stream.
async fn both_ways(
    client: &dyn CompletionClient,
    request: &CandleCompletionRequest,
) -> [(String, FinishReason, usize); 2] {
    let whole = client.complete(request).await.expect("complete");
    let choice = &whole.choices[0];
    let mut stream = client.stream(request).await.expect("stream");
    let mut text = String::new();
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        text.push_str(chunk.text());
        if chunk.finish_reason().is_some() {
            last = Some(chunk);
        }
    }
    let last = last.expect("a finishing chunk");
    [
        (
            choice.text.clone(),
            choice.finish_reason,
            whole.usage.completion_tokens,
        ),
        (
            text,
            last.finish_reason().unwrap(),
            last.usage
                .expect("usage on the last chunk")
                .completion_tokens,
        ),
    ]
}

#[tokio::test]
async fn in_process_and_http_clients_give_the_same_greedy_text() {
    if let Err(e) = fluent_ai_candle::engine::cache::resolve(MODEL) {
        panic!("this test needs {MODEL}: {e}. Run `cargo xtask fetch-models` first.");
    }
    let addr = spawn_server("k3y");
    let generator = CandleClientBuilder::new()
        .model_path(MODEL)
        .device_type(DeviceType::Cpu)
        .build()
        .expect("generator");
    let http = HttpCompletionClient::new(format!("http://{addr}/v1")).api_key("k3y");
    let clients: [(&str, &dyn CompletionClient); 2] = [("in-process", &generator), ("http", &http)];

    let chat = CandleCompletionRequest {
        max_tokens: Some(24),
        temperature: Some(0.0),
        ..CandleCompletionRequest::new(Prompt::user("Name three colours."))
    };
    let text = CandleCompletionRequest {
        prompt: "The capital of France is".to_string(),
        max_tokens: Some(12),
        temperature: Some(0.0),
        stop: vec!["\n\n".into()],
        ..Default::default()
    };
    for request in [&chat, &text] {
        let mut results = Vec::new();
        for (name, client) in clients {
            let r = both_ways(client, request).await;
            assert!(!r[0].0.is_empty(), "{name}: empty output");
            assert_eq!(r[0], r[1], "{name}: whole and streamed differ");
            results.push(r[0].clone());
        }
        assert_eq!(results[0], results[1], "in-process vs HTTP");
    }

    // Errors are typed on both sides: the engine's refusal, the server's 4xx, a wrong key.
    let bad = CandleCompletionRequest {
        max_tokens: Some(0),
        ..chat.clone()
    };
    assert!(matches!(
        generator.complete(&bad).await,
        Err(ClientError::Engine(_))
    ));
    assert!(matches!(
        http.complete(&bad).await,
        Err(ClientError::Api { status: 400, .. })
    ));
    let wrong_key = HttpCompletionClient::new(format!("http://{addr}")).api_key("nope");
    assert!(matches!(
        wrong_key.stream(&chat).await.err(),
        Some(ClientError::Api { status: 401, .. })
    ));
}
