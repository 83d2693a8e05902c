//! A model ready to generate: decoder, tokenizer and chat template, from one GGUF file or
//! a Hugging Face model directory (`config.json`, safetensors, `tokenizer.json`).

use std::path::Path;

use candle_core::Device;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::decoder::{self, Decoder};
use crate::gguf::{CancelToken, GgufFile};
use crate::llama::{Llama, LoadProgress};
use crate::plugin::ArchitecturePlugin;
use crate::safetensors::{HfConfig, QuantizationType};
use crate::tokenizer::CandleTokenizer;
use crate::{ModelConfig, ModelError, Result};

/// Everything loaded from one GGUF file or one Hugging Face model directory.
#[derive(Debug)]
pub struct LoadedModel {
    /// The decoder (llama family, Gemma, DeepSeek, or a plugin's, as `general.architecture`
    /// says; a directory's is a llama-family decoder, as `config.json`'s `model_type` says).
    pub decoder: Box<dyn Decoder>,
    /// The tokenizer from `tokenizer.ggml.*` (a directory's from `tokenizer.json`, see
    /// [`CandleTokenizer::from_hf_dir`]).
    pub tokenizer: CandleTokenizer,
    /// The chat template from `tokenizer.chat_template` (when the file has none: Gemma's turns
    /// for Gemma, ChatML otherwise; a directory's from `tokenizer_config.json`, see
    /// [`ChatTemplate::from_hf_dir`]).
    pub chat_template: ChatTemplate,
    /// File size in bytes (a directory's: its safetensors files together).
    pub file_size: u64,
}

impl LoadedModel {
    /// Opens `path`, reads the tokenizer and template, then loads the weights onto `device`,
    /// reporting progress per tensor. The same as [`LoadedModel::load_with`] without plugins.
    ///
    /// `path` is a GGUF file, or a Hugging Face model directory, loaded by
    /// [`LoadedModel::load_dir`] with the default [`QuantizationType`] (`Q8_0`).
    pub fn load(
        path: impl AsRef<Path>,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        Self::load_with(path, device, progress, &[])
    }

    /// [`LoadedModel::load`], with the decoder loaded by [`decoder::load_with`]: by the first
    /// of `plugins` that handles the file's `general.architecture`, otherwise by this crate.
    /// The tokenizer and chat template are read from the file's metadata as for any model.
    /// A directory is loaded by [`LoadedModel::load_dir`] with the default
    /// [`QuantizationType`]; plugins, which load GGUF architectures, play no part in it.
    pub fn load_with(
        path: impl AsRef<Path>,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
        plugins: &[&dyn ArchitecturePlugin],
    ) -> Result<Self> {
        Self::load_cancellable(path, device, progress, plugins, &CancelToken::new())
    }

    /// [`LoadedModel::load_with`] that stops with [`ModelError::Cancelled`] once `cancel` is
    /// cancelled: a GGUF's decoder checks it before every tensor it reads (so a load stops
    /// within one tensor), the tokenizer and template steps before and after; a directory is
    /// checked before and after its weights are read.
    pub fn load_cancellable(
        path: impl AsRef<Path>,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
        plugins: &[&dyn ArchitecturePlugin],
        cancel: &CancelToken,
    ) -> Result<Self> {
        Self::load_gguf_or_dir(path.as_ref(), None, device, progress, plugins, cancel)
    }

    /// [`LoadedModel::load_cancellable`] with the weights quantized on load to `quant`: a
    /// Hugging Face directory as [`LoadedModel::load_dir`] quantizes it, a GGUF file's
    /// matrices re-quantized as [`GgufFile::requantize_to`] describes (from `F32`, `F16`,
    /// `BF16` or `Q8_0` to a format of fewer bits; the rest as stored).
    ///
    /// Errors: those of `load_cancellable`, and [`ModelError::PrecisionIncrease`] when a
    /// GGUF's weights are stored with fewer bits per value than `quant` has.
    pub fn load_quantized(
        path: impl AsRef<Path>,
        quant: QuantizationType,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
        plugins: &[&dyn ArchitecturePlugin],
        cancel: &CancelToken,
    ) -> Result<Self> {
        Self::load_gguf_or_dir(
            path.as_ref(),
            Some(quant),
            device,
            progress,
            plugins,
            cancel,
        )
    }

