//! Preallocated key/value caches for autoregressive decoding on candle tensors.
//!
//! A decoder keeps, for every layer, the keys and values of all tokens seen so far. The naive
//! way grows them with `Tensor::cat` at every step, which copies the whole cache each token.
//! Here each sequence owns a [`SequenceCache`]: per layer, one key and one value tensor of shape
//! `[kv_heads, capacity, head_dim]`, allocated once, written in place with
//! [`Tensor::slice_set`](candle_core::Tensor::slice_set) and read as a narrowed view.
//!
//! When a sequence reaches its capacity, its [`EvictionStrategy`] decides what happens:
//! - [`EvictionStrategy::None`]: appending fails with [`KvCacheError::Full`];
//! - [`EvictionStrategy::SlidingWindow`]: the oldest tokens are dropped;
//! - [`EvictionStrategy::AttentionSinks`]: the first `sink_tokens` are kept forever and the
//!   oldest of the rest are dropped (StreamingLLM, Xiao et al. 2023, arXiv 2309.17453), so
//!   generation can run past the model's context length;
//! - [`EvictionStrategy::LRU`]: in one sequence's cache, the oldest quarter is dropped (every
//!   entry is read at every step, so the least recently used are the oldest). Given to a
//!   generator as its default configuration, it also makes `max_entries` a [`KvBudget`]: one
//!   memory budget in tokens shared by all its sequences and its [`PrefixCache`], where the
//!   least recently used prefixes are evicted to admit a new sequence
//!   ([`KvCacheConfig::budget`]).
//!
//! Positions are *cache positions*: the token appended next sits at position
//! [`SequenceCache::len`]. When tokens are evicted, the kept keys are shifted to their new
//! positions by a caller-supplied re-rotation (for RoPE models a rotation by `-removed`
//! positions, as llama.cpp's context shift does), so the model never sees a position beyond
//! its capacity. This crate knows nothing of RoPE itself: the model passes the rotation in.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use fluent_ai_candle_kv_cache::{CacheShape, EvictionStrategy, KvCacheConfig, SequenceCache};
//!
//! let shape = CacheShape { layers: 2, kv_heads: 1, head_dim: 4, dtype: DType::F32 };
//! let config = KvCacheConfig::default().max_entries(8).eviction_strategy(EvictionStrategy::None);
//! let mut cache = SequenceCache::new(shape, &config, &Device::Cpu)?;
//! let k = Tensor::ones((1, 3, 4), DType::F32, &Device::Cpu)?;
//! for layer in 0..2 {
//!     let (keys, values) = cache.append(layer, &k, &k)?;
//!     assert_eq!(keys.dims(), &[1, 3, 4]);
//!     assert_eq!(values.dims(), &[1, 3, 4]);
//! }
//! cache.commit(3);
//! assert_eq!(cache.len(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

use candle_core::{DType, Device, Tensor};

mod budget;
mod prefix;
pub use budget::KvBudget;
pub use prefix::{PrefixCache, PrefixCacheConfig, PrefixHit};

/// What went wrong in a cache operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvCacheError {
    /// The cache is full and its eviction strategy is [`EvictionStrategy::None`].
    #[error("KV cache full: {len} tokens cached, {requested} more requested, capacity {capacity} (eviction is off)")]
    Full {
        /// Tokens already cached.
        len: usize,
        /// Tokens asked for.
        requested: usize,
        /// Capacity of the cache.
        capacity: usize,
    },
    /// More tokens were appended at once than the cache can ever hold.
    #[error("{requested} tokens cannot fit a KV cache of capacity {capacity} even after eviction")]
    TooManyTokens {
        /// Tokens asked for.
        requested: usize,
        /// Capacity of the cache.
        capacity: usize,
    },
    /// The configuration is inconsistent (zero capacity, window larger than capacity...).
    #[error("invalid KV cache configuration: {0}")]
    InvalidConfig(String),
    /// A layer index past the number of layers.
    #[error("layer {layer} out of range (cache has {layers} layers)")]
    NoSuchLayer {
        /// The layer asked for.
        layer: usize,
        /// Layers in the cache.
        layers: usize,
    },
    /// A tensor operation failed in candle.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T, E = KvCacheError> = std::result::Result<T, E>;

