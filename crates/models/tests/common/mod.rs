//! Helpers shared by the real-model tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod gguf_bytes;
pub mod tiny_hf;

/// A directory for this test process's scratch files: `{tag}-{pid}` under Cargo's
/// `CARGO_TARGET_TMPDIR` (inside the target directory, so `cargo clean` removes it), made if
/// missing. Directories under the same tag left by test processes that have ended are removed
/// first: the synthetic-model tests write hundreds of MB per run, and a fresh directory per
/// process keeps test binaries running side by side out of each other's files.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let pid = std::process::id();
    // Only where a live process can be told from an ended one (`/proc/PID`).
    if cfg!(target_os = "linux") {
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let old = name
                .to_str()
                .and_then(|n| n.strip_prefix(tag)?.strip_prefix('-')?.parse::<u32>().ok());
            if old
                .is_some_and(|p| p != pid && !std::path::Path::new(&format!("/proc/{p}")).exists())
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!("{tag}-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Index of the first maximum (lowest id on ties), as the sampler's greedy path picks.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The real SmolLM2 file from the model cache, or a failure naming the command that fetches it.
pub fn smollm2_path() -> PathBuf {
    let path = fluent_ai_candle_models::cache::model_path("smollm2-135m-instruct").unwrap();
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        path.display()
    );
    path
}

/// The real Gemma 3 270M file from the model cache, or a failure naming the command that
/// fetches it.
pub fn gemma3_path() -> PathBuf {
    let path = fluent_ai_candle_models::cache::model_path("gemma3-270m").unwrap();
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        path.display()
    );
    path
}

/// A file of `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// The JSON lines of a fixture file.
pub fn jsonl(rel: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A JSON array of integers as token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Writes a synthetic GGUF file `name` under `{temp}/{dir_tag}-{pid}/` with `metadata` and one
/// tensor per `(name, shape)`: values `value(tensor name, r)` for successive draws `r` in
/// `[-0.5, 0.5)` of one linear congruential generator started at `seed` (so a file is the
/// same on every run), stored as `dtype(shape)`.
pub fn write_synthetic_gguf(
    dir_tag: &str,
    name: &str,
    metadata: &[(String, candle_core::quantized::gguf_file::Value)],
    tensors: &[(String, Vec<usize>)],
    seed: u64,
    value: impl Fn(&str, f32) -> f32,
    dtype: impl Fn(&[usize]) -> candle_core::quantized::GgmlDType,
) -> PathBuf {
    use candle_core::quantized::{gguf_file, QTensor};
    let mut seed = seed;
    let qtensors: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(n, shape)| {
            let count: usize = shape.iter().product();
            let data: Vec<f32> = (0..count)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    value(n, ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5)
                })
                .collect();
            let t =
                candle_core::Tensor::from_vec(data, shape.as_slice(), &candle_core::Device::Cpu)
                    .unwrap();
            (n.clone(), QTensor::quantize(&t, dtype(shape)).unwrap())
        })
        .collect();
    let dir = scratch_dir(dir_tag);
    let path = dir.join(name);
    let md: Vec<_> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<_> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write_atomically(&path, |f| gguf_file::write(f, &md, &ts).unwrap());
    path
}

/// Writes `path` through `write` into a file of this thread's own and renames it into place,
/// so that tests running in parallel that write the same model never read a half-written one.
#[allow(dead_code)]
pub fn write_atomically(path: &std::path::Path, write: impl FnOnce(&mut std::fs::File)) {
    let tmp = path.with_extension(format!("{:?}.tmp", std::thread::current().id()));
    let mut f = std::fs::File::create(&tmp).unwrap();
    write(&mut f);
    drop(f);
    std::fs::rename(&tmp, path).unwrap();
}

/// Teacher-forced argmax agreement with a llama.cpp reference file (`ids`, `argmax`, `margin`
/// per line): every position, and those whose reference margin is ≥ 0.5.
#[derive(Debug, Default)]
pub struct TeacherScore {
    /// Positions compared.
    pub total: usize,
    /// Positions whose argmax agrees.
    pub agree: usize,
    /// Positions with margin ≥ 0.5.
    pub confident: usize,
    /// Of those, how many agree.
    pub confident_agree: usize,
    /// Confident positions that disagree: (text, position, margin).
    pub worst: Vec<(String, usize, f64)>,
}

/// Scores `logits_of(ids)` (`[ids.len(), vocab]`, every position's logits) against the
/// reference file `rel` under fixtures/.
pub fn teacher_forced(
    rel: &str,
    mut logits_of: impl FnMut(&[u32]) -> candle_core::Tensor,
) -> TeacherScore {
    let mut s = TeacherScore::default();
    for line in jsonl(rel) {
        let ids = ids(&line["ids"]);
        let want = self::ids(&line["argmax"]);
        let margins: Vec<f64> = line["margin"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let ours: Vec<u32> = logits_of(&ids)
            .argmax(candle_core::D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..ids.len() {
            s.total += 1;
            let ok = ours[i] == want[i];
            s.agree += ok as usize;
            if margins[i] >= 0.5 {
                s.confident += 1;
                s.confident_agree += ok as usize;
                if !ok {
                    s.worst.push((line["text"].to_string(), i, margins[i]));
                }
            }
        }
    }
    s
}

/// A logits tensor as one flat row.
pub fn row(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Largest absolute difference, and largest absolute reference value.
pub fn diff(ours: &[f32], reference: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), reference.len());
    ours.iter()
        .zip(reference)
        .fold((0f32, 0f32), |(d, m), (a, b)| {
            (d.max((a - b).abs()), m.max(b.abs()))
        })
}

/// Decodes 14 tokens one by one through an attention-sink cache (2 sinks, window 3, 8
/// entries) and checks each step's logits against a fresh cache holding just the kept tokens,
/// within 1e-4 of the logit scale: true only when the eviction re-rotates the cached keys the
/// way the model rotates them. For one-layer models (a token's cached keys then depend only on
/// the token and its position). Returns the largest difference.
pub fn sink_rerotation_max_diff(
    model: &dyn fluent_ai_candle_models::Decoder,
    vocab: usize,
    label: &str,
) -> f32 {
    use fluent_ai_candle_kv_cache::{EvictionStrategy, KvCacheConfig};
    let sinks = 2;
    let cfg = KvCacheConfig::default().max_entries(8).eviction_strategy(
        EvictionStrategy::AttentionSinks {
            sink_tokens: sinks,
            window: 3,
        },
    );
    let mut cache = model.new_cache(&cfg).unwrap();
    let mut kept: Vec<u32> = Vec::new();
    let mut worst = 0f32;
    for i in 0..14u32 {
        let t = (i * 37 + 11) % vocab as u32;
        let before = cache.evicted();
        let ours = row(&model.forward(&[t], &mut cache, false).unwrap());
        let removed = cache.evicted() - before;
        if removed > 0 {
            kept.drain(sinks..sinks + removed);
        }
        kept.push(t);
        assert_eq!(kept.len(), cache.len());
        let mut fresh = model
            .new_cache(&KvCacheConfig::default().max_entries(8))
            .unwrap();
        let want = row(&model.forward(&kept, &mut fresh, false).unwrap());
        let (d, m) = diff(&ours, &want);
        assert!(d <= 1e-4 * m.max(1.0), "{label}: diff {d} after {kept:?}");
        worst = worst.max(d);
    }
    assert!(cache.evicted() > 0, "{label}: nothing was evicted");
    worst
}
