//! Reading GGUF files with typed errors, and typed access to their metadata.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use crate::{ModelError, Result};

/// An open GGUF file: its parsed header (metadata and tensor index) and a reader for tensors.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
    file_size: u64,
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

impl GgufFile {
    /// Opens and parses the header of a GGUF file. A missing file, a file that is not GGUF, and
    /// a file truncated before its tensor data ends are each a typed error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound { path: path.clone() },
            _ => ModelError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        let file_size = file
            .metadata()
            .map_err(|e| ModelError::Io {
                path: path.clone(),
                source: e,
            })?
            .len();
        let mut reader = BufReader::new(file);
        let invalid = |reason: String| ModelError::InvalidGguf {
            path: path.clone(),
            reason,
        };
        let content = Content::read(&mut reader).map_err(|e| invalid(e.to_string()))?;
        // Every tensor must lie inside the file: catches truncated downloads up front.
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            let bytes = (elems / block.max(1)) as u64 * info.ggml_dtype.type_size() as u64;
            let end = content.tensor_data_offset + info.offset + bytes;
            if end > file_size {
                return Err(invalid(format!(
                    "truncated: tensor '{name}' ends at byte {end} but the file has {file_size} bytes"
                )));
            }
        }
        Ok(Self {
            path,
            content,
            reader,
            file_size,
        })
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

    /// Reads one tensor onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(ModelError::BadTensor {
                name: name.to_string(),
                reason: "missing from the GGUF file".into(),
            });
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| ModelError::BadTensor {
                name: name.to_string(),
                reason: e.to_string(),
            })
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