/// What happens when a sequence's cache is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvictionStrategy {
    /// No eviction: appending past capacity is a [`KvCacheError::Full`] error.
    #[default]
    None,
    /// Drop the oldest tokens, keeping at most `window` (≤ capacity) after eviction.
    SlidingWindow {
        /// Tokens kept after an eviction.
        window: usize,
    },
    /// Keep the first `sink_tokens` forever and a recent window of the rest (StreamingLLM).
    AttentionSinks {
        /// Leading tokens never evicted.
        sink_tokens: usize,
        /// Recent tokens kept after an eviction, besides the sinks.
        window: usize,
    },
    /// The seed's `EvictionStrategy::LRU`: evict the entries used least recently.
    ///
    /// Across sequences (a generator's default configuration, see
    /// [`KvCacheConfig::budget`]): `max_entries` is a [`KvBudget`] shared by every sequence
    /// and every cached prefix, and the least recently used prefixes are evicted when a new
    /// sequence needs their room.
    ///
    /// In one sequence's cache every entry is read at every decode step, so the least
    /// recently used are the oldest: a full cache drops its oldest quarter (a
    /// [`SlidingWindow`](Self::SlidingWindow) keeping `max_entries - max_entries / 4` tokens,
    /// see [`KvCacheConfig::effective_strategy`]).
    #[allow(clippy::upper_case_acronyms)]
    LRU,
}

/// The tokens [`EvictionStrategy::LRU`] keeps when a cache of `max_entries` is full: all but
/// the oldest quarter (at least one evicted, at least one kept).
fn lru_window(max_entries: usize) -> usize {
    (max_entries - max_entries / 4)
        .min(max_entries.saturating_sub(1))
        .max(1)
}

/// Configuration of one sequence's cache, built in the seed's style:
/// `KvCacheConfig::default().max_entries(n).eviction_strategy(EvictionStrategy::...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Capacity in tokens (the cache is allocated to this size once).
    pub max_entries: usize,
    /// What to do when full.
    pub eviction_strategy: EvictionStrategy,
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 2048,
            eviction_strategy: EvictionStrategy::None,
        }
    }
}

impl KvCacheConfig {
    /// Sets the capacity in tokens.
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// Sets the eviction strategy.
    pub fn eviction_strategy(mut self, strategy: EvictionStrategy) -> Self {
        self.eviction_strategy = strategy;
        self
    }

    /// The strategy as the cache runs it: [`EvictionStrategy::LRU`] becomes the sliding
    /// window it amounts to in one sequence's cache (the newest `max_entries - max_entries /
    /// 4` tokens kept, at least one); the others as they are.
    pub fn effective_strategy(&self) -> EvictionStrategy {
        match self.eviction_strategy {
            EvictionStrategy::LRU => EvictionStrategy::SlidingWindow {
                window: lru_window(self.max_entries),
            },
            other => other,
        }
    }

    /// The memory budget this configuration sets when it is a generator's default: with
    /// [`EvictionStrategy::LRU`], `max_entries` tokens shared by all the generator's sequences
    /// and cached prefixes; no budget for the other strategies (each sequence is bounded
    /// alone).
    pub fn budget(&self) -> Option<KvBudget> {
        match self.eviction_strategy {
            EvictionStrategy::LRU => Some(KvBudget::new(self.max_entries)),
            _ => None,
        }
    }

