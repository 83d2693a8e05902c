//! `GET /metrics`: HTTP counters of this server and each model's engine counters, in the
//! Prometheus text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use fluent_ai_candle_engine::{HistogramSnapshot, MetricsSnapshot};

use crate::state::{lock, AppState};

/// Requests per (route, status).
#[derive(Debug, Default)]
pub(crate) struct HttpMetrics {
    counts: Mutex<BTreeMap<(String, u16), u64>>,
}

impl HttpMetrics {
    pub fn record(&self, route: &str, status: u16) {
        *lock(&self.counts)
            .entry((route.to_string(), status))
            .or_default() += 1;
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

type Field = (
    &'static str,
    &'static str,
    &'static str,
    fn(&MetricsSnapshot) -> f64,
);

const ENGINE: &[Field] = &[
    (
        "fluent_ai_candle_engine_requests_total",
        "counter",
        "Requests accepted by the engine.",
        |s| s.requests as f64,
    ),
    (
        "fluent_ai_candle_engine_completed_total",
        "counter",
        "Requests that reached a finish reason.",
        |s| s.completed as f64,
    ),
    (
        "fluent_ai_candle_engine_cancelled_total",
        "counter",
        "Requests cancelled (client gone).",
        |s| s.cancelled as f64,
    ),
    (
        "fluent_ai_candle_engine_failed_total",
        "counter",
        "Requests that ended with an error.",
        |s| s.failed as f64,
    ),
    (
        "fluent_ai_candle_engine_rejected_total",
        "counter",
        "Requests refused (queue full, bad input).",
        |s| s.rejected as f64,
    ),
    (
        "fluent_ai_candle_engine_queue_depth",
        "gauge",
        "Requests waiting for a slot.",
        |s| s.queue_depth as f64,
    ),
    (
        "fluent_ai_candle_engine_active_sequences",
        "gauge",
        "Sequences being decoded.",
        |s| s.active_sequences as f64,
    ),
    (
        "fluent_ai_candle_engine_prompt_tokens_total",
        "counter",
        "Prompt tokens processed.",
        |s| s.prompt_tokens as f64,
    ),
    (
        "fluent_ai_candle_engine_generated_tokens_total",
        "counter",
        "Tokens generated.",
        |s| s.generated_tokens as f64,
    ),
    (
        "fluent_ai_candle_engine_decode_steps_total",
        "counter",
        "Batched decode steps.",
        |s| s.decode_steps as f64,
    ),
    (
        "fluent_ai_candle_engine_tokens_per_second",
        "gauge",
        "Aggregate decode throughput.",
        |s| s.tokens_per_second,
    ),
    (
        "fluent_ai_candle_engine_ttft_mean_ms",
        "gauge",
        "Mean time to first token (ms, from enqueue).",
        |s| s.mean_ttft_ms,
    ),
    (
        "fluent_ai_candle_engine_ttft_last_ms",
        "gauge",
        "Time to first token of the latest request (ms).",
        |s| s.last_ttft_ms,
    ),
    (
        "fluent_ai_candle_engine_prefix_cache_hits_total",
        "counter",
        "Prompts that reused a cached prefix.",
        |s| s.prefix_cache_hits as f64,
    ),
    (
        "fluent_ai_candle_engine_prefix_cache_misses_total",
        "counter",
        "Prompts with no cached prefix.",
        |s| s.prefix_cache_misses as f64,
    ),
    (
        "fluent_ai_candle_engine_prefix_tokens_reused_total",
        "counter",
        "Prompt tokens served from the prefix cache.",
        |s| s.prefix_tokens_reused as f64,
    ),
    (
        "fluent_ai_candle_engine_prefix_cache_evictions_total",
        "counter",
        "Cached prefixes evicted (least recently used first).",
        |s| s.prefix_cache_evictions as f64,
    ),
    (
        "fluent_ai_candle_engine_kv_tokens_in_use",
        "gauge",
        "KV memory in use, in tokens: live sequences' caches plus cached prefixes.",
        |s| s.kv_tokens_in_use as f64,
    ),
];

type HistogramField = (
    &'static str,
    &'static str,
    fn(&MetricsSnapshot) -> &HistogramSnapshot,
);

const HISTOGRAMS: &[HistogramField] = &[
    (
        "fluent_ai_candle_engine_ttft_seconds",
        "Time to first token, from enqueue (seconds).",
        |s| &s.ttft_seconds,
    ),
    (
        "fluent_ai_candle_engine_inter_token_seconds",
        "Time between consecutive tokens of one sequence (seconds).",
        |s| &s.inter_token_seconds,
    ),
    (
        "fluent_ai_candle_engine_request_seconds",
        "Whole request time, from enqueue to the last token (seconds).",
        |s| &s.request_seconds,
    ),
];

/// Writes one model's histogram: cumulative `_bucket` lines (`le`), then `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, model: &str, h: &HistogramSnapshot) {
    let model = label(model);
    for (bound, n) in h.buckets() {
        let le = if bound.is_infinite() {
            "+Inf".to_string()
        } else {
            bound.to_string()
        };
        let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_sum{{model=\"{model}\"}} {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count{{model=\"{model}\"}} {}", h.count);
}

/// Renders every metric.
pub(crate) fn render(state: &AppState) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "fluent_ai_candle_http_requests_total",
        "counter",
        "HTTP requests by route and status.",
    );
    for ((route, status), n) in lock(&state.http.counts).iter() {
        let _ = writeln!(
            out,
            "fluent_ai_candle_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            label(route)
        );
    }
    header(
        &mut out,
        "fluent_ai_candle_http_in_flight",
        "gauge",
        "Generation requests in flight.",
    );
    let _ = writeln!(
        out,
        "fluent_ai_candle_http_in_flight {}",
        state.in_flight.load(Ordering::SeqCst)
    );
    header(
        &mut out,
        "fluent_ai_candle_draining",
        "gauge",
        "1 while the server is shutting down.",
    );
    let _ = writeln!(
        out,
        "fluent_ai_candle_draining {}",
        u8::from(state.draining.load(Ordering::SeqCst))
    );
    let conns = &state.connections;
    for (name, kind, help, value) in [
        (
            "fluent_ai_candle_http_connections_open",
            "gauge",
            "TCP connections open.",
            conns.open.load(Ordering::Relaxed) as u64,
        ),
        (
            "fluent_ai_candle_http_connections_refused_total",
            "counter",
            "Connections refused past --max-connections.",
            conns.refused.load(Ordering::Relaxed),
        ),
        (
            "fluent_ai_candle_http_connections_timed_out_total",
            "counter",
            "Connections closed by the header or idle timeout.",
            conns.timed_out.load(Ordering::Relaxed),
        ),
    ] {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    let names = state.registry.names();
    header(
        &mut out,
        "fluent_ai_candle_ready",
        "gauge",
        "1 when the server takes traffic (a model loaded, not loading, not draining).",
    );
    let _ = writeln!(
        out,
        "fluent_ai_candle_ready {}",
        u8::from(crate::health::not_ready(state, &names).is_none())
    );
    header(
        &mut out,
        "fluent_ai_candle_models_loaded",
        "gauge",
        "Models loaded.",
    );
    let _ = writeln!(out, "fluent_ai_candle_models_loaded {}", names.len());
    let snaps: Vec<(String, MetricsSnapshot)> = names
        .into_iter()
        .filter_map(|n| state.registry.get(&n).ok().map(|g| (n, g.metrics())))
        .collect();
    for (name, kind, help, get) in ENGINE {
        header(&mut out, name, kind, help);
        for (model, snap) in &snaps {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", label(model), get(snap));
        }
    }
    for (name, help, get) in HISTOGRAMS {
        header(&mut out, name, "histogram", help);
        for (model, snap) in &snaps {
            histogram(&mut out, name, model, get(snap));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_in_prometheus_shape() {
        let h = HistogramSnapshot {
            bounds: &[0.01, 0.5],
            cumulative: [2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            count: 4,
            sum_seconds: 1.25,
        };
        let mut out = String::new();
        histogram(&mut out, "x_seconds", "m\"1", &h);
        assert_eq!(
            out,
            "x_seconds_bucket{model=\"m\\\"1\",le=\"0.01\"} 2\n\
             x_seconds_bucket{model=\"m\\\"1\",le=\"0.5\"} 3\n\
             x_seconds_bucket{model=\"m\\\"1\",le=\"+Inf\"} 4\n\
             x_seconds_sum{model=\"m\\\"1\"} 1.25\n\
             x_seconds_count{model=\"m\\\"1\"} 4\n"
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
