//! The activation buffers of a forward pass, reused across calls so that the decode loop does
//! not allocate (grown to the largest batch seen, never shrunk).

use tuili_core::PerThread;

use crate::config::ModelConfig;
use crate::exec::matmul::{Activations, RowScratch};

/// Activation buffers for a batch of up to `cap` tokens. The caller owns one per concurrent
/// forward pass (a request, the serving loop) and hands it to every call.
#[derive(Default)]
pub struct Scratch {
    pub(crate) cap: usize,
    pub(crate) x: Vec<f32>,      // [cap, n_embd] residual stream
    pub(crate) h: Vec<f32>,      // [cap, n_embd] normed input / projection output
    pub(crate) q: Vec<f32>,      // [cap, q_dim]
    pub(crate) k: Vec<f32>,      // [cap, kv_dim]
    pub(crate) v: Vec<f32>,      // [cap, kv_dim]
    pub(crate) att: Vec<f32>,    // [cap, q_dim]
    pub(crate) gate: Vec<f32>,   // [cap, n_ff]
    pub(crate) up: Vec<f32>,     // [cap, n_ff]
    pub(crate) logits: Vec<f32>, // [cap or 1, n_vocab]
    pub(crate) acts: Activations,
    /// Per worker: a dequantized weight row, tiles of results.
    pub(crate) tmp: Option<RowScratch>,
    /// Per worker: attention scores over the context.
    pub(crate) scores: Option<PerThread<Vec<f32>>>,
    /// Tensor parallelism: every rank's part of an all-reduce or of the logits.
    pub(crate) reduce: Vec<f32>,
    /// A compressed all-reduce: this rank's blocks, then every rank's.
    pub(crate) reduce_q: Vec<u8>,
    /// Tensor parallelism: one row's candidate token ids, then their values' bits.
    pub(crate) top_ids: Vec<u32>,
    /// Tensor parallelism: this rank's rows of the logits, `[cap or 1, ⌈n_vocab / ranks⌉]`.
    pub(crate) part_logits: Vec<f32>,
    /// Pipeline parallelism: the last stage's candidates, `[n_logits, 2 · top]`
    /// ([`super::pack_top`]), grown as needed.
    pub(crate) packed: Vec<f32>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// Grows the buffers for a batch of `n` tokens, `n_logits` rows of logits, `threads`
    /// workers and contexts of up to `n_ctx` positions.
    pub(crate) fn ensure(
        &mut self,
        cfg: &ModelConfig,
        n: usize,
        n_logits: usize,
        threads: usize,
        n_ctx: usize,
        ranks: usize,
    ) {
        if ranks > 1 && self.part_logits.len() < n_logits * cfg.n_vocab.div_ceil(ranks) {
            self.part_logits
                .resize(n_logits * cfg.n_vocab.div_ceil(ranks), 0.0);
        }
        if self.tmp.as_ref().is_none_or(|t| t.len() < threads) {
            self.tmp = Some(PerThread::new(threads, Default::default));
            self.scores = Some(PerThread::new(threads, Vec::new));
        }
        if let Some(sc) = self.scores.as_mut() {
            // Scores of the query heads that share one KV head ([group, n_ctx]). A tile of
            // prompt tokens needs more (`attn::attend_tile_scratch`): attention grows the
            // buffer to what a prompt needs when one comes, so that decoding alone does not
            // hold it.
            // (None for a tensor-parallel rank without heads.)
            let need = n_ctx * cfg.n_head.checked_div(cfg.n_head_kv).unwrap_or(0);
            for v in sc.iter_mut() {
                if v.len() < need {
                    v.resize(need, 0.0);
                }
            }
        }
        if n > self.cap {
            self.cap = n;
            self.x.resize(n * cfg.n_embd, 0.0);
            self.h.resize(n * cfg.n_embd, 0.0);
            self.q.resize(n * cfg.q_dim(), 0.0);
            self.k.resize(n * cfg.kv_dim(), 0.0);
            self.v.resize(n * cfg.kv_dim(), 0.0);
            self.att.resize(n * cfg.q_dim(), 0.0);
            self.gate.resize(n * cfg.n_ff, 0.0);
            self.up.resize(n * cfg.n_ff, 0.0);
        }
        if self.logits.len() < n_logits * cfg.n_vocab {
            self.logits.resize(n_logits * cfg.n_vocab, 0.0);
        }
    }
}
