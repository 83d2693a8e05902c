//! From engine chunk streams to OpenAI bodies: a [`Prepared`] request merges the streams of
//! its choices; it is either collected into one response or turned into a sequence of JSON
//! messages (SSE `data:` lines or WebSocket messages) ending with `[DONE]`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use fluent_ai_candle_engine::tools::{parse_tool_calls, ToolCallStream};
use fluent_ai_candle_engine::{
    CandleCompletionChunk, CandleCompletionStream, ChatToolCall, FinishReason, TokenLogprob,
};
use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse,
    ChatDelta, ChatLogprobs, CompletionChoiceOut, CompletionLogprobs, CompletionResponse,
    ConfidenceOut, FunctionCallOut, TokenLogprobOut, ToolCallOut, TopLogprobOut, UsageOut,
};
use crate::reqlog::RequestStats;
use crate::state::InFlight;

/// Which endpoint's shapes to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// A request accepted by the engine: one stream per choice, merged. Its `id`, `created` and
/// `model` are the engine's, of the first choice's stream.
pub(crate) struct Prepared {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices per prompt (for counting prompt tokens once per prompt).
    pub n: usize,
    pub choices: usize,
    pub merged: SelectAll<BoxStream<'static, (usize, CandleCompletionChunk)>>,
    pub guard: InFlight,
    pub abort: watch::Receiver<bool>,
    /// Whether the response carries `logprobs`.
    pub logprobs: bool,
    /// Whether chat outputs are parsed into `tool_calls` (the request offered tools).
    pub tool_calls: bool,
    /// Where the request's log line gets its model, tokens and time to first token.
    pub stats: Option<Arc<RequestStats>>,
    /// Whether choices carry `confidence` (the request's extension).
    pub confidence: bool,
}

impl Prepared {
    pub fn new(
        endpoint: Endpoint,
        streams: Vec<CandleCompletionStream>,
        meta: (bool, bool, usize),
        guard: InFlight,
        abort: watch::Receiver<bool>,
    ) -> Self {
        let (stream, include_usage, n) = meta;
        let choices = streams.len();
        let (id, created, model) = streams
            .first()
            .map(|s| (s.id().to_string(), s.created(), s.model().to_string()))
            .unwrap_or_default();
        let merged = futures::stream::select_all(
            streams
                .into_iter()
                .enumerate()
                .map(|(i, s)| s.map(move |c| (i, c)).boxed()),
        );
        Self {
            endpoint,
            id,
            created,
            model,
            stream,
            include_usage,
            n,
            choices,
            merged,
            guard,
            abort,
            logprobs: false,
            tool_calls: false,
            stats: None,
            confidence: false,
        }
    }

    /// Makes each choice carry its `confidence` (on its last chunk when streamed).
    pub fn with_confidence(mut self, on: bool) -> Self {
        self.confidence = on;
        self
    }

    /// A choice's confidence from its last engine chunk, when the request asked for it.
    fn confidence_of(&self, chunk: &CandleCompletionChunk) -> Option<ConfidenceOut> {
        if !self.confidence {
            return None;
        }
        chunk
            .choices
            .first()
            .and_then(|c| c.confidence.as_ref())
            .and_then(ConfidenceOut::of)
    }

    /// Makes the chunks report to a request's log line.
    pub fn with_stats(mut self, stats: Option<Arc<RequestStats>>) -> Self {
        if let Some(s) = &stats {
            s.start(&self.id, &self.model);
        }
        self.stats = stats;
        self
    }

    /// Makes chat outputs parsed into `tool_calls` (the engine's
    /// [`parse_tool_calls`](fluent_ai_candle_engine::tools::parse_tool_calls)).
    pub fn with_tool_calls(mut self, on: bool) -> Self {
        self.tool_calls = on && self.endpoint == Endpoint::Chat;
        self
    }

    /// Makes the response carry `logprobs` (the engine requests must have asked for them).
    pub fn with_logprobs(mut self, on: bool) -> Self {
        self.logprobs = on;
        self
    }

    /// Chat `logprobs` of some tokens.
    fn chat_logprobs(&self, entries: &[TokenLogprob]) -> Option<ChatLogprobs> {
        if !self.logprobs {
            return None;
        }
        let content = entries
            .iter()
            .map(|e| TokenLogprobOut {
                token: text_of(&e.bytes),
                logprob: e.logprob,
                bytes: e.bytes.clone(),
                top_logprobs: e
                    .top_logprobs
                    .iter()
                    .zip(&e.top_bytes)
                    .map(|(&(_, logprob), bytes)| TopLogprobOut {
                        token: text_of(bytes),
                        logprob,
                        bytes: bytes.clone(),
                    })
                    .collect(),
            })
            .collect();
        Some(ChatLogprobs { content })
    }

