//! Tool calling (OpenAI's `tools`): the functions a request offers ([`ToolDefinition`]), whether
//! and which one the model must call ([`ToolChoice`]), the constraint that makes a forced call's
//! arguments always parse and validate ([`forced_call_constraint`]), and the parsers that read
//! calls back out of generated text ([`parse_tool_calls`], [`ToolCallStream`]).
//!
//! The prompt side is the chat template's
//! ([`ChatTemplate::render_with_tools`](fluent_ai_candle_models::ChatTemplate::render_with_tools)):
//! the engine hands it the tools as OpenAI's JSON objects ([`ToolDefinition::to_json`]).
//!
//! Output formats read back, wherever they appear:
//! - Hermes / Qwen: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, one or more (a last
//!   one without its closing tag is accepted when its JSON is whole; one cut mid-JSON after
//!   whole ones stays content, and the whole ones are kept);
//! - Llama 3: the whole output one JSON object `{"name": …, "parameters"|"arguments": {…}}`
//!   (or a list of them), optionally after `<|python_tag|>`;
//! - Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]` or `[TOOL_CALLS]name[ARGS]{…}`.
//!
//! Text that is not a well-formed call stays content: a malformed call never fails a request.
//!
//! ```
//! use fluent_ai_candle_engine::tools::parse_tool_calls;
//! let out = parse_tool_calls(
//!     "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
//! );
//! assert_eq!(out.content.as_deref(), Some("Let me look.\n"));
//! assert_eq!(out.tool_calls[0].name, "get_weather");
//! assert_eq!(out.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
//! assert!(out.tool_calls[0].id.starts_with("call_"));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use fluent_ai_candle_constraints::{ConstraintSpec, TaggedJson};
use serde_json::{json, Map, Value};

pub use fluent_ai_candle_models::ChatToolCall;

use crate::api::{CandleCompletionRequest, Prompt};
use crate::EngineError;

/// What opens a forced call (the Hermes format, which the fallback prompt asks for).
pub const CALL_PREFIX: &str = "<tool_call>\n";
/// What closes a forced call.
pub const CALL_SUFFIX: &str = "\n</tool_call>";

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";
const MARKERS: [&str; 3] = [HERMES_OPEN, MISTRAL, PYTHON_TAG];

/// One function the model may call (OpenAI's `tools[i].function`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    /// The function's name.
    pub name: String,
    /// What it does (shown to the model).
    pub description: Option<String>,
    /// Its arguments' JSON Schema (an object schema; `None`: no arguments).
    pub parameters: Option<Value>,
}

impl ToolDefinition {
    /// A function with a name and an arguments schema.
    pub fn new(name: impl Into<String>, parameters: Value) -> Self {
        Self {
            name: name.into(),
            description: None,
            parameters: Some(parameters),
        }
    }

    /// OpenAI's tool object, the shape Hugging Face chat templates receive in `tools`:
    /// `{"type": "function", "function": {"name", "description", "parameters"}}`.
    pub fn to_json(&self) -> Value {
        let mut f = Map::new();
        f.insert("name".into(), self.name.clone().into());
        if let Some(d) = &self.description {
            f.insert("description".into(), d.clone().into());
        }
        if let Some(p) = &self.parameters {
            f.insert("parameters".into(), p.clone());
        }
        json!({"type": "function", "function": f})
    }

    /// The arguments' schema as the constraint reads it (no parameters or `{}`: an object).
    fn arguments_schema(&self) -> Value {
        match &self.parameters {
            None => json!({"type": "object", "properties": {}}),
            Some(Value::Object(m)) if m.is_empty() => json!({"type": "object"}),
            Some(p) => p.clone(),
        }
    }
}

/// Whether and which function the model must call (OpenAI's `tool_choice`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model chooses between text and calls (the default).
    #[default]
    Auto,
    /// No calls: the tools are not shown to the model and the output is plain text.
    None,
    /// At least one call, generated under the tools' schemas.
    Required,
    /// A call of this function, generated under its schema.
    Function(String),
}

impl ToolChoice {
    /// True when a call is forced (`Required` or a named function).
    pub fn is_forced(&self) -> bool {
        matches!(self, ToolChoice::Required | ToolChoice::Function(_))
    }
}

/// Generated text split into content and calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedToolCalls {
    /// The text outside the calls (`None` when it is only whitespace).
    pub content: Option<String>,
    /// The calls, in order: fresh ids `call_…`, arguments as compact JSON text.
    pub tool_calls: Vec<ChatToolCall>,
}

