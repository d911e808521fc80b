//! `tuili tokenize`: a text's token ids and pieces, as llama.cpp's llama-tokenize prints
//! them.

use std::io::Write;
use std::path::{Path, PathBuf};

use tuili_formats::GgufFile;
use tuili_tokenizer::Tokenizer;

use crate::error::CliError;

#[derive(clap::Args)]
pub(crate) struct TokenizeArgs {
    /// Model file (GGUF) or a tokenizer.json.
    #[arg(short, long)]
    model: PathBuf,
    /// Text to tokenize (llama-tokenize's -p; `--text` is the same).
    #[arg(short = 'p', long = "prompt", visible_alias = "text")]
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

pub(crate) fn tokenize(a: TokenizeArgs) -> Result<(), CliError> {
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
