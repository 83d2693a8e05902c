//! An LRU cache of prompt prefixes' keys and values, shared across requests.

use candle_core::Tensor;

/// Bounds of a [`PrefixCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheConfig {
    /// Most entries kept.
    pub max_entries: usize,
    /// Most bytes of keys and values kept.
    pub max_bytes: usize,
    /// Shortest prefix worth reusing, in tokens.
    pub min_prefix: usize,
}

impl Default for PrefixCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 16,
            max_bytes: 512 << 20,
            min_prefix: 16,
        }
    }
}

/// A reusable prefix found by [`PrefixCache::lookup`].
#[derive(Debug, Clone)]
pub struct PrefixHit {
    /// Number of leading prompt tokens whose keys and values are available.
    pub len: usize,
    /// Per layer keys, `[kv_heads, >= len, head_dim]`.
    pub keys: Vec<Tensor>,
    /// Per layer values, `[kv_heads, >= len, head_dim]`.
    pub values: Vec<Tensor>,
}

#[derive(Debug)]
struct Entry {
    tokens: Vec<u32>,
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    bytes: usize,
    last_used: u64,
}

/// Least-recently-used store of prompt prefixes, bounded by entries and bytes.
///
/// A prompt's keys and values at position `i` depend only on tokens `0..=i`, so a new prompt
/// that shares its first `n` tokens with a cached one can start from the cached `n` positions.
#[derive(Debug, Default)]
pub struct PrefixCache {
    config: PrefixCacheConfig,
    entries: Vec<Entry>,
    clock: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl PrefixCache {
    /// An empty cache with the given bounds.
    pub fn new(config: PrefixCacheConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The entry sharing the longest prefix with `tokens` (at least `min_prefix` tokens, at
    /// most all but the last of `tokens`): its index and the shared length.
    fn best(&self, tokens: &[u32]) -> Option<(usize, usize)> {
        let limit = tokens.len().saturating_sub(1);
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = e
                    .tokens
                    .iter()
                    .zip(tokens)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(limit);
                (i, n)
            })
            .filter(|(_, n)| *n >= self.config.min_prefix.max(1))
            .max_by_key(|(_, n)| *n)
    }

    /// Finds the cached entry sharing the longest prefix with `tokens` (at least
    /// `min_prefix` tokens, and always leaving one token of `tokens` to run so the model
    /// produces logits).
    pub fn lookup(&mut self, tokens: &[u32]) -> Option<PrefixHit> {
        self.clock += 1;
        match self.best(tokens) {
            Some((i, len)) => {
                let e = &mut self.entries[i];
                e.last_used = self.clock;
                self.hits += 1;
                Some(PrefixHit {
                    len,
                    keys: e.keys.clone(),
                    values: e.values.clone(),
                })
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Marks the entry [`lookup`](Self::lookup) would find for `tokens` as used now, without
    /// counting a lookup: a request about to use a prefix refreshes it before a budget evicts
    /// the least recently used ones to admit that request. Returns whether there was one.
    pub fn touch(&mut self, tokens: &[u32]) -> bool {
        self.clock += 1;
        match self.best(tokens) {
            Some((i, _)) => {
                self.entries[i].last_used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Stores the keys and values (`[kv_heads, tokens.len(), head_dim]` per layer) of a prompt.
    /// An entry larger than the byte bound is not stored.
    pub fn insert(&mut self, tokens: Vec<u32>, keys: Vec<Tensor>, values: Vec<Tensor>) {
        if tokens.len() < self.config.min_prefix || self.config.max_entries == 0 {
            return;
        }
        let bytes: usize = keys
            .iter()
            .chain(&values)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        if bytes > self.config.max_bytes {
            return;
        }
        // An existing entry that this one extends (or equals) is replaced.
        self.entries
            .retain(|e| !(e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens)));
        self.clock += 1;
        self.entries.push(Entry {
            tokens,
            keys,
            values,
            bytes,
            last_used: self.clock,
        });
        while self.entries.len() > self.config.max_entries || self.bytes() > self.config.max_bytes {
            if self.evict_lru().is_none() {
                break;
            }
        }
    }

    /// Drops the least recently used entry (the one whose last lookup hit or insertion is
    /// oldest); returns its length in tokens, `None` when the cache is empty.
    pub fn evict_lru(&mut self) -> Option<usize> {
        let (i, _) = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.last_used)?;
        let e = self.entries.swap_remove(i);
        self.evictions += 1;
        Some(e.tokens.len())
    }

    /// Drops least recently used entries until at most `limit` tokens are cached; returns
    /// the number of entries dropped. A [`KvBudget`](crate::KvBudget) calls it to make room.
    pub fn evict_to_tokens(&mut self, limit: usize) -> usize {
        let mut dropped = 0;
        while self.tokens() > limit && self.evict_lru().is_some() {
            dropped += 1;
        }
        dropped
    }

    /// Tokens held: the sum of the cached prefixes' lengths (each holds its own keys and
    /// values, so this is what they take of a [`KvBudget`](crate::KvBudget)).
    pub fn tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    /// The cached prefixes' token sequences, least recently used first.
    pub fn prefixes(&self) -> Vec<&[u32]> {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by_key(|e| e.last_used);
        entries.into_iter().map(|e| e.tokens.as_slice()).collect()
    }

    /// Entries dropped to keep a bound (entries, bytes or a budget) over the cache's life.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups that found a prefix.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that found nothing.
    pub fn misses(&self) -> u64 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn kv(n: usize) -> (Vec<Tensor>, Vec<Tensor>) {
        let t = Tensor::zeros((1, n, 2), DType::F32, &Device::Cpu).unwrap();
        (vec![t.clone()], vec![t])
    }

    #[test]
    fn longest_prefix_wins_and_lru_bounds_hold() {
        let cfg = PrefixCacheConfig {
            max_entries: 2,
            max_bytes: 1 << 20,
            min_prefix: 2,
        };
        let mut c = PrefixCache::new(cfg);
        let (k, v) = kv(4);
        c.insert(vec![1, 2, 3, 4], k, v);
        let (k, v) = kv(3);
        c.insert(vec![1, 2, 9], k, v);
        assert_eq!(c.lookup(&[1, 2, 3, 4, 5]).unwrap().len, 4);
        // Never the whole prompt: one token must still run.
        assert_eq!(c.lookup(&[1, 2, 3, 4]).unwrap().len, 3);
        assert!(c.lookup(&[7, 7, 7]).is_none());
        let (k, v) = kv(3);
        c.insert(vec![5, 6, 7], k, v);
        assert_eq!(c.len(), 2);
        // [1,2,9] was least recently used and is gone.
        assert_eq!(c.lookup(&[1, 2, 9, 9]).map(|h| h.len), Some(2));
        assert_eq!(c.hits(), 3);
        assert_eq!(c.misses(), 1);
    }

    #[test]
    fn byte_bound_holds() {
        let cfg = PrefixCacheConfig {
            max_entries: 10,
            max_bytes: 100,
            min_prefix: 1,
        };
        let mut c = PrefixCache::new(cfg);
        let (k, v) = kv(100);
        c.insert(vec![1; 100], k, v);
        assert!(c.is_empty());
        for i in 0..5 {
            let (k, v) = kv(5);
            c.insert(vec![i; 5], k, v);
        }
        assert!(c.bytes() <= 100);
    }
}
