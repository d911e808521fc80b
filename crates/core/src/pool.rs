//! A persistent thread pool for the forward pass.
//!
//! A decode step runs a few hundred small parallel regions (one per matrix product); starting
//! threads for each would cost more than the work. Workers here live as long as the pool,
//! spin briefly waiting for the next region (regions come back to back during a forward pass),
//! then sleep on a condition variable. Dispatching a region allocates nothing.
//!
//! A region is `run(|i, n| …)`: the closure is called once for every part `i in 0..n` and
//! `run` returns when all calls have returned. Parts are claimed, not assigned: each thread
//! of the region (the caller is thread 0) first claims its own part — the same thread runs
//! the same part region after region, its scratch warm in its cache — then any part still
//! unclaimed. When the machine is shared and a worker is not running (another process has
//! its core), the threads that run take its part instead of waiting for the scheduler to
//! bring it back, which, hundreds of regions per token, made two threads slower than one on
//! a loaded machine. A part computes the same values whichever thread runs it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job of the current region: a type-erased `&(dyn Fn(usize, usize) + Sync)`.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize, usize) + Sync));

// SAFETY: the pointee is `Sync` and `run` keeps it alive until every worker has finished
// with it (it waits for `pending` to reach zero before returning).
unsafe impl Send for JobPtr {}

struct Shared {
    /// Incremented for every region; workers run each generation once.
    generation: AtomicUsize,
    /// Parts of the current region not yet finished.
    pending: AtomicUsize,
    /// The current region: generation (high 48 bits) and part count (low 16), one word so
    /// that a worker reads both of the same region.
    region: AtomicU64,
    /// Per part, the generation of the region that last claimed it. A part is claimed for
    /// region g by raising its entry from below g to g; once a region has ended every one of
    /// its parts is at g or above, so a late claim for it fails instead of taking a part of
    /// the next region.
    claimed: Box<[AtomicU64]>,
    job: Mutex<Option<JobPtr>>,
    wake: Condvar,
    /// Set when the pool is dropped.
    stop: AtomicUsize,
    /// Set when a worker's call panicked in the current region.
    panicked: AtomicUsize,
    /// Workers asleep on `wake` (changed under the `job` lock): a region wakes them with a
    /// futex call only when there are some; during a forward pass they are spinning.
    sleepers: AtomicUsize,
}

/// A fixed set of worker threads.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serializes regions: `run` may be called from several threads.
    region: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads)
            .finish()
    }
}

/// Spin iterations before a waiting worker sleeps (≈ tens of microseconds).
const SPIN: usize = 20_000;

