//! `llama` vocabularies: llama.cpp's SPM tokenization (sentencepiece-style BPE driven by token
//! scores, with `<0xNN>` byte fallback), and the equivalent `tokenizers` BPE that
//! [`CandleTokenizer::inner`] returns.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::{NormalizerWrapper, Tokenizer};

use super::{
    added_tokens, hf_err, tok_err, CandleTokenizer, Fragment, SpecialToken, TokenizerParts,
    TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED,
};
use crate::Result;

/// State for llama.cpp's SPM (merge-by-score) algorithm.
#[derive(Debug, Clone)]
pub(super) struct SpmModel {
    pub(super) token_to_id: HashMap<String, u32>,
    pub(super) scores: Vec<f32>,
    /// `<0xNN>` token id for each byte value.
    pub(super) byte_ids: Vec<Option<u32>>,
    pub(super) unk_id: Option<u32>,
    pub(super) add_space_prefix: bool,
}

/// Parses `<0xNN>` into the byte it names.
pub(super) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl CandleTokenizer {
    pub(super) fn encode_spm(&self, spm: &SpmModel, text: &str, out: &mut Vec<u32>) -> Result<()> {
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
}

/// Builds an HF BPE equivalent of an SPM vocabulary: merges derived from the
/// scores (the merged piece's score orders them), byte fallback on.
pub(super) fn build_spm_bpe(
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
