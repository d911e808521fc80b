//! `tuili quantize`: a GGUF in, a quantized GGUF out, with llama.cpp's types and recipes.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tuili_formats::GgufFile;
use tuili_model::quantize::{
    quantize as run_quantize, summary, FileType, QuantInput, QuantizeOptions,
};

use crate::error::CliError;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// Input model: a GGUF with F32, F16 or BF16 weights, or a Hugging Face folder.
    input: PathBuf,
    /// Output GGUF (written under a temporary name, renamed when complete).
    output: PathBuf,
    /// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M (= Q3_K), Q3_K_L, Q4_K_S,
    /// Q4_K_M (= Q4_K), Q5_K_S, Q5_K_M (= Q5_K), Q6_K, F16, BF16 or F32.
    #[arg(long = "type")]
    ftype: String,
    /// One type for every quantizable tensor (no per-tensor recipe).
    #[arg(long)]
    pure: bool,
    /// Re-quantize tensors that are already quantized.
    #[arg(long)]
    allow_requantize: bool,
    /// Worker threads (default: physical cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Print each tensor's type.
    #[arg(short, long)]
    verbose: bool,
}

pub fn quantize(a: QuantizeArgs) -> Result<(), CliError> {
    let ftype = FileType::parse(&a.ftype).ok_or_else(|| {
        let names: Vec<&str> = FileType::ALL.iter().map(|f| f.name()).collect();
        CliError::Usage(format!(
            "--type {}: use one of {}",
            a.ftype,
            names.join(", ")
        ))
    })?;
    // A GGUF file, or a Hugging Face folder converted on the way.
    let (file, st) = if a.input.is_dir() {
        let st = tuili_formats::Safetensors::open_dir(&a.input)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        (None, Some(st))
    } else {
        (Some(GgufFile::open(&a.input)?), None)
    };
    let input = match (&file, &st) {
        (Some(f), _) => QuantInput::from_gguf(f),
        (None, Some(st)) => {
            tuili_model::arch::hf_input(&a.input, st).map_err(tuili_engine::EngineError::from)?
        }
        (None, None) => unreachable!("one of the two is set above"),
    };
    let opts = QuantizeOptions {
        ftype,
        pure: a.pure,
        allow_requantize: a.allow_requantize,
        threads: a
            .threads
            .unwrap_or_else(tuili_core::parallel::default_threads),
    };
    let sizes: Vec<u64> = input.tensors.iter().map(|t| t.data.len() as u64).collect();
    let names: Vec<String> = input.tensors.iter().map(|t| t.name.clone()).collect();
    let total: u64 = sizes.iter().sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {elapsed}/{eta} | {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let mut lines = Vec::new();
    let r = run_quantize(&input, &a.output, &opts, &mut |i, p| {
        // Advance by the tensors before this one (the bar shows input bytes consumed).
        bar.set_position(sizes[..i].iter().sum());
        bar.set_message(format!("{} → {}", p.name, p.to));
        if a.verbose {
            let idx = names.iter().position(|n| n == &p.name).unwrap_or(i);
            lines.push(format!(
                "[{:>4}/{}] {:<36} {:?} {} → {}{}",
                idx + 1,
                names.len(),
                p.name,
                p.shape,
                p.from,
                p.to,
                if p.fallback {
                    " (fallback: row length)"
                } else {
                    ""
                }
            ));
        }
    });
    bar.finish_and_clear();
    let r = r.map_err(tuili_engine::EngineError::from)?;
    for l in lines {
        println!("{l}");
    }
    println!(
        "{}: {} in {:.1} s",
        a.output.display(),
        summary(&r),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
