//! The public engine: compile a [`ConstraintSpec`] once, then run one [`ConstraintState`] per
//! sequence.

use crate::earley::{Frame, Parser};
use crate::grammar::{CompiledGrammar, GrammarBuilder, Sym};
use crate::{ConstraintError, JsonSchemaMode, Vocabulary};
use fluent_ai_candle_mask::TokenMask;
use regex_automata::util::primitives::StateID;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The seed's text-level constraint interface. Adapted into the token-level engine by
/// [`ConstraintSpec::Custom`]: the mask asks it about every token, so it is slow on large
/// vocabularies; prefer a grammar where one exists.
pub trait GenerationConstraint: Send + Sync {
    /// Whether `next_token` (its text, lossily decoded) may follow `current_text`.
    fn is_valid_next_token(&self, current_text: &str, next_token: &str) -> bool;
    /// Whether `text` is a complete output (generation may stop here).
    fn is_complete(&self, text: &str) -> bool;
}

/// What to constrain the output to.
#[derive(Clone)]
#[non_exhaustive]
pub enum ConstraintSpec {
    /// A JSON value valid under this JSON Schema, read in the mode of
    /// [`CompileOptions::json_schema_mode`].
    JsonSchema(serde_json::Value),
    /// A JSON value valid under this JSON Schema, read in the given mode (whatever the
    /// compile options say).
    JsonSchemaWithMode(serde_json::Value, JsonSchemaMode),
    /// Any JSON value.
    JsonObject,
    /// Text fully matching this regular expression (regex-syntax dialect).
    Regex(String),
    /// A context-free grammar in llama.cpp's GBNF format (start rule `root`).
    Grammar(String),
    /// JSON values under a schema, each between literal texts, one or more times
    /// ([`TaggedJson`]: tool calls forced as `<tool_call>\n{…}\n</tool_call>`).
    TaggedJson(TaggedJson),
    /// A text-level constraint.
    Custom(Arc<dyn GenerationConstraint>),
}

/// JSON values valid under a schema, each written between a literal `prefix` and `suffix`,
/// `min..=max` of them joined by `separator`:
/// `prefix VALUE suffix (separator prefix VALUE suffix)*`.
///
/// The schema is read in [`JsonSchemaMode::Generation`] (one whitespace style, so the
/// literals around the values are the only other text). [`CompiledConstraint::validate`]
/// checks the whole text: the literals where they belong and every value with the
/// `jsonschema` crate.
///
/// ```
/// use fluent_ai_candle_constraints::{CompileOptions, Constraint, ConstraintSpec, TaggedJson, Vocabulary};
/// use std::sync::Arc;
///
/// let bytes: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
/// let vocab = Arc::new(Vocabulary::new(bytes, &[], &[]));
/// let spec = ConstraintSpec::TaggedJson(TaggedJson {
///     prefix: "<call>".into(),
///     suffix: "</call>".into(),
///     ..TaggedJson::new(serde_json::json!({"type": "integer"}))
/// });
/// let c = Constraint::compile(&spec, vocab, &CompileOptions::default())?;
/// c.validate("<call>42</call>")?;
/// assert!(c.validate("<call>\"x\"</call>").is_err());
/// assert!(c.validate("<call>1</call>\n<call>2</call>").is_err(), "at most one by default");
/// # Ok::<(), fluent_ai_candle_constraints::ConstraintError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedJson {
    /// The JSON Schema every value follows.
    pub schema: serde_json::Value,
    /// Literal text before each value.
    pub prefix: String,
    /// Literal text after each value.
    pub suffix: String,
    /// Literal text between two wrapped values.
    pub separator: String,
    /// Fewest values (at least 1).
    pub min: u32,
    /// Most values (`None`: unbounded; at least `min`).
    pub max: Option<u32>,
}

impl TaggedJson {
    /// Exactly one value under `schema`, with no text around it (set the other fields).
    pub fn new(schema: serde_json::Value) -> Self {
        Self {
            schema,
            prefix: String::new(),
            suffix: String::new(),
            separator: String::new(),
            min: 1,
            max: Some(1),
        }
    }

