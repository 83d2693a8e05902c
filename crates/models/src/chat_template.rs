//! Chat templates (`tokenizer.chat_template` of a GGUF, `chat_template` of a Hugging Face
//! `tokenizer_config.json`; Jinja) rendered with minijinja.
//!
//! The environment mimics the one Hugging Face `transformers` renders chat
//! templates in: `trim_blocks` and `lstrip_blocks` on, `raise_exception(msg)`,
//! `strftime_now(fmt)`, a Python-style `tojson` filter (`", "`/`": "`
//! separators, non-ASCII kept, optional `indent`), and the common Python
//! string/dict methods (`strip`, `split`, `startswith`, `items`, `get`, ...): those are
//! `minijinja-contrib`'s `pycompat`, with `dict.get(key, default)` and `str.rsplit` added
//! here where it has none. `strftime_now` formats with `chrono`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, State, Value};
use serde::{Deserialize, Serialize};

use crate::tokenizer::{special_token_text, CandleTokenizer, TOKENIZER_CONFIG_JSON};
use crate::{ModelError, Result};

const TEMPLATE_NAME: &str = "chat";

/// The ChatML template used when a model ships none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One chat message.
///
/// Besides `role` and `content`, the fields of OpenAI's tool calling: an assistant message's
/// `tool_calls` (its content may then be empty) and a `tool` message's `tool_call_id` (and the
/// function's `name`). [`ChatTemplate::render_with_tools`] hands them to the template the way
/// Hugging Face templates expect them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The message text.
    pub content: String,
    /// The function calls of an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The participant's name (a `tool` message: the function's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// An assistant message that calls functions (`content` may be empty).
    pub fn assistant_tool_calls(content: impl Into<String>, calls: Vec<ChatToolCall>) -> Self {
        ChatMessage {
            tool_calls: calls,
            ..ChatMessage::new("assistant", content)
        }
    }

    /// A `tool` message: the result of the call `tool_call_id`.
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            tool_call_id: Some(tool_call_id.into()),
            ..ChatMessage::new("tool", content)
        }
    }
}

/// One function call of an assistant message (OpenAI's `tool_calls[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatToolCall {
    /// The call's id (`call_…`), which the `tool` message answering it names.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// What a template does with tools, found by rendering probe conversations once when it is
/// compiled (a template that fails on a probe is taken not to support that feature).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolSupport {
    /// It renders the `tools` list (a probe function's name appears in its output).
    pub tools: bool,
    /// It renders an assistant message's `tool_calls`.
    pub tool_calls: bool,
    /// It wants `function.arguments` as a JSON object (Hugging Face's convention) rather
    /// than the JSON text OpenAI sends.
    pub arguments_as_object: bool,
}

/// The system-message text that describes `tools` to a model whose template does not render
/// them (the Hermes convention: the functions as JSON within `<tools></tools>`, calls asked for
/// as `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, which the engine parses back).
pub fn tool_system_prompt(tools: &[serde_json::Value]) -> String {
    let mut out = String::from(
        "You can call functions to help with the user's request. \
         The functions are described as JSON objects within <tools></tools> tags:\n<tools>\n",
    );
    for t in tools {
        py_json(t, None, 0, &mut out);
        out.push('\n');
    }
    out.push_str(
        "</tools>\nTo call a function, write a JSON object with its name and arguments \
         within <tool_call></tool_call> tags, like this:\n<tool_call>\n\
         {\"name\": \"function_name\", \"arguments\": {\"argument\": \"value\"}}\n</tool_call>",
    );
    out
}

/// A call written as text the way [`tool_system_prompt`] asks for it
/// (`<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`).
pub fn tool_call_text(call: &ChatToolCall) -> String {
    let mut out = String::from("<tool_call>\n{\"name\": ");
    json_string(&call.name, &mut out);
    out.push_str(", \"arguments\": ");
    match serde_json::from_str::<serde_json::Value>(&call.arguments) {
        Ok(v) => py_json(&v, None, 0, &mut out),
        Err(_) => json_string(&call.arguments, &mut out),
    }
    out.push_str("}\n</tool_call>");
    out
}

