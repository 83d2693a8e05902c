//! Our DeepSeek-V3 decoder (`deepseek2`: DeepSeek-V2/V3, Kimi K2) on small synthetic GGUF
//! files with llama.cpp's tensor names and metadata, loaded through `Decoder::load`, against
//! an independent reference written here from the architecture's math: plain f32 loops over
//! the weights read back from the file, attention computed per head on *decompressed* keys and
//! values over the whole sequence (no cache, no weight absorption), RoPE in the Hugging Face
//! formulation (de-interleave, rotate halves) with YaRN's frequencies from the Hugging Face
//! formulas, and the router written out step by step.
//!
//! Checked: logits of every prompt position and of single-token decode steps through the
//! cache, for a DeepSeek-V3/Kimi-K2-like file (query compression, split `attn_k_b`/`attn_v_b`,
//! sigmoid routing with a selection bias, grouped routing, normalized and scaled weights, a
//! shared expert, YaRN; F16 weights, and again with Q8_0 matrices through `QLinear`) and a
//! DeepSeek-V2-Lite-like one (plain `attn_q`, `attn_kv_b`, softmax routing, two shared
//! experts, tied output; F32); batched decode steps against separate ones; re-rotation of the
//! cached rope keys by an attention-sink cache; load progress; typed errors on bad files.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{decoder, Decoder, DeepSeek, GgufFile, ModelError};

const ARCH: &str = "deepseek2";
const HIDDEN: usize = 64;
const HEADS: usize = 4;
const Q_LORA: usize = 32;
const KV_LORA: usize = 32;
const NOPE: usize = 16;
const ROPE: usize = 8;
const V_HEAD: usize = 32;
const FFN: usize = 96;
const EXPERT_FFN: usize = 32;
const EXPERTS: usize = 8;
const USED: usize = 3;
const VOCAB: usize = 128;
const CONTEXT: usize = 256;
const EPS: f32 = 1e-6;
const ROPE_BASE: f64 = 100.0;
const YARN_FACTOR: f64 = 4.0;
const YARN_ORIGINAL_CONTEXT: usize = 64;
/// What the converter writes: `0.1 · mscale_all_dim` (here `mscale_all_dim = 1`).
const YARN_LOG_MULTIPLIER: f64 = 0.1;

const PROMPT: [u32; 7] = [3, 17, 100, 45, 9, 127, 77];
const DECODE: [u32; 3] = [5, 120, 31];

/// What a synthetic file holds.
#[derive(Debug, Clone, Copy)]
struct Spec {
    layers: usize,
    /// `leading_dense_block_count`.
    lead_dense: usize,
    /// `attn_q_a`/`attn_q_a_norm`/`attn_q_b` instead of `attn_q`.
    q_lora: bool,
    /// `attn_k_b`/`attn_v_b` and the `_mla` head-size keys instead of `attn_kv_b`.
    split_kv_b: bool,
    /// Sigmoid gating with `exp_probs_b.bias`, instead of softmax without bias.
    sigmoid: bool,
    /// `(expert_group_count, expert_group_used_count)`.
    groups: Option<(usize, usize)>,
    /// `expert_weights_norm`.
    norm: bool,
    /// `expert_weights_scale`.
    scale: f32,
    /// `expert_shared_count`.
    shared: usize,
    /// YaRN RoPE scaling.
    yarn: bool,
    /// No `output.weight`: the output shares the token embedding.
    tied: bool,
    /// Format of the matrices whose rows are whole 32-value blocks (others, and vectors, F32).
    weights: GgmlDType,
}

/// DeepSeek-V3 / Kimi K2 in miniature.
fn v3() -> Spec {
    Spec {
        layers: 3,
        lead_dense: 1,
        q_lora: true,
        split_kv_b: true,
        sigmoid: true,
        groups: Some((4, 2)),
        norm: true,
        scale: 2.5,
        shared: 1,
        yarn: true,
        tied: false,
        weights: GgmlDType::F16,
    }
}

/// DeepSeek-V2-Lite in miniature.
fn v2_lite() -> Spec {
    Spec {
        layers: 3,
        lead_dense: 1,
        q_lora: false,
        split_kv_b: false,
        sigmoid: false,
        groups: None,
        norm: false,
        scale: 1.0,
        shared: 2,
        yarn: false,
        tied: true,
        weights: GgmlDType::F32,
    }
}

