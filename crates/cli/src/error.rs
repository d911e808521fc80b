//! The command line's errors: one enum; `main` prints each as one line on stderr.

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error(transparent)]
    Engine(#[from] tuili_engine::EngineError),
    #[error(transparent)]
    Gguf(#[from] tuili_formats::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] tuili_tokenizer::TokenizerError),
    #[error(transparent)]
    Sample(#[from] tuili_sample::SampleError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
}
