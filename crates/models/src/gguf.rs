//! Reading GGUF files with typed errors, and typed access to their metadata.
//!
//! The header (metadata and tensor index) is read here rather than by candle's
//! `Content::read`, so that every count, length and offset a hostile file declares is checked
//! against the bytes the file has before anything is allocated, with checked arithmetic: a
//! file never makes the reader panic, abort or run long (candle's reader divides by a
//! `general.alignment` of 0). The result is candle's [`Content`], and tensors are read by
//! candle as before.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use crate::safetensors::{ggml_bits, quantize_values};
use crate::{ModelError, QuantizationType, Result};

/// The tensors a 4-bit re-quantization keeps in `Q8_0`
/// ([`QuantizationType::for_token_table`]): the token table and the output projection.
const TOKEN_TABLES: [&str; 2] = ["token_embd.weight", "output.weight"];

/// The longest string a header may hold (llama.cpp's and candle's limit).
const MAX_STRING_LENGTH: u64 = 1 << 30;
/// The most elements an array, and the most entries the metadata or tensor index, may have.
const MAX_ARRAY_ELEMENTS: u64 = 1 << 30;
/// The most dimensions a tensor may have (GGML's `GGML_MAX_DIMS`).
const MAX_TENSOR_DIMS: u32 = 4;
/// How deep arrays of arrays may nest.
const MAX_VALUE_DEPTH: usize = 8;
/// The largest `general.alignment` accepted (a power of two).
const MAX_ALIGNMENT: u64 = 1 << 20;

/// A flag that asks a model load to stop: set it (from any thread) and the load in progress
/// returns [`ModelError::Cancelled`] before it reads its next tensor. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not (yet) cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every load holding a clone of this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(ModelError::Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        match self.is_cancelled() {
            true => Err(ModelError::Cancelled),
            false => Ok(()),
        }
    }
}

/// An open GGUF file: its parsed header (metadata and tensor index) and a reader for tensors.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
    file_size: u64,
    cancel: Option<CancelToken>,
    requantize: Option<QuantizationType>,
    /// The bytes of the tensor [`GgufFile::raw_tensor`] read last.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .field("metadata", &self.content.metadata.len())
            .finish()
    }
}

/// True when the file at `path` starts with GGUF's magic bytes (either byte order), whatever
/// its name; false when it cannot be read or is shorter than four bytes.
pub fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && matches!(u32::from_le_bytes(magic), 0x4655_4747 | 0x4747_5546)
}

