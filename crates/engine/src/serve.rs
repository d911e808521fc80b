//! The serving loop: many requests at once, continuously batched over a paged KV cache.
//!
//! One thread owns every piece of mutable state — the scheduler, the paged pool, the
//! activations and each completion's decoder — and others talk to it by messages
//! ([`Server::submit`]); it answers each request through the request's own sink (accepted or
//! refused first, then tokens, then the end). Each step runs one batch through the model: one
//! token of every decoding sequence and chunks of prompts, every weight read once for all.
//!
//! `n > 1` completions prefill the prompt once and fork its blocks (copy-on-write) when the
//! prompt's logits are ready. Beam-search requests run the one-request beam driver on a
//! thread of their own (at most [`MAX_BEAM_JOBS`] at once), sharing the thread pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

pub use tuili_kv::KvType;
use tuili_kv::{BlockAllocator, PagedStore};
use tuili_model::{OutRows, Scratch, SeqSpan};
use tuili_sample::StepLogprobs;

use crate::decoder::Decoder;
use crate::sched::{Plan, SchedConfig, SchedError, Scheduler, SeqId};
use crate::{Engine, EngineError, GenerateRequest, StopReason};

/// Beam-search requests running at once; more are refused as busy.
pub const MAX_BEAM_JOBS: usize = 2;

/// Settings of the serving loop.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Bytes of keys and values in the paged pool.
    pub kv_memory: usize,
    pub kv_type: KvType,
    /// Positions per block (a power of two).
    pub block_size: usize,
    pub sched: SchedConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            kv_memory: 1 << 30,
            kv_type: KvType::F16,
            block_size: 16,
            sched: SchedConfig::default(),
        }
    }
}

