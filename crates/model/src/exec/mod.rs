//! The execution layer: the one place that runs a forward pass, for every architecture.
//!
//! An architecture (`arch/`) binds its tensors and describes its layer as a [`Decoder`]: how a
//! token becomes a row of the residual stream, what one layer does to the stream in terms of
//! the steps a [`Step`] offers (matrix products, attention over the KV cache, element-wise
//! work per token), and the final norm and output matrix. [`forward`] owns everything else:
//! checking the batch, sizing the buffers ([`Scratch`]), the loop over layers, the logits.
//!
//! A [`Step`] decides how each piece runs: the matrix driver ([`matmul`]: weight rows split
//! across the pool's threads, activations prepared once per input), attention
//! ([`attention`]: through `dyn` [`KvAccess`], one virtual call per layer, the cache's element
//! type compiled into the loops behind it), and [`threads_for`], the one rule for how many
//! threads a parallel region gets.
//!
//! The parallelism lives here too, not in the architectures:
//! - *Pipeline parallelism*: a stage's decoder holds its own layers
//!   ([`Decoder::keep_layers`]); [`forward`] embeds only on the first stage and receives the
//!   residual stream `x` from the stage before on the others. How results move on is the
//!   caller's choice ([`Handoff`]): in lockstep, every stage but the last sends `x` on and
//!   the last stage's logits go to every stage, within the call; or the call returns what the
//!   stage hands on and the caller sends it, so that several micro-batches can be in flight
//!   at different stages (the server).
//! - *Tensor parallelism*: each rank binds its slice of every matrix (`crate::shard`) and runs
//!   with its own [`AttnShape`]. The architectures say which products close a block and join
//!   the residual stream: [`Step::matmul_to_residual`] (attention output, MLP down) — the one
//!   place where partial sums over a split input become the all-reduce (in f32, or
//!   compressed to Q8_0 blocks: [`Reduce`]); the output matrix's vocabulary rows are gathered
//!   at the end — all of them, or, when the caller needs only the largest `top` logits of
//!   each row (greedy and top-k sampling), each rank's best `top` with their token ids. Every other [`Step::matmul`] is row-parallel
//!   and needs no communication.
//!
//! May not: know an architecture (no names, no special cases: those are the `Decoder`'s), or
//! own a KV cache (the caller's, through [`KvAccess`]).

pub mod attention;
pub mod matmul;
pub mod parallel;
pub mod scratch;

use tuili_core::pool::split;
use tuili_core::DType;
use tuili_core::{PerThread, ThreadPool};
use tuili_kernels::cpu::Isa;
use tuili_kernels::ops;
use tuili_kernels::types::{dequantize_row, quantize_row};

use crate::batch::{check_spans, span_of, OutRows, SeqSpan};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::shard::part as part_range;
use crate::weights::Matrix;
use tuili_dist::Comm;

pub use attention::{Attend, AttnShape, KvAccess};
use matmul::{matmul, matmul_many, Activations, RowScratch};
pub use parallel::threads_for;
use parallel::SharedOut;
pub use scratch::Scratch;

/// An architecture's decoder, as the execution layer runs it. Implementations bind their
/// tensors at load time and hold no per-request state.
pub trait Decoder: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// Writes the residual-stream rows of the batch's tokens into `x` (`[n, n_embd]`); token
    /// i belongs to the span that covers it, at its position there.
    fn embed(&self, tokens: &[u32], spans: &[SeqSpan], x: &mut [f32]) -> Result<(), ModelError>;

    /// Runs layer `layer` over the batch: reads and updates `b.x`, the residual stream.
    fn layer(
        &self,
        layer: usize,
        step: &mut Step<'_>,
        b: &mut Buffers<'_>,
    ) -> Result<(), ModelError>;

    /// The final norm of one residual row.
    fn final_norm(&self, x: &[f32], out: &mut [f32]);

    /// The output projection, `[n_vocab, n_embd]` (a tensor-parallel rank: its rows of the
    /// vocabulary, [`crate::shard::part`] of it).
    fn output(&self) -> &Matrix;

    /// Every matrix one decode step reads (the output included; the embedding row aside).
    fn matrices(&self) -> Vec<&Matrix>;

    /// Keeps only layers `r` (a pipeline stage's; [`ModelConfig::keep_layers`]).
    fn keep_layers(&mut self, r: std::ops::Range<usize>);

    /// The most positions a sequence may hold, when the architecture limits them (learned
    /// positions end at the trained context).
    fn max_positions(&self) -> Option<usize> {
        None
    }
}

