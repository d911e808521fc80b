//! Each Llama-family architecture read from a Hugging Face folder (llama, llama with Llama 3.1
//! RoPE scaling, mistral, qwen2 with
//! Q/K/V biases, qwen3 with Q/K head norms, an explicit head_dim and tied embeddings, phi3
//! with fused Q/K/V and gate/up projections and half-rotary heads) against
//! `scripts/golden-hf-archs.py`, a numpy re-implementation of transformers' modeling code on
//! the same random weights: every position's logits within 1e-4.

use std::collections::BTreeMap;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tuili_core::ThreadPool;
use tuili_model::{Logits, Scratch};

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The script's generator: 20-bit uniforms, exact in f32.
fn tensor(name: &str, n: usize, norm: bool) -> Vec<f32> {
    let h = fnv1a(name);
    (0..n)
        .map(|i| {
            let u = (splitmix(h ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 44) as f64
                / (1u64 << 20) as f64;
            (if norm {
                0.5 + u * 0.5
            } else {
                (u - 0.5) * 0.25
            }) as f32
        })
        .collect()
}

/// HF tensor names and shapes, as the script lists them.
fn shapes(c: &serde_json::Value) -> Vec<(String, Vec<usize>, bool)> {
    let g = |k: &str| c[k].as_u64().unwrap() as usize;
    let (e, f, v, nh, nkv) = (
        g("hidden_size"),
        g("intermediate_size"),
        g("vocab_size"),
        g("num_attention_heads"),
        g("num_key_value_heads"),
    );
    let hd = c["head_dim"].as_u64().map(|x| x as usize).unwrap_or(e / nh);
    let (q, kv) = (nh * hd, nkv * hd);
    let ty = c["model_type"].as_str().unwrap();
    let mut out = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, e], false),
        ("model.norm.weight".to_string(), vec![e], true),
    ];
    if c["tie_word_embeddings"] == false {
        out.push(("lm_head.weight".into(), vec![v, e], false));
    }
    for i in 0..g("num_hidden_layers") {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        out.push((p("input_layernorm.weight"), vec![e], true));
        out.push((p("post_attention_layernorm.weight"), vec![e], true));
        if ty == "phi3" {
            out.push((p("self_attn.qkv_proj.weight"), vec![q + 2 * kv, e], false));
            out.push((p("mlp.gate_up_proj.weight"), vec![2 * f, e], false));
        } else {
            out.push((p("self_attn.q_proj.weight"), vec![q, e], false));
            out.push((p("self_attn.k_proj.weight"), vec![kv, e], false));
            out.push((p("self_attn.v_proj.weight"), vec![kv, e], false));
            out.push((p("mlp.gate_proj.weight"), vec![f, e], false));
            out.push((p("mlp.up_proj.weight"), vec![f, e], false));
        }
        out.push((p("self_attn.o_proj.weight"), vec![e, q], false));
        out.push((p("mlp.down_proj.weight"), vec![e, f], false));
        if ty == "qwen2" {
            out.push((p("self_attn.q_proj.bias"), vec![q], false));
            out.push((p("self_attn.k_proj.bias"), vec![kv], false));
            out.push((p("self_attn.v_proj.bias"), vec![kv], false));
        }
        if ty == "qwen3" {
            out.push((p("self_attn.q_norm.weight"), vec![hd], true));
            out.push((p("self_attn.k_norm.weight"), vec![hd], true));
        }
        if ty == "gemma2" {
            out.push((p("pre_feedforward_layernorm.weight"), vec![e], true));
            out.push((p("post_feedforward_layernorm.weight"), vec![e], true));
        }
    }
    out
}

#[test]
fn every_architecture_matches_the_reference() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/golden/hf-archs.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let tokens: Vec<u32> = golden["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let pool = ThreadPool::new(2);
    let models = golden["models"].as_object().unwrap();
    assert_eq!(models.len(), 8);
    for (name, m) in models {
        let cfg = &m["config"];
        let dir = std::env::temp_dir().join(format!("tuili-hf-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes(cfg)
            .into_iter()
            .map(|(n, s, norm)| {
                let bytes = tensor(&n, s.iter().product(), norm)
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                (n, s, bytes)
            })
            .collect();
        let views: BTreeMap<String, TensorView> = data
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(&views, None, &dir.join("model.safetensors")).unwrap();
        let (model, _) = tuili_model::Model::load_hf(&dir, Default::default()).unwrap();
        let nv = model.config().n_vocab;
        let mut kv = model.new_cache(16).unwrap();
        let mut s = Scratch::new();
        let got = model
            .forward(&tokens, &mut kv, &mut s, Logits::All, &pool)
            .unwrap();
        let want: Vec<f64> = m["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        assert_eq!(want.len(), tokens.len() * nv);
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(max < 1e-4, "{name}: max |Δlogit| = {max}");
        // Converted to GGUF (F32, with any tokenizer.json beside it): the same logits, which
        // checks the Q/K permutation for llama and mistral and the fused tensors of phi3.
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/fixtures/models/tinystories-656k-hf/tokenizer.json"
            ),
            dir.join("tokenizer.json"),
        )
        .unwrap();
        let st = tuili_formats::Safetensors::open_dir(&dir).unwrap();
        let input = tuili_model::arch::hf_input(&dir, &st).unwrap();
        let out = dir.join("model.gguf");
        let opts =
            tuili_model::quantize::QuantizeOptions::new(tuili_model::quantize::FileType::F32, 1);
        tuili_model::quantize::quantize(&input, &out, &opts, &mut |_, _| {}).unwrap();
        let gguf = tuili_model::Model::load(std::sync::Arc::new(
            tuili_formats::GgufFile::open(&out).unwrap(),
        ))
        .unwrap();
        assert_eq!(gguf.config().arch, model.config().arch);
        let mut kv = gguf.new_cache(16).unwrap();
        let mut s2 = Scratch::new();
        let again = gguf
            .forward(&tokens, &mut kv, &mut s2, Logits::All, &pool)
            .unwrap();
        let conv = got
            .iter()
            .zip(again)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(conv < 1e-5, "{name}: GGUF max |Δlogit| = {conv}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
