//! Loading a llama-architecture model from the Hugging Face hub layout, quantized on load.
//!
//! The directory holds `config.json` and either `model.safetensors` or several shards listed
//! by `model.safetensors.index.json` (its `weight_map`); a `tokenizer.json` may sit beside
//! them but the weights do not need it. [`Llama::load_safetensors`] reads the tensors under
//! the Hugging Face names (`model.embed_tokens.weight`, `model.layers.N.self_attn.q_proj.weight`,
//! ...), converts them to f32 (from bf16, f16 or f32), and quantizes every matrix to the
//! [`QuantizationType`] asked for; the norms stay f32.
//!
//! Our llama decoder rotates adjacent pairs of a head's dimensions (GGML's interleaved RoPE),
//! which is right for GGUF files because llama.cpp's converter permutes the rows of the
//! query and key projections. Hugging Face checkpoints rotate the two halves of a head
//! instead, so this loader applies the same row permutation to `q_proj` and `k_proj`
//! ([`permute_qk`]) and the decoder runs unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::BufferedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::llama::{BlockWeights, Llama, LlamaVariant, LoadProgress};
use crate::quant::{Embedding, QLinear};
use crate::{ModelError, Result};

/// The weight format matrices are quantized to on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizationType {
    /// 4-bit, blocks of 32 values with one f16 scale (GGML `Q4_0`).
    Q4_0,
    /// 4-bit k-quant, super-blocks of 256 values (GGML `Q4_K`): rows must be a multiple of
    /// 256 long.
    Q4K,
    /// 8-bit, blocks of 32 values with one f16 scale (GGML `Q8_0`).
    Q8_0,
    /// Half precision (computed in f32).
    F16,
    /// bfloat16 (computed in f32).
    BF16,
    /// Full precision: no quantization, activations are not quantized either.
    F32,
}

impl QuantizationType {
    /// The seed's 4-bit choice: [`Q4_0`](Self::Q4_0) when quantizing on load; a GGUF file
    /// stored in any 4-bit format satisfies it.
    pub const Q4: Self = Self::Q4_0;
    /// The seed's 8-bit choice: [`Q8_0`](Self::Q8_0).
    pub const Q8: Self = Self::Q8_0;
    /// The seed's half-precision choice: [`F16`](Self::F16).
    pub const FP16: Self = Self::F16;

    /// The candle GGML type of this format.
    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::F16 => GgmlDType::F16,
            Self::BF16 => GgmlDType::BF16,
            Self::F32 => GgmlDType::F32,
        }
    }

    /// The number of values per block: a quantized row's length must be a multiple of it.
    pub fn block_size(self) -> usize {
        self.ggml_dtype().block_size()
    }

    /// Bits per value of this format (4, 8, 16 or 32).
    pub fn bits(self) -> u32 {
        ggml_bits(self.ggml_dtype())
    }

    /// The format of the token table and the output projection: 4-bit types keep them in
    /// `Q8_0`, as llama.cpp's quantizer does (every logit goes through them; SmolLM2's tied
    /// table in Q4_0 cost most of its argmax agreement).
    pub fn for_token_table(self) -> Self {
        match self {
            Self::Q4_0 | Self::Q4K => Self::Q8_0,
            other => other,
        }
    }
}

/// Bits per value of a GGML format (its nominal width: 4 for every 4-bit format whatever its
/// block scales take; 0 for formats this crate does not name).
pub fn ggml_bits(dtype: GgmlDType) -> u32 {
    use GgmlDType as G;
    match dtype {
        G::Q2K => 2,
        G::Q3K => 3,
        G::Q4_0 | G::Q4_1 | G::Q4K => 4,
        G::Q5_0 | G::Q5_1 | G::Q5K => 5,
        G::Q6K => 6,
        G::Q8_0 | G::Q8_1 | G::Q8K => 8,
        G::F16 | G::BF16 => 16,
        G::F32 => 32,
        #[allow(unreachable_patterns)]
        _ => 0,
    }
}

