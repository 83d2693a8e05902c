//! Weight buffers on 2 MiB pages where the OS lends them.
//!
//! A decoding step reads every weight once, from DRAM: ~0.6 GB per token at the 1B shape,
//! 4.5 GB at 8B. On 4 KiB pages that is ~150,000 pages per 1B token, each a TLB miss and a
//! place where the CPU's stream prefetchers stop and start again. On 2 MiB pages (Linux's
//! transparent huge pages, asked for with `madvise(MADV_HUGEPAGE)`, granted where
//! `/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`) the same kernels
//! decoded the 1B `Q4_K_M` file 7–13% faster in one process, the two layouts alternating
//! (`docs/PERFORMANCE.md`, session 17).
//!
//! A [`WeightBuf`] of 2 MiB or more is an anonymous map whose data starts on a 2 MiB
//! boundary; the whole 2 MiB pages of its data are advised as huge pages, the tail (under
//! 2 MiB) is not, so a buffer never holds more memory than its data rounded to 4 KiB. Smaller
//! buffers, and every buffer off Linux, are plain `Vec`s. No `unsafe`: memmap2 maps and
//! advises, bytemuck views the bytes as blocks (`T: Pod`).
//!
//! ```
//! use fluent_ai_candle_kernels::buf::WeightBuf;
//!
//! // 4 MiB of u32: on Linux an advised map, elsewhere a Vec; a slice either way.
//! let w = WeightBuf::from_fn(1 << 20, |i| i as u32);
//! assert_eq!(w.len(), 1 << 20);
//! assert_eq!(w[12345], 12345);
//! assert_eq!(w.clone()[..], w[..]);
//! ```

use std::fmt;
use std::ops::Deref;

use bytemuck::Pod;

/// The page size asked for: x86-64's and AArch64's (4 KiB base pages) transparent huge page.
pub const HUGE_PAGE: usize = 2 << 20;

/// An immutable buffer of weight blocks, filled once at load (see the module docs).
pub struct WeightBuf<T: Pod + Send + Sync> {
    inner: Inner<T>,
}

enum Inner<T> {
    Vec(Vec<T>),
    #[cfg(target_os = "linux")]
    Mapped {
        map: memmap2::MmapMut,
        /// Where the data starts in `map` (its first 2 MiB boundary).
        offset: usize,
        len: usize,
    },
}

impl<T: Pod + Send + Sync> WeightBuf<T> {
    /// A buffer of `len` items, item `i` being `f(i)`. A mapped buffer is filled by up to
    /// [`std::thread::available_parallelism`] threads, each a contiguous share: the first
    /// touch of fresh memory (the kernel zeroing it, 2 MiB at a time) is most of a load's
    /// time, and faults on different pages proceed in parallel.
    ///
    /// # Panics
    /// If `len` items do not fit the address space, or where `f` panics.
    pub fn from_fn(len: usize, f: impl Fn(usize) -> T + Sync) -> Self {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("weight buffer larger than the address space");
        #[cfg(not(target_os = "linux"))]
        let _ = bytes;
        #[cfg(target_os = "linux")]
        if bytes >= HUGE_PAGE {
            if let Some(mut buf) = Self::mapped(len, bytes) {
                fill_parallel(buf.slice_mut(), &f);
                return buf;
            }
        }
        Self {
            inner: Inner::Vec((0..len).map(f).collect()),
        }
    }

    /// An anonymous map for `len` items (`bytes` of them), its whole 2 MiB pages advised as
    /// huge pages; `None` if the map fails (the caller falls back to a `Vec`).
    #[cfg(target_os = "linux")]
    fn mapped(len: usize, bytes: usize) -> Option<Self> {
        let map = memmap2::MmapMut::map_anon(bytes.checked_add(HUGE_PAGE)?).ok()?;
        let addr = map.as_ptr() as usize;
        let offset = addr.next_multiple_of(HUGE_PAGE) - addr;
        // Hints: where THP is off (`never`, or a kernel without it) they fail and the pages
        // stay 4 KiB, which is only slower. The rest of the map (the data's last partial
        // 2 MiB and the unused alignment slack) is kept off huge pages, also where THP is
        // `always`, so the buffer holds no more memory than its data.
        let huge = bytes / HUGE_PAGE * HUGE_PAGE;
        let _ = map.advise_range(memmap2::Advice::HugePage, offset, huge);
        let _ = map.advise_range(
            memmap2::Advice::NoHugePage,
            offset + huge,
            map.len() - offset - huge,
        );
        Some(Self {
            inner: Inner::Mapped { map, offset, len },
        })
    }

