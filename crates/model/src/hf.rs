//! Hugging Face model folders: the JSON files beside the weights, read the same way for
//! every architecture — `config.json` as a document (each architecture maps its own keys,
//! `arch/`), the model's name, end-of-sequence ids and `generation_config.json`'s sampling
//! defaults ([`HfExtras`]).

use std::path::Path;

use serde_json::Value;

use crate::error::ModelError;

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

/// A JSON file, or `None` when it does not exist.
pub(crate) fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| ModelError::Io {
                path: path.display().to_string(),
                reason: format!("not valid JSON: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// `config.json` of the folder `dir` (required).
pub(crate) fn read_config(dir: &Path) -> Result<Value, ModelError> {
    let path = dir.join("config.json");
    read_json(&path)?.ok_or_else(|| ModelError::Io {
        path: path.display().to_string(),
        reason: "not found (a Hugging Face model folder needs config.json)".into(),
    })
}

/// Token ids as a config writes them: one number or a list.
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

/// The model's name: `_name_or_path` when the config has one, else the folder's name.
pub(crate) fn model_name(dir: &Path, c: &Value) -> String {
    c["_name_or_path"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// Adds what every architecture's folder says the same way: end-of-sequence ids of
/// `config.json` (`c`) and of `generation_config.json`, and the latter's sampling defaults.
pub(crate) fn read_common(dir: &Path, c: &Value, extras: &mut HfExtras) -> Result<(), ModelError> {
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
    Ok(())
}

/// A parsed `config.json` and where it came from, for the architectures' readers: lookups
/// whose errors name the file and the key.
pub(crate) struct ConfigJson<'a> {
    pub c: &'a Value,
    path: String,
}

impl<'a> ConfigJson<'a> {
    /// `c`, read from the folder `dir`.
    pub(crate) fn new(dir: &Path, c: &'a Value) -> ConfigJson<'a> {
        ConfigJson {
            c,
            path: dir.join("config.json").display().to_string(),
        }
    }

    /// An error about `key`.
    pub(crate) fn bad(&self, key: &str, value: String, reason: &str) -> ModelError {
        ModelError::BadHyperParam {
            path: self.path.clone(),
            key: key.into(),
            value,
            reason: reason.into(),
        }
    }

    /// A required positive integer below 2³¹ (a dimension).
    pub(crate) fn dim(&self, key: &str) -> Result<usize, ModelError> {
        let v = &self.c[key];
        v.as_u64()
            .filter(|&v| v > 0 && v < (1 << 31))
            .map(|v| v as usize)
            .ok_or_else(|| self.bad(key, v.to_string(), "missing or not a positive integer"))
    }
}
