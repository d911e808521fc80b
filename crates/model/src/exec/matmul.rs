//! The matrix products of a forward pass: y = x · Wᵀ for a batch of token rows, with the
//! weight rows split across the pool's threads, the activations prepared once per input in the
//! form each weight type's kernels take ([`Activations`]), and the output written in place by
//! the workers ([`SharedOut`]).
//!
//! Row-parallel by construction: every worker claims chunks of W's rows and writes only those
//! outputs. A tensor-parallel rank runs the same driver over its own slice of W's rows.

use std::sync::atomic::{AtomicUsize, Ordering};

use half::f16;
use tuili_core::pool::split;
use tuili_core::{PerThread, ThreadPool};
use tuili_kernels::act::{to_f16, Q8KRow, Q8Row, QuantRow};
use tuili_kernels::act::{ActKind, ActRef};
use tuili_kernels::cpu::Isa;
use tuili_kernels::dot::dot_rows;
use tuili_kernels::gemm::{self, F32Tiles, Q8Tiles, GROUP};
use tuili_kernels::ops;
use tuili_kernels::types::{act_kind, has_gemm, has_gemm_f};

use crate::exec::parallel::{threads_for, SharedOut};
use crate::weights::Matrix;

/// Activations of a batch prepared once for the dot-product kernels: quantized copies are
/// made on first use by a matrix product that needs them and reused by the following ones on
/// the same input (Q, K and V share one; gate and up another).
#[derive(Default)]
pub struct Activations {
    q8: Vec<Q8Row>,
    q8k: Vec<Q8KRow>,
    /// The rows as f16, `[n, cols]` (F16 weights).
    f16: Vec<f16>,
    /// The Q8 rows interleaved by groups of eight tokens (for batches of prompt tokens).
    tiles: Q8Tiles,
    /// The Q8_K rows interleaved the same way (K-quant weights).
    ktiles: Q8Tiles,
    /// The f32 rows interleaved the same way (float weights).
    ftiles: F32Tiles,
    ftiles_ready: bool,
    q8_ready: bool,
    q8k_ready: bool,
    f16_ready: bool,
    tiles_ready: bool,
    ktiles_ready: bool,
}

impl Activations {
    /// Marks the input as changed.
    pub fn invalidate(&mut self) {
        self.q8_ready = false;
        self.q8k_ready = false;
        self.f16_ready = false;
        self.tiles_ready = false;
        self.ktiles_ready = false;
        self.ftiles_ready = false;
    }

    /// The token-lane tiles of the activations in `kind` (Q8 or Q8K, already quantized),
    /// interleaved by the pool's threads, a share of the groups of eight tokens each (from 64
    /// tokens; fewer on this thread).
    fn ensure_tiles(
        &mut self,
        kind: ActKind,
        n: usize,
        cols: usize,
        pool: &ThreadPool,
    ) -> &Q8Tiles {
        let k = kind == ActKind::Q8K;
        let (tiles, ready) = if k {
            (&mut self.ktiles, &mut self.ktiles_ready)
        } else {
            (&mut self.tiles, &mut self.tiles_ready)
        };
        if !*ready && n < 64 {
            // A few tokens (decode steps of several sequences): one thread, no list of groups.
            if k {
                tiles.build_k(&self.q8k[..n], cols / 32);
            } else {
                tiles.build(&self.q8[..n], cols / 32);
            }
            *ready = true;
        }
        if !*ready {
            let mut groups = tiles.groups(n, cols / 32, k);
            let ng = groups.len();
            let gp = PerRow(groups.as_mut_ptr());
            let (q8, q8k) = (&self.q8[..], &self.q8k[..]);
            pool.run(&|i, nt| {
                for g in split(ng, i, nt, 1) {
                    // SAFETY: group g belongs to this worker's range only.
                    let group = unsafe { gp.get(g) };
                    if k {
                        group.fill_q8k(&q8k[..n]);
                    } else {
                        group.fill_q8(&q8[..n]);
                    }
                }
            });
            *ready = true;
        }
        tiles
    }

