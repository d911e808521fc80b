//! [`Comm`] over MPI (OpenMPI through rsmpi): the processes `mpirun` started, as
//! `MPI_COMM_WORLD`. MPI is initialized for serialized use (any thread may call it, one at a
//! time); every call goes through one mutex, which is what makes that so.

use std::sync::Mutex;

use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use crate::{check_gather, check_rank, watch, Comm, DistError};

/// A communicator, and for the world's the universe whose drop finalizes MPI.
struct World {
    comm: SimpleCommunicator,
    _universe: Option<Universe>,
}

/// Held around every MPI call of every communicator of the process: serialized threading
/// means no two calls at once, whichever communicators they use.
static MPI_CALL: Mutex<()> = Mutex::new(());

// SAFETY: MPI was initialized with at least `Threading::Serialized` (checked in
// `MpiComm::init`), so any thread may make MPI calls as long as no two do at once; every
// access to a `World` holds `MPI_CALL`, which serializes them.
unsafe impl Send for World {}

/// The processes of an `mpirun`, over MPI.
pub struct MpiComm {
    /// `None` once finalized.
    world: Mutex<Option<World>>,
    rank: usize,
    size: usize,
}

impl MpiComm {
    /// Initializes MPI (once per process) and joins the world communicator.
    pub fn init() -> Result<MpiComm, DistError> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| DistError::Mpi("MPI is already initialized".into()))?;
        if matches!(provided, Threading::Single | Threading::Funneled) {
            return Err(DistError::Mpi(format!(
                "this MPI library gives threading level {provided:?}; tuili needs Serialized"
            )));
        }
        let comm = universe.world();
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        Ok(MpiComm {
            world: Mutex::new(Some(World {
                comm,
                _universe: Some(universe),
            })),
            rank,
            size,
        })
    }

    /// Runs MPI call `what` (its name, for the watchdog) under the lock.
    fn with<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&SimpleCommunicator) -> T,
    ) -> Result<T, DistError> {
        // A poisoned lock means a panic mid-call elsewhere; the communicator itself is intact.
        let _call = MPI_CALL.lock().unwrap_or_else(|p| p.into_inner());
        let _timed = watch::waiting(what);
        let w = self.world.lock().unwrap_or_else(|p| p.into_inner());
        match w.as_ref() {
            Some(w) => Ok(f(&w.comm)),
            None => Err(DistError::Mpi("MPI was already finalized".into())),
        }
    }
}

impl Drop for MpiComm {
    fn drop(&mut self) {
        // Freeing a communicator (and finalizing, for the world's) is an MPI call too.
        let _call = MPI_CALL.lock().unwrap_or_else(|p| p.into_inner());
        let w = self
            .world
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(w);
    }
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather(&self, part: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        check_gather(part.len(), self.size, out.len())?;
        self.with("MPI_Allgather", |c| c.all_gather_into(part, out))?;
        Ok(())
    }

    fn all_gather_bytes(&self, part: &[u8], out: &mut [u8]) -> Result<(), DistError> {
        check_gather(part.len(), self.size, out.len())?;
        self.with("MPI_Allgather", |c| c.all_gather_into(part, out))?;
        Ok(())
    }

    fn broadcast(&self, root: usize, buf: &mut [u8]) -> Result<(), DistError> {
        check_rank(root, self.size)?;
        self.with("MPI_Bcast", |c| {
            c.process_at_rank(root as i32).broadcast_into(buf)
        })?;
        Ok(())
    }

    fn send(&self, to: usize, buf: &[u8]) -> Result<(), DistError> {
        check_rank(to, self.size)?;
        self.with("MPI_Send", |c| c.process_at_rank(to as i32).send(buf))?;
        Ok(())
    }

    fn recv(&self, from: usize) -> Result<Vec<u8>, DistError> {
        check_rank(from, self.size)?;
        self.with("MPI_Recv", |c| {
            c.process_at_rank(from as i32).receive_vec::<u8>().0
        })
    }

    // The float forms go to MPI as floats: no byte copy per call (the pipeline sends a
    // hidden row and broadcasts logits every token).
    fn broadcast_f32(&self, root: usize, buf: &mut [f32]) -> Result<(), DistError> {
        check_rank(root, self.size)?;
        self.with("MPI_Bcast", |c| {
            c.process_at_rank(root as i32).broadcast_into(buf)
        })
    }

    fn send_f32(&self, to: usize, buf: &[f32]) -> Result<(), DistError> {
        check_rank(to, self.size)?;
        self.with("MPI_Send", |c| c.process_at_rank(to as i32).send(buf))
    }

    fn recv_f32(&self, from: usize, out: &mut [f32]) -> Result<(), DistError> {
        check_rank(from, self.size)?;
        let got = self.with("MPI_Recv", |c| {
            let st = c.process_at_rank(from as i32).receive_into(out);
            st.count(f32::equivalent_datatype()) as usize
        })?;
        if got != out.len() {
            return Err(DistError::Size {
                what: "received floats",
                expected: out.len(),
                got,
            });
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.with("MPI_Barrier", |c| c.barrier())
    }

    fn split(&self, color: usize) -> Result<std::sync::Arc<dyn Comm>, DistError> {
        let (c, rank, size) = self
            .with("MPI_Comm_split", |c| {
                let n = c.split_by_color(mpi::topology::Color::with_value(color as i32))?;
                let (rank, size) = (n.rank() as usize, n.size() as usize);
                Some((n, rank, size))
            })?
            .ok_or_else(|| DistError::Mpi("MPI_Comm_split gave no communicator".into()))?;
        Ok(std::sync::Arc::new(MpiComm {
            world: Mutex::new(Some(World {
                comm: c,
                _universe: None,
            })),
            rank,
            size,
        }))
    }

    fn finalize(&self) {
        // Dropping the universe finalizes MPI; later calls fail instead of touching it.
        let _call = MPI_CALL.lock().unwrap_or_else(|p| p.into_inner());
        let w = self.world.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(w);
    }

    fn abort(&self, code: i32) -> ! {
        // Not through the mutex: another thread may hold it, blocked in a collective that
        // will never complete — which is why we abort.
        // SAFETY: MPI_Abort may be called from any thread once MPI is initialized (it was, in
        // `init`), and does not return.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }
}
