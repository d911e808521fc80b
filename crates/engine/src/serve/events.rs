//! What passes between the serving loop and the front ends: a request as submitted
//! ([`Submission`]), the events its sink receives ([`Event`]), why it was refused
//! ([`Rejection`]), and the loop's own messages.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use tuili_sample::StepLogprobs;

use crate::request::{GenerateRequest, StopReason};

/// What a request's sink receives, in this order: `Accepted` or `Rejected` first; then
/// `Token`s and `Text`s of its completions interleaved, each completion ending with its
/// `Done`; then `Finished` (or `Failed`).
#[derive(Debug, Clone)]
pub enum Event {
    Accepted,
    Rejected(Rejection),
    /// A generated token of completion `index` and the text it made final.
    Token {
        index: usize,
        token: u32,
        text: String,
        logprobs: Option<StepLogprobs>,
    },
    /// Text held back until the end of completion `index`.
    Text {
        index: usize,
        text: String,
    },
    /// Completion `index` ended.
    Done {
        index: usize,
        reason: StopReason,
        tokens: usize,
        /// Beam search: the hypothesis' score.
        beam_score: Option<f64>,
    },
    Finished {
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// Why a request was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Try again later.
    #[error("server busy: {0}")]
    Busy(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// Receives a request's events; returns false when nobody listens any more (the request is
/// then cancelled).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// One request for the serving loop.
pub struct Submission {
    pub req: GenerateRequest,
    /// The prompt's ids, from [`Engine::prepare`] (or a rendered chat).
    pub prompt: Vec<u32>,
    pub sink: Sink,
    /// Set by the client's side when it goes away: the request is dropped and its blocks
    /// freed at the next step.
    pub cancel: Arc<AtomicBool>,
}

pub(crate) enum Msg {
    /// A request and when it was handed over (time to first token counts from there).
    Submit(Box<Submission>, Instant),
    Shutdown,
}
