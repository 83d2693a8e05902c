//! `cargo xtask ci`, `demo` and `build-matrix`.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{cuda, fetch, util};

/// The property tests' seed under `cargo xtask ci` (any fixed value: CI must replay).
const PROPTEST_SEED: &str = "20261127";

/// Everything CI checks, in order; stops at the first failure.
pub fn run(no_fetch: bool) -> Result<()> {
    let started = std::time::Instant::now();
    util::run(util::cargo().args(["fmt", "--all", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    crate::tidy::run()?;
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    if !no_fetch {
        let t = std::time::Instant::now();
        fetch::run(&fetch::FetchArgs {
            dir: None,
            only: Vec::new(),
        })?;
        eprintln!("xtask: {:.0}s: fetch-models", t.elapsed().as_secs_f64());
    }
    // Property tests draw from one fixed seed here, so a red run replays exactly (a plain
    // `cargo test` draws fresh cases each run and saves any failure under
    // `proptest-regressions/`, which are replayed first everywhere).
    let test = || {
        let mut c = util::cargo();
        c.env("PROPTEST_RNG_SEED", PROPTEST_SEED);
        c
    };
    // The benches crate only holds benchmark binaries (clippy checks it above); building it
    // in the test profile would compile candle-transformers for nothing.
    // One test at a time: real-model tests each use every core through candle's thread pool,
    // whose spinning barriers slow to a crawl when two of them share two cores.
    util::run(
        test()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "fluent-ai-candle-benches",
                // Every failing test binary in one run, not just the first.
                "--no-fail-fast",
            ])
            .env("RUST_TEST_THREADS", "1"),
    )?;
    // The sampling kernels, the kernels crate (quantized dot products, f16 and GGML math) and
    // the quantized matmul layer again with run-time dispatch forced to the scalar twins.
    // Neither crate depends on candle, so `-p` rebuilds nothing heavy.
    util::run(
        test()
            .args([
                "test",
                "-p",
                "fluent-ai-candle-sampling",
                "-p",
                "fluent-ai-candle-kernels",
            ])
            .env("FLUENT_AI_CANDLE_SIMD", "scalar"),
    )?;
    // Selected by name only, with the very arguments of the run above, so cargo reuses its
    // build: `-p` or `--lib` resolve features differently and rebuild candle and tokenizers
    // (minutes on two cores, and gigabytes of disk a CI machine may not have).
    util::run(
        test()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "fluent-ai-candle-benches",
                "--no-fail-fast",
                "quant::",
            ])
            .env("RUST_TEST_THREADS", "1")
            .env("FLUENT_AI_CANDLE_SIMD", "scalar"),
    )?;
    // The chat page in a real browser, where one is installed (`.ci/run` installs it); the
    // server binary is the one the test run above linked.
    let browser = crate::chat_page::ChatPageArgs {
        no_build: true,
        browser: "chromium".into(),
        model: "smollm2-135m-instruct".into(),
    };
    if crate::chat_page::browser_present(&browser.browser) {
        eprintln!("$ cargo xtask chat-page-test --no-build");
        let t = std::time::Instant::now();
        crate::chat_page::run(&browser)?;
        eprintln!("xtask: {:.0}s: chat-page-test", t.elapsed().as_secs_f64());
    } else {
        eprintln!(
            "xtask ci: chat-page-test skipped: `chromium` is not installed (apt-get install \
             chromium; .ci/run does)"
        );
    }
    eprintln!("xtask ci: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Fetches the default model if missing, builds the CLI in release and streams an answer.
pub fn demo(prompt: &str) -> Result<()> {
    fetch::run(&fetch::FetchArgs {
        dir: None,
        only: vec!["smollm2-135m-instruct".into()],
    })?;
    util::run(util::cargo().args(["build", "--release", "-p", "fluent-ai-candle-cli"]))?;
    let bin = util::root().join("target/release/fluent-ai-candle");
    util::run(
        Command::new(bin)
            .args(["generate", "--max-tokens", "128", "--temperature", "0"])
            .arg(prompt),
    )
}

/// Builds the CPU configuration, and CUDA / Metal where their toolchains exist.
///
/// Each configuration compiles and links every crate and test of the workspace but the
/// benches (`cargo test --no-run` with the arguments `cargo xtask ci` uses, so the CPU one
/// reuses CI's build: `-p` would resolve features differently and rebuild candle and
/// tokenizers). CUDA uses the toolchain `cargo xtask cuda-toolchain` installed (else an `nvcc`
/// on PATH) and turns on the CLI's `cuda` feature, which the CLI forwards through the server,
/// engine and models crates to candle: a compile and link check (no GPU is needed to build).
/// It prints the time and the disk the build added to `target/`.
pub fn build_matrix() -> Result<()> {
    let build = |features: Option<&str>| {
        let mut c = util::cargo();
        c.args([
            "test",
            "--workspace",
            "--exclude",
            "fluent-ai-candle-benches",
            "--no-run",
        ]);
        if let Some(f) = features {
            c.args(["--features", f]);
        }
        c
    };
    util::run(&mut build(None))?;
    println!("cpu: built");
    let toolchain = cuda::installed(None, cuda::DEFAULT_COMPUTE_CAP);
    let system_nvcc = Command::new("nvcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if toolchain.is_some() || system_nvcc {
        let mut cmd = build(Some("fluent-ai-candle-cli/cuda"));
        let from = match &toolchain {
            Some(t) => {
                t.apply(&mut cmd);
                format!("CUDA {} from {}", cuda::CUDA_VERSION, t.root.display())
            }
            None => {
                // Without a GPU, cudaforge cannot ask nvidia-smi which generation to build for.
                if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
                    cmd.env("CUDA_COMPUTE_CAP", cuda::DEFAULT_COMPUTE_CAP);
                }
                "the nvcc on PATH".to_string()
            }
        };
        let target = util::target_dir();
        let before = cuda::dir_size(&target);
        let started = std::time::Instant::now();
        util::run(&mut cmd)?;
        let took = started.elapsed();
        let grew = cuda::dir_size(&target).saturating_sub(before);
        println!(
            "cuda: built ({from}; {:.0}s, target/ grew by {})",
            took.as_secs_f64(),
            cuda::human_bytes(grew)
        );
    } else {
        println!(
            "cuda: skipped (no CUDA toolkit: run `cargo xtask cuda-toolchain` first, or put nvcc \
             on PATH)"
        );
    }
    if cfg!(target_os = "macos") {
        util::run(&mut build(Some("fluent-ai-candle-cli/metal")))?;
        println!("metal: built");
    } else {
        // candle's Metal backend binds Apple's Metal framework (objc2-metal), which exists
        // only on macOS: there is nothing to compile or link against here.
        println!(
            "metal: skipped (Metal needs macOS and its Metal framework; this is {})",
            std::env::consts::OS
        );
    }
    Ok(())
}
