//! Embeddings on the real models: each input's final hidden states pooled and normalised
//! (`CandleGenerator::embed`), their shape and determinism, batch independence, that similar
//! texts come out closer than unrelated ones, the two poolings, and typed refusals.

mod common;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use fluent_ai_candle_engine::{
    CandleCompletionRequest, CandleGenerator, EmbedError, EmbeddingRequest, GenerationConfig,
    LoadedModel, Pooling, Prompt,
};
use fluent_ai_candle_kv_cache::{CacheShape, SequenceCache};
use fluent_ai_candle_models::{Decoder, ModelConfig};

const CAT: &str = "The cat sat on the mat.";
const CAT2: &str = "A cat was sitting on the mat.";
const TAX: &str = "Quarterly tax filings are due in April.";

fn request(inputs: &[&str], pooling: Pooling) -> EmbeddingRequest {
    EmbeddingRequest {
        inputs: inputs.iter().map(|&t| Prompt::from(t)).collect(),
        pooling,
        dimensions: None,
    }
}

fn embed(g: &CandleGenerator, inputs: &[&str], pooling: Pooling) -> Vec<Vec<f32>> {
    g.embed_blocking(&request(inputs, pooling)).unwrap().vectors
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn smollm2_embeddings_are_unit_vectors_of_the_hidden_size_and_deterministic() {
    let g = common::generator(GenerationConfig::default());
    let hidden = g.hidden_size();
    assert_eq!(hidden, 576, "SmolLM2-135M's hidden size");
    for pooling in [Pooling::Mean, Pooling::Last] {
        let out = g.embed_blocking(&request(&[CAT], pooling)).unwrap();
        assert_eq!(out.vectors.len(), 1);
        let v = &out.vectors[0];
        assert_eq!(v.len(), hidden);
        assert!(v.iter().all(|x| x.is_finite()));
        assert!((norm(v) - 1.0).abs() < 1e-5, "norm {}", norm(v));
        assert_eq!(out.prompt_tokens, g.tokenize(CAT).unwrap().len());
        let again = embed(&g, &[CAT], pooling);
        assert_eq!(&again[0], v, "the same input gives the same bits");
    }
}

#[test]
fn a_batch_equals_its_inputs_one_by_one() {
    let g = common::generator(GenerationConfig::default());
    let both = g
        .embed_blocking(&request(&[CAT, TAX], Pooling::Mean))
        .unwrap();
    let cat = g.embed_blocking(&request(&[CAT], Pooling::Mean)).unwrap();
    let tax = g.embed_blocking(&request(&[TAX], Pooling::Mean)).unwrap();
    assert_eq!(both.vectors.len(), 2);
    assert!(max_diff(&both.vectors[0], &cat.vectors[0]) <= 1e-5);
    assert!(max_diff(&both.vectors[1], &tax.vectors[0]) <= 1e-5);
    assert_eq!(both.prompt_tokens, cat.prompt_tokens + tax.prompt_tokens);
}

#[test]
fn similar_texts_are_closer_than_unrelated_ones() {
    let g = common::generator(GenerationConfig::default());
    for pooling in [Pooling::Mean, Pooling::Last] {
        let v = embed(&g, &[CAT, CAT2, TAX], pooling);
        let (similar, unrelated) = (dot(&v[0], &v[1]), dot(&v[0], &v[2]));
        eprintln!("{pooling:?}: cos(cat, cat2) = {similar:.4}, cos(cat, tax) = {unrelated:.4}");
        assert!(
            similar > unrelated,
            "{pooling:?}: {similar} (similar) <= {unrelated} (unrelated)"
        );
    }
}

#[test]
fn mean_and_last_pooling_differ() {
    let g = common::generator(GenerationConfig::default());
    let mean = embed(&g, &[CAT], Pooling::Mean);
    let last = embed(&g, &[CAT], Pooling::Last);
    assert!(max_diff(&mean[0], &last[0]) > 1e-3);
}

/// An input longer than the prefill chunk runs in chunks through one cache: the result is
/// the single pass's up to the arithmetic's order.
#[test]
fn chunked_inputs_match_one_pass() {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(4);
    let whole = common::generator(GenerationConfig::default());
    let chunked = common::generator(GenerationConfig::default().prefill_chunk(5));
    assert!(whole.tokenize(&text).unwrap().len() > 10);
    for pooling in [Pooling::Mean, Pooling::Last] {
        let a = embed(&whole, &[&text], pooling);
        let b = embed(&chunked, &[&text], pooling);
        let cos = dot(&a[0], &b[0]);
        assert!(cos > 0.999, "{pooling:?}: cosine {cos}");
    }
}

#[test]
fn token_ids_and_text_give_the_same_vector() {
    let g = common::generator(GenerationConfig::default());
    let ids = g.tokenize(CAT).unwrap();
    let from_ids = g
        .embed_blocking(&EmbeddingRequest {
            inputs: vec![Prompt::Tokens(ids)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(from_ids.vectors, embed(&g, &[CAT], Pooling::Mean));
}

#[test]
fn dimensions_truncate_and_renormalise() {
    let g = common::generator(GenerationConfig::default());
    let full = embed(&g, &[CAT], Pooling::Mean);
    let short = g
        .embed_blocking(&EmbeddingRequest {
            dimensions: Some(64),
            ..request(&[CAT], Pooling::Mean)
        })
        .unwrap();
    let v = &short.vectors[0];
    assert_eq!(v.len(), 64);
    assert!((norm(v) - 1.0).abs() < 1e-5);
    let scale = norm(&full[0][..64]);
    for (x, y) in v.iter().zip(&full[0]) {
        assert!((f64::from(*x) - f64::from(*y) / scale).abs() < 1e-5);
    }
    let same = g
        .embed_blocking(&EmbeddingRequest {
            dimensions: Some(576),
            ..request(&[CAT], Pooling::Mean)
        })
        .unwrap();
    assert_eq!(same.vectors, full);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let g = common::generator(GenerationConfig::default());
    let err = |r: EmbeddingRequest| g.embed_blocking(&r).unwrap_err();
    assert!(matches!(
        err(request(&[], Pooling::Mean)),
        EmbedError::NoInput
    ));
    assert!(matches!(
        err(request(&[CAT, ""], Pooling::Mean)),
        EmbedError::EmptyInput { index: 1 }
    ));
    let tokens = |ids: Vec<u32>| EmbeddingRequest {
        inputs: vec![Prompt::Tokens(ids)],
        ..Default::default()
    };
    assert!(matches!(
        err(tokens(vec![])),
        EmbedError::EmptyInput { index: 0 }
    ));
    assert!(matches!(
        err(tokens(vec![1, 49_152])),
        EmbedError::TokenOutOfRange {
            index: 0,
            id: 49_152,
            ..
        }
    ));
    let context = g.context_length();
    let e = err(tokens(vec![1; context + 1]));
    assert!(
        matches!(e, EmbedError::TooLong { tokens, context_length, .. } if tokens == context + 1 && context_length == context),
        "{e:?}"
    );
    for d in [0, 577] {
        assert!(matches!(
            err(EmbeddingRequest {
                dimensions: Some(d),
                ..request(&[CAT], Pooling::Mean)
            }),
            EmbedError::Dimensions {
                hidden_size: 576,
                ..
            }
        ));
    }
    for e in [
        err(request(&[], Pooling::Mean)),
        err(tokens(vec![1; context + 1])),
    ] {
        assert!(e.is_client_error(), "{e}");
    }
}

/// Embedding runs in caches of its own: a greedy generation gives the same tokens before and
/// after (and while) embeddings are computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_does_not_disturb_generation() {
    let g = common::generator(GenerationConfig::default());
    let req = CandleCompletionRequest {
        max_tokens: Some(12),
        temperature: Some(0.0),
        ..CandleCompletionRequest::new(Prompt::user("Name three colours."))
    };
    let before = g.generate(&req).collect().await.unwrap();
    let (during, embedded) = tokio::join!(
        async { g.generate(&req).collect().await.unwrap() },
        g.embed(request(&[CAT, TAX], Pooling::Mean))
    );
    let after = g.generate(&req).collect().await.unwrap();
    assert_eq!(embedded.unwrap().vectors.len(), 2);
    assert_eq!(before.choices[0].text, during.choices[0].text);
    assert_eq!(before.choices[0].text, after.choices[0].text);
}

/// A decoder that does not expose its hidden states (the trait's default): refused with a
/// typed error, not a panic.
#[derive(Debug)]
struct LogitsOnly(Arc<LoadedModel>);

impl Decoder for LogitsOnly {
    fn config(&self) -> &ModelConfig {
        self.0.decoder.config()
    }
    fn device(&self) -> &Device {
        self.0.decoder.device()
    }
    fn cache_shape(&self) -> CacheShape {
        self.0.decoder.cache_shape()
    }
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> fluent_ai_candle_models::Result<Tensor> {
        self.0.decoder.forward(tokens, cache, all_logits)
    }
}

#[test]
fn an_architecture_without_hidden_states_is_refused() {
    let model = common::smollm2();
    let g = CandleGenerator::from_decoder(
        LogitsOnly(model.clone()),
        model.tokenizer.clone(),
        GenerationConfig::default(),
        Device::Cpu,
    )
    .unwrap();
    let e = g
        .embed_blocking(&request(&[CAT], Pooling::Mean))
        .unwrap_err();
    assert!(matches!(e, EmbedError::Unsupported(_)), "{e:?}");
    assert!(e.to_string().contains("llama"), "{e}");
}

#[test]
fn gemma3_embeddings_work_too() {
    let path = fluent_ai_candle_models::cache::model_path("gemma3-270m").unwrap();
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        path.display()
    );
    let model = Arc::new(LoadedModel::load(&path, &Device::Cpu, &mut |_| {}).unwrap());
    let g = CandleGenerator::from_loaded("gemma", model, GenerationConfig::default()).unwrap();
    let hidden = g.hidden_size();
    let v = embed(&g, &[CAT, CAT2, TAX], Pooling::Mean);
    for x in &v {
        assert_eq!(x.len(), hidden);
        assert!((norm(x) - 1.0).abs() < 1e-5);
    }
    let (similar, unrelated) = (dot(&v[0], &v[1]), dot(&v[0], &v[2]));
    eprintln!("gemma3 mean: cos(cat, cat2) = {similar:.4}, cos(cat, tax) = {unrelated:.4}");
    assert!(similar > unrelated);
    assert_eq!(v[0], embed(&g, &[CAT], Pooling::Mean)[0]);
}
