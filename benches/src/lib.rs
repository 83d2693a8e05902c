//! Shared helpers for the fluent-ai-candle benchmarks.
