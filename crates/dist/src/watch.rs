//! A watchdog on communication: a rank that stops answering (stopped, or cut off by the
//! network) must not leave the others waiting in a collective for ever.
//!
//! Every blocking call of a [`Comm`](crate::Comm) that waits on other ranks runs inside
//! [`waiting`]; a thread started by [`start`] looks at the call in progress, and when one has
//! waited longer than the timeout it tells the hooks registered by [`on_fire`] (the server:
//! `/health` answers 503 and says why), waits the grace period, and ends the group
//! ([`Comm::abort`](crate::Comm::abort)). Waits that are not a peer's failure — a follower
//! waiting for rank 0's next command, for as long as a server is idle or a user thinks —
//! run inside [`idle`], which the watchdog does not time.
//!
//! One call at a time per process: the MPI implementation serializes them, so a single slot
//! holds the call in progress.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::Comm;

/// When the call in progress started (milliseconds since [`epoch`], plus one; 0: none).
static SINCE: AtomicU64 = AtomicU64::new(0);
/// What the call in progress is.
static WHAT: Mutex<&'static str> = Mutex::new("");
/// Set while a thread waits inside [`idle`].
static IDLE: AtomicBool = AtomicBool::new(false);
type Hook = Box<dyn Fn(&str) + Send + Sync>;
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());
/// How long the group lives on once the watchdog fired (milliseconds): the longest any hook
/// asked for.
static GRACE_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// A blocking call in progress, for the watchdog; it ends when dropped.
pub struct Waiting {
    timed: bool,
}

/// Marks a blocking call (`what`: its name, for the message) as in progress.
pub fn waiting(what: &'static str) -> Waiting {
    let timed = !IDLE.load(Ordering::Relaxed);
    if timed {
        *WHAT.lock().unwrap_or_else(|p| p.into_inner()) = what;
        SINCE.store(now_ms(), Ordering::Relaxed);
    }
    Waiting { timed }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.timed {
            SINCE.store(0, Ordering::Relaxed);
        }
    }
}

/// Runs `f` — a wait for the leader's next command, legitimately as long as it takes — with
/// its calls left untimed.
pub fn idle<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IDLE.store(false, Ordering::Relaxed);
        }
    }
    IDLE.store(true, Ordering::Relaxed);
    let _reset = Reset;
    f()
}

/// Registers `hook`, told why when the watchdog fires; the group then lives on for `grace`
/// (a server keeps answering `/health` with the reason) before it ends.
pub fn on_fire(grace: Duration, hook: impl Fn(&str) + Send + Sync + 'static) {
    GRACE_MS.fetch_max(grace.as_millis() as u64, Ordering::Relaxed);
    HOOKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(hook));
}

/// The call in progress, when it has waited longer than `timeout`: what it is and how long.
fn overdue(timeout: Duration) -> Option<(&'static str, Duration)> {
    let since = SINCE.load(Ordering::Relaxed);
    if since == 0 {
        return None;
    }
    let waited = Duration::from_millis(now_ms().saturating_sub(since));
    (waited > timeout).then(|| (*WHAT.lock().unwrap_or_else(|p| p.into_inner()), waited))
}

/// Starts the watchdog of this process's rank of `group`: when a call waits longer than
/// `timeout`, `report` gets the reason (one line), the hooks hear it, and after their grace
/// ([`on_fire`]) the group ends with exit status 1. A zero timeout starts nothing.
pub fn start(group: Arc<dyn Comm>, timeout: Duration, report: impl Fn(&str) + Send + 'static) {
    if timeout.is_zero() {
        return;
    }
    epoch();
    let tick = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let spawned = std::thread::Builder::new()
        .name("tuili-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            if let Some((what, waited)) = overdue(timeout) {
                let why = format!(
                    "rank {} of {}: {what} has waited {:.1} s for the other ranks (the limit is \
                     {} s, --comm-timeout): a rank stopped answering, or the network between \
                     them failed",
                    group.rank(),
                    group.size(),
                    waited.as_secs_f64(),
                    timeout.as_secs_f64()
                );
                report(&why);
                for h in HOOKS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    h(&why);
                }
                std::thread::sleep(Duration::from_millis(GRACE_MS.load(Ordering::Relaxed)));
                group.abort(1);
            }
        });
    if let Err(e) = spawned {
        // Runs without a watchdog; MPI still ends the group when a rank dies.
        eprintln!("tuili: cannot start the communication watchdog: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_wait_is_overdue_and_an_idle_one_is_not() {
        let limit = Duration::from_millis(20);
        {
            let _w = waiting("MPI_Recv");
            std::thread::sleep(Duration::from_millis(40));
            let (what, waited) = overdue(limit).expect("overdue");
            assert_eq!(what, "MPI_Recv");
            assert!(waited >= Duration::from_millis(40));
        }
        assert!(overdue(limit).is_none(), "the call ended");
        idle(|| {
            let _w = waiting("MPI_Bcast");
            std::thread::sleep(Duration::from_millis(40));
            assert!(overdue(limit).is_none(), "idle waits are not timed");
        });
        let _w = waiting("MPI_Bcast");
        assert!(overdue(limit).is_none(), "a fresh call is not overdue");
    }
}
