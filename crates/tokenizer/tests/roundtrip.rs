//! Decoding, streaming and tokenizer.json loading.

use std::path::PathBuf;

use tuili_formats::GgufFile;
use tuili_tokenizer::{TokenType, Tokenizer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

fn gguf_tok(rel: &str) -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(fixtures().join(rel)).unwrap()).unwrap()
}

const TEXTS: &[&str] = &[
    "Hello world",
    " leading space and  double  spaces",
    "Führer ½ months 🦙.cpp",
    "нещо на Български",
    "我想在apple工作1314151天～",
    "tabs\tand\nnewlines\n\n",
    "emoji 😁 and ZWJ 👩‍👩‍👧‍👦",
];

#[test]
fn decode_round_trips_every_vocab() {
    for rel in [
        "vocab/ggml-vocab-llama-spm.gguf",
        "vocab/ggml-vocab-phi-3.gguf",
        "vocab/ggml-vocab-gpt-2.gguf",
        "vocab/ggml-vocab-falcon.gguf",
        "vocab/ggml-vocab-deepseek-llm.gguf",
        "vocab/ggml-vocab-starcoder.gguf",
        "vocab/ggml-vocab-baichuan.gguf",
        "vocab/ggml-vocab-gpt-neox.gguf",
        "models/stories260K/stories260K.gguf",
    ] {
        let tok = gguf_tok(rel);
        for text in TEXTS {
            let ids = tok.encode(text, false, false).unwrap();
            let back = tok.decode_text(&ids).unwrap();
            assert_eq!(&back, text, "{rel}: {ids:?}");
        }
    }
}

#[test]
fn byte_fallback_tokens_and_streaming_split_characters() {
    // stories260K has only 512 pieces: CJK and emoji go through <0xXX> byte tokens, so a
    // character spans several tokens and the stream must hold it back until it is whole.
    let tok = gguf_tok("models/stories260K/stories260K.gguf");
    let text = "Lily saw 日本 and 🦙!";
    let ids = tok.encode(text, true, false).unwrap();
    assert_eq!(ids[0], 1, "BOS first");
    assert!(ids
        .iter()
        .any(|&id| tok.token_type(id) == Some(TokenType::Byte)));
    let mut stream = tok.stream(&ids[..1]).unwrap();
    let mut out = String::new();
    let mut held_back = 0;
    for &id in &ids[1..] {
        match stream.step(id).unwrap() {
            Some(piece) => {
                assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                out.push_str(&piece);
            }
            None => held_back += 1,
        }
    }
    if let Some(rest) = stream.flush().unwrap() {
        out.push_str(&rest);
    }
    assert!(
        held_back >= 4,
        "multi-byte characters must be held back ({held_back})"
    );
    assert_eq!(out, text);
    // A stream that ends inside a character flushes U+FFFD rather than losing it silently.
    let e = tok.encode("日", false, false).unwrap();
    let mut s = tok.stream(&[]).unwrap();
    for &id in &e[..e.len() - 1] {
        assert_eq!(s.step(id).unwrap(), None);
    }
    assert!(s.flush().unwrap().unwrap().contains('\u{FFFD}'));
}

#[test]
fn stream_keeps_spaces_after_context() {
    let tok = gguf_tok("vocab/ggml-vocab-llama-spm.gguf");
    let prompt = tok.encode("Once upon", true, false).unwrap();
    let cont = tok.encode(" a time, there", false, false).unwrap();
    // SPM encodes " a" with a dummy prefix; take the ids of the whole text instead.
    let all = tok.encode("Once upon a time, there", true, false).unwrap();
    assert_eq!(&all[..prompt.len()], &prompt[..]);
    let mut s = tok.stream(&prompt).unwrap();
    let mut out = String::new();
    for &id in &all[prompt.len()..] {
        if let Some(p) = s.step(id).unwrap() {
            out.push_str(&p);
        }
    }
    assert_eq!(out, " a time, there");
    assert!(!cont.is_empty());
    let gpt2 = gguf_tok("vocab/ggml-vocab-gpt-2.gguf");
    let ids = gpt2.encode("Hello world, café ☕", false, false).unwrap();
    let mut s = gpt2.stream(&ids[..1]).unwrap();
    let mut out = String::new();
    for &id in &ids[1..] {
        if let Some(p) = s.step(id).unwrap() {
            out.push_str(&p);
        }
    }
    assert_eq!(out, " world, café ☕");
}

