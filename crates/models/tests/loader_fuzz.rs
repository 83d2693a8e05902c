//! A fuzzer over the model loader: small models (llama, qwen2, qwen3, phi3, phi2) and the real
//! SmolLM2 and Gemma 3 headers (their metadata and tensor index, over zeroed tensor data) are
//! mutated — metadata values set to edge values or other types, keys added or removed,
//! tensor dimensions, types and offsets changed, bytes overwritten, flipped or cut — and
//! loaded (header, config, tokenizer, chat template, decoder, one forward step). Every case
//! must end in `Ok` or a typed error: a panic, an abort or a case that runs past its time
//! limit fails the test.
//!
//! `cargo test -p fluent-ai-candle-models --test loader_fuzz` runs a few seconds of cases;
//! `LOADER_FUZZ_SECS=600` keeps running batches for ten minutes (`LOADER_FUZZ_CASES` sets
//! the batch size) and prints the number of cases.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Value;
use candle_core::Device;
use common::gguf_bytes::{encode, tiny_model, RawTensor};
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{decoder, GgufFile, LoadedModel, ModelConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// A model to mutate: metadata, tensor entries, and (for the real headers) the size of the
/// zeroed data section that follows the header.
#[derive(Clone)]
struct Seed {
    name: &'static str,
    metadata: Vec<(String, Value)>,
    tensors: Vec<RawTensor>,
    /// For a real header: the data section's size (the file is extended with zeros to it).
    zeroed_data: Option<u64>,
}

/// The real model's header as a seed, when the model cache has the file.
fn real_seed(name: &'static str, path: PathBuf) -> Option<Seed> {
    if !path.is_file() {
        return None;
    }
    let gguf = GgufFile::open(&path).ok()?;
    let content = gguf.content();
    let mut metadata: Vec<(String, Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut end = 0;
    let mut tensors: Vec<RawTensor> = content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let mut dims: Vec<u64> = info.shape.dims().iter().map(|&d| d as u64).collect();
            dims.reverse();
            let elems: u64 = dims.iter().product();
            let bytes =
                elems / info.ggml_dtype.block_size() as u64 * info.ggml_dtype.type_size() as u64;
            end = end.max(info.offset + bytes);
            RawTensor {
                name: name.clone(),
                dims,
                dtype: ggml_id(info.ggml_dtype),
                data: Vec::new(),
                offset: Some(info.offset),
            }
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Some(Seed {
        name,
        metadata,
        tensors,
        zeroed_data: Some(end),
    })
}

fn ggml_id(t: candle_core::quantized::GgmlDType) -> u32 {
    use candle_core::quantized::GgmlDType as G;
    match t {
        G::F32 => 0,
        G::F16 => 1,
        G::Q4_0 => 2,
        G::Q4_1 => 3,
        G::Q5_0 => 6,
        G::Q5_1 => 7,
        G::Q8_0 => 8,
        G::Q8_1 => 9,
        G::Q2K => 10,
        G::Q3K => 11,
        G::Q4K => 12,
        G::Q5K => 13,
        G::Q6K => 14,
        G::Q8K => 15,
        G::BF16 => 30,
    }
}

/// The seeds: the small models, then the real headers whose files are cached (SmolLM2 only
/// unless `LOADER_FUZZ_GEMMA` is set: Gemma's 262k-token vocabulary makes a case slow).
fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds: Vec<Seed> = [
            ("llama", "llama"),
            ("qwen2", "qwen2"),
            ("qwen3", "qwen3"),
            ("phi3", "phi3"),
            ("phi2", "phi2"),
        ]
        .into_iter()
        .map(|(name, arch)| {
            let (metadata, tensors) = tiny_model(arch);
            Seed {
                name,
                metadata,
                tensors,
                zeroed_data: None,
            }
        })
        .collect();
        let cache = |m| fluent_ai_candle_models::cache::model_path(m).ok();
        if let Some(s) = cache("smollm2-135m-instruct").and_then(|p| real_seed("smollm2", p)) {
            seeds.push(s);
        }
        if std::env::var_os("LOADER_FUZZ_GEMMA").is_some() {
            if let Some(s) = cache("gemma3-270m").and_then(|p| real_seed("gemma3", p)) {
                seeds.push(s);
            }
        }
        seeds
    })
}

