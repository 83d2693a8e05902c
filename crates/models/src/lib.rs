//! fluent-ai-candle-models (work in progress).
