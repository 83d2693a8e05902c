//! [`CompletionClient`]: "something that completes requests" (the seed's API-interface box),
//! with one request type and one response type whichever side does the work, so user code can
//! switch between running the model in-process and calling a server.
//!
//! - [`CandleGenerator`] completes in-process (the engine itself);
//! - [`HttpCompletionClient`] calls any OpenAI-compatible server (`fluent-ai-candle serve`
//!   included): a chat prompt goes to `/v1/chat/completions`, a text or token prompt to
//!   `/v1/completions`; streams are read from server-sent events.
//!
//! Both take a [`CandleCompletionRequest`] and give a [`CandleCompletionResponse`]
//! ([`complete`](CompletionClient::complete)) or a stream of [`CandleCompletionChunk`]s
//! ([`stream`](CompletionClient::stream)). The trait is object-safe:
//!
//! ```no_run
//! use fluent_ai_candle::client::{CompletionClient, HttpCompletionClient};
//! use fluent_ai_candle::{CandleClientBuilder, CandleCompletionRequest, Prompt};
//! use futures::StreamExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client: Box<dyn CompletionClient> = if let Ok(url) = std::env::var("LLM_URL") {
//!     Box::new(HttpCompletionClient::new(url).api_key("secret"))
//! } else {
//!     Box::new(CandleClientBuilder::new().model_path("smollm2-135m-instruct").build()?)
//! };
//! let request = CandleCompletionRequest {
//!     max_tokens: Some(32),
//!     temperature: Some(0.0),
//!     ..CandleCompletionRequest::new(Prompt::user("Name a colour."))
//! };
//! let response = client.complete(&request).await?;
//! println!("{}", response.choices[0].text);
//! let mut stream = client.stream(&request).await?;
//! while let Some(chunk) = stream.next().await {
//!     print!("{}", chunk?.text());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! What an OpenAI-compatible API cannot carry is refused by the HTTP client with
//! [`ClientError::Unsupported`] before anything is sent (a typed error, not a silent
//! difference): user logits processors, a whole [`SamplingConfig`](crate::SamplingConfig)
//! chain, a per-request KV cache, custom constraints, tools, and `logprobs` (the API names
//! tokens by their text, not by the ids [`TokenLogprob`](crate::TokenLogprob) holds). Its
//! responses carry no `token_ids` (the API does not send them).

use std::time::Duration;

use fluent_ai_candle_engine::{
    CandleCompletionChunk, CandleCompletionRequest, CandleCompletionResponse, CandleGenerator,
    ChunkChoice, ChunkDelta, CompletionChoice, ConstraintSpec, EngineError, FinishReason, Prompt,
    Usage,
};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde_json::{json, Map, Value};

/// A stream of chunks from a [`CompletionClient`]; the last chunk carries `finish_reason` and
/// `usage`.
pub type ChunkStream = BoxStream<'static, Result<CandleCompletionChunk, ClientError>>;

/// Why a [`CompletionClient`] could not complete a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The engine refused the request (in-process).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The server answered with an error (its status and OpenAI error message).
    #[error("the server answered {status}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's `message` (or the body, when it is not OpenAI's error JSON).
        message: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("HTTP transport: {0}")]
    Transport(String),
    /// The server's answer is not the OpenAI shape expected.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// The request uses something the OpenAI API cannot carry (see the module documentation).
    #[error("not supported over HTTP: {0}")]
    Unsupported(String),
}

/// Something that completes [`CandleCompletionRequest`]s: the engine in-process
/// ([`CandleGenerator`]) or a server ([`HttpCompletionClient`]). Object-safe, so a program
/// can hold a `Box<dyn CompletionClient>` and switch at run time.
pub trait CompletionClient: Send + Sync {
    /// The whole completion.
    fn complete<'a>(
        &'a self,
        request: &'a CandleCompletionRequest,
    ) -> BoxFuture<'a, Result<CandleCompletionResponse, ClientError>>;

    /// The completion chunk by chunk; dropping the stream cancels the request.
    fn stream<'a>(
        &'a self,
        request: &'a CandleCompletionRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, ClientError>>;
}

