//! [`ServerConfig`]: what `fluent-ai-candle serve` passes to [`serve`](crate::serve).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ServerError;

/// Everything the server needs to start. `Default` is the CLI's defaults: SmolLM2 on
/// `127.0.0.1:8080`, no API key, 16 sequences decoded together, 64 queued per model.
///
/// ```
/// use fluent_ai_candle_server::ServerConfig;
/// let config = ServerConfig::default()
///     .model("smollm2-135m-instruct")
///     .port(0)
///     .api_key("secret")
///     .max_concurrent(4);
/// assert_eq!(config.addr().to_string(), "127.0.0.1:0");
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Models to load at start (known names or GGUF paths); the first is the default model.
    pub models: Vec<String>,
    /// Address to listen on (loopback by default).
    pub host: IpAddr,
    /// Port (0 picks a free one; see [`Server::local_addr`](crate::Server::local_addr)).
    pub port: u16,
    /// When set, every `/v1/*` request must send `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Sequences decoded together per model (the batch size).
    pub max_concurrent: usize,
    /// Requests waiting per model; one more is refused with 429.
    pub max_queued: usize,
    /// The only directory `POST /v1/models/load` reads from (default: the model cache).
    pub models_dir: Option<PathBuf>,
    /// Largest request body in bytes (413 above it).
    pub body_limit: usize,
    /// How long a shutdown waits for requests in flight before cutting them.
    pub shutdown_timeout: Duration,
    /// `max_tokens` of a chat request that sets none (completions default to 16, as OpenAI).
    pub default_max_tokens: usize,
    /// How streams are chunked by default (tokens per chunk, how long a partial chunk may
    /// wait, chunks buffered per stream); a request may override the first two with
    /// `stream_chunk_size` and `stream_buffer_timeout_ms`.
    pub streaming: fluent_ai_candle_engine::StreamingConfig,
    /// Open connections at most; one more is answered 503 and closed at once (it never holds a
    /// file descriptor). Lowered at start to fit the process's open-file limit.
    pub max_connections: usize,
    /// A new connection must deliver a complete request head within this (and a keep-alive
    /// connection, once the first byte of its next request arrives); else it is closed.
    pub header_timeout: Duration,
    /// A request body must arrive completely within this (408 otherwise).
    pub body_timeout: Duration,
    /// A keep-alive connection waiting for its next request, or one whose client stopped
    /// reading its response, is closed after this.
    pub idle_timeout: Duration,
    /// Browser origins (`scheme://host[:port]`) allowed by CORS and to open WebSockets; empty
    /// (the default) refuses every browser origin.
    pub cors_origins: Vec<String>,
    /// Serve `/metrics` without the API key even when one is set.
    pub metrics_open: bool,
    /// Models loaded at once at most (start-up models included); a hot load past it is 409.
    pub max_models: usize,
    /// Serve the built-in chat page at `GET /` (on by default; off: `/` is 404).
    pub chat_page: bool,
    /// TLS on the listening port (HTTPS: HTTP/2 or HTTP/1.1 chosen by ALPN); `None` (the
    /// default) serves plain HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on it.
    pub tls: Option<TlsSource>,
    /// Also serve HTTP/3 (QUIC) on the same port number over UDP; needs `tls`. TLS responses
    /// then advertise it with `alt-svc`.
    pub http3: bool,
}

/// Where the server's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1).
    Files {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// A certificate made at start for `localhost`, `127.0.0.1`, `::1` and the listening host
    /// (development only: clients must trust it explicitly, e.g. `curl --cacert`, or skip
    /// verification); see [`Server::tls_certificate_pem`](crate::Server::tls_certificate_pem).
    SelfSigned,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            api_key: None,
            max_concurrent: 16,
            max_queued: 64,
            models_dir: None,
            body_limit: 2 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            default_max_tokens: 512,
            streaming: fluent_ai_candle_engine::StreamingConfig::default(),
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            cors_origins: Vec::new(),
            metrics_open: false,
            max_models: 4,
            chat_page: true,
            tls: None,
            http3: false,
        }
    }
}