    fn ensure(
        &mut self,
        isa: Isa,
        kind: ActKind,
        x: &[f32],
        n: usize,
        cols: usize,
        pool: &ThreadPool,
    ) {
        match kind {
            ActKind::F32 => {}
            ActKind::F16 if !self.f16_ready => {
                // A few thousand conversions per token: one thread, no wake-ups.
                if self.f16.len() < n * cols {
                    self.f16.resize(n * cols, f16::ZERO);
                }
                to_f16(isa, &x[..n * cols], &mut self.f16[..n * cols]);
                self.f16_ready = true;
            }
            ActKind::Q8 if !self.q8_ready => {
                quantize_rows(isa, &mut self.q8, x, n, cols, pool);
                self.q8_ready = true;
            }
            ActKind::Q8K if !self.q8k_ready => {
                quantize_rows(isa, &mut self.q8k, x, n, cols, pool);
                self.q8k_ready = true;
            }
            _ => {}
        }
    }
}

/// Quantizes the `n` token rows of `x` (`[n, cols]`) into `rows` (grown to `n`), split
/// across the pool's threads from eight tokens (fewer are quantized faster than workers wake
/// up). One token is also regrouped for the one-row VBMI kernels (Q4_0, Q4_K).
fn quantize_rows<R: QuantRow>(
    isa: Isa,
    rows: &mut Vec<R>,
    x: &[f32],
    n: usize,
    cols: usize,
    pool: &ThreadPool,
) {
    if rows.len() < n {
        rows.resize_with(n, R::default);
    }
    let per = PerRow(rows.as_mut_ptr());
    let threads = if n < 8 { 1 } else { pool.n_threads() };
    pool.run_with(threads, &|i, nt| {
        for t in split(n, i, nt, 1) {
            // SAFETY: token t belongs to this worker's range only (`split` partitions them),
            // and t < n ≤ rows.len().
            let row = unsafe { per.get(t) };
            row.quantize(isa, &x[t * cols..(t + 1) * cols]);
            if n == 1 && isa >= Isa::Avx512Vbmi {
                row.regroup();
            }
        }
    });
}

/// Raw access to a slice of rows for workers that each own distinct indices.
struct PerRow<T>(*mut T);
// SAFETY: only used inside pool regions where each index is touched by one worker.
unsafe impl<T: Send> Sync for PerRow<T> {}
impl<T> PerRow<T> {
    /// # Safety
    /// Index `i` must be in bounds and used by one thread only.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self, i: usize) -> &mut T {
        // SAFETY: the caller's contract.
        unsafe { &mut *self.0.add(i) }
    }
}

/// One worker's scratch for the matrix products.
#[derive(Default)]
pub struct ThreadScratch {
    /// A dequantized row (types without an integer kernel).
    row: Vec<f32>,
    /// A row unpacked to bytes, and its block scales (token-lane matrix kernels).
    bytes: Vec<u8>,
    scales: Vec<f32>,
    /// Results of a group of rows for every token.
    tile: Vec<f32>,
    /// Four rows converted to f32 (float token-lane kernels).
    rows_f32: Vec<f32>,
}

/// Per-thread scratch of the matrix products.
pub type RowScratch = PerThread<ThreadScratch>;

