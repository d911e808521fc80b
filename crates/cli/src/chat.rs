//! `tuili chat`: a multi-turn conversation in the terminal. The model's chat template renders
//! the whole conversation each turn; the session's KV cache keeps what it already holds, so only
//! the new tokens are processed. `/reset` starts over, `/exit` (or end of input) quits.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use tuili_engine::{Engine, EngineConfig, GenerateRequest};
use tuili_tokenizer::chat::{ChatTemplate, Message};

use crate::{CliError, SamplingArgs};

/// ChatML, for models without a template of their own (`--chat-template chatml`).
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[derive(clap::Args)]
pub struct ChatArgs {
    /// Model: a GGUF file or a Hugging Face folder.
    #[arg(short, long)]
    model: PathBuf,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    /// A Jinja template file to use instead of the model's, or `chatml`.
    #[arg(long)]
    chat_template: Option<String>,
    /// Maximum tokens per reply.
    #[arg(short = 'n', long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
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
}

/// The chat template: `chatml`, a Jinja file, or the model's own (`None` when it has none).
pub(crate) fn load_template(
    tok: &tuili_tokenizer::Tokenizer,
    arg: Option<&str>,
) -> Result<Option<ChatTemplate>, CliError> {
    Ok(Some(match arg {
        Some("chatml") => ChatTemplate::new(CHATML, "", "<|im_end|>")?,
        Some(path) => {
            let src = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("cannot read --chat-template {path}: {e}")))?;
            let text = |id: Option<u32>| {
                id.and_then(|i| tok.piece(i).ok())
                    .map(String::from)
                    .unwrap_or_default()
            };
            ChatTemplate::new(&src, &text(tok.bos()), &text(tok.eos()))?
        }
        None => match tok.chat_template() {
            Some(t) => t?,
            None => return Ok(None),
        },
    }))
}

pub fn chat(a: ChatArgs) -> Result<(), CliError> {
    let seed = a.sampling.seed.unwrap_or_else(crate::fresh_seed);
    a.sampling.params(seed, None)?;
    let threads = a
        .threads
        .unwrap_or_else(tuili_core::parallel::physical_cores);
    let engine = Engine::load_with(
        &a.model,
        EngineConfig {
            n_ctx: a.ctx_size,
            n_batch: 512,
            threads,
        },
        crate::load_how(a.no_mmap),
    )?;
    let sampling = a.sampling.params(seed, Some(engine.defaults()))?;
    let tok = engine.tokenizer();
    let template = load_template(tok, a.chat_template.as_deref())?.ok_or_else(|| {
        CliError::Usage(format!(
            "{} has no chat template; pass --chat-template FILE or --chat-template chatml",
            a.model.display()
        ))
    })?;
    let bos_text = tok
        .bos()
        .and_then(|b| tok.piece(b).ok())
        .unwrap_or("")
        .to_string();
    eprintln!(
        "tuili chat: {} ({} context, {} threads, seed {seed}). /reset starts over, /exit quits.",
        a.model.display(),
        engine.n_ctx(),
        threads
    );
    let mut session = engine.new_session()?;
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let stdout = std::io::stdout();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
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
        let text = template.render(&messages, true)?;
        let add_bos = bos_text.is_empty() || !text.starts_with(&bos_text);
        let prompt = tok.encode(&text, add_bos, true)?;
        let req = GenerateRequest::new(String::new(), a.max_tokens, sampling.clone());
        let mut out = stdout.lock();
        let mut write_err = None;
        let turn = engine.generate_in_session(&mut session, prompt, &req, &mut |ev| match out
            .write_all(ev.text.as_bytes())
            .and_then(|_| out.flush())
        {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_err = Some(e);
                ControlFlow::Break(())
            }
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