/// Quantizes `t` (values, rows along its last dimension) to `dtype`: the one quantizer of
/// both loaders (a Hugging Face directory's matrices, a GGUF's re-quantized ones). A row
/// length that is not a multiple of the format's block is [`ModelError::BadTensor`] naming
/// `name`.
pub(crate) fn quantize_values(name: &str, t: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    let block = dtype.block_size();
    let row = t.dims().last().copied().unwrap_or(0);
    if !row.is_multiple_of(block) {
        return Err(ModelError::BadTensor {
            name: name.to_string(),
            reason: format!(
                "rows of {row} values cannot be quantized to {dtype:?} (blocks of {block})"
            ),
        });
    }
    QTensor::quantize(t, dtype).map_err(|e| ModelError::BadTensor {
        name: name.to_string(),
        reason: format!("quantizing to {dtype:?}: {e}"),
    })
}

/// [`QuantizationType::Q8_0`]: what [`LoadedModel::load`](crate::LoadedModel::load) and the
/// CLI use for a safetensors directory when no format is asked for (a quarter of f32's
/// memory, and close to its logits).
impl Default for QuantizationType {
    fn default() -> Self {
        Self::Q8_0
    }
}

impl QuantizationType {
    /// Every format, in the order [`QuantizationType::name`] lists them.
    pub const ALL: [Self; 6] = [
        Self::Q4_0,
        Self::Q4K,
        Self::Q8_0,
        Self::F16,
        Self::BF16,
        Self::F32,
    ];

    /// The lowercase name the CLI takes (`q4_0`, `q4_k`, `q8_0`, `f16`, `bf16`, `f32`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4_k",
            Self::Q8_0 => "q8_0",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::F32 => "f32",
        }
    }
}

impl std::fmt::Display for QuantizationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for QuantizationType {
    type Err = ModelError;

    /// Parses a [`QuantizationType::name`], case-insensitively (`q4k` is also accepted);
    /// anything else is [`ModelError::InvalidMetadata`] listing the names.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        if lower == "q4k" {
            return Ok(Self::Q4K);
        }
        Self::ALL
            .into_iter()
            .find(|q| q.name() == lower)
            .ok_or_else(|| ModelError::InvalidMetadata {
                key: "quantization".into(),
                reason: format!(
                    "unknown format '{s}' (expected one of: {})",
                    Self::ALL.map(Self::name).join(", ")
                ),
            })
    }
}

/// The parts of a Hugging Face `config.json` a llama-architecture decoder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// The hyper-parameters, `architecture` set to `model_type`.
    pub config: ModelConfig,
    /// `tie_word_embeddings`: the output projection is the embedding table (no
    /// `lm_head.weight`).
    pub tie_word_embeddings: bool,
}