/// Sees the input of every matrix product a layer makes (a pruning method's calibration:
/// `crate::prune`). Called on the caller's thread, before the product.
pub trait Observe: Send + Sync {
    /// `x` (`[n, cols]`): the rows that each of `ws` (matrices that share this input, such
    /// as Q, K and V) multiplies.
    fn input(&mut self, ws: &[&Matrix], x: &[f32], n: usize);
}

/// How a tensor-parallel all-reduce sends each rank's partial sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduce {
    /// As they are: the sums equal one process's but for the order of additions.
    #[default]
    F32,
    /// As Q8_0 blocks (34 bytes per 32 values, not 128; distributed-llama's sync type): a
    /// quarter of the bytes, at the cost of rounding each part to 8 bits per value.
    Q8_0,
}

/// A batch's activations as a layer sees them, each `[n, width]` (n tokens).
pub struct Buffers<'a> {
    /// `[n, n_embd]`: the residual stream.
    pub x: &'a mut [f32],
    /// `[n, n_embd]`: a normed input, or a block's output before it joins the stream.
    pub h: &'a mut [f32],
    /// `[n, n_head · head_dim]`: queries.
    pub q: &'a mut [f32],
    /// `[n, n_head_kv · head_dim]`: keys and values of this batch.
    pub k: &'a mut [f32],
    pub v: &'a mut [f32],
    /// `[n, n_head · head_dim]`: attention output.
    pub att: &'a mut [f32],
    /// `[n, n_ff]`: the MLP's gate and up projections.
    pub gate: &'a mut [f32],
    pub up: &'a mut [f32],
}

/// What a layer can do, for one batch: the execution layer's steps, each run on the pool.
pub struct Step<'a> {
    pool: &'a ThreadPool,
    isa: Isa,
    spans: &'a [SeqSpan],
    n: usize,
    acts: &'a mut Activations,
    tmp: &'a RowScratch,
    scores: &'a PerThread<Vec<f32>>,
    kv: &'a mut dyn KvAccess,
    attn: AttnShape,
    comm: &'a dyn Comm,
    /// The all-reduce's encoding and scratch (every rank's part).
    how: Reduce,
    reduce: &'a mut Vec<f32>,
    reduce_q: &'a mut Vec<u8>,
    observe: Option<&'a mut (dyn Observe + 'static)>,
}