/// What a request's sink receives, in this order: `Accepted` or `Rejected` first; then
/// `Token`s and `Text`s of its completions interleaved, each completion ending with its
/// `Done`; then `Finished` (or `Failed`).
#[derive(Debug, Clone)]
pub enum Event {
    Accepted,
    Rejected(Rejection),
    /// A generated token of completion `index` and the text it made final.
    Token {
        index: usize,
        token: u32,
        text: String,
        logprobs: Option<StepLogprobs>,
    },
    /// Text held back until the end of completion `index`.
    Text {
        index: usize,
        text: String,
    },
    /// Completion `index` ended.
    Done {
        index: usize,
        reason: StopReason,
        tokens: usize,
        /// Beam search: the hypothesis' score.
        beam_score: Option<f64>,
    },
    Finished {
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// Why a request was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Try again later.
    #[error("server busy: {0}")]
    Busy(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// Receives a request's events; returns false when nobody listens any more (the request is
/// then cancelled).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// One request for the serving loop.
pub struct Submission {
    pub req: GenerateRequest,
    /// The prompt's ids, from [`Engine::prepare`] (or a rendered chat).
    pub prompt: Vec<u32>,
    pub sink: Sink,
    /// Set by the client's side when it goes away: the request is dropped and its blocks
    /// freed at the next step.
    pub cancel: Arc<AtomicBool>,
}

enum Msg {
    /// A request and when it was handed over (time to first token counts from there).
    Submit(Box<Submission>, Instant),
    Shutdown,
}

/// A latency histogram (seconds) with Prometheus' cumulative buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// counts[i]: observations ≤ bounds[i] and > bounds[i − 1]; the last entry is +Inf.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const ITL_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters and gauges of the serving loop (read by `/metrics`).
#[derive(Debug)]
pub struct Metrics {
    pub requests_accepted: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub requests_finished: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
    pub batch_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub prefix_queries: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub beam_jobs: AtomicUsize,
    pub ttft: Mutex<Histogram>,
    pub itl: Mutex<Histogram>,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            requests_accepted: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            requests_cancelled: AtomicU64::new(0),
            requests_finished: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            batch_tokens: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            prefix_queries: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            kv_blocks_used: AtomicUsize::new(0),
            kv_blocks_total: AtomicUsize::new(0),
            beam_jobs: AtomicUsize::new(0),
            ttft: Mutex::new(Histogram::new(TTFT_BOUNDS)),
            itl: Mutex::new(Histogram::new(ITL_BOUNDS)),
        }
    }

    fn observe(h: &Mutex<Histogram>, v: f64) {
        // A poisoned lock only means a panic elsewhere mid-update: the counts are still
        // usable.
        h.lock().unwrap_or_else(|p| p.into_inner()).observe(v);
    }
}

/// A running serving loop.
pub struct Server {
    engine: Arc<Engine>,
    tx: Mutex<Sender<Msg>>,
    metrics: Arc<Metrics>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts the loop's thread with a pool of `cfg.kv_memory` bytes, which must hold at
    /// least one whole context (so that any request fits once the others give way).
    pub fn start(engine: Arc<Engine>, cfg: ServeConfig) -> Result<Server, EngineError> {
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
        let (l, bs, h, d) = (c.n_layer, cfg.block_size, c.n_head_kv, c.head_dim);
        let store = PagedStore::new(cfg.kv_type, l, n_blocks, bs, h, d).map_err(|e| {
            EngineError::BadSetting {
                name: "kv-type",
                value: cfg.kv_type.to_string(),
                reason: e.to_string(),
            }
        })?;
        let sched = Scheduler::new(cfg.sched, BlockAllocator::new(n_blocks, cfg.block_size));
        let metrics = Arc::new(Metrics::new());
        metrics.kv_blocks_total.store(n_blocks, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let (e, m) = (engine.clone(), metrics.clone());
        let thread = std::thread::Builder::new()
            .name("tuili-serve".into())
            .spawn(move || Loop::new(&e, sched, store, m).run(rx))
            .map_err(|err| EngineError::Io(format!("cannot start the serving thread: {err}")))?;
        Ok(Server {
            engine,
            tx: Mutex::new(tx),
            metrics,
            thread: Some(thread),
        })
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

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request in the loop.
struct Req {
    req: GenerateRequest,
    prompt: Vec<u32>,
    sink: Sink,
    cancel: Arc<AtomicBool>,
    /// Sequences of its completions still running (index → sequence).
    seqs: Vec<Option<SeqId>>,
    /// The prompt's blocks have been forked into every completion.
    forked: bool,
    completion_tokens: usize,
    arrived: Instant,
    first_token: Option<Instant>,
    /// Per completion: when its last token went out.
    last_token: Vec<Option<Instant>>,
    /// The sink said nobody listens.
    gone: bool,
}

struct Live<'t> {
    req: u64,
    dec: Decoder<'t>,
}

/// The loop's state, borrowing the engine for the thread's lifetime.
struct Loop<'e> {
    /// The engine, and a handle to it for beam-search threads.
    e: &'e Engine,
    arc: &'e Arc<Engine>,
    sched: Scheduler,
    store: PagedStore,
    metrics: Arc<Metrics>,
    scratch: Scratch,
    reqs: HashMap<u64, Req>,
    live: HashMap<SeqId, Live<'e>>,
    next_req: u64,
    next_seq: SeqId,
    // Batch assembly buffers, reused every step.
    tokens: Vec<u32>,
    spans: Vec<SeqSpan>,
    tables: Vec<u32>,
    offsets: Vec<usize>,
    out: Vec<usize>,
}

impl<'e> Loop<'e> {
    fn new(
        arc: &'e Arc<Engine>,
        sched: Scheduler,
        store: PagedStore,
        metrics: Arc<Metrics>,
    ) -> Self {
        Loop {
            e: arc,
            arc,
            sched,
            store,
            metrics,
            scratch: Scratch::new(),
            reqs: HashMap::new(),
            live: HashMap::new(),
            next_req: 0,
            next_seq: 0,
            tokens: Vec::new(),
            spans: Vec::new(),
            tables: Vec::new(),
            offsets: Vec::new(),
            out: Vec::new(),
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            // Block for work only when there is none.
            let first = if self.sched.is_idle() {
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                }
            } else {
                None
            };
            let mut shutdown = false;
            for msg in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                match msg {
                    Msg::Submit(s, at) => self.admit(*s, at),
                    Msg::Shutdown => shutdown = true,
                }
            }
            if shutdown {
                break;
            }
            self.reap_cancelled();
            if let Err(err) = self.step() {
                self.fail_all(&err.to_string());
            }
            self.publish();
        }
        self.fail_all("the server is shutting down");
    }

    fn publish(&self) {
        let m = &self.metrics;
        let a = self.sched.allocator();
        m.waiting.store(self.sched.n_waiting(), Ordering::Relaxed);
        m.running.store(self.sched.n_running(), Ordering::Relaxed);
        m.kv_blocks_used.store(a.n_used(), Ordering::Relaxed);
        m.preemptions
            .store(self.sched.n_preempted, Ordering::Relaxed);
        m.prefix_queries.store(a.queries, Ordering::Relaxed);
        m.prefix_hits.store(a.hits, Ordering::Relaxed);
    }

