//! Wanda and SparseGPT against a numpy re-implementation of the papers' reference code on a
//! synthetic layer (`scripts/golden-prune.py` → `tests/golden/prune.json`).

use serde_json::Value;
use tuili_model::prune::{by_score, sparsegpt, Pattern};

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn wanda_and_sparsegpt_match_the_reference_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/prune.json");
    let g: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (rows, cols, tokens) = (
        g["rows"].as_u64().unwrap() as usize,
        g["cols"].as_u64().unwrap() as usize,
        g["tokens"].as_u64().unwrap() as usize,
    );
    let w: Vec<f32> = floats(&g["w"]).iter().map(|&v| v as f32).collect();
    let x = floats(&g["x"]);
    assert_eq!(x.len(), tokens * cols);
    // What the calibration run records: Σ x_j² and Σ x·xᵀ.
    let mut sumsq = vec![0f64; cols];
    let mut gram = vec![0f64; cols * cols];
    for t in x.chunks_exact(cols) {
        for i in 0..cols {
            sumsq[i] += t[i] * t[i];
            for j in 0..cols {
                gram[i * cols + j] += t[i] * t[j];
            }
        }
    }
    let norm: Vec<f32> = sumsq.iter().map(|&v| v.sqrt() as f32).collect();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for c in cases {
        let p = c["pattern"].as_array().unwrap();
        let pattern = match p[0].as_str().unwrap() {
            "u" => Pattern::Unstructured(p[1].as_f64().unwrap() as f32),
            _ => Pattern::NofM {
                n: p[1].as_u64().unwrap() as usize,
                m: p[2].as_u64().unwrap() as usize,
            },
        };
        let want = floats(&c["out"]);
        let mut got = w.clone();
        let method = c["method"].as_str().unwrap();
        if method == "wanda" {
            by_score(&mut got, cols, &norm, pattern);
        } else {
            let mut h: Vec<f64> = gram.iter().map(|&v| v * 2.0 / tokens as f64).collect();
            let block = c["block"].as_u64().unwrap() as usize;
            sparsegpt::prune(&mut got, rows, cols, &mut h, pattern, block).unwrap();
        }
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            let what = format!("{method} {pattern} block {}: weight {i}", c["block"]);
            assert_eq!(a == 0.0, b == 0.0, "{what}: {a} against {b} (the mask)");
            assert!(
                (a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{what}: {a} against {b}"
            );
        }
        // The pattern holds in every group of every row.
        if let Pattern::NofM { n, m } = pattern {
            for row in got.chunks_exact(cols) {
                for g in row.chunks_exact(m) {
                    assert!(g.iter().filter(|&&v| v != 0.0).count() <= n);
                }
            }
        }
    }
}
