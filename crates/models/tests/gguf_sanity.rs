//! Hostile GGUF headers: every metadata value that sizes an allocation or a loop is checked
//! against the file before it is used, so each of these is a typed error naming the key (no
//! abort, panic or minutes of work); and loads stop when cancelled.

mod common;

use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Value;
use candle_core::Device;
use common::gguf_bytes::{encode, tiny_model, write_file, RawTensor};
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{
    decoder, CancelToken, GgufFile, LoadedModel, ModelConfig, ModelError,
};

/// The tiny llama model with `key` set to `value` (added when absent), written to a file.
fn with(name: &str, key: &str, value: Value) -> std::path::PathBuf {
    let (mut md, tensors) = tiny_model("llama");
    match md.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => md.push((key.to_string(), value)),
    }
    write_file("gguf-sanity", name, &encode(&md, &tensors).0)
}

/// Loads the whole model (tokenizer, template, decoder) and runs one step when it loads.
fn load(path: &std::path::Path) -> Result<(), ModelError> {
    let m = LoadedModel::load(path, &Device::Cpu, &mut |_| {})?;
    let mut cache = m
        .decoder
        .new_cache(&KvCacheConfig::default().max_entries(4))?;
    m.decoder.forward(&[2, 3], &mut cache, false)?;
    Ok(())
}

fn assert_invalid_key(err: ModelError, want: &str) {
    assert!(
        matches!(&err, ModelError::InvalidMetadata { key, .. } if key == want),
        "expected InvalidMetadata for {want}, got: {err}"
    );
}

#[test]
fn the_tiny_model_loads_and_runs() {
    let (md, tensors) = tiny_model("llama");
    let path = write_file("gguf-sanity", "tiny.gguf", &encode(&md, &tensors).0);
    load(&path).unwrap();
    for arch in ["qwen2", "qwen3", "phi3", "phi2"] {
        let (md, tensors) = tiny_model(arch);
        let path = write_file(
            "gguf-sanity",
            &format!("tiny-{arch}.gguf"),
            &encode(&md, &tensors).0,
        );
        load(&path).unwrap_or_else(|e| panic!("{arch}: {e}"));
    }
}