/// One mutation. Indices and positions are reduced modulo what the seed has.
#[derive(Debug, Clone)]
enum Edit {
    /// Sets the value of the metadata entry `key % len`.
    SetValue(usize, Value),
    /// Adds (or replaces) a key from [`KEYS`] (`{a}` is the architecture).
    AddKey(usize, Value),
    /// Removes the metadata entry `key % len`.
    RemoveKey(usize),
    /// Sets general.architecture.
    Architecture(usize),
    /// Sets dimension `dim` of tensor `tensor`.
    Dim(usize, usize, u64),
    /// Adds or removes a dimension of a tensor.
    Rank(usize, bool),
    /// Sets a tensor's type id.
    Type(usize, u32),
    /// Sets a tensor's offset.
    Offset(usize, u64),
    /// Removes a tensor.
    RemoveTensor(usize),
    /// Writes bytes at a position of the header (as a fraction of its length, in 1/65536).
    Bytes(u16, Vec<u8>),
    /// Flips one bit of the header.
    Flip(u16, u8),
    /// Cuts the file at a position (fraction of its length, in 1/65536).
    Truncate(u16),
}

/// Keys the loaders read, for [`Edit::AddKey`].
const KEYS: &[&str] = &[
    "general.alignment",
    "{a}.context_length",
    "{a}.block_count",
    "{a}.embedding_length",
    "{a}.feed_forward_length",
    "{a}.vocab_size",
    "{a}.attention.head_count",
    "{a}.attention.head_count_kv",
    "{a}.attention.key_length",
    "{a}.attention.value_length",
    "{a}.attention.sliding_window",
    "{a}.attention.layer_norm_rms_epsilon",
    "{a}.attention.layer_norm_epsilon",
    "{a}.rope.dimension_count",
    "{a}.rope.freq_base",
    "{a}.rope.freq_base_swa",
    "{a}.rope.scaling.type",
    "{a}.rope.scaling.factor",
    "{a}.rope.scaling.original_context_length",
    "{a}.expert_count",
    "{a}.expert_used_count",
    "{a}.leading_dense_block_count",
    "{a}.attention.kv_lora_rank",
    "{a}.attention.q_lora_rank",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
];

const ARCHITECTURES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3",
    "phi2",
    "deepseek2",
    "mamba",
    "",
];

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    31,
    32,
    33,
    63,
    64,
    255,
    256,
    4095,
    4096,
    65535,
    65536,
    (1 << 24) - 1,
    1 << 24,
    (1 << 24) + 1,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 53,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX,
];

fn integer() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => proptest::sample::select(INTERESTING),
        1 => any::<u64>(),
        1 => 0u64..100,
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        4 => integer().prop_map(|v| Value::U32(v as u32)),
        2 => integer().prop_map(Value::U64),
        1 => integer().prop_map(|v| Value::U8(v as u8)),
        1 => integer().prop_map(|v| Value::U16(v as u16)),
        1 => integer().prop_map(|v| Value::I32(v as i32)),
        1 => integer().prop_map(|v| Value::I64(v as i64)),
        1 => proptest::sample::select(vec![
            0.0f32, -1.0, 1e-30, 1e30, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5, 8.0
        ])
        .prop_map(Value::F32),
        1 => any::<f64>().prop_map(Value::F64),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => proptest::sample::select(vec![
            "", "gpt2", "llama", "gemma", "bert", "smollm", "llama3", "qwen2", "{{", "{% for %}",
            "yarn", "linear", "a b", "\u{0}",
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    prop_oneof![
        8 => leaf.clone(),
        1 => proptest::collection::vec(leaf, 0..6).prop_map(|items| {
            // Arrays hold one type: keep the items of the first item's type.
            let ty = items.first().map(common::gguf_bytes::type_id);
            Value::Array(
                items
                    .into_iter()
                    .filter(|i| Some(common::gguf_bytes::type_id(i)) == ty)
                    .collect(),
            )
        }),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (any::<usize>(), value()).prop_map(|(k, v)| Edit::SetValue(k, v)),
        4 => (0..KEYS.len(), value()).prop_map(|(k, v)| Edit::AddKey(k, v)),
        1 => any::<usize>().prop_map(Edit::RemoveKey),
        1 => (0..ARCHITECTURES.len()).prop_map(Edit::Architecture),
        3 => (any::<usize>(), 0usize..4, integer()).prop_map(|(t, d, v)| Edit::Dim(t, d, v)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(t, add)| Edit::Rank(t, add)),
        1 => (any::<usize>(), prop_oneof![0u32..16, Just(30u32), any::<u32>()])
            .prop_map(|(t, ty)| Edit::Type(t, ty)),
        1 => (any::<usize>(), integer()).prop_map(|(t, o)| Edit::Offset(t, o)),
        1 => any::<usize>().prop_map(Edit::RemoveTensor),
        3 => (any::<u16>(), prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..9),
                integer().prop_map(|v| v.to_le_bytes().to_vec()),
            ])
            .prop_map(|(at, b)| Edit::Bytes(at, b)),
        2 => (any::<u16>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        1 => any::<u16>().prop_map(Edit::Truncate),
    ]
}