impl GgufFile {
    /// Opens and parses the header of a GGUF file. A missing file, a file that is not GGUF, a
    /// header whose counts, lengths, dimensions or alignment do not fit the file, and a file
    /// truncated before its tensor data ends are each a typed error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound { path: path.clone() },
            _ => ModelError::Io {
                path: path.clone(),
                source: e,
            },
        };
        let file = File::open(&path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let content = read_header(&mut reader, file_size).map_err(|e| match e {
            HeaderError::Metadata { key, reason } => ModelError::InvalidMetadata { key, reason },
            HeaderError::UnsupportedType { tensor, format } => ModelError::UnsupportedFeature {
                name: tensor,
                reason: format!(
                    "quantization format {format} is not supported (candle 0.11 has no {format} \
                     blocks); use a file quantized to Q2_K..Q6_K, Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0"
                ),
            },
            HeaderError::Invalid(reason) => ModelError::InvalidGguf {
                path: path.clone(),
                reason,
            },
        })?;
        Ok(Self {
            path,
            content,
            reader,
            file_size,
            cancel: None,
            requantize: None,
            scratch: Vec::new(),
        })
    }

    /// Makes every later [`GgufFile::tensor`] read fail with [`ModelError::Cancelled`] once
    /// `token` is cancelled: a decoder's load, which reads its tensors one by one, stops
    /// within one tensor.
    pub fn set_cancel(&mut self, token: CancelToken) {
        self.cancel = Some(token);
    }

    /// Re-quantizes the matrices every later [`GgufFile::tensor`] reads to `quant`, as a
    /// Hugging Face directory is quantized on load (the same quantizer, and 4-bit formats keep
    /// the token table and output projection in `Q8_0`,
    /// [`QuantizationType::for_token_table`]). Only precision is lowered: a tensor of two or
    /// more dimensions stored as `F32`, `F16`, `BF16` or `Q8_0` with more bits per value than
    /// the target is dequantized and quantized again; every other tensor (norms and biases,
    /// other quantized formats, those already at or below the target) is read as stored.
    /// A tensor whose rows are not a multiple of the target's block follows llama.cpp's
    /// fallback for `Q4_K` (`Q5_0`, blocks of 32) and otherwise keeps its format.
    ///
    /// Errors: [`ModelError::PrecisionIncrease`] when most of the file's matrices are stored
    /// with fewer bits per value than `quant` has (a `Q4_1` file asked for `Q8_0`).
    pub fn requantize_to(&mut self, quant: QuantizationType) -> Result<()> {
        if let Some(stored) = self.stored_format() {
            if ggml_bits(stored) < quant.bits() {
                return Err(ModelError::PrecisionIncrease {
                    path: self.path.clone(),
                    stored: format!("{stored:?}"),
                    stored_bits: ggml_bits(stored),
                    requested: quant,
                    requested_bits: quant.bits(),
                });
            }
        }
        self.requantize = Some(quant);
        Ok(())
    }

    /// The format of most of the file's matrices (tensors of two or more dimensions), `None`
    /// when it has none.
    pub fn stored_format(&self) -> Option<GgmlDType> {
        let mut counts: Vec<(GgmlDType, usize)> = Vec::new();
        for info in self.content.tensor_infos.values() {
            if info.shape.dims().len() < 2 {
                continue;
            }
            match counts.iter_mut().find(|(d, _)| *d == info.ggml_dtype) {
                Some((_, n)) => *n += 1,
                None => counts.push((info.ggml_dtype, 1)),
            }
        }
        counts.into_iter().max_by_key(|&(_, n)| n).map(|(d, _)| d)
    }

    /// `Err(ModelError::Cancelled)` when the token given to [`GgufFile::set_cancel`] is
    /// cancelled.
    pub fn check_cancelled(&self) -> Result<()> {
        match &self.cancel {
            Some(t) => t.check(),
            None => Ok(()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The parsed header.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// True when the file has a tensor of that name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The number of tensors in the file.
    pub fn tensor_count(&self) -> usize {
        self.content.tensor_infos.len()
    }

    /// The largest dimension of any tensor in the file (0 when it has none): every size a
    /// model's metadata declares (width, vocabulary, feed-forward length, heads) is bounded by
    /// it, and it is bounded by the file's size (the header reader checks that every tensor's
    /// bytes lie inside the file).
    pub fn largest_dimension(&self) -> usize {
        self.content
            .tensor_infos
            .values()
            .flat_map(|t| t.shape.dims().iter().copied())
            .max()
            .unwrap_or(0)
    }

    /// Reads one tensor onto `device`. Fails with [`ModelError::Cancelled`], before reading,
    /// once the token of [`GgufFile::set_cancel`] is cancelled.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        self.check_cancelled()?;
        if !self.has_tensor(name) {
            return Err(ModelError::BadTensor {
                name: name.to_string(),
                reason: "missing from the GGUF file".into(),
            });
        }
        let t = self
            .content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| ModelError::BadTensor {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        match self.requantize {
            Some(quant) => requantize(name, t, quant, device),
            None => Ok(t),
        }
    }

    /// The stored bytes of tensor `name` (its GGML blocks, as in the file) with its format,
    /// if it has shape `dims` (outermost first) and is read as stored (no
    /// [`GgufFile::requantize_to`]); `Ok(None)` otherwise, and the caller reads it with
    /// [`GgufFile::tensor_with_shape`]. Reading a tensor through candle's `QTensor` makes two
    /// fresh allocations of its size (the raw bytes, then candle's blocks), and faulting in
    /// those zeroed pages was most of an 8B file's load time; this makes one. Fails as
    /// [`GgufFile::tensor`] does.
    pub fn raw_tensor(&mut self, name: &str, dims: &[usize]) -> Result<Option<(GgmlDType, &[u8])>> {
        self.check_cancelled()?;
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        if self.requantize.is_some() || info.shape.dims() != dims {
            return Ok(None);
        }
        // `read_header` checked that the rows split into whole blocks and that the bytes lie
        // inside the file (a file cut short since is a read error below).
        let dtype = info.ggml_dtype;
        let size = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
        let start = self.content.tensor_data_offset + info.offset;
        // A fresh buffer per tensor, the last one freed: glibc raises its dynamic mmap
        // threshold to the size of a freed mapped block (up to 32 MiB). With one buffer
        // reused for every tensor it stayed at 128 KiB, so a prompt's multi-megabyte
        // activations each became a fresh zeroed mapping: 8B prefill ran ~9% slower.
        self.scratch = vec![0u8; size];
        self.reader
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.reader.read_exact(&mut self.scratch))
            .map_err(|e| ModelError::BadTensor {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Some((dtype, &self.scratch)))
    }

    /// Reads one tensor and checks its shape (outermost dimension first, as candle orders it).
    pub fn tensor_with_shape(
        &mut self,
        name: &str,
        dims: &[usize],
        device: &Device,
    ) -> Result<QTensor> {
        let t = self.tensor(name, device)?;
        if t.shape().dims() != dims {
            return Err(ModelError::BadTensor {
                name: name.to_string(),
                reason: format!("expected shape {dims:?}, found {:?}", t.shape().dims()),
            });
        }
        Ok(t)
    }

    /// The metadata value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<String> {
        self.string("general.architecture")
    }

    /// A required string value.
    pub fn string(&self, key: &str) -> Result<String> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(missing(key)),
        }
    }

    /// A required unsigned integer value (any integer width).
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.get(key)
            .and_then(value_as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| missing(key))
    }

    /// An optional unsigned integer value.
    pub fn usize_opt(&self, key: &str) -> Option<usize> {
        self.get(key).and_then(value_as_u64).map(|v| v as usize)
    }

    /// An optional float value (any float or integer type).
    pub fn f64_opt(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            other => value_as_u64(other).map(|v| v as f64),
        }
    }
}

