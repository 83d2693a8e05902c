//! HTTP/3: the same router over QUIC (quinn, with hyperium's h3 on top), on the UDP port of
//! the same number as the TCP listener, when TLS is configured and `http3` is on.
//!
//! Each request stream becomes an `axum` request whose body streams from the QUIC stream (so
//! the [guard](crate::guard)'s size and time limits apply as over TCP); the response head is
//! sent, then each body piece as an HTTP/3 DATA frame as soon as the router yields it (an SSE
//! event per chunk), then the stream is finished. A client that resets its stream makes the
//! next write fail, which drops the response body and with it the engine stream: the
//! generation is cancelled as for a closed TCP connection.
//!
//! QUIC runs over one UDP socket, so the TCP layer's connection cap (a file-descriptor guard)
//! does not apply; an idle connection is closed by QUIC's own idle timeout (the server's
//! `idle_timeout`), and at most 100 requests per connection run at once (QUIC stream limit).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use axum::Router;
use bytes::Buf;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::error::ServerError;

/// Concurrent request streams per QUIC connection.
const MAX_STREAMS: u32 = 100;

/// Binds the QUIC endpoint at `addr` (UDP) with `tls` (ALPN `h3`).
pub(crate) fn bind(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    idle_timeout: Duration,
) -> Result<quinn::Endpoint, ServerError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ServerError::Config(format!("TLS for QUIC: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_STREAMS.into());
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle_timeout) {
        transport.max_idle_timeout(Some(idle));
    }
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr).map_err(|source| ServerError::Bind { addr, source })
}

/// Accepts QUIC connections on `endpoint` and serves `app` on each until `close` turns true;
/// then every connection is told to go away (GOAWAY: requests in flight finish, new ones are
/// refused) and this returns once all have ended (the caller bounds the wait).
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    app: Router,
    mut close: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = close.wait_for(|c| *c) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            i = endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { break };
        let app = app.clone();
        let close = close.clone();
        connections.spawn(async move {
            if let Ok(conn) = incoming.await {
                connection(conn, app, close).await;
            }
        });
    }
    // No new connections; the open ones drain.
    endpoint.set_server_config(None);
    while connections.join_next().await.is_some() {}
    endpoint.close(0u32.into(), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// Serves the requests of one QUIC connection.
async fn connection(conn: quinn::Connection, app: Router, mut close: watch::Receiver<bool>) {
    let Ok(mut h3) = h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await
    else {
        return;
    };
    let mut requests = JoinSet::new();
    let mut closing = false;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = close.wait_for(|c| *c), if !closing => None,
            Some(_) = requests.join_next(), if !requests.is_empty() => continue,
            a = h3.accept() => Some(a),
        };
        let Some(accepted) = accepted else {
            closing = true;
            // GOAWAY: `accept` answers `None` once the requests in flight are done.
            if h3.shutdown(0).await.is_err() {
                break;
            }
            continue;
        };
        match accepted {
            Ok(Some(resolver)) => {
                let app = app.clone();
                requests.spawn(async move {
                    if let Ok((req, stream)) = resolver.resolve_request().await {
                        request(req, stream, app).await;
                    }
                });
            }
            // The client went away, or GOAWAY was answered.
            Ok(None) | Err(_) => break,
        }
    }
    while requests.join_next().await.is_some() {}
}

/// Answers one request stream through the router.
async fn request(
    head: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    app: Router,
) {
    let (mut send, recv) = stream.split();
    // The body streams from QUIC; the guard limits its size and arrival time.
    let body = futures::stream::unfold(Some(recv), |recv| async move {
        let mut recv = recv?;
        match recv.recv_data().await {
            Ok(Some(mut data)) => Some((Ok(data.copy_to_bytes(data.remaining())), Some(recv))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    });
    let req = head.map(|()| Body::from_stream(body));
    let response = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (mut parts, body) = response.into_parts();
    // Connection-specific headers do not exist in HTTP/3 (RFC 9114 §4.2).
    parts.headers.remove(axum::http::header::CONNECTION);
    if send
        .send_response(Response::from_parts(parts, ()))
        .await
        .is_err()
    {
        return;
    }
    let mut data = body.into_data_stream();
    while let Some(piece) = data.next().await {
        let Ok(piece) = piece else { break };
        if send.send_data(piece).await.is_err() {
            // The client reset the stream: dropping the body cancels the generation.
            return;
        }
    }
    let _ = send.finish().await;
}