impl CompletionClient for CandleGenerator {
    fn complete<'a>(
        &'a self,
        request: &'a CandleCompletionRequest,
    ) -> BoxFuture<'a, Result<CandleCompletionResponse, ClientError>> {
        async move { Ok(self.submit(request.clone()).await?.collect().await?) }.boxed()
    }

    fn stream<'a>(
        &'a self,
        request: &'a CandleCompletionRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, ClientError>> {
        async move {
            let stream = self.submit(request.clone()).await?;
            Ok(stream.map(Ok).boxed())
        }
        .boxed()
    }
}

/// A [`CompletionClient`] over HTTP to an OpenAI-compatible server.
///
/// ```
/// use fluent_ai_candle::client::{ClientError, CompletionClient, HttpCompletionClient};
/// use fluent_ai_candle::{CandleCompletionRequest, Prompt};
///
/// let client = HttpCompletionClient::new("http://127.0.0.1:8080").model("smollm2-135m-instruct");
/// // What the API cannot carry is refused before anything is sent.
/// let request = CandleCompletionRequest {
///     logprobs: true,
///     ..CandleCompletionRequest::new(Prompt::user("Hi"))
/// };
/// let err = futures::executor::block_on(client.complete(&request)).unwrap_err();
/// assert!(matches!(err, ClientError::Unsupported(_)));
/// ```
#[derive(Debug, Clone)]
pub struct HttpCompletionClient {
    base: String,
    api_key: Option<String>,
    model: Option<String>,
    http: reqwest::Client,
}