fn metadata(s: &Spec) -> Vec<(String, Value)> {
    let k = |name: &str| format!("{ARCH}.{name}");
    let u = |v: usize| Value::U32(v as u32);
    let mut md = vec![
        (
            "general.architecture".to_string(),
            Value::String(ARCH.into()),
        ),
        (k("context_length"), u(CONTEXT)),
        (k("embedding_length"), u(HIDDEN)),
        (k("block_count"), u(s.layers)),
        (k("feed_forward_length"), u(FFN)),
        (k("attention.head_count"), u(HEADS)),
        (k("attention.head_count_kv"), u(1)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(EPS)),
        (k("rope.freq_base"), Value::F32(ROPE_BASE as f32)),
        (k("rope.dimension_count"), u(ROPE)),
        (k("attention.kv_lora_rank"), u(KV_LORA)),
        (k("vocab_size"), u(VOCAB)),
        (k("leading_dense_block_count"), u(s.lead_dense)),
        (k("expert_feed_forward_length"), u(EXPERT_FFN)),
        (k("expert_count"), u(EXPERTS)),
        (k("expert_used_count"), u(USED)),
        (k("expert_shared_count"), u(s.shared)),
        (k("expert_weights_scale"), Value::F32(s.scale)),
        (k("expert_weights_norm"), Value::Bool(s.norm)),
        (k("expert_gating_func"), u(if s.sigmoid { 2 } else { 1 })),
    ];
    if s.q_lora {
        md.push((k("attention.q_lora_rank"), u(Q_LORA)));
    }
    if s.split_kv_b {
        // As the converter writes an MLA file: the plain lengths describe the latent cache.
        md.push((k("attention.key_length"), u(KV_LORA + ROPE)));
        md.push((k("attention.value_length"), u(KV_LORA)));
        md.push((k("attention.key_length_mla"), u(NOPE + ROPE)));
        md.push((k("attention.value_length_mla"), u(V_HEAD)));
    } else {
        md.push((k("attention.key_length"), u(NOPE + ROPE)));
        md.push((k("attention.value_length"), u(V_HEAD)));
    }
    if let Some((groups, used)) = s.groups {
        md.push((k("expert_group_count"), u(groups)));
        md.push((k("expert_group_used_count"), u(used)));
    }
    if s.yarn {
        md.push((k("rope.scaling.type"), Value::String("yarn".into())));
        md.push((k("rope.scaling.factor"), Value::F32(YARN_FACTOR as f32)));
        md.push((
            k("rope.scaling.original_context_length"),
            u(YARN_ORIGINAL_CONTEXT),
        ));
        md.push((
            k("rope.scaling.yarn_log_multiplier"),
            Value::F32(YARN_LOG_MULTIPLIER as f32),
        ));
    }
    md
}

fn tensors(s: &Spec) -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("output_norm.weight".to_string(), vec![HIDDEN]),
    ];
    if !s.tied {
        t.push(("output.weight".to_string(), vec![VOCAB, HIDDEN]));
    }
    for i in 0..s.layers {
        let mut layer: Vec<(&str, Vec<usize>)> = vec![("attn_norm.weight", vec![HIDDEN])];
        if s.q_lora {
            layer.push(("attn_q_a.weight", vec![Q_LORA, HIDDEN]));
            layer.push(("attn_q_a_norm.weight", vec![Q_LORA]));
            layer.push(("attn_q_b.weight", vec![HEADS * (NOPE + ROPE), Q_LORA]));
        } else {
            layer.push(("attn_q.weight", vec![HEADS * (NOPE + ROPE), HIDDEN]));
        }
        layer.push(("attn_kv_a_mqa.weight", vec![KV_LORA + ROPE, HIDDEN]));
        layer.push(("attn_kv_a_norm.weight", vec![KV_LORA]));
        if s.split_kv_b {
            layer.push(("attn_k_b.weight", vec![HEADS, KV_LORA, NOPE]));
            layer.push(("attn_v_b.weight", vec![HEADS, V_HEAD, KV_LORA]));
        } else {
            layer.push(("attn_kv_b.weight", vec![HEADS * (NOPE + V_HEAD), KV_LORA]));
        }
        layer.push(("attn_output.weight", vec![HIDDEN, HEADS * V_HEAD]));
        layer.push(("ffn_norm.weight", vec![HIDDEN]));
        if i < s.lead_dense {
            layer.push(("ffn_gate.weight", vec![FFN, HIDDEN]));
            layer.push(("ffn_up.weight", vec![FFN, HIDDEN]));
            layer.push(("ffn_down.weight", vec![HIDDEN, FFN]));
        } else {
            layer.push(("ffn_gate_inp.weight", vec![EXPERTS, HIDDEN]));
            if s.sigmoid {
                layer.push(("exp_probs_b.bias", vec![EXPERTS]));
            }
            layer.push(("ffn_gate_exps.weight", vec![EXPERTS, EXPERT_FFN, HIDDEN]));
            layer.push(("ffn_up_exps.weight", vec![EXPERTS, EXPERT_FFN, HIDDEN]));
            layer.push(("ffn_down_exps.weight", vec![EXPERTS, HIDDEN, EXPERT_FFN]));
            if s.shared > 0 {
                let w = EXPERT_FFN * s.shared;
                layer.push(("ffn_gate_shexp.weight", vec![w, HIDDEN]));
                layer.push(("ffn_up_shexp.weight", vec![w, HIDDEN]));
                layer.push(("ffn_down_shexp.weight", vec![HIDDEN, w]));
            }
        }
        for (name, shape) in layer {
            t.push((format!("blk.{i}.{name}"), shape));
        }
    }
    t
}

