//! GPT-2: learned absolute positions, pre-LayerNorm blocks with biases everywhere, fused
//! Q/K/V, a GELU (tanh) MLP without a gate, and the output tied to the token embeddings.
//! Tensors under GGUF's `gpt2` names; Hugging Face checkpoints (Conv1D weights stored
//! `[in, out]`) come transposed by their source (`hf.rs`).

use tuili_core::ThreadPool;
use tuili_kernels::cpu::{self, Isa};
use tuili_kernels::ops;
use tuili_kv::KvCache;

use crate::batch::{check_spans, KvTarget, OutRows, SeqSpan, SpanForward};
use crate::config::ModelConfig;
use crate::llama::{causal_attention, output_logits, Scratch};
use crate::weights::{matmul, matmul_many, vector, Matrix, WeightSource};
use crate::ModelError;

struct Block {
    ln1_w: Vec<f32>,  // [n_embd]
    ln1_b: Vec<f32>,  // [n_embd]
    qkv: Matrix,      // [3·n_embd, n_embd]
    qkv_b: Vec<f32>,  // [3·n_embd]
    out: Matrix,      // [n_embd, n_embd]
    out_b: Vec<f32>,  // [n_embd]
    ln2_w: Vec<f32>,  // [n_embd]
    ln2_b: Vec<f32>,  // [n_embd]
    up: Matrix,       // [n_ff, n_embd]
    up_b: Vec<f32>,   // [n_ff]
    down: Matrix,     // [n_embd, n_ff]
    down_b: Vec<f32>, // [n_embd]
}

/// A loaded GPT-2 model.
pub struct Gpt2 {
    label: String,
    cfg: ModelConfig,
    wte: Matrix,   // [n_vocab, n_embd]
    wpe: Vec<f32>, // [n_ctx_train, n_embd]
    blocks: Vec<Block>,
    ln_f_w: Vec<f32>, // [n_embd]
    ln_f_b: Vec<f32>, // [n_embd]
    output: Matrix,   // [n_vocab, n_embd]
    isa: Isa,
}

fn add_bias(rows: &mut [f32], b: &[f32]) {
    for row in rows.chunks_exact_mut(b.len()) {
        for (x, y) in row.iter_mut().zip(b) {
            *x += y;
        }
    }
}