impl HttpCompletionClient {
    /// A client of the server at `base_url` (`http://host:port`, with or without a trailing
    /// `/v1`), no API key, the server's default model, a 10-minute request timeout.
    pub fn new(base_url: impl Into<String>) -> Self {
        let mut base = base_url.into().trim_end_matches('/').to_string();
        if base.ends_with("/v1") {
            base.truncate(base.len() - 3);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap_or_default();
        Self {
            base,
            api_key: None,
            model: None,
            http,
        }
    }

    /// Sends `Authorization: Bearer KEY`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The `model` of every request (default: none, the server's default model).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Uses this `reqwest` client (timeouts, proxies, HTTP/2...).
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// The endpoint and OpenAI body of `request` (streamed or not).
    fn body(
        &self,
        request: &CandleCompletionRequest,
        stream: bool,
    ) -> Result<(&'static str, Value), ClientError> {
        let unsupported = |what: &str| Err(ClientError::Unsupported(what.to_string()));
        if !request.processors.is_empty() {
            return unsupported("user logits processors run in-process only");
        }
        if request.sampling.is_some() {
            return unsupported(
                "a whole sampling chain; describe the sampling with temperature/top_p/top_k",
            );
        }
        if request.kv_cache.is_some() {
            return unsupported("a per-request KV cache configuration");
        }
        if !request.tools.is_empty() {
            return unsupported("tools (use the server's chat API directly)");
        }
        if request.logprobs {
            return unsupported("logprobs (the API names tokens by text, not by id)");
        }
        let mut body = Map::new();
        let endpoint = match request.prompt_input()? {
            Prompt::Chat(messages) => {
                let messages = serde_json::to_value(&messages)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                body.insert("messages".into(), messages);
                "/v1/chat/completions"
            }
            Prompt::Text(text) => {
                body.insert("prompt".into(), json!(text));
                "/v1/completions"
            }
            Prompt::Tokens(ids) => {
                body.insert("prompt".into(), json!(ids));
                "/v1/completions"
            }
        };
        if let Some(m) = &self.model {
            body.insert("model".into(), json!(m));
        }
        if let Some(n) = request.max_tokens {
            body.insert("max_tokens".into(), json!(n));
        }
        if let Some(t) = request.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(p) = request.top_p {
            body.insert("top_p".into(), json!(p));
        }
        if let Some(k) = request.top_k {
            body.insert("top_k".into(), json!(k));
        }
        if let Some(s) = request.seed {
            body.insert("seed".into(), json!(s));
        }
        if !request.stop.is_empty() {
            body.insert("stop".into(), json!(request.stop));
        }
        if request.ignore_eos {
            body.insert("ignore_eos".into(), json!(true));
        }
        if let Some(c) = request.close_constraint {
            body.insert("close_constraint".into(), json!(c));
        }
        if let Some(s) = &request.streaming {
            body.insert("stream_chunk_size".into(), json!(s.chunk_size));
            body.insert(
                "stream_buffer_timeout_ms".into(),
                json!(s.buffer_timeout.as_millis() as u64),
            );
        }
        match request.constraint()? {
            None => {}
            Some(ConstraintSpec::JsonObject) => {
                body.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some(ConstraintSpec::JsonSchema(schema)) => {
                body.insert("response_format".into(), json_schema_format(schema));
            }
            Some(ConstraintSpec::JsonSchemaWithMode(schema, mode)) => {
                body.insert("response_format".into(), json_schema_format(schema));
                let spec = matches!(mode, fluent_ai_candle_engine::JsonSchemaMode::Spec);
                body.insert(
                    "json_schema_mode".into(),
                    json!(if spec { "spec" } else { "generation" }),
                );
            }
            Some(ConstraintSpec::Regex(r)) => {
                body.insert("regex".into(), json!(r));
            }
            Some(ConstraintSpec::Grammar(g)) => {
                body.insert("grammar".into(), json!(g));
            }
            Some(_) => return unsupported("this constraint (custom constraints run in-process)"),
        }
        if stream {
            body.insert("stream".into(), json!(true));
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Ok((endpoint, Value::Object(body)))
    }

    /// Sends a body; a status other than 2xx is [`ClientError::Api`].
    async fn send(&self, endpoint: &str, body: &Value) -> Result<reqwest::Response, ClientError> {
        let mut req = self
            .http
            .post(format!("{}{endpoint}", self.base))
            .json(body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let response = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }
}

fn json_schema_format(schema: &Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}})
}

/// OpenAI's `finish_reason` as the engine's (`tool_calls` and `content_filter` are stops).
fn finish_reason(v: &Value) -> Option<FinishReason> {
    v.as_str().map(|s| match s {
        "length" => FinishReason::Length,
        "error" => FinishReason::Error,
        _ => FinishReason::Stop,
    })
}

fn usage(v: &Value) -> Option<Usage> {
    let n = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
    v.is_object().then(|| Usage {
        prompt_tokens: n("prompt_tokens"),
        completion_tokens: n("completion_tokens"),
        total_tokens: n("total_tokens"),
        cached_tokens: v["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0) as usize,
    })
}

/// A choice's text: a chat `message.content` / `delta.content`, or a completion's `text`.
fn choice_text<'v>(choice: &'v Value, part: &str) -> Option<&'v str> {
    choice[part]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
}

fn protocol(what: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(what.to_string())
}

/// A whole OpenAI response as the engine's.
fn response_of(v: &Value) -> Result<CandleCompletionResponse, ClientError> {
    let choice = v["choices"]
        .get(0)
        .ok_or_else(|| protocol("a response without choices"))?;
    let finish = finish_reason(&choice["finish_reason"])
        .ok_or_else(|| protocol("a choice without finish_reason"))?;
    Ok(CandleCompletionResponse {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        created: v["created"].as_u64().unwrap_or(0),
        model: v["model"].as_str().unwrap_or_default().to_string(),
        choices: vec![CompletionChoice {
            index: 0,
            text: choice_text(choice, "message").unwrap_or("").to_string(),
            token_ids: Vec::new(),
            finish_reason: finish,
            error: None,
            logprobs: Vec::new(),
            confidence: None,
        }],
        usage: usage(&v["usage"]).unwrap_or_default(),
    })
}

