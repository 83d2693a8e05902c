//! Runs MaskBench: `cargo run --release -p fluent-ai-candle-constraints --example maskbench --
//! --data FILE [--limit N] [--json]` (same as the benches crate's `maskbench` binary).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(fluent_ai_candle_constraints::maskbench::main_with_args(
        &args,
    ));
}
