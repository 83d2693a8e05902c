//! A GGUF writer that writes whatever it is given, byte for byte: metadata of any value type,
//! tensor entries whose dimensions, types and offsets need not match their data, any version
//! and alignment. For tests of files candle's writer cannot make (hostile headers).
#![allow(dead_code)]

use candle_core::quantized::gguf_file::Value;

/// One tensor entry of the index, and its bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// The tensor's name.
    pub name: String,
    /// Dimensions in the file's order (innermost first, as GGUF stores them).
    pub dims: Vec<u64>,
    /// GGML type id (0 F32, 1 F16, 8 Q8_0, ...).
    pub dtype: u32,
    /// Its data, written at the next 32-byte boundary of the data section; the entry's
    /// offset says where that is unless `offset` overrides it.
    pub data: Vec<u8>,
    /// An offset to write instead of the data's real one.
    pub offset: Option<u64>,
}

/// GGUF's value type id of `v`.
pub fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes a value's payload (after its type id).
pub fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            let ty = items.first().map(type_id).unwrap_or(4);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                value(out, item);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// The bytes of a GGUF v3 file (8-byte lengths) with `metadata` and `tensors`, the data
/// section starting at the next multiple of 32 after the header. Returns the bytes and the
/// data section's offset.
pub fn encode(metadata: &[(String, Value)], tensors: &[RawTensor]) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    out.extend_from_slice(&0x4655_4747u32.to_le_bytes());
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        string(&mut out, k);
        out.extend_from_slice(&type_id(v).to_le_bytes());
        value(&mut out, v);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        string(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.dtype.to_le_bytes());
        out.extend_from_slice(&t.offset.unwrap_or(offset).to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len() as u64).next_multiple_of(32);
    }
    let data_start = (out.len() as u64).next_multiple_of(32);
    out.resize(data_start as usize, 0);
    for (t, at) in tensors.iter().zip(offsets) {
        out.resize((data_start + at) as usize, 0);
        out.extend_from_slice(&t.data);
    }
    (out, data_start)
}

/// Sizes of [`tiny_model`].
pub const TINY_HIDDEN: u64 = 32;
/// Query heads of [`tiny_model`].
pub const TINY_HEADS: u64 = 4;
/// Key/value heads of [`tiny_model`].
pub const TINY_KV_HEADS: u64 = 2;
/// Feed-forward width of [`tiny_model`].
pub const TINY_FFN: u64 = 64;
/// Vocabulary of [`tiny_model`].
pub const TINY_VOCAB: u64 = 40;
/// Context length of [`tiny_model`].
pub const TINY_CONTEXT: u64 = 64;

/// `n` pseudo-random f32 values in [-0.5, 0.5) (a linear congruential generator at `seed`),
/// as little-endian bytes.
pub fn f32_bytes(n: u64, seed: u64, around_one: bool) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n as usize * 4);
    for _ in 0..n {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
        let v = if around_one { 1.0 + r * 0.5 } else { r * 0.5 };
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// `n` values of Q8_0 (34-byte blocks of 32: an f16 scale of 1/64, then 32 pseudo-random i8).
pub fn q8_0_bytes(n: u64, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n as usize / 32 * 34);
    for _ in 0..n / 32 {
        out.extend_from_slice(&half::f16::from_f32(1.0 / 64.0).to_le_bytes());
        for _ in 0..32 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.push((s >> 56) as u8);
        }
    }
    out
}

