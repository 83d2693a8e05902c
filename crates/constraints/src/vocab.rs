//! Token id → bytes, and the token trie the mask computation walks.

use crate::ConstraintError;

/// How a tokenizer spells raw bytes in its token strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEncoding {
    /// GPT-2 style byte-level BPE: every byte is mapped to a printable character (`Ġ` is a
    /// space).
    ByteLevel,
    /// SentencePiece style: `▁` is a space and `<0xNN>` tokens are raw bytes.
    SentencePiece,
    /// Token strings are the text itself.
    Raw,
}

/// The GPT-2 byte-to-unicode table, inverted: char → byte.
fn byte_level_decoder() -> std::collections::HashMap<char, u8> {
    let mut bytes: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    bytes
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b as u8)))
        .collect()
}

/// Decodes one token string into raw bytes.
pub fn decode_token_string(s: &str, encoding: TokenEncoding) -> Vec<u8> {
    match encoding {
        TokenEncoding::Raw => s.as_bytes().to_vec(),
        TokenEncoding::ByteLevel => {
            thread_local! {
                static MAP: std::collections::HashMap<char, u8> = byte_level_decoder();
            }
            MAP.with(|m| {
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    match m.get(&c) {
                        Some(&b) => out.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                out
            })
        }
        TokenEncoding::SentencePiece => {
            let b = s.as_bytes();
            if b.len() == 6 && s.starts_with("<0x") && s.ends_with('>') {
                if let Ok(v) = u8::from_str_radix(&s[3..5], 16) {
                    return vec![v];
                }
            }
            s.replace('\u{2581}', " ").into_bytes()
        }
    }
}

/// One node of the token trie, stored in preorder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrieNode {
    /// The byte on the edge into this node.
    pub byte: u8,
    /// Depth (the root is 0).
    pub depth: u32,
    /// Index one past this node's subtree.
    pub end: u32,
    /// Range of `Trie::tokens` that end exactly here.
    pub tok_start: u32,
    pub tok_end: u32,
}

/// All non-empty tokens, sorted by bytes and sharing prefixes.
#[derive(Debug, Clone)]
pub(crate) struct Trie {
    pub nodes: Vec<TrieNode>,
    pub tokens: Vec<u32>,
    pub max_depth: usize,
    /// Per node: the bytes on the edges of its subtree (itself included), as
    /// [`byte_bit`]s. A lexeme state that loops on all of them allows the whole subtree.
    pub sub_bytes: Vec<u128>,
    /// Per node: one past the last index of `tokens` in its subtree (its tokens are
    /// `tokens[node.tok_start..sub_tok_end]`, preorder keeps them contiguous).
    pub sub_tok_end: Vec<u32>,
}

/// The bit of byte `b` in a subtree byte set: its own bit for ASCII 1..=127, bit 0 for NUL
/// and every byte of 128 and above (so a set with bit 0 asks for all of them).
#[inline]
pub(crate) fn byte_bit(b: u8) -> u128 {
    if (1..128).contains(&b) {
        1u128 << b
    } else {
        1
    }
}

impl Trie {
    fn build(tokens: &[Vec<u8>], skip: &[bool]) -> Self {
        let mut order: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| !tokens[i as usize].is_empty() && !skip[i as usize])
            .collect();
        order.sort_by(|&a, &b| tokens[a as usize].cmp(&tokens[b as usize]).then(a.cmp(&b)));
        let mut nodes = vec![TrieNode {
            byte: 0,
            depth: 0,
            end: 0,
            tok_start: 0,
            tok_end: 0,
        }];
        let mut out_tokens = Vec::with_capacity(order.len());
        let mut path: Vec<usize> = vec![0];
        let mut prev: &[u8] = &[];
        let mut max_depth = 0;
        for &id in &order {
            let t = &tokens[id as usize][..];
            let lcp = prev.iter().zip(t).take_while(|(a, b)| a == b).count();
            while path.len() > lcp + 1 {
                let n = path.pop().unwrap_or(0);
                nodes[n].end = nodes.len() as u32;
            }
            for (d, &byte) in t.iter().enumerate().skip(lcp) {
                let idx = out_tokens.len() as u32;
                nodes.push(TrieNode {
                    byte,
                    depth: d as u32 + 1,
                    end: 0,
                    tok_start: idx,
                    tok_end: idx,
                });
                path.push(nodes.len() - 1);
            }
            let last = *path.last().unwrap_or(&0);
            if nodes[last].tok_end == nodes[last].tok_start {
                nodes[last].tok_start = out_tokens.len() as u32;
                nodes[last].tok_end = out_tokens.len() as u32;
            }
            out_tokens.push(id);
            nodes[last].tok_end += 1;
            max_depth = max_depth.max(t.len());
            prev = t;
        }
        while let Some(n) = path.pop() {
            nodes[n].end = nodes.len() as u32;
        }
        // subtree byte sets and token ranges, children before parents
        let mut sub_bytes: Vec<u128> = nodes.iter().map(|n| byte_bit(n.byte)).collect();
        sub_bytes[0] = 0;
        let mut sub_tok_end: Vec<u32> = nodes.iter().map(|n| n.tok_end).collect();
        let mut parent = vec![0usize; nodes.len()];
        let mut stack: Vec<usize> = vec![0];
        for i in 1..nodes.len() {
            while stack.len() > nodes[i].depth as usize {
                stack.pop();
            }
            parent[i] = *stack.last().unwrap_or(&0);
            stack.push(i);
        }
        for i in (1..nodes.len()).rev() {
            let p = parent[i];
            sub_bytes[p] |= sub_bytes[i];
            sub_tok_end[p] = sub_tok_end[p].max(sub_tok_end[i]);
        }
        Trie {
            nodes,
            tokens: out_tokens,
            max_depth,
            sub_bytes,
            sub_tok_end,
        }
    }
}