    /// Legacy completions `logprobs` of some tokens; `offset` is the character offset of the
    /// first one in the choice's text.
    fn completion_logprobs(
        &self,
        entries: &[TokenLogprob],
        mut offset: usize,
    ) -> Option<CompletionLogprobs> {
        if !self.logprobs {
            return None;
        }
        let mut out = CompletionLogprobs::default();
        for e in entries {
            let token = text_of(&e.bytes);
            out.text_offset.push(offset);
            offset += token.chars().count();
            out.tokens.push(token);
            out.token_logprobs.push(e.logprob);
            out.top_logprobs.push(
                e.top_logprobs
                    .iter()
                    .zip(&e.top_bytes)
                    .map(|(&(_, lp), bytes)| (text_of(bytes), lp))
                    .collect(),
            );
        }
        Some(out)
    }

    /// The next chunk, or `None` at the end or once the shutdown bound cuts the request.
    pub(crate) async fn next(&mut self) -> Option<(usize, CandleCompletionChunk)> {
        if *self.abort.borrow() {
            return None;
        }
        let next = tokio::select! {
            c = self.merged.next() => c,
            _ = self.abort.wait_for(|a| *a) => None,
        };
        if let (Some(stats), Some((i, chunk))) = (&self.stats, &next) {
            let first = chunk.choices.first();
            let has_tokens = first.is_some_and(|c| !c.delta.token_ids.is_empty());
            stats.chunk(has_tokens, chunk.usage.as_ref(), i % self.n.max(1) == 0);
            if let Some(reason) = first.and_then(|c| c.finish_reason) {
                stats.finish(reason.as_str());
            }
        }
        next
    }

    /// Reads every chunk into one OpenAI response (JSON text).
    pub async fn collect(mut self) -> Result<String, ApiError> {
        let mut texts = vec![String::new(); self.choices];
        let mut logprobs: Vec<Vec<TokenLogprob>> = vec![Vec::new(); self.choices];
        let mut finish: Vec<Option<FinishReason>> = vec![None; self.choices];
        let mut usage = UsageOut::default();
        let mut confidence: Vec<Option<ConfidenceOut>> = vec![None; self.choices];
        while let Some((i, chunk)) = self.next().await {
            if let Some(c) = self.confidence_of(&chunk) {
                confidence[i] = Some(c);
            }
            texts[i].push_str(chunk.text());
            if let Some(c) = chunk.choices.first() {
                logprobs[i].extend(c.delta.logprobs.iter().cloned());
                if let Some(reason) = c.finish_reason {
                    if reason == FinishReason::Error {
                        return Err(ApiError::internal(format!(
                            "generation failed: {}",
                            c.error.as_deref().unwrap_or("unknown error")
                        )));
                    }
                    finish[i] = Some(reason);
                }
            }
            if let Some(u) = chunk.usage {
                add_usage(&mut usage, &u, i % self.n == 0);
            }
        }
        if finish.iter().any(Option::is_none) {
            return Err(ApiError::unavailable(
                "the request was cut: the server is shutting down",
            ));
        }
        let reason = |i: usize| finish[i].map(FinishReason::as_str).unwrap_or("stop");
        let body = match self.endpoint {
            Endpoint::Chat => serde_json::to_string(&ChatCompletionResponse {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.model.clone(),
                choices: texts
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let (content, calls) = if self.tool_calls {
                            let parsed = parse_tool_calls(&text);
                            (parsed.content, parsed.tool_calls)
                        } else {
                            (Some(text), Vec::new())
                        };
                        let finish_reason = tool_finish(finish[i], !calls.is_empty());
                        ChatChoice {
                            index: i,
                            message: AssistantMessage {
                                role: "assistant",
                                content,
                                tool_calls: (!calls.is_empty()).then(|| {
                                    calls.into_iter().map(|c| tool_call_out(c, None)).collect()
                                }),
                            },
                            logprobs: self.chat_logprobs(&logprobs[i]),
                            finish_reason,
                            confidence: confidence[i],
                        }
                    })
                    .collect(),
                usage,
                system_fingerprint: None,
            }),
            Endpoint::Completion => serde_json::to_string(&CompletionResponse {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: texts
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| CompletionChoiceOut {
                        text,
                        index: i,
                        logprobs: self.completion_logprobs(&logprobs[i], 0),
                        finish_reason: Some(reason(i)),
                        confidence: confidence[i],
                    })
                    .collect(),
                usage: Some(Some(usage)),
                system_fingerprint: None,
            }),
        };
        drop(self.guard);
        body.map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The stream of messages: one JSON chunk per engine chunk, an error object for a choice
    /// that failed, the usage chunk when asked, then `[DONE]`.
    pub fn into_messages(self) -> MessageStream {
        let choices = self.choices;
        let state = Emitter {
            prepared: self,
            pending: VecDeque::new(),
            role_sent: vec![false; choices],
            offsets: vec![0; choices],
            tool_streams: vec![ToolCallStream::default(); choices],
            usage: UsageOut::default(),
            done: false,
        };
        Box::pin(futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(m) = st.pending.pop_front() {
                    return Some((m, st));
                }
                if st.done {
                    return None;
                }
                match st.prepared.next().await {
                    Some((i, chunk)) => st.push_chunk(i, chunk),
                    None => st.finish(),
                }
            }
        }))
    }
}

