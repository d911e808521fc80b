//! `tuili prune`: a model in, the same model with its attention and MLP projections pruned
//! out (magnitude, Wanda or SparseGPT; a fraction of the weights or an N:M pattern), written
//! as a GGUF that llama.cpp loads (the zeros stored), in the input's types or `--type`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tuili_core::{DType, ThreadPool};
use tuili_formats::GgufFile;
use tuili_kernels::types::dequantize_row;
use tuili_model::prune::{self, Method, Pattern, PruneOptions};
use tuili_model::quantize::{self, FileType, QuantInput, QuantizeOptions, TensorPlan};

use crate::error::CliError;

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Input model: a GGUF file or a Hugging Face folder.
    input: PathBuf,
    /// Output GGUF (written under a temporary name, renamed when complete).
    output: PathBuf,
    /// magnitude (|W| per row), wanda (|W|·‖X‖ per row) or sparsegpt (layer-wise
    /// reconstruction that updates the weights kept).
    #[arg(long)]
    method: String,
    /// The fraction of each pruned matrix's weights removed, between 0 and 1.
    #[arg(long)]
    sparsity: Option<f32>,
    /// N:M: at most N non-zero weights in every M consecutive ones of a row (2:4, 4:8).
    #[arg(long)]
    pattern: Option<String>,
    /// Calibration text (wanda, sparsegpt).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration tokens to use at most (default: 128 sequences of --calib-ctx tokens).
    #[arg(long)]
    calib_tokens: Option<usize>,
    /// Tokens per calibration sequence (default: 2048, or the model's context if shorter).
    #[arg(long)]
    calib_ctx: Option<usize>,
    /// Output type (Q8_0, Q4_0, Q4_K…, as `tuili quantize --type`); default: each tensor
    /// keeps its input type.
    #[arg(long = "type")]
    ftype: Option<String>,
    /// Leave dense the tensors whose names contain this (repeatable: `--skip attn_v --skip
    /// blk.0.`).
    #[arg(long)]
    skip: Vec<String>,
    /// Store OUT with ordinary types (the zeros stored), as llama.cpp reads it, instead of
    /// the sparse layouts (tuili's own types, which llama.cpp refuses) that OUT gets where
    /// one exists: Q8_0 or Q4_0 pruned 2:4 or 4:8, Q8_0 pruned unstructured (--sparsity),
    /// rows of whole 128-weight super-blocks.
    #[arg(long)]
    dense: bool,
    /// Also write the pruned model with ordinary types (zeros stored) to this path.
    #[arg(long)]
    dense_out: Option<PathBuf>,
    /// Worker threads (default: physical cores).
    #[arg(short, long)]
    threads: Option<usize>,
}