/// A compiled chat template plus the BOS/EOS strings it may reference.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    tool_support: ToolSupport,
}

fn tmpl_err(e: Error) -> ModelError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    ModelError::ChatTemplate(msg)
}

impl ChatTemplate {
    /// Compiles `source` (Jinja). `bos_token`/`eos_token` are exposed to the
    /// template as `bos_token` and `eos_token`.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(python_method);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(tmpl_err)?;
        let mut t = ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            tool_support: ToolSupport::default(),
        };
        t.tool_support = t.probe_tool_support();
        Ok(t)
    }

    /// The ChatML template (`<|im_start|>role\ncontent<|im_end|>\n`), the
    /// fallback for a GGUF without `tokenizer.chat_template`.
    pub fn chatml() -> Self {
        // The fixed template always compiles; fall back to an empty
        // environment rather than panicking should that ever change.
        Self::new(CHATML_TEMPLATE, "", "<|im_end|>").unwrap_or_else(|_| ChatTemplate {
            env: Environment::new(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".to_string(),
            tool_support: ToolSupport::default(),
        })
    }

    /// The template of a GGUF file (`tokenizer.chat_template`, with BOS/EOS
    /// texts from the vocabulary), or [`ChatTemplate::chatml`] when it has none.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let md: &HashMap<String, GgufValue> = &content.metadata;
        let Some(GgufValue::String(source)) = md.get("tokenizer.chat_template") else {
            return Ok(Self::chatml());
        };
        let token_text = |key: &str| -> String {
            let id = md.get(key).and_then(|v| v.to_u32().ok());
            let tokens = md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok());
            match (id, tokens) {
                (Some(id), Some(tokens)) => tokens
                    .get(id as usize)
                    .and_then(|t| t.to_string().ok())
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            }
        };
        Self::new(
            source,
            &token_text("tokenizer.ggml.bos_token_id"),
            &token_text("tokenizer.ggml.eos_token_id"),
        )
    }

    /// The template of a Hugging Face model directory: `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of `{name, template}` objects: the one named
    /// `default`, else the first), else a `chat_template.jinja` file in `dir`, else
    /// [`ChatTemplate::chatml`]. The BOS/EOS texts are `tokenizer_config.json`'s `bos_token`
    /// and `eos_token`, else the texts of `tokenizer`'s BOS/EOS ids.
    ///
    /// Errors: malformed JSON or a `chat_template` of another type is
    /// [`ModelError::InvalidModelFile`], a template that does not compile
    /// [`ModelError::ChatTemplate`], both naming the file.
    pub fn from_hf_dir(dir: &Path, tokenizer: &CandleTokenizer) -> Result<Self> {
        let config_path = dir.join(TOKENIZER_CONFIG_JSON);
        let config = if config_path.is_file() {
            Some(crate::safetensors::read_json(&config_path)?)
        } else {
            None
        };
        let invalid = |reason: &str| crate::safetensors::invalid(&config_path, reason.into());
        let from_config = match config.as_ref().and_then(|c| c.get("chat_template")) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => {
                let template = |t: &serde_json::Value| {
                    t.get("template").and_then(|t| t.as_str()).map(String::from)
                };
                let named = list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
                let chosen = named
                    .or(list.first())
                    .ok_or_else(|| invalid("`chat_template` is an empty list of templates"))?;
                Some(template(chosen).ok_or_else(|| {
                    invalid("a `chat_template` list entry has no `template` string")
                })?)
            }
            Some(_) => return Err(invalid("`chat_template` is neither a string nor a list")),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let (source, source_path) = match from_config {
            Some(s) => (s, config_path.clone()),
            None if jinja_path.is_file() => {
                (crate::safetensors::read_to_string(&jinja_path)?, jinja_path)
            }
            None => return Ok(Self::chatml()),
        };
        let text = |key: &str, id: Option<u32>| -> String {
            let named = config
                .as_ref()
                .and_then(|c| special_token_text(c.get(key)))
                .map(String::from);
            named.unwrap_or_else(|| {
                id.and_then(|id| tokenizer.token_bytes_of(id))
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            })
        };
        Self::new(
            &source,
            &text("bos_token", tokenizer.bos_id()),
            &text("eos_token", tokenizer.eos_id()),
        )
        .map_err(|e| match e {
            ModelError::ChatTemplate(m) => {
                ModelError::ChatTemplate(format!("{}: {m}", source_path.display()))
            }
            other => other,
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the template appends
    /// the opening of an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Renders `messages` with the functions the model may call: `tools` are OpenAI's tool
    /// objects (`{"type": "function", "function": {"name", "description", "parameters"}}`),
    /// the list Hugging Face templates receive as `tools` (none: the template sees no
    /// `tools`).
    ///
    /// Assistant `tool_calls` reach the template as `tool_calls[i] = {"id", "type":
    /// "function", "function": {"name", "arguments"}}` (arguments as an object or as JSON text,
    /// whichever the template renders, see [`ToolSupport`]), `tool` messages with their
    /// `tool_call_id` and `name`. A template without tool support gets the Hermes rendering
    /// instead: the tools described by [`tool_system_prompt`] at the end of the first system
    /// message (a system message is added when there is none), each call written into its
    /// message's content by [`tool_call_text`], and tool results wrapped in
    /// `<tool_response></tool_response>`.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let support = self.tool_support;
        let hermes = !tools.is_empty() && !support.tools;
        let mut out: Vec<serde_json::Value> = Vec::with_capacity(messages.len() + 1);
        if hermes && messages.first().is_none_or(|m| m.role != "system") {
            out.push(serde_json::json!({"role": "system", "content": tool_system_prompt(tools)}));
        }
        for (i, m) in messages.iter().enumerate() {
            let mut content = m.content.clone();
            if hermes && i == 0 && m.role == "system" {
                if !content.is_empty() {
                    content.push_str("\n\n");
                }
                content.push_str(&tool_system_prompt(tools));
            }
            let mut v = serde_json::Map::new();
            v.insert("role".into(), m.role.clone().into());
            if !m.tool_calls.is_empty() && !support.tool_calls {
                for call in &m.tool_calls {
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&tool_call_text(call));
                }
            }
            if m.role == "tool" && !support.tools {
                content = format!("<tool_response>\n{content}\n</tool_response>");
            }
            v.insert("content".into(), content.into());
            if !m.tool_calls.is_empty() && support.tool_calls {
                let calls: Vec<serde_json::Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| template_call(c, support.arguments_as_object))
                    .collect();
                v.insert("tool_calls".into(), calls.into());
            }
            if let Some(id) = &m.tool_call_id {
                v.insert("tool_call_id".into(), id.clone().into());
            }
            if let Some(name) = &m.name {
                v.insert("name".into(), name.clone().into());
            }
            out.push(serde_json::Value::Object(v));
        }
        self.render_values(
            &out,
            (!tools.is_empty() && !hermes).then_some(tools),
            add_generation_prompt,
        )
    }

    fn render_values(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(tmpl_err)?;
        tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(tmpl_err)
    }

    /// What this template does with tools (found when it was compiled).
    pub fn tool_support(&self) -> ToolSupport {
        self.tool_support
    }

    fn probe_tool_support(&self) -> ToolSupport {
        use serde_json::json;
        const NAME: &str = "probe_function_4f1c";
        const ARG: &str = "probe_argument_9b2e";
        let user = json!({"role": "user", "content": "Hi"});
        let tool = json!({"type": "function", "function": {
            "name": NAME, "description": "A probe.",
            "parameters": {"type": "object", "properties": {ARG: {"type": "string"}}}}});
        let rendered = |messages: &[serde_json::Value], tools: Option<&[serde_json::Value]>| {
            self.render_values(messages, tools, false)
                .unwrap_or_default()
        };
        let tools = rendered(
            std::slice::from_ref(&user),
            Some(std::slice::from_ref(&tool)),
        )
        .contains(NAME);
        let call = |arguments: serde_json::Value| {
            let assistant = json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_probe", "type": "function",
                 "function": {"name": NAME, "arguments": arguments}}]});
            rendered(&[user.clone(), assistant], None)
        };
        let as_object = call(json!({ARG: "x"}));
        let as_text = call(json!(format!("{{\"{ARG}\": \"x\"}}")));
        let arguments_as_object = as_object.contains(ARG);
        ToolSupport {
            tools,
            tool_calls: as_object.contains(NAME) || as_text.contains(NAME),
            arguments_as_object: arguments_as_object || !as_text.contains(ARG),
        }
    }

    /// The BOS text exposed to the template.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The EOS text exposed to the template.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

