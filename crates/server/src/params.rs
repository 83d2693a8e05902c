//! Request validation and mapping onto engine requests: OpenAI fields → a
//! [`SamplingConfig`] chain, a constraint, limits and one engine request per choice (the
//! prompt travels as the engine's [`Prompt`]: a chat, a text or token ids, rendered and
//! tokenized by the engine).

use std::sync::atomic::{AtomicU64, Ordering};

use fluent_ai_candle_engine::{
    CandleCompletionRequest, ConstraintSpec, JsonSchemaMode, Prompt, StreamingConfig, ToolChoice,
    ToolDefinition,
};
use fluent_ai_candle_sampling::{LogprobSource, SamplingConfig};
use serde_json::Value;

use crate::error::ApiError;
use crate::openai::{CommonParams, ResponseFormat, StopSpec};

/// Most choices (`n` × prompts) one request may ask for.
pub const MAX_CHOICES: usize = 16;
/// Most stop sequences (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Largest `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;

fn check_range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match v {
        Some(x) if !(x.is_finite() && x >= lo && x <= hi) => Err(ApiError::invalid_param(
            name,
            format!("{name} must be in [{lo}, {hi}], got {x}"),
        )),
        _ => Ok(()),
    }
}

fn check_open01(name: &str, v: Option<f32>) -> Result<(), ApiError> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0 && x <= 1.0) => Err(ApiError::invalid_param(
            name,
            format!("{name} must be in (0, 1], got {x}"),
        )),
        _ => Ok(()),
    }
}

static SEED_COUNTER: AtomicU64 = AtomicU64::new(0);

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut state = nanos ^ SEED_COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    fluent_ai_candle_sampling::splitmix64(&mut state)
}

