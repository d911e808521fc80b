//! The Llama family decoder (Llama 1/2/3, Mistral, TinyLlama, Qwen2, Qwen3, Phi-3, Gemma,
//! Gemma 2: one layer, the differences read from the config's [`Arch`] traits), its tensors
//! bound by GGUF name, and its Hugging Face side: `config.json` and the HF tensor names.
//!
//! One layer, for a batch of n tokens at positions p₀…p₀+n−1:
//!   h  = RMSNorm(x) · g_attn
//!   q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv);  RMSNorm per head of q, k (Qwen3);
//!             RoPE(q, k) at each token's position
//!   attn = softmax(q·Kᵀ·scale + causal mask) · V   per head, K/V heads shared by n_head/n_head_kv
//!   x  = x + post_norm(attn·Woᵀ)                   (post_norm: Gemma 2's sandwich, else none)
//!   h  = RMSNorm(x) · g_ffn
//!   x  = x + post_norm((act(h·Wgateᵀ) ⊙ h·Wupᵀ)·Wdownᵀ)   act = SiLU, or tanh GELU (Gemma)
//! then logits = RMSNorm(x) · g_out · Woutᵀ (Wout = the embedding matrix when tied).

use std::borrow::Cow;
use std::path::Path;

use serde_json::Value;
use tuili_core::DType;
use tuili_formats::{MetaValue, Safetensors};
use tuili_kernels::ops::{self, RopeLayout};

use crate::batch::SeqSpan;
use crate::config::{Arch, ModelConfig};
use crate::convert::{bad, permute_rows, shape_metadata, tokenizer_metadata};
use crate::error::ModelError;
use crate::exec::{Buffers, Decoder, Step};
use crate::hf::{self, ConfigJson, HfExtras};
use crate::quantize::{InputTensor, QuantInput};
use crate::shard::{Cut, Shard};
use crate::weights::{vector, vector_opt, Matrix, WeightBytes, WeightInfo, WeightSource};

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
struct Llama {
    cfg: ModelConfig,
    tok_embd: Matrix, // [n_vocab, n_embd]
    layers: Vec<Layer>,
    output_norm: Vec<f32>, // [n_embd]
    output: Matrix,        // [n_vocab, n_embd]
    inv_freq: Vec<f32>,    // [n_rot/2]
}

/// Binds every tensor of a Llama-family model from any source (GGUF names), checking names,
/// shapes and types. RoPE frequency factors (Llama 3.1's scaling) come as the tensor
/// `rope_freqs.weight`, which a GGUF file carries and a Hugging Face source makes from its
/// config.
pub(crate) fn bind(
    cfg: ModelConfig,
    f: &dyn WeightSource,
    shard: Shard,
) -> Result<Box<dyn Decoder>, ModelError> {
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
    let output = Matrix::bind_opt(f, "output.weight", nv, e)?.unwrap_or_else(|| tok_embd.clone());
    let output_norm = norm("output_norm.weight", e)?;
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let n = |s: &str| format!("blk.{i}.{s}");
        let (bq, bk, bv) = (
            vector_opt(f, &n("attn_q.bias"), q)?,
            vector_opt(f, &n("attn_k.bias"), kv)?,
            vector_opt(f, &n("attn_v.bias"), kv)?,
        );
        let (q_norm, k_norm) = if cfg.arch.qk_norm {
            (
                Some(norm(&n("attn_q_norm.weight"), cfg.head_dim)?),
                Some(norm(&n("attn_k_norm.weight"), cfg.head_dim)?),
            )
        } else {
            (None, None)
        };
        // Fused projections (Phi-3; any GGUF with attn_qkv / a 2·n_ff ffn_up) are bound as
        // row views of one matrix.
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
        // Only Gemma 2 has the sandwich norms (HF names would alias other norms elsewhere).
        let sandwich = |s: &str| -> Result<Option<Vec<f32>>, ModelError> {
            cfg.arch.sandwich.then(|| norm(&n(s), e)).transpose()
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
            post_attn_norm: sandwich("post_attention_norm.weight")?,
            post_ffw_norm: sandwich("post_ffw_norm.weight")?,
            gate,
            up,
            down: Matrix::bind(f, &n("ffn_down.weight"), e, ff)?,
        });
    }
    let mut inv_freq = vec![0f32; cfg.n_rot / 2];
    ops::rope_inv_freq(cfg.n_rot, cfg.rope_freq_base, &mut inv_freq);
    if let Some(fac) = vector_opt(f, "rope_freqs.weight", cfg.n_rot / 2)? {
        if fac.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
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
    let mut m = Llama {
        cfg,
        tok_embd,
        layers,
        output_norm,
        output,
        inv_freq,
    };
    if shard.size > 1 {
        m.keep(shard, &f.label())?;
    }
    Ok(Box::new(m))
}

