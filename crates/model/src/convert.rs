//! Hugging Face folder → GGUF, as llama.cpp's `convert_hf_to_gguf.py` lays it out, for
//! `tuili quantize`: what every architecture's conversion shares — the shape keys, the
//! tokenizer as `tokenizer.ggml.*` with the chat template, the Q/K row permutation. Each
//! architecture's own keys and tensors are its file's (`arch/*.rs`, `hf_to_gguf`), reached
//! through the registry (`arch::hf_input`).
//!
//! Tokenizers: SentencePiece-style BPE (`tokenizer.json` with byte fallback and `▁` for
//! spaces, as Llama 2, Mistral and TinyLlama ship) becomes a `llama` vocabulary whose scores
//! rank each token by the merge that makes it (score = −rank), so that llama.cpp's
//! score-driven merging reproduces the BPE merges.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use tuili_formats::{MetaArray, MetaValue};
use tuili_tokenizer::hf_config::TokenizerConfig;
use tuili_tokenizer::Tokenizer;

use crate::config::ModelConfig;
use crate::error::ModelError;

pub(crate) fn bad(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// GGUF token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The `tokenizer.ggml.pre` name of a byte-level BPE pre-tokenizer, recognised by its split
/// pattern (the patterns of GPT-2, Llama 3 and Qwen2 as their tokenizer.json files write them).
fn byte_level_pre(t: &Value) -> Option<&'static str> {
    let pre = &t["pre_tokenizer"];
    if pre["type"] == "ByteLevel" && pre["use_regex"] != false {
        return Some("gpt-2");
    }
    let pattern = pre["pretokenizers"]
        .as_array()?
        .iter()
        .find(|p| p["type"] == "Split")?["pattern"]["Regex"]
        .as_str()?;
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    if pattern == LLAMA3 {
        Some("llama-bpe")
    } else if pattern == QWEN2 {
        Some("qwen2")
    } else {
        None
    }
}

/// `tokenizer.ggml.*` metadata (and the chat template) from a folder's `tokenizer.json` and
/// `tokenizer_config.json`: SentencePiece-style BPE becomes a `llama` vocabulary with merge
/// ranks as scores; byte-level BPE (GPT-2, Llama 3, Qwen2 pre-tokenizers) a `gpt2` one with
/// its merges.
pub fn tokenizer_metadata(dir: &Path) -> Result<Vec<(String, MetaValue)>, ModelError> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e))?;
    let t: Value = serde_json::from_str(&text).map_err(|e| bad(&path, e))?;
    let model = &t["model"];
    let spm_like = model["type"] == "BPE" && model["byte_fallback"] == true && text.contains('▁');
    let byte_pre = if spm_like || model["type"] != "BPE" {
        None
    } else {
        Some(byte_level_pre(&t).ok_or_else(|| {
            bad(
                &path,
                "this tokenizer's pre-tokenizer is not one tuili can name for GGUF (GPT-2, Llama 3 and Qwen2 byte-level BPE, and SentencePiece-style BPE, are)",
            )
        })?)
    };
    if !spm_like && byte_pre.is_none() {
        return Err(bad(&path, "only BPE tokenizers convert to GGUF so far"));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad(&path, "model.vocab is not an object"))?;
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut n = 0usize;
    for (piece, id) in vocab {
        let id =
            id.as_u64()
                .ok_or_else(|| bad(&path, "a vocabulary id is not a number"))? as usize;
        ids.insert(piece.as_str(), id);
        n = n.max(id + 1);
    }
    let added = t["added_tokens"].as_array().cloned().unwrap_or_default();
    for a in &added {
        if let Some(id) = a["id"].as_u64() {
            n = n.max(id as usize + 1);
        }
    }
    if n > 1 << 24 {
        return Err(bad(&path, "vocabulary too large"));
    }
    let mut tokens = vec![String::new(); n];
    for (piece, &id) in &ids {
        tokens[id] = piece.to_string();
    }
    let mut types = vec![NORMAL; n];
    let mut scores = vec![0f32; n];
    // Score of a token = −(rank of the first merge that makes it).
    let merges = model["merges"].as_array().cloned().unwrap_or_default();
    let mut made = vec![false; n];
    let mut merge_strings: Vec<String> = Vec::with_capacity(merges.len());
    for (rank, m) in merges.iter().enumerate() {
        let (a, b) = match m {
            Value::String(s) => match s.split_once(' ') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => continue,
            },
            Value::Array(p) if p.len() == 2 => (
                p[0].as_str().unwrap_or("").to_string(),
                p[1].as_str().unwrap_or("").to_string(),
            ),
            _ => continue,
        };
        merge_strings.push(format!("{a} {b}"));
        if let Some(&id) = ids.get(format!("{a}{b}").as_str()) {
            if !made[id] {
                made[id] = true;
                scores[id] = -(rank as f32) - 1.0;
            }
        }
    }
    for (i, p) in tokens.iter().enumerate() {
        if p.len() == 6 && p.starts_with("<0x") && p.ends_with('>') {
            types[i] = BYTE;
        }
    }
    if let Some(unk) = model["unk_token"].as_str().and_then(|u| ids.get(u)) {
        types[*unk] = UNKNOWN;
    }
    for a in &added {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            continue;
        };
        let id = id as usize;
        tokens[id] = content.to_string();
        if types[id] != UNKNOWN {
            types[id] = if a["special"] == true {
                CONTROL
            } else {
                USER_DEFINED
            };
        }
        scores[id] = 0.0;
    }
    let mut md = vec![(
        "tokenizer.ggml.tokens".to_string(),
        MetaValue::Array(MetaArray::String(tokens.clone())),
    )];
    match byte_pre {
        None => {
            md.push((
                "tokenizer.ggml.model".into(),
                MetaValue::String("llama".into()),
            ));
            md.push((
                "tokenizer.ggml.scores".into(),
                MetaValue::Array(MetaArray::F32(scores)),
            ));
            // A Prepend("▁") normalizer (or a Metaspace with prepend) is SentencePiece's
            // dummy prefix.
            let prefix =
                text.contains("\"Prepend\"") || t["pre_tokenizer"]["prepend_scheme"] == "always";
            md.push((
                "tokenizer.ggml.add_space_prefix".into(),
                MetaValue::Bool(prefix),
            ));
        }
        Some(pre) => {
            md.push((
                "tokenizer.ggml.model".into(),
                MetaValue::String("gpt2".into()),
            ));
            md.push(("tokenizer.ggml.pre".into(), MetaValue::String(pre.into())));
            md.push((
                "tokenizer.ggml.merges".into(),
                MetaValue::Array(MetaArray::String(merge_strings)),
            ));
        }
    }
    md.push((
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(MetaArray::I32(types)),
    ));
    // Special tokens and the chat template as the tokenizer reads them, and BOS added
    // exactly when tuili's tokenizer of this folder adds it: the GGUF then tokenizes as the
    // folder does (one rule, `Tokenizer::adds_bos`).
    let cfg = TokenizerConfig::read(&dir.join("tokenizer_config.json"));
    let id_of = |t: &Option<String>| -> Option<u32> {
        let s = t.as_deref()?;
        tokens.iter().position(|t| t == s).map(|i| i as u32)
    };
    for (t, gguf) in [
        (&cfg.bos_token, "tokenizer.ggml.bos_token_id"),
        (&cfg.eos_token, "tokenizer.ggml.eos_token_id"),
        (&cfg.unk_token, "tokenizer.ggml.unknown_token_id"),
        (&cfg.pad_token, "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = id_of(t) {
            md.push((gguf.into(), MetaValue::U32(id)));
        }
    }
    let tok = Tokenizer::from_tokenizer_json(&path).map_err(|e| bad(&path, e))?;
    md.push((
        "tokenizer.ggml.add_bos_token".into(),
        MetaValue::Bool(tok.adds_bos()),
    ));
    if let Some(b) = cfg.add_eos_token {
        md.push(("tokenizer.ggml.add_eos_token".into(), MetaValue::Bool(b)));
    }
    if let Some(t) = cfg.chat_template {
        md.push(("tokenizer.chat_template".into(), MetaValue::String(t)));
    }
    Ok(md)
}

