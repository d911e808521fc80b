//! One completion's decoding state, the same for the one-request loop and the batched
//! server loop: its sampler (own RNG stream, penalties over prompt and output), the
//! streaming detokenizer, the stop-string matcher, and what has been produced so far.

use tuili_sample::{Explain, Sampler, SamplingParams};
use tuili_tokenizer::{StreamDecoder, Tokenizer};

use crate::error::EngineError;
use crate::request::{Completion, GenerateRequest, StopReason};
use crate::stop::{Matched, StopMatcher};

/// `p` with the logit rows past the tokenizer's last token banned (−∞ bias), unless the
/// request biases them itself. Published models pad their embedding beyond the tokenizer
/// (Phi-3: 32064 rows for 32011 tokens; Qwen2/3: 151936 for about 151665) — rows with no
/// text, never to be chosen. Their logits still count in log-probabilities, as transformers
/// computes them.
pub(crate) fn text_only(p: &SamplingParams, n_text: usize, n_vocab: usize) -> SamplingParams {
    let mut p = p.clone();
    for id in n_text..n_vocab {
        let id = id as u32;
        if !p.logit_bias.iter().any(|&(b, _)| b == id) {
            p.logit_bias.push((id, f32::NEG_INFINITY));
        }
    }
    p
}

pub(crate) struct Decoder<'t> {
    tok: &'t Tokenizer,
    sampler: Sampler,
    stream: StreamDecoder<'t>,
    stops: StopMatcher,
    pub(crate) explain: Explain,
    explain_k: Option<usize>,
    logprobs: Option<usize>,
    max_tokens: usize,
    ignore_eos: bool,
    /// What this completion produced so far.
    pub(crate) c: Completion,
}

/// What one step produced.
pub(crate) struct Stepped {
    /// The sampled token (`None` when generation ended without one: end of text, or no
    /// tokens allowed).
    pub token: Option<u32>,
    /// Text that became final with it.
    pub emit: String,
    /// Generation of this completion ends here.
    pub stop: Option<StopReason>,
}

impl<'t> Decoder<'t> {
    /// Completion `index` of `req` after `prompt`, sampling from RNG stream `index`.
    pub(crate) fn new(
        tok: &'t Tokenizer,
        req: &GenerateRequest,
        prompt: &[u32],
        n_vocab: usize,
        index: usize,
        max_len: usize,
    ) -> Result<Decoder<'t>, EngineError> {
        let sampling = text_only(&req.sampling, tok.n_vocab(), n_vocab);
        let mut sampler = Sampler::with_stream(sampling, n_vocab, index as u64)?;
        sampler.reserve(max_len);
        sampler.accept_all(prompt);
        Ok(Decoder {
            tok,
            sampler,
            stream: tok.stream(prompt)?,
            stops: StopMatcher::new(&req.stop),
            explain: Explain::default(),
            explain_k: req.explain,
            logprobs: req.logprobs,
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            c: Completion {
                index,
                tokens: Vec::new(),
                text: String::new(),
                stop: StopReason::MaxTokens,
                logprobs: Vec::new(),
                beam_score: None,
            },
        })
    }

    /// Samples the next token from `logits` and turns it into text.
    pub(crate) fn step(&mut self, logits: &[f32]) -> Result<Stepped, EngineError> {
        let none = |stop| Stepped {
            token: None,
            emit: String::new(),
            stop: Some(stop),
        };
        if self.c.tokens.len() >= self.max_tokens {
            return Ok(none(StopReason::MaxTokens));
        }
        let next = match self.explain_k {
            Some(k) => self
                .sampler
                .sample_explained(logits, k, &mut self.explain)?,
            None => self.sampler.sample(logits)?,
        };
        if !self.ignore_eos && self.tok.is_eog(next) {
            return Ok(none(StopReason::Eos));
        }
        self.sampler.accept(next);
        self.c.tokens.push(next);
        if let Some(k) = self.logprobs {
            self.c
                .logprobs
                .push(tuili_sample::logprobs(logits, next, k));
        }
        let piece = self.stream.step(next)?.unwrap_or_default();
        let (emit, stop) = match self.stops.push(&piece) {
            Matched::Emit(t) => (t, None),
            Matched::Stop { index, emit } => (emit, Some(StopReason::StopString(index))),
        };
        self.c.text.push_str(&emit);
        let stop =
            stop.or((self.c.tokens.len() >= self.max_tokens).then_some(StopReason::MaxTokens));
        Ok(Stepped {
            token: Some(next),
            emit,
            stop,
        })
    }

    /// Ends the completion for `reason`; returns the text held back until now (the tail of
    /// a split character or of a possible stop string), which may itself complete a stop
    /// string.
    pub(crate) fn finish(&mut self, reason: StopReason) -> Result<String, EngineError> {
        self.c.stop = reason;
        if matches!(reason, StopReason::Cancelled | StopReason::StopString(_)) {
            return Ok(String::new());
        }
        let mut rest = self.stream.flush()?.unwrap_or_default();
        match self.stops.push(&rest) {
            Matched::Emit(t) => rest = t + &self.stops.flush(),
            Matched::Stop { index, emit } => {
                rest = emit;
                self.c.stop = StopReason::StopString(index);
            }
        }
        self.c.text.push_str(&rest);
        Ok(rest)
    }

    /// The logprobs entry of the last token, when the request asked for them.
    pub(crate) fn last_logprobs(&self) -> Option<&tuili_sample::StepLogprobs> {
        self.logprobs.and(self.c.logprobs.last())
    }
}