    /// Checks `text` against the layout and every value against `validator`.
    fn validate(
        &self,
        text: &str,
        validator: &jsonschema::Validator,
    ) -> Result<(), ConstraintError> {
        let bad = |m: String| ConstraintError::Validation(m);
        let mut rest = text;
        let mut count = 0u32;
        loop {
            rest = rest
                .strip_prefix(self.prefix.as_str())
                .ok_or_else(|| bad(format!("value {count}: expected {:?}", self.prefix)))?;
            // The value ends where the text after it begins (a number needs no delimiter).
            let mark = if self.suffix.is_empty() {
                self.separator.as_str()
            } else {
                self.suffix.as_str()
            };
            let mut ends: Vec<usize> = if mark.is_empty() {
                Vec::new()
            } else {
                rest.match_indices(mark).map(|(i, _)| i).collect()
            };
            ends.push(rest.len());
            let (value, end) = ends
                .into_iter()
                .find_map(|end| {
                    serde_json::from_str::<serde_json::Value>(&rest[..end])
                        .ok()
                        .map(|v| (v, end))
                })
                .ok_or_else(|| bad(format!("value {count}: not JSON")))?;
            validator
                .validate(&value)
                .map_err(|e| bad(format!("value {count}: {e}")))?;
            rest = &rest[end..];
            rest = rest.strip_prefix(self.suffix.as_str()).ok_or_else(|| {
                bad(format!(
                    "value {count}: expected {:?} after it",
                    self.suffix
                ))
            })?;
            count += 1;
            if rest.is_empty() {
                break;
            }
            rest = rest
                .strip_prefix(self.separator.as_str())
                .ok_or_else(|| bad(format!("unexpected text after value {}", count - 1)))?;
        }
        if count < self.min || self.max.is_some_and(|m| count > m) {
            return Err(bad(format!(
                "{count} values, expected {}..={}",
                self.min,
                self.max.map_or("".to_string(), |m| m.to_string())
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for ConstraintSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JsonSchema(v) => f.debug_tuple("JsonSchema").field(v).finish(),
            Self::JsonSchemaWithMode(v, m) => f
                .debug_tuple("JsonSchemaWithMode")
                .field(v)
                .field(m)
                .finish(),
            Self::JsonObject => f.write_str("JsonObject"),
            Self::Regex(r) => f.debug_tuple("Regex").field(r).finish(),
            Self::Grammar(g) => f.debug_tuple("Grammar").field(&g.len()).finish(),
            Self::TaggedJson(t) => f.debug_tuple("TaggedJson").field(t).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Limits and choices for compilation.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// Wall-clock budget for compiling one constraint.
    pub max_compile_time: Duration,
    /// Most grammar rules.
    pub max_rules: usize,
    /// Largest single lexeme automaton, in bytes.
    pub max_dfa_bytes: usize,
    /// Largest total of all lexeme automata, in bytes.
    pub max_total_dfa_bytes: usize,
    /// Largest repetition count unrolled into rules (`minItems`, `{m,n}`, ...).
    pub max_repeat: usize,
    /// Largest string length bound compiled into a lexeme (`maxLength`, `minLength`).
    pub max_length_bound: u32,
    /// Share lexeme automata with every other grammar this process compiles (a bounded
    /// process-wide cache keyed by regex): a lexeme seen before (a JSON string, a number, a
    /// common key) is not determinized again. Off: every automaton is built afresh.
    pub share_lexemes: bool,
    /// How a JSON Schema is read: [`JsonSchemaMode::Generation`] (the default) or the
    /// spec-faithful [`JsonSchemaMode::Spec`]. A [`ConstraintSpec::JsonSchemaWithMode`]
    /// overrides it.
    pub json_schema_mode: JsonSchemaMode,
    /// In [`JsonSchemaMode::Generation`]: the most characters of a string (a value, or an
    /// undeclared key) whose schema sets no `maxLength`, `pattern` or `format` (a larger
    /// `minLength` raises it). Default 128: a small model that starts repeating itself inside
    /// a free string does not close it on its own; a schema that wants longer strings says so
    /// with `maxLength`. Spec mode ignores it.
    pub generation_max_string_length: u32,
    /// In [`JsonSchemaMode::Generation`]: the most items of an array whose schema sets no
    /// `maxItems` (a larger `minItems` or prefix raises it), and the most undeclared
    /// properties written after the declared ones in an object laid out in the schema's order
    /// (every object that declares no property, or more than 8). Default 32: a small model
    /// repeating itself does not end a list on its own. Spec mode ignores it.
    pub generation_max_items: u32,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            max_compile_time: Duration::from_secs(2),
            max_rules: 200_000,
            max_dfa_bytes: 8 << 20,
            max_total_dfa_bytes: 64 << 20,
            max_repeat: 2_000,
            max_length_bound: 2_000,
            share_lexemes: true,
            json_schema_mode: JsonSchemaMode::default(),
            generation_max_string_length: 128,
            generation_max_items: 32,
        }
    }
}

/// Entry point: compiles constraints.
#[derive(Debug, Clone, Copy)]
pub struct Constraint;

impl Constraint {
    /// Compiles `spec` against `vocab`. The result is shared by all sequences using it.
    pub fn compile(
        spec: &ConstraintSpec,
        vocab: Arc<Vocabulary>,
        opts: &CompileOptions,
    ) -> Result<Arc<CompiledConstraint>, ConstraintError> {
        let started = Instant::now();
        let validator = OnceLock::new();
        let mut tagged = None;
        let (kind, schema) = match spec {
            ConstraintSpec::Custom(c) => (Kind::Custom(c.clone()), None),
            ConstraintSpec::TaggedJson(t) => {
                if t.min == 0 || t.max.is_some_and(|m| m < t.min) {
                    return Err(ConstraintError::InvalidSchema {
                        path: String::new(),
                        message: format!(
                            "tagged JSON needs 1 <= min <= max, got min {} max {:?}",
                            t.min, t.max
                        ),
                    });
                }
                let opts = CompileOptions {
                    json_schema_mode: JsonSchemaMode::Generation,
                    ..opts.clone()
                };
                let (mut b, value, v_check) =
                    crate::json_schema::compile(&t.schema, &opts, started)?;
                if let Some(v_check) = v_check {
                    let _ = validator.set(Ok(v_check));
                }
                let mut one = Vec::new();
                if !t.prefix.is_empty() {
                    one.push(b.literal(&t.prefix));
                }
                one.push(value);
                if !t.suffix.is_empty() {
                    one.push(b.literal(&t.suffix));
                }
                let wrapped = b.rule("tagged_value", vec![one]);
                let mut more = Vec::new();
                if !t.separator.is_empty() {
                    more.push(b.literal(&t.separator));
                }
                more.push(wrapped);
                let rest = b.repeat(more, t.min - 1, t.max.map(|m| m - 1), opts.max_repeat)?;
                let root = b.rule("root", vec![vec![wrapped, rest]]);
                tagged = Some(t.clone());
                (
                    Kind::Grammar(Arc::new(CompiledGrammar::compile(b, root, &opts, started)?)),
                    Some(t.schema.clone()),
                )
            }
            ConstraintSpec::JsonSchema(v) | ConstraintSpec::JsonSchemaWithMode(v, _) => {
                let with_mode;
                let opts = match spec {
                    ConstraintSpec::JsonSchemaWithMode(_, mode) => {
                        with_mode = CompileOptions {
                            json_schema_mode: *mode,
                            ..opts.clone()
                        };
                        &with_mode
                    }
                    _ => opts,
                };
                let (b, root, v_check) = crate::json_schema::compile(v, opts, started)?;
                if let Some(v_check) = v_check {
                    let _ = validator.set(Ok(v_check));
                }
                (
                    Kind::Grammar(Arc::new(CompiledGrammar::compile(b, root, opts, started)?)),
                    Some(v.clone()),
                )
            }
            ConstraintSpec::JsonObject => {
                let (b, root, _) =
                    crate::json_schema::compile(&serde_json::json!({}), opts, started)?;
                (
                    Kind::Grammar(Arc::new(CompiledGrammar::compile(b, root, opts, started)?)),
                    None,
                )
            }
            ConstraintSpec::Regex(r) => {
                crate::grammar::check_regex(r)?;
                let mut b = GrammarBuilder::default();
                let l = b.lexeme(r);
                let root = b.rule("root", vec![vec![l]]);
                (
                    Kind::Grammar(Arc::new(CompiledGrammar::compile(b, root, opts, started)?)),
                    None,
                )
            }
            ConstraintSpec::Grammar(text) => {
                let (b, root) = crate::gbnf::compile(text, opts)?;
                (
                    Kind::Grammar(Arc::new(CompiledGrammar::compile(b, root, opts, started)?)),
                    None,
                )
            }
        };
        let _ = Sym::N(0);
        Ok(Arc::new(CompiledConstraint {
            vocab,
            kind,
            schema,
            tagged,
            validator,
        }))
    }
}

enum Kind {
    Grammar(Arc<CompiledGrammar>),
    Custom(Arc<dyn GenerationConstraint>),
}

/// A compiled constraint: immutable, `Send + Sync`, shared across sequences.
pub struct CompiledConstraint {
    vocab: Arc<Vocabulary>,
    kind: Kind,
    schema: Option<serde_json::Value>,
    /// The layout around the values of a [`ConstraintSpec::TaggedJson`].
    tagged: Option<TaggedJson>,
    validator: OnceLock<Result<jsonschema::Validator, String>>,
}

impl std::fmt::Debug for CompiledConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledConstraint")
            .field("vocab_size", &self.vocab.len())
            .field("json_schema", &self.schema.is_some())
            .finish()
    }
}

impl CompiledConstraint {
    /// A fresh per-sequence state (cheap).
    pub fn start(self: &Arc<Self>) -> ConstraintState {
        let inner = match &self.kind {
            Kind::Grammar(g) => Inner::Grammar(Box::new(Parser::new(g.clone()))),
            Kind::Custom(_) => Inner::Custom,
        };
        let mut st = ConstraintState {
            c: self.clone(),
            inner,
            text: Vec::new(),
            accepting: false,
            eos_done: false,
            frames: Vec::with_capacity(self.vocab.trie.max_depth + 2),
            key: Vec::new(),
            live: Vec::new(),
            completion: None,
        };
        st.accepting = st.compute_accepting();
        st
    }

