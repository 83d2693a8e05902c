//! Requests, responses and stream chunks in OpenAI's completion shapes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_sampling::{LogitsProcessor, SamplingConfig, SequenceConfidence};
use futures::Stream;

use crate::config::GenerationConfig;
use crate::constraint::ConstraintSpec;
use crate::tools::{ToolChoice, ToolDefinition};
use crate::{CandleGenerator, ChatMessage, EngineError, FinishReason, TokenLogprob, Usage};

/// What to complete: text, token ids, or a conversation the engine renders through the
/// model's chat template.
///
/// ```
/// use fluent_ai_candle_engine::{ChatMessage, Prompt};
/// let chat = Prompt::Chat(vec![
///     ChatMessage::new("system", "Answer in one word."),
///     ChatMessage::new("user", "Name a colour."),
/// ]);
/// assert!(chat.is_chat());
/// assert_eq!(Prompt::from("Once upon a time"), Prompt::Text("Once upon a time".into()));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text, tokenized as is (with a BOS token when the model's tokenizer asks for one).
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
    /// A conversation: rendered through the model's chat template with the assistant turn
    /// opened, then tokenized (the template writes any BOS token itself).
    Chat(Vec<ChatMessage>),
}

impl Prompt {
    /// A conversation of one user message.
    pub fn user(content: impl Into<String>) -> Self {
        Prompt::Chat(vec![ChatMessage::new("user", content)])
    }

    /// True for [`Prompt::Chat`] (its responses are chat completions: ids `chatcmpl-…`).
    pub fn is_chat(&self) -> bool {
        matches!(self, Prompt::Chat(_))
    }
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::Text(String::new())
    }
}