impl HfConfig {
    /// The `model_type`s this loader runs.
    pub const MODEL_TYPES: &'static [&'static str] = &["llama", "mistral"];

    /// Parses `config.json`. Required: `model_type` (llama or mistral, else
    /// [`ModelError::UnsupportedArchitecture`]), `hidden_size`, `num_hidden_layers`,
    /// `num_attention_heads`, `intermediate_size`, `vocab_size`; a missing one is
    /// [`ModelError::MissingMetadata`] naming it. Optional, with the defaults of transformers'
    /// `LlamaConfig`: `num_key_value_heads` (the head count), `rms_norm_eps` (1e-6),
    /// `rope_theta` (10000), `max_position_embeddings` (2048), `tie_word_embeddings` (false),
    /// `head_dim` (hidden / heads). A non-null `rope_scaling` is
    /// [`ModelError::UnsupportedFeature`].
    pub fn from_json(json: &serde_json::Value) -> Result<Self> {
        let missing = |key: &str| ModelError::MissingMetadata { key: key.into() };
        let model_type = json
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| missing("model_type"))?;
        if !Self::MODEL_TYPES.contains(&model_type) {
            return Err(ModelError::UnsupportedArchitecture(model_type.into()));
        }
        let opt_usize = |key: &str| -> Result<Option<usize>> {
            match json.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|v| Some(v as usize))
                    .ok_or_else(|| missing(key)),
            }
        };
        let usize_of = |key: &str| opt_usize(key)?.ok_or_else(|| missing(key));
        let opt_f64 = |key: &str| -> Result<Option<f64>> {
            match json.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| missing(key)),
            }
        };
        if json.get("rope_scaling").is_some_and(|v| !v.is_null()) {
            return Err(ModelError::UnsupportedFeature {
                name: "rope_scaling".into(),
                reason: "RoPE scaling (Llama 3.1, YaRN, linear) is not implemented".into(),
            });
        }
        let hidden_size = usize_of("hidden_size")?;
        let n_layers = usize_of("num_hidden_layers")?;
        let n_heads = usize_of("num_attention_heads")?;
        let ffn_size = usize_of("intermediate_size")?;
        let vocab_size = usize_of("vocab_size")?;
        let n_kv_heads = opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::InvalidMetadata {
                key: "num_key_value_heads".into(),
                reason: format!("{n_kv_heads} does not divide {n_heads} attention heads"),
            });
        }
        let head_dim = opt_usize("head_dim")?.unwrap_or(hidden_size / n_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::InvalidMetadata {
                key: "head_dim".into(),
                reason: format!("{head_dim} is not a positive even number"),
            });
        }
        let tie_word_embeddings = match json.get("tie_word_embeddings") {
            None | Some(serde_json::Value::Null) => false,
            Some(v) => v.as_bool().ok_or_else(|| missing("tie_word_embeddings"))?,
        };
        Ok(Self {
            config: ModelConfig {
                architecture: model_type.into(),
                vocab_size,
                context_length: opt_usize("max_position_embeddings")?.unwrap_or(2048),
                hidden_size,
                n_layers,
                n_heads,
                n_kv_heads,
                head_dim,
                ffn_size,
                rms_eps: opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
                rope_theta: opt_f64("rope_theta")?.unwrap_or(10_000.0),
            },
            tie_word_embeddings,
        })
    }

    /// Reads and parses a `config.json` file (see [`HfConfig::from_json`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&read_json(path)?)
    }
}

/// Reads a JSON file: a missing file is [`ModelError::NotFound`], malformed JSON
/// [`ModelError::InvalidModelFile`], both naming the file.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| invalid(path, e.to_string()))
}