/// `context_length = 2^32 - 1` aborted the process allocating RoPE tables for every position.
#[test]
fn a_huge_context_length_is_refused() {
    let path = with("ctx-max.gguf", "llama.context_length", Value::U32(u32::MAX));
    assert_invalid_key(load(&path).unwrap_err(), "llama.context_length");
    let gguf = GgufFile::open(&path).unwrap();
    assert_invalid_key(
        ModelConfig::from_gguf(&gguf).unwrap_err(),
        "llama.context_length",
    );
    let err = decoder::load(
        &mut GgufFile::open(&path).unwrap(),
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap_err();
    assert_invalid_key(err, "llama.context_length");
    // The largest accepted value loads: nothing is sized by it but the caches a request asks
    // for.
    let max = fluent_ai_candle_models::config::MAX_CONTEXT_LENGTH as u32;
    let path = with("ctx-2p24.gguf", "llama.context_length", Value::U32(max));
    load(&path).unwrap();
    let path = with(
        "ctx-2p24p1.gguf",
        "llama.context_length",
        Value::U32(max + 1),
    );
    assert_invalid_key(load(&path).unwrap_err(), "llama.context_length");
}

#[test]
fn zero_sizes_are_refused_at_load() {
    for key in [
        "llama.context_length",
        "llama.block_count",
        "llama.embedding_length",
        "llama.vocab_size",
    ] {
        let path = with(&format!("{key}-0.gguf"), key, Value::U32(0));
        assert_invalid_key(load(&path).unwrap_err(), key);
    }
    // A head count of 0 is a typed error too (it names the key the heads are split by).
    let path = with("heads-0.gguf", "llama.attention.head_count", Value::U32(0));
    assert!(matches!(
        load(&path).unwrap_err(),
        ModelError::MissingMetadata { .. } | ModelError::InvalidMetadata { .. }
    ));
}

/// `block_count = 2^32 - 1` kept a loader busy for minutes counting blocks.
#[test]
fn a_block_count_beyond_the_tensors_is_refused_at_once() {
    for v in [Value::U32(u32::MAX), Value::U64(u64::MAX), Value::U32(1000)] {
        let path = with("blocks-max.gguf", "llama.block_count", v);
        let t = Instant::now();
        assert_invalid_key(load(&path).unwrap_err(), "llama.block_count");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    // More blocks than the file has, but fewer than its tensors: the first missing tensor.
    let path = with("blocks-3.gguf", "llama.block_count", Value::U32(3));
    let err = load(&path).unwrap_err();
    assert!(
        matches!(&err, ModelError::BadTensor { name, .. } if name.starts_with("blk.2.")),
        "{err}"
    );
}

#[test]
fn sizes_larger_than_every_tensor_are_refused() {
    for key in [
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.key_length",
        "llama.rope.dimension_count",
        "llama.vocab_size",
        "llama.expert_count",
    ] {
        for v in [
            Value::U32(u32::MAX),
            Value::U64(1 << 40),
            Value::U32(1 << 20),
        ] {
            let path = with("big.gguf", key, v);
            assert_invalid_key(load(&path).unwrap_err(), key);
        }
    }
    let path = with(
        "window.gguf",
        "llama.attention.sliding_window",
        Value::U64(1 << 40),
    );
    assert_invalid_key(load(&path).unwrap_err(), "llama.attention.sliding_window");
}

#[test]
fn odd_or_inconsistent_values_are_refused() {
    let path = with(
        "eps.gguf",
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(f32::NAN),
    );
    assert_invalid_key(
        load(&path).unwrap_err(),
        "llama.attention.layer_norm_rms_epsilon",
    );
    let path = with("theta.gguf", "llama.rope.freq_base", Value::F32(-1.0));
    assert_invalid_key(load(&path).unwrap_err(), "llama.rope.freq_base");
    let path = with("odd-head.gguf", "llama.attention.key_length", Value::U32(7));
    assert!(load(&path).is_err());
}

/// `general.alignment = 0` divided by zero inside candle's reader.
#[test]
fn a_bad_alignment_is_refused() {
    for v in [
        Value::U32(0),
        Value::U32(3),
        Value::U64(u64::MAX),
        Value::U64(1 << 63),
        Value::I32(-32),
        Value::String("32".into()),
    ] {
        let path = with("align.gguf", "general.alignment", v.clone());
        let err = GgufFile::open(&path).unwrap_err();
        assert_invalid_key(err, "general.alignment");
    }
    // A valid one other than the default moves the data section.
    let (mut md, tensors) = tiny_model("llama");
    md.push(("general.alignment".into(), Value::U32(64)));
    let (mut bytes, start) = encode(&md, &tensors);
    let at = start.next_multiple_of(64) as usize;
    let data = bytes.split_off(start as usize);
    bytes.resize(at, 0);
    bytes.extend_from_slice(&data);
    let path = write_file("gguf-sanity", "align-64.gguf", &bytes);
    load(&path).unwrap();
}

#[test]
fn hostile_tensor_entries_are_refused() {
    let (md, tensors) = tiny_model("llama");
    type Edit = Box<dyn Fn(&mut RawTensor)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "overflowing dims",
            Box::new(|t| t.dims = vec![1 << 32, 1 << 32, 1 << 32, 1 << 32]),
        ),
        ("huge dim", Box::new(|t| t.dims = vec![32, u64::MAX])),
        ("five dims", Box::new(|t| t.dims = vec![1, 1, 1, 1, 32])),
        ("unknown type", Box::new(|t| t.dtype = 77)),
        ("partial block", Box::new(|t| t.dims[0] = 31)),
        // Found by the loader fuzzer: candle's reader aborted on an empty tensor.
        ("zero dim", Box::new(|t| t.dims[1] = 0)),
        (
            "offset past the end",
            Box::new(|t| t.offset = Some(u64::MAX - 8)),
        ),
    ];
    for (what, edit) in cases {
        let mut ts = tensors.clone();
        edit(&mut ts[0]);
        let path = write_file("gguf-sanity", "tensor.gguf", &encode(&md, &ts).0);
        let err = GgufFile::open(&path).unwrap_err();
        assert!(
            matches!(err, ModelError::InvalidGguf { .. }),
            "{what}: {err}"
        );
    }
    // The same tensor twice, the same key twice.
    let mut ts = tensors.clone();
    ts.push(ts[1].clone());
    let path = write_file("gguf-sanity", "dup-tensor.gguf", &encode(&md, &ts).0);
    assert!(matches!(
        GgufFile::open(&path).unwrap_err(),
        ModelError::InvalidGguf { .. }
    ));
    let mut md2 = md.clone();
    md2.push(md2[1].clone());
    let path = write_file("gguf-sanity", "dup-key.gguf", &encode(&md2, &tensors).0);
    assert_invalid_key(GgufFile::open(&path).unwrap_err(), "llama.context_length");
}

