//! Live feeds: one upstream per sale, fanned out to every watcher with latest-value semantics.
//!
//! A purchase only marks its sale dirty ([`FeedHub::touch`]: one `Notify`, no allocation). The
//! sale's upstream task wakes, reads the sale's [`SaleView`] once and publishes it on a
//! `watch` channel, then waits one feed interval before it may publish again, so every watcher
//! gets the newest state at a bounded rate. A `watch` keeps only the latest value: a watcher
//! that never reads holds one `Arc` and never slows the upstream or the purchases.
//!
//! What is published is a [`Published`] state: the view, stamped with the time it was read,
//! plus room for its encoded form. Thousands of streams send the same state, so the first one
//! that sends it encodes it and the others send the same bytes ([`Published::encoded`]). The
//! transport decides what the encoding is (`crate::grpc`); this module knows nothing of
//! protobuf, and nothing is encoded for a state that no stream sends.
//!
//! A feed closes at shutdown: the hub drops every sender, so every stream following a feed sees
//! the channel closed and ends. That costs one wake-up per sale; a shutdown future in each
//! stream would cost every message sent two locks shared by all the streams.
//!
//! A feed never freezes while its sale exists. It reads through a [`SaleSource`] (the
//! application), which rebuilds a sale's hot state from the record when the hot store lost it
//! (a Redis restarted empty) instead of answering "no such sale"; a read that fails is tried
//! again; and besides the changes it is told of, each feed reads its sale every
//! [`REFRESH`], so a change nobody reported (a notification lost while a node's subscription
//! was down) still reaches its watchers. A feed ends when its sale ends (after publishing the
//! ENDED state, and its entry leaves the hub), and when the record no longer has the sale
//! (its watchers are told NOT_FOUND).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::domain::{SaleId, SaleStatus, SaleView, UnixMillis};
use crate::service::ServiceError;

/// Longest a feed goes without reading its sale, changes or not.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Pause after a failed read before the next.
const RETRY_READ: Duration = Duration::from_millis(200);

/// Where feeds read a sale's live state.
#[async_trait::async_trait]
pub trait SaleSource: Send + Sync + 'static {
    /// The sale's live state; `Ok(None)` when the sale does not exist (gone for good).
    async fn current(&self, sale: &SaleId) -> Result<Option<SaleView>, ServiceError>;
}

/// One published state of a sale: what its watchers are sent until the next publish.
#[derive(Debug)]
pub struct Published {
    /// The sale's state.
    pub view: SaleView,
    /// When the state was read: the server time the watchers are shown with it.
    pub at: UnixMillis,
    /// The state as the watchers' streams send it, made once (see [`Published::encoded`]).
    encoded: OnceLock<Bytes>,
    /// The sale no longer exists (the record lost it): the streams end with NOT_FOUND.
    pub gone: bool,
}

impl Published {
    /// A state read at `at`, not encoded yet.
    pub fn new(view: SaleView, at: UnixMillis) -> Self {
        Self { view, at, encoded: OnceLock::new(), gone: false }
    }

    /// Whether the feed ends with this state.
    pub fn is_last(&self) -> bool {
        self.gone || self.view.status == SaleStatus::Ended
    }

    /// The state's encoded form: `encode(view, at)` the first time (concurrent callers wait for
    /// it), the same bytes afterwards. It holds one encoding only: every caller must pass the
    /// same `encode` (the WatchSale stream's).
    pub fn encoded(&self, encode: impl FnOnce(&SaleView, UnixMillis) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(&self.view, self.at)).clone()
    }
}

/// A sale's feed as a watcher follows it: the newest published state. `changed()` fails once
/// the feed is closed (at shutdown).
pub type Feed = watch::Receiver<Arc<Published>>;

type Upstreams = RwLock<HashMap<SaleId, Arc<Upstream>>>;

/// Publishes each sale's live state to its watchers.
pub struct FeedHub {
    /// std RwLock: every purchase takes the read side to find its sale's upstream (no
    /// contention between purchases); the write side only inserts or removes an upstream, and
    /// empties the map at shutdown. Never held across an `.await`.
    upstreams: Arc<Upstreams>,
    /// The application (weak: it owns the hub).
    source: Weak<dyn SaleSource>,
    /// Stamps each published state.
    clock: Arc<dyn Clock>,
    interval: Duration,
    shutdown: CancellationToken,
    /// The publish tasks (the application's tracker: shutdown waits for them).
    tasks: TaskTracker,
}

/// A sale's feed. Held by the hub and by the sale's publish task: once both are gone (at
/// shutdown), the sender is dropped and the feed is closed.
struct Upstream {
    /// Holds at most one permit: any number of changes during an interval wake the task once.
    dirty: Notify,
    latest: watch::Sender<Arc<Published>>,
}