/// The safetensors files of a model directory: the shards `model.safetensors.index.json`
/// lists (its `weight_map`, each file once, in order of first appearance) when it exists,
/// else `model.safetensors`. The files are not opened.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.is_file() {
        return Ok(vec![dir.join("model.safetensors")]);
    }
    let json = read_json(&index_path)?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| invalid(&index_path, "no `weight_map` object".into()))?;
    let mut files: Vec<&str> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| invalid(&index_path, "a non-string file name".into()))?;
        if file.is_empty()
            || Path::new(file).is_absolute()
            || file.split(['/', '\\']).any(|p| p.is_empty() || p == "..")
        {
            return Err(invalid(
                &index_path,
                format!("shard '{file}' is not a file of the directory"),
            ));
        }
        if !files.contains(&file) {
            files.push(file);
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Permutes the rows of a Hugging Face query or key projection (`[heads * head_dim, in]`)
/// into the order llama.cpp's converter writes: within each head, the rows are viewed as
/// `[2, head_dim / 2]` and transposed, so that RoPE on adjacent pairs (GGML's interleaved
/// mode) computes what RoPE on the two halves computes on the original rows.
pub fn permute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let head_dim = out / heads;
    w.reshape((heads, 2, head_dim / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// The inverse of [`permute_qk`]: rows in llama.cpp's order back to Hugging Face's.
pub fn unpermute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let head_dim = out / heads;
    w.reshape((heads, head_dim / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

pub(crate) fn invalid(path: &Path, reason: String) -> ModelError {
    ModelError::InvalidModelFile {
        path: path.to_path_buf(),
        reason,
    }
}

pub(crate) fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> ModelError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// The safetensors files of a model directory, and which file holds each tensor.
struct Shards {
    files: Vec<(PathBuf, BufferedSafetensors)>,
    index: HashMap<String, usize>,
}

impl Shards {
    /// `model.safetensors.index.json`'s shards when it exists, else `model.safetensors`
    /// (see [`weight_files`]).
    fn open(dir: &Path) -> Result<Self> {
        let paths = weight_files(dir)?;
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
            let st = BufferedSafetensors::new(bytes).map_err(|e| invalid(&path, e.to_string()))?;
            for (name, _) in st.tensors() {
                index.insert(name, files.len());
            }
            files.push((path, st));
        }
        Ok(Self { files, index })
    }

    /// Tensor `name` as f32 on `device`, after checking its shape.
    fn tensor(&self, name: &str, dims: &[usize], device: &Device) -> Result<Tensor> {
        let bad = |reason: String| ModelError::BadTensor {
            name: name.to_string(),
            reason,
        };
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| bad("missing from the safetensors files".into()))?;
        let (path, st) = &self.files[i];
        let view = st.get(name).map_err(|e| bad(e.to_string()))?;
        if view.shape() != dims {
            return Err(bad(format!(
                "expected shape {dims:?}, found {:?} in {}",
                view.shape(),
                path.display()
            )));
        }
        let t = st.load(name, device).map_err(|e| bad(e.to_string()))?;
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => Ok(t.to_dtype(DType::F32)?),
            other => Err(bad(format!(
                "element type {other:?} (expected f32, f16 or bf16)"
            ))),
        }
    }

    /// A `[out, inp]` matrix, quantized to `quant`.
    fn qtensor(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        quant: QuantizationType,
        device: &Device,
        permute_heads: Option<usize>,
    ) -> Result<QTensor> {
        let block = quant.block_size();
        if !inp.is_multiple_of(block) {
            return Err(ModelError::BadTensor {
                name: name.to_string(),
                reason: format!(
                    "rows of {inp} values cannot be quantized to {quant:?} (blocks of {block})"
                ),
            });
        }
        let mut t = self.tensor(name, &[out, inp], device)?;
        if let Some(heads) = permute_heads {
            t = permute_qk(&t, heads)?;
        }
        quantize_values(name, &t, quant.ggml_dtype())
    }

    fn linear(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        quant: QuantizationType,
        device: &Device,
    ) -> Result<QLinear> {
        let q = self.qtensor(name, out, inp, quant, device, None)?;
        Ok(QLinear::from_qtensor(Arc::new(q))?)
    }
}

impl Llama {
    /// Loads a llama or mistral model from a Hugging Face hub directory (`config.json`,
    /// `model.safetensors` or the shards of `model.safetensors.index.json`) onto `device`,
    /// quantizing every matrix (the embedding table included) to `quant`; the norms stay f32.
    ///
    /// Errors: a missing file is [`ModelError::NotFound`]; an unparsable one
    /// [`ModelError::InvalidModelFile`]; `config.json` as in [`HfConfig::from_json`]; a missing
    /// or misshapen tensor, or rows whose length is not a multiple of the format's block
    /// (32, or 256 for [`QuantizationType::Q4K`]), [`ModelError::BadTensor`] naming it.
    pub fn load_safetensors(dir: &Path, quant: QuantizationType, device: &Device) -> Result<Self> {
        Self::load_safetensors_with_progress(dir, quant, device, &mut |_| {})
    }

    /// [`Llama::load_safetensors`], reporting progress once per tensor converted (after the
    /// safetensors files are read).
    pub(crate) fn load_safetensors_with_progress(
        dir: &Path,
        quant: QuantizationType,
        device: &Device,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let hf = HfConfig::from_file(&dir.join("config.json"))?;
        let c = &hf.config;
        let variant = LlamaVariant::for_architecture(&c.architecture)
            .ok_or_else(|| ModelError::UnsupportedArchitecture(c.architecture.clone()))?;
        let shards = Shards::open(dir)?;
        // The token table, the final norm, the output projection unless tied, and 9 tensors
        // per block.
        let total = 2 + usize::from(!hf.tie_word_embeddings) + 9 * c.n_layers;
        let mut loaded = 0;
        let mut tick = |n: usize| {
            loaded += n;
            progress(LoadProgress { loaded, total });
        };
        let (hidden, ffn) = (c.hidden_size, c.ffn_size);
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let embd = shards.qtensor(
            "model.embed_tokens.weight",
            c.vocab_size,
            hidden,
            quant.for_token_table(),
            device,
            None,
        )?;
        let embedding = Embedding::new(embd)?;
        let norm = shards.tensor("model.norm.weight", &[hidden], device)?;
        tick(2);
        let output = if hf.tie_word_embeddings {
            None
        } else {
            let output = shards.linear(
                "lm_head.weight",
                c.vocab_size,
                hidden,
                quant.for_token_table(),
                device,
            )?;
            tick(1);
            Some(output)
        };
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = format!("model.layers.{i}");
            let lin = |t: &str, out: usize, inp: usize| {
                shards.linear(&format!("{p}.{t}.weight"), out, inp, quant, device)
            };
            let qk = |t: &str, out: usize, heads: usize| -> Result<QLinear> {
                let name = format!("{p}.self_attn.{t}.weight");
                let q = shards.qtensor(&name, out, hidden, quant, device, Some(heads))?;
                Ok(QLinear::from_qtensor(Arc::new(q))?)
            };
            let vector = |t: &str| shards.tensor(&format!("{p}.{t}.weight"), &[hidden], device);
            blocks.push(BlockWeights {
                attn_norm: vector("input_layernorm")?,
                wq: qk("q_proj", q_dim, c.n_heads)?,
                wk: qk("k_proj", kv_dim, c.n_kv_heads)?,
                wv: lin("self_attn.v_proj", kv_dim, hidden)?,
                wo: lin("self_attn.o_proj", hidden, q_dim)?,
                ffn_norm: vector("post_attention_layernorm")?,
                gate: lin("mlp.gate_proj", ffn, hidden)?,
                up: lin("mlp.up_proj", ffn, hidden)?,
                down: lin("mlp.down_proj", hidden, ffn)?,
            });
            tick(9);
        }
        Llama::from_parts(hf.config, variant, embedding, blocks, norm, output, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_round_trips_and_pairs_halves() {
        let w = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 3))
            .unwrap();
        // Two heads of 4 rows: HF rows (0, 1 | 2, 3) become (0, 2, 1, 3).
        let p = permute_qk(&w, 2).unwrap();
        let rows: Vec<f32> = p
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(rows, [0.0, 6.0, 3.0, 9.0, 12.0, 18.0, 15.0, 21.0]);
        let back = unpermute_qk(&p, 2).unwrap();
        let a: Vec<f32> = back.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn embedding_rows_of_every_format_equal_dequantization() {
        let w = Tensor::randn(0f32, 1.0, (5, 256), &Device::Cpu).unwrap();
        for quant in [
            QuantizationType::Q4_0,
            QuantizationType::Q4K,
            QuantizationType::Q8_0,
            QuantizationType::F16,
            QuantizationType::BF16,
            QuantizationType::F32,
        ] {
            let q = QTensor::quantize(&w, quant.ggml_dtype()).unwrap();
            let want: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
            let e = Embedding::new(q).unwrap();
            let got: Vec<Vec<f32>> = e.lookup(&[4, 1], &Device::Cpu).unwrap().to_vec2().unwrap();
            assert_eq!(got, vec![want[4].clone(), want[1].clone()], "{quant:?}");
        }
    }

    #[test]
    fn config_errors_are_typed() {
        let ok = serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100,
        });
        let hf = HfConfig::from_json(&ok).unwrap();
        assert_eq!(hf.config.n_kv_heads, 4);
        assert_eq!(hf.config.head_dim, 16);
        assert!(!hf.tie_word_embeddings);
        let mut bad = ok.clone();
        bad.as_object_mut().unwrap().remove("intermediate_size");
        assert!(matches!(
            HfConfig::from_json(&bad),
            Err(ModelError::MissingMetadata { key }) if key == "intermediate_size"
        ));
        let mut gpt = ok.clone();
        gpt["model_type"] = "gpt2".into();
        assert!(matches!(
            HfConfig::from_json(&gpt),
            Err(ModelError::UnsupportedArchitecture(a)) if a == "gpt2"
        ));
    }
}
