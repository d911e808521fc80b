//! `tuili serve` stopping: SIGTERM (or Ctrl-C) stops taking connections, lets requests in
//! flight finish within `--shutdown-timeout`, then exits 0; a second signal exits at once.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;

fn serve(timeout: &str) -> Server {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/models/stories260K/stories260K.gguf");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tuili"));
    cmd.args(["serve", "--model"]).arg(&model).args([
        "--port",
        "0",
        "--threads",
        "1",
        "--shutdown-timeout",
        timeout,
    ]);
    Server::start(cmd)
}

fn signal(server: &Server, sig: i32) {
    // SAFETY: kill(2) on the child's pid; no memory is involved.
    let r = unsafe { libc::kill(server.pid() as i32, sig) };
    assert_eq!(r, 0);
}

/// A request whose body never comes: in flight until the server ends it.
fn stalled_request(server: &Server) -> std::net::TcpStream {
    let addr = server.base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"prompt\": ",
    )
    .unwrap();
    s
}

#[test]
fn sigterm_drains_then_exits_and_a_second_signal_exits_at_once() {
    // Idle: exits 0 at once.
    let mut s = serve("30");
    let t = Instant::now();
    signal(&s, libc::SIGTERM);
    let status = s
        .wait(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A request in flight: waited for up to the deadline, then exit 0.
    let mut s = serve("2");
    let _held = stalled_request(&s);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    signal(&s, libc::SIGTERM);
    assert!(
        s.wait(Duration::from_millis(1000)).is_none(),
        "did not wait for the request"
    );
    let status = s
        .wait(Duration::from_secs(10))
        .expect("no exit after the deadline");
    assert_eq!(status.code(), Some(0));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(6),
        "{waited:?}"
    );

    // A second signal does not wait.
    let mut s = serve("60");
    let _held = stalled_request(&s);
    std::thread::sleep(Duration::from_millis(200));
    signal(&s, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    signal(&s, libc::SIGTERM);
    let status = s
        .wait(Duration::from_secs(5))
        .expect("no exit after a second signal");
    assert_eq!(status.code(), Some(130));
    assert!(t.elapsed() < Duration::from_secs(3));
}
