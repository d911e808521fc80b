//! `tuili-engine`: from a request to generated text.
//!
//! Owns: loading a model (file, folder or hub id) together with its tokenizer ([`engine`]),
//! turning a request into checked prompt ids (the one request path of every front end), the
//! generation loop (prompt → tokens → one prefill shared by every completion → decode loops →
//! stop: [`generate`]), `n` completions, the beam-search driver ([`beam`]), stop strings,
//! conversation sessions, perplexity, and timing; for serving, the continuous-batching
//! scheduler ([`sched`], pure bookkeeping) and the serving loop that owns the paged KV pool
//! ([`serve`]). May not: know an architecture's internals (that is `model`'s), how logits
//! become a token (`sample`'s), or HTTP (`server`'s).

pub mod beam;
mod decoder;
pub mod engine;
pub mod error;
pub mod generate;
pub mod hub;
mod perplexity;
pub mod request;
pub mod sched;
pub mod serve;
mod stop;

pub use beam::{BeamBackend, BeamParams, EarlyStopping, Hypothesis};
pub use engine::{Engine, EngineConfig, GenerationDefaults};
pub use error::EngineError;
pub use generate::{Session, TurnStats};
pub use perplexity::{ChunkProgress, KlBase, KlStats, PerplexityParams, PerplexityResult};
pub use request::{
    Completion, GenerateRequest, GenerationStats, Prompt, StopReason, TokenEvent, MAX_LOGPROBS,
    MAX_N,
};
pub use stop::{Matched, StopMatcher};
pub use tuili_kv::KvType;