pub fn prune(a: PruneArgs) -> Result<(), CliError> {
    let method = Method::parse(&a.method).ok_or_else(|| {
        CliError::Usage(format!(
            "--method {}: use magnitude, wanda or sparsegpt",
            a.method
        ))
    })?;
    let pattern = Pattern::parse(a.sparsity, a.pattern.as_deref()).map_err(CliError::Usage)?;
    let ftype = a
        .ftype
        .as_deref()
        .map(|t| {
            FileType::parse(t).ok_or_else(|| {
                let names: Vec<&str> = FileType::ALL.iter().map(|f| f.name()).collect();
                CliError::Usage(format!("--type {t}: use one of {}", names.join(", ")))
            })
        })
        .transpose()?;
    if a.dense_out.as_deref() == Some(a.output.as_path()) {
        return Err(CliError::Usage(
            "--dense-out: the same path as OUT; give the dense twin a name of its own".into(),
        ));
    }
    if a.dense && a.dense_out.is_some() {
        return Err(CliError::Usage(
            "--dense and --dense-out: OUT is already dense; drop one".into(),
        ));
    }
    if method.needs().is_some() && a.calib.is_none() {
        return Err(CliError::Usage(format!(
            "--method {}: needs calibration text, --calib FILE",
            method.name()
        )));
    }
    if method.needs().is_none() && a.calib.is_some() {
        return Err(CliError::Usage(
            "--method magnitude uses no calibration text: drop --calib".into(),
        ));
    }
    let threads = a
        .threads
        .unwrap_or_else(tuili_core::parallel::default_threads);
    let t0 = Instant::now();
    // A Hugging Face folder is converted first (F32, beside the output), then read as GGUF.
    let converted = if a.input.is_dir() {
        Some(convert_hf(&a.input, &a.output, threads)?)
    } else {
        None
    };
    let result = run(
        &a,
        method,
        pattern,
        ftype,
        threads,
        converted.as_deref(),
        t0,
    );
    if let Some(tmp) = converted {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

fn run(
    a: &PruneArgs,
    method: Method,
    pattern: Pattern,
    ftype: Option<FileType>,
    threads: usize,
    converted: Option<&Path>,
    t0: Instant,
) -> Result<(), CliError> {
    let file = Arc::new(GgufFile::open(converted.unwrap_or(&a.input))?);
    let opts = PruneOptions {
        method,
        pattern,
        skip: a.skip.clone(),
    };
    let calib = match &a.calib {
        None => Vec::new(),
        Some(path) => calibration(&file, path, a.calib_ctx, a.calib_tokens)?,
    };
    let pool = ThreadPool::new(threads);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} layer {pos}/{len} {elapsed}/{eta} | {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} {pattern}", method.name()));
    let r = prune::prune(&file, &opts, &calib, &pool, &mut |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    });
    bar.finish_and_clear();
    let (values, report) = r.map_err(tuili_engine::EngineError::from)?;
    if report.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: no attention or MLP projection to prune (all skipped?)",
            a.input.display()
        )));
    }
    // The pruned tensors as F32, the others as they are; then every tensor to its type.
    let mut input = QuantInput::from_gguf(&file);
    let types: HashMap<String, DType> = input
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype))
        .collect();
    for t in &mut input.tensors {
        if let Some(v) = values.get(&t.name) {
            t.dtype = DType::F32;
            t.data = std::borrow::Cow::Borrowed(&v[..]);
        }
    }
    let (plans, file_type) = match ftype {
        Some(ft) => {
            let q = QuantizeOptions {
                allow_requantize: true,
                ..QuantizeOptions::new(ft, threads)
            };
            (
                quantize::plan(&input, &q).map_err(tuili_engine::EngineError::from)?,
                Some(ft.llama_id()),
            )
        }
        None => (
            input
                .tensors
                .iter()
                .map(|t| TensorPlan {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    from: t.dtype,
                    to: types[&t.name],
                    fallback: false,
                })
                .collect(),
            None,
        ),
    };
    input.metadata.push((
        "tuili.pruned".into(),
        tuili_formats::MetaValue::String(format!("{} {pattern}", method.name())),
    ));
    // The dense twin first (it is OUT's layout when no sparse one applies).
    if let Some(path) = &a.dense_out {
        quantize::write(
            &input,
            path,
            plans.clone(),
            file_type,
            threads,
            &mut |_, _| {},
        )
        .map_err(tuili_engine::EngineError::from)?;
        println!("{}: the pruned model with ordinary types", path.display());
    }
    let mut plans = plans;
    let mut n_sparse = 0;
    if !a.dense {
        // Where a pruned matrix's output type has a sparse layout for the pattern; the others
        // (rows no super-block divides, say) stay dense.
        for p in plans.iter_mut() {
            let Some(v) = values.get(&p.name) else {
                continue;
            };
            let most = prune::most_kept(v, p.shape[0] as usize);
            if let Some(t) = prune::sparse_layout(p.to, pattern, p.shape[0], most) {
                p.to = t;
                n_sparse += 1;
            }
        }
        if n_sparse > 0 {
            input.metadata.push((
                "tuili.sparsity.pattern".into(),
                tuili_formats::MetaValue::String(pattern.to_string()),
            ));
        }
    }
    let written = quantize::write(&input, &a.output, plans, file_type, threads, &mut |_, _| {})
        .map_err(tuili_engine::EngineError::from)?;
    // What the file holds: the zeros that survived the output type.
    let out = GgufFile::open(&a.output)?;
    let (mut total, mut zeros, mut stored) = (0usize, 0usize, 0usize);
    for p in &report {
        total += p.rows * p.cols;
        zeros += p.zeros;
        stored += count_zeros(&out, &p.name)?;
    }
    println!(
        "{}: {} of {} matrices pruned ({}, {pattern}); {:.2} % of their weights zero after pruning, {:.2} % as stored{}; {:.1} MiB → {:.1} MiB in {:.1} s",
        a.output.display(),
        report.len(),
        report.len() + out.tensors.iter().filter(|t| !values.contains_key(&t.name) && prune::is_prunable(&t.name, &t.shape)).count(),
        method.name(),
        100.0 * zeros as f64 / total as f64,
        100.0 * stored as f64 / total as f64,
        if stored < zeros {
            " (the output type has no exact zero in every block)"
        } else {
            ""
        },
        written.bytes_in as f64 / (1 << 20) as f64,
        written.bytes_out as f64 / (1 << 20) as f64,
        Instant::now().duration_since(t0).as_secs_f64(),
    );
    if !a.dense {
        let why = match pattern {
            Pattern::NofM { n: 2, m: 4 } | Pattern::NofM { n: 4, m: 8 } => {
                "a sparse layout exists for Q8_0 and Q4_0 (--type) with rows of whole 128-weight super-blocks"
            }
            _ => "an unstructured sparse layout exists for Q8_0 (--type) with rows of whole 128-weight super-blocks keeping at most 104 of every 128",
        };
        if n_sparse == report.len() {
            println!("all {n_sparse} pruned matrices in a sparse layout");
        } else {
            println!(
                "{n_sparse} of {} pruned matrices in a sparse layout, the rest dense ({why})",
                report.len()
            );
        }
    }
    Ok(())
}

