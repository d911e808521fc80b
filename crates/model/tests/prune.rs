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

/// A model pruned 2:4, 4:8 or unstructured (50 %, 70 %) and stored in a sparse layout gives
/// the logits of the same pruned model stored dense in Q8_0 or Q4_0 (through the dense
/// kernels): the kept values are the very ones the dense type stores. Through the scalar kernels (whose sums run in the same
/// order) bit for bit; through this machine's SIMD kernels within their rounding (measured:
/// under 4e-7 of the largest logit; the activations' int8 requantization between layers could
/// turn a rounding difference into a step of one quantum, about 1e-3, which this model does
/// not meet). Prompt (matrix kernels) and decode (row kernels) both.
#[test]
fn sparse_layouts_give_the_dense_pruned_logits() {
    use std::sync::Arc;
    use tuili_core::{DType, ThreadPool};
    use tuili_formats::{GgufFile, GgufWriter};
    use tuili_kernels::cpu::Isa;
    use tuili_kernels::types::{dequantize_row, quantize_row};
    use tuili_model::prune::{is_prunable, sparse_layout};
    use tuili_model::synth::{synth_gguf, SynthSpec};
    use tuili_model::{Logits, Model, Scratch};

    let spec = SynthSpec {
        n_embd: 256,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 640,
        n_layer: 2,
        ..SynthSpec::tiny(DType::F32)
    };
    let f = GgufFile::from_bytes("synthetic.gguf", synth_gguf(&spec).unwrap().to_bytes()).unwrap();
    let pool = ThreadPool::new(2);
    let tokens: Vec<u32> = (1..40).map(|i| (i * 37 % 250) as u32).collect();
    for (base, pattern) in [
        (DType::Q8_0, Pattern::NofM { n: 2, m: 4 }),
        (DType::Q8_0, Pattern::NofM { n: 4, m: 8 }),
        (DType::Q4_0, Pattern::NofM { n: 2, m: 4 }),
        (DType::Q4_0, Pattern::NofM { n: 4, m: 8 }),
        (DType::Q8_0, Pattern::Unstructured(0.7)),
        (DType::Q8_0, Pattern::Unstructured(0.5)),
    ] {
        let mut out = Vec::new();
        for sparse in [false, true] {
            let mut w = GgufWriter::new();
            for (k, v) in &f.metadata {
                w.set(k, v.clone());
            }
            let mut n_sparse = 0;
            for t in f.tensor_views() {
                let cols = t.info.shape[0] as usize;
                if !is_prunable(&t.info.name, &t.info.shape) {
                    w.add_tensor(&t.info.name, t.info.dtype, &t.info.shape, t.data.to_vec())
                        .unwrap();
                    continue;
                }
                let n = t.info.n_elements() as usize;
                let mut vals = vec![0f32; n];
                dequantize_row(t.info.dtype, t.data, &mut vals).unwrap();
                by_score(&mut vals, cols, &vec![1.0; cols], pattern);
                let most = vals
                    .chunks_exact(cols)
                    .map(|r| r.iter().filter(|v| **v != 0.0).count())
                    .max()
                    .unwrap() as u64;
                let to = match sparse_layout(base, pattern, cols as u64, most) {
                    Some(l) if sparse => l,
                    _ => base,
                };
                n_sparse += usize::from(to != base);
                let mut q = vec![0u8; to.bytes_for(n as u64).unwrap() as usize];
                // Row by row (an unstructured row's values share one pool).
                let rb = q.len() / (n / cols);
                for (x, o) in vals.chunks_exact(cols).zip(q.chunks_exact_mut(rb)) {
                    quantize_row(to, x, o).unwrap();
                }
                w.add_tensor(&t.info.name, to, &t.info.shape, q).unwrap();
            }
            assert_eq!(n_sparse, if sparse { 14 } else { 0 }, "{base} {pattern}");
            let mut m = Model::load(Arc::new(
                GgufFile::from_bytes("mem.gguf", w.to_bytes()).unwrap(),
            ))
            .unwrap();
            let mut per_isa = Vec::new();
            for isa in [Isa::Scalar, tuili_kernels::cpu::detect()] {
                m.set_isa(isa);
                let mut kv = m.new_cache(64).unwrap();
                let mut s = Scratch::new();
                let mut l = m
                    .forward(&tokens[..30], &mut kv, &mut s, Logits::All, &pool)
                    .unwrap()
                    .to_vec();
                // And a few decode steps, one token each.
                for &t in &tokens[30..] {
                    l.extend_from_slice(
                        m.forward(&[t], &mut kv, &mut s, Logits::Last, &pool)
                            .unwrap(),
                    );
                }
                per_isa.push(l);
            }
            out.push(per_isa);
        }
        assert_eq!(out[0][0], out[1][0], "{base} {pattern}: scalar kernels");
        let (dense, sparse) = (&out[0][1], &out[1][1]);
        let scale = dense.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = dense
            .iter()
            .zip(sparse)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{base} {pattern}: SIMD logits differ by {:.2e} of the largest",
            worst / scale
        );
        assert!(
            worst <= 1e-5 * scale,
            "{base} {pattern}: {worst} of {scale}"
        );
    }
}