    /// The vocabulary this constraint was compiled for.
    pub fn vocabulary(&self) -> &Arc<Vocabulary> {
        &self.vocab
    }

    /// The JSON Schema, when this is a JSON Schema constraint.
    pub fn json_schema(&self) -> Option<&serde_json::Value> {
        self.schema.as_ref()
    }

    /// Final check of a JSON-constrained output with the `jsonschema` crate (a no-op `Ok` for
    /// other constraint kinds). Call it before returning the text.
    pub fn validate(&self, text: &str) -> Result<(), ConstraintError> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let v = self.validator.get_or_init(|| {
            jsonschema::options()
                .should_validate_formats(true)
                .build(schema)
                .map_err(|e| e.to_string())
        });
        if let (Some(t), Ok(v)) = (&self.tagged, v) {
            return t.validate(text, v);
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ConstraintError::Validation(format!("not JSON: {e}")))?;
        match v {
            Ok(v) => v
                .validate(&value)
                .map_err(|e| ConstraintError::Validation(e.to_string())),
            Err(e) => Err(ConstraintError::Validation(format!(
                "jsonschema could not compile the schema: {e}"
            ))),
        }
    }
}

#[derive(Clone)]
enum Inner {
    Grammar(Box<Parser>),
    Custom,
}

/// The constraint state of one sequence. Follows the sampling loop:
/// [`compute_mask`](Self::compute_mask) → sample → [`commit_token`](Self::commit_token).
///
/// Cloning copies the parser chart (linear in the text so far): a clone can try a token
/// without touching the original (see [`commit_if_closable`](Self::commit_if_closable)).
#[derive(Clone)]
pub struct ConstraintState {
    c: Arc<CompiledConstraint>,
    inner: Inner,
    text: Vec<u8>,
    accepting: bool,
    eos_done: bool,
    frames: Vec<Frame>,
    /// Scratch: the mask-cache key of the current state.
    key: MaskKey,
    /// Scratch: a group's live states as grammar lexeme ids.
    live: Vec<(u32, StateID)>,
    /// The shortest completion of the text so far, once asked for, with its length in tokens
    /// (greedy tokenization), keyed by the text's length (every commit lengthens the text).
    completion: Option<(usize, Option<Completion>)>,
}

