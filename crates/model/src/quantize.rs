//! Model quantization: llama.cpp's file types and its per-tensor recipes (for the Llama
//! family), writing a GGUF that llama.cpp loads. Tensor bytes come from the same reference
//! quantizers as ggml's (`tuili_kernels::quant`), so a tensor quantized to a type here is
//! byte-identical to llama-quantize's output (tested per type against `ggml_quantize_chunk`).
//!
//! Which tensor gets which type (llama.cpp's `llama_tensor_get_type` for non-MoE Llama-family
//! models, without an importance matrix):
//! - 1-D tensors (norms, biases) and names not ending in `weight` keep their type;
//! - `output.weight` (and `token_embd.weight` when the output is tied to it): Q6_K, or Q8_0
//!   when the base type is Q8_0;
//! - `attn_v.weight` of layer i: Q2_K → Q3_K (Q4_K when n_head/n_head_kv ≥ 4); Q3_K_M → Q5_K
//!   for i < 2, else Q4_K; Q3_K_L → Q5_K; Q4_K_M, Q5_K_M → Q6_K where `more_bits(i)`;
//!   Q4_K_S → Q5_K for i < 4;
//! - `ffn_down.weight` of layer i: Q2_K → Q3_K; Q3_K_M → Q5_K for i < n/16, else Q4_K;
//!   Q3_K_L → Q5_K; Q4_K_M, Q5_K_M → Q6_K where `more_bits(i)`; Q4_K_S → Q5_K for i < n/8;
//! - `attn_output.weight`: Q2_K → Q3_K; Q3_K_M → Q4_K; Q3_K_L → Q5_K;
//! - fused `attn_qkv.weight`: Q3_K_M/L → Q4_K; Q4_K_M → Q5_K; Q5_K_M → Q6_K;
//! - everything else: the base type (Q3_K_* → Q3_K, Q4_K_* → Q4_K, Q5_K_* → Q5_K).
//!
//! `more_bits(i)` = i < n/8 or i ≥ 7n/8 or (i − n/8) mod 3 = 2. A row length the chosen
//! type's block does not divide falls back: Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1,
//! Q6_K → Q8_0, then F16 if that does not fit either.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use tuili_core::DType;
use tuili_formats::{GgufFile, GgufWriter, MetaValue};

use tuili_kernels::types::{dequantize_row, quantize_row, traits};

use crate::error::ModelError;

/// llama.cpp's file types (`llama_ftype`), as llama-quantize names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl FileType {
    pub const ALL: [FileType; 17] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q8_0,
        FileType::Q2_K,
        FileType::Q3_K_S,
        FileType::Q3_K_M,
        FileType::Q3_K_L,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
    ];

    /// Parses a name, case-insensitively; `Q3_K`, `Q4_K`, `Q5_K` mean the `_M` recipes, as in
    /// llama-quantize.
    pub fn parse(s: &str) -> Option<FileType> {
        let u = s.to_ascii_uppercase();
        let u = match u.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            other => other,
        };
        FileType::ALL.into_iter().find(|f| f.name() == u)
    }

    pub fn name(self) -> &'static str {
        use FileType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2_K => "Q2_K",
            Q3_K_S => "Q3_K_S",
            Q3_K_M => "Q3_K_M",
            Q3_K_L => "Q3_K_L",
            Q4_K_S => "Q4_K_S",
            Q4_K_M => "Q4_K_M",
            Q5_K_S => "Q5_K_S",
            Q5_K_M => "Q5_K_M",
            Q6_K => "Q6_K",
        }
    }

    /// The `general.file_type` value (`llama_ftype`).
    pub fn llama_id(self) -> u32 {
        use FileType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q8_0 => 7,
            Q5_0 => 8,
            Q5_1 => 9,
            Q2_K => 10,
            Q3_K_S => 11,
            Q3_K_M => 12,
            Q3_K_L => 13,
            Q4_K_S => 14,
            Q4_K_M => 15,
            Q5_K_S => 16,
            Q5_K_M => 17,
            Q6_K => 18,
            BF16 => 32,
        }
    }

    /// The type most tensors get.
    pub fn base(self) -> DType {
        use FileType::*;
        match self {
            F32 => DType::F32,
            F16 => DType::F16,
            BF16 => DType::BF16,
            Q4_0 => DType::Q4_0,
            Q4_1 => DType::Q4_1,
            Q5_0 => DType::Q5_0,
            Q5_1 => DType::Q5_1,
            Q8_0 => DType::Q8_0,
            Q2_K => DType::Q2_K,
            Q3_K_S | Q3_K_M | Q3_K_L => DType::Q3_K,
            Q4_K_S | Q4_K_M => DType::Q4_K,
            Q5_K_S | Q5_K_M => DType::Q5_K,
            Q6_K => DType::Q6_K,
        }
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of a quantization run.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub ftype: FileType,
    /// Every quantizable tensor gets the base type (no recipe; fallbacks still apply).
    pub pure: bool,
    /// Allow re-quantizing tensors that are already quantized (lossy twice).
    pub allow_requantize: bool,
    pub threads: usize,
}