impl From<String> for Prompt {
    fn from(text: String) -> Self {
        Prompt::Text(text)
    }
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Self {
        Prompt::Text(text.to_string())
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Self {
        Prompt::Tokens(ids)
    }
}

impl From<Vec<ChatMessage>> for Prompt {
    fn from(messages: Vec<ChatMessage>) -> Self {
        Prompt::Chat(messages)
    }
}

/// The one request of the engine: what to complete, one sampling description, limits, stop
/// sequences, a constraint, the seed and what to report. [`CandleGenerator::generate`],
/// [`generate`](crate::generate()), the CLI and the server all take it; every field left unset
/// takes the generator's [`GenerationConfig`] default.
///
/// The seed's fields work as its README writes them:
///
/// ```
/// use fluent_ai_candle_engine::CandleCompletionRequest;
/// let request = CandleCompletionRequest {
///     prompt: "Explain quantum computing in simple terms:".to_string(),
///     max_tokens: Some(200),
///     temperature: Some(0.8),
///     ..Default::default()
/// };
/// assert!(request.constraints.is_none());
/// ```
///
/// A chat (rendered and tokenized by the engine) with a whole sampling chain:
///
/// ```
/// use fluent_ai_candle_engine::{
///     CandleCompletionRequest, ChatMessage, GenerationConfig, Prompt, SamplingConfig,
/// };
/// let request = CandleCompletionRequest {
///     sampling: Some(SamplingConfig::builder().top_k(40).temperature(0.7).build()?),
///     max_tokens: Some(64),
///     ..CandleCompletionRequest::new(Prompt::user("Name a colour."))
/// };
/// let chain = request.sampling_config(&GenerationConfig::default())?;
/// assert_eq!(chain.chain.len(), 2);
/// // Two descriptions of the sampling at once are refused.
/// let both = CandleCompletionRequest { temperature: Some(0.0), ..request };
/// assert!(both.sampling_config(&GenerationConfig::default()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`CandleGenerator::generate`]: crate::CandleGenerator::generate
/// [`GenerationConfig`]: crate::GenerationConfig
#[derive(Debug, Clone, Default)]
pub struct CandleCompletionRequest {
    /// The prompt as text (the seed's field): the same as `input: Some(Prompt::Text(..))`.
    /// Leave it empty when `input` is set.
    pub prompt: String,
    /// The prompt as text, token ids or a chat ([`Prompt`]); when set, `prompt` must be
    /// empty.
    pub input: Option<Prompt>,
    /// Most tokens to generate (1..=[`MAX_TOKENS_LIMIT`](crate::MAX_TOKENS_LIMIT)).
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy. With `top_p` and `top_k`, the short description of
    /// the sampling (the chain temperature → top-k → top-p); unset ones take the
    /// generator's defaults. Not together with `sampling`.
    pub temperature: Option<f32>,
    /// Nucleus sampling threshold (see `temperature`).
    pub top_p: Option<f32>,
    /// Top-k cut-off (see `temperature`).
    pub top_k: Option<usize>,
    /// The whole sampling chain (penalties, min-p, Mirostat, logit bias, reported
    /// alternatives...): the long description of the sampling, instead of
    /// `temperature`/`top_p`/`top_k`.
    pub sampling: Option<SamplingConfig>,
    /// Seed of this request's sampler.
    pub seed: Option<u64>,
    /// Stop sequences (never emitted); empty means the generator's defaults.
    pub stop: Vec<String>,
    /// The output constraint (JSON Schema, grammar, regex, a custom
    /// [`GenerationConstraint`](crate::GenerationConstraint)...), as the seed writes it:
    /// `Some(vec![constraint])`. At most one: two constraints at once would need the
    /// intersection of their languages, which the constraint engine does not compute, so a
    /// second one is refused with [`EngineError::InvalidRequest`] (see
    /// [`constraint`](Self::constraint)). `None` and an empty list mean no constraint.
    pub constraints: Option<Vec<ConstraintSpec>>,
    /// This request's KV cache (capacity and eviction strategy); `None` takes the
    /// generator's default, else prompt + `max_tokens` capped at the context, eviction off.
    pub kv_cache: Option<KvCacheConfig>,
    /// Keep generating after an end-of-generation token (benchmarks of a fixed length).
    pub ignore_eos: bool,
    /// Report each token's log-probability (and the `top_logprobs` alternatives of `sampling`)
    /// in chunks and in the response.
    pub logprobs: bool,
    /// Close a constrained output before `max_tokens` runs out (`None`: yes, the default).
    ///
    /// Once the shortest completion of the text so far (see
    /// [`ConstraintState::shortest_completion`]) needs about as many tokens as remain (with a
    /// small margin), each next token is taken along it, so the output ends complete and
    /// valid; `finish_reason` stays `length` (the content was cut short). Before that, in the
    /// last 256 tokens of the budget, a sampled token after which the output could no longer
    /// be closed in time (one that opens a long required structure) is replaced by the first
    /// closing token ([`ConstraintState::commit_if_closable`]). Off: the output is cut
    /// mid-value, as OpenAI's API does.
    ///
    /// [`ConstraintState::shortest_completion`]: fluent_ai_candle_constraints::ConstraintState::shortest_completion
    /// [`ConstraintState::commit_if_closable`]: fluent_ai_candle_constraints::ConstraintState::commit_if_closable
    pub close_constraint: Option<bool>,
    /// Functions the model may call (a chat prompt only): the chat template receives them
    /// (see [`tools`](crate::tools)); parse the output with
    /// [`parse_tool_calls`](crate::tools::parse_tool_calls).
    pub tools: Vec<ToolDefinition>,
    /// Whether and which function the model must call. A forced call (`Required`, a named
    /// function) is generated under [`forced_call_constraint`](crate::tools::forced_call_constraint),
    /// so its arguments always parse and validate; `None` hides the tools from the model.
    pub tool_choice: ToolChoice,
    /// Whether a forced call may be followed by more (`None`: yes, OpenAI's default).
    pub parallel_tool_calls: Option<bool>,
    /// This request's chunking (tokens per chunk, how long a partial chunk may wait, chunks
    /// buffered); `None` takes the generator's [`GenerationConfig::streaming`].
    ///
    /// [`GenerationConfig::streaming`]: crate::GenerationConfig::streaming
    pub streaming: Option<crate::StreamingConfig>,
    /// User logits processors, run in order before the built-in sampling chain (so they see
    /// the model's raw logits, as logit bias does). Each sequence builds its own from the
    /// factory, so per-sequence state (a processor's [`reset`]) never leaks between choices.
    ///
    /// [`reset`]: fluent_ai_candle_sampling::LogitsProcessor::reset
    pub processors: Vec<ProcessorFactory>,
}

/// Builds a fresh [`LogitsProcessor`] for each sequence of a request (see
/// [`CandleCompletionRequest::processors`]).
///
/// ```
/// use fluent_ai_candle_engine::{LogitsProcessor, ProcessorFactory};
/// use fluent_ai_candle_sampling::SamplingError;
///
/// /// Bans one token.
/// struct Ban(u32);
/// impl LogitsProcessor for Ban {
///     fn name(&self) -> &'static str {
///         "ban"
///     }
///     fn process(&mut self, logits: &mut [f32], _history: &[u32]) -> Result<(), SamplingError> {
///         if let Some(l) = logits.get_mut(self.0 as usize) {
///             *l = f32::NEG_INFINITY;
///         }
///         Ok(())
///     }
/// }
/// let factory = ProcessorFactory::new(|| Box::new(Ban(42)));
/// let mut p = factory.build();
/// let mut logits = vec![0.0; 64];
/// p.process(&mut logits, &[]).unwrap();
/// assert_eq!(logits[42], f32::NEG_INFINITY);
/// ```
#[derive(Clone)]
pub struct ProcessorFactory(Arc<dyn Fn() -> Box<dyn LogitsProcessor> + Send + Sync>);

impl ProcessorFactory {
    /// A factory calling `f` once per sequence.
    pub fn new(f: impl Fn() -> Box<dyn LogitsProcessor> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A fresh processor.
    pub fn build(&self) -> Box<dyn LogitsProcessor> {
        (self.0)()
    }
}

impl std::fmt::Debug for ProcessorFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessorFactory")
    }
}

