//! A [`Comm`] that counts what passes through another ([`Metered`]): collectives, bytes this
//! rank contributes, and each collective's latency — for `tuili bench`'s communication report
//! (bytes per token and per layer, all-reduce latency median and p99).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{Comm, DistError};

/// `inner`, metered; groups split from it count into the same [`Stats`].
pub struct Metered {
    inner: Arc<dyn Comm>,
    stats: Arc<Mutex<Stats>>,
}

/// What went through a [`Metered`] since it was made or last [`Metered::take`]n.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Collectives of floats (all-gather, and so all-reduce).
    pub gathers: u64,
    /// Bytes this rank put in: its parts of all-gathers, what it sent, what it broadcast as
    /// the root.
    pub bytes: u64,
    /// Each float collective's time, in nanoseconds, from call to return on this rank
    /// (waiting for the slowest rank included).
    pub latency_ns: Vec<u64>,
    /// Other operations (broadcasts, sends, receives, barriers).
    pub others: u64,
}

impl Stats {
    /// The `q` quantile (0..=1) of the latencies, in nanoseconds.
    pub fn latency_quantile(&self, q: f64) -> u64 {
        let mut v = self.latency_ns.clone();
        v.sort_unstable();
        if v.is_empty() {
            return 0;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

impl Metered {
    pub fn new(inner: Arc<dyn Comm>) -> Metered {
        Metered {
            inner,
            stats: Arc::new(Mutex::new(Stats::default())),
        }
    }

    /// The counts so far, reset.
    pub fn take(&self) -> Stats {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs an all-gather of `bytes` per rank, counting it and timing it.
    fn gather(
        &self,
        bytes: usize,
        f: impl FnOnce() -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        let t = Instant::now();
        let r = f();
        let ns = t.elapsed().as_nanos() as u64;
        let mut s = self.lock();
        s.gathers += 1;
        s.bytes += bytes as u64;
        s.latency_ns.push(ns);
        r
    }
}

impl Comm for Metered {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn all_gather(&self, part: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        self.gather(4 * part.len(), || self.inner.all_gather(part, out))
    }

    fn all_gather_bytes(&self, part: &[u8], out: &mut [u8]) -> Result<(), DistError> {
        self.gather(part.len(), || self.inner.all_gather_bytes(part, out))
    }

    fn broadcast(&self, root: usize, buf: &mut [u8]) -> Result<(), DistError> {
        let mut s = self.lock();
        s.others += 1;
        if root == self.rank() {
            s.bytes += buf.len() as u64;
        }
        drop(s);
        self.inner.broadcast(root, buf)
    }

    fn send(&self, to: usize, buf: &[u8]) -> Result<(), DistError> {
        let mut s = self.lock();
        s.others += 1;
        s.bytes += buf.len() as u64;
        drop(s);
        self.inner.send(to, buf)
    }

    fn recv(&self, from: usize) -> Result<Vec<u8>, DistError> {
        self.lock().others += 1;
        self.inner.recv(from)
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.lock().others += 1;
        self.inner.barrier()
    }

    fn split(&self, color: usize) -> Result<Arc<dyn Comm>, DistError> {
        Ok(Arc::new(Metered {
            inner: self.inner.split(color)?,
            stats: self.stats.clone(),
        }))
    }

    fn finalize(&self) {
        self.inner.finalize()
    }

    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threads::group;

    #[test]
    fn counts_what_passes() {
        let ranks: Vec<_> = group(2)
            .into_iter()
            .map(|c| Metered::new(Arc::new(c)))
            .collect();
        std::thread::scope(|s| {
            for c in &ranks {
                s.spawn(move || {
                    let mut v = vec![1f32; 10];
                    let mut scratch = Vec::new();
                    for _ in 0..3 {
                        c.all_reduce_sum(&mut v, &mut scratch).unwrap();
                    }
                    c.barrier().unwrap();
                });
            }
        });
        let st = ranks[0].take();
        assert_eq!((st.gathers, st.bytes, st.others), (3, 120, 1));
        assert_eq!(st.latency_ns.len(), 3);
        assert!(st.latency_quantile(0.99) >= st.latency_quantile(0.5));
        assert_eq!(ranks[0].take().gathers, 0);
    }
}
