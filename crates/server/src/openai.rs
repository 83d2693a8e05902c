//! OpenAI's request, response, stream-chunk and model-list shapes (serde), plus this server's
//! extensions (`top_k`, `min_p`, `typical_p`, `mirostat`, `repetition_penalty`, `grammar`,
//! `regex`, `ignore_eos`, `close_constraint`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StopSpec {
    /// One stop sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and `choices: []`).
    #[serde(default)]
    pub include_usage: bool,
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct JsonSchemaFormat {
    /// The schema's name.
    pub name: String,
    /// A description (unused by the sampler).
    #[serde(default)]
    pub description: Option<String>,
    /// The JSON Schema; absent means any JSON object.
    #[serde(default)]
    pub schema: Option<Value>,
    /// Strict mode (the output always follows the schema here: decoding is constrained).
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON following a schema.
    JsonSchema {
        /// The schema.
        json_schema: JsonSchemaFormat,
    },
}

/// Sampling and decoding fields shared by both completion endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonParams {
    /// The model's id (defaults to the first model loaded).
    #[serde(default)]
    pub model: Option<String>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Most tokens to generate (the newer name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// 0..=2; 0 is greedy. Default 1.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus threshold in (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Choices per prompt.
    #[serde(default)]
    pub n: Option<i64>,
    /// Stop sequences (at most 4).
    #[serde(default)]
    pub stop: Option<StopSpec>,
    /// Seed of the sampler (choice `i` uses `seed + i`).
    #[serde(default)]
    pub seed: Option<i64>,
    /// -2..=2.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// -2..=2.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Token id (as a string) → bias in -100..=100.
    #[serde(default)]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Output format.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Extension: keep the `k` most likely tokens (≤ 0: off).
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Extension: min-p in (0, 1].
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Extension: locally typical sampling in (0, 1].
    #[serde(default)]
    pub typical_p: Option<f32>,
    /// Extension: Mirostat version 0 (off), 1 or 2.
    #[serde(default)]
    pub mirostat: Option<i64>,
    /// Extension: Mirostat target surprise (default 5).
    #[serde(default)]
    pub mirostat_tau: Option<f32>,
    /// Extension: Mirostat learning rate (default 0.1).
    #[serde(default)]
    pub mirostat_eta: Option<f32>,
    /// Extension: repetition penalty (> 0; 1 is off) over the last 64 tokens.
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Extension: a GBNF grammar the output must follow.
    #[serde(default)]
    pub grammar: Option<String>,
    /// Extension: a regular expression the output must match.
    #[serde(default)]
    pub regex: Option<String>,
    /// Extension: how `response_format`'s JSON Schema is read: `"generation"` (the default:
    /// undeclared properties only where the schema allows them explicitly, one whitespace
    /// style) or `"spec"` (every JSON text the schema accepts).
    #[serde(default)]
    pub json_schema_mode: Option<String>,
    /// Extension: keep going after end-of-generation tokens (fixed-length benchmarks).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Extension: `false` to cut a constrained output at `max_tokens` mid-value (as OpenAI
    /// does) instead of closing it in time (the default).
    #[serde(default)]
    pub close_constraint: Option<bool>,
}

/// One part of a multi-part message content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text` (other kinds are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A message's `content`: a string or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Parts (only `text` parts are supported).
    Parts(Vec<ContentPart>),
}

/// The function of a tool call in an assistant message.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCallIn {
    /// The function's name.
    pub name: String,
    /// The arguments: JSON text (OpenAI), or a JSON object (accepted too).
    #[serde(default)]
    pub arguments: Option<Value>,
}

/// One tool call of an assistant message in the history.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    /// The call's id (which the `tool` message answering it names).
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The call.
    pub function: FunctionCallIn,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The content (may be null for an assistant message).
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// An optional participant name.
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's function calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// The conversation.
    pub messages: Vec<ChatMessageIn>,
    /// Return log-probabilities of the output tokens.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per position (0..=20; needs `logprobs`).
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// Functions the model may call: a list of `{"type": "function", "function": {"name",
    /// "description", "parameters"}}` (checked by hand, so a bad shape names the field).
    #[serde(default)]
    pub tools: Option<Value>,
    /// `"auto"` (the default with tools), `"none"`, `"required"` or `{"type": "function",
    /// "function": {"name": …}}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Whether a forced call may be followed by more (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Everything else.
    #[serde(flatten)]
    pub common: CommonParams,
}

/// `prompt` of `/v1/completions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Alternatives per position (0..=5), as in OpenAI's legacy completions.
    #[serde(default)]
    pub logprobs: Option<i64>,
    /// Echo the prompt (not supported: refused when true).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Text after the completion (not supported: refused when set).
    #[serde(default)]
    pub suffix: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub common: CommonParams,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageOut {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// Where the prompt tokens came from.
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache (their keys and values were reused, not
    /// computed).
    pub cached_tokens: usize,
}

/// One alternative of a chat logprob entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopLogprobOut {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// One generated token's chat logprob entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenLogprobOut {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely alternatives.
    pub top_logprobs: Vec<TopLogprobOut>,
}

/// `choices[i].logprobs` of a chat completion.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<TokenLogprobOut>,
}

/// `choices[i].logprobs` of a text completion.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// Alternatives per position (token text → logprob).
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Character offset of each token in the completion.
    pub text_offset: Vec<usize>,
}

/// The function of a tool call in a response.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FunctionCallOut {
    /// The function's name (streams: on the call's first delta).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The arguments as JSON text (streams: pieces to concatenate).
    pub arguments: String,
}

