//! Hugging Face Hub ids (`org/name`, optionally `org/name@revision`): the model's files are
//! fetched with the `hf-hub` crate into the standard cache (`HF_HOME`, `~/.cache/huggingface`;
//! `HF_ENDPOINT` picks another server), with a progress bar, and loaded as a folder. Files
//! already in the cache are not fetched again.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

use crate::error::EngineError;

/// Where and how to fetch.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The server (default: `HF_ENDPOINT`, else https://huggingface.co).
    pub endpoint: Option<String>,
    /// The cache (default: `HF_HOME`/hub, else ~/.cache/huggingface/hub).
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
}

/// Whether `s` names a hub repository rather than a local path: `org/name[@rev]`, and no such
/// path exists.
pub fn looks_like_hub_id(s: &str) -> bool {
    if Path::new(s).exists() || s.starts_with('.') || s.starts_with('/') || s.ends_with(".gguf") {
        return false;
    }
    let id = s.split('@').next().unwrap_or("");
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn hub_err(id: &str, file: &str, e: ApiError) -> EngineError {
    EngineError::Io(format!("fetching {file} of {id} from the hub: {e}"))
}

fn is_missing(e: &ApiError) -> bool {
    e.to_string().contains("status code 404")
}

fn optional(repo: &ApiRepo, id: &str, file: &str) -> Result<Option<PathBuf>, EngineError> {
    match repo.get(file) {
        Ok(p) => Ok(Some(p)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(hub_err(id, file, e)),
    }
}

/// Fetches a model's files and returns the local folder that holds them.
pub fn fetch(spec: &str, opts: &HubOptions) -> Result<PathBuf, EngineError> {
    let (id, revision) = match spec.split_once('@') {
        Some((i, r)) => (i, r.to_string()),
        None => (spec, "main".to_string()),
    };
    let mut b = ApiBuilder::from_env().with_progress(opts.progress);
    if let Some(ep) = &opts.endpoint {
        b = b.with_endpoint(ep.clone());
    }
    if let Some(c) = &opts.cache_dir {
        b = b.with_cache_dir(c.clone());
    }
    let api = b
        .build()
        .map_err(|e| EngineError::Io(format!("hub client: {e}")))?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision,
    ));
    let config = repo.get("config.json").map_err(|e| {
        if is_missing(&e) {
            EngineError::Io(format!(
                "{id}: no config.json on the hub (not a model repository, or a GGUF-only one)"
            ))
        } else {
            hub_err(id, "config.json", e)
        }
    })?;
    repo.get("tokenizer.json")
        .map_err(|e| hub_err(id, "tokenizer.json", e))?;
    for f in ["tokenizer_config.json", "generation_config.json"] {
        optional(&repo, id, f)?;
    }
    match optional(&repo, id, "model.safetensors.index.json")? {
        Some(index) => {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| EngineError::Io(format!("{}: {e}", index.display())))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::Io(format!("{}: {e}", index.display())))?;
            let mut shards: Vec<&str> = v["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|f| f.as_str()).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo.get(s).map_err(|e| hub_err(id, s, e))?;
            }
        }
        None => {
            repo.get("model.safetensors")
                .map_err(|e| hub_err(id, "model.safetensors", e))?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| EngineError::Io(format!("{id}: odd cache path {}", config.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("TinyLlama/TinyLlama-1.1B-Chat-v1.0"));
        assert!(looks_like_hub_id("org/name@refs-pr-1"));
        assert!(!looks_like_hub_id("model.gguf"));
        assert!(!looks_like_hub_id("./org/name"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("Cargo.toml"));
    }
}