impl Step<'_> {
    /// Tokens in the batch.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The kernel set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The position of batch token `t` in its own sequence.
    pub fn pos(&self, t: usize) -> usize {
        let s = &self.spans[span_of(self.spans, t)];
        s.pos0 + t - s.start
    }

    /// y = x · Wᵀ for the batch (`x` `[n, cols]`, `y` `[n, rows]`); `x` is a new input.
    pub fn matmul(&mut self, w: &Matrix, x: &[f32], y: &mut [f32]) {
        if let Some(o) = self.observe.as_deref_mut() {
            o.input(&[w], x, self.n);
        }
        self.acts.invalidate();
        matmul(self.pool, self.isa, w, x, self.n, y, self.acts, self.tmp);
    }

    /// Several products of the same new input, `ys[i] = x · ws[i]ᵀ`, in one parallel region
    /// where that pays (Q, K and V; gate and up).
    pub fn matmul_many<const K: usize>(
        &mut self,
        ws: [&Matrix; K],
        x: &[f32],
        ys: [&mut [f32]; K],
    ) {
        if let Some(o) = self.observe.as_deref_mut() {
            o.input(&ws, x, self.n);
        }
        self.acts.invalidate();
        matmul_many(self.pool, self.isa, ws, x, self.n, ys, self.acts, self.tmp);
    }

    /// The product that closes a block, whose output joins the residual stream (attention
    /// output, MLP down): y = x · Wᵀ. Under tensor parallelism W is split along its input
    /// columns and each rank's `y` is a partial sum; here they are added up (in rank order, so
    /// every rank holds the same bits).
    pub fn matmul_to_residual(
        &mut self,
        w: &Matrix,
        x: &[f32],
        y: &mut [f32],
    ) -> Result<(), ModelError> {
        self.matmul(w, x, y);
        if self.comm.size() > 1 {
            match self.how {
                Reduce::F32 => self.comm.all_reduce_sum(y, self.reduce)?,
                Reduce::Q8_0 => all_reduce_q8_0(self.comm, y, self.reduce_q, self.reduce)?,
            }
        }
        Ok(())
    }

    /// Stores this layer's keys and values in the cache, then computes causal attention of
    /// the queries into `att`; `window` limits each query to its last positions.
    pub fn attention(
        &mut self,
        layer: usize,
        window: Option<usize>,
        k: &[f32],
        v: &[f32],
        q: &[f32],
        att: &mut [f32],
    ) {
        if self.attn.n_head_kv == 0 {
            // A tensor-parallel rank beyond the model's KV heads: no attention of its own.
            return;
        }
        self.kv.store(layer, self.spans, k, v);
        let a = Attend {
            shape: &self.attn,
            window,
            isa: self.isa,
            layer,
            spans: self.spans,
            q,
            pool: self.pool,
            scores: self.scores,
        };
        self.kv.attend(&a, att);
    }

    /// Runs `f(t, rows)` for every token t of the batch, `rows` being token t's rows of
    /// `bufs` (each buffer `[n, width]`); each token on one thread. On the pool's threads
    /// when the batch has work enough to pay for waking them (`n · width` values, by
    /// [`threads_for`]: prompt batches), else on this one.
    pub fn each_token<const K: usize>(
        &self,
        width: usize,
        bufs: [&mut [f32]; K],
        f: &(dyn Fn(usize, [&mut [f32]; K]) + Sync),
    ) {
        let n = self.n;
        let rows = bufs.map(|b| {
            let w = b.len() / n.max(1);
            (SharedOut::new(b), w)
        });
        let threads = threads_for(self.pool, n * width);
        self.pool.run_with(threads, &|i, nt| {
            for t in split(n, i, nt, 1) {
                // SAFETY: token t is handed to this worker alone (`split` partitions the
                // tokens), so its rows are touched by this thread only; the buffers are
                // borrowed mutably for the whole call, and `slice` checks the bounds.
                let r = std::array::from_fn(|j| unsafe {
                    let (buf, w) = &rows[j];
                    buf.slice(t * w..(t + 1) * w)
                });
                f(t, r);
            }
        });
    }
}

/// How a pipeline stage's result moves on ([`forward`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Within the call: the residual stream goes to the next stage, and the last stage's
    /// logits to every stage; every stage returns the logits. Every rank can then sample the
    /// same token (run, chat, perplexity, bench).
    Lockstep,
    /// By the caller: the call returns what this stage hands on — on a stage before the
    /// last, the residual stream after its layers (`[n, n_embd]`); on the last, the logits
    /// (or, when `top` asks for fewer, their candidates: [`packs_top`], [`pack_top`]).
    /// With one stage, the same as `Lockstep`.
    Caller,
}

