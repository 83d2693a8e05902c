//! Named models loaded, unloaded or replaced while requests run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use candle_core::Device;
use fluent_ai_candle_models::LoadedModel;

use crate::api::{CandleCompletion, CandleCompletionRequest, CandleCompletionStream};
use crate::config::GenerationConfig;
use crate::generator::CandleGenerator;
use crate::EngineError;

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

    /// Loads a GGUF file and registers it under `name` (replacing any model of that name once
    /// the new one is loaded).
    pub fn load(
        &self,
        name: &str,
        path: impl AsRef<Path>,
        device: &Device,
        config: GenerationConfig,
    ) -> Result<Option<CandleGenerator>, EngineError> {
        let model = LoadedModel::load(path, device, &mut |_| {})?;
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
        self.get(name)?.generate_stream(request)
    }
}
