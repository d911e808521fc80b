//! Hyper-parameters from GGUF metadata (`{arch}.*` keys, as llama.cpp names them).

use tuili_formats::{GgufFile, MetaArray};
use tuili_kernels::ops::RopeLayout;

use crate::error::ModelError;

/// Which decoder file runs an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `arch/llama.rs`: RMSNorm, RoPE, gated MLP; the traits below say how a member differs.
    Llama,
    /// `arch/gpt2.rs`: learned positions, LayerNorm, biases, GELU MLP.
    Gpt2,
}

/// An architecture: its GGUF name and the traits that set its layer apart from the plain
/// Llama layer. Each architecture is one line of the registry (`arch/mod.rs`), which fills
/// this in; the decoder reads the traits, nothing matches on the name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arch {
    /// `general.architecture` in GGUF.
    pub name: &'static str,
    pub family: Family,
    /// How RoPE pairs dimensions: adjacent pairs (GGUF `llama`, whose Q/K rows the converter
    /// permutes into that order) or halves (NeoX: HF checkpoints and the other GGUF archs).
    pub rope_layout: RopeLayout,
    /// RMSNorm of each Q and K head before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Gemma: the MLP gate is tanh GELU (GeGLU), the token embeddings are scaled by
    /// √n_embd, and Hugging Face stores RMSNorm weights as w − 1 (its norm multiplies by 1 + w).
    pub gemma: bool,
    /// Gemma 2: sandwich norms after attention and after the MLP, soft-capped attention
    /// scores and logits, a query scale of its own, and the sliding window in every other
    /// layer (the first included).
    pub sandwich: bool,
}

impl Arch {
    /// The plain Llama layer (Llama 1/2/3, Mistral, TinyLlama: GGUF `llama`).
    pub const LLAMA: Arch = Arch {
        name: "llama",
        family: Family::Llama,
        rope_layout: RopeLayout::Interleaved,
        qk_norm: false,
        gemma: false,
        sandwich: false,
    };
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub name: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    /// Dimensions of each head that RoPE rotates.
    pub n_rot: usize,
    pub rope_freq_base: f32,
    /// Position multiplier: 1/factor for linear scaling.
    pub rope_freq_scale: f32,
    pub rope_layout: RopeLayout,
    /// Gemma 2: attention scores become c·tanh(s/c) before the softmax.
    pub attn_softcap: Option<f32>,
    /// Gemma 2: logits become c·tanh(l/c).
    pub final_softcap: Option<f32>,
    /// Attention scale when it is not 1/√head_dim (Gemma 2's query_pre_attn_scalar^-½).
    pub attn_scale: Option<f32>,
    /// Sliding-window attention: each query sees the last `w` positions (itself included) —
    /// in every layer (Mistral) or in every other layer starting with the first (Gemma 2).
    pub sliding_window: Option<usize>,
    /// The model's index of this config's first layer: 0, or a pipeline stage's first
    /// (`n_layer` is then the stage's count).
    pub first_layer: usize,
}

impl ModelConfig {
    /// The attention window of layer `l`: the last `w` positions where the model slides
    /// (every layer for Mistral, every other one for Gemma 2), else `None` (all positions).
    pub fn window(&self, l: usize) -> Option<usize> {
        let slides = !self.arch.sandwich || (l + self.first_layer).is_multiple_of(2);
        self.sliding_window.filter(|_| slides)
    }

    /// Keeps layers `r` of the model (a pipeline stage's): its layer indices then count from
    /// `r.start`.
    pub fn keep_layers(&mut self, r: &std::ops::Range<usize>) {
        self.first_layer += r.start;
        self.n_layer = r.len();
    }

    /// Gemma multiplies the token embeddings by √n_embd.
    pub fn embd_scale(&self) -> Option<f32> {
        self.arch.gemma.then(|| (self.n_embd as f32).sqrt())
    }
}