    /// The items, mutable (only while filling).
    #[cfg(target_os = "linux")]
    fn slice_mut(&mut self) -> &mut [T] {
        match &mut self.inner {
            Inner::Vec(v) => v,
            Inner::Mapped { map, offset, len } => {
                bytemuck::cast_slice_mut(&mut map[*offset..*offset + *len * size_of::<T>()])
            }
        }
    }

    /// Whether the items live in an advised map (else a `Vec`).
    pub fn is_mapped(&self) -> bool {
        !matches!(self.inner, Inner::Vec(_))
    }
}

/// `items[i] = f(i)` for every `i`, in contiguous shares of at least [`HUGE_PAGE`] bytes
/// over up to [`std::thread::available_parallelism`] scoped threads (this one included).
#[cfg(target_os = "linux")]
fn fill_parallel<T: Pod + Send + Sync>(items: &mut [T], f: &(impl Fn(usize) -> T + Sync)) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let min_share = (HUGE_PAGE / size_of::<T>().max(1)).max(1);
    let share = items.len().div_ceil(threads).max(min_share);
    let fill = |start: usize, chunk: &mut [T]| {
        for (i, item) in chunk.iter_mut().enumerate() {
            *item = f(start + i);
        }
    };
    std::thread::scope(|s| {
        let mut chunks = items.chunks_mut(share).enumerate();
        let first = chunks.next();
        for (c, chunk) in chunks {
            s.spawn(move || fill(c * share, chunk));
        }
        if let Some((_, chunk)) = first {
            fill(0, chunk);
        }
    });
}

impl<T: Pod + Send + Sync> Deref for WeightBuf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.inner {
            Inner::Vec(v) => v,
            #[cfg(target_os = "linux")]
            Inner::Mapped { map, offset, len } => {
                bytemuck::cast_slice(&map[*offset..*offset + *len * size_of::<T>()])
            }
        }
    }
}

impl<T: Pod + Send + Sync> Clone for WeightBuf<T> {
    fn clone(&self) -> Self {
        Self::from_fn(self.len(), |i| self[i])
    }
}

impl<T: Pod + Send + Sync + fmt::Debug> fmt::Debug for WeightBuf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Pod + Send + Sync + PartialEq> PartialEq for WeightBuf<T> {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl<T: Pod + Send + Sync> From<&[T]> for WeightBuf<T> {
    fn from(items: &[T]) -> Self {
        Self::from_fn(items.len(), |i| items[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_vecs_and_large_ones_maps_on_linux() {
        let small = WeightBuf::from_fn(1000, |i| i as u16);
        assert!(!small.is_mapped());
        assert_eq!(
            small.iter().map(|&v| v as usize).sum::<usize>(),
            999 * 1000 / 2
        );
        let large = WeightBuf::from_fn(HUGE_PAGE / 8 * 3 + 5, |i| i as u64);
        assert_eq!(large.is_mapped(), cfg!(target_os = "linux"));
        assert_eq!(large.len(), HUGE_PAGE / 8 * 3 + 5);
        assert!(large.iter().enumerate().all(|(i, &v)| v == i as u64));
        // The data starts on a 2 MiB boundary (the pages the advice covers are whole).
        if large.is_mapped() {
            assert_eq!(large.as_ptr() as usize % HUGE_PAGE, 0);
        }
    }

    #[test]
    fn clones_and_conversions_keep_the_items() {
        let v: Vec<u32> = (0..(HUGE_PAGE / 4 + 7) as u32).collect();
        let b = WeightBuf::from(&v[..]);
        assert_eq!(b[..], v[..]);
        assert_eq!(b.clone(), b);
        let empty = WeightBuf::<u32>::from_fn(0, |_| unreachable!());
        assert!(empty.is_empty());
        // Many shares (filled in parallel where the CPU has several cores), every item once.
        let many = WeightBuf::from_fn(HUGE_PAGE + 3, |i| (i as u8).wrapping_mul(7));
        assert!(many
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (i as u8).wrapping_mul(7)));
        assert_eq!(format!("{:?}", WeightBuf::from(&[1u8, 2][..])), "[1, 2]");
    }
}
