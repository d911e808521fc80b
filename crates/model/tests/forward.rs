//! Forward-pass properties: every weight type, both RoPE layouts, tied output, batching,
//! and corrupt files.

use std::path::PathBuf;
use std::sync::Arc;

use tuili_core::DType;
use tuili_formats::{GgufFile, GgufWriter, MetaValue};
use tuili_kernels::types::dequantize_row;
use tuili_model::synth::{synth_gguf, SynthSpec};
use tuili_model::{Handoff, Logits, Model, ModelError, Scratch};

fn stories_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/models/stories260K/stories260K.gguf")
}

fn load(w: &GgufWriter) -> Model {
    Model::load(Arc::new(
        GgufFile::from_bytes("mem.gguf", w.to_bytes()).unwrap(),
    ))
    .unwrap()
}

fn copy_of(f: &GgufFile) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        w.set(k, v.clone());
    }
    w
}

fn logits(model: &Model, tokens: &[u32], which: Logits) -> Vec<f32> {
    let mut kv = model.new_cache(128).unwrap();
    let mut s = Scratch::new();
    model
        .forward(tokens, &mut kv, &mut s, which, pool(2))
        .unwrap()
        .to_vec()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

const PROMPT: &[u32] = &[1, 300, 17, 42, 511, 260, 5];

/// A model stored in type T computes what the same weights dequantized to F32 compute —
/// exactly for float types, within int8-activation rounding for quantized ones — and its
/// fastest kernels agree with the scalar reference twins on the whole forward pass.
#[test]
fn every_weight_type_matches_its_f32_dequantization_and_scalar_path() {
    for dtype in tuili_kernels::types::runnable() {
        let spec = SynthSpec::tiny(dtype);
        let q = GgufFile::from_bytes("q.gguf", synth_gguf(&spec).unwrap().to_bytes()).unwrap();
        let mut w = copy_of(&q);
        for t in q.tensor_views() {
            let n = t.info.n_elements() as usize;
            let mut vals = vec![0f32; n];
            dequantize_row(t.info.dtype, t.data, &mut vals).unwrap();
            let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.add_tensor(&t.info.name, DType::F32, &t.info.shape, bytes)
                .unwrap();
        }
        let mut model = Model::load(Arc::new(q)).unwrap();
        // Past eight tokens the batch takes the token-lane matrix kernels (`gemm`); the
        // scalar path takes dot products token by token.
        let prompt: Vec<u32> = PROMPT
            .iter()
            .chain(PROMPT)
            .chain(&[9, 8])
            .copied()
            .collect();
        let fast = logits(&model, &prompt, Logits::All);
        model.set_isa(tuili_kernels::cpu::Isa::Scalar);
        let scalar = logits(&model, &prompt, Logits::All);
        let f32_model = logits(&load(&w), &prompt, Logits::All);
        assert!(
            fast.iter().all(|v| v.is_finite()),
            "{dtype}: non-finite logits"
        );
        let simd_err = max_rel(&fast, &scalar);
        // With int8 (or f16) activations a last-bit difference between twins (summation
        // order) can move one activation to the next quantization step (f16: 2⁻¹¹ relative)
        // in a later layer; with f32 activations the paths agree to rounding.
        let simd_bound = match tuili_kernels::types::act_kind(dtype) {
            tuili_kernels::act::ActKind::F32 => 1e-4,
            tuili_kernels::act::ActKind::F16 => 2e-3,
            _ => 1e-2,
        };
        assert!(
            simd_err < simd_bound,
            "{dtype}: fastest kernels vs scalar twins: relative error {simd_err}"
        );
        let quant_err = max_rel(&fast, &f32_model);
        let bound = match tuili_kernels::types::act_kind(dtype) {
            tuili_kernels::act::ActKind::F32 => 1e-5,
            // f16 activations: 11-bit significands, ~2.4e-4 relative rounding each.
            tuili_kernels::act::ActKind::F16 => 5e-3,
            _ => 0.05,
        };
        assert!(
            quant_err < bound,
            "{dtype}: vs dequantized F32 model: relative error {quant_err}"
        );
    }
}

/// GGUF Llama files store Q and K permuted for the interleaved RoPE layout. Undoing that
/// permutation and declaring a NeoX-layout architecture (qwen2, zero biases) must give the
/// same logits: both RoPE layouts rotate the same pairs of the underlying model.
#[test]
fn neox_layout_with_unpermuted_qk_equals_interleaved() {
    let f = GgufFile::open(stories_path()).unwrap();
    let base = Model::load(Arc::new(GgufFile::open(stories_path()).unwrap())).unwrap();
    let cfg = base.config().clone();
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        let k = k.replacen("llama.", "qwen2.", 1);
        let v = if k == "general.architecture" {
            MetaValue::String("qwen2".into())
        } else {
            v.clone()
        };
        w.set(&k, v);
    }
    let hd = cfg.head_dim;
    for t in f.tensor_views() {
        let name = &t.info.name;
        let mut data = t.data.to_vec();
        if name.ends_with("attn_q.weight") || name.ends_with("attn_k.weight") {
            let row = t.info.shape[0] as usize * 4;
            let rows = t.info.shape[1] as usize;
            let src = data.clone();
            for head in 0..rows / hd {
                for i in 0..hd / 2 {
                    // NeoX row i ← interleaved row 2i; NeoX row i + hd/2 ← row 2i + 1.
                    for (dst, s) in [(i, 2 * i), (i + hd / 2, 2 * i + 1)] {
                        let (d, s) = ((head * hd + dst) * row, (head * hd + s) * row);
                        data[d..d + row].copy_from_slice(&src[s..s + row]);
                    }
                }
            }
        }
        w.add_tensor(name, t.info.dtype, &t.info.shape, data)
            .unwrap();
        if let Some(layer) = name.strip_suffix(".attn_q.weight") {
            let n = t.info.shape[1] as usize;
            w.add_tensor(
                &format!("{layer}.attn_q.bias"),
                DType::F32,
                &[n as u64],
                vec![0; n * 4],
            )
            .unwrap();
        }
    }
    let neox = load(&w);
    assert_eq!(
        neox.config().rope_layout,
        tuili_kernels::ops::RopeLayout::NeoX
    );
    let tokens: Vec<u32> = vec![1, 403, 407, 261, 378, 432, 383];
    let err = max_rel(
        &logits(&neox, &tokens, Logits::All),
        &logits(&base, &tokens, Logits::All),
    );
    assert!(err < 1e-5, "{err}");
}

