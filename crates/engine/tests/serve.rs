//! The serving loop with the real stories260K model: many requests at once through the
//! paged cache, each with the output it has alone.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tuili_engine::sched::SchedConfig;
use tuili_engine::serve::{Event, Rejection, ServeConfig, ServeLoop, Submission};
use tuili_engine::KvType;
use tuili_engine::{Engine, EngineConfig, GenerateRequest, StopReason};
use tuili_sample::SamplingParams;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn engine(n_ctx: usize) -> Arc<Engine> {
    let cfg = EngineConfig {
        n_ctx,
        n_batch: 64,
        threads: 2,
    };
    Arc::new(
        Engine::load(
            root().join("../shared/fixtures/models/stories260K/stories260K.gguf"),
            cfg,
        )
        .unwrap(),
    )
}

/// Bytes of an F32 pool of `positions` for stories260K.
fn pool_bytes(e: &Engine, positions: usize) -> usize {
    let c = e.model().config();
    positions * 2 * 4 * c.n_layer * c.kv_dim()
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    accepted: bool,
    rejected: Option<Rejection>,
    /// Per completion: tokens, text, stop.
    tokens: HashMap<usize, Vec<u32>>,
    text: HashMap<usize, String>,
    stop: HashMap<usize, StopReason>,
    /// Beam search: each completion's score.
    scores: HashMap<usize, f64>,
    finished: bool,
}

/// Submits and returns a receiver of the events.
fn submit(s: &ServeLoop, req: GenerateRequest) -> (mpsc::Receiver<Event>, Arc<AtomicBool>) {
    let prompt = s.engine().prepare(&req).unwrap();
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    s.submit(Submission {
        req,
        prompt,
        sink: Box::new(move |ev| tx.send(ev).is_ok()),
        cancel: cancel.clone(),
    });
    (rx, cancel)
}

fn collect(rx: mpsc::Receiver<Event>) -> Outcome {
    let mut o = Outcome::default();
    while let Ok(ev) = rx.recv_timeout(Duration::from_secs(60)) {
        match ev {
            Event::Accepted => o.accepted = true,
            Event::Rejected(r) => {
                o.rejected = Some(r);
                break;
            }
            Event::Token {
                index, token, text, ..
            } => {
                o.tokens.entry(index).or_default().push(token);
                o.text.entry(index).or_default().push_str(&text);
            }
            Event::Text { index, text } => o.text.entry(index).or_default().push_str(&text),
            Event::Done {
                index,
                reason,
                beam_score,
                ..
            } => {
                o.stop.insert(index, reason);
                if let Some(b) = beam_score {
                    o.scores.insert(index, b);
                }
            }
            Event::Finished { .. } => {
                o.finished = true;
                break;
            }
            Event::Failed(e) => panic!("failed: {e}"),
        }
    }
    o
}

/// Waits up to 10 s for a condition the serving loop will make true.
fn eventually(cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not reached in 10 s");
}

fn alone(e: &Engine, req: &GenerateRequest) -> Vec<(Vec<u32>, String, StopReason)> {
    let st = e.generate(req, &mut |_| ControlFlow::Continue(())).unwrap();
    st.completions
        .into_iter()
        .map(|c| (c.tokens, c.text, c.stop))
        .collect()
}

/// A loop over stories260K with a 96-token context and an F32 pool of only two contexts, 48
/// tokens per step: sequences are preempted and recomputed.
fn short_pool() -> (Arc<Engine>, ServeLoop) {
    let e = engine(96);
    let server = ServeLoop::start(
        e.clone(),
        ServeConfig {
            kv_memory: pool_bytes(&e, 2 * 96),
            block_size: 16,
            kv_type: KvType::F32,
            sched: SchedConfig {
                max_batch_tokens: 48,
                max_seqs: 16,
                max_queue: 64,
            },
        },
    )
    .unwrap();
    (e, server)
}

const PROMPTS: &[&str] = &[
    "Once upon a time",
    "Lily and Ben went to the park",
    "The little dog",
    "One day, a big bird",
    "Tom had a red ball. He",
    "Sue liked to sing",
];

/// Twenty requests at once, greedy and seeded sampling (some with n = 2 and stop strings),
/// through a pool that holds only two contexts — so sequences are preempted and recomputed
/// — give exactly what each gives run alone by the one-request engine; every block is free
/// at the end.
#[test]
fn concurrent_requests_equal_each_alone() {
    let (e, server) = short_pool();
    let mut reqs = Vec::new();
    for i in 0..20 {
        let p = PROMPTS[i % PROMPTS.len()];
        let mut r = if i % 3 == 0 {
            let s = SamplingParams {
                temperature: 0.9,
                seed: 1000 + i as u64,
                ..Default::default()
            };
            let mut r = GenerateRequest::new(p, 40, s);
            r.n = 1 + i % 2;
            r
        } else {
            GenerateRequest::new(p, 30 + i, SamplingParams::greedy())
        };
        if i % 4 == 1 {
            r.stop = vec![".".into()];
        }
        if i % 5 == 2 {
            r.logprobs = Some(2);
        }
        reqs.push(r);
    }
    let rxs: Vec<_> = reqs.iter().map(|r| submit(&server, r.clone()).0).collect();
    let outs: Vec<Outcome> = rxs.into_iter().map(collect).collect();
    for (r, o) in reqs.iter().zip(&outs) {
        assert!(o.accepted && o.finished, "{o:?}");
        let want = alone(&e, r);
        assert_eq!(want.len(), r.n);
        for (i, (toks, text, stop)) in want.into_iter().enumerate() {
            assert_eq!(o.tokens.get(&i).cloned().unwrap_or_default(), toks, "{r:?}");
            assert_eq!(o.text.get(&i).cloned().unwrap_or_default(), text);
            assert_eq!(o.stop[&i], stop);
        }
    }
    let m = server.metrics();
    // The loop publishes its state after each step.
    eventually(|| m.kv_blocks_used.load(Ordering::Relaxed) == 0);
    assert_eq!(m.running.load(Ordering::Relaxed), 0);
    assert!(
        m.preemptions.load(Ordering::Relaxed) > 0,
        "the pool was meant to be short"
    );
    assert!(m.prefix_hits.load(Ordering::Relaxed) > 0, "prompts repeat");
    assert_eq!(m.requests_finished.load(Ordering::Relaxed), 20);
    server.shutdown();
}

