//! `cargo xtask cuda-toolchain`: the CUDA compiler and libraries that candle's `cuda` feature
//! builds against, installed from the Python package index into a cache folder (no system
//! CUDA toolkit, no GPU and no root needed), and the environment the build needs.
//!
//! candle-core 0.11.1's `cuda` feature needs, at build time:
//! - `nvcc` (with `cicc`, `ptxas`, `fatbinary`, `nvlink`, the CRT and CCCL headers): the
//!   `candle-kernels` build script compiles its `.cu` files to PTX and a static library through
//!   the `cudaforge` crate, which finds `nvcc` through `$NVCC` or `PATH` and the GPU generation
//!   through `$CUDA_COMPUTE_CAP` (else `nvidia-smi`, absent without a GPU);
//! - `cudarc` 0.19 with `dynamic-linking` and `cuda-version-from-build-system`: it reads the CUDA
//!   version from `nvcc --version` and links `libcuda`, `libnvrtc`, `libcurand`, `libcublas`,
//!   `libcublasLt` and `libcudart` from `$CUDA_ROOT/lib` (and `lib/stubs`).
//!
//! The wheels ship only versioned libraries (`libcublas.so.13`) and no driver, so this adds
//! the unversioned names the linker asks for and a link-time stub of the driver library
//! (`lib/stubs/libcuda.so`, soname `libcuda.so.1`, one empty function per driver entry point
//! cudarc declares): at run time the real driver's `libcuda.so.1` is loaded instead, as with
//! NVIDIA's own stubs.
//!
//! The version is pinned to CUDA 13.0 because the lent H200 machines run driver 580 (CUDA
//! 13.0): a binary whose PTX comes from a newer `nvcc` would not load there.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

/// The CUDA release installed (it names the cache folder).
pub const CUDA_VERSION: &str = "13.0";

/// The default `CUDA_COMPUTE_CAP`: 90 is Hopper (H100, H200), built as `sm_90a`.
pub const DEFAULT_COMPUTE_CAP: &str = "90";

/// The wheels, pinned to CUDA 13.0 (their files all land in `nvidia/cu13/`).
const PACKAGES: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
];

/// Arguments of `cuda-toolchain`.
#[derive(clap::Args)]
pub struct ToolchainArgs {
    /// Install folder (default: $FLUENT_AI_CANDLE_CUDA, else
    /// ~/.cache/fluent-ai-candle/cuda-13.0).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The GPU generation to build kernels for (`CUDA_COMPUTE_CAP`): 90 for H100/H200, 80 for
    /// A100, 89 for L4/RTX 40xx.
    #[arg(long, default_value = DEFAULT_COMPUTE_CAP)]
    pub compute_cap: String,
}

/// An installed toolchain.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The CUDA root: `bin/nvcc`, `include/`, `lib/`, `nvvm/`.
    pub root: PathBuf,
    /// The `CUDA_COMPUTE_CAP` the kernels are built for.
    pub compute_cap: String,
}

impl Toolchain {
    /// The `nvcc` binary.
    pub fn nvcc(&self) -> PathBuf {
        self.root.join("bin").join("nvcc")
    }

    /// The variables candle's `cuda` build needs: (name, value, whether the value goes in
    /// front of the variable's current value, as a search path).
    fn vars(&self) -> Vec<(&'static str, String, bool)> {
        let at = |p: &str| self.root.join(p).display().to_string();
        let root = at("");
        let root = root.trim_end_matches('/').to_string();
        vec![
            ("PATH", at("bin"), true),
            ("NVCC", self.nvcc().display().to_string(), false),
            ("CUDA_ROOT", root.clone(), false),
            ("CUDA_PATH", root.clone(), false),
            ("CUDA_HOME", root, false),
            ("CUDA_COMPUTE_CAP", self.compute_cap.clone(), false),
            (
                "LIBRARY_PATH",
                format!("{}:{}", at("lib"), at("lib/stubs")),
                true,
            ),
            // To run a CUDA binary on a machine with the driver but no toolkit (never the
            // stubs: the driver's own libcuda.so.1 must load).
            ("LD_LIBRARY_PATH", at("lib"), true),
        ]
    }

    /// The environment candle's `cuda` build needs, as (name, value) pairs, search paths put
    /// in front of this process's.
    pub fn env(&self) -> Vec<(String, String)> {
        self.vars()
            .into_iter()
            .map(|(k, v, prepend)| {
                let v = match std::env::var(k) {
                    Ok(old) if prepend && !old.is_empty() => format!("{v}:{old}"),
                    _ => v,
                };
                (k.to_string(), v)
            })
            .collect()
    }