impl Llama {
    /// Keeps a tensor-parallel rank's part of every matrix ([`crate::shard`]): its heads' rows
    /// of Q, K, V (and biases) and columns of the attention output, its hidden units' rows of
    /// gate and up and columns of down, its rows of the vocabulary.
    fn keep(&mut self, shard: Shard, label: &str) -> Result<(), ModelError> {
        let (o, down) = (
            self.layers.iter().map(|l| &l.wo),
            self.layers.iter().map(|l| &l.down),
        );
        let cut = Cut::new(&self.cfg, shard, o, down, label)?;
        let (qr, kvr, ff) = (
            cut.q_rows(self.cfg.head_dim),
            cut.kv_rows(self.cfg.head_dim),
            &cut.ff,
        );
        let slice = |v: &mut Option<Vec<f32>>, r: &std::ops::Range<usize>| {
            if let Some(b) = v {
                *b = b[r.clone()].to_vec();
            }
        };
        for l in &mut self.layers {
            l.wq = l.wq.rows_view(qr.start, qr.len());
            l.wk = l.wk.rows_view(kvr.start, kvr.len());
            l.wv = l.wv.rows_view(kvr.start, kvr.len());
            slice(&mut l.bq, &qr);
            slice(&mut l.bk, &kvr);
            slice(&mut l.bv, &kvr);
            l.wo = l.wo.cols_copy(qr.start, qr.len())?;
            l.gate = l.gate.rows_view(ff.start, ff.len());
            l.up = l.up.rows_view(ff.start, ff.len());
            l.down = l.down.cols_copy(ff.start, ff.len())?;
        }
        self.output = self.output.rows_view(cut.vocab.start, cut.vocab.len());
        self.cfg = cut.local(&self.cfg);
        Ok(())
    }
}

