//! The Llama family decoder (Llama 1/2/3, Mistral, TinyLlama; Qwen2 and Qwen3 differ only in
//! RoPE layout, Q/K/V biases and per-head Q/K norms).
//!
//! One layer, for a batch of n tokens at positions p₀…p₀+n−1:
//!   h  = RMSNorm(x) · g_attn
//!   q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv);  RoPE(q, k) at each token's position
//!   attn = softmax(q·Kᵀ/√d + causal mask) · V   per head, K/V heads shared by n_head/n_head_kv
//!   x  = x + attn·Woᵀ
//!   h  = RMSNorm(x) · g_ffn
//!   x  = x + (SiLU(h·Wgateᵀ) ⊙ h·Wupᵀ)·Wdownᵀ
//! then logits = RMSNorm(x) · g_out · Woutᵀ (Wout = the embedding matrix when tied).

use std::sync::Arc;

use tuili_core::pool::split;
use tuili_core::{PerThread, ThreadPool};
use tuili_formats::GgufFile;
use tuili_kernels::cpu::{self, Isa};
use tuili_kernels::ops;
use tuili_kv::KvCache;

use crate::batch::{check_spans, span_of, KvTarget, OutRows, SeqSpan, SpanForward};
use crate::config::{Arch, ModelConfig};
use crate::weights::{
    matmul, matmul_many, vector, vector_opt, GgufSource, Matrix, Prepared, RowScratch, SharedOut,
    WeightSource,
};
use crate::ModelError;

/// The `[n, width]` token rows of a buffer, for pool workers that each take distinct tokens.
struct TokenRows {
    buf: SharedOut,
    width: usize,
}

impl TokenRows {
    fn new(buf: &mut [f32], width: usize) -> TokenRows {
        TokenRows {
            buf: SharedOut::new(buf),
            width,
        }
    }

    /// Token `t`'s row.
    ///
    /// # Safety
    /// Only one thread may use row `t` at a time, and nothing else may borrow the buffer
    /// while the row is alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, t: usize) -> &mut [f32] {
        // SAFETY: the caller's contract (bounds are checked by `slice`).
        unsafe { self.buf.slice(t * self.width..(t + 1) * self.width) }
    }
}

/// Runs `f(t)` for every token t < n, each on one thread: on the pool's threads when the
/// batch has work enough to pay for waking them (`n·width` ≥ 64 Ki values: prompt batches;
/// done on one thread these element-wise steps were 4 % of a one-thread prompt, serial at
/// two threads: 1.1B Q5_K_M pp512 at two threads 222.6 → 229.2 tok/s), else on this one.
fn per_token(pool: &ThreadPool, n: usize, width: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = (n * width / 65_536).clamp(1, pool.n_threads());
    pool.run_with(threads, &|i, nt| {
        for t in split(n, i, nt, 1) {
            f(t);
        }
    });
}

/// Prompt tokens per attention work item (`ops::attend_tile`): their query heads are the
/// lanes of its vectors (eight per vector: a tile of eight fills one even without grouped
/// heads), and each key and value row is converted and read once for all of them.
pub(crate) const TILE: usize = 8;

struct Layer {
    attn_norm: Vec<f32>, // [n_embd]
    wq: Matrix,          // [n_head·head_dim, n_embd]
    wk: Matrix,          // [n_head_kv·head_dim, n_embd]
    wv: Matrix,          // [n_head_kv·head_dim, n_embd]
    wo: Matrix,          // [n_embd, n_head·head_dim]
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>, // [head_dim]
    k_norm: Option<Vec<f32>>, // [head_dim]
    ffn_norm: Vec<f32>,       // [n_embd]
    /// Gemma 2's sandwich norms: on the attention output and on the MLP output.
    post_attn_norm: Option<Vec<f32>>, // [n_embd]
    post_ffw_norm: Option<Vec<f32>>, // [n_embd]
    gate: Matrix,             // [n_ff, n_embd]
    up: Matrix,               // [n_ff, n_embd]
    down: Matrix,             // [n_embd, n_ff]
}

