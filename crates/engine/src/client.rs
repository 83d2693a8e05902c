//! [`CandleClientBuilder`]: everything needed to start a [`CandleGenerator`] from files.

use std::path::PathBuf;
use std::sync::Arc;

use fluent_ai_candle_models::{CandleTokenizer, DeviceType, QuantizationType};

use crate::config::GenerationConfig;
use crate::generator::CandleGenerator;
use crate::EngineError;

/// How the weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Quantization {
    /// As stored: a GGUF file's formats; a Hugging Face directory's default quantize-on-load
    /// format ([`QuantizationType::default`]).
    #[default]
    AsStored,
    /// This format: a Hugging Face directory is quantized to it on load; a GGUF file's
    /// `F32`, `F16`, `BF16` and `Q8_0` matrices with more bits per value are re-quantized to
    /// it on load (the token table and output projection stay `Q8_0` for 4-bit formats), the
    /// others used as stored, so a `Q4_1` file satisfies `Q4` as it is
    /// ([`GgufFile::requantize_to`](fluent_ai_candle_models::GgufFile::requantize_to)).
    /// Asking a GGUF for more bits than it stores is
    /// [`ModelError::PrecisionIncrease`](fluent_ai_candle_models::ModelError::PrecisionIncrease).
    To(QuantizationType),
}

impl From<QuantizationType> for Quantization {
    fn from(q: QuantizationType) -> Self {
        Quantization::To(q)
    }
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

    /// A tokenizer other than the model's own: a `tokenizer.json` or a GGUF file (see
    /// [`CandleTokenizer::from_file`]), used to encode and decode every request. Its
    /// vocabulary must fit the model's embedding rows. Naming the model file itself is the
    /// same as not setting it.
    pub fn tokenizer_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.tokenizer_path = Some(path.into());
        self
    }

    /// Which device to run on.
    pub fn device_type(mut self, device: DeviceType) -> Self {
        self.device_type = device;
        self
    }

    /// How the weights are quantized: [`Quantization::AsStored`] or a [`QuantizationType`]
    /// (the seed's `QuantizationType::Q4`; see [`Quantization::To`]).
    pub fn quantization(mut self, quantization: impl Into<Quantization>) -> Self {
        self.quantization = quantization.into();
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
        let resolved = crate::resolve_model(&path)?;
        let quant = match self.quantization {
            Quantization::AsStored => None,
            Quantization::To(q) => Some(q),
        };
        let tokenizer = match &self.tokenizer_path {
            Some(t) if t != &path && t != &resolved => Some(CandleTokenizer::from_file(t)?),
            _ => None,
        };
        let device = self.device_type.open().map_err(EngineError::Candle)?;
        let mut config = self.config;
        if let Some(n) = self.max_concurrent_requests {
            config.max_concurrent_requests = n;
        }
        config.validate()?;
        let mut model = crate::load_model(&resolved, quant, &device, &mut |_| {})?;
        if let Some(tokenizer) = tokenizer {
            let rows = model.decoder.config().vocab_size;
            if tokenizer.vocab_size() > rows {
                return Err(EngineError::InvalidRequest(format!(
                    "the tokenizer has {} tokens, the model's embedding {rows} rows",
                    tokenizer.vocab_size()
                )));
            }
            model.tokenizer = tokenizer;
        }
        let name = self.name.unwrap_or_else(|| crate::model_name(&path));
        CandleGenerator::from_loaded(&name, Arc::new(model), config)
    }
}
