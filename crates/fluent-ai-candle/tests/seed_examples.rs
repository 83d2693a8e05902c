//! Every Rust example of the seed README (the project's original specification), compiled
//! against this crate with its lines unchanged and run on the real default model where it
//! generates. Only the wrapping a fragment needs is added: a function around it, the `use`
//! lines it leaves out, the variables an earlier example defines, and checks after it. Where
//! the seed's text is not valid Rust the smallest fix is made, marked `SEED FIX` (docs/SEED.md
//! lists each one).
//!
//! The seed loads `./models/kimi-k2.safetensors`, `./models/tokenizer.json` and
//! `models/kimi-k2-q4.safetensors`. Each test that touches them runs its example in a child
//! process of this test binary whose working directory holds a `models/` folder where those
//! names point at the model under test: `FLUENT_AI_CANDLE_SEED_MODEL` if set, else the cached
//! default model (SmolLM2-135M-Instruct, a Q4_1 GGUF, which is also the tokenizer file:
//! `CandleTokenizer::from_file` and `CandleModel::load` recognize GGUF by its magic bytes).
//! The parent never changes its own working directory, so tests run in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD_ENV: &str = "FLUENT_AI_CANDLE_SEED_EXAMPLE_DIR";

/// The model the seed's placeholder paths stand for.
fn model_file() -> PathBuf {
    if let Some(p) = std::env::var_os("FLUENT_AI_CANDLE_SEED_MODEL") {
        return PathBuf::from(p);
    }
    let path = fluent_ai_candle::models::cache::model_path("smollm2-135m-instruct").unwrap();
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        path.display()
    );
    path
}

fn link(target: &Path, at: &Path) {
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, at).unwrap();
    #[cfg(not(unix))]
    std::fs::hard_link(target, at).unwrap();
}

/// Runs `body` with the seed's `models/` paths in the working directory: in a child process
/// of this test binary (running only the test `name`) started in a fresh directory that
/// holds them. In that child, runs `body` itself.
fn with_seed_models(name: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD_ENV).is_some() {
        body();
        return;
    }
    let model = model_file().canonicalize().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "fluent-ai-candle-seed-{}-{}",
        std::process::id(),
        name.replace("::", "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    for file in [
        "kimi-k2.safetensors",
        "kimi-k2-q4.safetensors",
        "tokenizer.json",
    ] {
        link(&model, &dir.join("models").join(file));
    }
    let status = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &dir)
        .current_dir(&dir)
        .status()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "the example {name} failed: {status}");
}

/// "Basic Usage": the seed's `main`, verbatim.
#[rustfmt::skip] // the seed's lines as written
mod basic_usage {
    // Wrapping: the names the example uses but does not import.
    use fluent_ai_candle::CandleCompletionRequest;
    use std::sync::Arc;

    // ---- seed README, "Basic Usage" ----
    use fluent_ai_candle::{
        CandleGenerator, CandleModel, CandleTokenizer,
        GenerationConfig, device::auto_device
    };

    #[tokio::main]
    async fn main() -> Result<(), Box<dyn std::error::Error>> {
        // Automatic device selection (CUDA -> Metal -> CPU)
        let device = auto_device()?;

        // Load model and tokenizer
        let model = CandleModel::load("./models/kimi-k2.safetensors", &device).await?;
        let tokenizer = CandleTokenizer::from_file("./models/tokenizer.json")?;

        // Configure generation parameters
        let config = GenerationConfig::default()
            .temperature(0.7)
            .max_tokens(512)
            .top_p(0.9);

        // Create generator
        let generator = CandleGenerator::new(
            Arc::new(model),
            Arc::new(tokenizer),
            config,
            device
        );

        // Generate text
        let request = CandleCompletionRequest {
            prompt: "Explain quantum computing in simple terms:".to_string(),
            max_tokens: Some(200),
            temperature: Some(0.8),
            ..Default::default()
        };

        let response = generator.generate(&request).collect().await?;
        println!("Generated: {}", response.choices[0].text);

        Ok(())
    }
    // ---- end ----

    #[test]
    fn runs() {
        super::with_seed_models("basic_usage::runs", || main().unwrap());
    }
}

