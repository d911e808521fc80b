//! The loop itself: the one owner of the serving state — the scheduler, the paged pool, the
//! activations and each completion's decoder. Each step assembles one batch (a token of
//! every decoding sequence, chunks of prompts), runs it through the model, and samples every
//! sequence whose logits are due.
//!
//! Under pipeline parallelism a step's logits come back later: the loop runs its first
//! stage, hands the step on ([`Link`]) and plans the next one from the sequences not in
//! flight, so that with P stages P micro-batches are computed at once, one on each stage.
//! Before it hands a step on it collects the logits of the oldest steps until at most P − 2
//! others are downstream: the sends of a full ring of stages would otherwise wait on each
//! other for ever.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tuili_kv::PagedStore;
use tuili_model::{packs_top, unpack_top, Logits, Scratch, SeqSpan};

use crate::beam::{Advance, BeamSearch};
use crate::decoder::{text_only, Decoder};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::request::{GenerateRequest, StopReason, CANDIDATES};
use crate::sched::{Plan, SchedError, Scheduler, SeqId};
use crate::serve::batch::{Batch, Link};
use crate::serve::events::{Event, Msg, Rejection, Sink, Submission};
use crate::serve::metrics::Metrics;

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
    /// A beam search: its state and sequences (sampling requests: `None`).
    beam: Option<Box<Beams>>,
}

/// A beam-search request in the loop: every beam is a sequence of the paged pool (the first
/// step forks the prompt's, copy-on-write), so its blocks are counted, preempted and freed as
/// any request's. The search advances once every beam's logits of the step are in.
struct Beams {
    search: BeamSearch,
    /// Each beam's sequence (before the first step: the prompt's, for every beam).
    seqs: Vec<SeqId>,
    /// `[num_beams, n_vocab]`: this step's logits of each beam, and which have arrived.
    logits: Vec<f32>,
    have: Vec<bool>,
}

struct Live<'t> {
    req: u64,
    dec: Decoder<'t>,
}

/// The loop's state, borrowing the engine for the thread's lifetime.
pub(crate) struct Loop<'e> {
    e: &'e Engine,
    sched: Scheduler,
    store: PagedStore,
    metrics: Arc<Metrics>,
    scratch: Scratch,
    reqs: HashMap<u64, Req>,
    live: HashMap<SeqId, Live<'e>>,
    /// The sequences of beam searches, and their requests.
    beam_seqs: HashMap<SeqId, u64>,
    next_req: u64,
    next_seq: SeqId,
    // Batch assembly buffers, reused every step.
    tokens: Vec<u32>,
    spans: Vec<SeqSpan>,
    tables: Vec<u32>,
    offsets: Vec<usize>,
    out: Vec<usize>,
    /// How steps reach the other ranks, and their logits come back.
    link: Link<'e>,
    /// Steps handed on whose logits have not come back, oldest first, with how many
    /// candidates per row they asked for.
    in_flight: VecDeque<(Plan, Option<usize>)>,
    /// The logits of a step collected from the last stage.
    collected: Vec<f32>,
    /// The candidates it sent instead, when the step asked only for those.
    packed: Vec<f32>,
    /// Time this rank has spent computing steps.
    busy: Duration,
    /// Why the group of ranks can no longer serve (a communication failed).
    broken: Option<String>,
}

