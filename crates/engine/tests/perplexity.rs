//! Perplexity as llama-perplexity computes it (goldens from `scripts/golden-perplexity.sh`),
//! KL divergence against a saved base, and clear errors for bad inputs.

use std::path::PathBuf;

use tuili_engine::KvType;
use tuili_engine::{Engine, EngineConfig, EngineError, KlBase, PerplexityParams};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

fn engine(n_ctx: usize) -> Engine {
    Engine::load(
        fixtures().join("models/stories260K/stories260K.gguf"),
        EngineConfig {
            n_ctx,
            n_batch: 64,
            threads: 2,
        },
    )
    .unwrap()
}

#[test]
fn matches_llama_perplexity() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/golden/perplexity-llamacpp.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let ctx = case["ctx"].as_u64().unwrap() as usize;
        let chunks = case["chunks"].as_i64().unwrap();
        let text =
            std::fs::read(fixtures().join("text").join(case["text"].as_str().unwrap())).unwrap();
        let text = String::from_utf8_lossy(&text);
        let e = engine(ctx);
        let mut seen = 0;
        let r = e
            .perplexity(
                &text,
                &PerplexityParams {
                    n_ctx: ctx,
                    n_chunks: (chunks > 0).then_some(chunks as usize),
                    kv_type: None,
                },
                None,
                None,
                &mut |p| {
                    seen += 1;
                    assert_eq!(p.done, seen);
                    assert!(p.ppl.is_finite() && p.kld.is_none());
                },
            )
            .unwrap();
        let want = case["ppl"].as_f64().unwrap();
        let rel = (r.ppl - want).abs() / want;
        assert!(
            rel < 0.005,
            "{case}: tuili {} vs llama.cpp {want} ({:.4}%)",
            r.ppl,
            100.0 * rel
        );
        let want_err = case["stderr"].as_f64().unwrap();
        assert!((r.ppl_stderr - want_err).abs() / want_err < 0.01);
        assert_eq!(seen, r.n_chunks);
        assert_eq!(r.count, r.n_chunks * (ctx - 1 - ctx / 2));
    }
}

#[test]
fn kl_divergence_against_a_saved_base() {
    let text = std::fs::read_to_string(fixtures().join("text/tinystories_sample.txt")).unwrap();
    let e = engine(128);
    let p = PerplexityParams {
        n_ctx: 128,
        n_chunks: Some(4),
        kv_type: None,
    };
    let mut saved = Vec::new();
    let base = e
        .perplexity(&text, &p, Some(&mut saved), None, &mut |_| {})
        .unwrap();
    assert!(base.kl.is_none());
    // The same model against itself: KL ≈ 0 (the saved log-probabilities are f16), same top-1.
    let mut r = saved.as_slice();
    let same = e
        .perplexity(
            &text,
            &p,
            None,
            Some(KlBase { reader: &mut r }),
            &mut |_| {},
        )
        .unwrap();
    let kl = same.kl.unwrap();
    assert!(kl.mean_kld.abs() < 1e-4, "{kl:?}");
    assert_eq!(kl.same_top, 1.0);
    assert!((kl.ppl_base - base.ppl).abs() / base.ppl < 1e-3);
    // Fewer chunks than the base holds is fine; a different window is refused.
    let mut r = saved.as_slice();
    let two = PerplexityParams {
        n_ctx: 128,
        n_chunks: Some(2),
        kv_type: None,
    };
    assert!(e
        .perplexity(
            &text,
            &two,
            None,
            Some(KlBase { reader: &mut r }),
            &mut |_| {}
        )
        .is_ok());
    let e64 = engine(64);
    let mut r = saved.as_slice();
    let other = PerplexityParams {
        n_ctx: 64,
        n_chunks: Some(4),
        kv_type: None,
    };
    assert!(matches!(
        e64.perplexity(
            &text,
            &other,
            None,
            Some(KlBase { reader: &mut r }),
            &mut |_| {}
        ),
        Err(EngineError::Io(_))
    ));
    // A truncated or foreign base is an error, not a panic.
    for bad in [
        &saved[..saved.len() / 2],
        &saved[..10],
        &b"GGUF and more bytes......"[..],
    ] {
        let mut r = bad;
        assert!(matches!(
            e.perplexity(
                &text,
                &p,
                None,
                Some(KlBase { reader: &mut r }),
                &mut |_| {}
            ),
            Err(EngineError::Io(_))
        ));
    }
    // Too short a text for the window.
    assert!(matches!(
        e.perplexity("Once upon a time", &p, None, None, &mut |_| {}),
        Err(EngineError::BadSetting { name: "ctx", .. })
    ));
}

/// The paged cache computes what the contiguous one does (F32, to rounding); F16 keys and
/// values cost little perplexity (here, and in the README's table).
#[test]
fn paged_cache_types() {
    let text = std::fs::read_to_string(fixtures().join("text/tinystories_sample.txt")).unwrap();
    let e = engine(128);
    let run = |kv_type| {
        e.perplexity(
            &text,
            &PerplexityParams {
                n_ctx: 128,
                n_chunks: Some(6),
                kv_type,
            },
            None,
            None,
            &mut |_| {},
        )
        .unwrap()
        .ppl
    };
    let base = run(None);
    let f32p = run(Some(KvType::F32));
    let f16p = run(Some(KvType::F16));
    assert!((f32p - base).abs() / base < 1e-5, "{f32p} vs {base}");
    assert!((f16p - base).abs() / base < 1e-2, "{f16p} vs {base}");
    assert_ne!(f16p, base, "F16 rounding must show");
}
