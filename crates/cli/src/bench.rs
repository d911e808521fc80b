//! `tuili bench`: prompt processing (pp) and generation (tg) speed, as llama-bench measures
//! them, and `--membw`: this machine's read bandwidth and the model's decode roofline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tuili_kv::{BlockAllocator, BlockTable, KvType, PagedStore};
use tuili_model::{Handoff, OutRows, SeqSpan};

use tuili_core::{DType, ThreadPool};
use tuili_dist::meter::Metered;
use tuili_dist::Comm;
use tuili_engine::GenerateRequest;
use tuili_formats::GgufFile;
use tuili_model::{Logits, Model, Scratch};

use crate::error::CliError;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model file (GGUF only: convert a Hugging Face folder first, `tuili quantize DIR
    /// OUT.gguf --type f16`).
    #[arg(short, long)]
    pub model: PathBuf,
    /// Prompt tokens per pp test (0 = skip pp).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens per tg test (0 = skip tg).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Thread counts to test, comma-separated.
    #[arg(short = 't', long, value_delimiter = ',', default_values_t = vec![tuili_core::parallel::default_threads()])]
    pub threads: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub reps: usize,
    /// Output format.
    #[arg(short = 'o', long, default_value = "md", value_parser = ["md", "json"])]
    pub output: String,
    /// Also measure memory read bandwidth and print the decode roofline.
    #[arg(long)]
    pub membw: bool,
    /// Read the model into memory (huge pages) instead of memory-mapping it (as
    /// `tuili run --no-mmap`).
    #[arg(long)]
    pub no_mmap: bool,
    /// Tensor parallelism over N processes started by `mpirun -np N` (as `run --tp`).
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Pipeline parallelism over N processes (as `run --pp`).
    #[arg(long, default_value_t = 1)]
    pub pp: usize,
    /// Layers per pipeline stage (as `run --layer-split`).
    #[arg(long, value_delimiter = ',')]
    pub layer_split: Vec<usize>,
    /// The all-reduce's encoding, `f32` or `q8_0` (as `run --comm-type`).
    #[arg(long, default_value = "f32", value_parser = crate::args::parse_comm_type)]
    pub comm_type: tuili_model::Reduce,
    /// Batched decoding: for each B, B sequences of --batch-ctx tokens decode n-gen steps
    /// together through the paged KV cache (what `tuili serve` runs); aggregate tokens/s.
    #[arg(short = 'b', long = "batch", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Context each batched sequence starts from.
    #[arg(long, default_value_t = 64)]
    pub batch_ctx: usize,
    /// Element type of the paged cache of batched decoding: f16, q8_0 or f32 (as `tuili
    /// serve --kv-type`).
    #[arg(long, default_value = "f16")]
    pub kv_type: String,
}

struct Result1 {
    n_threads: usize,
    n_prompt: usize,
    n_gen: usize,
    samples_ns: Vec<u64>,
}

impl Result1 {
    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }
    fn samples_ts(&self) -> Vec<f64> {
        self.samples_ns
            .iter()
            .map(|&ns| self.tokens() as f64 * 1e9 / ns as f64)
            .collect()
    }
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

/// The type most of the weight bytes are in ("Q4_0", "F16", …).
fn dominant_type(f: &GgufFile) -> DType {
    let mut by: Vec<(DType, u64)> = Vec::new();
    for t in &f.tensors {
        match by.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some(e) => e.1 += t.size,
            None => by.push((t.dtype, t.size)),
        }
    }
    by.into_iter()
        .max_by_key(|e| e.1)
        .map(|e| e.0)
        .unwrap_or(DType::F32)
}

fn params_label(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else {
        format!("{}M", (n as f64 / 1e6).round())
    }
}

