//! `/metrics` in Prometheus' text format (version 0.0.4), every name prefixed `tuili_`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use tuili_engine::serve::{Histogram, Metrics};

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP tuili_{name} {help}");
    let _ = writeln!(out, "# TYPE tuili_{name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Mutex<Histogram>) {
    let h = h.lock().unwrap_or_else(|p| p.into_inner()).clone();
    head(out, name, "histogram", help);
    let mut cum = 0;
    for (b, c) in h.bounds.iter().zip(&h.counts) {
        cum += c;
        let _ = writeln!(out, "tuili_{name}_bucket{{le=\"{b}\"}} {cum}");
    }
    let _ = writeln!(out, "tuili_{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "tuili_{name}_sum {}", h.sum);
    let _ = writeln!(out, "tuili_{name}_count {}", h.count);
}

/// The text of `/metrics`.
pub fn render(m: &Metrics, http_errors: &BTreeMap<u16, u64>) -> String {
    let mut o = String::new();
    let r = Ordering::Relaxed;
    head(
        &mut o,
        "requests_total",
        "counter",
        "Generation requests by outcome.",
    );
    for (k, v) in [
        ("accepted", &m.requests_accepted),
        ("rejected", &m.requests_rejected),
        ("cancelled", &m.requests_cancelled),
        ("finished", &m.requests_finished),
    ] {
        let _ = writeln!(o, "tuili_requests_total{{outcome=\"{k}\"}} {}", v.load(r));
    }
    head(
        &mut o,
        "http_errors_total",
        "counter",
        "HTTP error responses by status.",
    );
    for (s, c) in http_errors {
        let _ = writeln!(o, "tuili_http_errors_total{{status=\"{s}\"}} {c}");
    }
    for (name, kind, help, v) in [
        (
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of accepted requests.",
            m.prompt_tokens.load(r) as f64,
        ),
        (
            "generation_tokens_total",
            "counter",
            "Tokens generated.",
            m.generated_tokens.load(r) as f64,
        ),
        (
            "steps_total",
            "counter",
            "Forward passes (batches) run.",
            m.steps.load(r) as f64,
        ),
        (
            "batch_tokens_total",
            "counter",
            "Tokens run through the model, prompts and decodes.",
            m.batch_tokens.load(r) as f64,
        ),
        (
            "preemptions_total",
            "counter",
            "Sequences preempted (blocks freed, recomputed later).",
            m.preemptions.load(r) as f64,
        ),
        (
            "prefix_cache_queries_total",
            "counter",
            "KV blocks looked up in the prefix cache.",
            m.prefix_queries.load(r) as f64,
        ),
        (
            "prefix_cache_hits_total",
            "counter",
            "KV blocks found in the prefix cache.",
            m.prefix_hits.load(r) as f64,
        ),
        (
            "queue_depth",
            "gauge",
            "Sequences waiting to be scheduled.",
            m.waiting.load(r) as f64,
        ),
        (
            "running_sequences",
            "gauge",
            "Sequences running.",
            m.running.load(r) as f64,
        ),
        (
            "kv_blocks_used",
            "gauge",
            "KV cache blocks held by sequences.",
            m.kv_blocks_used.load(r) as f64,
        ),
        (
            "kv_blocks_total",
            "gauge",
            "KV cache blocks in the pool.",
            m.kv_blocks_total.load(r) as f64,
        ),
        (
            "beam_jobs",
            "gauge",
            "Beam searches running.",
            m.beam_jobs.load(r) as f64,
        ),
    ] {
        head(&mut o, name, kind, help);
        let _ = writeln!(o, "tuili_{name} {v}");
    }
    head(
        &mut o,
        "stage_busy_seconds",
        "counter",
        "Seconds each pipeline stage has spent computing steps (against the time served: the pipeline's bubble).",
    );
    let busy = m
        .stage_busy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (i, b) in busy.iter().enumerate() {
        let _ = writeln!(o, "tuili_stage_busy_seconds{{stage=\"{i}\"}} {b}");
    }
    histogram(
        &mut o,
        "time_to_first_token_seconds",
        "From arrival to the first generated token.",
        &m.ttft,
    );
    histogram(
        &mut o,
        "inter_token_latency_seconds",
        "Between consecutive tokens of a completion.",
        &m.itl,
    );
    o
}
