//! The purchase flow: reserve atomically in the hot store, make the order durable through the
//! group committer, then confirm (acknowledge) or release (give the units back).
//!
//! Once a purchase has reserved, it settles whatever its caller does: reserving and settling run
//! in a task of their own ([`App::detached`]) that the request only awaits. A client that gives
//! up (deadline, cancel, reset stream, closed connection) drops the wait, never the settlement,
//! so no reservation stays in flight while the process lives; only a dead process leaves one, for
//! start-up recovery (embedded) or reconciliation (Redis) to settle.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::auth::Caller;
use crate::domain::{EndReason, IdempotencyKey, OrderId, PurchaseRefusal, SaleId, UserId};
use crate::store::{CommitRefusal, HotError, OrderRecord, Reservation, ReserveRequest, Settled};

use super::{App, ServiceError};

/// A successful purchase.
#[derive(Debug, Clone)]
pub struct Purchased {
    /// The durable order.
    pub order: OrderRecord,
    /// True when this was a retry answered with the first order.
    pub replayed: bool,
}

/// How many times a purchase re-reserves after its key's first attempt was released.
const ATTEMPTS: usize = 3;

/// Pauses between attempts to confirm or release a reservation while the hot store is
/// unreachable, doubling from the first up to the last.
const SETTLE_RETRY_FIRST: Duration = Duration::from_millis(50);
const SETTLE_RETRY_MAX: Duration = Duration::from_secs(2);

/// What one detached attempt came to.
enum Step {
    /// Answered: the order (new and durable, or the key's first), or a refusal.
    Done(Purchased),
    /// The key's first attempt is still settling (perhaps for a caller that gave up).
    InFlight(OrderRecord),
}

/// How a reservation is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Durable: count it as sold.
    Confirm,
    /// Not durable: give the units back.
    Release,
}

impl Settle {
    fn label(self) -> &'static str {
        match self {
            Self::Confirm => "confirmed",
            Self::Release => "released",
        }
    }
}

impl App {
    /// Buys `quantity` units of `sale_id` for `caller`, all or nothing; returns once durable.
    /// A retry whose key's first attempt is still in flight waits for it at most
    /// `--in-flight-wait-ms`, then answers UNAVAILABLE (retry with the same key).
    pub async fn purchase(
        self: &Arc<Self>,
        caller: &Caller,
        sale_id: SaleId,
        quantity: u32,
        key: IdempotencyKey,
    ) -> Result<Purchased, ServiceError> {
        let mut request = ReserveRequest {
            sale_id,
            buyer_id: caller.user_id.clone(),
            buyer_name: caller.display_name.clone(),
            quantity,
            idempotency_key: key,
            new_order_id: OrderId::generate(),
            now: self.clock.now(),
        };
        let waiting_until = Instant::now() + self.in_flight_wait;
        for _ in 0..ATTEMPTS {
            // Detached: cancelling here drops only the wait (see the module docs).
            let (app, attempt) = (self.clone(), request.clone());
            let first = match self.detached(async move { app.reserve_and_settle(attempt).await }).await? {
                Step::Done(purchased) => return Ok(purchased),
                Step::InFlight(first) => first,
            };
            // Only reads from here: safe to cancel.
            match tokio::time::timeout_at(waiting_until, self.hot.wait_settled(&first)).await {
                Err(_) => {
                    return Err(ServiceError::Unavailable(
                        "the first purchase with this idempotency key is still being settled; retry with the same key"
                            .into(),
                    ))
                }
                Ok(Ok(Settled::Confirmed)) => return Ok(Purchased { order: first, replayed: true }),
                // The first attempt failed and gave its units back, or the sale's hot state was
                // rebuilt meanwhile: try afresh (a durable first order is found again).
                Ok(Ok(Settled::Released) | Err(HotError::Refused(PurchaseRefusal::SaleNotFound))) => {
                    request.now = self.clock.now()
                }
                Ok(Err(error)) => return Err(error.into()),
            }
        }
        Err(ServiceError::Unavailable("the purchase could not be settled; retry with the same key".into()))
    }

    /// Reserves, then settles a new reservation to its end. Runs detached (see
    /// [`App::purchase`]).
    async fn reserve_and_settle(self: Arc<Self>, request: ReserveRequest) -> Result<Step, ServiceError> {
        let reservation = match self.hot.reserve(&request).await {
            Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {
                self.load_sale(&request.sale_id).await?;
                self.hot.reserve(&request).await?
            }
            other => other?,
        };
        match reservation {
            Reservation::New(order) => {
                in_flight_gauge(&order).increment(f64::from(order.quantity));
                self.make_durable(order).await.map(Step::Done)
            }
            Reservation::Existing { order, settled: true } => Ok(Step::Done(Purchased { order, replayed: true })),
            Reservation::Existing { order, settled: false } => Ok(Step::InFlight(order)),
        }
    }

