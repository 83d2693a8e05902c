//! Work items over candle's CPU thread pool (its barrier pool, whose threads spin between
//! ops), split the way the op is bound ([`Split`]).
//!
//! candle's `execute_chunked` hands out fixed chunks of an op's items (a sixteenth of them on
//! two threads). For compute-bound ops that leaves one thread waiting for the other's last
//! chunk; [`Split::Guided`] hands out the remaining items divided by twice the thread count
//! (at least one) per grab instead, so the chunks shrink as the op ends and the threads
//! finish within about one item of each other. A decode step's matmuls are bound by memory
//! bandwidth instead: there a thread that finishes early leaves the bandwidth to the other,
//! and what counts is streaming the weights in long runs, so [`Split::Static`] gives each
//! thread one contiguous share. Either way each thread walks consecutive items, which the
//! matmuls' item orders (weight-row groups major) rely on for cache reuse.

use std::cell::Cell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

thread_local! {
    /// Whether this thread is running a [`for_items`] body (a nested call runs inline: the
    /// pool takes one op at a time).
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Clears [`INSIDE`] when the body returns or unwinds.
struct Inside;

impl Drop for Inside {
    fn drop(&mut self) {
        INSIDE.with(|i| i.set(false));
    }
}

/// How an op's items are handed out by [`for_items`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Split {
    /// Guided chunks (module docs): compute-bound ops (prompts' matmuls, attention,
    /// element-wise ops), where a thread waiting at the end is time lost.
    Guided,
    /// One contiguous share per thread: memory-bound ops (a decode step's matmuls), where
    /// each thread's one long stream reads faster than many short ones and a thread that
    /// finishes early leaves the memory bandwidth to the other. Measured in one process on
    /// the 1B `Q4_K_M` shape, alternating: decode 39.8/40.8 tok/s guided, 41.4/41.5 static;
    /// prefill 232/231 guided, 225/224 static.
    Static,
}

/// Runs `f` on ranges covering `0..n` exactly once, over candle's CPU pool (the calling
/// thread takes part), the ranges as `split` says; on the calling thread alone
/// where the pool has no other thread, `n` is one, or this is called from inside another
/// call's `f`. A panic in `f` stops the handing out and reaches the caller once every thread
/// is back; it is caught before it reaches candle's pool, whose call lock a panic passing
/// through would poison for the rest of the process (every later op on the pool would panic).
pub(crate) fn for_items(n: usize, split: Split, f: impl Fn(Range<usize>) + Sync) {
    if n == 0 {
        return;
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    if threads == 1 || n == 1 || INSIDE.with(Cell::get) {
        f(0..n);
        return;
    }
    let cursor = AtomicUsize::new(0);
    let panicked = Mutex::new(None);
    pool.execute(|tid| {
        INSIDE.with(|i| i.set(true));
        let _inside = Inside;
        if split == Split::Static {
            // `tid` is 0..threads (the calling thread is the last).
            let range = tid * n / threads..(tid + 1) * n / threads;
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(range))) {
                let mut slot = panicked.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(payload);
            }
            return;
        }
        let mut start = cursor.load(Ordering::Relaxed);
        while start < n {
            let chunk = ((n - start) / (2 * threads)).max(1);
            match cursor.compare_exchange_weak(
                start,
                start + chunk,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let range = start..start + chunk;
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(range))) {
                        cursor.store(n, Ordering::Relaxed);
                        let mut slot = panicked.lock().unwrap_or_else(|e| e.into_inner());
                        slot.get_or_insert(payload);
                        return;
                    }
                    start = cursor.load(Ordering::Relaxed);
                }
                Err(now) => start = now,
            }
        }
    });
    if let Some(payload) = panicked.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item exactly once, whatever the count and the split, nested calls included.
    #[test]
    fn every_item_runs_once() {
        for split in [Split::Guided, Split::Static] {
            for n in [0usize, 1, 2, 3, 7, 16, 100, 513, 4096] {
                let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for_items(n, split, |r| {
                    for i in r {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                        // A nested call runs inline rather than deadlocking on the pool.
                        let inner = AtomicUsize::new(0);
                        for_items(3, split, |r| {
                            inner.fetch_add(r.len(), Ordering::Relaxed);
                        });
                        assert_eq!(inner.load(Ordering::Relaxed), 3);
                    }
                });
                assert!(
                    seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                    "{split:?}, n = {n}"
                );
            }
        }
    }

    /// A panic in the body reaches the caller, and the pool works afterwards (candle's
    /// `execute_chunked` would leave its call lock poisoned).
    #[test]
    fn a_panic_reaches_the_caller() {
        for split in [Split::Guided, Split::Static] {
            let r = std::panic::catch_unwind(|| {
                for_items(64, split, |r| {
                    if r.contains(&40) {
                        panic!("item 40");
                    }
                })
            });
            assert!(r.is_err(), "{split:?}");
            let total = AtomicUsize::new(0);
            for_items(64, split, |r| {
                total.fetch_add(r.len(), Ordering::Relaxed);
            });
            assert_eq!(total.load(Ordering::Relaxed), 64, "{split:?}");
        }
    }
}