impl Decoder for Llama {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn embed(&self, tokens: &[u32], _spans: &[SeqSpan], x: &mut [f32]) -> Result<(), ModelError> {
        let e = self.cfg.n_embd;
        for (&t, row) in tokens.iter().zip(x.chunks_exact_mut(e)) {
            self.tok_embd.row(t as usize, row)?;
            if let Some(s) = self.cfg.embd_scale() {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        Ok(())
    }

    fn layer(&self, li: usize, st: &mut Step<'_>, b: &mut Buffers<'_>) -> Result<(), ModelError> {
        let (cfg, layer) = (&self.cfg, &self.layers[li]);
        let (e, qd, kvd, ff, hd) = (
            cfg.n_embd,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.n_ff,
            cfg.head_dim,
        );
        let isa = st.isa();
        st.each_token(e, [&mut *b.x, &mut *b.h], &|_, [xt, ht]| {
            ops::rms_norm(xt, &layer.attn_norm, cfg.rms_eps, ht);
        });
        let (wq, wk, wv) = (&layer.wq, &layer.wk, &layer.wv);
        st.matmul_many([wq, wk, wv], b.h, [&mut *b.q, &mut *b.k, &mut *b.v]);
        let step = &*st;
        step.each_token(
            qd + 2 * kvd,
            [&mut *b.q, &mut *b.k, &mut *b.v],
            &|t, [qt, kt, vt]| {
                for (row, bias) in [
                    (&mut *qt, &layer.bq),
                    (&mut *kt, &layer.bk),
                    (&mut *vt, &layer.bv),
                ] {
                    if let Some(b) = bias {
                        row.iter_mut().zip(b).for_each(|(a, bb)| *a += bb);
                    }
                }
                let pos = step.pos(t);
                // The rotation angles once for all the token's heads (a table on the stack;
                // rotary dimensions past its size compute them per head).
                let mut cs = [0f32; 512];
                let table = cfg.n_rot <= cs.len();
                if table {
                    ops::rope_angles(cfg.n_rot, pos, cfg.rope_freq_scale, &self.inv_freq, &mut cs);
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
            },
        );
        st.attention(li, cfg.window(li), b.k, b.v, b.q, b.att);
        st.matmul_to_residual(&layer.wo, b.att, b.h)?;
        // x += post_attn_norm(h); h = ffn_norm(x), token by token.
        st.each_token(e, [&mut *b.x, &mut *b.h], &|_, [xt, ht]| {
            if let Some(w) = &layer.post_attn_norm {
                ops::rms_norm_inplace(ht, w, cfg.rms_eps);
            }
            xt.iter_mut().zip(ht.iter()).for_each(|(a, b)| *a += b);
            ops::rms_norm(xt, &layer.ffn_norm, cfg.rms_eps, ht);
        });
        let (wg, wu) = (&layer.gate, &layer.up);
        st.matmul_many([wg, wu], b.h, [&mut *b.gate, &mut *b.up]);
        st.each_token(ff, [&mut *b.gate, &mut *b.up], &|_, [gt, ut]| {
            if cfg.arch.gemma {
                ops::gelu_tanh_mul(gt, ut);
            } else {
                ops::silu_mul_fast(isa, gt, ut);
            }
        });
        st.matmul_to_residual(&layer.down, b.gate, b.h)?;
        // x += post_ffw_norm(h).
        st.each_token(e, [&mut *b.x, &mut *b.h], &|_, [xt, ht]| {
            if let Some(w) = &layer.post_ffw_norm {
                ops::rms_norm_inplace(ht, w, cfg.rms_eps);
            }
            xt.iter_mut().zip(ht.iter()).for_each(|(a, b)| *a += b);
        });
        Ok(())
    }

    fn final_norm(&self, x: &[f32], out: &mut [f32]) {
        ops::rms_norm(x, &self.output_norm, self.cfg.rms_eps, out);
    }

    fn output(&self) -> &Matrix {
        &self.output
    }

    fn keep_layers(&mut self, r: std::ops::Range<usize>) {
        self.layers = self.layers.drain(r.clone()).collect();
        self.cfg.keep_layers(&r);
    }

    fn matrices(&self) -> Vec<&Matrix> {
        let mut m: Vec<&Matrix> = self
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down])
            .collect();
        m.push(&self.output);
        m
    }
}

/// The HF name of a GGUF tensor name of the Llama family. `sandwich` for Gemma 2, whose
/// `post_attention_layernorm` follows attention (GGUF `post_attention_norm`) and whose
/// `pre_feedforward_layernorm` is the FFN input norm.
pub(crate) fn hf_name_for(gguf: &str, sandwich: bool) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, t) = rest.split_once('.')?;
    let (base, suffix) = t.rsplit_once('.')?;
    let hf = match base {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_norm" if sandwich => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// A Llama-family safetensors checkpoint seen through GGUF tensor names.
struct HfSource {
    st: Safetensors,
    /// Gemma 2's norm names.
    sandwich: bool,
    /// Gemma's RMSNorm weights are stored as w − 1.
    norm_offset: f32,
    /// Llama 3.1's RoPE frequency factors from `config.json`, presented as the
    /// `rope_freqs.weight` tensor a GGUF file would carry (little-endian f32).
    rope_freqs: Option<std::sync::Arc<Vec<u8>>>,
}

/// The tensors of a Llama-family checkpoint, under GGUF names.
pub(crate) fn hf_source(
    st: Safetensors,
    cfg: &ModelConfig,
    extras: &HfExtras,
) -> Box<dyn WeightSource> {
    Box::new(HfSource {
        st,
        sandwich: cfg.arch.sandwich,
        norm_offset: if cfg.arch.gemma { 1.0 } else { 0.0 },
        rope_freqs: extras
            .rope_factors
            .as_ref()
            .map(|f| std::sync::Arc::new(f.iter().flat_map(|x| x.to_le_bytes()).collect())),
    })
}

impl WeightSource for HfSource {
    fn label(&self) -> String {
        self.st.dir.display().to_string()
    }

    fn norm_offset(&self) -> f32 {
        self.norm_offset
    }

    fn get(&self, name: &str) -> Option<WeightInfo> {
        if name == "rope_freqs.weight" {
            let b = self.rope_freqs.as_ref()?;
            return Some(WeightInfo {
                name: name.into(),
                dtype: tuili_core::DType::F32,
                shape: vec![b.len() as u64 / 4],
                range: 0..b.len(),
                backing: WeightBytes::Owned(b.clone()),
            });
        }
        let hf = hf_name_for(name, self.sandwich)?;
        // Tied checkpoints may keep only one of the two matrices (a 656K TinyStories model
        // stores lm_head.weight and no embedding).
        let t = self.st.tensors.get(&hf).or_else(|| match name {
            "token_embd.weight" => self.st.tensors.get("lm_head.weight"),
            // Phi-3's fused gate/up projection stands for GGUF's 2·n_ff-row ffn_up.
            _ if name.ends_with("ffn_up.weight") => self
                .st
                .tensors
                .get(&hf.replace("mlp.up_proj", "mlp.gate_up_proj")),
            _ => None,
        })?;
        Some(WeightInfo {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            backing: WeightBytes::Shard(t.shard.clone()),
            range: t.range.clone(),
        })
    }
}

/// Reads a Llama-family `config.json` (`c`, of the folder `dir`) into a [`ModelConfig`] and
/// the extras: Llama 2/3/3.1 (linear and llama3 RoPE scaling), Mistral (sliding window),
/// Qwen2, Qwen3, Phi-3 (partial rotary), Gemma, Gemma 2 (soft caps, query scale). HF
/// checkpoints keep Q and K unpermuted and rotate halves of each head: NeoX layout.
pub(crate) fn hf_config(
    dir: &Path,
    c: &Value,
    arch: Arch,
) -> Result<(ModelConfig, HfExtras), ModelError> {
    let j = ConfigJson::new(dir, c);
    let (bad, req) = (
        |k: &str, v: String, r: &str| j.bad(k, v, r),
        |k: &str| j.dim(k),
    );
    let n_embd = req("hidden_size")?;
    let n_head = req("num_attention_heads")?;
    let n_head_kv = c["num_key_value_heads"]
        .as_u64()
        .map(|v| v as usize)
        .unwrap_or(n_head);
    let head_dim = c["head_dim"]
        .as_u64()
        .map(|v| v as usize)
        .unwrap_or(n_embd / n_head);
    if n_head_kv == 0 || n_head % n_head_kv != 0 || head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(bad(
            "num_key_value_heads",
            n_head_kv.to_string(),
            "must divide num_attention_heads, with an even head size",
        ));
    }
    let rope = Rope::read(&j)?;
    let rope_theta = rope.theta as f32;
    let n_ctx_train = c["max_position_embeddings"].as_u64().unwrap_or(2048) as usize;
    let mut extras = HfExtras::default();
    let mut freq_scale = 1.0f32;
    let get = |k: &str, default: f64| rope.get(k).unwrap_or(default);
    match rope.kind.as_str() {
        "default" => {}
        "linear" => freq_scale = (1.0 / get("factor", 1.0)) as f32,
        "llama3" => {
            extras.rope_factors = Some(llama3_factors(
                head_dim,
                rope.theta,
                get("factor", 1.0),
                get("low_freq_factor", 1.0),
                get("high_freq_factor", 4.0),
                get("original_max_position_embeddings", 8192.0),
            ));
        }
        other => {
            return Err(bad(
                rope.key,
                other.to_string(),
                "supported RoPE types: default, linear, llama3",
            ))
        }
    }
    if let Some(w) = c["sliding_window"].as_u64() {
        if c["use_sliding_window"].as_bool() != Some(false) {
            extras.sliding_window = Some(w as usize);
        }
    }
    let positive = |k: &str| c[k].as_f64().filter(|v| *v > 0.0);
    let cfg = ModelConfig {
        arch,
        name: hf::model_name(dir, c),
        n_vocab: req("vocab_size")?,
        n_embd,
        n_layer: req("num_hidden_layers")?,
        n_head,
        n_head_kv,
        head_dim,
        n_ff: req("intermediate_size")?,
        n_ctx_train,
        rms_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
        // Phi-3.5/4 style partial rotary embeddings rotate the first dims of each head.
        n_rot: {
            let f = rope.partial.unwrap_or(1.0);
            let r = ((head_dim as f64 * f) as usize) & !1;
            if r == 0 || r > head_dim {
                return Err(bad(
                    "partial_rotary_factor",
                    f.to_string(),
                    "must be in (0, 1]",
                ));
            }
            r
        },
        rope_freq_base: rope_theta,
        rope_freq_scale: freq_scale,
        rope_layout: RopeLayout::NeoX,
        attn_softcap: positive("attn_logit_softcapping").map(|v| v as f32),
        final_softcap: positive("final_logit_softcapping").map(|v| v as f32),
        sliding_window: extras.sliding_window,
        attn_scale: positive("query_pre_attn_scalar").map(|v| (1.0 / v.sqrt()) as f32),
        first_layer: 0,
    };
    Ok((cfg, extras))
}

