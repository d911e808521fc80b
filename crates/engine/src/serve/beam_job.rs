//! Beam-search requests in the serving loop: each runs the one-request beam driver on a
//! thread of its own (at most [`MAX_BEAM_JOBS`] at once), sharing the thread pool, and
//! reports through its sink.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::Engine;
use crate::serve::events::{Event, Rejection, Submission};
use crate::serve::metrics::Metrics;

/// Beam-search requests running at once; more are refused as busy.
pub const MAX_BEAM_JOBS: usize = 2;

/// Beam search on a thread of its own with the one-request driver; refused as busy when
/// [`MAX_BEAM_JOBS`] are running.
pub(crate) fn spawn(engine: &Arc<Engine>, m: &Arc<Metrics>, s: Submission, arrived: Instant) {
    let m = m.clone();
    let reject = |mut s: Submission, why: String| {
        m.requests_rejected.fetch_add(1, Ordering::Relaxed);
        (s.sink)(Event::Rejected(Rejection::Busy(why)));
    };
    if m.beam_jobs.fetch_add(1, Ordering::SeqCst) >= MAX_BEAM_JOBS {
        m.beam_jobs.fetch_sub(1, Ordering::SeqCst);
        reject(s, format!("{MAX_BEAM_JOBS} beam searches are running"));
        return;
    }
    // Shared with the thread, so that the request can still be refused when the thread
    // cannot be started.
    let slot = Arc::new(Mutex::new(Some(s)));
    let (e, m2, slot2) = (engine.clone(), m.clone(), slot.clone());
    let started = std::thread::Builder::new()
        .name("tuili-beam".into())
        .spawn(move || {
            let _guard = BeamGuard(m2.clone());
            let job = slot2.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(s) = job {
                run_beam(&e, s, &m2, arrived);
            }
        });
    if let Err(err) = started {
        m.beam_jobs.fetch_sub(1, Ordering::SeqCst);
        if let Some(s) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            reject(s, format!("cannot start a beam-search thread: {err}"));
        }
    }
}

/// Runs a beam-search request to its end, reporting through its sink.
fn run_beam(e: &Engine, mut s: Submission, m: &Metrics, arrived: Instant) {
    m.requests_accepted.fetch_add(1, Ordering::Relaxed);
    if !(s.sink)(Event::Accepted) {
        return;
    }
    let cancel = s.cancel.clone();
    let mut first = true;
    let res = e.generate_from(s.prompt.clone(), &s.req, &mut |ev| {
        if first && ev.token.is_some() {
            first = false;
            Metrics::observe(&m.ttft, arrived.elapsed().as_secs_f64());
        }
        if cancel.load(Ordering::Relaxed) {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    });
    match res {
        Ok(st) => {
            let mut total = 0;
            for c in &st.completions {
                total += c.tokens.len();
                if !c.text.is_empty() {
                    (s.sink)(Event::Text {
                        index: c.index,
                        text: c.text.clone(),
                    });
                }
                (s.sink)(Event::Done {
                    index: c.index,
                    reason: c.stop,
                    tokens: c.tokens.len(),
                    beam_score: c.beam_score,
                });
            }
            m.generated_tokens
                .fetch_add(total as u64, Ordering::Relaxed);
            m.requests_finished.fetch_add(1, Ordering::Relaxed);
            (s.sink)(Event::Finished {
                prompt_tokens: st.prompt_tokens.len(),
                completion_tokens: total,
            });
        }
        Err(err) => {
            (s.sink)(Event::Failed(err.to_string()));
        }
    }
}

/// Counts a beam job down when its thread ends, however it ends.
struct BeamGuard(Arc<Metrics>);

impl Drop for BeamGuard {
    fn drop(&mut self) {
        self.0.beam_jobs.fetch_sub(1, Ordering::SeqCst);
    }
}
