//! Synthetic models: Llama-architecture GGUF files with random weights (fixed seed) and a
//! small SentencePiece-style vocabulary. For tests and benchmarks of real shapes; never
//! committed, always regenerated.

use tuili_core::DType;
use tuili_formats::{GgufWriter, MetaArray, MetaValue};
use tuili_kernels::blocks::f16_to_le;
use tuili_kernels::types::quantize_row;

use crate::config::Arch;
use crate::error::ModelError;

/// The shape and storage of a synthetic model.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub arch: Arch,
    pub name: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_ctx: usize,
    /// Type of the 2-D weights (norms stay F32).
    pub dtype: DType,
    /// Type of the token embedding and output matrices.
    pub embd_dtype: DType,
    /// Leave out `output.weight` (the output head is then the embedding matrix).
    pub tied: bool,
    pub seed: u64,
}

impl SynthSpec {
    /// A tiny model that every type's block size divides (dims multiple of 256).
    pub fn tiny(dtype: DType) -> SynthSpec {
        SynthSpec {
            arch: Arch::LLAMA,
            name: format!("synthetic-tiny-{dtype}"),
            n_vocab: 512,
            n_embd: 256,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 512,
            n_ctx: 256,
            dtype,
            embd_dtype: dtype,
            tied: false,
            seed: 42,
        }
    }
}

impl SynthSpec {
    /// The named shapes of `tuili synth --shape`: `125m` (dim 768, 12 layers, 12 heads, FFN
    /// 2048, vocabulary 32000), `1.1b` (TinyLlama: dim 2048, 22 layers, 32 heads, 4 KV heads,
    /// FFN 5632, vocabulary 32000) and `test` (dim 256, 8 layers, 4 heads, 1 KV head, FFN 512,
    /// vocabulary 512: small, every dimension a multiple of 256, GQA 4).
    pub fn named(shape: &str, dtype: DType, seed: u64) -> Option<SynthSpec> {
        let (n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab) = match shape {
            "125m" => (768, 12, 12, 12, 2048, 32000),
            "1.1b" => (2048, 22, 32, 4, 5632, 32000),
            "test" => (256, 8, 4, 1, 512, 512),
            _ => return None,
        };
        Some(SynthSpec {
            arch: Arch::LLAMA,
            name: format!("tuili-bench-{shape}-{}", dtype.name().to_lowercase()),
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            n_ff,
            n_ctx: 2048,
            dtype,
            embd_dtype: dtype,
            tied: false,
            seed,
        })
    }
}

/// SplitMix64: a small, well-mixed deterministic generator for weights.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [−1, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Byte offsets of the f16 scale fields in a block of each K-quant type (random bytes there
/// would often be Inf/NaN).
fn k_scale_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

/// Random tensor data of `rows` rows of `cols` elements in `dtype`: quantized row by row from
/// uniform values of amplitude `amp` where tuili has a quantizer, otherwise random blocks with
/// small, finite scales.
pub fn random_tensor(
    dtype: DType,
    rows: usize,
    cols: usize,
    amp: f32,
    rng: &mut SplitMix,
) -> Result<Vec<u8>, ModelError> {
    let n = rows * cols;
    let bytes = dtype
        .bytes_for(n as u64)
        .map_err(|e| ModelError::BadHyperParam {
            path: "synthetic".into(),
            key: "size".into(),
            value: n.to_string(),
            reason: e.to_string(),
        })? as usize;
    let mut out = vec![0u8; bytes];
    let fields = k_scale_fields(dtype);
    if !fields.is_empty() {
        for b in out.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        let bb = dtype.block_bytes() as usize;
        for block in out.chunks_exact_mut(bb) {
            for &off in fields {
                let d = amp / 64.0 * (0.5 + 0.5 * rng.next_f32().abs());
                block[off..off + 2].copy_from_slice(&f16_to_le(d));
            }
        }
        return Ok(out);
    }
    let vals: Vec<f32> = (0..n).map(|_| amp * rng.next_f32()).collect();
    let rb = bytes / rows.max(1);
    for (x, o) in vals
        .chunks_exact(cols.max(1))
        .zip(out.chunks_exact_mut(rb.max(1)))
    {
        quantize_row(dtype, x, o)?;
    }
    Ok(out)
}

/// The vocabulary of synthetic models: `<unk> <s> </s>`, the 256 byte tokens, then pieces
/// `▁w0`, `▁w1`, … with falling scores.
pub fn synth_vocab(n_vocab: usize) -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![2, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let mut i = 0;
    while tokens.len() < n_vocab {
        tokens.push(format!("▁w{i}"));
        types.push(1);
        i += 1;
    }
    tokens.truncate(n_vocab);
    types.truncate(n_vocab);
    let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
    (tokens, scores, types)
}

