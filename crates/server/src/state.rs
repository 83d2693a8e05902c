//! Shared state of one server: the model registry, limits, counters and the shutdown flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequest, Request};
use axum::http::header;
use fluent_ai_candle_engine::{
    CancelToken, CandleGenerator, Device, EngineError, GenerationConfig, ModelRegistry,
};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::HttpMetrics;

/// Everything handlers share.
pub(crate) struct AppState {
    pub config: ServerConfig,
    key_digest: Option<[u8; 32]>,
    pub registry: ModelRegistry,
    /// Load time (Unix seconds) per model id.
    pub loaded_at: Mutex<BTreeMap<String, u64>>,
    pub default_model: Mutex<Option<String>>,
    pub models_dir: PathBuf,
    pub device: Device,
    pub generation: GenerationConfig,
    pub http: HttpMetrics,
    pub draining: AtomicBool,
    /// True while the start-up models load (not ready).
    pub loading: AtomicBool,
    /// Connection counters of the connection layer.
    pub connections: Arc<crate::conn::ConnStats>,
    pub in_flight: AtomicUsize,
    /// Set once the shutdown bound has passed: streams still running end at once.
    pub abort: watch::Sender<bool>,
    /// Serialises hot swaps.
    pub load_lock: tokio::sync::Mutex<()>,
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    pub fn new(config: ServerConfig, device: Device) -> Self {
        let key_digest = config
            .api_key
            .as_ref()
            .map(|k| Sha256::digest(k.as_bytes()).into());
        let generation = GenerationConfig::builder()
            .max_concurrent_requests(config.max_concurrent)
            .max_queued_requests(config.max_queued)
            .streaming(config.streaming)
            .build();
        let models_dir = config.resolved_models_dir();
        Self {
            config,
            key_digest,
            registry: ModelRegistry::new(),
            loaded_at: Mutex::new(BTreeMap::new()),
            default_model: Mutex::new(None),
            models_dir,
            device,
            generation,
            http: HttpMetrics::default(),
            draining: AtomicBool::new(false),
            loading: AtomicBool::new(false),
            connections: Arc::default(),
            in_flight: AtomicUsize::new(0),
            abort: watch::channel(false).0,
            load_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks a presented key in constant time: both sides are hashed to 32 bytes first (so the
    /// length leaks nothing) and every byte is compared without an early exit.
    pub fn key_ok(&self, presented: Option<&str>) -> bool {
        let Some(expected) = &self.key_digest else {
            return true;
        };
        let Some(presented) = presented else {
            return false;
        };
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(expected, &got)
    }

    /// Loads the model a spec names (path, cached name, `hf:` reference: the engine resolves
    /// it) on a blocking thread and registers it as `id`, replacing any of the same id once
    /// loaded. Once `cancel` is cancelled the load stops (within one tensor) with
    /// [`ModelError::Cancelled`](fluent_ai_candle_engine::ModelError::Cancelled).
    pub async fn load(
        self: &Arc<Self>,
        id: &str,
        spec: PathBuf,
        cancel: CancelToken,
    ) -> Result<(), EngineError> {
        let state = self.clone();
        let name = id.to_string();
        tokio::task::spawn_blocking(move || {
            state.registry.load_cancellable(
                &name,
                &spec,
                &state.device,
                state.generation.clone(),
                &cancel,
            )
        })
        .await
        .map_err(|e| EngineError::Internal(format!("loading task failed: {e}")))??;
        self.loaded(id);
        Ok(())
    }

    /// Records that `id` was (re)loaded now; the first model loaded is the default.
    fn loaded(&self, id: &str) {
        lock(&self.loaded_at).insert(id.to_string(), unix_now());
        let mut default = lock(&self.default_model);
        if default.is_none() {
            *default = Some(id.to_string());
        }
    }

    /// Removes a model; the default moves to the first model left.
    pub fn unregister(&self, id: &str) -> Result<(), ApiError> {
        self.registry.unload(id).map_err(ApiError::from)?;
        lock(&self.loaded_at).remove(id);
        let mut default = lock(&self.default_model);
        if default.as_deref() == Some(id) {
            *default = self.registry.names().into_iter().next();
        }
        Ok(())
    }

    /// The generator for a request's `model` (the default model when absent).
    pub fn generator(&self, model: Option<&str>) -> Result<CandleGenerator, ApiError> {
        let name = match model {
            Some(m) => m.to_string(),
            None => lock(&self.default_model)
                .clone()
                .ok_or_else(|| ApiError::model_not_found("no model is loaded"))?,
        };
        self.registry.get(&name).map_err(ApiError::from)
    }

    /// Refuses new work while draining, else counts a request in flight until the guard drops.
    pub fn admit(self: &Arc<Self>) -> Result<InFlight, ApiError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok(InFlight(self.clone()))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Compares two equal-length byte arrays without data-dependent branches.
pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A request in flight; dropping it (response sent, stream ended or cut) releases it.
pub(crate) struct InFlight(Arc<AppState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A JSON body read under the configured limit: 413 over it, 400 when it is not the expected
/// JSON, both as OpenAI error JSON.
pub(crate) struct ApiJson<T>(pub T);

/// Bodies at least this long are parsed on the blocking pool: a megabyte of JSON takes
/// milliseconds to parse, and sixteen at once would hold up the async threads (`/health`).
const BLOCKING_PARSE_BYTES: usize = 64 * 1024;

impl<T: DeserializeOwned + Send + 'static> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let bytes = read_body(req, state.config.body_limit).await?;
        if bytes.len() < BLOCKING_PARSE_BYTES {
            return parse_json(&bytes).map(ApiJson);
        }
        fluent_ai_candle_engine::run_blocking(move || parse_json(&bytes).map(ApiJson))
            .await
            .map_err(|e| ApiError::internal(format!("parsing the body failed: {e}")))?
    }
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Reads a body, refusing it as soon as it passes `limit` bytes.
pub(crate) async fn read_body(req: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut data = req.into_body().into_data_stream();
    let mut out = Vec::new();
    while let Some(piece) = data.next().await {
        let piece = piece.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if out.len() + piece.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_digest() {
        let state = AppState::new(ServerConfig::default().api_key("k3y"), Device::Cpu);
        assert!(state.key_ok(Some("k3y")));
        assert!(!state.key_ok(Some("k3")));
        assert!(!state.key_ok(Some("k3y ")));
        assert!(!state.key_ok(None));
        let open = AppState::new(ServerConfig::default(), Device::Cpu);
        assert!(open.key_ok(None));
    }
}
