//! A model ready to generate: decoder, tokenizer and chat template, from one GGUF file.

use std::path::Path;

use candle_core::Device;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::decoder::Decoder;
use crate::gguf::GgufFile;
use crate::llama::LoadProgress;
use crate::plugin::ArchitecturePlugin;
use crate::tokenizer::GgufTokenizer;
use crate::{ModelConfig, Result};

/// Everything loaded from one GGUF file.
#[derive(Debug)]
pub struct LoadedModel {
    /// The decoder (llama family, Gemma 3, or a plugin's, as `general.architecture` says).
    pub model: Decoder,
    /// The tokenizer from `tokenizer.ggml.*`.
    pub tokenizer: GgufTokenizer,
    /// The chat template from `tokenizer.chat_template` (when the file has none: Gemma's turns
    /// for Gemma 3, ChatML otherwise).
    pub chat_template: ChatTemplate,
    /// File size in bytes.
    pub file_size: u64,
}

impl LoadedModel {
    /// Opens `path`, reads the tokenizer and template, then loads the weights onto `device`,
    /// reporting progress per tensor. The same as [`LoadedModel::load_with`] without plugins.
    pub fn load(
        path: impl AsRef<Path>,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        Self::load_with(path, device, progress, &[])
    }

    /// [`LoadedModel::load`], with the decoder loaded by [`Decoder::load_with`]: by the first
    /// of `plugins` that handles the file's `general.architecture`, otherwise by this crate.
    /// The tokenizer and chat template are read from the file's metadata as for any model.
    pub fn load_with(
        path: impl AsRef<Path>,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
        plugins: &[&dyn ArchitecturePlugin],
    ) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        // The config of a built-in architecture is checked first so an unknown architecture
        // fails before any work; a plugin's architecture is the plugin's to check.
        let arch = gguf.architecture()?;
        if !plugins.iter().any(|p| p.architecture() == arch) {
            crate::ModelConfig::from_gguf(&gguf)?;
        }
        let tokenizer = GgufTokenizer::from_gguf(gguf.content())?;
        let chat_template = if arch == crate::gemma3::ARCHITECTURE
            && gguf.get("tokenizer.chat_template").is_none()
        {
            let text = |id: Option<u32>| {
                id.and_then(|id| tokenizer.token_bytes_of(id))
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            };
            ChatTemplate::new(
                crate::gemma3::CHAT_TEMPLATE,
                &text(tokenizer.bos_id()),
                &text(tokenizer.eos_id()),
            )?
        } else {
            ChatTemplate::from_gguf(gguf.content())?
        };
        let mut model = Decoder::load_with(&mut gguf, device, progress, plugins)?;
        if std::env::var("FLUENT_AI_CANDLE_ATTENTION").is_ok_and(|v| v == "fused") {
            if let Decoder::Llama(m) = &mut model {
                m.set_fused_attention(true);
            }
        }
        Ok(Self {
            model,
            tokenizer,
            chat_template,
            file_size: gguf.file_size(),
        })
    }

    /// The decoder's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// Renders one user message through the chat template, with the assistant turn opened.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        self.chat_template.render(
            &[ChatMessage {
                role: "user".into(),
                content: user.into(),
            }],
            true,
        )
    }
}
