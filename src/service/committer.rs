//! Group commit: purchases hand their order to one writer task, which takes every order waiting
//! in the queue and makes them durable in one record transaction (one fsync for the batch).
//! A purchase is acknowledged only when its order's outcome comes back.
//!
//! Sale ends go through the same queue, so every order reserved before an end is committed
//! before the end computes the unsold units. So do the ends of holds (payments, cancels,
//! expiries): each batch of them is one record transaction too, so a burst of payments or
//! expiries does not queue one transaction per hold on its sale's counters.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{CommitOutcome, EndReason, OrderRecord, SaleId, SaleRecord, UnixMillis};
use crate::store::{HoldChange, HoldOutcome, RecordStore, StoreError};

/// Most orders in one transaction.
const MAX_BATCH: usize = 4096;

/// Queue capacity: when this many jobs wait, purchases wait to enqueue (backpressure on the
/// hot path instead of unbounded memory).
const QUEUE: usize = 16 * 1024;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Order(OrderRecord, Reply<CommitOutcome>),
    EndHold(HoldChange, Reply<Option<HoldOutcome>>),
    EndSale { sale: SaleId, reason: EndReason, at: UnixMillis, reply: Reply<(SaleRecord, bool)> },
}

/// Handle to the writer task. It runs until [`Committer::drain`]: then it takes no new job,
/// answers every job already queued (durable or refused) and stops.
pub(super) struct Committer {
    jobs: mpsc::Sender<Job>,
    /// Counts the writes that made order events (orders stored, holds ended): the order feed's
    /// followers on this node wait on it.
    written: Arc<watch::Sender<u64>>,
    /// Tells the writer to drain and stop.
    stop: CancellationToken,
    /// The writer task.
    writer: TaskTracker,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the record writer has stopped".into())
}

impl Committer {
    pub(super) fn start(records: Arc<dyn RecordStore>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let (stop, writer) = (CancellationToken::new(), TaskTracker::new());
        let written = Arc::new(watch::Sender::new(0));
        writer.spawn(write_loop(records, queue, stop.clone(), written.clone()));
        writer.close();
        Self { jobs, written, stop, writer }
    }

    /// Changes each time a write made order events.
    pub(super) fn events_written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// Stops taking jobs, answers every job queued, and returns once the writer stopped. Called
    /// at shutdown, after the work that queues jobs (purchases, sale ends) has finished.
    pub(super) async fn drain(&self) {
        self.stop.cancel();
        self.writer.wait().await;
    }

    /// Makes `order` durable together with whatever else is waiting.
    pub(super) async fn commit(&self, order: OrderRecord) -> Result<CommitOutcome, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.jobs.send(Job::Order(order, reply)).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Ends a hold together with whatever else is waiting; `None` when there is no such order.
    pub(super) async fn end_hold(&self, change: HoldChange) -> Result<Option<HoldOutcome>, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.jobs.send(Job::EndHold(change, reply)).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Ends a sale after every order queued before it.
    pub(super) async fn end_sale(
        &self,
        sale: SaleId,
        reason: EndReason,
        at: UnixMillis,
    ) -> Result<(SaleRecord, bool), StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.jobs.send(Job::EndSale { sale, reason, at, reply }).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn write_loop(
    records: Arc<dyn RecordStore>,
    mut queue: mpsc::Receiver<Job>,
    stop: CancellationToken,
    written: Arc<watch::Sender<u64>>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut orders = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    let mut holds = Vec::new();
    let mut hold_replies = Vec::new();
    // Whether this round wrote a batch (order events for the feed's followers).
    let mut wrote = false;
    loop {
        let received = tokio::select! {
            received = queue.recv_many(&mut jobs, MAX_BATCH) => received,
            // Draining: no new job gets in; what is queued is still received below.
            _ = stop.cancelled(), if !queue.is_closed() => {
                queue.close();
                continue;
            }
        };
        if received == 0 {
            return; // closed and empty (or every handle gone)
        }
        for job in jobs.drain(..) {
            match job {
                Job::Order(order, reply) => {
                    orders.push(order);
                    replies.push(reply);
                }
                Job::EndHold(change, reply) => {
                    holds.push(change);
                    hold_replies.push(reply);
                }
                Job::EndSale { sale, reason, at, reply } => {
                    wrote |= flush(&*records, &mut orders, &mut replies).await;
                    wrote |= flush_holds(&*records, &mut holds, &mut hold_replies).await;
                    // The caller may have gone (client cancelled): nothing to tell then.
                    let _ = reply.send(records.end_sale(&sale, reason, at).await);
                }
            }
        }
        wrote |= flush(&*records, &mut orders, &mut replies).await;
        wrote |= flush_holds(&*records, &mut holds, &mut hold_replies).await;
        if std::mem::take(&mut wrote) {
            // The order feed's followers on this node re-read.
            written.send_modify(|writes| *writes += 1);
        }
    }
}

async fn flush_holds(
    records: &dyn RecordStore,
    holds: &mut Vec<HoldChange>,
    replies: &mut Vec<Reply<Option<HoldOutcome>>>,
) -> bool {
    if holds.is_empty() {
        return false;
    }
    metrics::histogram!("flashsale_commit_batch_hold_ends").record(holds.len() as f64);
    let outcome = records.end_holds(holds).await;
    if let Err(error) = &outcome {
        tracing::error!(error = ?error, holds = holds.len(), "a batch of hold ends failed; nothing of it was written");
    }
    let wrote = answer(replies, outcome);
    holds.clear();
    wrote
}

/// Commits the waiting orders and answers each; true when the batch was written.
async fn flush(
    records: &dyn RecordStore,
    orders: &mut Vec<OrderRecord>,
    replies: &mut Vec<Reply<CommitOutcome>>,
) -> bool {
    if orders.is_empty() {
        return false;
    }
    metrics::histogram!("flashsale_commit_batch_orders").record(orders.len() as f64);
    let started = std::time::Instant::now();
    let committed = records.commit_orders(orders).await;
    metrics::histogram!("flashsale_commit_seconds").record(started.elapsed().as_secs_f64());
    if let Err(error) = &committed {
        tracing::error!(error = ?error, orders = orders.len(), "order batch failed; nothing of it was written");
    }
    let wrote = answer(replies, committed);
    orders.clear();
    wrote
}

/// Answers each waiting reply with its outcome, or every one with the batch's error (shared);
/// true when the batch was written.
fn answer<T>(replies: &mut Vec<Reply<T>>, outcome: Result<Vec<T>, StoreError>) -> bool {
    match outcome {
        Ok(outcomes) => {
            for (reply, outcome) in replies.drain(..).zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
            true
        }
        Err(error) => {
            let shared = Arc::new(error);
            for reply in replies.drain(..) {
                let _ = reply.send(Err(StoreError::Unavailable(Box::new(SharedError(shared.clone())))));
            }
            false
        }
    }
}

/// One batch failure reported to every purchase of the batch.
#[derive(Debug)]
struct SharedError(Arc<StoreError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "order batch failed: {}", self.0)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
