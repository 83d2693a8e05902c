//! A tiny random llama in the Hugging Face hub layout (`config.json`, `model.safetensors`):
//! one layer, hidden 64, 4 heads (2 KV), feed-forward 96, vocabulary [`VOCAB`]. Shared by the
//! models crate's safetensors tests and the CLI's `--model DIR` test (included there by path).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

/// The tiny model's vocabulary size.
pub const VOCAB: usize = 40;

/// Writes the tiny model into `dir`: random weights stored as `dtype`, every tensor but
/// `skip`, and a `config.json` with `extra`'s keys added.
pub fn write_tiny_llama(dir: &Path, dtype: DType, skip: Option<&str>, extra: serde_json::Value) {
    let (hidden, ffn, heads, kv_heads) = (64usize, 96usize, 4usize, 2usize);
    let kv_dim = hidden / heads * kv_heads;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 0.1, shape, &Device::Cpu).unwrap();
    let ones = || Tensor::ones(hidden, DType::F32, &Device::Cpu).unwrap();
    let p = "model.layers.0";
    let tensors: HashMap<String, Tensor> = [
        (
            "model.embed_tokens.weight".to_string(),
            randn(&[VOCAB, hidden]),
        ),
        ("model.norm.weight".into(), ones()),
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
    ]
    .into_iter()
    .filter(|(name, _)| Some(name.as_str()) != skip)
    .map(|(name, t)| (name, t.to_dtype(dtype).unwrap()))
    .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let mut config = serde_json::json!({
        "model_type": "llama", "hidden_size": hidden, "num_hidden_layers": 1,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "intermediate_size": ffn, "vocab_size": VOCAB, "max_position_embeddings": 64,
        "tie_word_embeddings": true,
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}
