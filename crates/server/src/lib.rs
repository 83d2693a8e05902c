//! An OpenAI-compatible HTTP server over the fluent-ai-candle engine, on axum and tokio.
//!
//! `fluent-ai-candle serve` calls [`serve`] with a [`ServerConfig`]. The server loads each
//! configured model into the engine's [`ModelRegistry`](fluent_ai_candle_engine::ModelRegistry)
//! (one scheduler per model, continuous batching, `--max-concurrent` sequences decoded
//! together) and answers:
//!
//! | Route | What |
//! |---|---|
//! | `POST /v1/chat/completions` | OpenAI chat completions: messages through the model's chat template; `stream: true` gives server-sent events (`data: {chunk}` … `data: [DONE]`) |
//! | `POST /v1/completions` | OpenAI text completions, same streaming |
//! | `GET /v1/models`, `GET /v1/models/{id}` | the models loaded, each with the device it runs on |
//! | `POST /v1/models/load`, `POST /v1/models/unload` | hot swap, only from the models directory |
//! | `GET /v1/ws` | WebSocket: send the request JSON, receive one message per chunk, then `[DONE]` |
//! | `GET /health`, `GET /health/ready` | readiness: 200 `{"status":"ok","ready":true,"models":[…]}`; 503 while loading, with no model, or draining |
//! | `GET /health/live` | liveness: 200 whenever the process answers |
//! | `GET /` | the built-in chat page (one embedded HTML file, strict CSP; no key needed for the page itself, its API calls send the key typed in; off with `chat_page: false`) |
//! | `GET /metrics` | Prometheus text: HTTP and connection counters, readiness, each model's engine counters (behind the key when one is set, unless `metrics_open`) |
//!
//! Requests take OpenAI's fields (`max_tokens`/`max_completion_tokens`, `temperature`, `top_p`,
//! `n`, `stop`, `seed`, `frequency_penalty`, `presence_penalty`, `logit_bias`,
//! `response_format` with `json_object` or `json_schema`, `stream_options.include_usage`) and
//! extensions: `top_k`, `min_p`, `typical_p`, `mirostat` (+ `mirostat_tau`, `mirostat_eta`),
//! `repetition_penalty`, `grammar` (GBNF), `regex`, `ignore_eos` and `close_constraint` (`false`:
//! cut a constrained output at `max_tokens` instead of closing it in time). Every sampling decision is
//! the sampling crate's; `response_format`, `grammar` and `regex` constrain decoding through
//! the constraints crate, so the output follows the schema by construction.
//!
//! Errors use OpenAI's JSON (`{"error": {"message", "type", "param", "code"}}`) with the
//! matching status: 400 for bad parameters, 401 for a missing or wrong API key (compared in
//! constant time, `Bearer` in any case), 403 for a WebSocket from a browser origin not listed,
//! 404 for an unknown model, 408 for a body that did not arrive in time, 409 for a hot load past
//! `max_models`, 413 above the body limit, 415 for a POST body not declared
//! `application/json`, 429 when a model's queue is full and 503 while the server loads or
//! drains (and, written raw before closing, to a connection past `max_connections`). Error
//! bodies show paths relative to the models directory, never absolute ones.
//!
//! Transports: the listening port serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) side
//! by side (hyper-util's `auto` connection reads the HTTP/2 preface); with
//! [`ServerConfig::tls`] it serves TLS instead, HTTP/2 or HTTP/1.1 chosen by ALPN (rustls);
//! with [`ServerConfig::http3`] as well, HTTP/3 over QUIC (quinn + h3) on the UDP port of the
//! same number, advertised by `alt-svc` on the TLS responses. Every route, SSE streaming
//! included, is the same router on all of them (WebSocket upgrades are HTTP/1.1 only).
//!
//! Connections are served by an accept loop of this crate over hyper (see the `conn` module):
//! a cap on open connections, a header timeout, an idle timeout (also for a client that stops
//! reading) and, in the request guard, a body timeout; CORS is off unless origins are listed. A client that disconnects cancels its generation
//! (dropping an engine stream frees its slot). On shutdown (Ctrl-C, SIGTERM or a
//! [`ShutdownHandle`]) new work gets 503 while requests in flight finish, for at most
//! [`ServerConfig::shutdown_timeout`]; then whatever is left is cut.
//!
//! ```
//! use fluent_ai_candle_server::ServerConfig;
//! let config = ServerConfig::default()
//!     .model("smollm2-135m-instruct")
//!     .port(8080)
//!     .max_concurrent(8);
//! assert!(config.validate().is_ok());
//! assert!(config.addr().ip().is_loopback());
//! ```
//!
//! Starting it (it runs until Ctrl-C):
//!
//! ```no_run
//! # async fn run() -> Result<(), fluent_ai_candle_server::ServerError> {
//! use fluent_ai_candle_server::{serve, ServerConfig};
//! serve(ServerConfig::default().model("smollm2-135m-instruct")).await
//! # }
//! ```
//!
//! Or in-process on a free port, stopped from code:
//!
//! ```no_run
//! # async fn run() -> Result<(), fluent_ai_candle_server::ServerError> {
//! use fluent_ai_candle_server::{Server, ServerConfig};
//! let server = Server::bind(ServerConfig::default().port(0)).await?;
//! println!("listening on http://{}", server.local_addr());
//! let stop = server.shutdown_handle();
//! let running = tokio::spawn(server.run());
//! stop.shutdown();
//! running.await.expect("server task")?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod config;
mod conn;
mod error;
mod guard;
mod health;
mod http3;
mod metrics;
pub mod openai;
mod page;
mod params;
pub mod reqlog;
pub mod responses;
mod routes;
mod state;
mod stream;
mod tls;
mod ws;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluent_ai_candle_engine::{cache, Device, EngineError};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{model_id, ServerConfig, TlsSource};
pub use error::{ApiError, ErrorKind, ServerError};
pub use params::{MAX_CHOICES, MAX_STOP, MAX_TOP_LOGPROBS};

