//! A consumer of the order feed during a rush (`rehearse --order-feed`): follows WatchOrders of
//! the sale from its first event with the admin token, as a fulfillment system would, and
//! measures each CREATED event's delivery lag: from the order's creation (stamped by the server
//! at its reservation; both clocks are this machine's when loadgen and the server share it), and
//! from the buyer's acknowledgement (both instants taken here), which leaves out the group
//! commit the buyer waits for too.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use flashsale_client::pb;
use tokio::sync::watch;

use crate::rush::{AttemptRecord, Outcome};
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
    /// When each CREATED event arrived.
    pub received: Vec<std::time::Instant>,
    /// Why the stream stopped early, if it did.
    pub error: Option<String>,
}

/// A running consumer, on a thread and runtime of its own (as a fulfillment system is a process
/// of its own: the rush's hundreds of workers must not delay its reads, or the lag measured
/// would be loadgen's); stopped once it has what the rush acknowledged.
pub struct OrderFeedConsumer {
    thread: std::thread::JoinHandle<FeedConsumed>,
    enough: watch::Sender<Option<usize>>,
}

fn unix_ms_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl OrderFeedConsumer {
    /// Opens WatchOrders of `sale_id` from its first event on a connection of its own (the
    /// stream is open when this returns).
    pub async fn start(session: &Session, sale_id: &str) -> anyhow::Result<Self> {
        let request = pb::WatchOrdersRequest { after_sequence: 0, sale_id: sale_id.into() };
        let (addr, admin) = (session.addr.clone(), session.admin.clone());
        let (enough, wanted) = watch::channel(None::<usize>);
        let (opened, open) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let thread = std::thread::Builder::new().name("order-feed".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = opened.send(Err(e.into()));
                    return FeedConsumed::default();
                }
            };
            runtime.block_on(async move {
                let stream = async {
                    let channel = tonic::transport::Endpoint::from_shared(addr)?.connect().await?;
                    let mut client = pb::orders_service_client::OrdersServiceClient::new(channel);
                    anyhow::Ok(client.watch_orders(authed(request, &admin)).await.context("WatchOrders")?.into_inner())
                };
                match stream.await {
                    Ok(stream) => {
                        let _ = opened.send(Ok(()));
                        consume(stream, wanted).await
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        FeedConsumed::default()
                    }
                }
            })
        })?;
        open.await.context("the feed consumer's thread stopped")??;
        Ok(Self { thread, enough })
    }

    /// Waits (at most 30 s) until it received `acknowledged` orders, then stops it.
    pub async fn finish(self, acknowledged: usize) -> anyhow::Result<FeedConsumed> {
        let _ = self.enough.send(Some(acknowledged));
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(Duration::from_secs(30), joined).await {
            Ok(Ok(Ok(consumed))) => Ok(consumed),
            Ok(_) => anyhow::bail!("the feed consumer panicked"),
            Err(_) => Ok(FeedConsumed {
                error: Some("fewer events than orders within 30 s".into()),
                ..FeedConsumed::default()
            }),
        }
    }
}

/// Reads the stream until `wanted` CREATED events arrived (or it ends).
async fn consume(
    mut stream: tonic::Streaming<pb::OrderEvent>,
    mut wanted: watch::Receiver<Option<usize>>,
) -> FeedConsumed {
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
                        consumed.received.push(std::time::Instant::now());
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

/// Prints the feed's delivery lags and adds them to `figures` (`order_feed_lag_*` from the
/// order's creation, `order_feed_after_ack_*` from its acknowledgement; an event that arrived
/// before the buyer's answer counts as 0). `epoch` is the instant the rush's times count from.
pub fn report(consumed: &FeedConsumed, records: &[AttemptRecord], epoch: std::time::Instant, figures: &mut Figures) {
    let mut histogram = stats::histogram();
    for lag in &consumed.lag {
        stats::record(&mut histogram, *lag);
    }
    let acked: HashMap<&str, std::time::Instant> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Acked { order_id, .. } => Some((order_id.as_str(), epoch + r.end)),
            _ => None,
        })
        .collect();
    let mut after_ack = stats::histogram();
    for (id, received) in consumed.created.iter().zip(&consumed.received) {
        if let Some(ack) = acked.get(id.as_str()) {
            stats::record(&mut after_ack, received.saturating_duration_since(*ack));
        }
    }
    let (lag, after_ack) = (Percentiles::of(&histogram), Percentiles::of(&after_ack));
    println!("order feed: {} events, delivery lag from the order's creation {}", consumed.created.len(), lag.line());
    println!("order feed: delivery lag after the buyer's acknowledgement {}", after_ack.line());
    lag.add_to(figures, "order_feed_lag");
    after_ack.add_to(figures, "order_feed_after_ack");
    figures.add("order_feed_events", consumed.created.len());
}
