//! `tuili-engine`: from a request to generated text.
//!
//! Owns: loading a model (file, folder or hub id) together with its tokenizer, the generation
//! loop (prompt → tokens → one prefill shared by every completion → decode loops → stop), `n`
//! completions, the beam-search driver ([`beam`]), stop strings, conversation sessions,
//! perplexity, and timing; for serving, the continuous-batching scheduler ([`sched`], pure
//! bookkeeping) and the serving loop that owns the paged KV pool ([`serve`]). May not: know
//! an architecture's internals (that is `model`'s), how logits become a token (`sample`'s),
//! or HTTP (`server`'s).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod beam;
mod decoder;
pub mod hub;
mod perplexity;
pub mod sched;
pub mod serve;
mod stop;

use tuili_core::ThreadPool;
use tuili_formats::GgufFile;
use tuili_kv::KvCache;

use decoder::Decoder;
use tuili_model::{Logits, Model, Scratch};
use tuili_sample::{Explain, SamplingParams, StepLogprobs};
use tuili_tokenizer::Tokenizer;

pub use beam::{BeamBackend, BeamParams, EarlyStopping, Hypothesis};
pub use perplexity::{ChunkProgress, KlBase, KlStats, PerplexityParams, PerplexityResult};
pub use stop::{Matched, StopMatcher};

