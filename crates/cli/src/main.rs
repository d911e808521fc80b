//! `tuili`: the command line. Parses arguments, calls the engine, prints. Errors are one line
//! on stderr and a non-zero exit code.

mod bench;
mod inspect;

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tuili_engine::{Engine, EngineConfig, GenerateRequest};
use tuili_formats::GgufFile;
use tuili_sample::SamplingParams;
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
    Run(RunArgs),
    /// Print the token ids (and pieces) of a text, as llama.cpp's llama-tokenize does.
    Tokenize(TokenizeArgs),
    /// Print a GGUF file's metadata and tensors.
    Inspect(InspectArgs),
    /// Measure prompt processing and generation speed (as llama-bench does).
    Bench(bench::BenchArgs),
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
    /// Maximum number of tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to probability P (1 = off).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    min_p: f32,
    /// Random seed (default: a fresh one, printed on stderr).
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (default: physical cores).
    #[arg(short, long)]
    threads: Option<usize>,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Tokenize(a) => tokenize(a),
        Cmd::Inspect(a) => inspect::inspect(&a.path, a.full),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Synth(a) => bench::synth(a),
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

fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

fn run(a: RunArgs) -> Result<(), CliError> {
    let seed = a.seed.unwrap_or_else(fresh_seed);
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        seed,
    };
    // Refuse nonsense before the model is loaded.
    sampling.validate()?;
    let threads = a
        .threads
        .unwrap_or_else(tuili_core::parallel::physical_cores);
    let cfg = EngineConfig {
        n_ctx: a.ctx_size,
        n_batch: a.batch_size,
        threads,
    };
    let t_load = std::time::Instant::now();
    let engine = Engine::load(&a.model, cfg)?;
    let c = engine.model().config();
    eprintln!(
        "tuili: {} ({}, {} layers, {} dims, vocab {}), context {}, {} threads, seed {seed}, loaded in {:.0} ms",
        a.model.display(),
        c.arch.name(),
        c.n_layer,
        c.n_embd,
        c.n_vocab,
        engine.n_ctx(),
        threads,
        t_load.elapsed().as_secs_f64() * 1e3
    );
    let req = GenerateRequest {
        prompt: a.prompt.clone(),
        max_tokens: a.max_tokens,
        sampling,
        parse_special: !a.no_parse_special,
        ignore_eos: a.ignore_eos,
    };
    let prompt = engine.prepare(&req)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !a.no_echo {
        out.write_all(a.prompt.as_bytes())?;
        out.flush()?;
    }
    let mut write_err = None;
    let stats = engine.generate_from(prompt, &req, &mut |text| match out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
    {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => {
            write_err = Some(e);
            ControlFlow::Break(())
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    writeln!(out)?;
    eprintln!(
        "prompt: {} tokens in {:.1} ms ({:.1} tokens/s) | generation: {} tokens, {} decode steps in {:.1} ms ({:.1} tokens/s) | stop: {}",
        stats.prompt_tokens.len(),
        stats.prompt_time.as_secs_f64() * 1e3,
        stats.prompt_tps(),
        stats.tokens.len(),
        stats.decode_steps,
        stats.gen_time.as_secs_f64() * 1e3,
        stats.gen_tps(),
        stats.stop
    );
    Ok(())
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