    fn admit(&mut self, mut s: Submission, arrived: Instant) {
        let m = &self.metrics;
        if s.req.beam.is_some() {
            self.spawn_beam(s, arrived);
            return;
        }
        let id = self.next_req;
        self.next_req += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        let max_len = (s.prompt.len() + s.req.max_tokens).min(self.e.n_ctx());
        if let Err(err) = self.sched.add(seq, s.prompt.clone(), max_len) {
            m.requests_rejected.fetch_add(1, Ordering::Relaxed);
            let r = match err {
                SchedError::QueueFull(_) => Rejection::Busy(err.to_string()),
                _ => Rejection::Invalid(err.to_string()),
            };
            (s.sink)(Event::Rejected(r));
            return;
        }
        let dec = match Decoder::new(
            &self.e.tokenizer,
            &s.req,
            &s.prompt,
            self.e.model.config().n_vocab,
            0,
            max_len,
        ) {
            Ok(d) => d,
            Err(err) => {
                self.sched.remove(seq);
                m.requests_rejected.fetch_add(1, Ordering::Relaxed);
                (s.sink)(Event::Rejected(Rejection::Invalid(err.to_string())));
                return;
            }
        };
        m.requests_accepted.fetch_add(1, Ordering::Relaxed);
        m.prompt_tokens
            .fetch_add(s.prompt.len() as u64, Ordering::Relaxed);
        let gone = !(s.sink)(Event::Accepted);
        let n = s.req.n.max(1);
        let mut seqs = vec![None; n];
        seqs[0] = Some(seq);
        self.live.insert(seq, Live { req: id, dec });
        self.reqs.insert(
            id,
            Req {
                forked: n == 1,
                req: s.req,
                prompt: s.prompt,
                sink: s.sink,
                cancel: s.cancel,
                seqs,
                completion_tokens: 0,
                arrived,
                first_token: None,
                last_token: vec![None; n],
                gone,
            },
        );
    }