    /// Commits a reserved order, then confirms or releases it.
    async fn make_durable(self: &Arc<Self>, order: OrderRecord) -> Result<Purchased, ServiceError> {
        let outcome = self.committer.commit(order.clone()).await;
        let durable = matches!(outcome, Ok(Ok(())));
        let settle = if durable { Settle::Confirm } else { Settle::Release };
        match self.settle(&order, settle).await {
            Ok(sold_out) => {
                if sold_out {
                    self.end_sold_out(&order.sale_id).await;
                }
            }
            Err(error) => {
                // The hot store is unreachable. The order's fate is known (durable or not), so
                // the buyer gets their answer now; the settlement is retried in the background.
                tracing::warn!(sale = %order.sale_id, order = %order.id, error = ?error, action = settle.label(), "could not settle a reservation; retrying in the background");
                let order = order.clone();
                self.retry_in_background(move |app| {
                    let order = order.clone();
                    Box::pin(async move {
                        if app.settle(&order, settle).await? {
                            app.end_sale_now(&order.sale_id, EndReason::SoldOut).await?;
                        }
                        Ok(())
                    })
                });
            }
        }
        match outcome {
            Ok(Ok(())) => Ok(Purchased { order, replayed: false }),
            Ok(Err(CommitRefusal::SaleEnded)) => {
                let reason = self.records.get_sale(&order.sale_id).await?.and_then(|s| s.end_reason);
                Err(ServiceError::Purchase(PurchaseRefusal::Ended { reason: reason.unwrap_or(EndReason::ByAdmin) }))
            }
            Ok(Err(CommitRefusal::WouldOversell)) => {
                tracing::error!(sale = %order.sale_id, "hot state allowed a purchase the record refused as oversell");
                Err(ServiceError::Purchase(PurchaseRefusal::SoldOut))
            }
            Ok(Err(CommitRefusal::Duplicate)) => {
                let first = self.records.order_by_key(&order.buyer_id, &order.sale_id, &order.idempotency_key).await?;
                match first {
                    Some(first) if first.quantity == order.quantity => Ok(Purchased { order: first, replayed: true }),
                    Some(_) => Err(ServiceError::Purchase(PurchaseRefusal::IdempotencyKeyReused)),
                    None => Err(ServiceError::Internal("duplicate order without a first order".into())),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Confirms or releases a reservation; true when a confirm sold the last unit.
    async fn settle(&self, order: &OrderRecord, how: Settle) -> Result<bool, ServiceError> {
        let sold_out = match how {
            Settle::Confirm => {
                let confirmed = match self.hot.confirm(order).await {
                    // Dropped for a rebuild between commit and confirm: rebuild it now (it then
                    // holds this durable order) and confirm, which changes nothing more.
                    Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {
                        self.load_sale(&order.sale_id).await?;
                        self.hot.confirm(order).await?
                    }
                    other => other?,
                };
                confirmed.sold_out
            }
            Settle::Release => {
                match self.hot.release(order).await {
                    // The sale's hot state was dropped (a rebuild from the record is under way):
                    // the rebuilt state never held this reservation, so there is nothing to undo.
                    Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {}
                    other => other?,
                }
                false
            }
        };
        in_flight_gauge(order).decrement(f64::from(order.quantity));
        metrics::counter!("flashsale_settlements_total", "outcome" => how.label(), "by" => "purchase").increment(1);
        self.feeds.touch(&order.sale_id);
        Ok(sold_out)
    }

    /// Ends a sale whose last unit was just confirmed; if the record cannot be reached now, the
    /// end is retried in the background.
    async fn end_sold_out(self: &Arc<Self>, sale: &SaleId) {
        if let Err(error) = self.end_sale_now(sale, EndReason::SoldOut).await {
            tracing::warn!(%sale, error = ?error, "could not end a sold-out sale; retrying in the background");
            let sale = sale.clone();
            self.retry_in_background(move |app| {
                let sale = sale.clone();
                Box::pin(async move { app.end_sale_now(&sale, EndReason::SoldOut).await })
            });
        }
    }

    /// Runs `work` again, with a growing pause, until it succeeds or the server stops (what is
    /// left then is settled as a dead node's would be: by recovery or reconciliation). Tracked,
    /// so shutdown waits for it within its grace period.
    fn retry_in_background<F>(self: &Arc<Self>, work: F)
    where
        F: Fn(Arc<Self>) -> BoxFuture<'static, Result<(), ServiceError>> + Send + 'static,
    {
        let app = self.clone();
        self.tasks.spawn(async move {
            let mut pause = SETTLE_RETRY_FIRST;
            loop {
                tokio::select! {
                    _ = app.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                match work(app.clone()).await {
                    Ok(()) => return,
                    Err(error) => tracing::debug!(error = ?error, "still failing; retrying"),
                }
                pause = (pause * 2).min(SETTLE_RETRY_MAX);
            }
        });
    }

    /// Loads a sale's hot state from the record if it is not loaded (a sale created by another
    /// process, or ended before this process started).
    pub(super) async fn load_sale(&self, sale_id: &SaleId) -> Result<(), ServiceError> {
        if self.hot.has_sale(sale_id).await? {
            return Ok(());
        }
        let sale = self.records.get_sale(sale_id).await?.ok_or(ServiceError::SaleNotFound)?;
        let orders = self.records.orders_of_sale(sale_id).await?;
        // Reads, then one atomic load that never replaces a loaded sale: safe to cancel.
        self.hot.load_sale(&sale, &orders).await?;
        Ok(())
    }

    /// One of the caller's orders.
    pub async fn get_order(&self, caller: &Caller, id: &OrderId) -> Result<OrderRecord, ServiceError> {
        match self.records.get_order(id).await? {
            Some(order) if order.buyer_id == caller.user_id => Ok(order),
            _ => Err(ServiceError::OrderNotFound),
        }
    }

    /// The caller's orders, oldest first.
    pub async fn list_orders(&self, buyer: &UserId, sale: Option<&SaleId>) -> Result<Vec<OrderRecord>, ServiceError> {
        Ok(self.records.orders_of_buyer(buyer, sale).await?)
    }
}

/// Units this node has reserved and not yet settled, per sale.
fn in_flight_gauge(order: &OrderRecord) -> metrics::Gauge {
    metrics::gauge!("flashsale_units_in_flight", "sale" => order.sale_id.to_string())
}