/// Writes a GGUF of random weights (fixed seed).
fn write(
    name: &str,
    metadata: &[(String, Value)],
    tensors: &[(String, Vec<usize>)],
    weights: GgmlDType,
) -> PathBuf {
    common::write_synthetic_gguf(
        "deepseek-test",
        name,
        metadata,
        tensors,
        0x005e_edd5_2024,
        |n, r| {
            if n.contains("norm") {
                1.0 + r * 0.5
            } else if n.contains("exp_probs_b") {
                r * 0.2
            } else {
                r * 0.5
            }
        },
        |shape| {
            if shape.len() > 1 && shape.last().is_some_and(|d| d % 32 == 0) {
                weights
            } else {
                GgmlDType::F32
            }
        },
    )
}

fn write_spec(s: &Spec, tag: &str) -> PathBuf {
    write(
        &format!("{tag}-{:?}.gguf", s.weights),
        &metadata(s),
        &tensors(s),
        s.weights,
    )
}

fn load(path: &PathBuf) -> Result<Box<dyn Decoder>, ModelError> {
    decoder::load(&mut GgufFile::open(path)?, &Device::Cpu, &mut |_| {})
}

// ---------------------------------------------------------------------------------------------
// The reference.

/// Every tensor of a file, dequantized to f32 (row-major, outermost dimension first), and the
/// names of those stored as Q8_0.
struct Weights {
    values: HashMap<String, Vec<f32>>,
    q8_0: HashSet<String>,
}

impl Weights {
    fn read(path: &PathBuf) -> Self {
        let mut f = std::fs::File::open(path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
        let mut values = HashMap::new();
        let mut q8_0 = HashSet::new();
        for n in names {
            let t = ct.tensor(&mut f, &n, &Device::Cpu).unwrap();
            if t.dtype() == GgmlDType::Q8_0 {
                q8_0.insert(n.clone());
            }
            let v = t
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            values.insert(n, v);
        }
        Self { values, q8_0 }
    }

    fn get(&self, name: &str) -> &[f32] {
        self.values
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }
}

/// GGML's Q8_0 round trip of an activation row, what a matrix product with Q8_0 weights does
/// to its input: per block of 32 values, the scale `d = max|x| / 127` (stored as f16) and the
/// values `round(x / d)` (ggml's `quantize_row_q8_0_ref`).
fn q8_0_round_trip(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|block| {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let d16 = half::f16::from_f32(d).to_f32();
            block.iter().map(move |v| (v * id).round() * d16)
        })
        .collect()
}

/// Matrices the decoder dequantizes to f32 at load (so their inputs are never quantized):
/// the per-head decompressions and the router.
const DEQUANTIZED_AT_LOAD: [&str; 4] = [
    "attn_k_b.weight",
    "attn_v_b.weight",
    "attn_kv_b.weight",
    "ffn_gate_inp.weight",
];

fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `W x` for a row-major `W` of `x.len()` columns.
fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks(x.len()).map(|row| dot(row, x)).collect()
}

fn rms_norm(x: &[f32], w: &[f32]) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + EPS).sqrt();
    x.iter().zip(w).map(|(v, w)| v * r * w).collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// The smallest routing margins seen: how far the last chosen expert (group) scored above
/// the first one left out. A comparison is only meaningful if the decoder's small numeric
/// differences cannot flip a choice.
struct Margins {
    experts: f32,
    groups: f32,
}

struct Reference {
    spec: Spec,
    w: Weights,
    /// Per rotated pair, the inverse frequency (Hugging Face's DeepSeek-V3 YaRN formulas).
    inv_freq: Vec<f64>,
    /// The softmax scale: `1/sqrt(nope + rope)`, times `mscale²` under YaRN.
    scale: f32,
}

impl Reference {
    /// `W x` for the matrix `name` (the `expert`-th slice of a 3-D one), with the input
    /// rounded as GGML does when the decoder multiplies a Q8_0 matrix through `QLinear`.
    fn mv(&self, name: &str, expert: Option<usize>, x: &[f32]) -> Vec<f32> {
        let w = self.w.get(name);
        let w = match expert {
            Some(e) => {
                let per = w.len() / EXPERTS;
                &w[e * per..(e + 1) * per]
            }
            None => w,
        };
        let quantized =
            self.w.q8_0.contains(name) && !DEQUANTIZED_AT_LOAD.iter().any(|d| name.ends_with(d));
        if quantized {
            matvec(w, &q8_0_round_trip(x))
        } else {
            matvec(w, x)
        }
    }

