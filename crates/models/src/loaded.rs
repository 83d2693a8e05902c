//! A model ready to generate: decoder, tokenizer and chat template, from one GGUF file.

use std::path::Path;

use candle_core::Device;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::gguf::GgufFile;
use crate::llama::{LoadProgress, Llama};
use crate::tokenizer::GgufTokenizer;
use crate::{ModelConfig, Result};

/// Everything loaded from one GGUF file.
#[derive(Debug)]
pub struct LoadedModel {
    /// The decoder.
    pub model: Llama,
    /// The tokenizer from `tokenizer.ggml.*`.
    pub tokenizer: GgufTokenizer,
    /// The chat template from `tokenizer.chat_template` (ChatML when the file has none).
    pub chat_template: ChatTemplate,
    /// File size in bytes.
    pub file_size: u64,
}

impl LoadedModel {
    /// Opens `path`, reads the tokenizer and template, then loads the weights onto `device`,
    /// reporting progress per tensor.
    pub fn load(
        path: impl AsRef<Path>,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        // The config is checked first so an unknown architecture fails before any work.
        crate::ModelConfig::from_gguf(&gguf)?;
        let tokenizer = GgufTokenizer::from_gguf(gguf.content())?;
        let chat_template = ChatTemplate::from_gguf(gguf.content())?;
        let model = Llama::load(&mut gguf, device, progress)?;
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
