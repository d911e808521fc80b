//! `MpiComm` under `mpirun` with 1, 2 and 3 processes (`tuili-dist-selftest` checks every
//! operation on every rank). Built with `--features mpi`; skipped, saying so, where `mpirun`
//! is not installed.
#![cfg(feature = "mpi")]

use std::process::Command;

#[test]
fn every_operation_under_mpirun() {
    if Command::new("mpirun").arg("--version").output().is_err() {
        eprintln!("mpirun not found: install openmpi-bin to run the MPI tests");
        return;
    }
    for np in [1, 2, 3] {
        let out = Command::new("mpirun")
            .args(["--allow-run-as-root", "--oversubscribe", "-np"])
            .arg(np.to_string())
            .arg(env!("CARGO_BIN_EXE_tuili-dist-selftest"))
            .output()
            .expect("mpirun runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "np {np}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.matches(": ok").count(), np, "{stdout}");
    }
}
