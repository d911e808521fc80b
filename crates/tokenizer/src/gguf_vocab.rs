//! Building a tokenizer from GGUF `tokenizer.ggml.*` metadata.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::unicode::NFD;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::tokenizer::{AddedToken, SplitDelimiterBehavior, Tokenizer as HfTokenizer};
use tokenizers::{DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper};
use tuili_formats::{GgufFile, MetaArray};

use crate::error::TokenizerError;
use crate::pretok;

/// llama.cpp's token attribute types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_i32(v: i32) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

struct Vocabulary {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<TokenType>,
}

fn bad(file: &GgufFile, reason: String) -> TokenizerError {
    TokenizerError::BadVocab {
        path: file.path().display().to_string(),
        reason,
    }
}

fn read_vocab(file: &GgufFile) -> Result<Vocabulary, TokenizerError> {
    let tokens = match file.get_array("tokenizer.ggml.tokens")? {
        Some(MetaArray::String(t)) => t.clone(),
        Some(other) => {
            return Err(bad(
                file,
                format!(
                    "tokenizer.ggml.tokens is an array of {:?}",
                    other.elem_type()
                ),
            ))
        }
        None => {
            return Err(bad(
                file,
                "no tokenizer.ggml.tokens: the file has no vocabulary".into(),
            ))
        }
    };
    if tokens.is_empty() {
        return Err(bad(file, "tokenizer.ggml.tokens is empty".into()));
    }
    let n = tokens.len();
    let scores = match file.get_array("tokenizer.ggml.scores")? {
        None => vec![0.0; n],
        Some(MetaArray::F32(s)) if s.len() == n => s.clone(),
        Some(MetaArray::I32(s)) if s.len() == n => s.iter().map(|&v| v as f32).collect(),
        Some(a) => {
            return Err(bad(
                file,
                format!(
                    "tokenizer.ggml.scores has {} entries of {:?} for {n} tokens",
                    a.len(),
                    a.elem_type()
                ),
            ))
        }
    };
    let types = match file.get_array("tokenizer.ggml.token_type")? {
        None => vec![TokenType::Normal; n],
        Some(MetaArray::I32(t)) if t.len() == n => {
            t.iter().map(|&v| TokenType::from_i32(v)).collect()
        }
        Some(MetaArray::U32(t)) if t.len() == n => {
            t.iter().map(|&v| TokenType::from_i32(v as i32)).collect()
        }
        Some(a) => {
            return Err(bad(
                file,
                format!(
                    "tokenizer.ggml.token_type has {} entries of {:?} for {n} tokens",
                    a.len(),
                    a.elem_type()
                ),
            ))
        }
    };
    Ok(Vocabulary {
        tokens,
        scores,
        types,
    })
}

fn token_id(file: &GgufFile, key: &str, n: usize) -> Result<Option<u32>, TokenizerError> {
    match file.get_u64(key)? {
        // llama.cpp writes -1 as u32::MAX for "none".
        None | Some(0xFFFF_FFFF) => Ok(None),
        Some(id) if (id as usize) < n => Ok(Some(id as u32)),
        Some(id) => Err(bad(
            file,
            format!("{key} = {id} is outside the vocabulary of {n}"),
        )),
    }
}

/// The vocabulary as a map; on duplicate pieces the first id wins (llama.cpp does the same).
fn vocab_map(tokens: &[String]) -> Vocab {
    let mut v = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        v.entry(t.clone()).or_insert(i as u32);
    }
    v
}

/// The added tokens: user-defined ones are always matched in text (llama.cpp does so even
/// when not parsing special tokens); control ones only when `with_control`.
fn added_tokens(v: &Vocabulary, with_control: bool) -> (Vec<AddedToken>, Vec<AddedToken>) {
    let mut plain = Vec::new();
    let mut special = Vec::new();
    for (t, ty) in v.tokens.iter().zip(&v.types) {
        if t.is_empty() {
            continue;
        }
        match ty {
            TokenType::UserDefined => {
                plain.push(AddedToken::from(t.clone(), false).normalized(false))
            }
            TokenType::Control if with_control => special.push(AddedToken::from(t.clone(), true)),
            _ => {}
        }
    }
    (plain, special)
}

