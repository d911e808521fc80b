//! What a forward pass over several sequences at once needs to know: which tokens of the
//! batch belong to which sequence and at which positions, where each sequence's keys and
//! values live, and which tokens' logits to produce.
//!
//! The weights are read once per batch whatever it holds: one prompt (prefill), one token of
//! each of many sequences (a batched decode step), or a mixture (chunked prefill next to
//! decodes). Only RoPE, the cache writes and attention look at the sequence a token belongs
//! to.

use std::ops::Range;

use tuili_kernels::attn::{KvElem, KvRows, Paged, Segmented};
use tuili_kv::{KvCache, PagedBatch};

use crate::config::ModelConfig;
use crate::error::ModelError;

/// Tokens `start..start + len` of the batch belong to one sequence, at its positions
/// `pos0..pos0 + len`; its cache holds positions `0..pos0` already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    pub start: usize,
    pub len: usize,
    pub pos0: usize,
}

/// Which positions of a one-sequence batch get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token (generation).
    Last,
    /// Every token (perplexity, speculative checks).
    All,
    /// None (a prompt chunk that is not the last).
    None,
    /// The last token's, of which only the `c` largest must be right (the rest may read
    /// −∞): what greedy or top-k sampling reads. Under tensor parallelism only each rank's
    /// best `c` are gathered; alone, the same as `Last`.
    LastTop(usize),
}

impl Logits {
    /// How many of each row's largest logits are needed (`None`: all of them).
    pub fn top(self) -> Option<usize> {
        match self {
            Logits::LastTop(c) => Some(c),
            _ => None,
        }
    }

    /// The batch rows whose logits this asks for, in a batch of `n` (n ≥ 1).
    pub fn rows(self, n: usize) -> OutRows<'static> {
        OutRows::Range(match self {
            Logits::All => 0..n,
            Logits::Last | Logits::LastTop(_) => n.saturating_sub(1)..n,
            Logits::None => n..n,
        })
    }
}

/// The tokens whose logits a batch returns, in this order.
#[derive(Debug, Clone)]
pub enum OutRows<'a> {
    Range(Range<usize>),
    List(&'a [usize]),
}

impl OutRows<'_> {
    pub fn len(&self) -> usize {
        match self {
            OutRows::Range(r) => r.len(),
            OutRows::List(l) => l.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> usize {
        match self {
            OutRows::Range(r) => r.start + i,
            OutRows::List(l) => l[i],
        }
    }
}

/// Where the sequences of a batch keep their keys and values.
pub trait KvTarget {
    /// The rows of one layer of one sequence, by position.
    type Rows<'a>: KvRows + Sync
    where
        Self: 'a;

    /// Checks that the cache has this model's shape and room for every span.
    fn check(&self, cfg: &ModelConfig, spans: &[SeqSpan]) -> Result<(), ModelError>;

    /// Stores key and value rows (`[n, kv_dim]` each) of sequence `seq` (its index among the
    /// spans) at positions `pos..pos + n` of `layer`.
    fn write(&mut self, layer: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]);

    /// Layer `layer` of sequence `seq`, positions `0..len`.
    fn rows(&self, layer: usize, seq: usize, len: usize) -> Self::Rows<'_>;
}

/// One contiguous (possibly forked) cache, for a batch of one sequence.
pub struct Contiguous<'a> {
    pub kv: &'a mut KvCache,
    /// KV heads per row (the cache knows only the row width).
    pub n_kv_head: usize,
}

impl KvTarget for Contiguous<'_> {
    type Rows<'b>
        = Segmented<'b>
    where
        Self: 'b;

    fn check(&self, cfg: &ModelConfig, spans: &[SeqSpan]) -> Result<(), ModelError> {
        let kv = &*self.kv;
        if kv.n_layer() != cfg.n_layer
            || kv.kv_dim() != cfg.kv_dim()
            || self.n_kv_head != cfg.n_head_kv
        {
            return Err(cache_mismatch(kv.n_layer(), kv.kv_dim(), cfg));
        }
        match spans {
            [s] if s.pos0 == kv.len() => Ok(kv.reserve(s.len)?),
            _ => Err(ModelError::BadBatch(
                "a contiguous cache takes one sequence, continuing at its length".into(),
            )),
        }
    }

    fn write(&mut self, layer: usize, _seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (kc, vc) = self.kv.rows_mut(layer, pos, k.len() / self.kv.kv_dim());
        kc.copy_from_slice(k);
        vc.copy_from_slice(v);
    }

    fn rows(&self, layer: usize, _seq: usize, len: usize) -> Segmented<'_> {
        let r = self.kv.layer(layer, len);
        Segmented {
            keys: r.keys,
            values: r.values,
            split: r.split,
            stride: self.kv.kv_dim(),
            hd: self.kv.kv_dim() / self.n_kv_head,
        }
    }
}

