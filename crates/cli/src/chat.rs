//! `tuili chat`: a multi-turn conversation in the terminal. The model's chat template renders
//! the whole conversation each turn; the session's KV cache keeps what it already holds, so only
//! the new tokens are processed. `/reset` starts over, `/exit` (or end of input) quits.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use tuili_engine::{GenerateRequest, Prompt};
use tuili_tokenizer::chat::Message;

use crate::args::{CtxArgs, ModelArgs, SamplingArgs};
use crate::error::CliError;

#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    ctx: CtxArgs,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    /// A Jinja template file to use instead of the model's, or `chatml`.
    #[arg(long)]
    chat_template: Option<String>,
    /// Maximum tokens per reply.
    #[arg(short = 'n', long, default_value_t = 512, value_parser = crate::args::count, allow_negative_numbers = true)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn chat(a: ChatArgs) -> Result<(), CliError> {
    a.sampling.params(a.sampling.seed.unwrap_or(0), None)?;
    let mut engine = a.model.load(a.ctx.ctx_size, 512)?;
    let seed = engine.agree_seed(a.sampling.seed)?;
    if let Some(spec) = &a.chat_template {
        engine.set_chat_template(spec)?;
    }
    // A conversation needs a template: refuse before the first turn, not after it.
    engine.chat_template()?;
    let sampling = a.sampling.params(seed, Some(engine.defaults()))?;
    eprintln!(
        "tuili chat: {} ({} context, {} threads, seed {seed}). /reset starts over, /exit quits.",
        a.model.model.display(),
        engine.n_ctx(),
        a.model.threads()
    );
    let mut session = engine.new_session()?;
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let stdout = std::io::stdout();
    loop {
        eprint!("> ");
        let Some(line) = next_line(engine.comm(), &mut lines)? else {
            break;
        };
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                session.reset();
                messages.retain(|m| m.role == "system");
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", input));
        let req = GenerateRequest::new(
            Prompt::Chat(messages.clone()),
            a.max_tokens,
            sampling.clone(),
        );
        let mut out = stdout.lock();
        let mut write_err = None;
        let turn = engine.prepare(&req).and_then(|prompt| {
            engine.generate_in_session(&mut session, prompt, &req, &mut |ev| match out
                .write_all(ev.text.as_bytes())
                .and_then(|_| out.flush())
            {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    write_err = Some(e);
                    ControlFlow::Break(())
                }
            })
        });
        let turn = match turn {
            Ok(t) => t,
            Err(e) => {
                // A turn that does not fit (context full, …) is reported; the chat goes on.
                messages.pop();
                eprintln!("error: {e}");
                continue;
            }
        };
        if let Some(e) = write_err {
            return Err(e.into());
        }
        writeln!(out)?;
        let c = turn.stats.first();
        eprintln!(
            "({} prompt tokens reused from the cache, {} processed; {} tokens at {:.1} tokens/s; {})",
            turn.reused,
            turn.stats.prompt_tokens.len(),
            c.tokens.len(),
            turn.stats.gen_tps(),
            c.stop
        );
        messages.push(Message::new("assistant", c.text.trim()));
    }
    Ok(())
}

/// The next line of the conversation: read from standard input by rank 0 and sent to the
/// others (under `mpirun` only rank 0 has the terminal); `None` at the end of input.
fn next_line(
    comm: &dyn tuili_dist::Comm,
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
) -> Result<Option<String>, CliError> {
    if comm.size() == 1 {
        return Ok(lines.next().transpose()?);
    }
    let mine = if comm.rank() == 0 {
        match lines.next().transpose()? {
            Some(l) => [&[1u8][..], l.as_bytes()].concat(),
            None => vec![0],
        }
    } else {
        Vec::new()
    };
    // The others wait for as long as the user types: not a wait the watchdog times.
    let got = tuili_dist::watch::idle(|| comm.broadcast_vec(0, mine))
        .map_err(tuili_engine::EngineError::from)?;
    Ok(match got.split_first() {
        Some((1, text)) => Some(String::from_utf8_lossy(text).into_owned()),
        _ => None,
    })
}
