//! `POST /v1/responses`: OpenAI's Responses API, stateless.
//!
//! A request is translated into a chat request (its `input` items into messages, its
//! `instructions` into a leading system message, `max_output_tokens`, `text.format` and the
//! flat function `tools` into their chat forms) and runs through the same path as
//! `/v1/chat/completions` ([`prepare_chat`]): same template rendering, sampling, constraints
//! and tool-call grammar. The output comes back as Responses items (`message` with
//! `output_text`, `function_call`), whole or as the typed server-sent events the official
//! clients read (`response.created` … `response.output_text.delta` … `response.completed`).
//!
//! Stateless: nothing is stored, `previous_response_id` is refused (send the conversation in
//! `input`), and the response says `"store": false`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use fluent_ai_candle_engine::tools::{parse_tool_calls, ToolCallStream};
use fluent_ai_candle_engine::{ChatToolCall, FinishReason, Usage};
use futures::channel::mpsc;
use futures::SinkExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::openai::{
    ChatCompletionRequest, ChatMessageIn, CommonParams, FunctionCallIn, JsonSchemaFormat,
    MessageContent, ResponseFormat, ToolCallIn,
};
use crate::reqlog::RequestStats;
use crate::routes::prepare_chat;
use crate::state::{ApiJson, AppState};
use crate::stream::Prepared;

