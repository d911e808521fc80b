//! The per-request random number generator: ChaCha20 keyed by the request's seed, one stream per
//! sample (`n > 1` draws sample i from stream i). ChaCha's output is defined bit for bit, so the
//! same seed gives the same tokens on every machine and at every thread count (the model's
//! logits do not depend on the thread count: every dot product is summed by one thread).

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

#[derive(Debug, Clone)]
pub struct Rng(ChaCha20Rng);

impl Rng {
    /// Stream 0 of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng::with_stream(seed, 0)
    }

    /// An independent stream of the same seed.
    pub fn with_stream(seed: u64, stream: u64) -> Rng {
        let mut r = ChaCha20Rng::seed_from_u64(seed);
        r.set_stream(stream);
        Rng(r)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed for a request that gives none: different for every call (the clock, the process
/// and a counter mixed), so that two requests in the same nanosecond still differ. The one
/// source of fresh seeds for every front end.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    t ^ ((std::process::id() as u64) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(42);
        assert_eq!(a, (0..4).map(|_| r.next_u64()).collect::<Vec<_>>());
        let mut s = Rng::with_stream(42, 1);
        assert_ne!(a, (0..4).map(|_| s.next_u64()).collect::<Vec<_>>());
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
