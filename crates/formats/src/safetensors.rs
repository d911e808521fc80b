//! Hugging Face safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Each shard is memory-mapped; tensors are zero-copy byte
//! ranges of their shard. The header is parsed by the `safetensors` crate; every tensor's range
//! is checked against its shard's size before use.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use tuili_core::DType;

/// Errors of reading a safetensors checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Header { path: String, reason: String },
    #[error(
        "{path}: tensor {name:?} has type {dtype}, which tuili does not read (F32, F16, BF16 are)"
    )]
    UnsupportedType {
        path: String,
        name: String,
        dtype: String,
    },
    #[error("{path}: no model.safetensors or model.safetensors.index.json")]
    NoWeights { path: String },
    #[error("{path}: bad index: {reason}")]
    Index { path: String, reason: String },
}

/// A memory-mapped shard.
#[derive(Debug)]
pub struct Shard {
    pub path: PathBuf,
    map: Mmap,
    /// The file's length (an empty file read into memory is a one-byte map).
    len: usize,
    /// The map is of the file (else: a copy in anonymous memory).
    file_backed: bool,
}

impl Shard {
    pub fn bytes(&self) -> &[u8] {
        &self.map[..self.len]
    }

    /// As [`crate::GgufFile::keep`], for a range of [`Shard::bytes`].
    pub fn keep(&self, range: std::ops::Range<usize>) {
        crate::keep_range(&self.map, self.file_backed, range);
    }

    /// As [`crate::GgufFile::release`], for a range of [`Shard::bytes`].
    pub fn release(&self, range: std::ops::Range<usize>) {
        crate::release_range(&self.map, self.file_backed, range);
    }
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct StTensor {
    pub name: String,
    pub dtype: DType,
    /// ne0-first (the reverse of safetensors' row-major shape), as GGUF writes shapes.
    pub shape: Vec<u64>,
    pub shard: Arc<Shard>,
    /// Byte range in the shard.
    pub range: Range<usize>,
}

impl StTensor {
    pub fn data(&self) -> &[u8] {
        &self.shard.bytes()[self.range.clone()]
    }
}

/// All tensors of a checkpoint, by name (a clone shares the shards' memory).
#[derive(Debug, Clone)]
pub struct Safetensors {
    pub dir: PathBuf,
    pub tensors: HashMap<String, StTensor>,
    /// The `__metadata__` of the first shard (e.g. which tensor another one is tied to).
    pub metadata: HashMap<String, String>,
}

fn io(path: &Path, e: impl ToString) -> SafetensorsError {
    SafetensorsError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl Safetensors {
    /// Opens the checkpoint of a model folder.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Safetensors, SafetensorsError> {
        Self::open_dir_with(dir, crate::Load::Map)
    }

    /// Opens the checkpoint of a model folder, its shards mapped or read into memory
    /// ([`crate::Load`]).
    pub fn open_dir_with(
        dir: impl AsRef<Path>,
        how: crate::Load,
    ) -> Result<Safetensors, SafetensorsError> {
        let dir = dir.as_ref();
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| SafetensorsError::Index {
                    path: index.display().to_string(),
                    reason: e.to_string(),
                })?;
            let map = v["weight_map"]
                .as_object()
                .ok_or_else(|| SafetensorsError::Index {
                    path: index.display().to_string(),
                    reason: "no weight_map object".into(),
                })?;
            let mut names: Vec<String> = Vec::new();
            for f in map.values() {
                let f = f.as_str().ok_or_else(|| SafetensorsError::Index {
                    path: index.display().to_string(),
                    reason: "a weight_map value is not a file name".into(),
                })?;
                if f.contains('/') || f.contains("..") {
                    return Err(SafetensorsError::Index {
                        path: index.display().to_string(),
                        reason: format!("shard {f:?} is outside the folder"),
                    });
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(SafetensorsError::NoWeights {
                path: dir.display().to_string(),
            });
        };
        let mut tensors = HashMap::new();
        let mut metadata = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let mut file = std::fs::File::open(f).map_err(|e| io(f, e))?;
            let flen = file.metadata().map_err(|e| io(f, e))?.len();
            // (Mapped: as for GGUF, a file changed under the map by another process is the
            // user's problem, the same contract every mmap-based loader has.)
            let map = crate::load_file(&mut file, flen, how).map_err(|e| io(f, e))?;
            let len = usize::try_from(flen).unwrap_or(usize::MAX).min(map.len());
            let shard = Arc::new(Shard {
                path: f.clone(),
                map,
                len,
                file_backed: how == crate::Load::Map,
            });
            let bytes = shard.bytes();
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
                    SafetensorsError::Header {
                        path: f.display().to_string(),
                        reason: e.to_string(),
                    }
                })?;
            let start = 8 + header_len;
            if i == 0 {
                if let Some(m) = meta.metadata() {
                    metadata = m.clone();
                }
            }
            for (name, info) in meta.tensors() {
                let dtype = match info.dtype {
                    safetensors::Dtype::F32 => DType::F32,
                    safetensors::Dtype::F16 => DType::F16,
                    safetensors::Dtype::BF16 => DType::BF16,
                    other => {
                        return Err(SafetensorsError::UnsupportedType {
                            path: f.display().to_string(),
                            name,
                            dtype: format!("{other:?}"),
                        })
                    }
                };
                let (a, b) = info.data_offsets;
                let range = start + a..start + b;
                let n: usize = info.shape.iter().product();
                if range.end > bytes.len() || b < a || (b - a) != n * dtype.block_bytes() as usize {
                    return Err(SafetensorsError::Header {
                        path: f.display().to_string(),
                        reason: format!("tensor {name:?} has a bad data range {a}..{b}"),
                    });
                }
                let shape = if info.shape.is_empty() {
                    vec![1]
                } else {
                    info.shape.iter().rev().map(|&d| d as u64).collect()
                };
                tensors.insert(
                    name.clone(),
                    StTensor {
                        name,
                        dtype,
                        shape,
                        shard: shard.clone(),
                        range,
                    },
                );
            }
        }
        Ok(Safetensors {
            dir: dir.to_path_buf(),
            tensors,
            metadata,
        })
    }
}