/// One tool call of a response message, or its piece in a stream delta.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    /// Streams: which call this piece belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// `call_…` (streams: on the call's first delta).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (streams: on the call's first delta).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The call.
    pub function: FunctionCallOut,
}

/// The assistant message of a chat choice.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text (null when the message is only tool calls).
    pub content: Option<String>,
    /// The function calls the model made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    /// Its index.
    pub index: usize,
    /// The message.
    pub message: AssistantMessage,
    /// Log-probabilities, when asked.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
}

/// A chat completion (`object: "chat.completion"`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model's id.
    pub model: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: UsageOut,
    /// Always null.
    pub system_fingerprint: Option<String>,
}

/// The delta of a chat stream chunk.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    /// `assistant` on a choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New tool calls (or pieces of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// One choice of a chat stream chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    /// Its index.
    pub index: usize,
    /// What is new.
    pub delta: ChatDelta,
    /// Log-probabilities of the new tokens, when asked.
    pub logprobs: Option<ChatLogprobs>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<&'static str>,
}

/// A chat stream chunk (`object: "chat.completion.chunk"`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    /// The same on every chunk.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model's id.
    pub model: String,
    /// Choices with news (empty on the usage chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// With `include_usage`: null on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageOut>>,
    /// Always null.
    pub system_fingerprint: Option<String>,
}

/// One choice of a text completion or of its stream chunk.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoiceOut {
    /// The (new) text.
    pub text: String,
    /// Its index.
    pub index: usize,
    /// Log-probabilities, when asked.
    pub logprobs: Option<CompletionLogprobs>,
    /// Set when the choice has ended.
    pub finish_reason: Option<&'static str>,
}

/// A text completion or one of its stream chunks (`object: "text_completion"`).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionResponse {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model's id.
    pub model: String,
    /// The choices.
    pub choices: Vec<CompletionChoiceOut>,
    /// Token counts (streams: only with `include_usage`, on the last chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageOut>>,
    /// Always null.
    pub system_fingerprint: Option<String>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelObject {
    /// The name requests use.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds when it was loaded.
    pub created: u64,
    /// `fluent-ai-candle`.
    pub owned_by: &'static str,
    /// The device it runs on: `cpu`, `cuda:N` or `metal:N` (an extension of OpenAI's object).
    pub device: String,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The models.
    pub data: Vec<ModelObject>,
}

/// `POST /v1/models/load`.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadModelRequest {
    /// The name to register (a known model name, or any id when `file` is given).
    pub model: String,
    /// A GGUF file name inside the models directory (default: the known model's file).
    #[serde(default)]
    pub file: Option<String>,
}

/// `POST /v1/models/unload`.
#[derive(Debug, Clone, Deserialize)]
pub struct UnloadModelRequest {
    /// The name to remove.
    pub model: String,
}

/// `input` of `/v1/embeddings`: OpenAI's four forms.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One input as token ids.
    Tokens(Vec<u32>),
    /// Several inputs as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequestIn {
    /// What to embed.
    pub input: EmbeddingInput,
    /// The model (default: the server's default model).
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (the default: arrays of numbers) or `base64` (each vector's little-endian
    /// f32 bytes, base64-encoded).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Shorten each vector to its first `dimensions` components, normalised again (1 to the
    /// model's hidden size).
    #[serde(default)]
    pub dimensions: Option<i64>,
    /// OpenAI's end-user id (accepted, unused).
    #[serde(default)]
    pub user: Option<String>,
    /// Extension: `mean` (the default) or `last` pooling of the tokens' hidden states.
    #[serde(default)]
    pub pooling: Option<String>,
}

/// One vector: numbers, or base64 text.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `encoding_format: "float"`.
    Float(Vec<f32>),
    /// `encoding_format: "base64"`.
    Base64(String),
}

/// `data[i]` of an embeddings response.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingObject {
    /// Always `embedding`.
    pub object: &'static str,
    /// The input's position in the request.
    pub index: usize,
    /// The vector.
    pub embedding: EmbeddingVector,
}

/// `usage` of an embeddings response.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EmbeddingUsage {
    /// Tokens of every input.
    pub prompt_tokens: usize,
    /// The same (nothing is generated).
    pub total_tokens: usize,
}

/// The response of `POST /v1/embeddings`.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingList {
    /// Always `list`.
    pub object: &'static str,
    /// One entry per input.
    pub data: Vec<EmbeddingObject>,
    /// The model that computed them.
    pub model: String,
    /// Token counts.
    pub usage: EmbeddingUsage,
}

/// `POST /tokenize` (vLLM's shape): a `prompt`, or `messages` rendered through the chat
/// template.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    /// The model (default: the server's default model).
    #[serde(default)]
    pub model: Option<String>,
    /// A text to tokenize.
    #[serde(default)]
    pub prompt: Option<String>,
    /// A conversation to render and tokenize.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessageIn>>,
    /// With `messages`: open the assistant turn (default true, as vLLM).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    /// With `prompt`: add the tokenizer's special tokens (its BOS), default true, as vLLM.
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
}

/// The response of `POST /tokenize`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenizeResponse {
    /// The token ids.
    pub tokens: Vec<u32>,
    /// How many.
    pub count: usize,
    /// The model's context length.
    pub max_model_len: usize,
}

/// `POST /detokenize` (vLLM's shape).
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    /// The model (default: the server's default model).
    #[serde(default)]
    pub model: Option<String>,
    /// The token ids.
    pub tokens: Vec<u32>,
}

/// The response of `POST /detokenize`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DetokenizeResponse {
    /// The text of the tokens.
    pub prompt: String,
}
