//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`), or from a Hugging Face model
//! directory's `tokenizer.json` ([`CandleTokenizer::from_hf_dir`], byte-level BPE).
//!
//! Two vocabulary kinds are supported, mirroring llama.cpp:
//!
//! * `gpt2`: byte-level BPE with merges, preceded by the regex pre-tokenizer
//!   that `tokenizer.ggml.pre` names. Encoding runs through a
//!   [`tokenizers::Tokenizer`] built in memory.
//! * `llama`: llama.cpp's "SPM" tokenizer (sentencepiece-style BPE driven by
//!   token scores, with `<0xNN>` byte fallback). Encoding uses an exact port of
//!   the merge-by-score algorithm; [`CandleTokenizer::inner`] still returns an
//!   equivalent `tokenizers` BPE (merges derived from the scores, byte fallback)
//!   for callers that need the `tokenizers` API.
//!
//! In both cases special-token strings in the input text (control, user-defined
//! and unknown tokens) are matched as single tokens, like llama.cpp's
//! `parse_special = true`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, NormalizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::{ModelError, Result};

/// GGUF token type: a normal token.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// GGUF token type: the unknown token.
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
/// GGUF token type: a control token (BOS, EOS, chat markers...).
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type: a user-defined token, always matched verbatim in text.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// GGUF token type: an unused slot.
pub const TOKEN_TYPE_UNUSED: i32 = 5;
/// GGUF token type: a byte token `<0xNN>` (SPM byte fallback).
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// Texts of tokens that end a generation when the vocabulary has them
/// (llama.cpp's end-of-generation list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",
    "<|call|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// The GPT-2 regex as llama.cpp writes it.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// The Llama 3 regex (case-insensitive contractions spelled out).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen 2 regex: like Llama 3 but single digits.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Which tokenizer algorithm a vocabulary uses (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `gpt2`: byte-level BPE with merges.
    Gpt2,
    /// `llama`: sentencepiece-style BPE by scores with byte fallback.
    Spm,
}

/// The raw tokenizer facts a GGUF file carries, as plain values.
///
/// [`CandleTokenizer::from_gguf`] reads these from metadata; tests and tools can
/// build them by hand and call [`CandleTokenizer::from_parts`].
#[derive(Debug, Clone, Default)]
pub struct TokenizerParts {
    /// `tokenizer.ggml.model` (`gpt2` or `llama`).
    pub model: String,
    /// `tokenizer.ggml.pre` (pre-tokenizer name; `None` means `default`).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token text by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges` (`"left right"`; BPE only).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type` by id (empty: all normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` by id (empty: all zero).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (`None`: llama.cpp's default for the model).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token` (`None`: false).
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (`None`: true for SPM, false for BPE).
    pub add_space_prefix: Option<bool>,
    /// Further end-of-generation ids besides EOS/EOT/EOM and the end-of-turn markers (e.g.
    /// every id of a Hugging Face `config.json` list `eos_token_id`).
    pub extra_eog_ids: Vec<u32>,
}

/// A special (control, user-defined or unknown) token that is matched as a
/// whole in input text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    /// The token id.
    pub id: u32,
    /// The token text.
    pub text: String,
    /// The GGUF token type (3 control, 4 user-defined, 2 unknown).
    pub token_type: i32,
}

/// State for llama.cpp's SPM (merge-by-score) algorithm.
#[derive(Debug, Clone)]
struct SpmModel {
    token_to_id: HashMap<String, u32>,
    scores: Vec<f32>,
    /// `<0xNN>` token id for each byte value.
    byte_ids: Vec<Option<u32>>,
    unk_id: Option<u32>,
    add_space_prefix: bool,
}

/// A model's tokenizer plus the facts a decoder loop needs (special ids, token bytes, end of
/// generation), built from GGUF metadata ([`CandleTokenizer::from_gguf`]) or a Hugging Face
/// `tokenizer.json` ([`CandleTokenizer::from_hf_dir`]).
#[derive(Debug, Clone)]
pub struct CandleTokenizer {
    inner: Tokenizer,
    kind: VocabKind,
    token_types: Vec<i32>,
    token_bytes: Vec<Vec<u8>>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    eot_ids: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    special_tokens: Vec<SpecialToken>,
    /// Special tokens grouped by first byte, longest first (SPM partition).
    special_index: HashMap<u8, Vec<usize>>,
    spm: Option<SpmModel>,
}

fn tok_err(msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(msg.into())
}

fn missing(key: &str) -> ModelError {
    ModelError::MissingMetadata {
        key: key.to_string(),
    }
}

/// Reads an integer-valued metadata entry of any integer type as `u32`.
fn meta_u32(md: &HashMap<String, Value>, key: &str) -> Result<Option<u32>> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let n: i128 = match v {
        Value::U8(x) => (*x).into(),
        Value::I8(x) => (*x).into(),
        Value::U16(x) => (*x).into(),
        Value::I16(x) => (*x).into(),
        Value::U32(x) => (*x).into(),
        Value::I32(x) => (*x).into(),
        Value::U64(x) => (*x).into(),
        Value::I64(x) => (*x).into(),
        _ => return Err(missing(key)),
    };
    // Negative ids (-1) mean "none" in some converters.
    if n < 0 {
        return Ok(None);
    }
    u32::try_from(n).map(Some).map_err(|_| missing(key))
}

fn meta_bool(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(missing(key)),
    }
}

