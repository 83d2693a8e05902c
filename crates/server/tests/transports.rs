//! The same routes over HTTP/1.1, HTTP/2 (h2c with prior knowledge; TLS with ALPN) and HTTP/3
//! (QUIC), each with a real client of its protocol: a streamed chat completion (SSE) gives the
//! same tokens on every one for the same seed, on the real SmolLM2 model.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes};
use common::{sse_payloads, start_server, Started, KEY};
use fluent_ai_candle_server::{ServerConfig, TlsSource};
use reqwest::Version;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

/// A sampled (not greedy) streamed chat: the seed decides every token.
fn stream_request() -> Value {
    json!({
        "messages": [{"role": "user", "content": "Tell me a short story about a robot."}],
        "max_tokens": 24,
        "temperature": 0.9,
        "seed": 1234,
        "stream": true,
        "logprobs": true,
    })
}

/// The tokens of a streamed chat body (from each chunk's `logprobs.content`), and the
/// content deltas joined; the body must end with `[DONE]`.
fn tokens_of(payloads: &[String]) -> (Vec<String>, String) {
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let mut tokens = Vec::new();
    let mut text = String::new();
    for p in &payloads[..payloads.len() - 1] {
        let v: Value = serde_json::from_str(p).expect("chunk JSON");
        let choice = &v["choices"][0];
        if let Some(c) = choice["delta"]["content"].as_str() {
            text.push_str(c);
        }
        for entry in choice["logprobs"]["content"]
            .as_array()
            .into_iter()
            .flatten()
        {
            tokens.push(entry["token"].as_str().expect("token").to_string());
        }
    }
    (tokens, text)
}

/// The plain server (HTTP/1.1 and h2c on one port).
fn plain() -> &'static Started {
    static S: OnceLock<Started> = OnceLock::new();
    S.get_or_init(|| start_server(ServerConfig::default().api_key(KEY)))
}

/// The TLS server (self-signed; HTTP/2 and HTTP/1.1 by ALPN; HTTP/3 on UDP).
fn tls() -> &'static Started {
    static S: OnceLock<Started> = OnceLock::new();
    S.get_or_init(|| {
        start_server(
            ServerConfig::default()
                .api_key(KEY)
                .tls(TlsSource::SelfSigned)
                .http3(true),
        )
    })
}

/// POSTs `body` and returns the protocol version and the whole body.
async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (Version, u16, String) {
    let r = client
        .post(url)
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .expect("request");
    let version = r.version();
    let status = r.status().as_u16();
    (version, status, r.text().await.expect("body"))
}

/// The reference: the streamed chat over plain HTTP/1.1.
async fn reference() -> (Vec<String>, String) {
    let client = reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let url = format!("http://{}/v1/chat/completions", plain().addr);
    let (version, status, body) = post(&client, &url, &stream_request()).await;
    assert_eq!((version, status), (Version::HTTP_11, 200));
    let (tokens, text) = tokens_of(&sse_payloads(&body));
    assert_eq!(tokens.len(), 24, "{text:?}");
    (tokens, text)
}

