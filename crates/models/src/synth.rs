//! Synthetic GGUF models: deterministic random weights in a real model's shape, with complete
//! metadata and a real tokenizer's vocabulary, quantized in the per-tensor mix llama.cpp's
//! `llama-quantize` would choose.
//!
//! No 1B–8B weights can be downloaded where this project is built and tested, but speed does
//! not depend on the weights' values and llama.cpp loads any well-formed GGUF: a synthetic file
//! gives both a side-by-side speed comparison at users' sizes and an exactness reference for
//! every architecture. `cargo xtask synth-model` is the command-line face of [`write`].
//!
//! ```
//! use fluent_ai_candle_models::synth::{self, QuantMix, SynthSpec, Vocabulary};
//!
//! let vocab = Vocabulary::byte_level_test(320);
//! let spec = SynthSpec::new(synth::shape("llama", "tiny")?, QuantMix::parse("q8_0")?, 7);
//! let out = std::env::temp_dir().join(format!("synth-doc-{}.gguf", std::process::id()));
//! let summary = synth::write(&spec, &vocab, &out)?;
//! assert_eq!(summary.tensors, 2 + 2 * 9 + 1);
//! # std::fs::remove_file(&out).ok();
//! # Ok::<(), fluent_ai_candle_models::synth::SynthError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// Why a synthetic model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// No shape of that name for that architecture (the message lists the known ones).
    #[error("unknown shape '{shape}' for architecture '{arch}' (known: {known})")]
    UnknownShape {
        /// The architecture asked for.
        arch: String,
        /// The shape asked for.
        shape: String,
        /// The shapes this architecture has.
        known: String,
    },
    /// An architecture this generator does not write.
    #[error("unknown architecture '{0}' (known: {known})", known = ARCHITECTURES.join(", "))]
    UnknownArchitecture(String),
    /// A quantization mix this generator does not know.
    #[error("unknown quantization mix '{0}' (known: {known})", known = QuantMix::NAMES.join(", "))]
    UnknownMix(String),
    /// The vocabulary file could not be read or is not a byte-level BPE `tokenizer.json`.
    #[error("vocabulary {path}: {reason}")]
    Vocabulary {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Quantizing or writing failed.
    #[error("writing {path}: {reason}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The architectures [`write`] generates (`general.architecture` values).
pub const ARCHITECTURES: &[&str] = &[
    "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "phi2",
];

/// A model's dimensions and the architecture details that change its tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// The name (`tiny`, or the real model whose dimensions these are).
    pub name: &'static str,
    /// `general.architecture`.
    pub arch: &'static str,
    /// Embedding width.
    pub hidden: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Values of each head RoPE rotates (`rope.dimension_count`): `head_dim`, or fewer with
    /// partial rotary embeddings (phi2).
    pub rope_dim: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// `context_length` written to the metadata.
    pub context: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Norm epsilon (RMSNorm's; phi2's LayerNorm's).
    pub rms_eps: f32,
    /// No `output.weight`: the output shares the token embedding.
    pub tied: bool,
}

const fn shape_of(
    name: &'static str,
    arch: &'static str,
    dims: [usize; 6],
    rope_theta: f32,
    tied: bool,
) -> Shape {
    let [hidden, layers, heads, kv_heads, head_dim, ffn] = dims;
    Shape {
        name,
        arch,
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        rope_dim: head_dim,
        ffn,
        context: 8192,
        rope_theta,
        rms_eps: 1e-5,
        tied,
    }
}

impl Shape {
    /// This shape with RoPE rotating only the first `rope_dim` values of each head.
    pub const fn with_rope_dim(self, rope_dim: usize) -> Self {
        Self { rope_dim, ..self }
    }
}

/// Every shape [`write`] knows: a `tiny` one per architecture (every matrix a multiple of 256
/// columns, so every format applies) and the real dimensions of popular models
/// (hidden, layers, heads, KV heads, head width, FFN width; from their `config.json`).
pub const SHAPES: &[Shape] = &[
    shape_of("tiny", "llama", [256, 2, 4, 2, 64, 512], 10_000.0, false),
    shape_of("tiny", "mistral", [256, 2, 4, 2, 64, 512], 10_000.0, false),
    shape_of("tiny", "qwen2", [256, 2, 4, 2, 64, 512], 1_000_000.0, true),
    shape_of(
        "tiny",
        "qwen3",
        [256, 2, 4, 2, 128, 512],
        1_000_000.0,
        false,
    ),
    shape_of("tiny", "phi3", [256, 2, 4, 4, 64, 512], 10_000.0, false),
    shape_of(
        "tiny",
        "gemma3",
        [256, 2, 4, 1, 256, 512],
        1_000_000.0,
        true,
    ),
    shape_of("tiny", "gemma", [256, 2, 4, 1, 256, 512], 10_000.0, true),
    shape_of("tiny", "gemma2", [256, 2, 4, 2, 256, 512], 10_000.0, true),
    shape_of("tiny", "phi2", [256, 2, 4, 4, 64, 1024], 10_000.0, false).with_rope_dim(32),
    shape_of(
        "llama-3.2-1b",
        "llama",
        [2048, 16, 32, 8, 64, 8192],
        500_000.0,
        true,
    ),
    shape_of(
        "llama-3.2-3b",
        "llama",
        [3072, 28, 24, 8, 128, 8192],
        500_000.0,
        true,
    ),
    shape_of(
        "llama-3.1-8b",
        "llama",
        [4096, 32, 32, 8, 128, 14336],
        500_000.0,
        false,
    ),
    shape_of(
        "mistral-7b",
        "mistral",
        [4096, 32, 32, 8, 128, 14336],
        1_000_000.0,
        false,
    ),
    shape_of(
        "qwen2.5-7b",
        "qwen2",
        [3584, 28, 28, 4, 128, 18944],
        1_000_000.0,
        false,
    ),
    shape_of(
        "qwen2.5-1.5b",
        "qwen2",
        [1536, 28, 12, 2, 128, 8960],
        1_000_000.0,
        true,
    ),
    shape_of(
        "qwen3-8b",
        "qwen3",
        [4096, 36, 32, 8, 128, 12288],
        1_000_000.0,
        false,
    ),
    shape_of(
        "phi-3-mini",
        "phi3",
        [3072, 32, 32, 32, 96, 8192],
        10_000.0,
        false,
    ),
    shape_of(
        "gemma-2b",
        "gemma",
        [2048, 18, 8, 1, 256, 16384],
        10_000.0,
        true,
    ),
    shape_of(
        "gemma-7b",
        "gemma",
        [3072, 28, 16, 16, 256, 24576],
        10_000.0,
        true,
    ),
    shape_of(
        "gemma-2-2b",
        "gemma2",
        [2304, 26, 8, 4, 256, 9216],
        10_000.0,
        true,
    ),
    shape_of(
        "gemma-2-9b",
        "gemma2",
        [3584, 42, 16, 8, 256, 14336],
        10_000.0,
        true,
    ),
    shape_of(
        "phi-2",
        "phi2",
        [2560, 32, 32, 32, 80, 10240],
        10_000.0,
        false,
    )
    .with_rope_dim(32),
    shape_of(
        "gemma-3-1b",
        "gemma3",
        [1152, 26, 4, 1, 256, 6912],
        1_000_000.0,
        true,
    ),
];

/// The shape `name` of architecture `arch` (`tiny` exists for every architecture).
pub fn shape(arch: &str, name: &str) -> Result<Shape, SynthError> {
    if !ARCHITECTURES.contains(&arch) {
        return Err(SynthError::UnknownArchitecture(arch.to_string()));
    }
    SHAPES
        .iter()
        .find(|s| s.arch == arch && s.name == name)
        .copied()
        .ok_or_else(|| SynthError::UnknownShape {
            arch: arch.to_string(),
            shape: name.to_string(),
            known: SHAPES
                .iter()
                .filter(|s| s.arch == arch)
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Which format each tensor gets: one format for every matrix, or one of llama.cpp's K-quant
/// mixes. As `llama-quantize` does for every mix but `q8_0`/`f16`/`f32`, the output matrix
/// (the token embedding when tied) is `Q6_K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMix {
    /// Every matrix in this format (the output as above).
    Uniform(GgmlDType),
    /// llama.cpp's `Q3_K_M`.
    Q3KM,
    /// llama.cpp's `Q4_K_M`.
    Q4KM,
    /// llama.cpp's `Q5_K_M`.
    Q5KM,
}

impl QuantMix {
    /// The names [`QuantMix::parse`] accepts.
    pub const NAMES: &'static [&'static str] = &[
        "f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
        "q6_k", "q3_k_m", "q4_k_m", "q5_k_m",
    ];

    /// Parses a mix name (case-insensitive), e.g. `q4_k_m` or `Q8_0`.
    pub fn parse(name: &str) -> Result<Self, SynthError> {
        use GgmlDType::*;
        Ok(match name.to_ascii_lowercase().as_str() {
            "f32" => Self::Uniform(F32),
            "f16" => Self::Uniform(F16),
            "q4_0" => Self::Uniform(Q4_0),
            "q4_1" => Self::Uniform(Q4_1),
            "q5_0" => Self::Uniform(Q5_0),
            "q5_1" => Self::Uniform(Q5_1),
            "q8_0" => Self::Uniform(Q8_0),
            "q2_k" => Self::Uniform(Q2K),
            "q3_k" => Self::Uniform(Q3K),
            "q4_k" => Self::Uniform(Q4K),
            "q5_k" => Self::Uniform(Q5K),
            "q6_k" => Self::Uniform(Q6K),
            "q3_k_m" => Self::Q3KM,
            "q4_k_m" => Self::Q4KM,
            "q5_k_m" => Self::Q5KM,
            _ => return Err(SynthError::UnknownMix(name.to_string())),
        })
    }

    /// llama.cpp's `general.file_type` for the mix (`llama_ftype`).
    pub fn file_type(self) -> u32 {
        use GgmlDType::*;
        match self {
            Self::Uniform(F32) => 0,
            Self::Uniform(F16) => 1,
            Self::Uniform(Q4_0) => 2,
            Self::Uniform(Q4_1) => 3,
            Self::Uniform(Q8_0) => 7,
            Self::Uniform(Q5_0) => 8,
            Self::Uniform(Q5_1) => 9,
            Self::Uniform(Q2K) => 10,
            Self::Q3KM | Self::Uniform(Q3K) => 12,
            Self::Uniform(Q4K) => 14,
            Self::Q4KM => 15,
            Self::Uniform(Q5K) => 16,
            Self::Q5KM => 17,
            Self::Uniform(_) => 18,
        }
    }

    fn base(self) -> GgmlDType {
        match self {
            Self::Uniform(t) => t,
            Self::Q3KM => GgmlDType::Q3K,
            Self::Q4KM => GgmlDType::Q4K,
            Self::Q5KM => GgmlDType::Q5K,
        }
    }

    /// The format of matrix `role` in layer `layer` of `layers` with `columns` columns,
    /// following llama.cpp's `llama_tensor_get_type` for these mixes, then its fallback when
    /// the row is not a whole number of 256-wide K-quant blocks (`Q4_K`→`Q5_0`,
    /// `Q5_K`→`Q5_1`, `Q6_K`→`Q8_0`; `Q2_K`/`Q3_K`→`Q4_0` where llama.cpp now picks `IQ4_NL`,
    /// a format candle cannot write).
    pub fn format(self, role: Role, layer: usize, layers: usize, columns: usize) -> GgmlDType {
        use GgmlDType::*;
        let more_bits = |i: usize, n: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
        let t = match (self, role) {
            (Self::Uniform(F32 | F16 | Q8_0), _) => self.base(),
            (_, Role::Output) => Q6K,
            (Self::Q3KM, Role::AttnV) => {
                if layer < 2 {
                    Q5K
                } else {
                    Q4K
                }
            }
            (Self::Q3KM, Role::FfnDown) => {
                if layer < layers / 16 {
                    Q5K
                } else {
                    Q4K
                }
            }
            (Self::Q3KM, Role::AttnOutput | Role::AttnQkv) => Q4K,
            (Self::Q4KM | Self::Q5KM, Role::AttnV | Role::FfnDown) if more_bits(layer, layers) => {
                Q6K
            }
            (Self::Q4KM, Role::AttnQkv) => Q5K,
            (Self::Q5KM, Role::AttnQkv) => Q6K,
            _ => self.base(),
        };
        if t.block_size() == 256 && !columns.is_multiple_of(256) {
            match t {
                Q4K => Q5_0,
                Q5K => Q5_1,
                Q6K => Q8_0,
                _ => Q4_0,
            }
        } else if !columns.is_multiple_of(t.block_size()) {
            F16
        } else {
            t
        }
    }
}

/// What a matrix is for, as far as the quantization mix cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `output.weight`, or `token_embd.weight` when the output is tied to it.
    Output,
    /// `token_embd.weight` of a model with an output of its own.
    TokenEmbedding,
    /// `attn_v`.
    AttnV,
    /// `attn_qkv` (fused projections).
    AttnQkv,
    /// `attn_output`.
    AttnOutput,
    /// `ffn_down`.
    FfnDown,
    /// Any other matrix (`attn_q`, `attn_k`, `ffn_gate`, `ffn_up`).
    Other,
}

/// A tokenizer's GGUF metadata (`tokenizer.ggml.*`) and its vocabulary size.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    metadata: Vec<(String, Value)>,
    size: usize,
}

