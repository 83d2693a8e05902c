//! `cargo xtask ci`, `demo` and `build-matrix`.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{fetch, util};

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
        fetch::run(&fetch::FetchArgs {
            dir: None,
            only: Vec::new(),
        })?;
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
pub fn build_matrix() -> Result<()> {
    util::run(util::cargo().args(["build", "-p", "fluent-ai-candle"]))?;
    println!("cpu: built");
    let nvcc = Command::new("nvcc").arg("--version").output();
    if nvcc.map(|o| o.status.success()).unwrap_or(false) {
        util::run(util::cargo().args(["build", "-p", "fluent-ai-candle", "--features", "cuda"]))?;
        println!("cuda: built");
    } else {
        println!("cuda: skipped (nvcc not found: no CUDA toolkit on this machine)");
    }
    if cfg!(target_os = "macos") {
        util::run(util::cargo().args(["build", "-p", "fluent-ai-candle", "--features", "metal"]))?;
        println!("metal: built");
    } else {
        println!(
            "metal: skipped (Metal needs macOS; this is {})",
            std::env::consts::OS
        );
    }
    Ok(())
}
