//! `tuili perplexity`: llama-perplexity's measurement, with a progress bar, optional saving of
//! the log-probabilities and KL divergence against a saved base.

use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use tuili_engine::{KlBase, PerplexityParams};

use crate::args::ModelArgs;
use crate::error::CliError;

#[derive(clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to score.
    #[arg(short, long)]
    file: PathBuf,
    /// Window size in tokens (the second half of each window is scored).
    #[arg(short = 'c', long, default_value_t = 512)]
    ctx: usize,
    /// Score at most N windows (default: all that fit).
    #[arg(long)]
    chunks: Option<usize>,
    /// Tokens per forward pass.
    #[arg(short = 'b', long, default_value_t = 512)]
    batch_size: usize,
    /// Save the log-probabilities of every scored token to F (a base for --kl-base).
    #[arg(long, value_name = "F")]
    save_logits: Option<PathBuf>,
    /// Report KL divergence and top-1 agreement against a base saved with --save-logits.
    #[arg(long, value_name = "F")]
    kl_base: Option<PathBuf>,
    /// Run through the paged KV cache of this type (f16, q8_0 or f32), as `tuili serve` does,
    /// instead of the contiguous F32 cache: the perplexity cost of a cache type.
    #[arg(long)]
    kv_type: Option<String>,
}

pub fn perplexity(a: PerplexityArgs) -> Result<(), CliError> {
    let text = std::fs::read(&a.file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", a.file.display())))?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let engine = a.model.load(a.ctx, a.batch_size)?;
    eprintln!(
        "tuili perplexity: {} on {} (ctx {}, {} threads)",
        a.model.model.display(),
        a.file.display(),
        a.ctx,
        a.model.threads()
    );
    let mut save = match &a.save_logits {
        Some(p) => Some(BufWriter::new(std::fs::File::create(p).map_err(|e| {
            CliError::Usage(format!("cannot create {}: {e}", p.display()))
        })?)),
        None => None,
    };
    let mut base_reader = match &a.kl_base {
        Some(p) => Some(BufReader::new(std::fs::File::open(p).map_err(|e| {
            CliError::Usage(format!("cannot open {}: {e}", p.display()))
        })?)),
        None => None,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} windows, {elapsed} elapsed, ETA {eta} | {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut running = String::new();
    let kv_type = match a.kv_type.as_deref() {
        None => None,
        Some(t) => Some(
            tuili_engine::KvType::parse(t)
                .ok_or_else(|| CliError::Usage(format!("--kv-type {t:?}: f16, q8_0 or f32")))?,
        ),
    };
    let params = PerplexityParams {
        n_ctx: a.ctx,
        n_chunks: a.chunks,
        kv_type,
    };
    let result = engine.perplexity(
        &text,
        &params,
        save.as_mut().map(|w| w as &mut dyn Write),
        base_reader.as_mut().map(|r| KlBase { reader: r }),
        &mut |p| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            let mut msg = format!("PPL {:.4}", p.ppl);
            if let Some(k) = p.kld {
                msg.push_str(&format!(", KLD {k:.6}"));
            }
            bar.set_message(msg);
            running.push_str(&format!("[{}]{:.4},", p.done, p.ppl));
        },
    );
    bar.finish_and_clear();
    let r = result?;
    if let Some(w) = save.as_mut() {
        w.flush()?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "{running}")?;
    writeln!(
        out,
        "{} tokens, {} windows of {}, {} tokens scored",
        r.n_tokens, r.n_chunks, a.ctx, r.count
    )?;
    if let Some(k) = &r.kl {
        writeln!(out, "Mean PPL(Q)    : {:.6}", r.ppl)?;
        writeln!(out, "Mean PPL(base) : {:.6}", k.ppl_base)?;
        writeln!(out, "PPL ratio      : {:.6}", r.ppl / k.ppl_base)?;
        writeln!(
            out,
            "Mean KLD       : {:.6} ± {:.6}",
            k.mean_kld, k.kld_stderr
        )?;
        writeln!(out, "99.0% KLD      : {:.6}", k.kld_p99)?;
        writeln!(out, "Same top p     : {:.3} %", 100.0 * k.same_top)?;
    }
    writeln!(
        out,
        "Final estimate: PPL = {:.4} +/- {:.5}",
        r.ppl, r.ppl_stderr
    )?;
    Ok(())
}