/// ChatML, as SmolLM2's and Qwen's templates render a conversation.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
     message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}\
     {{ '<|im_start|>assistant\\n' }}{% endif %}";

impl Vocabulary {
    /// The vocabulary of a byte-level BPE `tokenizer.json` (as SmolLM2's), in the metadata
    /// llama.cpp's converter writes for it: `tokenizer.ggml.model = gpt2`, the tokens by id,
    /// the merges, added special tokens as control tokens, `pre` as given (e.g. `smollm`), BOS,
    /// EOS and a ChatML template.
    pub fn from_tokenizer_json(
        path: &Path,
        pre: &str,
        bos: &str,
        eos: &str,
    ) -> Result<Self, SynthError> {
        let bad = |reason: String| SynthError::Vocabulary {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return Err(bad("not a BPE tokenizer".into()));
        }
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("no model.vocab".into()))?;
        let mut by_id: BTreeMap<u64, String> = BTreeMap::new();
        for (token, id) in vocab {
            let id = id.as_u64().ok_or_else(|| bad(format!("id of {token:?}")))?;
            by_id.insert(id, token.clone());
        }
        let mut control = Vec::new();
        for added in json["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str())
            else {
                return Err(bad("an added token without id or content".into()));
            };
            by_id.insert(id, content.to_string());
            if added["special"].as_bool() == Some(true) {
                control.push(id);
            }
        }
        let size = by_id.len();
        if by_id.keys().copied().ne(0..size as u64) {
            return Err(bad("token ids are not 0..n".into()));
        }
        let merges: Vec<Value> = model["merges"]
            .as_array()
            .ok_or_else(|| bad("no model.merges".into()))?
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Ok(Value::String(s.clone())),
                serde_json::Value::Array(pair) => Ok(Value::String(
                    pair.iter()
                        .filter_map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                )),
                _ => Err(bad("a merge is neither a string nor a pair".into())),
            })
            .collect::<Result<_, _>>()?;
        let id_of = |t: &str| {
            by_id
                .iter()
                .find(|(_, v)| v.as_str() == t)
                .map(|(id, _)| *id as u32)
                .ok_or_else(|| bad(format!("no token {t:?}")))
        };
        let (bos, eos) = (id_of(bos)?, id_of(eos)?);
        let types = (0..size as u64)
            .map(|id| Value::I32(if control.contains(&id) { 3 } else { 1 }))
            .collect();
        let s = |v: &str| Value::String(v.to_string());
        let metadata = vec![
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s(pre)),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(by_id.into_values().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            ("tokenizer.ggml.merges".into(), Value::Array(merges)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
            ("tokenizer.ggml.padding_token_id".into(), Value::U32(eos)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            ("tokenizer.chat_template".into(), s(CHATML)),
        ];
        Ok(Self { metadata, size })
    }

    /// A small byte-level vocabulary for tests: the 256 byte tokens of GPT-2's byte-level
    /// alphabet, merges of the first printable pairs, and `<|im_start|>`/`<|im_end|>`, padded
    /// with unused tokens to `size` (at least 260).
    pub fn byte_level_test(size: usize) -> Self {
        let size = size.max(260);
        // GPT-2's byte-to-unicode map: printable bytes map to themselves, the rest to 256+.
        let mut tokens = Vec::with_capacity(size);
        let mut shifted = 0u32;
        for b in 0u32..256 {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
            let c = if printable {
                char::from_u32(b)
            } else {
                shifted += 1;
                char::from_u32(255 + shifted)
            };
            tokens.push(c.map(String::from).unwrap_or_default());
        }
        let merges: Vec<Value> = [("Ġ", "t"), ("h", "e"), ("Ġ", "a")]
            .iter()
            .map(|(a, b)| {
                tokens.push(format!("{a}{b}"));
                Value::String(format!("{a} {b}"))
            })
            .collect();
        tokens.push("<|im_start|>".into());
        tokens.push("<|im_end|>".into());
        let (bos, eos) = (tokens.len() as u32 - 2, tokens.len() as u32 - 1);
        while tokens.len() < size {
            tokens.push(format!("<unused{}>", tokens.len()));
        }
        let types = (0..size as u32)
            .map(|id| Value::I32(if id == bos || id == eos { 3 } else { 1 }))
            .collect();
        let s = |v: &str| Value::String(v.to_string());
        let metadata = vec![
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s("gpt-2")),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            ("tokenizer.ggml.merges".into(), Value::Array(merges)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            ("tokenizer.chat_template".into(), s(CHATML)),
        ];
        Self { metadata, size }
    }

    /// The number of tokens (the embedding's rows).
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Everything that determines a synthetic file: the same spec and vocabulary give the same
/// bytes on every machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthSpec {
    /// The architecture and dimensions.
    pub shape: Shape,
    /// The formats of the matrices.
    pub mix: QuantMix,
    /// The seed of the weights.
    pub seed: u64,
}

