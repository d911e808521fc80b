//! The paged KV cache: fixed-size blocks of positions from one pool, per-sequence block
//! tables, reference counts, copy-on-write forks and prefix caching.
//!
//! Split in two so that the scheduler can be pure bookkeeping:
//! - [`BlockAllocator`] owns which block is whose — reference counts, the free list, and the
//!   prefix index (a chained hash of every full block's tokens → the block that holds their
//!   keys and values). It never touches a float.
//! - [`PagedKv`] owns the floats: `[n_layer, n_blocks, n_kv_head, block_size, head_dim]` keys
//!   and the same for values; position p of a sequence is row `p mod B` of block
//!   `table[p / B]`. Head-major inside a block: attention reads one head's positions, which
//!   are then contiguous (streams, and the prefetcher follows).
//!
//! Prefix caching (as vLLM's): block i of a sequence is identified by
//! h_i = H(h_{i−1}, tokens[iB..(i+1)B]) once all its B positions are computed. A new sequence
//! whose first blocks hash the same takes those blocks (reference count + 1) instead of
//! recomputing them. A block whose count drops to 0 keeps its contents and hash and waits,
//! least recently freed first, to be either matched again or reused for something else.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use tuili_kernels::attn::KvElem;

/// A sequence's blocks, in position order, and the chained hashes of its full, computed
/// blocks (for prefix caching).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
    /// hashes[i] identifies blocks[i] and everything before it; only for blocks whose
    /// positions are all computed.
    pub hashes: Vec<u64>,
}

impl BlockTable {
    pub fn new() -> BlockTable {
        BlockTable::default()
    }
}

/// The pool has no block left to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("KV cache full: {needed} more blocks needed, {available} available")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub available: usize,
}

/// Which block belongs to whom (no floats: see the module comment).
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size: usize,
    refs: Vec<u32>,
    /// The prefix hash of a full block registered in `by_hash`.
    hash: Vec<Option<u64>>,
    /// Unreferenced blocks with no hash.
    free: VecDeque<u32>,
    /// Unreferenced blocks with a hash, oldest release first: reusable, but a prefix match
    /// can still revive them.
    cached: BTreeMap<u64, u32>,
    /// The key of a block in `cached`.
    stamp: Vec<u64>,
    clock: u64,
    by_hash: HashMap<u64, u32>,
    /// Prefix-cache statistics: blocks looked up and blocks found.
    pub queries: u64,
    pub hits: u64,
}

/// One copy-on-write: the contents of block `src` go to block `dst` before anything is
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: u32,
    pub dst: u32,
}

