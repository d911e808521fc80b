//! Generation for one request at a time: one prefill of the prompt shared by every
//! completion, the sampling decode loop, beam search over forked caches, and conversation
//! sessions that keep their cache between turns.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use tuili_kv::KvCache;
use tuili_model::{Logits, Scratch};

use crate::beam::{self, BeamBackend, BeamParams, Hypothesis};
use crate::decoder::Decoder;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::request::{Completion, GenerateRequest, GenerationStats, StopReason, TokenEvent};
use crate::stop::{Matched, StopMatcher};

impl Engine {
    /// Generates continuations of `req.prompt`. `on_token` sees each generated token with the
    /// text it made final, and may return `ControlFlow::Break(())` to stop (the completion
    /// being generated ends as `Cancelled`, and no further completion is started).
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_token: &mut dyn FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<GenerationStats, EngineError> {
        let prompt = self.prepare(req)?;
        self.generate_from(prompt, req, on_token)
    }

    /// Generates from prompt ids that [`Engine::prepare`] produced for `req`.
    pub fn generate_from(
        &self,
        prompt: Vec<u32>,
        req: &GenerateRequest,
        on_token: &mut dyn FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<GenerationStats, EngineError> {
        self.check_request(req)?;
        self.check_prompt(&prompt)?;
        let cfg = self.model.config();
        let mut scratch = Scratch::new();

        // Prefill once, into a cache of exactly the prompt's size, frozen and shared by every
        // completion (or beam), which owns only the rows it appends.
        let t0 = Instant::now();
        let mut kv = KvCache::new(cfg.n_layer, prompt.len(), cfg.kv_dim())
            .map_err(tuili_model::ModelError::from)?;
        let mut first = Vec::new();
        let chunks: Vec<&[u32]> = prompt.chunks(self.cfg.n_batch).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let which = if last { Logits::Last } else { Logits::None };
            let logits = self
                .model
                .forward(chunk, &mut kv, &mut scratch, which, &self.pool)?;
            if last {
                first = logits.to_vec();
            }
        }
        let prefix = Arc::new(kv);
        let prompt_time = t0.elapsed();
        // Room each completion needs after the prompt: the last sampled token needs no slot.
        let extra = req
            .max_tokens
            .saturating_sub(1)
            .min(self.n_ctx - prompt.len());

        let t1 = Instant::now();
        let mut run = Run {
            engine: self,
            req,
            prompt: &prompt,
            prefix: &prefix,
            extra,
            first: &first,
            scratch,
            decode_steps: 0,
        };
        let completions = match &req.beam {
            Some(bp) => run.beams(bp, on_token)?,
            None => {
                let mut out = Vec::with_capacity(req.n);
                for index in 0..req.n {
                    let c = run.sample(index, on_token)?;
                    let cancelled = c.stop == StopReason::Cancelled;
                    out.push(c);
                    if cancelled {
                        break;
                    }
                }
                out
            }
        };
        Ok(GenerationStats {
            prompt_tokens: prompt.clone(),
            completions,
            prompt_time,
            gen_time: t1.elapsed(),
            decode_steps: run.decode_steps,
        })
    }
}

impl Engine {
    /// The longest a beam search of `req` after `prompt` may run: `max_tokens`, or what the
    /// context leaves (the last step's tokens need no slot).
    pub(crate) fn beam_max_new(&self, prompt: &[u32], req: &GenerateRequest) -> usize {
        req.max_tokens
            .min(self.n_ctx + 1 - prompt.len().min(self.n_ctx))
    }

    /// Completion `index` of a beam search: the hypothesis' text (stop strings cut it: they
    /// do not steer the search), why it ended and its score.
    pub(crate) fn beam_completion(
        &self,
        prompt: &[u32],
        req: &GenerateRequest,
        index: usize,
        h: Hypothesis,
    ) -> Result<Completion, EngineError> {
        let mut stream = self.tokenizer.stream(prompt)?;
        let mut raw = String::new();
        for &t in &h.tokens {
            raw.push_str(&stream.step(t)?.unwrap_or_default());
        }
        raw.push_str(&stream.flush()?.unwrap_or_default());
        let mut stops = StopMatcher::new(&req.stop);
        let (text, stop) = match stops.push(&raw) {
            Matched::Stop { index, emit } => (emit, StopReason::StopString(index)),
            Matched::Emit(t) => (
                t + &stops.flush(),
                if h.finished {
                    StopReason::Eos
                } else if h.tokens.len() >= req.max_tokens {
                    StopReason::MaxTokens
                } else {
                    StopReason::ContextFull
                },
            ),
        };
        Ok(Completion {
            index,
            tokens: h.tokens,
            text,
            stop,
            logprobs: Vec::new(),
            beam_score: Some(h.score),
        })
    }

    /// The end-of-sequence ids a beam search of `req` ends hypotheses at.
    pub(crate) fn beam_eos(&self, req: &GenerateRequest) -> Vec<u32> {
        if req.ignore_eos {
            Vec::new()
        } else {
            self.tokenizer.eog_ids().to_vec()
        }
    }
}

