//! Waiting in tests without fixed sleeps (behind the `testing` feature):
//! [`eventually`] polls a condition until it holds or a deadline passes and
//! then fails naming what was awaited and the last state seen; [`stays`]
//! checks that a condition keeps holding over a window ("nothing else
//! happens"), the one place such a window is written down. The poll interval
//! starts at 5 ms and doubles up to 100 ms, so a fast condition costs
//! little and a slow one does not spin.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

const FIRST_POLL: Duration = Duration::from_millis(5);
const LONGEST_POLL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `Ok`, and returns that value; panics after
/// `timeout` with `what` and the last `Err` (the state seen instead).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => {
                panic!("{what} did not happen within {timeout:?}; last seen: {state}")
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_POLL);
            }
        }
    }
}

/// Checks `check` repeatedly for `window` and panics with `what` and the
/// state at the first `Err`: for asserting that something does NOT happen.
pub async fn stays<F, Fut>(what: &str, window: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + window;
    loop {
        if let Err(state) = check().await {
            panic!("{what} stopped holding within {window:?}: {state}");
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(LONGEST_POLL.min(deadline - now)).await;
    }
}

/// A condition as `eventually` wants it: `Ok(())` when `holds`, else the
/// `state` description.
pub fn holds(holds: bool, state: impl FnOnce() -> String) -> Result<(), String> {
    if holds { Ok(()) } else { Err(state()) }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_value_once_the_condition_holds() {
        let calls = Arc::new(AtomicU32::new(0));
        let got = eventually("the third call", Duration::from_secs(1), || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(format!("call {n}"))
                }
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "the impossible did not happen within 50ms; last seen: never")]
    async fn eventually_names_what_it_waited_for() {
        eventually::<(), _, _>("the impossible", Duration::from_millis(50), || async {
            Err("never".to_owned())
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "quiet stopped holding")]
    async fn stays_fails_at_the_first_break() {
        let calls = Arc::new(AtomicU32::new(0));
        stays("quiet", Duration::from_secs(1), || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                holds(n < 3, || format!("call {n}"))
            }
        })
        .await;
    }

    #[tokio::test]
    async fn stays_returns_after_the_window() {
        let start = Instant::now();
        stays("quiet", Duration::from_millis(120), || async { Ok(()) }).await;
        assert!(start.elapsed() >= Duration::from_millis(120));
    }
}
