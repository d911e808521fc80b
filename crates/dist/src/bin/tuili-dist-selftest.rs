//! Checks every operation of `MpiComm` on the processes `mpirun` started, whatever their
//! number; exits non-zero on any mismatch. Run by `tests/mpi.rs`:
//! `mpirun --allow-run-as-root --oversubscribe -np N tuili-dist-selftest`.

use std::process::ExitCode;

use tuili_dist::mpi_comm::MpiComm;
use tuili_dist::{Comm, DistError};

fn check(c: &MpiComm) -> Result<(), String> {
    let (rank, size) = (c.rank(), c.size());
    let e = |e: DistError| e.to_string();
    // All-reduce: rank r contributes (r + 1) · (i + 1) + 1/3 at i; the sum is the same bits on
    // every rank (added in rank order), and equals the sequential sum.
    let n = 1000;
    let part: Vec<f32> = (0..n)
        .map(|i| (rank + 1) as f32 * (i + 1) as f32 + 1.0 / 3.0)
        .collect();
    let mut sum = part.clone();
    let mut scratch = Vec::new();
    c.all_reduce_sum(&mut sum, &mut scratch).map_err(e)?;
    for (i, &v) in sum.iter().enumerate() {
        let mut want = 0f32;
        for r in 0..size {
            want += (r + 1) as f32 * (i + 1) as f32 + 1.0 / 3.0;
        }
        if v.to_bits() != want.to_bits() {
            return Err(format!("all_reduce_sum[{i}] = {v}, want {want}"));
        }
    }
    // All-gather: every rank's part in rank order.
    let mut all = vec![0f32; 3 * size];
    c.all_gather(&[rank as f32, 1.0, -(rank as f32)], &mut all)
        .map_err(e)?;
    for r in 0..size {
        if all[3 * r..3 * r + 3] != [r as f32, 1.0, -(r as f32)] {
            return Err(format!("all_gather part {r}: {:?}", &all[3 * r..3 * r + 3]));
        }
    }
    // Broadcast from the last rank.
    let mut b = if rank == size - 1 {
        b"from the last".to_vec()
    } else {
        vec![0u8; 13]
    };
    c.broadcast(size - 1, &mut b).map_err(e)?;
    if b != b"from the last" {
        return Err(format!("broadcast: {b:?}"));
    }
    // Send/receive around the ring (even ranks send first, so that two ranks never both wait).
    if size > 1 {
        let (next, prev) = ((rank + 1) % size, (rank + size - 1) % size);
        let msg = format!("hello from {rank}").into_bytes();
        let got = if rank % 2 == 0 {
            c.send(next, &msg).map_err(e)?;
            c.recv(prev).map_err(e)?
        } else {
            let got = c.recv(prev).map_err(e)?;
            c.send(next, &msg).map_err(e)?;
            got
        };
        if got != format!("hello from {prev}").into_bytes() {
            return Err(format!("ring: {:?}", String::from_utf8_lossy(&got)));
        }
    }
    if c.send(size, &[]).is_ok() || c.broadcast(size, &mut []).is_ok() {
        return Err("a rank outside the group was accepted".into());
    }
    c.barrier().map_err(e)?;
    Ok(())
}

fn main() -> ExitCode {
    let c = match MpiComm::init() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match check(&c) {
        Ok(()) => {
            println!("rank {} of {}: ok", c.rank(), c.size());
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("rank {} of {}: {msg}", c.rank(), c.size());
            ExitCode::FAILURE
        }
    }
}