/// y = x · Wᵀ for a batch: `x` is `[n, cols]`, `y` is `[n, rows]`.
///
/// Rows of W are split across the pool's threads. Each weight row is read once per batch and
/// dotted with up to four tokens per pass ([`dot_many`]), so the weights stream from memory
/// once per batch — what bounds a decode step — and prompt processing reuses each unpacked
/// block four times.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    isa: Isa,
    w: &Matrix,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    prep: &mut Activations,
    tmp: &RowScratch,
) {
    debug_assert_eq!(x.len(), n * w.cols);
    debug_assert_eq!(y.len(), n * w.rows);
    if w.cols == 0 {
        // Empty sums (a tensor-parallel rank's share of the attention output when it holds no
        // heads).
        y.fill(0.0);
        return;
    }
    // The token-lane kernels take int8 activations interleaved in blocks of 32 (`Q8Tiles`):
    // quantized as the dot-product kernels take them (Q8_0, or Q8_K for K-quants: one scale
    // per super-block, applied once per super-block by the kernel).
    let tiled = n >= GROUP && has_gemm(isa, w.dtype);
    let kind = if tiled {
        match act_kind(w.dtype) {
            ActKind::Q8K => ActKind::Q8K,
            _ => ActKind::Q8,
        }
    } else if n >= GROUP && act_kind(w.dtype) == ActKind::F16 {
        // Batches of prompt tokens keep f32 activations with F16 weights (the float tile
        // kernel reads them; the f16 form only pays in decode, where the weights stream),
        // and so does the scalar path, so that both compute the same thing.
        ActKind::F32
    } else {
        act_kind(w.dtype)
    };
    prep.ensure(isa, kind, x, n, w.cols, pool);
    // Batches of prompt tokens, or of many sequences' decode steps: the token-lane matrix
    // kernels where they exist (from 8 tokens they beat four-token dot products: measured
    // with `tuili bench -b`).
    if tiled {
        let tiles = prep.ensure_tiles(kind, n, w.cols, pool);
        let width = tiles.n_groups * GROUP;
        let kernel = |wr: &[u8], out: &mut [f32], s: &mut ThreadScratch| {
            if s.bytes.len() < 4 * w.cols {
                s.bytes.resize(4 * w.cols, 0);
                // Four rows' block scales, then their mins (up to two per block).
                s.scales.resize(16 * w.cols / 32, 0.0);
            }
            gemm::gemm_rows(
                isa,
                w.dtype,
                wr,
                w.row_bytes(),
                tiles,
                out,
                &mut s.bytes,
                &mut s.scales,
            )
        };
        matmul_tiles(pool, isa, w, n, y, width, &kernel, tmp);
        return;
    }
    if n >= GROUP && has_gemm_f(isa, w.dtype) {
        if !prep.ftiles_ready {
            prep.ftiles.build(x, n, w.cols);
            prep.ftiles_ready = true;
        }
        let tiles = &prep.ftiles;
        let width = tiles.n_groups * GROUP;
        let kernel = |wr: &[u8], out: &mut [f32], s: &mut ThreadScratch| {
            if s.rows_f32.len() < 4 * w.cols {
                s.rows_f32.resize(4 * w.cols, 0.0);
            }
            gemm::gemm_rows_f(isa, w.dtype, wr, w.row_bytes(), tiles, out, &mut s.rows_f32)
        };
        matmul_tiles(pool, isa, w, n, y, width, &kernel, tmp);
        return;
    }
    dot_region(pool, isa, &[w], &[SharedOut::new(y)], kind, x, n, prep, tmp);
}

/// Several matrix products of the same input in one parallel region: `ys[i] = x · ws[i]ᵀ`
/// (Q, K and V; gate and up). In decode each product is one region of a few microseconds of
/// work for small matrices (K and V of a GQA model: 256 rows), so waking the workers and
/// meeting at the barrier once instead of three times is measurable; batches of prompt tokens
/// (the token-lane kernels) and matrices whose activation forms differ go one by one.
#[allow(clippy::too_many_arguments)]
pub fn matmul_many<const K: usize>(
    pool: &ThreadPool,
    isa: Isa,
    ws: [&Matrix; K],
    x: &[f32],
    n: usize,
    mut ys: [&mut [f32]; K],
    prep: &mut Activations,
    tmp: &RowScratch,
) {
    let Some(first) = ws.first() else {
        return;
    };
    let kind = act_kind(first.dtype);
    let fused = n < GROUP
        && ws
            .iter()
            .all(|w| w.cols == first.cols && act_kind(w.dtype) == kind);
    if !fused {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            matmul(pool, isa, w, x, n, y, prep, tmp);
        }
        return;
    }
    prep.ensure(isa, kind, x, n, first.cols, pool);
    for (w, y) in ws.iter().zip(ys.iter()) {
        debug_assert_eq!(y.len(), n * w.rows);
    }
    // An array, not a Vec: no allocation in the decode loop.
    let outs = ys.map(SharedOut::new);
    dot_region(pool, isa, &ws, &outs, kind, x, n, prep, tmp);
}