impl ServerConfig {
    /// Adds a model to load (the first added is the default).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.models.push(model.into());
        self
    }

    /// Sets the host.
    pub fn host(mut self, host: IpAddr) -> Self {
        self.host = host;
        self
    }

    /// Sets the port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Requires this API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the sequences decoded together per model.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// Sets the requests that may wait per model.
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n;
        self
    }

    /// Sets the directory hot-swapped models are loaded from.
    pub fn models_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.models_dir = Some(dir.into());
        self
    }

    /// Sets the request body limit in bytes.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets how long shutdown waits for requests in flight.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets the most open connections.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the time a request head may take to arrive.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets the time a request body may take to arrive.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Sets how long an idle keep-alive connection (or a stalled response) is kept.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Allows a browser origin (CORS and WebSocket `Origin`), e.g. `https://app.example.com`.
    pub fn cors_origin(mut self, origin: impl Into<String>) -> Self {
        self.cors_origins.push(origin.into());
        self
    }

    /// Serves `/metrics` without the API key.
    pub fn metrics_open(mut self, open: bool) -> Self {
        self.metrics_open = open;
        self
    }

    /// Sets the most models loaded at once.
    pub fn max_models(mut self, n: usize) -> Self {
        self.max_models = n;
        self
    }

    /// Serves the chat page at `/` (`true`) or not (`false`: 404).
    pub fn chat_page(mut self, on: bool) -> Self {
        self.chat_page = on;
        self
    }

    /// Serves TLS on the listening port with this certificate.
    pub fn tls(mut self, source: TlsSource) -> Self {
        self.tls = Some(source);
        self
    }

    /// Also serves HTTP/3 over QUIC (UDP, same port number); needs [`tls`](Self::tls).
    pub fn http3(mut self, on: bool) -> Self {
        self.http3 = on;
        self
    }

    /// The socket address to bind.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The models to load: the configured ones, or the default model when none is given.
    pub fn model_specs(&self) -> Vec<String> {
        if self.models.is_empty() {
            vec![fluent_ai_candle_engine::cache::DEFAULT_MODEL.to_string()]
        } else {
            self.models.clone()
        }
    }

    /// The hot-swap directory: `models_dir`, else the model cache.
    pub fn resolved_models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(fluent_ai_candle_engine::cache::cache_dir)
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ServerError> {
        if self.max_concurrent == 0 || self.max_queued == 0 {
            return Err(ServerError::Config(
                "max_concurrent and max_queued must be at least 1".into(),
            ));
        }
        if self.body_limit < 1024 {
            return Err(ServerError::Config(
                "body_limit must be at least 1024 bytes".into(),
            ));
        }
        if self.streaming.validate().is_err() {
            return Err(ServerError::Config(
                "streaming chunk size and buffer size must be ≥ 1".into(),
            ));
        }
        if self.default_max_tokens == 0 {
            return Err(ServerError::Config("default_max_tokens must be ≥ 1".into()));
        }
        if matches!(&self.api_key, Some(k) if k.is_empty()) {
            return Err(ServerError::Config("the API key must not be empty".into()));
        }
        if self.max_connections == 0 {
            return Err(ServerError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        for (name, t) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if t < Duration::from_millis(10) {
                return Err(ServerError::Config(format!(
                    "{name} must be at least 10 ms, got {t:?}"
                )));
            }
        }
        if self.max_models == 0 || self.model_specs().len() > self.max_models {
            return Err(ServerError::Config(format!(
                "max_models ({}) must be at least 1 and cover the {} start-up model(s)",
                self.max_models,
                self.model_specs().len()
            )));
        }
        if self.http3 && self.tls.is_none() {
            return Err(ServerError::Config(
                "HTTP/3 needs TLS: give a certificate (--tls-cert/--tls-key) or --self-signed"
                    .into(),
            ));
        }
        for origin in &self.cors_origins {
            crate::guard::check_origin(origin).map_err(ServerError::Config)?;
        }
        Ok(())
    }
}

/// The id a `--model` argument is served under: a known name as is, a path by its file stem.
pub fn model_id(spec: &str) -> String {
    fluent_ai_candle_engine::model_name(spec)
}