impl<'e> Loop<'e> {
    pub(crate) fn new(
        e: &'e Engine,
        sched: Scheduler,
        store: PagedStore,
        metrics: Arc<Metrics>,
    ) -> Self {
        Loop {
            e,
            sched,
            store,
            metrics,
            scratch: Scratch::new(),
            reqs: HashMap::new(),
            live: HashMap::new(),
            beam_seqs: HashMap::new(),
            next_req: 0,
            next_seq: 0,
            tokens: Vec::new(),
            spans: Vec::new(),
            tables: Vec::new(),
            offsets: Vec::new(),
            out: Vec::new(),
            link: Link::of(e),
            in_flight: VecDeque::new(),
            collected: Vec::new(),
            packed: Vec::new(),
            busy: Duration::ZERO,
            broken: None,
        }
    }

    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            // Block for work only when there is none.
            let first = if self.sched.is_idle() && self.in_flight.is_empty() {
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
            if let Some(why) = &self.broken {
                let why = why.clone();
                self.fail_all(&why);
            } else if let Err(err) = self.step() {
                self.fail(err);
            }
            self.publish();
        }
        self.fail_all("the server is shutting down");
        if self.broken.is_none() {
            // The steps in flight come back before the stop goes down.
            let stopped = self.drain().and_then(|()| self.link.stop());
            if let Err(err) = stopped {
                eprintln!("tuili serve: cannot tell the other ranks to stop: {err}");
            }
        }
    }

    /// A step failed: its requests (every request, in a group of ranks, whose state is now
    /// unknown: the group is broken, and the server says so until it is restarted).
    fn fail(&mut self, err: EngineError) {
        let why = err.to_string();
        if self.e.comm().size() > 1 {
            let why = format!("the group of ranks is broken: {why}");
            self.metrics.set_broken(&why);
            self.broken = Some(why);
            self.in_flight.clear();
        }
        self.fail_all(&why);
    }

    /// Collects every step in flight (logits dropped: their requests are gone).
    fn drain(&mut self) -> Result<(), EngineError> {
        while let Some((plan, top)) = self.in_flight.pop_front() {
            self.collect(&plan, top)?;
        }
        Ok(())
    }

    /// The logits of `plan`, the oldest step in flight, into `collected` (from the
    /// candidates the last stage sent, when the step asked for `top` only).
    fn collect(&mut self, plan: &Plan, top: Option<usize>) -> Result<(), EngineError> {
        let nv = self.e.model.config().n_vocab;
        let rows = plan.items.iter().filter(|i| i.sample).count();
        self.collected.resize(rows * nv, 0.0);
        let busy = match packs_top(top, nv) {
            None => self.link.collect(&mut self.collected)?,
            Some(c) => {
                self.packed.resize(rows * 2 * c, 0.0);
                let busy = self.link.collect(&mut self.packed)?;
                unpack_top(&self.packed, nv, c, &mut self.collected);
                busy
            }
        };
        self.metrics.set_stage_busy(&busy);
        Ok(())
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
        let m = self.metrics.clone();
        let reject = |mut s: Submission, r: Rejection| {
            m.requests_rejected.fetch_add(1, Ordering::Relaxed);
            (s.sink)(Event::Rejected(r));
        };
        if let Some(why) = &self.broken {
            reject(s, Rejection::Busy(why.clone()));
            return;
        }
        let id = self.next_req;
        self.next_req += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        let n_ctx = self.e.n_ctx();
        let nv = self.e.model.config().n_vocab;
        // Positions the request's sequences may reach; a beam search's last step needs none.
        let (max_len, beam_max_new) = match &s.req.beam {
            None => ((s.prompt.len() + s.req.max_tokens).min(n_ctx), 0),
            Some(_) => {
                let max_new = self.e.beam_max_new(&s.prompt, &s.req);
                if max_new == 0 {
                    self.answer_empty(s);
                    return;
                }
                (s.prompt.len() + max_new - 1, max_new)
            }
        };
        if let Err(err) = self.sched.add(seq, s.prompt.clone(), max_len) {
            let r = match err {
                SchedError::QueueFull(_) => Rejection::Busy(err.to_string()),
                _ => Rejection::Invalid(err.to_string()),
            };
            reject(s, r);
            return;
        }
        let n = s.req.n.max(1);
        let mut seqs = vec![None; n];
        let beam = match &s.req.beam {
            Some(bp) => {
                let eos = self.e.beam_eos(&s.req);
                let proc = text_only(&s.req.sampling, self.e.tokenizer().n_vocab(), nv);
                let search = BeamSearch::new(&s.prompt, &eos, bp, &proc, beam_max_new, nv);
                let nb = search.num_beams();
                self.beam_seqs.insert(seq, id);
                m.beam_jobs.fetch_add(1, Ordering::Relaxed);
                Some(Box::new(Beams {
                    search,
                    seqs: vec![seq; nb],
                    logits: vec![0.0; nb * nv],
                    have: vec![false; nb],
                }))
            }
            None => {
                let dec = Decoder::new(&self.e.tokenizer, &s.req, &s.prompt, nv, 0, max_len);
                match dec {
                    Ok(dec) => {
                        self.live.insert(seq, Live { req: id, dec });
                        seqs[0] = Some(seq);
                    }
                    Err(err) => {
                        self.sched.remove(seq);
                        reject(s, Rejection::Invalid(err.to_string()));
                        return;
                    }
                }
                None
            }
        };
        m.requests_accepted.fetch_add(1, Ordering::Relaxed);
        m.prompt_tokens
            .fetch_add(s.prompt.len() as u64, Ordering::Relaxed);
        let gone = !(s.sink)(Event::Accepted);
        self.reqs.insert(
            id,
            Req {
                forked: n == 1 || beam.is_some(),
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
                beam,
            },
        );
    }

    /// A beam search with no room for a token: one empty completion, at once.
    fn answer_empty(&mut self, mut s: Submission) {
        let m = &self.metrics;
        m.requests_accepted.fetch_add(1, Ordering::Relaxed);
        if (s.sink)(Event::Accepted) {
            (s.sink)(Event::Done {
                index: 0,
                reason: StopReason::MaxTokens,
                tokens: 0,
                beam_score: None,
            });
            m.requests_finished.fetch_add(1, Ordering::Relaxed);
            (s.sink)(Event::Finished {
                prompt_tokens: s.prompt.len(),
                completion_tokens: 0,
            });
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
        if let Some(b) = &r.beam {
            for s in &b.seqs {
                self.sched.remove(*s);
                self.beam_seqs.remove(s);
            }
            self.metrics.beam_jobs.fetch_sub(1, Ordering::Relaxed);
        }
        Some(r)
    }

    /// The request a sequence belongs to.
    fn req_of(&self, sid: SeqId) -> Option<u64> {
        (self.live.get(&sid).map(|l| l.req)).or_else(|| self.beam_seqs.get(&sid).copied())
    }

    fn fail_all(&mut self, why: &str) {
        let ids: Vec<u64> = self.reqs.keys().copied().collect();
        for id in ids {
            if let Some(mut r) = self.drop_req(id) {
                (r.sink)(Event::Failed(why.to_string()));
            }
        }
    }

    /// One batch through the model (through its first stage, under pipeline parallelism),
    /// then a token for every sequence whose logits are due.
    fn step(&mut self) -> Result<(), EngineError> {
        let depth = self.link.depth();
        let plan = self.sched.schedule_part(depth);
        if plan.items.is_empty() {
            // Every sequence that can run is in flight: wait for the oldest step.
            if let Some(old) = self.collect_oldest()? {
                self.finish_collected(&old);
            }
            return Ok(());
        }
        self.assemble(&plan);
        // The scratch is taken out for the step so that what the step hands on can be read
        // while the decoders (in `self`) are updated; put back after.
        let mut scratch = std::mem::take(&mut self.scratch);
        let res = self.first_stage(&plan, &mut scratch);
        self.scratch = scratch;
        res
    }

    /// Runs `plan`'s batch on this rank (the other ranks of its stage run it too) and
    /// finishes it, or, before the last stage, hands it on.
    fn first_stage(&mut self, plan: &Plan, scratch: &mut Scratch) -> Result<(), EngineError> {
        let e = self.e;
        // Only the largest logits when they decide every sampled sequence's token.
        let top_only = plan.items.iter().filter(|i| i.sample).all(|i| {
            !self.beam_seqs.contains_key(&i.id)
                && self
                    .live
                    .get(&i.id)
                    .and_then(|l| self.reqs.get(&l.req))
                    .is_some_and(|r| r.req.step_logits() != Logits::Last)
        });
        let top = top_only.then_some(CANDIDATES);
        let b = Batch {
            copies: &plan.copies,
            tokens: &self.tokens,
            spans: &self.spans,
            tables: &self.tables,
            offsets: &self.offsets,
            out: &self.out,
            top,
        };
        let msg = b.encode(self.busy.as_secs_f64());
        self.link.share(&msg)?;
        let t = Instant::now();
        let out = b.run(e, &mut self.store, scratch)?;
        self.busy += t.elapsed();
        self.metrics
            .batch_tokens
            .fetch_add(self.tokens.len() as u64, Ordering::Relaxed);
        let depth = self.link.depth();
        if depth == 1 {
            self.metrics.set_stage_busy(&[self.busy.as_secs_f64()]);
            self.finish(plan, out);
            return Ok(());
        }
        // At most P − 2 steps downstream when this one goes: the ring never fills (at most
        // P − 1 are in flight, so one collect is enough). The next stage gets this step
        // before the older one is sampled, so that it does not wait for the sampling.
        let done = if self.in_flight.len() + 2 > depth {
            self.collect_oldest()?
        } else {
            None
        };
        self.link.hand_on(msg, out, self.busy.as_secs_f64())?;
        self.in_flight.push_back((plan.clone(), top));
        if let Some(old) = done {
            self.finish_collected(&old);
        }
        Ok(())
    }

    /// The oldest step in flight, its logits collected into `collected`.
    fn collect_oldest(&mut self) -> Result<Option<Plan>, EngineError> {
        let Some((old, top)) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        self.collect(&old, top)?;
        Ok(Some(old))
    }

    /// [`Loop::finish`] with the logits in `collected`.
    fn finish_collected(&mut self, plan: &Plan) {
        let logits = std::mem::take(&mut self.collected);
        self.finish(plan, &logits);
        self.collected = logits;
    }

    /// A step's logits are in (`logits`: `[sampled rows, n_vocab]`): its tokens are in the
    /// cache, and every sequence whose logits were due gets its next token.
    fn finish(&mut self, plan: &Plan, logits: &[f32]) {
        self.sched.commit(plan);
        self.metrics.steps.fetch_add(1, Ordering::Relaxed);
        let nv = self.e.model.config().n_vocab;
        for (j, it) in plan.items.iter().filter(|i| i.sample).enumerate() {
            // A sequence whose sampling fails (non-finite logits, say) fails its own request
            // only.
            if let Err(err) = self.sampled(it.id, &logits[j * nv..(j + 1) * nv]) {
                if let Some(rid) = self.req_of(it.id) {
                    if let Some(mut r) = self.drop_req(rid) {
                        (r.sink)(Event::Failed(err.to_string()));
                    }
                }
            }
        }
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
        if let Some(&rid) = self.beam_seqs.get(&sid) {
            return self.beam_logits(rid, sid, logits);
        }
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

    /// A beam sequence's logits are ready: kept for every beam it is; once each beam's are
    /// in, the search advances.
    fn beam_logits(&mut self, rid: u64, sid: SeqId, logits: &[f32]) -> Result<(), EngineError> {
        let Some(b) = self.reqs.get_mut(&rid).and_then(|r| r.beam.as_mut()) else {
            return Ok(());
        };
        let nv = logits.len();
        for (i, &s) in b.seqs.iter().enumerate() {
            // A beam recomputed after preemption delivers its logits again: the first stand.
            if s == sid && !b.have[i] {
                b.logits[i * nv..(i + 1) * nv].copy_from_slice(logits);
                b.have[i] = true;
            }
        }
        if !b.have.iter().all(|&h| h) {
            return Ok(());
        }
        b.have.iter_mut().for_each(|h| *h = false);
        match b.search.advance(&b.logits) {
            Advance::Continue { parents, tokens } => self.next_beams(rid, &parents, &tokens),
            Advance::Done => {
                self.finish_beams(rid);
                Ok(())
            }
        }
    }

    /// Beam i of the next step continues beam `parents[i]`'s sequence with `tokens[i]`: the
    /// first child of a sequence takes it over, any other forks it (sharing its blocks,
    /// copy-on-write); sequences no beam continues are freed.
    fn next_beams(
        &mut self,
        rid: u64,
        parents: &[usize],
        tokens: &[u32],
    ) -> Result<(), EngineError> {
        let Some(b) = self.reqs.get_mut(&rid).and_then(|r| r.beam.as_mut()) else {
            return Ok(());
        };
        let old = std::mem::take(&mut b.seqs);
        let mut taken: Vec<SeqId> = Vec::with_capacity(parents.len());
        let mut new = Vec::with_capacity(parents.len());
        // Forks first, from the parents as they are; then every beam's token.
        for &p in parents {
            let ps = old[p];
            if taken.contains(&ps) {
                let child = self.next_seq;
                self.next_seq += 1;
                self.sched
                    .fork(ps, child)
                    .map_err(|_| EngineError::Internal("fork of a live beam"))?;
                self.beam_seqs.insert(child, rid);
                new.push(child);
            } else {
                taken.push(ps);
                new.push(ps);
            }
        }
        for (&s, &t) in new.iter().zip(tokens) {
            self.sched
                .append(s, t)
                .map_err(|_| EngineError::Internal("append to a live beam"))?;
        }
        for s in old {
            if !new.contains(&s) {
                self.sched.remove(s);
                self.beam_seqs.remove(&s);
            }
        }
        b.seqs = new;
        Ok(())
    }

    /// The search is over: its best hypotheses go out as the request's completions.
    fn finish_beams(&mut self, rid: u64) {
        let Some(mut r) = self.drop_req(rid) else {
            return;
        };
        let Some(b) = r.beam.take() else {
            return;
        };
        let mut total = 0;
        for (index, h) in b.search.finish(r.req.n).into_iter().enumerate() {
            match self.e.beam_completion(&r.prompt, &r.req, index, h) {
                Ok(c) => {
                    total += c.tokens.len();
                    if !c.text.is_empty() {
                        (r.sink)(Event::Text {
                            index,
                            text: c.text,
                        });
                    }
                    (r.sink)(Event::Done {
                        index,
                        reason: c.stop,
                        tokens: c.tokens.len(),
                        beam_score: c.beam_score,
                    });
                }
                Err(err) => {
                    (r.sink)(Event::Failed(err.to_string()));
                    return;
                }
            }
        }
        let m = &self.metrics;
        m.generated_tokens
            .fetch_add(total as u64, Ordering::Relaxed);
        m.requests_finished.fetch_add(1, Ordering::Relaxed);
        (r.sink)(Event::Finished {
            prompt_tokens: r.prompt.len(),
            completion_tokens: total,
        });
    }
}