/// A cancelled request stops and frees its blocks; the queue bound refuses the excess as
/// busy.
#[test]
fn cancel_and_refusals() {
    let e = engine(64);
    let server = ServeLoop::start(
        e.clone(),
        ServeConfig {
            kv_memory: pool_bytes(&e, 64),
            block_size: 16,
            kv_type: KvType::F32,
            sched: SchedConfig {
                max_batch_tokens: 16,
                max_seqs: 1,
                max_queue: 1,
            },
        },
    )
    .unwrap();
    let mut r = GenerateRequest::new("Once upon a time", 10_000, SamplingParams::greedy());
    r.ignore_eos = true;
    // The first request's sink holds the loop at its first token until the test has queued
    // the others and cancelled: the order of events is then fixed.
    let (tx, rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let cancel = Arc::new(AtomicBool::new(false));
    let mut held = false;
    server.submit(Submission {
        req: r.clone(),
        prompt: server.engine().prepare(&r).unwrap(),
        sink: Box::new(move |ev| {
            let token = matches!(ev, Event::Token { .. });
            let _ = tx.send(ev);
            if token && !held {
                held = true;
                let _ = gate_rx.recv();
            }
            true
        }),
        cancel: cancel.clone(),
    });
    assert!(matches!(rx.recv().unwrap(), Event::Accepted));
    assert!(matches!(rx.recv().unwrap(), Event::Token { .. }));
    // While it runs (max_seqs 1), one more can wait and the next is refused.
    let (rx2, c2) = submit(&server, r.clone());
    let (rx3, _) = submit(&server, r.clone());
    cancel.store(true, Ordering::Relaxed);
    c2.store(true, Ordering::Relaxed);
    gate_tx.send(()).unwrap();
    assert!(matches!(rx2.recv().unwrap(), Event::Accepted));
    match rx3.recv().unwrap() {
        Event::Rejected(Rejection::Busy(m)) => assert!(m.contains("queue"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Both channels close without Finished: the requests were dropped.
    for rx in [rx, rx2] {
        while let Ok(ev) = rx.recv_timeout(Duration::from_secs(10)) {
            assert!(!matches!(ev, Event::Finished { .. }), "{ev:?}");
        }
    }
    let m = server.metrics();
    eventually(|| m.requests_cancelled.load(Ordering::Relaxed) == 2);
    eventually(|| m.kv_blocks_used.load(Ordering::Relaxed) == 0);
    assert_eq!(m.requests_finished.load(Ordering::Relaxed), 0);
    server.shutdown();
}

/// Beam searches run in the serving loop's paged pool, beside sampled requests, through a
/// pool so short that sequences are preempted (beams waiting for their search's other beams
/// among them): each returns the beams the one-request engine finds (same text and stop;
/// scores to rounding), the beams' blocks are counted while they run and all free at the end.
#[test]
fn beam_search_in_the_paged_pool() {
    use tuili_engine::{BeamParams, EarlyStopping};
    let (e, server) = short_pool();
    let mut reqs = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        let mut r = GenerateRequest::new(*p, 24 + 4 * i, SamplingParams::greedy());
        if i % 2 == 0 {
            r.beam = Some(BeamParams {
                num_beams: 2 + i % 3,
                length_penalty: [1.0, 0.0, -0.5][i % 3],
                early_stopping: [
                    EarlyStopping::False,
                    EarlyStopping::True,
                    EarlyStopping::Never,
                ][i % 3],
            });
            r.n = 2;
            if i == 4 {
                r.stop = vec![".".into()];
            }
        }
        reqs.push(r);
    }
    let rxs: Vec<_> = reqs.iter().map(|r| submit(&server, r.clone()).0).collect();
    let m = server.metrics();
    let mut saw_beam_blocks = false;
    let outs: Vec<Outcome> = rxs
        .into_iter()
        .map(|rx| {
            saw_beam_blocks |= m.beam_jobs.load(Ordering::Relaxed) > 0
                && m.kv_blocks_used.load(Ordering::Relaxed) > 0;
            collect(rx)
        })
        .collect();
    for (r, o) in reqs.iter().zip(&outs) {
        assert!(o.accepted && o.finished, "{o:?}");
        let st = e.generate(r, &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(st.completions.len(), r.n);
        for c in &st.completions {
            let i = c.index;
            assert_eq!(o.text.get(&i).cloned().unwrap_or_default(), c.text, "{r:?}");
            assert_eq!(o.stop[&i], c.stop, "{r:?}");
            if let Some(want) = c.beam_score {
                let got = o.scores[&i];
                assert!(
                    (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
        }
    }
    assert!(
        saw_beam_blocks,
        "beam searches hold blocks of the pool while they run"
    );
    eventually(|| m.kv_blocks_used.load(Ordering::Relaxed) == 0);
    eventually(|| m.beam_jobs.load(Ordering::Relaxed) == 0);
    assert!(
        m.preemptions.load(Ordering::Relaxed) > 0,
        "the pool was meant to be short"
    );
    assert_eq!(
        m.requests_finished.load(Ordering::Relaxed),
        reqs.len() as u64
    );
    server.shutdown();
}