use state::AppState;

/// Starts a server with `config` and runs it until Ctrl-C or SIGTERM. It listens at once and
/// loads the models while answering (`/health` is 503 `loading` until they are loaded).
pub async fn serve(config: ServerConfig) -> Result<(), ServerError> {
    serve_on(config, Device::Cpu).await
}

/// [`serve`] with the models on `device` (`fluent-ai-candle serve --device`).
pub async fn serve_on(config: ServerConfig, device: Device) -> Result<(), ServerError> {
    let server = Server::listen_on(config, device).await?;
    let scheme = server.scheme();
    eprintln!(
        "fluent-ai-candle: listening on {scheme}://{} ({}; {}), loading {}",
        server.local_addr(),
        fluent_ai_candle_engine::device_name(&server.state.device),
        server.protocols(),
        server.pending.join(", ")
    );
    if server.state.config.tls == Some(TlsSource::SelfSigned) {
        if let Some(pem) = server.tls_certificate_pem() {
            let path = std::env::temp_dir().join(format!(
                "fluent-ai-candle-self-signed-{}.pem",
                server.local_addr().port()
            ));
            match std::fs::write(&path, pem) {
                Ok(()) => eprintln!(
                    "fluent-ai-candle: self-signed certificate (development only) in {}: \
                     curl --cacert {} https://localhost:{}/health",
                    path.display(),
                    path.display(),
                    server.local_addr().port()
                ),
                Err(e) => eprintln!(
                    "fluent-ai-candle: self-signed certificate not written to {}: {e}",
                    path.display()
                ),
            }
        }
    }
    if server.state.config.chat_page {
        eprintln!(
            "fluent-ai-candle: chat page at {scheme}://{}/",
            server.local_addr()
        );
    }
    server.run().await
}

/// A bound server, ready to [`run`](Server::run): its models loaded ([`bind`](Server::bind)),
/// or loaded by `run` while it already answers ([`listen`](Server::listen)).
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    /// Start-up models `run` still has to load.
    pending: Vec<String>,
    limits: conn::Limits,
    /// TLS and `alt-svc` of the TCP connections.
    transport: conn::Transport,
    /// The leaf certificate in PEM, when TLS is on.
    certificate_pem: Option<String>,
    /// The HTTP/3 endpoint (UDP), when on.
    quic: Option<quinn::Endpoint>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

