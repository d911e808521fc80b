//! What a front end asks of the engine and what it gets back: a generation request and its
//! checks that do not need a model, why a completion stopped, the completions, the per-token
//! events, the statistics.

use std::time::Duration;

use tuili_model::Logits;
use tuili_sample::{Explain, SamplingParams, StepLogprobs};
use tuili_tokenizer::chat::Message;

use crate::beam::BeamParams;
use crate::error::EngineError;

/// What a request starts from. The engine turns each into prompt ids the same way for every
/// front end ([`crate::Engine::prepare`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text, tokenized with BOS as the model's metadata says (control-token text recognised
    /// when the request's `parse_special` is set).
    Text(String),
    /// Token ids, taken as they are (each checked against the vocabulary).
    Ids(Vec<u32>),
    /// A conversation, rendered with the engine's chat template and tokenized with control
    /// tokens recognised; BOS is added unless the template wrote it.
    Chat(Vec<Message>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Prompt {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Prompt {
        Prompt::Text(s)
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Tokens to generate at most (per completion).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Recognise control-token text (e.g. `<|im_start|>`) in the prompt.
    pub parse_special: bool,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Stop strings: generation of a completion ends where one appears (found across token
    /// boundaries); the string itself and what follows are not emitted.
    pub stop: Vec<String>,
    /// Independent completions of the prompt (sampling: each from its own RNG stream, all
    /// sharing the prompt's prefill); with beam search, the number of beams returned.
    pub n: usize,
    /// Record the chosen token's log-probability and the `k` most likely alternatives' at
    /// each step (`Some(0)`: the chosen token's only).
    pub logprobs: Option<usize>,
    /// Beam search instead of sampling.
    pub beam: Option<BeamParams>,
    /// Trace the sampler's stages at each step, keeping the `k` most likely candidates.
    pub explain: Option<usize>,
}

/// How many of each rank's largest logits a tensor-parallel run gathers for a decode step
/// whose choice they decide ([`GenerateRequest::step_logits`]): more than any common top-k.
pub const CANDIDATES: usize = 64;

impl GenerateRequest {
    /// The logits a decode step needs: the largest [`CANDIDATES`] when they decide the next
    /// token ([`SamplingParams::decided_by_top`]) and none are reported (no logprobs, no
    /// explanation, no beams); else all.
    pub fn step_logits(&self) -> Logits {
        let top_only = self.logprobs.is_none()
            && self.explain.is_none()
            && self.beam.is_none()
            && self.sampling.decided_by_top(CANDIDATES);
        if top_only {
            Logits::LastTop(CANDIDATES)
        } else {
            Logits::Last
        }
    }

    /// A request with one completion and every option off.
    pub fn new(prompt: impl Into<Prompt>, max_tokens: usize, sampling: SamplingParams) -> Self {
        GenerateRequest {
            prompt: prompt.into(),
            max_tokens,
            sampling,
            parse_special: true,
            ignore_eos: false,
            stop: Vec::new(),
            n: 1,
            logprobs: None,
            beam: None,
            explain: None,
        }
    }

    /// Checks every setting that does not depend on the model (the sampling parameters, `n`,
    /// logprobs, explain, beams); the engine also checks token ids against its vocabulary.
    pub fn validate(&self) -> Result<(), EngineError> {
        let req = self;
        let bad = |name: &'static str, value: String, reason: String| {
            Err(EngineError::BadSetting {
                name,
                value,
                reason,
            })
        };
        req.sampling.validate()?;
        if req.n == 0 || req.n > MAX_N {
            return bad("n", req.n.to_string(), format!("must be 1 to {MAX_N}"));
        }
        if let Some(k) = req.logprobs {
            if k > MAX_LOGPROBS {
                return bad(
                    "logprobs",
                    k.to_string(),
                    format!("at most {MAX_LOGPROBS} alternatives per token"),
                );
            }
        }
        if let Some(k) = req.explain {
            if k == 0 || k > 100 {
                return bad("explain", k.to_string(), "must be 1 to 100".into());
            }
        }
        if let Some(b) = &req.beam {
            if b.num_beams < 2 || b.num_beams > MAX_N {
                return bad(
                    "num_beams",
                    b.num_beams.to_string(),
                    format!("must be 2 to {MAX_N} (one beam is greedy decoding: temperature 0)"),
                );
            }
            if req.n > b.num_beams {
                return bad(
                    "n",
                    req.n.to_string(),
                    format!("beam search returns at most num_beams = {}", b.num_beams),
                );
            }
            if !b.length_penalty.is_finite() {
                return bad(
                    "length_penalty",
                    b.length_penalty.to_string(),
                    "must be a finite number".into(),
                );
            }
        }
        Ok(())
    }
}

/// Largest `n` and `num_beams` accepted.
pub const MAX_N: usize = 128;
/// Largest number of alternatives per step in `logprobs` (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// A stop string (index into the request's list) appeared.
    StopString(usize),
    MaxTokens,
    /// The context filled up.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Eos => "end of text",
            StopReason::StopString(_) => "stop string",
            StopReason::MaxTokens => "max tokens",
            StopReason::ContextFull => "context full",
            StopReason::Cancelled => "cancelled",
        })
    }
}

/// One completion of a prompt.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Its place among the request's `n` (beam search: 0 is the best).
    pub index: usize,
    /// Generated ids (an end-of-generation token that stopped it not included; the token
    /// that completed a stop string included).
    pub tokens: Vec<u32>,
    /// The generated text, a stop string and what followed it cut off.
    pub text: String,
    pub stop: StopReason,
    /// One entry per token of `tokens` when the request asked for logprobs.
    pub logprobs: Vec<StepLogprobs>,
    /// Beam search: the hypothesis' score, `sum_logprobs / len^length_penalty`.
    pub beam_score: Option<f64>,
}

/// What a generation did, and how fast.
#[derive(Debug, Clone)]
pub struct GenerationStats {
    pub prompt_tokens: Vec<u32>,
    /// The completions, in index order.
    pub completions: Vec<Completion>,
    pub prompt_time: Duration,
    /// Time of the decode steps (one forward pass per generated token after the first).
    pub gen_time: Duration,
    pub decode_steps: usize,
}

impl GenerationStats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens.len() as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    pub fn gen_tps(&self) -> f64 {
        self.decode_steps as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }

    /// The first (for beam search: the best) completion.
    pub fn first(&self) -> &Completion {
        // Invariant: a successful generation has n ≥ 1 completions.
        &self.completions[0]
    }
}

/// What the callback of [`Engine::generate`] sees after each generated token.
#[derive(Debug)]
pub struct TokenEvent<'a> {
    /// Which completion.
    pub index: usize,
    /// The token, or `None` for the text held back until the end of a completion (the tail
    /// of a split character or of a possible stop string), or for a finished beam.
    pub token: Option<u32>,
    /// Text that became final with this token (whole characters; may be empty).
    pub text: &'a str,
    pub logprobs: Option<&'a StepLogprobs>,
    pub explain: Option<&'a Explain>,
}
