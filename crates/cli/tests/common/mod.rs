//! What the tests that drive `tuili serve` share: the Python with the `openai` client, and a
//! server started and read until it listens.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The Python with `openai` installed: `$TUILI_OPENAI_PYTHON`, or the virtual environment
/// that `scripts/setup-openai-venv` makes (scripts/test runs it first).
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn openai_python() -> PathBuf {
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

/// A running server (killed on drop) and its base URL.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Starts `cmd` (a `tuili serve` with `--port 0`) and reads its standard error until the
    /// "listening on" line, then keeps draining it so that the server never blocks on a full
    /// pipe.
    pub fn start(mut cmd: Command) -> Server {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
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
        std::thread::spawn(move || for _ in lines {});
        Server { child, base }
    }
}

impl Server {
    /// The server's process id.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the server to exit on its own.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn wait(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let t = std::time::Instant::now();
        while t.elapsed() < limit {
            if let Some(s) = self.child.try_wait().ok().flatten() {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
