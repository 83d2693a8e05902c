//! Requests, responses and stream chunks in OpenAI's completion shapes.

use std::pin::Pin;
use std::task::{Context, Poll};

use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_sampling::SamplingConfig;
use futures::Stream;

use crate::constraint::ConstraintSpec;
use crate::{EngineError, FinishReason, TokenLogprob, Usage};

/// One completion request. Unset fields take the generator's [`GenerationConfig`] defaults:
///
/// ```
/// use fluent_ai_candle_engine::CandleCompletionRequest;
/// let request = CandleCompletionRequest {
///     prompt: "Once upon a time".into(),
///     max_tokens: Some(32),
///     temperature: Some(0.0),
///     ..Default::default()
/// };
/// assert!(request.constraints.is_none());
/// ```
///
/// [`GenerationConfig`]: crate::GenerationConfig
#[derive(Debug, Clone, Default)]
pub struct CandleCompletionRequest {
    /// The prompt text (tokenized as is: render a chat template first for chat models).
    pub prompt: String,
    /// Prompt token ids; when set, `prompt` is ignored.
    pub prompt_tokens: Option<Vec<u32>>,
    /// Most tokens to generate.
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling threshold.
    pub top_p: Option<f32>,
    /// Top-k cut-off.
    pub top_k: Option<usize>,
    /// A complete sampling configuration (overrides temperature/top_p/top_k).
    pub sampling: Option<SamplingConfig>,
    /// Seed of this request's sampler.
    pub seed: Option<u64>,
    /// Stop sequences (never emitted); empty means the generator's defaults.
    pub stop: Vec<String>,
    /// An output constraint (JSON Schema, grammar, regex...).
    pub constraints: Option<ConstraintSpec>,
    /// This request's KV cache (capacity and eviction strategy).
    pub kv_cache: Option<KvCacheConfig>,
    /// Keep generating after an end-of-generation token (benchmarks of a fixed length).
    pub ignore_eos: bool,
    /// Report each token's log-probability (and the `top_logprobs` alternatives of `sampling`)
    /// in chunks and in the response.
    pub logprobs: bool,
    /// Close a constrained output before `max_tokens` runs out (`None`: yes, the default; see
    /// [`GenerateParams::close_constraint`](crate::GenerateParams::close_constraint)).
    pub close_constraint: Option<bool>,
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
}

impl CandleCompletionStream {
    /// The next chunk, waiting without an async runtime (do not call it inside one).
    pub fn blocking_next(&mut self) -> Option<CandleCompletionChunk> {
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
        let mut acc = Accumulator::default();
        while let Some(chunk) = futures::StreamExt::next(&mut self).await {
            acc.push(chunk);
        }
        acc.finish()
    }

    /// Reads the whole stream into a response, without an async runtime.
    pub fn blocking_collect(mut self) -> Result<CandleCompletionResponse, EngineError> {
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
            }],
            usage: self.usage.unwrap_or_default(),
        })
    }
}

/// A request in flight, from [`CandleGenerator::generate`]: `.collect().await` gives the
/// response (or the typed error that refused the request).
///
/// [`CandleGenerator::generate`]: crate::CandleGenerator::generate
#[derive(Debug)]
pub struct CandleCompletion {
    pub(crate) inner: Result<CandleCompletionStream, EngineError>,
}

impl CandleCompletion {
    /// Waits for the whole completion.
    pub async fn collect(self) -> Result<CandleCompletionResponse, EngineError> {
        self.inner?.collect().await
    }

    /// Waits for the whole completion without an async runtime.
    pub fn blocking_collect(self) -> Result<CandleCompletionResponse, EngineError> {
        self.inner?.blocking_collect()
    }

    /// The chunk stream instead of the whole response.
    pub fn into_stream(self) -> Result<CandleCompletionStream, EngineError> {
        self.inner
    }
}