/// A shortest completion's bytes and its token count.
type Completion = (Vec<u8>, usize);

impl std::fmt::Debug for ConstraintState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintState")
            .field("bytes", &self.text.len())
            .field("accepting", &self.accepting)
            .finish()
    }
}

impl ConstraintState {
    /// The compiled constraint this state runs.
    pub fn constraint(&self) -> &Arc<CompiledConstraint> {
        &self.c
    }

    /// The bytes committed so far.
    pub fn text_bytes(&self) -> &[u8] {
        &self.text
    }

    /// Writes the set of allowed next tokens into `mask` (which must have the vocabulary's
    /// length). EOS tokens are allowed exactly when the state is accepting. Does not allocate
    /// once the state's buffers have grown.
    pub fn compute_mask(&mut self, mask: &mut TokenMask) -> Result<(), ConstraintError> {
        let vocab = self.c.vocab.clone();
        if mask.len() != vocab.len() {
            return Err(ConstraintError::MaskSize {
                expected: vocab.len(),
                got: mask.len(),
            });
        }
        mask.set_all(false);
        if self.eos_done {
            return Ok(());
        }
        match &mut self.inner {
            Inner::Grammar(p) => {
                let nodes = &vocab.trie.nodes;
                let tokens = &vocab.trie.tokens;
                let root = p.root;
                let g = p.g.clone();
                // the key: the live lexer states, by lexeme uid (grammar-independent)
                self.key.clear();
                self.key.extend(
                    p.live_of(root)
                        .iter()
                        .map(|&(l, s)| (g.lexemes[l as usize].uid, s)),
                );
                let entry = match vocab.masks.get(&self.key) {
                    Some(e) => e,
                    None => {
                        let e = Arc::new(build_entry(p, &vocab, root, &mut self.frames));
                        vocab.masks.insert(self.key.clone(), e.clone());
                        e
                    }
                };
                mask.words_mut().copy_from_slice(&entry.words);
                for grp in &entry.groups {
                    self.live.clear();
                    let rl = p.live_of(root);
                    self.live
                        .extend(grp.live.iter().map(|&(i, s)| (rl[i as usize].0, s)));
                    let gf = p.push_live(root, &self.live);
                    if p.boundary_push(gf) {
                        let bf = p.frame_here(gf.live_start, gf.live_end);
                        for &c in &grp.children {
                            let n = nodes[c as usize];
                            if let Some(f) = p.start_step(n.byte) {
                                for &t in &tokens[n.tok_start as usize..n.tok_end as usize] {
                                    mask.allow(t);
                                }
                                walk_subtree(p, &vocab, c as usize, f, &mut self.frames, mask);
                            }
                            p.restore(bf);
                        }
                    }
                    p.restore(root);
                }
            }
            Inner::Custom => {
                let Kind::Custom(c) = &self.c.kind else {
                    return Ok(());
                };
                let cur = String::from_utf8_lossy(&self.text);
                for id in 0..vocab.len() as u32 {
                    let b = vocab.token_bytes(id);
                    if b.is_empty() {
                        continue;
                    }
                    if c.is_valid_next_token(&cur, &String::from_utf8_lossy(b)) {
                        mask.allow(id);
                    }
                }
            }
        }
        if self.accepting {
            for &e in vocab.eos_ids() {
                mask.allow(e);
            }
        }
        Ok(())
    }

