//! Data-parallel helper: split `0..n` into contiguous chunks, one per worker thread.
//!
//! Scoped threads keep borrowing simple (workers may borrow the caller's slices). A persistent
//! pool that avoids the spawn cost per call is the fast-CPU issue's business; this helper is the
//! one place that would change.

use std::ops::Range;

/// Runs `f(range)` over disjoint chunks of `0..n` on up to `threads` threads (the caller's
/// thread included), and returns when all are done. Chunks are aligned to `align` items so
/// that callers may split block-quantized rows or SIMD lanes cleanly.
pub fn for_each_chunk<F>(n: usize, threads: usize, align: usize, f: F)
where
    F: Fn(Range<usize>) + Sync,
{
    let align = align.max(1);
    let threads = threads.max(1);
    let units = n.div_ceil(align);
    let workers = threads.min(units).max(1);
    if workers == 1 {
        f(0..n);
        return;
    }
    let per = units.div_ceil(workers) * align;
    std::thread::scope(|s| {
        let f = &f;
        let mut start = per;
        while start < n {
            let end = (start + per).min(n);
            s.spawn(move || f(start..end));
            start = end;
        }
        f(0..per.min(n));
    });
}

/// A sensible default thread count: the number of logical CPUs this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Physical cores (not SMT siblings): decode is memory-bound and prefill compute-bound, and
/// neither gains from a second thread on the same core. Read from /proc/cpuinfo's distinct
/// (physical id, core id) pairs on Linux; elsewhere the logical count.
pub fn physical_cores() -> usize {
    let logical = default_threads();
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut pairs = std::collections::HashSet::new();
    let mut phys = None;
    for line in info.lines() {
        let mut kv = line.splitn(2, ':');
        let (k, v) = (
            kv.next().unwrap_or("").trim(),
            kv.next().unwrap_or("").trim(),
        );
        match k {
            "physical id" => phys = Some(v.to_string()),
            "core id" => {
                pairs.insert((phys.clone(), v.to_string()));
            }
            _ => {}
        }
    }
    if pairs.is_empty() {
        logical
    } else {
        pairs.len().min(logical).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn core_counts_are_sane() {
        let p = physical_cores();
        assert!(p >= 1 && p <= default_threads());
    }

    #[test]
    fn covers_every_index_once() {
        for n in [0usize, 1, 7, 64, 1000] {
            for threads in [1, 2, 3, 8] {
                for align in [1, 4, 32] {
                    let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    for_each_chunk(n, threads, align, |r| {
                        assert!(r.start % align == 0);
                        for i in r {
                            seen[i].fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                }
            }
        }
    }
}