    /// `down(silu(gate x) * up x)` for the matrices `ffn_{gate,up,down}{suffix}`.
    fn swiglu(&self, l: usize, suffix: &str, expert: Option<usize>, x: &[f32]) -> Vec<f32> {
        let name = |m: &str| format!("blk.{l}.ffn_{m}{suffix}.weight");
        let g = self.mv(&name("gate"), expert, x);
        let u = self.mv(&name("up"), expert, x);
        let a: Vec<f32> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
        self.mv(&name("down"), expert, &a)
    }

    fn new(spec: Spec, path: &PathBuf) -> Self {
        let d = ROPE as f64;
        let extra: Vec<f64> = (0..ROPE / 2)
            .map(|i| 1.0 / ROPE_BASE.powf(2.0 * i as f64 / d))
            .collect();
        let mut scale = 1.0 / ((NOPE + ROPE) as f64).sqrt();
        let inv_freq = if spec.yarn {
            // find_correction_dim / yarn_find_correction_range / yarn_linear_ramp_mask.
            let correction = |rotations: f64| {
                d * (YARN_ORIGINAL_CONTEXT as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * ROPE_BASE.ln())
            };
            let low = correction(32.0).floor().max(0.0);
            let mut high = correction(1.0).ceil().min(d - 1.0);
            if low == high {
                high += 0.001;
            }
            let mscale_all_dim = YARN_LOG_MULTIPLIER / 0.1;
            let mscale = 0.1 * mscale_all_dim * YARN_FACTOR.ln() + 1.0;
            scale *= mscale * mscale;
            extra
                .iter()
                .enumerate()
                .map(|(i, &e)| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let keep_extrapolated = 1.0 - ramp;
                    let interpolated = e / YARN_FACTOR;
                    interpolated * (1.0 - keep_extrapolated) + e * keep_extrapolated
                })
                .collect()
        } else {
            extra
        };
        Self {
            spec,
            w: Weights::read(path),
            inv_freq,
            scale: scale as f32,
        }
    }

    /// The Hugging Face rotation of a rope part at `pos`: de-interleave
    /// (`[x0, x2, .., x1, x3, ..]`), then `u·cos + rotate_half(u)·sin`. The result stays in
    /// the de-interleaved order, the same for queries and keys, so their products are those
    /// of the original order.
    fn rope(&self, x: &[f32], pos: usize) -> Vec<f32> {
        let half = x.len() / 2;
        let u: Vec<f32> = (0..half)
            .map(|j| x[2 * j])
            .chain((0..half).map(|j| x[2 * j + 1]))
            .collect();
        let mut out = vec![0f32; x.len()];
        for j in 0..half {
            let angle = pos as f64 * self.inv_freq[j];
            let (c, s) = (angle.cos() as f32, angle.sin() as f32);
            out[j] = u[j] * c - u[j + half] * s;
            out[j + half] = u[j + half] * c + u[j] * s;
        }
        out
    }

    /// Logits of every position of `tokens`, computed from scratch.
    fn logits(&self, tokens: &[u32], margins: &mut Margins) -> Vec<Vec<f32>> {
        let s = self.spec;
        let w = &self.w;
        let embd = w.get("token_embd.weight");
        let mut xs: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| embd[t as usize * HIDDEN..(t as usize + 1) * HIDDEN].to_vec())
            .collect();
        let n = tokens.len();
        for l in 0..s.layers {
            let p = |t: &str| format!("blk.{l}.{t}");
            // Per position and head: query (nope, rope), key (nope, rope), value.
            let mut q = vec![vec![(Vec::new(), Vec::new()); HEADS]; n];
            let mut k = vec![vec![(Vec::new(), Vec::new()); HEADS]; n];
            let mut v = vec![vec![Vec::new(); HEADS]; n];
            for t in 0..n {
                let h = rms_norm(&xs[t], w.get(&p("attn_norm.weight")));
                let qf = if s.q_lora {
                    let a = self.mv(&p("attn_q_a.weight"), None, &h);
                    let a = rms_norm(&a, w.get(&p("attn_q_a_norm.weight")));
                    self.mv(&p("attn_q_b.weight"), None, &a)
                } else {
                    self.mv(&p("attn_q.weight"), None, &h)
                };
                let kv = self.mv(&p("attn_kv_a_mqa.weight"), None, &h);
                let c = rms_norm(&kv[..KV_LORA], w.get(&p("attn_kv_a_norm.weight")));
                let k_pe = self.rope(&kv[KV_LORA..], t);
                for hd in 0..HEADS {
                    let base = hd * (NOPE + ROPE);
                    q[t][hd] = (
                        qf[base..base + NOPE].to_vec(),
                        self.rope(&qf[base + NOPE..base + NOPE + ROPE], t),
                    );
                    // Decompress this head's key and value from the latent.
                    let (k_nope, value) = if s.split_kv_b {
                        // attn_k_b: [heads, rank, nope]; attn_v_b: [heads, v, rank].
                        let kb = &w.get(&p("attn_k_b.weight"))
                            [hd * KV_LORA * NOPE..(hd + 1) * KV_LORA * NOPE];
                        let vb = &w.get(&p("attn_v_b.weight"))
                            [hd * V_HEAD * KV_LORA..(hd + 1) * V_HEAD * KV_LORA];
                        let k_nope: Vec<f32> = (0..NOPE)
                            .map(|j| (0..KV_LORA).map(|r| kb[r * NOPE + j] * c[r]).sum())
                            .collect();
                        (k_nope, matvec(vb, &c))
                    } else {
                        // attn_kv_b: per head, nope key rows then v value rows.
                        let rows = &w.get(&p("attn_kv_b.weight"))
                            [hd * (NOPE + V_HEAD) * KV_LORA..(hd + 1) * (NOPE + V_HEAD) * KV_LORA];
                        let kvh = matvec(rows, &c);
                        (kvh[..NOPE].to_vec(), kvh[NOPE..].to_vec())
                    };
                    k[t][hd] = (k_nope, k_pe.clone());
                    v[t][hd] = value;
                }
            }
            for t in 0..n {
                let mut heads_out = Vec::with_capacity(HEADS * V_HEAD);
                for hd in 0..HEADS {
                    let (qn, qp) = &q[t][hd];
                    let scores: Vec<f32> = (0..=t)
                        .map(|s| {
                            let (kn, kp) = &k[s][hd];
                            self.scale * (dot(qn, kn) + dot(qp, kp))
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
                    let z: f32 = e.iter().sum();
                    let mut acc = vec![0f32; V_HEAD];
                    for (ps, vs) in e.iter().zip(&v) {
                        for (a, x) in acc.iter_mut().zip(&vs[hd]) {
                            *a += ps / z * x;
                        }
                    }
                    heads_out.extend(acc);
                }
                let o = self.mv(&p("attn_output.weight"), None, &heads_out);
                for (x, o) in xs[t].iter_mut().zip(o) {
                    *x += o;
                }
                let h = rms_norm(&xs[t], w.get(&p("ffn_norm.weight")));
                let f = if l < s.lead_dense {
                    self.swiglu(l, "", None, &h)
                } else {
                    self.moe(l, &h, margins)
                };
                for (x, f) in xs[t].iter_mut().zip(f) {
                    *x += f;
                }
            }
        }
        let out = if s.tied {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        xs.iter()
            .map(|x| self.mv(out, None, &rms_norm(x, w.get("output_norm.weight"))))
            .collect()
    }

    /// DeepSeek-V3's router (`noaux_tc`) and experts, as llama.cpp runs them.
    fn moe(&self, l: usize, h: &[f32], margins: &mut Margins) -> Vec<f32> {
        let s = self.spec;
        let w = &self.w;
        let p = |t: &str| format!("blk.{l}.{t}");
        let logits = self.mv(&p("ffn_gate_inp.weight"), None, h);
        let scores: Vec<f32> = if s.sigmoid {
            logits.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect()
        } else {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
            let z: f32 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        };
        // The bias steers the choice only.
        let mut choice = scores.clone();
        if s.sigmoid {
            for (c, b) in choice.iter_mut().zip(w.get(&p("exp_probs_b.bias"))) {
                *c += b;
            }
        }
        let descending = |v: &[f32]| {
            let mut i: Vec<usize> = (0..v.len()).collect();
            i.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).unwrap());
            i
        };
        if let Some((groups, used)) = s.groups {
            let size = EXPERTS / groups;
            // A group's score: its two best choice scores (llama.cpp; Hugging Face's
            // DeepSeek-V3 likewise sums the top 2).
            let group_scores: Vec<f32> = choice
                .chunks(size)
                .map(|g| {
                    let mut g = g.to_vec();
                    g.sort_by(|a, b| b.partial_cmp(a).unwrap());
                    g.iter().take(2).sum()
                })
                .collect();
            let order = descending(&group_scores);
            margins.groups = margins
                .groups
                .min(group_scores[order[used - 1]] - group_scores[order[used]]);
            for &g in &order[used..] {
                // Left-out groups cannot be chosen (llama.cpp masks them with -inf).
                choice[g * size..(g + 1) * size].fill(f32::NEG_INFINITY);
            }
        }
        let order = descending(&choice);
        if choice[order[USED]].is_finite() {
            margins.experts = margins
                .experts
                .min(choice[order[USED - 1]] - choice[order[USED]]);
        }
        let chosen = &order[..USED];
        let mut weights: Vec<f32> = chosen.iter().map(|&e| scores[e]).collect();
        if s.norm {
            let sum: f32 = weights.iter().sum();
            weights.iter_mut().for_each(|x| *x /= sum);
        }
        weights.iter_mut().for_each(|x| *x *= s.scale);
        let mut out = if s.shared > 0 {
            self.swiglu(l, "_shexp", None, h)
        } else {
            vec![0.0; HIDDEN]
        };
        for (&e, &wt) in chosen.iter().zip(&weights) {
            let y = self.swiglu(l, "_exps", Some(e), h);
            for (o, y) in out.iter_mut().zip(y) {
                *o += wt * y;
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons.

use common::{diff, row};

/// Runs the prompt (every position's logits) and decode steps through our decoder and the
/// reference, asserting every logit agrees within `tolerance` of the logit scale and that no
/// routing choice was within `min_margin` of flipping. Returns (max diff, scale).
fn compare_with_reference(s: Spec, tag: &str, tolerance: f32, min_margin: f32) -> (f32, f32) {
    let path = write_spec(&s, tag);
    let model = load(&path).unwrap();
    let Some(deepseek) = model.downcast_ref::<DeepSeek>() else {
        panic!("{tag} did not load as the DeepSeek decoder: {model:?}");
    };
    let dc = deepseek.deepseek_config();
    assert_eq!(
        (
            dc.qk_nope_head_dim,
            dc.qk_rope_head_dim,
            dc.v_head_dim,
            dc.kv_lora_rank
        ),
        (NOPE, ROPE, V_HEAD, KV_LORA)
    );
    assert_eq!(dc.q_lora_rank, s.q_lora.then_some(Q_LORA));
    assert_eq!(dc.yarn.is_some(), s.yarn);
    // The cache holds the latent row (rope key and latent), half in the keys, half in the
    // values: no per-head keys.
    let shape = model.cache_shape();
    assert_eq!((shape.kv_heads, shape.head_dim), (1, (ROPE + KV_LORA) / 2));
    let reference = Reference::new(s, &path);
    let mut margins = Margins {
        experts: f32::INFINITY,
        groups: f32::INFINITY,
    };
    let (mut worst, mut scale) = (0f32, 0f32);
    let mut check = |what: String, ours: &[f32], theirs: &[f32]| {
        let (d, m) = diff(ours, theirs);
        worst = worst.max(d);
        scale = scale.max(m);
        assert!(m > 0.5, "{tag} {what}: degenerate logits (max |logit| {m})");
        assert!(
            d <= tolerance * m.max(1.0),
            "{tag} {what}: max diff {d}, scale {m}"
        );
    };
    let mut cache = model
        .new_cache(&KvCacheConfig::default().max_entries(16))
        .unwrap();
    let all = model.forward(&PROMPT, &mut cache, true).unwrap();
    assert_eq!(all.dims(), &[PROMPT.len(), VOCAB]);
    let want = reference.logits(&PROMPT, &mut margins);
    for (i, theirs) in want.iter().enumerate() {
        check(
            format!("prompt position {i}"),
            &row(&all.get(i).unwrap()),
            theirs,
        );
    }
    let mut seq = PROMPT.to_vec();
    for (j, &t) in DECODE.iter().enumerate() {
        seq.push(t);
        let ours = model.forward(&[t], &mut cache, false).unwrap();
        assert_eq!(ours.dims(), &[VOCAB]);
        let theirs = reference.logits(&seq, &mut margins);
        check(
            format!("decode step {j}"),
            &row(&ours),
            theirs.last().unwrap(),
        );
    }
    assert_eq!(cache.len(), PROMPT.len() + DECODE.len());
    assert!(
        margins.experts > min_margin,
        "{tag}: an expert choice was within {} of flipping",
        margins.experts
    );
    if s.groups.is_some() {
        assert!(
            margins.groups > min_margin,
            "{tag}: a group choice was within {} of flipping",
            margins.groups
        );
    }
    eprintln!(
        "{tag} ({:?} weights): max |ours - reference| = {worst:.3e} over logits of scale \
         {scale:.3} ({:.2e} relative); smallest routing margins: experts {:.3e}, groups {:.3e}",
        s.weights,
        worst / scale,
        margins.experts,
        margins.groups
    );
    (worst, scale)
}

#[test]
fn v3_layout_matches_the_reference() {
    compare_with_reference(v3(), "v3", 1e-4, 1e-4);
}

#[test]
fn v2_lite_layout_matches_the_reference() {
    compare_with_reference(v2_lite(), "v2-lite", 1e-4, 1e-4);
}

/// Q8_0 matrices go through `QLinear`, which quantizes its input rows to 8 bits as GGML does;
/// the reference rounds the same inputs the same way (`q8_0_round_trip`), so the tolerance stays
/// tight. (Without that rounding the two differ by about 3% of the logit scale: the size of
/// 8-bit activations, not of a bug.)
#[test]
fn q8_0_weights_match_the_reference() {
    let s = Spec {
        weights: GgmlDType::Q8_0,
        ..v3()
    };
    compare_with_reference(s, "v3", 5e-3, 1e-3);
}

#[test]
fn forward_batch_equals_separate_steps() {
    let s = Spec {
        weights: GgmlDType::F32,
        ..v3()
    };
    let model = load(&write_spec(&s, "v3-batch")).unwrap();
    let cfg = KvCacheConfig::default().max_entries(16);
    let prompts: [&[u32]; 3] = [&PROMPT, &[99, 1, 64, 110], &[42, 7]];
    let steps: [[u32; 3]; 3] = [DECODE, [12, 7, 122], [0, 127, 64]];
    let mut batched = Vec::new();
    let mut single = Vec::new();
    for p in prompts {
        for caches in [&mut batched, &mut single] {
            let mut c = model.new_cache(&cfg).unwrap();
            model.forward(p, &mut c, false).unwrap();
            caches.push(c);
        }
    }
    let mut worst = 0f32;
    for j in 0..3 {
        let tokens: Vec<u32> = steps.iter().map(|s| s[j]).collect();
        let mut refs: Vec<_> = batched.iter_mut().collect();
        let batch = model.forward_batch(&tokens, &mut refs).unwrap();
        assert_eq!(batch.dims(), &[3, VOCAB]);
        for (i, cache) in single.iter_mut().enumerate() {
            let want = row(&model.forward(&[tokens[i]], cache, false).unwrap());
            let (d, m) = diff(&row(&batch.get(i).unwrap()), &want);
            assert!(
                d <= 1e-5 * m.max(1.0),
                "step {j}, sequence {i}: diff {d}, scale {m}"
            );
            worst = worst.max(d);
        }
    }
    for (b, s) in batched.iter().zip(&single) {
        assert_eq!(b.len(), s.len());
    }
    eprintln!("forward_batch vs separate forward steps: max diff {worst:.3e}");
}

/// With one layer a token's latent depends only on the token and its position, so after an
/// attention-sink eviction re-rotates the kept rope keys (YaRN frequencies included), the next
/// token's logits equal those of a fresh cache holding just the kept tokens.
#[test]
fn sink_rerotation_moves_the_cached_rope_keys() {
    let s = Spec {
        layers: 1,
        lead_dense: 0,
        weights: GgmlDType::F32,
        ..v3()
    };
    let model = load(&write_spec(&s, "v3-one-layer")).unwrap();
    let worst = common::sink_rerotation_max_diff(model.as_ref(), VOCAB, "deepseek2");
    eprintln!("sink re-rotation: max diff {worst:.3e}");
}

/// Progress counts every tensor loaded (the tied output counted once).
#[test]
fn progress_counts_every_tensor() {
    for (s, tag) in [(v3(), "v3-progress"), (v2_lite(), "v2-progress")] {
        let s = Spec {
            weights: GgmlDType::F32,
            ..s
        };
        let path = write_spec(&s, tag);
        let mut last = None;
        decoder::load(
            &mut GgufFile::open(&path).unwrap(),
            &Device::Cpu,
            &mut |p| last = Some(p),
        )
        .unwrap();
        let p = last.unwrap();
        let want = tensors(&s).len() + s.tied as usize;
        assert_eq!((p.loaded, p.total), (want, want), "{tag}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad files.

fn load_err(name: &str, md: &[(String, Value)], ts: &[(String, Vec<usize>)]) -> ModelError {
    load(&write(name, md, ts, GgmlDType::F32)).unwrap_err()
}

fn without_key(s: &Spec, key: &str) -> Vec<(String, Value)> {
    metadata(s).into_iter().filter(|(k, _)| k != key).collect()
}

fn with_key(s: &Spec, key: &str, value: Value) -> Vec<(String, Value)> {
    let mut md = without_key(s, key);
    md.push((key.to_string(), value));
    md
}

fn reshaped(s: &Spec, edit: impl Fn(&str, &mut Vec<usize>)) -> Vec<(String, Vec<usize>)> {
    let mut ts = tensors(s);
    for (n, shape) in ts.iter_mut() {
        edit(n, shape);
    }
    ts
}

#[test]
fn missing_metadata_is_a_typed_error_naming_the_key() {
    let s = v3();
    for key in [
        "deepseek2.attention.kv_lora_rank",
        "deepseek2.expert_shared_count",
        "deepseek2.rope.dimension_count",
        "deepseek2.attention.value_length_mla",
        "deepseek2.attention.q_lora_rank",
    ] {
        let err = load_err("missing-key.gguf", &without_key(&s, key), &tensors(&s));
        assert!(
            matches!(&err, ModelError::MissingMetadata { key: k } if k == key),
            "{key}: {err}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn misshapen_tensors_are_typed_errors_naming_the_tensor() {
    let s = v3();
    // The compressed key/value projection without its rope rows.
    let ts = reshaped(&s, |n, shape| {
        if n == "blk.1.attn_kv_a_mqa.weight" {
            *shape = vec![KV_LORA, HIDDEN];
        }
    });
    let err = load_err("bad-kv-a.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, reason }
            if name == "blk.1.attn_kv_a_mqa.weight" && reason.contains("expected shape [40, 64]")),
        "{err}"
    );
    // A key decompression with the wrong head width.
    let ts = reshaped(&s, |n, shape| {
        if n == "blk.2.attn_k_b.weight" {
            *shape = vec![HEADS, KV_LORA, NOPE + ROPE];
        }
    });
    let err = load_err("bad-k-b.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, .. } if name == "blk.2.attn_k_b.weight"),
        "{err}"
    );
    // An older file with no decompression at all.
    let s = v2_lite();
    let ts: Vec<_> = tensors(&s)
        .into_iter()
        .filter(|(n, _)| n != "blk.0.attn_kv_b.weight")
        .collect();
    let err = load_err("no-kv-b.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, reason }
            if name == "blk.0.attn_kv_b.weight" && reason.contains("missing")),
        "{err}"
    );
}

#[test]
fn expert_counts_inconsistent_with_the_tensors_are_typed_errors() {
    let s = v3();
    // Every expert tensor holds 6 experts, the metadata says 8: the router is read first.
    let ts = reshaped(&s, |n, shape| {
        if n.contains("exps") || n.contains("ffn_gate_inp") || n.contains("exp_probs_b") {
            shape[0] = 6;
        }
    });
    let err = load_err("six-experts.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, reason }
            if name == "blk.1.ffn_gate_inp.weight" && reason.contains("expert_count 8")),
        "{err}"
    );
    // Only one expert tensor disagrees.
    let ts = reshaped(&s, |n, shape| {
        if n == "blk.2.ffn_up_exps.weight" {
            shape[0] = 6;
        }
    });
    let err = load_err("six-up-experts.gguf", &metadata(&s), &ts);
    assert!(
        matches!(&err, ModelError::BadTensor { name, reason }
            if name == "blk.2.ffn_up_exps.weight" && reason.contains("expert_count 8")
                && reason.contains("[6, 32, 64]")),
        "{err}"
    );
    // More experts used than there are.
    let md = with_key(&s, "deepseek2.expert_used_count", Value::U32(9));
    let err = load_err("nine-used.gguf", &md, &tensors(&s));
    assert!(
        matches!(&err, ModelError::InvalidMetadata { key, .. } if key == "deepseek2.expert_used_count"),
        "{err}"
    );
    // Groups that do not divide the experts.
    let md = with_key(&s, "deepseek2.expert_group_count", Value::U32(3));
    let err = load_err("three-groups.gguf", &md, &tensors(&s));
    assert!(
        matches!(&err, ModelError::InvalidMetadata { key, .. } if key == "deepseek2.expert_group_count"),
        "{err}"
    );
}

#[test]
fn unsupported_features_are_refused_by_name() {
    let s = v3();
    let check =
        |name: &str, md: Vec<(String, Value)>, ts: Vec<(String, Vec<usize>)>, want: &str| {
            let err = load_err(name, &md, &ts);
            assert!(
                matches!(&err, ModelError::UnsupportedFeature { name, .. } if name == want),
                "{want}: {err}"
            );
        };
    check(
        "longrope.gguf",
        with_key(
            &s,
            "deepseek2.rope.scaling.type",
            Value::String("longrope".into()),
        ),
        tensors(&s),
        "deepseek2.rope.scaling.type",
    );
    check(
        "linear.gguf",
        with_key(&v2_lite(), "deepseek2.rope.scaling.factor", Value::F32(2.0)),
        tensors(&v2_lite()),
        "deepseek2.rope.scaling.type",
    );
    check(
        "gating-3.gguf",
        with_key(&s, "deepseek2.expert_gating_func", Value::U32(3)),
        tensors(&s),
        "deepseek2.expert_gating_func",
    );
    check(
        "yarn-ext.gguf",
        with_key(
            &s,
            "deepseek2.rope.scaling.yarn_ext_factor",
            Value::F32(0.5),
        ),
        tensors(&s),
        "deepseek2.rope.scaling.yarn_ext_factor",
    );
    let mut ts = tensors(&s);
    ts.push((
        "blk.1.ffn_gate_up_exps.weight".into(),
        vec![EXPERTS, 2 * EXPERT_FFN, HIDDEN],
    ));
    check(
        "fused-exps.gguf",
        metadata(&s),
        ts,
        "blk.1.ffn_gate_up_exps.weight",
    );
    // An MLA file whose latent cache width contradicts its ranks.
    let md = with_key(&s, "deepseek2.attention.key_length", Value::U32(99));
    let err = load_err("bad-key-length.gguf", &md, &tensors(&s));
    assert!(
        matches!(&err, ModelError::InvalidMetadata { key, .. } if key == "deepseek2.attention.key_length"),
        "{err}"
    );
}