/// Starts a graceful shutdown of a running [`Server`] from anywhere (cheap to clone).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: watch::Sender<bool>,
}

impl ShutdownHandle {
    /// Begins the shutdown: new requests get 503, requests in flight finish within the bound.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

/// Loads the start-up models one after the other into the registry, then marks the server
/// ready (`loading` cleared).
async fn load_models(state: &Arc<AppState>, specs: Vec<String>) -> Result<(), ServerError> {
    for spec in specs {
        let id = model_id(&spec);
        // SIGTERM during a start-up load cancels it (before its next tensor).
        let guard = routes::LoadGuard::new(state);
        let loaded = state
            .load(&id, spec.clone().into(), guard.cancel.clone())
            .await;
        drop(guard);
        loaded.map_err(|e| match e {
            EngineError::Model(source) => ServerError::Model { name: spec, source },
            other => ServerError::Engine(other),
        })?;
    }
    state.loading.store(false, Ordering::SeqCst);
    Ok(())
}

/// Keeps the directories models come from out of error bodies.
fn hide_model_dirs(config: &ServerConfig) {
    error::register_private_dir(&config.resolved_models_dir());
    error::register_private_dir(&cache::cache_dir());
    for spec in config.model_specs() {
        if let Some(parent) = Path::new(&spec)
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            error::register_private_dir(&parent);
        }
    }
}