impl QuantizeOptions {
    /// llama.cpp's recipe for `ftype`, quantized input refused.
    pub fn new(ftype: FileType, threads: usize) -> QuantizeOptions {
        QuantizeOptions {
            ftype,
            pure: false,
            allow_requantize: false,
            threads,
        }
    }
}

/// What happens to one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    /// ne0-first.
    pub shape: Vec<u64>,
    pub from: DType,
    pub to: DType,
    /// The recipe's type did not fit the row length.
    pub fallback: bool,
}

fn is_quantizable(name: &str, shape: &[u64]) -> bool {
    name.ends_with("weight") && shape.len() >= 2
}

fn more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Whether `t` is stored as floats (F32, F16, BF16), by the type table.
fn is_float(t: DType) -> bool {
    traits(t).is_some_and(|t| t.float)
}

/// llama.cpp's fallback for a row length the type's block does not divide (the type table's
/// `fallback`, else F16).
fn fallback(ne0: u64, t: DType) -> (DType, bool) {
    if ne0.is_multiple_of(t.block_len()) {
        return (t, false);
    }
    let f = traits(t).and_then(|t| t.fallback).unwrap_or(t);
    if ne0.is_multiple_of(f.block_len()) {
        (f, true)
    } else {
        (DType::F16, true)
    }
}

/// One tensor to be written: its GGUF name, type, ne0-first shape and bytes.
pub struct InputTensor<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: Cow<'a, [u8]>,
}

/// What `quantize` reads: metadata and tensors under GGUF's names, from a GGUF file or from a
/// converted Hugging Face folder ([`crate::convert`]).
pub struct QuantInput<'a> {
    pub label: String,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<InputTensor<'a>>,
    /// Bytes of the input, for the report.
    pub bytes: u64,
}

