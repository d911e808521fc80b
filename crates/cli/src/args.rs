//! The options several commands share: the model and how it runs ([`ModelArgs`], for
//! `run`, `chat`, `serve` and `perplexity`), the context size ([`CtxArgs`]) and the sampling
//! chain ([`SamplingArgs`]).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tuili_dist::Comm;
use tuili_engine::{Engine, EngineConfig, GenerationDefaults};
use tuili_model::{Reduce, Split};
use tuili_sample::{SamplingParams, Stage, DEFAULT_ORDER};

use crate::error::CliError;

/// The model and how it runs.
#[derive(clap::Args)]
pub(crate) struct ModelArgs {
    /// Model: a GGUF file, a Hugging Face folder, or a hub id `org/name[@rev]`.
    #[arg(short, long)]
    pub(crate) model: PathBuf,
    /// Worker threads (default: physical cores).
    #[arg(short, long, value_parser = count, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Read the model into memory (huge pages) instead of memory-mapping it (llama.cpp's
    /// --no-mmap): a copy of the weights, streamed at full speed whatever state the page
    /// cache is in (see the README's Commands).
    #[arg(long)]
    no_mmap: bool,
    /// Tensor parallelism over N processes, started by `mpirun -np N` (a build with
    /// `--features mpi`; README, Distributed runs): each holds 1/N of every weight matrix.
    #[arg(long, default_value_t = 1)]
    tp: usize,
    /// Pipeline parallelism over N processes (`mpirun -np N`): each holds a range of layers.
    #[arg(long, default_value_t = 1)]
    pp: usize,
    /// Layers per pipeline stage, e.g. `12,10` (default: balanced by bytes).
    #[arg(long, value_delimiter = ',')]
    layer_split: Vec<usize>,
    /// Tensor parallelism: how the all-reduce sends each rank's partial sums, `f32` or
    /// `q8_0` (a quarter of the bytes; README, Distributed runs, for its perplexity cost).
    #[arg(long, default_value = "f32", value_parser = parse_comm_type)]
    comm_type: Reduce,
    /// Distributed runs: seconds a rank may wait on the others in one communication before
    /// the run is declared broken and every process ends (0: wait for ever).
    #[arg(long, default_value_t = DEFAULT_COMM_TIMEOUT)]
    comm_timeout: u64,
}

/// `--comm-timeout`'s default: longer than any one step a CPU computes.
pub(crate) const DEFAULT_COMM_TIMEOUT: u64 = 120;

impl ModelArgs {
    /// The worker threads: as given, else the library's default (physical cores).
    pub(crate) fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(tuili_core::parallel::default_threads)
    }

    /// Loads the model with a context of `n_ctx` (0: the model's, at most 4096) and `n_batch`
    /// tokens per forward pass.
    pub(crate) fn load(&self, n_ctx: usize, n_batch: usize) -> Result<Engine, CliError> {
        let cfg = EngineConfig {
            n_ctx,
            n_batch,
            threads: self.threads(),
        };
        let world = join_group(self.tp, self.pp, self.comm_timeout)?;
        let split =
            make_split(world, self.tp, self.pp, &self.layer_split)?.with_reduce(self.comm_type);
        let engine = Engine::load_dist(&self.model, cfg, load_how(self.no_mmap), split)?;
        if let Some(w) = ctx_warning(&engine) {
            eprintln!("warning: {w}");
        }
        Ok(engine)
    }
}

/// A context larger than the model was trained for is allowed (as llama.cpp allows it) but
/// said, with the RoPE the positions past it get.
pub(crate) fn ctx_warning(engine: &Engine) -> Option<String> {
    let c = engine.model().config();
    let (n_ctx, train) = (engine.n_ctx(), c.n_ctx_train);
    if n_ctx <= train {
        return None;
    }
    let rope = if c.rope_freq_scale != 1.0 {
        format!(
            "linear RoPE scaling ×{} (base {})",
            1.0 / c.rope_freq_scale,
            c.rope_freq_base
        )
    } else {
        format!(
            "RoPE base {} and no linear scaling, so quality past {train} tokens is likely to fall",
            c.rope_freq_base
        )
    };
    Some(format!(
        "the context of {n_ctx} tokens is larger than the {train} this model was trained on; positions past it get {rope}"
    ))
}

