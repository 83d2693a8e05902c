//! The local model cache: where `cargo xtask fetch-models` puts the real GGUF files, and how
//! a `--model` argument (a path, a known name, or `hf:ORG/REPO[:FILE]` in the Hugging Face
//! cache) resolves to a GGUF file or a Hugging Face model directory (`config.json`,
//! `tokenizer.json`, safetensors).

use std::path::{Path, PathBuf};

use crate::{ModelError, Result};

/// Environment variable that overrides the model cache directory.
pub const CACHE_ENV: &str = "FLUENT_AI_CANDLE_MODELS";

/// A model the project knows how to fetch into its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The name users pass to `--model`.
    pub name: &'static str,
    /// File name inside the cache directory.
    pub file: &'static str,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: &'static str,
    /// Size of the file in bytes.
    pub size: u64,
}

/// The models `cargo xtask fetch-models` installs. The first is the default.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m-instruct",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
    },
    KnownModel {
        name: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253_113_024,
    },
];

/// The name of the default model.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// The model cache directory: `$FLUENT_AI_CANDLE_MODELS`, else
/// `$XDG_CACHE_HOME/fluent-ai-candle/models`, else `$HOME/.cache/fluent-ai-candle/models`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("fluent-ai-candle").join("models")
}

/// Looks up a known model by name.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// The cache path of a known model (whether or not it is there).
pub fn model_path(name: &str) -> Result<PathBuf> {
    let model = known_model(name).ok_or_else(|| unknown(name))?;
    Ok(cache_dir().join(model.file))
}

