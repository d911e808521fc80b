//! Attention over a KV target: the batch's keys and values stored, then each query token
//! attends to its own sequence's positions, split across the pool's threads by (KV head,
//! token) — or by (KV head, tile of eight prompt tokens), which reads each cached row once
//! per tile.
//!
//! [`KvAccess`] is the KV side as a forward pass sees it: one virtual call per layer (store,
//! attend), with the element type and layout of the cache (`KvTarget`: contiguous f32, paged
//! F32/F16/Q8_0) compiled into the attention loops behind it. [`AttnShape`] carries the head
//! counts, so that a tensor-parallel rank that holds whole GQA groups runs this unchanged with
//! its own counts.

use tuili_core::pool::split;
use tuili_core::{PerThread, ThreadPool};
use tuili_kernels::attn;
use tuili_kernels::cpu::Isa;

use tuili_kv::PagedStoreBatch;

use crate::batch::{span_of, KvTarget, SeqSpan};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::exec::parallel::{threads_for, SharedOut};

/// Prompt tokens per attention work item (`attn::attend_tile`): their query heads are the
/// lanes of its vectors (eight per vector: a tile of eight fills one even without grouped
/// heads), and each key and value row is converted and read once for all of them.
const TILE: usize = 8;

/// One layer's attention heads as this process computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    /// Query heads; a multiple of `n_head_kv` (each KV head serves a group of them).
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Multiplies q·k: 1/√head_dim unless the model says otherwise (Gemma 2).
    pub scale: f32,
    /// Scores become c·tanh(s/c) before the softmax when c > 0 (Gemma 2); 0 = off.
    pub softcap: f32,
}

impl AttnShape {
    /// All of a model's heads.
    pub fn of(cfg: &ModelConfig) -> AttnShape {
        AttnShape {
            n_head: cfg.n_head,
            n_head_kv: cfg.n_head_kv,
            head_dim: cfg.head_dim,
            scale: cfg.attn_scale.unwrap_or(1.0 / (cfg.head_dim as f32).sqrt()),
            softcap: cfg.attn_softcap.unwrap_or(0.0),
        }
    }
}

/// The KV cache of a batch as the execution layer uses it: any [`KvTarget`] is one, so that
/// a forward pass takes `&mut dyn KvAccess` and the attention loops are still compiled for
/// the target's element type.
pub trait KvAccess: Sync {
    /// Checks that the cache has this model's shape and room for every span.
    fn check(&self, cfg: &ModelConfig, spans: &[SeqSpan]) -> Result<(), ModelError>;

    /// Stores the batch's keys and values of `layer` (`[n, kv_dim]` each, in span order).
    fn store(&mut self, layer: usize, spans: &[SeqSpan], k: &[f32], v: &[f32]);

    /// Causal attention of `a`'s queries into `att` (`[n, n_head · head_dim]`), after
    /// [`KvAccess::store`] of the same layer.
    fn attend(&self, a: &Attend<'_>, att: &mut [f32]);
}

/// One layer's attention, everything but the cache and the output.
pub struct Attend<'a> {
    pub shape: &'a AttnShape,
    /// The last positions each query sees, when the layer slides.
    pub window: Option<usize>,
    pub isa: Isa,
    pub layer: usize,
    pub spans: &'a [SeqSpan],
    /// `[n, n_head · head_dim]`.
    pub q: &'a [f32],
    pub pool: &'a ThreadPool,
    /// Per worker: the scores of a head group over the context.
    pub scores: &'a PerThread<Vec<f32>>,
}

impl<C: KvTarget + Sync> KvAccess for C {
    fn check(&self, cfg: &ModelConfig, spans: &[SeqSpan]) -> Result<(), ModelError> {
        KvTarget::check(self, cfg, spans)
    }

    fn store(&mut self, layer: usize, spans: &[SeqSpan], k: &[f32], v: &[f32]) {
        let n: usize = spans.iter().map(|s| s.len).sum();
        let kvd = k.len() / n.max(1);
        for (si, s) in spans.iter().enumerate() {
            let r = s.start * kvd..(s.start + s.len) * kvd;
            self.write(layer, si, s.pos0, &k[r.clone()], &v[r]);
        }
    }

    fn attend(&self, a: &Attend<'_>, att: &mut [f32]) {
        causal_attention(a, self, att);
    }
}

/// The paged pool of the element type chosen at run time: one match per call, then the typed
/// pool's own attention.
impl KvAccess for PagedStoreBatch<'_> {
    fn check(&self, cfg: &ModelConfig, spans: &[SeqSpan]) -> Result<(), ModelError> {
        self.typed().check(cfg, spans)
    }

    fn store(&mut self, layer: usize, spans: &[SeqSpan], k: &[f32], v: &[f32]) {
        self.typed_mut().store(layer, spans, k, v)
    }

    fn attend(&self, a: &Attend<'_>, att: &mut [f32]) {
        self.typed().attend(a, att)
    }
}

/// The typed batch inside a [`PagedStoreBatch`].
trait Typed {
    fn typed(&self) -> &dyn KvAccess;
    fn typed_mut(&mut self) -> &mut dyn KvAccess;
}

impl Typed for PagedStoreBatch<'_> {
    fn typed(&self) -> &dyn KvAccess {
        match self {
            PagedStoreBatch::F32(b) => b,
            PagedStoreBatch::F16(b) => b,
            PagedStoreBatch::Q8_0(b) => b,
        }
    }

    fn typed_mut(&mut self) -> &mut dyn KvAccess {
        match self {
            PagedStoreBatch::F32(b) => b,
            PagedStoreBatch::F16(b) => b,
            PagedStoreBatch::Q8_0(b) => b,
        }
    }
}

