//! Any bytes as the body of `/v1/completions` or `/v1/chat/completions`: parsed, then turned
//! into an engine request. A 400 is fine; a panic is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuili_server::openai::{Body, Kind};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<Body>(data) {
        let _ = body.to_request(Kind::Completion, 1);
        let _ = body.to_request(Kind::Chat, 1);
    }
});
