//! [`Decoder`]: any of our decoders, or a [plugin](crate::plugin)'s, behind one type, chosen
//! by `general.architecture`.

use candle_core::{Device, Tensor};
use fluent_ai_candle_kv_cache::{CacheShape, KvCacheConfig, SequenceCache};

use crate::config::ModelConfig;
use crate::deepseek::DeepSeek;
use crate::gemma3::Gemma3;
use crate::gguf::GgufFile;
use crate::llama::{Llama, LoadProgress};
use crate::plugin::{ArchitecturePlugin, DecoderModel};
use crate::{ModelError, Result};

/// One of the decoders this crate implements, or one a plugin loaded. Every method forwards to
/// the decoder inside, with the same signature as on [`Llama`], [`Gemma3`], [`DeepSeek`] and
/// [`DecoderModel`].
#[derive(Debug)]
pub enum Decoder {
    /// A llama-family decoder: llama (SmolLM2, TinyLlama, Llama 2/3...), mistral, qwen2,
    /// qwen3, phi3.
    Llama(Llama),
    /// A Gemma 3 decoder.
    Gemma3(Gemma3),
    /// A DeepSeek-V3 decoder (`deepseek2`: DeepSeek-V2/V3, Kimi K2).
    DeepSeek(DeepSeek),
    /// A decoder loaded by an [`ArchitecturePlugin`] (or built by hand).
    Custom(Box<dyn DecoderModel>),
}

impl From<Box<dyn DecoderModel>> for Decoder {
    fn from(m: Box<dyn DecoderModel>) -> Self {
        Self::Custom(m)
    }
}

impl From<Llama> for Decoder {
    fn from(m: Llama) -> Self {
        Self::Llama(m)
    }
}

impl From<Gemma3> for Decoder {
    fn from(m: Gemma3) -> Self {
        Self::Gemma3(m)
    }
}

impl From<DeepSeek> for Decoder {
    fn from(m: DeepSeek) -> Self {
        Self::DeepSeek(m)
    }
}

impl Decoder {
    /// Loads the decoder that `general.architecture` names; an architecture this crate does not
    /// implement is [`ModelError::UnsupportedArchitecture`]. The same as
    /// [`Decoder::load_with`] without plugins.
    pub fn load(
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        Self::load_with(gguf, device, progress, &[])
    }

    /// Loads the decoder that `general.architecture` names: by the first of `plugins` whose
    /// [`architecture`](ArchitecturePlugin::architecture) it is (as [`Decoder::Custom`]),
    /// otherwise by this crate's own decoders. An architecture neither handles is
    /// [`ModelError::UnsupportedArchitecture`].
    pub fn load_with(
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
        plugins: &[&dyn ArchitecturePlugin],
    ) -> Result<Self> {
        let arch = gguf.architecture()?;
        if let Some(plugin) = plugins.iter().find(|p| p.architecture() == arch) {
            return Ok(Self::Custom(plugin.load(gguf, device, progress)?));
        }
        match arch.as_str() {
            a if crate::llama::ARCHITECTURES.contains(&a) => {
                Ok(Self::Llama(Llama::load(gguf, device, progress)?))
            }
            crate::gemma3::ARCHITECTURE => Ok(Self::Gemma3(Gemma3::load(gguf, device, progress)?)),
            crate::deepseek::ARCHITECTURE => {
                Ok(Self::DeepSeek(DeepSeek::load(gguf, device, progress)?))
            }
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Llama(m) => m.config(),
            Self::Gemma3(m) => m.config(),
            Self::DeepSeek(m) => m.config(),
            Self::Custom(m) => m.config(),
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        match self {
            Self::Llama(m) => m.device(),
            Self::Gemma3(m) => m.device(),
            Self::DeepSeek(m) => m.device(),
            Self::Custom(m) => m.device(),
        }
    }

    /// What one token occupies in a KV cache of this model.
    pub fn cache_shape(&self) -> CacheShape {
        match self {
            Self::Llama(m) => m.cache_shape(),
            Self::Gemma3(m) => m.cache_shape(),
            Self::DeepSeek(m) => m.cache_shape(),
            Self::Custom(m) => m.cache_shape(),
        }
    }

    /// A new, empty cache for one sequence. Its capacity may not exceed the context length.
    pub fn new_cache(&self, config: &KvCacheConfig) -> Result<SequenceCache> {
        match self {
            Self::Llama(m) => m.new_cache(config),
            Self::Gemma3(m) => m.new_cache(config),
            Self::DeepSeek(m) => m.new_cache(config),
            Self::Custom(m) => m.new_cache(config),
        }
    }

    /// Runs `tokens` of one sequence after what `cache` holds, appending their keys and values.
    /// Returns logits `[vocab]` of the last position, or `[tokens.len(), vocab]` when
    /// `all_logits` is set.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        match self {
            Self::Llama(m) => m.forward(tokens, cache, all_logits),
            Self::Gemma3(m) => m.forward(tokens, cache, all_logits),
            Self::DeepSeek(m) => m.forward(tokens, cache, all_logits),
            Self::Custom(m) => m.forward(tokens, cache, all_logits),
        }
    }

    /// One decode step for several sequences at once (`tokens[i]` continues `caches[i]`).
    /// Returns logits `[batch, vocab]`.
    pub fn forward_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut SequenceCache],
    ) -> Result<Tensor> {
        match self {
            Self::Llama(m) => m.forward_batch(tokens, caches),
            Self::Gemma3(m) => m.forward_batch(tokens, caches),
            Self::DeepSeek(m) => m.forward_batch(tokens, caches),
            Self::Custom(m) => m.forward_batch(tokens, caches),
        }
    }
}