/// Causal attention of the batch's queries against the cache (which already holds this
/// batch's keys and values): token i of span s, at position p, attends to positions 0..=p of
/// its own sequence (the last `window` of them when the layer slides). Work is split across
/// the pool's threads.
fn causal_attention<C: KvTarget + Sync>(call: &Attend<'_>, cache: &C, att: &mut [f32]) {
    let Attend {
        shape: a,
        window,
        isa,
        layer,
        spans,
        q,
        pool,
        scores,
    } = *call;
    let (hd, qd) = (a.head_dim, a.n_head * a.head_dim);
    let group = a.n_head / a.n_head_kv;
    let n: usize = spans.iter().map(|s| s.len).sum();
    let (scale, softcap) = (a.scale, a.softcap);
    let out = SharedOut::new(att);
    let ctx: usize = spans.iter().map(|s| s.len * (s.pos0 + s.len)).sum();
    let threads = threads_for(pool, a.n_head * ctx * hd);
    // Without a sliding window, consecutive tokens of a prompt go in tiles: each key and
    // value row is then read once for all of a tile's tokens (`attend_tile`; token by token
    // gives the same to rounding).
    if window.is_none() && spans.iter().any(|s| s.len > 1) {
        let tile = TILE;
        let tiles: usize = spans.iter().map(|s| s.len.div_ceil(tile)).sum();
        let items = a.n_head_kv * tiles;
        pool.run_with(threads, &|wi, nt| {
            // SAFETY: worker wi is the only user of its slot.
            let scores = unsafe { scores.get(wi) };
            for item in split(items, wi, nt, 1) {
                let (kvh, mut k) = (item / tiles, item % tiles);
                // The span of tile k, and the tile's first token.
                let mut si = 0;
                while k >= spans[si].len.div_ceil(tile) {
                    k -= spans[si].len.div_ceil(tile);
                    si += 1;
                }
                let s = spans[si];
                let i0 = s.start + k * tile;
                let cnt = tile.min(s.start + s.len - i0);
                let rows = cache.rows(layer, si, s.pos0 + s.len);
                let len0 = s.pos0 + (i0 - s.start) + 1;
                // Grown once to what the longest prompt so far needs (prompts only).
                let need =
                    attn::attend_tile_scratch(cnt, group, hd, len0).max(group * (len0 + cnt));
                if scores.len() < need {
                    scores.resize(need, 0.0);
                }
                let heads = kvh * group * hd..(kvh + 1) * group * hd;
                let qs: [&[f32]; TILE] = std::array::from_fn(|j| {
                    let i = i0 + j.min(cnt - 1);
                    &q[i * qd + heads.start..i * qd + heads.end]
                });
                let mut os: [&mut [f32]; TILE] = Default::default();
                for (j, o) in os.iter_mut().enumerate().take(cnt) {
                    let i = i0 + j;
                    // SAFETY: token i's heads of KV head kvh are written by the worker that
                    // owns this tile only; tokens of a tile are distinct.
                    *o = unsafe { out.slice(i * qd + heads.start..i * qd + heads.end) };
                }
                // A lone token (a decode step beside prompts in a mixed batch, or a prompt's
                // last) keeps the per-token kernel: in a tile it would fill group/8 of the
                // lanes (one eighth without grouped heads).
                let tiled = softcap == 0.0
                    && cnt > 1
                    && attn::attend_tile(
                        isa,
                        &qs[..cnt],
                        &rows,
                        kvh,
                        hd,
                        len0,
                        scale,
                        scores,
                        &mut os[..cnt],
                    );
                if !tiled {
                    // One token, a head size the tile kernel does not take, or a soft cap
                    // (Gemma 2).
                    for (j, o) in os.iter_mut().enumerate().take(cnt) {
                        attn::attend_group(
                            isa,
                            qs[j],
                            &rows,
                            kvh,
                            hd,
                            0,
                            len0 + j,
                            scale,
                            softcap,
                            scores,
                            o,
                        );
                    }
                }
            }
        });
        return;
    }
    // Work items: (KV head, token). The `group` query heads that share a KV head are done
    // together, so each key and value row is read once for all of them.
    let items = a.n_head_kv * n;
    pool.run_with(threads, &|wi, nt| {
        // SAFETY: worker wi is the only user of its slot.
        let scores = unsafe { scores.get(wi) };
        for item in split(items, wi, nt, 1) {
            let (kvh, i) = (item / n, item % n);
            let si = span_of(spans, i);
            let s = spans[si];
            // Causal: positions 0..=p; a sliding window keeps the last `w` of them.
            let len = s.pos0 + (i - s.start) + 1;
            let start = window.map_or(0, |w| len.saturating_sub(w));
            let rows = cache.rows(layer, si, s.pos0 + s.len);
            let heads = kvh * group..(kvh + 1) * group;
            // SAFETY: the heads of KV head kvh for token i are written by the worker that
            // owns item (kvh, i) only; the range is contiguous (heads of a group are
            // adjacent).
            let o = unsafe { out.slice(i * qd + heads.start * hd..i * qd + heads.end * hd) };
            attn::attend_group(
                isa,
                &q[i * qd + heads.start * hd..i * qd + heads.end * hd],
                &rows,
                kvh,
                hd,
                start,
                len,
                scale,
                softcap,
                scores,
                o,
            );
        }
    });
}
