//! `tuili-engine`: from a request to generated text.
//!
//! Owns: loading a model file together with its tokenizer, the generation loop (prompt →
//! tokens → chunked prefill → decode loop → stop), stop conditions and timing. May not: know
//! an architecture's internals (that is `model`'s), or how logits become a token (`sample`'s).
//! Continuous batching and the request scheduler will live here, as pure bookkeeping.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tuili_core::ThreadPool;
use tuili_formats::GgufFile;
use tuili_model::{Llama, Logits, Scratch};
use tuili_sample::{Sampler, SamplingParams};
use tuili_tokenizer::Tokenizer;

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
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Recognise control-token text (e.g. `<|im_start|>`) in the prompt.
    pub parse_special: bool,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
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
            StopReason::MaxTokens => "max tokens",
            StopReason::ContextFull => "context full",
            StopReason::Cancelled => "cancelled",
        })
    }
}

/// What a generation did, and how fast.
#[derive(Debug, Clone)]
pub struct GenerationStats {
    pub prompt_tokens: Vec<u32>,
    /// Generated ids (an end-of-generation token that stopped the run not included).
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
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
}

/// A loaded model and tokenizer, ready to generate.
pub struct Engine {
    model: Llama,
    tokenizer: Tokenizer,
    cfg: EngineConfig,
    n_ctx: usize,
    pool: ThreadPool,
}

impl Engine {
    /// Opens a GGUF model file (memory-mapped) with the tokenizer it carries.
    pub fn load(path: impl AsRef<Path>, cfg: EngineConfig) -> Result<Engine, EngineError> {
        let file = Arc::new(GgufFile::open(path)?);
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let model = Llama::load(file)?;
        Engine::new(model, tokenizer, cfg)
    }

    pub fn new(
        model: Llama,
        tokenizer: Tokenizer,
        cfg: EngineConfig,
    ) -> Result<Engine, EngineError> {
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
            cfg.n_ctx
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
        })
    }

    pub fn model(&self) -> &Llama {
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

    /// Generates a continuation of `req.prompt`. `on_text` receives the text as it is
    /// produced (whole UTF-8 characters only) and may return `ControlFlow::Break(())` to stop.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats, EngineError> {
        let prompt = self.prepare(req)?;
        self.generate_from(prompt, req, on_text)
    }

    /// Checks a request (sampling parameters, prompt length) and tokenizes its prompt,
    /// without running the model: what can be refused is refused here.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<Vec<u32>, EngineError> {
        req.sampling.validate()?;
        let prompt = self.tokenize_prompt(&req.prompt, req.parse_special)?;
        self.check_prompt(&prompt)?;
        Ok(prompt)
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
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats, EngineError> {
        let mut sampler = Sampler::new(req.sampling.clone())?;
        self.check_prompt(&prompt)?;
        let pool = &self.pool;
        let mut kv = self.model.new_cache(self.n_ctx)?;
        let mut scratch = Scratch::new();

        let t0 = Instant::now();
        let chunks: Vec<&[u32]> = prompt.chunks(self.cfg.n_batch).collect();
        let mut next = 0u32;
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let which = if last { Logits::Last } else { Logits::None };
            let logits = self
                .model
                .forward(chunk, &mut kv, &mut scratch, which, pool)?;
            if last {
                next = sampler.sample(logits)?;
            }
        }
        let prompt_time = t0.elapsed();

        let mut stream = self.tokenizer.stream(&prompt)?;
        let mut tokens = Vec::new();
        let mut text = String::new();
        let mut decode_steps = 0;
        let t1 = Instant::now();
        let stop = loop {
            if req.max_tokens == 0 {
                break StopReason::MaxTokens;
            }
            if !req.ignore_eos && self.tokenizer.is_eog(next) {
                break StopReason::Eos;
            }
            tokens.push(next);
            if let Some(piece) = stream.step(next)? {
                text.push_str(&piece);
                if on_text(&piece).is_break() {
                    break StopReason::Cancelled;
                }
            }
            if tokens.len() >= req.max_tokens {
                break StopReason::MaxTokens;
            }
            if kv.len() >= self.n_ctx {
                break StopReason::ContextFull;
            }
            let logits = self
                .model
                .forward(&[next], &mut kv, &mut scratch, Logits::Last, pool)?;
            decode_steps += 1;
            next = sampler.sample(logits)?;
        };
        if stop != StopReason::Cancelled {
            if let Some(rest) = stream.flush()? {
                text.push_str(&rest);
                let _ = on_text(&rest);
            }
        }
        Ok(GenerationStats {
            prompt_tokens: prompt,
            tokens,
            text,
            stop,
            prompt_time,
            gen_time: t1.elapsed(),
            decode_steps,
        })
    }
}
