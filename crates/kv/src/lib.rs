//! `tuili-kv`: key/value cache storage.
//!
//! Owns: the memory that holds every layer's keys and values for the positions of one
//! sequence, and its length bookkeeping. May not: compute attention or know weights (the model
//! reads and writes rows through this API). A contiguous cache per sequence; the paged block
//! pool with prefix sharing is the continuous-batching issue's business and will sit behind
//! the same row-level API.

/// Errors of the KV cache.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("context full: {needed} positions needed, the cache holds {capacity}")]
    Full { needed: usize, capacity: usize },
    #[error("cannot truncate to {to}: the cache holds {len} positions")]
    Truncate { to: usize, len: usize },
    #[error("KV cache of {n_layer} layers × {n_ctx} positions × {kv_dim} is too large")]
    TooLarge {
        n_layer: usize,
        n_ctx: usize,
        kv_dim: usize,
    },
}

/// One sequence's keys and values.
#[derive(Debug, Clone)]
pub struct KvCache {
    n_layer: usize,
    n_ctx: usize,
    /// n_kv_head · head_dim.
    kv_dim: usize,
    // [n_layer, n_ctx, kv_dim]
    k: Vec<f32>,
    // [n_layer, n_ctx, kv_dim]
    v: Vec<f32>,
    /// Positions filled (the same for every layer once a forward pass completes).
    len: usize,
}

impl KvCache {
    /// Allocates a cache for `n_ctx` positions.
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Result<KvCache, KvError> {
        let too_large = KvError::TooLarge {
            n_layer,
            n_ctx,
            kv_dim,
        };
        let n = n_layer
            .checked_mul(n_ctx)
            .and_then(|x| x.checked_mul(kv_dim))
            .filter(|&n| n <= (isize::MAX as usize) / 8)
            .ok_or(too_large)?;
        Ok(KvCache {
            n_layer,
            n_ctx,
            kv_dim,
            k: vec![0.0; n],
            v: vec![0.0; n],
            len: 0,
        })
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// Capacity in positions.
    pub fn capacity(&self) -> usize {
        self.n_ctx
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory held.
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f32>()
    }

    /// Checks that `n` more positions fit.
    pub fn reserve(&self, n: usize) -> Result<(), KvError> {
        let needed = self.len + n;
        if needed > self.n_ctx {
            return Err(KvError::Full {
                needed,
                capacity: self.n_ctx,
            });
        }
        Ok(())
    }

    /// Marks `n` more positions as filled (after a forward pass wrote them in every layer).
    pub fn commit(&mut self, n: usize) -> Result<(), KvError> {
        self.reserve(n)?;
        self.len += n;
        Ok(())
    }

    /// Forgets positions from `to` on (e.g. to reuse a shared prompt prefix).
    pub fn truncate(&mut self, to: usize) -> Result<(), KvError> {
        if to > self.len {
            return Err(KvError::Truncate { to, len: self.len });
        }
        self.len = to;
        Ok(())
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    fn base(&self, layer: usize, pos: usize) -> usize {
        (layer * self.n_ctx + pos) * self.kv_dim
    }

    /// Keys of a layer for positions `0..n` as one slice: `[n, kv_dim]`.
    pub fn keys(&self, layer: usize, n: usize) -> &[f32] {
        let b = self.base(layer, 0);
        &self.k[b..b + n * self.kv_dim]
    }

    /// Values of a layer for positions `0..n`: `[n, kv_dim]`.
    pub fn values(&self, layer: usize, n: usize) -> &[f32] {
        let b = self.base(layer, 0);
        &self.v[b..b + n * self.kv_dim]
    }

    /// Mutable key and value rows of a layer for positions `pos..pos + n`: `[n, kv_dim]` each.
    pub fn rows_mut(&mut self, layer: usize, pos: usize, n: usize) -> (&mut [f32], &mut [f32]) {
        let b = self.base(layer, pos);
        let e = b + n * self.kv_dim;
        (&mut self.k[b..e], &mut self.v[b..e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping() {
        let mut c = KvCache::new(2, 4, 3).unwrap();
        assert_eq!(c.bytes(), 2 * 2 * 4 * 3 * 4);
        c.rows_mut(1, 2, 2).0.copy_from_slice(&[1.0; 6]);
        assert_eq!(&c.keys(1, 4)[6..], &[1.0; 6]);
        assert_eq!(c.keys(0, 4), &[0.0; 12]);
        c.commit(3).unwrap();
        assert_eq!(
            c.reserve(2),
            Err(KvError::Full {
                needed: 5,
                capacity: 4
            })
        );
        assert!(c.truncate(4).is_err());
        c.truncate(1).unwrap();
        assert_eq!(c.len(), 1);
        assert!(KvCache::new(usize::MAX, 2, 2).is_err());
    }
}
