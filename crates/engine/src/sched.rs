//! The continuous-batching scheduler: pure bookkeeping over token ids and block tables, no
//! tensors (unit-tested with fake sequences).
//!
//! Each step it plans one batch of at most `max_batch_tokens` tokens:
//! 1. one token for every running sequence that is decoding (all its known tokens but the
//!    newest are in the cache);
//! 2. the next chunk of every running sequence still prefilling (chunked prefill, so a long
//!    prompt never stalls the others' decodes);
//! 3. waiting sequences, first come first served, while the budget, `max_seqs` and free
//!    blocks allow (a prefix already in the cache — the same system prompt — is taken from
//!    it, not recomputed).
//!
//! A pipeline keeps several steps in flight (`schedule_part`): a planned sequence is *in
//! flight* until its step is committed, and is neither planned again nor preempted meanwhile;
//! each step then takes its share of the sequences, so that the micro-batches in flight hold
//! about as many each.
//!
//! When a running sequence needs a block and none is free, the newest running sequence is
//! preempted: its blocks are freed and it goes back to the head of the queue with every
//! token it has, to be recomputed later (its sampler state lives with the engine, so its
//! output does not change). A sequence alone always fits (the engine refuses requests longer
//! than the pool), so every step makes progress and nothing is stuck.

use std::collections::{HashMap, VecDeque};

use tuili_kv::{BlockAllocator, BlockCopy, BlockTable};

/// A sequence's handle.
pub type SeqId = u64;

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedConfig {
    /// Tokens per forward pass (decode tokens and prefill chunks together).
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_seqs: usize,
    /// Sequences waiting; beyond this, [`Scheduler::add`] refuses.
    pub max_queue: usize,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            max_batch_tokens: 512,
            max_seqs: 64,
            max_queue: 256,
        }
    }
}

/// Why the scheduler refused a sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    #[error("the queue is full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("{needed} positions do not fit in the KV pool of {capacity}")]
    TooLong { needed: usize, capacity: usize },
    #[error("no sequence {0}")]
    Unknown(SeqId),
}

/// One sequence's part of a step: its tokens `pos0..pos0 + len` go through the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanItem {
    pub id: SeqId,
    pub pos0: usize,
    pub len: usize,
    /// After this chunk every known token is computed: the last one's logits give the next
    /// token.
    pub sample: bool,
}

/// One step's batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    /// Copy-on-write copies to carry out before the forward pass.
    pub copies: Vec<BlockCopy>,
    /// Sequences preempted this step (their blocks freed; they will be recomputed).
    pub preempted: Vec<SeqId>,
}

impl Plan {
    pub fn n_tokens(&self) -> usize {
        self.items.iter().map(|i| i.len).sum()
    }
}

#[derive(Debug)]
struct Seq {
    /// Prompt and generated tokens so far.
    tokens: Vec<u32>,
    /// Positions whose keys and values are in the cache.
    computed: usize,
    /// Positions this sequence may reach (prompt + max new tokens).
    max_len: usize,
    table: BlockTable,
    running: bool,
    /// Creation order: the newest running sequence is preempted first.
    order: u64,
    /// Planned in a step not yet committed.
    in_flight: bool,
}

