//! Errors: [`ServerError`] for starting the server, [`ApiError`] for one HTTP request (rendered
//! as OpenAI's error JSON with the matching status).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fluent_ai_candle_engine::{EngineError, ModelError};
use serde::Serialize;

/// What can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is inconsistent (no model, a zero limit, a bad host).
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A model given at start-up could not be resolved or loaded.
    #[error("cannot load model '{name}': {source}")]
    Model {
        /// The `--model` argument.
        name: String,
        /// Why.
        source: ModelError,
    },
    /// The engine refused to start a generator.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The models directory cannot be read.
    #[error("models directory {path}: {source}")]
    ModelsDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The `type` field of an OpenAI error object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad parameters (400, 404, 413).
    InvalidRequest,
    /// Missing or wrong API key (401).
    Authentication,
    /// Not allowed (403).
    Permission,
    /// Too many requests or the server is draining (429, 503).
    Overloaded,
    /// A failure inside the server (500).
    Server,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::Overloaded => "overloaded_error",
            ErrorKind::Server => "server_error",
        }
    }
}

/// One failed request: an HTTP status plus OpenAI's `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error's `type`.
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
    /// The offending request field, if one is to blame.
    pub param: Option<String>,
    /// A machine-readable code (`invalid_api_key`, `model_not_found`...).
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

/// The inner error object (also sent alone inside streams).
#[derive(Serialize)]
pub(crate) struct ErrorObject<'a> {
    message: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl ApiError {
    /// A 400 for a bad parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: ErrorKind::InvalidRequest,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 blaming the field `param`.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            code: Some("invalid_value"),
            ..Self::bad_request(message)
        }
    }

    /// A 401 for a missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: ErrorKind::Authentication,
            message: "invalid or missing API key (send `Authorization: Bearer <key>`)".into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// A 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            kind: ErrorKind::Permission,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 404 for a model that is not loaded (or not in the models directory).
    pub fn model_not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: ErrorKind::InvalidRequest,
            message: message.into(),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// A 404 for an unknown route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: ErrorKind::InvalidRequest,
            message: message.into(),
            param: None,
            code: Some("not_found"),
        }
    }

    /// A 408: the request body did not arrive in time.
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: ErrorKind::InvalidRequest,
            message: format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
            param: None,
            code: Some("request_timeout"),
        }
    }

    /// A 415: a POST body that is not declared `application/json`.
    pub fn unsupported_media_type() -> Self {
        Self {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            kind: ErrorKind::InvalidRequest,
            message: "send the request body with `Content-Type: application/json`".into(),
            param: None,
            code: Some("unsupported_media_type"),
        }
    }

    /// A 409: loading one more model would pass `--max-models`.
    pub fn model_limit(limit: usize) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            kind: ErrorKind::InvalidRequest,
            message: format!(
                "{limit} model(s) are loaded, the most allowed (--max-models): unload one first"
            ),
            param: Some("model".into()),
            code: Some("model_limit_reached"),
        }
    }

    /// A 413 for a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: ErrorKind::InvalidRequest,
            message: format!("request body exceeds the limit of {limit} bytes"),
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// A 429: the model's queue is full.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: ErrorKind::Overloaded,
            message: message.into(),
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    /// A 503: the server is shutting down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: ErrorKind::Overloaded,
            message: message.into(),
            param: None,
            code: Some("service_unavailable"),
        }
    }

    /// A 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: ErrorKind::Server,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub(crate) fn object(&self) -> ErrorObject<'_> {
        ErrorObject {
            message: redact_paths(&self.message),
            kind: self.kind.as_str(),
            param: self.param.as_deref(),
            code: self.code,
        }
    }

    /// The JSON body, `{"error": {...}}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&ErrorBody {
            error: self.object(),
        })
        .unwrap_or_else(|_| r#"{"error":{"message":"error","type":"server_error"}}"#.into())
    }
}

/// Directories whose absolute paths never appear in an error body (the models directory, the
/// model cache, the folders of start-up models), longest first.
static PRIVATE_DIRS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Hides `dir` (and its canonical form) in every error body from now on: a path inside it is
/// shown relative to it, the directory itself as `<models>`.
pub(crate) fn register_private_dir(dir: &Path) {
    // Only absolute forms: a relative one ("models") would hide ordinary words.
    let mut forms = Vec::new();
    if dir.is_absolute() {
        forms.push(dir.display().to_string());
    }
    if let Ok(c) = dir.canonicalize() {
        forms.push(c.display().to_string());
    }
    let mut dirs = PRIVATE_DIRS.write().unwrap_or_else(|p| p.into_inner());
    for f in forms {
        let f = f.trim_end_matches('/').to_string();
        // The root (or an empty path) would hide every slash.
        if f.len() > 1 && !dirs.contains(&f) {
            dirs.push(f);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
}

/// `message` with every registered private directory removed (see [`register_private_dir`]).
pub(crate) fn redact_paths(message: &str) -> Cow<'_, str> {
    let dirs = PRIVATE_DIRS.read().unwrap_or_else(|p| p.into_inner());
    if !dirs.iter().any(|d| message.contains(d.as_str())) {
        return Cow::Borrowed(message);
    }
    let mut out = message.to_string();
    for d in dirs.iter() {
        out = out
            .replace(&format!("{d}/"), "")
            .replace(d.as_str(), "<models>");
    }
    Cow::Owned(out)
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.to_json(),
        )
            .into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            // A sampling parameter the engine refused (with the model's vocabulary): name it.
            EngineError::Sampling(s) => {
                use fluent_ai_candle_sampling::SamplingError as S;
                let param = match s {
                    S::InvalidTemperature(_) => Some("temperature"),
                    S::InvalidParameter { name, .. } | S::InvalidProbability { name, .. } => {
                        Some(match name {
                            "repeat_penalty" => "repetition_penalty",
                            other => other,
                        })
                    }
                    S::TokenOutOfRange { .. } => Some("logit_bias"),
                    _ => None,
                };
                match param {
                    Some(p) => Self::invalid_param(p, message),
                    None => Self::bad_request(message),
                }
            }
            EngineError::InvalidRequest(_)
            | EngineError::KvCache(_)
            | EngineError::Constraint(_) => Self::bad_request(message),
            EngineError::Model(ModelError::ContextOverflow { .. }) => Self {
                code: Some("context_length_exceeded"),
                param: Some("messages".into()),
                ..Self::bad_request(message)
            },
            EngineError::QueueFull { .. } => Self::overloaded(message),
            EngineError::UnknownModel { .. } => Self::model_not_found(message),
            EngineError::Shutdown => Self::unavailable(message),
            _ => Self::internal(message),
        }
    }
}
