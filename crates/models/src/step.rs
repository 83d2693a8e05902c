//! The per-step cache bookkeeping every decoder shares: cache allocation bounded by the
//! context, argument checks, eviction before a step, commit on success and roll-back on
//! failure (so a failed step loses nothing already cached). Each decoder supplies only its
//! layer stack (and its own re-rotation for eviction).

use candle_core::{Device, Tensor};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};

use crate::{ModelError, Result};

/// A new, empty cache of `shape` on `device`; its capacity may not exceed `context_length`.
pub(crate) fn new_cache(
    context_length: usize,
    shape: CacheShape,
    config: &KvCacheConfig,
    device: &Device,
) -> Result<SequenceCache> {
    if config.max_entries > context_length {
        return Err(ModelError::ContextOverflow {
            prompt_tokens: config.max_entries,
            context_length,
        });
    }
    Ok(SequenceCache::new(shape, config, device)?)
}

/// One step of `tokens.len()` tokens for one sequence: checks the count, makes room, runs
/// `run(cache, start)` (`start`: the cache length before the step), then commits the tokens
/// or truncates the cache back.
pub(crate) fn single(
    tokens: &[u32],
    cache: &mut SequenceCache,
    make_room: impl FnOnce(&mut SequenceCache) -> Result<()>,
    run: impl FnOnce(&mut SequenceCache, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let n = tokens.len();
    if n == 0 {
        return Err(ModelError::Tokenizer("no tokens to run".into()));
    }
    if n > cache.capacity() {
        return Err(ModelError::ContextOverflow {
            prompt_tokens: n,
            context_length: cache.capacity(),
        });
    }
    make_room(cache)?;
    let start = cache.len();
    match run(cache, start) {
        Ok(logits) => {
            cache.commit(n);
            Ok(logits)
        }
        Err(e) => {
            cache.truncate(start);
            Err(e)
        }
    }
}

/// The batch and the caches match one to one and are not empty.
pub(crate) fn check_batch(tokens: &[u32], caches: &[&mut SequenceCache]) -> Result<()> {
    if tokens.is_empty() || tokens.len() != caches.len() {
        return Err(ModelError::Tokenizer(format!(
            "batch of {} tokens for {} caches",
            tokens.len(),
            caches.len()
        )));
    }
    Ok(())
}

/// One decode token for each of several sequences: makes room in every cache, runs
/// `run(caches, starts)` (`starts[i]`: cache `i`'s length, the new token's position), then
/// commits one token per cache or truncates every cache back.
pub(crate) fn batch(
    caches: &mut [&mut SequenceCache],
    mut make_room: impl FnMut(&mut SequenceCache) -> Result<()>,
    run: impl FnOnce(&mut [&mut SequenceCache], &[usize]) -> Result<Tensor>,
) -> Result<Tensor> {
    for cache in caches.iter_mut() {
        make_room(cache)?;
    }
    let starts: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    match run(caches, &starts) {
        Ok(logits) => {
            for cache in caches.iter_mut() {
                cache.commit(1);
            }
            Ok(logits)
        }
        Err(e) => {
            for (cache, s) in caches.iter_mut().zip(starts) {
                cache.truncate(s);
            }
            Err(e)
        }
    }
}
