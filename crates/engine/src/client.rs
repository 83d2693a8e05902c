//! [`CandleClientBuilder`]: everything needed to start a [`CandleGenerator`] from files.

use std::path::PathBuf;
use std::sync::Arc;

use fluent_ai_candle_models::DeviceType;

use crate::config::GenerationConfig;
use crate::generator::CandleGenerator;
use crate::EngineError;

/// How the weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Quantization {
    /// As stored in the GGUF file (GGUF weights are quantized ahead of time; requantizing at
    /// load time is not supported).
    #[default]
    AsStored,
}

/// Builds a [`CandleGenerator`] from a model file:
///
/// ```no_run
/// use fluent_ai_candle_engine::{CandleClientBuilder, DeviceType};
/// let generator = CandleClientBuilder::new()
///     .model_path("smollm2-135m-instruct")
///     .device_type(DeviceType::Cpu)
///     .max_concurrent_requests(4)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct CandleClientBuilder {
    model_path: Option<PathBuf>,
    tokenizer_path: Option<PathBuf>,
    device_type: DeviceType,
    quantization: Quantization,
    config: GenerationConfig,
    max_concurrent_requests: Option<usize>,
    name: Option<String>,
}

impl CandleClientBuilder {
    /// A builder with the defaults (automatic device, the file's quantization).
    pub fn new() -> Self {
        Self::default()
    }

    /// The model (required): a GGUF file, a Hugging Face model directory, a cached model name
    /// or `hf:ORG/REPO[:FILE]` (see [`resolve_model`](crate::resolve_model)).
    pub fn model_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.model_path = Some(path.into());
        self
    }

    /// The tokenizer: GGUF files carry theirs, so this may only name the model file itself.
    pub fn tokenizer_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.tokenizer_path = Some(path.into());
        self
    }

    /// Which device to run on.
    pub fn device_type(mut self, device: DeviceType) -> Self {
        self.device_type = device;
        self
    }

    /// How the weights are quantized.
    pub fn quantization(mut self, quantization: Quantization) -> Self {
        self.quantization = quantization;
        self
    }

    /// Sequences decoded together.
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_concurrent_requests = Some(n);
        self
    }

    /// Generation defaults and limits.
    pub fn generation_config(mut self, config: GenerationConfig) -> Self {
        self.config = config;
        self
    }

    /// The name the generator reports in responses (default: [`model_name`](crate::model_name)
    /// of the model path).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Loads the model and starts its scheduler.
    pub fn build(self) -> Result<CandleGenerator, EngineError> {
        let path = self
            .model_path
            .ok_or_else(|| EngineError::InvalidRequest("model_path is required".into()))?;
        if let Some(t) = &self.tokenizer_path {
            if t != &path {
                return Err(EngineError::InvalidRequest(format!(
                    "separate tokenizer files are not supported: the tokenizer is read from {}",
                    path.display()
                )));
            }
        }
        let Quantization::AsStored = self.quantization;
        let device = self.device_type.open().map_err(EngineError::Candle)?;
        let mut config = self.config;
        if let Some(n) = self.max_concurrent_requests {
            config.max_concurrent_requests = n;
        }
        config.validate()?;
        let model = crate::load_model(&path, None, &device, &mut |_| {})?;
        let name = self.name.unwrap_or_else(|| crate::model_name(&path));
        CandleGenerator::from_loaded(&name, Arc::new(model), config)
    }
}
