//! Live feeds: one upstream per sale, fanned out to every watcher with latest-value semantics.
//!
//! A purchase only marks its sale dirty ([`FeedHub::touch`]: one `Notify`, no allocation). The
//! sale's upstream task wakes, reads the sale's [`SaleView`] once and publishes it on a
//! `watch` channel, then waits one feed interval before it may publish again, so every watcher
//! gets the newest state at a bounded rate. A `watch` keeps only the latest value: a watcher
//! that never reads holds one `Arc` and never slows the upstream or the purchases.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::domain::{SaleId, SaleStatus};
use crate::store::{HotStore, SaleView};

/// Publishes each sale's live state to its watchers.
pub struct FeedHub {
    /// std RwLock: every purchase takes the read side to find its sale's upstream (no
    /// contention between purchases); the write side only inserts an upstream. Never held
    /// across an `.await`.
    upstreams: RwLock<HashMap<SaleId, Arc<Upstream>>>,
    hot: Arc<dyn HotStore>,
    interval: Duration,
    shutdown: CancellationToken,
}

struct Upstream {
    /// Holds at most one permit: any number of changes during an interval wake the task once.
    dirty: Notify,
    latest: watch::Sender<Arc<SaleView>>,
}

impl FeedHub {
    /// A hub reading sale state from `hot`, publishing at most once per `interval` per sale.
    pub fn new(hot: Arc<dyn HotStore>, interval: Duration, shutdown: CancellationToken) -> Self {
        Self { upstreams: RwLock::default(), hot, interval, shutdown }
    }

    /// Marks a sale changed; its watchers see the change within one interval.
    pub fn touch(&self, sale: &SaleId) {
        if let Some(upstream) = self.upstreams.read().unwrap_or_else(|e| e.into_inner()).get(sale) {
            upstream.dirty.notify_one();
        }
    }

    /// Subscribes to a sale whose current view is `current` (the caller loaded it). The
    /// receiver's current value is the newest published state.
    pub fn subscribe(&self, current: SaleView) -> watch::Receiver<Arc<SaleView>> {
        let mut upstreams = self.upstreams.write().unwrap_or_else(|e| e.into_inner());
        if let Some(upstream) = upstreams.get(&current.sale_id) {
            // `current` was read just now; the last published value may be up to one interval
            // old. A new watcher must start from the newest state (e.g. ENDED right after an
            // end), so publish `current` first when it is newer.
            publish_if_newer(&upstream.latest, current);
            return upstream.latest.subscribe();
        }
        let sale = current.sale_id.clone();
        let (latest, receiver) = watch::channel(Arc::new(current));
        let upstream = Arc::new(Upstream { dirty: Notify::new(), latest });
        upstreams.insert(sale.clone(), upstream.clone());
        tokio::spawn(publish(upstream, sale, self.hot.clone(), self.interval, self.shutdown.clone()));
        receiver
    }
}

async fn publish(upstream: Arc<Upstream>, sale: SaleId, hot: Arc<dyn HotStore>, interval: Duration, shutdown: CancellationToken) {
    // A state read before the upstream existed may be stale: publish once right away.
    upstream.dirty.notify_one();
    loop {
        if upstream.latest.borrow().status == SaleStatus::Ended {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = upstream.dirty.notified() => {}
        }
        match hot.view(&sale).await {
            Ok(Some(view)) => publish_if_newer(&upstream.latest, view),
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, %sale, "feed could not read the sale; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Replaces the published view when `view` is newer (higher version, or the sale ended).
fn publish_if_newer(latest: &watch::Sender<Arc<SaleView>>, view: SaleView) {
    latest.send_if_modified(|published| {
        let newer = view.version > published.version
            || (view.status == SaleStatus::Ended && published.status != SaleStatus::Ended);
        if newer {
            *published = Arc::new(view);
        }
        newer
    });
}
