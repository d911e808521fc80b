//! Hugging Face model folders (`config.json` + safetensors) for the Llama family: Llama 2/3/3.1
//! (`llama`, with linear and llama3 RoPE scaling), Mistral (`mistral`), Qwen2 (`qwen2`),
//! Qwen3 (`qwen3`) and Phi-3 (`phi3`, fused Q/K/V and gate/up). The weights stay in the memory maps of the shards; HF tensor names are
//! presented to the forward pass under GGUF's names. HF checkpoints keep Q and K unpermuted and
//! rotate halves of each head (NeoX layout), where GGUF's `llama` permutes them for adjacent
//! pairs; the config says which.

use std::path::Path;

use serde_json::Value;
use tuili_formats::Safetensors;
use tuili_kernels::ops::RopeLayout;

use crate::config::{Arch, ModelConfig};
use crate::weights::{Backing, WeightInfo, WeightSource};
use crate::{Gpt2, Llama, Model, ModelError};

/// A safetensors checkpoint seen through GGUF tensor names.
pub struct HfSource {
    st: Safetensors,
    /// Gemma 2's norm names.
    sandwich: bool,
    /// Gemma's RMSNorm weights are stored as w − 1.
    norm_offset: f32,
}

/// The HF name of a GGUF tensor name.
/// `sandwich` for Gemma 2, whose `post_attention_layernorm` follows attention (GGUF
/// `post_attention_norm`) and whose `pre_feedforward_layernorm` is the FFN input norm.
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

impl WeightSource for HfSource {
    fn label(&self) -> String {
        self.st.dir.display().to_string()
    }

    fn norm_offset(&self) -> f32 {
        self.norm_offset
    }

    fn get(&self, name: &str) -> Option<WeightInfo> {
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
            backing: Backing::Shard(t.shard.clone()),
            range: t.range.clone(),
        })
    }
}

/// A GPT-2 checkpoint under GGUF's `gpt2` names. Its Conv1D weights are stored `[in, out]`;
/// they are transposed once, here, into `[out, in]` rows (the only weights tuili copies).
pub(crate) struct Gpt2Source<'a> {
    pub(crate) st: &'a Safetensors,
}

impl Gpt2Source<'_> {
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

impl WeightSource for Gpt2Source<'_> {
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
                backing: Backing::Shard(t.shard.clone()),
                range: t.range.clone(),
            });
        }
        // Conv1D: safetensors [in, out] (our ne0-first shape [out, in]) → rows of `in`.
        let (out, inp) = (*t.shape.first()? as usize, *t.shape.get(1)? as usize);
        let mut src = vec![0f32; out * inp];
        tuili_kernels::dequant::dequantize_row(t.dtype, t.data(), &mut src).ok()?;
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
            backing: Backing::Owned(std::sync::Arc::new(dst)),
        })
    }
}

/// What `config.json` and `generation_config.json` say beyond the shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HfExtras {
    /// Llama 3.1 RoPE scaling, as factors dividing each frequency.
    pub rope_factors: Option<Vec<f32>>,
    /// Mistral's sliding attention window (contexts up to it are exact).
    pub sliding_window: Option<usize>,
    /// End-of-sequence ids from the configs.
    pub eos_ids: Vec<u32>,
    /// Default sampling settings of `generation_config.json`.
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub do_sample: Option<bool>,
}

fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| ModelError::BadHyperParam {
                path: path.display().to_string(),
                key: "json".into(),
                value: String::new(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads `config.json` into a [`ModelConfig`] and the extras.
pub fn config_from_hf(dir: &Path) -> Result<(ModelConfig, HfExtras), ModelError> {
    let path = dir.join("config.json");
    let c = read_json(&path)?.ok_or_else(|| ModelError::Io {
        path: path.display().to_string(),
        reason: "not found (a Hugging Face model folder needs config.json)".into(),
    })?;
    let p = path.display().to_string();
    let bad = |key: &str, value: String, reason: &str| ModelError::BadHyperParam {
        path: p.clone(),
        key: key.into(),
        value,
        reason: reason.into(),
    };
    let model_type = c["model_type"].as_str().unwrap_or("");
    if model_type == "gpt2" {
        let g = |k: &str| -> Result<usize, ModelError> {
            c[k].as_u64()
                .filter(|&v| v > 0 && v < (1 << 31))
                .map(|v| v as usize)
                .ok_or_else(|| bad(k, c[k].to_string(), "missing or not a positive integer"))
        };
        let (e, nh) = (g("n_embd")?, g("n_head")?);
        if e % nh != 0 {
            return Err(bad("n_head", nh.to_string(), "must divide n_embd"));
        }
        let extras = HfExtras {
            eos_ids: ids(&c["eos_token_id"]),
            ..HfExtras::default()
        };
        let cfg = ModelConfig {
            arch: Arch::Gpt2,
            name: c["_name_or_path"].as_str().unwrap_or("gpt2").to_string(),
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
        };
        return Ok((cfg, extras));
    }
    let arch = match model_type {
        "llama" | "mistral" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "phi3" => Arch::Phi3,
        "gemma" => Arch::Gemma,
        "gemma2" => Arch::Gemma2,
        other => {
            return Err(ModelError::UnsupportedArch {
                path: p.clone(),
                arch: other.to_string(),
            })
        }
    };
    let req = |key: &str| -> Result<usize, ModelError> {
        c[key]
            .as_u64()
            .filter(|&v| v > 0 && v < (1 << 31))
            .map(|v| v as usize)
            .ok_or_else(|| bad(key, c[key].to_string(), "missing or not a positive integer"))
    };
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
    if n_head_kv == 0 || n_head % n_head_kv != 0 || head_dim == 0 || head_dim % 2 != 0 {
        return Err(bad(
            "num_key_value_heads",
            n_head_kv.to_string(),
            "must divide num_attention_heads, with an even head size",
        ));
    }
    let rope_theta = c["rope_theta"].as_f64().unwrap_or(10_000.0) as f32;
    let n_ctx_train = c["max_position_embeddings"].as_u64().unwrap_or(2048) as usize;
    let mut extras = HfExtras::default();
    let mut freq_scale = 1.0f32;
    if let Some(rs) = c["rope_scaling"].as_object() {
        let kind = rs
            .get("rope_type")
            .or_else(|| rs.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let factor = rs.get("factor").and_then(|v| v.as_f64()).unwrap_or(1.0);
        match kind {
            "default" => {}
            "linear" => freq_scale = (1.0 / factor) as f32,
            "llama3" => {
                let low = rs
                    .get("low_freq_factor")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(1.0);
                let high = rs
                    .get("high_freq_factor")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(4.0);
                let old = rs
                    .get("original_max_position_embeddings")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(8192.0);
                extras.rope_factors = Some(llama3_factors(
                    head_dim,
                    rope_theta as f64,
                    factor,
                    low,
                    high,
                    old,
                ));
            }
            other => {
                return Err(bad(
                    "rope_scaling",
                    other.to_string(),
                    "supported: linear, llama3",
                ))
            }
        }
    }
    if let Some(w) = c["sliding_window"].as_u64() {
        if c["use_sliding_window"].as_bool() != Some(false) {
            extras.sliding_window = Some(w as usize);
        }
    }
    extras.eos_ids = ids(&c["eos_token_id"]);
    if let Some(g) = read_json(&dir.join("generation_config.json"))? {
        for id in ids(&g["eos_token_id"]) {
            if !extras.eos_ids.contains(&id) {
                extras.eos_ids.push(id);
            }
        }
        extras.temperature = g["temperature"].as_f64().map(|v| v as f32);
        extras.top_k = g["top_k"].as_u64().map(|v| v as usize);
        extras.top_p = g["top_p"].as_f64().map(|v| v as f32);
        extras.repetition_penalty = g["repetition_penalty"].as_f64().map(|v| v as f32);
        extras.do_sample = g["do_sample"].as_bool();
    }
    let cfg = ModelConfig {
        arch,
        name: c["_name_or_path"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from)
            .unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
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
            let f = c["partial_rotary_factor"].as_f64().unwrap_or(1.0);
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
        attn_softcap: c["attn_logit_softcapping"]
            .as_f64()
            .filter(|v| *v > 0.0)
            .map(|v| v as f32),
        final_softcap: c["final_logit_softcapping"]
            .as_f64()
            .filter(|v| *v > 0.0)
            .map(|v| v as f32),
        sliding_window: extras.sliding_window,
        attn_scale: c["query_pre_attn_scalar"]
            .as_f64()
            .filter(|v| *v > 0.0)
            .map(|v| (1.0 / v.sqrt()) as f32),
    };
    Ok((cfg, extras))
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

/// Loads a Hugging Face model folder.
pub fn load_hf(dir: &Path) -> Result<(Model, HfExtras), ModelError> {
    load_hf_with(dir, tuili_formats::Load::Map)
}

/// [`load_hf`] with the shards mapped or read into memory ([`tuili_formats::Load`]).
pub fn load_hf_with(dir: &Path, how: tuili_formats::Load) -> Result<(Model, HfExtras), ModelError> {
    let (cfg, extras) = config_from_hf(dir)?;
    let st = Safetensors::open_dir_with(dir, how).map_err(|e| ModelError::Io {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    if cfg.arch == Arch::Gpt2 {
        let m = Gpt2::from_source(cfg, &Gpt2Source { st: &st })?;
        return Ok((Model::Gpt2(m), extras));
    }
    let src = HfSource {
        st,
        sandwich: cfg.arch == Arch::Gemma2,
        norm_offset: if matches!(cfg.arch, Arch::Gemma | Arch::Gemma2) {
            1.0
        } else {
            0.0
        },
    };
    let model = Llama::from_source(cfg, &src, extras.rope_factors.clone())?;
    Ok((Model::Llama(model), extras))
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
