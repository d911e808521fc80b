//! stories260K against llama.cpp: first-step logits to 1e-3 max-abs and greedy continuations
//! token for token (golden file made by scripts/golden-llamacpp.py).

use std::path::PathBuf;
use std::sync::Arc;

use tuili_formats::GgufFile;
use tuili_model::{Logits, Model, Scratch};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn id_list(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn stories260k_matches_llama_cpp() {
    let file =
        GgufFile::open(root().join("../shared/fixtures/models/stories260K/stories260K.gguf"))
            .unwrap();
    let model = Model::load(Arc::new(file)).unwrap();
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/golden/stories260K-llamacpp.json")).unwrap(),
    )
    .unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for threads in [1, 2] {
        for case in cases {
            let ids: Vec<u32> = id_list(&case["prompt_ids"]);
            let want_logits: Vec<f32> = floats(&case["first_logits"]);
            let want_ids: Vec<u32> = id_list(&case["greedy_ids"]);
            let mut kv = model.new_cache(512).unwrap();
            let mut scratch = Scratch::new();
            let logits = model
                .forward(&ids, &mut kv, &mut scratch, Logits::Last, pool(threads))
                .unwrap()
                .to_vec();
            let max_abs = logits
                .iter()
                .zip(&want_logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                max_abs < 1e-3,
                "prompt {:?}: first-step logits differ by {max_abs}",
                case["prompt"]
            );
            eprintln!(
                "threads {threads} prompt {:?}: max |Δlogit| vs llama.cpp = {max_abs:.2e}",
                case["prompt"]
            );
            let mut got = Vec::new();
            let mut next = argmax(&logits);
            for _ in 0..want_ids.len() {
                got.push(next);
                if next == 2 || got.len() == want_ids.len() {
                    break;
                }
                let l = model
                    .forward(&[next], &mut kv, &mut scratch, Logits::Last, pool(threads))
                    .unwrap();
                next = argmax(l);
            }
            assert_eq!(got, want_ids, "prompt {:?}", case["prompt"]);
        }
    }
}

/// The float64 reference in the fixtures (checked there against llama2.c's published story):
/// 256 greedy tokens from BOS.
#[test]
fn stories260k_matches_float64_reference_for_256_tokens() {
    let file =
        GgufFile::open(root().join("../shared/fixtures/models/stories260K/stories260K.gguf"))
            .unwrap();
    let model = Model::load(Arc::new(file)).unwrap();
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("../shared/fixtures/models/stories260K/reference_greedy.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let want: Vec<u32> = id_list(&r["generated_ids"]);
    let want_logits: Vec<f32> = floats(&r["logits_after_bos_full"]);
    let mut kv = model.new_cache(512).unwrap();
    let mut scratch = Scratch::new();
    let logits = model
        .forward(&[1], &mut kv, &mut scratch, Logits::Last, pool(2))
        .unwrap()
        .to_vec();
    let max_abs = logits
        .iter()
        .zip(&want_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_abs < 1e-4, "{max_abs}");
    let mut next = argmax(&logits);
    let mut got = vec![];
    while got.len() < want.len() {
        got.push(next);
        next = argmax(
            model
                .forward(&[next], &mut kv, &mut scratch, Logits::Last, pool(2))
                .unwrap(),
        );
    }
    assert_eq!(got, want);
}

/// Shared pools (one of each size) for the tests of this file.
fn pool(n: usize) -> &'static tuili_core::ThreadPool {
    use std::sync::OnceLock;
    static POOLS: [OnceLock<tuili_core::ThreadPool>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    POOLS[n.min(2)].get_or_init(|| tuili_core::ThreadPool::new(n))
}
