//! The router and its handlers.

use std::convert::Infallible;
use std::path::{Component, Path};
use std::sync::Arc;

use axum::extract::{MatchedPath, Path as UrlPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use fluent_ai_candle_engine::{
    cache, CancelToken, ChatMessage, ChatToolCall, EmbedError, EmbeddingRequest, ModelError,
    Pooling, Prompt, ToolChoice,
};
use futures::StreamExt;

use crate::error::ApiError;
use crate::openai::{
    ChatCompletionRequest, ChatMessageIn, CommonParams, CompletionRequest, DetokenizeRequest,
    DetokenizeResponse, EmbeddingInput, EmbeddingList, EmbeddingObject, EmbeddingRequestIn,
    EmbeddingUsage, EmbeddingVector, LoadModelRequest, MessageContent, ModelList, ModelObject,
    PromptInput, TokenizeRequest, TokenizeResponse, UnloadModelRequest,
};
use crate::params;
use crate::reqlog::{RequestLog, RequestStats};
use crate::state::{lock, ApiJson, AppState};
use crate::stream::{Endpoint, Prepared};

/// Builds the router over a state.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let router = if state.config.chat_page {
        Router::new().route("/", get(crate::page::chat_page))
    } else {
        Router::new()
    };
    router
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(crate::responses::create))
        .route("/v1/embeddings", post(embeddings))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/models/load", post(load_model))
        .route("/v1/models/unload", post(unload_model))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/health", get(crate::health::ready))
        .route("/health/ready", get(crate::health::ready))
        .route("/health/live", get(crate::health::live))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        // The API key, browser checks and body limits (see `guard`), inside the counter so
        // that what they refuse is counted.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::guard::guard,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts every request per route and status, and writes its log line (see `reqlog`) when
/// its response body ends; the request id comes back as `x-request-id`.
async fn count(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let header_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    let mut log = RequestLog::new(req.method().as_str(), &route, header_id);
    req.extensions_mut().insert(log.stats());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    state.http.record(&route, status);
    log.status(status);
    let (mut parts, body) = response.into_parts();
    if let Ok(v) = header::HeaderValue::from_str(log.id()) {
        parts.headers.insert("x-request-id", v);
    }
    Response::from_parts(parts, log.wrap(body))
}

async fn fallback(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// The conversation as the engine's chat messages (OpenAI's roles and text parts checked
/// here; the engine renders the model's template and tokenizes).
fn chat_messages(input: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if input.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut messages = Vec::with_capacity(input.len());
    for m in input {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("unknown message role '{other}'"),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::invalid_param(
                                "messages",
                                format!("content parts of type '{kind}' are not supported"),
                            ))
                        }
                    }
                }
                s
            }
        };
        let mut message = ChatMessage::new(role, content);
        if let Some(calls) = &m.tool_calls {
            if role != "assistant" {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("only assistant messages carry tool_calls, not '{role}'"),
                ));
            }
            for c in calls {
                if c.kind.as_deref().is_some_and(|k| k != "function") {
                    return Err(ApiError::invalid_param(
                        "messages",
                        "tool_calls entries must be of type 'function'",
                    ));
                }
                let arguments = match &c.function.arguments {
                    None | Some(serde_json::Value::Null) => "{}".to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v @ serde_json::Value::Object(_)) => v.to_string(),
                    Some(_) => {
                        return Err(ApiError::invalid_param(
                            "messages",
                            "tool_calls[].function.arguments must be a JSON string",
                        ))
                    }
                };
                message.tool_calls.push(ChatToolCall {
                    id: c.id.clone(),
                    name: c.function.name.clone(),
                    arguments,
                });
            }
        }
        if role == "tool" {
            let Some(id) = &m.tool_call_id else {
                return Err(ApiError::invalid_param(
                    "messages",
                    "a tool message needs the tool_call_id it answers",
                ));
            };
            message.tool_call_id = Some(id.clone());
        }
        message.name = m.name.clone();
        messages.push(message);
    }
    Ok(messages)
}

/// Builds a request's engine form with `job` on the blocking pool
/// ([`run_blocking`](fluent_ai_candle_engine::run_blocking)): it clones the request's schema,
/// possibly huge, and drops the parsed body.
async fn off_async_threads<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    fluent_ai_candle_engine::run_blocking(job)
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
}

/// DRY's sequence breakers of a request, tokenized by its model (none when DRY is off).
fn dry_breakers(
    common: &CommonParams,
    generator: &fluent_ai_candle_engine::CandleGenerator,
) -> Result<Vec<u32>, ApiError> {
    params::dry_breakers(common, |s| {
        generator.tokenize_text(s, false).map_err(|e| e.to_string())
    })
}

