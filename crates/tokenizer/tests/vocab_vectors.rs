//! llama.cpp's tokenizer test vectors (`../shared/fixtures/vocab/*.gguf.inp/.out`): every
//! pair whose vocabulary file is present must match exactly, with add_special = false and
//! parse_special = false (as llama.cpp's test-tokenizer-0 runs them).

use std::path::PathBuf;

use tuili_formats::GgufFile;
use tuili_tokenizer::Tokenizer;

const SEP: &str = "\n__ggml_vocab_test__\n";

fn vocab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/vocab")
}

/// Vector pairs whose vocabulary GGUF is not in the fixtures (too large, or absent from
/// llama.cpp's tree); they cannot be run. Any other missing GGUF is a failure.
const NO_GGUF: &[&str] = &[
    "chameleon",
    "command-r",
    "deepseek-r1-qwen",
    "llama-bpe",
    "qwen2",
    "roberta-bpe",
];

fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let dir = vocab_dir();
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let mut inputs: Vec<&str> = inp.split(SEP).collect();
    assert_eq!(
        inputs.pop(),
        Some(""),
        "{name}.inp must end with the separator"
    );
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "{name}: inputs vs outputs");
    inputs.into_iter().map(String::from).zip(outputs).collect()
}

fn run(name: &str) -> Result<usize, String> {
    let path = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
    let file = GgufFile::open(&path).map_err(|e| e.to_string())?;
    let tok = Tokenizer::from_gguf(&file).map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    let cases = cases(name);
    for (text, want) in &cases {
        let got = tok.encode(text, false, false).map_err(|e| e.to_string())?;
        if &got != want {
            failures.push(format!("  {text:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    if failures.is_empty() {
        Ok(cases.len())
    } else {
        Err(format!(
            "{} of {} cases differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        ))
    }
}

#[test]
fn every_vocab_vector_pair_matches_llama_cpp() {
    let mut names: Vec<String> = std::fs::read_dir(vocab_dir())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_prefix("ggml-vocab-")
                .and_then(|n| n.strip_suffix(".gguf.inp"))
                .map(String::from)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 16, "vector files missing: {names:?}");
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for name in &names {
        let has_gguf = vocab_dir().join(format!("ggml-vocab-{name}.gguf")).exists();
        if !has_gguf {
            assert!(
                NO_GGUF.contains(&name.as_str()),
                "{name}: vectors present but no vocabulary GGUF"
            );
            report.push(format!("{name}: skipped (no vocabulary GGUF in fixtures)"));
            continue;
        }
        match run(name) {
            Ok(n) => report.push(format!("{name}: {n}/{n} pass")),
            Err(e) => {
                report.push(format!("{name}: FAIL"));
                failed.push(format!("{name}: {e}"));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
