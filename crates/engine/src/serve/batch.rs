//! One step's batch: assembled by the loop (`runner`), run through the model — and, in a
//! distributed run, passed to the other ranks, which run it too ([`super::ServeLoop::follow`]).
//! The scheduler decides once, on rank 0; a step's message is everything the others need to
//! compute the same step on their part of the model and their own pool (the same block
//! numbers, their own heads and layers): the block copies, the tokens, the spans, the block
//! tables and the rows whose logits are due.
//!
//! How messages and activations travel ([`Link`]): rank 0 broadcasts the step to the
//! tensor-parallel ranks of its stage; every stage but the last sends the message and its
//! residual stream on to the same tensor-parallel rank of the next stage; the last stage's
//! first rank sends the logits back to rank 0. No stage waits for a step to come back before
//! it takes the next, so a pipeline of P stages holds up to P steps at once, one per stage.
//! Each stage appends the seconds it has spent computing to the message it passes on, and
//! the last sends them to rank 0 with the logits (the pipeline's bubble, in `/metrics`).

use tuili_dist::Comm;
use tuili_kv::{BlockCopy, PagedStore};
use tuili_model::{Handoff, ModelError, OutRows, Scratch, SeqSpan};

use crate::engine::Engine;
use crate::error::EngineError;

/// One step's batch, assembled.
pub(crate) struct Batch<'a> {
    /// Copy-on-write copies to make before the step.
    pub(crate) copies: &'a [BlockCopy],
    pub(crate) tokens: &'a [u32],
    pub(crate) spans: &'a [SeqSpan],
    /// Sequence i's blocks: `tables[offsets[i]..offsets[i + 1]]`.
    pub(crate) tables: &'a [u32],
    pub(crate) offsets: &'a [usize],
    /// Batch rows whose logits are sampled.
    pub(crate) out: &'a [usize],
    /// Only the largest `top` logits of each row are needed ([`tuili_model::Logits::LastTop`]).
    pub(crate) top: Option<usize>,
}

impl Batch<'_> {
    /// The copies, then the forward pass over the pool; returns what this stage hands on
    /// ([`Handoff::Caller`]: the logits on the last stage, else the residual stream).
    pub(crate) fn run<'s>(
        &self,
        e: &Engine,
        store: &mut PagedStore,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32], ModelError> {
        store.copy_blocks(self.copies);
        let mut cache = store.batch(self.tables, self.offsets);
        e.model.forward_spans(
            Handoff::Caller,
            self.top,
            self.tokens,
            self.spans,
            &mut cache,
            e.n_ctx(),
            scratch,
            OutRows::List(self.out),
            &e.pool,
        )
    }

    /// The step's message; `busy`: rank 0's computing seconds so far, the first of the
    /// stages' seconds that end the message.
    pub(crate) fn encode(&self, busy: f64) -> Vec<u8> {
        let mut m = vec![STEP];
        let mut put = |v: usize| m.extend_from_slice(&(v as u32).to_le_bytes());
        put(self.copies.len());
        for c in self.copies {
            put(c.src as usize);
            put(c.dst as usize);
        }
        put(self.tokens.len());
        self.tokens.iter().for_each(|&t| put(t as usize));
        put(self.spans.len());
        for s in self.spans {
            put(s.start);
            put(s.len);
            put(s.pos0);
        }
        put(self.tables.len());
        self.tables.iter().for_each(|&b| put(b as usize));
        self.offsets.iter().for_each(|&o| put(o));
        put(self.out.len());
        self.out.iter().for_each(|&o| put(o));
        put(self.top.unwrap_or(0));
        m.extend_from_slice(&busy.to_le_bytes());
        m
    }
}

const STEP: u8 = 1;
const STOP: u8 = 0;

/// Where this rank sits in a distributed server, and how steps reach it and leave it.
pub(crate) struct Link<'c> {
    /// The tensor-parallel ranks of this stage.
    tp: &'c dyn Comm,
    /// The pipeline through this rank: its rank is the stage.
    pp: &'c dyn Comm,
}

impl<'c> Link<'c> {
    pub(crate) fn of(e: &'c Engine) -> Link<'c> {
        let split = e.model.split();
        Link::new(&*split.tp, &*split.pp)
    }

    pub(crate) fn new(tp: &'c dyn Comm, pp: &'c dyn Comm) -> Link<'c> {
        Link { tp, pp }
    }

    /// Steps that may be in flight at once: one per stage.
    pub(crate) fn depth(&self) -> usize {
        self.pp.size()
    }

