//! Health for load balancers and orchestrators.
//!
//! - `GET /health` (also `/health/ready`) is **readiness**: 200 `{"status":"ok","ready":true,
//!   "models":[…],"device":"cpu","in_flight":n}` when at least one model is loaded and the server is neither
//!   loading its start-up models nor draining; otherwise 503 with `status` `loading`,
//!   `no_model` or `draining` (and `ready: false`), so a balancer sends it no traffic.
//! - `GET /health/live` is **liveness**: 200 whenever the process answers at all (also while
//!   loading or draining), so an orchestrator does not restart a replica that is only busy.
//!
//! Neither needs the API key.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::state::AppState;

/// Why the server is not ready, or `None` when it is.
pub(crate) fn not_ready(state: &AppState, models: &[String]) -> Option<&'static str> {
    if state.draining.load(Ordering::SeqCst) {
        Some("draining")
    } else if state.loading.load(Ordering::SeqCst) {
        Some("loading")
    } else if models.is_empty() {
        Some("no_model")
    } else {
        None
    }
}

/// `GET /health`, `GET /health/ready`.
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let models = state.registry.names();
    let why = not_ready(&state, &models);
    let body = serde_json::json!({
        "status": why.unwrap_or("ok"),
        "ready": why.is_none(),
        "models": models,
        "device": fluent_ai_candle_engine::device_name(&state.device),
        "in_flight": state.in_flight.load(Ordering::SeqCst),
    });
    let status = if why.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// `GET /health/live`.
pub(crate) async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "alive"}))
}
