//! Perplexity as llama.cpp's `llama-perplexity` computes it, and KL divergence against a base
//! model's saved log-probabilities.
//!
//! The text is tokenized once (with BOS if the model adds one) and cut into non-overlapping
//! windows of `n_ctx` tokens; each window runs from an empty cache with its first token
//! replaced by BOS, and only its second half is scored: the logits at positions
//! `n_ctx/2 … n_ctx−2` predict the tokens after them. PPL = exp(mean negative log-likelihood);
//! its ± is the standard error of the mean NLL times PPL, as llama.cpp prints it.
//!
//! Saved log-probabilities (`--save-logits`) are tuili's own format: the magic `TUILILP1`, then
//! `n_ctx`, `n_vocab`, `n_chunk` (u32 LE), the `n_chunk · n_ctx` tokens (u32 LE), then for each
//! scored position the `n_vocab` log-probabilities as f16 LE.

use std::io::{Read, Write};

use half::f16;
use tuili_kv::{KvCache, KvType, PagedStore};
use tuili_model::{Handoff, Logits, Scratch, SeqSpan};

use crate::engine::Engine;
use crate::error::EngineError;

const MAGIC: &[u8; 8] = b"TUILILP1";

/// Settings of a perplexity run.
#[derive(Debug, Clone)]
pub struct PerplexityParams {
    /// Window size in tokens (llama.cpp's `-c`).
    pub n_ctx: usize,
    /// Score at most this many windows (`None`: all that fit).
    pub n_chunks: Option<usize>,
    /// Keys and values in the paged cache of this type (what `tuili serve` uses), instead of
    /// the contiguous F32 cache: measures a cache type's cost in perplexity.
    pub kv_type: Option<KvType>,
}

/// The cache one window runs through.
enum WindowCache {
    Contiguous(KvCache),
    /// A paged pool holding one window, and its block table (blocks 0, 1, …).
    Paged {
        store: PagedStore,
        table: Vec<u32>,
        n_ctx: usize,
    },
}

impl WindowCache {
    fn new(
        cfg: &tuili_model::ModelConfig,
        n_ctx: usize,
        kv_type: Option<KvType>,
    ) -> Result<Self, EngineError> {
        let err = |e: tuili_kv::KvError| EngineError::from(tuili_model::ModelError::from(e));
        let (l, h, d) = (cfg.n_layer, cfg.n_head_kv, cfg.head_dim);
        Ok(match kv_type {
            None => WindowCache::Contiguous(KvCache::new(l, n_ctx, cfg.kv_dim()).map_err(err)?),
            Some(t) => {
                let bs = 16;
                let nb = n_ctx.div_ceil(bs);
                WindowCache::Paged {
                    store: PagedStore::new(t, l, nb, bs, h, d).map_err(err)?,
                    table: (0..nb as u32).collect(),
                    n_ctx,
                }
            }
        })
    }

    /// Runs `tokens` at positions `pos0…` of the window.
    fn forward<'s>(
        &mut self,
        model: &tuili_model::Model,
        tokens: &[u32],
        pos0: usize,
        which: Logits,
        scratch: &'s mut Scratch,
        pool: &tuili_core::ThreadPool,
    ) -> Result<&'s [f32], tuili_model::ModelError> {
        match self {
            WindowCache::Contiguous(kv) => model.forward(tokens, kv, scratch, which, pool),
            WindowCache::Paged {
                store,
                table,
                n_ctx,
            } => {
                let spans = [SeqSpan {
                    start: 0,
                    len: tokens.len(),
                    pos0,
                }];
                let offsets = [0, table.len()];
                model.forward_spans(
                    Handoff::Lockstep,
                    None,
                    tokens,
                    &spans,
                    &mut store.batch(table, &offsets),
                    *n_ctx,
                    scratch,
                    which.rows(tokens.len()),
                    pool,
                )
            }
        }
    }
}

/// Running totals after a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkProgress {
    /// Windows done and in all.
    pub done: usize,
    pub total: usize,
    /// The running PPL estimate.
    pub ppl: f64,
    /// The running mean KL divergence, when comparing against a base.
    pub kld: Option<f64>,
}

/// KL divergence against a base model, as llama.cpp's `--kl-divergence` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct KlStats {
    /// PPL of the base model on the same tokens (from its saved log-probabilities).
    pub ppl_base: f64,
    /// Mean of Σ_v p_base(v) · (log p_base(v) − log p(v)) over the scored tokens.
    pub mean_kld: f64,
    pub kld_stderr: f64,
    /// 99th percentile of the per-token KL divergence.
    pub kld_p99: f64,
    /// Fraction of scored tokens where both models' most likely token is the same.
    pub same_top: f64,
}