/// JSON messages of a streamed response, ending with `[DONE]`.
pub(crate) type MessageStream = Pin<Box<dyn Stream<Item = String> + Send>>;

pub(crate) fn add_usage(
    total: &mut UsageOut,
    u: &fluent_ai_candle_engine::Usage,
    count_prompt: bool,
) {
    if count_prompt {
        total.prompt_tokens += u.prompt_tokens;
        total.prompt_tokens_details.cached_tokens += u.cached_tokens;
    }
    total.completion_tokens += u.completion_tokens;
    total.total_tokens = total.prompt_tokens + total.completion_tokens;
}

/// The finish reason of a chat choice: `tool_calls` when it stopped on its own with calls.
fn tool_finish(reason: Option<FinishReason>, calls: bool) -> &'static str {
    match reason {
        Some(FinishReason::Stop) if calls => "tool_calls",
        Some(r) => r.as_str(),
        None => "stop",
    }
}

/// A call in OpenAI's shape; `index` for a stream delta.
fn tool_call_out(call: ChatToolCall, index: Option<usize>) -> ToolCallOut {
    ToolCallOut {
        index,
        id: Some(call.id),
        kind: Some("function"),
        function: FunctionCallOut {
            name: Some(call.name),
            arguments: call.arguments,
        },
    }
}

/// The (lossy) text of a token's bytes.
fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Emitter {
    prepared: Prepared,
    pending: VecDeque<String>,
    role_sent: Vec<bool>,
    /// Characters of token text already reported per choice (completions' `text_offset`).
    offsets: Vec<usize>,
    /// Per choice, the text held while it may be a tool call (requests with tools).
    tool_streams: Vec<ToolCallStream>,
    usage: UsageOut,
    done: bool,
}

impl Emitter {
    fn usage_field(&self, last: bool) -> Option<Option<UsageOut>> {
        match (self.prepared.include_usage, last) {
            (false, _) => None,
            (true, false) => Some(None),
            (true, true) => Some(Some(self.usage)),
        }
    }

    fn push_json<T: serde::Serialize>(&mut self, value: &T) {
        match serde_json::to_string(value) {
            Ok(s) => self.pending.push_back(s),
            Err(e) => self
                .pending
                .push_back(ApiError::internal(e.to_string()).to_json()),
        }
    }