/// Builds the GGUF image of a synthetic model.
pub fn synth_gguf(spec: &SynthSpec) -> Result<GgufWriter, ModelError> {
    let mut rng = SplitMix(spec.seed);
    let arch = spec.arch.name;
    let head_dim = spec.n_embd / spec.n_head;
    let (q, kv) = (spec.n_head * head_dim, spec.n_head_kv * head_dim);
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", arch);
    w.set_str("general.name", &spec.name);
    w.set_u32("general.file_type", spec.dtype.id());
    w.set_u32(&format!("{arch}.context_length"), spec.n_ctx as u32);
    w.set_u32(&format!("{arch}.embedding_length"), spec.n_embd as u32);
    w.set_u32(&format!("{arch}.block_count"), spec.n_layer as u32);
    w.set_u32(&format!("{arch}.feed_forward_length"), spec.n_ff as u32);
    w.set_u32(&format!("{arch}.attention.head_count"), spec.n_head as u32);
    w.set_u32(
        &format!("{arch}.attention.head_count_kv"),
        spec.n_head_kv as u32,
    );
    w.set_u32(&format!("{arch}.rope.dimension_count"), head_dim as u32);
    w.set_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5);
    w.set_f32(&format!("{arch}.rope.freq_base"), 10_000.0);
    let (tokens, scores, types) = synth_vocab(spec.n_vocab);
    w.set_str("tokenizer.ggml.model", "llama");
    w.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::String(tokens)),
    );
    w.set(
        "tokenizer.ggml.scores",
        MetaValue::Array(MetaArray::F32(scores)),
    );
    w.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::I32(types)),
    );
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    w.set_u32("tokenizer.ggml.unknown_token_id", 0);

    let add = |w: &mut GgufWriter,
               name: &str,
               dtype: DType,
               shape: &[u64],
               data: Vec<u8>|
     -> Result<(), ModelError> {
        w.add_tensor(name, dtype, shape, data)
            .map_err(|e| ModelError::BadHyperParam {
                path: "synthetic".into(),
                key: name.into(),
                value: format!("{shape:?}"),
                reason: e.to_string(),
            })?;
        Ok(())
    };
    let ones = |n: usize, rng: &mut SplitMix| -> Vec<u8> {
        (0..n)
            .flat_map(|_| (1.0 + 0.1 * rng.next_f32()).to_le_bytes())
            .collect()
    };
    let (e, ff, nv) = (spec.n_embd as u64, spec.n_ff as u64, spec.n_vocab as u64);
    let std = |fan_in: usize| 1.0 / (fan_in as f32).sqrt() * 1.7;
    let emb = random_tensor(spec.embd_dtype, spec.n_vocab, spec.n_embd, 1.0, &mut rng)?;
    add(&mut w, "token_embd.weight", spec.embd_dtype, &[e, nv], emb)?;
    for l in 0..spec.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}");
        add(
            &mut w,
            &n("attn_norm.weight"),
            DType::F32,
            &[e],
            ones(spec.n_embd, &mut rng),
        )?;
        for (name, rows, cols) in [
            ("attn_q.weight", q, spec.n_embd),
            ("attn_k.weight", kv, spec.n_embd),
            ("attn_v.weight", kv, spec.n_embd),
            ("attn_output.weight", spec.n_embd, q),
            ("ffn_gate.weight", spec.n_ff, spec.n_embd),
            ("ffn_up.weight", spec.n_ff, spec.n_embd),
            ("ffn_down.weight", spec.n_embd, spec.n_ff),
        ] {
            let data = random_tensor(spec.dtype, rows, cols, std(cols), &mut rng)?;
            add(
                &mut w,
                &n(name),
                spec.dtype,
                &[cols as u64, rows as u64],
                data,
            )?;
        }
        add(
            &mut w,
            &n("ffn_norm.weight"),
            DType::F32,
            &[e],
            ones(spec.n_embd, &mut rng),
        )?;
        let _ = ff;
    }
    add(
        &mut w,
        "output_norm.weight",
        DType::F32,
        &[e],
        ones(spec.n_embd, &mut rng),
    )?;
    if !spec.tied {
        let out = random_tensor(
            spec.embd_dtype,
            spec.n_vocab,
            spec.n_embd,
            std(spec.n_embd),
            &mut rng,
        )?;
        add(&mut w, "output.weight", spec.embd_dtype, &[e, nv], out)?;
    }
    Ok(w)
}