/// Runs a batch of several sequences' tokens (`spans` say whose and at which positions)
/// through `dec`: every weight matrix is read once for the whole batch. Keys and values go to
/// `kv`; returns the logits of the `out` tokens (`[out.len(), n_vocab]`). `max_ctx` bounds
/// the positions any sequence reaches (scratch sizing). Under pipeline parallelism,
/// `handoff` says who passes the result on. `top`: only the largest `top` logits of each row
/// must be right, the rest may read −∞ (fewer bytes gathered under tensor parallelism, and
/// sent by a pipeline's last stage: with [`Handoff::Caller`] it then returns the candidates
/// as [`pack_top`] writes them, when [`packs_top`] says so). `observe` sees every layer's
/// matrix inputs.
#[allow(clippy::too_many_arguments)]
pub fn forward<'s>(
    dec: &dyn Decoder,
    comm: &dyn Comm,
    how: Reduce,
    pp: &dyn Comm,
    handoff: Handoff,
    top: Option<usize>,
    isa: Isa,
    tokens: &[u32],
    spans: &[SeqSpan],
    kv: &mut dyn KvAccess,
    max_ctx: usize,
    scratch: &'s mut Scratch,
    out: OutRows,
    pool: &ThreadPool,
    observe: Option<&mut (dyn Observe + 'static)>,
) -> Result<&'s [f32], ModelError> {
    let cfg = dec.config();
    let ctx = check_spans(cfg, tokens, spans, &out)?;
    kv.check(cfg, spans)?;
    if let Some(limit) = dec.max_positions() {
        if ctx > limit {
            return Err(ModelError::Kv(tuili_kv::KvError::Full {
                needed: ctx,
                capacity: limit,
            }));
        }
    }
    let n = tokens.len();
    let n_logits = out.len();
    scratch.ensure(
        cfg,
        n,
        n_logits,
        pool.n_threads(),
        max_ctx.max(ctx),
        comm.size(),
    );
    let (e, qd, kvd, ff, nv) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff, cfg.n_vocab);
    let Scratch {
        x,
        h,
        q,
        k,
        v,
        att,
        gate,
        up,
        logits,
        acts,
        tmp,
        scores,
        reduce,
        reduce_q,
        part_logits,
        top_ids,
        packed,
        ..
    } = scratch;
    let (Some(tmp), Some(scores)) = (tmp.as_ref(), scores.as_ref()) else {
        unreachable!("Scratch::ensure fills both")
    };
    // Pipeline parallelism: the first stage embeds, the others receive the residual stream
    // from the stage before theirs; all but the last send theirs on, and the last stage's
    // logits go to every stage.
    let (stage, last) = (pp.rank(), pp.size() - 1);
    if stage == 0 {
        dec.embed(tokens, spans, &mut x[..n * e])?;
    } else {
        pp.recv_f32(stage - 1, &mut x[..n * e])?;
    }
    let mut step = Step {
        pool,
        isa,
        spans,
        n,
        acts,
        tmp,
        scores,
        kv,
        attn: AttnShape::of(cfg),
        comm,
        how,
        reduce,
        reduce_q,
        observe,
    };
    let mut b = Buffers {
        x: &mut x[..n * e],
        h: &mut h[..n * e],
        q: &mut q[..n * qd],
        k: &mut k[..n * kvd],
        v: &mut v[..n * kvd],
        att: &mut att[..n * qd],
        gate: &mut gate[..n * ff],
        up: &mut up[..n * ff],
    };
    for layer in 0..cfg.n_layer {
        dec.layer(layer, &mut step, &mut b)?;
    }
    if stage < last {
        if handoff == Handoff::Caller {
            return Ok(&x[..n * e]);
        }
        pp.send_f32(stage + 1, &x[..n * e])?;
    }
    if n_logits == 0 {
        return Ok(&logits[..0]);
    }
    let lo = &mut logits[..n_logits * nv];
    if stage == last {
        // The final norm of the `out` rows, then the output matrix (and a soft cap).
        for i in 0..n_logits {
            let r = out.get(i);
            dec.final_norm(&x[r * e..(r + 1) * e], &mut h[i * e..(i + 1) * e]);
        }
        step.acts.invalidate();
        let output = dec.output();
        // Under tensor parallelism this rank's rows of the vocabulary, gathered after.
        let tp = comm.size();
        let local = if tp == 1 {
            &mut *lo
        } else {
            &mut part_logits[..n_logits * output.rows]
        };
        matmul(
            pool,
            isa,
            output,
            &h[..n_logits * e],
            n_logits,
            local,
            step.acts,
            tmp,
        );
        // Element-wise, so on each rank's part before the gather (−∞ stays −∞ after it).
        if let Some(c) = cfg.final_softcap {
            ops::softcap(local, c);
        }
        if tp > 1 {
            let g = VocabGather {
                comm,
                n: n_logits,
                nv,
                rows: output.rows,
                part: part_logits,
                all: step.reduce,
                ids: top_ids,
            };
            // The same choice on every rank (whatever its share of the vocabulary).
            match top.filter(|&c| c > 0 && c * 2 < nv.div_ceil(tp)) {
                Some(c) => g.best(c, lo)?,
                None => g.whole(lo)?,
            }
        }
    }
    if last > 0 {
        // The last stage's logits go on whole, or, when only the largest `top` of each row
        // matter, as those candidates (8 bytes each instead of 4 · n_vocab per row).
        match (handoff, packs_top(top, nv)) {
            (Handoff::Lockstep, None) => pp.broadcast_f32(last, lo)?,
            (Handoff::Lockstep, Some(c)) => {
                let p = grow(packed, n_logits * 2 * c);
                if stage == last {
                    pack_top(lo, nv, c, top_ids, p);
                }
                pp.broadcast_f32(last, p)?;
                // The last stage too, so that every stage samples from the same bits.
                unpack_top(p, nv, c, lo);
            }
            (Handoff::Caller, Some(c)) if stage == last => {
                let p = grow(packed, n_logits * 2 * c);
                pack_top(lo, nv, c, top_ids, p);
                return Ok(p);
            }
            (Handoff::Caller, _) => {}
        }
    }
    Ok(&logits[..n_logits * nv])
}

