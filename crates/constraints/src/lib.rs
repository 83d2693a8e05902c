//! fluent-ai-candle-constraints (work in progress).