/// Validates the shared fields and builds the sampling chain, the constraint and the limits.
///
/// `default_max_tokens` applies when neither `max_tokens` nor `max_completion_tokens` is set;
/// `logprobs` is the number of alternatives asked (already validated by the caller).
pub(crate) fn build_template(
    p: &CommonParams,
    default_max_tokens: usize,
    logprobs: Option<usize>,
    dry_breakers: &[u32],
) -> Result<(CandleCompletionRequest, usize, Option<u64>), ApiError> {
    let max_tokens = match p.max_completion_tokens.or(p.max_tokens) {
        None => default_max_tokens,
        Some(m) if m >= 1 && m <= fluent_ai_candle_engine::MAX_TOKENS_LIMIT as i64 => m as usize,
        Some(m) => {
            let name = if p.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid_param(
                name,
                format!("{name} must be at least 1, got {m}"),
            ));
        }
    };
    check_range("temperature", p.temperature, 0.0, 2.0)?;
    if let Some(t) = p.temperature.filter(|&t| t > 0.0) {
        if t < fluent_ai_candle_sampling::MIN_TEMPERATURE {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("temperature must be 0 (greedy) or at least 1e-30, got {t}"),
            ));
        }
    }
    check_open01("top_p", p.top_p)?;
    check_range("frequency_penalty", p.frequency_penalty, -2.0, 2.0)?;
    check_range("presence_penalty", p.presence_penalty, -2.0, 2.0)?;
    check_open01("min_p", p.min_p)?;
    check_open01("typical_p", p.typical_p)?;
    let n = match p.n {
        None => 1,
        Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid_param(
                "n",
                format!("n must be in 1..={MAX_CHOICES}, got {n}"),
            ))
        }
    };
    let stop = match &p.stop {
        None => Vec::new(),
        Some(StopSpec::One(s)) => vec![s.clone()],
        Some(StopSpec::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            format!("stop takes at most {MAX_STOP} non-empty strings"),
        ));
    }
    let mut bias = Vec::new();
    for (k, v) in p.logit_bias.iter().flatten() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::invalid_param(
                "logit_bias",
                format!("logit_bias key '{k}' is not a token id"),
            )
        })?;
        if !(v.is_finite() && (-100.0..=100.0).contains(v)) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                format!("logit_bias values must be in [-100, 100], got {v}"),
            ));
        }
        // OpenAI: -100 bans a token, 100 forces it in practice.
        let b = if *v <= -100.0 { f32::NEG_INFINITY } else { *v };
        bias.push((id, b));
    }
    let repetition = p.repetition_penalty.unwrap_or(1.0);
    if !(fluent_ai_candle_sampling::MIN_PENALTY..=fluent_ai_candle_sampling::MAX_PENALTY)
        .contains(&repetition)
    {
        return Err(ApiError::invalid_param(
            "repetition_penalty",
            format!("repetition_penalty must be in [1e-30, 1e30] (1 is off), got {repetition}"),
        ));
    }
    let mirostat = p.mirostat.unwrap_or(0);
    if !(0..=2).contains(&mirostat) {
        return Err(ApiError::invalid_param(
            "mirostat",
            format!("mirostat must be 0, 1 or 2, got {mirostat}"),
        ));
    }
    let tau = p.mirostat_tau.unwrap_or(5.0);
    let eta = p.mirostat_eta.unwrap_or(0.1);
    if mirostat > 0 && !(tau.is_finite() && tau > 0.0 && eta.is_finite() && eta > 0.0) {
        return Err(ApiError::invalid_param(
            "mirostat_tau",
            "mirostat_tau and mirostat_eta must be > 0",
        ));
    }
    let temperature = p.temperature.unwrap_or(1.0);

    // The chain, in llama.cpp's order: bias, penalties, truncation, temperature (or Mirostat).
    let mut b = SamplingConfig::builder();
    if !bias.is_empty() {
        b = b.logit_bias(bias);
    }
    if repetition != 1.0 {
        b = b.repetition_penalty(repetition, 64);
    }
    let (f, pr) = (
        p.frequency_penalty.unwrap_or(0.0),
        p.presence_penalty.unwrap_or(0.0),
    );
    if f != 0.0 || pr != 0.0 {
        b = b.frequency_presence(f, pr);
    }
    if let Some(m) = p.dry_multiplier.filter(|&m| m != 0.0) {
        let int = |name: &str, v: Option<i64>, default: usize| match v {
            None => Ok(default),
            Some(v) if (1..=65_536).contains(&v) => Ok(v as usize),
            Some(v) => Err(ApiError::invalid_param(
                name,
                format!("{name} must be in 1..=65536, got {v}"),
            )),
        };
        b = b.dry(
            m,
            p.dry_base.unwrap_or(1.75),
            int("dry_allowed_length", p.dry_allowed_length, 2)?,
            int("dry_penalty_last_n", p.dry_penalty_last_n, 1024)?,
            dry_breakers.to_vec(),
        );
    }
    if temperature == 0.0 {
        b = b.temperature(0.0);
    } else if mirostat > 0 {
        b = b.temperature(temperature);
        b = if mirostat == 1 {
            b.mirostat_v1(tau, eta)
        } else {
            b.mirostat_v2(tau, eta)
        };
    } else {
        if let Some(n) = p.top_n_sigma {
            b = b.top_n_sigma(n);
        }
        if let Some(k) = p.top_k.filter(|&k| k > 0) {
            b = b.top_k(k as usize);
        }
        if let Some(t) = p.typical_p.filter(|&t| t < 1.0) {
            b = b.typical_p(t);
        }
        if let Some(t) = p.top_p.filter(|&t| t < 1.0) {
            b = b.top_p(t);
        }
        if let Some(m) = p.min_p {
            b = b.min_p(m);
        }
        if let Some(x) = p.xtc_probability.filter(|&x| x != 0.0) {
            b = b.xtc(x, p.xtc_threshold.unwrap_or(0.1));
        }
        b = b.temperature(temperature);
    }
    if let Some(k) = logprobs {
        // OpenAI reports the model's distribution, before temperature and truncation.
        b = b.top_logprobs(k).logprob_source(LogprobSource::Model);
    } else if p.confidence == Some(true) {
        // Confidence describes the model, not the sampler's truncated distribution (which
        // is certain under greedy decoding).
        b = b.logprob_source(LogprobSource::Model);
    }
    let sampling = b
        .build()
        .map_err(|e| ApiError::bad_request(format!("invalid sampling parameters: {e}")))?;

    let mut constraints = Vec::new();
    match &p.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => constraints.push(ConstraintSpec::JsonObject),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            if json_schema.name.is_empty() {
                return Err(ApiError::invalid_param(
                    "response_format",
                    "response_format.json_schema.name must not be empty",
                ));
            }
            let mode = match &p.json_schema_mode {
                None => JsonSchemaMode::default(),
                Some(m) => m
                    .parse()
                    .map_err(|e: String| ApiError::invalid_param("json_schema_mode", e))?,
            };
            constraints.push(match &json_schema.schema {
                Some(s) if s.is_object() || s.is_boolean() => {
                    ConstraintSpec::JsonSchemaWithMode(s.clone(), mode)
                }
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "response_format",
                        "response_format.json_schema.schema must be a JSON Schema object",
                    ))
                }
                None => ConstraintSpec::JsonObject,
            });
        }
    }
    if let Some(g) = &p.grammar {
        constraints.push(ConstraintSpec::Grammar(g.clone()));
    }
    if let Some(r) = &p.regex {
        constraints.push(ConstraintSpec::Regex(r.clone()));
    }
    if constraints.len() > 1 {
        return Err(ApiError::bad_request(
            "use at most one of response_format (json), grammar and regex",
        ));
    }
    let seed = p.seed.map(|s| s as u64);
    let request = CandleCompletionRequest {
        max_tokens: Some(max_tokens),
        sampling: Some(sampling),
        stop,
        constraints: constraints.pop().map(|c| vec![c]),
        ignore_eos: p.ignore_eos.unwrap_or(false),
        logprobs: logprobs.is_some(),
        close_constraint: p.close_constraint,
        ..Default::default()
    };
    Ok((request, n, seed))
}

