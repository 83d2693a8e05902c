//! The crate's error type.

use std::fmt;

/// Where in the input a parse error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Byte offset from the start of the input.
    pub offset: usize,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `text` (clamped to the text's length).
    pub fn in_text(text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let mut line = 1;
        let mut column = 1;
        for (i, c) in text.char_indices() {
            if i >= offset {
                break;
            }
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        Self {
            offset,
            line,
            column,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {} (byte {})",
            self.line, self.column, self.offset
        )
    }
}

/// Everything that can go wrong compiling or running a constraint.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConstraintError {
    /// A GBNF grammar could not be parsed.
    #[error("grammar syntax error at {position}: {message}")]
    GrammarSyntax {
        /// Where the error is.
        position: Position,
        /// What is wrong.
        message: String,
    },
    /// A grammar is well-formed but inconsistent (undefined rule, no `root`, ...).
    #[error("invalid grammar: {0}")]
    InvalidGrammar(String),
    /// A regular expression could not be parsed or compiled.
    #[error("regex error at byte {offset} of {pattern:?}: {message}")]
    Regex {
        /// The regex.
        pattern: String,
        /// Byte offset of the error in `pattern` (0 when unknown).
        offset: usize,
        /// What is wrong.
        message: String,
    },
    /// A JSON Schema is malformed (a keyword has a value of the wrong type, a `$ref` points
    /// nowhere, ...).
    #[error("invalid JSON Schema at {path}: {message}")]
    InvalidSchema {
        /// JSON pointer to the offending subschema.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The constraint uses a feature this engine does not implement.
    #[error("unsupported keyword `{keyword}` at {path}")]
    Unsupported {
        /// The keyword (or feature) name.
        keyword: String,
        /// JSON pointer (or location) where it was found.
        path: String,
    },
    /// No text satisfies the constraint (a schema `false`, `enum: []`, a `$ref` or grammar
    /// rule that only recurses, like `"$ref": "#"` or GBNF `root ::= root "a"`): refused
    /// before generating.
    #[error("unsatisfiable constraint: {0}")]
    Unsatisfiable(String),
    /// Compiling would exceed a time or size budget of [`crate::CompileOptions`].
    #[error("compile budget exceeded: {0}")]
    Budget(String),
    /// The constraint text (a schema) is not valid JSON.
    #[error("invalid JSON at {position}: {message}")]
    Json {
        /// Where the error is.
        position: Position,
        /// What is wrong.
        message: String,
    },
    /// A token that the current mask forbids was committed.
    #[error("token {token} is not allowed here")]
    TokenNotAllowed {
        /// The token id.
        token: u32,
    },
    /// A token id outside the vocabulary.
    #[error("token {token} is outside the vocabulary ({vocab_size} tokens)")]
    UnknownToken {
        /// The token id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The mask passed in does not have the vocabulary's length.
    #[error("mask has {got} entries, vocabulary has {expected}")]
    MaskSize {
        /// The vocabulary size.
        expected: usize,
        /// The mask length.
        got: usize,
    },
    /// The final text does not validate against the JSON Schema.
    #[error("output does not match the JSON Schema: {0}")]
    Validation(String),
    /// A vocabulary could not be built.
    #[error("vocabulary error: {0}")]
    Vocabulary(String),
}