/// A tokenizer's vocabulary as raw bytes, plus which tokens end generation.
///
/// Special tokens (control tokens such as `<|im_start|>`) have no bytes: a constraint never
/// allows them. End-of-sequence tokens are allowed exactly where the constraint may end.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    tokens: Vec<Vec<u8>>,
    eos: Vec<u32>,
    is_special: Vec<bool>,
    pub(crate) trie: Trie,
    /// Mask parts shared by every constraint compiled against this vocabulary.
    pub(crate) masks: std::sync::Arc<crate::engine::MaskCache>,
}

impl Vocabulary {
    /// A vocabulary from each token's bytes (index = token id). `eos_ids` end generation;
    /// `special_ids` are never allowed by a constraint.
    pub fn new(token_bytes: Vec<Vec<u8>>, eos_ids: &[u32], special_ids: &[u32]) -> Self {
        let n = token_bytes.len();
        let mut is_special = vec![false; n];
        for &id in special_ids.iter().chain(eos_ids) {
            if let Some(s) = is_special.get_mut(id as usize) {
                *s = true;
            }
        }
        let trie = Trie::build(&token_bytes, &is_special);
        Self {
            tokens: token_bytes,
            eos: eos_ids
                .iter()
                .copied()
                .filter(|&e| (e as usize) < n)
                .collect(),
            is_special,
            trie,
            masks: Default::default(),
        }
    }

    /// A vocabulary from token strings as a tokenizer file spells them (GGUF
    /// `tokenizer.ggml.tokens`, for example), decoded with `encoding`.
    pub fn from_token_strings<S: AsRef<str>>(
        strings: &[S],
        encoding: TokenEncoding,
        eos_ids: &[u32],
        special_ids: &[u32],
    ) -> Self {
        let bytes = strings
            .iter()
            .map(|s| decode_token_string(s.as_ref(), encoding))
            .collect();
        Self::new(bytes, eos_ids, special_ids)
    }