/// One engine request per choice: `n` copies of `template` per prompt, choice `i` seeded with
/// `seed + i` (a fresh seed when none is given).
pub(crate) fn expand(
    template: &CandleCompletionRequest,
    prompts: Vec<Prompt>,
    n: usize,
    seed: Option<u64>,
) -> Result<Vec<CandleCompletionRequest>, ApiError> {
    if prompts.is_empty() {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    if prompts.len() * n > MAX_CHOICES {
        return Err(ApiError::invalid_param(
            "n",
            format!("prompts × n must be at most {MAX_CHOICES}"),
        ));
    }
    let base = seed.unwrap_or_else(fresh_seed);
    let mut out = Vec::with_capacity(prompts.len() * n);
    for prompt in &prompts {
        for _ in 0..n {
            let mut r = template.clone();
            r.seed = Some(base.wrapping_add(out.len() as u64));
            r.input = Some(prompt.clone());
            out.push(r);
        }
    }
    Ok(out)
}

/// Most tools one request may offer.
pub const MAX_TOOLS: usize = 128;

/// A chat request's `tools`, `tool_choice` and `parallel_tool_calls`, checked: tools a list
/// of `{"type": "function", "function": {"name", "description"?, "parameters"?}}` with
/// distinct names and object schemas; `tool_choice` only with tools, and a named function
/// among them.
pub(crate) fn tool_params(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<(Vec<ToolDefinition>, ToolChoice, Option<bool>), ApiError> {
    let bad_tools = |m: String| ApiError::invalid_param("tools", m);
    let list = match tools {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(bad_tools("tools must be an array of tool objects".into())),
    };
    if list.len() > MAX_TOOLS {
        return Err(bad_tools(format!("at most {MAX_TOOLS} tools")));
    }
    let mut defs: Vec<ToolDefinition> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad_tools(format!(
                "tools[{i}].type must be \"function\" (the only tool type supported)"
            )));
        }
        let Some(f) = t.get("function").filter(|f| f.is_object()) else {
            return Err(bad_tools(format!("tools[{i}].function must be an object")));
        };
        let name = match f.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n.len() <= 64 => n.to_string(),
            _ => {
                return Err(bad_tools(format!(
                    "tools[{i}].function.name must be a non-empty string of at most 64 characters"
                )))
            }
        };
        if defs.iter().any(|d| d.name == name) {
            return Err(bad_tools(format!("two tools are named '{name}'")));
        }
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => {
                return Err(bad_tools(format!(
                    "tools[{i}].function.description must be a string"
                )))
            }
        };
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => None,
            Some(p) if p.is_object() => Some(p.clone()),
            Some(_) => {
                return Err(bad_tools(format!(
                    "tools[{i}].function.parameters must be a JSON Schema object"
                )))
            }
        };
        defs.push(ToolDefinition {
            name,
            description,
            parameters,
        });
    }
    let bad_choice = |m: String| ApiError::invalid_param("tool_choice", m);
    let choice = match tool_choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(_) if defs.is_empty() => {
            return Err(bad_choice(
                "tool_choice is only allowed when tools are given".into(),
            ))
        }
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad_choice(format!(
                    "tool_choice must be \"auto\", \"none\", \"required\" or a function, got \"{other}\""
                )))
            }
        },
        Some(v) => {
            let name = (v.get("type").and_then(Value::as_str) == Some("function"))
                .then(|| v.get("function")?.get("name")?.as_str())
                .flatten()
                .ok_or_else(|| {
                    bad_choice(
                        "tool_choice must be a string or {\"type\": \"function\", \"function\": {\"name\": …}}"
                            .into(),
                    )
                })?;
            if !defs.iter().any(|d| d.name == name) {
                return Err(bad_choice(format!(
                    "tool_choice names '{name}', which is not among the tools"
                )));
            }
            ToolChoice::Function(name.to_string())
        }
    };
    if parallel.is_some() && defs.is_empty() {
        return Err(ApiError::invalid_param(
            "parallel_tool_calls",
            "parallel_tool_calls is only allowed when tools are given",
        ));
    }
    Ok((defs, choice, parallel))
}