    fn push_chunk(&mut self, i: usize, chunk: CandleCompletionChunk) {
        let p = &self.prepared;
        if let Some(u) = &chunk.usage {
            add_usage(&mut self.usage, u, i.is_multiple_of(p.n));
        }
        let first = chunk.choices.first();
        let mut finish = first.and_then(|c| c.finish_reason);
        if finish == Some(FinishReason::Error) {
            let message = first
                .and_then(|c| c.error.clone())
                .unwrap_or_else(|| "generation failed".into());
            let err = ApiError::internal(format!("choice {i}: {message}"));
            self.pending.push_back(err.to_json());
            finish = Some(FinishReason::Stop);
        }
        let mut text = chunk.text().to_string();
        let mut calls = Vec::new();
        if p.tool_calls {
            text = self.tool_streams[i].push(&text);
            if finish.is_some() {
                let end = std::mem::take(&mut self.tool_streams[i]).finish();
                text.push_str(end.content.as_deref().unwrap_or(""));
                calls = end.tool_calls;
            }
        }
        let entries = first
            .map(|c| c.delta.logprobs.as_slice())
            .unwrap_or_default();
        let no_logprobs = !p.logprobs || entries.is_empty();
        if text.is_empty() && finish.is_none() && self.role_sent[i] && no_logprobs {
            return;
        }
        let finish_reason = finish.map(FinishReason::as_str);
        let usage = self.usage_field(false);
        let confidence = p.confidence_of(&chunk);
        match p.endpoint {
            Endpoint::Chat => {
                let chunk = |delta: ChatDelta,
                             logprobs: Option<ChatLogprobs>,
                             finish_reason: Option<&'static str>| {
                    ChatCompletionChunk {
                        id: p.id.clone(),
                        object: "chat.completion.chunk",
                        created: p.created,
                        model: p.model.clone(),
                        choices: vec![ChatChunkChoice {
                            index: i,
                            delta,
                            logprobs,
                            finish_reason,
                            confidence: finish_reason.and(confidence),
                        }],
                        usage,
                        system_fingerprint: None,
                    }
                };
                let role = (!self.role_sent[i]).then_some("assistant");
                self.role_sent[i] = true;
                if calls.is_empty() {
                    let out = chunk(
                        ChatDelta {
                            role,
                            content: (!text.is_empty() || role.is_some()).then_some(text),
                            tool_calls: None,
                        },
                        p.chat_logprobs(entries),
                        finish_reason,
                    );
                    self.push_json(&out);
                    return;
                }
                // Content (and logprobs) first, one delta per call, then the finish.
                let mut out = Vec::with_capacity(calls.len() + 2);
                if !text.is_empty() || role.is_some() || !no_logprobs {
                    out.push(chunk(
                        ChatDelta {
                            role,
                            content: (!text.is_empty()).then_some(text),
                            tool_calls: None,
                        },
                        p.chat_logprobs(entries),
                        None,
                    ));
                }
                for (k, call) in calls.into_iter().enumerate() {
                    out.push(chunk(
                        ChatDelta {
                            tool_calls: Some(vec![tool_call_out(call, Some(k))]),
                            ..ChatDelta::default()
                        },
                        None,
                        None,
                    ));
                }
                out.push(chunk(
                    ChatDelta::default(),
                    None,
                    Some(tool_finish(finish, true)),
                ));
                for o in &out {
                    self.push_json(o);
                }
            }
            Endpoint::Completion => {
                let logprobs = p.completion_logprobs(entries, self.offsets[i]);
                if let Some(l) = &logprobs {
                    self.offsets[i] = l
                        .text_offset
                        .last()
                        .zip(l.tokens.last())
                        .map_or(self.offsets[i], |(o, t)| o + t.chars().count());
                }
                self.role_sent[i] = true;
                let out = CompletionResponse {
                    id: p.id.clone(),
                    object: "text_completion",
                    created: p.created,
                    model: p.model.clone(),
                    choices: vec![CompletionChoiceOut {
                        text,
                        index: i,
                        logprobs,
                        finish_reason,
                        confidence,
                    }],
                    usage,
                    system_fingerprint: None,
                };
                self.push_json(&out);
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        if *self.prepared.abort.borrow() {
            let err = ApiError::unavailable("the request was cut: the server is shutting down");
            self.pending.push_back(err.to_json());
            return;
        }
        if self.prepared.include_usage {
            let p = &self.prepared;
            let usage = self.usage_field(true);
            match p.endpoint {
                Endpoint::Chat => {
                    let out = ChatCompletionChunk {
                        id: p.id.clone(),
                        object: "chat.completion.chunk",
                        created: p.created,
                        model: p.model.clone(),
                        choices: Vec::new(),
                        usage,
                        system_fingerprint: None,
                    };
                    self.push_json(&out);
                }
                Endpoint::Completion => {
                    let out = CompletionResponse {
                        id: p.id.clone(),
                        object: "text_completion",
                        created: p.created,
                        model: p.model.clone(),
                        choices: Vec::new(),
                        usage,
                        system_fingerprint: None,
                    };
                    self.push_json(&out);
                }
            }
        }
        self.pending.push_back("[DONE]".into());
    }
}
