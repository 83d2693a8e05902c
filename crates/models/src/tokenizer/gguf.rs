//! [`CandleTokenizer::from_gguf`]: the tokenizer parts from a GGUF file's `tokenizer.ggml.*`
//! metadata, each key's type checked.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};

use super::{CandleTokenizer, TokenizerParts};
use crate::{ModelError, Result};

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
            // Only a hint for token attributes: a malformed name is no name.
            name: meta_string(md, "general.name").ok().flatten(),
        };
        Self::from_parts(parts)
    }
}