impl<T: KvElem> KvTarget for PagedBatch<'_, T> {
    type Rows<'b>
        = Paged<'b, T>
    where
        Self: 'b;

    fn check(&self, cfg: &ModelConfig, spans: &[SeqSpan]) -> Result<(), ModelError> {
        if self.store.n_layer() != cfg.n_layer
            || self.store.kv_dim() != cfg.kv_dim()
            || self.store.head_dim() != cfg.head_dim
        {
            return Err(cache_mismatch(
                self.store.n_layer(),
                self.store.kv_dim(),
                cfg,
            ));
        }
        if self.offsets.len() != spans.len() + 1 {
            return Err(ModelError::BadBatch(format!(
                "{} block tables for {} sequences",
                self.offsets.len().saturating_sub(1),
                spans.len()
            )));
        }
        let bs = self.store.block_size();
        for (i, s) in spans.iter().enumerate() {
            let t = self.table(i);
            if t.len() * bs < s.pos0 + s.len {
                return Err(ModelError::BadBatch(format!(
                    "sequence {i} has {} blocks for {} positions",
                    t.len(),
                    s.pos0 + s.len
                )));
            }
            if let Some(&b) = t.iter().find(|&&b| b as usize >= self.store.n_blocks()) {
                return Err(ModelError::BadBatch(format!("block {b} out of the pool")));
            }
        }
        Ok(())
    }

    fn write(&mut self, layer: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let t = &self.tables[self.offsets[seq]..self.offsets[seq + 1]];
        self.store.write(layer, t, pos, k, v);
    }

    fn rows(&self, layer: usize, seq: usize, _len: usize) -> Paged<'_, T> {
        let (keys, values) = self.store.layer(layer);
        Paged {
            keys,
            values,
            table: self.table(seq),
            block_shift: self.store.block_shift(),
            n_kv_head: self.store.n_kv_head(),
            row: self.store.row(),
        }
    }
}

fn cache_mismatch(layers: usize, dim: usize, cfg: &ModelConfig) -> ModelError {
    ModelError::CacheMismatch {
        cache_layers: layers,
        cache_dim: dim,
        layers: cfg.n_layer,
        dim: cfg.kv_dim(),
    }
}

/// Checks that `spans` cover `0..n_tokens` in order, and the ids are in the vocabulary;
/// returns the longest context a token attends to.
pub(crate) fn check_spans(
    cfg: &ModelConfig,
    tokens: &[u32],
    spans: &[SeqSpan],
    out: &OutRows,
) -> Result<usize, ModelError> {
    if tokens.is_empty() {
        return Err(ModelError::EmptyBatch);
    }
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= cfg.n_vocab) {
        return Err(ModelError::BadToken {
            id,
            n_vocab: cfg.n_vocab,
        });
    }
    let mut next = 0;
    let mut ctx = 0;
    for s in spans {
        if s.start != next || s.len == 0 {
            return Err(ModelError::BadBatch(format!(
                "spans must cover the batch in order: one starts at {} (expected {next}), {} long",
                s.start, s.len
            )));
        }
        next += s.len;
        ctx = ctx.max(s.pos0 + s.len);
    }
    if next != tokens.len() {
        return Err(ModelError::BadBatch(format!(
            "spans cover {next} of {} tokens",
            tokens.len()
        )));
    }
    if (0..out.len()).any(|i| out.get(i) >= tokens.len()) {
        return Err(ModelError::BadBatch("a logits row past the batch".into()));
    }
    Ok(ctx)
}

/// The span that token `i` belongs to (spans sorted by start).
#[inline]
pub(crate) fn span_of(spans: &[SeqSpan], i: usize) -> usize {
    spans.partition_point(|s| s.start <= i) - 1
}
