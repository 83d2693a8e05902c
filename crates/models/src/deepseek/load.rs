//! [`DeepSeek::load`]: the weights of a `deepseek2` GGUF, every tensor's shape checked.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::mla::{Mla, QueryProj};
use super::moe::{Mlp, Moe};
use super::{Block, DeepSeek, DeepSeekConfig, Ffn};
use crate::gguf::GgufFile;
use crate::llama::LoadProgress;
use crate::quant::QLinear;
use crate::weights::{embedding_and_output, linear, vector};
use crate::{ModelError, Result};

impl DeepSeek {
    /// Loads the weights of a `deepseek2` GGUF onto `device`, calling `progress` after each
    /// tensor. A missing or misshapen tensor is [`ModelError::BadTensor`] naming it; a missing
    /// or inconsistent hyper-parameter is [`ModelError::MissingMetadata`] or
    /// [`ModelError::InvalidMetadata`] naming the key; a feature this decoder does not
    /// implement is [`ModelError::UnsupportedFeature`].
    pub fn load(
        gguf: &mut GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let config = DeepSeekConfig::from_gguf(gguf)?;
        let cfg = &config;
        let c = &cfg.base;
        let blk = |i: usize, t: &str| format!("blk.{i}.{t}");
        // Per block: which tensors the file has decides the layouts.
        let split_kv_b = |gguf: &GgufFile, i: usize| gguf.has_tensor(&blk(i, "attn_k_b.weight"));
        let mut total = 3;
        for i in 0..c.n_layers {
            if gguf.has_tensor(&blk(i, "ffn_gate_up_exps.weight")) {
                return Err(ModelError::UnsupportedFeature {
                    name: blk(i, "ffn_gate_up_exps.weight"),
                    reason: "fused gate/up expert tensors are not implemented".into(),
                });
            }
            let q = if cfg.q_lora_rank.is_some() { 3 } else { 1 };
            let kv_b = if split_kv_b(gguf, i) { 2 } else { 1 };
            let ffn = if !cfg.is_moe(i) {
                3
            } else {
                let bias = gguf.has_tensor(&blk(i, "exp_probs_b.bias")) as usize;
                let shared = if cfg.shared_experts > 0 { 3 } else { 0 };
                1 + bias + 3 + shared
            };
            total += 5 + q + kv_b + ffn;
        }
        let mut loaded = 0;
        let mut tick = |n: usize| {
            loaded += n;
            progress(LoadProgress { loaded, total });
        };

        let (embedding, output) = embedding_and_output(gguf, c, device)?;
        tick(2);
        let norm = vector(gguf, "output_norm.weight", c.hidden_size, device)?;
        tick(1);

        let (h, heads) = (c.hidden_size, c.n_heads);
        let (nope, rope, v, rank) = (
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        );
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |t: &str| blk(i, t);
            let attn_norm = vector(gguf, &n("attn_norm.weight"), h, device)?;
            let q = match cfg.q_lora_rank {
                Some(qr) => QueryProj::LowRank {
                    a: linear(gguf, &n("attn_q_a.weight"), qr, h, device)?,
                    norm: vector(gguf, &n("attn_q_a_norm.weight"), qr, device)?,
                    b: linear(gguf, &n("attn_q_b.weight"), heads * c.head_dim, qr, device)?,
                },
                None => QueryProj::Direct(linear(
                    gguf,
                    &n("attn_q.weight"),
                    heads * c.head_dim,
                    h,
                    device,
                )?),
            };
            let kv_a = linear(gguf, &n("attn_kv_a_mqa.weight"), rank + rope, h, device)?;
            let kv_a_norm = vector(gguf, &n("attn_kv_a_norm.weight"), rank, device)?;
            let (k_b, v_b) = if split_kv_b(gguf, i) {
                let k_b = dense(
                    gguf,
                    &n("attn_k_b.weight"),
                    &[heads, rank, nope],
                    "heads, kv_lora_rank, qk_nope",
                    device,
                )?;
                let v_b = dense(
                    gguf,
                    &n("attn_v_b.weight"),
                    &[heads, v, rank],
                    "heads, v_head, kv_lora_rank",
                    device,
                )?;
                (
                    k_b.transpose(1, 2)?.contiguous()?,
                    v_b.transpose(1, 2)?.contiguous()?,
                )
            } else {
                let name = n("attn_kv_b.weight");
                if !gguf.has_tensor(&name) {
                    return Err(ModelError::BadTensor {
                        name,
                        reason: "missing from the GGUF file (and so are attn_k_b/attn_v_b)".into(),
                    });
                }
                let kv_b = dense(
                    gguf,
                    &name,
                    &[heads * (nope + v), rank],
                    "heads x (qk_nope + v_head), kv_lora_rank",
                    device,
                )?
                .reshape((heads, nope + v, rank))?;
                (
                    kv_b.narrow(1, 0, nope)?.contiguous()?,
                    kv_b.narrow(1, nope, v)?.transpose(1, 2)?.contiguous()?,
                )
            };
            let wo = linear(gguf, &n("attn_output.weight"), h, heads * v, device)?;
            let ffn_norm = vector(gguf, &n("ffn_norm.weight"), h, device)?;
            let mlp = |gguf: &mut GgufFile, suffix: &str, width: usize| -> Result<Mlp> {
                Ok(Mlp {
                    gate: linear(
                        gguf,
                        &n(&format!("ffn_gate{suffix}.weight")),
                        width,
                        h,
                        device,
                    )?,
                    up: linear(
                        gguf,
                        &n(&format!("ffn_up{suffix}.weight")),
                        width,
                        h,
                        device,
                    )?,
                    down: linear(
                        gguf,
                        &n(&format!("ffn_down{suffix}.weight")),
                        h,
                        width,
                        device,
                    )?,
                })
            };
            let ffn = if cfg.is_moe(i) {
                let (e, ff) = (cfg.expert_count, cfg.expert_ffn_size);
                let why = format!("expert_count {e}, embedding_length {h}");
                let router = dense(gguf, &n("ffn_gate_inp.weight"), &[e, h], &why, device)?;
                let bias_name = n("exp_probs_b.bias");
                let selection_bias = if gguf.has_tensor(&bias_name) {
                    let b = dense(gguf, &bias_name, &[e], &format!("expert_count {e}"), device)?;
                    Some(b.to_vec1::<f32>()?)
                } else {
                    None
                };
                let gate = expert_slices(gguf, &n("ffn_gate_exps.weight"), [e, ff, h], device)?;
                let up = expert_slices(gguf, &n("ffn_up_exps.weight"), [e, ff, h], device)?;
                let down = expert_slices(gguf, &n("ffn_down_exps.weight"), [e, h, ff], device)?;
                let experts = gate
                    .into_iter()
                    .zip(up)
                    .zip(down)
                    .map(|((gate, up), down)| Mlp { gate, up, down })
                    .collect();
                let shared = if cfg.shared_experts > 0 {
                    Some(mlp(gguf, "_shexp", ff * cfg.shared_experts)?)
                } else {
                    None
                };
                Ffn::Moe(Moe {
                    router,
                    selection_bias,
                    experts,
                    shared,
                })
            } else {
                Ffn::Dense(mlp(gguf, "", c.ffn_size)?)
            };
            blocks.push(Block {
                attn_norm,
                attn: Mla {
                    q,
                    kv_a,
                    kv_a_norm,
                    k_b,
                    v_b,
                    wo,
                },
                ffn_norm,
                ffn,
            });
            let q_tensors = if cfg.q_lora_rank.is_some() { 3 } else { 1 };
            let kv_b_tensors = if split_kv_b(gguf, i) { 2 } else { 1 };
            let ffn_tensors = match &blocks[i].ffn {
                Ffn::Dense(_) => 3,
                Ffn::Moe(m) => {
                    4 + m.selection_bias.is_some() as usize + 3 * m.shared.is_some() as usize
                }
            };
            tick(5 + q_tensors + kv_b_tensors + ffn_tensors);
        }
        let rope_mix = match &cfg.yarn {
            Some(y) => y.extrapolation_mix(rope, c.rope_theta),
            None => vec![1.0; rope / 2],
        };
        Ok(Self {
            config,
            embedding,
            blocks,
            norm,
            output,
            rope_mix,
            device: device.clone(),
        })
    }
}

