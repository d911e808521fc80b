//! `tuili-formats`: model files as bytes and metadata.
//!
//! Owns: parsing and writing GGUF (header, metadata, tensor infos, alignment) and zero-copy
//! tensor views into a memory map. May not: know any architecture (which tensor means what is
//! the `model` crate's business) or convert tensor data (that is `kernels`').

pub mod gguf;
pub mod writer;

pub use gguf::{GgufError, GgufFile, MetaArray, MetaType, MetaValue, TensorInfo, TensorView};
pub use writer::{GgufWriter, WriteError};