/// A count given on the command line (`--top-k`, `-n`, `-c`…): a whole number, 0 or more.
/// Negative numbers are let through clap's parser to get this message rather than clap's
/// "unexpected argument".
pub(crate) fn count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("must be 0 or more, got {n}")),
        Ok(n) => usize::try_from(n).map_err(|_| format!("{n} is too large")),
        Err(_) => Err(format!("expected a whole number, got {s:?}")),
    }
}

/// `--comm-type`.
pub(crate) fn parse_comm_type(s: &str) -> Result<Reduce, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(Reduce::F32),
        "q8_0" => Ok(Reduce::Q8_0),
        _ => Err(format!("{s:?}: f32 or q8_0")),
    }
}

/// How the model is split over the `world` of `tp × pp` processes.
pub(crate) fn make_split(
    world: Arc<dyn Comm>,
    tp: usize,
    pp: usize,
    layer_split: &[usize],
) -> Result<Split, CliError> {
    if !layer_split.is_empty() && pp == 1 {
        return Err(CliError::Usage("--layer-split needs --pp".into()));
    }
    let layers = (!layer_split.is_empty()).then(|| layer_split.to_vec());
    Ok(match (tp, pp) {
        (_, 1) => Split::tp(world),
        (1, _) => Split::pp(world, layers),
        _ => Split::tp_pp(world, tp, layers).map_err(tuili_engine::EngineError::from)?,
    })
}

/// The processes of this run (`--tp N` or `--pp N`: the N that `mpirun` started; alone:
/// one). Ranks other than 0 compute their part and print nothing: their standard output goes
/// nowhere, and their standard error too, except errors ([`report_error`]). In a group, a
/// watchdog ends every process when a communication waits longer than `timeout` seconds.
pub(crate) fn join_group(tp: usize, pp: usize, timeout: u64) -> Result<Arc<dyn Comm>, CliError> {
    if tp == 0 || pp == 0 {
        return Err(CliError::Usage("--tp and --pp: give at least 1".into()));
    }
    let what = match (tp, pp) {
        (_, 1) => format!("--tp {tp}"),
        (1, _) => format!("--pp {pp}"),
        _ => format!("--tp {tp} --pp {pp}"),
    };
    let comm =
        tuili_dist::launch::world(tp * pp, &what).map_err(|e| CliError::Usage(e.to_string()))?;
    if comm.rank() > 0 {
        silence();
    }
    // Set once per process (a command joins one group).
    let _ = GROUP.set(comm.clone());
    if comm.size() > 1 {
        tuili_dist::watch::start(comm.clone(), Duration::from_secs(timeout), |why| {
            write_saved(&format!("error: {why}\n"))
        });
    }
    Ok(comm)
}

/// The group joined, for the error path.
static GROUP: OnceLock<Arc<dyn Comm>> = OnceLock::new();
/// The standard error this process started with (kept when a follower's is silenced).
static STDERR: OnceLock<i32> = OnceLock::new();