/// A fresh call id: `call_` and 24 letters and digits.
pub fn new_call_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut state = nanos ^ N.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let mut id = String::from("call_");
    let mut r = 0u64;
    for i in 0..24 {
        if i % 8 == 0 {
            r = fluent_ai_candle_sampling::splitmix64(&mut state);
        }
        id.push(ALPHABET[(r % 62) as usize] as char);
        r /= 62;
    }
    id
}

/// Checks a request's tools against its choice and prompt: unique non-empty names, object
/// schemas, a named choice among the tools, a forced call only with tools and without another
/// constraint, tools only with a chat.
pub(crate) fn check(request: &CandleCompletionRequest, prompt: &Prompt) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidRequest(m));
    if request.tools.is_empty() {
        if request.tool_choice.is_forced() {
            return bad("tool_choice forces a call but the request has no tools".into());
        }
        return Ok(());
    }
    if !prompt.is_chat() {
        return bad("tools need a chat prompt".into());
    }
    for (i, t) in request.tools.iter().enumerate() {
        if t.name.is_empty() {
            return bad(format!("tools[{i}] has an empty name"));
        }
        if request.tools[..i].iter().any(|u| u.name == t.name) {
            return bad(format!("two tools are named '{}'", t.name));
        }
        if t.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return bad(format!(
                "the parameters of '{}' are not a JSON Schema object",
                t.name
            ));
        }
    }
    if let ToolChoice::Function(name) = &request.tool_choice {
        if !request.tools.iter().any(|t| &t.name == name) {
            return bad(format!(
                "tool_choice names '{name}', which is not among the tools"
            ));
        }
    }
    if request.tool_choice.is_forced()
        && request
            .constraints
            .as_deref()
            .is_some_and(|c| !c.is_empty())
    {
        return bad("a forced tool call cannot be combined with another output constraint".into());
    }
    Ok(())
}

