//! [`Decoder`]: the one interface every decoder implements — ours ([`Llama`], [`Gemma`],
//! [`Phi2`], [`DeepSeek`], each in its own file) and a [plugin](crate::plugin)'s — held as a
//! `Box<dyn Decoder>` per loaded model; [`load`] and [`load_with`] pick the implementation by
//! `general.architecture`.

use std::any::Any;

use candle_core::{Device, Tensor};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};

use crate::config::ModelConfig;
use crate::deepseek::DeepSeek;
use crate::gemma::Gemma;
use crate::gguf::GgufFile;
use crate::llama::{Llama, LoadProgress};
use crate::phi2::Phi2;
use crate::plugin::ArchitecturePlugin;
use crate::{ModelError, Result};

/// A decoder the engine can run: hyper-parameters, a KV cache layout, and the forward passes
/// of one sequence and of one batched decode step. Implemented by [`Llama`], [`Gemma`],
/// [`Phi2`] and [`DeepSeek`]; implement it for a decoder of your own and return it from an
/// [`ArchitecturePlugin`] (see [`plugin`](crate::plugin) for an example).
///
/// Only [`config`](Decoder::config), [`device`](Decoder::device),
/// [`cache_shape`](Decoder::cache_shape) and [`forward`](Decoder::forward) are required;
/// [`new_cache`](Decoder::new_cache), [`forward_batch`](Decoder::forward_batch) and
/// [`use_candle_attention`](Decoder::use_candle_attention) have defaults built on them, and
/// [`hidden_states`](Decoder::hidden_states) (for embeddings) defaults to a typed
/// "not supported" error.
///
/// A loaded decoder is a `Box<dyn Decoder>`; [`downcast_ref`](trait.Decoder.html#method.downcast_ref)
/// and [`downcast_mut`](trait.Decoder.html#method.downcast_mut) reach the concrete type (e.g.
/// [`Llama::set_kv_dtype`]).
pub trait Decoder: Any + Send + Sync + std::fmt::Debug {
    /// The model's hyper-parameters (`context_length` bounds the caches of
    /// [`new_cache`](Decoder::new_cache), `vocab_size` is the width of the logits).
    fn config(&self) -> &ModelConfig;

    /// The device the weights live on.
    fn device(&self) -> &Device;

    /// What one token occupies in a KV cache of this model.
    fn cache_shape(&self) -> CacheShape;

    /// A new, empty cache for one sequence. Its capacity may not exceed the context length
    /// ([`ModelError::ContextOverflow`]). The default allocates a cache of
    /// [`cache_shape`](Decoder::cache_shape) on [`device`](Decoder::device).
    fn new_cache(&self, config: &KvCacheConfig) -> Result<SequenceCache> {
        crate::step::new_cache(
            self.config().context_length,
            self.cache_shape(),
            config,
            self.device(),
        )
    }

    /// Runs `tokens` of one sequence after what `cache` holds, appending their keys and values
    /// (and committing them). Returns logits `[vocab]` of the last position, or
    /// `[tokens.len(), vocab]` when `all_logits` is set. On error the cache should be left as
    /// it was.
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> Result<Tensor>;

    /// The final hidden states of `tokens` run after what `cache` holds: one row per token,
    /// after the final norm and before the output projection (`[tokens.len(), hidden]`,
    /// f32) — what embeddings are pooled from. The tokens' keys and values are appended to
    /// `cache` as [`forward`](Decoder::forward) appends them, so a text is embedded alone in a
    /// fresh cache (and in chunks by calling again with the same cache). The default is
    /// [`ModelError::UnsupportedOperation`]: a decoder that does not expose its hidden states
    /// ([`Llama`], [`Gemma`] and [`Phi2`] do).
    fn hidden_states(&self, tokens: &[u32], cache: &mut SequenceCache) -> Result<Tensor> {
        let _ = (tokens, cache);
        Err(ModelError::UnsupportedOperation {
            architecture: self.config().architecture.clone(),
            operation: "hidden states (embeddings)",
        })
    }

    /// One decode step for several sequences at once (`tokens[i]` continues `caches[i]`).
    /// Returns logits `[batch, vocab]`. The default runs [`forward`](Decoder::forward) once
    /// per sequence and stacks the logits; on an error, the caches already advanced are
    /// truncated back to their length before the call.
    fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut SequenceCache]) -> Result<Tensor> {
        crate::step::check_batch(tokens, caches)?;
        let starts: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let mut rows = Vec::with_capacity(tokens.len());
        for (i, (&t, cache)) in tokens.iter().zip(caches.iter_mut()).enumerate() {
            match self.forward(&[t], cache, false) {
                Ok(logits) => rows.push(logits),
                Err(e) => {
                    for (c, &s) in caches.iter_mut().zip(&starts).take(i) {
                        c.truncate(s);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// Switches attention to candle's f32 op chain (matmul → softmax → matmul over an f32
    /// cache), the reference path `FLUENT_AI_CANDLE_ATTENTION=candle` selects at load. Call it
    /// before creating caches. The default does nothing: a decoder without a separate kernel
    /// path already runs its only one ([`Llama`] overrides it).
    fn use_candle_attention(&mut self) -> Result<()> {
        Ok(())
    }
}

impl dyn Decoder {
    /// The concrete decoder inside, if it is a `T` (e.g. `decoder.downcast_ref::<Llama>()`).
    pub fn downcast_ref<T: Decoder>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref()
    }

    /// The concrete decoder inside, mutably, if it is a `T`.
    pub fn downcast_mut<T: Decoder>(&mut self) -> Option<&mut T> {
        (self as &mut dyn Any).downcast_mut()
    }
}

/// A concrete decoder boxed as the trait object, so functions taking
/// `impl Into<Box<dyn Decoder>>` accept a [`Llama`] as well as a loaded `Box<dyn Decoder>`.
impl<D: Decoder> From<D> for Box<dyn Decoder> {
    fn from(decoder: D) -> Self {
        Box::new(decoder)
    }
}

/// Loads the decoder that `general.architecture` names; an architecture this crate does not
/// implement is [`ModelError::UnsupportedArchitecture`]. The same as [`load_with`] without
/// plugins.
pub fn load(
    gguf: &mut GgufFile,
    device: &Device,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Box<dyn Decoder>> {
    load_with(gguf, device, progress, &[])
}

/// Loads the decoder that `general.architecture` names: by the first of `plugins` whose
/// [`architecture`](ArchitecturePlugin::architecture) it is, otherwise by this crate's own
/// decoders. An architecture neither handles is [`ModelError::UnsupportedArchitecture`].
pub fn load_with(
    gguf: &mut GgufFile,
    device: &Device,
    progress: &mut dyn FnMut(LoadProgress),
    plugins: &[&dyn ArchitecturePlugin],
) -> Result<Box<dyn Decoder>> {
    let arch = gguf.architecture()?;
    if let Some(plugin) = plugins.iter().find(|p| p.architecture() == arch) {
        return plugin.load(gguf, device, progress);
    }
    match arch.as_str() {
        a if crate::llama::ARCHITECTURES.contains(&a) => {
            Ok(Box::new(Llama::load(gguf, device, progress)?))
        }
        a if crate::gemma::ARCHITECTURES.contains(&a) => {
            Ok(Box::new(Gemma::load(gguf, device, progress)?))
        }
        crate::phi2::ARCHITECTURE => Ok(Box::new(Phi2::load(gguf, device, progress)?)),
        crate::deepseek::ARCHITECTURE => Ok(Box::new(DeepSeek::load(gguf, device, progress)?)),
        other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
    }
}