    fn load_gguf_or_dir(
        path: &Path,
        quant: Option<QuantizationType>,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
        plugins: &[&dyn ArchitecturePlugin],
        cancel: &CancelToken,
    ) -> Result<Self> {
        cancel.check()?;
        if path.is_dir() {
            let model = Self::load_dir(path, quant.unwrap_or_default(), device, progress)?;
            cancel.check()?;
            return Ok(model);
        }
        let mut gguf = GgufFile::open(path)?;
        gguf.set_cancel(cancel.clone());
        if let Some(quant) = quant {
            gguf.requantize_to(quant)?;
        }
        // The config of a built-in architecture is checked first so an unknown architecture
        // fails before any work; a plugin's architecture is the plugin's to check.
        let arch = gguf.architecture()?;
        if !plugins.iter().any(|p| p.architecture() == arch) {
            crate::ModelConfig::from_gguf(&gguf)?;
        }
        let tokenizer = CandleTokenizer::from_gguf(gguf.content())?;
        let chat_template = if crate::gemma::ARCHITECTURES.contains(&arch.as_str())
            && gguf.get("tokenizer.chat_template").is_none()
        {
            let text = |id: Option<u32>| {
                id.and_then(|id| tokenizer.token_bytes_of(id))
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            };
            ChatTemplate::new(
                crate::gemma::CHAT_TEMPLATE,
                &text(tokenizer.bos_id()),
                &text(tokenizer.eos_id()),
            )?
        } else {
            ChatTemplate::from_gguf(gguf.content())?
        };
        cancel.check()?;
        let mut decoder = decoder::load_with(&mut gguf, device, progress, plugins)?;
        attention_from_env(decoder.as_mut())?;
        cancel.check()?;
        Ok(Self {
            decoder,
            tokenizer,
            chat_template,
            file_size: gguf.file_size(),
        })
    }

    /// Loads a Hugging Face model directory (the hub's layout, e.g. a snapshot that
    /// [`cache::resolve`](crate::cache::resolve) found for `hf:ORG/REPO`): the tokenizer from
    /// `tokenizer.json` ([`CandleTokenizer::from_hf_dir`]), the chat template from
    /// `tokenizer_config.json` ([`ChatTemplate::from_hf_dir`]), then the weights of
    /// `config.json` and the safetensors files onto `device`, every matrix quantized to
    /// `quant` ([`Llama::load_safetensors`]: llama or mistral), reporting progress per tensor.
    ///
    /// The tokenizer and template are read first, so a bad one fails before the weights are
    /// read. Errors are those of the three functions: typed, naming the file.
    pub fn load_dir(
        dir: impl AsRef<Path>,
        quant: QuantizationType,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let dir = dir.as_ref();
        // config.json first: an unsupported model type fails before anything is read.
        HfConfig::from_file(&dir.join("config.json"))?;
        let tokenizer = CandleTokenizer::from_hf_dir(dir)?;
        let chat_template = ChatTemplate::from_hf_dir(dir, &tokenizer)?;
        let mut file_size = 0;
        for file in crate::safetensors::weight_files(dir)? {
            file_size += std::fs::metadata(&file)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => ModelError::NotFound { path: file.clone() },
                    _ => ModelError::Io {
                        path: file.clone(),
                        source: e,
                    },
                })?
                .len();
        }
        let mut llama = Llama::load_safetensors_with_progress(dir, quant, device, progress)?;
        attention_from_env(&mut llama)?;
        Ok(Self {
            decoder: Box::new(llama),
            tokenizer,
            chat_template,
            file_size,
        })
    }

    /// The decoder's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        self.decoder.config()
    }

    /// Renders one user message through the chat template, with the assistant turn opened.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        self.chat_template
            .render(&[ChatMessage::new("user", user)], true)
    }
}

/// `FLUENT_AI_CANDLE_ATTENTION=candle`: candle's f32 attention op chain (an f32 cache) instead
/// of the kernel ([`Decoder::use_candle_attention`]).
fn attention_from_env(decoder: &mut dyn Decoder) -> Result<()> {
    if std::env::var("FLUENT_AI_CANDLE_ATTENTION").is_ok_and(|v| v == "candle") {
        decoder.use_candle_attention()?;
    }
    Ok(())
}
