//! The `tuili` binary: the main job, the other commands, and one-line errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stories() -> PathBuf {
    root().join("../shared/fixtures/models/stories260K/stories260K.gguf")
}

fn tuili(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuili"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn golden() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/golden/stories260K-llamacpp.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn run_greedy_prints_llama_cpp_continuation() {
    let g = golden();
    let case = &g["cases"][1];
    let prompt = case["prompt"].as_str().unwrap();
    let want = case["greedy_text"].as_str().unwrap();
    let out = tuili(&[
        "run",
        "--model",
        stories().to_str().unwrap(),
        "--prompt",
        prompt,
        "--temperature",
        "0",
        "-n",
        "64",
        "-t",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.trim_end(), format!("{prompt}{want}").trim_end());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tokens/s") && stderr.contains("prompt: 5 tokens"),
        "{stderr}"
    );
    // --no-echo prints only the continuation; a fixed seed repeats itself.
    let sampled = |seed: &str| {
        let o = tuili(&[
            "run",
            "-m",
            stories().to_str().unwrap(),
            "-p",
            "Lily",
            "-n",
            "30",
            "--seed",
            seed,
            "--no-echo",
        ]);
        assert!(o.status.success());
        text(&o.stdout)
    };
    assert_eq!(sampled("5"), sampled("5"));
    assert!(!sampled("5").starts_with("Lily"));
}

#[test]
fn tokenize_and_inspect() {
    let g = golden();
    let case = &g["cases"][3];
    let want: Vec<String> = case["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let out = tuili(&[
        "tokenize",
        "-m",
        stories().to_str().unwrap(),
        "--text",
        case["prompt"].as_str().unwrap(),
        "--ids-only",
    ]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), format!("[{}]", want.join(", ")));
    let out = tuili(&[
        "tokenize",
        "-m",
        stories().to_str().unwrap(),
        "--text",
        "Hi 日",
    ]);
    let s = text(&out.stdout);
    assert!(s.contains("     1 -> '<s>'") && s.contains("<0xE6>"), "{s}");
    let tj = root().join("../shared/fixtures/models/tinystories-656k-hf/tokenizer.json");
    let out = tuili(&[
        "tokenize",
        "-m",
        tj.to_str().unwrap(),
        "--text",
        "Once upon a time",
        "--ids-only",
    ]);
    assert_eq!(text(&out.stdout).trim(), "[1, 80, 147, 201, 282, 57]");
    let out = tuili(&["inspect", stories().to_str().unwrap()]);
    let s = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        s.contains("GGUF v3") && s.contains("metadata (19 keys)") && s.contains("tensors (48)"),
        "{s}"
    );
    assert!(s.contains("blk.4.ffn_down.weight") && s.contains("llama.block_count = 5"));
}

/// Bad input gives one line on stderr starting with "error:", a non-zero exit, no panic.
#[test]
fn errors_are_one_line() {
    let dir = std::env::temp_dir().join(format!("tuili-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(stories()).unwrap();
    let trunc = dir.join("trunc.gguf");
    std::fs::write(&trunc, &bytes[..5000]).unwrap();
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"not a model at all").unwrap();
    let m = stories();
    let m = m.to_str().unwrap();
    let long = "word ".repeat(3000);
    let vocab_only = root().join("../shared/fixtures/vocab/ggml-vocab-llama-spm.gguf");
    let cases: Vec<Vec<&str>> = vec![
        vec!["run", "-m", "/nonexistent/model.gguf", "-p", "hi"],
        vec!["run", "-m", trunc.to_str().unwrap(), "-p", "hi"],
        vec!["run", "-m", garbage.to_str().unwrap(), "-p", "hi"],
        vec!["run", "-m", vocab_only.to_str().unwrap(), "-p", "hi"],
        vec!["run", "-m", m, "-p", "hi", "--temperature", "-1"],
        vec!["run", "-m", m, "-p", "hi", "--top-p", "0"],
        vec!["run", "-m", m, "-p", "hi", "--threads", "0"],
        vec!["run", "-m", m, "-p", "hi", "--batch-size", "0"],
        vec!["run", "-m", m, "-p", &long],
        vec!["inspect", trunc.to_str().unwrap()],
        vec!["tokenize", "-m", garbage.to_str().unwrap(), "--text", "x"],
    ];
    for args in cases {
        let out = tuili(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with("error: "), "{args:?}: {err}");
        assert!(
            out.stdout.is_empty() || !text(&out.stdout).contains("word word"),
            "{args:?} echoed the prompt"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The decoding options of `tuili run`: --explain, --beams, -N, --stop, --logprobs, and clear
/// errors for nonsense values.
#[test]
fn run_decoding_options() {
    let m = stories();
    let m = m.to_str().unwrap();
    let base = [
        "run",
        "-m",
        m,
        "-p",
        "Once upon a time",
        "-n",
        "6",
        "--seed",
        "5",
    ];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        tuili(&a)
    };
    let out = with(&["--explain", "3", "--repeat-penalty", "1.1", "--top-k", "20"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert_eq!(s.matches("step ").count(), 6, "{s}");
    for stage in [
        "model",
        "penalties(repeat=1.1,last_n=64)",
        "top_k=20",
        "top_p=0.95",
        "min_p=0.05",
        "temperature=0.8",
    ] {
        assert!(s.contains(stage), "{stage} missing in {s}");
    }
    let out = with(&["--beams", "3", "-N", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("beam 0 | score") && s.contains("beam 1 | score"),
        "{s}"
    );
    assert!(!s.contains("beam 2"));
    let out = with(&["-N", "3", "--stop", "zzz", "--logprobs", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("--- completion 2 ---") && s.contains("--- logprobs of completion 2 ---"),
        "{s}"
    );
    for (args, needle) in [
        (&["--logit-bias", "abc"][..], "--logit-bias"),
        (&["--samplers", "top_k;nope"][..], "samplers"),
        (&["--typical-p", "0"][..], "typical_p"),
        (&["--beams", "1"][..], "num_beams"),
        (
            &["--early-stopping", "maybe", "--beams", "2"][..],
            "--early-stopping",
        ),
        (&["--logit-bias", "99999=1"][..], "outside the vocabulary"),
    ] {
        let out = with(args);
        assert!(!out.status.success(), "{args:?}");
        // One error line (after the load line when the check needs the model's vocabulary).
        let e = text(&out.stderr);
        let last = e.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{args:?}: {e}"
        );
        assert_eq!(e.matches("error").count(), 1, "{e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// `tuili chat`: turns read from stdin, the cache reused on the second turn, /reset, /exit.
#[test]
fn chat_repl() {
    use std::io::Write;
    use std::process::Stdio;
    let model = root().join("../shared/fixtures/models/tinystories-656k-hf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tuili"))
        .args([
            "chat",
            "-m",
            model.to_str().unwrap(),
            "--chat-template",
            "chatml",
            "-n",
            "8",
            "--temperature",
            "0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hi there\nTell me more\n/reset\nHello\n/exit\nnever read\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let reused: Vec<usize> = err
        .lines()
        .filter_map(|l| l.strip_prefix('(').or_else(|| l.strip_prefix("> (")))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(reused.len(), 3, "{err}");
    assert_eq!(reused[0], 0);
    assert!(reused[1] > 10, "the second turn reuses the first: {err}");
    assert_eq!(reused[2], 0, "after /reset nothing is reused");
    assert!(err.contains("(conversation reset)"));
    // No template, no --chat-template: a clear error.
    let out = tuili(&["chat", "-m", model.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no chat template"));
}