/// `IQ4_NL` and `IQ4_XS` (common in downloaded files; candle 0.11 cannot load them) are a
/// typed error naming the format and the tensor, not "invalid file" and never a panic.
#[test]
fn unsupported_quant_formats_are_named() {
    let (md, tensors) = tiny_model("llama");
    for (id, format) in [(20, "IQ4_NL"), (23, "IQ4_XS")] {
        let mut ts = tensors.clone();
        ts[0].dtype = id;
        let path = write_file("gguf-sanity", "iq4.gguf", &encode(&md, &ts).0);
        match GgufFile::open(&path).unwrap_err() {
            ModelError::UnsupportedFeature { name, reason } => {
                assert_eq!(name, ts[0].name);
                assert!(reason.contains(format), "{reason}");
            }
            err => panic!("{format}: {err}"),
        }
    }
}

#[test]
fn hostile_counts_and_lengths_are_refused() {
    let (md, tensors) = tiny_model("llama");
    let (bytes, _) = encode(&md, &tensors);
    let patch = |at: usize, v: u64| {
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        write_file("gguf-sanity", "counts.gguf", &b)
    };
    // Tensor count, metadata count, the first key's length.
    for (at, v) in [
        (8, u64::MAX),
        (8, 1 << 29),
        (16, u64::MAX),
        (16, 1 << 29),
        (24, u64::MAX),
    ] {
        let err = GgufFile::open(patch(at, v)).unwrap_err();
        assert!(matches!(err, ModelError::InvalidGguf { .. }), "{err}");
    }
    // Every truncation of the header is a typed error.
    for len in (0..bytes.len().min(2000)).step_by(7) {
        let path = write_file("gguf-sanity", "short.gguf", &bytes[..len]);
        assert!(matches!(
            GgufFile::open(&path).unwrap_err(),
            ModelError::InvalidGguf { .. }
        ));
    }
}

#[test]
fn a_cancelled_load_stops_within_one_tensor() {
    let (md, tensors) = tiny_model("llama");
    let path = write_file("gguf-sanity", "cancel.gguf", &encode(&md, &tensors).0);
    // Cancelled before it starts.
    let token = CancelToken::new();
    token.cancel();
    let err =
        LoadedModel::load_cancellable(&path, &Device::Cpu, &mut |_| {}, &[], &token).unwrap_err();
    assert!(matches!(err, ModelError::Cancelled), "{err}");
    // Cancelled from the progress callback after the third tensor: no tensor is read after.
    let token = CancelToken::new();
    let mut seen = Vec::new();
    let err = LoadedModel::load_cancellable(
        &path,
        &Device::Cpu,
        &mut |p| {
            seen.push(p.loaded);
            if p.loaded >= 3 {
                token.cancel();
            }
        },
        &[],
        &token,
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::Cancelled), "{err}");
    assert_eq!(seen.last(), Some(&3), "progress after the cancel: {seen:?}");
    // A GgufFile given a token refuses tensor reads once it is cancelled.
    let mut gguf = GgufFile::open(&path).unwrap();
    let token = CancelToken::new();
    gguf.set_cancel(token.clone());
    gguf.tensor("output_norm.weight", &Device::Cpu).unwrap();
    token.cancel();
    assert!(matches!(
        gguf.tensor("output_norm.weight", &Device::Cpu).unwrap_err(),
        ModelError::Cancelled
    ));
    // Not cancelled: loads as before.
    LoadedModel::load_cancellable(&path, &Device::Cpu, &mut |_| {}, &[], &CancelToken::new())
        .unwrap();
}