/// Zeros among tensor `name`'s values in `file`.
fn count_zeros(file: &GgufFile, name: &str) -> Result<usize, CliError> {
    let info = file
        .tensor_info(name)
        .ok_or_else(|| CliError::Usage(format!("{name}: missing from the output")))?;
    let cols = info.shape[0] as usize;
    let data = &file.bytes()[file.tensor_range(info)];
    let rows = (info.shape.iter().product::<u64>() / info.shape[0]) as usize;
    let rb = data.len() / rows.max(1);
    let mut row = vec![0f32; cols];
    let mut n = 0;
    for r in 0..rows {
        dequantize_row(info.dtype, &data[r * rb..(r + 1) * rb], &mut row)
            .map_err(|e| CliError::Engine(tuili_model::ModelError::from(e).into()))?;
        n += row.iter().filter(|&&v| v == 0.0).count();
    }
    Ok(n)
}

/// The calibration sequences: the text's tokens cut into sequences of `ctx` (each opening
/// with BOS where the model has one), as many as `tokens` allows (default 128 sequences).
fn calibration(
    file: &GgufFile,
    path: &Path,
    ctx: Option<usize>,
    tokens: Option<usize>,
) -> Result<Vec<Vec<u32>>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("--calib {}: {e}", path.display())))?;
    let tok = tuili_tokenizer::Tokenizer::from_gguf(file)?;
    let ids = tok.encode(&text, false, false)?;
    let arch = file.require_str("general.architecture")?;
    let trained = file
        .get_u64(&format!("{arch}.context_length"))
        .ok()
        .flatten()
        .unwrap_or(2048) as usize;
    let ctx = ctx.unwrap_or(2048).min(trained);
    if ctx < 2 {
        return Err(CliError::Usage(format!(
            "--calib-ctx {ctx}: a calibration sequence needs at least 2 tokens"
        )));
    }
    let asked = tokens.unwrap_or(128 * ctx);
    if asked < ctx {
        return Err(CliError::Usage(format!(
            "--calib-tokens {asked}: less than one sequence of {ctx} tokens (lower --calib-ctx)"
        )));
    }
    let bos = tok.bos();
    let body = ctx - usize::from(bos.is_some());
    let n = (ids.len() / body).min(asked / ctx);
    if n == 0 {
        return Err(CliError::Usage(format!(
            "--calib {}: {} tokens, fewer than one sequence of {ctx} (lower --calib-ctx)",
            path.display(),
            ids.len()
        )));
    }
    let seqs: Vec<Vec<u32>> = ids
        .chunks_exact(body)
        .take(n)
        .map(|c| bos.into_iter().chain(c.iter().copied()).collect())
        .collect();
    let used = n * ctx;
    eprintln!(
        "calibration: {n} sequences of {ctx} tokens ({used} tokens{})",
        if used < asked {
            format!("; {asked} asked, the file holds {} tokens", ids.len())
        } else {
            String::new()
        }
    );
    Ok(seqs)
}

/// A Hugging Face folder as an F32 GGUF beside `out` (a hidden name), to prune from.
fn convert_hf(dir: &Path, out: &Path, threads: usize) -> Result<PathBuf, CliError> {
    let st =
        tuili_formats::Safetensors::open_dir(dir).map_err(|e| CliError::Usage(e.to_string()))?;
    let input = tuili_model::arch::hf_input(dir, &st).map_err(tuili_engine::EngineError::from)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.f32-input"));
    let opts = QuantizeOptions::new(FileType::F32, threads);
    quantize::quantize(&input, &tmp, &opts, &mut |_, _| {})
        .map_err(tuili_engine::EngineError::from)?;
    Ok(tmp)
}
