//! One log line per HTTP request, written through `tracing` when the response body ends (or
//! is dropped, for a client that left): request id, method, route, status, and for generation
//! requests the model, token counts, time to first token, duration and finish reason.
//!
//! The `count` middleware (see `routes`) puts a [`RequestStats`] into the request's
//! extensions; a generation handler hands it to its [`Prepared`](crate::stream::Prepared),
//! which fills it as chunks arrive; the response body is wrapped so that the line is written
//! when the body is done. Without a `tracing` subscriber (the library used in tests or by
//! embedders that install none) the line costs nothing. The CLI's `serve` installs one
//! (`--log-format text|json`, filtered by `RUST_LOG`, default `info`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use fluent_ai_candle_engine::Usage;
use http_body::{Frame, SizeHint};

use crate::openai::UsageOut;
use crate::state::lock;
use crate::stream::add_usage;

/// The `tracing` target of the request lines (filter with `RUST_LOG=fluent_ai_candle::request=info`).
pub const TARGET: &str = "fluent_ai_candle::request";

/// What a generation request reports about itself while its chunks flow.
#[derive(Debug, Default)]
pub(crate) struct RequestStats {
    inner: Mutex<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    /// The engine's completion id (`chatcmpl-…`, `cmpl-…`).
    completion_id: Option<String>,
    model: Option<String>,
    first_token: Option<Instant>,
    usage: UsageOut,
    finish_reason: Option<&'static str>,
}

impl RequestStats {
    /// Names the completion and the model that serves it.
    pub fn start(&self, completion_id: &str, model: &str) {
        let mut s = lock(&self.inner);
        s.completion_id = Some(completion_id.to_string());
        s.model = Some(model.to_string());
    }

    /// Records a chunk: its first token's time, its usage (counted once per prompt) and its
    /// finish reason.
    pub fn chunk(&self, has_tokens: bool, usage: Option<&Usage>, count_prompt: bool) {
        let mut s = lock(&self.inner);
        if has_tokens && s.first_token.is_none() {
            s.first_token = Some(Instant::now());
        }
        if let Some(u) = usage {
            add_usage(&mut s.usage, u, count_prompt);
        }
    }

    /// Records why a choice ended (the last one seen is logged).
    pub fn finish(&self, reason: &'static str) {
        lock(&self.inner).finish_reason = Some(reason);
    }
}

/// Numbers requests for the log when no `x-request-id` header names them.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A request being served; writes its line when dropped.
#[derive(Debug)]
pub(crate) struct RequestLog {
    id: String,
    method: String,
    route: String,
    status: u16,
    started: Instant,
    stats: Arc<RequestStats>,
}

impl RequestLog {
    /// Starts the record of a request (`header_id`: the client's `x-request-id`, if any).
    pub fn new(method: &str, route: &str, header_id: Option<&str>) -> Self {
        let id = match header_id {
            Some(h)
                if !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                h.to_string()
            }
            _ => format!("req-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        };
        Self {
            id,
            method: method.to_string(),
            route: route.to_string(),
            status: 0,
            started: Instant::now(),
            stats: Arc::new(RequestStats::default()),
        }
    }

    /// The stats a handler fills.
    pub fn stats(&self) -> Arc<RequestStats> {
        self.stats.clone()
    }

    /// The id written in the line (and sent back as `x-request-id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets the response status.
    pub fn status(&mut self, status: u16) {
        self.status = status;
    }

    /// Wraps a response body so that this line is written when the body ends or is dropped.
    pub fn wrap(self, body: Body) -> Body {
        Body::new(LoggedBody {
            inner: body,
            log: self,
        })
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let s = lock(&self.stats.inner);
        let duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let ttft_ms = s
            .first_token
            .map(|t| t.duration_since(self.started).as_secs_f64() * 1e3);
        match &s.model {
            Some(model) => tracing::info!(
                target: TARGET,
                id = %self.id,
                method = %self.method,
                route = %self.route,
                status = self.status,
                model = %model,
                completion_id = s.completion_id.as_deref().unwrap_or(""),
                prompt_tokens = s.usage.prompt_tokens,
                cached_tokens = s.usage.prompt_tokens_details.cached_tokens,
                completion_tokens = s.usage.completion_tokens,
                ttft_ms = ttft_ms.map(round1),
                duration_ms = round1(duration_ms),
                finish_reason = s.finish_reason.unwrap_or("cancelled"),
                "request"
            ),
            None => tracing::info!(
                target: TARGET,
                id = %self.id,
                method = %self.method,
                route = %self.route,
                status = self.status,
                duration_ms = round1(duration_ms),
                "request"
            ),
        }
    }
}

fn round1(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// A response body that carries its request's log line until it is done.
struct LoggedBody {
    inner: Body,
    log: RequestLog,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for LoggedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedBody")
            .field("log", &self.log)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_header_when_it_is_sane() {
        assert_eq!(RequestLog::new("GET", "/x", Some("abc-1")).id(), "abc-1");
        assert!(RequestLog::new("GET", "/x", Some("has space"))
            .id()
            .starts_with("req-"));
        assert!(RequestLog::new("GET", "/x", Some(&"a".repeat(200)))
            .id()
            .starts_with("req-"));
        let a = RequestLog::new("GET", "/x", None);
        let b = RequestLog::new("GET", "/x", None);
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn stats_count_the_prompt_once_and_keep_the_first_token_time() {
        let s = RequestStats::default();
        s.start("chatcmpl-1", "m");
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            total_tokens: 13,
            cached_tokens: 4,
        };
        s.chunk(false, None, false);
        assert!(lock(&s.inner).first_token.is_none());
        s.chunk(true, None, false);
        let first = lock(&s.inner).first_token;
        s.chunk(true, Some(&u), true);
        s.chunk(true, Some(&u), false);
        s.finish("length");
        let i = lock(&s.inner);
        assert_eq!(i.first_token, first);
        assert_eq!(i.usage.prompt_tokens, 10);
        assert_eq!(i.usage.prompt_tokens_details.cached_tokens, 4);
        assert_eq!(i.usage.completion_tokens, 6);
        assert_eq!(i.finish_reason, Some("length"));
    }
}