/// Checks `top_logprobs` (chat) against `logprobs`.
pub(crate) fn chat_logprobs(
    logprobs: Option<bool>,
    top: Option<i64>,
) -> Result<Option<usize>, ApiError> {
    let on = logprobs.unwrap_or(false);
    match top {
        Some(t) if !(0..=MAX_TOP_LOGPROBS as i64).contains(&t) => Err(ApiError::invalid_param(
            "top_logprobs",
            format!("top_logprobs must be in 0..={MAX_TOP_LOGPROBS}, got {t}"),
        )),
        Some(t) if t > 0 && !on => Err(ApiError::invalid_param(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        )),
        _ => Ok(on.then(|| top.unwrap_or(0) as usize)),
    }
}

/// Checks the legacy completions `logprobs` integer (0..=5).
pub(crate) fn completion_logprobs(logprobs: Option<i64>) -> Result<Option<usize>, ApiError> {
    match logprobs {
        None => Ok(None),
        Some(k) if (0..=5).contains(&k) => Ok(Some(k as usize)),
        Some(k) => Err(ApiError::invalid_param(
            "logprobs",
            format!("logprobs must be in 0..=5, got {k}"),
        )),
    }
}

/// DRY's default sequence breakers (llama.cpp's).
pub(crate) const DRY_DEFAULT_BREAKERS: [&str; 4] = ["\n", ":", "\"", "*"];

