//! Orders out to the shop: the paged listings (products, sales, a buyer's orders, a sale's
//! orders) and the order feed (WatchOrders).
//!
//! Listings are keyset-paged on ids (UUIDv7, growing with creation time): a page ends at an id
//! and the next starts after it, so walking pages while new items arrive never repeats an item
//! nor skips one that existed when the walk began. The page token carries that id, signed
//! ([`crate::paging`]).
//!
//! The feed reads the record's order events from a consumer's cursor. It is woken when this
//! node's committer writes (after letting commits gather for [`FEED_GATHER`]) and polls every
//! [`FEED_POLL`] for other nodes' writes.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{
    check_cursor, CursorProblem, OrderEvent, OrderRecord, OrderStatus, ProductId, ProductRecord, SaleId, SaleView,
    UnixMillis, UserId,
};
use crate::paging::Listing;
use crate::store::OrderFilter;

use super::{App, ServiceError};

/// Events one read of the record takes for a follower.
const FEED_BATCH: usize = 2048;
/// How long a woken follower lets commits gather before it reads: during a rush the committer
/// writes hundreds of batches a second, and a read per batch (a blocking-pool hop and a read
/// transaction each) cost the rush a fifth of its throughput; one read per interval costs a
/// few percent, for at most this much more lag.
const FEED_GATHER: Duration = Duration::from_millis(10);
/// How often an idle follower looks for events other nodes wrote.
pub const FEED_POLL: Duration = Duration::from_millis(500);
/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// What a listing request asks for: a validated page size and the token as sent.
#[derive(Debug, Clone, Default)]
pub struct PageAsk {
    /// Items wanted (1..=1000).
    pub size: usize,
    /// `page_token`; empty for the first page.
    pub token: String,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The next page's token; empty on the last page.
    pub next_token: String,
}

impl App {
    /// One page of `listing` with these `filters` (their text is signed into the token, so a
    /// token is refused with other filters): `fetch(after, n)` reads at most `n` items after
    /// the id `after`, and `id` names an item's id.
    async fn page<T, F, Fut>(
        &self,
        listing: Listing,
        filters: &str,
        ask: &PageAsk,
        fetch: F,
        id: fn(&T) -> &str,
    ) -> Result<Page<T>, ServiceError>
    where
        F: FnOnce(Option<String>, usize) -> Fut,
        Fut: Future<Output = Result<Vec<T>, ServiceError>>,
    {
        let tokens = self.keys.pages();
        let after = tokens.read(listing, filters, &ask.token).map_err(ServiceError::PageTokenInvalid)?;
        // One more than asked tells whether a next page exists.
        let mut items = fetch(after, ask.size + 1).await?;
        let mut next_token = String::new();
        if items.len() > ask.size {
            items.truncate(ask.size);
            if let Some(last) = items.last() {
                next_token = tokens.issue(listing, filters, id(last));
            }
        }
        Ok(Page { items, next_token })
    }

    /// Products, oldest first.
    pub async fn list_products(&self, ask: &PageAsk) -> Result<Page<ProductRecord>, ServiceError> {
        self.page(
            Listing::Products,
            "",
            ask,
            |after, n| async move {
                let after = after.map(|raw| ProductId::parse(&raw)).transpose()?;
                Ok(self.records.products_page(after.as_ref(), n).await?)
            },
            |product| product.id.as_str(),
        )
        .await
    }

    /// Sales, newest first, optionally of one product, with live counters where loaded.
    pub async fn list_sales(&self, product: Option<&ProductId>, ask: &PageAsk) -> Result<Page<SaleView>, ServiceError> {
        let filters = product.map_or("", |p| p.as_str());
        self.page(
            Listing::Sales,
            filters,
            ask,
            |before, n| async move {
                let before = before.map(|raw| SaleId::parse(&raw)).transpose()?;
                let mut views = Vec::new();
                for sale in self.records.sales_page(product, before.as_ref(), n).await? {
                    views.push(match self.hot.view(&sale.id).await? {
                        Some(view) => view,
                        None => super::admin::view_of_record(&sale),
                    });
                }
                Ok(views)
            },
            |view| view.sale_id.as_str(),
        )
        .await
    }

    /// A buyer's orders, oldest first, optionally in one sale.
    pub async fn list_my_orders(
        &self,
        buyer: &UserId,
        sale: Option<&SaleId>,
        ask: &PageAsk,
    ) -> Result<Page<OrderRecord>, ServiceError> {
        let filter = OrderFilter { buyer: Some(buyer.clone()), sale: sale.cloned(), ..OrderFilter::default() };
        let filters = format!("{buyer}/{}", sale.map_or("", |s| s.as_str()));
        self.orders_page(Listing::MyOrders, &filters, filter, ask).await
    }