/// `v[..len]`, grown if shorter.
fn grow(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// How many candidates per row a pipeline's last stage sends for `top` ([`forward`]), or
/// `None` when it sends whole rows of logits (`top` absent, or not fewer bytes).
pub fn packs_top(top: Option<usize>, n_vocab: usize) -> Option<usize> {
    top.filter(|&c| c > 0 && 2 * c < n_vocab)
}

/// The indices of the `c` largest values of `row` into `ids[..c]` (in no order); ties go to
/// the lower index, as a sort of the whole row would break them. `ids` is scratch.
fn best_ids(row: &[f32], c: usize, ids: &mut Vec<u32>) {
    ids.clear();
    ids.extend(0..row.len() as u32);
    ids.select_nth_unstable_by(c - 1, |&a, &b| {
        row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
    });
    ids.truncate(c);
}

/// Each row of `lo` (`[n, nv]`)'s `c` largest logits with their token ids, as pairs (value,
/// id's bits as f32) in `out` (`[n, 2c]`). `ids` is scratch.
pub fn pack_top(lo: &[f32], nv: usize, c: usize, ids: &mut Vec<u32>, out: &mut [f32]) {
    for (row, pairs) in lo.chunks_exact(nv).zip(out.chunks_exact_mut(2 * c)) {
        best_ids(row, c, ids);
        for (pair, &id) in pairs.chunks_exact_mut(2).zip(ids.iter()) {
            pair[0] = row[id as usize];
            pair[1] = f32::from_bits(id);
        }
    }
}

/// The inverse of [`pack_top`]: rows of `nv` in `lo` that hold the candidates of `packed`
/// and read −∞ elsewhere.
pub fn unpack_top(packed: &[f32], nv: usize, c: usize, lo: &mut [f32]) {
    lo.fill(f32::NEG_INFINITY);
    for (row, pairs) in lo.chunks_exact_mut(nv).zip(packed.chunks_exact(2 * c)) {
        for pair in pairs.chunks_exact(2) {
            row[pair[1].to_bits() as usize] = pair[0];
        }
    }
}

/// The all-reduce of `y` with each rank's part sent as Q8_0 blocks: every rank dequantizes
/// every part, its own included, and adds them in rank order, so all hold the same bits.
/// `y.len()` is a multiple of 32 (rows of `n_embd`, checked at load).
fn all_reduce_q8_0(
    comm: &dyn Comm,
    y: &mut [f32],
    bytes: &mut Vec<u8>,
    part: &mut Vec<f32>,
) -> Result<(), ModelError> {
    let size = comm.size();
    let len = y.len() / 32 * DType::Q8_0.block_bytes() as usize;
    bytes.resize(len * (size + 1), 0);
    let (mine, all) = bytes.split_at_mut(len);
    quantize_row(DType::Q8_0, y, mine)?;
    comm.all_gather_bytes(mine, all)?;
    part.resize(y.len(), 0.0);
    y.fill(0.0);
    for p in all.chunks_exact(len) {
        dequantize_row(DType::Q8_0, p, part)?;
        for (a, b) in y.iter_mut().zip(part.iter()) {
            *a += b;
        }
    }
    Ok(())
}

/// A tensor-parallel rank's logits of its vocabulary rows, brought together on every rank.
struct VocabGather<'a> {
    comm: &'a dyn Comm,
    /// Rows of logits, and the vocabulary.
    n: usize,
    nv: usize,
    /// This rank's logits, `part[..n · rows]` (`[n, rows]`); scratch after the gather.
    rows: usize,
    part: &'a mut [f32],
    /// Every rank's parts (grown as needed).
    all: &'a mut Vec<f32>,
    /// The candidates' scratch: token indices of one row.
    ids: &'a mut Vec<u32>,
}