/// The constraint a forced call is generated under, or `None` when no call is forced.
///
/// Each call is `<tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call>` where the JSON
/// follows `{"type": "object", "properties": {"name": {"const": NAME}, "arguments":
/// PARAMETERS}, "required": ["name", "arguments"], "additionalProperties": false}` — one such
/// schema for a named function, their `anyOf` for `Required`. With `parallel` several calls
/// (one per line) may follow, else exactly one. The tools' `$defs`/`definitions` move to the
/// schema's root so their `$ref`s resolve (the same name defined twice differently is refused).
pub fn forced_call_constraint(
    tools: &[ToolDefinition],
    choice: &ToolChoice,
    parallel: bool,
) -> Result<Option<ConstraintSpec>, EngineError> {
    let targets: Vec<&ToolDefinition> = match choice {
        ToolChoice::Auto | ToolChoice::None => return Ok(None),
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
    };
    if targets.is_empty() {
        return Err(EngineError::InvalidRequest(
            "tool_choice forces a call but no tool matches it".into(),
        ));
    }
    let mut defs: [(&str, Map<String, Value>); 2] =
        [("$defs", Map::new()), ("definitions", Map::new())];
    let mut branches = Vec::with_capacity(targets.len());
    for t in targets {
        let params = t.arguments_schema();
        for (key, into) in &mut defs {
            if let Some(Value::Object(d)) = params.get(*key) {
                for (k, v) in d {
                    match into.get(k) {
                        Some(old) if old != v => {
                            return Err(EngineError::InvalidRequest(format!(
                                "the tools define `{key}/{k}` differently"
                            )))
                        }
                        _ => {
                            into.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
        branches.push(json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": false
        }));
    }
    let mut schema = if branches.len() == 1 {
        branches.remove(0)
    } else {
        json!({"anyOf": branches})
    };
    for (key, d) in defs {
        if !d.is_empty() {
            schema[key] = Value::Object(d);
        }
    }
    Ok(Some(ConstraintSpec::TaggedJson(TaggedJson {
        prefix: CALL_PREFIX.into(),
        suffix: CALL_SUFFIX.into(),
        separator: "\n".into(),
        min: 1,
        max: if parallel { None } else { Some(1) },
        ..TaggedJson::new(schema)
    })))
}

/// Splits generated text into content and tool calls (the formats of the [module](self)).
/// Never fails: text that is not a well-formed call is content.
pub fn parse_tool_calls(text: &str) -> ParsedToolCalls {
    let whole = |content: &str| ParsedToolCalls {
        content: non_blank(content),
        tool_calls: Vec::new(),
    };
    // Llama 3: the whole output is the call(s).
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix(PYTHON_TAG)
        .unwrap_or(trimmed)
        .trim_start();
    if body.starts_with('{') || body.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Value>(body) {
            if let Some(calls) = llama_calls(&v) {
                return ParsedToolCalls {
                    content: None,
                    tool_calls: calls,
                };
            }
        }
    }
    let Some(m) = first_marker(text) else {
        return whole(text);
    };
    let mut content = text[..m].to_string();
    let mut calls = Vec::new();
    let mut rest = &text[m..];
    loop {
        let Some((found, after)) = marked_calls(rest) else {
            // A last call cut short (no closing tag, JSON unfinished: the output ran into
            // `max_tokens`) after whole ones: the whole ones are kept, the cut one is content.
            let cut = rest.strip_prefix(HERMES_OPEN).is_some_and(|after| {
                let mut values =
                    serde_json::Deserializer::from_str(after.trim_start()).into_iter::<Value>();
                matches!(values.next(), Some(Err(e)) if e.is_eof())
            });
            if cut && !calls.is_empty() {
                content.push_str(rest);
                break;
            }
            return whole(text);
        };
        calls.extend(found);
        rest = after;
        match first_marker(rest) {
            Some(m) => {
                content.push_str(&rest[..m]);
                rest = &rest[m..];
            }
            None => {
                content.push_str(rest);
                break;
            }
        }
    }
    ParsedToolCalls {
        content: non_blank(&content),
        tool_calls: calls,
    }
}

fn non_blank(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.to_string())
}

fn first_marker(text: &str) -> Option<usize> {
    MARKERS.iter().filter_map(|m| text.find(m)).min()
}

/// The calls of the marker `text` starts with, and the text after them; `None` when
/// malformed.
fn marked_calls(text: &str) -> Option<(Vec<ChatToolCall>, &str)> {
    if let Some(after) = text.strip_prefix(HERMES_OPEN) {
        // The JSON value first, then the closing tag (or the end of the text): a
        // `</tool_call>` inside a string argument is text, not the end of the call.
        let (v, rest) = first_json(after.trim_start())?;
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix(HERMES_CLOSE) {
            Some(r) => r,
            None if rest.is_empty() => rest,
            None => return None,
        };
        return Some((vec![call_of(&v)?], rest));
    }
    if let Some(after) = text.strip_prefix(PYTHON_TAG) {
        let (v, rest) = first_json(after.trim_start())?;
        return Some((llama_calls(&v)?, rest));
    }
    let after = text.strip_prefix(MISTRAL)?.trim_start();
    if after.starts_with('[') {
        let (v, rest) = first_json(after)?;
        let calls = v
            .as_array()?
            .iter()
            .map(call_of)
            .collect::<Option<Vec<_>>>()?;
        return (!calls.is_empty()).then_some((calls, rest));
    }
    // The newer layout: `name[ARGS]{…}` (or `name[CALL_ID]id[ARGS]{…}`).
    let args_at = after.find("[ARGS]")?;
    let name = after[..args_at].split("[CALL_ID]").next()?.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let (args, rest) = first_json(after[args_at + "[ARGS]".len()..].trim_start())?;
    Some((vec![call(name, &args)?], rest))
}

/// The first JSON value of `text` and the text after it.
fn first_json(text: &str) -> Option<(Value, &str)> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let v = values.next()?.ok()?;
    Some((v, &text[values.byte_offset()..]))
}

/// A Llama 3 call object (only `name`, `parameters`/`arguments` and `type` keys) or a list of
/// them.
fn llama_calls(v: &Value) -> Option<Vec<ChatToolCall>> {
    let one = |v: &Value| {
        let m = v.as_object()?;
        let known = ["name", "parameters", "arguments", "type"];
        if !m.contains_key("name") || m.keys().any(|k| !known.contains(&k.as_str())) {
            return None;
        }
        call_of(v)
    };
    match v {
        Value::Array(a) if !a.is_empty() => a.iter().map(one).collect(),
        Value::Object(_) => Some(vec![one(v)?]),
        _ => None,
    }
}

/// A call object: `{"name", "arguments"|"parameters"}` (or OpenAI's `{"function": {…}}`).
fn call_of(v: &Value) -> Option<ChatToolCall> {
    if let Some(f) = v.get("function").filter(|f| f.is_object()) {
        return call_of(f);
    }
    let name = v.get("name")?.as_str()?;
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    call(name, &args)
}