/// The generator and request "Basic Usage" builds, for the examples that use them.
async fn basic_generator() -> (
    fluent_ai_candle::CandleGenerator,
    fluent_ai_candle::CandleTokenizer,
    fluent_ai_candle::CandleCompletionRequest,
) {
    use fluent_ai_candle::{
        device::auto_device, CandleCompletionRequest, CandleGenerator, CandleModel,
        CandleTokenizer, GenerationConfig,
    };
    use std::sync::Arc;
    let device = auto_device().unwrap();
    let model = CandleModel::load("./models/kimi-k2.safetensors", &device)
        .await
        .unwrap();
    let tokenizer = CandleTokenizer::from_file("./models/tokenizer.json").unwrap();
    let config = GenerationConfig::default()
        .temperature(0.7)
        .max_tokens(512)
        .top_p(0.9);
    let generator =
        CandleGenerator::try_new(Arc::new(model), Arc::new(tokenizer.clone()), config, device)
            .unwrap();
    let request = CandleCompletionRequest {
        prompt: "Explain quantum computing in simple terms:".to_string(),
        max_tokens: Some(24),
        temperature: Some(0.8),
        ..Default::default()
    };
    (generator, tokenizer, request)
}

/// "Streaming Generation".
mod streaming {
    use fluent_ai_candle::{CandleCompletionRequest, CandleGenerator};

    /// Returns the text the example printed, for the check.
    #[rustfmt::skip] // the seed's lines as written
    async fn example(generator: CandleGenerator, request: CandleCompletionRequest) -> String {
        let mut printed = String::new();
        // ---- seed README, "Streaming Generation" ----
        use futures_util::StreamExt;

        let mut stream = generator.generate_stream(&request);
        while let Some(chunk) = stream.next().await {
            // SEED FIX: `&`: the seed moves `content` out of an index (E0507).
            if let Some(content) = &chunk.choices[0].delta.content {
                print!("{}", content); // Real-time output
                printed.push_str(content); // wrapping: keep what was printed
            }
        }
        // ---- end ----
        printed
    }

    #[test]
    fn runs() {
        super::with_seed_models("streaming::runs", || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let (generator, _, request) = super::basic_generator().await;
                let greedy = CandleCompletionRequest {
                    temperature: Some(0.0),
                    ..request
                };
                let whole = generator.generate(&greedy).collect().await.unwrap();
                let printed = example(generator, greedy).await;
                assert!(!printed.is_empty());
                assert_eq!(printed, whole.choices[0].text);
            })
        });
    }

    /// A request the engine refuses is a stream of one error chunk (the seed's stream has
    /// no `Result`); `collect()` returns the typed error.
    #[test]
    fn refusal_is_an_error_chunk() {
        super::with_seed_models("streaming::refusal_is_an_error_chunk", || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                use fluent_ai_candle::{EngineError, FinishReason};
                use futures_util::StreamExt;
                let (generator, _, request) = super::basic_generator().await;
                let bad = CandleCompletionRequest {
                    max_tokens: Some(0),
                    ..request
                };
                let mut stream = generator.generate_stream(&bad);
                assert!(stream.refusal().is_some());
                let chunk = stream.next().await.unwrap();
                assert_eq!(chunk.choices[0].finish_reason, Some(FinishReason::Error));
                assert!(chunk.choices[0].error.is_some());
                assert!(stream.next().await.is_none());
                let e = generator.generate_stream(&bad).collect().await.unwrap_err();
                assert!(matches!(e, EngineError::InvalidRequest(_)), "{e}");
            })
        });
    }
}

/// "Advanced Configuration".
#[rustfmt::skip] // the seed's lines as written
mod advanced_configuration {
    // Wrapping: what the example uses but does not import or define.
    use fluent_ai_candle::{
        device::auto_device, CandleModel, CandleTokenizer, EvictionStrategy, GenerationConfig,
    };
    use std::time::Duration;

    // ---- seed README, "Advanced Configuration" (imports) ----
    use fluent_ai_candle::{
        CandleClientBuilder, DeviceType, QuantizationType,
        Sampling, StreamingConfig, KVCacheConfig
    };
    // ---- end ----

