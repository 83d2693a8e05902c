//! Adding an architecture without forking this crate: implement [`DecoderModel`] for the
//! decoder and [`ArchitecturePlugin`] for its loader, then load through
//! [`Decoder::load_with`](crate::Decoder::load_with) (or
//! [`LoadedModel::load_with`](crate::LoadedModel::load_with)) with the plugin in the list. A
//! plugin is chosen by the `general.architecture` of the file, before the built-in decoders,
//! so a plugin may also replace a built-in architecture.
//!
//! Nothing on a plugin's path checks the architecture against this crate's supported list: a
//! plugin builds its [`ModelConfig`] itself, field by field (the fields are public) or with
//! [`ModelConfig::from_gguf_unchecked`] when its keys have the common names. An architecture
//! that is a llama-family one under another name can reuse [`Llama`] through
//! [`Llama::load_variant`].

use candle_core::{Device, Tensor};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};

use crate::config::ModelConfig;
use crate::gemma3::Gemma3;
use crate::gguf::GgufFile;
use crate::llama::{Llama, LoadProgress};
use crate::Result;

/// A decoder the engine can run: the methods of [`Decoder`](crate::Decoder), with the same
/// signatures and contracts. Implemented by [`Llama`], [`Gemma3`] and [`DeepSeek`](crate::DeepSeek); implement it for a
/// decoder of your own and return it from an [`ArchitecturePlugin`].
///
/// Only [`config`](DecoderModel::config), [`device`](DecoderModel::device),
/// [`cache_shape`](DecoderModel::cache_shape) and [`forward`](DecoderModel::forward) are
/// required; [`new_cache`](DecoderModel::new_cache) and
/// [`forward_batch`](DecoderModel::forward_batch) have defaults built on them.
///
/// A skeleton (a "decoder" that ignores its input and returns fixed logits):
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};
/// use fluent_ai_candle_models::plugin::{ArchitecturePlugin, DecoderModel};
/// use fluent_ai_candle_models::{Decoder, GgufFile, LoadProgress, ModelConfig, Result};
///
/// #[derive(Debug)]
/// struct Toy {
///     config: ModelConfig,
///     device: Device,
/// }
///
/// impl DecoderModel for Toy {
///     fn config(&self) -> &ModelConfig {
///         &self.config
///     }
///     fn device(&self) -> &Device {
///         &self.device
///     }
///     fn cache_shape(&self) -> CacheShape {
///         let c = &self.config;
///         CacheShape { layers: c.n_layers, kv_heads: c.n_kv_heads, head_dim: c.head_dim, dtype: DType::F32 }
///     }
///     fn forward(&self, tokens: &[u32], cache: &mut SequenceCache, all_logits: bool) -> Result<Tensor> {
///         // A real decoder appends each layer's keys and values with `cache.append`, then
///         // commits the tokens once they all ran.
///         cache.make_room(tokens.len(), &|k: &Tensor, _, _| Ok(k.clone()))?;
///         cache.commit(tokens.len());
///         let rows = if all_logits { tokens.len() } else { 1 };
///         let logits = Tensor::ones((rows, self.config.vocab_size), DType::F32, &self.device)?;
///         Ok(if all_logits { logits } else { logits.squeeze(0)? })
///     }
/// }
///
/// struct ToyPlugin;
///
/// impl ArchitecturePlugin for ToyPlugin {
///     fn architecture(&self) -> &str {
///         "toy"
///     }
///     fn load(
///         &self,
///         gguf: &mut GgufFile,
///         device: &Device,
///         progress: &mut dyn FnMut(LoadProgress),
///     ) -> Result<Box<dyn DecoderModel>> {
///         // Read the hyper-parameters (and the weights, reporting progress) from `gguf`.
///         let config = ModelConfig::from_gguf_unchecked(gguf)?;
///         progress(LoadProgress { loaded: 0, total: 0 });
///         Ok(Box::new(Toy { config, device: device.clone() }))
///     }
/// }
///
/// // Without a file at hand, the decoder directly:
/// let config = ModelConfig {
///     architecture: "toy".into(),
///     vocab_size: 8,
///     context_length: 16,
///     hidden_size: 4,
///     n_layers: 1,
///     n_heads: 1,
///     n_kv_heads: 1,
///     head_dim: 4,
///     ffn_size: 8,
///     rms_eps: 1e-5,
///     rope_theta: 10_000.0,
/// };
/// let model = Decoder::Custom(Box::new(Toy { config, device: Device::Cpu }));
/// let mut cache = model.new_cache(&KvCacheConfig::default().max_entries(16))?;
/// let logits = model.forward(&[1, 2, 3], &mut cache, false)?;
/// assert_eq!(logits.dims(), &[8]);
/// assert_eq!(cache.len(), 3);
/// // With a file: `Decoder::load_with(&mut gguf, &Device::Cpu, &mut |_| {}, &[&ToyPlugin])`.
/// # Ok::<(), fluent_ai_candle_models::ModelError>(())
/// ```
pub trait DecoderModel: Send + Sync + std::fmt::Debug {
    /// The model's hyper-parameters (`context_length` bounds the caches of
    /// [`new_cache`](DecoderModel::new_cache), `vocab_size` is the width of the logits).
    fn config(&self) -> &ModelConfig;