/// Turns SSE events into chunks: the usage-only chunk (`stream_options.include_usage`) is
/// folded into the finishing chunk, and a mid-stream `{"error": …}` event makes the finish
/// [`FinishReason::Error`], as the engine's own streams end.
#[derive(Default)]
struct ChunkAssembler {
    buf: String,
    held: Option<CandleCompletionChunk>,
    error: Option<String>,
    done: bool,
}

impl ChunkAssembler {
    /// Feeds bytes; returns the chunks now complete.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<CandleCompletionChunk>, ClientError> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let event: String = self.buf.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            if data.is_empty() {
                continue;
            }
            let data = data.join("\n");
            if data == "[DONE]" {
                self.done = true;
                out.extend(self.held.take());
                continue;
            }
            let v: Value = serde_json::from_str(&data).map_err(protocol)?;
            if let Some(message) = v["error"]["message"].as_str() {
                self.error = Some(message.to_string());
                continue;
            }
            let usage = usage(&v["usage"]);
            let Some(choice) = v["choices"].get(0) else {
                // The usage-only chunk: it belongs to the finishing chunk.
                if let Some(held) = &mut self.held {
                    held.usage = usage.or(held.usage);
                }
                continue;
            };
            let mut finish = finish_reason(&choice["finish_reason"]);
            let error = if finish.is_some() {
                self.error.take()
            } else {
                None
            };
            if error.is_some() {
                finish = Some(FinishReason::Error);
            }
            let chunk = CandleCompletionChunk {
                id: v["id"].as_str().unwrap_or_default().to_string(),
                created: v["created"].as_u64().unwrap_or(0),
                model: v["model"].as_str().unwrap_or_default().to_string(),
                choices: vec![ChunkChoice {
                    index: 0,
                    delta: ChunkDelta {
                        content: choice_text(choice, "delta")
                            .filter(|t| !t.is_empty())
                            .map(str::to_string),
                        token_ids: Vec::new(),
                        logprobs: Vec::new(),
                    },
                    finish_reason: finish,
                    error,
                    confidence: None,
                }],
                usage,
            };
            if finish.is_some() {
                out.extend(self.held.replace(chunk));
            } else {
                out.push(chunk);
            }
        }
        Ok(out)
    }

    /// The body ended: the held chunk, or an error when the stream was cut before its end.
    fn finish(&mut self) -> Result<Option<CandleCompletionChunk>, ClientError> {
        match self.held.take() {
            Some(chunk) => Ok(Some(chunk)),
            None if self.done => Ok(None),
            None => Err(protocol("the stream ended before its last chunk")),
        }
    }
}