/// `(stream, include_usage, n)` of a request, as [`Prepared::new`] takes them.
fn stream_flags(c: &CommonParams, n: usize) -> (bool, bool, usize) {
    (
        c.stream.unwrap_or(false),
        c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        n,
    )
}

/// Validates and starts a chat request (the engine prepares it off the async threads).
pub(crate) async fn prepare_chat(
    state: &Arc<AppState>,
    req: ChatCompletionRequest,
) -> Result<Prepared, ApiError> {
    let guard = state.admit()?;
    let generator = state.generator(req.common.model.as_deref())?;
    let default_max_tokens = state.config.default_max_tokens;
    let tokenizer = generator.clone();
    let confidence = req.common.confidence == Some(true);
    let stream_defaults = state.config.streaming;
    // Building the engine's requests clones the request's schema, possibly huge: on the
    // blocking pool (the request is dropped there too), not on the async threads.
    let built = off_async_threads(move || {
        let logprobs = params::chat_logprobs(req.logprobs, req.top_logprobs)?;
        let breakers = dry_breakers(&req.common, &tokenizer)?;
        let (mut template, n, seed) =
            params::build_template(&req.common, default_max_tokens, logprobs, &breakers)?;
        template.streaming = params::streaming(&req.common, stream_defaults)?;
        let (tools, tool_choice, parallel) = params::tool_params(
            req.tools.as_ref(),
            req.tool_choice.as_ref(),
            req.parallel_tool_calls,
        )?;
        if tool_choice.is_forced() && template.constraints.is_some() {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "a forced tool call cannot be combined with response_format, grammar or regex",
            ));
        }
        let parse_tools = !tools.is_empty() && tool_choice != ToolChoice::None;
        template.tools = tools;
        template.tool_choice = tool_choice;
        template.parallel_tool_calls = parallel;
        let messages = chat_messages(&req.messages)?;
        let requests = params::expand(&template, vec![Prompt::Chat(messages)], n, seed)?;
        let flags = stream_flags(&req.common, n);
        Ok((requests, flags, logprobs.is_some(), parse_tools))
    })
    .await?;
    let (requests, flags, logprobs, parse_tools) = built;
    let streams = generator.submit_all(requests).await?;
    Ok(Prepared::new(
        Endpoint::Chat,
        streams,
        flags,
        guard,
        state.abort.subscribe(),
    )
    .with_logprobs(logprobs)
    .with_confidence(confidence)
    .with_tool_calls(parse_tools))
}

/// Validates and starts a text completion request (the engine prepares it off the async
/// threads).
pub(crate) async fn prepare_completion(
    state: &Arc<AppState>,
    req: CompletionRequest,
) -> Result<Prepared, ApiError> {
    let guard = state.admit()?;
    let generator = state.generator(req.common.model.as_deref())?;
    let tokenizer = generator.clone();
    let confidence = req.common.confidence == Some(true);
    let stream_defaults = state.config.streaming;
    // As for chat: the requests (schema clones) are built on the blocking pool.
    let built = off_async_threads(move || {
        let logprobs = params::completion_logprobs(req.logprobs)?;
        let breakers = dry_breakers(&req.common, &tokenizer)?;
        if req.echo == Some(true) {
            return Err(ApiError::invalid_param("echo", "echo is not supported"));
        }
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param("suffix", "suffix is not supported"));
        }
        let (mut template, n, seed) = params::build_template(&req.common, 16, logprobs, &breakers)?;
        template.streaming = params::streaming(&req.common, stream_defaults)?;
        let flags = stream_flags(&req.common, n);
        let prompts = match req.prompt {
            PromptInput::Text(t) => vec![Prompt::Text(t)],
            PromptInput::Texts(v) => v.into_iter().map(Prompt::Text).collect(),
            PromptInput::Tokens(ids) => vec![Prompt::Tokens(ids)],
            PromptInput::TokenLists(v) => v.into_iter().map(Prompt::Tokens).collect(),
        };
        let requests = params::expand(&template, prompts, n, seed)?;
        Ok((requests, flags, logprobs.is_some()))
    })
    .await?;
    let (requests, flags, logprobs) = built;
    let streams = generator.submit_all(requests).await?;
    Ok(Prepared::new(
        Endpoint::Completion,
        streams,
        flags,
        guard,
        state.abort.subscribe(),
    )
    .with_logprobs(logprobs)
    .with_confidence(confidence))
}