    /// A sale's orders, oldest first, optionally in one status or created after a time; with
    /// how many match on the first page.
    pub async fn list_sale_orders(
        &self,
        sale: &SaleId,
        status: Option<OrderStatus>,
        created_after: Option<UnixMillis>,
        ask: &PageAsk,
    ) -> Result<(Page<OrderRecord>, Option<u64>), ServiceError> {
        if self.records.get_sale(sale).await?.is_none() {
            return Err(ServiceError::SaleNotFound);
        }
        let filter = OrderFilter { sale: Some(sale.clone()), status, created_after, ..OrderFilter::default() };
        let filters =
            format!("{sale}/{}/{}", status.map_or("", OrderStatus::as_str), created_after.map_or(i64::MIN, |t| t.0));
        let total = match ask.token.is_empty() {
            true => Some(self.records.count_orders(&filter).await?),
            false => None,
        };
        Ok((self.orders_page(Listing::SaleOrders, &filters, filter, ask).await?, total))
    }

    async fn orders_page(
        &self,
        listing: Listing,
        filters: &str,
        filter: OrderFilter,
        ask: &PageAsk,
    ) -> Result<Page<OrderRecord>, ServiceError> {
        self.page(
            listing,
            filters,
            ask,
            |after, n| async move {
                let after = after.map(|raw| crate::domain::OrderId::parse(&raw)).transpose()?;
                Ok(self.records.orders_page(&filter, after.as_ref(), n).await?)
            },
            |order| order.id.as_str(),
        )
        .await
    }

    /// Follows the order events after `after`, of one sale or of all. Refused when events after
    /// the cursor were pruned (`CursorExpired`) or it is beyond every event (`CursorUnknown`).
    pub async fn follow_orders(self: &Arc<Self>, after: u64, sale: Option<SaleId>) -> Result<OrderFeed, ServiceError> {
        if let Some(sale) = &sale {
            if self.records.get_sale(sale).await?.is_none() {
                return Err(ServiceError::SaleNotFound);
            }
        }
        let mut feed = OrderFeed {
            app: self.clone(),
            sale,
            position: after,
            buffered: VecDeque::new(),
            written: self.committer.events_written(),
        };
        // The first read checks the cursor, so a bad one is refused before the stream starts.
        feed.read().await?;
        Ok(feed)
    }

    /// Deletes order events older than the retention, now and every [`PRUNE_EVERY`] (on every
    /// node: deleting what another node deleted changes nothing).
    pub(super) async fn prune_events(self: Arc<Self>, retention: Duration) {
        loop {
            let kept = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let before = UnixMillis(self.clock.now().0.saturating_sub(kept));
            match self.records.prune_order_events(before).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "old order events pruned"),
                Err(error) => tracing::warn!(error = ?error, "could not prune old order events; trying again later"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
            }
        }
    }
}

/// One follower of the order events.
pub struct OrderFeed {
    app: Arc<App>,
    sale: Option<SaleId>,
    /// The highest sequence read so far (sent, or skipped as another sale's).
    position: u64,
    buffered: VecDeque<OrderEvent>,
    /// Bumped each time this node's committer writes.
    written: watch::Receiver<u64>,
}

impl OrderFeed {
    /// The next event, waiting for one as long as it takes; `None` once the server stops. An
    /// error ends the stream: its events were pruned while the consumer lagged (CURSOR_EXPIRED).
    pub async fn next(&mut self) -> Option<Result<OrderEvent, ServiceError>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            if self.app.is_stopping() {
                return None;
            }
            // Marked seen before the read: a write after it wakes the wait below.
            self.written.borrow_and_update();
            match self.read().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error @ (ServiceError::CursorExpired { .. } | ServiceError::CursorUnknown { .. })) => {
                    return Some(Err(error))
                }
                Err(error) => tracing::debug!(error = ?error, "could not read order events; trying again"),
            }
            tokio::select! {
                _ = self.app.shutdown.cancelled() => return None,
                _ = self.written.changed() => tokio::time::sleep(FEED_GATHER).await,
                _ = tokio::time::sleep(FEED_POLL) => {}
            }
        }
    }

    /// Reads the events after the position into the buffer; true when it may find more at once.
    async fn read(&mut self) -> Result<bool, ServiceError> {
        let page = self.app.records.order_events(self.position, self.sale.as_ref(), FEED_BATCH).await?;
        check_cursor(self.position, page.oldest, page.head).map_err(|problem| match problem {
            CursorProblem::Expired { oldest, head } => ServiceError::CursorExpired { oldest, head },
            CursorProblem::Unknown { head } => ServiceError::CursorUnknown { head },
        })?;
        let more = page.scanned > self.position && page.scanned < page.head;
        self.position = self.position.max(page.scanned);
        self.buffered.extend(page.events);
        Ok(!self.buffered.is_empty() || more)
    }
}
