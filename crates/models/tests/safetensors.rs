//! Loading the Hugging Face hub layout (`config.json` + safetensors) with quantize-on-load:
//! the real SmolLM2 GGUF, dequantized and written back under Hugging Face's names and row
//! order, must give the GGUF model's logits; bad directories give typed errors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::safetensors::unpermute_qk;
use fluent_ai_candle_models::{
    GgufFile, GgufTokenizer, Llama, ModelConfig, ModelError, QuantizationType,
};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("fluent-ai-candle-st-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config_json(c: &ModelConfig, tied: bool) -> serde_json::Value {
    serde_json::json!({
        "model_type": c.architecture,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "intermediate_size": c.ffn_size,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.context_length,
        "tie_word_embeddings": tied,
    })
}

/// The Hugging Face name of a llama.cpp tensor name.
fn hf_name(gguf_name: &str) -> String {
    match gguf_name {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.").unwrap();
    let (layer, t) = rest.split_once('.').unwrap();
    let hf = match t {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => panic!("unexpected tensor {other}"),
    };
    format!("model.layers.{layer}.{hf}")
}

/// SmolLM2's GGUF, dequantized, written into `dir` as a hub-layout directory (f32
/// safetensors, query/key rows back in Hugging Face's order, `config.json`).
fn write_smollm2_hub_dir(dir: &Path) {
    {
        let mut gguf = GgufFile::open(common::smollm2_path()).unwrap();
        let config = ModelConfig::from_gguf(&gguf).unwrap();
        let tied = !gguf.has_tensor("output.weight");
        let names: Vec<String> = gguf.content().tensor_infos.keys().cloned().collect();
        let mut tensors = HashMap::new();
        for name in names {
            let t = gguf
                .tensor(&name, &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            let t = if name.ends_with("attn_q.weight") {
                unpermute_qk(&t, config.n_heads).unwrap()
            } else if name.ends_with("attn_k.weight") {
                unpermute_qk(&t, config.n_kv_heads).unwrap()
            } else {
                t
            };
            tensors.insert(hf_name(&name), t);
        }
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        std::fs::write(
            dir.join("config.json"),
            config_json(&config, tied).to_string(),
        )
        .unwrap();
    }
}

fn logits(model: &Llama, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model
        .new_cache(&KvCacheConfig::default().max_entries(ids.len()))
        .unwrap();
    model
        .forward(ids, &mut cache, true)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// Logits at every position from candle-transformers' own llama (Hugging Face layout,
/// rotating the two halves of each head, f32, no quantization) on the hub directory.
fn candle_transformers_logits(dir: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    use candle_transformers::models::llama as ct;
    let config: ct::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let config = config.into_config(false);
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = ct::Llama::load(vb, &config).unwrap();
    let mut cache = ct::Cache::new(true, DType::F32, &config, &Device::Cpu).unwrap();
    ids.iter()
        .enumerate()
        .map(|(pos, &id)| {
            let x = Tensor::new(&[[id]], &Device::Cpu).unwrap();
            let l = model.forward(&x, pos, &mut cache).unwrap();
            l.flatten_all().unwrap().to_vec1().unwrap()
        })
        .collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn argmax(rows: &[Vec<f32>]) -> Vec<usize> {
    let t = Tensor::new(rows.to_vec(), &Device::Cpu).unwrap();
    let a: Vec<u32> = t.argmax(D::Minus1).unwrap().to_vec1().unwrap();
    a.into_iter().map(|x| x as usize).collect()
}

#[test]
fn smollm2_from_safetensors_matches_the_gguf_model() {
    let tmp = TempDir::new("smollm2");
    let dir = tmp.0.as_path();
    let t0 = std::time::Instant::now();
    write_smollm2_hub_dir(dir);
    eprintln!("wrote the hub-layout directory in {:.1?}", t0.elapsed());
    let mut gguf = GgufFile::open(common::smollm2_path()).unwrap();
    let tokenizer = GgufTokenizer::from_gguf(gguf.content()).unwrap();
    let gguf_model = Llama::load(&mut gguf, &Device::Cpu, &mut |_| {}).unwrap();
    let ids = tokenizer
        .encode(
            "The quick brown fox jumps over the lazy dog, and then it runs into the forest \
             where the old owl lives.",
            false,
        )
        .unwrap();
    let ids = &ids[..ids.len().min(24)];
    assert!(ids.len() >= 20, "prompt of {} tokens", ids.len());
    let reference = logits(&gguf_model, ids);
    let ref_argmax = argmax(&reference);
    let scale = reference.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    drop(gguf_model);
    // The exact check of the loader (names, row permutation, config): our decoder on the
    // F32 safetensors against candle-transformers' llama on the same files, neither of them
    // quantizing anything.
    let exact = candle_transformers_logits(dir, ids);
    let f32_model = Llama::load_safetensors(dir, QuantizationType::F32, &Device::Cpu).unwrap();
    let ours = logits(&f32_model, ids);
    drop(f32_model);
    let d = max_abs_diff(&ours, &exact);
    let agree = argmax(&ours)
        .iter()
        .zip(argmax(&exact))
        .filter(|(a, b)| **a == *b)
        .count();
    eprintln!(
        "safetensors F32 vs candle-transformers' llama: argmax {agree}/{}, max |logit diff| \
         {d:.5} ({:.6} of the logit scale)",
        ids.len(),
        d / scale
    );
    assert!(d < 1e-3 * scale, "{d} vs scale {scale}");
    assert_eq!(agree, ids.len());
    let agree_with = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        argmax(a)
            .iter()
            .zip(argmax(b))
            .filter(|(x, y)| **x == *y)
            .count()
    };
    eprintln!(
        "GGUF (Q4_1 weights, Q8 activations) vs unquantized: argmax {}/{}, max |logit diff| {:.4}",
        agree_with(&reference, &exact),
        ids.len(),
        max_abs_diff(&reference, &exact)
    );
    // Against the GGUF model, which quantizes activations to 8 bits in every layer.
    for (quant, min_agree) in [
        (QuantizationType::F32, 0.9),
        (QuantizationType::Q8_0, 0.8),
        // Q4_0 re-quantizes weights that are already 4-bit (Q4_1) in the GGUF, the tied
        // output projection included: SmolLM2 135M loses much of its argmax to that.
        (QuantizationType::Q4_0, 0.35),
    ] {
        let model = Llama::load_safetensors(dir, quant, &Device::Cpu).unwrap();
        assert_eq!(model.config(), &ModelConfig::from_gguf(&gguf).unwrap());
        let ours = logits(&model, ids);
        let agree = argmax(&ours)
            .iter()
            .zip(&ref_argmax)
            .filter(|(a, b)| a == b)
            .count();
        let max_diff = ours
            .iter()
            .flatten()
            .zip(reference.iter().flatten())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let n = reference.iter().flatten().count() as f32;
        let mean_diff = ours
            .iter()
            .flatten()
            .zip(reference.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / n;
        let worst_pos = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())))
            .enumerate()
            .fold((0, 0f32), |w, (i, d)| if d > w.1 { (i, d) } else { w });
        eprintln!(
            "safetensors {quant:?}: argmax {agree}/{} positions agree with the GGUF model, \
             max |logit diff| {max_diff:.4} ({:.4} of the logit scale {scale:.2}, at position \
             {}), mean |diff| {mean_diff:.4}; vs unquantized: argmax {}/{}",
            ids.len(),
            max_diff / scale,
            worst_pos.0,
            agree_with(&ours, &exact),
            ids.len()
        );
        assert!(ours.iter().flatten().all(|x| x.is_finite()), "{quant:?}");
        assert!(
            agree as f64 >= min_agree * ids.len() as f64,
            "{quant:?}: {agree}/{}",
            ids.len()
        );
        if quant == QuantizationType::F32 {
            assert!(max_diff < 0.1 * scale, "{max_diff} vs scale {scale}");
        }
    }
}

/// A tiny random llama in the hub layout: hidden 64, 1 layer, 4 heads (2 KV), vocab 40.
fn tiny_model(dir: &Path, skip: Option<&str>) {
    let (hidden, ffn, vocab, heads, kv_heads) = (64usize, 96usize, 40usize, 4usize, 2usize);
    let kv_dim = hidden / heads * kv_heads;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 0.1, shape, &Device::Cpu).unwrap();
    let mut t = HashMap::new();
    t.insert("model.embed_tokens.weight", randn(&[vocab, hidden]));
    t.insert(
        "model.norm.weight",
        Tensor::ones(hidden, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = "model.layers.0";
    let ones = || Tensor::ones(hidden, DType::F32, &Device::Cpu).unwrap();
    let mut names = vec![
        (format!("{p}.input_layernorm.weight"), ones()),
        (format!("{p}.post_attention_layernorm.weight"), ones()),
        (
            format!("{p}.self_attn.q_proj.weight"),
            randn(&[hidden, hidden]),
        ),
        (
            format!("{p}.self_attn.k_proj.weight"),
            randn(&[kv_dim, hidden]),
        ),
        (
            format!("{p}.self_attn.v_proj.weight"),
            randn(&[kv_dim, hidden]),
        ),
        (
            format!("{p}.self_attn.o_proj.weight"),
            randn(&[hidden, hidden]),
        ),
        (format!("{p}.mlp.gate_proj.weight"), randn(&[ffn, hidden])),
        (format!("{p}.mlp.up_proj.weight"), randn(&[ffn, hidden])),
        (format!("{p}.mlp.down_proj.weight"), randn(&[hidden, ffn])),
    ];
    names.retain(|(n, _)| Some(n.as_str()) != skip);
    let mut all: HashMap<String, Tensor> = t
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_dtype(DType::BF16).unwrap()))
        .collect();
    for (n, v) in names {
        all.insert(n, v.to_dtype(DType::BF16).unwrap());
    }
    candle_core::safetensors::save(&all, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": hidden, "num_hidden_layers": 1,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "intermediate_size": ffn, "vocab_size": vocab, "max_position_embeddings": 64,
        "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn tiny_bf16_model_loads_and_runs() {
    let dir = TempDir::new("tiny");
    tiny_model(&dir.0, None);
    for quant in [
        QuantizationType::F32,
        QuantizationType::F16,
        QuantizationType::Q8_0,
    ] {
        let model = Llama::load_safetensors(&dir.0, quant, &Device::Cpu).unwrap();
        let rows = logits(&model, &[1, 2, 3]);
        assert_eq!((rows.len(), rows[0].len()), (3, 40));
        assert!(rows.iter().flatten().all(|x| x.is_finite()), "{quant:?}");
    }
    // Rows of 64 values are not whole Q4_K super-blocks (256).
    let err = Llama::load_safetensors(&dir.0, QuantizationType::Q4K, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::BadTensor { .. }), "{err}");
}

#[test]
fn missing_config_key_and_missing_tensor_are_typed_errors() {
    let dir = TempDir::new("missing");
    let skipped = "model.layers.0.mlp.down_proj.weight";
    tiny_model(&dir.0, Some(skipped));
    let err = Llama::load_safetensors(&dir.0, QuantizationType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, ModelError::BadTensor { name, .. } if name == skipped),
        "{err}"
    );

    let path = dir.0.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&path, config.to_string()).unwrap();
    let err = Llama::load_safetensors(&dir.0, QuantizationType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingMetadata { key } if key == "hidden_size"),
        "{err}"
    );

    config["hidden_size"] = 64.into();
    config["model_type"] = "gpt2".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let err = Llama::load_safetensors(&dir.0, QuantizationType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture(_)),
        "{err}"
    );

    let empty = TempDir::new("empty");
    let err = Llama::load_safetensors(&empty.0, QuantizationType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::NotFound { .. }), "{err}");
}