    fn stage(&self) -> usize {
        self.pp.rank()
    }

    fn last(&self) -> usize {
        self.pp.size() - 1
    }

    /// Rank 0: a step's message to the other ranks of the first stage.
    pub(crate) fn share(&self, msg: &[u8]) -> Result<(), EngineError> {
        if self.tp.size() > 1 {
            self.tp.broadcast_vec(0, msg.to_vec())?;
        }
        Ok(())
    }

    /// Another rank: the next step (`None`: serving is over, and the stop has been passed
    /// on) — from rank 0 on the first stage, from the stage before on the others.
    pub(crate) fn receive(&self) -> Result<Option<(Received, Vec<u8>)>, EngineError> {
        // As long as the server is idle: not a wait the watchdog times.
        let msg = tuili_dist::watch::idle(|| {
            if self.stage() == 0 {
                self.tp.broadcast_vec(0, Vec::new())
            } else {
                self.pp.recv(self.stage() - 1)
            }
        })?;
        match Received::decode(&msg)? {
            // Rank 0's seconds, and one more from each stage before this one.
            Some(r) if r.busy.len() != self.stage().max(1) => Err(EngineError::Internal(
                "a step message with the wrong number of stages' seconds",
            )),
            Some(r) => Ok(Some((r, msg))),
            None => {
                self.pass_stop()?;
                Ok(None)
            }
        }
    }

    /// Passes a step on once this stage has run it (`out`: what the forward pass handed on;
    /// `busy`: this rank's computing seconds so far): its message and the residual stream to
    /// the next stage; from the last stage's first rank, the logits and every stage's
    /// seconds to rank 0. Nothing from the other ranks.
    pub(crate) fn hand_on(
        &self,
        mut msg: Vec<u8>,
        out: &[f32],
        busy: f64,
    ) -> Result<(), EngineError> {
        let (stage, last) = (self.stage(), self.last());
        if stage > 0 {
            msg.extend_from_slice(&busy.to_le_bytes());
        }
        if stage < last {
            self.pp.send(stage + 1, &msg)?;
            self.pp.send_f32(stage + 1, out)?;
        } else if stage > 0 && self.tp.rank() == 0 {
            // The message ends with rank 0's seconds and every later stage's, this one's last.
            self.pp.send_f32(0, out)?;
            self.pp.send(0, &msg[msg.len() - 8 * (stage + 1)..])?;
        }
        Ok(())
    }

    /// Rank 0: the logits of the oldest step in flight into `logits` (exactly its rows), and
    /// every stage's computing seconds so far.
    pub(crate) fn collect(&self, logits: &mut [f32]) -> Result<Vec<f64>, EngineError> {
        let last = self.last();
        self.pp.recv_f32(last, logits)?;
        Ok(seconds(&self.pp.recv(last)?))
    }

    /// Rank 0: serving is over; the stop goes the way the steps go.
    pub(crate) fn stop(&self) -> Result<(), EngineError> {
        self.share(&[STOP])?;
        self.pass_stop()
    }

    fn pass_stop(&self) -> Result<(), EngineError> {
        if self.stage() < self.last() {
            self.pp.send(self.stage() + 1, &[STOP])?;
        }
        Ok(())
    }
}

/// Seconds as the message's tail holds them.
fn seconds(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// A step as another rank receives it (owned).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Received {
    copies: Vec<BlockCopy>,
    tokens: Vec<u32>,
    spans: Vec<SeqSpan>,
    tables: Vec<u32>,
    offsets: Vec<usize>,
    out: Vec<usize>,
    top: Option<usize>,
    /// Computing seconds of the stages before this one (rank 0's first).
    busy: Vec<f64>,
}

impl Received {
    fn decode(m: &[u8]) -> Result<Option<Received>, EngineError> {
        let Some((r, tail)) = Received::parse(m)? else {
            return Ok(None);
        };
        Ok(Some(Received {
            busy: seconds(&m[m.len() - tail..]),
            ..r
        }))
    }