/// Sustained read bandwidth (bytes/s): `threads` threads summing a 1 GiB buffer, best of 5.
pub fn measure_membw(threads: usize) -> f64 {
    let n = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let pool = ThreadPool::new(threads);
    let mut best = 0f64;
    for _ in 0..5 {
        let sums: Vec<std::sync::atomic::AtomicU64> = (0..threads)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        let t = Instant::now();
        pool.run(&|i, nt| {
            let r = tuili_core::pool::split(n, i, nt, 64);
            let mut acc = [0u64; 8];
            for c in buf[r].chunks_exact(8) {
                for k in 0..8 {
                    acc[k] = acc[k].wrapping_add(c[k]);
                }
            }
            sums[i].store(
                acc.iter().fold(0, |a, b| a.wrapping_add(*b)),
                std::sync::atomic::Ordering::Relaxed,
            );
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(&sums);
        best = best.max((n * 8) as f64 / secs);
    }
    best
}

fn run_test(
    model: &Model,
    pool: &ThreadPool,
    n_prompt: usize,
    n_gen: usize,
) -> Result<u64, CliError> {
    let n_vocab = model.config().n_vocab as u32;
    let mut kv = model
        .new_cache(n_prompt + n_gen + 1)
        .map_err(tuili_engine::EngineError::from)?;
    let mut scratch = Scratch::new();
    // Fixed pseudo-random tokens: speed does not depend on which.
    let mut s = 0x1234_5678u64;
    let mut tok = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % n_vocab as u64) as u32
    };
    let t = Instant::now();
    if n_prompt > 0 {
        let prompt: Vec<u32> = (0..n_prompt).map(|_| tok()).collect();
        model
            .forward(&prompt, &mut kv, &mut scratch, Logits::Last, pool)
            .map_err(tuili_engine::EngineError::from)?;
    }
    // What a decode step with the default sampling chain (or greedy) asks for: under tensor
    // parallelism, only each rank's best logits are gathered.
    let step = GenerateRequest::new("", 1, Default::default()).step_logits();
    for _ in 0..n_gen {
        let next = tok();
        model
            .forward(&[next], &mut kv, &mut scratch, step, pool)
            .map_err(tuili_engine::EngineError::from)?;
    }
    Ok(t.elapsed().as_nanos() as u64)
}

/// B sequences of `ctx` random tokens (prefilled together), then `n_gen` decode steps of one
/// token per sequence, all through a paged cache of `kv_type`; returns the decode steps' time.
fn run_batched(
    model: &Model,
    pool: &ThreadPool,
    kv_type: KvType,
    (b, ctx, n_gen): (usize, usize, usize),
) -> Result<u64, CliError> {
    let cfg = model.config();
    let err = |e: tuili_model::ModelError| CliError::from(tuili_engine::EngineError::from(e));
    let bs = 16;
    let per_seq = (ctx + n_gen).div_ceil(bs);
    let mut alloc = BlockAllocator::new(b * per_seq, bs);
    let mut store = PagedStore::new(
        kv_type,
        cfg.n_layer,
        b * per_seq,
        bs,
        cfg.n_head_kv,
        cfg.head_dim,
    )
    .map_err(|e| err(e.into()))?;
    let mut flat = Vec::new();
    let mut offsets = vec![0];
    for _ in 0..b {
        let mut t = BlockTable::new();
        alloc
            .grow(&mut t, ctx + n_gen)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        flat.extend_from_slice(&t.blocks);
        offsets.push(flat.len());
    }
    let n_vocab = cfg.n_vocab as u64;
    let mut s = 0x9E37_79B9u64;
    let mut tok = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % n_vocab) as u32
    };
    let mut scratch = Scratch::new();
    let mut batch = store.batch(&flat, &offsets);
    // One forward pass of the B sequences (logits of `out`, not read).
    let mut run = |tokens: &[u32], spans: &[SeqSpan], out: OutRows| {
        let max_ctx = ctx + n_gen;
        let pass = model.forward_spans(
            Handoff::Lockstep,
            None,
            tokens,
            spans,
            &mut batch,
            max_ctx,
            &mut scratch,
            out,
            pool,
        );
        pass.map(|_| ()).map_err(err)
    };
    if ctx > 0 {
        let tokens: Vec<u32> = (0..b * ctx).map(|_| tok()).collect();
        let spans: Vec<SeqSpan> = (0..b)
            .map(|i| SeqSpan {
                start: i * ctx,
                len: ctx,
                pos0: 0,
            })
            .collect();
        run(&tokens, &spans, OutRows::Range(0..0))?;
    }
    let rows: Vec<usize> = (0..b).collect();
    let t = Instant::now();
    for step in 0..n_gen {
        let tokens: Vec<u32> = (0..b).map(|_| tok()).collect();
        let spans: Vec<SeqSpan> = (0..b)
            .map(|i| SeqSpan {
                start: i,
                len: 1,
                pos0: ctx + step,
            })
            .collect();
        run(&tokens, &spans, OutRows::List(&rows))?;
    }
    Ok(t.elapsed().as_nanos() as u64)
}

