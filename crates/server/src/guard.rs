//! Request hygiene in front of every route: the API key (`Bearer`, any case), browser safety
//! (CORS only for listed origins, WebSocket `Origin` against the same list, JSON-only POST
//! bodies) and the body's size and arrival time.
//!
//! | Check | Answer |
//! |---|---|
//! | `/v1/*`, `/tokenize`, `/detokenize` (and `/metrics` unless `metrics_open`) without the key, when one is set | 401 |
//! | `GET /v1/ws` from a browser `Origin` not listed | 403 |
//! | a POST body over `body_limit` | 413 |
//! | a POST body not complete within `body_timeout` | 408 (connection closed) |
//! | a POST body without `Content-Type: application/json` | 415 |
//!
//! A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) from a listed origin is
//! answered by the CORS layer before any of these, so it needs no key. Without listed origins
//! there is no CORS layer at all: browsers refuse cross-origin calls.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::state::AppState;

/// The key of an `Authorization: Bearer <key>` header; the scheme is case-insensitive (RFC
/// 9110 §11.1), surrounding spaces are ignored.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

/// Checks a `--cors-origin` value: `*` or `http(s)://host[:port]` with nothing after.
pub(crate) fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty()
                && !host.contains(['/', '?', '#', ' ', '@'])
                && HeaderValue::from_str(origin).is_ok() =>
        {
            Ok(())
        }
        _ => Err(format!(
            "CORS origin '{origin}' must be '*' or scheme://host[:port] (e.g. https://app.example.com)"
        )),
    }
}

/// Whether a browser `Origin` is listed (exact match, case-insensitive; `*` allows any).
fn origin_allowed(origins: &[String], origin: &str) -> bool {
    origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// The CORS layer for the configured origins, or `None` (CORS off) when none is listed.
pub(crate) fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Validated at start (`check_origin`), so every value is a valid header value.
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    )
}

/// Whether a `Content-Type` value is JSON (`application/json`, parameters allowed).
fn is_json(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The middleware: see the module documentation.
pub(crate) async fn guard(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let config = &state.config;
    let path = req.uri().path();
    if path == "/v1/ws" {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let ok = origin
                .to_str()
                .is_ok_and(|o| origin_allowed(&config.cors_origins, o));
            if !ok {
                return ApiError::forbidden(
                    "WebSocket connections from this browser origin are not allowed (--cors-origin)",
                )
                .into_response();
            }
        }
    }
    let needs_key = path == "/v1"
        || path.starts_with("/v1/")
        || path == "/tokenize"
        || path == "/detokenize"
        || (path == "/metrics" && !config.metrics_open);
    if needs_key && !state.key_ok(bearer(req.headers())) {
        return ApiError::unauthorized().into_response();
    }
    let req = if req.method() == Method::POST {
        match read_body(req, config.body_limit, config.body_timeout).await {
            Ok(req) => req,
            Err(e) => return e,
        }
    } else {
        req
    };
    let mut response = next.run(req).await;
    if state.draining.load(Ordering::SeqCst) {
        // Nothing more on this connection: a balancer's next request opens a new one.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads a POST body completely (size, time, then type checked) and puts it back.
async fn read_body(req: Request, limit: usize, timeout: Duration) -> Result<Request, Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit).into_response());
    }
    let (parts, body) = req.into_parts();
    let read = async {
        let mut data = body.into_data_stream();
        let mut out = Vec::new();
        while let Some(piece) = data.next().await {
            let piece =
                piece.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
            if out.len() + piece.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    };
    let bytes = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(e.into_response()),
        Err(_) => {
            let mut r = ApiError::body_timeout(timeout).into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(r);
        }
    };
    if !is_json(parts.headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::unsupported_media_type().into_response());
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Refuses a hot load that would pass `max_models` (a model already loaded may be replaced).
pub(crate) fn check_model_capacity(state: &AppState, id: &str) -> Result<(), ApiError> {
    let names = state.registry.names();
    if !names.iter().any(|n| n == id) && names.len() >= state.config.max_models {
        return Err(ApiError::model_limit(state.config.max_models));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(&headers("Bearer k")), Some("k"));
        assert_eq!(bearer(&headers("bearer k")), Some("k"));
        assert_eq!(bearer(&headers("BEARER  k ")), Some("k"));
        assert_eq!(bearer(&headers("Basic k")), None);
        assert_eq!(bearer(&headers("Bearer")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn origins_are_checked_and_matched_exactly() {
        for ok in ["*", "https://a.example", "http://localhost:3000"] {
            assert!(check_origin(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a.example",
            "https://",
            "https://a.example/",
            "ftp://x",
            "https://a b",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
        let list = vec!["https://a.example".to_string()];
        assert!(origin_allowed(&list, "https://A.example"));
        assert!(!origin_allowed(&list, "https://a.example.evil"));
        assert!(!origin_allowed(&[], "https://a.example"));
        assert!(origin_allowed(&["*".to_string()], "https://x"));
    }

    #[test]
    fn only_json_content_types_pass() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(Some(&v("application/x-www-form-urlencoded"))));
        assert!(!is_json(None));
    }
}
