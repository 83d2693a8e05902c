//! The seed README's [`CandleModel`]: a loaded model under the seed's name, with its async
//! `load` (loading is [`load_model`](crate::load_model)'s).

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use fluent_ai_candle_models::LoadedModel;

use crate::EngineError;

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