    async fn example() -> Result<
        (fluent_ai_candle::CandleGenerator, fluent_ai_candle::CandleGenerator),
        Box<dyn std::error::Error>,
    > {
        // Wrapping: the variables "Basic Usage" defines.
        let device = auto_device()?;
        let model = CandleModel::load("./models/kimi-k2.safetensors", &device).await?;
        let tokenizer = CandleTokenizer::from_file("./models/tokenizer.json")?;
        let config = GenerationConfig::default()
            .temperature(0.7)
            .max_tokens(512)
            .top_p(0.9);

        // ---- seed README, "Advanced Configuration" ----
        // Sophisticated setup with all features
        let client = CandleClientBuilder::new()
            .model_path("models/kimi-k2-q4.safetensors")
            .tokenizer_path("models/tokenizer.json")
            .device_type(DeviceType::Auto)
            .quantization(QuantizationType::Q4)
            .max_concurrent_requests(4)
            .build()?;

        // Advanced sampling configuration
        let sampling = Sampling::TopKThenTopP {
            k: 40,
            p: 0.95,
            temperature: 0.8
        };

        let streaming_config = StreamingConfig::default()
            .chunk_size(8)
            .buffer_timeout(Duration::from_millis(50));

        let kv_cache_config = KVCacheConfig::default()
            .max_entries(1000)
            .eviction_strategy(EvictionStrategy::LRU);

        let generator = CandleGenerator::with_sophisticated_features(
            model, tokenizer, config, device,
            sampling, streaming_config, Some(kv_cache_config)
        )?;
        // ---- end ----
        Ok((client, generator))
    }
    use fluent_ai_candle::CandleGenerator;

    #[test]
    fn runs() {
        super::with_seed_models("advanced_configuration::runs", || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let (client, generator) = example().await.unwrap();
                // The builder's knobs took effect.
                assert_eq!(client.config().max_concurrent_requests, 4);
                // The sophisticated generator's defaults are the example's.
                let c = generator.config();
                let preset = Sampling::TopKThenTopP { k: 40, p: 0.95, temperature: 0.8 };
                assert_eq!(c.sampling, Some(preset.clone().into()));
                // A request that describes no sampling runs the preset's chain.
                let plain = fluent_ai_candle::CandleCompletionRequest::default();
                let chain = plain.sampling_config(c).unwrap().chain;
                assert_eq!(chain, fluent_ai_candle::SamplingConfig::from(preset).chain);
                assert_eq!(c.streaming.chunk_size, 8);
                assert_eq!(c.streaming.buffer_timeout, Duration::from_millis(50));
                let kv = c.kv_cache.clone().unwrap();
                assert_eq!(kv.max_entries, 1000);
                assert_eq!(kv.eviction_strategy, EvictionStrategy::LRU);
                // Both generate.
                let request = fluent_ai_candle::CandleCompletionRequest {
                    prompt: "The capital of France is".into(),
                    max_tokens: Some(8),
                    ..Default::default()
                };
                for g in [&client, &generator] {
                    let r = g.generate(&request).collect().await.unwrap();
                    assert!(r.usage.completion_tokens > 0);
                }
                // Chunks of up to 8 tokens.
                let mut s = generator.generate_stream(&request);
                use futures_util::StreamExt;
                while let Some(chunk) = s.next().await {
                    assert!(chunk.choices[0].delta.token_ids.len() <= 8);
                }
            })
        });
    }

    /// GGUF weights are re-quantized on load, only ever to fewer bits:
    /// `QuantizationType::Q8` asked of the 4-bit default model is a typed error, and `Q4` is
    /// the file as stored (its matrices are already 4-bit). Re-quantizing `F16`/`Q8_0`
    /// weights down is tested on the real model in models' `tests/requantize_gguf.rs`.
    #[test]
    fn requantizing_gguf_only_lowers_precision() {
        super::with_seed_models("advanced_configuration::requantizing_gguf_only_lowers_precision", || {
            let e = CandleClientBuilder::new()
                .model_path("models/kimi-k2-q4.safetensors")
                .quantization(QuantizationType::Q8)
                .build()
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    fluent_ai_candle::EngineError::Model(
                        fluent_ai_candle::ModelError::PrecisionIncrease { stored_bits: 4, requested_bits: 8, .. }
                    )
                ),
                "{e}"
            );
            let g = CandleClientBuilder::new()
                .model_path("models/kimi-k2-q4.safetensors")
                .quantization(QuantizationType::Q4)
                .build()
                .unwrap();
            let request = fluent_ai_candle::CandleCompletionRequest {
                prompt: "The capital of France is".into(),
                max_tokens: Some(4),
                temperature: Some(0.0),
                ..Default::default()
            };
            let r = tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(g.generate(&request).collect())
                .unwrap();
            assert!(r.usage.completion_tokens > 0);
        });
    }
}

/// "JSON Schema Constraints".
#[rustfmt::skip] // the seed's lines as written
mod json_schema_constraints {
    use fluent_ai_candle::{CandleCompletionRequest, CandleCompletionResponse, CandleGenerator, CandleTokenizer};