/// The token ids that break a DRY match: every token of each breaker string (the request's,
/// else [`DRY_DEFAULT_BREAKERS`]); none when DRY is off.
pub(crate) fn dry_breakers(
    p: &CommonParams,
    tokenize: impl Fn(&str) -> Result<Vec<u32>, String>,
) -> Result<Vec<u32>, ApiError> {
    if p.dry_multiplier.is_none_or(|m| m == 0.0) {
        return Ok(Vec::new());
    }
    let strings: Vec<&str> = match &p.dry_sequence_breakers {
        Some(v) if v.len() > 64 || v.iter().any(|s| s.is_empty() || s.len() > 64) => {
            return Err(ApiError::invalid_param(
                "dry_sequence_breakers",
                "dry_sequence_breakers takes at most 64 non-empty strings of at most 64 bytes",
            ))
        }
        Some(v) => v.iter().map(String::as_str).collect(),
        None => DRY_DEFAULT_BREAKERS.to_vec(),
    };
    let mut ids = Vec::new();
    for s in strings {
        let t = tokenize(s).map_err(|e| ApiError::invalid_param("dry_sequence_breakers", e))?;
        ids.extend(t);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The request's streaming knobs over the server's defaults (`None` when it sets none).
pub(crate) fn streaming(
    p: &CommonParams,
    defaults: StreamingConfig,
) -> Result<Option<StreamingConfig>, ApiError> {
    if p.stream_chunk_size.is_none() && p.stream_buffer_timeout_ms.is_none() {
        return Ok(None);
    }
    let mut s = defaults;
    if let Some(n) = p.stream_chunk_size {
        if !(1..=4096).contains(&n) {
            return Err(ApiError::invalid_param(
                "stream_chunk_size",
                format!("stream_chunk_size must be in 1..=4096, got {n}"),
            ));
        }
        s.chunk_size = n as usize;
    }
    if let Some(ms) = p.stream_buffer_timeout_ms {
        if !(ms.is_finite() && (0.0..=60_000.0).contains(&ms)) {
            return Err(ApiError::invalid_param(
                "stream_buffer_timeout_ms",
                format!("stream_buffer_timeout_ms must be in [0, 60000], got {ms}"),
            ));
        }
        s.buffer_timeout = std::time::Duration::from_secs_f64(ms / 1e3);
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(json: serde_json::Value) -> CommonParams {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_map_to_one_sampled_choice() {
        let (r, n, seed) = build_template(&common(serde_json::json!({})), 16, None, &[]).unwrap();
        assert_eq!((r.max_tokens, n, seed), (Some(16), 1, None));
        // One sampling description: the whole chain, OpenAI's default temperature 1.
        assert!(r.temperature.is_none());
        assert_eq!(
            r.sampling.unwrap().chain,
            vec![fluent_ai_candle_engine::ProcessorSpec::Temperature(1.0)]
        );
        assert!(r.constraints.is_none());
    }

    /// DRY, top-nσ and XTC take llama.cpp's places in the chain: penalties, DRY, top-nσ, the
    /// other truncations, XTC, temperature.
    #[test]
    fn dry_xtc_and_top_n_sigma_join_the_chain_in_llama_cpp_order() {
        use fluent_ai_candle_engine::ProcessorSpec as P;
        let p = common(serde_json::json!({
            "temperature": 0.8, "min_p": 0.05, "top_n_sigma": 1.5, "xtc_probability": 0.5,
            "dry_multiplier": 0.8, "dry_allowed_length": 3, "dry_sequence_breakers": ["\n"],
        }));
        let (r, _, _) = build_template(&p, 16, None, &[198]).unwrap();
        assert_eq!(
            r.sampling.unwrap().chain,
            vec![
                P::Dry {
                    multiplier: 0.8,
                    base: 1.75,
                    allowed_length: 3,
                    last_n: 1024,
                    sequence_breakers: vec![198],
                },
                P::TopNSigma(1.5),
                P::MinP(0.05),
                P::Xtc {
                    probability: 0.5,
                    threshold: 0.1,
                },
                P::Temperature(0.8),
            ]
        );
        // Off by default and at 0.
        let (r, _, _) = build_template(
            &common(serde_json::json!({"dry_multiplier": 0, "xtc_probability": 0})),
            16,
            None,
            &[],
        )
        .unwrap();
        assert_eq!(r.sampling.unwrap().chain, vec![P::Temperature(1.0)]);
        // Out-of-range values are 400s.
        for json in [
            serde_json::json!({"dry_multiplier": 1, "dry_allowed_length": 0}),
            serde_json::json!({"dry_multiplier": 1, "dry_penalty_last_n": 100000}),
            serde_json::json!({"dry_multiplier": 1, "dry_base": 0.5}),
            serde_json::json!({"xtc_probability": 1.5}),
            serde_json::json!({"top_n_sigma": -1}),
        ] {
            let e = build_template(&common(json.clone()), 16, None, &[]).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{json}");
        }
    }

    #[test]
    fn dry_breakers_are_tokenized_only_when_dry_is_on() {
        let tok = |s: &str| Ok(s.bytes().map(u32::from).collect::<Vec<u32>>());
        assert!(dry_breakers(&common(serde_json::json!({})), tok)
            .unwrap()
            .is_empty());
        let on = dry_breakers(&common(serde_json::json!({"dry_multiplier": 1})), tok).unwrap();
        assert_eq!(on, vec![10, 34, 42, 58], "llama.cpp's defaults: \\n \" * :");
        let custom =
            common(serde_json::json!({"dry_multiplier": 1, "dry_sequence_breakers": ["ab", "b"]}));
        assert_eq!(dry_breakers(&custom, tok).unwrap(), vec![97, 98]);
        let empty = common(serde_json::json!({"dry_multiplier": 1, "dry_sequence_breakers": [""]}));
        assert!(dry_breakers(&empty, tok).is_err());
    }

    #[test]
    fn bad_values_name_their_field() {
        for (json, field) in [
            (serde_json::json!({"temperature": 3.0}), "temperature"),
            (serde_json::json!({"top_p": 0.0}), "top_p"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (serde_json::json!({"n": 0}), "n"),
            (serde_json::json!({"stop": ["a","b","c","d","e"]}), "stop"),
            (serde_json::json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (serde_json::json!({"logit_bias": {"1": 101}}), "logit_bias"),
            (serde_json::json!({"mirostat": 3}), "mirostat"),
            (serde_json::json!({"temperature": 1e-45}), "temperature"),
            (
                serde_json::json!({"repetition_penalty": 1e-45}),
                "repetition_penalty",
            ),
            (
                serde_json::json!({"frequency_penalty": -2.5}),
                "frequency_penalty",
            ),
        ] {
            let e = build_template(&common(json), 16, None, &[]).unwrap_err();
            assert_eq!(e.status.as_u16(), 400);
            assert_eq!(e.param.as_deref(), Some(field));
        }
    }

    #[test]
    fn one_constraint_at_most() {
        let p = common(serde_json::json!({"regex": "a+", "grammar": "root ::= \"a\""}));
        assert!(build_template(&p, 16, None, &[]).is_err());
        let p = common(
            serde_json::json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}}}),
        );
        let (r, _, _) = build_template(&p, 16, None, &[]).unwrap();
        assert!(matches!(
            r.constraints.as_deref(),
            Some([ConstraintSpec::JsonSchemaWithMode(
                _,
                JsonSchemaMode::Generation
            )])
        ));
    }

    #[test]
    fn choices_get_consecutive_seeds() {
        let (t, n, seed) = build_template(
            &common(serde_json::json!({"n": 3, "seed": 7})),
            16,
            None,
            &[],
        )
        .unwrap();
        let rs = expand(&t, vec![Prompt::Text("hi".into())], n, seed).unwrap();
        let seeds: Vec<_> = rs.iter().map(|r| r.seed.unwrap()).collect();
        assert_eq!(seeds, vec![7, 8, 9]);
    }

    #[test]
    fn tool_fields_are_checked_and_name_their_field() {
        let tools = serde_json::json!([{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object"}}}]);
        let (defs, choice, parallel) = tool_params(Some(&tools), None, None).unwrap();
        assert_eq!((defs.len(), choice, parallel), (1, ToolChoice::Auto, None));
        let named = serde_json::json!({"type": "function", "function": {"name": "get_weather"}});
        let (_, choice, _) = tool_params(Some(&tools), Some(&named), Some(false)).unwrap();
        assert_eq!(choice, ToolChoice::Function("get_weather".into()));
        let required = serde_json::json!("required");
        assert_eq!(
            tool_params(Some(&tools), Some(&required), None).unwrap().1,
            ToolChoice::Required
        );
        for (tools, choice, field) in [
            (serde_json::json!({"type": "function"}), None, "tools"),
            (serde_json::json!([{"type": "retrieval"}]), None, "tools"),
            (
                serde_json::json!([{"type": "function", "function": {}}]),
                None,
                "tools",
            ),
            (
                serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": []}}]),
                None,
                "tools",
            ),
            (
                tools.clone(),
                Some(serde_json::json!({"type": "function", "function": {"name": "nope"}})),
                "tool_choice",
            ),
            (
                tools.clone(),
                Some(serde_json::json!("sometimes")),
                "tool_choice",
            ),
            (
                serde_json::Value::Null,
                Some(serde_json::json!("auto")),
                "tool_choice",
            ),
        ] {
            let e = tool_params(Some(&tools), choice.as_ref(), None).unwrap_err();
            assert_eq!(e.status.as_u16(), 400);
            assert_eq!(e.param.as_deref(), Some(field), "{tools} {choice:?}");
        }
    }

    #[test]
    fn top_logprobs_needs_logprobs() {
        assert!(chat_logprobs(None, Some(2)).is_err());
        assert_eq!(chat_logprobs(Some(true), Some(2)).unwrap(), Some(2));
        assert_eq!(chat_logprobs(Some(false), None).unwrap(), None);
        assert!(completion_logprobs(Some(6)).is_err());
    }
}
