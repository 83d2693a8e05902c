//! Work items over candle's CPU thread pool (its barrier pool, whose threads spin between
//! ops), split the way the op is bound ([`Split`]).
//!
//! candle's `execute_chunked` hands out fixed chunks of an op's items (a sixteenth of them on
//! two threads). For compute-bound ops that leaves one thread waiting for the other's last
//! chunk; [`Split::Guided`] hands out the remaining items divided by twice the thread count
//! (at least one) per grab instead, so the chunks shrink as the op ends and the threads
//! finish within about one item of each other. A decode step's matmuls are bound by memory
//! bandwidth instead, and there what counts is streaming the weights in long runs, so
//! [`Split::Static`] gives each thread one contiguous share, which it walks front to back;
//! a thread done with its own share takes chunks from the back of the largest one left.
//! Either way each thread walks consecutive items, which the matmuls' item orders
//! (weight-row groups major) rely on for cache reuse.

use std::cell::Cell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// One contiguous share per thread, walked front to back in shrinking chunks, and once
    /// a thread's own share is done it takes chunks from the back of the largest share
    /// left: memory-bound ops (a decode step's matmuls), where each thread's one long
    /// stream reads faster than many short ones. Measured in one process on the 1B `Q4_K_M`
    /// shape, alternating: decode 39.8/40.8 tok/s guided against 41.4/41.5 with each share
    /// run whole (no taking from others); then 42.7/43.4 with shares run whole against
    /// 44.3/44.1 with the taking (a profile had each thread waiting for the other at the end
    /// of most matmuls); prefill 232/231 guided, 225/224 static.
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
    // Split::Static: each thread's share, taken from the front by its owner and, once the
    // owner's own share is done, from the back by the others.
    let shares =
        (split == Split::Static && threads <= MAX_THREADS && n <= u32::MAX as usize).then(|| {
            std::array::from_fn::<_, MAX_THREADS, _>(|i| {
                let (start, end) = if i < threads {
                    (i * n / threads, (i + 1) * n / threads)
                } else {
                    (0, 0)
                };
                AtomicU64::new(pack(start, end))
            })
        });
    // Runs one range; on a panic, records it and stops the handing out (`stop`): false.
    let run = |range: Range<usize>, stop: &dyn Fn()| {
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(range))) else {
            return true;
        };
        stop();
        let mut slot = panicked.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(payload);
        false
    };
    pool.execute(|tid| {
        INSIDE.with(|i| i.set(true));
        let _inside = Inside;
        if let Some(shares) = &shares {
            let mine = &shares[tid];
            loop {
                let got = take(mine, true).or_else(|| {
                    let victim = shares[..threads].iter().max_by_key(|r| left(r))?;
                    take(victim, false)
                });
                let Some(range) = got else { return };
                let stop = || {
                    shares[..threads]
                        .iter()
                        .for_each(|s| s.store(0, Ordering::Relaxed))
                };
                if !run(range, &stop) {
                    return;
                }
            }
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
                    if !run(start..start + chunk, &|| cursor.store(n, Ordering::Relaxed)) {
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

/// The most threads a [`Split::Static`] op keeps shares for (on the stack); beyond, guided.
const MAX_THREADS: usize = 64;

/// A share `start..end` as one word (`start` in the high half).
fn pack(start: usize, end: usize) -> u64 {
    ((start as u64) << 32) | end as u64
}

/// The share `start..end` a word of [`pack`] holds.
fn unpack(v: u64) -> (usize, usize) {
    ((v >> 32) as usize, (v & 0xffff_ffff) as usize)
}

/// How many items `share` has left.
fn left(share: &AtomicU64) -> usize {
    let (start, end) = unpack(share.load(Ordering::Relaxed));
    end.saturating_sub(start)
}

/// A quarter of what `share` has left (at least one item), from its front (its owner) or
/// its back (another thread), or `None` once it is empty. The owner's chunks follow one
/// another, so its reads stay one stream.
fn take(share: &AtomicU64, front: bool) -> Option<Range<usize>> {
    let mut now = share.load(Ordering::Relaxed);
    loop {
        let (start, end) = unpack(now);
        if start >= end {
            return None;
        }
        let chunk = ((end - start) / 4).max(1);
        let (next, got) = if front {
            (pack(start + chunk, end), start..start + chunk)
        } else {
            (pack(start, end - chunk), end - chunk..end)
        };
        match share.compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(got),
            Err(seen) => now = seen,
        }
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

    /// Under `Static`, a thread whose share is done takes items from the back of another's:
    /// with every item of the first thread's share slow, other threads run some of them.
    #[test]
    fn static_shares_are_taken_from_the_back() {
        let threads = candle_core::utils::barrier_pool().n_workers() + 1;
        if threads == 1 {
            return;
        }
        let n = 64;
        let first_share = n / threads;
        let runners: Vec<Mutex<Option<std::thread::ThreadId>>> =
            (0..n).map(|_| Mutex::new(None)).collect();
        for_items(n, Split::Static, |r| {
            for i in r {
                if i < first_share {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                *runners[i].lock().unwrap() = Some(std::thread::current().id());
            }
        });
        let mut ids: Vec<_> = runners[..first_share]
            .iter()
            .map(|m| m.lock().unwrap().expect("every item ran"))
            .collect();
        ids.sort_unstable_by_key(|id| format!("{id:?}"));
        ids.dedup();
        assert!(ids.len() > 1, "the slow share ran on one thread only");
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
