//! `tuili-model`: Transformer decoders.
//!
//! Owns: reading an architecture's hyper-parameters from GGUF metadata ([`config`]) or a
//! Hugging Face folder ([`hf`], and each architecture's own `config.json` mapping), binding
//! its tensors as views into the memory maps ([`weights`]), the architectures ([`arch`]: a
//! registry, one line each, and a decoder file per family — [`arch::llama`] for llama,
//! mistral, qwen2, qwen3, phi3, gemma and gemma2, [`arch::gpt2`] for GPT-2), the one
//! execution layer that runs any of them for one sequence or a batch of many through any KV
//! store ([`exec`], [`batch`]), the loaded [`Model`] ([`model`]), the quantization recipes
//! ([`quantize`]), pruning ([`prune`]: magnitude, Wanda, SparseGPT, layer by layer) and
//! HF → GGUF conversion (each architecture's, through [`arch::hf_input`]; what they share in
//! [`convert`]). Holds no per-request state: the KV cache and the scratch buffers are the
//! caller's. May not: tokenize, sample, or schedule requests.
//!
//! Within the crate, data flows prune → model → arch → exec → weights/batch/config, and every
//! file names its errors through [`error`]; no file imports one that imports it back.

pub mod arch;
pub mod batch;
pub mod config;
pub mod convert;
pub mod error;
pub mod exec;
pub mod hf;
pub mod model;
pub mod prune;
pub mod quantize;
pub mod shard;
pub mod synth;
pub mod weights;

pub use batch::{Contiguous, KvTarget, Logits, OutRows, SeqSpan};
pub use config::{Arch, Family, ModelConfig};
pub use error::ModelError;
pub use exec::{pack_top, packs_top, unpack_top, Handoff, KvAccess, Reduce, Scratch};
pub use hf::HfExtras;
pub use model::{Model, Split};
pub use shard::Shard;
