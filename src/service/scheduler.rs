//! Time-driven transitions: sales start at their start time and end at their end time on their
//! own, and holds expire at their deadline. The task sleeps until the next deadline (on the injected clock) or until a sale's
//! deadlines change, and stops with the shutdown token. It is a task of its own: no request can
//! cancel a transition it started, and shutdown stops it between transitions (the `select!`
//! below), never inside one.

use std::sync::Arc;

use crate::domain::{EndReason, Transition, UnixMillis};

use super::App;

/// Longest wait before the scheduler re-reads the open sales (real time).
const RESCAN: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) async fn run(app: Arc<App>) {
    loop {
        let now = app.clock.now();
        // The record says which sales are open (a Redis Cluster has no key listing sales across
        // slots); a status the hot state has not caught up with yet is the reconciliation's.
        let sales: Vec<_> = match app.records.open_sales().await {
            Ok(sales) => {
                let sales: Vec<_> = sales.into_iter().map(|s| (s.id, s.rules, s.status)).collect();
                // The gauges' list; kept as it was when the record cannot be read.
                *app.open_sales.lock().unwrap_or_else(|e| e.into_inner()) = sales.iter().map(|s| s.0.clone()).collect();
                sales
            }
            Err(error) => {
                tracing::warn!(error = ?error, "scheduler could not list sales");
                Vec::new()
            }
        };
        let mut next = None;
        for (id, rules, status) in sales {
            let result = match rules.due_transition(status, now) {
                Some(Transition::Activate) => app.activate(&id, rules.start).await,
                Some(Transition::TimeUp) => app.end_sale_now(&id, EndReason::TimeUp).await,
                None => {
                    next = earliest(next, rules.next_deadline(status));
                    Ok(())
                }
            };
            if let Err(error) = result {
                tracing::warn!(sale = %id, error = ?error, "scheduled transition failed; retrying in a second");
                next = earliest(next, Some(UnixMillis(now.0 + 1000)));
            }
        }
        // Holds past their deadline expire (of every sale, ended ones too: a hold keeps its own
        // deadline after its sale ends).
        app.next_hold.store(i64::MAX, std::sync::atomic::Ordering::Release);
        match app.expire_due_holds(now).await {
            Ok(deadline) => {
                if let Some(deadline) = deadline {
                    app.next_hold.fetch_min(deadline.0, std::sync::atomic::Ordering::AcqRel);
                }
            }
            Err(error) => {
                tracing::warn!(error = ?error, "expiring holds failed; retrying in a second");
                next = earliest(next, Some(UnixMillis(now.0 + 1000)));
            }
        }
        let next_hold = app.next_hold.load(std::sync::atomic::Ordering::Acquire);
        if next_hold != i64::MAX {
            next = earliest(next, Some(UnixMillis(next_hold)));
        }
        let sleep = match next {
            Some(at) => app.clock.sleep_until(at),
            None => Box::pin(futures::future::pending()),
        };
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = app.schedule_changed.notified() => {}
            _ = sleep => {}
            // Sales created on other nodes (shared hot store) wake nobody here: look again.
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
}

fn earliest(a: Option<UnixMillis>, b: Option<UnixMillis>) -> Option<UnixMillis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