async fn respond(prepared: Prepared, stats: Option<Extension<Arc<RequestStats>>>) -> Response {
    let prepared = prepared.with_stats(stats.map(|Extension(s)| s));
    if prepared.stream {
        let events = prepared
            .into_messages()
            .map(|m| Ok::<_, Infallible>(Event::default().data(m)));
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        match prepared.collect().await {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    stats: Option<Extension<Arc<RequestStats>>>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Response {
    match prepare_chat(&state, req).await {
        Ok(p) => respond(p, stats).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(
    State(state): State<Arc<AppState>>,
    stats: Option<Extension<Arc<RequestStats>>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Response {
    match prepare_completion(&state, req).await {
        Ok(p) => respond(p, stats).await,
        Err(e) => e.into_response(),
    }
}

/// An engine's embedding error as OpenAI's error JSON: the request's fault is a 400 naming
/// the field to blame.
fn embed_error(e: EmbedError) -> ApiError {
    let message = e.to_string();
    match e {
        EmbedError::TooLong { .. } => ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid_param("input", message)
        },
        EmbedError::Dimensions { .. } => ApiError::invalid_param("dimensions", message),
        EmbedError::UnknownPooling(_) => ApiError::invalid_param("pooling", message),
        EmbedError::Unsupported(_) => ApiError::invalid_param("model", message),
        EmbedError::Engine(e) => ApiError::from(e),
        e if e.is_client_error() => ApiError::invalid_param("input", message),
        _ => ApiError::internal(message),
    }
}

/// `POST /v1/embeddings`: each input's pooled, normalised final hidden states of the model
/// (see the engine's `EmbeddingRequest`). `dimensions` below the hidden size keeps the first
/// components and normalises them again (as OpenAI shortens its embeddings); above it, or 0,
/// is a 400. `pooling` (`mean`, the default, or `last`) is an extension.
async fn embeddings(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<EmbeddingRequestIn>,
) -> Result<Json<EmbeddingList>, ApiError> {
    let _guard = state.admit()?;
    let generator = state.generator(req.model.as_deref())?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("encoding_format must be 'float' or 'base64', not '{other}'"),
            ))
        }
    };
    let pooling = match req.pooling.as_deref() {
        None => Pooling::default(),
        Some(p) => p.parse().map_err(embed_error)?,
    };
    let dimensions = match req.dimensions {
        None => None,
        Some(d) => Some(usize::try_from(d).ok().filter(|&d| d > 0).ok_or_else(|| {
            ApiError::invalid_param("dimensions", "dimensions must be a positive integer")
        })?),
    };
    let inputs = match req.input {
        EmbeddingInput::Text(t) => vec![Prompt::Text(t)],
        EmbeddingInput::Texts(v) => v.into_iter().map(Prompt::Text).collect(),
        EmbeddingInput::Tokens(ids) => vec![Prompt::Tokens(ids)],
        EmbeddingInput::TokenLists(v) => v.into_iter().map(Prompt::Tokens).collect(),
    };
    let request = EmbeddingRequest {
        inputs,
        pooling,
        dimensions,
    };
    let out = generator.embed(request).await.map_err(embed_error)?;
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingObject {
            object: "embedding",
            index,
            embedding: if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(v)
            },
        })
        .collect();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: generator.name().to_string(),
        usage: EmbeddingUsage {
            prompt_tokens: out.prompt_tokens,
            total_tokens: out.prompt_tokens,
        },
    }))
}

/// `POST /tokenize` (vLLM's shape): a `prompt` tokenized (with the tokenizer's BOS unless
/// `add_special_tokens` is false), or `messages` rendered through the chat template (the
/// assistant turn opened unless `add_generation_prompt` is false) and tokenized.
async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let generator = state.generator(req.model.as_deref())?;
    let max_model_len = generator.context_length();
    let tokens = off_async_threads(move || match (req.prompt, req.messages) {
        (Some(prompt), None) => {
            Ok(generator.tokenize_text(&prompt, req.add_special_tokens.unwrap_or(true))?)
        }
        (None, Some(messages)) => {
            let messages = chat_messages(&messages)?;
            Ok(generator.tokenize_chat(&messages, req.add_generation_prompt.unwrap_or(true))?)
        }
        _ => Err(ApiError::invalid_param(
            "prompt",
            "give either prompt or messages (exactly one)",
        )),
    })
    .await?;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len,
    }))
}

/// `POST /detokenize` (vLLM's shape): the text of `tokens`, special tokens included; an id
/// outside the vocabulary is a 400.
async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let generator = state.generator(req.model.as_deref())?;
    let prompt = off_async_threads(move || {
        generator
            .detokenize(&req.tokens)
            .map_err(|e| ApiError::invalid_param("tokens", e.to_string()))
    })
    .await?;
    Ok(Json(DetokenizeResponse { prompt }))
}