/// The body of `POST /v1/responses` (the fields this server reads; others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    /// A user message, or a list of input items (messages, `function_call`,
    /// `function_call_output`).
    pub input: ResponseInput,
    /// A system message put before the input.
    #[serde(default)]
    pub instructions: Option<String>,
    /// The most tokens to generate.
    #[serde(default)]
    pub max_output_tokens: Option<i64>,
    /// Function tools in the Responses form (`{"type": "function", "name", "parameters"}`).
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type": "function", "name": …}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Whether the model may call several tools in one turn.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", …}}`.
    #[serde(default)]
    pub text: Option<Value>,
    /// Refused: this server keeps no state between requests.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Echoed back.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Model, stream, sampling and this server's extensions, as on chat requests.
    #[serde(flatten)]
    pub common: CommonParams,
}

/// `input`: a string or a list of items.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ResponseInput {
    /// One user message.
    Text(String),
    /// Messages and tool items, in order.
    Items(Vec<Value>),
}

/// `POST /v1/responses`.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    stats: Option<Extension<Arc<RequestStats>>>,
    ApiJson(req): ApiJson<ResponsesRequest>,
) -> Response {
    let echo = Echo::of(&req);
    let stream = req.common.stream.unwrap_or(false);
    let chat = match to_chat(req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let prepared = match prepare_chat(&state, chat).await {
        Ok(p) => p.with_stats(stats.map(|Extension(s)| s)),
        Err(e) => return e.into_response(),
    };
    let parse_tools = prepared.tool_calls;
    if stream {
        let (tx, rx) = mpsc::channel::<Event>(16);
        tokio::spawn(stream_events(prepared, echo, parse_tools, tx));
        Sse::new(futures::StreamExt::map(
            rx,
            Ok::<_, std::convert::Infallible>,
        ))
        .keep_alive(KeepAlive::default())
        .into_response()
    } else {
        match collect(prepared, &echo, parse_tools).await {
            Ok(body) => (
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// The request's fields that the response object repeats.
#[derive(Debug, Clone)]
struct Echo {
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    tools: Vec<Value>,
    tool_choice: Value,
    parallel_tool_calls: bool,
    text: Value,
    metadata: Value,
}

impl Echo {
    fn of(r: &ResponsesRequest) -> Self {
        Self {
            instructions: r.instructions.clone(),
            max_output_tokens: r.max_output_tokens,
            temperature: r.common.temperature,
            top_p: r.common.top_p,
            tools: r.tools.clone().unwrap_or_default(),
            tool_choice: r.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            parallel_tool_calls: r.parallel_tool_calls.unwrap_or(true),
            text: r
                .text
                .clone()
                .unwrap_or_else(|| json!({"format": {"type": "text"}})),
            metadata: r.metadata.clone().unwrap_or_else(|| json!({})),
        }
    }
}

/// The chat request a Responses request means.
fn to_chat(r: ResponsesRequest) -> Result<ChatCompletionRequest, ApiError> {
    if r.previous_response_id.is_some() {
        return Err(ApiError::invalid_param(
            "previous_response_id",
            "this server is stateless: send the whole conversation in `input`",
        ));
    }
    if r.common.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_param("n", "responses have one output"));
    }
    let mut messages = Vec::new();
    if let Some(i) = &r.instructions {
        messages.push(message("system", i.clone()));
    }
    match r.input {
        ResponseInput::Text(t) => messages.push(message("user", t)),
        ResponseInput::Items(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid_param("input", "input is empty"));
            }
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut messages)?;
            }
        }
    }
    let mut common = r.common;
    if let Some(m) = r.max_output_tokens {
        common.max_tokens = Some(m);
    }
    if let Some(text) = &r.text {
        if common.response_format.is_some() {
            return Err(ApiError::invalid_param(
                "text",
                "give the output format in `text.format` only",
            ));
        }
        common.response_format = text_format(text)?;
    }
    let tools = match &r.tools {
        None => None,
        Some(tools) => Some(Value::Array(
            tools
                .iter()
                .enumerate()
                .map(|(i, t)| chat_tool(t, i))
                .collect::<Result<_, _>>()?,
        )),
    };
    let tool_choice = r.tool_choice.as_ref().map(chat_tool_choice).transpose()?;
    Ok(ChatCompletionRequest {
        messages,
        logprobs: None,
        top_logprobs: None,
        tools,
        tool_choice,
        parallel_tool_calls: r.parallel_tool_calls,
        common,
    })
}

fn message(role: &str, text: String) -> ChatMessageIn {
    ChatMessageIn {
        role: role.to_string(),
        content: Some(MessageContent::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
    }
}

fn bad_item(i: usize, why: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_param("input", format!("input[{i}]: {why}"))
}

/// Appends the chat message(s) of one input item.
fn input_item(item: &Value, i: usize, messages: &mut Vec<ChatMessageIn>) -> Result<(), ApiError> {
    let str_field = |name: &str| {
        item.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad_item(i, format!("`{name}` (a string) is missing")))
    };
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = match str_field("role")? {
                "developer" => "system",
                r @ ("system" | "user" | "assistant") => r,
                other => return Err(bad_item(i, format!("unknown role '{other}'"))),
            };
            let text = match item.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match p.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text" | "text") => text.push_str(
                                p.get("text").and_then(Value::as_str).ok_or_else(|| {
                                    bad_item(i, "a text part without `text`")
                                })?,
                            ),
                            Some(other) => {
                                return Err(bad_item(
                                    i,
                                    format!("content parts of type '{other}' are not supported (text only)"),
                                ))
                            }
                            None => return Err(bad_item(i, "a content part without `type`")),
                        }
                    }
                    text
                }
                _ => return Err(bad_item(i, "`content` must be a string or a list of parts")),
            };
            messages.push(message(role, text));
        }
        "function_call" => {
            let call = ToolCallIn {
                id: str_field("call_id")?.to_string(),
                kind: Some("function".into()),
                function: FunctionCallIn {
                    name: str_field("name")?.to_string(),
                    arguments: Some(Value::String(str_field("arguments")?.to_string())),
                },
            };
            // Consecutive calls are one assistant turn.
            match messages.last_mut() {
                Some(m) if m.role == "assistant" && m.tool_calls.is_some() => {
                    m.tool_calls.get_or_insert_with(Vec::new).push(call)
                }
                _ => messages.push(ChatMessageIn {
                    role: "assistant".into(),
                    content: None,
                    name: None,
                    tool_calls: Some(vec![call]),
                    tool_call_id: None,
                }),
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(v) if !v.is_null() => v.to_string(),
                _ => return Err(bad_item(i, "`output` is missing")),
            };
            messages.push(ChatMessageIn {
                role: "tool".into(),
                content: Some(MessageContent::Text(output)),
                name: None,
                tool_calls: None,
                tool_call_id: Some(str_field("call_id")?.to_string()),
            });
        }
        other => {
            return Err(bad_item(
                i,
                format!("items of type '{other}' are not supported (message, function_call, function_call_output)"),
            ))
        }
    }
    Ok(())
}

/// `text.format` as the chat `response_format`.
fn text_format(text: &Value) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(format) = text.get("format") else {
        return Ok(None);
    };
    let bad = |why: &str| ApiError::invalid_param("text.format", why.to_string());
    Ok(Some(match format.get("type").and_then(Value::as_str) {
        Some("text") => ResponseFormat::Text,
        Some("json_object") => ResponseFormat::JsonObject,
        Some("json_schema") => ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: format
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("response")
                    .to_string(),
                description: format
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                schema: Some(
                    format
                        .get("schema")
                        .cloned()
                        .ok_or_else(|| bad("a json_schema format needs `schema`"))?,
                ),
                strict: format.get("strict").and_then(Value::as_bool),
            },
        },
        _ => return Err(bad("`type` must be text, json_object or json_schema")),
    }))
}

/// A Responses function tool in its chat form.
fn chat_tool(t: &Value, i: usize) -> Result<Value, ApiError> {
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::invalid_param(
            "tools",
            format!("tools[{i}]: only `function` tools are supported"),
        ));
    }
    let mut function = Map::new();
    for key in ["name", "description", "parameters", "strict"] {
        if let Some(v) = t.get(key) {
            function.insert(key.to_string(), v.clone());
        }
    }
    Ok(json!({"type": "function", "function": function}))
}

/// A Responses `tool_choice` in its chat form.
fn chat_tool_choice(c: &Value) -> Result<Value, ApiError> {
    match c {
        Value::String(_) => Ok(c.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name") {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(ApiError::invalid_param(
                    "tool_choice",
                    "a function tool_choice needs `name`",
                )),
            }
        }
        _ => Err(ApiError::invalid_param(
            "tool_choice",
            "tool_choice must be auto, none, required or {\"type\": \"function\", \"name\": …}",
        )),
    }
}

/// What the output became: its text, its calls, why it ended and its usage.
#[derive(Debug, Default)]
struct Outcome {
    text: String,
    calls: Vec<ChatToolCall>,
    finish: Option<FinishReason>,
    error: Option<String>,
    usage: Usage,
}

/// The id of the response and of its message item, from the engine's completion id.
fn ids(p: &Prepared) -> (String, String) {
    let suffix = p.id.rsplit('-').next().unwrap_or(&p.id).to_string();
    (format!("resp_{suffix}"), format!("msg_{suffix}"))
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

fn call_item(call: &ChatToolCall, status: &str) -> Value {
    let suffix = call.id.strip_prefix("call_").unwrap_or(&call.id);
    json!({
        "type": "function_call",
        "id": format!("fc_{suffix}"),
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    })
}

/// The response object.
fn response_object(
    p: &Prepared,
    echo: &Echo,
    output: Vec<Value>,
    outcome: Option<&Outcome>,
) -> Value {
    let (id, _) = ids(p);
    let (status, incomplete, error, usage) = match outcome {
        None => ("in_progress", Value::Null, Value::Null, Value::Null),
        Some(o) => {
            let usage = json!({
                "input_tokens": o.usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": o.usage.cached_tokens},
                "output_tokens": o.usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": o.usage.prompt_tokens + o.usage.completion_tokens,
            });
            match (o.finish, &o.error) {
                (Some(FinishReason::Error), e) | (None, e @ Some(_)) => (
                    "failed",
                    Value::Null,
                    json!({"code": "server_error", "message": e.as_deref().unwrap_or("generation failed")}),
                    usage,
                ),
                (Some(FinishReason::Length), _) => (
                    "incomplete",
                    json!({"reason": "max_output_tokens"}),
                    Value::Null,
                    usage,
                ),
                (None, None) => (
                    "incomplete",
                    json!({"reason": "interrupted"}),
                    Value::Null,
                    usage,
                ),
                _ => ("completed", Value::Null, Value::Null, usage),
            }
        }
    };
    json!({
        "id": id,
        "object": "response",
        "created_at": p.created,
        "status": status,
        "model": p.model,
        "output": output,
        "usage": usage,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "temperature": echo.temperature,
        "top_p": echo.top_p,
        "tools": echo.tools,
        "tool_choice": echo.tool_choice,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "text": echo.text,
        "metadata": echo.metadata,
        "previous_response_id": null,
        "reasoning": null,
        "store": false,
        "truncation": "disabled",
        "user": null,
    })
}

/// The output items of a finished outcome.
fn output_items(msg_id: &str, o: &Outcome) -> Vec<Value> {
    let mut items = Vec::new();
    if !o.text.is_empty() || o.calls.is_empty() {
        items.push(message_item(msg_id, &o.text, "completed"));
    }
    items.extend(o.calls.iter().map(|c| call_item(c, "completed")));
    items
}

/// Records one engine chunk into the outcome; returns its new text.
fn absorb(o: &mut Outcome, chunk: &fluent_ai_candle_engine::CandleCompletionChunk) -> String {
    if let Some(u) = &chunk.usage {
        o.usage = *u;
    }
    if let Some(c) = chunk.choices.first() {
        if let Some(r) = c.finish_reason {
            o.finish = Some(r);
            if r == FinishReason::Error {
                o.error = Some(
                    c.error
                        .clone()
                        .unwrap_or_else(|| "generation failed".into()),
                );
            }
        }
    }
    chunk.text().to_string()
}

/// Reads the whole output into one response object.
async fn collect(mut p: Prepared, echo: &Echo, parse_tools: bool) -> Result<Value, ApiError> {
    let mut o = Outcome::default();
    while let Some((_, chunk)) = p.next().await {
        let piece = absorb(&mut o, &chunk);
        o.text.push_str(&piece);
    }
    if o.finish.is_none() {
        return Err(ApiError::unavailable(
            "the request was cut: the server is shutting down",
        ));
    }
    if parse_tools {
        let parsed = parse_tool_calls(&o.text);
        o.text = parsed.content.unwrap_or_default();
        o.calls = parsed.tool_calls;
    }
    let (_, msg_id) = ids(&p);
    let items = output_items(&msg_id, &o);
    Ok(response_object(&p, echo, items, Some(&o)))
}

/// Sends the typed events of a streamed response into `tx`; stops (dropping the request, so
/// the engine frees its slot) when the client is gone.
// The event macros update `seq` and `message_open` after their last reads.
#[allow(unused_assignments)]
async fn stream_events(
    mut p: Prepared,
    echo: Echo,
    parse_tools: bool,
    mut tx: mpsc::Sender<Event>,
) {
    let (_, msg_id) = ids(&p);
    let mut seq = 0u64;
    macro_rules! emit {
        ($kind:expr, $body:expr) => {{
            let mut body: Value = $body;
            body["type"] = json!($kind);
            body["sequence_number"] = json!(seq);
            seq += 1;
            let event = Event::default().event($kind).data(body.to_string());
            if tx.send(event).await.is_err() {
                return;
            }
        }};
    }
    let start = response_object(&p, &echo, Vec::new(), None);
    emit!("response.created", json!({ "response": start }));
    emit!("response.in_progress", json!({ "response": start }));
    let mut o = Outcome::default();
    let mut tools = ToolCallStream::default();
    let mut message_open = false;
    // Opens the message item and its text part (once), before its first text.
    macro_rules! open_message {
        () => {
            if !message_open {
                message_open = true;
                emit!(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": {
                        "type": "message", "id": msg_id, "status": "in_progress",
                        "role": "assistant", "content": []}})
                );
                emit!(
                    "response.content_part.added",
                    json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
                           "part": {"type": "output_text", "text": "", "annotations": []}})
                );
            }
        };
    }
    macro_rules! delta {
        ($piece:expr) => {{
            let piece: String = $piece;
            open_message!();
            o.text.push_str(&piece);
            emit!(
                "response.output_text.delta",
                json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
                       "delta": piece, "logprobs": []})
            );
        }};
    }
    while let Some((_, chunk)) = p.next().await {
        let mut piece = absorb(&mut o, &chunk);
        if parse_tools {
            piece = tools.push(&piece);
        }
        if !piece.is_empty() {
            delta!(piece);
        }
    }
    if parse_tools {
        // What the tool parser held back: calls, or text that was not one after all.
        let end = std::mem::take(&mut tools).finish();
        o.calls = end.tool_calls;
        if let Some(rest) = end.content.filter(|r| !r.is_empty()) {
            delta!(rest);
        }
    }
    let mut output = Vec::new();
    if message_open || o.calls.is_empty() {
        open_message!();
        let part =
            json!({"type": "output_text", "text": o.text, "annotations": [], "logprobs": []});
        emit!(
            "response.output_text.done",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
                   "text": o.text, "logprobs": []})
        );
        emit!(
            "response.content_part.done",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part})
        );
        let item = message_item(&msg_id, &o.text, "completed");
        emit!(
            "response.output_item.done",
            json!({"output_index": 0, "item": item})
        );
        output.push(item);
    }
    let calls = std::mem::take(&mut o.calls);
    for call in &calls {
        let index = output.len();
        let item = call_item(call, "completed");
        let mut added = call_item(call, "in_progress");
        added["arguments"] = json!("");
        emit!(
            "response.output_item.added",
            json!({"output_index": index, "item": added})
        );
        emit!(
            "response.function_call_arguments.delta",
            json!({"item_id": item["id"], "output_index": index, "delta": call.arguments})
        );
        emit!(
            "response.function_call_arguments.done",
            json!({"item_id": item["id"], "output_index": index, "arguments": call.arguments})
        );
        emit!(
            "response.output_item.done",
            json!({"output_index": index, "item": item})
        );
        output.push(item);
    }
    o.calls = calls;
    let last = response_object(&p, &echo, output, Some(&o));
    let kind = match last["status"].as_str() {
        Some("failed") => "response.failed",
        Some("incomplete") => "response.incomplete",
        _ => "response.completed",
    };
    emit!(kind, json!({ "response": last }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ResponsesRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn input_items_become_chat_messages() {
        let chat = to_chat(req(json!({
            "model": "m",
            "instructions": "Be brief.",
            "max_output_tokens": 7,
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "Weather in "},
                             {"type": "input_text", "text": "Paris?"}]},
                {"type": "function_call", "call_id": "call_1", "name": "weather",
                 "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "time",
                 "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
        })))
        .unwrap();
        let roles: Vec<&str> = chat.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "system", "user", "assistant", "tool"]);
        assert!(
            matches!(&chat.messages[2].content, Some(MessageContent::Text(t)) if t == "Weather in Paris?")
        );
        assert_eq!(chat.messages[3].tool_calls.as_ref().unwrap().len(), 2);
        assert_eq!(chat.messages[4].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(chat.common.max_tokens, Some(7));
    }

    #[test]
    fn tools_formats_and_choices_translate() {
        let chat = to_chat(req(json!({
            "input": "hi",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "x",
                                "schema": {"type": "object"}, "strict": true}},
        })))
        .unwrap();
        assert_eq!(
            chat.tools.unwrap(),
            json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
        );
        assert_eq!(
            chat.tool_choice.unwrap(),
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert!(matches!(
            chat.common.response_format,
            Some(ResponseFormat::JsonSchema { .. })
        ));
    }

    #[test]
    fn refusals_are_typed() {
        for bad in [
            json!({"input": "hi", "previous_response_id": "resp_1"}),
            json!({"input": []}),
            json!({"input": [{"type": "reasoning", "summary": []}]}),
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            json!({"input": [{"role": "robot", "content": "x"}]}),
            json!({"input": "hi", "tools": [{"type": "web_search"}]}),
            json!({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}),
            json!({"input": "hi", "tool_choice": 3}),
        ] {
            let e = to_chat(req(bad.clone())).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{bad}");
        }
    }
}
