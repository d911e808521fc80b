//! `tuili`: the command line. Parses arguments, calls the engine, prints. Errors are one line
//! on stderr and a non-zero exit code.

mod bench;
mod chat;
mod inspect;
mod perplexity;
mod quantize;
mod serve;

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tuili_engine::{BeamParams, EarlyStopping, Engine, EngineConfig, GenerateRequest};
use tuili_formats::GgufFile;
use tuili_sample::{SamplingParams, Stage, DEFAULT_ORDER};
use tuili_tokenizer::Tokenizer;

#[derive(Parser)]
#[command(
    name = "tuili",
    version,
    about = "tuili (推理): LLM inference on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt.
    Run(Box<RunArgs>),
    /// Chat with a model in the terminal (multi-turn; the conversation stays in the KV cache).
    Chat(Box<chat::ChatArgs>),
    /// Print the token ids (and pieces) of a text, as llama.cpp's llama-tokenize does.
    Tokenize(TokenizeArgs),
    /// Print a GGUF file's metadata and tensors.
    Inspect(InspectArgs),
    /// Measure prompt processing and generation speed (as llama-bench does).
    Bench(bench::BenchArgs),
    /// Quantize a GGUF model or a Hugging Face folder into a GGUF (llama.cpp's types and recipes).
    Quantize(quantize::QuantizeArgs),
    /// Perplexity of a model on a text file (as llama-perplexity computes it), and KL
    /// divergence against a base model.
    Perplexity(perplexity::PerplexityArgs),
    /// Serve the model over HTTP with OpenAI's API (continuous batching, paged KV cache).
    Serve(Box<serve::ServeArgs>),
    /// Write a random-weight Llama model of a real shape (for benchmarks).
    Synth(bench::SynthArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Model file (GGUF).
    #[arg(short, long)]
    model: PathBuf,
    /// Prompt text.
    #[arg(short, long)]
    prompt: String,
    /// Maximum number of tokens to generate (per completion).
    #[arg(short = 'n', long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop where this string appears (repeatable; not printed).
    #[arg(long)]
    stop: Vec<String>,
    /// Number of completions (sampling: independent samples sharing the prompt's prefill;
    /// beam search: the best N beams).
    #[arg(
        short = 'N',
        long = "n-completions",
        alias = "num-return-sequences",
        default_value_t = 1
    )]
    n_completions: usize,
    /// Print each token's log-probability and the K most likely alternatives.
    #[arg(long, value_name = "K")]
    logprobs: Option<usize>,
    /// Print, for each step, the top candidates before and after each processor, and the pick.
    #[arg(long, value_name = "K", num_args = 0..=1, default_missing_value = "5")]
    explain: Option<usize>,
    /// Beam search with this many beams (prints the beams with their scores).
    #[arg(long, value_name = "N")]
    beams: Option<usize>,
    /// Beam search: exponent of the length dividing a beam's log-probability.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    length_penalty: f32,
    /// Beam search: true, false or never (Hugging Face semantics).
    #[arg(long, default_value = "false")]
    early_stopping: String,
    /// Worker threads (default: physical cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Read the model into memory (huge pages) instead of memory-mapping it (llama.cpp's
    /// --no-mmap): a copy of the weights, streamed at full speed whatever state the page
    /// cache is in (see the README's Commands).
    #[arg(long)]
    no_mmap: bool,
    /// Context size in tokens (0 = the model's, at most 4096).
    #[arg(short = 'c', long, default_value_t = 0)]
    ctx_size: usize,
    /// Prompt tokens per forward pass.
    #[arg(short = 'b', long, default_value_t = 512)]
    batch_size: usize,
    /// Do not print the prompt before the generated text.
    #[arg(long)]
    no_echo: bool,
    /// Keep generating past end-of-text tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Treat control-token text in the prompt (e.g. "<s>") as plain text.
    #[arg(long)]
    no_parse_special: bool,
}