/// A rustls client trusting the test server's self-signed certificate, offering `alpn`.
fn tls_client_config(pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM"))
        .expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

#[tokio::test]
async fn h2c_prior_knowledge_streams_the_same_tokens_as_http1() {
    let expected = reference().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let base = format!("http://{}", plain().addr);
    let (version, status, body) = post(
        &h2,
        &format!("{base}/v1/chat/completions"),
        &stream_request(),
    )
    .await;
    assert_eq!((version, status), (Version::HTTP_2, 200), "{body}");
    assert_eq!(tokens_of(&sse_payloads(&body)), expected);

    // The other routes too: a collected completion, the model list, an error body.
    let mut whole = stream_request();
    whole["stream"] = json!(false);
    let (version, status, body) = post(&h2, &format!("{base}/v1/chat/completions"), &whole).await;
    assert_eq!((version, status), (Version::HTTP_2, 200));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], expected.1);
    let r = h2
        .get(format!("{base}/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!((r.version(), r.status().as_u16()), (Version::HTTP_2, 200));
    let r = h2.get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn tls_alpn_serves_http2_and_http1_with_the_same_tokens() {
    let expected = reference().await;
    let server = tls();
    let pem = server.certificate_pem.as_deref().expect("certificate");
    let url = format!(
        "https://localhost:{}/v1/chat/completions",
        server.addr.port()
    );
    for (alpn, want) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], Version::HTTP_2),
        (&[b"http/1.1".as_slice()][..], Version::HTTP_11),
    ] {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_client_config(pem, alpn))
            .resolve("localhost", server.addr)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let (version, status, body) = post(&client, &url, &stream_request()).await;
        assert_eq!((version, status), (want, 200), "{body}");
        assert_eq!(tokens_of(&sse_payloads(&body)), expected, "{want:?}");
    }
    // Plain HTTP on the TLS port is refused by the handshake, not served.
    let plain_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(plain_client
        .get(format!("http://{}/health", server.addr))
        .send()
        .await
        .is_err());
}

/// One HTTP/3 request: its status, headers and whole body.
async fn h3_request(
    addr: SocketAddr,
    pem: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, axum::http::HeaderMap, String) {
    let tls = tls_client_config(pem, &[b"h3"]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(addr, "localhost")
        .unwrap()
        .await
        .expect("QUIC handshake");
    let (mut driver, mut send_request) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .expect("h3 connection");
    let drive = tokio::spawn(async move {
        let _ = futures::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", addr.port()))
        .header("authorization", format!("Bearer {KEY}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let mut stream = send_request
        .send_request(req.body(()).unwrap())
        .await
        .expect("send request");
    if let Some(b) = body {
        stream
            .send_data(Bytes::from(serde_json::to_vec(b).unwrap()))
            .await
            .expect("send body");
    }
    stream.finish().await.expect("finish");
    let response = stream.recv_response().await.expect("response");
    let mut out = Vec::new();
    while let Some(mut piece) = stream.recv_data().await.expect("data") {
        out.extend_from_slice(&piece.copy_to_bytes(piece.remaining()));
    }
    drop(stream);
    drop(send_request);
    let _ = tokio::time::timeout(Duration::from_secs(5), drive).await;
    endpoint.close(0u32.into(), b"done");
    (
        response.status().as_u16(),
        response.headers().clone(),
        String::from_utf8(out).expect("UTF-8 body"),
    )
}

#[tokio::test]
async fn http3_streams_the_same_tokens_as_http1() {
    let expected = reference().await;
    let server = tls();
    let pem = server.certificate_pem.as_deref().expect("certificate");
    let addr = server.http3.expect("HTTP/3 served");
    assert_eq!(addr.port(), server.addr.port());

    // TLS responses advertise HTTP/3.
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls_client_config(pem, &[b"h2"]))
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{}/health", server.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["alt-svc"],
        format!("h3=\":{}\"; ma=86400", addr.port()).as_str()
    );

    let (status, headers, body) = h3_request(
        addr,
        pem,
        "POST",
        "/v1/chat/completions",
        Some(&stream_request()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(tokens_of(&sse_payloads(&body)), expected);

    let mut whole = stream_request();
    whole["stream"] = json!(false);
    let (status, _, body) =
        h3_request(addr, pem, "POST", "/v1/chat/completions", Some(&whole)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], expected.1);

    let (status, _, body) = h3_request(addr, pem, "GET", "/v1/models", None).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], common::MODEL);
    // The guard applies over HTTP/3 too: a body that is not JSON is 415.
    let (status, _, _) = h3_request(addr, pem, "POST", "/v1/chat/completions", None).await;
    assert_eq!(status, 415);
}

/// rustls' `ring` provider (deprecated in 0.23.48 only for lacking post-quantum key exchange,
/// which would need aws-lc-rs and cmake; classical key exchange is what this server offers).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
