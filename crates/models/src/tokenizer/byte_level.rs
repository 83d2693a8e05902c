//! `gpt2` vocabularies: the regexes llama.cpp's pre-tokenizers apply (by `tokenizer.ggml.pre`),
//! the GPT-2 byte map, and the byte-level BPE `tokenizers::Tokenizer` built from them.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::{added_tokens, hf_err, tok_err, SpecialToken, TokenizerParts};
use crate::Result;

/// The GPT-2 regex as llama.cpp writes it.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// The Llama 3 regex (case-insensitive contractions spelled out).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen 2 regex: like Llama 3 but single digits.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The GPT-2 byte → printable unicode map.
pub(super) fn bytes_to_unicode() -> [char; 256] {
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

/// The regexes llama.cpp applies in sequence for a BPE pre-tokenizer name.
pub(super) fn pre_tokenizer_regexes(pre: &str) -> Result<(Vec<&'static str>, bool, bool)> {
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

/// Builds the byte-level BPE `tokenizers::Tokenizer` for a `gpt2` vocabulary.
pub(super) fn build_byte_level_bpe(
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