/// A tensor of shape `dims`, dequantized to f32; a wrong shape is explained by `why`.
fn dense(
    gguf: &mut GgufFile,
    name: &str,
    dims: &[usize],
    why: &str,
    device: &Device,
) -> Result<Tensor> {
    let t = gguf.tensor(name, device)?;
    check_shape(name, t.shape().dims(), dims, why)?;
    Ok(t.dequantize(device)?)
}

fn check_shape(name: &str, got: &[usize], want: &[usize], why: &str) -> Result<()> {
    if got != want {
        return Err(ModelError::BadTensor {
            name: name.to_string(),
            reason: format!("expected shape {want:?} ({why}), found {got:?}"),
        });
    }
    Ok(())
}

/// The `experts` slices of a 3-D expert tensor `[experts, out, inp]`, each its own
/// [`QLinear`] (the bytes of one slice, in the file's format).
fn expert_slices(
    gguf: &mut GgufFile,
    name: &str,
    [experts, out, inp]: [usize; 3],
    device: &Device,
) -> Result<Vec<QLinear>> {
    let t = gguf.tensor(name, &Device::Cpu)?;
    check_shape(
        name,
        t.shape().dims(),
        &[experts, out, inp],
        &format!("expert_count {experts}, {out} x {inp} per expert"),
    )?;
    let bad = |e: candle_core::Error| ModelError::BadTensor {
        name: name.to_string(),
        reason: e.to_string(),
    };
    let dtype = t.dtype();
    let bytes = out * inp / dtype.block_size() * dtype.type_size();
    let data = t.data().map_err(bad)?;
    (0..experts)
        .map(|e| {
            let raw = &data[e * bytes..(e + 1) * bytes];
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                dtype,
                raw,
                vec![out, inp],
                device,
            )
            .map_err(bad)?;
            QLinear::from_qtensor(Arc::new(q)).map_err(bad)
        })
        .collect()
}