/// A loaded Llama-family model: configuration plus views of its weights in the mapped file.
pub struct Llama {
    /// The file or folder the weights come from.
    label: String,
    cfg: ModelConfig,
    tok_embd: Matrix, // [n_vocab, n_embd]
    layers: Vec<Layer>,
    output_norm: Vec<f32>, // [n_embd]
    output: Matrix,        // [n_vocab, n_embd]
    inv_freq: Vec<f32>,    // [n_rot/2]
    /// Kernel set, detected at load; tests switch it to compare against the scalar twins.
    isa: Isa,
}

/// Which positions of a batch get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token (generation).
    Last,
    /// Every token (perplexity, speculative checks).
    All,
    /// None (a prompt chunk that is not the last).
    None,
}

/// Activation buffers for a batch of up to `cap` tokens, reused across calls so that the
/// decode loop does not allocate them per token.
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
    pub(crate) prep: Prepared,
    /// Per worker: a dequantized weight row.
    pub(crate) tmp: Option<RowScratch>,
    /// Per worker: attention scores over the context.
    pub(crate) scores: Option<PerThread<Vec<f32>>>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::default()
    }

    pub(crate) fn ensure(
        &mut self,
        cfg: &ModelConfig,
        n: usize,
        n_logits: usize,
        threads: usize,
        n_ctx: usize,
    ) {
        if self.tmp.as_ref().is_none_or(|t| t.len() < threads) {
            self.tmp = Some(PerThread::new(threads, Default::default));
            self.scores = Some(PerThread::new(threads, Vec::new));
        }
        if let Some(sc) = self.scores.as_mut() {
            // Scores of the query heads that share one KV head ([group, n_ctx]). A tile of
            // prompt tokens needs more (`ops::attend_tile_scratch`): `causal_attention` grows
            // the buffer to what a prompt needs when one comes, so that decoding alone does
            // not hold it.
            let need = n_ctx * (cfg.n_head / cfg.n_head_kv);
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

impl Llama {
    /// Binds every tensor of a GGUF model, checking names, shapes and types.
    pub fn load(file: Arc<GgufFile>) -> Result<Llama, ModelError> {
        if file.tensors.is_empty() {
            return Err(ModelError::NoWeights {
                path: file.path().display().to_string(),
            });
        }
        let cfg = ModelConfig::from_gguf(&file)?;
        Llama::from_source(cfg, &GgufSource(file), None)
    }

    /// Binds every tensor of a model from any source (GGUF names). `rope_factors` divide the
    /// RoPE frequencies (Llama 3.1's scaling; a GGUF carries them as `rope_freqs.weight`).
    pub fn from_source(
        cfg: ModelConfig,
        f: &dyn WeightSource,
        rope_factors: Option<Vec<f32>>,
    ) -> Result<Llama, ModelError> {
        let (e, q, kv, ff, nv) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff, cfg.n_vocab);
        // Norm weights as the forward pass uses them: HF Gemma stores w − 1 (its RMSNorm
        // multiplies by 1 + w); GGUF stores w.
        let off = f.norm_offset();
        let norm = |name: &str, n: usize| -> Result<Vec<f32>, ModelError> {
            let mut v = vector(f, name, n)?;
            v.iter_mut().for_each(|x| *x += off);
            Ok(v)
        };
        let tok_embd = Matrix::bind(f, "token_embd.weight", nv, e)?;
        let output =
            Matrix::bind_opt(f, "output.weight", nv, e)?.unwrap_or_else(|| tok_embd.clone());
        let output_norm = norm("output_norm.weight", e)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let (bq, bk, bv) = (
                vector_opt(f, &n("attn_q.bias"), q)?,
                vector_opt(f, &n("attn_k.bias"), kv)?,
                vector_opt(f, &n("attn_v.bias"), kv)?,
            );
            let (q_norm, k_norm) = match cfg.arch {
                Arch::Qwen3 => (
                    Some(norm(&n("attn_q_norm.weight"), cfg.head_dim)?),
                    Some(norm(&n("attn_k_norm.weight"), cfg.head_dim)?),
                ),
                _ => (None, None),
            };
            // Fused projections (Phi-3; any GGUF with attn_qkv / a 2·n_ff ffn_up) are bound
            // as row views of one matrix.
            let (wq, wk, wv) = if f.get(&n("attn_qkv.weight")).is_some() {
                let m = Matrix::bind(f, &n("attn_qkv.weight"), q + 2 * kv, e)?;
                (
                    m.rows_view(0, q),
                    m.rows_view(q, kv),
                    m.rows_view(q + kv, kv),
                )
            } else {
                (
                    Matrix::bind(f, &n("attn_q.weight"), q, e)?,
                    Matrix::bind(f, &n("attn_k.weight"), kv, e)?,
                    Matrix::bind(f, &n("attn_v.weight"), kv, e)?,
                )
            };
            let (gate, up) = if f.get(&n("ffn_gate.weight")).is_some() {
                (
                    Matrix::bind(f, &n("ffn_gate.weight"), ff, e)?,
                    Matrix::bind(f, &n("ffn_up.weight"), ff, e)?,
                )
            } else {
                let m = Matrix::bind(f, &n("ffn_up.weight"), 2 * ff, e)?;
                (m.rows_view(0, ff), m.rows_view(ff, ff))
            };
            layers.push(Layer {
                attn_norm: norm(&n("attn_norm.weight"), e)?,
                wq,
                wk,
                wv,
                wo: Matrix::bind(f, &n("attn_output.weight"), e, q)?,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                ffn_norm: norm(&n("ffn_norm.weight"), e)?,
                // Only Gemma 2 has them (HF names would alias other norms elsewhere).
                post_attn_norm: match cfg.arch {
                    Arch::Gemma2 => Some(norm(&n("post_attention_norm.weight"), e)?),
                    _ => None,
                },
                post_ffw_norm: match cfg.arch {
                    Arch::Gemma2 => Some(norm(&n("post_ffw_norm.weight"), e)?),
                    _ => None,
                },
                gate,
                up,
                down: Matrix::bind(f, &n("ffn_down.weight"), e, ff)?,
            });
        }
        let mut inv_freq = vec![0f32; cfg.n_rot / 2];
        ops::rope_inv_freq(cfg.n_rot, cfg.rope_freq_base, &mut inv_freq);
        let factors = match rope_factors {
            Some(v) => Some(v),
            None => vector_opt(f, "rope_freqs.weight", cfg.n_rot / 2)?,
        };
        if let Some(fac) = factors {
            if fac.len() != inv_freq.len() || fac.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
                return Err(ModelError::BadHyperParam {
                    path: f.label(),
                    key: "rope frequency factors".into(),
                    value: format!("{} values", fac.len()),
                    reason: format!("expected {} positive factors", inv_freq.len()),
                });
            }
            for (w, x) in inv_freq.iter_mut().zip(&fac) {
                *w /= x;
            }
        }
        Ok(Llama {
            label: f.label(),
            cfg,
            tok_embd,
            layers,
            output_norm,
            output,
            inv_freq,
            isa: cpu::detect(),
        })
    }

    /// The kernel set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Chooses the kernel set (at most what this CPU supports): for comparisons with the
    /// scalar reference.
    pub fn set_isa(&mut self, isa: Isa) {
        self.isa = isa.min(cpu::detect());
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The file or folder the weights come from.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A KV cache sized for this model and `n_ctx` positions.
    pub fn new_cache(&self, n_ctx: usize) -> Result<KvCache, ModelError> {
        Ok(KvCache::new(self.cfg.n_layer, n_ctx, self.cfg.kv_dim())?)
    }

    /// Bytes of weights read by one decode step (every matrix once, the embedding row aside).
    pub fn weight_bytes_per_token(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|m| m.bytes())
                    .sum::<usize>()
            })
            .sum();
        per_layer + self.output.bytes()
    }
}