pub fn bench(a: BenchArgs) -> Result<(), CliError> {
    if a.reps == 0 {
        return Err(CliError::Usage("--reps must be at least 1".into()));
    }
    if let Some(&bad) = a.threads.iter().find(|&&t| t == 0 || t > 1024) {
        return Err(CliError::Usage(format!(
            "--threads {bad}: must be between 1 and 1024"
        )));
    }
    if a.batch.iter().any(|&b| b == 0 || b > 1024) {
        return Err(CliError::Usage("--batch sizes must be 1 to 1024".into()));
    }
    let kv_type = KvType::parse(&a.kv_type).ok_or_else(|| {
        CliError::Usage(format!(
            "--kv-type {}: expected f16, q8_0 or f32",
            a.kv_type
        ))
    })?;
    if a.model.is_dir() {
        return Err(CliError::Usage(format!(
            "{}: bench reads GGUF files; convert the folder first (tuili quantize {0} OUT.gguf --type f16)",
            a.model.display()
        )));
    }
    let file = Arc::new(GgufFile::open_with(
        &a.model,
        crate::args::load_how(a.no_mmap),
    )?);
    let model_size: u64 = file.tensors.iter().map(|t| t.size).sum();
    let n_params: u64 = file.tensors.iter().map(|t| t.n_elements()).sum();
    let dtype = dominant_type(&file);
    // In a group, what passes between the ranks is counted (the report after the table).
    let comm = Arc::new(Metered::new(crate::args::join_group(
        a.tp,
        a.pp,
        crate::args::DEFAULT_COMM_TIMEOUT,
    )?));
    let split =
        crate::args::make_split(comm.clone(), a.tp, a.pp, &a.layer_split)?.with_reduce(a.comm_type);
    let model =
        Model::load_split(Arc::clone(&file), split).map_err(tuili_engine::EngineError::from)?;
    let model_type = format!(
        "{} {} {}",
        model.config().arch.name,
        params_label(n_params),
        dtype
    );
    let mut tests: Vec<(usize, usize)> = Vec::new();
    if a.n_prompt > 0 {
        tests.push((a.n_prompt, 0));
    }
    if a.n_gen > 0 {
        tests.push((0, a.n_gen));
    }
    let mut results = Vec::new();
    for &threads in &a.threads {
        let pool = ThreadPool::new(threads);
        for &(p, g) in &tests {
            // One warm-up run (page in the weights, size the buffers), then the samples.
            run_test(
                &model,
                &pool,
                p.min(16).max(if p > 0 { 1 } else { 0 }),
                g.min(4),
            )?;
            let mut samples = Vec::with_capacity(a.reps);
            for _ in 0..a.reps {
                samples.push(run_test(&model, &pool, p, g)?);
            }
            results.push(Result1 {
                n_threads: threads,
                n_prompt: p,
                n_gen: g,
                samples_ns: samples,
            });
        }
    }
    // Batched decoding rows: (threads, B, samples of the decode time).
    let mut batched = Vec::new();
    for &threads in &a.threads {
        let pool = ThreadPool::new(threads);
        for &b in &a.batch {
            run_batched(&model, &pool, kv_type, (b, a.batch_ctx, a.n_gen.min(4)))?;
            let samples: Vec<f64> = (0..a.reps)
                .map(|_| {
                    run_batched(&model, &pool, kv_type, (b, a.batch_ctx, a.n_gen))
                        .map(|ns| (b * a.n_gen) as f64 * 1e9 / ns as f64)
                })
                .collect::<Result<_, _>>()?;
            batched.push((threads, b, samples));
        }
    }
    let comm_report = if a.tp * a.pp > 1 {
        Some(comm_report(
            &model,
            &comm,
            *a.threads.first().unwrap_or(&1),
        )?)
    } else {
        None
    };
    let bw = if a.membw {
        Some(measure_membw(*a.threads.iter().max().unwrap_or(&1)))
    } else {
        None
    };
    let weight_bytes = model.weight_bytes_per_token() as f64;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let filename = a.model.display().to_string();
    if a.output == "json" {
        let info = ModelInfo {
            filename: &filename,
            model_type: &model_type,
            model_size,
            n_params,
            isa: model.isa().name(),
            use_mmap: !a.no_mmap,
        };
        write_json(&mut out, &info, &results)?;
    } else {
        writeln!(
            out,
            "| model | size | params | backend | threads | test | t/s |"
        )?;
        writeln!(out, "| --- | ---: | ---: | --- | ---: | ---: | ---: |")?;
        for r in &results {
            let (m, sd) = mean_sd(&r.samples_ts());
            let test = if r.n_gen == 0 {
                format!("pp{}", r.n_prompt)
            } else {
                format!("tg{}", r.n_gen)
            };
            writeln!(
                out,
                "| {model_type} | {:.2} MiB | {:.2} {} | CPU ({}{}{}) | {} | {test} | {m:.2} ± {sd:.2} |",
                model_size as f64 / (1u64 << 20) as f64,
                if n_params >= 1_000_000_000 { n_params as f64 / 1e9 } else { n_params as f64 / 1e6 },
                if n_params >= 1_000_000_000 { "B" } else { "M" },
                model.isa().name(),
                if a.no_mmap { ", no mmap" } else { "" },
                match (a.tp, a.pp) {
                    (1, 1) => String::new(),
                    (t, 1) => format!(", tp {t}"),
                    (1, p) => format!(", pp {p}"),
                    (t, p) => format!(", tp {t} × pp {p}"),
                },
                r.n_threads,
            )?;
        }
    }
    if !batched.is_empty() {
        writeln!(
            out,
            "\n| model | threads | sequences | context | test | aggregate t/s | × 1 sequence |"
        )?;
        writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
        for (threads, b, samples) in &batched {
            let (m, sd) = mean_sd(samples);
            let one = batched
                .iter()
                .find(|(t, b1, _)| t == threads && *b1 == 1)
                .map(|(_, _, s)| mean_sd(s).0);
            writeln!(
                out,
                "| {model_type} | {threads} | {b} | {} | tg{} | {m:.2} ± {sd:.2} | {} |",
                a.batch_ctx,
                a.n_gen,
                one.map_or("-".into(), |o| format!("{:.2}", m / o))
            )?;
        }
    }
    if let Some(bw) = bw {
        let roof = bw / weight_bytes;
        let mut line = format!(
            "memory read bandwidth: {:.2} GB/s; weights read per token: {:.1} MB; decode roofline: {:.2} tokens/s",
            bw / 1e9,
            weight_bytes / 1e6,
            roof
        );
        if let Some(tg) = results
            .iter()
            .filter(|r| r.n_gen > 0)
            .map(|r| mean_sd(&r.samples_ts()).0)
            .reduce(f64::max)
        {
            line.push_str(&format!(
                "; best tg = {:.0}% of roofline",
                100.0 * tg / roof
            ));
        }
        // On stderr for JSON output, so that stdout stays one JSON document.
        if a.output == "json" {
            eprintln!("{line}");
        } else {
            writeln!(out, "\n{line}")?;
        }
    }
    if let Some(lines) = comm_report {
        for line in lines {
            if a.output == "json" {
                eprintln!("{line}");
            } else {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

/// Tensor parallelism's costs, measured on a decode run of 32 tokens (every rank runs it):
/// collectives and bytes per token and per layer, collective latency, and each rank's
/// resident memory (gathered to rank 0).
fn comm_report(model: &Model, comm: &Metered, threads: usize) -> Result<Vec<String>, CliError> {
    let pool = ThreadPool::new(threads);
    let n = 32;
    comm.take();
    run_test(model, &pool, 1, n)?;
    let st = comm.take();
    let per_tok = |v: u64| v as f64 / (n + 1) as f64;
    let layers = model.config().n_layer as f64;
    // The all-reduce alone (one token's hidden row, after a barrier: no waiting for a slower
    // rank's matrix product in it).
    let e = model.config().n_embd;
    let (mut row, mut scratch) = (vec![1f32; e], Vec::new());
    let fail = |e: tuili_dist::DistError| CliError::Engine(e.into());
    comm.barrier().map_err(fail)?;
    comm.take();
    for _ in 0..500 {
        comm.all_reduce_sum(&mut row, &mut scratch).map_err(fail)?;
    }
    let alone = comm.take();
    let size = comm.size();
    let [file, anon] = resident_mib();
    // Every rank's figures (a pipeline's stages send different amounts).
    let mine = [
        file as f32,
        anon as f32,
        per_tok(st.gathers + st.others) as f32,
        (per_tok(st.bytes) / 1024.0) as f32,
    ];
    let mut all = vec![0f32; mine.len() * size];
    comm.all_gather(&mine, &mut all).map_err(fail)?;
    let ranks: Vec<&[f32]> = all.chunks_exact(mine.len()).collect();
    let rss: Vec<String> = ranks
        .iter()
        .map(|m| format!("{:.0} + {:.0}", m[0], m[1]))
        .collect();
    let mean = |i: usize| ranks.iter().map(|m| m[i] as f64).sum::<f64>() / size as f64;
    let (colls, kib) = (mean(2), mean(3));
    let each = if ranks.iter().all(|m| m[3] == ranks[0][3]) {
        String::new()
    } else {
        let v: Vec<String> = ranks.iter().map(|m| format!("{:.1}", m[3])).collect();
        format!(", each rank's {} KiB", v.join(", "))
    };
    Ok(vec![
        format!(
            "\n{} {size}: {colls:.1} collectives and {kib:.1} KiB sent per rank per token ({:.2} and {:.2} KiB per layer{each}); in the forward pass a collective takes {:.1} µs median, {:.1} µs p99 (waiting for the slowest rank included)",
            if model.split().pp.size() > 1 { "pp" } else { "tp" },
            colls / layers,
            kib / layers,
            st.latency_quantile(0.5) as f64 / 1e3,
            st.latency_quantile(0.99) as f64 / 1e3,
        ),
        format!(
            "all-reduce of one token's hidden row ({e} floats) alone: {:.1} µs median, {:.1} µs p99",
            alone.latency_quantile(0.5) as f64 / 1e3,
            alone.latency_quantile(0.99) as f64 / 1e3,
        ),
        format!(
            "resident memory per rank, file-mapped + anonymous (MiB): {}",
            rss.join(", ")
        ),
    ])
}

/// This process's resident memory in MiB: pages of mapped files (the weights) and anonymous
/// memory (copies, buffers, the KV cache); 0 where /proc does not say.
fn resident_mib() -> [f64; 2] {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    ["RssFile:", "RssAnon:"].map(|key| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    })
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// What the JSON records say of the model and how it was run.
struct ModelInfo<'a> {
    filename: &'a str,
    model_type: &'a str,
    model_size: u64,
    n_params: u64,
    isa: &'a str,
    use_mmap: bool,
}

/// llama-bench's JSON (an array of test records, same field names).
fn write_json(
    out: &mut impl Write,
    info: &ModelInfo<'_>,
    results: &[Result1],
) -> std::io::Result<()> {
    let ModelInfo {
        filename,
        model_type,
        model_size,
        n_params,
        isa,
        use_mmap,
    } = *info;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    writeln!(out, "[")?;
    for (i, r) in results.iter().enumerate() {
        let ns: Vec<f64> = r.samples_ns.iter().map(|&v| v as f64).collect();
        let (avg_ns, sd_ns) = mean_sd(&ns);
        let ts = r.samples_ts();
        let (avg_ts, sd_ts) = mean_sd(&ts);
        let list = |v: &[String]| v.join(", ");
        writeln!(out, "  {{")?;
        writeln!(
            out,
            "    \"build_commit\": {},",
            json_str(option_env!("TUILI_COMMIT").unwrap_or("unknown"))
        )?;
        writeln!(out, "    \"build_number\": 0,")?;
        writeln!(out, "    \"cpu_info\": {},", json_str(&cpu_name()))?;
        writeln!(out, "    \"gpu_info\": \"\",")?;
        writeln!(
            out,
            "    \"backends\": {},",
            json_str(&format!("CPU ({isa})"))
        )?;
        writeln!(out, "    \"model_filename\": {},", json_str(filename))?;
        writeln!(out, "    \"model_type\": {},", json_str(model_type))?;
        writeln!(out, "    \"model_size\": {model_size},")?;
        writeln!(out, "    \"model_n_params\": {n_params},")?;
        writeln!(out, "    \"n_batch\": {},", r.n_prompt.max(1))?;
        writeln!(out, "    \"n_ubatch\": {},", r.n_prompt.max(1))?;
        writeln!(out, "    \"n_threads\": {},", r.n_threads)?;
        writeln!(out, "    \"type_k\": \"f32\",")?;
        writeln!(out, "    \"type_v\": \"f32\",")?;
        writeln!(out, "    \"n_gpu_layers\": 0,")?;
        writeln!(out, "    \"use_mmap\": {use_mmap},")?;
        writeln!(out, "    \"n_prompt\": {},", r.n_prompt)?;
        writeln!(out, "    \"n_gen\": {},", r.n_gen)?;
        writeln!(out, "    \"test_time\": \"{now}\",")?;
        writeln!(out, "    \"avg_ns\": {},", avg_ns.round() as u64)?;
        writeln!(out, "    \"stddev_ns\": {},", sd_ns.round() as u64)?;
        writeln!(out, "    \"avg_ts\": {avg_ts:.6},")?;
        writeln!(out, "    \"stddev_ts\": {sd_ts:.6},")?;
        writeln!(
            out,
            "    \"samples_ns\": [ {} ],",
            list(
                &r.samples_ns
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
            )
        )?;
        writeln!(
            out,
            "    \"samples_ts\": [ {} ]",
            list(&ts.iter().map(|v| format!("{v:.6}")).collect::<Vec<_>>())
        )?;
        writeln!(out, "  }}{}", if i + 1 < results.len() { "," } else { "" })?;
    }
    writeln!(out, "]")
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Arguments of `tuili synth`: writes a random-weight model of a real shape.
#[derive(clap::Args)]
pub struct SynthArgs {
    /// Shape: 125m (dim 768, 12 layers), 1.1b (TinyLlama: dim 2048, 22 layers, GQA 32/4) or
    /// test (dim 256, 8 layers, GQA 4/1, vocabulary 512).
    #[arg(long)]
    pub shape: String,
    /// Weight type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (K-quants: random blocks;
    /// Q8_0_U8 … Q8_0_U120: random rows pruned by magnitude to the room, unstructured).
    #[arg(long = "type")]
    pub dtype: String,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn synth(a: SynthArgs) -> Result<(), CliError> {
    use tuili_model::synth::{synth_gguf, SynthSpec};
    let dtype = DType::from_name(&a.dtype)
        .filter(|&d| tuili_kernels::types::traits(d).is_some())
        .ok_or_else(|| {
            CliError::Usage(format!("--type {}: not a supported tensor type", a.dtype))
        })?;
    let spec = SynthSpec::named(&a.shape, dtype, a.seed)
        .ok_or_else(|| CliError::Usage(format!("--shape {}: use 125m, 1.1b or test", a.shape)))?;
    let t = Instant::now();
    let w = synth_gguf(&spec).map_err(tuili_engine::EngineError::from)?;
    write_atomically(&a.out, &w)?;
    eprintln!(
        "wrote {} in {:.1} s",
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes to a temporary name and renames, so an interrupted run leaves no half file.
fn write_atomically(path: &Path, w: &tuili_formats::GgufWriter) -> Result<(), CliError> {
    let tmp = path.with_extension("gguf.partial");
    w.write(&tmp)
        .map_err(|e| CliError::Output(std::io::Error::other(e.to_string())))?;
    tuili_formats::release_written(&std::fs::File::open(&tmp)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
