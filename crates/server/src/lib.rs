//! fluent-ai-candle-server (work in progress).