impl SpanForward for Llama {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_spans<'s, C: KvTarget + Sync>(
        &self,
        tokens: &[u32],
        spans: &[SeqSpan],
        cache: &mut C,
        max_ctx: usize,
        scratch: &'s mut Scratch,
        out: OutRows,
        pool: &ThreadPool,
    ) -> Result<&'s [f32], ModelError> {
        let cfg = &self.cfg;
        let ctx = check_spans(cfg, tokens, spans, &out)?;
        cache.check(cfg, spans)?;
        let n = tokens.len();
        let n_logits = out.len();
        scratch.ensure(cfg, n, n_logits, pool.n_threads(), max_ctx.max(ctx));
        let isa = self.isa;
        let (e, qd, kvd, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);

        for (i, &t) in tokens.iter().enumerate() {
            let row = &mut scratch.x[i * e..(i + 1) * e];
            self.tok_embd.row(t as usize, row)?;
            if let Some(s) = cfg.embd_scale() {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }

        for (li, layer) in self.layers.iter().enumerate() {
            let Scratch {
                x,
                h,
                q,
                k,
                v,
                att,
                gate,
                up,
                prep,
                tmp,
                scores,
                ..
            } = &mut *scratch;
            let (Some(tmp), Some(scores)) = (tmp.as_ref(), scores.as_ref()) else {
                unreachable!("Scratch::ensure fills both")
            };
            let (x, h) = (&mut x[..n * e], &mut h[..n * e]);
            let (q, k, v, att) = (
                &mut q[..n * qd],
                &mut k[..n * kvd],
                &mut v[..n * kvd],
                &mut att[..n * qd],
            );
            {
                let (xr, hr) = (TokenRows::new(x, e), TokenRows::new(h, e));
                per_token(pool, n, e, &|t| {
                    // SAFETY: token t is this worker's alone; x and h are not otherwise
                    // borrowed during the region.
                    let (xt, ht) = unsafe { (xr.row(t), hr.row(t)) };
                    ops::rms_norm(xt, &layer.attn_norm, cfg.rms_eps, ht);
                });
            }
            prep.invalidate();
            let (wq, wk, wv) = (&layer.wq, &layer.wk, &layer.wv);
            matmul_many(pool, isa, [wq, wk, wv], h, n, [q, k, v], prep, tmp);
            {
                let hd = cfg.head_dim;
                let (qr, kr, vr) = (
                    TokenRows::new(q, qd),
                    TokenRows::new(k, kvd),
                    TokenRows::new(v, kvd),
                );
                per_token(pool, n, qd + 2 * kvd, &|t| {
                    // SAFETY: token t is this worker's alone; q, k and v are not otherwise
                    // borrowed during the region.
                    let (qt, kt, vt) = unsafe { (qr.row(t), kr.row(t), vr.row(t)) };
                    for (row, bias) in [
                        (&mut *qt, &layer.bq),
                        (&mut *kt, &layer.bk),
                        (&mut *vt, &layer.bv),
                    ] {
                        if let Some(b) = bias {
                            row.iter_mut().zip(b).for_each(|(a, bb)| *a += bb);
                        }
                    }
                    let s = &spans[span_of(spans, t)];
                    let pos = s.pos0 + t - s.start;
                    // The rotation angles once for all the token's heads (a table on the
                    // stack; rotary dimensions past its size compute them per head).
                    let mut cs = [0f32; 512];
                    let table = cfg.n_rot <= cs.len();
                    if table {
                        ops::rope_angles(
                            cfg.n_rot,
                            pos,
                            cfg.rope_freq_scale,
                            &self.inv_freq,
                            &mut cs,
                        );
                    }
                    for (row, norm) in [(qt, &layer.q_norm), (kt, &layer.k_norm)] {
                        for head in row.chunks_exact_mut(hd) {
                            if let Some(w) = norm {
                                // Per-head RMSNorm of q and k before RoPE (Qwen3).
                                ops::rms_norm_inplace(head, w, cfg.rms_eps);
                            }
                            if table {
                                ops::rope_with(head, cfg.n_rot, &cs, cfg.rope_layout);
                            } else {
                                ops::rope(
                                    head,
                                    cfg.n_rot,
                                    pos,
                                    cfg.rope_freq_scale,
                                    &self.inv_freq,
                                    cfg.rope_layout,
                                );
                            }
                        }
                    }
                });
            }
            for (si, s) in spans.iter().enumerate() {
                let r = s.start * kvd..(s.start + s.len) * kvd;
                cache.write(li, si, s.pos0, &k[r.clone()], &v[r]);
            }
            causal_attention(cfg, self.isa, &*cache, li, spans, q, att, pool, scores);
            prep.invalidate();
            matmul(pool, isa, &layer.wo, att, n, h, prep, tmp);
            {
                // x += post_attn_norm(h); h = ffn_norm(x), token by token.
                let (xr, hr) = (TokenRows::new(x, e), TokenRows::new(h, e));
                per_token(pool, n, e, &|t| {
                    // SAFETY: token t is this worker's alone; x and h are not otherwise
                    // borrowed during the region.
                    let (xt, ht) = unsafe { (xr.row(t), hr.row(t)) };
                    if let Some(w) = &layer.post_attn_norm {
                        ops::rms_norm_inplace(ht, w, cfg.rms_eps);
                    }
                    xt.iter_mut().zip(ht.iter()).for_each(|(a, b)| *a += b);
                    ops::rms_norm(xt, &layer.ffn_norm, cfg.rms_eps, ht);
                });
            }
            let (gate, up) = (&mut gate[..n * ff], &mut up[..n * ff]);
            prep.invalidate();
            let (wg, wu) = (&layer.gate, &layer.up);
            matmul_many(pool, isa, [wg, wu], h, n, [&mut *gate, &mut *up], prep, tmp);
            {
                let (gr, ur) = (TokenRows::new(gate, ff), TokenRows::new(up, ff));
                per_token(pool, n, ff, &|t| {
                    // SAFETY: token t is this worker's alone; gate and up are not otherwise
                    // borrowed during the region.
                    let (gt, ut) = unsafe { (gr.row(t), ur.row(t)) };
                    if cfg.gelu_gate() {
                        ops::gelu_tanh_mul(gt, ut);
                    } else {
                        ops::silu_mul_fast(isa, gt, ut);
                    }
                });
            }
            prep.invalidate();
            matmul(pool, isa, &layer.down, gate, n, h, prep, tmp);
            {
                // x += post_ffw_norm(h).
                let (xr, hr) = (TokenRows::new(x, e), TokenRows::new(h, e));
                per_token(pool, n, e, &|t| {
                    // SAFETY: token t is this worker's alone; x and h are not otherwise
                    // borrowed during the region.
                    let (xt, ht) = unsafe { (xr.row(t), hr.row(t)) };
                    if let Some(w) = &layer.post_ffw_norm {
                        ops::rms_norm_inplace(ht, w, cfg.rms_eps);
                    }
                    xt.iter_mut().zip(ht.iter()).for_each(|(a, b)| *a += b);
                });
            }
        }

        let w = &self.output_norm;
        Ok(output_logits(
            cfg,
            isa,
            pool,
            scratch,
            &out,
            &self.output,
            |x, h| ops::rms_norm(x, w, cfg.rms_eps, h),
        ))
    }
}

