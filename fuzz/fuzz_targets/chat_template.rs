//! Any text as a chat template (a model file's, from anywhere): compiling and rendering a
//! conversation end, in bounded time and memory (the renderer's fuel and output bound), with
//! text or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuili_tokenizer::chat::{ChatTemplate, Message};

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    if let Ok(t) = ChatTemplate::new(&src, "<s>", "</s>") {
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi {{ there }} {% raw %}"),
            Message::new("assistant", "Hello."),
        ];
        let _ = t.render(&msgs, true);
    }
});