/// A call as Hugging Face templates read it.
fn template_call(call: &ChatToolCall, as_object: bool) -> serde_json::Value {
    let arguments = match serde_json::from_str::<serde_json::Value>(&call.arguments) {
        Ok(v) if as_object => v,
        _ => serde_json::Value::String(call.arguments.clone()),
    };
    serde_json::json!({
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    })
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

// ---- strftime_now ---------------------------------------------------------

/// Formats `time` with Python's `strftime` codes (chrono implements the same set, `%-d` and
/// the other padding modifiers included). A code chrono does not know is kept as written,
/// as glibc's `strftime` (which Python calls) does, instead of failing the whole render.
fn format_time(time: chrono::DateTime<chrono::Utc>, fmt: &str) -> String {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(fmt).collect();
    if !items.contains(&Item::Error) {
        return time.format_with_items(items.into_iter()).to_string();
    }
    // Rare: format each `%` code on its own so one unknown code stays literal.
    let mut out = String::new();
    let mut rest = fmt;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = &rest[i..];
        // `%` plus an optional padding modifier plus one character.
        let mut len = 1;
        let mut chars = code[1..].chars();
        match chars.next() {
            Some(c @ ('-' | '_' | '0')) => {
                len += c.len_utf8();
                len += chars.next().map_or(0, char::len_utf8);
            }
            Some(c) => len += c.len_utf8(),
            None => {}
        }
        let one = &code[..len];
        let items: Vec<Item<'_>> = StrftimeItems::new(one).collect();
        if items.contains(&Item::Error) {
            out.push_str(one);
        } else {
            out.push_str(&time.format_with_items(items.into_iter()).to_string());
        }
        rest = &code[len..];
    }
    out.push_str(rest);
    out
}