/// The final norm of the `out` rows of the residual stream, then the output matrix (and
/// Gemma 2's soft-cap): `[out.len(), n_vocab]` logits.
pub(crate) fn output_logits<'s>(
    cfg: &ModelConfig,
    isa: Isa,
    pool: &ThreadPool,
    scratch: &'s mut Scratch,
    out: &OutRows,
    output: &Matrix,
    norm: impl Fn(&[f32], &mut [f32]),
) -> &'s [f32] {
    let (e, nv, n_logits) = (cfg.n_embd, cfg.n_vocab, out.len());
    if n_logits == 0 {
        return &scratch.logits[..0];
    }
    let Scratch {
        x,
        h,
        logits,
        prep,
        tmp,
        ..
    } = &mut *scratch;
    let Some(tmp) = tmp.as_ref() else {
        unreachable!("Scratch::ensure fills it")
    };
    for i in 0..n_logits {
        let r = out.get(i);
        norm(&x[r * e..(r + 1) * e], &mut h[i * e..(i + 1) * e]);
    }
    let lo = &mut logits[..n_logits * nv];
    prep.invalidate();
    matmul(
        pool,
        isa,
        output,
        &h[..n_logits * e],
        n_logits,
        lo,
        prep,
        tmp,
    );
    if let Some(c) = cfg.final_softcap {
        ops::softcap(lo, c);
    }
    &scratch.logits[..n_logits * nv]
}

