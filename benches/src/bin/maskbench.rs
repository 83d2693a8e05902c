//! MaskBench: `maskbench --data FILE [--limit N] [--every K] [--json] [--errors] [--no-shared-lexemes] [--tokenizer FILE]`.
//!
//! Runs the protocol of ../shared/maskbench/README.md (compile each schema, then for each
//! test instance compute the mask before every token, check and commit it) with the SmolLM2
//! tokenizer on one core, and prints as its last line one JSON object: `schemas, compiled,
//! passing, tokens, mask_us_p50, mask_us_p99, mask_us_mean, compile_us_p50`. Without `--json`
//! it first prints a table and the largest failure categories. `cargo xtask maskbench ...`
//! runs this binary.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(fluent_ai_candle_constraints::maskbench::main_with_args(
        &args,
    ));
}
