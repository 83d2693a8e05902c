//! Helpers shared by the real-model engine tests.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use fluent_ai_candle_engine::{CandleGenerator, GenerationConfig};
use fluent_ai_candle_models::LoadedModel;

/// The real SmolLM2 model, loaded once per test binary; fails naming the command that fetches
/// it when the file is absent.
pub fn smollm2() -> Arc<LoadedModel> {
    static MODEL: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = fluent_ai_candle_models::cache::model_path("smollm2-135m-instruct").unwrap();
            assert!(
                path.is_file(),
                "{} is missing: run `cargo xtask fetch-models` first",
                path.display()
            );
            Arc::new(LoadedModel::load(&path, &candle_core::Device::Cpu, &mut |_| {}).unwrap())
        })
        .clone()
}

/// A generator over the shared model.
pub fn generator(config: GenerationConfig) -> CandleGenerator {
    CandleGenerator::from_loaded("smollm2", smollm2(), config).unwrap()
}

/// A chat prompt for the model.
pub fn chat(user: &str) -> String {
    smollm2().chat_prompt(user).unwrap()
}