impl CandleCompletionRequest {
    /// A request for `prompt` with every other field unset (the generator's defaults).
    pub fn new(prompt: impl Into<Prompt>) -> Self {
        Self {
            input: Some(prompt.into()),
            ..Default::default()
        }
    }

    /// The request's one constraint, if any: `constraints` holding more than one is refused
    /// with [`EngineError::InvalidRequest`].
    pub fn constraint(&self) -> Result<Option<&ConstraintSpec>, EngineError> {
        match self.constraints.as_deref() {
            None | Some([]) => Ok(None),
            Some([one]) => Ok(Some(one)),
            Some(many) => Err(EngineError::InvalidRequest(format!(
                "{} constraints given: at most one constraint per request is supported",
                many.len()
            ))),
        }
    }

    /// The prompt: `input`, else `prompt` as text. Both at once are refused.
    pub fn prompt_input(&self) -> Result<Prompt, EngineError> {
        match &self.input {
            Some(_) if !self.prompt.is_empty() => Err(EngineError::InvalidRequest(
                "give the prompt either as `prompt` (text) or as `input`, not both".into(),
            )),
            Some(p) => Ok(p.clone()),
            None => Ok(Prompt::Text(self.prompt.clone())),
        }
    }

    /// The sampling chain this request describes: `sampling` as is, else the generator's
    /// default chain ([`GenerationConfig::sampling`]) when none of `temperature`, `top_k` and
    /// `top_p` is set, else temperature → top-k → top-p from them, each unset one from
    /// `defaults`.
    /// Both descriptions at once are refused.
    pub fn sampling_config(
        &self,
        defaults: &GenerationConfig,
    ) -> Result<SamplingConfig, EngineError> {
        if let Some(s) = &self.sampling {
            if self.temperature.is_some() || self.top_p.is_some() || self.top_k.is_some() {
                return Err(EngineError::InvalidRequest(
                    "give either `sampling` (the whole chain) or temperature/top_p/top_k, \
                     not both"
                        .into(),
                ));
            }
            return Ok(s.clone());
        }
        if self.temperature.is_none() && self.top_p.is_none() && self.top_k.is_none() {
            if let Some(s) = &defaults.sampling {
                return Ok(s.clone());
            }
        }
        let mut b =
            SamplingConfig::builder().temperature(self.temperature.unwrap_or(defaults.temperature));
        if let Some(k) = self.top_k.or(defaults.top_k) {
            b = b.top_k(k);
        }
        if let Some(p) = self.top_p.or(defaults.top_p) {
            b = b.top_p(p);
        }
        Ok(b.build()?)
    }
}

/// One choice of a finished completion.
#[derive(Debug, Clone)]
pub struct CompletionChoice {
    /// Index of the choice (always 0: one choice per request).
    pub index: u32,
    /// The generated text, stop sequences cut.
    pub text: String,
    /// The generated token ids.
    pub token_ids: Vec<u32>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// The error that ended it, when `finish_reason` is [`FinishReason::Error`].
    pub error: Option<String>,
    /// Per-token log-probabilities, when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
    /// The whole output's confidence (see [`Generation::confidence`]).
    ///
    /// [`Generation::confidence`]: crate::Generation::confidence
    pub confidence: Option<SequenceConfidence>,
}

