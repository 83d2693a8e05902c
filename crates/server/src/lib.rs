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
//! | `GET /v1/models`, `GET /v1/models/{id}` | the models loaded |
//! | `POST /v1/models/load`, `POST /v1/models/unload` | hot swap, only from the models directory |
//! | `GET /v1/ws` | WebSocket: send the request JSON, receive one message per chunk, then `[DONE]` |
//! | `GET /health` | 200 `{"status":"ok"}`, 503 while draining |
//! | `GET /metrics` | Prometheus text: HTTP counters and each model's engine counters |
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
//! constant time), 404 for an unknown model, 413 above the body limit, 429 when a model's queue
//! is full and 503 while the server drains. A client that disconnects cancels its generation
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
mod error;
mod metrics;
pub mod openai;
mod params;
mod routes;
mod state;
mod stream;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluent_ai_candle_engine::{Device, EngineError};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{model_id, ServerConfig};
pub use error::{ApiError, ErrorKind, ServerError};
pub use params::{MAX_CHOICES, MAX_STOP, MAX_TOP_LOGPROBS};

use state::AppState;

/// Starts a server with `config` and runs it until Ctrl-C or SIGTERM.
pub async fn serve(config: ServerConfig) -> Result<(), ServerError> {
    let server = Server::bind(config).await?;
    eprintln!(
        "fluent-ai-candle: serving {} on http://{}",
        server.models().join(", "),
        server.local_addr()
    );
    server.run().await
}

/// A bound server with its models loaded, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
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

impl Server {
    /// Validates `config`, loads its models on the CPU and binds the listening socket.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        Self::bind_on(config, Device::Cpu).await
    }

    /// [`bind`](Self::bind) with the models on `device`.
    pub async fn bind_on(config: ServerConfig, device: Device) -> Result<Self, ServerError> {
        config.validate()?;
        let specs = config.model_specs();
        let addr = config.addr();
        let state = Arc::new(AppState::new(config, device));
        for spec in specs {
            let id = model_id(&spec);
            state
                .load(&id, spec.clone().into())
                .await
                .map_err(|e| match e {
                    EngineError::Model(source) => ServerError::Model { name: spec, source },
                    other => ServerError::Engine(other),
                })?;
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            state,
            stop: watch::channel(false).0,
        })
    }

    /// The address it listens on (the real port when the config asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The ids of the models loaded.
    pub fn models(&self) -> Vec<String> {
        self.state.registry.names()
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
    /// gracefully: new work gets 503 while requests in flight finish, for at most the
    /// configured bound; what is left then is cut.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let state = self.state.clone();
        let bound = state.config.shutdown_timeout;
        let (begun_tx, mut begun_rx) = watch::channel(None::<Instant>);
        let mut stop = self.stop.subscribe();
        let drain_state = state.clone();
        let graceful = async move {
            tokio::select! {
                _ = signal => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            let begun = Instant::now();
            drain_state.draining.store(true, Ordering::SeqCst);
            begun_tx.send_replace(Some(begun));
            while drain_state.in_flight.load(Ordering::SeqCst) > 0 && begun.elapsed() < bound {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Anything still running is cut now; its connection then closes.
            drain_state.abort.send_replace(true);
        };
        let app = routes::router(state.clone());
        let server = axum::serve(self.listener, app).with_graceful_shutdown(graceful);
        let hard_stop = async move {
            let begun = loop {
                if let Some(t) = *begun_rx.borrow_and_update() {
                    break t;
                }
                if begun_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::time::sleep_until((begun + bound + Duration::from_secs(1)).into()).await;
        };
        tokio::select! {
            r = server => r.map_err(ServerError::Io),
            _ = hard_stop => Ok(()),
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
