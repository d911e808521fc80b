//! A persistent thread pool for the forward pass.
//!
//! A decode step runs a few hundred small parallel regions (one per matrix product); starting
//! threads for each would cost more than the work. Workers here live as long as the pool,
//! spin briefly waiting for the next region (regions come back to back during a forward pass),
//! then sleep on a condition variable. Dispatching a region allocates nothing.
//!
//! A region is `run(|i, n| …)`: the closure is called once for every worker index
//! `i in 0..n` (the calling thread is index 0) and `run` returns when all calls have returned.

use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Workers still running the current region.
    pending: AtomicUsize,
    job: Mutex<Option<JobPtr>>,
    wake: Condvar,
    /// Set when the pool is dropped.
    stop: AtomicUsize,
    /// Workers that take part in the current region (indices 1..active).
    active: AtomicUsize,
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
            job: Mutex::new(None),
            wake: Condvar::new(),
            stop: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
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
        let n = threads.clamp(1, self.n_threads);
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
        let sleepers = {
            let mut job = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            *job = Some(JobPtr(ptr));
            self.shared.active.store(n, Ordering::SeqCst);
            self.shared.pending.store(n - 1, Ordering::SeqCst);
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
            // Under the lock: a worker about to sleep has counted itself already (it checks
            // the generation under this lock before waiting), or will see the new one.
            self.shared.sleepers.load(Ordering::SeqCst)
        };
        if sleepers > 0 {
            self.shared.wake.notify_all();
        }
        let caller = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0, n)));
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
        let n = s.active.load(Ordering::Acquire);
        if index < n {
            let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(JobPtr(ptr)) = job {
                // SAFETY: `run_with` keeps the closure alive until `pending` reaches zero,
                // which happens only after this call returns (the decrement below).
                let f = unsafe { &*ptr };
                // A panicking kernel must not leave the caller waiting forever.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index, n))).is_err() {
                    s.panicked.store(1, Ordering::Release);
                }
            }
            s.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

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

/// One value per worker thread, each reached only by its own thread inside a region.
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

    /// The slot of worker `i`.
    ///
    /// # Safety
    /// No other reference to slot `i` may exist while the returned one lives (in a pool
    /// region: only worker `i` calls `get(i)`).
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