/// A conversation kept in its own KV cache: each turn only the tokens after the longest
/// prefix the cache already holds are processed.
pub struct Session {
    kv: KvCache,
    /// The tokens whose keys and values the cache holds, in order.
    tokens: Vec<u32>,
}

impl Session {
    /// Tokens held in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.kv.clear();
        self.tokens.clear();
    }
}

/// What one turn of a session did.
#[derive(Debug, Clone)]
pub struct TurnStats {
    pub stats: GenerationStats,
    /// Tokens of the prompt found in the cache and not processed again.
    pub reused: usize,
}

impl Engine {
    /// A new conversation with a cache of the engine's context size.
    pub fn new_session(&self) -> Result<Session, EngineError> {
        let c = self.model.config();
        Ok(Session {
            kv: KvCache::new(c.n_layer, self.n_ctx, c.kv_dim())
                .map_err(tuili_model::ModelError::from)?,
            tokens: Vec::new(),
        })
    }

    /// Continues a session: `prompt` is the whole context to be (e.g. the rendered
    /// conversation so far); the cache keeps its longest common prefix with what it holds and
    /// processes the rest, then generates as `req` asks (one completion, sampling: `n`,
    /// `beam` are refused here).
    pub fn generate_in_session(
        &self,
        session: &mut Session,
        prompt: Vec<u32>,
        req: &GenerateRequest,
        on_token: &mut dyn FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<TurnStats, EngineError> {
        self.check_request(req)?;
        self.check_prompt(&prompt)?;
        if req.n != 1 || req.beam.is_some() {
            return Err(EngineError::BadSetting {
                name: "n",
                value: req.n.to_string(),
                reason: "a conversation turn makes one sampled completion".into(),
            });
        }
        // At least the last prompt token is run again: its logits start the reply.
        let common = session
            .tokens
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        session
            .kv
            .truncate(common)
            .map_err(tuili_model::ModelError::from)?;
        session.tokens.truncate(common);
        let mut scratch = Scratch::new();
        let t0 = Instant::now();
        let mut first = Vec::new();
        let new = &prompt[common..];
        let chunks: Vec<&[u32]> = new.chunks(self.cfg.n_batch).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let which = if last { Logits::Last } else { Logits::None };
            let logits =
                self.model
                    .forward(chunk, &mut session.kv, &mut scratch, which, &self.pool)?;
            session.tokens.extend_from_slice(chunk);
            if last {
                first = logits.to_vec();
            }
        }
        let prompt_time = t0.elapsed();
        let t1 = Instant::now();
        let dummy = Arc::new(KvCache::new(0, 0, 0).map_err(tuili_model::ModelError::from)?);
        let mut run = Run {
            engine: self,
            req,
            prompt: &prompt,
            prefix: &dummy,
            extra: 0,
            first: &first,
            scratch,
            decode_steps: 0,
        };
        let c = run.decode(0, &mut session.kv, on_token, Some(&mut session.tokens))?;
        Ok(TurnStats {
            reused: common,
            stats: GenerationStats {
                prompt_tokens: new.to_vec(),
                completions: vec![c],
                prompt_time,
                gen_time: t1.elapsed(),
                decode_steps: run.decode_steps,
            },
        })
    }
}

/// The state of one request's decoding after its prefill.
struct Run<'a> {
    engine: &'a Engine,
    req: &'a GenerateRequest,
    prompt: &'a [u32],
    /// The prompt's keys and values, shared.
    prefix: &'a Arc<KvCache>,
    /// Positions each completion may append.
    extra: usize,
    /// Logits after the prompt.
    first: &'a [f32],
    scratch: Scratch,
    decode_steps: usize,
}

