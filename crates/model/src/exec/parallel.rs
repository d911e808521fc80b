//! What every parallel region of a forward pass shares: how many threads it gets
//! ([`threads_for`], the one rule) and how workers write disjoint parts of one buffer
//! ([`SharedOut`]).

use std::ops::Range;

use tuili_core::ThreadPool;

/// How many of the pool's threads a parallel region of `work` elementary operations
/// (multiply-adds, or values computed) gets: one per 64 Ki of work, at least one. Below that
/// a worker's share costs less than waking it.
pub fn threads_for(pool: &ThreadPool, work: usize) -> usize {
    (work / 65_536).clamp(1, pool.n_threads())
}

/// A raw pointer that worker threads use to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: SharedOut is only handed to thread-pool workers, each of which writes
// a disjoint set of indices (documented at every use); the buffer outlives the scope.
unsafe impl Send for SharedOut {}
// SAFETY: as above — shared references never write overlapping indices.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub fn new(buf: &mut [f32]) -> SharedOut {
        SharedOut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Writes `v` at index `i`.
    ///
    /// # Safety
    /// No other thread may access index `i` during the parallel region.
    #[inline]
    pub unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len);
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { self.ptr.add(i).write(v) }
    }

    /// The address of index `i`, for a writer that will touch indices `i..end` (end ≤ len,
    /// asserted).
    #[inline]
    pub fn ptr_at(&self, i: usize, end: usize) -> *mut f32 {
        assert!(i <= end && end <= self.len);
        // SAFETY: i ≤ len: in bounds of the allocation (or one past its end).
        unsafe { self.ptr.add(i) }
    }

    /// A mutable view of `range`.
    ///
    /// # Safety
    /// No other thread may access any index of `range` during the parallel region.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}
