//! How many threads to use: logical CPUs and physical cores, and the one default every
//! front end and the library share. The threads themselves are the pool's (`crate::pool`).

/// The default thread count of the library and every command: the physical cores (see
/// [`physical_cores`] for why not the logical CPUs).
pub fn default_threads() -> usize {
    physical_cores()
}

/// The logical CPUs this process may use.
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Physical cores (not SMT siblings): decode is memory-bound and prefill compute-bound, and
/// neither gains from a second thread on the same core. Read from /proc/cpuinfo's distinct
/// (physical id, core id) pairs on Linux; elsewhere the logical count.
pub fn physical_cores() -> usize {
    let logical = logical_cpus();
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut pairs = std::collections::HashSet::new();
    let mut phys = None;
    for line in info.lines() {
        let mut kv = line.splitn(2, ':');
        let (k, v) = (
            kv.next().unwrap_or("").trim(),
            kv.next().unwrap_or("").trim(),
        );
        match k {
            "physical id" => phys = Some(v.to_string()),
            "core id" => {
                pairs.insert((phys.clone(), v.to_string()));
            }
            _ => {}
        }
    }
    if pairs.is_empty() {
        logical
    } else {
        pairs.len().min(logical).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_counts_are_sane() {
        let p = physical_cores();
        assert!(p >= 1 && p <= logical_cpus());
        assert_eq!(default_threads(), p);
    }
}
