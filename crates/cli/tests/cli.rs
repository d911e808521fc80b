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

/// The messages a new user's trial found wrong or confusing (issue 20), each now saying
/// what is at fault once and what to do.
#[test]
fn messages_name_the_fault() {
    let dir = std::env::temp_dir().join(format!("tuili-cli-msg-{}", std::process::id()));
    let hf = root().join("../shared/fixtures/models/tinystories-656k-hf");
    let copy = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in std::fs::read_dir(&hf).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
        }
        d
    };
    let broken_config = copy("config");
    std::fs::write(broken_config.join("config.json"), "{\"a\": 1, }").unwrap();
    let trunc = copy("trunc");
    std::fs::write(trunc.join("model.safetensors"), [7u8; 100]).unwrap();
    let missing = copy("missing");
    std::fs::remove_file(missing.join("model.safetensors")).unwrap();
    let m = stories();
    let m = m.to_str().unwrap();
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let (bc, tr, mi, hfs) = (s(&broken_config), s(&trunc), s(&missing), s(&hf));
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["run", "-m", &bc, "-p", "hi"],
            format!("error: {bc}/config.json: not valid JSON: trailing comma at line 1 column 10"),
        ),
        (
            vec!["run", "-m", &tr, "-p", "hi"],
            format!("error: {tr}/model.safetensors: not a valid safetensors file"),
        ),
        (
            vec!["run", "-m", &mi, "-p", "hi"],
            format!("error: {mi}: no model.safetensors or model.safetensors.index.json"),
        ),
        (
            vec!["run", "-m", m, "-p", "hi", "--top-k", "-3"],
            "invalid value '-3' for '--top-k <TOP_K>': must be 0 or more, got -3".into(),
        ),
        (
            vec!["run", "-m", m, "-p", "hi", "-n", "x"],
            "expected a whole number, got \"x\"".into(),
        ),
        (
            vec!["bench", "-m", &hfs],
            "bench reads GGUF files; convert the folder first".into(),
        ),
        (
            vec!["tokenize", "-m", m, "-t", "x"],
            "unexpected argument '-t'".into(),
        ),
    ];
    for (args, want) in cases {
        let out = tuili(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(&want), "{args:?}: {err}");
        // The path once, not twice.
        for p in [&bc, &tr, &mi] {
            assert!(err.matches(p.as_str()).count() <= 1, "{err}");
        }
    }
    // Above the trained context: allowed, with a warning that says what RoPE applies.
    let out = tuili(&["run", "-m", m, "-p", "hi", "-n", "1", "-c", "100000"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains(
        "warning: the context of 100000 tokens is larger than the 2048 this model was trained on; positions past it get RoPE base 10000 and no linear scaling"
    ), "{}", text(&out.stderr));
    let out = tuili(&["run", "-m", m, "-p", "hi", "-n", "1", "-c", "256"]);
    assert!(!text(&out.stderr).contains("warning"));
    // tokenize takes llama-tokenize's -p (and --text).
    let out = tuili(&["tokenize", "-m", m, "-p", "Hi there", "--ids-only"]);
    assert_eq!(text(&out.stdout).trim(), "[1, 320, 417, 383]");
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

/// `tuili prune`: every method writes a model the other commands run; N:M holds in every
/// group of every pruned row of the file; bad input is one clear line and leaves no output.
#[test]
fn prune_methods_and_mistakes() {
    use tuili_formats::GgufFile;
    let dir = std::env::temp_dir().join(format!("tuili-prune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = stories();
    let m = m.to_str().unwrap();
    let hf = root().join("../shared/fixtures/models/tinystories-656k-hf");
    let calib = root().join("../shared/fixtures/text/tinyshakespeare.txt");
    let calib = calib.to_str().unwrap();
    let out = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let small = ["--calib-ctx", "64", "--calib-tokens", "1024"];
    let runs: Vec<(String, Vec<&str>)> = vec![
        (
            out("mag24.gguf"),
            vec![
                "--method",
                "magnitude",
                "--pattern",
                "2:4",
                "--type",
                "q8_0",
                "--dense-out",
            ],
        ),
        (
            out("wanda50.gguf"),
            [
                &["--method", "wanda", "--sparsity", "0.5", "--calib", calib][..],
                &small,
            ]
            .concat(),
        ),
        (
            out("sgpt48.gguf"),
            [
                &[
                    "--method",
                    "sparsegpt",
                    "--pattern",
                    "4:8",
                    "--type",
                    "q4_0",
                    "--calib",
                    calib,
                ][..],
                &small,
            ]
            .concat(),
        ),
        (
            out("mag60.gguf"),
            vec![
                "--method",
                "magnitude",
                "--sparsity",
                "0.6",
                "--type",
                "q8_0",
                "--dense-out",
            ],
        ),
    ];
    let dense_twins = [out("mag24-dense.gguf"), out("mag60-dense.gguf")];
    for (i, (o, args)) in runs.iter().enumerate() {
        // The Hugging Face model's rows (128, 384) are whole sparse super-blocks;
        // stories260K's (64, 172) are not.
        let input = if i == 1 { m } else { hf.to_str().unwrap() };
        let dense_twin = &dense_twins[i / 3];
        let twin: &[&str] = if i % 3 == 0 { &[dense_twin] } else { &[] };
        let r = tuili(&[&["prune", input, o.as_str()][..], args, twin].concat());
        let err = text(&r.stderr);
        assert!(r.status.success(), "{args:?}: {err}");
        let said = text(&r.stdout);
        assert!(said.contains("% of their weights zero"), "{said}");
        if i != 1 {
            assert!(
                said.contains("all 14 pruned matrices in a sparse layout"),
                "{said}"
            );
            // inspect shows each tensor's layout and its share of zeros.
            let r = tuili(&["inspect", o.as_str(), "--sparsity"]);
            let shown = text(&r.stdout);
            let line = shown
                .lines()
                .find(|l| l.contains("blk.0.attn_q.weight"))
                .unwrap_or("");
            // Q4_0 rounds some kept weights to zero too.
            let share: f64 = line
                .trim_end_matches(" %")
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            // 60 % of 128 pruned: 52 kept a row, room for 56 (`Q8_0_U56`).
            let layout = ["Q8_0_2:4", "", "Q4_0_4:8", "Q8_0_U56"][i];
            assert!(line.contains(layout) && share >= 50.0, "{shown}");
        } else {
            // Unstructured: no sparse layout; the file is dense, and says why.
            assert!(
                said.contains("0 of 35 pruned matrices in a sparse layout, the rest dense"),
                "{said}"
            );
        }
        if i % 3 == 0 {
            // The dense twin holds the very values of the sparse file, as ordinary Q8_0
            // (row by row: an unstructured row's values share one pool).
            let (s, d) = (
                GgufFile::open(o).unwrap(),
                GgufFile::open(dense_twin).unwrap(),
            );
            let rows_of = |f: &GgufFile, t: &tuili_formats::TensorInfo| {
                let cols = t.shape[0] as usize;
                let data = &f.bytes()[f.tensor_range(t)];
                let n_rows = t.n_elements() as usize / cols;
                let rb = data.len() / n_rows;
                let mut v = vec![0f32; n_rows * cols];
                for (r, o) in v.chunks_exact_mut(cols).enumerate() {
                    tuili_kernels::types::dequantize_row(t.dtype, &data[r * rb..(r + 1) * rb], o)
                        .unwrap();
                }
                v
            };
            for t in &s.tensors {
                let u = d.tensor_info(&t.name).unwrap();
                assert_eq!(rows_of(&s, t), rows_of(&d, u), "{}", t.name);
                assert!(!u.dtype.is_tuili_own(), "{}: {}", t.name, u.dtype);
            }
        }
        if i == 1 || i == 2 {
            assert!(
                err.contains("calibration: 16 sequences of 64 tokens"),
                "{err}"
            );
        }
        // The file: every pruned matrix holds its pattern (Q8_0 and F32 keep zeros exact).
        let f = GgufFile::open(o).unwrap();
        let (m_, n_) = [(4, 2), (0, 0), (8, 4), (0, 0)][i];
        let mut pruned = 0;
        for t in f
            .tensors
            .iter()
            .filter(|t| tuili_model::prune::is_prunable(&t.name, &t.shape))
        {
            pruned += 1;
            let cols = t.shape[0] as usize;
            let data = &f.bytes()[f.tensor_range(t)];
            let rows = t.n_elements() as usize / cols;
            let rb = data.len() / rows;
            let mut row = vec![0f32; cols];
            let mut zeros = 0;
            for r in 0..rows {
                tuili_kernels::types::dequantize_row(
                    t.dtype,
                    &data[r * rb..(r + 1) * rb],
                    &mut row,
                )
                .unwrap();
                zeros += row.iter().filter(|&&v| v == 0.0).count();
                if m_ > 0 {
                    for g in row.chunks_exact(m_) {
                        assert!(g.iter().filter(|&&v| v != 0.0).count() <= n_, "{}", t.name);
                    }
                }
            }
            assert!(
                zeros * 2 >= rows * cols,
                "{}: {zeros} zeros of {}",
                t.name,
                rows * cols
            );
        }
        assert_eq!(
            pruned,
            [14, 35, 14, 14][i],
            "matrices (5 layers × 7; the HF model's 2 × 7)"
        );
        let r = tuili(&[
            "perplexity",
            "-m",
            o,
            "-f",
            calib,
            "-c",
            "128",
            "--chunks",
            "4",
        ]);
        assert!(r.status.success(), "{}", text(&r.stderr));
    }
    let r = tuili(&[
        "run",
        "-m",
        &out("sgpt48.gguf"),
        "-p",
        "Once upon a time",
        "-n",
        "8",
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stdout).starts_with("Once upon a time"));

    // GPT-2's fused Q/K/V is bound as three row views: calibrated under the tensor's name.
    let gpt2 = root().join("../shared/fixtures/models/tiny-random-gpt2-hf");
    let r = tuili(
        &[
            &[
                "prune",
                gpt2.to_str().unwrap(),
                &out("gpt2.gguf"),
                "--method",
                "wanda",
            ][..],
            &["--pattern", "2:4", "--calib", calib],
            &small,
        ]
        .concat(),
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(
        text(&r.stdout).contains("20 of 20 matrices"),
        "{}",
        text(&r.stdout)
    );

    // Mistakes: one line each, no output file.
    let tiny = dir.join("tiny.txt");
    std::fs::write(&tiny, "a few words").unwrap();
    let tiny = tiny.to_str().unwrap();
    let vocab_only = root().join("../shared/fixtures/vocab/ggml-vocab-llama-spm.gguf");
    let bad = out("bad.gguf");
    let twin = out("twin.gguf");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "prune",
                m,
                &bad,
                "--method",
                "magnitude",
                "--sparsity",
                "1.5",
            ],
            "strictly between 0 and 1",
        ),
        (
            vec!["prune", m, &bad, "--method", "magnitude", "--sparsity", "0"],
            "strictly between 0 and 1",
        ),
        (
            vec![
                "prune",
                m,
                &bad,
                "--method",
                "magnitude",
                "--pattern",
                "4:4",
            ],
            "less than M",
        ),
        (
            vec![
                "prune",
                m,
                &bad,
                "--method",
                "magnitude",
                "--sparsity",
                "0.5",
                "--dense",
                "--dense-out",
                &twin,
            ],
            "OUT is already dense",
        ),
        (
            vec![
                "prune",
                m,
                &bad,
                "--method",
                "magnitude",
                "--sparsity",
                "0.5",
                "--dense-out",
                &bad,
            ],
            "the same path as OUT",
        ),
        (
            vec!["prune", m, &bad, "--method", "magnitude"],
            "--sparsity 0.5 or --pattern 2:4",
        ),
        (
            vec!["prune", m, &bad, "--method", "best", "--sparsity", "0.5"],
            "magnitude, wanda or sparsegpt",
        ),
        (
            vec!["prune", m, &bad, "--method", "wanda", "--sparsity", "0.5"],
            "--calib FILE",
        ),
        (
            vec![
                "prune",
                m,
                &bad,
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--calib",
                tiny,
            ],
            "fewer than one sequence",
        ),
        (
            vec![
                "prune",
                m,
                &bad,
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--calib",
                "/nonexistent.txt",
            ],
            "/nonexistent.txt",
        ),
        (
            vec![
                "prune",
                vocab_only.to_str().unwrap(),
                &bad,
                "--method",
                "magnitude",
                "--sparsity",
                "0.5",
            ],
            "no attention or MLP projection",
        ),
        (
            vec![
                "prune",
                m,
                "/nonexistent/dir/out.gguf",
                "--method",
                "magnitude",
                "--sparsity",
                "0.5",
            ],
            "/nonexistent/dir/out.gguf",
        ),
    ];
    for (args, want) in cases {
        let r = tuili(&args);
        let err = text(&r.stderr);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ") && last.contains(want),
            "{args:?}: {err}"
        );
        assert!(!std::path::Path::new(&bad).exists(), "{args:?} left {bad}");
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