impl ModelConfig {
    /// n_head_kv · head_dim: the width of one position's keys (or values).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// n_head · head_dim: the width of the queries and of the attention output.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Reads the `{arch}.*` hyper-parameters of a GGUF file of architecture `arch` (the
    /// registry found it by `general.architecture`).
    pub fn from_gguf(f: &GgufFile, arch: Arch) -> Result<ModelConfig, ModelError> {
        let path = f.path().display().to_string();
        let arch_name = arch.name;
        let key = |k: &str| format!("{arch_name}.{k}");
        let bad = |k: &str, v: String, reason: &str| ModelError::BadHyperParam {
            path: path.clone(),
            key: k.to_string(),
            value: v,
            reason: reason.to_string(),
        };
        // A hyper-parameter that sizes buffers: positive and below a sane bound, so that a
        // corrupt file is refused instead of asking for terabytes.
        let dim = |k: &str, v: u64| -> Result<usize, ModelError> {
            if v == 0 || v > (1 << 24) {
                return Err(bad(k, v.to_string(), "must be between 1 and 16777216"));
            }
            Ok(v as usize)
        };
        let req = |k: &str| -> Result<usize, ModelError> {
            let k = key(k);
            let v = f.require_u64(&k)?;
            dim(&k, v)
        };
        let n_embd = req("embedding_length")?;
        let n_layer = req("block_count")?;
        let n_head = req("attention.head_count")?;
        let n_ff = req("feed_forward_length")?;
        let n_ctx_train = req("context_length")?;
        let n_head_kv = match f.get_u64(&key("attention.head_count_kv"))? {
            Some(v) => dim(&key("attention.head_count_kv"), v)?,
            None => n_head,
        };
        if n_head % n_head_kv != 0 {
            return Err(bad(
                &key("attention.head_count_kv"),
                n_head_kv.to_string(),
                &format!("must divide the head count {n_head}"),
            ));
        }
        let head_dim = match f.get_u64(&key("attention.key_length"))? {
            Some(v) => dim(&key("attention.key_length"), v)?,
            None => {
                if n_embd % n_head != 0 {
                    return Err(bad(
                        &key("embedding_length"),
                        n_embd.to_string(),
                        "is not a multiple of the head count",
                    ));
                }
                n_embd / n_head
            }
        };
        if let Some(vl) = f.get_u64(&key("attention.value_length"))? {
            if vl as usize != head_dim {
                return Err(bad(
                    &key("attention.value_length"),
                    vl.to_string(),
                    "must equal the key length",
                ));
            }
        }
        let n_rot = match f.get_u64(&key("rope.dimension_count"))? {
            Some(v) => dim(&key("rope.dimension_count"), v)?,
            None => head_dim,
        };
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(bad(
                &key("rope.dimension_count"),
                n_rot.to_string(),
                "must be even and at most the head size",
            ));
        }
        // RMSNorm's epsilon, or LayerNorm's (GPT-2).
        let rms_eps = f
            .get_f64(&key("attention.layer_norm_rms_epsilon"))?
            .or(f.get_f64(&key("attention.layer_norm_epsilon"))?)
            .unwrap_or(1e-5) as f32;
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(bad(
                &key("attention.layer_norm_rms_epsilon"),
                rms_eps.to_string(),
                "must be a finite non-negative number",
            ));
        }
        let rope_freq_base = f.get_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0) as f32;
        if !(rope_freq_base.is_finite() && rope_freq_base > 1.0) {
            return Err(bad(
                &key("rope.freq_base"),
                rope_freq_base.to_string(),
                "must be a finite number above 1",
            ));
        }
        let scaling = f.get_str(&key("rope.scaling.type"))?.unwrap_or("none");
        let factor = f
            .get_f64(&key("rope.scaling.factor"))?
            .or(f.get_f64(&key("rope.scale_linear"))?)
            .unwrap_or(1.0) as f32;
        let rope_freq_scale = match scaling {
            "none" => 1.0,
            "linear" => {
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(bad(
                        &key("rope.scaling.factor"),
                        factor.to_string(),
                        "must be a positive number",
                    ));
                }
                1.0 / factor
            }
            other => {
                return Err(bad(
                    &key("rope.scaling.type"),
                    other.to_string(),
                    "only linear RoPE scaling is supported",
                ));
            }
        };
        let n_vocab = match f.get_u64(&key("vocab_size"))? {
            Some(v) => dim(&key("vocab_size"), v)?,
            None => match f.get_array("tokenizer.ggml.tokens")? {
                Some(a) if !a.is_empty() => a.len(),
                Some(MetaArray::String(_)) | Some(_) | None => {
                    // Fall back to the embedding matrix's row count.
                    let t = f.tensor_info("token_embd.weight").ok_or_else(|| {
                        ModelError::MissingTensor {
                            path: path.clone(),
                            name: "token_embd.weight".into(),
                        }
                    })?;
                    dim(
                        "token_embd.weight rows",
                        t.shape.get(1).copied().unwrap_or(0),
                    )?
                }
            },
        };
        let name = f.get_str("general.name")?.unwrap_or(arch_name).to_string();
        let positive = |k: &str| -> Result<Option<f32>, ModelError> {
            match f.get_f64(&key(k))? {
                Some(v) if v.is_finite() && v > 0.0 => Ok(Some(v as f32)),
                Some(v) => Err(bad(&key(k), v.to_string(), "must be a positive number")),
                None => Ok(None),
            }
        };
        let (attn_softcap, final_softcap) = if arch.sandwich {
            (
                positive("attn_logit_softcapping")?,
                positive("final_logit_softcapping")?,
            )
        } else {
            (None, None)
        };
        Ok(ModelConfig {
            arch,
            name,
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            rms_eps,
            n_rot,
            rope_freq_base,
            rope_freq_scale,
            rope_layout: arch.rope_layout,
            attn_softcap,
            final_softcap,
            sliding_window: match f.get_u64(&key("attention.sliding_window"))? {
                Some(w) => Some(dim(&key("attention.sliding_window"), w)?),
                None => None,
            },
            // `{arch}.attention.scale` when given; llama.cpp's Gemma 2 graph scales queries by
            // 1/√head_dim, except for the 27B model (46 layers): 1/√(n_embd/n_head).
            attn_scale: match positive("attention.scale")? {
                Some(s) => Some(s),
                None => (arch.sandwich && n_layer == 46)
                    .then(|| 1.0 / ((n_embd / n_head) as f32).sqrt()),
            },
            first_layer: 0,
        })
    }

    /// Number of parameters (elements of every weight), for display.
    pub fn n_params_estimate(&self) -> u64 {
        let (e, v, l, f) = (
            self.n_embd as u64,
            self.n_vocab as u64,
            self.n_layer as u64,
            self.n_ff as u64,
        );
        let attn = e * self.q_dim() as u64 * 2 + e * self.kv_dim() as u64 * 2;
        v * e * 2 + l * (attn + 3 * e * f + 2 * e) + e
    }
}