/// Sends standard output and error to /dev/null, keeping a copy of standard error for
/// errors.
fn silence() {
    // SAFETY: plain file-descriptor calls on descriptors this process owns (0–2 and the ones
    // they return); a failure leaves the descriptors as they were.
    unsafe {
        let saved = libc::dup(2);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if saved >= 0 && null >= 0 {
            let _ = STDERR.set(saved);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
    // A panic is an error too: said on the saved standard error.
    std::panic::set_hook(Box::new(|info| write_saved(&format!("{info}\n"))));
}

/// `line` on the standard error this process started with.
fn write_saved(line: &str) {
    match STDERR.get() {
        // SAFETY: `fd` is the duplicate of standard error made in `silence`, open for the
        // life of the process; `line` is a valid buffer of its length.
        Some(&fd) => unsafe {
            libc::write(fd, line.as_ptr().cast(), line.len());
        },
        None => eprint!("{line}"),
    }
}

/// Leaves the group after a command that went well (every rank gets here).
pub(crate) fn leave_group() {
    if let Some(g) = GROUP.get() {
        g.finalize();
    }
}

/// Ends the other processes of the group, if any, when this one stops early without an error
/// (its reader went away): they would otherwise wait for it.
pub(crate) fn end_group() {
    if let Some(g) = GROUP.get().filter(|g| g.size() > 1) {
        g.abort(0);
    }
}

/// Prints a command's error, one line on standard error (a follower's saved one, its rank
/// named); in a group, then ends every process of it, so that none waits for this one.
pub(crate) fn report_error(msg: &str) {
    let group = GROUP.get();
    let line = match group {
        Some(g) if g.size() > 1 => format!("error (rank {} of {}): {msg}\n", g.rank(), g.size()),
        _ => format!("error: {msg}\n"),
    };
    write_saved(&line);
    if let Some(g) = group.filter(|g| g.size() > 1) {
        g.abort(1);
    }
}

/// The context of `run`, `chat` and `serve`.
#[derive(clap::Args)]
pub(crate) struct CtxArgs {
    /// Context size in tokens (0 = the model's, at most 4096).
    #[arg(short = 'c', long, default_value_t = 0, value_parser = count, allow_negative_numbers = true)]
    pub(crate) ctx_size: usize,
}

/// `--no-mmap` → read the model into memory; otherwise map it.
pub(crate) fn load_how(no_mmap: bool) -> tuili_formats::Load {
    if no_mmap {
        tuili_formats::Load::Memory
    } else {
        tuili_formats::Load::Map
    }
}

/// The sampling chain's options (see the README for the order they apply in).
#[derive(clap::Args)]
pub(crate) struct SamplingArgs {
    /// Sampling temperature; 0 = greedy. Default: the model's generation_config, else 0.8.
    #[arg(long, alias = "temp", allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Keep only the K most likely tokens (0 = all). Default: the model's, else 40.
    #[arg(long, value_parser = count, allow_negative_numbers = true)]
    top_k: Option<usize>,
    /// Nucleus sampling: keep the most likely tokens up to probability P (1 = off). Default:
    /// the model's, else 0.95.
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    min_p: f32,
    /// Locally typical sampling with mass P (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    typical_p: f32,
    /// Repetition penalty for tokens in the window (1 = off). Default: the model's, else 1.
    #[arg(long, alias = "repetition-penalty", allow_negative_numbers = true)]
    repeat_penalty: Option<f32>,
    /// Presence penalty (OpenAI): subtracted once for each token in the window.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Frequency penalty (OpenAI): subtracted for each occurrence in the window.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Penalty window: the last N tokens of prompt and output (-1 = all, 0 = penalties off).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    repeat_last_n: i64,
    /// Add BIAS to a token's logit: ID=BIAS (repeatable; BIAS may be -inf to ban the token).
    #[arg(long, value_name = "ID=BIAS", allow_negative_numbers = true)]
    logit_bias: Vec<String>,
    /// Never repeat an n-gram of this size (0 = off).
    #[arg(long, default_value_t = 0, value_parser = count, allow_negative_numbers = true)]
    no_repeat_ngram_size: usize,
    /// Order of the stages, e.g. "top_k;typical_p;top_p;min_p;temperature" (the default).
    #[arg(long)]
    samplers: Option<String>,
    /// Random seed (default: a fresh one, printed on stderr).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

impl SamplingArgs {
    /// The parameters: what the user gave, else the model's defaults (`defaults`), else
    /// llama.cpp's.
    pub(crate) fn params(
        &self,
        seed: u64,
        defaults: Option<&GenerationDefaults>,
    ) -> Result<SamplingParams, CliError> {
        let d = defaults.cloned().unwrap_or_default();
        let mut logit_bias = Vec::new();
        for b in &self.logit_bias {
            let parsed = b.split_once(['=', ':']).and_then(|(id, v)| {
                let v = v.trim();
                let bias = if v.eq_ignore_ascii_case("-inf") {
                    Some(f32::NEG_INFINITY)
                } else {
                    v.parse::<f32>().ok()
                };
                Some((id.trim().parse::<u32>().ok()?, bias?))
            });
            match parsed {
                Some(p) => logit_bias.push(p),
                None => {
                    return Err(CliError::Usage(format!(
                        "invalid --logit-bias {b:?}: expected ID=BIAS, e.g. 13=-2.5 or 2=-inf"
                    )))
                }
            }
        }
        let order = match &self.samplers {
            Some(s) => Stage::parse_order(s)?,
            None => DEFAULT_ORDER.to_vec(),
        };
        let p = SamplingParams {
            temperature: self.temperature.or(d.temperature).unwrap_or(0.8),
            top_k: self.top_k.or(d.top_k).unwrap_or(40),
            top_p: self.top_p.or(d.top_p).unwrap_or(0.95),
            min_p: self.min_p,
            typical_p: self.typical_p,
            repetition_penalty: self.repeat_penalty.or(d.repetition_penalty).unwrap_or(1.0),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.repeat_last_n,
            logit_bias,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            order,
            seed,
        };
        p.validate()?;
        Ok(p)
    }
}
