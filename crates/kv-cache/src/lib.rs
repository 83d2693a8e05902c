//! fluent-ai-candle-kv-cache (work in progress).