impl Server {
    /// Validates `config`, loads its models on the CPU and binds the listening socket.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        Self::bind_on(config, Device::Cpu).await
    }

    /// [`bind`](Self::bind) with the models on `device`.
    pub async fn bind_on(config: ServerConfig, device: Device) -> Result<Self, ServerError> {
        let mut server = Self::listen_on(config, device).await?;
        let specs = std::mem::take(&mut server.pending);
        load_models(&server.state, specs).await?;
        Ok(server)
    }

    /// Validates `config` and binds the listening socket without loading the models: [`run`]
    /// loads them while already answering, `/health` being 503 `loading` until then (a load
    /// failure ends `run` with the error).
    ///
    /// [`run`]: Self::run
    pub async fn listen(config: ServerConfig) -> Result<Self, ServerError> {
        Self::listen_on(config, Device::Cpu).await
    }

    /// [`listen`](Self::listen) with the models on `device`.
    pub async fn listen_on(config: ServerConfig, device: Device) -> Result<Self, ServerError> {
        config.validate()?;
        hide_model_dirs(&config);
        let limits = conn::Limits {
            max_connections: conn::fit_to_fd_limit(config.max_connections),
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
        };
        let pending = config.model_specs();
        let addr = config.addr();
        let state = Arc::new(AppState::new(config, device));
        state.loading.store(true, Ordering::SeqCst);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener.local_addr()?;
        let mut transport = conn::Transport::default();
        let mut certificate_pem = None;
        let mut quic = None;
        if let Some(source) = &state.config.tls {
            let certificate = tls::Certificate::load(source, addr.ip())?;
            transport.tls = Some(tokio_rustls::TlsAcceptor::from(certificate.tcp_config()?));
            if state.config.http3 {
                // The same port number over UDP, as browsers expect from `alt-svc`.
                quic = Some(http3::bind(
                    addr,
                    certificate.quic_config()?,
                    state.config.idle_timeout,
                )?);
                transport.alt_svc = axum::http::HeaderValue::from_str(&format!(
                    "h3=\":{}\"; ma=86400",
                    addr.port()
                ))
                .ok();
            }
            certificate_pem = Some(certificate.leaf_pem());
        }
        Ok(Self {
            listener,
            addr,
            state,
            stop: watch::channel(false).0,
            pending,
            limits,
            transport,
            certificate_pem,
            quic,
        })
    }

    /// `https` when TLS is on, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.transport.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The protocols served, in words (for the start-up line).
    pub fn protocols(&self) -> &'static str {
        match (self.transport.tls.is_some(), self.quic.is_some()) {
            (false, _) => "HTTP/1.1 and h2c",
            (true, false) => "TLS: HTTP/2 and HTTP/1.1 by ALPN",
            (true, true) => "TLS: HTTP/2 and HTTP/1.1 by ALPN; HTTP/3 on UDP",
        }
    }

    /// The server's TLS certificate (the leaf, PEM), when TLS is on: what a client must trust
    /// to reach a [`TlsSource::SelfSigned`] server.
    pub fn tls_certificate_pem(&self) -> Option<&str> {
        self.certificate_pem.as_deref()
    }

    /// The UDP address HTTP/3 is served on, when it is.
    pub fn http3_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|q| q.local_addr().ok())
    }

    /// The address it listens on (the real port when the config asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The ids of the models loaded.
    pub fn models(&self) -> Vec<String> {
        self.state.registry.names()
    }

    /// The connections served at once at most: the configured cap, lowered when the
    /// process's open-file limit (raised to its hard limit at start) is smaller.
    pub fn max_connections(&self) -> usize {
        self.limits.max_connections
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            stop: self.stop.clone(),
        }
    }

    /// Serves until Ctrl-C, SIGTERM or [`ShutdownHandle::shutdown`], then shuts down
    /// gracefully.
    pub async fn run(self) -> Result<(), ServerError> {
        let mut stop = self.stop.subscribe();
        let signal = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = os_signal() => {}
            }
        };
        self.run_until(signal).await
    }

    /// Serves until `signal` completes (or [`ShutdownHandle::shutdown`]), then shuts down
    /// gracefully: the server reports itself not ready and new work gets 503 (with
    /// `Connection: close`) while requests in flight finish, for at most the configured
    /// bound; then what is left is cut, the listener closes and `run_until` returns.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            listener,
            state,
            stop,
            pending,
            limits,
            transport,
            quic,
            ..
        } = self;
        let bound = state.config.shutdown_timeout;
        let app = routes::router(state.clone());
        // Outermost, so a preflight is answered before the key is asked for.
        let app = match guard::cors_layer(&state.config.cors_origins) {
            Some(cors) => app.layer(cors),
            None => app,
        };
        let (close_tx, close_rx) = watch::channel(false);
        let mut quic_serving = quic
            .map(|endpoint| tokio::spawn(http3::serve(endpoint, app.clone(), close_rx.clone())));
        let mut serving = tokio::spawn(conn::serve(
            listener,
            app,
            limits,
            close_rx,
            state.connections.clone(),
            transport,
        ));

        let mut stop = stop.subscribe();
        let shutdown = async move {
            tokio::select! {
                _ = signal => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        };
        tokio::pin!(shutdown);
        let background = !pending.is_empty();
        let loading = load_models(&state, pending);
        tokio::pin!(loading);
        let mut loaded = !background;
        let mut failure = None;
        loop {
            tokio::select! {
                r = &mut loading, if !loaded => {
                    loaded = true;
                    match r {
                        Ok(()) => eprintln!(
                            "fluent-ai-candle: ready, serving {}",
                            state.registry.names().join(", ")
                        ),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                _ = &mut shutdown => break,
                r = &mut serving => {
                    return Err(ServerError::Io(std::io::Error::other(format!(
                        "the accept loop stopped: {r:?}"
                    ))));
                }
            }
        }

        let begun = Instant::now();
        state.draining.store(true, Ordering::SeqCst);
        while state.in_flight.load(Ordering::SeqCst) > 0 && begun.elapsed() < bound {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Anything still running is cut now; its connection then closes.
        state.abort.send_replace(true);
        close_tx.send_replace(true);
        if tokio::time::timeout(Duration::from_secs(1), &mut serving)
            .await
            .is_err()
        {
            serving.abort();
        }
        if let Some(quic) = &mut quic_serving {
            if tokio::time::timeout(Duration::from_secs(2), &mut *quic)
                .await
                .is_err()
            {
                quic.abort();
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
async fn os_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