fn model_object(state: &AppState, id: &str) -> ModelObject {
    ModelObject {
        id: id.to_string(),
        object: "model",
        created: lock(&state.loaded_at).get(id).copied().unwrap_or(0),
        owned_by: "fluent-ai-candle",
        device: fluent_ai_candle_engine::device_name(&state.device),
    }
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let data = state
        .registry
        .names()
        .iter()
        .map(|id| model_object(&state, id))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<ModelObject>, ApiError> {
    state.registry.get(&id).map_err(ApiError::from)?;
    Ok(Json(model_object(&state, &id)))
}

/// The file a load request names, checked to lie directly inside the models directory.
fn load_path(dir: &Path, req: &LoadModelRequest) -> Result<std::path::PathBuf, ApiError> {
    let file = match &req.file {
        Some(f) => f.clone(),
        None => match cache::known_model(&req.model) {
            Some(k) => k.file.to_string(),
            None => format!("{}.gguf", req.model),
        },
    };
    let plain = {
        let mut parts = Path::new(&file).components();
        matches!(
            (parts.next(), parts.next()),
            (Some(Component::Normal(_)), None)
        )
    };
    if !plain || !file.ends_with(".gguf") {
        return Err(ApiError::invalid_param(
            "file",
            "file must be a plain .gguf file name inside the models directory",
        ));
    }
    let path = dir.join(&file);
    let not_found = || {
        ApiError::model_not_found(format!(
            "'{file}' is not in the models directory {}",
            dir.display()
        ))
    };
    let canonical = path.canonicalize().map_err(|_| not_found())?;
    let canonical_dir = dir.canonicalize().map_err(|_| not_found())?;
    if canonical.parent() != Some(canonical_dir.as_path()) || !canonical.is_file() {
        return Err(not_found());
    }
    Ok(canonical)
}

/// Cancels a model load when dropped (the handler's future is dropped when its client
/// disconnects) and when the server starts draining (a load is new work; SIGTERM must not
/// wait for it): the loading thread stops before its next tensor.
pub(crate) struct LoadGuard {
    pub(crate) cancel: CancelToken,
    watcher: tokio::task::JoinHandle<()>,
}

impl LoadGuard {
    pub(crate) fn new(state: &Arc<AppState>) -> Self {
        let cancel = CancelToken::new();
        let watcher = {
            let (state, cancel) = (state.clone(), cancel.clone());
            tokio::spawn(async move {
                while !state.draining.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                cancel.cancel();
            })
        };
        Self { cancel, watcher }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.watcher.abort();
    }
}

async fn load_model(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<LoadModelRequest>,
) -> Result<Json<ModelObject>, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    if req.model.is_empty() || req.model.len() > 128 || req.model.contains('/') {
        return Err(ApiError::invalid_param(
            "model",
            "model must be a short id without '/'",
        ));
    }
    let path = load_path(&state.models_dir, &req)?;
    let _one_at_a_time = state.load_lock.lock().await;
    crate::guard::check_model_capacity(&state, &req.model)?;
    let guard = LoadGuard::new(&state);
    let loaded = state.load(&req.model, path, guard.cancel.clone()).await;
    drop(guard);
    loaded.map_err(|e| match e {
        fluent_ai_candle_engine::EngineError::Model(ModelError::Cancelled) => {
            ApiError::unavailable("the load was cancelled: the server is shutting down")
        }
        fluent_ai_candle_engine::EngineError::Model(m) => {
            ApiError::bad_request(format!("cannot load '{}': {m}", req.model))
        }
        other => ApiError::from(other),
    })?;
    Ok(Json(model_object(&state, &req.model)))
}

async fn unload_model(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<UnloadModelRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let _one_at_a_time = state.load_lock.lock().await;
    state.unregister(&req.model)?;
    Ok(Json(serde_json::json!({
        "id": req.model,
        "object": "model",
        "deleted": true,
    })))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use fluent_ai_candle_engine::Device;

    use super::*;
    use crate::config::ServerConfig;

    /// A hot load stops (before its next tensor) when its client leaves — the handler's future,
    /// and with it the guard, is dropped — and when the server starts draining (SIGTERM), so
    /// neither waits for a load to finish.
    #[tokio::test]
    async fn a_load_is_cancelled_when_its_client_leaves_or_the_server_drains() {
        let state = Arc::new(AppState::new(ServerConfig::default(), Device::Cpu));
        let guard = LoadGuard::new(&state);
        let token = guard.cancel.clone();
        assert!(!token.is_cancelled());
        drop(guard);
        assert!(token.is_cancelled());

        let guard = LoadGuard::new(&state);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(!guard.cancel.is_cancelled(), "cancelled without a reason");
        state.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !guard.cancel.is_cancelled() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "draining did not cancel"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