/// Errors of the engine, each one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] tuili_formats::GgufError),
    #[error(transparent)]
    Model(#[from] tuili_model::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] tuili_tokenizer::TokenizerError),
    #[error(transparent)]
    Sample(#[from] tuili_sample::SampleError),
    #[error("the prompt is {n_prompt} tokens long but the context holds {n_ctx}; use a shorter prompt or a larger --ctx-size")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("the prompt is empty and the model adds no BOS token: nothing to start from")]
    EmptyPrompt,
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

/// Settings of an engine instance.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Context size in tokens; 0 means the model's training context, capped at 4096.
    pub n_ctx: usize,
    /// Prompt tokens per forward pass during prefill.
    pub n_batch: usize,
    /// Worker threads for matrix products.
    pub threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_ctx: 0,
            n_batch: 512,
            threads: tuili_core::parallel::default_threads(),
        }
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
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

impl GenerateRequest {
    /// A request with one completion and every option off.
    pub fn new(prompt: impl Into<String>, max_tokens: usize, sampling: SamplingParams) -> Self {
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

/// Sampling defaults from a model's own files; `None` where they say nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

/// A loaded model and tokenizer, ready to generate.
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    cfg: EngineConfig,
    n_ctx: usize,
    pool: ThreadPool,
    defaults: GenerationDefaults,
}

impl Engine {
    /// Opens a model: a GGUF file (memory-mapped) with the tokenizer it carries, a Hugging
    /// Face folder (`config.json`, safetensors shards memory-mapped, `tokenizer.json`,
    /// `tokenizer_config.json`, `generation_config.json`), or a hub id `org/name[@rev]`
    /// (fetched into the Hugging Face cache first; see [`hub`]).
    pub fn load(path: impl AsRef<Path>, cfg: EngineConfig) -> Result<Engine, EngineError> {
        Engine::load_with(path, cfg, tuili_formats::Load::Map)
    }

    /// [`Engine::load`] with the weights mapped or read into memory (`--no-mmap`;
    /// [`tuili_formats::Load`]).
    pub fn load_with(
        path: impl AsRef<Path>,
        cfg: EngineConfig,
        how: tuili_formats::Load,
    ) -> Result<Engine, EngineError> {
        let path = path.as_ref();
        if let Some(s) = path.to_str().filter(|s| hub::looks_like_hub_id(s)) {
            let opts = hub::HubOptions {
                progress: true,
                ..Default::default()
            };
            let dir = hub::fetch(s, &opts).map_err(|e| {
                EngineError::Io(format!(
                    "{s}: no such file or folder here, so tried the hub: {e}"
                ))
            })?;
            return Engine::load_with(dir, cfg, how);
        }
        if path.is_dir() {
            let (model, extras) = Model::load_hf(path, how)?;
            let mut tokenizer = Tokenizer::from_tokenizer_json(path.join("tokenizer.json"))?;
            for &id in &extras.eos_ids {
                tokenizer.add_eog(id);
            }
            let mut e = Engine::new(model, tokenizer, cfg)?;
            e.defaults = GenerationDefaults {
                temperature: match extras.do_sample {
                    Some(false) => Some(0.0),
                    _ => extras.temperature,
                },
                top_k: extras.top_k,
                top_p: extras.top_p,
                repetition_penalty: extras.repetition_penalty,
            };
            return Ok(e);
        }
        let file = Arc::new(GgufFile::open_with(path, how)?);
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let model = Model::load(file)?;
        Engine::new(model, tokenizer, cfg)
    }

    /// Sampling defaults the model's files suggest (a Hugging Face `generation_config.json`).
    pub fn defaults(&self) -> &GenerationDefaults {
        &self.defaults
    }

    pub fn new(
        model: impl Into<Model>,
        tokenizer: Tokenizer,
        cfg: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let model = model.into();
        if cfg.n_batch == 0 {
            return Err(EngineError::BadSetting {
                name: "batch size",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        if cfg.threads == 0 || cfg.threads > 1024 {
            return Err(EngineError::BadSetting {
                name: "threads",
                value: cfg.threads.to_string(),
                reason: "must be between 1 and 1024".into(),
            });
        }
        let train = model.config().n_ctx_train;
        let n_ctx = if cfg.n_ctx == 0 {
            train.min(4096)
        } else {
            // At most what the architecture has positions for (GPT-2's learned ones).
            model.max_context(cfg.n_ctx)
        };
        if n_ctx > (1 << 20) {
            return Err(EngineError::BadSetting {
                name: "context size",
                value: n_ctx.to_string(),
                reason: "must be at most 1048576".into(),
            });
        }
        if tokenizer.n_vocab() != model.config().n_vocab {
            return Err(EngineError::BadSetting {
                name: "vocabulary",
                value: tokenizer.n_vocab().to_string(),
                reason: format!(
                    "the tokenizer has {} tokens, the model {}",
                    tokenizer.n_vocab(),
                    model.config().n_vocab
                ),
            });
        }
        let pool = ThreadPool::new(cfg.threads);
        Ok(Engine {
            model,
            tokenizer,
            cfg,
            n_ctx,
            pool,
            defaults: GenerationDefaults::default(),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    /// Tokenizes a prompt as generation does (BOS as the model's metadata says).
    pub fn tokenize_prompt(
        &self,
        prompt: &str,
        parse_special: bool,
    ) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer.encode(prompt, true, parse_special)?)
    }

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

    /// Checks a request (sampling and beam parameters, `n`, prompt length) and tokenizes its
    /// prompt, without running the model: what can be refused is refused here.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<Vec<u32>, EngineError> {
        self.check_request(req)?;
        let prompt = self.tokenize_prompt(&req.prompt, req.parse_special)?;
        self.check_prompt(&prompt)?;
        Ok(prompt)
    }

    fn check_request(&self, req: &GenerateRequest) -> Result<(), EngineError> {
        req.validate()?;
        req.sampling.validate_vocab(self.model.config().n_vocab)?;
        Ok(())
    }

    /// A prompt must hold at least one token and fit in the context.
    fn check_prompt(&self, prompt: &[u32]) -> Result<(), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() > self.n_ctx {
            return Err(EngineError::PromptTooLong {
                n_prompt: prompt.len(),
                n_ctx: self.n_ctx,
            });
        }
        Ok(())
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
                .forward(&[next], kv, &mut self.scratch, Logits::Last, &e.pool)?;
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
        let max_new = req.max_tokens.min(e.n_ctx - self.prompt.len() + 1);
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
        let eos: Vec<u32> = if req.ignore_eos {
            Vec::new()
        } else {
            e.tokenizer.eog_ids().to_vec()
        };
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
            &req.sampling,
            max_new,
            req.n,
        )?;
        self.decode_steps += backend.steps;
        let mut out = Vec::with_capacity(hyps.len());
        for (index, h) in hyps.into_iter().enumerate() {
            let mut stream = e.tokenizer.stream(self.prompt)?;
            let mut raw = String::new();
            for &t in &h.tokens {
                raw.push_str(&stream.step(t)?.unwrap_or_default());
            }
            raw.push_str(&stream.flush()?.unwrap_or_default());
            // Stop strings cut the finished text (they do not steer the search).
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
            let logprobs = Vec::new();
            let _ = on_token(&TokenEvent {
                index,
                token: None,
                text: &text,
                logprobs: None,
                explain: None,
            });
            out.push(Completion {
                index,
                tokens: h.tokens,
                text,
                stop,
                logprobs,
                beam_score: Some(h.score),
            });
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
