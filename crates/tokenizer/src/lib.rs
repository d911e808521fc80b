//! `tuili-tokenizer`: text ⇄ token ids.
//!
//! Owns: building a tokenizer from GGUF metadata (`tokenizer.ggml.*`: SPM, BPE with the
//! pre-tokenizer named by `tokenizer.ggml.pre`, WordPiece) or from a `tokenizer.json`, with
//! Hugging Face `tokenizers` as the one engine underneath; special-token policy (BOS/EOS, which
//! ids end generation); decoding, including streaming decoding that never splits a UTF-8
//! character. May not: touch model weights or sampling.

pub mod chat;
mod gguf_vocab;
pub mod hf_config;
mod pretok;

pub mod error;
pub mod tokenizer;

pub use error::TokenizerError;
pub use gguf_vocab::{TokenType, VocabKind};
pub use tokenizer::{StreamDecoder, Tokenizer};