    /// `export` lines for a POSIX shell (search paths extend the shell's own).
    pub fn exports(&self) -> Vec<String> {
        self.vars()
            .into_iter()
            .map(|(k, v, prepend)| {
                if prepend {
                    format!("export {k}=\"{v}${{{k}:+:${k}}}\"")
                } else {
                    format!("export {k}={}", shell_quote(&v))
                }
            })
            .collect()
    }

    /// Sets [`env`](Self::env) on a command.
    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
    }
}

/// The default install folder.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLUENT_AI_CANDLE_CUDA").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    crate::fetch::cache_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".cache/fluent-ai-candle"))
        .join(format!("cuda-{CUDA_VERSION}"))
}

/// The CUDA root inside an install folder.
fn root_in(dir: &Path) -> PathBuf {
    dir.join("site").join("nvidia").join("cu13")
}

/// The toolchain in `dir` (default folder when `None`) if it was installed completely.
pub fn installed(dir: Option<&Path>, compute_cap: &str) -> Option<Toolchain> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_dir);
    let root = root_in(&dir);
    let complete = root.join("bin/nvcc").is_file() && root.join("lib/stubs/libcuda.so").is_file();
    complete.then(|| Toolchain {
        root,
        compute_cap: compute_cap.to_string(),
    })
}