impl Gpt2 {
    pub fn from_source(cfg: ModelConfig, f: &dyn WeightSource) -> Result<Gpt2, ModelError> {
        let (e, ff, nv) = (cfg.n_embd, cfg.n_ff, cfg.n_vocab);
        let wte = Matrix::bind(f, "token_embd.weight", nv, e)?;
        let output = Matrix::bind_opt(f, "output.weight", nv, e)?.unwrap_or_else(|| wte.clone());
        // [n_ctx_train, n_embd], read once into f32.
        let pos = Matrix::bind(f, "position_embd.weight", cfg.n_ctx_train, e)?;
        let mut wpe = vec![0f32; cfg.n_ctx_train * e];
        for (p, row) in wpe.chunks_exact_mut(e).enumerate() {
            pos.row(p, row)?;
        }
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            blocks.push(Block {
                ln1_w: vector(f, &n("attn_norm.weight"), e)?,
                ln1_b: vector(f, &n("attn_norm.bias"), e)?,
                qkv: Matrix::bind(f, &n("attn_qkv.weight"), 3 * e, e)?,
                qkv_b: vector(f, &n("attn_qkv.bias"), 3 * e)?,
                out: Matrix::bind(f, &n("attn_output.weight"), e, e)?,
                out_b: vector(f, &n("attn_output.bias"), e)?,
                ln2_w: vector(f, &n("ffn_norm.weight"), e)?,
                ln2_b: vector(f, &n("ffn_norm.bias"), e)?,
                up: Matrix::bind(f, &n("ffn_up.weight"), ff, e)?,
                up_b: vector(f, &n("ffn_up.bias"), ff)?,
                down: Matrix::bind(f, &n("ffn_down.weight"), e, ff)?,
                down_b: vector(f, &n("ffn_down.bias"), e)?,
            });
        }
        Ok(Gpt2 {
            label: f.label(),
            ln_f_w: vector(f, "output_norm.weight", e)?,
            ln_f_b: vector(f, "output_norm.bias", e)?,
            cfg,
            wte,
            wpe,
            blocks,
            output,
            isa: cpu::detect(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn set_isa(&mut self, isa: Isa) {
        self.isa = isa.min(cpu::detect());
    }

    /// A cache for `n_ctx` positions (at most the learned positions).
    pub fn new_cache(&self, n_ctx: usize) -> Result<KvCache, ModelError> {
        Ok(KvCache::new(
            self.cfg.n_layer,
            n_ctx.min(self.cfg.n_ctx_train),
            self.cfg.kv_dim(),
        )?)
    }

    /// Bytes of weights read per generated token.
    pub fn weight_bytes_per_token(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| b.qkv.bytes() + b.out.bytes() + b.up.bytes() + b.down.bytes())
            .sum::<usize>()
            + self.output.bytes()
    }
}

impl SpanForward for Gpt2 {
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
        // Learned positions end at the training context.
        if ctx > cfg.n_ctx_train {
            return Err(ModelError::Kv(tuili_kv::KvError::Full {
                needed: ctx,
                capacity: cfg.n_ctx_train,
            }));
        }
        let n = tokens.len();
        let n_logits = out.len();
        scratch.ensure(cfg, n, n_logits, pool.n_threads(), max_ctx.max(ctx));
        let (isa, e, ff) = (self.isa, cfg.n_embd, cfg.n_ff);
        for s in spans {
            for (j, &t) in tokens[s.start..s.start + s.len].iter().enumerate() {
                let (i, pos) = (s.start + j, s.pos0 + j);
                let row = &mut scratch.x[i * e..(i + 1) * e];
                self.wte.row(t as usize, row)?;
                let p = &self.wpe[pos * e..(pos + 1) * e];
                for (x, y) in row.iter_mut().zip(p) {
                    *x += y;
                }
            }
        }
        for (li, b) in self.blocks.iter().enumerate() {
            let Scratch {
                x,
                h,
                q,
                k,
                v,
                att,
                gate,
                prep,
                tmp,
                scores,
                ..
            } = &mut *scratch;
            let (Some(tmp), Some(scores)) = (tmp.as_ref(), scores.as_ref()) else {
                unreachable!("Scratch::ensure fills both")
            };
            let (x, h) = (&mut x[..n * e], &mut h[..n * e]);
            for i in 0..n {
                ops::layer_norm(
                    &x[i * e..(i + 1) * e],
                    &b.ln1_w,
                    &b.ln1_b,
                    cfg.rms_eps,
                    &mut h[i * e..(i + 1) * e],
                );
            }
            // Q, K and V from the three row blocks of the fused matrix.
            let (q, k, v, att) = (
                &mut q[..n * e],
                &mut k[..n * e],
                &mut v[..n * e],
                &mut att[..n * e],
            );
            prep.invalidate();
            let (wq, wk, wv) = (
                b.qkv.rows_view(0, e),
                b.qkv.rows_view(e, e),
                b.qkv.rows_view(2 * e, e),
            );
            matmul_many(pool, isa, [&wq, &wk, &wv], h, n, [q, k, v], prep, tmp);
            add_bias(q, &b.qkv_b[..e]);
            add_bias(k, &b.qkv_b[e..2 * e]);
            add_bias(v, &b.qkv_b[2 * e..]);
            for (si, s) in spans.iter().enumerate() {
                let r = s.start * e..(s.start + s.len) * e;
                cache.write(li, si, s.pos0, &k[r.clone()], &v[r]);
            }
            causal_attention(cfg, isa, &*cache, li, spans, q, att, pool, scores);
            prep.invalidate();
            matmul(pool, isa, &b.out, att, n, h, prep, tmp);
            add_bias(h, &b.out_b);
            for (xi, hi) in x.iter_mut().zip(h.iter()) {
                *xi += hi;
            }
            for i in 0..n {
                ops::layer_norm(
                    &x[i * e..(i + 1) * e],
                    &b.ln2_w,
                    &b.ln2_b,
                    cfg.rms_eps,
                    &mut h[i * e..(i + 1) * e],
                );
            }
            let u = &mut gate[..n * ff];
            prep.invalidate();
            matmul(pool, isa, &b.up, h, n, u, prep, tmp);
            add_bias(u, &b.up_b);
            ops::gelu_tanh(u);
            prep.invalidate();
            matmul(pool, isa, &b.down, u, n, h, prep, tmp);
            add_bias(h, &b.down_b);
            for (xi, hi) in x.iter_mut().zip(h.iter()) {
                *xi += hi;
            }
        }
        let (w, b) = (&self.ln_f_w, &self.ln_f_b);
        Ok(output_logits(
            cfg,
            isa,
            pool,
            scratch,
            &out,
            &self.output,
            |x, h| ops::layer_norm(x, w, b, cfg.rms_eps, h),
        ))
    }
}
