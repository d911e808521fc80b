//! The tokenizer crate's errors: one enum.

/// Errors of the tokenizer crate.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("chat template: {reason}")]
    Template { reason: String },
    #[error("{path}: {reason}")]
    BadVocab { path: String, reason: String },
    #[error("{path}: tokenizer model {model:?} is not supported (llama, gpt2 and bert are)")]
    UnsupportedModel { path: String, model: String },
    #[error("{path}: pre-tokenizer {pre:?} is not supported")]
    UnsupportedPre { path: String, pre: String },
    #[error(transparent)]
    Gguf(#[from] tuili_formats::GgufError),
    #[error("{path}: cannot load tokenizer.json: {reason}")]
    Json { path: String, reason: String },
    #[error("tokenizer: {0}")]
    Engine(String),
    #[error("token id {id} is out of range (vocabulary has {n_vocab})")]
    BadId { id: u32, n_vocab: usize },
}
