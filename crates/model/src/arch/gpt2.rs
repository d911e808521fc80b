//! GPT-2: learned absolute positions, pre-LayerNorm blocks with biases everywhere, fused
//! Q/K/V, a GELU (tanh) MLP without a gate, and the output tied to the token embeddings.
//! Tensors under GGUF's `gpt2` names; Hugging Face checkpoints (Conv1D weights stored
//! `[in, out]`) come transposed by their source, below, with their `config.json` reader.
//!
//! One block, for a batch of n tokens:
//!   h = LayerNorm₁(x);  q, k, v = h·Wqkvᵀ + b_qkv (three row blocks)
//!   x = x + softmax(q·Kᵀ/√d + causal mask)·V · Woᵀ + b_o
//!   x = x + GELU(LayerNorm₂(x)·Wupᵀ + b_up)·Wdownᵀ + b_down
//! then logits = LayerNorm_f(x)·Woutᵀ.

use std::borrow::Cow;
use std::path::Path;

use serde_json::Value;
use tuili_formats::{MetaValue, Safetensors};
use tuili_kernels::ops::{self, RopeLayout};

use crate::batch::SeqSpan;
use crate::config::{Arch, ModelConfig};
use crate::convert::{bad, shape_metadata, tokenizer_metadata};
use crate::error::ModelError;
use crate::exec::{Buffers, Decoder, Step};
use crate::hf::{self, ConfigJson, HfExtras};
use crate::quantize::{InputTensor, QuantInput};
use crate::shard::{Cut, Shard};
use crate::weights::{vector, Matrix, WeightBytes, WeightInfo, WeightSource};

