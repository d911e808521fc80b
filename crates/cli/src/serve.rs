//! `tuili serve`: the OpenAI-compatible server (see `tuili-server`) on a model.

use std::sync::Arc;
use std::time::Duration;

use tuili_engine::sched::SchedConfig;
use tuili_engine::serve::{ServeConfig, ServeLoop};
use tuili_engine::KvType;
use tuili_server::{router, AppState, HttpConfig};

use crate::args::{CtxArgs, ModelArgs};
use crate::error::CliError;

/// Seconds a server whose group broke keeps answering `/health` with the reason (503)
/// before the group ends.
const BROKEN_GRACE: u64 = 10;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (also from TUILI_API_KEY).
    #[arg(long, env = "TUILI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model name clients use (default: the file or folder name).
    #[arg(long)]
    served_model_name: Option<String>,
    #[command(flatten)]
    ctx: CtxArgs,
    /// Memory for the paged KV cache (e.g. 512MiB, 2GiB); must hold one whole context.
    #[arg(long, default_value = "1GiB")]
    kv_memory: String,
    /// Element type of the KV cache: f16 (half the memory and reads of f32), q8_0 (a little
    /// over a quarter; head dimension a multiple of 32) or f32.
    #[arg(long, default_value = "f16")]
    kv_type: String,
    /// Positions per KV block (a power of two).
    #[arg(long, default_value_t = 16, value_parser = crate::args::count, allow_negative_numbers = true)]
    block_size: usize,
    /// Tokens per forward pass (decodes and prompt chunks together).
    #[arg(long, default_value_t = 512, value_parser = crate::args::count, allow_negative_numbers = true)]
    max_batch_tokens: usize,
    /// Sequences running at once.
    #[arg(long, default_value_t = 64, value_parser = crate::args::count, allow_negative_numbers = true)]
    max_seqs: usize,
    /// Requests waiting; more get 503 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = crate::args::count, allow_negative_numbers = true)]
    max_queue: usize,
    /// Largest request body (e.g. 8MiB).
    #[arg(long, default_value = "8MiB")]
    max_body: String,
    /// A Jinja chat template file, or `chatml`, instead of the model's.
    #[arg(long)]
    chat_template: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C (no new connections
    /// are taken meanwhile); then, or at a second signal, the server exits.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    /// Let pages from this origin call the API from a browser (e.g. `http://localhost:3000`,
    /// or `*`); without it no CORS headers are sent.
    #[arg(long)]
    cors_origin: Option<String>,
    /// Seconds a client has to send a request's body in full (then 408).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from when this is made (before the server says it
/// listens, so that a signal sent as soon as it does is not fatal).
struct StopSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    /// Needs the tokio runtime.
    fn new() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                streams: signal(SignalKind::terminate())
                    .and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// The next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.streams {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Parses `123`, `64KiB`, `512MiB`, `2GiB` (also KB/MB/GB as powers of 1000, K/M/G as 1024).
pub(crate) fn parse_size(name: &str, s: &str) -> Result<usize, CliError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => f64::NAN,
    };
    match num.parse::<f64>() {
        Ok(v) if mult.is_finite() && v >= 0.0 => Ok((v * mult) as usize),
        _ => Err(CliError::Usage(format!(
            "--{name} {s:?}: expected a size such as 512MiB or 2GiB"
        ))),
    }
}

pub fn serve(a: ServeArgs) -> Result<(), CliError> {
    let kv_memory = parse_size("kv-memory", &a.kv_memory)?;
    let kv_type = KvType::parse(&a.kv_type)
        .ok_or_else(|| CliError::Usage(format!("--kv-type {:?}: f16, q8_0 or f32", a.kv_type)))?;
    let max_body = parse_size("max-body", &a.max_body)?;
    let threads = a.model.threads();
    let mut engine = a.model.load(a.ctx.ctx_size, a.max_batch_tokens)?;
    if let Some(spec) = &a.chat_template {
        engine.set_chat_template(spec)?;
    }
    let model_name = a.served_model_name.clone().unwrap_or_else(|| {
        let path = &a.model.model;
        let s = path.to_string_lossy();
        let s = s.trim_end_matches('/');
        let base = s.rsplit('/').next().unwrap_or(s);
        if s.contains('/') && !path.exists() {
            s.to_string() // a hub id keeps its org/
        } else {
            base.trim_end_matches(".gguf").to_string()
        }
    });
    let n_ctx = engine.n_ctx();
    let cfg = ServeConfig {
        kv_memory,
        kv_type,
        block_size: a.block_size,
        sched: SchedConfig {
            max_batch_tokens: a.max_batch_tokens,
            max_seqs: a.max_seqs,
            max_queue: a.max_queue,
        },
    };
    if engine.comm().rank() > 0 {
        // Another rank of a tensor-parallel group: rank 0 serves; this one runs its steps.
        return Ok(ServeLoop::follow(&engine, &cfg)?);
    }
    let group = engine.comm().size() > 1;
    let server = ServeLoop::start(Arc::new(engine), cfg)?;
    if group {
        // When a rank stops answering, `/health` says why (503) for a while before the
        // watchdog ends the group.
        let m = server.metrics().clone();
        tuili_dist::watch::on_fire(Duration::from_secs(BROKEN_GRACE), move |why| {
            m.set_broken(why)
        });
    }
    let blocks = server
        .metrics()
        .kv_blocks_total
        .load(std::sync::atomic::Ordering::Relaxed);
    let state = Arc::new(AppState::new(
        server,
        HttpConfig {
            model_name: model_name.clone(),
            api_key: a.api_key.clone().filter(|k| !k.is_empty()),
            max_body,
            body_timeout: Duration::from_secs(a.body_timeout),
            cors_origin: a.cors_origin.clone(),
        },
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| CliError::Usage(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr()?;
        let mut signals = StopSignals::new();
        // Each token is a small write: send it now, not when Nagle's algorithm agrees.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        eprintln!(
            "tuili serve: {model_name} ({n_ctx} context, {threads} threads, {blocks} {} KV blocks of {}); listening on http://{local}{}",
            a.kv_type.to_ascii_uppercase(),
            a.block_size,
            if a.api_key.is_some() { " (API key required)" } else { "" }
        );
        let grace = a.shutdown_timeout;
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move {
                signals.next().await;
                eprintln!(
                    "tuili serve: stopping: no new connections; requests in flight have {grace} s to finish (a second signal ends them now)"
                );
                // Streams the deadline or a second signal cuts end with the process; the
                // exit code says which (0: the deadline, 130: the signal).
                tokio::spawn(async move {
                    tokio::select! {
                        _ = signals.next() => {
                            eprintln!("tuili serve: second signal: exiting now");
                            std::process::exit(130);
                        }
                        _ = tokio::time::sleep(Duration::from_secs(grace)) => {
                            eprintln!("tuili serve: {grace} s passed: exiting with requests still in flight");
                            std::process::exit(0);
                        }
                    }
                });
            })
            .await?;
        eprintln!("tuili serve: every request finished; exiting");
        Ok::<(), CliError>(())
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("x", "512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("x", "2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("x", "1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("x", "1000").unwrap(), 1000);
        assert_eq!(parse_size("x", "1MB").unwrap(), 1_000_000);
        assert!(parse_size("x", "lots").is_err());
        assert!(parse_size("x", "5 parsecs").is_err());
    }
}