    /// Beam search on a thread of its own with the one-request driver.
    fn spawn_beam(&mut self, s: Submission, arrived: Instant) {
        let m = self.metrics.clone();
        let reject = |mut s: Submission, why: String| {
            m.requests_rejected.fetch_add(1, Ordering::Relaxed);
            (s.sink)(Event::Rejected(Rejection::Busy(why)));
        };
        if m.beam_jobs.fetch_add(1, Ordering::SeqCst) >= MAX_BEAM_JOBS {
            m.beam_jobs.fetch_sub(1, Ordering::SeqCst);
            reject(s, format!("{MAX_BEAM_JOBS} beam searches are running"));
            return;
        }
        // Shared with the thread, so that the request can still be refused when the thread
        // cannot be started.
        let slot = Arc::new(Mutex::new(Some(s)));
        let (e, m2, slot2) = (self.arc.clone(), m.clone(), slot.clone());
        let started = std::thread::Builder::new()
            .name("tuili-beam".into())
            .spawn(move || {
                let _guard = BeamGuard(m2.clone());
                let job = slot2.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(s) = job {
                    run_beam(&e, s, &m2, arrived);
                }
            });
        if let Err(err) = started {
            m.beam_jobs.fetch_sub(1, Ordering::SeqCst);
            if let Some(s) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                reject(s, format!("cannot start a beam-search thread: {err}"));
            }
        }
    }

    fn reap_cancelled(&mut self) {
        let dead: Vec<u64> = self
            .reqs
            .iter()
            .filter(|(_, r)| r.gone || r.cancel.load(Ordering::Relaxed))
            .map(|(&id, _)| id)
            .collect();
        for id in dead {
            self.metrics
                .requests_cancelled
                .fetch_add(1, Ordering::Relaxed);
            self.drop_req(id);
        }
    }

    /// Removes a request and frees its sequences' blocks.
    fn drop_req(&mut self, id: u64) -> Option<Req> {
        let r = self.reqs.remove(&id)?;
        for s in r.seqs.iter().flatten() {
            self.sched.remove(*s);
            self.live.remove(s);
        }
        Some(r)
    }

    fn fail_all(&mut self, why: &str) {
        let ids: Vec<u64> = self.reqs.keys().copied().collect();
        for id in ids {
            if let Some(mut r) = self.drop_req(id) {
                (r.sink)(Event::Failed(why.to_string()));
            }
        }
    }

    /// One batch through the model, then a token for every sequence whose logits are due.
    fn step(&mut self) -> Result<(), EngineError> {
        let plan = self.sched.schedule();
        if plan.items.is_empty() {
            return Ok(());
        }
        self.store.copy_blocks(&plan.copies);
        self.assemble(&plan);
        let e = self.e;
        // The scratch is taken out for the step so that its logits can be read while the
        // decoders (in `self`) are updated; put back after.
        let mut scratch = std::mem::take(&mut self.scratch);
        let b = Batch {
            tokens: &self.tokens,
            spans: &self.spans,
            tables: &self.tables,
            offsets: &self.offsets,
            out: &self.out,
        };
        let res = b.run(e, &mut self.store, &mut scratch);
        let logits = match res {
            Ok(l) => l,
            Err(err) => {
                self.scratch = scratch;
                return Err(err.into());
            }
        };
        self.sched.commit(&plan);
        self.metrics.steps.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .batch_tokens
            .fetch_add(self.tokens.len() as u64, Ordering::Relaxed);
        let nv = e.model.config().n_vocab;
        for (j, it) in plan.items.iter().filter(|i| i.sample).enumerate() {
            // A sequence whose sampling fails (non-finite logits, say) fails its own request
            // only.
            if let Err(err) = self.sampled(it.id, &logits[j * nv..(j + 1) * nv]) {
                if let Some(rid) = self.live.get(&it.id).map(|l| l.req) {
                    if let Some(mut r) = self.drop_req(rid) {
                        (r.sink)(Event::Failed(err.to_string()));
                    }
                }
            }
        }
        self.scratch = scratch;
        Ok(())
    }

    /// Fills the batch buffers for `plan`.
    fn assemble(&mut self, plan: &Plan) {
        self.tokens.clear();
        self.spans.clear();
        self.tables.clear();
        self.offsets.clear();
        self.out.clear();
        self.offsets.push(0);
        for it in &plan.items {
            // Invariant: planned sequences are live in the scheduler.
            let toks = self.sched.tokens(it.id).expect("planned sequence");
            self.spans.push(SeqSpan {
                start: self.tokens.len(),
                len: it.len,
                pos0: it.pos0,
            });
            self.tokens
                .extend_from_slice(&toks[it.pos0..it.pos0 + it.len]);
            self.tables
                .extend_from_slice(self.sched.table(it.id).expect("planned sequence"));
            self.offsets.push(self.tables.len());
            if it.sample {
                self.out.push(self.tokens.len() - 1);
            }
        }
    }

    /// Sequence `sid`'s logits are ready: fork the other completions first if this is the
    /// end of the prompt, then sample.
    fn sampled(&mut self, sid: SeqId, logits: &[f32]) -> Result<(), EngineError> {
        let Some(rid) = self.live.get(&sid).map(|l| l.req) else {
            return Ok(());
        };
        let Some(r) = self.reqs.get_mut(&rid) else {
            return Ok(());
        };
        if !r.forked {
            r.forked = true;
            let n = r.seqs.len();
            let max_len = (r.prompt.len() + r.req.max_tokens).min(self.e.n_ctx());
            for index in 1..n {
                let child = self.next_seq;
                self.next_seq += 1;
                self.sched
                    .fork(sid, child)
                    .map_err(|_| EngineError::Internal("fork of a live sequence"))?;
                let dec = Decoder::new(
                    &self.e.tokenizer,
                    &r.req,
                    &r.prompt,
                    self.e.model.config().n_vocab,
                    index,
                    max_len,
                )?;
                self.live.insert(child, Live { req: rid, dec });
                r.seqs[index] = Some(child);
            }
            let seqs: Vec<SeqId> = r.seqs.iter().flatten().copied().collect();
            for s in seqs {
                self.sample_one(s, logits)?;
            }
            return Ok(());
        }
        self.sample_one(sid, logits)
    }

    fn sample_one(&mut self, sid: SeqId, logits: &[f32]) -> Result<(), EngineError> {
        let Some(live) = self.live.get_mut(&sid) else {
            return Ok(());
        };
        let rid = live.req;
        let st = live.dec.step(logits)?;
        let index = live.dec.c.index;
        let lp = live.dec.last_logprobs().cloned();
        let Some(r) = self.reqs.get_mut(&rid) else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(token) = st.token {
            self.metrics
                .generated_tokens
                .fetch_add(1, Ordering::Relaxed);
            r.completion_tokens += 1;
            if r.first_token.is_none() {
                r.first_token = Some(now);
                Metrics::observe(&self.metrics.ttft, (now - r.arrived).as_secs_f64());
            }
            if let Some(t) = r.last_token[index] {
                Metrics::observe(&self.metrics.itl, (now - t).as_secs_f64());
            }
            r.last_token[index] = Some(now);
            let ok = (r.sink)(Event::Token {
                index,
                token,
                text: st.emit,
                logprobs: lp,
            });
            if !ok {
                r.gone = true;
                return Ok(());
            }
        }
        let stop = match st.stop {
            Some(s) => Some(s),
            None if self.sched.room(sid) == 0 => Some(StopReason::ContextFull),
            None => None,
        };
        let Some(stop) = stop else {
            // Invariant: a step without a stop reason sampled a token.
            let token = st.token.expect("a token when not stopped");
            self.sched
                .append(sid, token)
                .map_err(|_| EngineError::Internal("append to a live sequence"))?;
            return Ok(());
        };
        // Invariant: checked above that the sequence is live.
        let mut live = self.live.remove(&sid).expect("live sequence");
        self.sched.remove(sid);
        let rest = live.dec.finish(stop)?;
        if !rest.is_empty() {
            (r.sink)(Event::Text { index, text: rest });
        }
        (r.sink)(Event::Done {
            index,
            reason: live.dec.c.stop,
            tokens: live.dec.c.tokens.len(),
            beam_score: None,
        });
        r.seqs[index] = None;
        if r.seqs.iter().all(Option::is_none) && r.forked {
            let (p, c) = (r.prompt.len(), r.completion_tokens);
            // Counted before the client hears of it.
            self.metrics
                .requests_finished
                .fetch_add(1, Ordering::Relaxed);
            (r.sink)(Event::Finished {
                prompt_tokens: p,
                completion_tokens: c,
            });
            self.reqs.remove(&rid);
        }
        Ok(())
    }
}