#[test]
fn special_tokens_parse_only_when_asked() {
    let tok = gguf_tok("vocab/ggml-vocab-phi-3.gguf");
    let parsed = tok.encode("<|user|>Hi<|end|>", false, true).unwrap();
    assert_eq!(parsed[0], 32010);
    assert!(parsed.contains(&32007));
    let literal = tok.encode("<|user|>Hi<|end|>", false, false).unwrap();
    assert!(!literal.contains(&32010) && literal.len() > parsed.len());
    assert!(tok.is_eog(32007) && tok.is_eog(32000));
    assert_eq!(tok.decode_text(&parsed).unwrap(), "Hi");
    assert!(tok.decode(&[999_999], false).is_err());
    assert!(tok.piece(32064).is_err());
    // Phi-3 stores `</s>` (id 2) as a user-defined token, which would be matched in text
    // even with special tokens off; like llama.cpp, tuili makes tokens that by their text end
    // a turn control tokens: `</s>` is then text unless special tokens are parsed (as `<s>`
    // always was), and it ends generation.
    let literal = tok.encode("</s> <s>", false, false).unwrap();
    assert!(
        !literal.contains(&2) && !literal.contains(&1),
        "{literal:?}"
    );
    assert_eq!(tok.decode_text(&literal).unwrap(), "</s> <s>");
    let parsed = tok.encode("</s> <s>", false, true).unwrap();
    assert!(parsed.contains(&2) && parsed.contains(&1), "{parsed:?}");
    assert_eq!(tok.token_type(2), Some(tuili_tokenizer::TokenType::Control));
    assert!(tok.is_eog(2));
}

#[test]
fn tokenizer_json_tinystories() {
    let tok = Tokenizer::from_tokenizer_json(
        fixtures().join("models/tinystories-656k-hf/tokenizer.json"),
    )
    .unwrap();
    assert_eq!(
        tok.encode("Once upon a time", true, false).unwrap(),
        vec![1, 80, 147, 201, 282, 57]
    );
    // The GPT-2 file was saved with truncation at 50 tokens: it must not cut prompts.
    let gpt2 =
        Tokenizer::from_tokenizer_json(fixtures().join("tokenizers/gpt2/tokenizer.json")).unwrap();
    let long = vec!["word"; 200].join(" ");
    assert_eq!(gpt2.encode(&long, false, false).unwrap().len(), 200);
    assert_eq!(
        gpt2.decode_text(&gpt2.encode("Hello world", false, false).unwrap())
            .unwrap(),
        "Hello world"
    );
    assert!(Tokenizer::from_tokenizer_json("/nonexistent/tokenizer.json").is_err());
}

/// The chat template shipped in a real tokenizer_config.json (Phi-3 mini) renders as the model
/// expects.
#[test]
fn phi3_chat_template_from_tokenizer_config() {
    use tuili_tokenizer::chat::Message;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/tokenizers/phi-3-mini");
    let tok = tuili_tokenizer::Tokenizer::from_tokenizer_json(dir.join("tokenizer.json")).unwrap();
    let t = tok
        .chat_template()
        .expect("phi-3 ships a template")
        .unwrap();
    let msgs = [
        Message::new("system", "Be kind."),
        Message::new("user", "Hi"),
    ];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<|system|>\nBe kind.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    );
    assert_eq!(
        t.render(&msgs[1..], false).unwrap(),
        "<|user|>\nHi<|end|>\n<|endoftext|>"
    );
    // The GGUF of the same family carries its (older) template as tokenizer.chat_template: it
    // starts with BOS and drops system messages.
    let gguf =
        tuili_formats::GgufFile::open(dir.join("../../vocab/ggml-vocab-phi-3.gguf")).unwrap();
    let g = tuili_tokenizer::Tokenizer::from_gguf(&gguf).unwrap();
    let gt = g.chat_template().expect("the GGUF has a template").unwrap();
    assert_eq!(
        gt.render(&msgs, true).unwrap(),
        "<s><|user|>\nHi<|end|>\n<|assistant|>\n"
    );
}
