//! Any text through a real vocabulary (llama SPM, and GPT-2 BPE): encoding with and without
//! special tokens never fails on valid UTF-8, and the streaming decoder's pieces join into
//! exactly the whole text's decode (never splitting a character).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tuili_tokenizer::Tokenizer;

fn vocab(name: &str) -> Tokenizer {
    let path = format!(
        "{}/../../shared/fixtures/vocab/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let file = tuili_formats::GgufFile::open(&path).expect("the fixture vocabulary");
    Tokenizer::from_gguf(&file).expect("a tokenizer")
}

fn check(tok: &Tokenizer, text: &str) {
    for special in [false, true] {
        let ids = tok
            .encode(text, false, special)
            .expect("encoding valid UTF-8");
        // The stream starts at the text's start: control tokens silent, SPM's dummy-prefix
        // space dropped — what `decode_text` gives for the whole.
        let whole = tok.decode_text(&ids).expect("decoding its own ids");
        let mut stream = tok.stream(&[]).expect("a stream");
        let mut joined = String::new();
        for &id in &ids {
            joined.push_str(&stream.step(id).expect("a step").unwrap_or_default());
        }
        joined.push_str(&stream.flush().expect("a flush").unwrap_or_default());
        assert_eq!(joined, whole, "the stream differs from the whole decode");
    }
}

fuzz_target!(|data: &[u8]| {
    static SPM: OnceLock<Tokenizer> = OnceLock::new();
    static BPE: OnceLock<Tokenizer> = OnceLock::new();
    let text = String::from_utf8_lossy(data);
    check(
        SPM.get_or_init(|| vocab("ggml-vocab-llama-spm.gguf")),
        &text,
    );
    check(BPE.get_or_init(|| vocab("ggml-vocab-gpt-2.gguf")), &text);
});
