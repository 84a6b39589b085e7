//! A consumer of the order feed during a rush (`rehearse --order-feed`): follows WatchOrders of
//! the sale from its first event with the admin token, as a fulfillment system would, and
//! measures each CREATED event's delivery lag (the order's creation time, stamped by the server,
//! to its receipt here; both clocks are this machine's when loadgen and the server share it).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use flashsale_client::pb;
use tokio::sync::watch;

use crate::stats::{self, Figures, Percentiles};
use crate::target::{authed, Session};
use crate::verdict::Check;

/// What the consumer received.
#[derive(Debug, Default)]
pub struct FeedConsumed {
    /// Order ids of the CREATED events, in arrival order.
    pub created: Vec<String>,
    /// Other events received (a rush without holds has none).
    pub others: usize,
    /// Creation → receipt, per CREATED event.
    pub lag: Vec<Duration>,
    /// Why the stream stopped early, if it did.
    pub error: Option<String>,
}

/// A running consumer: stopped once it has what the rush acknowledged.
pub struct OrderFeedConsumer {
    task: tokio::task::JoinHandle<FeedConsumed>,
    enough: watch::Sender<Option<usize>>,
}

fn unix_ms_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl OrderFeedConsumer {
    /// Opens WatchOrders of `sale_id` from its first event (the stream is open when this returns).
    pub async fn start(session: &Session, sale_id: &str) -> anyhow::Result<Self> {
        let request = pb::WatchOrdersRequest { after_sequence: 0, sale_id: sale_id.into() };
        let mut client = pb::orders_service_client::OrdersServiceClient::new(session.pool.fresh_channel().await?);
        let mut stream =
            client.watch_orders(authed(request, &session.admin)).await.context("WatchOrders")?.into_inner();
        let (enough, mut wanted) = watch::channel(None::<usize>);
        let task = tokio::spawn(async move {
            let mut consumed = FeedConsumed::default();
            loop {
                if wanted.borrow().is_some_and(|n| consumed.created.len() >= n) {
                    return consumed;
                }
                tokio::select! {
                    message = stream.message() => match message {
                        Ok(Some(event)) => {
                            let received = unix_ms_now();
                            if event.kind() == pb::OrderEventKind::Created {
                                let at = event.at.unwrap_or_default();
                                let at_ms = at.seconds * 1000 + i64::from(at.nanos / 1_000_000);
                                consumed.lag.push(Duration::from_millis(received.saturating_sub(at_ms).max(0) as u64));
                                consumed.created.push(event.order.map(|o| o.id).unwrap_or_default());
                            } else {
                                consumed.others += 1;
                            }
                        }
                        Ok(None) => {
                            consumed.error = Some("the stream ended".into());
                            return consumed;
                        }
                        Err(status) => {
                            consumed.error = Some(status.to_string());
                            return consumed;
                        }
                    },
                    changed = wanted.changed() => if changed.is_err() { return consumed },
                }
            }
        });
        Ok(Self { task, enough })
    }

    /// Waits (at most 30 s) until it received `acknowledged` orders, then stops it.
    pub async fn finish(self, acknowledged: usize) -> anyhow::Result<FeedConsumed> {
        let _ = self.enough.send(Some(acknowledged));
        let mut task = self.task;
        match tokio::time::timeout(Duration::from_secs(30), &mut task).await {
            Ok(consumed) => consumed.context("the feed consumer panicked"),
            Err(_) => {
                task.abort();
                Ok(FeedConsumed {
                    error: Some("fewer events than orders within 30 s".into()),
                    ..FeedConsumed::default()
                })
            }
        }
    }
}

/// The verdict's check: every acknowledged order came through the feed once, nothing else.
pub fn check(consumed: &FeedConsumed, acknowledged: &HashSet<String>) -> Check {
    let unique: HashSet<&String> = consumed.created.iter().collect();
    let duplicates = consumed.created.len() - unique.len();
    let missing = acknowledged.iter().filter(|id| !unique.contains(id)).count();
    let unknown = unique.iter().filter(|id| !acknowledged.contains(**id)).count();
    Check {
        name: "the order feed delivered every acknowledged order once",
        passed: duplicates == 0 && missing == 0 && unknown == 0 && consumed.error.is_none(),
        detail: format!(
            "{} events: {missing} missing, {duplicates} twice, {unknown} not acknowledged{}",
            consumed.created.len(),
            consumed.error.as_ref().map(|e| format!("; {e}")).unwrap_or_default()
        ),
    }
}

/// Prints the feed's delivery lag and adds it to `figures` (`order_feed_lag_*`).
pub fn report(consumed: &FeedConsumed, figures: &mut Figures) {
    let mut histogram = stats::histogram();
    for lag in &consumed.lag {
        stats::record(&mut histogram, *lag);
    }
    let lag = Percentiles::of(&histogram);
    println!("order feed: {} events, delivery lag (order made → received) {}", consumed.created.len(), lag.line());
    lag.add_to(figures, "order_feed_lag");
    figures.add("order_feed_events", consumed.created.len());
}
