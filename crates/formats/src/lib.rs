//! `tuili-formats`: model files as bytes and metadata.
//!
//! Owns: parsing and writing GGUF (header, metadata, tensor infos, alignment), reading
//! safetensors checkpoints, and zero-copy tensor views into memory maps. May not: know any architecture (which tensor means what is
//! the `model` crate's business) or convert tensor data (that is `kernels`').

pub mod gguf;
pub mod safetensors;
pub mod writer;

pub use gguf::{GgufError, GgufFile, MetaArray, MetaType, MetaValue, TensorInfo, TensorView};
pub use safetensors::{Safetensors, SafetensorsError, StTensor};
pub use writer::{GgufWriter, WriteError};