/// A fuzz case: a seed and the edits applied to it in order.
#[derive(Debug, Clone)]
struct Case {
    seed: usize,
    edits: Vec<Edit>,
}

fn case() -> impl Strategy<Value = Case> {
    (any::<usize>(), proptest::collection::vec(edit(), 1..6))
        .prop_map(|(seed, edits)| Case { seed, edits })
}

/// Applies the structured edits, encodes, then applies the byte edits within the header.
/// Returns the file's bytes and how far to extend it with zeros.
fn build(case: &Case) -> (Vec<u8>, Option<u64>) {
    let all = seeds();
    let seed = &all[case.seed % all.len()];
    let mut md = seed.metadata.clone();
    let mut ts = seed.tensors.clone();
    let arch = match md.iter().find(|(k, _)| k == "general.architecture") {
        Some((_, Value::String(a))) => a.clone(),
        _ => "llama".into(),
    };
    for e in &case.edits {
        match e {
            Edit::SetValue(k, v) if !md.is_empty() => {
                let n = md.len();
                md[k % n].1 = v.clone();
            }
            Edit::AddKey(k, v) => {
                let key = KEYS[*k].replace("{a}", &arch);
                md.retain(|(m, _)| *m != key);
                md.push((key, v.clone()));
            }
            Edit::RemoveKey(k) if !md.is_empty() => {
                let n = md.len();
                md.remove(k % n);
            }
            Edit::Architecture(a) => {
                md.retain(|(m, _)| m != "general.architecture");
                md.push((
                    "general.architecture".into(),
                    Value::String(ARCHITECTURES[*a].into()),
                ));
            }
            Edit::Dim(t, d, v) if !ts.is_empty() => {
                let n = ts.len();
                let t = &mut ts[t % n];
                if !t.dims.is_empty() {
                    let r = t.dims.len();
                    t.dims[d % r] = *v;
                }
            }
            Edit::Rank(t, add) if !ts.is_empty() => {
                let n = ts.len();
                let t = &mut ts[t % n];
                match add {
                    true => t.dims.push(1),
                    false => {
                        t.dims.pop();
                    }
                }
            }
            Edit::Type(t, ty) if !ts.is_empty() => {
                let n = ts.len();
                ts[t % n].dtype = *ty;
            }
            Edit::Offset(t, o) if !ts.is_empty() => {
                let n = ts.len();
                ts[t % n].offset = Some(*o);
            }
            Edit::RemoveTensor(t) if !ts.is_empty() => {
                let n = ts.len();
                ts.remove(t % n);
            }
            _ => {}
        }
    }
    let (mut bytes, start) = encode(&md, &ts);
    let mut extend = seed.zeroed_data.map(|d| start + d);
    // Byte edits land in the header (where the loader's decisions are made).
    let header = start as usize;
    let at = |f: u16, len: usize| (f as usize * len) >> 16;
    for e in &case.edits {
        match e {
            Edit::Bytes(f, b) => {
                let i = at(*f, header);
                for (j, byte) in b.iter().enumerate() {
                    if let Some(x) = bytes.get_mut(i + j) {
                        *x = *byte;
                    }
                }
            }
            Edit::Flip(f, bit) => {
                let i = at(*f, header);
                if let Some(x) = bytes.get_mut(i) {
                    *x ^= 1 << bit;
                }
            }
            Edit::Truncate(f) => {
                let len = match extend {
                    Some(e) => e as usize,
                    None => bytes.len(),
                };
                let cut = at(*f, len);
                if cut < bytes.len() {
                    bytes.truncate(cut);
                    extend = None;
                } else {
                    extend = Some(cut as u64);
                }
            }
            _ => {}
        }
    }
    (bytes, extend)
}

