//! Named models loaded, unloaded or replaced while requests run, and model specs: how a
//! name, a path or a Hugging Face reference becomes a loaded model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use candle_core::Device;
use fluent_ai_candle_models::{cache, CancelToken, LoadProgress, LoadedModel, QuantizationType};

use crate::api::{CandleCompletion, CandleCompletionRequest, CandleCompletionStream};
use crate::config::GenerationConfig;
use crate::generator::CandleGenerator;
use crate::EngineError;

/// The file or directory a model spec names: `hf:ORG/REPO[:FILE]` (the Hugging Face cache,
/// offline), an existing GGUF file or Hugging Face model directory, or a known model name in
/// the model cache ([`cache::resolve`]). A spec that names nothing loadable is a typed error
/// naming what is missing.
pub fn resolve_model(spec: impl AsRef<Path>) -> Result<PathBuf, EngineError> {
    let spec = spec.as_ref();
    match spec.to_str() {
        Some(s) => Ok(cache::resolve(s)?),
        // Not UTF-8: a path, never a name.
        None if spec.exists() => Ok(spec.to_path_buf()),
        None => Err(EngineError::Model(
            fluent_ai_candle_models::ModelError::NotFound {
                path: spec.to_path_buf(),
            },
        )),
    }
}

/// The name a model spec is served under: a known model name as is, a path (or
/// `hf:ORG/REPO[:FILE]`) by its file stem.
///
/// ```
/// assert_eq!(fluent_ai_candle_engine::model_name("smollm2-135m-instruct"), "smollm2-135m-instruct");
/// assert_eq!(fluent_ai_candle_engine::model_name("/models/qwen2.5-0.5b-q8_0.gguf"), "qwen2.5-0.5b-q8_0");
/// ```
pub fn model_name(spec: impl AsRef<Path>) -> String {
    let spec = spec.as_ref();
    let text = spec.to_string_lossy();
    if cache::known_model(&text).is_some() {
        return text.into_owned();
    }
    spec.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| text.into_owned())
}

/// Loads the model a spec names ([`resolve_model`]) onto `device`, reporting progress per
/// tensor. `quant` is the format the weights are quantized to on load: a Hugging Face
/// directory's matrices (`None`: the default, Q8_0), or a GGUF file's `F32`, `F16`, `BF16` and
/// `Q8_0` matrices re-quantized to fewer bits ([`GgufFile::requantize_to`]; `None`: as
/// stored). Asking a GGUF for more bits than it stores is
/// [`ModelError::PrecisionIncrease`](fluent_ai_candle_models::ModelError::PrecisionIncrease).
///
/// [`GgufFile::requantize_to`]: fluent_ai_candle_models::GgufFile::requantize_to
pub fn load_model(
    spec: impl AsRef<Path>,
    quant: Option<QuantizationType>,
    device: &Device,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<LoadedModel, EngineError> {
    load_model_cancellable(spec, quant, device, progress, &CancelToken::new())
}

/// [`load_model`] that stops with [`ModelError::Cancelled`](fluent_ai_candle_models::ModelError::Cancelled)
/// once `cancel` is cancelled (a GGUF's loader checks it before every tensor; a directory
/// before and after its weights).
pub fn load_model_cancellable(
    spec: impl AsRef<Path>,
    quant: Option<QuantizationType>,
    device: &Device,
    progress: &mut dyn FnMut(LoadProgress),
    cancel: &CancelToken,
) -> Result<LoadedModel, EngineError> {
    cancel.check()?;
    let path = resolve_model(spec)?;
    if path.is_dir() {
        let model = LoadedModel::load_dir(&path, quant.unwrap_or_default(), device, progress)?;
        cancel.check()?;
        return Ok(model);
    }
    Ok(match quant {
        Some(quant) => LoadedModel::load_quantized(&path, quant, device, progress, &[], cancel)?,
        None => LoadedModel::load_cancellable(&path, device, progress, &[], cancel)?,
    })
}

/// Named generators. Each has its own scheduler; unloading or replacing a model only stops new
/// requests from reaching it: requests in flight finish on the model they started on (their
/// scheduler holds the weights until they are done).
#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: RwLock<BTreeMap<String, CandleGenerator>>,
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, CandleGenerator>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, CandleGenerator>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `generator` under `name`, returning the one it replaces.
    pub fn insert(&self, name: &str, generator: CandleGenerator) -> Option<CandleGenerator> {
        self.write().insert(name.to_string(), generator)
    }

    /// Starts a generator for an already loaded model and registers it under `name`, returning
    /// the one it replaces.
    pub fn insert_model(
        &self,
        name: &str,
        model: Arc<LoadedModel>,
        config: GenerationConfig,
    ) -> Result<Option<CandleGenerator>, EngineError> {
        let generator = CandleGenerator::from_loaded(name, model, config)?;
        Ok(self.insert(name, generator))
    }

    /// Loads the model a spec names (a GGUF file, a Hugging Face model directory, a cached
    /// model name or `hf:ORG/REPO[:FILE]`, see [`resolve_model`]) and registers it under
    /// `name`, replacing any model of that name once the new one is loaded. Loading takes a
    /// while: from async code, call it on a blocking thread.
    pub fn load(
        &self,
        name: &str,
        spec: impl AsRef<Path>,
        device: &Device,
        config: GenerationConfig,
    ) -> Result<Option<CandleGenerator>, EngineError> {
        self.load_cancellable(name, spec, device, config, &CancelToken::new())
    }

    /// [`ModelRegistry::load`] that stops with
    /// [`ModelError::Cancelled`](fluent_ai_candle_models::ModelError::Cancelled) once `cancel`
    /// is cancelled (within one tensor of a GGUF file); nothing is registered then.
    pub fn load_cancellable(
        &self,
        name: &str,
        spec: impl AsRef<Path>,
        device: &Device,
        config: GenerationConfig,
        cancel: &CancelToken,
    ) -> Result<Option<CandleGenerator>, EngineError> {
        let model = load_model_cancellable(spec, None, device, &mut |_| {}, cancel)?;
        cancel.check()?;
        self.insert_model(name, Arc::new(model), config)
    }

    /// Removes `name`; its requests in flight still finish.
    pub fn unload(&self, name: &str) -> Result<CandleGenerator, EngineError> {
        let removed = self.write().remove(name);
        removed.ok_or_else(|| self.unknown(name))
    }

    fn unknown(&self, name: &str) -> EngineError {
        EngineError::UnknownModel {
            name: name.to_string(),
            known: self.names(),
        }
    }

    /// The generator registered as `name`.
    pub fn get(&self, name: &str) -> Result<CandleGenerator, EngineError> {
        let found = self.read().get(name).cloned();
        found.ok_or_else(|| self.unknown(name))
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Starts a request on the model `name`.
    pub fn generate(
        &self,
        name: &str,
        request: &CandleCompletionRequest,
    ) -> Result<CandleCompletion, EngineError> {
        Ok(self.get(name)?.generate(request))
    }

    /// Starts a streamed request on the model `name`.
    pub fn generate_stream(
        &self,
        name: &str,
        request: &CandleCompletionRequest,
    ) -> Result<CandleCompletionStream, EngineError> {
        self.get(name)?.try_generate_stream(request)
    }
}
