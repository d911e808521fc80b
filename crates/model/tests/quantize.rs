//! `quantize` against llama-quantize (goldens from `scripts/golden-quantize.sh`): for every
//! file type, the same type for every tensor and the same bytes, on the synthetic `test` model.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tuili_core::{DType, ThreadPool};
use tuili_formats::GgufFile;
use tuili_model::quantize::{partial_path, quantize, FileType, QuantInput, QuantizeOptions};
use tuili_model::synth::{synth_gguf, SynthSpec};
use tuili_model::{Logits, Model, ModelError, Scratch};

fn tmp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tuili-quantize-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(ftype: FileType) -> QuantizeOptions {
    QuantizeOptions::new(ftype, 2)
}

fn logits(m: &Model) -> Vec<f32> {
    let pool = ThreadPool::new(1);
    let mut kv = m.new_cache(8).unwrap();
    let mut s = Scratch::new();
    m.forward(&[1, 300, 301, 302], &mut kv, &mut s, Logits::Last, &pool)
        .unwrap()
        .to_vec()
}

#[test]
fn every_file_type_equals_llama_quantize() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/golden/quantize-llamacpp.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let dir = tmp_dir();
    let input = dir.join("f32.gguf");
    synth_gguf(&SynthSpec::named("test", DType::F32, 42).unwrap())
        .unwrap()
        .write(&input)
        .unwrap();
    let src = GgufFile::open(&input).unwrap();
    let base = logits(&Model::load(Arc::new(GgufFile::open(&input).unwrap())).unwrap());
    for (name, want) in golden["types"].as_object().unwrap() {
        let ft = FileType::parse(name).unwrap();
        let out = dir.join(format!("{name}.gguf"));
        let mut seen = 0;
        let report = quantize(
            &QuantInput::from_gguf(&src),
            &out,
            &opts(ft),
            &mut |i, _| {
                assert_eq!(i, seen);
                seen += 1;
            },
        )
        .unwrap();
        assert_eq!(seen, report.plans.len());
        assert!(!partial_path(&out).exists());
        let f = GgufFile::open(&out).unwrap();
        // Hashed in name order (llama-quantize writes tensors in its loader's order).
        let mut views: Vec<_> = f.tensor_views().collect();
        views.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        let mut h = Sha256::new();
        for t in &views {
            let want_type = want["tensors"][&t.info.name].as_str().unwrap();
            assert_eq!(t.info.dtype.name(), want_type, "{name}: {}", t.info.name);
            h.update(t.data);
        }
        drop(views);
        let got = h
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        assert_eq!(
            got,
            want["sha256"].as_str().unwrap(),
            "{name}: tensor bytes differ"
        );
        assert_eq!(
            f.get_u64("general.file_type").unwrap(),
            Some(ft.llama_id() as u64)
        );
        // The quantized model runs, and stays close to the F32 one.
        let q = logits(&Model::load(Arc::new(f)).unwrap());
        let (num, den) = q.iter().zip(&base).fold((0f64, 0f64), |(n, d), (a, b)| {
            (n + ((a - b) as f64).powi(2), d + (*b as f64).powi(2))
        });
        let nmse = num / den;
        // Logit error shrinks about 4× per bit of the base type (measured here: Q2_K 0.43,
        // Q3_K_M 0.12, Q4_K_M 0.036, Q5_K_M 0.0078, Q6_K 0.0029, Q8_0 0.00042).
        let bound = 5.0 * 4f64.powf(2.0 - ft.base().bits_per_weight());
        assert!(
            q.iter().all(|v| v.is_finite()) && nmse < bound,
            "{name}: NMSE {nmse} ≥ {bound}"
        );
        std::fs::remove_file(&out).unwrap();
    }
    std::fs::remove_file(&input).unwrap();
}

#[test]
fn refusals_leave_no_file() {
    let dir = tmp_dir().join("refusals");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("q4.gguf");
    synth_gguf(&SynthSpec::named("test", DType::Q4_0, 1).unwrap())
        .unwrap()
        .write(&input)
        .unwrap();
    let src = GgufFile::open(&input).unwrap();
    let out = dir.join("q8.gguf");
    match quantize(
        &QuantInput::from_gguf(&src),
        &out,
        &opts(FileType::Q8_0),
        &mut |_, _| {},
    ) {
        Err(ModelError::Quantize { reason, .. }) => assert!(reason.contains("--allow-requantize")),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists() && !partial_path(&out).exists());
    // Allowed on request.
    let mut o = opts(FileType::Q8_0);
    o.allow_requantize = true;
    quantize(&QuantInput::from_gguf(&src), &out, &o, &mut |_, _| {}).unwrap();
    assert!(out.exists());
    // An output directory that does not exist: an error naming the path.
    let bad = dir.join("no/such/dir/x.gguf");
    match quantize(&QuantInput::from_gguf(&src), &bad, &o, &mut |_, _| {}) {
        Err(ModelError::Io { path, .. }) => assert!(path.contains("no/such/dir")),
        other => panic!("{other:?}"),
    }
    assert!(
        FileType::parse("q4_k").unwrap() == FileType::Q4_K_M && FileType::parse("Q9_9").is_none()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