/// One step's batch, assembled.
struct Batch<'a> {
    tokens: &'a [u32],
    spans: &'a [SeqSpan],
    tables: &'a [u32],
    offsets: &'a [usize],
    /// Batch rows whose logits are sampled.
    out: &'a [usize],
}

impl Batch<'_> {
    /// The forward pass over the pool.
    fn run<'s>(
        &self,
        e: &Engine,
        store: &mut PagedStore,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32], tuili_model::ModelError> {
        let mut cache = store.batch(self.tables, self.offsets);
        e.model.forward_spans(
            self.tokens,
            self.spans,
            &mut cache,
            e.n_ctx(),
            scratch,
            OutRows::List(self.out),
            &e.pool,
        )
    }
}

/// Runs a beam-search request to its end, reporting through its sink.
fn run_beam(e: &Engine, mut s: Submission, m: &Metrics, arrived: Instant) {
    m.requests_accepted.fetch_add(1, Ordering::Relaxed);
    if !(s.sink)(Event::Accepted) {
        return;
    }
    let cancel = s.cancel.clone();
    let mut first = true;
    let res = e.generate_from(s.prompt.clone(), &s.req, &mut |ev| {
        if first && ev.token.is_some() {
            first = false;
            Metrics::observe(&m.ttft, arrived.elapsed().as_secs_f64());
        }
        if cancel.load(Ordering::Relaxed) {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    });
    match res {
        Ok(st) => {
            let mut total = 0;
            for c in &st.completions {
                total += c.tokens.len();
                if !c.text.is_empty() {
                    (s.sink)(Event::Text {
                        index: c.index,
                        text: c.text.clone(),
                    });
                }
                (s.sink)(Event::Done {
                    index: c.index,
                    reason: c.stop,
                    tokens: c.tokens.len(),
                    beam_score: c.beam_score,
                });
            }
            m.generated_tokens
                .fetch_add(total as u64, Ordering::Relaxed);
            m.requests_finished.fetch_add(1, Ordering::Relaxed);
            (s.sink)(Event::Finished {
                prompt_tokens: st.prompt_tokens.len(),
                completion_tokens: total,
            });
        }
        Err(err) => {
            (s.sink)(Event::Failed(err.to_string()));
        }
    }
}

/// Counts a beam job down when its thread ends, however it ends.
struct BeamGuard(Arc<Metrics>);

impl Drop for BeamGuard {
    fn drop(&mut self) {
        self.0.beam_jobs.fetch_sub(1, Ordering::SeqCst);
    }
}
