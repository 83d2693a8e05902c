//! `cargo xtask bench membw [--json] [--mb N] [--threads N]`: the machine's measured memory
//! read bandwidth, the bound on decode speed (every weight is read once per token).
//!
//! Reads a buffer of `--mb` MiB (default 1024, far beyond any cache) on `--threads` threads
//! (default: candle's thread count, as the decoders use), each summing its own contiguous
//! share as `u64` words in 8 independent lanes; best of 5 passes after one warm-up pass. With
//! `--json`: `{"bench": "membw", "read_gb_s", "mib", "threads", "passes"}` (GB = 10⁹ bytes).

use std::time::Instant;

use anyhow::{Context, Result};

const PASSES: usize = 5;

/// Sums `words` (wrapping): a plain reduction over contiguous words, which the compiler turns
/// into wide loads feeding several vector accumulators, so the loop is bound by memory. An
/// earlier version kept eight scalar lanes over 8-word chunks; LLVM vectorized that across
/// chunks into gathers (`vpgatherdq`), which capped it at about a third of the bandwidth.
fn sum(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |a, w| a.wrapping_add(*w))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let json = args.iter().any(|a| a == "--json");
    let mib: usize = value("--mb")
        .map(|v| v.parse())
        .transpose()
        .context("--mb takes a whole number of MiB")?
        .unwrap_or(1024);
    fluent_ai_candle_models::init_cpu_threads();
    let threads: usize = value("--threads")
        .map(|v| v.parse())
        .transpose()
        .context("--threads takes a whole number")?
        .unwrap_or_else(candle_core::utils::get_num_threads)
        .max(1);
    let words = mib * (1 << 20) / 8;
    // Distinct values, written once, so every page is really backed.
    let buf: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9))
        .collect();
    let share = words.div_ceil(threads);
    let pass = || {
        let t = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(share)
                .map(|part| s.spawn(move || sum(part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        (t.elapsed().as_secs_f64(), std::hint::black_box(total))
    };
    pass();
    let best = (0..PASSES).map(|_| pass().0).fold(f64::INFINITY, f64::min);
    let gb_s = (words * 8) as f64 / best / 1e9;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "membw",
                "read_gb_s": gb_s,
                "mib": mib,
                "threads": threads,
                "passes": PASSES,
            })
        );
    } else {
        println!(
            "memory read bandwidth: {gb_s:.1} GB/s ({mib} MiB, {threads} threads, best of {PASSES})"
        );
    }
    Ok(())
}