/// A finished completion (OpenAI's `text_completion` object).
#[derive(Debug, Clone)]
pub struct CandleCompletionResponse {
    /// Request id (`cmpl-N`).
    pub id: String,
    /// Seconds since the Unix epoch when the request was made.
    pub created: u64,
    /// The model's name.
    pub model: String,
    /// The single choice.
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// New content of a stream chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkDelta {
    /// Text generated since the previous chunk (always whole characters).
    pub content: Option<String>,
    /// Tokens generated since the previous chunk.
    pub token_ids: Vec<u32>,
    /// Their log-probabilities (one per entry of `token_ids`), when the request asked.
    pub logprobs: Vec<TokenLogprob>,
}

/// One choice of a stream chunk.
#[derive(Debug, Clone)]
pub struct ChunkChoice {
    /// Index of the choice (always 0).
    pub index: u32,
    /// What is new.
    pub delta: ChunkDelta,
    /// Set on the last chunk.
    pub finish_reason: Option<FinishReason>,
    /// The error that ended the stream, on a last chunk with [`FinishReason::Error`].
    pub error: Option<String>,
    /// The whole output's confidence, on the last chunk (see [`Generation::confidence`]).
    ///
    /// [`Generation::confidence`]: crate::Generation::confidence
    pub confidence: Option<SequenceConfidence>,
}

/// One chunk of a completion stream (OpenAI's chunk shape: `choices[0].delta.content`).
#[derive(Debug, Clone)]
pub struct CandleCompletionChunk {
    /// Request id, the same on every chunk of a stream.
    pub id: String,
    /// Seconds since the Unix epoch when the request was made.
    pub created: u64,
    /// The model's name.
    pub model: String,
    /// The single choice.
    pub choices: Vec<ChunkChoice>,
    /// Token counts, on the last chunk.
    pub usage: Option<Usage>,
}

impl CandleCompletionChunk {
    /// The chunk's text, or "".
    pub fn text(&self) -> &str {
        self.choices
            .first()
            .and_then(|c| c.delta.content.as_deref())
            .unwrap_or("")
    }

    /// The finish reason, on the last chunk.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.choices.first().and_then(|c| c.finish_reason)
    }
}

/// A stream of completion chunks; the last one carries `finish_reason` and `usage`.
///
/// Dropping it cancels the request: the scheduler frees its slot at its next step.
#[derive(Debug)]
pub struct CandleCompletionStream {
    pub(crate) rx: tokio::sync::mpsc::Receiver<CandleCompletionChunk>,
    pub(crate) finished: bool,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: Arc<str>,
    /// Why the request was refused before it started (a stream from
    /// [`CandleGenerator::generate_stream`]): yielded as one error chunk, returned by
    /// [`collect`](Self::collect).
    pub(crate) refused: Option<EngineError>,
}

impl CandleCompletionStream {
    /// A stream for a request refused before it started: it yields one chunk with
    /// [`FinishReason::Error`] and the error's text, then ends; [`collect`](Self::collect)
    /// returns the typed error itself.
    pub(crate) fn refused(error: EngineError, model: Arc<str>) -> Self {
        let (_, rx) = tokio::sync::mpsc::channel(1);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            rx,
            finished: false,
            id: String::new(),
            created,
            model,
            refused: Some(error),
        }
    }

    /// Why the request was refused before it started, while the stream has not yielded it
    /// yet (a stream from [`CandleGenerator::generate_stream`]; `None` for a started
    /// request).
    pub fn refusal(&self) -> Option<&EngineError> {
        self.refused.as_ref()
    }

    /// The one chunk of a refused request.
    fn refusal_chunk(&mut self) -> Option<CandleCompletionChunk> {
        let error = self.refused.take()?;
        self.finished = true;
        Some(CandleCompletionChunk {
            id: self.id.clone(),
            created: self.created,
            model: self.model.to_string(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: ChunkDelta::default(),
                finish_reason: Some(FinishReason::Error),
                error: Some(error.to_string()),
                confidence: None,
            }],
            usage: Some(Usage::default()),
        })
    }

    /// The request's id, the same as every chunk's `id`: `chatcmpl-…` for a
    /// [`Prompt::Chat`], `cmpl-…` otherwise, unique in the process and across restarts.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seconds since the Unix epoch when the request was made (every chunk's `created`).
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The generator's name (every chunk's `model`).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The next chunk, waiting without an async runtime (do not call it inside one).
    pub fn blocking_next(&mut self) -> Option<CandleCompletionChunk> {
        if self.refused.is_some() {
            return self.refusal_chunk();
        }
        if self.finished {
            return None;
        }
        let chunk = self.rx.blocking_recv();
        self.note(&chunk);
        chunk
    }

    fn note(&mut self, chunk: &Option<CandleCompletionChunk>) {
        match chunk {
            Some(c) if c.finish_reason().is_some() => self.finished = true,
            None => self.finished = true,
            _ => {}
        }
    }

    /// Reads the whole stream into a response.
    pub async fn collect(mut self) -> Result<CandleCompletionResponse, EngineError> {
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        let mut acc = Accumulator::default();
        while let Some(chunk) = futures::StreamExt::next(&mut self).await {
            acc.push(chunk);
        }
        acc.finish()
    }

    /// Reads the whole stream into a response, without an async runtime.
    pub fn blocking_collect(mut self) -> Result<CandleCompletionResponse, EngineError> {
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        let mut acc = Accumulator::default();
        while let Some(chunk) = self.blocking_next() {
            acc.push(chunk);
        }
        acc.finish()
    }
}