/// The scheduler's state: the block allocator, the queue and the running set.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedConfig,
    alloc: BlockAllocator,
    seqs: HashMap<SeqId, Seq>,
    waiting: VecDeque<SeqId>,
    /// In creation order.
    running: Vec<SeqId>,
    next_order: u64,
    /// Sequences preempted since the start.
    pub n_preempted: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedConfig, alloc: BlockAllocator) -> Scheduler {
        Scheduler {
            cfg,
            alloc,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_order: 0,
            n_preempted: 0,
        }
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.alloc
    }

    pub fn config(&self) -> &SchedConfig {
        &self.cfg
    }

    /// Positions the whole pool holds.
    pub fn capacity(&self) -> usize {
        self.alloc.n_blocks() * self.alloc.block_size()
    }

    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn n_running(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Queues a sequence with its prompt, which may grow to `max_len` positions.
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>, max_len: usize) -> Result<(), SchedError> {
        if self.waiting.len() >= self.cfg.max_queue {
            return Err(SchedError::QueueFull(self.waiting.len()));
        }
        let needed = max_len.max(prompt.len());
        if needed > self.capacity() {
            return Err(SchedError::TooLong {
                needed,
                capacity: self.capacity(),
            });
        }
        self.next_order += 1;
        self.seqs.insert(
            id,
            Seq {
                tokens: prompt,
                computed: 0,
                max_len: needed,
                table: BlockTable::new(),
                running: false,
                order: self.next_order,
                in_flight: false,
            },
        );
        self.waiting.push_back(id);
        Ok(())
    }

    /// A running sequence `child` that shares everything `parent` has computed (its blocks,
    /// copy-on-write) and continues from there — `n > 1` completions of one prompt.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), SchedError> {
        let p = self.seqs.get(&parent).ok_or(SchedError::Unknown(parent))?;
        let (tokens, computed, max_len, running) =
            (p.tokens.clone(), p.computed, p.max_len, p.running);
        let table = self.alloc.fork(&p.table);
        self.next_order += 1;
        self.seqs.insert(
            child,
            Seq {
                tokens,
                computed,
                max_len,
                table,
                running,
                order: self.next_order,
                in_flight: false,
            },
        );
        if running {
            self.running.push(child);
        } else {
            self.waiting.push_back(child);
        }
        Ok(())
    }

    /// Records a sequence's new token (to be computed in a later step).
    pub fn append(&mut self, id: SeqId, token: u32) -> Result<(), SchedError> {
        let s = self.seqs.get_mut(&id).ok_or(SchedError::Unknown(id))?;
        s.tokens.push(token);
        Ok(())
    }

    /// The tokens of a sequence (prompt and generated).
    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| &s.tokens[..])
    }

    /// The block table of a sequence.
    pub fn table(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| &s.table.blocks[..])
    }

    /// Removes a finished or cancelled sequence, freeing its blocks.
    pub fn remove(&mut self, id: SeqId) {
        if let Some(mut s) = self.seqs.remove(&id) {
            self.alloc.free(&mut s.table);
            self.running.retain(|&r| r != id);
            self.waiting.retain(|&w| w != id);
        }
    }

    /// Every sequence known (waiting or running).
    pub fn ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// Frees a running sequence's blocks and puts it back in the queue, to be recomputed:
    /// ahead of younger waiting sequences, or (`last`) behind every one.
    fn preempt_to(&mut self, id: SeqId, plan: &mut Plan, last: bool) {
        if let Some(s) = self.seqs.get_mut(&id) {
            self.alloc.free(&mut s.table);
            s.computed = 0;
            s.running = false;
        }
        self.running.retain(|&r| r != id);
        let order = self.seqs.get(&id).map_or(0, |s| s.order);
        let at = self
            .waiting
            .iter()
            .position(|w| !last && self.seqs.get(w).is_some_and(|s| s.order > order))
            .unwrap_or(self.waiting.len());
        self.waiting.insert(at, id);
        self.n_preempted += 1;
        plan.preempted.push(id);
    }

    fn preempt(&mut self, id: SeqId, plan: &mut Plan) {
        self.preempt_to(id, plan, false);
    }

    /// Gives sequence `id` blocks for `n` more positions from `computed` (copying shared
    /// ones), preempting the newest running sequences without a part in `plan` when the pool
    /// runs out. False when `id` itself had to give way.
    fn reserve(&mut self, id: SeqId, n: usize, plan: &mut Plan) -> bool {
        loop {
            // Invariant: callers pass ids of live sequences.
            let s = self.seqs.get_mut(&id).expect("live sequence");
            let (from, to) = (s.computed, s.computed + n);
            let grown = self.alloc.grow(&mut s.table, to).is_ok();
            if grown {
                if let Ok(c) = self.alloc.make_writable(&mut s.table, from, to) {
                    plan.copies.extend(c);
                    return true;
                }
            }
            let victim = self.running.iter().rev().copied().find(|&r| {
                r != id
                    && !plan.items.iter().any(|it| it.id == r)
                    && !self.seqs.get(&r).is_some_and(|s| s.in_flight)
            });
            match victim {
                Some(v) => self.preempt(v, plan),
                None => {
                    self.preempt(id, plan);
                    return false;
                }
            }
        }
    }

    /// Plans the next step (empty when there is nothing to do).
    pub fn schedule(&mut self) -> Plan {
        self.schedule_part(1)
    }

    /// Plans the next step of a pipeline that keeps `parts` steps in flight: sequences in
    /// flight are left out, and the step takes at most a `parts`-th of the active sequences
    /// (rounded up), so that the steps in flight share them out. Its sequences are in flight
    /// until [`Scheduler::commit`].
    pub fn schedule_part(&mut self, parts: usize) -> Plan {
        let plan = self.plan(parts.max(1));
        for it in &plan.items {
            if let Some(s) = self.seqs.get_mut(&it.id) {
                s.in_flight = true;
            }
        }
        plan
    }

    fn plan(&mut self, parts: usize) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.cfg.max_batch_tokens;
        let active = (self.running.len() + self.waiting.len()).min(self.cfg.max_seqs);
        let cap = active.div_ceil(parts).max(1);
        // Decodes first, then prefill chunks of running sequences, oldest first.
        for decoding in [true, false] {
            let ids: Vec<SeqId> = self.running.clone();
            for id in ids {
                if budget == 0 || plan.items.len() == cap {
                    break;
                }
                let Some(s) = self.seqs.get(&id) else {
                    continue;
                };
                if !s.running || s.in_flight || plan.items.iter().any(|it| it.id == id) {
                    continue;
                }
                let need = s.tokens.len() - s.computed;
                if need == 0 || (need == 1) != decoding {
                    continue;
                }
                let n = need.min(budget);
                if self.reserve(id, n, &mut plan) {
                    let s = &self.seqs[&id];
                    plan.items.push(PlanItem {
                        id,
                        pos0: s.computed,
                        len: n,
                        sample: s.computed + n == s.tokens.len(),
                    });
                    budget -= n;
                }
            }
        }
        // Admit waiting sequences in order while there is room (none when this step had to
        // preempt: the pool is short).
        while budget > 0
            && plan.items.len() < cap
            && self.running.len() < self.cfg.max_seqs
            && plan.preempted.is_empty()
        {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            // Invariant: waiting ids are live.
            let s = self.seqs.get_mut(&id).expect("live sequence");
            if s.table.blocks.is_empty() {
                s.computed = self.alloc.match_prefix(&mut s.table, &s.tokens);
            }
            let n = (s.tokens.len() - s.computed).min(budget);
            let to = s.computed + n;
            // Admit only with blocks for this chunk free, and never by preempting: a
            // waiting sequence must not push out a running one.
            if self.alloc.grow(&mut s.table, to).is_err() {
                self.alloc.free(&mut s.table);
                s.computed = 0;
                break;
            }
            match self.alloc.make_writable(&mut s.table, s.computed, to) {
                Ok(c) => plan.copies.extend(c),
                Err(_) => {
                    self.alloc.free(&mut s.table);
                    s.computed = 0;
                    break;
                }
            }
            s.running = true;
            plan.items.push(PlanItem {
                id,
                pos0: s.computed,
                len: n,
                sample: to == s.tokens.len(),
            });
            budget -= n;
            self.waiting.pop_front();
            let order = s.order;
            let at = self
                .running
                .iter()
                .position(|r| self.seqs.get(r).is_some_and(|x| x.order > order))
                .unwrap_or(self.running.len());
            self.running.insert(at, id);
        }
        // A running sequence with nothing to compute (a beam of a search waiting for its
        // other beams' logits) still holds its blocks. When nothing could run this step and
        // the queue's head does not fit, the newest such sequence gives way: preempted, to be
        // recomputed, behind the whole queue (ahead of it, it would be readmitted first and
        // the head would wait for ever). Not while a step is in flight: its commit may free
        // room.
        let in_flight = self.seqs.values().any(|s| s.in_flight);
        if plan.items.is_empty() && !self.waiting.is_empty() && !in_flight {
            let idle = self.running.iter().rev().copied().find(|r| {
                self.seqs
                    .get(r)
                    .is_some_and(|s| !s.in_flight && s.computed == s.tokens.len())
            });
            if let Some(v) = idle {
                self.preempt_to(v, &mut plan, true);
            }
        }
        plan
    }

    /// Records that the plan's tokens are now in the cache (after the forward pass), and
    /// offers their full blocks to the prefix cache.
    pub fn commit(&mut self, plan: &Plan) {
        for it in &plan.items {
            if let Some(s) = self.seqs.get_mut(&it.id) {
                s.in_flight = false;
                s.computed = it.pos0 + it.len;
                self.alloc.register(&mut s.table, &s.tokens, s.computed);
            }
        }
    }

    /// How many positions sequence `id` may still add.
    pub fn room(&self, id: SeqId) -> usize {
        self.seqs
            .get(&id)
            .map_or(0, |s| s.max_len.saturating_sub(s.tokens.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(blocks: usize, bs: usize, budget: usize, max_seqs: usize) -> Scheduler {
        Scheduler::new(
            SchedConfig {
                max_batch_tokens: budget,
                max_seqs,
                max_queue: 100,
            },
            BlockAllocator::new(blocks, bs),
        )
    }

    /// The model stand-in: commits the plan and "samples" a token for every sequence whose
    /// logits are due, finishing sequences at their target length.
    fn run_step(s: &mut Scheduler, target: &HashMap<SeqId, usize>) -> Plan {
        let plan = s.schedule();
        s.commit(&plan);
        for it in &plan.items {
            if it.sample {
                let len = s.tokens(it.id).unwrap().len();
                if len >= target[&it.id] {
                    s.remove(it.id);
                } else {
                    s.append(it.id, (it.id * 1000 + len as u64) as u32).unwrap();
                }
            }
        }
        plan
    }

    #[test]
    fn chunked_prefill_runs_beside_decodes_within_the_budget() {
        let mut s = sched(64, 4, 8, 8);
        let target: HashMap<SeqId, usize> = [(1, 10), (2, 40)].into();
        s.add(1, vec![7; 3], 10).unwrap();
        let p = run_step(&mut s, &target);
        assert_eq!(
            p.items,
            vec![PlanItem {
                id: 1,
                pos0: 0,
                len: 3,
                sample: true
            }]
        );
        s.add(2, vec![9; 20], 40).unwrap();
        // Sequence 1 decodes one token per step while sequence 2's prompt goes in chunks of
        // the budget's remaining 7.
        let p = run_step(&mut s, &target);
        assert_eq!(
            p.items,
            vec![
                PlanItem {
                    id: 1,
                    pos0: 3,
                    len: 1,
                    sample: true
                },
                PlanItem {
                    id: 2,
                    pos0: 0,
                    len: 7,
                    sample: false
                },
            ]
        );
        let p = run_step(&mut s, &target);
        assert_eq!(
            p.items[1],
            PlanItem {
                id: 2,
                pos0: 7,
                len: 7,
                sample: false
            }
        );
        let p = run_step(&mut s, &target);
        assert_eq!(
            p.items[1],
            PlanItem {
                id: 2,
                pos0: 14,
                len: 6,
                sample: true
            }
        );
        assert!(p.n_tokens() <= 8);
    }

    #[test]
    fn a_pipeline_shares_the_sequences_out_and_never_plans_one_in_flight() {
        // Two steps in flight, four sequences, blocks for three of them only.
        let mut s = sched(3, 16, 64, 8);
        for id in 1..=4 {
            s.add(id, vec![id as u32; 8], 12).unwrap(); // a block each
        }
        let ids = |p: &Plan| p.items.iter().map(|i| i.id).collect::<Vec<_>>();
        let a = s.schedule_part(2);
        assert_eq!(ids(&a), [1, 2], "half of the four");
        let b = s.schedule_part(2);
        assert_eq!(ids(&b), [3], "the pool holds a third; 4 waits");
        // Everything that can run is in flight: nothing to plan, and no sequence in flight
        // gives its blocks away to the one waiting.
        let c = s.schedule_part(2);
        assert!(c.items.is_empty() && c.preempted.is_empty(), "{c:?}");
        s.commit(&a);
        for id in [1, 2] {
            s.append(id, 0).unwrap();
        }
        let d = s.schedule_part(2);
        assert_eq!(ids(&d), [1, 2], "decodes again once committed: {d:?}");
        assert!(d.items.iter().all(|i| i.len == 1));
        // A sequence removed in flight: its step's commit passes over it.
        s.remove(3);
        s.commit(&b);
        assert!(s.tokens(3).is_none());
    }

    #[test]
    fn admission_waits_for_blocks_and_the_seq_limit() {
        let mut s = sched(4, 4, 64, 2);
        s.add(1, vec![1; 8], 12).unwrap(); // 2 blocks
        s.add(2, vec![2; 8], 12).unwrap(); // 2 blocks
        s.add(3, vec![3; 4], 8).unwrap(); // would need a block: waits
        let p = s.schedule();
        assert_eq!(p.items.len(), 2);
        assert_eq!(s.n_waiting(), 1);
        assert_eq!(s.allocator().n_available(), 0);
        s.commit(&p);
        s.remove(1);
        let p = s.schedule();
        // 2 has nothing new to compute; 3 is admitted now that blocks are free.
        assert_eq!(
            p.items,
            vec![PlanItem {
                id: 3,
                pos0: 0,
                len: 4,
                sample: true
            }]
        );
    }

    #[test]
    fn refusals() {
        let mut s = Scheduler::new(
            SchedConfig {
                max_batch_tokens: 8,
                max_seqs: 4,
                max_queue: 1,
            },
            BlockAllocator::new(2, 4),
        );
        assert_eq!(
            s.add(1, vec![0; 4], 9),
            Err(SchedError::TooLong {
                needed: 9,
                capacity: 8
            })
        );
        s.add(1, vec![0; 4], 8).unwrap();
        assert_eq!(s.add(2, vec![0; 4], 8), Err(SchedError::QueueFull(1)));
    }

    #[test]
    fn prefix_cache_skips_a_shared_prompt() {
        let mut s = sched(16, 4, 64, 8);
        let target: HashMap<SeqId, usize> = [(1, 14), (2, 14)].into();
        let prompt: Vec<u32> = (0..10).collect();
        s.add(1, prompt.clone(), 14).unwrap();
        run_step(&mut s, &target);
        s.add(2, prompt, 14).unwrap();
        let p = run_step(&mut s, &target);
        // Two full blocks (8 positions) come from the cache.
        assert!(p.items.contains(&PlanItem {
            id: 2,
            pos0: 8,
            len: 2,
            sample: true
        }));
        assert_eq!(s.table(2).unwrap()[..2], s.table(1).unwrap()[..2]);
    }

    /// Sequences that hold blocks with nothing to compute (beams waiting for the rest of
    /// their search) give way, newest first, when nothing else can run and the queue's head
    /// does not fit.
    #[test]
    fn idle_sequences_give_way_to_a_stuck_queue() {
        let mut s = sched(4, 4, 64, 8);
        s.add(1, vec![1; 8], 8).unwrap();
        s.add(2, vec![2; 8], 8).unwrap();
        let p = s.schedule();
        s.commit(&p);
        assert_eq!(s.allocator().n_available(), 0);
        // Both computed and idle; a third waits for blocks.
        s.add(3, vec![3; 8], 8).unwrap();
        let p = s.schedule();
        assert!(p.items.is_empty());
        assert_eq!(p.preempted, vec![2]);
        // The head gets in; the one that gave way waits behind it (not readmitted first,
        // which would only make it idle again).
        let p = s.schedule();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].id, 3);
        assert!(p.preempted.is_empty());
        assert_eq!(s.n_waiting(), 1);
    }

    #[test]
    fn fork_shares_blocks_until_written() {
        let mut s = sched(16, 4, 64, 8);
        s.add(1, vec![5; 6], 12).unwrap();
        let p = s.schedule();
        s.commit(&p);
        s.fork(1, 2).unwrap();
        assert_eq!(s.table(1), s.table(2));
        s.append(1, 10).unwrap();
        s.append(2, 11).unwrap();
        let p = s.schedule();
        // Both write position 6, in the shared second block: one copy, for the second writer
        // (the first still shares it with the second at that moment).
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.copies.len(), 1);
        assert_eq!(s.table(1).unwrap()[0], s.table(2).unwrap()[0]);
        assert_ne!(s.table(1).unwrap()[1], s.table(2).unwrap()[1]);
    }

    /// Many sequences through a pool far too small for all of them at once: every step stays
    /// within its limits, sequences get preempted and recomputed, and every one finishes with
    /// all blocks free at the end.
    #[test]
    fn random_load_never_sticks_and_frees_everything() {
        let mut rng = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (blocks, bs, budget) = (24, 4, 16);
        let mut s = sched(blocks, bs, budget, 6);
        let mut target = HashMap::new();
        let mut pending: Vec<SeqId> = (1..=40).collect();
        let mut finished = 0;
        let mut steps = 0;
        while finished < 40 {
            steps += 1;
            assert!(steps < 20_000, "stuck");
            if !pending.is_empty() && next().is_multiple_of(3) {
                let id = pending.remove(0);
                let plen = 1 + (next() % 30) as usize;
                let total = plen + 1 + (next() % 40) as usize;
                target.insert(id, total);
                // Some prompts share a prefix.
                let prompt: Vec<u32> = (0..plen)
                    .map(|i| {
                        if id.is_multiple_of(2) {
                            i as u32
                        } else {
                            (id * 100 + i as u64) as u32
                        }
                    })
                    .collect();
                s.add(id, prompt, total).unwrap();
            }
            let before: Vec<SeqId> = s.ids().collect();
            let plan = run_step(&mut s, &target);
            assert!(plan.n_tokens() <= budget);
            assert!(s.n_running() <= 6);
            let mut seen = std::collections::HashSet::new();
            assert!(plan.items.iter().all(|i| seen.insert(i.id)));
            assert!(plan.items.iter().all(|i| !plan.preempted.contains(&i.id)));
            finished += before.iter().filter(|id| s.tokens(**id).is_none()).count();
            // Every block in use belongs to some table (counting shared blocks once).
            let mut used = std::collections::HashSet::new();
            for id in s.ids() {
                used.extend(s.table(id).unwrap().iter().copied());
            }
            assert_eq!(used.len(), s.allocator().n_used());
        }
        assert!(s.is_idle());
        assert_eq!(s.allocator().n_used(), 0);
        assert!(s.n_preempted > 0, "the pool was meant to be too small");
        assert!(s.allocator().hits > 0, "even ids share prompt prefixes");
    }
}
