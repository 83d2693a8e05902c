//! The seed README's names over the engine: [`CandleModel`] (a loaded model under the seed's
//! name, with its async `load`) and [`Sampling`] (the short description of a sampling chain).
//! Both are thin: loading is [`load_model`](crate::load_model)'s and sampling is the sampling
//! crate's chain.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use fluent_ai_candle_models::LoadedModel;
use fluent_ai_candle_sampling::SamplingConfig;

use crate::{EngineError, GenerationConfig};

/// A loaded model (weights, tokenizer, chat template) under the seed's name: a
/// [`LoadedModel`] behind an `Arc`, so generators may share its weights.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use fluent_ai_candle_engine::{CandleModel, Device};
/// let model = CandleModel::load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &Device::Cpu).await?;
/// println!("{} tokens in the vocabulary", model.tokenizer.vocab_size());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CandleModel {
    loaded: Arc<LoadedModel>,
}

impl CandleModel {
    /// Loads a model onto `device` (on tokio's blocking pool when called inside a tokio
    /// runtime): a GGUF file (recognized by its magic bytes, whatever its name), a
    /// `.safetensors` file of a Hugging Face model directory (the directory is loaded: its
    /// `config.json`, `tokenizer.json` and every shard, quantized on load to the default
    /// [`QuantizationType`](crate::QuantizationType)), a model directory, or any other spec
    /// [`load_model`](crate::load_model) takes (a cached model name, `hf:ORG/REPO`).
    pub async fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self, EngineError> {
        let path = path.as_ref().to_path_buf();
        let device = device.clone();
        let load = move || Self::load_blocking(&path, &device);
        if tokio::runtime::Handle::try_current().is_err() {
            return load();
        }
        tokio::task::spawn_blocking(load)
            .await
            .map_err(|e| EngineError::Internal(format!("loading the model failed: {e}")))?
    }

    /// [`load`](Self::load) on the calling thread.
    pub fn load_blocking(path: &Path, device: &Device) -> Result<Self, EngineError> {
        let spec = if path.is_file()
            && !fluent_ai_candle_models::gguf::has_gguf_magic(path)
            && path.extension().is_some_and(|e| e == "safetensors")
        {
            path.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        } else {
            path.to_path_buf()
        };
        let loaded = crate::load_model(&spec, None, device, &mut |_| {})?;
        Ok(Self::from_loaded(loaded))
    }

    /// A model already loaded.
    pub fn from_loaded(loaded: impl Into<Arc<LoadedModel>>) -> Self {
        Self {
            loaded: loaded.into(),
        }
    }

    /// The loaded model (shared).
    pub fn loaded(&self) -> &Arc<LoadedModel> {
        &self.loaded
    }

    /// The loaded model: owned when no one else holds it, else shared.
    pub fn into_loaded(self) -> Result<LoadedModel, Arc<LoadedModel>> {
        Arc::try_unwrap(self.loaded)
    }
}

impl std::ops::Deref for CandleModel {
    type Target = LoadedModel;

    fn deref(&self) -> &LoadedModel {
        &self.loaded
    }
}

impl From<LoadedModel> for CandleModel {
    fn from(loaded: LoadedModel) -> Self {
        Self::from_loaded(loaded)
    }
}

/// The seed's short description of a sampling chain, for
/// [`CandleGenerator::with_sophisticated_features`](crate::CandleGenerator::with_sophisticated_features).
/// Each variant is a chain of the sampling crate (see [`to_config`](Self::to_config)); for
/// anything else (penalties, min-p, Mirostat...) use a [`SamplingConfig`] in the request.
///
/// ```
/// use fluent_ai_candle_engine::Sampling;
/// let s = Sampling::TopKThenTopP { k: 40, p: 0.95, temperature: 0.8 };
/// assert_eq!(s.to_config()?.chain.len(), 3); // temperature → top-k → top-p
/// # Ok::<(), fluent_ai_candle_engine::EngineError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Sampling {
    /// The most probable token (temperature 0).
    Greedy,
    /// Temperature only.
    Temperature {
        /// Softmax temperature (> 0).
        temperature: f32,
    },
    /// Temperature, then the `k` most probable tokens.
    TopK {
        /// Tokens kept.
        k: usize,
        /// Softmax temperature.
        temperature: f32,
    },
    /// Temperature, then the smallest set of tokens whose probability reaches `p`.
    TopP {
        /// Nucleus threshold in (0, 1].
        p: f32,
        /// Softmax temperature.
        temperature: f32,
    },
    /// Temperature, then top-k, then top-p (the seed's advanced example).
    TopKThenTopP {
        /// Tokens kept by top-k.
        k: usize,
        /// Nucleus threshold of top-p.
        p: f32,
        /// Softmax temperature.
        temperature: f32,
    },
}

impl Sampling {
    /// `(temperature, top_k, top_p)`: the request fields this sampling stands for.
    fn parts(self) -> (f32, Option<usize>, Option<f32>) {
        match self {
            Sampling::Greedy => (0.0, None, None),
            Sampling::Temperature { temperature } => (temperature, None, None),
            Sampling::TopK { k, temperature } => (temperature, Some(k), None),
            Sampling::TopP { p, temperature } => (temperature, None, Some(p)),
            Sampling::TopKThenTopP { k, p, temperature } => (temperature, Some(k), Some(p)),
        }
    }

    /// The sampling crate's chain (temperature → top-k → top-p, as a request's
    /// `temperature`/`top_k`/`top_p` build it); invalid values are a typed error.
    pub fn to_config(self) -> Result<SamplingConfig, EngineError> {
        let (temperature, k, p) = self.parts();
        let mut b = SamplingConfig::builder().temperature(temperature);
        if let Some(k) = k {
            b = b.top_k(k);
        }
        if let Some(p) = p {
            b = b.top_p(p);
        }
        Ok(b.build()?)
    }

    /// Makes this sampling the generator default of `config` (its `temperature`, `top_k` and
    /// `top_p`, each of which a request may still override), after checking it.
    pub fn apply_to(self, config: &mut GenerationConfig) -> Result<(), EngineError> {
        self.to_config()?;
        let (temperature, k, p) = self.parts();
        config.temperature = temperature;
        config.top_k = k;
        config.top_p = p;
        Ok(())
    }
}
