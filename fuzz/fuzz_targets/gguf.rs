//! Any bytes as a GGUF file: the reader, then the tokenizer and the model loader on what it
//! accepts. Errors are fine; a panic, a hang or an allocation beyond the input's size is not.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = tuili_formats::GgufFile::from_bytes("fuzz.gguf", data.to_vec()) {
        let _ = tuili_tokenizer::Tokenizer::from_gguf(&file);
        let _ = tuili_model::Model::load(Arc::new(file));
    }
});
