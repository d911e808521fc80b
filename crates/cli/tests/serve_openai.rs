//! `tuili serve` under the official `openai` Python client (tests/serve/openai_client.py):
//! completions, chat, streaming, logprobs, stop, n, seed, beam search, errors, a client that
//! disconnects, and 32 concurrent streaming clients.
//!
//! Needs a Python with `openai` installed: `$TUILI_OPENAI_PYTHON`, or the virtual environment
//! that `scripts/setup-openai-venv` makes (scripts/test runs it first).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TUILI_OPENAI_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    let p = cache.join("tuili/openai-venv/bin/python");
    assert!(
        p.exists(),
        "no Python with the openai package: run scripts/setup-openai-venv (or set TUILI_OPENAI_PYTHON)"
    );
    p
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn openai_python_client_against_the_server() {
    let py = python();
    let model = root().join("../shared/fixtures/models/stories260K/stories260K.gguf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tuili"))
        .args(["serve", "--model"])
        .arg(&model)
        .args([
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
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Kill(child);
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .unwrap();
        if let Some(i) = line.find("listening on ") {
            break line[i + "listening on ".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
        }
    };
    // Keep draining the server's stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let out = Command::new(py)
        .arg(root().join("tests/serve/openai_client.py"))
        .args([&base, "sekrit"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the openai client checks failed");
    assert!(text.contains("all openai-client checks passed"));
    drop(server);
}