impl Logits {
    /// The batch rows whose logits this asks for, in a batch of `n`.
    pub fn rows(self, n: usize) -> OutRows<'static> {
        OutRows::Range(match self {
            Logits::All => 0..n,
            Logits::Last => n - 1..n,
            Logits::None => n..n,
        })
    }
}

/// What every forward pass checks first: a non-empty batch of ids in the vocabulary, and a
/// cache of this model's shape with room for it.
pub(crate) fn check_batch(
    cfg: &ModelConfig,
    tokens: &[u32],
    kv: &KvCache,
) -> Result<(), ModelError> {
    if tokens.is_empty() {
        return Err(ModelError::EmptyBatch);
    }
    if kv.n_layer() != cfg.n_layer || kv.kv_dim() != cfg.kv_dim() {
        return Err(ModelError::CacheMismatch {
            cache_layers: kv.n_layer(),
            cache_dim: kv.kv_dim(),
            layers: cfg.n_layer,
            dim: cfg.kv_dim(),
        });
    }
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= cfg.n_vocab) {
        return Err(ModelError::BadToken {
            id,
            n_vocab: cfg.n_vocab,
        });
    }
    kv.reserve(tokens.len())?;
    Ok(())
}

/// Causal attention of the batch's queries against the cache (which already holds this
/// batch's keys and values): token i of span s, at position p, attends to positions 0..=p of
/// its own sequence. Work is split across the pool's threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_attention<C: KvTarget + Sync>(
    cfg: &ModelConfig,
    isa: Isa,
    cache: &C,
    layer: usize,
    spans: &[SeqSpan],
    q: &[f32],
    att: &mut [f32],
    pool: &ThreadPool,
    scores: &PerThread<Vec<f32>>,
) {
    let (hd, qd) = (cfg.head_dim, cfg.q_dim());
    let group = cfg.n_head / cfg.n_head_kv;
    let n: usize = spans.iter().map(|s| s.len).sum();
    let scale = cfg.attn_scale.unwrap_or(1.0 / (hd as f32).sqrt());
    let softcap = cfg.attn_softcap.unwrap_or(0.0);
    let out = SharedOut::new(att);
    // As in `matmul`: only wake workers when each gets a worthwhile share.
    let ctx: usize = spans.iter().map(|s| s.len * (s.pos0 + s.len)).sum();
    let work = cfg.n_head * ctx * hd;
    let threads = (work / 65_536).clamp(1, pool.n_threads());
    // Without a sliding window, consecutive tokens of a prompt go in tiles: each key and
    // value row is then read once for all of a tile's tokens (`attend_tile`; token by token
    // gives the same to rounding).
    let slides = cfg.sliding_window.is_some() && cfg.layer_slides(layer);
    if !slides && spans.iter().any(|s| s.len > 1) {
        let tile = TILE;
        let tiles: usize = spans.iter().map(|s| s.len.div_ceil(tile)).sum();
        let items = cfg.n_head_kv * tiles;
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
                let need = ops::attend_tile_scratch(cnt, group, hd, len0).max(group * (len0 + cnt));
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
                    && ops::attend_tile(
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
                        ops::attend_group(
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
    let items = cfg.n_head_kv * n;
    pool.run_with(threads, &|wi, nt| {
        // SAFETY: worker wi is the only user of its slot.
        let scores = unsafe { scores.get(wi) };
        for item in split(items, wi, nt, 1) {
            let (kvh, i) = (item / n, item % n);
            let si = span_of(spans, i);
            let s = spans[si];
            let len = s.pos0 + (i - s.start) + 1; // causal: positions 0..=p
                                                  // A sliding window keeps the last `w` of them (this layer's, if it slides).
            let start = match cfg.sliding_window {
                Some(w) if cfg.layer_slides(layer) => len.saturating_sub(w),
                _ => 0,
            };
            let rows = cache.rows(layer, si, s.pos0 + s.len);
            let heads = kvh * group..(kvh + 1) * group;
            // SAFETY: the heads of KV head kvh for token i are written by the worker that
            // owns item (kvh, i) only; the range is contiguous (heads of a group are
            // adjacent).
            let o = unsafe { out.slice(i * qd + heads.start * hd..i * qd + heads.end * hd) };
            ops::attend_group(
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

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama").field("config", &self.cfg).finish()
    }
}
