//! Reading a decoder's common tensors from a GGUF file, shared by every architecture's loader:
//! vectors (norm weights, biases), quantized linear layers, and the token embeddings with the
//! output projection. A missing tensor or one of the wrong shape is a
//! [`ModelError::BadTensor`] naming it.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::config::ModelConfig;
use crate::gguf::GgufFile;
use crate::quant::{Embedding, QLinear};
use crate::{ModelError, Result};

/// A 1-D f32 vector (a norm's weight, a bias) of `size` elements.
pub(crate) fn vector(
    gguf: &mut GgufFile,
    name: &str,
    size: usize,
    device: &Device,
) -> Result<Tensor> {
    Ok(gguf
        .tensor_with_shape(name, &[size], device)?
        .dequantize(device)?)
}

/// A quantized linear layer `[out, inp]`: on the CPU, in a format with our kernels, read
/// straight from the file's bytes ([`GgufFile::raw_tensor`], no `QTensor` in between).
pub(crate) fn linear(
    gguf: &mut GgufFile,
    name: &str,
    out: usize,
    inp: usize,
    device: &Device,
) -> Result<QLinear> {
    if device.is_cpu() {
        if let Some((dtype, bytes)) = gguf.raw_tensor(name, &[out, inp])? {
            if let Some(q) = QLinear::from_bytes(dtype, (out, inp), bytes) {
                return Ok(q?);
            }
        }
    }
    let t = gguf.tensor_with_shape(name, &[out, inp], device)?;
    Ok(QLinear::from_qtensor(Arc::new(t))?)
}

/// The token embeddings (`token_embd.weight`) and the output projection: `output.weight` when
/// the file has one, else the embedding table itself (tied), sharing its quantized blocks. On
/// an accelerator the lookups read a host copy of the table (reading the device copy back
/// would move the whole table at every step).
pub(crate) fn embedding_and_output(
    gguf: &mut GgufFile,
    c: &ModelConfig,
    device: &Device,
) -> Result<(Embedding, QLinear)> {
    let embd =
        gguf.tensor_with_shape("token_embd.weight", &[c.vocab_size, c.hidden_size], device)?;
    if !c.hidden_size.is_multiple_of(embd.dtype().block_size()) {
        return Err(ModelError::BadTensor {
            name: "token_embd.weight".into(),
            reason: format!(
                "rows of {} values do not split into {:?} blocks",
                c.hidden_size,
                embd.dtype()
            ),
        });
    }
    let (embedding, tied) = if device.is_cpu() {
        let e = Embedding::new(embd)?;
        let o = e.output()?;
        (e, o)
    } else {
        let host = gguf.tensor("token_embd.weight", &Device::Cpu)?;
        (Embedding::new(host)?, QLinear::shared(Arc::new(embd))?)
    };
    let output = if gguf.has_tensor("output.weight") {
        linear(gguf, "output.weight", c.vocab_size, c.hidden_size, device)?
    } else {
        tied
    };
    Ok((embedding, output))
}
