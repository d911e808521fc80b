//! `tuili-kv`: key/value cache storage.
//!
//! Owns: the memory that holds every layer's keys and values for the positions of one
//! sequence, and its length bookkeeping; the paged pool of many sequences ([`paged`]), and
//! the choice of its element type ([`store`]: [`KvType`], [`PagedStore`] — nobody else
//! switches on it). May not: compute attention or know weights (the model reads and writes
//! rows through this API).
//!
//! A cache is contiguous per sequence, optionally behind a shared, frozen prefix: the prompt's
//! keys and values are computed once, frozen in an `Arc`, and every beam or sample of that
//! prompt forks from it, owning only the rows it appends. Copying a beam copies only those
//! rows. The server's many sequences live instead in the paged pool of [`paged`]: fixed-size
//! blocks, block tables, reference counts, copy-on-write and prefix caching.

use std::sync::Arc;

pub mod paged;
pub mod store;
pub use paged::{BlockAllocator, BlockCopy, BlockTable, OutOfBlocks, PagedBatch, PagedKv};
pub use store::{KvType, PagedStore, PagedStoreBatch};

/// Errors of the KV cache.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("context full: {needed} positions needed, the cache holds {capacity}")]
    Full { needed: usize, capacity: usize },
    #[error("cannot truncate to {to}: the cache holds {len} positions, {shared} of them shared")]
    Truncate {
        to: usize,
        len: usize,
        shared: usize,
    },
    #[error("KV cache of {n_layer} layers × {n_ctx} positions × {kv_dim} is too large")]
    TooLarge {
        n_layer: usize,
        n_ctx: usize,
        kv_dim: usize,
    },
    #[error(
        "a forked cache cannot itself be shared as a prefix (freeze the whole context instead)"
    )]
    NestedPrefix,
    #[error("cannot copy a cache of a different shape or prefix, or longer than the target holds")]
    CopyMismatch,
    #[error("head dimension {head_dim} is not a multiple of {per}, the values per element of this KV cache type")]
    HeadDim { head_dim: usize, per: usize },
}

/// One sequence's keys and values.
#[derive(Debug, Clone)]
pub struct KvCache {
    n_layer: usize,
    /// n_kv_head · head_dim.
    kv_dim: usize,
    /// Frozen first positions shared with other caches.
    prefix: Option<Arc<KvCache>>,
    /// Positions held by `prefix`.
    n_prefix: usize,
    /// Positions this cache can hold after the prefix.
    own_cap: usize,
    // [n_layer, own_cap, kv_dim]: positions n_prefix.. of this sequence.
    k: Vec<f32>,
    // [n_layer, own_cap, kv_dim]
    v: Vec<f32>,
    /// Positions filled, the prefix included (the same for every layer once a forward pass
    /// completes).
    len: usize,
}