    /// The step, and the length of the seconds' tail; `None` for the stop.
    fn parse(m: &[u8]) -> Result<Option<(Received, usize)>, EngineError> {
        let bad = || EngineError::Internal("a malformed step message from rank 0");
        let (&kind, mut rest) = m.split_first().ok_or_else(bad)?;
        if kind == STOP {
            return Ok(None);
        }
        let mut get = || -> Result<usize, EngineError> {
            let (v, r) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
            rest = r;
            Ok(u32::from_le_bytes(*v) as usize)
        };
        let mut r = Received::default();
        for _ in 0..get()? {
            let (src, dst) = (get()? as u32, get()? as u32);
            r.copies.push(BlockCopy { src, dst });
        }
        for _ in 0..get()? {
            r.tokens.push(get()? as u32);
        }
        let n_spans = get()?;
        for _ in 0..n_spans {
            let (start, len, pos0) = (get()?, get()?, get()?);
            r.spans.push(SeqSpan { start, len, pos0 });
        }
        for _ in 0..get()? {
            r.tables.push(get()? as u32);
        }
        for _ in 0..=n_spans {
            r.offsets.push(get()?);
        }
        for _ in 0..get()? {
            r.out.push(get()?);
        }
        r.top = Some(get()?).filter(|&c| c > 0);
        // The forward pass checks spans against tokens; the tables must cover the offsets.
        if r.offsets.last() != Some(&r.tables.len())
            || r.offsets.windows(2).any(|w| w[0] > w[1])
            || rest.is_empty()
            || rest.len() % 8 != 0
        {
            return Err(bad());
        }
        Ok(Some((r, rest.len())))
    }

    pub(crate) fn batch(&self) -> Batch<'_> {
        Batch {
            copies: &self.copies,
            tokens: &self.tokens,
            spans: &self.spans,
            tables: &self.tables,
            offsets: &self.offsets,
            out: &self.out,
            top: self.top,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tuili_dist::threads::group;
    use tuili_dist::Local;

    fn step() -> Received {
        Received {
            copies: vec![BlockCopy { src: 3, dst: 9 }],
            tokens: vec![5, 6, 7, 8],
            spans: vec![
                SeqSpan {
                    start: 0,
                    len: 3,
                    pos0: 0,
                },
                SeqSpan {
                    start: 3,
                    len: 1,
                    pos0: 40,
                },
            ],
            tables: vec![0, 1, 2, 7],
            offsets: vec![0, 1, 4],
            out: vec![2, 3],
            top: Some(64),
            busy: vec![1.5],
        }
    }

    /// Tensor parallelism: rank 0 shares the step with its stage, which stops when told.
    #[test]
    fn a_step_reaches_the_stage_as_sent() {
        let sent = step();
        let ranks = group(2);
        std::thread::scope(|s| {
            let (a, b) = (&ranks[0], &ranks[1]);
            s.spawn(|| {
                let link = Link::new(a, &Local);
                link.share(&sent.batch().encode(1.5)).unwrap();
                link.stop().unwrap();
            });
            let link = Link::new(b, &Local);
            let (got, _) = link.receive().unwrap().unwrap();
            assert_eq!(got, sent);
            assert!(link.receive().unwrap().is_none());
        });
        assert!(Received::decode(&[STEP, 1, 0]).is_err());
    }

    /// A pipeline of three stages: the message goes down with each stage's seconds, the
    /// logits come back to rank 0 from the last, and the stop goes down.
    #[test]
    fn a_step_goes_down_the_pipeline_and_its_logits_come_back() {
        let sent = step();
        let ranks = group(3);
        std::thread::scope(|s| {
            for (i, r) in ranks.iter().enumerate().skip(1) {
                s.spawn(move || {
                    let link = Link::new(&Local, r);
                    while let Some((got, msg)) = link.receive().unwrap() {
                        assert_eq!(got.busy.len(), i);
                        assert_eq!(got.tokens, [5, 6, 7, 8]);
                        // The forward pass receives the stage before's residual stream...
                        let mut x = [0f32; 6];
                        r.recv_f32(i - 1, &mut x).unwrap();
                        assert_eq!(x, [(i - 1) as f32; 6]);
                        // ...and hands on its own, or the logits on the last stage.
                        let out = vec![i as f32; 6];
                        link.hand_on(msg, &out, 10.0 * i as f64).unwrap();
                    }
                });
            }
            let link = Link::new(&Local, &ranks[0]);
            assert_eq!(link.depth(), 3);
            for _ in 0..2 {
                link.hand_on(sent.batch().encode(1.5), &[0.0; 6], 1.5)
                    .unwrap();
            }
            for _ in 0..2 {
                let mut logits = [0f32; 6];
                let busy = link.collect(&mut logits).unwrap();
                assert_eq!(logits, [2.0; 6]);
                assert_eq!(busy, [1.5, 10.0, 20.0]);
            }
            link.stop().unwrap();
        });
    }
}
