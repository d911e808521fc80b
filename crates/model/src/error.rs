//! The errors of model loading and of the forward pass: one enum for the crate.

use tuili_core::DType;

/// Errors of model loading and the forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] tuili_formats::GgufError),
    /// Each names its file.
    #[error(transparent)]
    Safetensors(#[from] tuili_formats::SafetensorsError),
    #[error("{path}: architecture {arch:?} is not supported ({known} are)")]
    UnsupportedArch {
        path: String,
        arch: String,
        /// The architectures the registry knows, for the message.
        known: String,
    },
    #[error("{path}: {key} = {value}: {reason}")]
    BadHyperParam {
        path: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{path}: tensor {name:?} has shape {got:?}, expected {expected:?}")]
    BadShape {
        path: String,
        name: String,
        got: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("{path}: tensor {name:?} has type {dtype}, which tuili cannot compute with yet")]
    UnsupportedType {
        path: String,
        name: String,
        dtype: DType,
    },
    #[error("{path}: tensor {name:?} ({dtype}): block {block} is malformed (a keep-mask byte without four bits set)")]
    MalformedBlock {
        path: String,
        name: String,
        dtype: DType,
        block: usize,
    },
    #[error("{path}: tensor {name:?} is missing")]
    MissingTensor { path: String, name: String },
    #[error("{path}: the file holds no tensors (a vocabulary-only GGUF?): nothing to run")]
    NoWeights { path: String },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },
    #[error("empty batch: a forward pass needs at least one token")]
    EmptyBatch,
    #[error("malformed batch: {0}")]
    BadBatch(String),
    #[error("KV cache was made for {cache_layers} layers × {cache_dim}, the model needs {layers} × {dim}")]
    CacheMismatch {
        cache_layers: usize,
        cache_dim: usize,
        layers: usize,
        dim: usize,
    },
    #[error("quantizing {tensor:?}: {reason}")]
    Quantize { tensor: String, reason: String },
    #[error("pruning {tensor:?}: {reason}")]
    Prune { tensor: String, reason: String },
    /// A file or folder that cannot be read or written (`reason` says which and why).
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path}: cannot split over {size} ranks: {reason}")]
    Shard {
        path: String,
        size: usize,
        reason: String,
    },
    #[error(
        "{path}: the ranks opened different models (rank {rank}'s differs from rank 0's: \
         every machine needs the same file)"
    )]
    NotSameModel { path: String, rank: usize },
    #[error(transparent)]
    Dist(#[from] tuili_dist::DistError),
    #[error(transparent)]
    Kv(#[from] tuili_kv::KvError),
    #[error(transparent)]
    Kernel(#[from] tuili_kernels::KernelError),
}
