//! [`Comm`] between threads of one process ([`group`]): the ranks of a distributed run without
//! MPI, so that the tests of everything above `dist` exercise several ranks in every build, and
//! a bug is found the same way whatever carries the bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::{check_gather, check_rank, Comm, DistError};

/// One rank of a [`group`].
pub struct ThreadComm {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Collectives completed so far.
    generation: u64,
    /// This collective's contributions, by rank.
    slots: Vec<Option<Vec<u8>>>,
    arrived: usize,
    /// The last completed collective's contributions.
    last: Arc<Vec<Vec<u8>>>,
    /// Point-to-point messages waiting, by (from, to).
    mail: HashMap<(usize, usize), VecDeque<Vec<u8>>>,
    /// Groups made by [`Comm::split`]: by the collective that made them and the color.
    splits: HashMap<(u64, usize), Arc<Shared>>,
    /// The first rank that left (its `ThreadComm` dropped: it returned, failed or panicked):
    /// every wait from then on fails instead of waiting for it forever.
    gone: Option<usize>,
}

fn shared(size: usize) -> Arc<Shared> {
    Arc::new(Shared {
        state: Mutex::new(State {
            slots: vec![None; size],
            ..State::default()
        }),
        changed: Condvar::new(),
    })
}

/// `size` ranks that talk through shared memory; hand one to each thread.
pub fn group(size: usize) -> Vec<ThreadComm> {
    let shared = shared(size);
    (0..size)
        .map(|rank| ThreadComm {
            rank,
            size,
            shared: shared.clone(),
        })
        .collect()
}

impl ThreadComm {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means another rank panicked; its test fails on its own.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for another rank's change, unless one has left (then nothing will change).
    fn wait<'a>(&'a self, st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>, DistError> {
        if let Some(rank) = st.gone {
            return Err(DistError::PeerGone { rank });
        }
        Ok(self
            .shared
            .changed
            .wait(st)
            .unwrap_or_else(|p| p.into_inner()))
    }

    /// Every rank's `mine`, in rank order, once all have given theirs.
    fn exchange(&self, mine: Vec<u8>) -> Result<Arc<Vec<Vec<u8>>>, DistError> {
        let mut st = self.lock();
        if let Some(rank) = st.gone {
            return Err(DistError::PeerGone { rank });
        }
        let generation = st.generation;
        st.slots[self.rank] = Some(mine);
        st.arrived += 1;
        if st.arrived == self.size {
            let all = st.slots.iter_mut().map(|s| s.take().unwrap_or_default());
            st.last = Arc::new(all.collect());
            st.arrived = 0;
            st.generation += 1;
            self.shared.changed.notify_all();
            return Ok(st.last.clone());
        }
        // The next collective cannot complete before this rank joins it, so `last` is still
        // this one's when the generation moves on.
        while st.generation == generation {
            st = self.wait(st)?;
        }
        Ok(st.last.clone())
    }
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        let mut st = self.lock();
        st.gone.get_or_insert(self.rank);
        self.shared.changed.notify_all();
    }
}