impl ThreadPool {
    /// A pool of `n_threads` threads in all (the caller counts as one, so `n_threads - 1`
    /// workers are started).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            region: AtomicU64::new(0),
            claimed: (0..n_threads).map(|_| AtomicU64::new(0)).collect(),
            job: Mutex::new(None),
            wake: Condvar::new(),
            stop: AtomicUsize::new(0),
            panicked: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
        });
        let workers = (1..n_threads)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("tuili-worker-{i}"))
                    .spawn(move || worker(s, i))
                    // Failing to start a thread at start-up is unrecoverable resource
                    // exhaustion; there is no sensible smaller pool to fall back to silently.
                    .expect("tuili: cannot start a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
            region: Mutex::new(()),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(i, n)` for `i in 0..n` on `n = min(threads, n_threads)` threads and waits.
    pub fn run_with(&self, threads: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = threads.clamp(1, self.n_threads).min(MAX_PARTS);
        if n == 1 {
            f(0, 1);
            return;
        }
        // A poisoned lock only means another region panicked; the pool state is still sound.
        let _region = self.region.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY (lifetime erasure): the pointer is only dereferenced by workers between the
        // generation bump below and `pending` reaching zero, and this function does not return
        // before `pending` is zero, so `f` outlives every use.
        let ptr: *const (dyn Fn(usize, usize) + Sync) = f;
        let ptr: *const (dyn Fn(usize, usize) + Sync + 'static) =
            unsafe { std::mem::transmute(ptr) };
        let (sleepers, g) = {
            let mut job = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            *job = Some(JobPtr(ptr));
            self.shared.pending.store(n, Ordering::SeqCst);
            // The region word before the generation: a worker that sees the new generation
            // reads this region's parts.
            let g = self.shared.generation.load(Ordering::SeqCst) + 1;
            self.shared
                .region
                .store(((g as u64) << 16) | n as u64, Ordering::SeqCst);
            self.shared.generation.store(g, Ordering::SeqCst);
            // Under the lock: a worker about to sleep has counted itself already (it checks
            // the generation under this lock before waiting), or will see the new one.
            (self.shared.sleepers.load(Ordering::SeqCst), g as u64)
        };
        if sleepers > 0 {
            self.shared.wake.notify_all();
        }
        let mut caller = Ok(());
        for_parts(&self.shared, g, n, 0, &mut |i| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i, n)));
            if caller.is_ok() {
                caller = r;
            }
        });
        let mut spins = 0usize;
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(p) = caller {
            std::panic::resume_unwind(p);
        }
        if self.shared.panicked.swap(0, Ordering::AcqRel) != 0 {
            panic!("tuili: a worker thread panicked in a parallel region");
        }
    }

    /// Runs `f(i, n)` on every thread of the pool.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        self.run_with(self.n_threads, f)
    }
}

fn worker(s: Arc<Shared>, index: usize) {
    let mut seen = 0usize;
    loop {
        // Wait for a new generation: spin first, then sleep.
        let mut spins = 0usize;
        loop {
            if s.stop.load(Ordering::Acquire) != 0 {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
            } else {
                let guard = s.job.lock().unwrap_or_else(|e| e.into_inner());
                if s.generation.load(Ordering::Acquire) == seen
                    && s.stop.load(Ordering::Acquire) == 0
                {
                    s.sleepers.fetch_add(1, Ordering::SeqCst);
                    let guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                    s.sleepers.fetch_sub(1, Ordering::SeqCst);
                    drop(guard);
                }
                spins = 0;
            }
        }
        let r = s.region.load(Ordering::Acquire);
        let (g, n) = (r >> 16, (r & 0xFFFF) as usize);
        if index >= n {
            continue;
        }
        for_parts(&s, g, n, index, &mut |i| {
            // The region cannot end while this part is unfinished, so the job is its own.
            let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(JobPtr(ptr)) = job {
                // SAFETY: `run_with` keeps the closure alive until `pending` reaches zero,
                // which happens only after this call returns (in `for_parts`).
                let f = unsafe { &*ptr };
                // A panicking kernel must not leave the caller waiting forever.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i, n))).is_err() {
                    s.panicked.store(1, Ordering::Release);
                }
            }
        });
    }
}

/// Runs `run(i)` for thread `own`'s part of region `g` (of `n` parts) and then for every part
/// still unclaimed, each counted off `pending` when done.
fn for_parts(s: &Shared, g: u64, n: usize, own: usize, run: &mut dyn FnMut(usize)) {
    let claim = |p: usize| {
        let c = &s.claimed[p];
        let v = c.load(Ordering::Acquire);
        v < g
            && c.compare_exchange(v, g, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    };
    for p in std::iter::once(own).chain((0..n).filter(|&p| p != own)) {
        if claim(p) {
            run(p);
            s.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Parts a region may have (the region word's 16-bit field).
const MAX_PARTS: usize = 1 << 15;

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(1, Ordering::Release);
        {
            let _g = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The range of `0..len` that worker `i` of `n` takes, in chunks aligned to `align`.
pub fn split(len: usize, i: usize, n: usize, align: usize) -> std::ops::Range<usize> {
    let align = align.max(1);
    let units = len.div_ceil(align);
    let per = units.div_ceil(n.max(1));
    let start = (i * per * align).min(len);
    let end = ((i + 1) * per * align).min(len);
    start..end
}

/// One value per part of a region, each reached only by the call running that part.
pub struct PerThread<T> {
    slots: Vec<std::cell::UnsafeCell<T>>,
}

// SAFETY: a slot is only accessed through `get`, whose contract gives each index to one
// thread at a time; T itself moves between threads, hence `T: Send`.
unsafe impl<T: Send> Sync for PerThread<T> {}

impl<T> PerThread<T> {
    pub fn new(n: usize, mut make: impl FnMut() -> T) -> PerThread<T> {
        PerThread {
            slots: (0..n).map(|_| std::cell::UnsafeCell::new(make())).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot of part `i`.
    ///
    /// # Safety
    /// No other reference to slot `i` may exist while the returned one lives (in a pool
    /// region: only the call for part `i` calls `get(i)`; a part runs once per region).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self, i: usize) -> &mut T {
        // SAFETY: exclusivity is the caller's contract.
        unsafe { &mut *self.slots[i].get() }
    }

    /// All slots, through exclusive access.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().map(|c| c.get_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_index_runs_once_per_region() {
        let pool = ThreadPool::new(4);
        let hits: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        for _ in 0..1000 {
            pool.run(&|i, n| {
                assert_eq!(n, 4);
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1000));
        pool.run_with(2, &|i, n| {
            assert!(i < 2 && n == 2);
        });
    }

    /// Parts go to whichever thread claims them: a thread that is held up (here, sleeping
    /// inside its part, as a descheduled worker would be) does not hold up the others' next
    /// parts, and every part still runs exactly once.
    #[test]
    fn parts_are_claimed_not_assigned() {
        let pool = ThreadPool::new(3);
        let hits: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        let threads = Mutex::new(std::collections::HashSet::new());
        for r in 0..200 {
            pool.run(&|i, n| {
                assert_eq!(n, 3);
                hits[i].fetch_add(1, Ordering::Relaxed);
                threads
                    .lock()
                    .unwrap()
                    .insert((i, std::thread::current().id()));
                if r % 50 == 0 && i == 1 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 200));
        // Some part ran on more than one thread over the regions.
        let t = threads.into_inner().unwrap();
        assert!(t.len() > 3, "{t:?}");
    }

    #[test]
    fn a_panicking_part_is_reported_not_hung() {
        let pool = ThreadPool::new(2);
        for bad in 0..2 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(&|i, _| {
                    if i == bad {
                        panic!("part {i}");
                    }
                })
            }));
            assert!(r.is_err());
        }
        let c = AtomicU64::new(0);
        pool.run(&|_, _| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(c.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn split_covers_everything() {
        for len in [0, 1, 5, 100, 1023] {
            for n in 1..6 {
                let mut covered = 0;
                for i in 0..n {
                    let r = split(len, i, n, 4);
                    assert!(r.start.is_multiple_of(4) || r.start == len);
                    covered += r.len();
                }
                assert_eq!(covered, len);
            }
        }
    }

    #[test]
    fn regions_after_sleep_still_run() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let c = AtomicU64::new(0);
        pool.run(&|_, _| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(c.load(Ordering::Relaxed), 2);
    }

    /// Regions that find the workers spinning, going to sleep, or asleep: none is lost (a
    /// lost wake-up would hang; the watchdog turns that into a failure).
    #[test]
    fn no_wake_up_is_lost() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = ThreadPool::new(3);
            let c = AtomicU64::new(0);
            for i in 0..300u64 {
                // 0 to 2 ms between regions: around the spin window (SPIN pauses).
                std::thread::sleep(std::time::Duration::from_micros((i * 7919) % 2000));
                pool.run(&|_, _| {
                    c.fetch_add(1, Ordering::Relaxed);
                });
            }
            let _ = tx.send(c.load(Ordering::Relaxed));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(got, Ok(900), "a region never finished");
    }
}
