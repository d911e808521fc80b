//! `tuili-core`: the vocabulary every other crate shares.
//!
//! Owns: the tensor element types ([`DType`], GGML numbering and block geometry), the thread
//! pool ([`pool`]) and thread counts ([`parallel`]). May not touch: files, models, tokenizers —
//! this crate depends on nothing of tuili's.

pub mod dtype;
pub mod parallel;
pub mod pool;

pub use dtype::{DType, DTypeError};
pub use pool::{PerThread, ThreadPool};