/// Rows of a `[n_head · head_dim, cols]` projection reordered from rotate-half (HF) to
/// adjacent pairs (GGUF `llama`): within each head, row h·d + s·d/2 + i moves to h·d + 2i + s.
pub(crate) fn permute_rows(data: &[u8], n_head: usize, rows: usize, row_bytes: usize) -> Vec<u8> {
    let d = rows / n_head;
    let half = d / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                let src = h * d + s * half + i;
                let dst = h * d + 2 * i + s;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// The keys every architecture writes: its name, the model's, and the shape
/// (`{arch}.vocab_size`, `context_length`, `embedding_length`, `block_count`,
/// `feed_forward_length`, `attention.head_count`).
pub(crate) fn shape_metadata(cfg: &ModelConfig) -> Vec<(String, MetaValue)> {
    let arch = cfg.arch.name;
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| MetaValue::U32(v as u32);
    vec![
        (
            "general.architecture".into(),
            MetaValue::String(arch.into()),
        ),
        ("general.name".into(), MetaValue::String(cfg.name.clone())),
        (k("vocab_size"), u(cfg.n_vocab)),
        (k("context_length"), u(cfg.n_ctx_train)),
        (k("embedding_length"), u(cfg.n_embd)),
        (k("block_count"), u(cfg.n_layer)),
        (k("feed_forward_length"), u(cfg.n_ff)),
        (k("attention.head_count"), u(cfg.n_head)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_pairs_the_halves() {
        // One head of 4 rows (1 byte each): HF [a0 a1 b0 b1] → GGUF [a0 b0 a1 b1].
        assert_eq!(permute_rows(&[0, 1, 2, 3], 1, 4, 1), vec![0, 2, 1, 3]);
        assert_eq!(
            permute_rows(&[0, 1, 2, 3, 4, 5, 6, 7], 2, 8, 1),
            vec![0, 2, 1, 3, 4, 6, 5, 7]
        );
    }
}
