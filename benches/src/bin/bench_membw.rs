//! `cargo xtask bench membw [--json] [--mb N] [--threads N]`: the machine's measured memory
//! read bandwidth, the bound on decode speed (every weight is read once per token).
//!
//! Reads a buffer of `--mb` MiB (default 1024, far beyond any cache) on `--threads` threads
//! (default: candle's thread count, as the decoders use), each summing its own contiguous
//! share as `u64` words; best of 5 passes after one warm-up pass. The buffer is a
//! [`WeightBuf`], the memory the models' weights live in (2 MiB pages where the kernel's
//! transparent huge pages allow), so `read_gb_s` is the bound for the weights as they are
//! held; the same read over a plain `Vec` (4 KiB pages) follows as `read_gb_s_4k`. On this
//! project's AMD EPYC VM the 4 KiB figure read 10–20% lower (docs/PERFORMANCE.md, session 18).
//! With `--json`: `{"bench": "membw", "read_gb_s", "read_gb_s_4k", "huge_pages", "mib",
//! "threads", "passes"}` (GB = 10⁹ bytes; `huge_pages`: whether the buffer was mapped and
//! advised for 2 MiB pages).

use std::time::Instant;

use anyhow::{Context, Result};
use fluent_ai_candle_kernels::buf::WeightBuf;

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
    anyhow::ensure!(mib > 0, "--mb takes a whole number of MiB above 0");
    fluent_ai_candle_models::init_cpu_threads();
    let threads: usize = value("--threads")
        .map(|v| v.parse())
        .transpose()
        .context("--threads takes a whole number")?
        .unwrap_or_else(candle_core::utils::get_num_threads)
        .max(1);
    let words = mib * (1 << 20) / 8;
    // Distinct values, written once, so every page is really backed.
    let value_at = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9);
    let huge = WeightBuf::from_fn(words, value_at);
    let read_gb_s = best_read(&huge, threads);
    let huge_pages = huge.is_mapped();
    drop(huge);
    let plain: Vec<u64> = (0..words).map(value_at).collect();
    let read_gb_s_4k = best_read(&plain, threads);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "membw",
                "read_gb_s": read_gb_s,
                "read_gb_s_4k": read_gb_s_4k,
                "huge_pages": huge_pages,
                "mib": mib,
                "threads": threads,
                "passes": PASSES,
            })
        );
    } else {
        println!(
            "memory read bandwidth: {read_gb_s:.1} GB/s ({mib} MiB, {threads} threads, best of \
             {PASSES}; {} pages), {read_gb_s_4k:.1} GB/s on 4 KiB pages",
            if huge_pages { "advised 2 MiB" } else { "4 KiB" }
        );
    }
    Ok(())
}

/// The best of [`PASSES`] reads of `buf` (after one warm-up), each thread summing its own
/// contiguous share, in GB/s.
fn best_read(buf: &[u64], threads: usize) -> f64 {
    let share = buf.len().div_ceil(threads).max(1);
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
        std::hint::black_box(total);
        t.elapsed().as_secs_f64()
    };
    pass();
    let best = (0..PASSES).map(|_| pass()).fold(f64::INFINITY, f64::min);
    std::mem::size_of_val(buf) as f64 / best / 1e9
}