    /// The device the weights live on.
    fn device(&self) -> &Device;

    /// What one token occupies in a KV cache of this model.
    fn cache_shape(&self) -> CacheShape;

    /// A new, empty cache for one sequence. Its capacity may not exceed the context length
    /// ([`ModelError::ContextOverflow`](crate::ModelError::ContextOverflow)). The default allocates a cache of
    /// [`cache_shape`](DecoderModel::cache_shape) on [`device`](DecoderModel::device).
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

    /// One decode step for several sequences at once (`tokens[i]` continues `caches[i]`).
    /// Returns logits `[batch, vocab]`. The default runs [`forward`](DecoderModel::forward)
    /// once per sequence and stacks the logits; on an error, the caches already advanced are
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
}

/// Loads the decoder of one GGUF architecture. Give plugins to
/// [`Decoder::load_with`](crate::Decoder::load_with) or
/// [`LoadedModel::load_with`](crate::LoadedModel::load_with); see [`DecoderModel`] for an
/// example.
pub trait ArchitecturePlugin: Send + Sync {
    /// The `general.architecture` this plugin loads, e.g. `"phi2"`.
    fn architecture(&self) -> &str;

    /// Loads the decoder from `gguf` onto `device`, calling `progress` as tensors are read.
    /// Only called for files whose `general.architecture` is
    /// [`architecture`](ArchitecturePlugin::architecture).
    fn load(
        &self,
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Box<dyn DecoderModel>>;
}

impl DecoderModel for Llama {
    fn config(&self) -> &ModelConfig {
        Llama::config(self)
    }

    fn device(&self) -> &Device {
        Llama::device(self)
    }

    fn cache_shape(&self) -> CacheShape {
        Llama::cache_shape(self)
    }

    fn new_cache(&self, config: &KvCacheConfig) -> Result<SequenceCache> {
        Llama::new_cache(self, config)
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        Llama::forward(self, tokens, cache, all_logits)
    }

    fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut SequenceCache]) -> Result<Tensor> {
        Llama::forward_batch(self, tokens, caches)
    }
}

impl DecoderModel for Gemma3 {
    fn config(&self) -> &ModelConfig {
        Gemma3::config(self)
    }

    fn device(&self) -> &Device {
        Gemma3::device(self)
    }

    fn cache_shape(&self) -> CacheShape {
        Gemma3::cache_shape(self)
    }

    fn new_cache(&self, config: &KvCacheConfig) -> Result<SequenceCache> {
        Gemma3::new_cache(self, config)
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        Gemma3::forward(self, tokens, cache, all_logits)
    }

    fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut SequenceCache]) -> Result<Tensor> {
        Gemma3::forward_batch(self, tokens, caches)
    }
}
