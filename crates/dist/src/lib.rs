//! `tuili-dist`: the processes of one distributed run and what passes between them.
//!
//! Owns: the [`Comm`] trait — rank, size, all-reduce (sum of f32), all-gather, broadcast,
//! send/receive of a buffer, barrier — with a single-process implementation ([`Local`]), one
//! between threads of a process ([`threads::group`]: several ranks in any build, for tests)
//! and, behind the cargo feature `mpi`, one over MPI ([`mpi_comm::MpiComm`], OpenMPI through
//! rsmpi). [`launch::world`] joins the processes a run was started as. Everything above this
//! crate sees only `Comm`. [`watch`] ends a group whose ranks stopped answering. May not:
//! know models, tensors' meaning, or scheduling.
//!
//! Results do not depend on timing: the all-reduce adds the ranks' parts in rank order on
//! every rank (gathered, then summed), so every rank holds bit-identical sums, the same from
//! run to run, whatever algorithm the MPI library picks.

pub mod launch;
pub mod meter;
#[cfg(feature = "mpi")]
pub mod mpi_comm;
pub mod threads;
pub mod watch;

/// Errors of communication.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DistError {
    #[error("{what}: expected {expected} values, got {got}")]
    Size {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("rank {rank} is outside the group of {size}")]
    BadRank { rank: usize, size: usize },
    #[error("a process alone has no other rank to send to or receive from")]
    Alone,
    #[error("MPI: {0}")]
    Mpi(String),
    #[error("rank {rank} left the group (it failed or was stopped): the run cannot go on")]
    PeerGone { rank: usize },
    /// The processes started are not the ones asked for (wrong count, no MPI).
    #[error("{0}")]
    Launch(String),
}

/// The processes of one run, as one of them sees them.
pub trait Comm: Send + Sync {
    /// This process's index, `0..size`.
    fn rank(&self) -> usize;
    /// Processes in the group.
    fn size(&self) -> usize;

    /// Every rank's `part` (the same length on every rank), concatenated in rank order into
    /// `out` (`size × part.len()`).
    fn all_gather(&self, part: &[f32], out: &mut [f32]) -> Result<(), DistError>;

    /// [`Comm::all_gather`] of bytes (a compressed all-reduce's blocks).
    fn all_gather_bytes(&self, part: &[u8], out: &mut [u8]) -> Result<(), DistError>;

    /// `buf` ← the sum over ranks of `buf`, added in rank order (the same bits on every rank).
    /// `scratch` is grown to hold every rank's part.
    fn all_reduce_sum(&self, buf: &mut [f32], scratch: &mut Vec<f32>) -> Result<(), DistError> {
        let (n, size) = (buf.len(), self.size());
        if size == 1 {
            return Ok(());
        }
        if scratch.len() < n * size {
            scratch.resize(n * size, 0.0);
        }
        let all = &mut scratch[..n * size];
        self.all_gather(buf, all)?;
        buf.copy_from_slice(&all[..n]);
        for part in all[n..].chunks_exact(n) {
            for (b, p) in buf.iter_mut().zip(part) {
                *b += p;
            }
        }
        Ok(())
    }

    /// Rank `root`'s `buf` to every rank (the same length everywhere).
    fn broadcast(&self, root: usize, buf: &mut [u8]) -> Result<(), DistError>;

    /// Rank `root`'s `data`, of any length, to every rank (what the others pass is ignored).
    fn broadcast_vec(&self, root: usize, data: Vec<u8>) -> Result<Vec<u8>, DistError> {
        let mut len = (data.len() as u64).to_le_bytes();
        self.broadcast(root, &mut len)?;
        let n = usize::try_from(u64::from_le_bytes(len)).map_err(|_| DistError::Size {
            what: "broadcast length",
            expected: usize::MAX,
            got: 0,
        })?;
        let mut buf = if self.rank() == root {
            data
        } else {
            vec![0; n]
        };
        self.broadcast(root, &mut buf)?;
        Ok(buf)
    }