/// The sampling chain's options (see the README for the order they apply in).
#[derive(clap::Args)]
pub(crate) struct SamplingArgs {
    /// Sampling temperature; 0 = greedy. Default: the model's generation_config, else 0.8.
    #[arg(long, alias = "temp", allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Keep only the K most likely tokens (0 = all). Default: the model's, else 40.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling: keep the most likely tokens up to probability P (1 = off). Default:
    /// the model's, else 0.95.
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    min_p: f32,
    /// Locally typical sampling with mass P (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    typical_p: f32,
    /// Repetition penalty for tokens in the window (1 = off). Default: the model's, else 1.
    #[arg(long, alias = "repetition-penalty", allow_negative_numbers = true)]
    repeat_penalty: Option<f32>,
    /// Presence penalty (OpenAI): subtracted once for each token in the window.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Frequency penalty (OpenAI): subtracted for each occurrence in the window.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Penalty window: the last N tokens of prompt and output (-1 = all, 0 = penalties off).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    repeat_last_n: i64,
    /// Add BIAS to a token's logit: ID=BIAS (repeatable; BIAS may be -inf to ban the token).
    #[arg(long, value_name = "ID=BIAS", allow_negative_numbers = true)]
    logit_bias: Vec<String>,
    /// Never repeat an n-gram of this size (0 = off).
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram_size: usize,
    /// Order of the stages, e.g. "top_k;typical_p;top_p;min_p;temperature" (the default).
    #[arg(long)]
    samplers: Option<String>,
    /// Random seed (default: a fresh one, printed on stderr).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

impl SamplingArgs {
    /// The parameters: what the user gave, else the model's defaults (`defaults`), else
    /// llama.cpp's.
    pub(crate) fn params(
        &self,
        seed: u64,
        defaults: Option<&tuili_engine::GenerationDefaults>,
    ) -> Result<SamplingParams, CliError> {
        let d = defaults.cloned().unwrap_or_default();
        let mut logit_bias = Vec::new();
        for b in &self.logit_bias {
            let parsed = b.split_once(['=', ':']).and_then(|(id, v)| {
                let v = v.trim();
                let bias = if v.eq_ignore_ascii_case("-inf") {
                    Some(f32::NEG_INFINITY)
                } else {
                    v.parse::<f32>().ok()
                };
                Some((id.trim().parse::<u32>().ok()?, bias?))
            });
            match parsed {
                Some(p) => logit_bias.push(p),
                None => {
                    return Err(CliError::Usage(format!(
                        "invalid --logit-bias {b:?}: expected ID=BIAS, e.g. 13=-2.5 or 2=-inf"
                    )))
                }
            }
        }
        let order = match &self.samplers {
            Some(s) => Stage::parse_order(s)?,
            None => DEFAULT_ORDER.to_vec(),
        };
        let p = SamplingParams {
            temperature: self.temperature.or(d.temperature).unwrap_or(0.8),
            top_k: self.top_k.or(d.top_k).unwrap_or(40),
            top_p: self.top_p.or(d.top_p).unwrap_or(0.95),
            min_p: self.min_p,
            typical_p: self.typical_p,
            repetition_penalty: self.repeat_penalty.or(d.repetition_penalty).unwrap_or(1.0),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.repeat_last_n,
            logit_bias,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            order,
            seed,
        };
        p.validate()?;
        Ok(p)
    }
}

#[derive(clap::Args)]
struct TokenizeArgs {
    /// Model file (GGUF) or a tokenizer.json.
    #[arg(short, long)]
    model: PathBuf,
    /// Text to tokenize.
    #[arg(short, long)]
    text: String,
    /// Print only the list of ids.
    #[arg(long)]
    ids_only: bool,
    /// Do not add BOS/EOS.
    #[arg(long)]
    no_bos: bool,
    /// Treat control-token text as plain text.
    #[arg(long)]
    no_parse_special: bool,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// Model file (GGUF).
    path: PathBuf,
    /// Print every element of array values (default: the first few).
    #[arg(long)]
    full: bool,
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Engine(#[from] tuili_engine::EngineError),
    #[error(transparent)]
    Gguf(#[from] tuili_formats::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] tuili_tokenizer::TokenizerError),
    #[error(transparent)]
    Sample(#[from] tuili_sample::SampleError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
}

/// `--no-mmap` → read the model into memory; otherwise map it.
pub(crate) fn load_how(no_mmap: bool) -> tuili_formats::Load {
    if no_mmap {
        tuili_formats::Load::Memory
    } else {
        tuili_formats::Load::Map
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(*a),
        Cmd::Chat(a) => chat::chat(*a),
        Cmd::Tokenize(a) => tokenize(a),
        Cmd::Inspect(a) => inspect::inspect(&a.path, a.full),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Synth(a) => bench::synth(a),
        Cmd::Perplexity(a) => perplexity::perplexity(a),
        Cmd::Quantize(a) => quantize::quantize(a),
        Cmd::Serve(a) => serve::serve(*a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                let s_msg = s.to_string();
                if !msg.contains(&s_msg) {
                    msg.push_str(": ");
                    msg.push_str(&s_msg);
                }
                src = s.source();
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

fn run(a: RunArgs) -> Result<(), CliError> {
    let seed = a.sampling.seed.unwrap_or_else(fresh_seed);
    // Refuse nonsense before the model is loaded.
    let sampling = a.sampling.params(seed, None)?;
    let beam = match a.beams {
        Some(num_beams) => Some(BeamParams {
            num_beams,
            length_penalty: a.length_penalty,
            early_stopping: EarlyStopping::parse(&a.early_stopping).ok_or_else(|| {
                CliError::Usage(format!(
                    "invalid --early-stopping {:?}: expected true, false or never",
                    a.early_stopping
                ))
            })?,
        }),
        None => None,
    };
    let mut req = GenerateRequest {
        parse_special: !a.no_parse_special,
        ignore_eos: a.ignore_eos,
        stop: a.stop.clone(),
        n: a.n_completions,
        logprobs: a.logprobs,
        beam,
        explain: a.explain.filter(|_| a.beams.is_none()),
        ..GenerateRequest::new(a.prompt.clone(), a.max_tokens, sampling)
    };
    req.validate()?;
    let threads = a
        .threads
        .unwrap_or_else(tuili_core::parallel::physical_cores);
    let cfg = EngineConfig {
        n_ctx: a.ctx_size,
        n_batch: a.batch_size,
        threads,
    };
    let t_load = std::time::Instant::now();
    let engine = Engine::load_with(&a.model, cfg, crate::load_how(a.no_mmap))?;
    let c = engine.model().config();
    eprintln!(
        "tuili: {} ({}, {} layers, {} dims, vocab {}), context {}, {} threads, seed {seed}, loaded in {:.0} ms",
        a.model.display(),
        c.arch.name,
        c.n_layer,
        c.n_embd,
        c.n_vocab,
        engine.n_ctx(),
        threads,
        t_load.elapsed().as_secs_f64() * 1e3
    );
    // What the user left unset comes from the model's generation_config, if it has one.
    req.sampling = a.sampling.params(seed, Some(engine.defaults()))?;
    let prompt = engine.prepare(&req)?;
    let tok = engine.tokenizer();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let plain = req.beam.is_none() && req.explain.is_none();
    let mut write_err = None;
    let mut current = usize::MAX;
    let mut step = 0usize;
    let stats = engine.generate_from(prompt, &req, &mut |ev| {
        let r = (|| -> std::io::Result<()> {
            if plain {
                if ev.index != current {
                    current = ev.index;
                    if req.n > 1 {
                        writeln!(
                            out,
                            "{}--- completion {} ---",
                            if ev.index > 0 { "\n" } else { "" },
                            ev.index
                        )?;
                    }
                    if !a.no_echo {
                        out.write_all(a.prompt.as_bytes())?;
                    }
                }
                out.write_all(ev.text.as_bytes())?;
                return out.flush();
            }
            if let (Some(ex), Some(t)) = (ev.explain, ev.token) {
                if ev.index != current {
                    current = ev.index;
                    step = 0;
                    if req.n > 1 {
                        writeln!(out, "=== completion {} ===", ev.index)?;
                    }
                }
                step += 1;
                writeln!(out, "step {step}: picked {} (id {t})", show(tok, t))?;
                let w = ex.stages.iter().map(|s| s.name.len()).max().unwrap_or(0);
                for st in &ex.stages {
                    let top: Vec<String> = st
                        .top
                        .iter()
                        .map(|&(id, p)| {
                            let mark = if id == t { "*" } else { "" };
                            format!("{mark}{} {:.4}", show(tok, id), p)
                        })
                        .collect();
                    writeln!(
                        out,
                        "  {:<w$} {:>6} left | {}",
                        st.name,
                        st.n_candidates,
                        top.join("  ")
                    )?;
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if plain {
        writeln!(out)?;
    }
    for c in &stats.completions {
        if req.beam.is_some() {
            writeln!(
                out,
                "beam {} | score {:.4} | {} tokens | {}\n{}{}\n",
                c.index,
                c.beam_score.unwrap_or(f64::NAN),
                c.tokens.len(),
                c.stop,
                if a.no_echo { "" } else { a.prompt.as_str() },
                c.text
            )?;
        } else if req.explain.is_some() {
            writeln!(
                out,
                "--- completion {} ({}) ---\n{}{}",
                c.index,
                c.stop,
                if a.no_echo { "" } else { a.prompt.as_str() },
                c.text
            )?;
        }
        if req.logprobs.is_some() {
            writeln!(out, "--- logprobs of completion {} ---", c.index)?;
            for lp in &c.logprobs {
                let alts: Vec<String> = lp
                    .top
                    .iter()
                    .map(|t| format!("{} {:.4}", show(tok, t.token), t.logprob))
                    .collect();
                writeln!(
                    out,
                    "{:>24} {:>9.4} | {}",
                    show(tok, lp.chosen.token),
                    lp.chosen.logprob,
                    alts.join("  ")
                )?;
            }
        }
    }
    let stops: Vec<String> = stats
        .completions
        .iter()
        .map(|c| c.stop.to_string())
        .collect();
    eprintln!(
        "prompt: {} tokens in {:.1} ms ({:.1} tokens/s) | generation: {} tokens, {} decode steps in {:.1} ms ({:.1} tokens/s) | stop: {}",
        stats.prompt_tokens.len(),
        stats.prompt_time.as_secs_f64() * 1e3,
        stats.prompt_tps(),
        stats.completions.iter().map(|c| c.tokens.len()).sum::<usize>(),
        stats.decode_steps,
        stats.gen_time.as_secs_f64() * 1e3,
        stats.gen_tps(),
        stops.join(", ")
    );
    Ok(())
}

/// A token as readable text: its decoded string quoted (escapes visible), or its stored piece
/// when it is part of a multi-byte character.
fn show(tok: &Tokenizer, id: u32) -> String {
    match tok.decode(&[id], false) {
        Ok(t) if !t.contains('\u{FFFD}') => format!("{t:?}"),
        _ => tok
            .piece(id)
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|_| format!("<{id}>")),
    }
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer, CliError> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        return Ok(Tokenizer::from_tokenizer_json(path)?);
    }
    if path.is_dir() {
        return Ok(Tokenizer::from_tokenizer_json(path.join("tokenizer.json"))?);
    }
    let file = GgufFile::open(path)?;
    Ok(Tokenizer::from_gguf(&file)?)
}

fn tokenize(a: TokenizeArgs) -> Result<(), CliError> {
    let tok = load_tokenizer(&a.model)?;
    let ids = tok.encode(&a.text, !a.no_bos, !a.no_parse_special)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.ids_only {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        writeln!(out, "[{}]", list.join(", "))?;
    } else {
        for &id in &ids {
            // The piece as its own text (byte tokens shown as stored, e.g. <0x0A>).
            let text = tok.decode(&[id], false)?;
            let shown = if text.contains('\u{FFFD}') {
                tok.piece(id)?.to_string()
            } else {
                text
            };
            writeln!(out, "{id:>6} -> '{shown}'")?;
        }
    }
    Ok(())
}
