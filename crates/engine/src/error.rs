//! The engine's errors: one enum for the crate, each variant one line a user can act on.

/// Errors of the engine, each one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] tuili_formats::GgufError),
    #[error(transparent)]
    Model(#[from] tuili_model::ModelError),
    #[error(transparent)]
    Dist(#[from] tuili_dist::DistError),
    #[error(transparent)]
    Tokenizer(#[from] tuili_tokenizer::TokenizerError),
    #[error(transparent)]
    Sample(#[from] tuili_sample::SampleError),
    #[error("the prompt is {n_prompt} tokens long but the context holds {n_ctx}; use a shorter prompt or a larger --ctx-size")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("the prompt is {bytes} bytes of text, more than {n_ctx} tokens of this vocabulary can hold (at most {max_bytes} bytes); use a shorter prompt or a larger --ctx-size")]
    PromptTooLongText {
        bytes: usize,
        max_bytes: usize,
        n_ctx: usize,
    },
    #[error("the prompt is empty and the model adds no BOS token: nothing to start from")]
    EmptyPrompt,
    #[error("the model has no chat template: give one (--chat-template FILE, or --chat-template chatml)")]
    NoChatTemplate,
    #[error("{0}")]
    Io(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("invalid setting {name} = {value}: {reason}")]
    BadSetting {
        name: &'static str,
        value: String,
        reason: String,
    },
}