    async fn example(
        generator: CandleGenerator,
        tokenizer: CandleTokenizer,
    ) -> Result<CandleCompletionResponse, Box<dyn std::error::Error>> {
        // ---- seed README, "JSON Schema Constraints" ----
        #[allow(unused_imports)] // the seed imports JsonConstraint without using it
        use fluent_ai_candle::constraints::{JsonConstraint, create_json_constraint_for_tokenizer};
        use serde_json::json;

        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 0},
                "skills": {
                    "type": "array",
                    "items": {"type": "string"}
                }
            },
            "required": ["name", "age"]
        });

        let constraint = create_json_constraint_for_tokenizer(&schema, &tokenizer)?;

        let request = CandleCompletionRequest {
            prompt: "Generate a person profile:".to_string(),
            constraints: Some(vec![constraint]),
            ..Default::default()
        };

        // Output guaranteed to be valid JSON matching the schema
        let response = generator.generate(&request).collect().await?;
        // ---- end ----
        Ok(response)
    }

    #[test]
    fn runs() {
        super::with_seed_models("json_schema_constraints::runs", || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let (generator, tokenizer, _) = super::basic_generator().await;
                let response = example(generator, tokenizer).await.unwrap();
                let text = &response.choices[0].text;
                let value: serde_json::Value = serde_json::from_str(text).unwrap();
                assert!(value["name"].is_string(), "{text}");
                assert!(value["age"].as_u64().is_some(), "{text}");
            })
        });
    }
}

/// "Custom Grammar Constraints": the trait implementation, verbatim, run on the model.
#[rustfmt::skip] // the seed's lines as written
mod custom_grammar_constraints {
    // Wrapping: the validator the example calls but does not define (an email's prefix:
    // letters, digits, `.`, `_`, `-`, at most one `@`, not at the start).
    fn validate_email_format(text: &str) -> bool {
        text.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-@".contains(c))
            && text.matches('@').count() <= 1
            && !text.starts_with('@')
    }

    // ---- seed README, "Custom Grammar Constraints" ----
    use fluent_ai_candle::constraints::GenerationConstraint;

    struct EmailConstraint;

    impl GenerationConstraint for EmailConstraint {
        fn is_valid_next_token(&self, current_text: &str, next_token: &str) -> bool {
            // Custom validation logic for email format
            validate_email_format(&format!("{}{}", current_text, next_token))
        }

        fn is_complete(&self, text: &str) -> bool {
            text.contains('@') && text.ends_with(".com")
        }
    }
    // ---- end ----

    #[test]
    fn runs() {
        super::with_seed_models("custom_grammar_constraints::runs", || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                use fluent_ai_candle::{CandleCompletionRequest, ConstraintSpec};
                use std::sync::Arc;
                let (generator, _, _) = super::basic_generator().await;
                let request = CandleCompletionRequest {
                    prompt: "The support team's email address is ".to_string(),
                    max_tokens: Some(12),
                    temperature: Some(0.0),
                    constraints: Some(vec![ConstraintSpec::Custom(Arc::new(EmailConstraint))]),
                    ..Default::default()
                };
                let response = generator.generate(&request).collect().await.unwrap();
                let text = &response.choices[0].text;
                assert!(!text.is_empty());
                assert!(validate_email_format(text), "{text:?}");
            })
        });
    }
}

/// "SIMD Optimizations".
#[rustfmt::skip] // the seed's lines as written
#[test]
fn simd_optimizations() -> Result<(), Box<dyn std::error::Error>> {
    // Wrapping: the inputs the example uses.
    let logits = vec![0.5f32, 2.0, -1.0, 1.5, 0.0, 3.0];
    let temperature = 0.8;
    let k = 3;

    // ---- seed README, "SIMD Optimizations" ----
    #[allow(unused_imports)] // the seed imports simd_cumsum_f32 without using it
    use fluent_ai_candle::sampling::simd::{
        simd_softmax_f32,    // AVX2/NEON softmax
        simd_top_k_f32,      // Vectorized top-k selection
        simd_cumsum_f32,     // Fast cumulative sum for nucleus sampling
    };

    // Automatic SIMD dispatch based on CPU features
    let probabilities = simd_softmax_f32(&logits, temperature)?;
    let top_tokens = simd_top_k_f32(&probabilities, k)?;
    // ---- end ----

    let sum: f32 = probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-5);
    let ids: Vec<u32> = top_tokens.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, vec![5, 1, 3]);
    let expected = (2.0f32 / temperature).exp()
        / logits.iter().map(|l| (l / temperature).exp()).sum::<f32>();
    assert!((top_tokens[1].1 - expected).abs() < 1e-5);
    assert!(simd_softmax_f32(&[], 1.0).is_err());
    assert!(simd_top_k_f32(&probabilities, 0).is_err());
    Ok(())
}