fn missing(key: &str) -> ModelError {
    ModelError::MissingMetadata {
        key: key.to_string(),
    }
}

/// Reads any non-negative integer metadata value as `u64`.
pub fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

/// Why a header was refused: a metadata value that cannot be used (named), or anything else.
enum HeaderError {
    Metadata {
        key: String,
        reason: String,
    },
    /// A tensor in a GGML format that exists but cannot be loaded (`format`: its GGML name).
    UnsupportedType {
        tensor: String,
        format: &'static str,
    },
    Invalid(String),
}

impl From<std::io::Error> for HeaderError {
    fn from(e: std::io::Error) -> Self {
        Self::Invalid(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "truncated header".into(),
            _ => e.to_string(),
        })
    }
}

fn invalid<T>(reason: impl Into<String>) -> std::result::Result<T, HeaderError> {
    Err(HeaderError::Invalid(reason.into()))
}

/// A reader of the header's little-endian fields that knows how many bytes are left.
struct HeaderReader<'a, R> {
    inner: &'a mut R,
    pos: u64,
    size: u64,
    /// Width of string and array lengths and of the counts: 4 bytes in GGUF v1, 8 after.
    wide: bool,
}

impl<R: Read> HeaderReader<'_, R> {
    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> std::result::Result<[u8; N], HeaderError> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> std::result::Result<u32, HeaderError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, HeaderError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn length(&mut self) -> std::result::Result<u64, HeaderError> {
        match self.wide {
            true => self.u64(),
            false => Ok(self.u32()? as u64),
        }
    }

    fn string(&mut self) -> std::result::Result<String, HeaderError> {
        let len = self.length()?;
        if len > MAX_STRING_LENGTH || len > self.remaining() {
            return invalid(format!(
                "a string of {len} bytes at byte {} does not fit the file",
                self.pos
            ));
        }
        let mut v = vec![0u8; len as usize];
        self.inner.read_exact(&mut v)?;
        self.pos += len;
        // Strings are not NUL-terminated, but some writers add one (candle trims them too).
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    /// The smallest number of bytes a value of `ty` takes in the file.
    fn min_size(&self, ty: u32) -> u64 {
        let len = if self.wide { 8 } else { 4 };
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => len,
            9 => 4 + len,
            _ => 8,
        }
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<Value, HeaderError> {
        Ok(match ty {
            0 => Value::U8(self.bytes::<1>()?[0]),
            1 => Value::I8(self.bytes::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => match self.bytes::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return invalid(format!("a bool of value {b}")),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_VALUE_DEPTH {
                    return invalid(format!("arrays nested more than {MAX_VALUE_DEPTH} deep"));
                }
                let ty = self.u32()?;
                if ty > 12 {
                    return invalid(format!("unknown value type {ty}"));
                }
                let len = self.length()?;
                let need = len.saturating_mul(self.min_size(ty));
                if len > MAX_ARRAY_ELEMENTS || need > self.remaining() {
                    return invalid(format!(
                        "an array of {len} elements at byte {} does not fit the file",
                        self.pos
                    ));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            other => return invalid(format!("unknown value type {other}")),
        })
    }
}

/// GGML's type ids (`ggml_type`) of the tensor formats candle reads.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The name of a GGML tensor type that GGML defines but this crate cannot load (candle 0.11
/// has no blocks for it), for the error that names it; `None` for an id GGML does not define.
fn unsupported_dtype_name(id: u32) -> Option<&'static str> {
    Some(match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// Reads the header of a GGUF file of `file_size` bytes, checking every declared count,
/// length, dimension, offset and the alignment against the file before using it.
fn read_header<R: Read + Seek>(
    reader: &mut R,
    file_size: u64,
) -> std::result::Result<Content, HeaderError> {
    reader.rewind()?;
    let mut r = HeaderReader {
        inner: reader,
        pos: 0,
        size: file_size,
        wide: true,
    };
    let magic = r.u32()?;
    if magic != 0x4655_4747 && magic != 0x4747_5546 {
        return invalid(format!("not a GGUF file (magic 0x{magic:08x})"));
    }
    let magic = match r.u32()? {
        1 => VersionedMagic::GgufV1,
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => return invalid(format!("unsupported GGUF version {v}")),
    };
    r.wide = !matches!(magic, VersionedMagic::GgufV1);
    let tensor_count = r.length()?;
    let kv_count = r.length()?;
    // A metadata entry takes at least a key length, a type and one byte; a tensor entry a name
    // length, a dimension count, a type and an offset.
    let len = if r.wide { 8 } else { 4 };
    let need = kv_count
        .saturating_mul(len + 5)
        .saturating_add(tensor_count.saturating_mul(len + 16));
    if tensor_count > MAX_ARRAY_ELEMENTS || kv_count > MAX_ARRAY_ELEMENTS || need > r.remaining() {
        return invalid(format!(
            "the header declares {tensor_count} tensors and {kv_count} metadata entries, more \
             than the file's {file_size} bytes hold"
        ));
    }
    let mut metadata = HashMap::new();
    for _ in 0..kv_count {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(HeaderError::Metadata {
                key,
                reason: "appears twice".into(),
            });
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => candle_core::quantized::gguf_file::DEFAULT_ALIGNMENT,
        Some(v) => match value_as_u64(v) {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
            _ => {
                return Err(HeaderError::Metadata {
                    key: "general.alignment".into(),
                    reason: format!("{v:?} is not a power of two between 1 and {MAX_ALIGNMENT}"),
                })
            }
        },
    };
    let mut infos = Vec::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > MAX_TENSOR_DIMS {
            return invalid(format!(
                "tensor '{name}' has {n_dims} dimensions (at most {MAX_TENSOR_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = match r.wide {
                true => r.u64()?,
                false => r.u32()? as u64,
            };
            dims.push(d);
        }
        let ty = r.u32()?;
        let dtype = match ggml_dtype(ty) {
            Some(t) => t,
            None => match unsupported_dtype_name(ty) {
                Some(format) => {
                    return Err(HeaderError::UnsupportedType {
                        tensor: name,
                        format,
                    })
                }
                None => return invalid(format!("tensor '{name}' has an unknown type {ty}")),
            },
        };
        let offset = r.u64()?;
        infos.push((name, dims, dtype, offset));
    }
    let data_offset = r
        .pos
        .checked_next_multiple_of(alignment)
        .filter(|&o| o <= file_size);
    let Some(data_offset) = data_offset else {
        return invalid("truncated: the file ends before its tensor data");
    };
    let mut tensor_infos = HashMap::with_capacity(infos.len());
    for (name, dims, dtype, offset) in infos {
        // Elements and bytes in checked arithmetic; the innermost dimension (first in the
        // file) splits into whole blocks.
        // A tensor without elements has no data for candle to read (its reader would view an
        // empty buffer's dangling pointer as blocks); no model has one.
        if dims.contains(&0) {
            return invalid(format!("tensor '{name}' has a dimension of 0: {dims:?}"));
        }
        let block = dtype.block_size() as u64;
        if dims.first().is_some_and(|d| d % block != 0) {
            return invalid(format!(
                "tensor '{name}': rows of {} values do not split into {dtype:?} blocks of {block}",
                dims[0]
            ));
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e <= i64::MAX as u64);
        let bytes = elems.and_then(|e| (e / block).checked_mul(dtype.type_size() as u64));
        let end = bytes.and_then(|b| data_offset.checked_add(offset)?.checked_add(b));
        match end {
            Some(end) if end <= file_size => {}
            Some(end) => {
                return invalid(format!(
                    "truncated: tensor '{name}' ends at byte {end} but the file has \
                     {file_size} bytes"
                ))
            }
            None => {
                return invalid(format!(
                    "tensor '{name}': dimensions {dims:?} at offset {offset} overflow"
                ))
            }
        }
        let mut shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        shape.reverse();
        let info = TensorInfo {
            ggml_dtype: dtype,
            shape: candle_core::Shape::from(shape),
            offset,
        };
        if tensor_infos.insert(name.clone(), info).is_some() {
            return invalid(format!("tensor '{name}' appears twice"));
        }
    }
    Ok(Content {
        magic,
        metadata,
        tensor_infos,
        tensor_data_offset: data_offset,
    })
}

/// The format a tensor of `dims` stored as `source` is re-quantized to for `quant`
/// ([`GgufFile::requantize_to`]), `None` when it is read as stored.
pub fn requantized_format(
    name: &str,
    dims: &[usize],
    source: GgmlDType,
    quant: QuantizationType,
) -> Option<GgmlDType> {
    use GgmlDType as G;
    if dims.len() < 2 || !matches!(source, G::F32 | G::F16 | G::BF16 | G::Q8_0) {
        return None;
    }
    let target = match TOKEN_TABLES.contains(&name) {
        true => quant.for_token_table(),
        false => quant,
    }
    .ggml_dtype();
    let row = *dims.last()?;
    // llama.cpp's fallback for rows a k-quant's 256-value super-block does not divide.
    let target = match (row.is_multiple_of(target.block_size()), target) {
        (true, t) => t,
        (false, G::Q4K) => G::Q5_0,
        (false, _) => return None,
    };
    (row.is_multiple_of(target.block_size()) && ggml_bits(target) < ggml_bits(source))
        .then_some(target)
}

/// `t` (tensor `name`) re-quantized for `quant` as [`requantized_format`] says.
fn requantize(name: &str, t: QTensor, quant: QuantizationType, device: &Device) -> Result<QTensor> {
    let Some(target) = requantized_format(name, t.shape().dims(), t.dtype(), quant) else {
        return Ok(t);
    };
    let values = t.dequantize(device)?;
    quantize_values(name, &values, target)
}
