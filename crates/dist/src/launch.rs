//! Joining the processes a run was started as ([`world`]): one process alone, or the ones
//! `mpirun` started — with the errors that name the fix when they are not what was asked for.

use std::sync::Arc;

use crate::{Comm, DistError, Local};

/// The number of processes `mpirun` (or another MPI launcher) started this one among, from
/// the launcher's environment; `None` when it was started on its own.
pub fn launched_size() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// The group of `want` processes this run was started as: [`Local`] for one process on its
/// own; under MPI (feature `mpi`), the world of `mpirun -np want`. Anything else — more than
/// one process asked for without `mpirun` or without MPI, or `mpirun` starting another
/// number — is an error that names the fix (`what` names the option, e.g. "--tp 2").
pub fn world(want: usize, what: &str) -> Result<Arc<dyn Comm>, DistError> {
    let started = launched_size();
    if want <= 1 && started.is_none_or(|n| n <= 1) {
        return Ok(Arc::new(Local));
    }
    #[cfg(feature = "mpi")]
    {
        let comm = crate::mpi_comm::MpiComm::init()?;
        if comm.size() != want {
            let msg = if comm.size() == 1 {
                format!(
                    "{what} needs {want} processes: start it with `mpirun -np {want} tuili …` \
                     (README, Distributed runs)"
                )
            } else {
                format!(
                    "{what} needs {want} processes, and mpirun started {}: use `mpirun -np \
                     {want}`, or give the option for {} processes",
                    comm.size(),
                    comm.size()
                )
            };
            return Err(DistError::Launch(msg));
        }
        Ok(Arc::new(comm))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = what;
        Err(DistError::Launch(match started {
            Some(n) if n > 1 => format!(
                "started by mpirun as one of {n} processes, but this tuili was built without \
                 MPI: build it with `cargo build --release --features mpi` (README, Distributed \
                 runs)"
            ),
            _ => format!(
                "{what} runs over MPI, and this tuili was built without it: build it with `cargo \
                 build --release --features mpi` and start it with `mpirun -np {want} tuili …` \
                 (README, Distributed runs)"
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_alone_is_local_and_more_need_a_launcher() {
        if launched_size().is_some() {
            return; // run under a launcher: not the case this checks
        }
        assert_eq!(world(1, "--tp 1").unwrap().size(), 1);
        let err = world(2, "--tp 2").err().unwrap().to_string();
        assert!(
            err.contains("mpirun -np 2") || err.contains("--features mpi"),
            "{err}"
        );
    }
}
