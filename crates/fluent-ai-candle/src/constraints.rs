//! Constrained generation: the constraints crate (JSON Schema, `json_object`, regex and GBNF
//! compiled to token masks, and custom [`GenerationConstraint`]s), with the seed's
//! [`JsonConstraint`] and [`create_json_constraint_for_tokenizer`] from the engine.
//!
//! ```no_run
//! use fluent_ai_candle::constraints::create_json_constraint_for_tokenizer;
//! use fluent_ai_candle::{CandleCompletionRequest, CandleTokenizer};
//! let tokenizer = CandleTokenizer::from_file("tokenizer.json")?;
//! let schema = serde_json::json!({"type": "object", "required": ["name"],
//!     "properties": {"name": {"type": "string"}}});
//! let constraint = create_json_constraint_for_tokenizer(&schema, &tokenizer)?;
//! let request = CandleCompletionRequest {
//!     prompt: "A person:".to_string(),
//!     constraints: Some(vec![constraint]),
//!     ..Default::default()
//! };
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use fluent_ai_candle_constraints::*;
pub use fluent_ai_candle_engine::constraint::{
    create_json_constraint_for_tokenizer, JsonConstraint,
};