/// Everything a server does with a file: open, config, tokenizer, template, decoder, a step.
fn exercise(path: &Path) {
    if let Ok(gguf) = GgufFile::open(path) {
        let _ = ModelConfig::from_gguf(&gguf);
        let _ = fluent_ai_candle_models::CandleTokenizer::from_gguf(gguf.content());
        let _ = fluent_ai_candle_models::ChatTemplate::from_gguf(gguf.content());
        let mut gguf = gguf;
        let _ = decoder::load(&mut gguf, &Device::Cpu, &mut |_| {});
    }
    if let Ok(m) = LoadedModel::load(path, &Device::Cpu, &mut |_| {}) {
        if let Ok(ids) = m.tokenizer.encode("hello world", true) {
            let _ = m.tokenizer.decode(&ids, false);
        }
        let _ = m.chat_prompt("hi");
        let n = m.config().context_length.min(4);
        if let Ok(mut cache) = m
            .decoder
            .new_cache(&KvCacheConfig::default().max_entries(n))
        {
            let vocab = m.config().vocab_size as u32;
            let tokens: Vec<u32> = (0..n.min(3) as u32).map(|t| t % vocab.max(1)).collect();
            if !tokens.is_empty() {
                let _ = m.decoder.forward(&tokens, &mut cache, false);
                let _ = m.decoder.forward_batch(&tokens[..1], &mut [&mut cache]);
            }
        }
    }
}

/// Runs one case on its own thread: a panic, or no answer within `limit`, is a failure.
fn run_case(case: &Case, n: usize, limit: Duration) -> Result<(), TestCaseError> {
    let (bytes, extend) = build(case);
    let dir = std::env::temp_dir().join(format!("loader-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("case-{}.gguf", n % 4));
    {
        let f = std::fs::File::create(&path).unwrap();
        use std::io::Write;
        let mut w = std::io::BufWriter::new(&f);
        w.write_all(&bytes).unwrap();
        w.flush().unwrap();
        drop(w);
        if let Some(len) = extend {
            // A sparse extension: the real headers' tensors read as zeros.
            f.set_len(len.min(1 << 40)).unwrap();
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    let worker = std::thread::spawn(move || {
        exercise(&p);
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => {
            worker.join().ok();
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let panic = worker.join().err();
            let msg = panic
                .as_ref()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_default();
            let keep = dir.join(format!("panic-{n}.gguf"));
            let _ = std::fs::rename(&path, &keep);
            Err(TestCaseError::fail(format!(
                "the loader panicked: {msg} (file kept at {})",
                keep.display()
            )))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let keep = dir.join(format!("hang-{n}.gguf"));
            let _ = std::fs::copy(&path, &keep);
            Err(TestCaseError::fail(format!(
                "the loader ran past {limit:?} (file kept at {})",
                keep.display()
            )))
        }
    }
}

#[test]
fn the_loader_survives_mutated_files() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let secs = env("LOADER_FUZZ_SECS").unwrap_or(0);
    let batch = env("LOADER_FUZZ_CASES").unwrap_or(24) as u32;
    let limit = Duration::from_secs(env("LOADER_FUZZ_CASE_LIMIT_SECS").unwrap_or(120));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let count = AtomicUsize::new(0);
    let per_seed: Vec<AtomicUsize> = seeds().iter().map(|_| AtomicUsize::new(0)).collect();
    let t0 = Instant::now();
    loop {
        let mut runner = TestRunner::new(Config {
            cases: batch,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..Config::default()
        });
        let result = runner.run(&case(), |case| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            per_seed[case.seed % per_seed.len()].fetch_add(1, Ordering::Relaxed);
            run_case(&case, n, limit)
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let names: Vec<String> = seeds()
        .iter()
        .zip(&per_seed)
        .map(|(s, n)| format!("{} {}", s.name, n.load(Ordering::Relaxed)))
        .collect();
    eprintln!(
        "loader fuzz: {} cases in {:.0?}, 0 failures (per seed: {})",
        count.load(Ordering::Relaxed),
        t0.elapsed(),
        names.join(", ")
    );
}
