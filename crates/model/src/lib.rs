//! `tuili-model`: Transformer decoders.
//!
//! Owns: reading an architecture's hyper-parameters from GGUF metadata ([`config`]) or a
//! Hugging Face folder ([`hf`]), binding its tensors as views into the memory maps
//! ([`weights`]), the forward pass — [`llama`] for the Llama family (llama, mistral, qwen2,
//! qwen3, phi3, gemma, gemma2: one decoder driven by the config), [`gpt2`] for GPT-2 —, for
//! one sequence or a batch of many through any KV store ([`batch`]), the
//! quantization recipes ([`quantize`]) and HF → GGUF conversion ([`convert`]). Holds no
//! per-request state: the KV cache and the scratch buffers are the caller's. May not:
//! tokenize, sample, or schedule requests.

pub mod batch;
pub mod config;
pub mod convert;
pub mod gpt2;
pub mod hf;
pub mod llama;
pub mod quantize;
pub mod synth;
pub mod weights;

pub use batch::{Contiguous, KvTarget, OutRows, SeqSpan, SpanForward};
pub use config::{Arch, ModelConfig};
pub use gpt2::Gpt2;
pub use llama::{Llama, Logits, Scratch};

use std::sync::Arc;
use tuili_formats::GgufFile;
use tuili_kernels::cpu::Isa;
use tuili_kv::KvCache;

/// A loaded model of any supported architecture: the Llama family (one decoder,
/// `llama.rs`, parameterized by the config) or GPT-2 (`gpt2.rs`).
pub enum Model {
    Llama(Llama),
    Gpt2(Gpt2),
}

impl From<Llama> for Model {
    fn from(m: Llama) -> Model {
        Model::Llama(m)
    }
}

impl Model {
    /// Binds a GGUF model of any supported architecture.
    pub fn load(file: Arc<GgufFile>) -> Result<Model, ModelError> {
        if file.get_str("general.architecture")? == Some("gpt2") {
            if file.tensors.is_empty() {
                return Err(ModelError::NoWeights {
                    path: file.path().display().to_string(),
                });
            }
            let cfg = ModelConfig::from_gguf(&file)?;
            return Ok(Model::Gpt2(Gpt2::from_source(
                cfg,
                &weights::GgufSource(file),
            )?));
        }
        Ok(Model::Llama(Llama::load(file)?))
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Llama(m) => m.config(),
            Model::Gpt2(m) => m.config(),
        }
    }

    pub fn label(&self) -> &str {
        match self {
            Model::Llama(m) => m.label(),
            Model::Gpt2(m) => m.label(),
        }
    }

    pub fn isa(&self) -> Isa {
        match self {
            Model::Llama(m) => m.isa(),
            Model::Gpt2(m) => m.isa(),
        }
    }

    pub fn set_isa(&mut self, isa: Isa) {
        match self {
            Model::Llama(m) => m.set_isa(isa),
            Model::Gpt2(m) => m.set_isa(isa),
        }
    }

    pub fn new_cache(&self, n_ctx: usize) -> Result<KvCache, ModelError> {
        match self {
            Model::Llama(m) => m.new_cache(n_ctx),
            Model::Gpt2(m) => m.new_cache(n_ctx),
        }
    }

    pub fn weight_bytes_per_token(&self) -> usize {
        match self {
            Model::Llama(m) => m.weight_bytes_per_token(),
            Model::Gpt2(m) => m.weight_bytes_per_token(),
        }
    }

    /// Runs `tokens` through the model (see [`Llama::forward`]).
    pub fn forward<'s>(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        scratch: &'s mut Scratch,
        which: Logits,
        pool: &tuili_core::ThreadPool,
    ) -> Result<&'s [f32], ModelError> {
        match self {
            Model::Llama(m) => m.forward(tokens, kv, scratch, which, pool),
            Model::Gpt2(m) => m.forward(tokens, kv, scratch, which, pool),
        }
    }

    /// Runs a batch of several sequences (see [`Llama::forward_spans`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_spans<'s, C: KvTarget + Sync>(
        &self,
        tokens: &[u32],
        spans: &[SeqSpan],
        cache: &mut C,
        max_ctx: usize,
        scratch: &'s mut Scratch,
        out: OutRows,
        pool: &tuili_core::ThreadPool,
    ) -> Result<&'s [f32], ModelError> {
        match self {
            Model::Llama(m) => m.forward_spans(tokens, spans, cache, max_ctx, scratch, out, pool),
            Model::Gpt2(m) => m.forward_spans(tokens, spans, cache, max_ctx, scratch, out, pool),
        }
    }
}

use tuili_core::DType;

/// Errors of model loading and the forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] tuili_formats::GgufError),
    #[error("{path}: architecture {arch:?} is not supported (llama, mistral, qwen2, qwen3, phi3, gemma, gemma2 and gpt2 are)")]
    UnsupportedArch { path: String, arch: String },
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
    #[error("writing {path}: {reason}")]
    Io { path: String, reason: String },
    #[error(transparent)]
    Kv(#[from] tuili_kv::KvError),
    #[error(transparent)]
    Kernel(#[from] tuili_kernels::KernelError),
}