struct Block {
    ln1_w: Vec<f32>,  // [n_embd]
    ln1_b: Vec<f32>,  // [n_embd]
    wq: Matrix,       // [n_embd, n_embd]: rows 0..e of the fused [3·n_embd, n_embd]
    wk: Matrix,       // [n_embd, n_embd]: rows e..2e
    wv: Matrix,       // [n_embd, n_embd]: rows 2e..3e
    bq: Vec<f32>,     // [n_embd]
    bk: Vec<f32>,     // [n_embd]
    bv: Vec<f32>,     // [n_embd]
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
struct Gpt2 {
    cfg: ModelConfig,
    wte: Matrix,   // [n_vocab, n_embd]
    wpe: Vec<f32>, // [n_ctx_train, n_embd]
    blocks: Vec<Block>,
    ln_f_w: Vec<f32>, // [n_embd]
    ln_f_b: Vec<f32>, // [n_embd]
    output: Matrix,   // [n_vocab, n_embd]
}

fn add_bias(row: &mut [f32], b: &[f32]) {
    for (x, y) in row.iter_mut().zip(b) {
        *x += y;
    }
}

/// Binds every tensor of a GPT-2 model from any source (GGUF names), or a tensor-parallel
/// rank's part of each ([`crate::shard`]).
pub(crate) fn bind(
    cfg: ModelConfig,
    f: &dyn WeightSource,
    shard: Shard,
) -> Result<Box<dyn Decoder>, ModelError> {
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
        // Q, K and V: the three row blocks of the fused matrix.
        let qkv = Matrix::bind(f, &n("attn_qkv.weight"), 3 * e, e)?;
        let qkv_b = vector(f, &n("attn_qkv.bias"), 3 * e)?;
        blocks.push(Block {
            ln1_w: vector(f, &n("attn_norm.weight"), e)?,
            ln1_b: vector(f, &n("attn_norm.bias"), e)?,
            wq: qkv.rows_view(0, e),
            wk: qkv.rows_view(e, e),
            wv: qkv.rows_view(2 * e, e),
            bq: qkv_b[..e].to_vec(),
            bk: qkv_b[e..2 * e].to_vec(),
            bv: qkv_b[2 * e..].to_vec(),
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
    let mut m = Gpt2 {
        ln_f_w: vector(f, "output_norm.weight", e)?,
        ln_f_b: vector(f, "output_norm.bias", e)?,
        cfg,
        wte,
        wpe,
        blocks,
        output,
    };
    if shard.size > 1 {
        m.keep(shard, &f.label())?;
    }
    Ok(Box::new(m))
}

impl Gpt2 {
    /// Keeps a tensor-parallel rank's part of every matrix ([`crate::shard`]): its heads' rows
    /// of Q, K, V (and biases) and columns of the attention output, its hidden units' rows of
    /// up (and bias) and columns of down, its rows of the vocabulary. The output and down
    /// biases join after the all-reduce, whole.
    fn keep(&mut self, shard: Shard, label: &str) -> Result<(), ModelError> {
        let (o, down) = (
            self.blocks.iter().map(|b| &b.out),
            self.blocks.iter().map(|b| &b.down),
        );
        let cut = Cut::new(&self.cfg, shard, o, down, label)?;
        let r = cut.q_rows(self.cfg.head_dim);
        let ff = &cut.ff;
        for b in &mut self.blocks {
            b.wq = b.wq.rows_view(r.start, r.len());
            b.wk = b.wk.rows_view(r.start, r.len());
            b.wv = b.wv.rows_view(r.start, r.len());
            b.bq = b.bq[r.clone()].to_vec();
            b.bk = b.bk[r.clone()].to_vec();
            b.bv = b.bv[r.clone()].to_vec();
            b.out = b.out.cols_copy(r.start, r.len())?;
            b.up = b.up.rows_view(ff.start, ff.len());
            b.up_b = b.up_b[ff.clone()].to_vec();
            b.down = b.down.cols_copy(ff.start, ff.len())?;
        }
        self.output = self.output.rows_view(cut.vocab.start, cut.vocab.len());
        self.cfg = cut.local(&self.cfg);
        Ok(())
    }
}

impl Decoder for Gpt2 {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn embed(&self, tokens: &[u32], spans: &[SeqSpan], x: &mut [f32]) -> Result<(), ModelError> {
        let e = self.cfg.n_embd;
        for s in spans {
            for (j, &t) in tokens[s.start..s.start + s.len].iter().enumerate() {
                let (i, pos) = (s.start + j, s.pos0 + j);
                let row = &mut x[i * e..(i + 1) * e];
                self.wte.row(t as usize, row)?;
                add_bias(row, &self.wpe[pos * e..(pos + 1) * e]);
            }
        }
        Ok(())
    }

    fn layer(&self, li: usize, st: &mut Step<'_>, b: &mut Buffers<'_>) -> Result<(), ModelError> {
        let (cfg, blk) = (&self.cfg, &self.blocks[li]);
        let (e, ff, eps) = (cfg.n_embd, cfg.n_ff, cfg.rms_eps);
        let qd = cfg.q_dim();
        st.each_token(e, [&mut *b.x, &mut *b.h], &|_, [xt, ht]| {
            ops::layer_norm(xt, &blk.ln1_w, &blk.ln1_b, eps, ht);
        });
        let (wq, wk, wv) = (&blk.wq, &blk.wk, &blk.wv);
        st.matmul_many([wq, wk, wv], b.h, [&mut *b.q, &mut *b.k, &mut *b.v]);
        st.each_token(
            3 * qd,
            [&mut *b.q, &mut *b.k, &mut *b.v],
            &|_, [qt, kt, vt]| {
                add_bias(qt, &blk.bq);
                add_bias(kt, &blk.bk);
                add_bias(vt, &blk.bv);
            },
        );
        st.attention(li, None, b.k, b.v, b.q, b.att);
        st.matmul_to_residual(&blk.out, b.att, b.h)?;
        st.each_token(e, [&mut *b.x, &mut *b.h], &|_, [xt, ht]| {
            add_bias(ht, &blk.out_b);
            add_bias(xt, ht);
            ops::layer_norm(xt, &blk.ln2_w, &blk.ln2_b, eps, ht);
        });
        st.matmul(&blk.up, b.h, b.gate);
        st.each_token(ff, [&mut *b.gate], &|_, [ut]| {
            add_bias(ut, &blk.up_b);
            ops::gelu_tanh(ut);
        });
        st.matmul_to_residual(&blk.down, b.gate, b.h)?;
        st.each_token(e, [&mut *b.x, &mut *b.h], &|_, [xt, ht]| {
            add_bias(ht, &blk.down_b);
            add_bias(xt, ht);
        });
        Ok(())
    }

    fn final_norm(&self, x: &[f32], out: &mut [f32]) {
        ops::layer_norm(x, &self.ln_f_w, &self.ln_f_b, self.cfg.rms_eps, out);
    }

    fn output(&self) -> &Matrix {
        &self.output
    }

    fn keep_layers(&mut self, r: std::ops::Range<usize>) {
        self.blocks = self.blocks.drain(r.clone()).collect();
        self.cfg.keep_layers(&r);
    }

    fn matrices(&self) -> Vec<&Matrix> {
        let mut m: Vec<&Matrix> = self
            .blocks
            .iter()
            .flat_map(|b| [&b.wq, &b.wk, &b.wv, &b.out, &b.up, &b.down])
            .collect();
        m.push(&self.output);
        m
    }

    /// Learned positions end at the training context.
    fn max_positions(&self) -> Option<usize> {
        Some(self.cfg.n_ctx_train)
    }
}

/// A GPT-2 checkpoint under GGUF's `gpt2` names. Its Conv1D weights are stored `[in, out]`;
/// they are transposed once, here, into `[out, in]` rows (the only weights tuili copies).
struct Gpt2Source {
    st: Safetensors,
}

/// The tensors of a GPT-2 checkpoint, under GGUF names.
pub(crate) fn hf_source(
    st: Safetensors,
    _cfg: &ModelConfig,
    _extras: &HfExtras,
) -> Box<dyn WeightSource> {
    Box::new(Gpt2Source { st })
}

impl Gpt2Source {
    fn hf(name: &str) -> Option<(String, bool)> {
        let top = match name {
            "token_embd.weight" => Some("wte.weight"),
            "position_embd.weight" => Some("wpe.weight"),
            "output_norm.weight" => Some("ln_f.weight"),
            "output_norm.bias" => Some("ln_f.bias"),
            _ => None,
        };
        if let Some(t) = top {
            return Some((t.to_string(), false));
        }
        let rest = name.strip_prefix("blk.")?;
        let (layer, t) = rest.split_once('.')?;
        let (base, suffix) = t.rsplit_once('.')?;
        let hf = match base {
            "attn_norm" => "ln_1",
            "attn_qkv" => "attn.c_attn",
            "attn_output" => "attn.c_proj",
            "ffn_norm" => "ln_2",
            "ffn_up" => "mlp.c_fc",
            "ffn_down" => "mlp.c_proj",
            _ => return None,
        };
        let conv = suffix == "weight" && base != "attn_norm" && base != "ffn_norm";
        Some((format!("h.{layer}.{hf}.{suffix}"), conv))
    }
}

impl WeightSource for Gpt2Source {
    fn label(&self) -> String {
        self.st.dir.display().to_string()
    }

    fn get(&self, name: &str) -> Option<WeightInfo> {
        let (hf, conv) = Gpt2Source::hf(name)?;
        let t = self
            .st
            .tensors
            .get(&format!("transformer.{hf}"))
            .or_else(|| self.st.tensors.get(&hf))?;
        if !conv {
            return Some(WeightInfo {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                backing: WeightBytes::Shard(t.shard.clone()),
                range: t.range.clone(),
            });
        }
        // Conv1D: safetensors [in, out] (our ne0-first shape [out, in]) → rows of `in`.
        let (out, inp) = (*t.shape.first()? as usize, *t.shape.get(1)? as usize);
        let mut src = vec![0f32; out * inp];
        tuili_kernels::types::dequantize_row(t.dtype, t.data(), &mut src).ok()?;
        let mut dst = Vec::with_capacity(out * inp * 4);
        for o in 0..out {
            for i in 0..inp {
                dst.extend_from_slice(&src[i * out + o].to_le_bytes());
            }
        }
        Some(WeightInfo {
            name: t.name.clone(),
            dtype: tuili_core::DType::F32,
            shape: vec![inp as u64, out as u64],
            range: 0..dst.len(),
            backing: WeightBytes::Owned(std::sync::Arc::new(dst)),
        })
    }
}

/// Reads a GPT-2 `config.json` (`c`, of the folder `dir`).
pub(crate) fn hf_config(
    dir: &Path,
    c: &Value,
    arch: Arch,
) -> Result<(ModelConfig, HfExtras), ModelError> {
    let j = ConfigJson::new(dir, c);
    let g = |k: &str| j.dim(k);
    let (e, nh) = (g("n_embd")?, g("n_head")?);
    if e % nh != 0 {
        return Err(j.bad("n_head", nh.to_string(), "must divide n_embd"));
    }
    let cfg = ModelConfig {
        arch,
        name: hf::model_name(dir, c),
        n_vocab: g("vocab_size")?,
        n_embd: e,
        n_layer: g("n_layer")?,
        n_head: nh,
        n_head_kv: nh,
        head_dim: e / nh,
        // `n_inner` null means 4·n_embd (`intermediate_size` is not read by GPT2Model).
        n_ff: c["n_inner"].as_u64().map(|v| v as usize).unwrap_or(4 * e),
        n_ctx_train: g("n_positions")?,
        rms_eps: c["layer_norm_epsilon"].as_f64().unwrap_or(1e-5) as f32,
        n_rot: 0,
        rope_freq_base: 10_000.0,
        rope_freq_scale: 1.0,
        rope_layout: RopeLayout::NeoX,
        attn_softcap: None,
        final_softcap: None,
        attn_scale: None,
        sliding_window: None,
        first_layer: 0,
    };
    Ok((cfg, HfExtras::default()))
}

/// GPT-2 folders: `gpt2.*` keys, the byte-level BPE vocabulary, and the tensors under GGUF's
/// `gpt2` names with the Conv1D weights transposed (as llama.cpp's converter does).
pub(crate) fn hf_to_gguf<'a>(
    dir: &Path,
    st: &'a Safetensors,
    cfg: &ModelConfig,
    _extras: &HfExtras,
) -> Result<QuantInput<'a>, ModelError> {
    let src = Gpt2Source { st: st.clone() };
    let mut md = shape_metadata(cfg);
    md.push((
        "gpt2.attention.layer_norm_epsilon".into(),
        MetaValue::F32(cfg.rms_eps),
    ));
    md.extend(tokenizer_metadata(dir)?);
    // The source transposes the Conv1D weights; the tensors it hands out are copied here.
    let mut names = vec![
        "token_embd.weight".to_string(),
        "position_embd.weight".to_string(),
        "output_norm.weight".to_string(),
        "output_norm.bias".to_string(),
    ];
    for i in 0..cfg.n_layer {
        for t in [
            "attn_norm",
            "attn_qkv",
            "attn_output",
            "ffn_norm",
            "ffn_up",
            "ffn_down",
        ] {
            for s in ["weight", "bias"] {
                names.push(format!("blk.{i}.{t}.{s}"));
            }
        }
    }
    let mut tensors = Vec::with_capacity(names.len());
    let mut bytes = 0u64;
    for name in names {
        let t = src
            .get(&name)
            .ok_or_else(|| bad(dir, format!("tensor for {name} is missing")))?;
        let data = t.data().to_vec();
        bytes += data.len() as u64;
        tensors.push(InputTensor {
            name,
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: Cow::Owned(data),
        });
    }
    Ok(QuantInput {
        label: dir.display().to_string(),
        metadata: md,
        tensors,
        bytes,
    })
}