/// The result of a perplexity run.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityResult {
    pub n_tokens: usize,
    pub n_chunks: usize,
    /// Tokens scored.
    pub count: usize,
    pub ppl: f64,
    /// Standard error of the estimate (llama.cpp's ±).
    pub ppl_stderr: f64,
    pub kl: Option<KlStats>,
}

/// Where saved base log-probabilities come from.
pub struct KlBase<'a> {
    pub reader: &'a mut dyn Read,
}

fn io_err(what: &str, e: std::io::Error) -> EngineError {
    EngineError::Io(format!("{what}: {e}"))
}

fn read_u32(r: &mut dyn Read, what: &str) -> Result<u32, EngineError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|e| io_err(what, e))?;
    Ok(u32::from_le_bytes(b))
}

impl Engine {
    /// Computes the perplexity of the model on `text`. `save` receives the log-probabilities
    /// of every scored position (for a later KL comparison); `base` supplies a base model's.
    pub fn perplexity(
        &self,
        text: &str,
        params: &PerplexityParams,
        mut save: Option<&mut dyn Write>,
        base: Option<KlBase>,
        on_chunk: &mut dyn FnMut(&ChunkProgress),
    ) -> Result<PerplexityResult, EngineError> {
        let n_ctx = params.n_ctx;
        let cfg = self.model.config();
        let nv = cfg.n_vocab;
        if n_ctx < 4 {
            return Err(EngineError::BadSetting {
                name: "ctx",
                value: n_ctx.to_string(),
                reason: "a perplexity window needs at least 4 tokens".into(),
            });
        }
        if n_ctx > (1 << 20) {
            return Err(EngineError::BadSetting {
                name: "ctx",
                value: n_ctx.to_string(),
                reason: "larger than 1048576".into(),
            });
        }
        let mut tokens = self.tokenizer.encode(text, true, false)?;
        if tokens.len() < 2 * n_ctx {
            return Err(EngineError::BadSetting {
                name: "ctx",
                value: n_ctx.to_string(),
                reason: format!(
                    "the text has {} tokens; perplexity needs at least 2 × the context ({}); use a smaller --ctx or a longer text",
                    tokens.len(),
                    2 * n_ctx
                ),
            });
        }
        let max_chunks = tokens.len() / n_ctx;
        let n_chunk = params.n_chunks.map_or(max_chunks, |c| c.min(max_chunks));
        if n_chunk == 0 {
            return Err(EngineError::BadSetting {
                name: "chunks",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        tokens.truncate(n_chunk * n_ctx);
        let first = n_ctx / 2;
        let per_chunk = n_ctx - 1 - first;

        if let Some(w) = save.as_mut() {
            let mut head = Vec::with_capacity(20 + 4 * tokens.len());
            head.extend_from_slice(MAGIC);
            for v in [n_ctx as u32, nv as u32, n_chunk as u32] {
                head.extend_from_slice(&v.to_le_bytes());
            }
            for &t in &tokens {
                head.extend_from_slice(&t.to_le_bytes());
            }
            w.write_all(&head)
                .map_err(|e| io_err("writing logits", e))?;
        }
        let mut base = match base {
            Some(b) => {
                let mut magic = [0u8; 8];
                b.reader
                    .read_exact(&mut magic)
                    .map_err(|e| io_err("reading the base log-probabilities", e))?;
                if &magic != MAGIC {
                    return Err(EngineError::Io(
                        "the base file is not a tuili log-probability file (--save-logits writes one)".into(),
                    ));
                }
                let (bc, bv, bn) = (
                    read_u32(b.reader, "base header")? as usize,
                    read_u32(b.reader, "base header")? as usize,
                    read_u32(b.reader, "base header")? as usize,
                );
                if bc != n_ctx || bv != nv || bn < n_chunk {
                    return Err(EngineError::Io(format!(
                        "the base was computed with ctx {bc}, vocabulary {bv}, {bn} chunks; this run has ctx {n_ctx}, vocabulary {nv}, {n_chunk} chunks"
                    )));
                }
                let mut raw = vec![0u8; 4 * bn * bc];
                b.reader
                    .read_exact(&mut raw)
                    .map_err(|e| io_err("reading the base tokens", e))?;
                let same = raw
                    .chunks_exact(4)
                    .take(tokens.len())
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .eq(tokens.iter().copied());
                if !same {
                    return Err(EngineError::Io(
                        "the base was computed on different tokens (another text or tokenizer)"
                            .into(),
                    ));
                }
                Some(b.reader)
            }
            None => None,
        };

        let mut scratch = Scratch::new();
        let mut cache = WindowCache::new(cfg, n_ctx, params.kv_type)?;
        let n_batch = self.cfg.n_batch.min(n_ctx);
        let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
        let (mut kld_sum, mut kld2, mut same_top, mut nll_base) = (0f64, 0f64, 0usize, 0f64);
        let mut klds: Vec<f32> = Vec::new();
        // [per_chunk, nv]: the scored rows' logits of one window.
        let mut rows: Vec<f32> = Vec::with_capacity(per_chunk * nv);
        let mut lp = vec![0f32; nv];
        let mut half_row = vec![0u8; 2 * nv];
        let mut base_row = vec![0f32; nv];
        for c in 0..n_chunk {
            let start = c * n_ctx;
            let mut window = tokens[start..start + n_ctx].to_vec();
            if let (true, Some(bos)) = (self.tokenizer.adds_bos(), self.tokenizer.bos()) {
                window[0] = bos;
            }
            if let WindowCache::Contiguous(kv) = &mut cache {
                kv.clear();
            }
            rows.clear();
            for b0 in (0..n_ctx).step_by(n_batch) {
                let b1 = (b0 + n_batch).min(n_ctx);
                // Logits are needed at positions first..n_ctx−1 (the last one predicts past the
                // window and is not scored).
                let which = if b1 <= first {
                    Logits::None
                } else {
                    Logits::All
                };
                let chunk = &window[b0..b1];
                let logits =
                    cache.forward(&self.model, chunk, b0, which, &mut scratch, &self.pool)?;
                if which == Logits::All {
                    for p in b0.max(first)..b1.min(n_ctx - 1) {
                        rows.extend_from_slice(&logits[(p - b0) * nv..(p - b0 + 1) * nv]);
                    }
                }
            }
            for (j, row) in rows.chunks_exact(nv).enumerate() {
                let target = tokens[start + first + j + 1] as usize;
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = max as f64
                    + row
                        .iter()
                        .map(|&l| ((l - max) as f64).exp())
                        .sum::<f64>()
                        .ln();
                let v = lse - row[target] as f64;
                nll += v;
                nll2 += v * v;
                if save.is_some() || base.is_some() {
                    for (o, &l) in lp.iter_mut().zip(row) {
                        *o = (l as f64 - lse) as f32;
                    }
                }
                if let Some(w) = save.as_mut() {
                    for (o, &l) in half_row.chunks_exact_mut(2).zip(&lp) {
                        o.copy_from_slice(&f16::from_f32(l).to_le_bytes());
                    }
                    w.write_all(&half_row)
                        .map_err(|e| io_err("writing logits", e))?;
                }
                if let Some(r) = base.as_mut() {
                    r.read_exact(&mut half_row)
                        .map_err(|e| io_err("reading the base log-probabilities", e))?;
                    for (o, b) in base_row.iter_mut().zip(half_row.chunks_exact(2)) {
                        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                    let mut kld = 0f64;
                    for (&b, &q) in base_row.iter().zip(&lp) {
                        if b > f32::NEG_INFINITY {
                            kld += (b as f64).exp() * (b as f64 - q as f64);
                        }
                    }
                    kld_sum += kld;
                    kld2 += kld * kld;
                    klds.push(kld as f32);
                    nll_base -= base_row[target] as f64;
                    if tuili_sample::argmax(&base_row) == tuili_sample::argmax(row) {
                        same_top += 1;
                    }
                }
            }
            count += per_chunk;
            on_chunk(&ChunkProgress {
                done: c + 1,
                total: n_chunk,
                ppl: (nll / count as f64).exp(),
                kld: base.as_ref().map(|_| kld_sum / count as f64),
            });
        }
        let n = count as f64;
        let mean = nll / n;
        let ppl = mean.exp();
        let var = (nll2 / n - mean * mean).max(0.0);
        let ppl_stderr = (var / (n - 1.0)).sqrt() * ppl;
        let kl = base.map(|_| {
            klds.sort_by(|a, b| a.total_cmp(b));
            let mean_kld = kld_sum / n;
            let kvar = (kld2 / n - mean_kld * mean_kld).max(0.0);
            KlStats {
                ppl_base: (nll_base / n).exp(),
                mean_kld,
                kld_stderr: (kvar / (n - 1.0)).sqrt(),
                kld_p99: klds[((klds.len() as f64 * 0.99) as usize).min(klds.len() - 1)] as f64,
                same_top: same_top as f64 / n,
            }
        });
        Ok(PerplexityResult {
            n_tokens: tokens.len(),
            n_chunks: n_chunk,
            count,
            ppl,
            ppl_stderr,
            kl,
        })
    }
}