impl BlockAllocator {
    /// A pool of `n_blocks` blocks of `block_size` positions (a power of two).
    pub fn new(n_blocks: usize, block_size: usize) -> BlockAllocator {
        assert!(
            block_size.is_power_of_two(),
            "block size must be a power of two"
        );
        assert!(n_blocks <= u32::MAX as usize);
        BlockAllocator {
            block_size,
            refs: vec![0; n_blocks],
            hash: vec![None; n_blocks],
            free: (0..n_blocks as u32).collect(),
            cached: BTreeMap::new(),
            stamp: vec![0; n_blocks],
            clock: 0,
            by_hash: HashMap::new(),
            queries: 0,
            hits: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free, or cached and evictable).
    pub fn n_available(&self) -> usize {
        self.free.len() + self.cached.len()
    }

    /// Blocks referenced by some sequence.
    pub fn n_used(&self) -> usize {
        self.n_blocks() - self.n_available()
    }

    /// Blocks that hold `n` positions.
    pub fn blocks_for(&self, n: usize) -> usize {
        n.div_ceil(self.block_size)
    }

    /// The reference count of a block.
    pub fn refs(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }

    fn take(&mut self) -> Option<u32> {
        let b = match self.free.pop_front() {
            Some(b) => b,
            None => {
                let (_, b) = self.cached.pop_first()?;
                // Evicted: its contents will be overwritten, so it no longer answers its hash.
                if let Some(h) = self.hash[b as usize].take() {
                    self.by_hash.remove(&h);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn incref(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            // Revive a cached block.
            self.cached.remove(&self.stamp[i]);
        }
        self.refs[i] += 1;
    }

    fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0, "block {b} released more often than taken");
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] == 0 {
            if self.hash[i].is_some() {
                self.clock += 1;
                self.stamp[i] = self.clock;
                self.cached.insert(self.clock, b);
            } else {
                self.free.push_back(b);
            }
        }
    }

    /// Gives `table` enough blocks for `n` positions, all or none.
    pub fn grow(&mut self, table: &mut BlockTable, n: usize) -> Result<(), OutOfBlocks> {
        let need = self.blocks_for(n).saturating_sub(table.blocks.len());
        if need > self.n_available() {
            return Err(OutOfBlocks {
                needed: need,
                available: self.n_available(),
            });
        }
        for _ in 0..need {
            // Invariant: checked above that `need` blocks are available.
            let b = self.take().expect("counted available blocks");
            table.blocks.push(b);
        }
        Ok(())
    }

    /// Releases every block of `table` and empties it.
    pub fn free(&mut self, table: &mut BlockTable) {
        for b in table.blocks.drain(..) {
            self.release(b);
        }
        table.hashes.clear();
    }

    /// Releases the blocks past the first `n` positions (a shorter sequence).
    pub fn truncate(&mut self, table: &mut BlockTable, n: usize) {
        let keep = self.blocks_for(n);
        for b in table.blocks.drain(keep.min(table.blocks.len())..) {
            self.release(b);
        }
        table.hashes.truncate(n / self.block_size);
    }

    /// A second table sharing every block of `table` (copy-on-write: see
    /// [`BlockAllocator::make_writable`]).
    pub fn fork(&mut self, table: &BlockTable) -> BlockTable {
        for &b in &table.blocks {
            self.incref(b);
        }
        table.clone()
    }

    /// Before positions `from..to` of `table` are written: each block they fall in that
    /// another table shares is replaced by a fresh copy (returned, for the float store to
    /// carry out first). All or none.
    pub fn make_writable(
        &mut self,
        table: &mut BlockTable,
        from: usize,
        to: usize,
    ) -> Result<Vec<BlockCopy>, OutOfBlocks> {
        let mut copies = Vec::new();
        if from >= to {
            return Ok(copies);
        }
        let bs = self.block_size;
        let range = from / bs..(to - 1) / bs + 1;
        let range = range.start..range.end.min(table.blocks.len());
        let shared = range
            .clone()
            .filter(|&i| self.refs[table.blocks[i] as usize] > 1)
            .count();
        if shared > self.n_available() {
            return Err(OutOfBlocks {
                needed: shared,
                available: self.n_available(),
            });
        }
        for i in range {
            let src = table.blocks[i];
            if self.refs[src as usize] > 1 {
                // Invariant: counted above.
                let dst = self.take().expect("counted available blocks");
                self.release(src);
                table.blocks[i] = dst;
                copies.push(BlockCopy { src, dst });
            }
        }
        Ok(copies)
    }

    /// The chained hash of one block's tokens after the hash of everything before it.
    pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
        // SipHash with fixed keys: the same tokens give the same hash in every run.
        let mut h = std::hash::DefaultHasher::new();
        parent.hash(&mut h);
        tokens.hash(&mut h);
        h.finish()
    }

    /// Takes the cached blocks that hold a prefix of `tokens` into the empty `table`, leaving
    /// at least one token to compute (the model must still produce the last one's logits);
    /// returns how many positions they hold.
    pub fn match_prefix(&mut self, table: &mut BlockTable, tokens: &[u32]) -> usize {
        debug_assert!(table.blocks.is_empty());
        let bs = self.block_size;
        let max_blocks = tokens.len().saturating_sub(1) / bs;
        let mut parent = 0u64;
        for i in 0..max_blocks {
            self.queries += 1;
            let h = Self::chain_hash(parent, &tokens[i * bs..(i + 1) * bs]);
            let Some(&b) = self.by_hash.get(&h) else {
                break;
            };
            self.hits += 1;
            self.incref(b);
            table.blocks.push(b);
            table.hashes.push(h);
            parent = h;
        }
        table.blocks.len() * bs
    }

    /// Registers the blocks of `table` whose positions are all computed (`n_computed` of
    /// `tokens`) in the prefix index.
    pub fn register(&mut self, table: &mut BlockTable, tokens: &[u32], n_computed: usize) {
        let bs = self.block_size;
        let full = (n_computed.min(tokens.len()) / bs).min(table.blocks.len());
        for i in table.hashes.len()..full {
            let parent = if i == 0 { 0 } else { table.hashes[i - 1] };
            let h = Self::chain_hash(parent, &tokens[i * bs..(i + 1) * bs]);
            table.hashes.push(h);
            let b = table.blocks[i];
            if self.hash[b as usize].is_none() && !self.by_hash.contains_key(&h) {
                self.hash[b as usize] = Some(h);
                self.by_hash.insert(h, b);
            }
        }
    }
}

/// The elements of a paged pool (F32, F16 or Q8_0 blocks): `[n_layer, n_blocks, n_kv_head,
/// block_size, row]` keys, the same for values; `row` = head_dim / T::PER elements.
#[derive(Debug)]
pub struct PagedKv<T> {
    n_layer: usize,
    n_blocks: usize,
    block_shift: u32,
    n_kv_head: usize,
    head_dim: usize,
    k: Vec<T>,
    v: Vec<T>,
}

