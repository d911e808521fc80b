//! `tuili run`: one prompt, its completions (sampled or by beam search) streamed to stdout,
//! with the decoding trace (`--explain`) and log-probabilities on request.

use std::io::Write;
use std::ops::ControlFlow;

use tuili_engine::{BeamParams, EarlyStopping, GenerateRequest};
use tuili_tokenizer::Tokenizer;

use crate::args::{CtxArgs, ModelArgs, SamplingArgs};
use crate::error::CliError;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    ctx: CtxArgs,
    /// Prompt text.
    #[arg(short, long)]
    prompt: String,
    /// Maximum number of tokens to generate (per completion).
    #[arg(short = 'n', long, default_value_t = 128, value_parser = crate::args::count, allow_negative_numbers = true)]
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
        default_value_t = 1,
        value_parser = crate::args::count,
        allow_negative_numbers = true
    )]
    n_completions: usize,
    /// Print each token's log-probability and the K most likely alternatives.
    #[arg(long, value_name = "K", value_parser = crate::args::count, allow_negative_numbers = true)]
    logprobs: Option<usize>,
    /// Print, for each step, the top candidates before and after each processor, and the pick.
    #[arg(long, value_name = "K", num_args = 0..=1, default_missing_value = "5", value_parser = crate::args::count, allow_negative_numbers = true)]
    explain: Option<usize>,
    /// Beam search with this many beams (prints the beams with their scores).
    #[arg(long, value_name = "N", value_parser = crate::args::count, allow_negative_numbers = true)]
    beams: Option<usize>,
    /// Beam search: exponent of the length dividing a beam's log-probability.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    length_penalty: f32,
    /// Beam search: true, false or never (Hugging Face semantics).
    #[arg(long, default_value = "false")]
    early_stopping: String,
    /// Prompt tokens per forward pass.
    #[arg(short = 'b', long, default_value_t = 512, value_parser = crate::args::count, allow_negative_numbers = true)]
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

pub(crate) fn run(a: RunArgs) -> Result<(), CliError> {
    // Refuse nonsense before the model is loaded.
    let sampling = a.sampling.params(a.sampling.seed.unwrap_or(0), None)?;
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
    let t_load = std::time::Instant::now();
    let engine = a.model.load(a.ctx.ctx_size, a.batch_size)?;
    let seed = engine.agree_seed(a.sampling.seed)?;
    let c = engine.model().config();
    eprintln!(
        "tuili: {} ({}, {} layers, {} dims, vocab {}), context {}, {} threads, seed {seed}, loaded in {:.0} ms",
        a.model.model.display(),
        c.arch.name,
        c.n_layer,
        c.n_embd,
        c.n_vocab,
        engine.n_ctx(),
        a.model.threads(),
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