/// "Zero-Allocation Design Principles": a style rule, not an API; compiled and run as
/// written, with the tensor and the helper it assumes defined by the wrapping.
#[rustfmt::skip] // the seed's lines as written
#[test]
fn zero_allocation_principle() -> Result<(), Box<dyn std::error::Error>> {
    // Wrapping: the names the snippet assumes.
    use arrayvec::ArrayVec;
    use candle_core::{Device, Tensor};
    let output = Tensor::new(&[7u32, 11, 13], &Device::Cpu)?;
    let tensor = output.clone();
    /// Copies a tensor's ids into a stack buffer, one scalar at a time (no `Vec`).
    fn tensor_to_tokens(t: &Tensor, out: &mut ArrayVec<u32, 2048>) -> candle_core::Result<()> {
        for i in 0..t.dim(0)? {
            out.push(t.get(i)?.to_scalar::<u32>()?);
        }
        Ok(())
    }

    // ---- seed README, "Zero-Allocation Design Principles" ----
    // ✅ Good: Stack allocation with ArrayVec
    let mut token_buffer = ArrayVec::<u32, 2048>::new();
    tensor_to_tokens(&output, &mut token_buffer)?;

    // ❌ Bad: Heap allocation
    let tokens: Vec<u32> = tensor.to_vec1()?;
    // ---- end ----

    assert_eq!(token_buffer.as_slice(), tokens.as_slice());
    Ok(())
}

/// "Lock-Free Patterns": a style rule; compiled and run.
#[rustfmt::skip] // the seed's lines as written
#[test]
fn lock_free_patterns() {
    // Wrapping: the names the snippet assumes.
    use std::sync::{Arc, Mutex};
    type Token = u32;

    // ---- seed README, "Lock-Free Patterns" ----
    // ✅ Good: Crossbeam channels for communication
    let (sender, receiver) = crossbeam_channel::unbounded();

    // ❌ Bad: Mutex for communication
    // SEED FIX: turbofish and `default()`: `Arc<Mutex<Vec<Token>>>::new()` is not an
    // expression (comparison operators), and `Arc::new` needs a value.
    let shared_data = Arc::<Mutex<Vec<Token>>>::default();
    // ---- end ----

    sender.send(1 as Token).unwrap();
    assert_eq!(receiver.recv().unwrap(), 1);
    shared_data.lock().unwrap().push(2);
    assert_eq!(*shared_data.lock().unwrap(), vec![2]);
}

/// "SIMD-First Sampling": a dispatch sketch. The seed's bodies are comments (`/* AVX2
/// implementation */`), which do not return the `Vec<f32>` the signatures promise; the
/// smallest fix makes each body call the crate's softmax, whose run-time dispatch picks the
/// AVX2, AVX-512 or NEON kernel (the seed's compile-time `cfg`s are kept as written).
#[rustfmt::skip] // the seed's lines as written
#[test]
fn simd_first_sampling() {
    // Wrapping: the kernel the fixed bodies call.
    fn kernel(logits: &[f32]) -> Vec<f32> {
        fluent_ai_candle::sampling::simd::simd_softmax_f32(logits, 1.0).unwrap_or_default()
    }

    // ---- seed README, "SIMD-First Sampling" ----
    // Automatic SIMD feature detection and dispatch
    #[cfg(target_feature = "avx2")]
    fn softmax_avx2(logits: &[f32]) -> Vec<f32> { kernel(logits) /* SEED FIX: was only `/* AVX2 implementation */` */ }

    #[cfg(target_feature = "neon")]
    fn softmax_neon(logits: &[f32]) -> Vec<f32> { kernel(logits) /* SEED FIX: was only `/* ARM NEON implementation */` */ }

    fn softmax_scalar(logits: &[f32]) -> Vec<f32> { kernel(logits) /* SEED FIX: was only `/* Fallback implementation */` */ }
    // ---- end ----

    let p = softmax_scalar(&[0.0, 0.0]);
    assert_eq!(p, vec![0.5, 0.5]);
    #[cfg(target_feature = "avx2")]
    assert_eq!(softmax_avx2(&[0.0, 0.0]), p);
    #[cfg(target_feature = "neon")]
    assert_eq!(softmax_neon(&[0.0, 0.0]), p);
}