fn call(name: &str, args: &Value) -> Option<ChatToolCall> {
    if name.is_empty() {
        return None;
    }
    let arguments = match args {
        Value::Object(_) => serde_json::to_string(args).ok()?,
        // Arguments already as JSON text.
        Value::String(s) if serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object()) => {
            s.clone()
        }
        _ => return None,
    };
    Some(ChatToolCall {
        id: new_call_id(),
        name: name.to_string(),
        arguments,
    })
}

/// Tool calls out of a text that arrives in pieces: content is passed on as it comes, except
/// what may be (the start of) a call, which is held until [`finish`](Self::finish) parses
/// it. The content passed on plus what `finish` returns is exactly
/// [`parse_tool_calls`] of the whole text.
///
/// ```
/// use fluent_ai_candle_engine::tools::ToolCallStream;
/// let mut s = ToolCallStream::default();
/// let mut shown = String::new();
/// for piece in ["Checking", " now.<tool", "_call>{\"name\": \"f\", ", "\"arguments\": {}}</tool_call>"] {
///     shown.push_str(&s.push(piece));
/// }
/// assert_eq!(shown, "Checking now.");
/// let end = s.finish();
/// assert_eq!(end.content, None);
/// assert_eq!(end.tool_calls[0].name, "f");
/// ```
#[derive(Debug, Clone, Default)]
pub struct ToolCallStream {
    text: String,
    emitted: usize,
    held: bool,
}