fn meta_string(md: &HashMap<String, Value>, key: &str) -> Result<Option<String>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(missing(key)),
    }
}

fn meta_array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a [Value]>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a.as_slice())),
        Some(_) => Err(missing(key)),
    }
}

fn meta_strings(md: &HashMap<String, Value>, key: &str) -> Result<Option<Vec<String>>> {
    let Some(arr) = meta_array(md, key)? else {
        return Ok(None);
    };
    arr.iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(missing(key)),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The GPT-2 byte → printable unicode map.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    map
}

/// Parses `<0xNN>` into the byte it names.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The regexes llama.cpp applies in sequence for a BPE pre-tokenizer name.
fn pre_tokenizer_regexes(pre: &str) -> Result<(Vec<&'static str>, bool, bool)> {
    // (regexes, ignore_merges, default add_bos)
    let r = match pre {
        "default" => (
            vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            false,
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => (vec![LLAMA3_REGEX], true, true),
        "dbrx" | "smaug-bpe" => (vec![LLAMA3_REGEX], false, false),
        "chatglm-bpe" | "glm4" => (vec![LLAMA3_REGEX], false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "stablelm2" | "hunyuan" | "megrez" => {
            (vec![QWEN2_REGEX], false, false)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2_REGEX], false, false)
        }
        "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
        | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "exaone4" => {
            (vec![GPT2_REGEX], false, false)
        }
        "falcon" => (
            vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, "[0-9][0-9][0-9]"],
            false,
            false,
        ),
        "deepseek-coder" => (
            vec![
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                "[一-龥ࠀ-一가-퟿]+",
                r"\p{N}",
            ],
            false,
            false,
        ),
        "deepseek-v3" | "hunyuan-dense" => (
            vec![
                r"\p{N}{1,3}",
                "[一-龥぀-ゟ゠-ヿ]+",
                r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
            ],
            false,
            false,
        ),
        "poro-chat" | "bloom" | "gpt3-finnish" => {
            (vec![r" ?[^(\s|.,!?…。，、।۔،)]+"], false, false)
        }
        "viking" => (vec![r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"], false, false),
        other => {
            return Err(tok_err(format!(
                "unsupported pre-tokenizer '{other}' (supported: default, gpt2, smollm, llama3/llama-bpe, qwen2, deepseek-coder, deepseek-v3, falcon, starcoder, bloom, viking and aliases)"
            )))
        }
    };
    Ok(r)
}

impl CandleTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    ///
    /// Fails with [`ModelError::MissingMetadata`] when a required key
    /// (`tokenizer.ggml.model`, `.tokens`, `.merges` for BPE) is missing or has
    /// the wrong type, and with [`ModelError::Tokenizer`] when the vocabulary is
    /// inconsistent or uses an unsupported model/pre-tokenizer.
    pub fn from_gguf(content: &Content) -> Result<CandleTokenizer> {
        let md = &content.metadata;
        let model = meta_string(md, "tokenizer.ggml.model")?
            .ok_or_else(|| missing("tokenizer.ggml.model"))?;
        let tokens = meta_strings(md, "tokenizer.ggml.tokens")?
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let merges = meta_strings(md, "tokenizer.ggml.merges")?.unwrap_or_default();
        let token_types = match meta_array(md, "tokenizer.ggml.token_type")? {
            None => Vec::new(),
            Some(arr) => arr
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(*x),
                    Value::U32(x) => {
                        i32::try_from(*x).map_err(|_| missing("tokenizer.ggml.token_type"))
                    }
                    Value::I8(x) => Ok((*x).into()),
                    Value::U8(x) => Ok((*x).into()),
                    _ => Err(missing("tokenizer.ggml.token_type")),
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let scores = match meta_array(md, "tokenizer.ggml.scores")? {
            None => Vec::new(),
            Some(arr) => arr
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(*x),
                    Value::F64(x) => Ok(*x as f32),
                    _ => Err(missing("tokenizer.ggml.scores")),
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let parts = TokenizerParts {
            model,
            pre: meta_string(md, "tokenizer.ggml.pre")?,
            tokens,
            merges,
            token_types,
            scores,
            bos_id: meta_u32(md, "tokenizer.ggml.bos_token_id")?,
            eos_id: meta_u32(md, "tokenizer.ggml.eos_token_id")?,
            eot_id: meta_u32(md, "tokenizer.ggml.eot_token_id")?,
            eom_id: meta_u32(md, "tokenizer.ggml.eom_token_id")?,
            pad_id: meta_u32(md, "tokenizer.ggml.padding_token_id")?,
            unk_id: meta_u32(md, "tokenizer.ggml.unknown_token_id")?,
            add_bos: meta_bool(md, "tokenizer.ggml.add_bos_token")?,
            add_eos: meta_bool(md, "tokenizer.ggml.add_eos_token")?,
            add_space_prefix: meta_bool(md, "tokenizer.ggml.add_space_prefix")?,
            extra_eog_ids: Vec::new(),
        };
        Self::from_parts(parts)
    }

    /// Builds the tokenizer from plain values (see [`TokenizerParts`]).
    pub fn from_parts(parts: TokenizerParts) -> Result<CandleTokenizer> {
        Self::build(parts, None)
    }

    /// [`CandleTokenizer::from_parts`]; a `gpt2` vocabulary encodes through `prebuilt` when
    /// given (a `tokenizer.json` loaded by `tokenizers`) instead of a tokenizer built from
    /// `pre` and `merges`.
    fn build(parts: TokenizerParts, prebuilt: Option<Tokenizer>) -> Result<CandleTokenizer> {
        let n = parts.tokens.len();
        if n == 0 {
            return Err(tok_err("empty vocabulary"));
        }
        let n_u32 = u32::try_from(n).map_err(|_| tok_err("vocabulary too large"))?;
        if !parts.token_types.is_empty() && parts.token_types.len() != n {
            return Err(tok_err(format!(
                "token_type has {} entries for {n} tokens",
                parts.token_types.len()
            )));
        }
        if !parts.scores.is_empty() && parts.scores.len() != n {
            return Err(tok_err(format!(
                "scores has {} entries for {n} tokens",
                parts.scores.len()
            )));
        }
        let check_id = |name: &str, id: Option<u32>| -> Result<Option<u32>> {
            match id {
                Some(i) if i >= n_u32 => Err(tok_err(format!(
                    "{name} token id {i} out of range (vocabulary of {n})"
                ))),
                other => Ok(other),
            }
        };
        let bos_id = check_id("bos", parts.bos_id)?;
        let eos_id = check_id("eos", parts.eos_id)?;
        let eot_id = check_id("eot", parts.eot_id)?;
        let eom_id = check_id("eom", parts.eom_id)?;
        let pad_id = check_id("padding", parts.pad_id)?;
        let unk_id = check_id("unknown", parts.unk_id)?;

        let kind = match parts.model.as_str() {
            "gpt2" => VocabKind::Gpt2,
            "llama" => VocabKind::Spm,
            other => {
                return Err(tok_err(format!(
                    "unsupported tokenizer model '{other}' (supported: gpt2, llama)"
                )))
            }
        };
        let token_types: Vec<i32> = if parts.token_types.is_empty() {
            vec![TOKEN_TYPE_NORMAL; n]
        } else {
            parts.token_types.clone()
        };

        // Special tokens: matched verbatim in text.
        let mut special_tokens: Vec<SpecialToken> = Vec::new();
        for (i, (text, &tt)) in parts.tokens.iter().zip(&token_types).enumerate() {
            if matches!(
                tt,
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN
            ) && !text.is_empty()
            {
                special_tokens.push(SpecialToken {
                    id: i as u32,
                    text: text.clone(),
                    token_type: tt,
                });
            }
        }

        let (inner, add_bos_default, spm) = match (kind, prebuilt) {
            (VocabKind::Gpt2, Some(tok)) => (tok, false, None),
            (VocabKind::Gpt2, None) => {
                let pre = parts.pre.as_deref().unwrap_or("default");
                let (regexes, ignore_merges, add_bos_default) = pre_tokenizer_regexes(pre)?;
                let tok = build_byte_level_bpe(&parts, &regexes, ignore_merges, &special_tokens)?;
                (tok, add_bos_default, None)
            }
            (VocabKind::Spm, _) => {
                let add_space_prefix = parts.add_space_prefix.unwrap_or(true);
                let mut token_to_id = HashMap::with_capacity(n);
                for (i, t) in parts.tokens.iter().enumerate() {
                    token_to_id.insert(t.clone(), i as u32);
                }
                let mut byte_ids = vec![None; 256];
                for (i, (t, &tt)) in parts.tokens.iter().zip(&token_types).enumerate() {
                    if tt == TOKEN_TYPE_BYTE {
                        if let Some(b) = parse_byte_token(t) {
                            byte_ids[usize::from(b)] = Some(i as u32);
                        }
                    }
                }
                let scores = if parts.scores.is_empty() {
                    vec![0.0; n]
                } else {
                    parts.scores.clone()
                };
                let tok = build_spm_bpe(
                    &parts,
                    &token_types,
                    &scores,
                    add_space_prefix,
                    &special_tokens,
                )?;
                let spm = SpmModel {
                    token_to_id,
                    scores,
                    byte_ids,
                    unk_id,
                    add_space_prefix,
                };
                (tok, true, Some(spm))
            }
        };

        // Raw bytes of every token.
        let byte_map = bytes_to_unicode();
        let mut unicode_to_byte: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, c) in byte_map.iter().enumerate() {
            unicode_to_byte.insert(*c, b as u8);
        }
        let token_bytes: Vec<Vec<u8>> = parts
            .tokens
            .iter()
            .zip(&token_types)
            .map(|(text, &tt)| match (kind, tt) {
                (_, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN) => {
                    text.as_bytes().to_vec()
                }
                (VocabKind::Gpt2, _) => {
                    let mut out = Vec::with_capacity(text.len());
                    for c in text.chars() {
                        match unicode_to_byte.get(&c) {
                            Some(b) => out.push(*b),
                            None => {
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            }
                        }
                    }
                    out
                }
                (VocabKind::Spm, TOKEN_TYPE_BYTE) => match parse_byte_token(text) {
                    Some(b) => vec![b],
                    None => text.as_bytes().to_vec(),
                },
                (VocabKind::Spm, _) => text.replace('\u{2581}', " ").into_bytes(),
            })
            .collect();

        // End-of-generation ids.
        let mut eot_ids: Vec<u32> = Vec::new();
        let mut push = |id: Option<u32>| {
            if let Some(id) = id {
                if !eot_ids.contains(&id) {
                    eot_ids.push(id);
                }
            }
        };
        push(eos_id);
        push(eot_id);
        push(eom_id);
        for &id in &parts.extra_eog_ids {
            push(check_id("end-of-generation", Some(id))?);
        }
        for st in &special_tokens {
            if EOG_TEXTS.contains(&st.text.as_str()) {
                push(Some(st.id));
            }
        }

        let mut special_index: HashMap<u8, Vec<usize>> = HashMap::new();
        for (i, st) in special_tokens.iter().enumerate() {
            if let Some(&b) = st.text.as_bytes().first() {
                special_index.entry(b).or_default().push(i);
            }
        }
        for v in special_index.values_mut() {
            v.sort_by(|&a, &b| {
                special_tokens[b]
                    .text
                    .len()
                    .cmp(&special_tokens[a].text.len())
                    .then(a.cmp(&b))
            });
        }

        Ok(CandleTokenizer {
            inner,
            kind,
            token_types,
            token_bytes,
            bos_id,
            eos_id,
            pad_id,
            eot_ids,
            add_bos: parts.add_bos.unwrap_or(add_bos_default),
            add_eos: parts.add_eos.unwrap_or(false),
            special_tokens,
            special_index,
            spm,
        })
    }

    /// Encodes `text`, matching special-token strings (e.g. `<|im_start|>`) as
    /// single tokens; prepends BOS when `add_bos` is true and the vocabulary
    /// has one. Nothing else is added.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            if let Some(bos) = self.bos_id {
                out.push(bos);
            }
        }
        match &self.spm {
            None => {
                let enc = self
                    .inner
                    .encode(text, false)
                    .map_err(|e| tok_err(format!("encode failed: {e}")))?;
                out.extend_from_slice(enc.get_ids());
            }
            Some(spm) => self.encode_spm(spm, text, &mut out)?,
        }
        Ok(out)
    }

    fn encode_spm(&self, spm: &SpmModel, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut is_prev_special = true;
        for frag in self.partition(text) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    is_prev_special = true;
                }
                Fragment::Text(t) => {
                    let mut s = String::with_capacity(t.len() + 3);
                    if spm.add_space_prefix && is_prev_special {
                        s.push(' ');
                    }
                    s.push_str(t);
                    let s = s.replace(' ', "\u{2581}");
                    spm_tokenize(spm, &s, out)?;
                    is_prev_special = false;
                }
            }
        }
        Ok(())
    }

    /// Splits `text` into raw-text fragments and special tokens (longest match
    /// first at each position).
    fn partition<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        let mut frags = Vec::new();
        let bytes = text.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let mut matched = None;
            if let Some(cands) = self.special_index.get(&bytes[i]) {
                for &c in cands {
                    let st = &self.special_tokens[c];
                    if text[i..].starts_with(st.text.as_str()) {
                        matched = Some(st);
                        break;
                    }
                }
            }
            match matched {
                Some(st) => {
                    if start < i {
                        frags.push(Fragment::Text(&text[start..i]));
                    }
                    frags.push(Fragment::Token(st.id));
                    i += st.text.len();
                    start = i;
                }
                None => {
                    i += text[i..].chars().next().map_or(1, char::len_utf8);
                }
            }
        }
        if start < bytes.len() {
            frags.push(Fragment::Text(&text[start..]));
        }
        frags
    }

    /// Decodes ids to text. With `skip_special`, control tokens (BOS, EOS,
    /// chat markers) are left out. Invalid UTF-8 (a partial multi-byte
    /// character) is replaced with U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut first = true;
        for &id in ids {
            let idx = usize::try_from(id).unwrap_or(usize::MAX);
            let Some(tb) = self.token_bytes.get(idx) else {
                return Err(tok_err(format!(
                    "token id {id} out of range (vocabulary of {})",
                    self.token_bytes.len()
                )));
            };
            if skip_special && self.token_types[idx] == TOKEN_TYPE_CONTROL {
                continue;
            }
            let mut piece: &[u8] = tb;
            if first {
                first = false;
                if let Some(spm) = &self.spm {
                    if skip_special && spm.add_space_prefix && piece.first() == Some(&b' ') {
                        piece = &piece[1..];
                    }
                }
            }
            bytes.extend_from_slice(piece);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The raw bytes each token id stands for (index = id): byte-level BPE
    /// tokens through the GPT-2 byte map, SPM `▁` as a space and `<0xNN>` as
    /// the byte, special tokens as their text.
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        self.token_bytes.clone()
    }

    /// The raw bytes of one token (see [`CandleTokenizer::token_bytes`]).
    pub fn token_bytes_of(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes
            .get(usize::try_from(id).ok()?)
            .map(Vec::as_slice)
    }

    /// The underlying `tokenizers` tokenizer (for SPM vocabularies an
    /// equivalent BPE with score-derived merges; [`CandleTokenizer::encode`] is
    /// the reference).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Whether `id` ends a generation (EOS, EOT or an end-of-turn marker).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eot_ids.contains(&id)
    }

    /// Which algorithm this vocabulary uses.
    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    /// The beginning-of-sequence token, if any.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence token, if any.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The padding token, if any.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// All end-of-generation tokens: EOS first, then EOT/EOM and end-of-turn
    /// markers the vocabulary has (`<|im_end|>`, `<|endoftext|>`,
    /// `<end_of_turn>`, ...).
    pub fn eot_ids(&self) -> &[u32] {
        &self.eot_ids
    }

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`,
    /// else llama.cpp's default for the vocabulary).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether prompts should end with EOS (`tokenizer.ggml.add_eos_token`).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Control, user-defined and unknown tokens, matched as wholes in text.
    pub fn special_tokens(&self) -> &[SpecialToken] {
        &self.special_tokens
    }

    /// The GGUF token type of `id` (1 normal, 2 unknown, 3 control, 4
    /// user-defined, 5 unused, 6 byte).
    pub fn token_type(&self, id: u32) -> Option<i32> {
        self.token_types.get(usize::try_from(id).ok()?).copied()
    }

    /// Whether `id` is a control token (skipped by `decode(.., true)`).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(TOKEN_TYPE_CONTROL)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }
}

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
    /// A GGUF file's tokenizer, or a Hugging Face model directory's
    /// ([`CandleTokenizer::from_hf_dir`]) when `path` is a directory.
    pub fn from_path(path: &Path) -> Result<CandleTokenizer> {
        if path.is_dir() {
            return Self::from_hf_dir(path);
        }
        let gguf = crate::gguf::GgufFile::open(path)?;
        Self::from_gguf(gguf.content())
    }

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
        let path = dir.join(TOKENIZER_JSON);
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

enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

fn hf_err(what: &str) -> impl Fn(tokenizers::Error) -> ModelError + '_ {
    move |e| tok_err(format!("{what}: {e}"))
}

fn added_tokens(special_tokens: &[SpecialToken]) -> Vec<AddedToken> {
    special_tokens
        .iter()
        .map(|st| {
            AddedToken::from(st.text.clone(), st.token_type != TOKEN_TYPE_USER_DEFINED)
                .normalized(false)
        })
        .collect()
}

/// Builds the byte-level BPE `tokenizers::Tokenizer` for a `gpt2` vocabulary.
fn build_byte_level_bpe(
    parts: &TokenizerParts,
    regexes: &[&str],
    ignore_merges: bool,
    special_tokens: &[SpecialToken],
) -> Result<Tokenizer> {
    let mut vocab = Vocab::default();
    for (i, t) in parts.tokens.iter().enumerate() {
        vocab.insert(t.clone(), i as u32);
    }
    let mut merges = Vec::with_capacity(parts.merges.len());
    for m in &parts.merges {
        let first_len = m.chars().next().map_or(0, char::len_utf8);
        let Some(pos) = m.get(first_len..).and_then(|rest| rest.find(' ')) else {
            return Err(tok_err(format!("malformed merge '{m}'")));
        };
        let (a, b) = (&m[..first_len + pos], &m[first_len + pos + 1..]);
        // Merges whose parts or result are not tokens cannot fire usefully.
        if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        {
            merges.push((a.to_string(), b.to_string()));
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(hf_err("building BPE"))?;
    let mut pre: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
    for r in regexes {
        let split = Split::new(
            SplitPattern::Regex((*r).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(hf_err("compiling pre-tokenizer regex"))?;
        pre.push(split.into());
    }
    pre.push(ByteLevel::new(false, true, false).into());
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(PreSequence::new(pre)));
    tok.with_decoder(Some(ByteLevelDecoder::new(false, true, false)));
    tok.add_tokens(added_tokens(special_tokens))
        .map_err(hf_err("adding special tokens"))?;
    Ok(tok)
}

/// Builds an HF BPE equivalent of an SPM vocabulary: merges derived from the
/// scores (the merged piece's score orders them), byte fallback on.
fn build_spm_bpe(
    parts: &TokenizerParts,
    token_types: &[i32],
    scores: &[f32],
    add_space_prefix: bool,
    special_tokens: &[SpecialToken],
) -> Result<Tokenizer> {
    let mut vocab = Vocab::default();
    for (i, t) in parts.tokens.iter().enumerate() {
        vocab.insert(t.clone(), i as u32);
    }
    // (score, merged id, left id, left, right)
    let mut cands: Vec<(f32, u32, u32, String, String)> = Vec::new();
    for (i, t) in parts.tokens.iter().enumerate() {
        if !matches!(token_types[i], TOKEN_TYPE_NORMAL | TOKEN_TYPE_USER_DEFINED) {
            continue;
        }
        for (pos, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(pos);
            if let (Some(&la), Some(_)) = (vocab.get(a), vocab.get(b)) {
                cands.push((scores[i], i as u32, la, a.to_string(), b.to_string()));
            }
        }
    }
    cands.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges = cands.into_iter().map(|(_, _, _, a, b)| (a, b)).collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = parts.unk_id.and_then(|u| parts.tokens.get(u as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(hf_err("building SPM BPE"))?;
    let mut tok = Tokenizer::new(bpe);
    let replace = Replace::new(" ", "\u{2581}").map_err(hf_err("building normalizer"))?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        tokenizers::normalizers::Sequence::new(vec![
            Prepend::new("\u{2581}".to_string()).into(),
            replace.into(),
        ])
        .into()
    } else {
        replace.into()
    };
    tok.with_normalizer(Some(normalizer))
        .map_err(hf_err("setting the normalizer"))?;
    let space = Replace::new("\u{2581}", " ").map_err(hf_err("building decoder"))?;
    let mut decoders: Vec<DecoderWrapper> =
        vec![space.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        decoders.push(tokenizers::decoders::strip::Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    tok.add_tokens(added_tokens(special_tokens))
        .map_err(hf_err("adding special tokens"))?;
    Ok(tok)
}

/// A bigram candidate in the SPM merge queue: highest score first, then the
/// leftmost position.
#[derive(Debug, Clone, Copy)]
struct SpmBigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for SpmBigram {}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SpmBigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

#[derive(Debug, Clone, Copy)]
struct SpmSymbol {
    prev: Option<usize>,
    next: Option<usize>,
    start: usize,
    len: usize,
}

/// llama.cpp's SPM tokenization of one raw fragment (already `▁`-escaped).
fn spm_tokenize(spm: &SpmModel, text: &str, out: &mut Vec<u32>) -> Result<()> {
    let mut symbols: Vec<SpmSymbol> = Vec::with_capacity(text.len());
    let mut offs = 0;
    for c in text.chars() {
        let idx = symbols.len();
        let len = c.len_utf8();
        symbols.push(SpmSymbol {
            prev: idx.checked_sub(1),
            next: None,
            start: offs,
            len,
        });
        offs += len;
        if idx > 0 {
            symbols[idx - 1].next = Some(idx);
        }
    }
    if symbols.is_empty() {
        return Ok(());
    }
    let mut queue: BinaryHeap<SpmBigram> = BinaryHeap::new();
    let try_add = |left: Option<usize>,
                   right: Option<usize>,
                   symbols: &[SpmSymbol],
                   queue: &mut BinaryHeap<SpmBigram>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let start = symbols[l].start;
        let size = symbols[l].len + symbols[r].len;
        let Some(&id) = spm.token_to_id.get(&text[start..start + size]) else {
            return;
        };
        let score = spm.scores.get(id as usize).copied().unwrap_or(0.0);
        queue.push(SpmBigram {
            left: l,
            right: r,
            score,
            size,
        });
    };

    for i in 1..symbols.len() {
        try_add(Some(i - 1), Some(i), &symbols, &mut queue);
    }
    while let Some(bg) = queue.pop() {
        let (l, r) = (symbols[bg.left], symbols[bg.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
            continue;
        }
        symbols[bg.left].len += r.len;
        symbols[bg.right].len = 0;
        symbols[bg.left].next = r.next;
        if let Some(nx) = r.next {
            symbols[nx].prev = Some(bg.left);
        }
        let prev = symbols[bg.left].prev;
        let next = symbols[bg.left].next;
        try_add(prev, Some(bg.left), &symbols, &mut queue);
        try_add(Some(bg.left), next, &symbols, &mut queue);
    }
    // Every merged symbol is a token; a symbol that is not is a single
    // character missing from the vocabulary: emit its bytes (llama.cpp's
    // reverse-merge lookup can never fire for those).
    let mut i = Some(0);
    while let Some(idx) = i {
        let sym = symbols[idx];
        let piece = &text[sym.start..sym.start + sym.len];
        if let Some(&id) = spm.token_to_id.get(piece) {
            out.push(id);
        } else {
            for &b in piece.as_bytes() {
                match spm.byte_ids[usize::from(b)].or(spm.unk_id) {
                    Some(id) => out.push(id),
                    None => {
                        return Err(tok_err(format!(
                            "no byte token <0x{b:02X}> and no unknown token"
                        )))
                    }
                }
            }
        }
        i = sym.next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_level_parts() -> TokenizerParts {
        // A byte-level vocabulary: all 256 byte symbols, a few merges, and
        // two control tokens.
        let map = bytes_to_unicode();
        let mut tokens = vec![
            "<|endoftext|>".to_string(),
            "<|im_start|>".to_string(),
            "<|im_end|>".to_string(),
        ];
        let mut types = vec![TOKEN_TYPE_CONTROL; 3];
        for c in map {
            tokens.push(c.to_string());
            types.push(TOKEN_TYPE_NORMAL);
        }
        let merges = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
        ];
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(TOKEN_TYPE_NORMAL);
        }
        TokenizerParts {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            merges: merges.iter().map(|s| s.to_string()).collect(),
            token_types: types,
            bos_id: Some(1),
            eos_id: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn byte_level_basic() {
        let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
        let ids = t.encode("hello world", false).unwrap();
        let pieces: Vec<String> = ids
            .iter()
            .map(|&i| String::from_utf8(t.token_bytes_of(i).unwrap().to_vec()).unwrap())
            .collect();
        assert_eq!(pieces, vec!["hello", " world"]);
        assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
        // Special tokens are matched, BOS is added only on request.
        let ids = t.encode("<|im_start|>hello<|im_end|>", true).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(ids[1], 1);
        assert_eq!(*ids.last().unwrap(), 2);
        assert_eq!(t.decode(&ids, true).unwrap(), "hello");
        assert!(t.is_eog(2) && t.is_eog(0) && !t.is_eog(1));
        assert!(!t.add_bos());
        assert_eq!(t.vocab_size(), 3 + 256 + 9);
    }

    #[test]
    fn byte_level_digits_split_individually() {
        let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
        let ids = t.encode("a123", false).unwrap();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let mut p = byte_level_parts();
        p.pre = Some("no-such-pre".into());
        assert!(matches!(
            CandleTokenizer::from_parts(p),
            Err(ModelError::Tokenizer(_))
        ));
        let mut p = byte_level_parts();
        p.bos_id = Some(1_000_000);
        assert!(CandleTokenizer::from_parts(p).is_err());
        let mut p = byte_level_parts();
        p.token_types.pop();
        assert!(CandleTokenizer::from_parts(p).is_err());
        let mut p = byte_level_parts();
        p.model = "t5".into();
        assert!(CandleTokenizer::from_parts(p).is_err());
        let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
        assert!(t.decode(&[99_999], false).is_err());
    }

    fn spm_parts(add_space_prefix: bool) -> TokenizerParts {
        let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
        let mut types = vec![TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(TOKEN_TYPE_BYTE);
            scores.push(0.0);
        }
        let pieces: &[(&str, f32)] = &[
            ("▁", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("w", -2.0),
            ("r", -2.0),
            ("d", -2.0),
            ("he", -3.0),
            ("ll", -3.5),
            ("hell", -4.0),
            ("hello", -5.0),
            ("▁w", -6.0),
            ("or", -6.5),
            ("▁wor", -7.0),
            ("▁world", -7.5),
            ("ld", -8.0),
            ("<end_of_turn>", 0.0),
        ];
        for (p, s) in pieces {
            tokens.push((*p).to_string());
            types.push(if p.starts_with('<') {
                TOKEN_TYPE_CONTROL
            } else {
                TOKEN_TYPE_NORMAL
            });
            scores.push(*s);
        }
        TokenizerParts {
            model: "llama".into(),
            tokens,
            token_types: types,
            scores,
            bos_id: Some(1),
            eos_id: Some(2),
            unk_id: Some(0),
            add_space_prefix: Some(add_space_prefix),
            ..Default::default()
        }
    }

    #[test]
    fn spm_merges_by_score_with_byte_fallback() {
        let t = CandleTokenizer::from_parts(spm_parts(false)).unwrap();
        let ids = t.encode("hello world", false).unwrap();
        let pieces: Vec<String> = ids
            .iter()
            .map(|&i| String::from_utf8_lossy(t.token_bytes_of(i).unwrap()).into_owned())
            .collect();
        assert_eq!(pieces, vec!["hello", " world"]);
        assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
        // Unknown characters fall back to bytes and decode back.
        let ids = t.encode("hé!<end_of_turn>", true).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(t.decode(&ids, true).unwrap(), "hé!");
        assert!(t.is_eog(
            t.special_tokens()
                .iter()
                .find(|s| s.text == "<end_of_turn>")
                .unwrap()
                .id
        ));
        assert!(t.add_bos());
        // The HF equivalent agrees on simple text.
        let hf = t.inner().encode("hello world", false).unwrap();
        assert_eq!(
            hf.get_ids(),
            t.encode("hello world", false).unwrap().as_slice()
        );
    }

    #[test]
    fn spm_space_prefix() {
        let t = CandleTokenizer::from_parts(spm_parts(true)).unwrap();
        let ids = t.encode("world", false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), " world");
        assert_eq!(t.decode(&ids, true).unwrap(), "world");
    }

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("fluent-ai-candle-tok-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The byte-level test vocabulary as a `tokenizer.json` (as `tokenizers` saves it).
    fn byte_level_json() -> serde_json::Value {
        let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
        serde_json::from_str(&t.inner().to_string(false).unwrap()).unwrap()
    }

    #[test]
    fn tokenizer_json_builds_the_same_tokenizer() {
        let dir = TempDir::new("same");
        dir.write(TOKENIZER_JSON, &byte_level_json().to_string());
        dir.write(
            TOKENIZER_CONFIG_JSON,
            r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}}"#,
        );
        dir.write(
            "config.json",
            r#"{"vocab_size": 270, "eos_token_id": [2, 0]}"#,
        );
        let gguf = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
        let hf = CandleTokenizer::from_hf_dir(&dir.0).unwrap();
        for text in [
            "hello world",
            "<|im_start|>hello<|im_end|>",
            "a123 héllo\n\n  x",
        ] {
            assert_eq!(
                hf.encode(text, true).unwrap(),
                gguf.encode(text, true).unwrap(),
                "{text}"
            );
        }
        assert_eq!((hf.bos_id(), hf.eos_id()), (Some(1), Some(2)));
        assert_eq!(hf.eot_ids(), &[2, 0]);
        assert!(!hf.add_bos() && hf.is_control(1) && !hf.is_control(5));
        // Padded to config.json's vocab_size with unused tokens.
        assert_eq!(hf.vocab_size(), 270);
        assert_eq!(hf.token_type(269), Some(TOKEN_TYPE_UNUSED));
        assert_eq!(hf.token_bytes(), {
            let mut b = gguf.token_bytes();
            b.push(b"[PAD268]".to_vec());
            b.push(b"[PAD269]".to_vec());
            b
        });
        // A template that starts with a special token adds BOS (Llama 3's post-processor).
        let mut json = byte_level_json();
        json["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                "tokens": ["<|im_start|>"]}}
        });
        dir.write(TOKENIZER_JSON, &json.to_string());
        let hf = CandleTokenizer::from_hf_dir(&dir.0).unwrap();
        assert!(hf.add_bos() && !hf.add_eos());
        // ... unless tokenizer_config.json says otherwise.
        dir.write(TOKENIZER_CONFIG_JSON, r#"{"add_bos_token": false}"#);
        assert!(!CandleTokenizer::from_hf_dir(&dir.0).unwrap().add_bos());
    }

    #[test]
    fn bad_tokenizer_json_is_a_typed_error_naming_the_file() {
        let dir = TempDir::new("bad");
        let names_file = |e: &ModelError, file: &str| e.to_string().contains(file);
        let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(
            matches!(&err, ModelError::NotFound { path } if path.ends_with(TOKENIZER_JSON)),
            "{err}"
        );
        let path = dir.write(TOKENIZER_JSON, "{\"model\": ");
        let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(
            matches!(&err, ModelError::InvalidModelFile { path: p, .. } if *p == path),
            "{err}"
        );
        for (model, what) in [
            (
                serde_json::json!({"type": "WordPiece", "vocab": {}}),
                "WordPiece",
            ),
            (
                serde_json::json!({"type": "Unigram", "vocab": []}),
                "Unigram",
            ),
        ] {
            let mut json = byte_level_json();
            json["model"] = model;
            dir.write(TOKENIZER_JSON, &json.to_string());
            let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
            assert!(
                matches!(&err, ModelError::UnsupportedTokenizer { path: p, reason }
                    if *p == path && reason.contains(what)),
                "{err}"
            );
        }
        // A sentencepiece-style BPE (Llama 2, Mistral): no ByteLevel pre-tokenizer.
        let mut json = byte_level_json();
        json["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "▁",
            "prepend_scheme": "first", "split": false});
        dir.write(TOKENIZER_JSON, &json.to_string());
        let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedTokenizer { .. }),
            "{err}"
        );
        // A model `tokenizers` rejects (a merge of unknown tokens).
        let mut json = byte_level_json();
        json["model"]["merges"] = serde_json::json!(["zz qq"]);
        dir.write(TOKENIZER_JSON, &json.to_string());
        let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(
            matches!(&err, ModelError::InvalidModelFile { .. }) && names_file(&err, TOKENIZER_JSON),
            "{err}"
        );
        // tokenizer_config.json: malformed, or naming a token the vocabulary lacks.
        dir.write(TOKENIZER_JSON, &byte_level_json().to_string());
        dir.write(TOKENIZER_CONFIG_JSON, "not json");
        let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(
            matches!(&err, ModelError::InvalidModelFile { .. })
                && names_file(&err, TOKENIZER_CONFIG_JSON),
            "{err}"
        );
        dir.write(TOKENIZER_CONFIG_JSON, r#"{"eos_token": "</s>"}"#);
        let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(
            matches!(&err, ModelError::InvalidModelFile { reason, .. } if reason.contains("</s>"))
                && names_file(&err, TOKENIZER_CONFIG_JSON),
            "{err}"
        );
    }

    #[test]
    fn chat_templates_of_a_directory() {
        use crate::chat_template::{ChatMessage, ChatTemplate};
        let dir = TempDir::new("chat");
        dir.write(TOKENIZER_JSON, &byte_level_json().to_string());
        let tok = CandleTokenizer::from_hf_dir(&dir.0).unwrap();
        let user = [ChatMessage::new("user", "Hi")];
        // No template anywhere: ChatML.
        let chatml = ChatTemplate::chatml().render(&user, true).unwrap();
        let t = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap();
        assert_eq!(t.render(&user, true).unwrap(), chatml);
        // A string; BOS/EOS from tokenizer_config.json.
        dir.write(
            TOKENIZER_CONFIG_JSON,
            r#"{"chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
                "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}"#,
        );
        let t = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap();
        assert_eq!(t.render(&user, false).unwrap(), "<|im_start|>Hi<|im_end|>");
        // A list of named templates: `default`.
        dir.write(
            TOKENIZER_CONFIG_JSON,
            r#"{"chat_template": [{"name": "tool_use", "template": "tools"},
                                  {"name": "default", "template": "plain {{ messages[0].content }}"}]}"#,
        );
        let t = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap();
        assert_eq!(t.render(&user, false).unwrap(), "plain Hi");
        // chat_template.jinja when tokenizer_config.json has none.
        dir.write(TOKENIZER_CONFIG_JSON, "{}");
        dir.write("chat_template.jinja", "jinja {{ messages[0].content }}");
        let t = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap();
        assert_eq!(t.render(&user, false).unwrap(), "jinja Hi");
        // A template that does not compile, a template of the wrong type.
        dir.write(TOKENIZER_CONFIG_JSON, r#"{"chat_template": "{% for %}"}"#);
        let err = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap_err();
        assert!(
            matches!(&err, ModelError::ChatTemplate(m) if m.contains(TOKENIZER_CONFIG_JSON)),
            "{err}"
        );
        dir.write(TOKENIZER_CONFIG_JSON, r#"{"chat_template": 7}"#);
        let err = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap_err();
        assert!(matches!(err, ModelError::InvalidModelFile { .. }), "{err}");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn byte_level_round_trips(s in any::<String>()) {
                let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
                // Skip inputs that contain special-token text.
                prop_assume!(!s.contains("<|"));
                let ids = t.encode(&s, false).unwrap();
                prop_assert_eq!(t.decode(&ids, false).unwrap(), s);
            }

            #[test]
            fn spm_round_trips(s in any::<String>()) {
                let t = CandleTokenizer::from_parts(spm_parts(false)).unwrap();
                prop_assume!(!s.contains('<'));
                let ids = t.encode(&s, false).unwrap();
                prop_assert_eq!(t.decode(&ids, false).unwrap(), s);
            }
        }
    }
}