impl<T: KvElem> PagedKv<T> {
    /// A pool of `n_blocks` blocks of `block_size` (a power of two) positions.
    pub fn new(
        n_layer: usize,
        n_blocks: usize,
        block_size: usize,
        n_kv_head: usize,
        head_dim: usize,
    ) -> Result<PagedKv<T>, crate::KvError> {
        assert!(
            block_size.is_power_of_two(),
            "block size must be a power of two"
        );
        if !head_dim.is_multiple_of(T::PER) {
            return Err(crate::KvError::HeadDim {
                head_dim,
                per: T::PER,
            });
        }
        let n = crate::alloc(
            n_layer,
            n_blocks * block_size,
            n_kv_head * head_dim / T::PER,
        )?;
        Ok(PagedKv {
            n_layer,
            n_blocks,
            block_shift: block_size.trailing_zeros(),
            n_kv_head,
            head_dim,
            k: zeroed(n),
            v: zeroed(n),
        })
    }

    /// Bytes of one position's keys (or values) of one layer.
    pub fn row_bytes(kv_dim: usize) -> usize {
        kv_dim.div_ceil(T::PER) * T::BYTES
    }

    /// Elements per head row.
    pub fn row(&self) -> usize {
        self.head_dim / T::PER
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
    pub fn n_kv_head(&self) -> usize {
        self.n_kv_head
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }
    pub fn block_size(&self) -> usize {
        1 << self.block_shift
    }
    pub fn block_shift(&self) -> u32 {
        self.block_shift
    }

    /// Elements per block (every head).
    fn block_len(&self) -> usize {
        self.block_size() * self.n_kv_head * self.row()
    }

    fn layer_len(&self) -> usize {
        self.n_blocks * self.block_len()
    }

    /// One layer's whole pool: keys and values, `[n_blocks, n_kv_head, block_size, row]`
    /// each.
    pub fn layer(&self, layer: usize) -> (&[T], &[T]) {
        let n = self.layer_len();
        (
            &self.k[layer * n..(layer + 1) * n],
            &self.v[layer * n..(layer + 1) * n],
        )
    }

    /// Writes key and value rows (`[n, kv_dim]` each, heads in turn) at positions
    /// `pos..pos + n` of the sequence whose blocks are `table` (rounded to T).
    pub fn write(&mut self, layer: usize, table: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        let (hd, row) = (self.head_dim, self.row());
        let (shift, base) = (self.block_shift, layer * self.layer_len());
        let mask = (1usize << shift) - 1;
        let d = self.kv_dim();
        for (i, (kr, vr)) in k.chunks_exact(d).zip(v.chunks_exact(d)).enumerate() {
            let p = pos + i;
            let b = table[p >> shift] as usize;
            for h in 0..self.n_kv_head {
                let o = base + (((b * self.n_kv_head + h) << shift) + (p & mask)) * row;
                T::store_row(&kr[h * hd..(h + 1) * hd], &mut self.k[o..o + row]);
                T::store_row(&vr[h * hd..(h + 1) * hd], &mut self.v[o..o + row]);
            }
        }
    }

    /// Carries out copy-on-write copies (every layer).
    pub fn copy_blocks(&mut self, copies: &[BlockCopy]) {
        let (n, bl) = (self.layer_len(), self.block_len());
        for c in copies {
            for l in 0..self.n_layer {
                let (s, d) = (l * n + c.src as usize * bl, l * n + c.dst as usize * bl);
                self.k.copy_within(s..s + bl, d);
                self.v.copy_within(s..s + bl, d);
            }
        }
    }
}

/// `n` zeros, allocated zeroed: the OS hands out zero pages on first touch, so a large pool
/// costs memory only as its blocks come into use.
fn zeroed<T: KvElem>(n: usize) -> Vec<T> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Vec::new();
    }
    let layout = match std::alloc::Layout::array::<T>(n) {
        Ok(l) => l,
        // Unreachable: `alloc` bounded the element count by isize::MAX / 8.
        Err(_) => std::alloc::handle_alloc_error(std::alloc::Layout::new::<T>()),
    };
    // SAFETY: the layout has non-zero size; the pointer is checked for null; KvElem
    // guarantees all-zero bytes are valid values, so the n elements are initialized; the
    // Vec takes ownership with the same layout (capacity n of T).
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<T>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(p, n, n)
    }
}

/// One forward pass's view of the pool: the store and the block table of each sequence of
/// the batch (sequence i's blocks are `tables[offsets[i]..offsets[i + 1]]`).
pub struct PagedBatch<'a, T> {
    pub store: &'a mut PagedKv<T>,
    pub tables: &'a [u32],
    pub offsets: &'a [usize],
}