/// A small, complete model of a llama-family `arch` (`llama`, `qwen2`: q/k/v biases, `qwen3`:
/// q/k norms, `phi3`: fused projections) or of `phi2` (LayerNorms with biases, fused
/// projections, biases everywhere, half of each head rotated): hyper-parameters, a 40-token
/// BPE vocabulary with BOS/EOS, and tensors (vectors F32, matrices Q8_0), two blocks.
pub fn tiny_model(arch: &str) -> (Vec<(String, Value)>, Vec<RawTensor>) {
    let (h, heads, kv, ffn, vocab) = (TINY_HIDDEN, TINY_HEADS, TINY_KV_HEADS, TINY_FFN, TINY_VOCAB);
    let head_dim = h / heads;
    let u = |v: u64| Value::U32(v as u32);
    let tokens: Vec<Value> = (0..vocab)
        .map(|i| match i {
            0 => Value::String("<s>".into()),
            1 => Value::String("</s>".into()),
            _ => Value::String(
                ((b'a' + (i % 26) as u8) as char)
                    .to_string()
                    .repeat(1 + i as usize / 26),
            ),
        })
        .collect();
    let md = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        (format!("{arch}.context_length"), u(TINY_CONTEXT)),
        (format!("{arch}.embedding_length"), u(h)),
        (format!("{arch}.block_count"), u(2)),
        (format!("{arch}.feed_forward_length"), u(ffn)),
        (format!("{arch}.attention.head_count"), u(heads)),
        (format!("{arch}.attention.head_count_kv"), u(kv)),
        (format!("{arch}.rope.dimension_count"), u(head_dim)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(10_000.0)),
        (format!("{arch}.vocab_size"), u(vocab)),
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        (
            "tokenizer.ggml.merges".to_string(),
            Value::Array(vec![Value::String("a b".into())]),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), u(0)),
        ("tokenizer.ggml.eos_token_id".to_string(), u(1)),
        (
            "tokenizer.chat_template".to_string(),
            Value::String(
                "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}\
                 {% if add_generation_prompt %}<s>assistant: {% endif %}"
                    .into(),
            ),
        ),
    ];
    if arch == "phi2" {
        return phi2_model(md, phi2_tensors());
    }
    let mut seed = 0x5eed_u64;
    let mut tensors = Vec::new();
    let mut push = |name: String, dims: Vec<u64>| {
        seed += 1;
        let around_one = name.contains("norm");
        tensors.push(tiny_tensor(name, dims, seed, around_one));
    };
    // Dimensions innermost first, as GGUF stores them.
    push("token_embd.weight".into(), vec![h, vocab]);
    push("output_norm.weight".into(), vec![h]);
    let (q, kvd) = (heads * head_dim, kv * head_dim);
    for i in 0..2 {
        let p = |t: &str| format!("blk.{i}.{t}");
        push(p("attn_norm.weight"), vec![h]);
        if arch == "phi3" {
            push(p("attn_qkv.weight"), vec![h, q + 2 * kvd]);
            push(p("ffn_up.weight"), vec![h, 2 * ffn]);
        } else {
            push(p("attn_q.weight"), vec![h, q]);
            push(p("attn_k.weight"), vec![h, kvd]);
            push(p("attn_v.weight"), vec![h, kvd]);
            push(p("ffn_gate.weight"), vec![h, ffn]);
            push(p("ffn_up.weight"), vec![h, ffn]);
        }
        if arch == "qwen2" {
            push(p("attn_q.bias"), vec![q]);
            push(p("attn_k.bias"), vec![kvd]);
            push(p("attn_v.bias"), vec![kvd]);
        }
        if arch == "qwen3" {
            push(p("attn_q_norm.weight"), vec![head_dim]);
            push(p("attn_k_norm.weight"), vec![head_dim]);
        }
        push(p("attn_output.weight"), vec![q, h]);
        push(p("ffn_norm.weight"), vec![h]);
        push(p("ffn_down.weight"), vec![ffn, h]);
    }
    (md, tensors)
}

/// [`tiny_model`]'s metadata made phi2's: a LayerNorm epsilon, half of each head rotated.
fn phi2_model(
    mut md: Vec<(String, Value)>,
    tensors: Vec<RawTensor>,
) -> (Vec<(String, Value)>, Vec<RawTensor>) {
    for (k, v) in md.iter_mut() {
        if k == "phi2.attention.layer_norm_rms_epsilon" {
            *k = "phi2.attention.layer_norm_epsilon".into();
        }
        if k == "phi2.rope.dimension_count" {
            *v = Value::U32((TINY_HIDDEN / TINY_HEADS / 2) as u32);
        }
    }
    (md, tensors)
}

/// One tensor of a tiny model: vectors as F32 (near 1 when `around_one`, for norm weights),
/// matrices as Q8_0, drawn from `seed`.
fn tiny_tensor(name: String, dims: Vec<u64>, seed: u64, around_one: bool) -> RawTensor {
    let n: u64 = dims.iter().product();
    let (dtype, data) = if dims.len() == 1 {
        (0, f32_bytes(n, seed, around_one))
    } else {
        (8, q8_0_bytes(n, seed))
    };
    RawTensor {
        name,
        dims,
        dtype,
        data,
        offset: None,
    }
}

/// [`tiny_model`]'s phi2 tensors.
fn phi2_tensors() -> Vec<RawTensor> {
    let (h, heads, kv, ffn, vocab) = (TINY_HIDDEN, TINY_HEADS, TINY_KV_HEADS, TINY_FFN, TINY_VOCAB);
    let qkv = h + 2 * kv * (h / heads);
    let mut seed = 0x9b1_u64;
    let mut tensors = Vec::new();
    let mut push = |name: String, dims: Vec<u64>| {
        seed += 1;
        let around_one = name.ends_with("norm.weight");
        tensors.push(tiny_tensor(name, dims, seed, around_one));
    };
    // Dimensions innermost first, as GGUF stores them.
    push("token_embd.weight".into(), vec![h, vocab]);
    push("output_norm.weight".into(), vec![h]);
    push("output_norm.bias".into(), vec![h]);
    push("output.weight".into(), vec![h, vocab]);
    push("output.bias".into(), vec![vocab]);
    for i in 0..2 {
        let p = |t: &str| format!("blk.{i}.{t}");
        push(p("attn_norm.weight"), vec![h]);
        push(p("attn_norm.bias"), vec![h]);
        push(p("attn_qkv.weight"), vec![h, qkv]);
        push(p("attn_qkv.bias"), vec![qkv]);
        push(p("attn_output.weight"), vec![h, h]);
        push(p("attn_output.bias"), vec![h]);
        push(p("ffn_up.weight"), vec![h, ffn]);
        push(p("ffn_up.bias"), vec![ffn]);
        push(p("ffn_down.weight"), vec![ffn, h]);
        push(p("ffn_down.bias"), vec![h]);
    }
    tensors
}

/// Writes `bytes` to a fresh file `name` in this process's [`super::scratch_dir`] and
/// returns it.
pub fn write_file(tag: &str, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = super::scratch_dir(tag);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}
