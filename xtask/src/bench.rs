//! `cargo xtask bench NAME [--json] [ARGS...]`: runs the release binary `bench-NAME` of the
//! benches crate. Each prints one JSON object per line with `--json`, a table without.
//!
//! - `sampling`: our sampler chain vs candle-transformers' `LogitsProcessor`;
//! - `decode`: our decoder vs candle-transformers' `quantized_llama` on SmolLM2;
//! - `engine`: single and concurrent streams, time to first token with and without prefix cache;
//! - `e2e`: prefill and decode tokens/s per model (`--model NAME|FILE` for one, any GGUF file);
//! - `membw`: the machine's memory read bandwidth, the bound on decode speed;
//! - `stream`: the server's SSE streaming overhead per token against the engine in-process.

use anyhow::{bail, Result};

use crate::util;

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: sampling, decode, engine, e2e, membw, stream.
    pub name: String,
    /// Arguments passed to the benchmark binary (e.g. `--json`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

const BENCHES: &[&str] = &["sampling", "decode", "engine", "e2e", "membw", "stream"];

/// Builds and runs one benchmark binary in release.
pub fn run(args: &BenchArgs) -> Result<()> {
    if !BENCHES.contains(&args.name.as_str()) {
        bail!(
            "unknown bench '{}' (known: {})",
            args.name,
            BENCHES.join(", ")
        );
    }
    run_bin(&format!("bench-{}", args.name), &args.args)
}

/// Builds (release) and runs a binary of the benches crate with `args`.
pub fn run_bin(bin: &str, args: &[String]) -> Result<()> {
    let mut cmd = util::cargo();
    cmd.args([
        "run",
        "--release",
        "-q",
        "-p",
        "fluent-ai-candle-benches",
        "--bin",
        bin,
        "--",
    ]);
    cmd.args(args);
    util::run(&mut cmd)
}