/// Without `output.weight` the output head is the embedding matrix (stories260K's output is
/// bit-identical to its embedding, so the logits must not change).
#[test]
fn tied_output_uses_the_embedding() {
    let f = GgufFile::open(stories_path()).unwrap();
    let mut w = copy_of(&f);
    for t in f.tensor_views().filter(|t| t.info.name != "output.weight") {
        w.add_tensor(&t.info.name, t.info.dtype, &t.info.shape, t.data.to_vec())
            .unwrap();
    }
    let base = Model::load(Arc::new(f)).unwrap();
    let tied = load(&w);
    assert_eq!(
        logits(&tied, PROMPT, Logits::Last),
        logits(&base, PROMPT, Logits::Last)
    );
}

/// Prefill of a whole prompt gives the logits that feeding it one token at a time gives.
#[test]
fn batched_prefill_equals_token_by_token() {
    let model = Model::load(Arc::new(GgufFile::open(stories_path()).unwrap())).unwrap();
    let all = logits(&model, PROMPT, Logits::All);
    let mut kv = model.new_cache(64).unwrap();
    let mut s = Scratch::new();
    let nv = model.config().n_vocab;
    for (i, &t) in PROMPT.iter().enumerate() {
        let l = model
            .forward(&[t], &mut kv, &mut s, Logits::Last, pool(1))
            .unwrap();
        assert!(
            max_rel(l, &all[i * nv..(i + 1) * nv]) < 1e-5,
            "position {i}"
        );
    }
    assert_eq!(kv.len(), PROMPT.len());
    // Logits::Last of a batch is the last row of Logits::All.
    let last = logits(&model, PROMPT, Logits::Last);
    assert!(max_rel(&last, &all[(PROMPT.len() - 1) * nv..]) < 1e-6);
}

