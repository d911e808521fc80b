//! `tuili-tokenizer`: text ⇄ token ids.
//!
//! Owns: building a tokenizer from GGUF metadata (`tokenizer.ggml.*`, `gguf_vocab`: SPM, BPE
//! with the pre-tokenizer named by `tokenizer.ggml.pre`, WordPiece) or from a `tokenizer.json`
//! and its `tokenizer_config.json` ([`hf_config`], read once for everyone), with Hugging Face
//! `tokenizers` as the one engine underneath ([`tokenizer`]); special-token policy (BOS/EOS,
//! BOS after a chat template, which ids end generation); chat templates ([`chat`]); decoding,
//! including streaming decoding that never splits a UTF-8 character. May not: touch model
//! weights or sampling.

pub mod chat;
pub mod error;
mod gguf_vocab;
pub mod hf_config;
mod pretok;
pub mod tokenizer;

pub use error::TokenizerError;
pub use gguf_vocab::{TokenType, VocabKind};
pub use tokenizer::{StreamDecoder, Tokenizer};