impl SynthSpec {
    /// A spec of `shape` in `mix` with weights drawn from `seed`.
    pub fn new(shape: Shape, mix: QuantMix, seed: u64) -> Self {
        Self { shape, mix, seed }
    }
}

/// What [`write`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    /// Tensors in the file.
    pub tensors: usize,
    /// Parameters (elements of all tensors).
    pub parameters: usize,
    /// The file's size in bytes.
    pub bytes: u64,
    /// How many tensors of each format (e.g. `("q4k", 98)`), sorted by format name.
    pub formats: Vec<(String, usize)>,
}

/// One tensor to generate: name, dims (rows, columns) and role.
struct Plan {
    name: String,
    dims: Vec<usize>,
    role: Option<Role>,
    layer: usize,
}

fn plan(s: &Shape, vocab: usize) -> Vec<Plan> {
    let h = s.hidden;
    let (q, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let m = |name: String, dims: Vec<usize>, role: Role, layer: usize| Plan {
        name,
        dims,
        role: Some(role),
        layer,
    };
    let v = |name: String, n: usize| Plan {
        name,
        dims: vec![n],
        role: None,
        layer: 0,
    };
    let embd_role = if s.tied {
        Role::Output
    } else {
        Role::TokenEmbedding
    };
    let mut t = vec![
        m("token_embd.weight".into(), vec![vocab, h], embd_role, 0),
        v("output_norm.weight".into(), h),
    ];
    if !s.tied {
        t.push(m("output.weight".into(), vec![vocab, h], Role::Output, 0));
    }
    if s.arch == "phi2" {
        // LayerNorms with biases, fused projections with a bias, a bias on every other
        // projection, a parallel block (one norm), no gate.
        t.push(v("output_norm.bias".into(), h));
        t.push(v("output.bias".into(), vocab));
        for i in 0..s.layers {
            let b = |n: &str| format!("blk.{i}.{n}");
            t.push(v(b("attn_norm.weight"), h));
            t.push(v(b("attn_norm.bias"), h));
            let qkv = q + 2 * kv;
            t.push(m(b("attn_qkv.weight"), vec![qkv, h], Role::AttnQkv, i));
            t.push(v(b("attn_qkv.bias"), qkv));
            t.push(m(b("attn_output.weight"), vec![h, q], Role::AttnOutput, i));
            t.push(v(b("attn_output.bias"), h));
            t.push(m(b("ffn_up.weight"), vec![s.ffn, h], Role::Other, i));
            t.push(v(b("ffn_up.bias"), s.ffn));
            t.push(m(b("ffn_down.weight"), vec![h, s.ffn], Role::FfnDown, i));
            t.push(v(b("ffn_down.bias"), h));
        }
        return t;
    }
    for i in 0..s.layers {
        let b = |n: &str| format!("blk.{i}.{n}");
        t.push(v(b("attn_norm.weight"), h));
        if s.arch == "phi3" {
            t.push(m(
                b("attn_qkv.weight"),
                vec![q + 2 * kv, h],
                Role::AttnQkv,
                i,
            ));
        } else {
            t.push(m(b("attn_q.weight"), vec![q, h], Role::Other, i));
            t.push(m(b("attn_k.weight"), vec![kv, h], Role::Other, i));
            t.push(m(b("attn_v.weight"), vec![kv, h], Role::AttnV, i));
        }
        t.push(m(b("attn_output.weight"), vec![h, q], Role::AttnOutput, i));
        t.push(v(b("ffn_norm.weight"), h));
        if s.arch == "phi3" {
            t.push(m(b("ffn_up.weight"), vec![2 * s.ffn, h], Role::Other, i));
        } else {
            t.push(m(b("ffn_gate.weight"), vec![s.ffn, h], Role::Other, i));
            t.push(m(b("ffn_up.weight"), vec![s.ffn, h], Role::Other, i));
        }
        t.push(m(b("ffn_down.weight"), vec![h, s.ffn], Role::FfnDown, i));
        if s.arch == "qwen2" {
            t.push(v(b("attn_q.bias"), q));
            t.push(v(b("attn_k.bias"), kv));
            t.push(v(b("attn_v.bias"), kv));
        }
        if s.arch == "qwen3" || s.arch == "gemma3" {
            t.push(v(b("attn_q_norm.weight"), s.head_dim));
            t.push(v(b("attn_k_norm.weight"), s.head_dim));
        }
        if s.arch == "gemma2" || s.arch == "gemma3" {
            t.push(v(b("post_attention_norm.weight"), h));
            t.push(v(b("post_ffw_norm.weight"), h));
        }
    }
    t
}

fn metadata(spec: &SynthSpec) -> Vec<(String, Value)> {
    let s = &spec.shape;
    let a = s.arch;
    let u = |n: usize| Value::U32(n as u32);
    // phi2 as llama.cpp's converter writes it: a LayerNorm epsilon, and no key/value lengths
    // (the head is the width over the heads).
    let eps = if a == "phi2" {
        "layer_norm_epsilon"
    } else {
        "layer_norm_rms_epsilon"
    };
    let mut md = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            "general.name".into(),
            // Not the architecture's name: llama.cpp (and our tokenizer, which follows it)
            // changes how special tokens tokenize when the model's name says `phi3`, and it
            // stops loading a vocabulary without `</s>` then (e.g. SmolLM2's).
            Value::String(format!("synthetic {} (seed {})", s.name, spec.seed)),
        ),
        ("general.file_type".into(), Value::U32(spec.mix.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (format!("{a}.context_length"), u(s.context)),
        (format!("{a}.embedding_length"), u(s.hidden)),
        (format!("{a}.block_count"), u(s.layers)),
        (format!("{a}.feed_forward_length"), u(s.ffn)),
        (format!("{a}.attention.head_count"), u(s.heads)),
        (format!("{a}.attention.head_count_kv"), u(s.kv_heads)),
        (format!("{a}.attention.{eps}"), Value::F32(s.rms_eps)),
        (format!("{a}.rope.freq_base"), Value::F32(s.rope_theta)),
        (format!("{a}.rope.dimension_count"), u(s.rope_dim)),
    ];
    if a != "phi2" {
        md.push((format!("{a}.attention.key_length"), u(s.head_dim)));
        md.push((format!("{a}.attention.value_length"), u(s.head_dim)));
    }
    if a == "gemma3" {
        md.push((format!("{a}.attention.sliding_window"), u(512)));
    }
    if a == "gemma2" {
        // Real Gemma 2 files: a 4096-position window, scores capped at 50 and logits at 30.
        // The tiny shape's window (16) and caps (2 and 10) are small enough to act on a short
        // prompt and on its random weights' scores and logits.
        let tiny = s.name == "tiny";
        let f = |tiny_value: f32, real: f32| Value::F32(if tiny { tiny_value } else { real });
        md.push((
            format!("{a}.attention.sliding_window"),
            u(if tiny { 16 } else { 4096 }),
        ));
        md.push((format!("{a}.attn_logit_softcapping"), f(2.0, 50.0)));
        md.push((format!("{a}.final_logit_softcapping"), f(10.0, 30.0)));
    }
    md
}

/// The value of draw `r` (uniform in `[-0.5, 0.5)`) for a tensor: norms near 1, small biases,
/// matrices scaled by `1/√columns` so activations keep their size through every layer.
fn value(plan: &Plan, r: f32) -> f32 {
    // Biases first: a LayerNorm's bias (`attn_norm.bias`) is a small bias, not a norm weight.
    if plan.name.contains("bias") {
        0.1 * r
    } else if plan.name.contains("norm") {
        1.0 + 0.2 * r
    } else if plan.name == "token_embd.weight" {
        2.0 * r
    } else {
        let columns = *plan.dims.last().unwrap_or(&1) as f32;
        3.4 * r / columns.sqrt()
    }
}

/// The tensor's draws: a 64-bit linear congruential generator started from `seed` and the
/// tensor's index (so tensors can be generated in any order, on any number of threads).
fn generate(plan: &Plan, index: usize, seed: u64) -> Vec<f32> {
    let count: usize = plan.dims.iter().product();
    let mut x = seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..count)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            value(plan, ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
        })
        .collect()
}

