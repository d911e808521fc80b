//! A loaded model with its tokenizer and thread pool ([`Engine`]): loading from a file, a
//! folder or the hub, the engine's settings, and turning a request into checked prompt ids —
//! the one request path every front end takes.

use std::path::Path;
use std::sync::Arc;

use tuili_core::ThreadPool;
use tuili_dist::Comm;
use tuili_formats::GgufFile;
use tuili_model::{Model, Split};
use tuili_tokenizer::chat::{ChatTemplate, CHATML};
use tuili_tokenizer::{Tokenizer, TokenizerError};

use crate::error::EngineError;
use crate::hub;
use crate::request::{GenerateRequest, Prompt};

/// The tokenizer's chat template compiled, `None` when the model has none; a template that
/// does not compile is kept as its error, reported when a conversation needs it.
fn compile_template(tok: &Tokenizer) -> Result<Option<ChatTemplate>, String> {
    tok.chat_template().transpose().map_err(|e| e.to_string())
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
    pub(crate) model: Model,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) cfg: EngineConfig,
    pub(crate) n_ctx: usize,
    pub(crate) pool: ThreadPool,
    defaults: GenerationDefaults,
    /// The chat template, compiled once (see [`compile_template`]).
    chat: Result<Option<ChatTemplate>, String>,
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
        Engine::load_dist(path, cfg, how, Split::whole())
    }

    /// [`Engine::load_with`] as one process of a distributed run (`split`: tensor
    /// parallelism, a pipeline stage; see [`Model::load_split`]): every process loads the
    /// same model and must then make the same calls in the same order — what
    /// [`Engine::agree_seed`] and the front ends see to.
    pub fn load_dist(
        path: impl AsRef<Path>,
        cfg: EngineConfig,
        how: tuili_formats::Load,
        split: Split,
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
            return Engine::load_dist(dir, cfg, how, split);
        }
        if path.is_dir() {
            let (model, extras) = Model::load_hf_split(path, how, split)?;
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
        let model = Model::load_split(file, split)?;
        Engine::new(model, tokenizer, cfg)
    }

    /// Every process of the run (alone: one).
    pub fn comm(&self) -> &dyn Comm {
        self.model.comm()
    }

    /// One sampling seed for the whole group: `seed` if given, else rank 0's fresh one, sent to
    /// every rank (so that seeded and unseeded runs sample the same tokens on every rank).
    pub fn agree_seed(&self, seed: Option<u64>) -> Result<u64, EngineError> {
        let comm = self.comm();
        let mut bytes = seed.unwrap_or_else(tuili_sample::fresh_seed).to_le_bytes();
        if comm.size() > 1 && seed.is_none() {
            comm.broadcast(0, &mut bytes)?;
        }
        Ok(u64::from_le_bytes(bytes))
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
        // More rows than tokens is padding (published models do it; the rows are never
        // sampled: `decoder::text_only`); fewer would leave tokens the model cannot score.
        if tokenizer.n_vocab() > model.config().n_vocab {
            return Err(EngineError::BadSetting {
                name: "vocabulary",
                value: tokenizer.n_vocab().to_string(),
                reason: format!(
                    "the tokenizer has {} tokens, the model only {} rows of logits",
                    tokenizer.n_vocab(),
                    model.config().n_vocab
                ),
            });
        }
        let pool = ThreadPool::new(cfg.threads);
        Ok(Engine {
            model,
            cfg,
            n_ctx,
            pool,
            defaults: GenerationDefaults::default(),
            chat: compile_template(&tokenizer),
            tokenizer,
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

    /// The chat template conversations are rendered with: the model's own, or what
    /// [`Engine::set_chat_template`] chose.
    pub fn chat_template(&self) -> Result<&ChatTemplate, EngineError> {
        match &self.chat {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(EngineError::NoChatTemplate),
            Err(reason) => Err(EngineError::Tokenizer(TokenizerError::Template {
                reason: reason.clone(),
            })),
        }
    }

    /// Replaces the chat template: `chatml`, or the path of a Jinja file.
    pub fn set_chat_template(&mut self, spec: &str) -> Result<(), EngineError> {
        let source = if spec == "chatml" {
            CHATML.to_string()
        } else {
            std::fs::read_to_string(spec)
                .map_err(|e| EngineError::Io(format!("cannot read chat template {spec}: {e}")))?
        };
        self.tokenizer.set_chat_template(Some(source));
        self.chat = compile_template(&self.tokenizer);
        self.chat_template().map(|_| ())
    }

    /// Checks a request (sampling and beam parameters, `n`, token ids) and turns its prompt
    /// into ids — text tokenized with BOS as the model says, ids checked against the
    /// vocabulary, a conversation rendered with the chat template —, then checks those (not
    /// empty, within the context). Nothing runs the model: what can be refused is refused
    /// here, the same way for every front end.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<Vec<u32>, EngineError> {
        self.check_request(req)?;
        let tok = &self.tokenizer;
        let prompt = match &req.prompt {
            Prompt::Text(t) => {
                self.check_text(t)?;
                tok.encode(t, true, req.parse_special)?
            }
            Prompt::Ids(ids) => {
                let n_vocab = self.model.config().n_vocab;
                if let Some(&id) = ids.iter().find(|&&i| i as usize >= n_vocab) {
                    return Err(tuili_model::ModelError::BadToken { id, n_vocab }.into());
                }
                ids.clone()
            }
            Prompt::Chat(messages) => {
                let (text, add_bos) = tok.render_chat(self.chat_template()?, messages)?;
                self.check_text(&text)?;
                tok.encode(&text, add_bos, true)?
            }
        };
        self.check_prompt(&prompt)?;
        Ok(prompt)
    }

    pub(crate) fn check_request(&self, req: &GenerateRequest) -> Result<(), EngineError> {
        req.validate()?;
        req.sampling.validate_vocab(self.model.config().n_vocab)?;
        Ok(())
    }

    /// A text longer than any context's worth of tokens can stand for is refused before it
    /// is tokenized: tokenizing megabytes takes seconds, only to refuse them after.
    pub fn check_text(&self, text: &str) -> Result<(), EngineError> {
        let max_bytes = self.tokenizer.max_text_bytes(self.n_ctx);
        if text.len() > max_bytes {
            return Err(EngineError::PromptTooLongText {
                bytes: text.len(),
                max_bytes,
                n_ctx: self.n_ctx,
            });
        }
        Ok(())
    }

    /// A prompt must hold at least one token and fit in the context.
    pub(crate) fn check_prompt(&self, prompt: &[u32]) -> Result<(), EngineError> {
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
}