/// The RoPE settings of a `config.json`, in either form: transformers 5's `rope_parameters`
/// (`rope_type`, `rope_theta` and the scaling's own keys in one object) or the older
/// top-level `rope_theta` and `rope_scaling` (`rope_parameters` wins when both are there, as
/// in transformers). A key it does not understand is refused: running with the default base
/// and no scaling would be silently wrong.
struct Rope<'a> {
    /// Where the settings came from: `rope_parameters` or `rope_scaling`.
    key: &'static str,
    kind: String,
    theta: f64,
    /// `partial_rotary_factor`, at the top level or among the parameters.
    partial: Option<f64>,
    params: Option<&'a serde_json::Map<String, Value>>,
}

impl<'a> Rope<'a> {
    const KNOWN: [&'static str; 8] = [
        "rope_type",
        "type",
        "rope_theta",
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
        "partial_rotary_factor",
    ];

    fn read(j: &ConfigJson<'a>) -> Result<Rope<'a>, ModelError> {
        let c = j.c;
        if let Some(k) = c.as_object().and_then(|m| {
            m.keys().find(|k| {
                k.starts_with("rope_")
                    && !["rope_theta", "rope_scaling", "rope_parameters"].contains(&k.as_str())
            })
        }) {
            return Err(j.bad(k, c[k].to_string(), "a RoPE setting tuili does not know"));
        }
        let object = |key: &'static str| match &c[key] {
            Value::Null => Ok(None),
            Value::Object(m) => Ok(Some((key, m))),
            v => Err(j.bad(key, v.to_string(), "must be an object")),
        };
        let (key, params) = match object("rope_parameters")? {
            Some(p) => (p.0, Some(p.1)),
            None => match object("rope_scaling")? {
                Some(p) => (p.0, Some(p.1)),
                None => ("rope_scaling", None),
            },
        };
        let mut kind = "default".to_string();
        if let Some(m) = params {
            if m.values().any(Value::is_object) {
                return Err(j.bad(
                    key,
                    Value::Object(m.clone()).to_string(),
                    "RoPE parameters per attention type are not supported",
                ));
            }
            if let Some(k) = m.keys().find(|k| !Self::KNOWN.contains(&k.as_str())) {
                return Err(j.bad(
                    &format!("{key}.{k}"),
                    m[k].to_string(),
                    "a RoPE setting tuili does not know",
                ));
            }
            for (k, v) in m {
                let ok = match k.as_str() {
                    "rope_type" | "type" => v.is_string(),
                    _ => v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0),
                };
                if !ok {
                    return Err(j.bad(&format!("{key}.{k}"), v.to_string(), "not a valid value"));
                }
            }
            if let Some(t) = m.get("rope_type").or(m.get("type")).and_then(Value::as_str) {
                kind = t.to_string();
            }
        }
        let num = |k: &str| params.and_then(|m| m.get(k)).and_then(Value::as_f64);
        let theta = match num("rope_theta").or(c["rope_theta"].as_f64()) {
            Some(t) if t.is_finite() && t > 1.0 => t,
            Some(t) => return Err(j.bad("rope_theta", t.to_string(), "must be above 1")),
            None => 10_000.0,
        };
        Ok(Rope {
            key,
            kind,
            theta,
            partial: c["partial_rotary_factor"]
                .as_f64()
                .or(num("partial_rotary_factor")),
            params,
        })
    }

    /// A numeric parameter of the scaling.
    fn get(&self, k: &str) -> Option<f64> {
        self.params.and_then(|m| m.get(k)).and_then(Value::as_f64)
    }
}

