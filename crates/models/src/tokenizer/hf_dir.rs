//! [`CandleTokenizer::from_hf_dir`]: the tokenizer of a Hugging Face model directory
//! (`tokenizer.json`, with the special tokens of `tokenizer_config.json`, `config.json` and
//! `generation_config.json`).

use std::collections::HashMap;
use std::path::Path;

use tokenizers::Tokenizer;

use super::{
    CandleTokenizer, TokenizerParts, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNUSED,
    TOKEN_TYPE_USER_DEFINED,
};
use crate::{ModelError, Result};

/// `tokenizer.json`: the tokenizer of a Hugging Face model directory.
pub const TOKENIZER_JSON: &str = "tokenizer.json";

/// `tokenizer_config.json`: special tokens, `add_bos_token` and the chat template of a Hugging
/// Face model directory.
pub const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";

/// The most token ids a `tokenizer.json` may use (a sanity bound on the ids it declares).
const MAX_HF_VOCAB: u64 = 1 << 24;

/// Reads `path` as JSON when the file exists (`None` when it does not).
fn optional_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if path.is_file() {
        crate::safetensors::read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The text of a special-token entry of `tokenizer_config.json`: a string, or an added-token
/// object with a `content` string; `null` or absent is `None`.
pub(crate) fn special_token_text(value: Option<&serde_json::Value>) -> Option<&str> {
    match value? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// The ids of a `config.json` / `generation_config.json` entry such as `eos_token_id`: an
/// integer or a list of integers (`null`, absent or anything else: none).
fn config_ids(value: Option<&serde_json::Value>) -> Vec<u32> {
    let one = |v: &serde_json::Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
    match value {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Whether a `tokenizer.json` component (or one inside a `Sequence` of them) has `type` `ty`.
fn has_component(value: &serde_json::Value, ty: &str) -> bool {
    if value.get("type").and_then(|t| t.as_str()) == Some(ty) {
        return true;
    }
    ["pretokenizers", "processors", "decoders", "normalizers"]
        .iter()
        .filter_map(|k| value.get(*k)?.as_array())
        .flatten()
        .any(|v| has_component(v, ty))
}

/// Whether a `TemplateProcessing` post-processor (alone or in a `Sequence`) puts a special
/// token first (`first`) or last in a single sequence: `None` without one.
fn template_adds_special(post: &serde_json::Value, first: bool) -> Option<bool> {
    if post.get("type").and_then(|t| t.as_str()) == Some("TemplateProcessing") {
        let single = post.get("single")?.as_array()?;
        let item = if first { single.first() } else { single.last() };
        return Some(item.is_some_and(|i| i.get("SpecialToken").is_some()));
    }
    post.get("processors")?
        .as_array()?
        .iter()
        .find_map(|p| template_adds_special(p, first))
}

impl CandleTokenizer {
    /// Builds the tokenizer of a Hugging Face model directory: `tokenizer.json` (required; a
    /// byte-level BPE such as SmolLM2's, Llama 3's or GPT-2's, encoded by the `tokenizers`
    /// crate exactly as that file describes), with the special tokens of
    /// `tokenizer_config.json`, `config.json` and `generation_config.json` when present.
    ///
    /// Token types: `added_tokens` marked `special` are control tokens (skipped by
    /// `decode(.., true)`, never allowed by a constraint), the other added tokens
    /// user-defined, the rest normal; ids missing from the file (up to `config.json`'s
    /// `vocab_size`) are unused `[PAD{id}]` tokens, as llama.cpp's converter writes them.
    /// BOS / EOS / unknown / padding: `tokenizer_config.json`'s `bos_token`, `eos_token`,
    /// `unk_token` (else the BPE model's), `pad_token`, else `config.json`'s
    /// `bos_token_id`, `eos_token_id`, `pad_token_id`. Every `eos_token_id` of `config.json`
    /// and `generation_config.json` (an id or a list) ends a generation, as do the usual
    /// end-of-turn markers. BOS is added to raw prompts when `tokenizer_config.json` says
    /// `add_bos_token: true`, or, without that key, when the post-processor's template starts
    /// with a special token (Llama 3).
    ///
    /// Errors, each naming the file: a missing `tokenizer.json` is [`ModelError::NotFound`];
    /// malformed JSON (in any of the files), a vocabulary `tokenizers` rejects, or a special
    /// token that is not in the vocabulary, [`ModelError::InvalidModelFile`]; a model type
    /// other than BPE, or a BPE without a `ByteLevel` pre-tokenizer (sentencepiece-style, as
    /// Llama 2 and Mistral ship), [`ModelError::UnsupportedTokenizer`].
    pub fn from_hf_dir(dir: &Path) -> Result<CandleTokenizer> {
        Self::from_tokenizer_json(&dir.join(TOKENIZER_JSON))
    }

    /// [`from_hf_dir`](Self::from_hf_dir) for a `tokenizer.json` given by its path (of any
    /// name): the special-token files are read from the same directory.
    pub fn from_tokenizer_json(path: &Path) -> Result<CandleTokenizer> {
        let path = path.to_path_buf();
        let dir = path.parent().unwrap_or(Path::new("."));
        let text = crate::safetensors::read_to_string(&path)?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| crate::safetensors::invalid(&path, e.to_string()))?;
        let config_path = dir.join(TOKENIZER_CONFIG_JSON);
        let config = optional_json(&config_path)?;
        let model_config = optional_json(&dir.join("config.json"))?;
        let generation = optional_json(&dir.join("generation_config.json"))?;
        let invalid = |path: &Path, reason: String| crate::safetensors::invalid(path, reason);
        let unsupported = |reason: String| ModelError::UnsupportedTokenizer {
            path: path.clone(),
            reason,
        };

        let model = json
            .get("model")
            .filter(|m| m.is_object())
            .ok_or_else(|| invalid(&path, "no `model` object".into()))?;
        let model_type = match model.get("type").and_then(|t| t.as_str()) {
            Some(t) => t,
            // Files written before `type` was serialized: BPE is the one with merges.
            None if model.get("merges").is_some() => "BPE",
            None => return Err(invalid(&path, "the `model` has no `type`".into())),
        };
        if model_type != "BPE" {
            return Err(unsupported(format!(
                "model type '{model_type}' (supported: byte-level BPE)"
            )));
        }
        let pre = json
            .get("pre_tokenizer")
            .unwrap_or(&serde_json::Value::Null);
        if !has_component(pre, "ByteLevel") {
            return Err(unsupported(
                "a BPE without a ByteLevel pre-tokenizer (sentencepiece-style, as Llama 2 and \
                 Mistral ship) is not supported; use a GGUF of the model"
                    .into(),
            ));
        }

        // Every token by id: the BPE vocabulary, then the added tokens.
        let mut by_id: Vec<Option<String>> = Vec::new();
        let mut types: Vec<i32> = Vec::new();
        let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
            if id >= MAX_HF_VOCAB {
                return Err(invalid(
                    &path,
                    format!("token '{text}' has id {id}, out of range"),
                ));
            }
            let i = id as usize;
            if by_id.len() <= i {
                by_id.resize(i + 1, None);
                types.resize(i + 1, TOKEN_TYPE_UNUSED);
            }
            by_id[i] = Some(text.to_string());
            types[i] = ty;
            Ok(())
        };
        let vocab = model
            .get("vocab")
            .and_then(|v| v.as_object())
            .ok_or_else(|| invalid(&path, "the BPE model has no `vocab` object".into()))?;
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| invalid(&path, format!("token '{text}' has a non-integer id")))?;
            place(id, text, TOKEN_TYPE_NORMAL)?;
        }
        let added = match json.get("added_tokens") {
            None | Some(serde_json::Value::Null) => &[][..],
            Some(serde_json::Value::Array(a)) => a.as_slice(),
            Some(_) => return Err(invalid(&path, "`added_tokens` is not an array".into())),
        };
        for t in added {
            let (Some(id), Some(text)) = (
                t.get("id").and_then(|v| v.as_u64()),
                t.get("content").and_then(|v| v.as_str()),
            ) else {
                return Err(invalid(
                    &path,
                    format!("an added token without an integer `id` and a `content`: {t}"),
                ));
            };
            let special = t.get("special").and_then(|v| v.as_bool()).unwrap_or(false);
            let ty = if special {
                TOKEN_TYPE_CONTROL
            } else {
                TOKEN_TYPE_USER_DEFINED
            };
            place(id, text, ty)?;
        }
        let model_vocab = model_config
            .as_ref()
            .and_then(|c| c.get("vocab_size"))
            .and_then(|v| v.as_u64())
            .filter(|&v| v <= MAX_HF_VOCAB)
            .map_or(0, |v| v as usize);
        if by_id.len() < model_vocab {
            by_id.resize(model_vocab, None);
            types.resize(model_vocab, TOKEN_TYPE_UNUSED);
        }
        let tokens: Vec<String> = by_id
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
            .collect();
        let mut ids: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if types[i] != TOKEN_TYPE_UNUSED {
                ids.insert(t.as_str(), i as u32);
            }
        }

        // Special tokens: tokenizer_config.json names them, config.json numbers them.
        let cfg_get = |key: &str| config.as_ref().and_then(|c| c.get(key));
        let named = |key: &str| -> Result<Option<u32>> {
            match special_token_text(cfg_get(key)) {
                None => Ok(None),
                Some(text) => ids.get(text).copied().map(Some).ok_or_else(|| {
                    invalid(
                        &config_path,
                        format!("{key} '{text}' is not in the vocabulary of {TOKENIZER_JSON}"),
                    )
                }),
            }
        };
        let numbered =
            |key: &str| -> Vec<u32> { config_ids(model_config.as_ref().and_then(|c| c.get(key))) };
        let eos_ids: Vec<u32> = numbered("eos_token_id")
            .into_iter()
            .chain(config_ids(
                generation.as_ref().and_then(|g| g.get("eos_token_id")),
            ))
            .collect();
        let bos_id = named("bos_token")?.or_else(|| numbered("bos_token_id").first().copied());
        let eos_id = named("eos_token")?.or_else(|| eos_ids.first().copied());
        let pad_id = named("pad_token")?.or_else(|| numbered("pad_token_id").first().copied());
        let unk_id = match model.get("unk_token").and_then(|u| u.as_str()) {
            Some(text) => Some(ids.get(text).copied().ok_or_else(|| {
                invalid(
                    &path,
                    format!("the BPE model's unk_token '{text}' is not in its vocabulary"),
                )
            })?),
            None => named("unk_token")?,
        };
        let flag = |key: &str| cfg_get(key).and_then(|v| v.as_bool());
        let post = json
            .get("post_processor")
            .unwrap_or(&serde_json::Value::Null);
        let add_bos = flag("add_bos_token")
            .or_else(|| template_adds_special(post, true))
            .unwrap_or(false);
        let add_eos = flag("add_eos_token")
            .or_else(|| template_adds_special(post, false))
            .unwrap_or(false);

        let mut inner: Tokenizer = text
            .parse()
            .map_err(|e: tokenizers::Error| invalid(&path, e.to_string()))?;
        // Prompts are never truncated or padded by the tokenizer.
        inner
            .with_truncation(None)
            .map_err(|e| invalid(&path, e.to_string()))?;
        inner.with_padding(None);

        let parts = TokenizerParts {
            model: "gpt2".into(),
            tokens,
            token_types: types,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            add_bos: Some(add_bos),
            add_eos: Some(add_eos),
            add_space_prefix: Some(false),
            extra_eog_ids: eos_ids,
            ..Default::default()
        };
        Self::build(parts, Some(inner)).map_err(|e| match e {
            ModelError::Tokenizer(reason) => invalid(&path, reason),
            other => other,
        })
    }
}