impl<'a> QuantInput<'a> {
    /// A GGUF file's metadata and tensors, zero-copy.
    pub fn from_gguf(f: &'a GgufFile) -> QuantInput<'a> {
        QuantInput {
            label: f.path().display().to_string(),
            metadata: f
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tensors: f
                .tensor_views()
                .map(|t| InputTensor {
                    name: t.info.name.clone(),
                    dtype: t.info.dtype,
                    shape: t.info.shape.clone(),
                    data: Cow::Borrowed(t.data),
                })
                .collect(),
            bytes: f.file_size(),
        }
    }

    fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Chooses every tensor's type.
pub fn plan(input: &QuantInput, opts: &QuantizeOptions) -> Result<Vec<TensorPlan>, ModelError> {
    use FileType as F;
    let ft = opts.ftype;
    let base = ft.base();
    let arch = input
        .meta("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("llama")
        .to_string();
    let n_head = input
        .meta(&format!("{arch}.attention.head_count"))
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
        .max(1);
    let n_head_kv = input
        .meta(&format!("{arch}.attention.head_count_kv"))
        .and_then(|v| v.as_u64())
        .unwrap_or(n_head)
        .max(1);
    let n_gqa = n_head / n_head_kv;
    let infos = &input.tensors;
    let tied = !infos.iter().any(|t| t.name == "output.weight");
    let count = |pat: &str| infos.iter().filter(|t| t.name.contains(pat)).count();
    let (n_attn_v, n_ffn_down) = (count("attn_v.weight"), count("ffn_down"));
    let (mut i_attn_v, mut i_ffn_down) = (0usize, 0usize);
    let quantized_base = !is_float(base);
    let mut out = Vec::with_capacity(infos.len());
    for t in infos {
        let (name, shape) = (t.name.as_str(), &t.shape);
        if !is_quantizable(name, shape) {
            out.push(TensorPlan {
                name: name.into(),
                shape: shape.to_vec(),
                from: t.dtype,
                to: t.dtype,
                fallback: false,
            });
            continue;
        }
        let mut to = base;
        if quantized_base && !opts.pure {
            let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
            if is_output {
                to = if !shape[0].is_multiple_of(base.block_len()) || base == DType::Q8_0 {
                    DType::Q8_0
                } else {
                    DType::Q6_K
                };
            } else if name.contains("attn_v.weight") {
                // Layers are counted in file order, as llama.cpp does.
                to = match ft {
                    F::Q2_K => {
                        if n_gqa >= 4 {
                            DType::Q4_K
                        } else {
                            DType::Q3_K
                        }
                    }
                    F::Q3_K_M => {
                        if i_attn_v < 2 {
                            DType::Q5_K
                        } else {
                            DType::Q4_K
                        }
                    }
                    F::Q3_K_L => DType::Q5_K,
                    F::Q4_K_M | F::Q5_K_M if more_bits(i_attn_v, n_attn_v) => DType::Q6_K,
                    F::Q4_K_S if i_attn_v < 4 => DType::Q5_K,
                    _ => base,
                };
                i_attn_v += 1;
            } else if name.contains("ffn_down") {
                let (i, n) = (i_ffn_down, n_ffn_down);
                to = match ft {
                    F::Q2_K => DType::Q3_K,
                    F::Q3_K_M => {
                        if i < n / 16 {
                            DType::Q5_K
                        } else {
                            DType::Q4_K
                        }
                    }
                    F::Q3_K_L => DType::Q5_K,
                    F::Q4_K_M | F::Q5_K_M if more_bits(i, n) => DType::Q6_K,
                    F::Q4_K_S if i < n / 8 => DType::Q5_K,
                    _ => base,
                };
                i_ffn_down += 1;
            } else if name.contains("attn_output.weight") {
                to = match ft {
                    F::Q2_K => DType::Q3_K,
                    F::Q3_K_M => DType::Q4_K,
                    F::Q3_K_L => DType::Q5_K,
                    _ => base,
                };
            } else if name.contains("attn_qkv.weight") {
                to = match ft {
                    F::Q3_K_M | F::Q3_K_L => DType::Q4_K,
                    F::Q4_K_M => DType::Q5_K,
                    F::Q5_K_M => DType::Q6_K,
                    _ => base,
                };
            }
        }
        let (to, fell) = if quantized_base {
            fallback(shape[0], to)
        } else {
            (to, false)
        };
        let requant = !is_float(t.dtype) && t.dtype != to;
        if requant && !opts.allow_requantize {
            return Err(ModelError::Quantize {
                tensor: name.into(),
                reason: format!(
                    "it is already {}; re-quantizing to {to} loses quality twice (pass --allow-requantize to do it anyway)",
                    t.dtype
                ),
            });
        }
        out.push(TensorPlan {
            name: name.into(),
            shape: shape.to_vec(),
            from: t.dtype,
            to,
            fallback: fell,
        });
    }
    Ok(out)
}

/// What a quantization run did.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub plans: Vec<TensorPlan>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Encodes one tensor into `out` (rows converted in parallel).
fn convert(
    t: &InputTensor,
    p: &TensorPlan,
    threads: usize,
    out: &mut Vec<u8>,
) -> Result<(), ModelError> {
    let src: &[u8] = &t.data;
    if p.from == p.to {
        out.extend_from_slice(src);
        return Ok(());
    }
    let ne0 = p.shape[0] as usize;
    let rows = (p.shape.iter().product::<u64>() / p.shape[0]) as usize;
    let (in_row, out_row) = (
        p.from.bytes_for(ne0 as u64).map_err(|e| quant_err(p, e))? as usize,
        p.to.bytes_for(ne0 as u64).map_err(|e| quant_err(p, e))? as usize,
    );
    out.resize(rows * out_row, 0);
    let per = rows.div_ceil(threads.max(1)).max(1);
    let results: Vec<Result<(), ModelError>> = std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(per * out_row)
            .enumerate()
            .map(|(c, dst)| {
                let src = &src[c * per * in_row..];
                s.spawn(move || -> Result<(), ModelError> {
                    let mut row = vec![0f32; ne0];
                    for (r, d) in dst.chunks_exact_mut(out_row).enumerate() {
                        dequantize_row(p.from, &src[r * in_row..(r + 1) * in_row], &mut row)?;
                        quantize_row(p.to, &row, d)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(quant_err(p, "a worker thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

fn quant_err(p: &TensorPlan, e: impl ToString) -> ModelError {
    ModelError::Quantize {
        tensor: p.name.clone(),
        reason: e.to_string(),
    }
}

/// The name written to until the output is complete, in the output's directory.
pub fn partial_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.partial"))
}

/// Quantizes `file` into a new GGUF at `out`: written under a temporary name in the same
/// directory and renamed when complete, so an interrupted run never leaves a half-written
/// file under `out`. `on_tensor(i, plan)` is called before each tensor is converted.
pub fn quantize(
    input: &QuantInput,
    out: &Path,
    opts: &QuantizeOptions,
    on_tensor: &mut dyn FnMut(usize, &TensorPlan),
) -> Result<QuantizeReport, ModelError> {
    let plans = plan(input, opts)?;
    write(
        input,
        out,
        plans,
        Some(opts.ftype.llama_id()),
        opts.threads,
        on_tensor,
    )
}

/// Writes `input` as a GGUF at `out` with each tensor converted as `plans` says (one plan
/// per tensor, in order), `general.file_type` set to `file_type` when given; under a
/// temporary name, renamed when complete (see [`quantize`]).
pub fn write(
    input: &QuantInput,
    out: &Path,
    plans: Vec<TensorPlan>,
    file_type: Option<u32>,
    threads: usize,
    on_tensor: &mut dyn FnMut(usize, &TensorPlan),
) -> Result<QuantizeReport, ModelError> {
    let mut w = GgufWriter::new();
    for (k, v) in &input.metadata {
        w.set(k, v.clone());
    }
    if let Some(ft) = file_type {
        w.set("general.file_type", MetaValue::U32(ft));
    }
    w.set("general.quantization_version", MetaValue::U32(2));
    for p in &plans {
        w.declare_tensor(&p.name, p.to, &p.shape)
            .map_err(|e| quant_err(p, e))?;
    }
    let tmp = partial_path(out);
    let io = |e: std::io::Error| ModelError::Io {
        path: out.display().to_string(),
        reason: format!("cannot write: {e}"),
    };
    let result = (|| -> Result<u64, ModelError> {
        let f = std::fs::File::create(&tmp).map_err(io)?;
        let mut bw = BufWriter::with_capacity(1 << 20, f);
        let mut failure = None;
        let r = w.write_streaming(&mut bw, &mut |i, buf| {
            on_tensor(i, &plans[i]);
            convert(&input.tensors[i], &plans[i], threads, buf).map_err(|e| {
                let msg = e.to_string();
                failure = Some(e);
                std::io::Error::other(msg)
            })
        });
        if let Some(e) = failure {
            return Err(e);
        }
        r.map_err(io)?;
        let f = bw.into_inner().map_err(|e| io(e.into_error()))?;
        tuili_formats::release_written(&f).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        std::fs::rename(&tmp, out).map_err(io)?;
        Ok(size)
    })();
    match result {
        Ok(bytes_out) => Ok(QuantizeReport {
            plans,
            bytes_in: input.bytes,
            bytes_out,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// One line: tensor counts per type and the sizes before and after.
pub fn summary(r: &QuantizeReport) -> String {
    let mut counts: Vec<(DType, usize)> = Vec::new();
    for p in &r.plans {
        match counts.iter_mut().find(|(t, _)| *t == p.to) {
            Some(c) => c.1 += 1,
            None => counts.push((p.to, 1)),
        }
    }
    let list: Vec<String> = counts.iter().map(|(t, n)| format!("{n} × {t}")).collect();
    let mut out = String::new();
    let _ = write!(
        out,
        "{} tensors: {}; {:.2} MB → {:.2} MB",
        r.plans.len(),
        list.join(", "),
        r.bytes_in as f64 / 1e6,
        r.bytes_out as f64 / 1e6
    );
    out
}