#[test]
fn bad_requests_are_errors() {
    let model = Model::load(Arc::new(GgufFile::open(stories_path()).unwrap())).unwrap();
    let mut kv = model.new_cache(4).unwrap();
    let mut s = Scratch::new();
    assert!(matches!(
        model.forward(&[], &mut kv, &mut s, Logits::Last, pool(1)),
        Err(ModelError::EmptyBatch)
    ));
    assert!(matches!(
        model.forward(&[512], &mut kv, &mut s, Logits::Last, pool(1)),
        Err(ModelError::BadToken { .. })
    ));
    assert!(matches!(
        model.forward(&[1, 2, 3, 4, 5], &mut kv, &mut s, Logits::Last, pool(1)),
        Err(ModelError::Kv(_))
    ));
    assert_eq!(kv.len(), 0, "a refused batch leaves the cache as it was");
    let mut other = tuili_kv::KvCache::new(3, 4, 32).unwrap();
    assert!(matches!(
        model.forward(&[1], &mut other, &mut s, Logits::Last, pool(1)),
        Err(ModelError::CacheMismatch { .. })
    ));
}

/// Byte flips anywhere in the header and metadata of a real model: loading either fails with
/// an error or yields a model whose forward pass runs — never a panic or an abort.
#[test]
fn corrupt_models_never_panic() {
    let bytes = std::fs::read(stories_path()).unwrap();
    let mut loaded = 0;
    let mut refused = 0;
    for pos in (0..14_176).step_by(5) {
        for mask in [0x01u8, 0x40] {
            let mut b = bytes.clone();
            b[pos] ^= mask;
            let file = match GgufFile::from_bytes("flip.gguf", b) {
                Ok(f) => f,
                Err(_) => {
                    refused += 1;
                    continue;
                }
            };
            match Model::load(Arc::new(file)) {
                Ok(m) => {
                    loaded += 1;
                    let n_ctx = m.config().n_ctx_train.min(16);
                    let mut kv = m.new_cache(n_ctx).unwrap();
                    let mut s = Scratch::new();
                    let _ = m.forward(&[1, 2, 3], &mut kv, &mut s, Logits::Last, pool(1));
                }
                Err(e) => {
                    refused += 1;
                    assert!(e.to_string().contains("flip.gguf") || !e.to_string().is_empty());
                }
            }
        }
    }
    assert!(
        loaded > 0 && refused > 0,
        "loaded {loaded}, refused {refused}"
    );
}

