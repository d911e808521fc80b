//! The tokenizer ([`Tokenizer`]): built from GGUF metadata (by `gguf_vocab`) or from a
//! `tokenizer.json`, its special-token policy, encoding (text, conversations) and decoding,
//! and the streaming decoder that never splits a UTF-8 character ([`StreamDecoder`]).

use std::path::Path;
use std::sync::OnceLock;

use tokenizers::tokenizer::Tokenizer as HfTokenizer;
use tuili_formats::GgufFile;

use crate::error::TokenizerError;
use crate::gguf_vocab::{self, TokenType, VocabKind, VocabParts};
use crate::{chat, hf_config};

fn engine_err(e: tokenizers::Error) -> TokenizerError {
    TokenizerError::Engine(e.to_string())
}

/// A tokenizer with its special-token policy.
pub struct Tokenizer {
    kind: VocabKind,
    /// Special (control) tokens are not recognised in text: the `parse_special = false` view.
    plain: HfTokenizer,
    /// Built on first use: the same, with control tokens recognised in text.
    with_special: OnceLock<Result<HfTokenizer, String>>,
    special_builder: Option<Box<dyn Fn() -> Result<HfTokenizer, String> + Send + Sync>>,
    /// Token id → piece as stored in the vocabulary.
    pieces: Vec<String>,
    types: Vec<TokenType>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Every id that ends generation (EOS, EOT, end-of-message tokens…).
    eog: Vec<u32>,
    add_bos: bool,
    /// The tokenizer's own post-processor puts BOS first (tokenizer.json templates).
    bos_by_template: bool,
    add_eos: bool,
    /// Whether decoding a whole text drops one leading space (SPM's dummy prefix).
    strip_prefix: bool,
    /// The model's Jinja chat template, if it ships one.
    chat_template: Option<String>,
    /// Bytes of the longest piece, found on first use.
    longest_piece: OnceLock<usize>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("n_vocab", &self.pieces.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer of a GGUF vocabulary's parts.
    fn from_parts(p: VocabParts) -> Tokenizer {
        Tokenizer {
            kind: p.kind,
            plain: p.plain,
            with_special: OnceLock::new(),
            special_builder: Some(p.special_builder),
            pieces: p.pieces,
            types: p.types,
            bos: p.bos,
            eos: p.eos,
            eog: p.eog,
            add_bos: p.add_bos,
            bos_by_template: false,
            add_eos: p.add_eos,
            strip_prefix: p.strip_prefix,
            chat_template: None,
            longest_piece: OnceLock::new(),
        }
    }

    /// Builds the tokenizer that a GGUF file's `tokenizer.ggml.*` metadata describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let mut t = Tokenizer::from_parts(gguf_vocab::build(file)?);
        t.chat_template = file
            .get_str("tokenizer.chat_template")
            .ok()
            .flatten()
            .map(String::from);
        Ok(t)
    }