fn strftime_now(fmt: String) -> String {
    format_time(chrono::Utc::now(), &fmt)
}

// ---- tojson ---------------------------------------------------------------

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python `json.dumps(v, ensure_ascii=False, indent=indent)`.
fn py_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => out.push_str(&n.to_string()),
        J::String(s) => json_string(s, out),
        J::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                py_json(x, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                json_string(k, out);
                out.push_str(": ");
                py_json(x, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted for compatibility; output is always non-ASCII-preserving.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let mut out = String::new();
    py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

// ---- Python methods -------------------------------------------------------

/// Python's methods on strings, dicts and lists: `minijinja-contrib`'s `pycompat`, plus the
/// two forms HF templates use that it lacks, `dict.get(key, default)` and `str.rsplit`.
fn python_method(
    state: &State<'_, '_>,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, Error> {
    match (value.kind(), method, args) {
        (ValueKind::Map, "get", [key, default]) => Ok(match value.get_item(key) {
            Ok(v) if !v.is_undefined() => v,
            _ => default.clone(),
        }),
        (ValueKind::String, "rsplit", _) => rsplit(value.as_str().unwrap_or_default(), args),
        _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }
}

/// `str.rsplit(sep=None, maxsplit=-1)`: splits from the right, at most `maxsplit` times.
fn rsplit(s: &str, args: &[Value]) -> std::result::Result<Value, Error> {
    let (sep, maxsplit): (Option<&str>, Option<i64>) = minijinja::value::from_args(args)?;
    let maxsplit = maxsplit.filter(|&n| n >= 0).map(|n| n as usize);
    let mut parts: Vec<Value> = match (sep, maxsplit) {
        (Some(""), _) => return Err(Error::new(ErrorKind::InvalidOperation, "empty separator")),
        (Some(sep), None) => s.rsplit(sep).map(Value::from).collect(),
        (Some(sep), Some(n)) => s.rsplitn(n + 1, sep).map(Value::from).collect(),
        (None, None) => s.split_whitespace().rev().map(Value::from).collect(),
        (None, Some(n)) => {
            // Whitespace runs from the right; the leftmost part keeps its inner spaces.
            let mut out = Vec::new();
            let mut rest = s.trim_end();
            while out.len() < n {
                match rest.rfind(char::is_whitespace) {
                    Some(i) => {
                        let ws = rest[i..].chars().next().map_or(1, char::len_utf8);
                        out.push(Value::from(&rest[i + ws..]));
                        rest = rest[..i].trim_end();
                    }
                    None => break,
                }
            }
            // Python keeps the leftmost part's leading whitespace.
            if !rest.trim_start().is_empty() {
                out.push(Value::from(rest));
            }
            out
        }
    };
    parts.reverse();
    Ok(Value::from(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "  Be brief.  "),
            ChatMessage::new("user", "Hi"),
        ]
    }

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::chatml();
        assert_eq!(
            t.render(&msgs()[1..], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// `tojson` keeps keys in insertion order, as Python's `json.dumps` of a dict does.
    #[test]
    fn hf_features() {
        let src = "{{ bos_token }}{% for m in messages %}{% if loop.first %}[{{ loop.index0 }}]{% endif %}{{ m.role.upper() }}:{{ m['content'].strip() }}|{% endfor %}{{ messages | tojson }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&msgs(), false).unwrap(),
            "<s>[0]SYSTEM:Be brief.|USER:Hi|[{\"role\": \"system\", \"content\": \"  Be brief.  \"}, {\"role\": \"user\", \"content\": \"Hi\"}]"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}ok";
        let t = ChatTemplate::new(src, "", "").unwrap();
        match t.render(&msgs(), false) {
            Err(ModelError::ChatTemplate(m)) => assert!(m.contains("must alternate"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.render(&msgs()[1..], false).unwrap(), "ok");
    }

    #[test]
    fn syntax_error_is_typed() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ModelError::ChatTemplate(_))
        ));
    }

    #[test]
    fn python_methods() {
        let src = "{{ 'a,b,c'.split(',') | join('-') }} {{ 'x y'.split() | length }} {{ 'hello'.startswith(('x', 'he')) }} {{ {'k': 1}.items() | list | length }} {{ {'k': 1}.get('z', 7) }} {{ 'ab'.replace('a', 'z') }} {{ 'héllo wORLD'.title() }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "a-b-c 2 True 1 7 zb Héllo World"
        );
    }

    /// The two methods added beside `pycompat`, as Python answers them.
    #[test]
    fn rsplit_and_get_with_default() {
        let src = "{{ 'a.b.c'.rsplit('.', 1) | join('|') }} {{ ' a b  c '.rsplit(None, 1) | join('|') }} {{ 'a b c'.rsplit() | join('|') }} {{ 'a.b'.rsplit('.') | join('|') }} {{ {'k': 1}.get('k', 2) }} {{ {'k': 1}.get('k') }} {{ {'k': 1}.get('z') is none }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "a.b|c  a b|c a|b|c a|b 1 1 True"
        );
    }

    #[test]
    fn strftime() {
        use chrono::TimeZone;
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = chrono::Utc.timestamp_opt(1_709_211_909, 0).unwrap();
        assert_eq!(
            format_time(t, "%Y-%m-%d %H:%M:%S %a %b %-d %j %%"),
            "2024-02-29 13:05:09 Thu Feb 29 060 %"
        );
        let epoch = chrono::Utc.timestamp_opt(0, 0).unwrap();
        assert_eq!(
            format_time(epoch, "%d %B %Y %A"),
            "01 January 1970 Thursday"
        );
        // An unknown code stays as written (glibc's strftime does the same); the rest formats.
        assert_eq!(format_time(epoch, "%Y %Q %-m"), "1970 %Q 1");
        let t = ChatTemplate::new("{{ strftime_now('%Y') | length }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "4");
    }

    #[test]
    fn tojson_indent() {
        let t = ChatTemplate::new("{{ {'a': [1, 2]} | tojson(indent=2) }}", "", "").unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\n  \"a\": [\n    1,\n    2\n  ]\n}"
        );
    }

    fn weather_tool() -> serde_json::Value {
        serde_json::json!({"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}})
    }

    fn tool_history() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage::assistant_tool_calls(
                "",
                vec![ChatToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }],
            ),
            ChatMessage::tool_result("call_1", "22 C"),
        ]
    }

    /// A template that knows nothing of tools (SmolLM2's, ChatML) gets the Hermes rendering:
    /// tools in a system message, calls and results as tagged text.
    #[test]
    fn templates_without_tools_get_the_hermes_rendering() {
        let t = ChatTemplate::chatml();
        assert_eq!(
            t.tool_support(),
            ToolSupport {
                arguments_as_object: true,
                ..Default::default()
            }
        );
        let out = t
            .render_with_tools(&tool_history(), &[weather_tool()], true)
            .unwrap();
        let system = tool_system_prompt(&[weather_tool()]);
        assert!(system.contains(
            "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""
        ));
        assert!(
            out.starts_with(&format!("<|im_start|>system\n{system}<|im_end|>\n")),
            "{out}"
        );
        assert!(out.contains(
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>"
        ), "{out}");
        assert!(
            out.contains("<|im_start|>tool\n<tool_response>\n22 C\n</tool_response><|im_end|>"),
            "{out}"
        );
        // An existing system message gets the tools appended.
        let mut with_system = vec![ChatMessage::new("system", "Be brief.")];
        with_system.extend(tool_history());
        let out = t
            .render_with_tools(&with_system, &[weather_tool()], true)
            .unwrap();
        assert!(out.starts_with(&format!(
            "<|im_start|>system\nBe brief.\n\n{system}<|im_end|>"
        )));
        // Without tools, nothing is added (the history's calls are still written out).
        let plain = t.render(&tool_history(), true).unwrap();
        assert!(!plain.contains("<tools>") && plain.contains("<tool_call>"));
    }

    /// A template with tool support receives `tools` and the history's `tool_calls` in Hugging
    /// Face's shapes (arguments as an object, which `tojson` writes).
    #[test]
    fn tool_templates_receive_tools_and_calls() {
        let src = "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}{% for m in messages %}{{ m.role }}:{{ m.content }}{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.id }} {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}{% endif %}{% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}|{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.tool_support(),
            ToolSupport {
                tools: true,
                tool_calls: true,
                arguments_as_object: true
            }
        );
        let out = t
            .render_with_tools(&tool_history(), &[weather_tool()], false)
            .unwrap();
        assert_eq!(
            out,
            "TOOLS:get_weather;user:Weather in Paris?|assistant:CALL call_1 get_weather {\"city\": \"Paris\"}|tool:22 C(call_1)|"
        );
        // Without tools the template sees none.
        assert!(!t.render(&tool_history(), false).unwrap().contains("TOOLS"));
    }

    /// A template that treats the arguments as text (a string method) gets them as JSON text.
    #[test]
    fn arguments_as_text_when_the_template_wants_a_string() {
        let src = "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.name }} ARGS={{ c.function.arguments.strip() }}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert!(t.tool_support().tool_calls && !t.tool_support().arguments_as_object);
        assert_eq!(
            t.render(&tool_history(), false).unwrap(),
            "get_weather ARGS={\"city\":\"Paris\"}"
        );
    }
}
