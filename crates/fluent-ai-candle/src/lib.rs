//! fluent-ai-candle (work in progress).