fn unknown(name: &str) -> ModelError {
    ModelError::UnknownModel {
        name: name.to_string(),
        known: KNOWN_MODELS
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The Hugging Face hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$HOME/.cache/huggingface/hub` (hf-hub's and `huggingface-cli`'s layout).
pub fn hub_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    var("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache")
        .join("huggingface")
        .join("hub")
}

/// The files of a Hugging Face model directory that [`LoadedModel::load_dir`] needs and
/// `dir` lacks, as paths relative to `dir`: `config.json`, `tokenizer.json`, and the weights
/// (`model.safetensors`, or every shard `model.safetensors.index.json` lists). Empty when
/// nothing is missing; a malformed index is [`ModelError::InvalidModelFile`].
///
/// [`LoadedModel::load_dir`]: crate::LoadedModel::load_dir
pub fn missing_model_files(dir: &Path) -> Result<Vec<String>> {
    let mut missing: Vec<String> = ["config.json", crate::tokenizer::TOKENIZER_JSON]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .map(String::from)
        .collect();
    for file in crate::safetensors::weight_files(dir)? {
        if !file.is_file() {
            let rel = file.strip_prefix(dir).unwrap_or(&file);
            missing.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(missing)
}

/// Whether `dir` looks like a Hugging Face model directory (complete or not): it has a
/// `config.json`, a `tokenizer.json` or a safetensors file.
fn looks_like_model_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        || dir.join(crate::tokenizer::TOKENIZER_JSON).is_file()
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".safetensors") || name == "model.safetensors.index.json"
            })
        })
}

/// Splits an `hf:ORG/REPO[:FILE]` reference (the `hf:` prefix already removed) into the
/// repository and the file, checking both: `ORG` and `REPO` are non-empty runs of ASCII
/// letters, digits, `-`, `_` and `.`; `FILE` is a relative path inside the repository (no
/// empty or `..` component). The error is the reason, for the caller's error type.
pub fn parse_hub_reference(reference: &str) -> std::result::Result<(&str, Option<&str>), String> {
    let (repo, file) = match reference.split_once(':') {
        Some((repo, file)) => (repo, Some(file)),
        None => (reference, None),
    };
    let valid_part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && p != "."
            && p != ".."
    };
    match repo.split_once('/') {
        Some((org, name)) if valid_part(org) && valid_part(name) => {}
        _ => {
            return Err(
                "expected hf:ORG/REPO or hf:ORG/REPO:FILE (e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:model.gguf)"
                    .into(),
            )
        }
    }
    if file.is_some_and(|f| {
        f.is_empty() || f.starts_with('/') || f.split('/').any(|p| p == ".." || p.is_empty())
    }) {
        return Err("the file name is empty or leaves the repository".into());
    }
    Ok((repo, file))
}

/// Which GGUF file of a repository `hf:ORG/REPO` (no file named) means: what
/// [`choose_gguf`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufChoice<'a> {
    /// This file.
    One(&'a str),
    /// The repository holds no GGUF model file.
    None,
    /// Several candidates and no rule to pick one: the user names it (`hf:ORG/REPO:FILE`).
    Several(Vec<&'a str>),
}

/// The quantization picked among several GGUF files of one repository: the common default of
/// GGUF repositories (llama.cpp's and Ollama's usual pick, a good size/quality balance).
pub const PREFERRED_GGUF_QUANT: &str = "Q4_K_M";

/// Picks the GGUF file `hf:ORG/REPO` means among a repository's file names (paths relative to
/// the repository): the `.gguf` files, leaving out multimodal projectors (`mmproj*`) and
/// the parts of split models (`*-00001-of-00003.gguf`, which this crate does not load);
/// then the only one, else the only one whose name contains [`PREFERRED_GGUF_QUANT`]
/// (any case), else [`GgufChoice::Several`] listing the candidates in order. `pull` and
/// [`resolve_hub`] both decide through this, so `hf:ORG/REPO` names the same file before and
/// after a download.
pub fn choose_gguf<S: AsRef<str>>(files: &[S]) -> GgufChoice<'_> {
    let mut candidates: Vec<&str> = files
        .iter()
        .map(AsRef::as_ref)
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f).to_ascii_lowercase();
            name.ends_with(".gguf") && !name.starts_with("mmproj") && !is_split_part(&name)
        })
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    if candidates.len() == 1 {
        return GgufChoice::One(candidates[0]);
    }
    let preferred = PREFERRED_GGUF_QUANT.to_ascii_lowercase();
    let mut matching = candidates
        .iter()
        .filter(|f| f.to_ascii_lowercase().contains(&preferred));
    match (matching.next(), matching.next()) {
        (Some(one), None) => GgufChoice::One(one),
        _ if candidates.is_empty() => GgufChoice::None,
        _ => GgufChoice::Several(candidates),
    }
}

/// Whether a (lowercase) file name is one part of a split GGUF: `…-NNNNN-of-NNNNN.gguf`.
fn is_split_part(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".gguf") else {
        return false;
    };
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    match stem.rsplit_once("-of-") {
        Some((head, total)) => {
            digits(total) && head.rsplit_once('-').is_some_and(|(_, part)| digits(part))
        }
        None => false,
    }
}

/// The files under `dir` (following links), as `/`-separated paths relative to it, sorted;
/// directories at most `depth` levels down. Unreadable entries are skipped.
fn relative_files(dir: &Path, depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0)];
    while let Some((path, prefix, level)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            let full = entry.path();
            if full.is_dir() {
                if level < depth {
                    stack.push((full, format!("{rel}/"), level + 1));
                }
            } else if full.is_file() {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// Resolves `hf:ORG/REPO[:FILE]` (the `hf:` prefix already removed) in the hub cache at
/// `cache` through hf-hub's cache layout (`models--ORG--REPO/refs/main` → snapshot), offline.
/// Without `FILE`, the GGUF file [`choose_gguf`] picks among the snapshot's files (the only
/// one, else the only Q4_K_M), or, with no GGUF, a complete Hugging Face model
/// (`config.json`, `tokenizer.json` and the safetensors weights; the snapshot directory is
/// returned, for [`LoadedModel::load_dir`](crate::LoadedModel::load_dir)). A snapshot with
/// safetensors but without one of those files is a [`ModelError::HubReference`] naming what
/// is missing, as are several GGUF files and no rule to pick one (naming them).
pub fn resolve_hub(reference: &str, cache: &Path) -> Result<PathBuf> {
    let spec = format!("hf:{reference}");
    let bad = |reason: String| ModelError::HubReference {
        spec: spec.clone(),
        reason,
    };
    let (repo, file) = parse_hub_reference(reference).map_err(bad)?;
    let hub = hf_hub::Cache::new(cache.to_path_buf());
    let cached = hub.model(repo.to_string());
    let not_cached = |what: String| {
        bad(format!(
            "{what} is not in the Hugging Face cache at {} (nothing is downloaded at run time: \
             fetch it with `fluent-ai-candle pull hf:{repo}{}`)",
            cache.display(),
            file.map(|f| format!(":{f}")).unwrap_or_default()
        ))
    };
    if let Some(file) = file {
        return cached
            .get(file)
            .ok_or_else(|| not_cached(format!("{repo}:{file}")));
    }
    // No file named: the snapshot that refs/main points to, and the GGUF `choose_gguf` picks.
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(folder.join("refs").join("main"))
        .map_err(|_| not_cached(format!("repository {repo}")))?;
    let snapshot = folder.join("snapshots").join(commit.trim());
    if !snapshot.is_dir() {
        return Err(not_cached(format!("snapshot {} of {repo}", commit.trim())));
    }
    let files = relative_files(&snapshot, 4);
    match choose_gguf(&files) {
        GgufChoice::One(gguf) => Ok(snapshot.join(gguf)),
        GgufChoice::None if looks_like_model_dir(&snapshot) => {
            let missing = missing_model_files(&snapshot)?;
            if missing.is_empty() {
                Ok(snapshot)
            } else {
                Err(bad(format!(
                    "the cached snapshot of {repo} holds no .gguf file and its safetensors model \
                     lacks {} (it needs config.json, tokenizer.json and the weights: fetch them \
                     with `fluent-ai-candle pull hf:{repo}`)",
                    missing.join(", ")
                )))
            }
        }
        GgufChoice::None => Err(bad(format!(
            "the cached snapshot of {repo} holds no .gguf file and no safetensors model \
             (config.json, tokenizer.json, model.safetensors)"
        ))),
        GgufChoice::Several(ggufs) => Err(bad(format!(
            "the cached snapshot of {repo} holds several .gguf files; name one (hf:{repo}:FILE): {}",
            ggufs.join(", ")
        ))),
    }
}

/// Resolves a `--model` argument: `hf:ORG/REPO[:FILE]` (the Hugging Face cache, offline, see
/// [`resolve_hub`]), an existing file, an existing Hugging Face model directory, a path-like
/// argument (contains a path separator or ends in `.gguf`), or a known model name in the
/// cache. A directory that lacks one of the files [`missing_model_files`] checks is
/// [`ModelError::NotFound`] naming the first.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    if let Some(reference) = spec.strip_prefix("hf:") {
        return resolve_hub(reference, &hub_cache_dir());
    }
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        return match missing_model_files(path)?.first() {
            Some(file) => Err(ModelError::NotFound {
                path: path.join(file),
            }),
            None => Ok(path.to_path_buf()),
        };
    }
    if let Some(model) = known_model(spec) {
        let path = cache_dir().join(model.file);
        if path.is_file() {
            return Ok(path);
        }
        return Err(ModelError::NotCached {
            name: spec.to_string(),
            path,
        });
    }
    if spec.contains(std::path::MAIN_SEPARATOR) || spec.contains('/') || spec.ends_with(".gguf") {
        return Err(ModelError::NotFound {
            path: path.to_path_buf(),
        });
    }
    Err(unknown(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_missing_paths_are_typed() {
        assert!(matches!(
            resolve("no-such-model"),
            Err(ModelError::UnknownModel { .. })
        ));
        assert!(matches!(
            resolve("/nonexistent/file.gguf"),
            Err(ModelError::NotFound { .. })
        ));
        assert!(model_path("gemma3-270m")
            .unwrap()
            .ends_with("gemma-3-270m-q4_k_m.gguf"));
    }

    /// A directory laid out as hf-hub / `huggingface-cli` lay out their cache.
    fn fake_hub(files: &[&str]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "fluent-ai-candle-hub-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let repo = root.join("models--Org--Tiny-GGUF");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), commit).unwrap();
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        for f in files {
            std::fs::write(snap.join(f), b"GGUF").unwrap();
        }
        root
    }

    #[test]
    fn hub_references_resolve_offline() {
        let hub = fake_hub(&["tiny.Q4_1.gguf", "README.md"]);
        let named = resolve_hub("Org/Tiny-GGUF:tiny.Q4_1.gguf", &hub).unwrap();
        assert!(named.ends_with("tiny.Q4_1.gguf") && named.is_file());
        // Without a file name: the only GGUF of the snapshot.
        assert_eq!(resolve_hub("Org/Tiny-GGUF", &hub).unwrap(), named);
        let err = |r: Result<PathBuf>| match r {
            Err(ModelError::HubReference { reason, .. }) => reason,
            other => panic!("expected a HubReference error, got {other:?}"),
        };
        assert!(err(resolve_hub("Org/Tiny-GGUF:other.gguf", &hub)).contains("not in the"));
        assert!(err(resolve_hub("Org/Missing", &hub)).contains("not in the"));
        assert!(err(resolve_hub("no-slash", &hub)).contains("expected"));
        assert!(err(resolve_hub("Org/Tiny-GGUF:../x", &hub)).contains("leaves"));
        let two = fake_hub(&["a.gguf", "b.gguf"]);
        assert!(err(resolve_hub("Org/Tiny-GGUF", &two)).contains("several"));
        std::fs::remove_dir_all(hub).ok();
        std::fs::remove_dir_all(two).ok();
    }

    #[test]
    fn the_gguf_of_a_repository_is_the_only_one_else_the_only_q4_k_m() {
        use GgufChoice::*;
        assert_eq!(
            choose_gguf(&["README.md", "m.Q8_0.gguf"]),
            One("m.Q8_0.gguf")
        );
        assert_eq!(
            choose_gguf(&[
                "m.Q8_0.gguf",
                "m.q4_k_m.gguf",
                "m.Q4_K_S.gguf",
                "config.json"
            ]),
            One("m.q4_k_m.gguf")
        );
        // Projectors and split parts are never picked on their own.
        assert_eq!(
            choose_gguf(&[
                "mmproj-f16.gguf",
                "sub/m.Q4_0.gguf",
                "big-00001-of-00002.gguf"
            ]),
            One("sub/m.Q4_0.gguf")
        );
        assert_eq!(choose_gguf(&["README.md", "model.safetensors"]), None);
        assert_eq!(choose_gguf::<&str>(&[]), None);
        assert_eq!(
            choose_gguf(&["b.Q8_0.gguf", "a.Q5_K_M.gguf"]),
            Several(vec!["a.Q5_K_M.gguf", "b.Q8_0.gguf"])
        );
        // Two Q4_K_M files: no rule picks one.
        assert_eq!(
            choose_gguf(&["x-Q4_K_M.gguf", "y-Q4_K_M.gguf", "x-Q8_0.gguf"]),
            Several(vec!["x-Q4_K_M.gguf", "x-Q8_0.gguf", "y-Q4_K_M.gguf"])
        );
        assert!(is_split_part("m-00001-of-00003.gguf"));
        assert!(!is_split_part("m-1-of-3.gguf") && !is_split_part("of-00003.gguf"));
    }

    #[test]
    fn hub_references_are_checked_before_any_lookup() {
        assert_eq!(parse_hub_reference("O/R"), Ok(("O/R", Option::None)));
        assert_eq!(
            parse_hub_reference("O/R:sub/f.gguf"),
            Ok(("O/R", Some("sub/f.gguf")))
        );
        for bad in [
            "O",
            "/R",
            "O/",
            "O/R/x",
            "O/..",
            "O/R:",
            "O/R:/etc/passwd",
            "O/R:a//b",
            "O R/x",
        ] {
            assert!(parse_hub_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn several_cached_ggufs_resolve_to_the_q4_k_m_as_pull_picks_it() {
        let hub = fake_hub(&["m.Q8_0.gguf", "m.Q4_K_M.gguf"]);
        assert!(resolve_hub("Org/Tiny-GGUF", &hub)
            .unwrap()
            .ends_with("m.Q4_K_M.gguf"));
        std::fs::remove_dir_all(hub).ok();
    }

    #[test]
    fn safetensors_snapshots_and_directories_resolve_offline() {
        let err = |r: Result<PathBuf>| match r {
            Err(ModelError::HubReference { reason, .. }) => reason,
            other => panic!("expected a HubReference error, got {other:?}"),
        };
        let model = ["config.json", "tokenizer.json", "model.safetensors"];
        let full = fake_hub(&model);
        let dir = resolve_hub("Org/Tiny-GGUF", &full).unwrap();
        assert!(
            dir.is_dir() && dir.join("tokenizer.json").is_file(),
            "{dir:?}"
        );
        // The same directory as a path.
        assert_eq!(resolve(dir.to_str().unwrap()).unwrap(), dir);
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        match resolve(dir.to_str().unwrap()) {
            Err(ModelError::NotFound { path }) => assert!(path.ends_with("tokenizer.json")),
            other => panic!("{other:?}"),
        }

        // Each missing file is named.
        for absent in model {
            let files: Vec<&str> = model.into_iter().filter(|f| *f != absent).collect();
            let hub = fake_hub(&files);
            let reason = err(resolve_hub("Org/Tiny-GGUF", &hub));
            assert!(reason.contains(&format!("lacks {absent} (")), "{reason}");
            std::fs::remove_dir_all(hub).ok();
        }
        let empty = fake_hub(&["README.md"]);
        assert!(err(resolve_hub("Org/Tiny-GGUF", &empty)).contains("no safetensors model"));
        // A GGUF beside the safetensors wins, as before.
        let both = fake_hub(&[
            "config.json",
            "tokenizer.json",
            "model.safetensors",
            "m.gguf",
        ]);
        assert!(resolve_hub("Org/Tiny-GGUF", &both)
            .unwrap()
            .ends_with("m.gguf"));

        // Shards: every file the index lists must be there.
        let sharded = fake_hub(&["config.json", "tokenizer.json", "a.safetensors"]);
        let snap = resolve_hub("Org/Tiny-GGUF", &sharded).unwrap_err();
        assert!(snap.to_string().contains("model.safetensors"), "{snap}");
        let snapshot = std::fs::read_dir(sharded.join("models--Org--Tiny-GGUF/snapshots"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let index = serde_json::json!({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}});
        std::fs::write(
            snapshot.join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let reason = err(resolve_hub("Org/Tiny-GGUF", &sharded));
        assert!(reason.contains("lacks b.safetensors ("), "{reason}");
        std::fs::write(snapshot.join("b.safetensors"), b"").unwrap();
        assert_eq!(resolve_hub("Org/Tiny-GGUF", &sharded).unwrap(), snapshot);
        for d in [full, empty, both, sharded] {
            std::fs::remove_dir_all(d).ok();
        }
    }
}
