//! Work over samples in fixed chunks on up to `threads` threads, so that the
//! results do not depend on the thread count.

use crate::error::Result;
use faer::Mat;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Samples per work item: fixed, so that sums are grouped the same way on
/// any number of threads.
const CHUNK: usize = 8;

/// `f` applied to the consecutive chunks of `0..count` (of `CHUNK` samples)
/// on up to `threads` threads; the results come back in chunk order.
pub(super) fn map_chunks<T: Send>(
    count: usize,
    threads: usize,
    f: impl Fn(Range<usize>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let nchunks = count.div_ceil(CHUNK);
    let range = |c: usize| c * CHUNK..((c + 1) * CHUNK).min(count);
    let threads = threads.min(nchunks);
    if threads <= 1 {
        return (0..nchunks).map(|c| f(range(c))).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<(usize, Result<T>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let c = next.fetch_add(1, Ordering::Relaxed);
                        if c >= nchunks {
                            break out;
                        }
                        out.push((c, f(range(c))));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("metrics worker panicked"))
            .collect()
    });
    parts.sort_by_key(|p| p.0);
    parts.into_iter().map(|p| p.1).collect()
}

/// Sums per-chunk matrices in chunk order.
pub(super) fn sum_in_order(parts: Vec<Mat<f64>>) -> Mat<f64> {
    let mut it = parts.into_iter();
    let mut acc = it.next().expect("at least one chunk");
    for p in it {
        acc += &p;
    }
    acc
}