/// Llama 3.1's frequency-dependent RoPE scaling (transformers' `_compute_llama3_parameters`),
/// as factors that divide each inverse frequency: long wavelengths are slowed by `factor`,
/// short ones kept, and those between interpolated smoothly.
fn llama3_factors(
    head_dim: usize,
    theta: f64,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let inv = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let new = if wavelen < high_wavelen {
                inv
            } else if wavelen > low_wavelen {
                inv / factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                (1.0 - smooth) * inv / factor + smooth * inv
            };
            (inv / new) as f32
        })
        .collect()
}

/// A Llama-family Hugging Face folder as quantizer input: `{arch}.*` keys, the tokenizer, and
/// the tensors under GGUF names (borrowed from `st`'s maps where not transformed). For GGUF's
/// `llama` (interleaved RoPE) the Q and K rows of each head are permuted from HF's rotate-half
/// order to adjacent pairs; Gemma's norms are stored as 1 + w; Llama 3.1 RoPE scaling becomes a
/// `rope_freqs.weight` tensor.
pub(crate) fn hf_to_gguf<'a>(
    dir: &Path,
    st: &'a Safetensors,
    cfg: &ModelConfig,
    extras: &HfExtras,
) -> Result<QuantInput<'a>, ModelError> {
    let arch = cfg.arch.name;
    let k = |s: &str| format!("{arch}.{s}");
    let mut md = shape_metadata(cfg);
    md.extend([
        (
            k("attention.head_count_kv"),
            MetaValue::U32(cfg.n_head_kv as u32),
        ),
        (k("rope.dimension_count"), MetaValue::U32(cfg.n_rot as u32)),
        (k("rope.freq_base"), MetaValue::F32(cfg.rope_freq_base)),
        (
            k("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(cfg.rms_eps),
        ),
    ]);
    if cfg.head_dim * cfg.n_head != cfg.n_embd {
        md.push((
            k("attention.key_length"),
            MetaValue::U32(cfg.head_dim as u32),
        ));
        md.push((
            k("attention.value_length"),
            MetaValue::U32(cfg.head_dim as u32),
        ));
    }
    if let Some(c) = cfg.attn_softcap {
        md.push((k("attn_logit_softcapping"), MetaValue::F32(c)));
    }
    if let Some(c) = cfg.final_softcap {
        md.push((k("final_logit_softcapping"), MetaValue::F32(c)));
    }
    if let Some(w) = extras.sliding_window {
        md.push((k("attention.sliding_window"), MetaValue::U32(w as u32)));
    }
    if let Some(sc) = cfg.attn_scale {
        md.push((k("attention.scale"), MetaValue::F32(sc)));
    }
    if cfg.rope_freq_scale != 1.0 {
        md.push((k("rope.scaling.type"), MetaValue::String("linear".into())));
        md.push((
            k("rope.scaling.factor"),
            MetaValue::F32(1.0 / cfg.rope_freq_scale),
        ));
    }
    md.extend(tokenizer_metadata(dir)?);

    let mut names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ];
    if st.tensors.contains_key("lm_head.weight")
        && st.tensors.contains_key("model.embed_tokens.weight")
    {
        names.push("output.weight".into());
    }
    // Phi-3 keeps Q/K/V and gate/up fused, as GGUF's phi3 does.
    let fused_qkv = st
        .tensors
        .contains_key("model.layers.0.self_attn.qkv_proj.weight");
    let fused_ffn = st
        .tensors
        .contains_key("model.layers.0.mlp.gate_up_proj.weight");
    for i in 0..cfg.n_layer {
        let mut list = vec!["attn_norm.weight"];
        if fused_qkv {
            list.push("attn_qkv.weight");
        } else {
            list.extend([
                "attn_q.weight",
                "attn_q.bias",
                "attn_k.weight",
                "attn_k.bias",
                "attn_v.weight",
                "attn_v.bias",
            ]);
        }
        list.extend([
            "attn_output.weight",
            "attn_q_norm.weight",
            "attn_k_norm.weight",
        ]);
        list.push("ffn_norm.weight");
        if cfg.arch.sandwich {
            list.extend(["post_attention_norm.weight", "post_ffw_norm.weight"]);
        }
        if !fused_ffn {
            list.push("ffn_gate.weight");
        }
        list.extend(["ffn_up.weight", "ffn_down.weight"]);
        for t in list {
            names.push(format!("blk.{i}.{t}"));
        }
    }
    let mut tensors = Vec::new();
    let mut bytes = 0u64;
    for name in names {
        let mut hf = hf_name_for(&name, cfg.arch.sandwich).unwrap_or_default();
        if fused_ffn && name.ends_with("ffn_up.weight") {
            hf = hf.replace("mlp.up_proj", "mlp.gate_up_proj");
        }
        let t = match st.tensors.get(&hf) {
            Some(t) => t,
            // Tied checkpoints that keep only lm_head.
            None if name == "token_embd.weight" => st
                .tensors
                .get("lm_head.weight")
                .ok_or_else(|| bad(dir, "no model.embed_tokens.weight nor lm_head.weight"))?,
            // Optional per architecture: Qwen2's biases, Qwen3's head norms.
            None if name.ends_with(".bias")
                || name.ends_with("attn_q_norm.weight")
                || name.ends_with("attn_k_norm.weight") =>
            {
                continue
            }
            None => return Err(bad(dir, format!("tensor {hf} is missing"))),
        };
        bytes += t.data().len() as u64;
        // GGUF's interleaved-RoPE archs (`llama`) pair adjacent dimensions.
        let permute = cfg.arch.rope_layout == RopeLayout::Interleaved
            && (name.ends_with("attn_q.weight") || name.ends_with("attn_k.weight"));
        // GGUF's Gemma norms hold 1 + w (HF's RMSNorm multiplies by 1 + w).
        let gemma_norm = cfg.arch.gemma && name.ends_with("norm.weight");
        if gemma_norm {
            let mut v = vec![0f32; t.shape.iter().product::<u64>() as usize];
            tuili_kernels::types::dequantize_row(t.dtype, t.data(), &mut v)?;
            tensors.push(InputTensor {
                name,
                dtype: DType::F32,
                shape: t.shape.clone(),
                data: Cow::Owned(v.iter().flat_map(|x| (x + 1.0).to_le_bytes()).collect()),
            });
            continue;
        }
        let data = if permute {
            let heads = if name.ends_with("attn_q.weight") {
                cfg.n_head
            } else {
                cfg.n_head_kv
            };
            let rows = t.shape.get(1).copied().unwrap_or(1) as usize;
            let row_bytes = t.data().len() / rows.max(1);
            Cow::Owned(permute_rows(t.data(), heads, rows, row_bytes))
        } else {
            Cow::Borrowed(t.data())
        };
        tensors.push(InputTensor {
            name,
            dtype: t.dtype,
            shape: t.shape.clone(),
            data,
        });
    }
    if let Some(f) = &extras.rope_factors {
        tensors.push(InputTensor {
            name: "rope_freqs.weight".into(),
            dtype: DType::F32,
            shape: vec![f.len() as u64],
            data: Cow::Owned(f.iter().flat_map(|x| x.to_le_bytes()).collect()),
        });
    }
    Ok(QuantInput {
        label: dir.display().to_string(),
        metadata: md,
        tensors,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_llama3_factors() {
        assert_eq!(
            hf_name_for("blk.3.attn_q.bias", false).as_deref(),
            Some("model.layers.3.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_name_for("blk.0.ffn_down.weight", false).as_deref(),
            Some("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(
            hf_name_for("output.weight", false).as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(hf_name_for("blk.0.nonsense.weight", false), None);
        // Llama 3.1 8B: factor 8, low 1, high 4, original context 8192, head 128, θ 500000.
        let f = llama3_factors(128, 500_000.0, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f[0], 1.0, "the fastest frequencies are kept");
        assert!(
            (f[63] - 8.0).abs() < 1e-5,
            "the slowest are divided by the factor"
        );
        assert!(f.windows(2).all(|w| w[0] <= w[1] + 1e-6));
    }
}