    /// [`Comm::broadcast`] of floats.
    fn broadcast_f32(&self, root: usize, buf: &mut [f32]) -> Result<(), DistError> {
        let mut bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.broadcast(root, &mut bytes)?;
        for (v, c) in buf.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    /// [`Comm::send`] of floats.
    fn send_f32(&self, to: usize, buf: &[f32]) -> Result<(), DistError> {
        let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.send(to, &bytes)
    }

    /// [`Comm::recv`] of exactly `out.len()` floats.
    fn recv_f32(&self, from: usize, out: &mut [f32]) -> Result<(), DistError> {
        let bytes = self.recv(from)?;
        if bytes.len() != 4 * out.len() {
            return Err(DistError::Size {
                what: "received floats",
                expected: out.len(),
                got: bytes.len() / 4,
            });
        }
        for (v, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    /// Sends `buf` to rank `to` (a matching [`Comm::recv`] there).
    fn send(&self, to: usize, buf: &[u8]) -> Result<(), DistError>;

    /// Receives a buffer from rank `from` (its length as sent).
    fn recv(&self, from: usize) -> Result<Vec<u8>, DistError>;

    /// Waits until every rank has reached it.
    fn barrier(&self) -> Result<(), DistError>;

    /// The group's ranks of the same `color`, as a group of their own, ranked in this group's
    /// order (MPI's `MPI_Comm_split`); every rank must call it. For tensor × pipeline
    /// parallelism: one group per stage, one per tensor-parallel rank.
    fn split(&self, color: usize) -> Result<std::sync::Arc<dyn Comm>, DistError>;

    /// Leaves the group at the end of a run that went well (MPI: `MPI_Finalize`, which every
    /// rank must reach); communication after it fails. Nothing for the others.
    fn finalize(&self) {}

    /// Ends every process of the group now, with exit status `code` (a rank that cannot go
    /// on, so that the others do not wait for it forever). One process alone just exits.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// One process alone: rank 0 of 1; collectives are the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Comm for Local {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_gather(&self, part: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        check_gather(part.len(), 1, out.len())?;
        out.copy_from_slice(part);
        Ok(())
    }

    fn all_gather_bytes(&self, part: &[u8], out: &mut [u8]) -> Result<(), DistError> {
        check_gather(part.len(), 1, out.len())?;
        out.copy_from_slice(part);
        Ok(())
    }

    fn broadcast(&self, root: usize, _buf: &mut [u8]) -> Result<(), DistError> {
        check_rank(root, 1)
    }

    fn send(&self, _to: usize, _buf: &[u8]) -> Result<(), DistError> {
        Err(DistError::Alone)
    }

    fn recv(&self, _from: usize) -> Result<Vec<u8>, DistError> {
        Err(DistError::Alone)
    }

    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }

    fn split(&self, _color: usize) -> Result<std::sync::Arc<dyn Comm>, DistError> {
        Ok(std::sync::Arc::new(Local))
    }
}

/// An all-gather's output holds `size` parts of `part` values.
pub fn check_gather(part: usize, size: usize, out: usize) -> Result<(), DistError> {
    if out == part * size {
        Ok(())
    } else {
        Err(DistError::Size {
            what: "all_gather output",
            expected: part * size,
            got: out,
        })
    }
}

/// `rank` is one of the group's `size`.
pub fn check_rank(rank: usize, size: usize) -> Result<(), DistError> {
    if rank < size {
        Ok(())
    } else {
        Err(DistError::BadRank { rank, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_is_the_identity() {
        let c = Local;
        assert_eq!((c.rank(), c.size()), (0, 1));
        let mut v = vec![1.0f32, 2.0, 3.0];
        let mut s = Vec::new();
        c.all_reduce_sum(&mut v, &mut s).unwrap();
        assert_eq!(v, [1.0, 2.0, 3.0]);
        let mut out = [0f32; 3];
        c.all_gather(&v, &mut out).unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0]);
        assert!(c.all_gather(&v, &mut [0f32; 2]).is_err());
        c.broadcast(0, &mut [1, 2]).unwrap();
        assert!(c.broadcast(1, &mut [1, 2]).is_err());
        // A process alone has nobody to talk to.
        assert_eq!(c.send(0, &[1]), Err(DistError::Alone));
        assert_eq!(c.recv(0), Err(DistError::Alone));
        c.barrier().unwrap();
    }
}