    /// Checks the configuration is consistent.
    pub fn validate(&self) -> Result<()> {
        if self.max_entries == 0 {
            return Err(KvCacheError::InvalidConfig(
                "max_entries must be > 0".into(),
            ));
        }
        match self.eviction_strategy {
            EvictionStrategy::None => Ok(()),
            EvictionStrategy::LRU if self.max_entries < 2 => Err(KvCacheError::InvalidConfig(
                "LRU eviction needs max_entries ≥ 2".into(),
            )),
            EvictionStrategy::LRU => Ok(()),
            EvictionStrategy::SlidingWindow { window } => {
                if window == 0 || window >= self.max_entries {
                    Err(KvCacheError::InvalidConfig(format!(
                        "sliding window {window} must be in 1..{}",
                        self.max_entries
                    )))
                } else {
                    Ok(())
                }
            }
            EvictionStrategy::AttentionSinks {
                sink_tokens,
                window,
            } => {
                if window == 0 || sink_tokens + window >= self.max_entries {
                    Err(KvCacheError::InvalidConfig(format!(
                        "sink_tokens {sink_tokens} + window {window} must be < max_entries {} and window > 0",
                        self.max_entries
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// The shape of a model's cache: what every layer stores per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    /// Number of decoder layers.
    pub layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Element type of the cache.
    pub dtype: DType,
}

impl CacheShape {
    /// Bytes one token takes in the cache across all layers (keys and values).
    pub fn bytes_per_token(&self) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * self.dtype.size_in_bytes()
    }
}

/// A rotation the model applies to cached keys when they move `delta` positions (negative:
/// towards the start). Receives a contiguous `[kv_heads, n, head_dim]` tensor of keys whose
/// positions were `old_start..old_start + n`; returns the rotated keys.
pub type Rerotate<'a> = &'a dyn Fn(&Tensor, usize, isize) -> candle_core::Result<Tensor>;

/// One sequence's cache: per layer, preallocated key and value tensors.
#[derive(Debug)]
pub struct SequenceCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    shape: CacheShape,
    config: KvCacheConfig,
    evicted: usize,
}

impl SequenceCache {
    /// Allocates a cache for `shape` with `config.max_entries` tokens of capacity.
    pub fn new(shape: CacheShape, config: &KvCacheConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut keys = Vec::with_capacity(shape.layers);
        let mut values = Vec::with_capacity(shape.layers);
        let dims = (shape.kv_heads, config.max_entries, shape.head_dim);
        for _ in 0..shape.layers {
            keys.push(Tensor::zeros(dims, shape.dtype, device)?);
            values.push(Tensor::zeros(dims, shape.dtype, device)?);
        }
        Ok(Self {
            keys,
            values,
            len: 0,
            shape,
            config: config.clone(),
            evicted: 0,
        })
    }

    /// Tokens currently cached; also the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in tokens.
    pub fn capacity(&self) -> usize {
        self.config.max_entries
    }

    /// The cache's shape.
    pub fn shape(&self) -> CacheShape {
        self.shape
    }

    /// The configuration this cache was built with.
    pub fn config(&self) -> &KvCacheConfig {
        &self.config
    }

    /// Tokens evicted so far over the sequence's life.
    pub fn evicted(&self) -> usize {
        self.evicted
    }

    /// Bytes allocated by this cache.
    pub fn allocated_bytes(&self) -> usize {
        self.shape.bytes_per_token() * self.config.max_entries
    }

    /// Makes room for `n` new tokens, evicting per the strategy. Call once per step, before the
    /// layers append. `rerotate` moves kept keys to their new positions.
    ///
    /// Returns the number of tokens evicted (0 when there was room).
    pub fn make_room(&mut self, n: usize, rerotate: Rerotate<'_>) -> Result<usize> {
        let capacity = self.config.max_entries;
        if self.len + n <= capacity {
            return Ok(0);
        }
        let (sinks, keep) = match self.config.eviction_strategy {
            EvictionStrategy::None => {
                return Err(KvCacheError::Full {
                    len: self.len,
                    requested: n,
                    capacity,
                })
            }
            EvictionStrategy::SlidingWindow { window } => (0, window),
            EvictionStrategy::AttentionSinks {
                sink_tokens,
                window,
            } => (sink_tokens.min(self.len), window),
            EvictionStrategy::LRU => (0, lru_window(capacity)),
        };
        // Keep at most `keep` recent tokens, fewer if `n` would not fit otherwise.
        let room_for_recent = capacity.saturating_sub(sinks + n);
        let keep = keep.min(room_for_recent).min(self.len - sinks);
        if sinks + keep + n > capacity {
            return Err(KvCacheError::TooManyTokens {
                requested: n,
                capacity,
            });
        }
        let removed = self.len - sinks - keep;
        if removed > 0 && keep > 0 {
            let from = sinks + removed;
            for layer in 0..self.shape.layers {
                // Fresh contiguous storage each time: a view (one KV head, or an identity
                // re-rotation) would share the storage `slice_set` writes into, and
                // `slice_set` only takes contiguous sources (several KV heads).
                let k = self.keys[layer].narrow(1, from, keep)?.contiguous()?;
                let k = rerotate(&k, from, -(removed as isize))?.force_contiguous()?;
                self.keys[layer].slice_set(&k, 1, sinks)?;
                let v = self.values[layer]
                    .narrow(1, from, keep)?
                    .force_contiguous()?;
                self.values[layer].slice_set(&v, 1, sinks)?;
            }
        }
        self.len = sinks + keep;
        self.evicted += removed;
        Ok(removed)
    }

    /// Writes `k` and `v` (`[kv_heads, n, head_dim]`) for `layer` after the cached tokens and
    /// returns views of all keys and values including them (`[kv_heads, len + n, head_dim]`).
    /// The new tokens count once [`commit`](Self::commit) is called after the last layer.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let layers = self.shape.layers;
        if layer >= layers {
            return Err(KvCacheError::NoSuchLayer { layer, layers });
        }
        let n = k.dim(1)?;
        if self.len + n > self.config.max_entries {
            return Err(KvCacheError::Full {
                len: self.len,
                requested: n,
                capacity: self.config.max_entries,
            });
        }
        self.keys[layer].slice_set(&k.contiguous()?, 1, self.len)?;
        self.values[layer].slice_set(&v.contiguous()?, 1, self.len)?;
        let total = self.len + n;
        Ok((
            self.keys[layer].narrow(1, 0, total)?,
            self.values[layer].narrow(1, 0, total)?,
        ))
    }

    /// Marks `n` appended tokens as cached (after every layer appended them).
    pub fn commit(&mut self, n: usize) {
        self.len = (self.len + n).min(self.config.max_entries);
    }

    /// Forgets everything past `len` tokens (for example to roll back a failed step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Views of the cached keys and values of `layer` (`[kv_heads, len, head_dim]`).
    pub fn layer(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        let layers = self.shape.layers;
        if layer >= layers {
            return Err(KvCacheError::NoSuchLayer { layer, layers });
        }
        Ok((
            self.keys[layer].narrow(1, 0, self.len)?,
            self.values[layer].narrow(1, 0, self.len)?,
        ))
    }

    /// Copies the first `len` cached tokens of `other` into this (empty or longer) cache, so a
    /// sequence can start from a cached prefix.
    pub fn copy_prefix_from(
        &mut self,
        keys: &[Tensor],
        values: &[Tensor],
        len: usize,
    ) -> Result<()> {
        if keys.len() != self.shape.layers || values.len() != self.shape.layers {
            return Err(KvCacheError::InvalidConfig(format!(
                "prefix has {} layers, cache has {}",
                keys.len(),
                self.shape.layers
            )));
        }
        if len > self.config.max_entries {
            return Err(KvCacheError::TooManyTokens {
                requested: len,
                capacity: self.config.max_entries,
            });
        }
        for layer in 0..self.shape.layers {
            let k = keys[layer].narrow(1, 0, len)?.contiguous()?;
            let v = values[layer].narrow(1, 0, len)?.contiguous()?;
            self.keys[layer].slice_set(&k, 1, 0)?;
            self.values[layer].slice_set(&v, 1, 0)?;
        }
        self.len = len;
        Ok(())
    }

    /// Snapshot of the first `len` tokens of every layer (owned copies), for a prefix cache.
    pub fn snapshot(&self, len: usize) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let len = len.min(self.len);
        let mut ks = Vec::with_capacity(self.shape.layers);
        let mut vs = Vec::with_capacity(self.shape.layers);
        for layer in 0..self.shape.layers {
            ks.push(self.keys[layer].narrow(1, 0, len)?.copy()?);
            vs.push(self.values[layer].narrow(1, 0, len)?.copy()?);
        }
        Ok((ks, vs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> CacheShape {
        CacheShape {
            layers: 1,
            kv_heads: 1,
            head_dim: 1,
            dtype: DType::F32,
        }
    }

    fn tok(x: f32) -> Tensor {
        Tensor::new(&[[[x]]], &Device::Cpu).unwrap()
    }

    fn contents(c: &SequenceCache) -> Vec<f32> {
        c.layer(0)
            .unwrap()
            .0
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn push(c: &mut SequenceCache, x: f32) -> Result<usize> {
        let ident = |t: &Tensor, _: usize, _: isize| Ok(t.clone());
        let removed = c.make_room(1, &ident)?;
        c.append(0, &tok(x), &tok(x))?;
        c.commit(1);
        Ok(removed)
    }

    #[test]
    fn no_eviction_is_a_typed_error() {
        let cfg = KvCacheConfig::default().max_entries(2);
        let mut c = SequenceCache::new(shape(), &cfg, &Device::Cpu).unwrap();
        push(&mut c, 1.0).unwrap();
        push(&mut c, 2.0).unwrap();
        assert!(matches!(push(&mut c, 3.0), Err(KvCacheError::Full { .. })));
        assert_eq!(contents(&c), vec![1.0, 2.0]);
    }

    /// The seed's `EvictionStrategy::LRU`: a full cache drops its least recently used (the
    /// oldest) quarter, exactly as the sliding window it maps to.
    #[test]
    fn lru_drops_the_oldest_quarter() {
        let cfg = KvCacheConfig::default()
            .max_entries(8)
            .eviction_strategy(EvictionStrategy::LRU);
        cfg.validate().unwrap();
        assert_eq!(
            cfg.effective_strategy(),
            EvictionStrategy::SlidingWindow { window: 6 }
        );
        let mut c = SequenceCache::new(shape(), &cfg, &Device::Cpu).unwrap();
        for i in 0..8 {
            assert_eq!(push(&mut c, i as f32).unwrap(), 0);
        }
        assert_eq!(push(&mut c, 8.0).unwrap(), 2);
        assert_eq!(contents(&c), vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let tiny = KvCacheConfig::default()
            .max_entries(1)
            .eviction_strategy(EvictionStrategy::LRU);
        assert!(tiny.validate().is_err());
    }

    #[test]
    fn sliding_window_keeps_recent() {
        let cfg = KvCacheConfig::default()
            .max_entries(4)
            .eviction_strategy(EvictionStrategy::SlidingWindow { window: 2 });
        let mut c = SequenceCache::new(shape(), &cfg, &Device::Cpu).unwrap();
        for i in 0..4 {
            push(&mut c, i as f32).unwrap();
        }
        assert_eq!(push(&mut c, 4.0).unwrap(), 2);
        assert_eq!(contents(&c), vec![2.0, 3.0, 4.0]);
    }

    #[test]
    fn sinks_are_kept_and_keys_rerotated() {
        let cfg = KvCacheConfig::default().max_entries(5).eviction_strategy(
            EvictionStrategy::AttentionSinks {
                sink_tokens: 1,
                window: 2,
            },
        );
        let mut c = SequenceCache::new(shape(), &cfg, &Device::Cpu).unwrap();
        for i in 0..5 {
            push(&mut c, i as f32).unwrap();
        }
        // A "rotation" that adds the shift, so the test sees it was applied to keys only.
        let shift = |t: &Tensor, _: usize, d: isize| t.affine(1.0, d as f64);
        assert_eq!(c.make_room(1, &shift).unwrap(), 2);
        assert_eq!(contents(&c), vec![0.0, 1.0, 2.0]);
        let v: Vec<f32> = c
            .layer(0)
            .unwrap()
            .1
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, vec![0.0, 3.0, 4.0]);
        assert_eq!(c.len(), 3);
        assert_eq!(c.evicted(), 2);
    }

    #[test]
    fn eviction_with_several_kv_heads() {
        // Two heads make the kept range a strided view: the path CI caught on a real model.
        let shape = CacheShape {
            layers: 1,
            kv_heads: 2,
            head_dim: 1,
            dtype: DType::F32,
        };
        let cfg = KvCacheConfig::default().max_entries(4).eviction_strategy(
            EvictionStrategy::AttentionSinks {
                sink_tokens: 1,
                window: 2,
            },
        );
        let mut c = SequenceCache::new(shape, &cfg, &Device::Cpu).unwrap();
        let ident = |t: &Tensor, _: usize, _: isize| Ok(t.clone());
        for i in 0..5 {
            c.make_room(1, &ident).unwrap();
            let x = i as f32;
            let t = Tensor::new(&[[[x]], [[x + 10.0]]], &Device::Cpu).unwrap();
            c.append(0, &t, &t).unwrap();
            c.commit(1);
        }
        let k: Vec<Vec<f32>> = c.layer(0).unwrap().0.squeeze(2).unwrap().to_vec2().unwrap();
        assert_eq!(
            k,
            vec![vec![0.0, 2.0, 3.0, 4.0], vec![10.0, 12.0, 13.0, 14.0]]
        );
    }

    #[test]
    fn bad_configs_are_rejected() {
        let bad = [
            KvCacheConfig::default().max_entries(0),
            KvCacheConfig::default()
                .max_entries(4)
                .eviction_strategy(EvictionStrategy::SlidingWindow { window: 4 }),
            KvCacheConfig::default().max_entries(4).eviction_strategy(
                EvictionStrategy::AttentionSinks {
                    sink_tokens: 2,
                    window: 2,
                },
            ),
        ];
        for cfg in bad {
            assert!(SequenceCache::new(shape(), &cfg, &Device::Cpu).is_err());
        }
    }
}
