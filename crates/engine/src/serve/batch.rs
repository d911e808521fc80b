//! One step's batch: assembled by the loop (`runner`), run through the model — and, in a
//! tensor-parallel group, sent first by rank 0 to the other ranks, which run it too
//! ([`super::ServeLoop::follow`]). The scheduler decides once, on rank 0; a step's message is
//! everything the others need to compute the same step on their part of the model and their
//! own pool (the same block numbers, their own heads): the block copies, the tokens, the
//! spans, the block tables and the rows whose logits are due.

use tuili_dist::Comm;
use tuili_kv::{BlockCopy, PagedStore};
use tuili_model::{ModelError, OutRows, Scratch, SeqSpan};

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
}

impl Batch<'_> {
    /// The copies, then the forward pass over the pool.
    pub(crate) fn run<'s>(
        &self,
        e: &Engine,
        store: &mut PagedStore,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32], ModelError> {
        store.copy_blocks(self.copies);
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

    /// Rank 0's step, sent to the other ranks of its group (nothing when alone).
    pub(crate) fn share(&self, comm: &dyn Comm) -> Result<(), EngineError> {
        if comm.size() == 1 {
            return Ok(());
        }
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
        send(comm, m)
    }
}

const STEP: u8 = 1;
const STOP: u8 = 0;

fn send(comm: &dyn Comm, m: Vec<u8>) -> Result<(), EngineError> {
    comm.broadcast_vec(0, m)?;
    Ok(())
}

/// Rank 0 tells the others that serving is over.
pub(crate) fn share_stop(comm: &dyn Comm) -> Result<(), EngineError> {
    if comm.size() == 1 {
        return Ok(());
    }
    send(comm, vec![STOP])
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
}

impl Received {
    /// Waits for rank 0's next step; `None` when serving is over.
    pub(crate) fn next(comm: &dyn Comm) -> Result<Option<Received>, EngineError> {
        let m = comm.broadcast_vec(0, Vec::new())?;
        Received::decode(&m)
    }

    fn decode(m: &[u8]) -> Result<Option<Received>, EngineError> {
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
        // The forward pass checks spans against tokens; the tables must cover the offsets.
        if r.offsets.last() != Some(&r.tables.len()) || r.offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad());
        }
        Ok(Some(r))
    }

    pub(crate) fn batch(&self) -> Batch<'_> {
        Batch {
            copies: &self.copies,
            tokens: &self.tokens,
            spans: &self.spans,
            tables: &self.tables,
            offsets: &self.offsets,
            out: &self.out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tuili_dist::threads::group;

    #[test]
    fn a_step_arrives_as_sent() {
        let sent = Received {
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
        };
        let ranks = group(2);
        std::thread::scope(|s| {
            let (a, b) = (&ranks[0], &ranks[1]);
            s.spawn(|| {
                sent.batch().share(a).unwrap();
                share_stop(a).unwrap();
            });
            let got = Received::next(b).unwrap();
            assert_eq!(got.as_ref(), Some(&sent));
            assert_eq!(Received::next(b).unwrap(), None);
        });
        assert!(Received::decode(&[STEP, 1, 0]).is_err());
    }
}