/// Writes the synthetic model `spec` with `vocab`'s tokenizer to `out` (through a temporary
/// file beside it, renamed into place when complete). Tensors are generated and quantized on
/// every available core.
pub fn write(spec: &SynthSpec, vocab: &Vocabulary, out: &Path) -> Result<SynthSummary, SynthError> {
    let fail = |reason: String| SynthError::Write {
        path: out.to_path_buf(),
        reason,
    };
    let s = &spec.shape;
    let plans = plan(s, vocab.size);
    let slots: Vec<Mutex<Option<QTensor>>> = plans.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let error: Mutex<Option<String>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = plans.get(i) else { break };
                let dtype = match p.role {
                    Some(role) => spec.mix.format(role, p.layer, s.layers, p.dims[1]),
                    None => GgmlDType::F32,
                };
                let data = generate(p, i, spec.seed);
                let q = Tensor::from_vec(data, p.dims.as_slice(), &Device::Cpu)
                    .and_then(|t| QTensor::quantize(&t, dtype));
                match q {
                    Ok(q) => *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(q),
                    Err(e) => {
                        *error.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("{}: {e}", p.name));
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(fail(e));
    }
    let tensors: Vec<(String, QTensor)> = plans
        .iter()
        .zip(slots)
        .map(|(p, slot)| {
            let q = slot.into_inner().unwrap_or_else(|e| e.into_inner());
            q.map(|q| (p.name.clone(), q))
                .ok_or_else(|| fail(format!("{} was not generated", p.name)))
        })
        .collect::<Result<_, _>>()?;
    let mut md = metadata(spec);
    md.push((
        format!("{}.vocab_size", s.arch),
        Value::U32(vocab.size as u32),
    ));
    md.extend(vocab.metadata.iter().cloned());
    let mut formats: BTreeMap<String, usize> = BTreeMap::new();
    for (_, t) in &tensors {
        *formats
            .entry(format!("{:?}", t.dtype()).to_lowercase())
            .or_default() += 1;
    }
    let tmp = out.with_extension("gguf.partial");
    let written = (|| -> Result<(), String> {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| e.to_string())?);
        let md: Vec<_> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<_> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &md, &ts).map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut f).map_err(|e| e.to_string())?;
        drop(f);
        std::fs::rename(&tmp, out).map_err(|e| e.to_string())
    })();
    if let Err(e) = written {
        std::fs::remove_file(&tmp).ok();
        return Err(fail(e));
    }
    Ok(SynthSummary {
        tensors: tensors.len(),
        parameters: plans.iter().map(|p| p.dims.iter().product::<usize>()).sum(),
        bytes: std::fs::metadata(out)
            .map_err(|e| fail(e.to_string()))?
            .len(),
        formats: formats.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_follow_llama_cpp_choices() {
        use GgmlDType::*;
        let m = QuantMix::Q4KM;
        // 16 layers: layers 0, 1 (< n/8), 14, 15 (≥ 7n/8) and every third from n/8 + 2.
        let v: Vec<_> = (0..16)
            .map(|i| m.format(Role::AttnV, i, 16, 2048))
            .collect();
        let six: Vec<usize> = (0..16).filter(|&i| v[i] == Q6K).collect();
        assert_eq!(six, vec![0, 1, 4, 7, 10, 13, 14, 15]);
        assert_eq!(m.format(Role::Other, 3, 16, 2048), Q4K);
        assert_eq!(m.format(Role::Output, 0, 16, 2048), Q6K);
        assert_eq!(m.format(Role::AttnQkv, 0, 16, 2048), Q5K);
        // Rows that are not whole K-quant blocks fall back.
        assert_eq!(m.format(Role::Other, 3, 16, 576), Q5_0);
        assert_eq!(m.format(Role::Output, 3, 16, 576), Q8_0);
        let q3 = QuantMix::Q3KM;
        assert_eq!(q3.format(Role::AttnV, 1, 28, 3072), Q5K);
        assert_eq!(q3.format(Role::AttnV, 2, 28, 3072), Q4K);
        assert_eq!(q3.format(Role::FfnDown, 0, 32, 14336), Q5K);
        assert_eq!(q3.format(Role::FfnDown, 2, 32, 14336), Q4K);
        assert_eq!(q3.format(Role::AttnOutput, 2, 32, 4096), Q4K);
        assert_eq!(q3.format(Role::Other, 2, 32, 4096), Q3K);
        let q40 = QuantMix::parse("Q4_0").unwrap();
        assert_eq!(q40.format(Role::Other, 0, 16, 2048), Q4_0);
        assert_eq!(q40.format(Role::Output, 0, 16, 2048), Q6K);
        let q80 = QuantMix::parse("q8_0").unwrap();
        assert_eq!(q80.format(Role::Output, 0, 16, 2048), Q8_0);
        assert!(matches!(
            QuantMix::parse("q9_9"),
            Err(SynthError::UnknownMix(_))
        ));
    }

    #[test]
    fn shapes_are_found_by_architecture() {
        assert_eq!(shape("llama", "llama-3.1-8b").unwrap().hidden, 4096);
        for arch in ARCHITECTURES {
            let s = shape(arch, "tiny").unwrap();
            assert!(s.hidden.is_multiple_of(256));
            assert!(s.ffn.is_multiple_of(256));
        }
        assert!(matches!(
            shape("llama", "qwen2.5-7b"),
            Err(SynthError::UnknownShape { .. })
        ));
        assert!(matches!(
            shape("gpt-j", "tiny"),
            Err(SynthError::UnknownArchitecture(_))
        ));
        for s in SHAPES {
            assert!(ARCHITECTURES.contains(&s.arch), "{}", s.name);
            assert_eq!(s.heads % s.kv_heads, 0, "{}", s.name);
        }
    }
}
