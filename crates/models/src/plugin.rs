//! Adding an architecture without forking this crate: implement [`Decoder`] for the
//! decoder and [`ArchitecturePlugin`] for its loader, then load through
//! [`decoder::load_with`](crate::decoder::load_with) (or
//! [`LoadedModel::load_with`](crate::LoadedModel::load_with)) with the plugin in the list. A
//! plugin is chosen by the `general.architecture` of the file, before the built-in decoders,
//! so a plugin may also replace a built-in architecture.
//!
//! Nothing on a plugin's path checks the architecture against this crate's supported list: a
//! plugin builds its [`ModelConfig`](crate::ModelConfig) itself, field by field (the fields
//! are public) or with [`ModelConfig::from_gguf_unchecked`](crate::ModelConfig::from_gguf_unchecked)
//! when its keys have the common names. An architecture that is a llama-family one under
//! another name can reuse [`Llama`](crate::Llama) through
//! [`Llama::load_variant`](crate::Llama::load_variant).

use candle_core::Device;

use crate::decoder::Decoder;
use crate::gguf::GgufFile;
use crate::llama::LoadProgress;
use crate::Result;

/// Loads the decoder of one GGUF architecture. Give plugins to
/// [`decoder::load_with`](crate::decoder::load_with) or
/// [`LoadedModel::load_with`](crate::LoadedModel::load_with).
///
/// A skeleton (a "decoder" that ignores its input and returns fixed logits):
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};
/// use fluent_ai_candle_models::plugin::ArchitecturePlugin;
/// use fluent_ai_candle_models::{Decoder, GgufFile, LoadProgress, ModelConfig, Result};
///
/// #[derive(Debug)]
/// struct Toy {
///     config: ModelConfig,
///     device: Device,
/// }
///
/// impl Decoder for Toy {
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
///     ) -> Result<Box<dyn Decoder>> {
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
/// let model: Box<dyn Decoder> = Box::new(Toy { config, device: Device::Cpu });
/// let mut cache = model.new_cache(&KvCacheConfig::default().max_entries(16))?;
/// let logits = model.forward(&[1, 2, 3], &mut cache, false)?;
/// assert_eq!(logits.dims(), &[8]);
/// assert_eq!(cache.len(), 3);
/// // With a file:
/// // `fluent_ai_candle_models::decoder::load_with(&mut gguf, &Device::Cpu, &mut |_| {}, &[&ToyPlugin])`.
/// # Ok::<(), fluent_ai_candle_models::ModelError>(())
/// ```
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
    ) -> Result<Box<dyn Decoder>>;
}
