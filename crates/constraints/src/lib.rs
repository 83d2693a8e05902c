//! Token-level constrained decoding for fluent-ai-candle: the output is guaranteed to match a
//! JSON Schema, a regular expression, a GBNF grammar or a custom text-level check.
//!
//! Every constraint compiles to one form: a context-free grammar over *lexemes* (regular
//! expressions, each a [`regex_automata`] DFA). A sequence's state is an Earley parser over the
//! lexemes plus the set of lexeme DFAs still alive on the current lexeme. The allowed-token mask
//! is computed by walking a trie of the vocabulary's byte strings: inside a lexeme a step is a
//! DFA table lookup; the parser is consulted only where a lexeme ends. Subtrees whose prefix
//! dies are skipped whole. No ML framework is involved: the output is a
//! [`fluent_ai_candle_mask::TokenMask`] the sampler consumes.
//!
//! # The sampling loop
//!
//! 1. Build a [`Vocabulary`] once per tokenizer ([`Vocabulary::from_tokenizer`], or
//!    [`Vocabulary::new`] from raw token bytes).
//! 2. Compile the constraint once ([`Constraint::compile`]); the [`CompiledConstraint`] is
//!    `Send + Sync` and shared by every request that uses it.
//! 3. Per sequence, [`CompiledConstraint::start`] a [`ConstraintState`].
//! 4. Each step: [`ConstraintState::compute_mask`] into a reused [`TokenMask`]; the sampler
//!    picks a token among the allowed ones (EOS is allowed exactly when the text may end).
//! 5. [`ConstraintState::commit_token`] the sampled token (an error if it was not allowed).
//!    Optionally skip sampling where the constraint forces the next bytes
//!    ([`ConstraintState::forced_bytes`] / [`ConstraintState::forced_tokens`]).
//! 6. Near the end of a token budget, [`ConstraintState::shortest_completion`] gives the
//!    fewest bytes that complete the text and [`ConstraintState::closing_token`] the next
//!    token along them, so an output can be closed before it is cut;
//!    [`ConstraintState::commit_if_closable`] commits a sampled token only if the output can
//!    still be closed within the tokens left (with [`closing_slack`] to spare).
//! 7. Stop on EOS or when [`ConstraintState::is_finished`]; for JSON Schema, run
//!    [`CompiledConstraint::validate`] (the `jsonschema` crate) on the text before returning it.
//!
//! ```
//! use fluent_ai_candle_constraints::{CompileOptions, Constraint, ConstraintSpec, Vocabulary};
//! use fluent_ai_candle_mask::TokenMask;
//! use std::sync::Arc;
//!
//! // A tiny vocabulary: token id = index; token 5 is EOS. The default (generation) mode
//! // writes JSON in one style: `": "` after a key, `", "` between members.
//! let tokens: Vec<Vec<u8>> = ["{", "}", "\"a\"", ": ", "1", ""].iter().map(|s| s.as_bytes().to_vec()).collect();
//! let vocab = Arc::new(Vocabulary::new(tokens, &[5], &[]));
//! let schema = serde_json::json!({
//!     "type": "object",
//!     "properties": { "a": { "type": "integer" } },
//!     "required": ["a"],
//!     "additionalProperties": false
//! });
//! let c = Constraint::compile(&ConstraintSpec::JsonSchema(schema), vocab.clone(), &CompileOptions::default())?;
//! let mut state = c.start();
//! let mut mask = TokenMask::forbid_all(vocab.len());
//! for token in [0, 2, 3, 4, 1] {
//!     state.compute_mask(&mut mask)?;
//!     assert!(mask.is_allowed(token));
//!     assert!(!mask.is_allowed(5), "EOS only once the object is complete");
//!     state.commit_token(token)?;
//! }
//! state.compute_mask(&mut mask)?;
//! assert!(state.is_accepting() && mask.is_allowed(5));
//! c.validate(std::str::from_utf8(state.text_bytes()).unwrap())?;
//! # Ok::<(), fluent_ai_candle_constraints::ConstraintError>(())
//! ```
//!
//! # What is supported
//!
//! JSON Schema: `type` (also lists and OpenAPI `nullable`), `properties` (in any order for
//! objects with at most 8 declared properties, else in the schema's order; optional ones may
//! be skipped), `required`, `additionalProperties`, `patternProperties`, `minProperties`,
//! `items`/`prefixItems`/`additionalItems`, `minItems`/`maxItems`, `enum`/`const`,
//! `anyOf`/`oneOf` (oneOf compiled when its branches are exclusive, else refused in generation
//! mode and read as anyOf in spec mode), `allOf` (merged), the common forms of `not`,
//! `$ref`/`$defs`/`definitions` with recursion, `minLength`/`maxLength`, `pattern`, `format`
//! (date, time, date-time, email, hostname, uuid, uri, uri-reference, ipv4; unknown format
//! names are annotations), integer and number bounds (integer-valued bounds for numbers).
//! Keywords not implemented (`uniqueItems`, `if`, `multipleOf`, other forms of `not`, ...)
//! are a [`ConstraintError::Unsupported`] naming the keyword, never silently ignored.
//! Known approximations: in spec mode `oneOf` accepts a value matching several branches, and a
//! number's exponent is unbounded (`1e999` is JSON but overflows an f64).
#![forbid(unsafe_code)]

mod complete;
mod earley;
mod engine;
mod error;
mod gbnf;
mod grammar;
mod json_schema;
#[cfg(feature = "tokenizers")]
/// The MaskBench protocol runner (behind the `tokenizers` feature).
pub mod maskbench;
mod satisfiable;
mod vocab;

pub use engine::{
    closing_slack, CompileOptions, CompiledConstraint, Constraint, ConstraintSpec, ConstraintState,
    GenerationConstraint, TaggedJson,
};
pub use error::{ConstraintError, Position};
pub use fluent_ai_candle_mask::TokenMask;
pub use json_schema::JsonSchemaMode;
pub use vocab::{decode_token_string, TokenEncoding, Vocabulary};
