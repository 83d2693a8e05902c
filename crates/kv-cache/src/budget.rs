//! One KV memory budget, in tokens, shared by every sequence of a scheduler and its prefix
//! cache: the seed's `EvictionStrategy::LRU` across sequences.
//!
//! Every token a [`SequenceCache`](crate::SequenceCache) is allocated for, and every token of
//! a prefix the [`PrefixCache`] holds, takes one token of the budget (a sequence started from
//! a cached prefix holds its own copy, so the two are counted apart). A sequence reserves its
//! whole cache when it is admitted, so a running sequence never needs more: what gives way
//! when the budget is full are the cached prefixes, least recently used first. A sequence
//! that does not fit even with no prefix left is not admitted (its caller keeps it waiting
//! until a running sequence ends and frees its share).

use crate::PrefixCache;

/// A KV memory budget in tokens (see the [module](self) documentation).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use fluent_ai_candle_kv_cache::{KvBudget, PrefixCache, PrefixCacheConfig};
///
/// let budget = KvBudget::new(10);
/// let mut prefixes = PrefixCache::new(PrefixCacheConfig { min_prefix: 1, ..Default::default() });
/// let kv = |n: usize| vec![Tensor::zeros((1, n, 2), DType::F32, &Device::Cpu).unwrap()];
/// prefixes.insert(vec![1, 2, 3, 4], kv(4), kv(4));
/// // 4 tokens of live sequences and 4 of prefixes: a sequence of 2 fits as they are.
/// assert!(budget.admit(4, 2, Some(&mut prefixes)));
/// assert_eq!(prefixes.len(), 1);
/// // A sequence of 3 needs the prefix's room: the prefix is evicted.
/// assert!(budget.admit(4, 3, Some(&mut prefixes)));
/// assert!(prefixes.is_empty());
/// // A sequence of 7 does not fit beside 4 live tokens at all.
/// assert!(!budget.admit(4, 7, Some(&mut prefixes)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBudget {
    max_tokens: usize,
}

impl KvBudget {
    /// A budget of `max_tokens` tokens.
    pub fn new(max_tokens: usize) -> Self {
        Self { max_tokens }
    }

    /// The budget in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Whether a new sequence whose cache holds `tokens` fits beside live sequences holding
    /// `in_use` tokens. When it does, the least recently used prefixes of `prefixes` are
    /// evicted until sequences and prefixes together fit the budget, and `true` is returned;
    /// when it does not even with every prefix gone, nothing is evicted and `false` is
    /// returned.
    pub fn admit(&self, in_use: usize, tokens: usize, prefixes: Option<&mut PrefixCache>) -> bool {
        let Some(left) = self
            .max_tokens
            .checked_sub(in_use)
            .and_then(|l| l.checked_sub(tokens))
        else {
            return false;
        };
        if let Some(p) = prefixes {
            p.evict_to_tokens(left);
        }
        true
    }

    /// Evicts the least recently used prefixes until they fit beside live sequences holding
    /// `in_use` tokens (after a prefix was inserted); returns the number evicted.
    pub fn trim(&self, in_use: usize, prefixes: &mut PrefixCache) -> usize {
        prefixes.evict_to_tokens(self.max_tokens.saturating_sub(in_use))
    }

    /// Tokens in use: live sequences' `in_use` plus the prefixes'.
    pub fn used(&self, in_use: usize, prefixes: Option<&PrefixCache>) -> usize {
        in_use + prefixes.map_or(0, PrefixCache::tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrefixCacheConfig;
    use candle_core::{DType, Device, Tensor};

    fn cache() -> PrefixCache {
        PrefixCache::new(PrefixCacheConfig {
            max_entries: 16,
            max_bytes: 1 << 20,
            min_prefix: 1,
        })
    }

    fn insert(c: &mut PrefixCache, first: u32, n: usize) {
        let t = Tensor::zeros((1, n, 2), DType::F32, &Device::Cpu).unwrap();
        c.insert(
            (first..first + n as u32).collect(),
            vec![t.clone()],
            vec![t],
        );
    }

    /// A full budget evicts the least recently used prefix first: a lookup refreshes an
    /// entry, so the one neither inserted nor used last goes.
    #[test]
    fn full_budget_evicts_the_least_recently_used_prefix() {
        let budget = KvBudget::new(20);
        let mut c = cache();
        insert(&mut c, 100, 5); // A
        insert(&mut c, 200, 5); // B
        insert(&mut c, 300, 5); // C
                                // A is used again: B is now the least recently used.
        assert_eq!(c.lookup(&[100, 101, 102, 103, 104, 9]).unwrap().len, 5);
        assert_eq!(budget.used(0, Some(&c)), 15);
        // 15 tokens of prefixes + 5 of a sequence = 20: nothing to evict.
        assert!(budget.admit(0, 5, Some(&mut c)));
        assert_eq!(c.len(), 3);
        // 6 more tokens: one prefix must go, and it is B.
        assert!(budget.admit(0, 6, Some(&mut c)));
        assert_eq!(c.len(), 2);
        assert_eq!(c.evictions(), 1);
        assert!(c.lookup(&[200, 201, 202, 203, 204, 9]).is_none());
        assert!(c.lookup(&[300, 301, 302, 303, 304, 9]).is_some());
        // Live sequences count too: with 12 tokens in use, 3 more leave room for 5 of
        // prefixes, so the least recently used of A and C goes: A (C was looked up since).
        assert!(budget.admit(12, 3, Some(&mut c)));
        assert_eq!(c.prefixes(), vec![&[300, 301, 302, 303, 304][..]]);
        assert_eq!(c.evictions(), 2);
    }

    /// A prefix the new sequence is about to use, touched first, is evicted last.
    #[test]
    fn a_touched_prefix_outlives_the_others() {
        let budget = KvBudget::new(16);
        let mut c = cache();
        insert(&mut c, 10, 4);
        insert(&mut c, 20, 4);
        assert!(c.touch(&[10, 11, 12, 13, 99]));
        assert!(!c.touch(&[7, 7]));
        assert!(budget.admit(4, 8, Some(&mut c)));
        assert_eq!(c.prefixes(), vec![&[10, 11, 12, 13][..]]);
        // Touching counts no lookup.
        assert_eq!((c.hits(), c.misses()), (0, 0));
    }

    /// A sequence that cannot fit even with every prefix gone is refused, and refusing it
    /// evicts nothing.
    #[test]
    fn a_sequence_that_cannot_fit_evicts_nothing() {
        let budget = KvBudget::new(10);
        let mut c = cache();
        insert(&mut c, 1, 4);
        assert!(!budget.admit(8, 3, Some(&mut c)));
        assert!(!budget.admit(0, 11, Some(&mut c)));
        assert!(!budget.admit(usize::MAX, 1, Some(&mut c)));
        assert_eq!(c.len(), 1);
        assert!(budget.admit(6, 4, None));
        assert!(budget.admit(6, 4, Some(&mut c)));
        assert!(c.is_empty());
    }

    /// After an insertion, prefixes are trimmed to what live sequences leave, the newest
    /// (just inserted) last.
    #[test]
    fn trim_keeps_the_most_recent_prefixes() {
        let budget = KvBudget::new(12);
        let mut c = cache();
        insert(&mut c, 10, 4);
        insert(&mut c, 20, 4);
        insert(&mut c, 30, 4);
        assert_eq!(budget.trim(4, &mut c), 1);
        assert_eq!(
            c.prefixes(),
            vec![&[20, 21, 22, 23][..], &[30, 31, 32, 33][..]]
        );
        assert_eq!(budget.trim(12, &mut c), 2);
        assert!(c.is_empty());
    }
}