/// SentencePiece BPE as HF expresses it: every way of splitting a vocabulary piece into two
/// pieces that are themselves in the vocabulary is a merge, ranked by the score of the merged
/// piece (highest first). This reproduces SentencePiece's (and llama.cpp's) greedy
/// highest-score-pair merging.
fn spm_merges(v: &Vocabulary, map: &Vocab) -> Vec<(String, String)> {
    let mergeable = |id: u32| {
        matches!(
            v.types[id as usize],
            TokenType::Normal | TokenType::UserDefined | TokenType::Undefined
        )
    };
    let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, piece) in v.tokens.iter().enumerate() {
        if !mergeable(id as u32) || piece.chars().nth(1).is_none() {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (map.get(l), map.get(r)) {
                if mergeable(li) && mergeable(ri) {
                    merges.push((v.scores[id], id as u32, li, ri));
                }
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    merges
        .into_iter()
        .map(|(_, _, l, r)| (v.tokens[l as usize].clone(), v.tokens[r as usize].clone()))
        .collect()
}

fn spm_add_prefix(file: &GgufFile) -> bool {
    file.get_bool("tokenizer.ggml.add_space_prefix")
        .ok()
        .flatten()
        .unwrap_or(true)
}

fn build_spm(file: &GgufFile, v: &Vocabulary) -> Result<HfTokenizer, String> {
    let map = vocab_map(&v.tokens);
    let merges = spm_merges(v, &map);
    let unk = v
        .types
        .iter()
        .position(|t| *t == TokenType::Unknown)
        .map(|i| v.tokens[i].clone());
    let mut b = BPE::builder()
        .vocab_and_merges(map, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = unk {
        b = b.unk_token(u);
    }
    let bpe = b.build().map_err(|e| e.to_string())?;
    let mut tk = HfTokenizer::new(bpe);
    let add_prefix = spm_add_prefix(file);
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if add_prefix {
        norms.push(Prepend::new("▁".into()).into());
    }
    norms.push(Replace::new(" ", "▁").map_err(|e| e.to_string())?.into());
    tk.with_normalizer(Some(NormalizerSequence::new(norms)));
    let decs: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(|e| e.to_string())?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    // No Strip decoder: the dummy-prefix space is removed by `Tokenizer::decode_text`, once
    // for a whole text, not once per decoded run.
    tk.with_decoder(Some(DecoderSequence::new(decs)));
    Ok(tk)
}

fn build_bpe(file: &GgufFile, v: &Vocabulary, pre: &str) -> Result<HfTokenizer, String> {
    let merges = match file
        .get_array("tokenizer.ggml.merges")
        .map_err(|e| e.to_string())?
    {
        Some(MetaArray::String(m)) => m
            .iter()
            .enumerate()
            .map(|(i, m)| {
                // llama.cpp splits at the first space after the first character (a merge's
                // left side may itself be a space in some vocabularies).
                let at = m
                    .char_indices()
                    .skip(1)
                    .find(|(_, c)| *c == ' ')
                    .map(|(i, _)| i);
                match at {
                    Some(at) => Ok((m[..at].to_string(), m[at + 1..].to_string())),
                    None => Err(format!("merge #{i} {m:?} has no space")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(a) => {
            return Err(format!(
                "tokenizer.ggml.merges is an array of {:?}",
                a.elem_type()
            ))
        }
        None => return Err("a gpt2 (BPE) vocabulary needs tokenizer.ggml.merges".into()),
    };
    let map = vocab_map(&v.tokens);
    // Merges naming pieces absent from the vocabulary are skipped, as llama.cpp never forms
    // them either (their result could not be looked up).
    let merges: Vec<_> = merges
        .into_iter()
        .filter(|(a, b)| {
            map.contains_key(a) && map.contains_key(b) && map.contains_key(&format!("{a}{b}"))
        })
        .collect();
    let ignore_merges = matches!(
        pre,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral"
    );
    let bpe = BPE::builder()
        .vocab_and_merges(map, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tk = HfTokenizer::new(bpe);
    let pats =
        pretok::patterns(pre).ok_or_else(|| format!("pre-tokenizer {pre:?} is not supported"))?;
    let mut pts: Vec<PreTokenizerWrapper> = Vec::new();
    for p in pats {
        let split = Split::new(
            SplitPattern::Regex(p.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| format!("pre-tokenizer regex {p:?}: {e}"))?;
        pts.push(split.into());
    }
    pts.push(ByteLevel::new(false, false, false).into());
    tk.with_pre_tokenizer(Some(PreSequence::new(pts)));
    tk.with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok(tk)
}

fn build_wpm(v: &Vocabulary) -> Result<HfTokenizer, String> {
    // llama.cpp's converter marks word starts with ▁ and leaves continuations bare; HF's
    // WordPiece wants the opposite (`##` on continuations).
    let mut map = Vocab::default();
    for (i, (t, ty)) in v.tokens.iter().zip(&v.types).enumerate() {
        let key = if *ty == TokenType::Control || *ty == TokenType::Unknown {
            t.clone()
        } else if let Some(word) = t.strip_prefix('▁') {
            word.to_string()
        } else {
            format!("##{t}")
        };
        map.entry(key).or_insert(i as u32);
    }
    let unk = v
        .types
        .iter()
        .position(|t| *t == TokenType::Unknown)
        .map(|i| v.tokens[i].clone())
        .unwrap_or_else(|| "[UNK]".into());
    let wp = WordPiece::builder()
        .vocab(map)
        .unk_token(unk)
        .max_input_chars_per_word(usize::MAX / 2)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tk = HfTokenizer::new(wp);
    let norms: Vec<NormalizerWrapper> = vec![
        NFD.into(),
        BertNormalizer::new(true, true, Some(true), true).into(),
    ];
    tk.with_normalizer(Some(NormalizerSequence::new(norms)));
    tk.with_pre_tokenizer(Some(BertPreTokenizer));
    tk.with_decoder(Some(WordPieceDecoder::default()));
    Ok(tk)
}

/// The family of tokenizer, as `tokenizer.ggml.model` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// SentencePiece-style BPE over raw UTF-8 with byte fallback (`llama`).
    Spm,
    /// Byte-level BPE (`gpt2`).
    Bpe,
    /// WordPiece (`bert`).
    Wpm,
    /// Whatever a tokenizer.json describes.
    HfJson,
}

/// What a GGUF vocabulary makes: the tokenizer's parts, assembled by
/// `Tokenizer::from_parts`.
pub(crate) struct VocabParts {
    pub kind: VocabKind,
    /// The engine with control-token text left as text.
    pub plain: HfTokenizer,
    /// Builds the engine that recognises control-token text (on first use).
    pub special_builder: Box<dyn Fn() -> Result<HfTokenizer, String> + Send + Sync>,
    pub pieces: Vec<String>,
    pub types: Vec<TokenType>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub strip_prefix: bool,
}

/// The texts of tokens that end a turn, as llama.cpp's vocabulary loader lists them (it
/// makes each a control token and an end of generation, whatever the file says).
const END_OF_TURN: [&str; 17] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

pub(crate) fn build(file: &GgufFile) -> Result<VocabParts, TokenizerError> {
    let path = file.path().display().to_string();
    let model = file
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| {
            bad(
                file,
                "no tokenizer.ggml.model: the file has no tokenizer".into(),
            )
        })?
        .to_string();
    let pre = file
        .get_str("tokenizer.ggml.pre")?
        .unwrap_or("default")
        .to_string();
    let mut v = read_vocab(file)?;
    // Tokens that by their text end a turn are control tokens, whatever type the file gives
    // them (llama.cpp's vocabulary loader overrides the type the same way): so Phi-3's
    // `</s>`, stored as user-defined, ends generation and, with special tokens off, is
    // plain text rather than always matched.
    for (t, ty) in v.tokens.iter().zip(v.types.iter_mut()) {
        if END_OF_TURN.contains(&t.as_str()) {
            *ty = TokenType::Control;
        }
    }
    let n = v.tokens.len();
    let (kind, base): (VocabKind, HfTokenizer) = match model.as_str() {
        "llama" => (
            VocabKind::Spm,
            build_spm(file, &v).map_err(|r| bad(file, r))?,
        ),
        "gpt2" => {
            if pretok::patterns(&pre).is_none() {
                return Err(TokenizerError::UnsupportedPre { path, pre });
            }
            (
                VocabKind::Bpe,
                build_bpe(file, &v, &pre).map_err(|r| bad(file, r))?,
            )
        }
        "bert" => (VocabKind::Wpm, build_wpm(&v).map_err(|r| bad(file, r))?),
        _ => return Err(TokenizerError::UnsupportedModel { path, model }),
    };
    let (defaults_bos, defaults_eos, default_add_bos) = match kind {
        VocabKind::Spm => (Some(1), Some(2), true),
        VocabKind::Wpm => (Some(101), None, true),
        _ => (None, None, false),
    };
    let bos = match token_id(file, "tokenizer.ggml.bos_token_id", n)? {
        Some(b) => Some(b),
        None if file.get("tokenizer.ggml.bos_token_id").is_some() => None,
        None => defaults_bos.filter(|&b| (b as usize) < n),
    };
    let eos = match token_id(file, "tokenizer.ggml.eos_token_id", n)? {
        Some(e) => Some(e),
        None if file.get("tokenizer.ggml.eos_token_id").is_some() => None,
        None => defaults_eos.filter(|&e| (e as usize) < n),
    };
    let add_bos = file
        .get_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_add_bos);
    let add_eos = file
        .get_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let mut eog: Vec<u32> = eos.into_iter().collect();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = token_id(file, key, n)? {
            if !eog.contains(&id) {
                eog.push(id);
            }
        }
    }
    // Tokens that by their text end a turn (made control tokens above).
    for (i, t) in v.tokens.iter().enumerate() {
        if END_OF_TURN.contains(&t.as_str()) && !eog.contains(&(i as u32)) {
            eog.push(i as u32);
        }
    }

    let (plain_added, _) = added_tokens(&v, false);
    let mut plain = base;
    plain.add_tokens(&plain_added);
    // The parse-special variant is built only when first asked for.
    let builder_vocab = Vocabulary {
        tokens: v.tokens.clone(),
        scores: Vec::new(),
        types: v.types.clone(),
    };
    let plain_for_special = plain.clone();
    let special_builder = move || -> Result<HfTokenizer, String> {
        let (_, special) = added_tokens(&builder_vocab, true);
        let mut t = plain_for_special.clone();
        t.add_special_tokens(&special);
        Ok(t)
    };
    Ok(VocabParts {
        kind,
        plain,
        special_builder: Box::new(special_builder),
        pieces: v.tokens,
        types: v.types,
        bos,
        eos,
        eog,
        add_bos,
        add_eos,
        strip_prefix: kind == VocabKind::Spm && spm_add_prefix(file),
    })
}