    /// True when `token` is allowed now (without computing a whole mask).
    pub fn is_token_allowed(&mut self, token: u32) -> bool {
        let vocab = self.c.vocab.clone();
        if self.eos_done || token as usize >= vocab.len() {
            return false;
        }
        if vocab.is_eos(token) {
            return self.accepting;
        }
        let bytes = vocab.token_bytes(token);
        if bytes.is_empty() {
            return false;
        }
        match &mut self.inner {
            Inner::Grammar(p) => {
                let root = p.root;
                let mut f = root;
                let mut ok = true;
                for &b in bytes {
                    match p.step(f, b) {
                        Some(n) => f = n,
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                p.restore(root);
                ok
            }
            Inner::Custom => {
                let Kind::Custom(c) = &self.c.kind else {
                    return false;
                };
                c.is_valid_next_token(
                    &String::from_utf8_lossy(&self.text),
                    &String::from_utf8_lossy(bytes),
                )
            }
        }
    }

    /// Advances by `token`. An error (state unchanged) when the token is not allowed; EOS is
    /// allowed only when [`is_accepting`](Self::is_accepting) and finishes the state.
    pub fn commit_token(&mut self, token: u32) -> Result<(), ConstraintError> {
        let vocab = self.c.vocab.clone();
        if token as usize >= vocab.len() {
            return Err(ConstraintError::UnknownToken {
                token,
                vocab_size: vocab.len(),
            });
        }
        if self.eos_done {
            return Err(ConstraintError::TokenNotAllowed { token });
        }
        if vocab.is_eos(token) {
            if self.accepting {
                self.eos_done = true;
                return Ok(());
            }
            return Err(ConstraintError::TokenNotAllowed { token });
        }
        let bytes = vocab.token_bytes(token);
        if bytes.is_empty() {
            return Err(ConstraintError::TokenNotAllowed { token });
        }
        self.commit_bytes_inner(bytes, Some(token))
    }

    /// Advances by raw bytes (for fast-forwarding [`forced_bytes`](Self::forced_bytes), or
    /// driving the state without a tokenizer).
    pub fn commit_bytes(&mut self, bytes: &[u8]) -> Result<(), ConstraintError> {
        if self.eos_done {
            return Err(ConstraintError::TokenNotAllowed { token: u32::MAX });
        }
        self.commit_bytes_inner(bytes, None)
    }

    fn commit_bytes_inner(
        &mut self,
        bytes: &[u8],
        token: Option<u32>,
    ) -> Result<(), ConstraintError> {
        let err = ConstraintError::TokenNotAllowed {
            token: token.unwrap_or(u32::MAX),
        };
        match &mut self.inner {
            Inner::Grammar(p) => {
                let root = p.root;
                let mut f = root;
                for &b in bytes {
                    match p.step(f, b) {
                        Some(n) => f = n,
                        None => {
                            p.restore(root);
                            return Err(err);
                        }
                    }
                }
                if !bytes.is_empty() {
                    p.commit_frame(f);
                }
            }
            Inner::Custom => {
                let Kind::Custom(c) = &self.c.kind else {
                    return Err(err);
                };
                if !c.is_valid_next_token(
                    &String::from_utf8_lossy(&self.text),
                    &String::from_utf8_lossy(bytes),
                ) {
                    return Err(err);
                }
            }
        }
        self.text.extend_from_slice(bytes);
        self.accepting = self.compute_accepting();
        Ok(())
    }

    fn compute_accepting(&mut self) -> bool {
        match &mut self.inner {
            Inner::Grammar(p) => {
                let (root, fresh) = (p.root, p.fresh);
                p.accepting(root, fresh)
            }
            Inner::Custom => match &self.c.kind {
                Kind::Custom(c) => c.is_complete(&String::from_utf8_lossy(&self.text)),
                Kind::Grammar(_) => false,
            },
        }
    }

    /// True when the text so far is complete: EOS may be sampled here.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// True when generation is over: EOS was committed, or the text is complete and no byte
    /// can extend it.
    pub fn is_finished(&mut self) -> bool {
        if self.eos_done {
            return true;
        }
        if !self.accepting {
            return false;
        }
        match &mut self.inner {
            Inner::Grammar(p) => {
                let root = p.root;
                for b in 0..=255u8 {
                    if p.step(root, b).is_some() {
                        p.restore(root);
                        return false;
                    }
                }
                true
            }
            Inner::Custom => false,
        }
    }

    /// The bytes the constraint forces next: the longest byte string such that at each point
    /// exactly one byte is allowed and the text is not yet complete. Empty when there is a
    /// choice. Committing them (with [`commit_bytes`](Self::commit_bytes)) skips sampling.
    pub fn forced_bytes(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let Inner::Grammar(p) = &mut self.inner else {
            return out;
        };
        let root = p.root;
        let mut f = root;
        let mut fresh = p.fresh;
        for _ in 0..4096 {
            if p.accepting(f, fresh) {
                break;
            }
            let mut only: Option<(u8, Frame)> = None;
            let mut count = 0;
            for b in 0..=255u8 {
                if let Some(n) = p.step(f, b) {
                    count += 1;
                    p.restore(f);
                    if count > 1 {
                        break;
                    }
                    only = Some((b, n));
                }
            }
            if count != 1 {
                break;
            }
            let Some((b, _)) = only else { break };
            match p.step(f, b) {
                Some(n) => {
                    out.push(b);
                    f = n;
                    fresh = false;
                }
                None => break,
            }
        }
        p.restore(root);
        out
    }

    /// The fewest bytes that make the text so far complete: empty when it already is, `None`
    /// when none is found (a custom constraint, or a grammar whose automata are too large to
    /// search). Appending them, in any tokenization the constraint allows, gives a text the
    /// constraint accepts (and, for JSON Schema, one that validates). Allocates: meant for
    /// the end of a token budget, not every step.
    ///
    /// ```
    /// use fluent_ai_candle_constraints::{CompileOptions, Constraint, ConstraintSpec, Vocabulary};
    /// use std::sync::Arc;
    ///
    /// let tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    /// let vocab = Arc::new(Vocabulary::new(tokens, &[], &[]));
    /// let spec = ConstraintSpec::JsonSchema(serde_json::json!({
    ///     "type": "object",
    ///     "properties": { "name": { "type": "string" }, "n": { "type": "integer" } },
    ///     "required": ["name", "n"],
    ///     "additionalProperties": false
    /// }));
    /// let c = Constraint::compile(&spec, vocab, &CompileOptions::default())?;
    /// let mut state = c.start();
    /// state.commit_bytes(br#"{"name": "a long na"#)?;
    /// let rest = state.shortest_completion().unwrap();
    /// assert_eq!(rest, br#"", "n": 0}"#); // generation mode's one whitespace style
    /// # Ok::<(), fluent_ai_candle_constraints::ConstraintError>(())
    /// ```
    pub fn shortest_completion(&mut self) -> Option<Vec<u8>> {
        self.completion_memo().map(|(rest, _)| rest.clone())
    }

    /// The shortest completion and its token count, computed once per committed text.
    fn completion_memo(&mut self) -> Option<&Completion> {
        let key = self.text.len() + usize::from(self.eos_done);
        if self.completion.as_ref().is_none_or(|(k, _)| *k != key) {
            let rest = if self.eos_done {
                Some(Vec::new())
            } else {
                let accepting = self.accepting;
                match &mut self.inner {
                    Inner::Grammar(p) => p.shortest_completion(accepting),
                    Inner::Custom => accepting.then(Vec::new),
                }
            };
            let rest = rest.map(|r| {
                let n = self.c.vocab.greedy_tokenize(&r).len();
                (r, n)
            });
            self.completion = Some((key, rest));
        }
        self.completion.as_ref().and_then(|(_, r)| r.as_ref())
    }

    /// How many tokens the shortest completion takes (its greedy tokenization, which is how
    /// [`closing_token`](Self::closing_token) walks it): `Some(0)` when the text is complete,
    /// `None` when no completion is known (see
    /// [`shortest_completion`](Self::shortest_completion)). Cached per committed text.
    pub fn completion_tokens(&mut self) -> Option<usize> {
        self.completion_memo().map(|&(_, n)| n)
    }

    /// True when the text can be completed within `budget` tokens with room to spare: the
    /// shortest completion's tokens plus [`closing_slack`] of them (a safety margin for
    /// completions that tokenize differently once part of them is written).
    pub fn can_close_within(&mut self, budget: usize) -> bool {
        self.completion_tokens()
            .is_some_and(|n| n + closing_slack(n) <= budget)
    }

    /// Commits `token` only if the text can still be completed within `budget` tokens after
    /// it ([`can_close_within`](Self::can_close_within)); `Ok(false)`, state unchanged, when
    /// it could not — a freely chosen token can open more than it closes (a new array item
    /// that is an object with required properties), so a caller closing an output against a
    /// token budget tries each sampled token this way and forces the
    /// [`closing_token`](Self::closing_token) instead when it does not fit. An error (state
    /// unchanged) when the token is not allowed at all. An EOS token is committed as by
    /// [`commit_token`](Self::commit_token).
    pub fn commit_if_closable(
        &mut self,
        token: u32,
        budget: usize,
    ) -> Result<bool, ConstraintError> {
        if self.c.vocab.is_eos(token) {
            self.commit_token(token)?;
            return Ok(true);
        }
        let mut next = self.clone();
        next.commit_token(token)?;
        if !next.can_close_within(budget) {
            return Ok(false);
        }
        *self = next;
        Ok(true)
    }

    /// The next token on the way to the end along `completion` (from
    /// [`shortest_completion`](Self::shortest_completion)): the longest allowed token whose
    /// bytes begin it, or an EOS token when `completion` is empty and the text is complete.
    /// `None` when no allowed token fits.
    pub fn closing_token(&mut self, completion: &[u8]) -> Option<u32> {
        let vocab = self.c.vocab.clone();
        if completion.is_empty() {
            if !self.accepting || self.eos_done {
                return None;
            }
            return vocab.eos_ids().first().copied();
        }
        vocab
            .prefix_tokens(completion)
            .into_iter()
            .rev()
            .map(|(_, id)| id)
            .find(|&id| !vocab.is_special(id) && self.is_token_allowed(id))
    }

    /// Forced bytes as tokens (greedy longest-match tokenization of the forced bytes, keeping
    /// only whole tokens).
    pub fn forced_tokens(&mut self) -> Vec<u32> {
        let bytes = self.forced_bytes();
        self.c.vocab.greedy_tokenize(&bytes)
    }
}

/// The safety margin, in tokens, that [`ConstraintState::can_close_within`] keeps above a
/// shortest completion of `tokens` tokens: none for a complete text, else 2 plus an eighth.
/// Closing walks the completion one token at a time, recomputing it after each; a recomputed
/// completion may tokenize a little differently from the first (another path of the same
/// length), and the margin absorbs it.
pub fn closing_slack(tokens: usize) -> usize {
    if tokens == 0 {
        0
    } else {
        2 + tokens / 8
    }
}

/// Most bytes of cached mask parts per vocabulary (two generations of half this each).
const MASK_CACHE_BYTES: usize = 128 << 20;

/// A mask-cache key: the live lexer states as (lexeme uid, automaton state), in live order.
pub(crate) type MaskKey = Vec<(u64, StateID)>;

/// Mask parts keyed by the live lexer states, shared by every grammar compiled against one
/// vocabulary: an entry depends only on the lexemes' automata (shared across grammars, see
/// `grammar::LexemeCache`) and the trie, so the mask inside a JSON string or a number is
/// walked once per process, not once per schema. Bounded by bytes in two generations: when
/// the young one is full it becomes the old one (the previous old one is dropped) and an
/// entry found in the old one moves back, so entries in use survive.
#[derive(Debug, Default)]
pub(crate) struct MaskCache {
    inner: Mutex<MaskGenerations>,
}

#[derive(Debug, Default)]
struct MaskGenerations {
    young: HashMap<MaskKey, Arc<MaskEntry>>,
    old: HashMap<MaskKey, Arc<MaskEntry>>,
    young_bytes: usize,
}

impl MaskGenerations {
    fn put(&mut self, key: MaskKey, e: Arc<MaskEntry>) {
        let size = e.bytes() + key.len() * 16;
        if self.young_bytes + size > MASK_CACHE_BYTES / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        if self.young.insert(key, e).is_none() {
            self.young_bytes += size;
        }
    }
}

impl MaskCache {
    /// The entry of `key`, if cached.
    pub(crate) fn get(&self, key: &[(u64, StateID)]) -> Option<Arc<MaskEntry>> {
        let mut c = self.inner.lock().ok()?;
        if let Some(e) = c.young.get(key) {
            return Some(e.clone());
        }
        let (k, e) = c.old.remove_entry(key)?;
        c.put(k, e.clone());
        Some(e)
    }

    /// Caches `e` under `key`.
    pub(crate) fn insert(&self, key: MaskKey, e: Arc<MaskEntry>) {
        if let Ok(mut c) = self.inner.lock() {
            c.put(key, e);
        }
    }
}

/// The part of a mask that depends only on the live lexer states: tokens that stay inside the
/// current lexemes, plus the trie nodes where a lexeme may end (grouped by the live states
/// there), which need the parser.
#[derive(Debug)]
pub(crate) struct MaskEntry {
    words: Vec<u64>,
    groups: Vec<Group>,
}

impl MaskEntry {
    /// Approximate heap bytes.
    fn bytes(&self) -> usize {
        self.words.len() * 8
            + self
                .groups
                .iter()
                .map(|g| 64 + g.live.len() * 8 + g.children.len() * 4)
                .sum::<usize>()
    }
}

/// Trie nodes where a lexeme may end below the same live states. While an entry is built,
/// `live` holds grammar lexeme ids; once built, positions in the key's live list (so the
/// entry serves every grammar with the same automata).
#[derive(Debug)]
struct Group {
    live: Vec<(u32, StateID)>,
    children: Vec<u32>,
}

type LiveKey = Vec<(u32, StateID)>;

/// A [`MaskEntry`] being built by a walk of the vocabulary trie.
struct EntryBuilder {
    words: Vec<u64>,
    groups: Vec<Group>,
    index: HashMap<LiveKey, usize>,
    states: Vec<StateID>,
}

impl EntryBuilder {
    /// The entry, with each group's lexeme ids replaced by their positions in `root_live`
    /// (every lexeme live below the root was live at the root).
    fn finish(mut self, root_live: &[(u32, StateID)]) -> MaskEntry {
        for grp in &mut self.groups {
            for x in &mut grp.live {
                x.0 = root_live.iter().position(|r| r.0 == x.0).unwrap_or(0) as u32;
            }
        }
        MaskEntry {
            words: self.words,
            groups: self.groups,
        }
    }

    /// Records trie node `node` as a lexeme boundary below live states `key`.
    fn add(&mut self, key: LiveKey, node: usize) -> usize {
        let groups = &mut self.groups;
        let gi = *self.index.entry(key.clone()).or_insert_with(|| {
            groups.push(Group {
                live: key,
                children: Vec::new(),
            });
            groups.len() - 1
        });
        groups[gi].children.push(node as u32);
        gi
    }

    /// Walks trie nodes `first..end` (whole subtrees below a node at depth `base`) where
    /// lexeme `l` alone is live, in state `s`: no parser frames are needed there, the lexeme's
    /// automaton steps alone. Consecutive boundary nodes usually share their parent's state,
    /// so one key lookup serves a run of them.
    fn single(
        &mut self,
        g: &CompiledGrammar,
        vocab: &Vocabulary,
        l: u32,
        s: StateID,
        (first, end, base): (usize, usize, usize),
    ) {
        let mut states = std::mem::take(&mut self.states);
        let mut words = std::mem::take(&mut self.words);
        let mut last: Option<(StateID, usize)> = None;
        g.lexemes[l as usize].walk_trie(
            &vocab.trie,
            first,
            end,
            base,
            s,
            &mut states,
            &mut words,
            &mut |node, st| match last {
                Some((prev, gi)) if prev == st => self.groups[gi].children.push(node as u32),
                _ => last = Some((st, self.add(vec![(l, st)], node))),
            },
        );
        self.states = states;
        self.words = words;
    }
}

fn build_entry(
    p: &mut Parser,
    vocab: &Vocabulary,
    root: Frame,
    frames: &mut Vec<Frame>,
) -> MaskEntry {
    let nodes = &vocab.trie.nodes;
    let tokens = &vocab.trie.tokens;
    let g = p.g.clone();
    let mut b = EntryBuilder {
        words: vec![0u64; vocab.len().div_ceil(64)],
        groups: Vec::new(),
        index: HashMap::new(),
        states: Vec::new(),
    };
    // Inside a string, a number, a key...: one lexeme live at the root, one fast walk.
    if let &[(l, s)] = p.live_of(root) {
        b.single(&g, vocab, l, s, (1, nodes.len(), 0));
        return b.finish(p.live_of(root));
    }
    frames.clear();
    frames.push(root);
    let mut i = 1usize;
    while i < nodes.len() {
        let n = nodes[i];
        let d = n.depth as usize;
        if frames.len() > d {
            frames.truncate(d);
            p.restore(frames[d - 1]);
        }
        let parent = frames[d - 1];
        match p.lex_step(parent, n.byte) {
            Some(f) => {
                for &t in &tokens[n.tok_start as usize..n.tok_end as usize] {
                    b.words[t as usize / 64] |= 1u64 << (t % 64);
                }
                let one = match p.live_of(f) {
                    &[(l, s)] => Some((l, s)),
                    _ => None,
                };
                if let Some((l, s)) = one {
                    // one lexeme left below this node: its subtree by the fast walk
                    b.single(&g, vocab, l, s, (i + 1, n.end as usize, d));
                    p.restore(parent);
                    i = n.end as usize;
                } else {
                    frames.push(f);
                    i += 1;
                }
            }
            None => {
                if p.any_matched(parent) {
                    b.add(p.live_of(parent).to_vec(), i);
                }
                i = n.end as usize;
            }
        }
    }
    p.restore(root);
    b.finish(p.live_of(root))
}

/// Walks the trie below node `c` (whose frame is `f`) with full steps, allowing tokens.
fn walk_subtree(
    p: &mut Parser,
    vocab: &Vocabulary,
    c: usize,
    f: Frame,
    frames: &mut Vec<Frame>,
    mask: &mut TokenMask,
) {
    let nodes = &vocab.trie.nodes;
    let tokens = &vocab.trie.tokens;
    let base = nodes[c].depth as usize;
    frames.clear();
    frames.resize(base + 1, f);
    let end = nodes[c].end as usize;
    let mut i = c + 1;
    while i < end {
        let n = nodes[i];
        let d = n.depth as usize;
        if frames.len() > d {
            frames.truncate(d);
            p.restore(frames[d - 1]);
        }
        match p.step(frames[d - 1], n.byte) {
            Some(nf) => {
                for &t in &tokens[n.tok_start as usize..n.tok_end as usize] {
                    mask.allow(t);
                }
                frames.push(nf);
                i += 1;
            }
            None => i = n.end as usize,
        }
    }
    p.restore(f);
}