impl CompletionClient for HttpCompletionClient {
    fn complete<'a>(
        &'a self,
        request: &'a CandleCompletionRequest,
    ) -> BoxFuture<'a, Result<CandleCompletionResponse, ClientError>> {
        async move {
            let (endpoint, body) = self.body(request, false)?;
            let response = self.send(endpoint, &body).await?;
            let v: Value = response
                .json()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            response_of(&v)
        }
        .boxed()
    }

    fn stream<'a>(
        &'a self,
        request: &'a CandleCompletionRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, ClientError>> {
        async move {
            let (endpoint, body) = self.body(request, true)?;
            let response = self.send(endpoint, &body).await?;
            let state = (
                response.bytes_stream().boxed(),
                ChunkAssembler::default(),
                std::collections::VecDeque::new(),
                false,
            );
            let stream = futures::stream::unfold(
                state,
                |(mut body, mut asm, mut ready, ended)| async move {
                    loop {
                        if let Some(c) = ready.pop_front() {
                            return Some((Ok(c), (body, asm, ready, ended)));
                        }
                        if ended {
                            return None;
                        }
                        match body.next().await {
                            Some(Ok(bytes)) => match asm.push(&bytes) {
                                Ok(chunks) => ready.extend(chunks),
                                Err(e) => return Some((Err(e), (body, asm, ready, true))),
                            },
                            Some(Err(e)) => {
                                let e = ClientError::Transport(e.to_string());
                                return Some((Err(e), (body, asm, ready, true)));
                            }
                            None => {
                                return match asm.finish() {
                                    Ok(Some(c)) => Some((Ok(c), (body, asm, ready, true))),
                                    Ok(None) => None,
                                    Err(e) => Some((Err(e), (body, asm, ready, true))),
                                }
                            }
                        }
                    }
                },
            );
            Ok(stream.boxed())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_become_engine_chunks() {
        let mut asm = ChunkAssembler::default();
        let events = concat!(
            "data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,",
            "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            ": keep-alive\n\n",
            "data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,",
            "\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,",
            "\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[],",
            "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
            "data: [DONE]\n\n"
        );
        // Split mid-event: the assembler waits for the blank line.
        let (a, b) = events.split_at(70);
        let mut chunks = asm.push(a.as_bytes()).unwrap();
        chunks.extend(asm.push(b.as_bytes()).unwrap());
        assert_eq!(asm.finish().unwrap().map(|c| c.id), None);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text()).collect();
        assert_eq!(texts, ["", "Hi", ""]);
        let last = chunks.last().unwrap();
        assert_eq!(last.finish_reason(), Some(FinishReason::Length));
        assert_eq!(last.usage.map(|u| u.total_tokens), Some(4));
    }

    #[test]
    fn a_mid_stream_error_ends_with_an_error_chunk_and_a_cut_stream_is_an_error() {
        let mut asm = ChunkAssembler::default();
        let chunks = asm
            .push(
                concat!(
                    "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n",
                    "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"text\":\"\",",
                    "\"finish_reason\":\"stop\"}]}\n\n",
                )
                .as_bytes(),
            )
            .unwrap();
        assert!(chunks.is_empty());
        let last = asm.finish().unwrap().expect("held chunk");
        assert_eq!(last.finish_reason(), Some(FinishReason::Error));
        assert_eq!(last.choices[0].error.as_deref(), Some("boom"));

        let mut cut = ChunkAssembler::default();
        cut.push(b"data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n")
            .unwrap();
        assert!(matches!(cut.finish(), Err(ClientError::Protocol(_))));
        let mut bad = ChunkAssembler::default();
        assert!(matches!(
            bad.push(b"data: {not json\n\n"),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn requests_map_to_openai_bodies() {
        let client = HttpCompletionClient::new("http://h:1/v1/").model("m");
        assert_eq!(client.base, "http://h:1");
        let chat = CandleCompletionRequest {
            max_tokens: Some(8),
            temperature: Some(0.0),
            seed: Some(5),
            stop: vec!["\n".into()],
            constraints: Some(vec![ConstraintSpec::Regex("[a-z]+".into())]),
            ..CandleCompletionRequest::new(Prompt::user("Hi"))
        };
        let (endpoint, body) = client.body(&chat, true).unwrap();
        assert_eq!(endpoint, "/v1/chat/completions");
        assert_eq!(body["messages"][0]["content"], "Hi");
        assert_eq!(body["model"], "m");
        assert_eq!(body["max_tokens"], 8);
        assert_eq!(body["seed"], 5);
        assert_eq!(body["regex"], "[a-z]+");
        assert_eq!(body["stream"], true);
        let text = CandleCompletionRequest {
            prompt: "Once".into(),
            ..Default::default()
        };
        let (endpoint, body) = client.body(&text, false).unwrap();
        assert_eq!(endpoint, "/v1/completions");
        assert_eq!(body["prompt"], "Once");
        assert!(body.get("stream").is_none());
        let custom = CandleCompletionRequest {
            kv_cache: Some(Default::default()),
            ..text.clone()
        };
        assert!(matches!(
            client.body(&custom, false),
            Err(ClientError::Unsupported(_))
        ));
        let both = CandleCompletionRequest {
            input: Some(Prompt::Tokens(vec![1])),
            ..text
        };
        assert!(matches!(
            client.body(&both, false),
            Err(ClientError::Engine(EngineError::InvalidRequest(_)))
        ));
    }
}