/// The row-by-row products of [`matmul`] and [`matmul_many`]: the rows of every matrix of
/// `ws` (each with its output `[n, rows]` in `outs`) split across the pool's threads in one
/// region.
#[allow(clippy::too_many_arguments)]
fn dot_region(
    pool: &ThreadPool,
    isa: Isa,
    ws: &[&Matrix],
    outs: &[SharedOut],
    kind: ActKind,
    x: &[f32],
    n: usize,
    prep: &Activations,
    tmp: &RowScratch,
) {
    let cols = ws[0].cols;
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let threads = threads_for(pool, total * cols * n);
    let next = AtomicUsize::new(0);
    pool.run_with(threads, &|i, _nt| {
        // SAFETY: worker i is the only user of slot i.
        let tmp = &mut unsafe { tmp.get(i) }.row;
        if tmp.len() < cols {
            tmp.resize(cols, 0.0);
        }
        let mut acts: [ActRef<'_>; 4] = [ActRef::F32(&[]); 4];
        // Groups of rows per kernel call: dispatch and checks once per group.
        const GROUP: usize = 16;
        let mut res = [0f32; GROUP * 4];
        // Rows are claimed in chunks from a shared counter rather than split evenly up
        // front: a worker that starts late (woken from sleep) or runs on a slower core does
        // less, and nobody idles at the end of the region.
        while let Some((claim, chunk)) = claim_rows(&next, total, threads) {
            // The claimed virtual rows, cut into the matrices they fall in.
            let mut base = 0;
            for (w, out) in ws.iter().zip(outs) {
                let (lo, hi) = (claim.max(base), (claim + chunk).min(base + w.rows));
                base += w.rows;
                if lo >= hi {
                    continue;
                }
                let (start, end) = (lo - (base - w.rows), hi - (base - w.rows));
                let data = w.data();
                let rb = w.row_bytes();
                let mut t0 = 0;
                while t0 < n {
                    let m = (n - t0).min(4);
                    for (k, a) in acts.iter_mut().enumerate().take(m) {
                        let t = t0 + k;
                        *a = match kind {
                            ActKind::F32 => ActRef::F32(&x[t * cols..(t + 1) * cols]),
                            ActKind::F16 => ActRef::F16(&prep.f16[t * cols..(t + 1) * cols]),
                            ActKind::Q8 => ActRef::Q8(&prep.q8[t]),
                            ActKind::Q8K => ActRef::Q8K(&prep.q8k[t]),
                        };
                    }
                    if n == 1 {
                        // One token (decode): the results go straight into y, the whole
                        // claimed range in one call (per-group calls and the copy out cost
                        // 4 % of a one-thread decode step, measured with perf).
                        // SAFETY: rows start..end of this matrix were claimed by this
                        // worker alone (see below).
                        let y = unsafe { out.slice(start..end) };
                        dot_rows(
                            isa,
                            w.dtype,
                            &data[start * rb..end * rb],
                            rb,
                            &acts[..1],
                            y,
                            &mut tmp[..cols],
                        );
                        break;
                    }
                    let mut r0 = start;
                    while r0 < end {
                        let g = (end - r0).min(GROUP);
                        let wr = &data[r0 * rb..(r0 + g) * rb];
                        dot_rows(
                            isa,
                            w.dtype,
                            wr,
                            rb,
                            &acts[..m],
                            &mut res[..g * m],
                            &mut tmp[..cols],
                        );
                        for r in 0..g {
                            for k in 0..m {
                                // SAFETY: rows start..end of this matrix were claimed by this
                                // worker alone (the counter hands each virtual row out once),
                                // so y[t, r] is written by this thread only.
                                unsafe { out.write((t0 + k) * w.rows + r0 + r, res[r * m + k]) };
                            }
                        }
                        r0 += g;
                    }
                    t0 += m;
                }
            }
        }
    });
}

/// Claims the next chunk of `total` rows from the shared counter: `(first row, length)`, or
/// `None` when all are taken. Guided: a chunk is a 1/(2·threads) share of what is left, so the
/// first ones are long (few claims) and the last ones short (the threads finish together:
/// fixed chunks of 1/(8·threads) left one worker up to a chunk behind at every barrier); in
/// whole groups of 16 rows (the kernels take eight at a time), at least 16. A chunk may
/// reach past `total`; callers cut it.
fn claim_rows(next: &AtomicUsize, total: usize, threads: usize) -> Option<(usize, usize)> {
    let mut cur = next.load(Ordering::Relaxed);
    loop {
        if cur >= total {
            return None;
        }
        let len = ((total - cur) / (2 * threads)).max(16).next_multiple_of(16);
        match next.compare_exchange_weak(cur, cur + len, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some((cur, len)),
            Err(now) => cur = now,
        }
    }
}

/// The kernel of [`matmul_tiles`]: rows (bytes) → results for every token (`[rows, width]`).
type TileKernel<'a> = dyn Fn(&[u8], &mut [f32], &mut ThreadScratch) -> bool + Sync + 'a;

/// y = x · Wᵀ with a token-lane matrix kernel ([`gemm::gemm_rows`], [`gemm::gemm_rows_f`]):
/// rows claimed in chunks as in [`matmul`], each chunk computed for every token and
/// scattered into `y`.
#[allow(clippy::too_many_arguments)]
fn matmul_tiles(
    pool: &ThreadPool,
    isa: Isa,
    w: &Matrix,
    n: usize,
    y: &mut [f32],
    width: usize,
    kernel: &TileKernel<'_>,
    scratch: &RowScratch,
) {
    const ROWS: usize = 16;
    let data = w.data();
    let rb = w.row_bytes();
    let out = SharedOut::new(y);
    let next = AtomicUsize::new(0);
    pool.run(&|i, nt| {
        // SAFETY: worker i is the only user of slot i.
        let s = unsafe { scratch.get(i) };
        if s.tile.len() < ROWS * width {
            s.tile.resize(ROWS * width, 0.0);
        }
        let mut tile = std::mem::take(&mut s.tile);
        while let Some((start, chunk)) = claim_rows(&next, w.rows, nt) {
            let end = (start + chunk).min(w.rows);
            let mut r0 = start;
            while r0 < end {
                let g = (end - r0).min(ROWS);
                let wr = &data[r0 * rb..(r0 + g) * rb];
                // Room for the rows rounded up to four (the matrix kernels work in fours).
                let t = &mut tile[..g.next_multiple_of(4) * width];
                if !kernel(wr, t, s) {
                    // The caller checked support and the sizes come from the same matrix:
                    // unreachable in practice; NaN makes a violation visible.
                    t.fill(f32::NAN);
                }
                if g == ROWS && n > 0 {
                    // SAFETY: rows start..end were claimed by this worker alone, so
                    // y[tok, r0..r0 + 16] is written by this thread only, for every tok < n
                    // (y is [n, rows]; `ptr_at` checks the last run's end).
                    unsafe {
                        ops::transpose16(
                            isa,
                            t,
                            width,
                            n,
                            out.ptr_at(r0, (n - 1) * w.rows + r0 + g),
                            w.rows,
                        )
                    };
                    r0 += g;
                    continue;
                }
                for tok in 0..n {
                    // SAFETY: rows start..end were claimed by this worker alone, so
                    // y[tok, r0..r0 + g] is written by this thread only; a contiguous run.
                    let dst = unsafe { out.slice(tok * w.rows + r0..tok * w.rows + r0 + g) };
                    for (r, d) in dst.iter_mut().enumerate() {
                        *d = t[r * width + tok];
                    }
                }
                r0 += g;
            }
        }
        s.tile = tile;
    });
}
