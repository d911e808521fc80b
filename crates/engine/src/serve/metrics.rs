//! Counters, gauges and latency histograms of the serving loop (read by `/metrics`).

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Mutex;

/// A latency histogram (seconds) with Prometheus' cumulative buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// counts[i]: observations ≤ bounds[i] and > bounds[i − 1]; the last entry is +Inf.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const ITL_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters and gauges of the serving loop (read by `/metrics`).
#[derive(Debug)]
pub struct Metrics {
    pub requests_accepted: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub requests_finished: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
    pub batch_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub prefix_queries: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub beam_jobs: AtomicUsize,
    pub ttft: Mutex<Histogram>,
    pub itl: Mutex<Histogram>,
    /// Seconds each pipeline stage has spent computing steps (one entry without a
    /// pipeline): against the time served, the pipeline's bubble.
    pub stage_busy: Mutex<Vec<f64>>,
    /// Why the group of ranks of a distributed run can no longer serve (`/health` says
    /// so, and answers 503).
    pub broken: Mutex<Option<String>>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            requests_accepted: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            requests_cancelled: AtomicU64::new(0),
            requests_finished: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            batch_tokens: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            prefix_queries: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            kv_blocks_used: AtomicUsize::new(0),
            kv_blocks_total: AtomicUsize::new(0),
            beam_jobs: AtomicUsize::new(0),
            ttft: Mutex::new(Histogram::new(TTFT_BOUNDS)),
            itl: Mutex::new(Histogram::new(ITL_BOUNDS)),
            stage_busy: Mutex::new(Vec::new()),
            broken: Mutex::new(None),
        }
    }

    pub(crate) fn set_stage_busy(&self, secs: &[f64]) {
        let mut b = self.stage_busy.lock().unwrap_or_else(|p| p.into_inner());
        b.clear();
        b.extend_from_slice(secs);
    }

    /// Records why the group of ranks can no longer serve.
    pub fn set_broken(&self, why: &str) {
        *self.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
    }

    /// Why the group is broken, if it is.
    pub fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn observe(h: &Mutex<Histogram>, v: f64) {
        // A poisoned lock only means a panic elsewhere mid-update: the counts are still
        // usable.
        h.lock().unwrap_or_else(|p| p.into_inner()).observe(v);
    }
}
