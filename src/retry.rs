//! Trying again: the one backoff every retry loop uses, and the one loop for a read followed by
//! a write conditional on what was read.

use std::future::Future;
use std::time::Duration;

/// Pauses between retries: doubling from `first` up to `cap`, each optionally drawn at random
/// within [half, whole] so that nodes retrying together spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    cap: Duration,
    jitter: bool,
}

impl Backoff {
    /// Doubling from `first` up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self { first, next: first, cap, jitter: false }
    }

    /// Each pause drawn uniformly within [half, whole] of its step.
    pub fn with_jitter(self) -> Self {
        Self { jitter: true, ..self }
    }

    /// The next pause.
    pub fn next_pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.cap);
        if self.jitter {
            let micros = step.as_micros() as u64;
            Duration::from_micros(rand::random_range(micros / 2..=micros))
        } else {
            step
        }
    }

    /// Starts again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Runs `attempt` until it settles (`Some`), at most `times` times: for a read followed by a
/// write conditional on what was read, which another writer may have changed in between (the
/// attempt then answers `None` and reads again). `None` if it never settled.
pub async fn until_settled<T, E, F, Fut>(times: u32, mut attempt: F) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    for _ in 0..times {
        if let Some(answer) = attempt().await? {
            return Ok(Some(answer));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_start_over() {
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(30));
        let pauses: Vec<u64> = (0..5).map(|_| backoff.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Duration::from_millis(5));
    }

    #[test]
    fn jittered_pauses_stay_within_half_and_whole() {
        let mut backoff = Backoff::new(Duration::from_millis(8), Duration::from_millis(64)).with_jitter();
        for step in [8, 16, 32, 64, 64] {
            let pause = backoff.next_pause();
            assert!(pause >= Duration::from_millis(step / 2) && pause <= Duration::from_millis(step), "{pause:?}");
        }
    }

    #[tokio::test]
    async fn an_attempt_runs_until_it_settles_or_the_times_are_up() {
        let mut calls = 0;
        let settled: Result<Option<u32>, ()> = until_settled(5, || {
            calls += 1;
            let n = calls;
            async move { Ok((n == 3).then_some(n)) }
        })
        .await;
        assert_eq!((settled, calls), (Ok(Some(3)), 3));
        let mut calls = 0;
        let never: Result<Option<()>, ()> = until_settled(4, || {
            calls += 1;
            async { Ok(None) }
        })
        .await;
        assert_eq!((never, calls), (Ok(None), 4));
        let failed: Result<Option<()>, &str> = until_settled(4, || async { Err("down") }).await;
        assert_eq!(failed, Err("down"));
    }
}