/// Installs (when missing) and returns the toolchain.
pub fn install(dir: Option<&Path>, compute_cap: &str) -> Result<Toolchain> {
    if !compute_cap
        .trim_end_matches(['a', 'f'])
        .parse::<u32>()
        .is_ok_and(|c| c >= 50)
    {
        bail!(
            "--compute-cap must be a compute capability such as 90, 89 or 80, not '{compute_cap}'"
        );
    }
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_dir);
    if let Some(t) = installed(Some(&dir), compute_cap) {
        eprintln!(
            "cuda-toolchain: CUDA {CUDA_VERSION} already in {}",
            dir.display()
        );
        return Ok(t);
    }
    let site = dir.join("site");
    let root = root_in(&dir);
    if !root.join("bin/nvcc").is_file() {
        // A half-finished install is redone from scratch.
        if site.exists() {
            fs::remove_dir_all(&site)
                .with_context(|| format!("cannot clear {}", site.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let started = std::time::Instant::now();
        let mut pip = Command::new(python()?);
        pip.args([
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "--target",
        ])
        .arg(&site)
        .args(PACKAGES);
        util::run(&mut pip).context("pip install of the CUDA wheels failed")?;
        eprintln!(
            "cuda-toolchain: wheels installed in {:.0?}",
            started.elapsed()
        );
    }
    link_names(&root.join("lib"))?;
    driver_stub(&root.join("lib/stubs"))?;
    let t = Toolchain {
        root,
        compute_cap: compute_cap.to_string(),
    };
    let out = Command::new(t.nvcc())
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", t.nvcc().display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed: {}",
            t.nvcc().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(t)
}

/// `cargo xtask cuda-toolchain`: installs, then prints `export NAME=VALUE` lines on stdout
/// (`eval "$(cargo xtask cuda-toolchain)"` sets them in a shell).
pub fn run(args: &ToolchainArgs) -> Result<()> {
    let t = install(args.dir.as_deref(), &args.compute_cap)?;
    eprintln!(
        "cuda-toolchain: nvcc {} ({}, {} on disk); kernels for sm_{}",
        t.nvcc().display(),
        CUDA_VERSION,
        human_bytes(dir_size(&t.root)),
        args.compute_cap
    );
    for line in t.exports() {
        println!("{line}");
    }
    Ok(())
}

/// Adds `libX.so` → `libX.so.N` links for every versioned library (the linker's `-lX` wants
/// the unversioned name; the wheels ship only the versioned one).
fn link_names(lib: &Path) -> Result<()> {
    for entry in fs::read_dir(lib).with_context(|| format!("cannot read {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some((stem, _)) = name.split_once(".so.") else {
            continue;
        };
        let link = lib.join(format!("{stem}.so"));
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(&name, &link)
                .with_context(|| format!("cannot link {}", link.display()))?;
        }
    }
    Ok(())
}

/// Compiles the link-time stub of the driver library from the entry points cudarc declares.
fn driver_stub(stubs: &Path) -> Result<()> {
    let out = stubs.join("libcuda.so");
    if out.is_file() {
        return Ok(());
    }
    let names = driver_symbols(&cudarc_source()?.join("src/driver/sys/mod.rs"))?;
    if names.len() < 100 {
        bail!(
            "found only {} driver entry points in cudarc's bindings; has its layout changed?",
            names.len()
        );
    }
    let mut c = String::from("/* Link-time stub of libcuda.so.1: never loaded at run time. */\n");
    for n in &names {
        let _ = writeln!(c, "void {n}(void) {{}}");
    }
    fs::create_dir_all(stubs)?;
    let src = stubs.join("libcuda_stub.c");
    fs::write(&src, c)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    util::run(
        Command::new(cc)
            .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
            .arg(&out)
            .arg(&src),
    )
    .context("compiling the driver stub needs a C compiler (cc)")?;
    eprintln!(
        "cuda-toolchain: driver stub with {} entry points in {}",
        names.len(),
        out.display()
    );
    Ok(())
}

/// The names of the `pub unsafe fn cuXxx(` declarations in cudarc's driver bindings.
fn driver_symbols(bindings: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(bindings)
        .with_context(|| format!("cannot read {}", bindings.display()))?;
    Ok(parse_driver_symbols(&text))
}

fn parse_driver_symbols(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("pub unsafe fn "))
        .filter_map(|rest| rest.split_once('(').map(|(name, _)| name.trim()))
        .filter(|n| {
            n.starts_with("cu") && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The source folder of the cudarc version in Cargo.lock (fetched by cargo when missing).
fn cudarc_source() -> Result<PathBuf> {
    let lock = fs::read_to_string(util::root().join("Cargo.lock")).context("reading Cargo.lock")?;
    let version = lock_version(&lock, "cudarc").context("cudarc is not in Cargo.lock")?;
    let find = || -> Option<PathBuf> {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        fs::read_dir(home.join("registry/src"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join(format!("cudarc-{version}")))
            .find(|p| p.join("src/driver/sys/mod.rs").is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    util::run(util::cargo().args(["fetch"]))?;
    find().with_context(|| format!("cudarc {version} sources not found after `cargo fetch`"))
}

/// The version of package `name` in a Cargo.lock.
fn lock_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{name}\"") {
            let v = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(v.trim_end_matches('"').to_string());
        }
    }
    None
}

fn python() -> Result<String> {
    for py in ["python3", "python"] {
        let ok = Command::new(py)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(py.to_string());
        }
    }
    bail!("cuda-toolchain needs Python with pip (python3 -m pip); install python3-pip")
}

/// Bytes under `path` (symbolic links not followed).
pub fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = path.symlink_metadata() else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

/// `1.2 GiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    let gib = n as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.0} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:=+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_symbols_come_from_the_binding_declarations() {
        let text = "pub unsafe fn cuInit(Flags: c_uint) -> CUresult {\n\
                    \x20       extern \"C\" { fn cuInit(Flags: c_uint) -> CUresult; }\n\
                    pub unsafe fn cuMemAlloc_v2(p: *mut u64, n: usize) -> CUresult {\n\
                    pub unsafe fn cuInit(Flags: c_uint) -> CUresult {\n\
                    pub unsafe fn culib() -> &'static Lib {\n\
                    pub fn cuNotUnsafe() {}\n\
                    pub unsafe fn helper() {}\n";
        assert_eq!(
            parse_driver_symbols(text),
            ["cuInit", "cuMemAlloc_v2", "culib"]
        );
    }

    #[test]
    fn lock_versions_are_read_by_package_name() {
        let lock = "[[package]]\nname = \"cudarc\"\nversion = \"0.19.10\"\n\n\
                    [[package]]\nname = \"cudarc-sys\"\nversion = \"1.0.0\"\n";
        assert_eq!(lock_version(lock, "cudarc").as_deref(), Some("0.19.10"));
        assert_eq!(lock_version(lock, "cudarc-sys").as_deref(), Some("1.0.0"));
        assert_eq!(lock_version(lock, "candle-core"), None);
    }

    #[test]
    fn environment_points_the_build_at_the_root() {
        let t = Toolchain {
            root: PathBuf::from("/opt/cuda13"),
            compute_cap: "90".into(),
        };
        let env: std::collections::HashMap<_, _> = t.env().into_iter().collect();
        assert_eq!(env["NVCC"], "/opt/cuda13/bin/nvcc");
        assert_eq!(env["CUDA_ROOT"], "/opt/cuda13");
        assert_eq!(env["CUDA_COMPUTE_CAP"], "90");
        assert!(env["PATH"].starts_with("/opt/cuda13/bin"));
        assert!(env["LIBRARY_PATH"].starts_with("/opt/cuda13/lib:/opt/cuda13/lib/stubs"));
        assert!(!env["LD_LIBRARY_PATH"].contains("stubs"));
        let exports = t.exports();
        assert!(exports.contains(&"export CUDA_COMPUTE_CAP=90".to_string()));
        assert!(exports.contains(&"export PATH=\"/opt/cuda13/bin${PATH:+:$PATH}\"".to_string()));
    }

    #[test]
    fn shell_values_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/a/b:/c"), "/a/b:/c");
        assert_eq!(shell_quote("it's here"), "'it'\\''s here'");
    }
}
