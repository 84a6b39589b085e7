//! Time as the service sees it. Everything that depends on the wall clock (sale windows, order
//! times, the scheduler) asks a [`Clock`], so tests can drive time with a [`ManualClock`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::domain::UnixMillis;

/// A source of "now" that can also wait until a given instant.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> UnixMillis;
    /// Completes once `now() >= at`.
    fn sleep_until(&self, at: UnixMillis) -> BoxFuture<'static, ()>;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        UnixMillis(since_epoch.as_millis() as i64)
    }

    fn sleep_until(&self, at: UnixMillis) -> BoxFuture<'static, ()> {
        let wait = (at.0 - self.now().0).max(0) as u64;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            // The OS clock may lag a sleeping timer by a millisecond; never return early.
            while SystemClock.now() < at {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    }
}

/// A clock that only moves when told to: tests use it for sale windows.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
    /// Carries the latest time to every sleeper; a sleeper re-checks on each change.
    ticks: watch::Sender<i64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: UnixMillis) -> Self {
        Self { now: AtomicI64::new(start.0), ticks: watch::Sender::new(start.0) }
    }

    /// Moves the clock forward and wakes every sleeper whose instant has come.
    pub fn advance(&self, by: Duration) {
        let now = self.now.fetch_add(by.as_millis() as i64, Ordering::SeqCst) + by.as_millis() as i64;
        self.ticks.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.now.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, at: UnixMillis) -> BoxFuture<'static, ()> {
        let mut ticks = self.ticks.subscribe();
        Box::pin(async move {
            // An error means the clock was dropped: nothing will ever wake us, so wait forever
            // (the caller's cancellation token ends the task).
            if ticks.wait_for(|now| *now >= at.0).await.is_err() {
                futures::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_their_time_comes() {
        let clock = ManualClock::new(UnixMillis(1_000));
        let mut sleeper = tokio::spawn(clock.sleep_until(UnixMillis(2_000)));
        clock.advance(Duration::from_millis(500));
        tokio::task::yield_now().await;
        assert!(futures::poll!(&mut sleeper).is_pending());
        clock.advance(Duration::from_millis(500));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), UnixMillis(2_000));
    }
}