/// A sparse file whose keep-masks break the 4-of-8 or 2:4 rule, or keep more values than an
/// unstructured row's pool holds, is refused at load, naming the tensor and the super-block
/// (its kernels would read other blocks' values).
#[test]
fn malformed_sparse_blocks_are_refused() {
    use std::sync::Arc;
    use tuili_core::DType;
    use tuili_formats::GgufFile;
    use tuili_model::synth::{synth_gguf, SynthSpec};
    use tuili_model::{Model, ModelError};

    // A one-layer model in `dtype` loads; with `corrupt` applied to byte `at` of `tensor` it
    // is refused, naming the tensor, super-block `block` and the type.
    let check = |dtype: DType, tensor: &str, at: usize, block: usize, corrupt: fn(&mut u8)| {
        let spec = SynthSpec {
            n_layer: 1,
            ..SynthSpec::tiny(dtype)
        };
        let mut bytes = synth_gguf(&spec).unwrap().to_bytes();
        let f = GgufFile::from_bytes("ok.gguf", bytes.clone()).unwrap();
        let t = f.tensor_info(tensor).unwrap();
        assert_eq!(t.dtype, dtype);
        let off = f.tensor_range(t).start + at;
        assert!(Model::load(Arc::new(f)).is_ok());
        corrupt(&mut bytes[off]);
        let bad = GgufFile::from_bytes("bad.gguf", bytes).unwrap();
        match Model::load(Arc::new(bad)) {
            Err(ModelError::MalformedBlock {
                name,
                block: b,
                dtype: d,
                ..
            }) => {
                assert_eq!((name.as_str(), b, d), (tensor, block, dtype))
            }
            other => panic!("{dtype}: {:?}", other.err()),
        }
    };
    // 4:8: block 3's first mask byte with five bits set.
    check(DType::Q8_0_48, "blk.0.ffn_up.weight", 3 * 88, 3, |b| {
        *b = 0b0001_1111
    });
    // 2:4: group 0 of super-block 5 coded 7 (b0 b1 b2 all set: four kept).
    check(DType::Q4_0_24, "blk.0.attn_k.weight", 5 * 52, 5, |b| {
        *b |= 7
    });
    // Unstructured: rows of 256 (two super-blocks, heads at 0 and 24, room for 80 values,
    // all used); row 1's second super-block keeps eight more than its mask said — more than
    // the pool holds (super-block 1 of row 1 is the tensor's third).
    check(
        DType::Q8_0_U40,
        "blk.0.ffn_up.weight",
        128 + 24 + 8,
        3,
        |b| *b = 0xFF,
    );
}
