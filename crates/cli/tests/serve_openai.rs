//! `tuili serve` under the official `openai` Python client (tests/serve/openai_client.py):
//! completions, chat, streaming, logprobs, stop, n, seed, beam search, errors, a client that
//! disconnects, and 32 concurrent streaming clients.
//!
//! Needs a Python with `openai` installed: `$TUILI_OPENAI_PYTHON`, or the virtual environment
//! that `scripts/setup-openai-venv` makes (scripts/test runs it first).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{openai_python, Server};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn openai_python_client_against_the_server() {
    let py = openai_python();
    let model = root().join("../shared/fixtures/models/stories260K/stories260K.gguf");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tuili"));
    cmd.args(["serve", "--model"]).arg(&model).args([
        "--port",
        "0",
        "--api-key",
        "sekrit",
        "--chat-template",
        "chatml",
        "--kv-memory",
        "6MiB",
        "--max-batch-tokens",
        "256",
        "--threads",
        "2",
    ]);
    let server = Server::start(cmd);
    let out = Command::new(py)
        .arg(root().join("tests/serve/openai_client.py"))
        .args([&server.base, "sekrit"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the openai client checks failed");
    assert!(text.contains("all openai-client checks passed"));
    drop(server);
}