    /// The model's chat template, compiled (with its BOS and EOS texts), if it has one.
    pub fn chat_template(&self) -> Option<Result<chat::ChatTemplate, TokenizerError>> {
        let src = self.chat_template.as_deref()?;
        let text = |id: Option<u32>| {
            id.and_then(|i| self.pieces.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        Some(chat::ChatTemplate::new(
            src,
            &text(self.bos),
            &text(self.eos),
        ))
    }

    /// The ids of a conversation, its reply to come: `messages` rendered with `template`
    /// (the assistant's turn opened), control-token text recognised, and BOS added as the
    /// model's metadata says — unless the rendered text starts with the BOS token's text
    /// already (templates that write `bos_token` themselves), so it is never there twice.
    pub fn encode_chat(
        &self,
        template: &chat::ChatTemplate,
        messages: &[chat::Message],
    ) -> Result<Vec<u32>, TokenizerError> {
        let (text, add_bos) = self.render_chat(template, messages)?;
        self.encode(&text, add_bos, true)
    }

    /// The text [`Tokenizer::encode_chat`] tokenizes (control-token text recognised), and
    /// whether BOS goes before it.
    pub fn render_chat(
        &self,
        template: &chat::ChatTemplate,
        messages: &[chat::Message],
    ) -> Result<(String, bool), TokenizerError> {
        let text = template.render(messages, true)?;
        let bos = self.bos.and_then(|b| self.pieces.get(b as usize));
        let add_bos = bos.is_none_or(|b| b.is_empty() || !text.starts_with(b.as_str()));
        Ok((text, add_bos))
    }

    /// The most bytes of text that `n_tokens` tokens can stand for, so that a longer text is
    /// refused before it is tokenized in full. A token stands for at most its piece's bytes as
    /// stored (never fewer than its text: SentencePiece's `▁` and byte-level BPE's `Ġ` are
    /// longer than the space they stand for, `<0x0A>` than its byte); times four, the most a
    /// normalizer that composes characters (NFC, NFKC: a 4-byte letter to 1 byte) can shrink
    /// a text by.
    pub fn max_text_bytes(&self, n_tokens: usize) -> usize {
        let longest = *self.longest_piece.get_or_init(|| {
            self.pieces
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(0)
                .max(1)
        });
        n_tokens.saturating_mul(longest).saturating_mul(4)
    }

    /// Replaces the chat template (e.g. one given on the command line).
    pub fn set_chat_template(&mut self, source: Option<String>) {
        self.chat_template = source;
    }

    /// Loads a Hugging Face `tokenizer.json` (with `tokenizer_config.json` beside it, when
    /// present, for the BOS/EOS policy).
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let json_err = |reason: String| TokenizerError::Json {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| json_err(e.to_string()))?;
        let mut hf =
            HfTokenizer::from_bytes(text.as_bytes()).map_err(|e| json_err(e.to_string()))?;
        // Saved truncation/padding settings (a GPT-2 file here says max_length 50) would cut
        // prompts silently; an inference engine never wants them.
        let _ = hf.with_truncation(None);
        hf.with_padding(None);
        let n = hf.get_vocab_size(true);
        let mut pieces = vec![String::new(); n];
        for (piece, id) in hf.get_vocab(true) {
            if let Some(slot) = pieces.get_mut(id as usize) {
                *slot = piece;
            }
        }
        let mut types = vec![TokenType::Normal; n];
        for (id, tok) in hf.get_added_tokens_decoder() {
            if let Some(t) = types.get_mut(id as usize) {
                *t = if tok.special {
                    TokenType::Control
                } else {
                    TokenType::UserDefined
                };
            }
        }
        for (i, p) in pieces.iter().enumerate() {
            if p.len() == 6 && p.starts_with("<0x") && p.ends_with('>') {
                types[i] = TokenType::Byte;
            }
        }
        let cfg = hf_config::TokenizerConfig::read(&path.with_file_name("tokenizer_config.json"));
        let tok_of = |t: &Option<String>| t.as_deref().and_then(|s| hf.token_to_id(s));
        let chat_template = cfg.chat_template.clone();
        let bos = tok_of(&cfg.bos_token);
        let eos = tok_of(&cfg.eos_token);
        // A post-processor (TemplateProcessing) adds BOS itself when asked for special
        // tokens; otherwise follow tokenizer_config's add_bos_token (default: add when known).
        let add_bos =
            cfg.add_bos_token.unwrap_or(bos.is_some()) && hf.get_post_processor().is_none();
        let add_eos = cfg.add_eos_token.unwrap_or(false) && hf.get_post_processor().is_none();
        let bos_by_template = bos.is_some()
            && hf.get_post_processor().is_some()
            && hf
                .encode("a", true)
                .ok()
                .and_then(|e| e.get_ids().first().copied())
                == bos;
        let mut eog: Vec<u32> = eos.into_iter().collect();
        for name in [
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<|endoftext|>",
            "<end_of_turn>",
        ] {
            if let Some(id) = hf.token_to_id(name) {
                if !eog.contains(&id) {
                    eog.push(id);
                }
            }
        }
        Ok(Tokenizer {
            kind: VocabKind::HfJson,
            plain: hf,
            with_special: OnceLock::new(),
            special_builder: None,
            pieces,
            types,
            bos,
            eos,
            eog,
            add_bos,
            bos_by_template,
            add_eos,
            strip_prefix: false,
            chat_template,
            longest_piece: OnceLock::new(),
        })
    }

    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    pub fn n_vocab(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(.., add_special = true)` puts BOS first.
    pub fn adds_bos(&self) -> bool {
        (self.add_bos || self.bos_by_template) && self.bos.is_some()
    }

    /// Whether a token ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Adds an end-of-generation id (e.g. from a model's generation_config.json).
    pub fn add_eog(&mut self, id: u32) {
        if (id as usize) < self.pieces.len() && !self.eog.contains(&id) {
            self.eog.push(id);
        }
    }

    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The vocabulary entry of a token, as stored (e.g. `▁Hello`, `<0x0A>`, `Ġworld`).
    pub fn piece(&self, id: u32) -> Result<&str, TokenizerError> {
        self.pieces
            .get(id as usize)
            .map(|s| s.as_str())
            .ok_or(TokenizerError::BadId {
                id,
                n_vocab: self.pieces.len(),
            })
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    fn engine(&self, parse_special: bool) -> Result<&HfTokenizer, TokenizerError> {
        if !parse_special {
            return Ok(&self.plain);
        }
        match &self.special_builder {
            None => Ok(&self.plain),
            Some(build) => self
                .with_special
                .get_or_init(build)
                .as_ref()
                .map_err(|e| TokenizerError::Engine(e.clone())),
        }
    }

    /// Text → ids. `add_special` adds BOS/EOS as the model's metadata says; `parse_special`
    /// lets control-token text such as `<s>` or `<|im_start|>` in `text` become those tokens
    /// (as llama.cpp's `parse_special`).
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let engine = self.engine(parse_special)?;
        let add_hf_special = add_special && self.kind == VocabKind::HfJson;
        let enc = engine
            .encode_fast(text, add_hf_special)
            .map_err(engine_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && self.add_eos {
            if let Some(e) = self.eos {
                ids.push(e);
            }
        }
        Ok(ids)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), TokenizerError> {
        match ids.iter().find(|&&id| id as usize >= self.pieces.len()) {
            Some(&id) => Err(TokenizerError::BadId {
                id,
                n_vocab: self.pieces.len(),
            }),
            None => Ok(()),
        }
    }

    /// Ids → text. Byte tokens are reassembled into UTF-8 (invalid sequences become U+FFFD).
    /// With `skip_special`, control tokens (BOS, EOS, chat markers) produce no text.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.check_ids(ids)?;
        if self.kind == VocabKind::HfJson {
            return self.plain.decode(ids, skip_special).map_err(engine_err);
        }
        // GGUF vocabularies: user-defined tokens are literal text (llama.cpp never runs them
        // through the byte-level or ▁ decoding), control tokens are markers; only runs of
        // ordinary tokens go through the model's decoder.
        let decoder = self.plain.get_decoder();
        let mut out = String::new();
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, out: &mut String| -> Result<(), TokenizerError> {
            if run.is_empty() {
                return Ok(());
            }
            let pieces = std::mem::take(run);
            match decoder {
                Some(d) => {
                    out.push_str(&tokenizers::Decoder::decode(d, pieces).map_err(engine_err)?)
                }
                None => out.push_str(&pieces.concat()),
            }
            Ok(())
        };
        for &id in ids {
            let piece = &self.pieces[id as usize];
            match self.types[id as usize] {
                TokenType::Control | TokenType::Unknown | TokenType::Unused if skip_special => {}
                TokenType::Control | TokenType::UserDefined => {
                    flush(&mut run, &mut out)?;
                    out.push_str(piece);
                }
                _ => run.push(piece.clone()),
            }
        }
        flush(&mut run, &mut out)?;
        Ok(out)
    }

    /// SPM vocabularies prepend a space to the text (the "dummy prefix"); a decode of a whole
    /// text removes it again, as llama.cpp's detokenizer does.
    pub fn decode_text(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let s = self.decode(ids, true)?;
        if self.kind == VocabKind::Spm && self.strip_prefix {
            if let Some(rest) = s.strip_prefix(' ') {
                return Ok(rest.to_string());
            }
        }
        Ok(s)
    }

    /// A streaming decoder: feed ids one at a time, get text as soon as it is whole UTF-8.
    /// `context` ids (e.g. the prompt) are decoded first but not returned, so that the text of
    /// the first new token is what it is in context (a leading space kept, say).
    pub fn stream(&self, context: &[u32]) -> Result<StreamDecoder<'_>, TokenizerError> {
        self.check_ids(context)?;
        let mut s = StreamDecoder {
            tok: self,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
            at_text_start: false,
        };
        // Keep a few ids of context only: enough for the decoder to see word boundaries.
        let start = context.len().saturating_sub(4);
        s.ids.extend_from_slice(&context[start..]);
        s.prefix = self.decode(&s.ids, true)?;
        s.at_text_start = s.prefix.is_empty() && self.kind == VocabKind::Spm && self.strip_prefix;
        Ok(s)
    }
}

/// Streaming detokenizer. Decodes a window of recent ids and returns only the text that is new
/// and complete: if the newest token ends in the middle of a UTF-8 character (byte-fallback or
/// byte-level tokens), nothing is returned until the character is whole.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Decoded text of `ids[prefix_index..]` already returned (or given as context).
    prefix: String,
    prefix_index: usize,
    /// Nothing has been emitted and the context has no text: the SPM dummy-prefix space of
    /// the first piece is dropped, as in a whole-text decode.
    at_text_start: bool,
}

impl StreamDecoder<'_> {
    /// Adds one id; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.tok.check_ids(&[id])?;
        self.ids.push(id);
        let text = self.tok.decode(&self.ids[self.prefix_index..], true)?;
        if text.ends_with('\u{FFFD}') {
            // Possibly the first bytes of a character whose rest is still to come.
            return Ok(None);
        }
        let cut = if text.starts_with(self.prefix.as_str()) {
            self.prefix.len()
        } else {
            // A decoder rewrote earlier text (rare); emit from where they first differ.
            text.char_indices()
                .zip(self.prefix.chars())
                .find(|((_, a), b)| a != b)
                .map(|((i, _), _)| i)
                .unwrap_or(self.prefix.len().min(text.len()))
        };
        let mut new = text.get(cut..).unwrap_or("").to_string();
        if self.at_text_start && !new.is_empty() {
            if new.starts_with(' ') {
                new.remove(0);
            }
            self.at_text_start = false;
        }
        // Slide the window so that the newest id is the context of the next step — unless on
        // its own it is part of a character (a lone byte token), then keep the whole window.
        let keep_from = self.ids.len() - 1;
        let alone = self.tok.decode(&self.ids[keep_from..], true)?;
        if alone.contains('\u{FFFD}') {
            self.prefix = text;
        } else {
            self.prefix = alone;
            self.prefix_index = keep_from;
        }
        Ok(if new.is_empty() { None } else { Some(new) })
    }

    /// Whatever is still held back at the end of a stream (an incomplete character becomes
    /// U+FFFD, as in a plain decode).
    pub fn flush(&mut self) -> Result<Option<String>, TokenizerError> {
        let text = self.tok.decode(&self.ids[self.prefix_index..], true)?;
        let out = text
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(&text)
            .to_string();
        self.prefix_index = self.ids.len();
        self.prefix.clear();
        Ok(if out.is_empty() { None } else { Some(out) })
    }
}