impl VocabGather<'_> {
    /// Every rank's `mine` (`n` rows of `width`), all-gathered into `all`.
    fn exchange(&mut self, width: usize) -> Result<&[f32], ModelError> {
        let len = self.comm.size() * self.n * width;
        if self.all.len() < len {
            self.all.resize(len, 0.0);
        }
        let all = &mut self.all[..len];
        self.comm.all_gather(&self.part[..self.n * width], all)?;
        Ok(all)
    }

    /// Whole rows of `nv` in `lo`.
    fn whole(mut self, lo: &mut [f32]) -> Result<(), ModelError> {
        let (n, nv, rows, size) = (self.n, self.nv, self.rows, self.comm.size());
        // Equal parts for the all-gather: rows of `width`, padded.
        let width = nv.div_ceil(size);
        for i in (0..n).rev() {
            self.part.copy_within(i * rows..(i + 1) * rows, i * width);
        }
        let all = self.exchange(width)?;
        for r in 0..size {
            let v = part_range(nv, r, size);
            let src = &all[r * n * width..(r + 1) * n * width];
            for i in 0..n {
                lo[i * nv + v.start..i * nv + v.end]
                    .copy_from_slice(&src[i * width..i * width + v.len()]);
            }
        }
        Ok(())
    }

    /// Only every rank's `c` largest of each row (2c ≤ rows), with their token ids, into rows
    /// of `nv` in `lo` that read −∞ elsewhere: 8·c bytes per row and rank instead of
    /// 4·nv/size. Ties go to the lower id, as one process's sort would break them.
    fn best(mut self, c: usize, lo: &mut [f32]) -> Result<(), ModelError> {
        let (n, nv, rows) = (self.n, self.nv, self.rows);
        let first = part_range(nv, self.comm.rank(), self.comm.size()).start;
        // Row i's c pairs (value, id as f32 bits) overwrite the start of row i's own logits
        // (2c ≤ rows: rows after it are untouched), once its candidates are chosen.
        let width = 2 * c;
        for i in 0..n {
            let row = i * rows;
            best_ids(&self.part[row..row + rows], c, self.ids);
            // Every value read before any pair is written (they may sit where pairs go).
            for j in 0..c {
                let v = self.part[row + self.ids[j] as usize];
                self.ids.push(v.to_bits());
            }
            for j in 0..c {
                self.part[i * width + 2 * j] = f32::from_bits(self.ids[c + j]);
                self.part[i * width + 2 * j + 1] = f32::from_bits(first as u32 + self.ids[j]);
            }
        }
        let all = self.exchange(width)?;
        lo.fill(f32::NEG_INFINITY);
        for src in all.chunks_exact(n * width) {
            for (i, row) in src.chunks_exact(width).enumerate() {
                for pair in row.chunks_exact(2) {
                    lo[i * nv + pair[1].to_bits() as usize] = pair[0];
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The candidates a pipeline's last stage sends: each row's largest, ties to the lower id
    /// (as a sort of the row would have it), everything else −∞ once unpacked.
    #[test]
    fn candidates_round_trip() {
        let nv = 7;
        let lo = [
            0.5,
            3.0,
            -1.0,
            3.0,
            2.0,
            f32::NEG_INFINITY,
            0.0, // row 0: a tie at 3.0
            -2.0,
            -2.0,
            -2.0,
            -2.0,
            -2.0,
            -2.0,
            9.0, // row 1: a tie at the cut
        ];
        let c = packs_top(Some(3), nv).unwrap();
        assert_eq!(
            packs_top(Some(4), nv),
            None,
            "8 bytes each: no fewer than 4 · 7"
        );
        assert_eq!(packs_top(None, nv), None);
        assert_eq!(packs_top(Some(0), nv), None);
        let (mut ids, mut packed, mut out) = (Vec::new(), vec![0.0; 2 * 2 * c], vec![1.0; 2 * nv]);
        pack_top(&lo, nv, c, &mut ids, &mut packed);
        unpack_top(&packed, nv, c, &mut out);
        let ninf = f32::NEG_INFINITY;
        assert_eq!(
            out,
            [
                ninf, 3.0, ninf, 3.0, 2.0, ninf, ninf, //
                -2.0, -2.0, ninf, ninf, ninf, ninf, 9.0,
            ]
        );
    }
}