impl ToolCallStream {
    /// Takes the next piece of text; returns the content that can be shown now.
    pub fn push(&mut self, piece: &str) -> String {
        self.text.push_str(piece);
        if self.held {
            return String::new();
        }
        let start = self.text.trim_start();
        if start.is_empty() {
            return String::new();
        }
        if self.emitted == 0 && (start.starts_with('{') || start.starts_with('[')) {
            // Maybe a whole-output JSON call: wait for the end.
            self.held = true;
            return String::new();
        }
        let end = match first_marker(&self.text) {
            Some(m) => {
                self.held = true;
                m
            }
            None => {
                // Hold back a tail that may begin a marker.
                let t = &self.text;
                let keep = MARKERS
                    .iter()
                    .flat_map(|m| (1..m.len()).rev().map(move |k| &m[..k]))
                    .filter(|p| t.ends_with(p))
                    .map(str::len)
                    .max()
                    .unwrap_or(0);
                t.len() - keep
            }
        };
        if end <= self.emitted || self.text[..end].trim().is_empty() {
            return String::new();
        }
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// The end of the text: the calls, and the content not yet passed on (`None` when there
    /// is none but whitespace).
    pub fn finish(self) -> ParsedToolCalls {
        let parsed = parse_tool_calls(&self.text);
        let content = parsed.content.and_then(|c| {
            let rest = c.get(self.emitted..).unwrap_or_default();
            (!rest.is_empty() && (self.emitted > 0 || !rest.trim().is_empty()))
                .then(|| rest.to_string())
        });
        ParsedToolCalls {
            content,
            tool_calls: parsed.tool_calls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(text: &str) -> Vec<(String, String)> {
        parse_tool_calls(text)
            .tool_calls
            .into_iter()
            .map(|c| (c.name, c.arguments))
            .collect()
    }

    fn pair(name: &str, args: &str) -> (String, String) {
        (name.to_string(), args.to_string())
    }

    /// A closing tag inside a string argument is text (a forced call at temperature 1.0 wrote
    /// this, which a parser cutting at the first `</tool_call>` turned into plain content).
    #[test]
    fn a_closing_tag_inside_a_string_is_not_the_end_of_the_call() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"{city}}}</tool_call> for day of tomorrow\", \"unit\": \"fahrenheit\", \"days\": 1}}\n</tool_call>";
        let want = vec![pair(
            "get_weather",
            r#"{"city":"{city}}}</tool_call> for day of tomorrow","unit":"fahrenheit","days":1}"#,
        )];
        assert_eq!(calls(text), want);
        assert_eq!(parse_tool_calls(text).content, None);
        // The same in pieces, split inside the string's tag.
        let mut s = ToolCallStream::default();
        let mut shown = String::new();
        for piece in text.split_inclusive("</tool") {
            shown.push_str(&s.push(piece));
        }
        assert_eq!(shown, "");
        let end = s.finish();
        let streamed: Vec<_> = end
            .tool_calls
            .into_iter()
            .map(|c| (c.name, c.arguments))
            .collect();
        assert_eq!(streamed, want);
        // A call cut inside such a string after a whole one: the whole one is kept.
        let cut = format!(
            "{}\n<tool_call>\n{{\"name\": \"f\", \"arguments\": {{\"a\": \"x</tool_call> y",
            text
        );
        let parsed = parse_tool_calls(&cut);
        assert_eq!(parsed.tool_calls.len(), 1);
        assert!(parsed.content.unwrap().contains("x</tool_call> y"));
    }

    #[test]
    fn hermes_one_or_several_calls() {
        let one = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>";
        let p = parse_tool_calls(one);
        assert_eq!(p.content, None);
        assert_eq!(
            calls(one),
            vec![pair("get_weather", r#"{"city":"Paris","days":2}"#)]
        );
        let two = format!("Sure.\n{one}\n<tool_call>{{\"name\": \"time\", \"arguments\": {{}}}}</tool_call>\nDone.");
        let p = parse_tool_calls(&two);
        assert_eq!(p.content.as_deref(), Some("Sure.\n\n\nDone."));
        assert_eq!(p.tool_calls.len(), 2);
        assert_eq!(p.tool_calls[1].name, "time");
        assert_eq!(p.tool_calls[1].arguments, "{}");
        assert_ne!(p.tool_calls[0].id, p.tool_calls[1].id);
        // Arguments given as JSON text, and a last call whose closing tag is missing.
        assert_eq!(
            calls("<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}"),
            vec![pair("f", "{\"a\": 1}")]
        );
    }

    #[test]
    fn llama3_json_output() {
        assert_eq!(
            calls("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}"),
            vec![pair("get_weather", r#"{"city":"Oslo"}"#)]
        );
        assert_eq!(
            calls("<|python_tag|>{\"type\": \"function\", \"name\": \"f\", \"arguments\": {\"x\": true}}"),
            vec![pair("f", r#"{"x":true}"#)]
        );
        assert_eq!(
            calls(
                " [{\"name\": \"a\", \"parameters\": {}}, {\"name\": \"b\", \"parameters\": {}}] "
            ),
            vec![pair("a", "{}"), pair("b", "{}")]
        );
        // JSON that is not a call (other keys) is content.
        let p = parse_tool_calls("{\"name\": \"Ann\", \"age\": 3}");
        assert!(p.tool_calls.is_empty());
        assert_eq!(
            p.content.as_deref(),
            Some("{\"name\": \"Ann\", \"age\": 3}")
        );
    }

    #[test]
    fn mistral_tool_calls() {
        assert_eq!(
            calls("[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"q\": \"x\"}}, {\"name\": \"g\", \"arguments\": {}}]"),
            vec![pair("f", r#"{"q":"x"}"#), pair("g", "{}")]
        );
        assert_eq!(
            calls("[TOOL_CALLS]search[ARGS]{\"q\": \"rust\"}"),
            vec![pair("search", r#"{"q":"rust"}"#)]
        );
        assert_eq!(
            calls("[TOOL_CALLS]search[CALL_ID]abc123XYZ[ARGS]{\"q\": 1}"),
            vec![pair("search", r#"{"q":1}"#)]
        );
    }

    #[test]
    fn malformed_calls_are_content() {
        for text in [
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": </tool_call>",
            "<tool_call>not json</tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": 3}</tool_call>",
            "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
            "[TOOL_CALLS][{\"name\": \"f\"",
            "[TOOL_CALLS]",
            "[TOOL_CALLS]a b[ARGS]{}",
            "<|python_tag|>print(1)",
            "{\"name\": \"f\", \"parameters\": {",
            "[1, 2]",
            "<tool_call>",
            "plain text",
        ] {
            let p = parse_tool_calls(text);
            assert!(p.tool_calls.is_empty(), "{text}");
            assert_eq!(p.content.as_deref(), Some(text));
        }
        assert_eq!(parse_tool_calls("  \n").content, None);
        // One good call and one malformed: all content, nothing half-parsed.
        let mixed =
            "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call><tool_call>{</tool_call>";
        assert!(parse_tool_calls(mixed).tool_calls.is_empty());
    }

    /// Streamed in pieces of every size, content and calls assemble into the one-shot parse.
    #[test]
    fn streaming_matches_the_one_shot_parse() {
        let texts = [
            "Hello there, no calls.",
            "Let me check <tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call> ok",
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
            "  {\"name\": \"f\", \"parameters\": {\"x\": \"<tool\"}}",
            "{ not a call",
            "a < b and [c]",
            "[TOOL_CALLS][{\"name\": \"g\", \"arguments\": {}}]",
            "x <tool_call>{bad</tool_call> y",
            "ends with <tool_ca",
            "\n\n",
            "  <|python_tag|>{\"name\": \"f\", \"parameters\": {}}",
            "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>\n<tool_call>\n{\"na",
        ];
        for text in texts {
            let whole = parse_tool_calls(text);
            for size in 1..=text.len() {
                let mut s = ToolCallStream::default();
                let mut shown = String::new();
                let mut i = 0;
                while i < text.len() {
                    let mut j = (i + size).min(text.len());
                    while !text.is_char_boundary(j) {
                        j += 1;
                    }
                    shown.push_str(&s.push(&text[i..j]));
                    i = j;
                }
                let end = s.finish();
                shown.push_str(end.content.as_deref().unwrap_or(""));
                assert_eq!(
                    non_blank(&shown),
                    whole.content,
                    "{text:?} in pieces of {size}"
                );
                let names = |c: &[ChatToolCall]| {
                    c.iter()
                        .map(|c| (c.name.clone(), c.arguments.clone()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(names(&end.tool_calls), names(&whole.tool_calls));
            }
        }
    }

    #[test]
    fn forced_constraints_cover_the_chosen_tools() {
        let tools = vec![
            ToolDefinition::new(
                "get_weather",
                json!({"type": "object", "properties": {"city": {"$ref": "#/$defs/city"}},
                       "required": ["city"], "$defs": {"city": {"type": "string"}}}),
            ),
            ToolDefinition {
                name: "now".into(),
                description: None,
                parameters: None,
            },
        ];
        assert!(forced_call_constraint(&tools, &ToolChoice::Auto, true)
            .unwrap()
            .is_none());
        let Some(ConstraintSpec::TaggedJson(t)) =
            forced_call_constraint(&tools, &ToolChoice::Function("now".into()), false).unwrap()
        else {
            panic!("not tagged JSON")
        };
        assert_eq!((t.min, t.max), (1, Some(1)));
        assert_eq!(t.schema["properties"]["name"]["const"], "now");
        let Some(ConstraintSpec::TaggedJson(t)) =
            forced_call_constraint(&tools, &ToolChoice::Required, true).unwrap()
        else {
            panic!("not tagged JSON")
        };
        assert_eq!(t.max, None);
        assert_eq!(t.schema["anyOf"].as_array().unwrap().len(), 2);
        assert_eq!(t.schema["$defs"]["city"]["type"], "string");
        assert!(forced_call_constraint(&tools, &ToolChoice::Function("x".into()), true).is_err());
    }

    #[test]
    fn requests_are_checked_before_any_work() {
        let chat = Prompt::user("hi");
        let tool = ToolDefinition::new("f", json!({"type": "object"}));
        let ok = CandleCompletionRequest {
            tools: vec![tool.clone()],
            tool_choice: ToolChoice::Function("f".into()),
            ..CandleCompletionRequest::new(chat.clone())
        };
        check(&ok, &chat).unwrap();
        let bad = [
            CandleCompletionRequest {
                tool_choice: ToolChoice::Required,
                ..CandleCompletionRequest::new(chat.clone())
            },
            CandleCompletionRequest {
                tool_choice: ToolChoice::Function("g".into()),
                ..ok.clone()
            },
            CandleCompletionRequest {
                tools: vec![tool.clone(), tool.clone()],
                ..ok.clone()
            },
            CandleCompletionRequest {
                tools: vec![ToolDefinition::new("f", json!([1]))],
                ..ok.clone()
            },
            CandleCompletionRequest {
                constraints: Some(vec![ConstraintSpec::JsonObject]),
                ..ok.clone()
            },
        ];
        for r in &bad {
            assert!(
                matches!(check(r, &chat), Err(EngineError::InvalidRequest(_))),
                "{r:?}"
            );
        }
        // Tools need a chat.
        let text = Prompt::Text("hi".into());
        assert!(check(&ok, &text).is_err());
    }

    #[test]
    fn call_ids_are_fresh() {
        let a = new_call_id();
        assert!(a.starts_with("call_") && a.len() == 29, "{a}");
        assert!(a[5..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, new_call_id());
    }
}
