//! Hugging Face folders: the real TinyStories-656K checkpoint (config.json, safetensors with a
//! tied lm_head and no embedding tensor, tokenizer.json) against the fixtures' float64
//! reference (HF Llama semantics): prompt ids, last-prompt logits, 65 greedy tokens and the
//! perplexity of a text.

use std::ops::ControlFlow;
use std::path::PathBuf;

use tuili_engine::{Engine, EngineConfig, GenerateRequest};
use tuili_model::{Logits, Scratch};
use tuili_sample::SamplingParams;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/models/tinystories-656k-hf")
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn engine() -> Engine {
    Engine::load(
        dir(),
        EngineConfig {
            n_ctx: 512,
            n_batch: 32,
            threads: 2,
        },
    )
    .unwrap()
}

#[test]
fn matches_the_float64_reference() {
    let r = json("reference_greedy.json");
    let e = engine();
    let prompt = e
        .tokenizer()
        .encode(r["prompt"].as_str().unwrap(), true, true)
        .unwrap();
    assert_eq!(prompt, ids(&r["prompt_ids"]));
    // Logits after the prompt.
    let m = e.model();
    let mut kv = m.new_cache(64).unwrap();
    let mut s = Scratch::new();
    let logits = m
        .forward(&prompt, &mut kv, &mut s, Logits::Last, e.pool())
        .unwrap();
    let want: Vec<f64> = r["last_prompt_logits_full"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let max_err = logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(max_err < 1e-4, "max |Δlogit| = {max_err}");
    // Greedy continuation.
    let want_ids = ids(&r["generated_ids"]);
    let stats = e
        .generate(
            &GenerateRequest::new(
                r["prompt"].as_str().unwrap(),
                want_ids.len(),
                SamplingParams::greedy(),
            ),
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(stats.first().tokens, want_ids);
    assert!(r["decoded"]
        .as_str()
        .unwrap()
        .contains(stats.first().text.trim()));
}

/// The fixture's protocol: chunks of 128 ids from position 0, every id but the first of each
/// chunk predicted.
#[test]
fn perplexity_matches_the_reference() {
    let r = json("reference_ppl_tinystories_sample.json");
    let e = engine();
    let text = std::fs::read_to_string(dir().join("../../text/tinystories_sample.txt")).unwrap();
    let all = e.tokenizer().encode(&text, true, false).unwrap();
    assert_eq!(all.len() as u64, r["n_ids"].as_u64().unwrap());
    let m = e.model();
    let nv = m.config().n_vocab;
    let (mut nll, mut count) = (0f64, 0usize);
    for chunk in all.chunks(128) {
        let mut kv = m.new_cache(128).unwrap();
        let mut s = Scratch::new();
        let logits = m
            .forward(chunk, &mut kv, &mut s, Logits::All, e.pool())
            .unwrap();
        for i in 0..chunk.len() - 1 {
            let row = &logits[i * nv..(i + 1) * nv];
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[chunk[i + 1] as usize] as f64;
            count += 1;
        }
    }
    assert_eq!(count as u64, r["n_predicted"].as_u64().unwrap());
    let ppl = (nll / count as f64).exp();
    let want = r["ppl"].as_f64().unwrap();
    assert!((ppl - want).abs() / want < 1e-4, "ppl {ppl} vs {want}");
}

#[test]
fn bad_folders_are_clear_errors() {
    let tmp = std::env::temp_dir().join(format!("tuili-hf-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let err = |what: &str| {
        let e = Engine::load(&tmp, EngineConfig::default())
            .err()
            .expect(what)
            .to_string();
        assert!(!e.is_empty());
        e
    };
    assert!(err("no config").contains("config.json"));
    std::fs::copy(dir().join("config.json"), tmp.join("config.json")).unwrap();
    assert!(err("no weights").contains("safetensors"));
    // A truncated checkpoint.
    let st = std::fs::read(dir().join("model.safetensors")).unwrap();
    std::fs::write(tmp.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    err("truncated");
    std::fs::write(
        tmp.join("model.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
    )
    .unwrap();
    err("garbage header");
    std::fs::write(tmp.join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
    assert!(err("unsupported").contains("t5"));
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A session keeps the conversation in its cache: a second turn processes only what is new,
/// and greedy output equals a fresh run on the whole context (so the reused keys and values
/// are right).
#[test]
fn sessions_reuse_the_cache() {
    let e = engine();
    let tok = e.tokenizer();
    let mut s = e.new_session().unwrap();
    let req = GenerateRequest::new("", 20, SamplingParams::greedy());
    let p1 = tok.encode("Once upon a time", true, true).unwrap();
    let t1 = e
        .generate_in_session(&mut s, p1.clone(), &req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(t1.reused, 0);
    let reply = t1.stats.first().tokens.clone();
    // The cache holds the prompt and every reply token but the last (never fed back).
    assert_eq!(s.tokens().len(), p1.len() + reply.len() - 1);
    // Turn 2: the whole context so far plus new text.
    let mut p2 = p1.clone();
    p2.extend_from_slice(&reply);
    p2.extend(tok.encode(" The end. Then", false, true).unwrap());
    let t2 = e
        .generate_in_session(&mut s, p2.clone(), &req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(t2.reused, p1.len() + reply.len() - 1);
    assert_eq!(t2.stats.prompt_tokens.len(), p2.len() - t2.reused);
    // The same as a fresh generation from the full context.
    let fresh = e
        .generate_from(p2.clone(), &req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(t2.stats.first().tokens, fresh.first().tokens);
    // A context that diverges early: truncated to the common prefix, still right.
    let mut p3 = p1[..3].to_vec();
    p3.extend(tok.encode(" a dog", false, true).unwrap());
    let t3 = e
        .generate_in_session(&mut s, p3.clone(), &req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(t3.reused, 3);
    let fresh = e
        .generate_from(p3, &req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(t3.stats.first().tokens, fresh.first().tokens);
    s.reset();
    assert!(s.tokens().is_empty());
}

/// `tuili quantize` from a folder: the GGUF it writes (F32, so nothing is lost) tokenizes as
/// tokenizer.json does and computes the same logits (the Q/K rows were permuted for GGUF's
/// RoPE layout and the tokenizer's merges became scores); llama.cpp reads it too (the README
/// has its perplexity next to tuili's).
#[test]
fn converts_to_gguf() {
    use tuili_model::quantize::{quantize, FileType, QuantizeOptions};
    let st = tuili_formats::Safetensors::open_dir(dir()).unwrap();
    let input = tuili_model::arch::hf_input(&dir(), &st).unwrap();
    let out = std::env::temp_dir().join(format!("tuili-convert-{}.gguf", std::process::id()));
    let opts = QuantizeOptions::new(FileType::F32, 2);
    quantize(&input, &out, &opts, &mut |_, _| {}).unwrap();
    let cfg = EngineConfig {
        n_ctx: 256,
        n_batch: 32,
        threads: 2,
    };
    let (hf, gg) = (engine(), Engine::load(&out, cfg).unwrap());
    let text = std::fs::read_to_string(dir().join("../../text/tinystories_sample.txt")).unwrap();
    let a = hf.tokenizer().encode(&text, true, false).unwrap();
    assert_eq!(a, gg.tokenizer().encode(&text, true, false).unwrap());
    assert_eq!(hf.tokenizer().adds_bos(), gg.tokenizer().adds_bos());
    let logits = |e: &Engine| {
        let m = e.model();
        let mut kv = m.new_cache(64).unwrap();
        let mut s = Scratch::new();
        m.forward(&a[..40], &mut kv, &mut s, Logits::All, e.pool())
            .unwrap()
            .to_vec()
    };
    let (x, y) = (logits(&hf), logits(&gg));
    let max = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-4, "max |Δlogit| = {max}");
    std::fs::remove_file(&out).unwrap();
}

/// Tokenizer conversion to GGUF metadata, checked on real tokenizer.json files: the GGUF
/// vocabulary tokenizes the vocab test texts exactly as tokenizer.json does (GPT-2 byte-level
/// BPE; Phi-3's SentencePiece-style BPE).
#[test]
fn tokenizers_convert_to_gguf() {
    let fixtures = dir().join("../../tokenizers");
    let texts: Vec<String> = ["gpt-2", "phi-3", "llama-spm"]
        .iter()
        .filter_map(|n| {
            std::fs::read_to_string(dir().join(format!("../../vocab/ggml-vocab-{n}.gguf.inp"))).ok()
        })
        .flat_map(|s| {
            s.split("\n__ggml_vocab_test__\n")
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(texts.len() > 20);
    for name in ["gpt2", "phi-3-mini"] {
        let d = fixtures.join(name);
        let md = tuili_model::convert::tokenizer_metadata(&d).unwrap();
        let mut w = tuili_formats::GgufWriter::new();
        w.set_str("general.architecture", "llama");
        for (k, v) in md {
            w.set(&k, v);
        }
        let f = tuili_formats::GgufFile::from_bytes("vocab.gguf", w.to_bytes()).unwrap();
        let from_gguf = tuili_tokenizer::Tokenizer::from_gguf(&f).unwrap();
        let from_json =
            tuili_tokenizer::Tokenizer::from_tokenizer_json(d.join("tokenizer.json")).unwrap();
        let mut same = 0;
        for t in &texts {
            let a = from_gguf.encode(t, false, false).unwrap();
            let b = from_json.encode(t, false, false).unwrap();
            assert_eq!(a, b, "{name}: {t:?}");
            same += 1;
        }
        assert_eq!(same, texts.len());
    }
}

/// GPT-2 from a folder (tiny-random-gpt2: Conv1D weights, learned positions, LayerNorm,
/// gelu_new, tied head) against the fixtures' float64 reference: the prompt's tokens, every
/// position's logits, and 16 greedy tokens.
#[test]
fn gpt2_matches_the_float64_reference() {
    let d = dir().join("../tiny-random-gpt2-hf");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reference_logits.json")).unwrap())
            .unwrap();
    let e = Engine::load(
        &d,
        EngineConfig {
            n_ctx: 64,
            n_batch: 8,
            threads: 2,
        },
    )
    .unwrap();
    let prompt = e
        .tokenizer()
        .encode(r["prompt"].as_str().unwrap(), true, true)
        .unwrap();
    assert_eq!(prompt, ids(&r["prompt_ids"]));
    let m = e.model();
    let nv = m.config().n_vocab;
    let mut kv = m.new_cache(64).unwrap();
    let mut s = Scratch::new();
    let got = m
        .forward(&prompt, &mut kv, &mut s, Logits::All, e.pool())
        .unwrap();
    let want: Vec<f64> = r["logits_all_positions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    assert_eq!(want.len(), prompt.len() * nv);
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(max < 1e-4, "max |Δlogit| = {max}");
    let stats = e
        .generate_from(
            prompt,
            &GenerateRequest::new("", 16, SamplingParams::greedy()),
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(stats.first().tokens, ids(&r["greedy_16_ids"]));
    // Converted to a GGUF (gpt2 names, Conv1D transposed, byte-level BPE vocabulary): the same
    // tokens and logits through the GGUF path.
    let st = tuili_formats::Safetensors::open_dir(&d).unwrap();
    let input = tuili_model::arch::hf_input(&d, &st).unwrap();
    let out = std::env::temp_dir().join(format!("tuili-gpt2-{}.gguf", std::process::id()));
    let opts = tuili_model::quantize::QuantizeOptions::new(tuili_model::quantize::FileType::F32, 1);
    tuili_model::quantize::quantize(&input, &out, &opts, &mut |_, _| {}).unwrap();
    let g = Engine::load(
        &out,
        EngineConfig {
            n_ctx: 64,
            n_batch: 8,
            threads: 2,
        },
    )
    .unwrap();
    assert_eq!(g.model().config().arch.name, "gpt2");
    let gp = g
        .tokenizer()
        .encode(r["prompt"].as_str().unwrap(), true, true)
        .unwrap();
    assert_eq!(gp, ids(&r["prompt_ids"]));
    let mut kv = g.model().new_cache(64).unwrap();
    let mut s2 = Scratch::new();
    let again = g
        .model()
        .forward(&gp, &mut kv, &mut s2, Logits::All, g.pool())
        .unwrap();
    let conv = again
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(conv < 1e-4, "GGUF max |Δlogit| = {conv}");
    std::fs::remove_file(&out).unwrap();
}
