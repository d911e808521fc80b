//! `tuili`: the command line. Parses arguments, calls the engine, prints. Errors are one line
//! on stderr and a non-zero exit code.

mod args;
mod bench;
mod chat;
mod error;
mod inspect;
mod perplexity;
mod prune;
mod quantize;
mod run;
mod serve;
mod tokenize;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use error::CliError;

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
    Run(Box<run::RunArgs>),
    /// Chat with a model in the terminal (multi-turn; the conversation stays in the KV cache).
    Chat(Box<chat::ChatArgs>),
    /// Print the token ids (and pieces) of a text, as llama.cpp's llama-tokenize does.
    Tokenize(tokenize::TokenizeArgs),
    /// Print a GGUF file's metadata and tensors.
    Inspect(InspectArgs),
    /// Measure prompt processing and generation speed (as llama-bench does).
    Bench(bench::BenchArgs),
    /// Quantize a GGUF model or a Hugging Face folder into a GGUF (llama.cpp's types and recipes).
    Quantize(quantize::QuantizeArgs),
    /// Prune a model's attention and MLP projections (magnitude, Wanda or SparseGPT; a
    /// sparsity or an N:M pattern) into a GGUF.
    Prune(prune::PruneArgs),
    /// Perplexity of a model on a text file (as llama-perplexity computes it), and KL
    /// divergence against a base model.
    Perplexity(perplexity::PerplexityArgs),
    /// Serve the model over HTTP with OpenAI's API (continuous batching, paged KV cache).
    Serve(Box<serve::ServeArgs>),
    /// Write a random-weight Llama model of a real shape (for benchmarks).
    Synth(bench::SynthArgs),
}

#[derive(clap::Args)]
struct InspectArgs {
    /// Model file (GGUF only; a Hugging Face folder's config.json says the rest).
    path: PathBuf,
    /// Print every element of array values (default: the first few).
    #[arg(long)]
    full: bool,
    /// Also count each tensor's zero weights (reads every tensor: a pruned model's sparsity).
    #[arg(long)]
    sparsity: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run::run(*a),
        Cmd::Chat(a) => chat::chat(*a),
        Cmd::Tokenize(a) => tokenize::tokenize(a),
        Cmd::Inspect(a) => inspect::inspect(&a.path, a.full, a.sparsity),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Synth(a) => bench::synth(a),
        Cmd::Perplexity(a) => perplexity::perplexity(a),
        Cmd::Quantize(a) => quantize::quantize(a),
        Cmd::Prune(a) => prune::prune(a),
        Cmd::Serve(a) => serve::serve(*a),
    };
    match r {
        Ok(()) => {
            args::leave_group();
            ExitCode::SUCCESS
        }
        // The reader went away: done (the other ranks of a group are ended with this one).
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            args::end_group();
            ExitCode::SUCCESS
        }
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
            args::report_error(&msg);
            ExitCode::FAILURE
        }
    }
}
