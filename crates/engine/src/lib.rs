//! fluent-ai-candle-engine (work in progress).