#[test]
fn linear_rope_scaling_is_read() {
    let mut spec = SynthSpec::tiny(DType::F32);
    spec.n_layer = 1;
    let mut w = synth_gguf(&spec).unwrap();
    let plain = load(&w);
    w.set(
        "llama.rope.scaling.type",
        MetaValue::String("linear".into()),
    );
    w.set("llama.rope.scaling.factor", MetaValue::F32(4.0));
    let scaled = load(&w);
    assert_eq!(scaled.config().rope_freq_scale, 0.25);
    // Position 0 is not rotated, so a one-token prompt is unchanged; later positions differ.
    assert_eq!(
        logits(&plain, &[1], Logits::Last),
        logits(&scaled, &[1], Logits::Last)
    );
    assert_ne!(
        logits(&plain, PROMPT, Logits::Last),
        logits(&scaled, PROMPT, Logits::Last)
    );
    w.set("llama.rope.scaling.type", MetaValue::String("yarn".into()));
    let e = Model::load(Arc::new(
        GgufFile::from_bytes("yarn.gguf", w.to_bytes()).unwrap(),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("rope.scaling.type"), "{e}");
}

/// Shared pools (one of each size) for the tests of this file.
fn pool(n: usize) -> &'static tuili_core::ThreadPool {
    use std::sync::OnceLock;
    static POOLS: [OnceLock<tuili_core::ThreadPool>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    POOLS[n.min(2)].get_or_init(|| tuili_core::ThreadPool::new(n))
}

/// Several sequences in one batch through a paged cache — prompts in chunks next to other
/// sequences' decode steps, blocks handed out interleaved, a copy-on-write fork — give the
/// logits that each sequence run alone in a contiguous cache gives.
#[test]
fn paged_batches_equal_each_sequence_alone() {
    use tuili_kv::{BlockAllocator, BlockTable, PagedBatch, PagedKv};
    use tuili_model::{OutRows, SeqSpan};
    let model = Model::load(Arc::new(GgufFile::open(stories_path()).unwrap())).unwrap();
    let cfg = model.config().clone();
    let nv = cfg.n_vocab;
    let seqs: [&[u32]; 4] = [
        &[1, 300, 17, 42, 511, 260, 5, 9, 77, 78],
        &[1, 12, 13, 14, 15, 16, 17, 18],
        &[1, 300, 17, 42, 99, 98, 97, 96, 95, 94, 93, 92, 91],
        // Continues sequence 0's first 7 tokens: forked from it.
        &[1, 300, 17, 42, 511, 260, 5, 200, 201],
    ];
    let alone: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| logits(&model, s, Logits::All))
        .collect();

    let bs = 4;
    let mut alloc = BlockAllocator::new(32, bs);
    let mut store = PagedKv::<f32>::new(cfg.n_layer, 32, bs, cfg.n_head_kv, cfg.head_dim).unwrap();
    let mut tables = vec![BlockTable::new(); 4];
    let mut done = [0usize; 4];
    let mut scratch = Scratch::new();
    // Each step: (sequence, tokens to run).
    let plan: &[&[(usize, usize)]] = &[
        &[(0, 5), (1, 3)],
        &[(1, 3), (0, 2), (2, 4)],
        &[(0, 1), (2, 7), (1, 0)],
        &[(3, 0)], // fork 3 from 0 at 7 (no tokens run)
        &[(3, 1), (0, 1), (2, 0)],
        &[(3, 1), (0, 0), (1, 0), (2, 0)],
    ];
    for (step, items) in plan.iter().enumerate() {
        let mut tokens = Vec::new();
        let mut spans = Vec::new();
        let mut flat = Vec::new();
        let mut offsets = vec![0];
        let mut out = Vec::new();
        let mut expect = Vec::new();
        for &(s, n) in items.iter() {
            if step == 3 {
                tables[3] = alloc.fork(&tables[0]);
                alloc.truncate(&mut tables[3], 7);
                done[3] = 7;
                continue;
            }
            // A decode step when n is 0: one token.
            let n = if n == 0 { 1 } else { n };
            let pos0 = done[s];
            alloc.grow(&mut tables[s], pos0 + n).unwrap();
            let copies = alloc.make_writable(&mut tables[s], pos0, pos0 + n).unwrap();
            store.copy_blocks(&copies);
            spans.push(SeqSpan {
                start: tokens.len(),
                len: n,
                pos0,
            });
            tokens.extend_from_slice(&seqs[s][pos0..pos0 + n]);
            flat.extend_from_slice(&tables[s].blocks);
            offsets.push(flat.len());
            out.push(tokens.len() - 1);
            expect.push((s, pos0 + n - 1));
            done[s] += n;
        }
        if tokens.is_empty() {
            continue;
        }
        let mut batch = PagedBatch {
            store: &mut store,
            tables: &flat,
            offsets: &offsets,
        };
        let l = model
            .forward_spans(
                Handoff::Lockstep,
                None,
                &tokens,
                &spans,
                &mut batch,
                64,
                &mut scratch,
                OutRows::List(&out),
                pool(2),
            )
            .unwrap();
        for (j, &(s, p)) in expect.iter().enumerate() {
            let want = &alone[s][p * nv..(p + 1) * nv];
            let got = &l[j * nv..(j + 1) * nv];
            assert!(
                max_rel(got, want) < 1e-5,
                "step {step}, sequence {s}, position {p}"
            );
        }
    }
    assert_eq!(done, [10, 8, 13, 9]);
    for t in tables.iter_mut() {
        alloc.free(t);
    }
    assert_eq!(alloc.n_used(), 0);
}

