//! The handle a front end holds ([`ServeLoop`]): it checks the settings, sizes the paged
//! pool, starts the loop's thread, hands requests to it, and stops it.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tuili_kv::{BlockAllocator, PagedStore};
use tuili_model::Scratch;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::sched::Scheduler;
use crate::serve::batch::Link;
use crate::serve::config::ServeConfig;
use crate::serve::events::{Event, Msg, Rejection, Submission};
use crate::serve::metrics::Metrics;
use crate::serve::runner::Loop;

/// A running serving loop.
pub struct ServeLoop {
    engine: Arc<Engine>,
    tx: Mutex<Sender<Msg>>,
    metrics: Arc<Metrics>,
    thread: Option<JoinHandle<()>>,
}

impl ServeLoop {
    /// Starts the loop's thread with a pool of `cfg.kv_memory` bytes, which must hold at
    /// least one whole context (so that any request fits once the others give way).
    pub fn start(engine: Arc<Engine>, cfg: ServeConfig) -> Result<ServeLoop, EngineError> {
        let c = engine.model().config();
        let bad = |reason: String| EngineError::BadSetting {
            name: "kv-memory",
            value: cfg.kv_memory.to_string(),
            reason,
        };
        if !cfg.block_size.is_power_of_two() {
            return Err(EngineError::BadSetting {
                name: "block-size",
                value: cfg.block_size.to_string(),
                reason: "must be a power of two".into(),
            });
        }
        let per_pos = cfg.kv_type.bytes_per_position(c.n_layer, c.kv_dim());
        let n_blocks = cfg.kv_memory / (per_pos * cfg.block_size).max(1);
        if n_blocks * cfg.block_size < engine.n_ctx() {
            let need = engine.n_ctx().div_ceil(cfg.block_size) * cfg.block_size * per_pos;
            return Err(bad(format!(
                "holds {} positions, less than one context of {} ({need} bytes needed)",
                n_blocks * cfg.block_size,
                engine.n_ctx()
            )));
        }
        if cfg.sched.max_batch_tokens == 0 || cfg.sched.max_seqs == 0 {
            return Err(EngineError::BadSetting {
                name: "max-batch-tokens / max-seqs",
                value: format!("{} / {}", cfg.sched.max_batch_tokens, cfg.sched.max_seqs),
                reason: "must be at least 1".into(),
            });
        }
        let store = pool(&engine, &cfg, n_blocks)?;
        let sched = Scheduler::new(cfg.sched, BlockAllocator::new(n_blocks, cfg.block_size));
        let metrics = Arc::new(Metrics::new());
        metrics.kv_blocks_total.store(n_blocks, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let (e, m) = (engine.clone(), metrics.clone());
        let thread = std::thread::Builder::new()
            .name("tuili-serve".into())
            .spawn(move || Loop::new(&e, sched, store, m).run(rx))
            .map_err(|err| EngineError::Io(format!("cannot start the serving thread: {err}")))?;
        Ok(ServeLoop {
            engine,
            tx: Mutex::new(tx),
            metrics,
            thread: Some(thread),
        })
    }

    /// The other ranks' side of a distributed run's serving (rank > 0): a pool of the same
    /// blocks as rank 0's (for this rank's heads and layers only), then every step rank 0
    /// sends, run on this rank's part of the model, until rank 0 stops.
    pub fn follow(engine: &Engine, cfg: &ServeConfig) -> Result<(), EngineError> {
        let comm = engine.comm();
        let mut n = [0u8; 8];
        comm.broadcast(0, &mut n)?;
        let mut store = pool(engine, cfg, u64::from_le_bytes(n) as usize)?;
        let mut scratch = Scratch::new();
        let link = Link::of(engine);
        let mut busy = Duration::ZERO;
        while let Some((step, msg)) = link.receive()? {
            let t = Instant::now();
            let out = step.batch().run(engine, &mut store, &mut scratch)?;
            busy += t.elapsed();
            link.hand_on(msg, out, busy.as_secs_f64())?;
        }
        Ok(())
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Hands a request to the loop; its sink hears back (`Accepted` or `Rejected` first).
    pub fn submit(&self, sub: Submission) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(mpsc::SendError(Msg::Submit(mut s, _))) =
            tx.send(Msg::Submit(Box::new(sub), Instant::now()))
        {
            (s.sink)(Event::Rejected(Rejection::Busy(
                "the server is shutting down".into(),
            )));
        }
    }

    /// Stops the loop after the current step; requests still running get `Failed`.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The paged pool of `n_blocks` blocks for this rank's KV heads; in a group, rank 0 tells the
/// others `n_blocks` (their [`ServeLoop::follow`] waits for it).
fn pool(engine: &Engine, cfg: &ServeConfig, n_blocks: usize) -> Result<PagedStore, EngineError> {
    let comm = engine.comm();
    if comm.size() > 1 && comm.rank() == 0 {
        comm.broadcast(0, &mut (n_blocks as u64).to_le_bytes())?;
    }
    let c = engine.model().config();
    let (l, bs, h, d) = (c.n_layer, cfg.block_size, c.n_head_kv, c.head_dim);
    PagedStore::new(cfg.kv_type, l, n_blocks, bs, h, d).map_err(|e| EngineError::BadSetting {
        name: "kv-type",
        value: cfg.kv_type.to_string(),
        reason: e.to_string(),
    })
}

impl Drop for ServeLoop {
    fn drop(&mut self) {
        self.stop();
    }
}
