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
//!
//! The code is split by concern: this module holds [`CandleTokenizer`] itself (building it from
//! [`TokenizerParts`], encoding, decoding, the special-token facts); `gguf` reads the parts from
//! `tokenizer.ggml.*` metadata, `hf_dir` from a Hugging Face directory's `tokenizer.json`;
//! `byte_level` builds `gpt2` vocabularies (llama.cpp's pre-tokenizer regexes, the GPT-2 byte
//! map) and `spm` runs `llama` ones (the merge-by-score algorithm); `llama_cpp_attrs` holds the
//! token facts llama.cpp derives from token texts and the model name (end of generation, control
//! tokens, right-stripping special tokens).

mod byte_level;
mod gguf;
mod hf_dir;
mod llama_cpp_attrs;
mod spm;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use crate::{ModelError, Result};
use byte_level::{build_byte_level_bpe, bytes_to_unicode, pre_tokenizer_regexes};
pub(crate) use hf_dir::special_token_text;
pub use hf_dir::{TOKENIZER_CONFIG_JSON, TOKENIZER_JSON};
use spm::{build_spm_bpe, parse_byte_token, SpmModel};

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
    /// `general.name`: llama.cpp sets some token attributes by it (Phi-3's special tokens drop
    /// the whitespace after them).
    pub name: Option<String>,
}

/// A special (control, user-defined or unknown) token that is matched as a
/// whole in input text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    /// The token id.
    pub id: u32,
    /// The token text.
    pub text: String,
    /// The token type (3 control, 4 user-defined, 2 unknown): the GGUF's, or control where
    /// llama.cpp makes it one (an end-of-generation text, see [`CandleTokenizer::token_type`]).
    pub token_type: i32,
    /// Whether the ASCII whitespace after it in input text is dropped (llama.cpp's `RSTRIP`
    /// attribute, which it sets on Phi-3's special tokens).
    pub rstrip: bool,
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

impl CandleTokenizer {
    /// The seed's constructor: a tokenizer from one file — a GGUF model file (its
    /// `tokenizer.ggml.*` metadata, recognized by its magic bytes whatever its name) or a
    /// Hugging Face `tokenizer.json` (see [`from_tokenizer_json`](Self::from_tokenizer_json);
    /// `tokenizer_config.json` and the other special-token files are read beside it).
    ///
    /// A missing file is [`ModelError::NotFound`]; a file of neither kind is
    /// [`ModelError::InvalidModelFile`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<CandleTokenizer> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(ModelError::NotFound {
                path: path.to_path_buf(),
            });
        }
        if crate::gguf::has_gguf_magic(path) {
            let file = crate::gguf::GgufFile::open(path)?;
            return Self::from_gguf(file.content());
        }
        Self::from_tokenizer_json(path)
    }
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
        let mut token_types: Vec<i32> = if parts.token_types.is_empty() {
            vec![TOKEN_TYPE_NORMAL; n]
        } else {
            parts.token_types.clone()
        };
        let declared_types = token_types.clone();

        // End-of-generation ids, and the control tokens llama.cpp makes of their texts.
        let mut declared: Vec<u32> = [eos_id, eot_id, eom_id].into_iter().flatten().collect();
        for &id in &parts.extra_eog_ids {
            declared.extend(check_id("end-of-generation", Some(id))?);
        }
        let eot_ids =
            llama_cpp_attrs::end_of_generation(&parts.tokens, &mut token_types, &declared);

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
                    rstrip: llama_cpp_attrs::strips_right(parts.name.as_deref(), text),
                });
            }
        }

        let (inner, add_bos_default, spm) = match (kind, prebuilt) {
            (VocabKind::Gpt2, Some(mut tok)) => {
                // Tokens that only llama.cpp's end-of-generation texts make special are matched
                // in input like the tokenizer's own special tokens.
                let promoted: Vec<SpecialToken> = special_tokens
                    .iter()
                    .filter(|st| {
                        !matches!(
                            declared_types[st.id as usize],
                            TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN
                        )
                    })
                    .cloned()
                    .collect();
                if !promoted.is_empty() {
                    tok.add_tokens(added_tokens(&promoted))
                        .map_err(hf_err("adding special tokens"))?;
                }
                (tok, false, None)
            }
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
                    if st.rstrip {
                        while i < bytes.len() && llama_cpp_attrs::is_stripped_space(bytes[i]) {
                            i += 1;
                        }
                    }
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

    /// The token type of `id` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6
    /// byte): the GGUF's (or `tokenizer.json`'s), except where llama.cpp's loader changes it by
    /// the token's text — a token on its end-of-generation list is control, and in its two
    /// exceptions `<|end|>` user-defined and `</s>` normal.
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
                .rstrip(st.rstrip)
        })
        .collect()
}