impl Run<'_> {
    /// One sampled completion, from stream `index` of the seed, in a fork of the prompt's
    /// cache.
    fn sample(
        &mut self,
        index: usize,
        on_token: &mut dyn FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        let mut kv =
            KvCache::fork(self.prefix, self.extra).map_err(tuili_model::ModelError::from)?;
        self.decode(index, &mut kv, on_token, None)
    }

    /// The decode loop: samples from `first`, then feeds each token to the model in `kv`
    /// (recording it in `fed` when given) until a stop condition.
    fn decode(
        &mut self,
        index: usize,
        kv: &mut KvCache,
        on_token: &mut dyn FnMut(&TokenEvent) -> ControlFlow<()>,
        mut fed: Option<&mut Vec<u32>>,
    ) -> Result<Completion, EngineError> {
        let (e, req) = (self.engine, self.req);
        let n_vocab = e.model.config().n_vocab;
        let max_len = self.prompt.len() + req.max_tokens.min(e.n_ctx);
        let mut dec = Decoder::new(&e.tokenizer, req, self.prompt, n_vocab, index, max_len)?;
        let mut logits: &[f32] = self.first;
        let stop = loop {
            let st = dec.step(logits)?;
            if let Some(next) = st.token {
                let ev = TokenEvent {
                    index,
                    token: Some(next),
                    text: &st.emit,
                    logprobs: dec.last_logprobs(),
                    explain: req.explain.map(|_| &dec.explain),
                };
                if on_token(&ev).is_break() {
                    break StopReason::Cancelled;
                }
            }
            if let Some(stop) = st.stop {
                break stop;
            }
            if kv.len() >= e.n_ctx {
                break StopReason::ContextFull;
            }
            // Invariant: a step without a stop reason sampled a token.
            let next = st.token.expect("a token when not stopped");
            logits = e
                .model
                .forward(&[next], kv, &mut self.scratch, req.step_logits(), &e.pool)?;
            if let Some(f) = fed.as_mut() {
                f.push(next);
            }
            self.decode_steps += 1;
        };
        let rest = dec.finish(stop)?;
        if !rest.is_empty() {
            let _ = on_token(&TokenEvent {
                index,
                token: None,
                text: &rest,
                logprobs: None,
                explain: None,
            });
        }
        Ok(dec.c)
    }

    /// Beam search; every beam is a fork of the prompt's cache.
    fn beams(
        &mut self,
        bp: &BeamParams,
        on_token: &mut dyn FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Vec<Completion>, EngineError> {
        let (e, req) = (self.engine, self.req);
        let max_new = e.beam_max_new(self.prompt, req);
        if max_new == 0 {
            return Ok(vec![Completion {
                index: 0,
                tokens: Vec::new(),
                text: String::new(),
                stop: StopReason::MaxTokens,
                logprobs: Vec::new(),
                beam_score: None,
            }]);
        }
        let eos = e.beam_eos(req);
        let mut backend = KvBeams {
            engine: e,
            caches: (0..bp.num_beams)
                .map(|_| KvCache::fork(self.prefix, self.extra))
                .collect::<Result<_, _>>()
                .map_err(tuili_model::ModelError::from)?,
            scratch: &mut self.scratch,
            steps: 0,
        };
        let hyps = beam::beam_search(
            &mut backend,
            self.first,
            self.prompt,
            &eos,
            bp,
            &crate::decoder::text_only(
                &req.sampling,
                self.engine.tokenizer.n_vocab(),
                self.engine.model.config().n_vocab,
            ),
            max_new,
            req.n,
        )?;
        self.decode_steps += backend.steps;
        let mut out = Vec::with_capacity(hyps.len());
        for (index, h) in hyps.into_iter().enumerate() {
            let c = e.beam_completion(self.prompt, req, index, h)?;
            let _ = on_token(&TokenEvent {
                index,
                token: None,
                text: &c.text,
                logprobs: None,
                explain: None,
            });
            out.push(c);
        }
        Ok(out)
    }
}

/// The model as a beam-search backend: one forked cache per beam.
struct KvBeams<'a> {
    engine: &'a Engine,
    caches: Vec<KvCache>,
    scratch: &'a mut Scratch,
    steps: usize,
}

impl BeamBackend for KvBeams<'_> {
    type Error = EngineError;

    fn step(
        &mut self,
        parents: &[usize],
        tokens: &[u32],
        out: &mut [f32],
    ) -> Result<(), EngineError> {
        let e = self.engine;
        let nv = e.model.config().n_vocab;
        // Reorder: the first child of a parent takes its cache as it is; any further child
        // copies the parent's own rows into the cache of a beam nobody continues.
        let mut old: Vec<Option<KvCache>> = std::mem::take(&mut self.caches)
            .into_iter()
            .map(Some)
            .collect();
        let mut taken: Vec<Option<usize>> = vec![None; old.len()];
        let mut new: Vec<Option<KvCache>> = (0..parents.len()).map(|_| None).collect();
        for (i, &p) in parents.iter().enumerate() {
            if taken[p].is_none() {
                new[i] = old[p].take();
                taken[p] = Some(i);
            }
        }
        let mut spare = old.into_iter().flatten();
        for (i, &p) in parents.iter().enumerate() {
            if new[i].is_none() {
                // Invariant: as many caches are unused as there are extra children.
                let mut c = spare
                    .next()
                    .ok_or(EngineError::Internal("beam cache pool exhausted"))?;
                let src = taken[p]
                    .and_then(|j| new[j].as_ref())
                    .ok_or(EngineError::Internal("beam parent lost"))?;
                c.copy_from(src).map_err(tuili_model::ModelError::from)?;
                new[i] = Some(c);
            }
        }
        self.caches = new.into_iter().flatten().collect();
        for (i, (&t, kv)) in tokens.iter().zip(self.caches.iter_mut()).enumerate() {
            let logits = e
                .model
                .forward(&[t], kv, self.scratch, Logits::Last, &e.pool)?;
            out[i * nv..(i + 1) * nv].copy_from_slice(logits);
        }
        self.steps += 1;
        Ok(())
    }
}