/// F16 and Q8_0 paged caches change the logits by about their precision; Q8_0 needs a head
/// dimension that is a multiple of 32 (refused otherwise).
#[test]
fn quantized_paged_caches() {
    use tuili_kernels::blocks::BlockQ8_0;
    use tuili_kv::{KvError, PagedBatch, PagedKv};
    use tuili_model::{OutRows, SeqSpan};
    let spec = SynthSpec::named("test", DType::F32, 7).unwrap();
    let model = load(&synth_gguf(&spec).unwrap());
    let cfg = model.config().clone();
    assert_eq!(cfg.head_dim % 32, 0);
    let want = logits(&model, PROMPT, Logits::All);
    fn paged<T: tuili_kernels::attn::KvElem>(model: &Model, max_err: f32, want: &[f32]) {
        let cfg = model.config();
        let mut store = PagedKv::<T>::new(cfg.n_layer, 4, 16, cfg.n_head_kv, cfg.head_dim).unwrap();
        let mut s = Scratch::new();
        let spans = [SeqSpan {
            start: 0,
            len: PROMPT.len(),
            pos0: 0,
        }];
        let mut batch = PagedBatch {
            store: &mut store,
            tables: &[2, 0],
            offsets: &[0, 2],
        };
        let got = model
            .forward_spans(
                Handoff::Lockstep,
                None,
                PROMPT,
                &spans,
                &mut batch,
                32,
                &mut s,
                OutRows::Range(0..PROMPT.len()),
                pool(2),
            )
            .unwrap();
        let err = max_rel(got, want);
        assert!(
            err > 0.0 && err < max_err,
            "{}: {err}",
            std::any::type_name::<T>()
        );
    }
    paged::<half::f16>(&model, 2e-3, &want);
    paged::<BlockQ8_0>(&model, 3e-2, &want);
    let stories = Model::load(Arc::new(GgufFile::open(stories_path()).unwrap())).unwrap();
    let c = stories.config();
    assert!(matches!(
        PagedKv::<BlockQ8_0>::new(c.n_layer, 4, 16, c.n_head_kv, c.head_dim),
        Err(KvError::HeadDim { .. })
    ));
}

/// A prompt long enough that every step splits across threads — the element-wise steps (from
/// 64 Ki values), the tile building (from 64 tokens), the matrix products and the attention —
/// gives the same logits, to the bit, on one thread and on two: each value is computed by one
/// thread whatever the split.
#[test]
fn threads_do_not_change_a_long_prompt() {
    for dtype in [DType::Q4_K, DType::Q4_0, DType::F16] {
        let spec = SynthSpec::named("test", dtype, 7).unwrap();
        let bytes = synth_gguf(&spec).unwrap().to_bytes();
        let model = Model::load(Arc::new(GgufFile::from_bytes("t.gguf", bytes).unwrap())).unwrap();
        // 600 tokens × 256 dimensions: two threads' worth of element-wise work.
        let tokens: Vec<u32> = (0..600).map(|i| (i * 37 % 512) as u32).collect();
        let run = |p| {
            let mut kv = model.new_cache(640).unwrap();
            let mut s = Scratch::new();
            model
                .forward(&tokens, &mut kv, &mut s, Logits::All, p)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        let (one, two) = (run(pool(1)), run(pool(2)));
        assert!(
            one == two,
            "{dtype}: logits differ between one and two threads"
        );
    }
}
