//! The seed API's knobs take effect: a separate tokenizer is really loaded and checked against
//! the model, and a generator the seed's infallible constructor could not build refuses its
//! requests with the typed error.

use std::sync::Arc;

use fluent_ai_candle::{
    CandleClientBuilder, CandleCompletionRequest, CandleGenerator, CandleModel, CandleTokenizer,
    Device, EngineError, FinishReason, GenerationConfig,
};

fn cached(name: &str) -> std::path::PathBuf {
    let path = fluent_ai_candle::models::cache::model_path(name).unwrap();
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        path.display()
    );
    path
}

/// `tokenizer_path` loads the file it names: Gemma 3's tokenizer (262k tokens) cannot drive
/// SmolLM2 (49k embedding rows), and the build says so; SmolLM2's own file is accepted.
#[test]
fn builder_loads_the_separate_tokenizer() {
    let smol = cached("smollm2-135m-instruct");
    let gemma = cached("gemma3-270m");
    let e = CandleClientBuilder::new()
        .model_path(&smol)
        .tokenizer_path(&gemma)
        .build()
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::InvalidRequest(m) if m.contains("tokenizer has")),
        "{e}"
    );
    let missing = CandleClientBuilder::new()
        .model_path(&smol)
        .tokenizer_path("no/such/tokenizer.json")
        .build()
        .unwrap_err();
    assert!(matches!(missing, EngineError::Model(_)), "{missing}");
    let g = CandleClientBuilder::new()
        .model_path(&smol)
        .tokenizer_path(&smol)
        .build()
        .unwrap();
    assert_eq!(g.model().tokenizer.vocab_size(), 49152);
}

/// `CandleGenerator::new` with a tokenizer that does not fit the model: `try_new` is the typed
/// error, `new` a generator that refuses every request with it (collect and stream).
#[test]
fn mismatched_tokenizer_is_refused() {
    let device = Device::Cpu;
    let model = CandleModel::load_blocking(&cached("smollm2-135m-instruct"), &device).unwrap();
    let gemma = CandleTokenizer::from_file(cached("gemma3-270m")).unwrap();
    let own = CandleTokenizer::from_file(cached("smollm2-135m-instruct")).unwrap();
    assert!(gemma.vocab_size() > own.vocab_size());
    let model = Arc::new(model);
    let e = CandleGenerator::try_new(
        model.clone(),
        gemma.clone(),
        GenerationConfig::default(),
        device.clone(),
    )
    .unwrap_err();
    assert!(matches!(e, EngineError::InvalidRequest(_)), "{e}");
    let refusing = CandleGenerator::new(
        model.clone(),
        gemma,
        GenerationConfig::default(),
        device.clone(),
    );
    let request = CandleCompletionRequest {
        prompt: "Hello".into(),
        max_tokens: Some(2),
        ..Default::default()
    };
    let e = refusing.generate(&request).blocking_collect().unwrap_err();
    assert!(matches!(e, EngineError::InvalidRequest(_)), "{e}");
    let mut s = refusing.generate_stream(&request);
    let chunk = s.blocking_next().unwrap();
    assert_eq!(chunk.finish_reason(), Some(FinishReason::Error));
    // The model's own tokenizer (loaded separately) is accepted for a shared model.
    let g = CandleGenerator::try_new(model, own, GenerationConfig::default(), device).unwrap();
    let r = g.generate(&request).blocking_collect().unwrap();
    assert_eq!(r.usage.completion_tokens, 2);
}