impl Comm for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather(&self, part: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        check_gather(part.len(), self.size, out.len())?;
        let bytes = part.iter().flat_map(|v| v.to_le_bytes()).collect();
        let all = self.exchange(bytes)?;
        let mut values = all.iter().flat_map(|b| b.chunks_exact(4));
        for o in out.iter_mut() {
            let c = values.next().ok_or(DistError::Size {
                what: "all_gather parts",
                expected: part.len() * self.size,
                got: 0,
            })?;
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    fn all_gather_bytes(&self, part: &[u8], out: &mut [u8]) -> Result<(), DistError> {
        check_gather(part.len(), self.size, out.len())?;
        let all = self.exchange(part.to_vec())?;
        let mut at = 0;
        for p in all.iter() {
            let got = p.len();
            if got != part.len() {
                return Err(DistError::Size {
                    what: "all_gather parts",
                    expected: part.len(),
                    got,
                });
            }
            out[at..at + got].copy_from_slice(p);
            at += got;
        }
        Ok(())
    }

    fn broadcast(&self, root: usize, buf: &mut [u8]) -> Result<(), DistError> {
        check_rank(root, self.size)?;
        let mine = if self.rank == root {
            buf.to_vec()
        } else {
            Vec::new()
        };
        let all = self.exchange(mine)?;
        if all[root].len() != buf.len() {
            return Err(DistError::Size {
                what: "broadcast buffer",
                expected: all[root].len(),
                got: buf.len(),
            });
        }
        buf.copy_from_slice(&all[root]);
        Ok(())
    }

    fn send(&self, to: usize, buf: &[u8]) -> Result<(), DistError> {
        check_rank(to, self.size)?;
        let mut st = self.lock();
        st.mail
            .entry((self.rank, to))
            .or_default()
            .push_back(buf.to_vec());
        self.shared.changed.notify_all();
        Ok(())
    }

    fn recv(&self, from: usize) -> Result<Vec<u8>, DistError> {
        check_rank(from, self.size)?;
        let mut st = self.lock();
        loop {
            if let Some(m) = st
                .mail
                .get_mut(&(from, self.rank))
                .and_then(|q| q.pop_front())
            {
                return Ok(m);
            }
            st = self.wait(st)?;
        }
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.exchange(Vec::new()).map(|_| ())
    }

    fn split(&self, color: usize) -> Result<Arc<dyn Comm>, DistError> {
        let all = self.exchange((color as u64).to_le_bytes().to_vec())?;
        let colors: Vec<u64> = all
            .iter()
            .map(|b| u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])))
            .collect();
        let members: Vec<usize> = (0..self.size)
            .filter(|&r| colors[r] == color as u64)
            .collect();
        let rank = members.iter().position(|&r| r == self.rank).unwrap_or(0);
        // The collective's generation tells this split from later ones of the same color;
        // the first member to get here makes the group's state, the others find it.
        let mut st = self.lock();
        let key = (st.generation, color);
        let shared = st
            .splits
            .entry(key)
            .or_insert_with(|| shared(members.len()))
            .clone();
        drop(st);
        Ok(Arc::new(ThreadComm {
            rank,
            size: members.len(),
            shared,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three ranks on three threads: every collective and the ring, many times over (a lost
    /// wake-up or a result read from the wrong round would show).
    #[test]
    fn three_threads_agree() {
        let ranks = group(3);
        std::thread::scope(|s| {
            for c in &ranks {
                s.spawn(move || {
                    let (r, n) = (c.rank(), c.size());
                    for round in 0..200 {
                        let mut v = vec![(r + round) as f32; 5];
                        let mut scratch = Vec::new();
                        c.all_reduce_sum(&mut v, &mut scratch).unwrap();
                        let want: f32 = (0..n).map(|q| (q + round) as f32).sum();
                        assert_eq!(v, vec![want; 5]);
                        let mut b = [round as u8, r as u8];
                        c.broadcast(round % n, &mut b).unwrap();
                        assert_eq!(b, [round as u8, (round % n) as u8]);
                        c.send((r + 1) % n, &[r as u8, round as u8]).unwrap();
                        let got = c.recv((r + n - 1) % n).unwrap();
                        assert_eq!(got, [((r + n - 1) % n) as u8, round as u8]);
                        let v = c.broadcast_vec(1, vec![r as u8; round % 7]).unwrap();
                        assert_eq!(v, vec![1u8; round % 7]);
                        c.barrier().unwrap();
                    }
                });
            }
        });
    }

    /// Four ranks split two ways (as tensor × pipeline parallelism does): each sub-group
    /// works on its own.
    #[test]
    fn split_makes_independent_groups() {
        let ranks = group(4);
        std::thread::scope(|s| {
            for c in &ranks {
                s.spawn(move || {
                    let r = c.rank();
                    let rows = c.split(r / 2).unwrap(); // {0, 1}, {2, 3}
                    let cols = c.split(r % 2).unwrap(); // {0, 2}, {1, 3}
                    assert_eq!((rows.rank(), rows.size()), (r % 2, 2));
                    assert_eq!((cols.rank(), cols.size()), (r / 2, 2));
                    let (mut v, mut scratch) = (vec![r as f32], Vec::new());
                    rows.all_reduce_sum(&mut v, &mut scratch).unwrap();
                    assert_eq!(v[0], if r < 2 { 1.0 } else { 5.0 });
                    let mut w = vec![r as f32];
                    cols.all_reduce_sum(&mut w, &mut scratch).unwrap();
                    assert_eq!(w[0], if r % 2 == 0 { 2.0 } else { 4.0 });
                });
            }
        });
    }

    /// A rank that leaves (here: returns early) fails the others' next wait instead of
    /// hanging them.
    #[test]
    fn a_rank_that_leaves_fails_the_others() {
        let mut ranks = group(3);
        let quitter = ranks.pop().unwrap();
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = ranks.iter().map(|c| s.spawn(move || c.barrier())).collect();
            drop(quitter);
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            assert!(matches!(r, Err(DistError::PeerGone { rank: 2 })), "{r:?}");
        }
    }
}
