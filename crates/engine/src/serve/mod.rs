//! The serving loop: many requests at once, continuously batched over a paged KV cache.
//!
//! One thread owns every piece of mutable state — the scheduler, the paged pool, the
//! activations and each completion's decoder — and others talk to it by messages
//! ([`ServeLoop::submit`]); it answers each request through the request's own sink (accepted or
//! refused first, then tokens, then the end). Each step runs one batch through the model: one
//! token of every decoding sequence and chunks of prompts, every weight read once for all.
//!
//! `n > 1` completions prefill the prompt once and fork its blocks (copy-on-write) when the
//! prompt's logits are ready. A beam-search request's beams are sequences of the same pool:
//! the prompt's forked at the first step, each beam forked again where two continue the same
//! one, so their blocks are counted, preempted and refused like any other request's.

mod batch;
mod config;
mod events;
mod handle;
mod metrics;
mod runner;

pub use config::ServeConfig;
pub use events::{Event, Rejection, Sink, Submission};
pub use handle::ServeLoop;
pub use metrics::{Histogram, Metrics};