    /// A vocabulary from a Hugging Face tokenizer. Byte-level BPE (GPT-2 byte map) and
    /// SentencePiece (`▁`, `<0xNN>` byte fallback) spellings are decoded to raw bytes; added
    /// tokens marked special get no bytes.
    #[cfg(feature = "tokenizers")]
    pub fn from_tokenizer(
        tokenizer: &tokenizers::Tokenizer,
        eos_ids: &[u32],
    ) -> Result<Self, ConstraintError> {
        use tokenizers::DecoderWrapper;
        let size = tokenizer.get_vocab_size(true);
        let vocab = tokenizer.get_vocab(true);
        let added = tokenizer.get_added_tokens_decoder();
        let encoding = match tokenizer.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => TokenEncoding::ByteLevel,
            Some(DecoderWrapper::Metaspace(_)) => TokenEncoding::SentencePiece,
            Some(DecoderWrapper::Sequence(_)) | Some(DecoderWrapper::ByteFallback(_)) => {
                TokenEncoding::SentencePiece
            }
            _ => {
                if vocab.keys().any(|k| k.contains('\u{0120}')) {
                    TokenEncoding::ByteLevel
                } else if vocab.keys().any(|k| k.contains('\u{2581}')) {
                    TokenEncoding::SentencePiece
                } else {
                    TokenEncoding::Raw
                }
            }
        };
        let max_id = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
        let n = size.max(max_id);
        let mut bytes = vec![Vec::new(); n];
        let mut special = Vec::new();
        for (s, &id) in &vocab {
            if let Some(a) = added.get(&id) {
                if a.special {
                    special.push(id);
                } else {
                    bytes[id as usize] = a.content.as_bytes().to_vec();
                }
                continue;
            }
            bytes[id as usize] = decode_token_string(s, encoding);
        }
        if bytes.is_empty() {
            return Err(ConstraintError::Vocabulary("empty vocabulary".into()));
        }
        Ok(Self::new(bytes, eos_ids, &special))
    }

    /// Number of token ids.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when the vocabulary has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The bytes of token `id` (empty for special tokens and unknown ids).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        if self.is_special(id) {
            return &[];
        }
        self.tokens.get(id as usize).map_or(&[][..], |t| &t[..])
    }

    /// The end-of-sequence token ids.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// True for EOS and other special tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// True for an EOS token.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// Every token whose bytes are a prefix of `bytes`, as (length, id), shortest first.
    pub fn prefix_tokens(&self, bytes: &[u8]) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        let nodes = &self.trie.nodes;
        let mut i = 1usize;
        let mut depth = 0;
        while i < nodes.len() && depth < bytes.len() {
            let n = nodes[i];
            if n.depth as usize != depth + 1 {
                break;
            }
            if n.byte == bytes[depth] {
                for &id in &self.trie.tokens[n.tok_start as usize..n.tok_end as usize] {
                    out.push((depth + 1, id));
                }
                depth += 1;
                i += 1;
            } else {
                i = n.end as usize;
            }
        }
        out
    }

    /// Greedy longest-prefix tokenization of `bytes` using the trie (used for forced tokens;
    /// of several tokens with the same bytes, the lowest id). Stops before the first byte no
    /// token starts with.
    pub fn greedy_tokenize(&self, mut bytes: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        loop {
            let prefixes = self.prefix_tokens(bytes);
            let Some(&(len, _)) = prefixes.last() else {
                return out;
            };
            if let Some(&(_, id)) = prefixes.iter().find(|p| p.0 == len) {
                out.push(id);
            }
            bytes = &bytes[len..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_round_trips() {
        assert_eq!(
            decode_token_string("\u{0120}hello", TokenEncoding::ByteLevel),
            b" hello"
        );
        assert_eq!(
            decode_token_string("\u{010A}", TokenEncoding::ByteLevel),
            b"\n"
        );
        assert_eq!(
            decode_token_string("<0x0A>", TokenEncoding::SentencePiece),
            b"\n"
        );
        assert_eq!(
            decode_token_string("\u{2581}a", TokenEncoding::SentencePiece),
            b" a"
        );
    }

    #[test]
    fn trie_covers_all_tokens() {
        let v = Vocabulary::new(
            vec![
                b"a".to_vec(),
                b"ab".to_vec(),
                b"b".to_vec(),
                vec![],
                b"ab".to_vec(),
            ],
            &[3],
            &[],
        );
        assert_eq!(v.trie.tokens.len(), 4);
        assert_eq!(v.greedy_tokenize(b"abab"), vec![1, 1]);
        assert_eq!(v.greedy_tokenize(b"ba"), vec![2, 0]);
    }

    #[test]
    fn subtree_summaries_cover_exactly_the_subtree() {
        let words = [
            "a", "ab", "abc", "ab\"", "b", "b\u{e9}", "ba", "c", "ca", "cab",
        ];
        let v = Vocabulary::new(
            words.iter().map(|w| w.as_bytes().to_vec()).collect(),
            &[],
            &[],
        );
        let t = &v.trie;
        for i in 1..t.nodes.len() {
            let n = t.nodes[i];
            let (mut bytes, mut toks) = (0u128, Vec::new());
            for j in i..n.end as usize {
                bytes |= byte_bit(t.nodes[j].byte);
                toks.extend_from_slice(
                    &t.tokens[t.nodes[j].tok_start as usize..t.nodes[j].tok_end as usize],
                );
            }
            assert_eq!(t.sub_bytes[i], bytes, "node {i}");
            let mut range = t.tokens[n.tok_start as usize..t.sub_tok_end[i] as usize].to_vec();
            range.sort();
            toks.sort();
            assert_eq!(range, toks, "node {i}");
        }
    }
}