/// One layer's cached rows for positions `0..n`, in up to two segments: positions
/// `0..split` are rows of `keys[0]`/`values[0]` (the shared prefix), the rest rows of
/// `keys[1]`/`values[1]`. Each row is `kv_dim` floats.
#[derive(Debug, Clone, Copy)]
pub struct LayerRows<'a> {
    pub keys: [&'a [f32]; 2],
    pub values: [&'a [f32]; 2],
    pub split: usize,
}

fn alloc(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Result<usize, KvError> {
    n_layer
        .checked_mul(n_ctx)
        .and_then(|x| x.checked_mul(kv_dim))
        .filter(|&n| n <= (isize::MAX as usize) / 8)
        .ok_or(KvError::TooLarge {
            n_layer,
            n_ctx,
            kv_dim,
        })
}

impl KvCache {
    /// Allocates a cache for `n_ctx` positions.
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Result<KvCache, KvError> {
        let n = alloc(n_layer, n_ctx, kv_dim)?;
        Ok(KvCache {
            n_layer,
            kv_dim,
            prefix: None,
            n_prefix: 0,
            own_cap: n_ctx,
            k: vec![0.0; n],
            v: vec![0.0; n],
            len: 0,
        })
    }

    /// A cache that continues `prefix` (all of its filled positions, shared, never copied)
    /// with room for `extra` positions of its own.
    pub fn fork(prefix: &Arc<KvCache>, extra: usize) -> Result<KvCache, KvError> {
        if prefix.prefix.is_some() {
            return Err(KvError::NestedPrefix);
        }
        let n = alloc(prefix.n_layer, extra, prefix.kv_dim)?;
        Ok(KvCache {
            n_layer: prefix.n_layer,
            kv_dim: prefix.kv_dim,
            prefix: Some(prefix.clone()),
            n_prefix: prefix.len,
            own_cap: extra,
            k: vec![0.0; n],
            v: vec![0.0; n],
            len: prefix.len,
        })
    }

    /// Makes this cache hold the same positions as `other` (a fork of the same prefix),
    /// copying only `other`'s own rows: what beam search does when a beam continues another.
    pub fn copy_from(&mut self, other: &KvCache) -> Result<(), KvError> {
        let same_prefix = match (&self.prefix, &other.prefix) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same_prefix
            || self.n_layer != other.n_layer
            || self.kv_dim != other.kv_dim
            || other.len - other.n_prefix > self.own_cap
        {
            return Err(KvError::CopyMismatch);
        }
        let rows = (other.len - other.n_prefix) * self.kv_dim;
        for l in 0..self.n_layer {
            let (d, s) = (
                l * self.own_cap * self.kv_dim,
                l * other.own_cap * self.kv_dim,
            );
            self.k[d..d + rows].copy_from_slice(&other.k[s..s + rows]);
            self.v[d..d + rows].copy_from_slice(&other.v[s..s + rows]);
        }
        self.len = other.len;
        Ok(())
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// Capacity in positions (the shared prefix included).
    pub fn capacity(&self) -> usize {
        self.n_prefix + self.own_cap
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

    /// Positions shared with other caches (read-only here).
    pub fn shared_len(&self) -> usize {
        self.n_prefix
    }

    /// Bytes of memory this cache owns (a shared prefix not counted).
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f32>()
    }

    /// Checks that `n` more positions fit.
    pub fn reserve(&self, n: usize) -> Result<(), KvError> {
        let needed = self.len + n;
        if needed > self.capacity() {
            return Err(KvError::Full {
                needed,
                capacity: self.capacity(),
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

    /// Forgets positions from `to` on (not into the shared prefix).
    pub fn truncate(&mut self, to: usize) -> Result<(), KvError> {
        if to > self.len || to < self.n_prefix {
            return Err(KvError::Truncate {
                to,
                len: self.len,
                shared: self.n_prefix,
            });
        }
        self.len = to;
        Ok(())
    }

    /// Forgets every own position (the shared prefix stays).
    pub fn clear(&mut self) {
        self.len = self.n_prefix;
    }

    fn own_base(&self, layer: usize, own_pos: usize) -> usize {
        (layer * self.own_cap + own_pos) * self.kv_dim
    }

    /// A layer's rows for positions `0..n` (n ≤ capacity).
    pub fn layer(&self, layer: usize, n: usize) -> LayerRows<'_> {
        let split = self.n_prefix.min(n);
        let (pk, pv) = match &self.prefix {
            Some(p) => {
                let b = p.own_base(layer, 0);
                (
                    &p.k[b..b + split * self.kv_dim],
                    &p.v[b..b + split * self.kv_dim],
                )
            }
            None => (&[][..], &[][..]),
        };
        let b = self.own_base(layer, 0);
        let own = (n - split) * self.kv_dim;
        LayerRows {
            keys: [pk, &self.k[b..b + own]],
            values: [pv, &self.v[b..b + own]],
            split,
        }
    }

    /// Mutable key and value rows of a layer for positions `pos..pos + n`: `[n, kv_dim]` each.
    /// Only own positions can be written: `pos` must be at least [`KvCache::shared_len`]
    /// (the model writes at `len()`, which always is).
    pub fn rows_mut(&mut self, layer: usize, pos: usize, n: usize) -> (&mut [f32], &mut [f32]) {
        assert!(
            pos >= self.n_prefix,
            "write into the shared prefix (position {pos} < {})",
            self.n_prefix
        );
        let b = self.own_base(layer, pos - self.n_prefix);
        let e = b + n * self.kv_dim;
        (&mut self.k[b..e], &mut self.v[b..e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(r: &LayerRows) -> (Vec<f32>, Vec<f32>) {
        (
            [r.keys[0], r.keys[1]].concat(),
            [r.values[0], r.values[1]].concat(),
        )
    }

    #[test]
    fn bookkeeping() {
        let mut c = KvCache::new(2, 4, 3).unwrap();
        assert_eq!(c.bytes(), 2 * 2 * 4 * 3 * 4);
        c.rows_mut(1, 2, 2).0.copy_from_slice(&[1.0; 6]);
        assert_eq!(&flat(&c.layer(1, 4)).0[6..], &[1.0; 6]);
        assert_eq!(flat(&c.layer(0, 4)).0, vec![0.0; 12]);
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

    #[test]
    fn forks_share_the_prefix_and_copy_only_their_rows() {
        let mut p = KvCache::new(2, 8, 2).unwrap();
        for l in 0..2 {
            let (k, v) = p.rows_mut(l, 0, 3);
            k.copy_from_slice(&[l as f32; 6]);
            v.copy_from_slice(&[10.0 + l as f32; 6]);
        }
        p.commit(3).unwrap();
        let p = Arc::new(p);
        let mut a = KvCache::fork(&p, 2).unwrap();
        assert_eq!((a.len(), a.capacity(), a.shared_len()), (3, 5, 3));
        assert_eq!(a.bytes(), 2 * 2 * 2 * 2 * 4);
        let (k, _) = a.rows_mut(1, 3, 1);
        k.copy_from_slice(&[7.0, 8.0]);
        a.commit(1).unwrap();
        let (keys, values) = flat(&a.layer(1, 4));
        assert_eq!(keys, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 7.0, 8.0]);
        assert_eq!(&values[..6], &[11.0; 6]);
        assert_eq!(a.layer(1, 2).split, 2);
        // A sibling copies a's own row; the prefix is untouched.
        let mut b = KvCache::fork(&p, 2).unwrap();
        b.copy_from(&a).unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(flat(&b.layer(1, 4)).0, keys);
        assert!(b.truncate(2).is_err());
        b.clear();
        assert_eq!(b.len(), 3);
        assert_eq!(
            KvCache::fork(&Arc::new(a.clone()), 1).unwrap_err(),
            KvError::NestedPrefix
        );
        let other = Arc::new(KvCache::new(2, 8, 2).unwrap());
        let mut c = KvCache::fork(&other, 2).unwrap();
        assert_eq!(c.copy_from(&a), Err(KvError::CopyMismatch));
        a.commit(1).unwrap();
        let mut small = KvCache::fork(&p, 1).unwrap();
        assert_eq!(small.copy_from(&a), Err(KvError::CopyMismatch));
    }
}