impl<T> PagedBatch<'_, T> {
    /// Sequence i's blocks.
    pub fn table(&self, i: usize) -> &[u32] {
        &self.tables[self.offsets[i]..self.offsets[i + 1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_free_and_counts() {
        let mut a = BlockAllocator::new(4, 2);
        let mut t = BlockTable::new();
        a.grow(&mut t, 3).unwrap();
        assert_eq!(t.blocks.len(), 2);
        assert_eq!(a.n_used(), 2);
        // All or none.
        let mut u = BlockTable::new();
        assert_eq!(
            a.grow(&mut u, 6),
            Err(OutOfBlocks {
                needed: 3,
                available: 2
            })
        );
        assert!(u.blocks.is_empty());
        a.truncate(&mut t, 2);
        assert_eq!(t.blocks.len(), 1);
        a.free(&mut t);
        assert_eq!(a.n_used(), 0);
        assert_eq!(a.n_available(), 4);
    }

    #[test]
    fn fork_shares_and_copy_on_write_splits() {
        let mut a = BlockAllocator::new(8, 4);
        let mut t = BlockTable::new();
        a.grow(&mut t, 6).unwrap(); // blocks 0 (full) and 1 (2 of 4)
        let mut f = a.fork(&t);
        assert_eq!(a.n_used(), 2);
        assert_eq!(a.refs(t.blocks[1]), 2);
        // Writing position 6 of the fork copies block 1 only.
        let copies = a.make_writable(&mut f, 6, 7).unwrap();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].src, t.blocks[1]);
        assert_eq!(f.blocks[0], t.blocks[0]);
        assert_ne!(f.blocks[1], t.blocks[1]);
        assert_eq!(a.refs(t.blocks[1]), 1);
        // The original is now alone in its block: no copy.
        assert!(a.make_writable(&mut t, 6, 7).unwrap().is_empty());
        a.free(&mut t);
        a.free(&mut f);
        assert_eq!(a.n_used(), 0);
    }

    #[test]
    fn prefix_cache_matches_whole_blocks_and_leaves_one_token() {
        let mut a = BlockAllocator::new(8, 2);
        let toks = [1, 2, 3, 4, 5];
        let mut t = BlockTable::new();
        assert_eq!(a.match_prefix(&mut t, &toks), 0);
        a.grow(&mut t, 5).unwrap();
        a.register(&mut t, &toks, 5);
        assert_eq!(t.hashes.len(), 2);
        // Same first four tokens: both full blocks shared.
        let mut u = BlockTable::new();
        assert_eq!(a.match_prefix(&mut u, &[1, 2, 3, 4, 9]), 4);
        assert_eq!(&u.blocks[..], &t.blocks[..2]);
        // Exactly the cached four: the last block is left to compute.
        let mut w = BlockTable::new();
        assert_eq!(a.match_prefix(&mut w, &[1, 2, 3, 4]), 2);
        // A different first block matches nothing (the hash is chained).
        let mut x = BlockTable::new();
        assert_eq!(a.match_prefix(&mut x, &[0, 2, 3, 4, 5]), 0);
        // Freed, the blocks stay matchable until reused.
        for tb in [&mut t, &mut u, &mut w] {
            a.free(tb);
        }
        assert_eq!(a.n_used(), 0);
        let mut y = BlockTable::new();
        assert_eq!(a.match_prefix(&mut y, &toks), 4);
        assert_eq!(a.n_used(), 2);
        a.free(&mut y);
        // Taking every block evicts them, and they no longer match.
        let mut z = BlockTable::new();
        a.grow(&mut z, 16).unwrap();
        a.free(&mut z);
        let mut q = BlockTable::new();
        assert_eq!(a.match_prefix(&mut q, &toks), 0);
    }

    #[test]
    fn store_writes_through_tables_and_copies_blocks() {
        // 2 layers, 4 blocks of 2 positions, 3 heads of 1 float.
        let mut s = PagedKv::<f32>::new(2, 4, 2, 3, 1).unwrap();
        let table = [3u32, 1];
        let k: Vec<f32> = (0..9).map(|x| x as f32).collect();
        let v: Vec<f32> = (0..9).map(|x| -(x as f32)).collect();
        s.write(1, &table, 0, &k, &v);
        let (lk, lv) = s.layer(1);
        // Block 3 holds positions 0, 1, head-major: [h0p0, h0p1, h1p0, h1p1, h2p0, h2p1].
        assert_eq!(&lk[18..24], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // Position 2 → block 1, row 0 of each head.
        assert_eq!([lk[6], lk[8], lk[10]], [6.0, 7.0, 8.0]);
        assert_eq!([lv[6], lv[8], lv[10]], [-6.0, -7.0, -8.0]);
        assert!(s.layer(0).0.iter().all(|&x| x == 0.0));
        s.copy_blocks(&[BlockCopy { src: 3, dst: 0 }]);
        assert_eq!(&s.layer(1).0[..6], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }
}