impl FeedHub {
    /// A hub reading sale state from `source`, publishing at most once per `interval` per sale,
    /// each state stamped with `clock`'s time, and closing every feed at `shutdown`. Must be
    /// called inside the runtime.
    pub fn new(
        source: Weak<dyn SaleSource>,
        clock: Arc<dyn Clock>,
        interval: Duration,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let upstreams = Arc::<Upstreams>::default();
        tasks.spawn(close_at_shutdown(Arc::downgrade(&upstreams), shutdown.clone()));
        Self { upstreams, source, clock, interval, shutdown, tasks }
    }

    /// Marks every feed changed (changes may have been missed).
    pub fn touch_all(&self) {
        for upstream in self.upstreams.read().unwrap_or_else(|e| e.into_inner()).values() {
            upstream.dirty.notify_one();
        }
    }

    /// The sales with a feed on this node.
    pub fn sales(&self) -> Vec<SaleId> {
        self.upstreams.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Marks a sale changed; its watchers see the change within one interval.
    pub fn touch(&self, sale: &SaleId) {
        if let Some(upstream) = self.upstreams.read().unwrap_or_else(|e| e.into_inner()).get(sale) {
            upstream.dirty.notify_one();
        }
    }

    /// Subscribes to a sale whose current view is `current` (the caller loaded it just now).
    /// The receiver's current value is the newest published state.
    pub fn subscribe(&self, current: SaleView) -> Feed {
        let now = self.clock.now();
        let mut upstreams = self.upstreams.write().unwrap_or_else(|e| e.into_inner());
        if self.shutdown.is_cancelled() {
            // Shutting down: the current state, on a feed closed already.
            return watch::channel(Arc::new(Published::new(current, now))).1;
        }
        if let Some(upstream) = upstreams.get(&current.sale_id) {
            // `current` was read just now; the last published value may be up to one interval
            // old. A new watcher must start from the newest state (e.g. ENDED right after an
            // end), so publish `current` first when it is newer.
            publish_if_newer(&upstream.latest, current, now);
            return upstream.latest.subscribe();
        }
        let sale = current.sale_id.clone();
        let (latest, receiver) = watch::channel(Arc::new(Published::new(current, now)));
        let upstream = Arc::new(Upstream { dirty: Notify::new(), latest });
        upstreams.insert(sale.clone(), upstream.clone());
        let feed = PublishTask { upstream, sale, hub: Arc::downgrade(&self.upstreams) };
        let task = feed.publish(self.source.clone(), self.clock.clone(), self.interval, self.shutdown.clone());
        self.tasks.spawn(task);
        receiver
    }
}

/// What a sale's publish task holds.
struct PublishTask {
    upstream: Arc<Upstream>,
    sale: SaleId,
    hub: Weak<Upstreams>,
}

impl PublishTask {
    /// Reads the sale whenever it is marked changed (or every [`REFRESH`]) and publishes what
    /// is newer, at most once per `interval`, until the sale ends, the record loses it, or
    /// shutdown.
    async fn publish(
        self,
        source: Weak<dyn SaleSource>,
        clock: Arc<dyn Clock>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        // A state read before the upstream existed may be stale: publish once right away.
        self.upstream.dirty.notify_one();
        while !self.upstream.latest.borrow().is_last() {
            // Every wait ends at shutdown: the task's hold on the feed must go for it to close.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.upstream.dirty.notified() => {}
                _ = tokio::time::sleep(REFRESH) => {}
            }
            let Some(source) = source.upgrade() else { return };
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = source.current(&self.sale) => read,
            };
            drop(source);
            let pause = match read {
                Ok(Some(view)) => {
                    publish_if_newer(&self.upstream.latest, view, clock.now());
                    interval
                }
                Ok(None) => {
                    self.upstream.latest.send_modify(|published| {
                        let mut last = Published::new(published.view.clone(), clock.now());
                        last.gone = true;
                        *published = Arc::new(last);
                    });
                    interval
                }
                Err(error) => {
                    tracing::warn!(error = %error, sale = %self.sale, "feed could not read the sale; retrying");
                    // Read again after the pause, whether or not anything else changes.
                    self.upstream.dirty.notify_one();
                    RETRY_READ.max(interval)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // The sale ended (or is gone): its last state is published; the entry leaves the hub
        // (a watcher arriving later starts a feed of its own from the final state).
        if let Some(hub) = self.hub.upgrade() {
            let mut upstreams = hub.write().unwrap_or_else(|e| e.into_inner());
            if upstreams.get(&self.sale).is_some_and(|entry| Arc::ptr_eq(entry, &self.upstream)) {
                upstreams.remove(&self.sale);
            }
        }
    }
}

/// Waits for shutdown, then drops the hub's hold on every feed (their publish tasks stop at
/// shutdown too), which closes them.
async fn close_at_shutdown(upstreams: Weak<Upstreams>, shutdown: CancellationToken) {
    shutdown.cancelled().await;
    if let Some(upstreams) = upstreams.upgrade() {
        upstreams.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Replaces the published state with `view`, read at `at`, when it is newer (higher version,
/// or the sale ended).
fn publish_if_newer(latest: &watch::Sender<Arc<Published>>, view: SaleView, at: UnixMillis) {
    latest.send_if_modified(|published| {
        if published.is_last() {
            return false; // nothing follows the last state
        }
        // The waiting room's counters change without a new version of the sale.
        let newer = view.version > published.view.version
            || (view.version == published.view.version && view.line != published.view.line)
            || (view.status == SaleStatus::Ended && published.view.status != SaleStatus::Ended);
        if newer {
            *published = Arc::new(Published::new(view, at));
        }
        newer
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{Money, ProductId, SaleRules};

    /// A source whose sale is whatever the test says.
    struct Scripted(Mutex<Option<SaleView>>);

    #[async_trait::async_trait]
    impl SaleSource for Scripted {
        async fn current(&self, _: &SaleId) -> Result<Option<SaleView>, ServiceError> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    fn view(version: u64, status: SaleStatus) -> SaleView {
        SaleView {
            sale_id: SaleId::parse("s").unwrap(),
            product_id: ProductId::parse("p").unwrap(),
            version,
            rules: SaleRules {
                allocated: 10,
                per_user_limit: 0,
                max_per_purchase: 1,
                start: UnixMillis(0),
                end: UnixMillis(1),
                unit_price: Money::parse(1, "EUR").unwrap(),
                hold_seconds: 0,
                queue: None,
            },
            status,
            end_reason: None,
            ended_at: None,
            sold: 0,
            held: 0,
            waitlist: 0,
            in_flight: 0,
            remaining: 10,
            leaderboard: Vec::new(),
            total_buyers: 0,
            created_at: UnixMillis(0),
            line: None,
        }
    }

    fn hub(source: &Arc<Scripted>, tasks: &TaskTracker) -> FeedHub {
        let weak: Weak<dyn SaleSource> = Arc::downgrade(source) as Weak<dyn SaleSource>;
        let clock = Arc::new(ManualClock::new(UnixMillis(0)));
        FeedHub::new(weak, clock, Duration::from_millis(1), CancellationToken::new(), tasks.clone())
    }

    async fn wait_for(feed: &mut Feed, done: impl Fn(&Published) -> bool) -> Arc<Published> {
        loop {
            let latest = feed.borrow_and_update().clone();
            if done(&latest) {
                return latest;
            }
            tokio::time::timeout(Duration::from_secs(5), feed.changed()).await.expect("a change").expect("open");
        }
    }

    #[tokio::test]
    async fn an_ended_sale_s_feed_publishes_the_end_then_leaves_the_hub() {
        let source = Arc::new(Scripted(Mutex::new(Some(view(1, SaleStatus::Active)))));
        let tasks = TaskTracker::new();
        let hub = hub(&source, &tasks);
        let mut feed = hub.subscribe(view(1, SaleStatus::Active));
        *source.0.lock().unwrap() = Some(view(2, SaleStatus::Ended));
        hub.touch(&SaleId::parse("s").unwrap());
        let last = wait_for(&mut feed, |p| p.view.status == SaleStatus::Ended).await;
        assert_eq!(last.view.version, 2);
        poll_until_empty(&hub).await;
    }

    #[tokio::test]
    async fn a_sale_gone_from_the_record_ends_its_feed_as_gone() {
        let source = Arc::new(Scripted(Mutex::new(Some(view(1, SaleStatus::Active)))));
        let tasks = TaskTracker::new();
        let hub = hub(&source, &tasks);
        let mut feed = hub.subscribe(view(1, SaleStatus::Active));
        *source.0.lock().unwrap() = None;
        hub.touch(&SaleId::parse("s").unwrap());
        let last = wait_for(&mut feed, |p| p.gone).await;
        assert!(last.is_last());
        poll_until_empty(&hub).await;
    }

    #[tokio::test]
    async fn a_feed_reads_again_on_its_own() {
        // Nobody touches the feed: it still picks up the change within its refresh.
        tokio::time::pause();
        let source = Arc::new(Scripted(Mutex::new(Some(view(1, SaleStatus::Active)))));
        let tasks = TaskTracker::new();
        let hub = hub(&source, &tasks);
        let mut feed = hub.subscribe(view(1, SaleStatus::Active));
        *source.0.lock().unwrap() = Some(view(5, SaleStatus::Active));
        let seen = wait_for(&mut feed, |p| p.view.version == 5).await;
        assert_eq!(seen.view.status, SaleStatus::Active);
    }

    async fn poll_until_empty(hub: &FeedHub) {
        for _ in 0..500 {
            if hub.upstreams.read().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the feed's entry stayed in the hub");
    }
}
