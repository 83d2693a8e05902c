//! `TokenMask`: the allowed-token bitset that connects constraints and sampling.
//!
//! The constraint engine (`fluent-ai-candle-constraints`) *produces* a mask for each decode
//! step, and the sampler (`fluent-ai-candle-sampling`) *consumes* it. Neither crate depends on
//! the other, nor on any ML framework: both depend on this crate alone, which has no
//! dependencies at all.
//!
//! A mask is a fixed-size bitset over the vocabulary, one bit per token id, stored in `u64`
//! words. It is sized once for a vocabulary and then reused every step: none of its methods
//! allocate except the constructors and [`TokenMask::resize`].
//!
//! ```
//! use fluent_ai_candle_mask::TokenMask;
//!
//! let mut mask = TokenMask::forbid_all(49_152);
//! assert!(mask.allow(42));
//! assert!(mask.allow(7));
//! assert!(mask.is_allowed(42) && !mask.is_allowed(43));
//! assert_eq!(mask.count_allowed(), 2);
//! assert_eq!(mask.iter_allowed().collect::<Vec<_>>(), vec![7, 42]);
//!
//! // Out-of-range ids are never allowed and are reported, not a panic.
//! assert!(!mask.allow(1_000_000));
//! assert!(!mask.is_allowed(1_000_000));
//! ```
#![forbid(unsafe_code)]

/// Number of token ids held by one storage word.
pub const BITS_PER_WORD: usize = 64;

/// A bitset over a vocabulary: bit `i` set means token id `i` may be sampled.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenMask {
    words: Vec<u64>,
    len: usize,
}

impl std::fmt::Debug for TokenMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMask")
            .field("len", &self.len)
            .field("allowed", &self.count_allowed())
            .finish()
    }
}

impl TokenMask {
    /// A mask over `len` token ids with every token forbidden.
    pub fn forbid_all(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(BITS_PER_WORD)],
            len,
        }
    }

    /// A mask over `len` token ids with every token allowed.
    pub fn allow_all(len: usize) -> Self {
        let mut mask = Self::forbid_all(len);
        mask.set_all(true);
        mask
    }

    /// Number of token ids the mask covers (the vocabulary size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the mask covers no token ids at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Changes the vocabulary size; new ids start forbidden. Allocates only when growing past
    /// the current capacity.
    pub fn resize(&mut self, len: usize) {
        self.words.resize(len.div_ceil(BITS_PER_WORD), 0);
        self.len = len;
        self.clear_tail();
    }

    /// Sets every bit to `allowed` (tail bits past `len` stay clear).
    pub fn set_all(&mut self, allowed: bool) {
        let fill = if allowed { u64::MAX } else { 0 };
        self.words.fill(fill);
        self.clear_tail();
    }

    /// Allows token `id`. Returns `false` (and changes nothing) when `id` is out of range.
    pub fn allow(&mut self, id: u32) -> bool {
        self.set(id, true)
    }

    /// Forbids token `id`. Returns `false` (and changes nothing) when `id` is out of range.
    pub fn forbid(&mut self, id: u32) -> bool {
        self.set(id, false)
    }

    /// Sets token `id` to `allowed`. Returns `false` (and changes nothing) when `id` is out of
    /// range.
    pub fn set(&mut self, id: u32, allowed: bool) -> bool {
        let i = id as usize;
        if i >= self.len {
            return false;
        }
        let bit = 1u64 << (i % BITS_PER_WORD);
        let word = &mut self.words[i / BITS_PER_WORD];
        if allowed {
            *word |= bit;
        } else {
            *word &= !bit;
        }
        true
    }

    /// True when token `id` is in range and allowed.
    #[inline]
    pub fn is_allowed(&self, id: u32) -> bool {
        let i = id as usize;
        i < self.len && (self.words[i / BITS_PER_WORD] >> (i % BITS_PER_WORD)) & 1 == 1
    }

    /// Number of allowed tokens.
    pub fn count_allowed(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True when no token is allowed.
    pub fn is_all_forbidden(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Keeps only the tokens allowed by both `self` and `other` (intersection). Ids beyond the
    /// shorter mask are forbidden.
    pub fn intersect_with(&mut self, other: &TokenMask) {
        for (i, w) in self.words.iter_mut().enumerate() {
            *w &= other.words.get(i).copied().unwrap_or(0);
        }
        self.clear_tail();
    }

    /// Allows every token allowed by `other` as well (union), within `self`'s length.
    pub fn union_with(&mut self, other: &TokenMask) {
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= *o;
        }
        self.clear_tail();
    }

    /// The storage words: bit `b` of word `w` is token id `w * 64 + b`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Mutable storage words, for engines that fill the mask a word at a time. Bits past
    /// [`len`](Self::len) must stay clear; call [`TokenMask::clear_tail`] after bulk writes.
    pub fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }

    /// Clears any bits past `len` in the last word.
    pub fn clear_tail(&mut self) {
        let rem = self.len % BITS_PER_WORD;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// Iterates over the allowed token ids in increasing order, without allocating.
    pub fn iter_allowed(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some((wi * BITS_PER_WORD + bit) as u32)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allow_all_respects_length() {
        let m = TokenMask::allow_all(130);
        assert_eq!(m.count_allowed(), 130);
        assert!(m.is_allowed(129));
        assert!(!m.is_allowed(130));
    }

    #[test]
    fn empty_mask_is_safe() {
        let mut m = TokenMask::forbid_all(0);
        assert!(m.is_empty());
        assert!(!m.allow(0));
        assert!(m.is_all_forbidden());
        m.set_all(true);
        assert_eq!(m.count_allowed(), 0);
    }

    #[test]
    fn resize_keeps_and_clears() {
        let mut m = TokenMask::allow_all(70);
        m.resize(65);
        assert_eq!(m.count_allowed(), 65);
        m.resize(200);
        assert_eq!(m.count_allowed(), 65);
        assert!(!m.is_allowed(100));
    }

    proptest! {
        #[test]
        fn matches_a_bool_vector(len in 0usize..300, ops in prop::collection::vec((0u32..320, any::<bool>()), 0..200)) {
            let mut m = TokenMask::forbid_all(len);
            let mut naive = vec![false; len];
            for (id, on) in ops {
                let in_range = (id as usize) < len;
                prop_assert_eq!(m.set(id, on), in_range);
                if in_range { naive[id as usize] = on; }
            }
            let expected: Vec<u32> = naive.iter().enumerate().filter(|(_, &b)| b).map(|(i, _)| i as u32).collect();
            prop_assert_eq!(m.iter_allowed().collect::<Vec<_>>(), expected.clone());
            prop_assert_eq!(m.count_allowed(), expected.len());
            let mut other = TokenMask::allow_all(len);
            other.intersect_with(&m);
            prop_assert_eq!(other.count_allowed(), expected.len());
        }
    }
}