impl Stream for CandleCompletionStream {
    type Item = CandleCompletionChunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.refused.is_some() {
            return Poll::Ready(self.refusal_chunk());
        }
        if self.finished {
            return Poll::Ready(None);
        }
        let polled = self.rx.poll_recv(cx);
        let end = match &polled {
            Poll::Ready(Some(c)) => c.finish_reason().is_some(),
            Poll::Ready(None) => true,
            Poll::Pending => false,
        };
        if end {
            self.finished = true;
        }
        polled
    }
}

#[derive(Default)]
struct Accumulator {
    id: String,
    created: u64,
    model: String,
    text: String,
    token_ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    error: Option<String>,
    usage: Option<Usage>,
    confidence: Option<SequenceConfidence>,
}

impl Accumulator {
    fn push(&mut self, chunk: CandleCompletionChunk) {
        self.id = chunk.id;
        self.created = chunk.created;
        self.model = chunk.model;
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for c in chunk.choices {
            if let Some(t) = c.delta.content {
                self.text.push_str(&t);
            }
            self.token_ids.extend(c.delta.token_ids);
            self.logprobs.extend(c.delta.logprobs);
            if c.finish_reason.is_some() {
                self.finish = c.finish_reason;
                self.error = c.error;
                self.confidence = c.confidence;
            }
        }
    }

    fn finish(self) -> Result<CandleCompletionResponse, EngineError> {
        let finish = self.finish.ok_or(EngineError::Shutdown)?;
        Ok(CandleCompletionResponse {
            id: self.id,
            created: self.created,
            model: self.model,
            choices: vec![CompletionChoice {
                index: 0,
                text: self.text,
                token_ids: self.token_ids,
                finish_reason: finish,
                error: self.error,
                logprobs: self.logprobs,
                confidence: self.confidence,
            }],
            usage: self.usage.unwrap_or_default(),
        })
    }
}

/// A request from [`CandleGenerator::generate`]: `.collect().await` gives the response (or
/// the typed error that refused the request).
///
/// [`CandleGenerator::generate`]: crate::CandleGenerator::generate
#[derive(Debug)]
pub struct CandleCompletion {
    pub(crate) generator: CandleGenerator,
    pub(crate) request: Box<CandleCompletionRequest>,
}

impl CandleCompletion {
    /// Waits for the whole completion (the request is prepared on tokio's blocking pool, see
    /// [`CandleGenerator::submit`]).
    pub async fn collect(self) -> Result<CandleCompletionResponse, EngineError> {
        self.generator.submit(*self.request).await?.collect().await
    }

    /// Waits for the whole completion without an async runtime.
    pub fn blocking_collect(self) -> Result<CandleCompletionResponse, EngineError> {
        self.into_stream()?.blocking_collect()
    }

    /// The chunk stream instead of the whole response (the request is prepared and started
    /// on the calling thread).
    pub fn into_stream(self) -> Result<CandleCompletionStream, EngineError> {
        self.generator.try_generate_stream(&self.request)
    }
}
