//! fluent-ai-candle-sampling (work in progress).
