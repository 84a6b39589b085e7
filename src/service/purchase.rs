//! The purchase flow: reserve atomically in the hot store, make the order durable through the
//! group committer, then confirm (acknowledge) or release (give the units back).
//!
//! Once a purchase has reserved, it settles whatever its caller does: reserving and settling run
//! in a task of their own ([`App::detached`]) that the request only awaits. A client that gives
//! up (deadline, cancel, reset stream, closed connection) drops the wait, never the settlement,
//! so no reservation stays in flight while the process lives; only a dead process leaves one, for
//! start-up recovery (embedded) or reconciliation (Redis) to settle.

use std::sync::Arc;
use std::task::Poll;

use tokio::time::Instant;

use crate::auth::Caller;
use crate::domain::{CommitRefusal, EndReason, IdempotencyKey, OrderId, OrderRecord, PurchaseRefusal, SaleId, UserId};
use crate::store::{HotError, Reservation, ReserveRequest, Settled};

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

/// What a reservation did.
enum Reserved {
    /// Units reserved for this new order: it must be settled.
    New(OrderRecord),
    /// The key's first order, durable.
    Replay(Purchased),
    /// The key's first order, still being settled.
    InFlight(OrderRecord),
}

/// What one attempt came to.
enum Step {
    /// Answered: the order, new and durable or the key's first.
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
            let first = match self.reserve_and_settle(request.clone()).await? {
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
                Ok(Ok(Settled::Confirmed)) => {
                    return Ok(Purchased { order: self.current(first).await?, replayed: true })
                }
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

    /// Reserves, then settles a new reservation to its end, in a task of its own: cancelling the
    /// caller drops only its wait (see the module docs). The reservation is polled once first:
    /// one decided on the spot (the in-process hot store never waits) needs no task unless it
    /// made something to settle, which keeps refusals — the sold-out path — as cheap as before.
    /// One still waiting (a Redis script sent) is moved, as it is, into the task.
    async fn reserve_and_settle(self: &Arc<Self>, request: ReserveRequest) -> Result<Step, ServiceError> {
        let app = self.clone();
        let mut reserving = Box::pin(async move { app.reserve(request).await });
        let reserved = match futures::poll!(&mut reserving) {
            Poll::Ready(reserved) => reserved?,
            Poll::Pending => {
                let app = self.clone();
                return self.detached(async move { app.settle_reserved(reserving.await?).await }).await;
            }
        };
        match reserved {
            Reserved::New(order) => {
                let app = self.clone();
                self.detached(async move { app.settle_reserved(Reserved::New(order)).await }).await
            }
            Reserved::Replay(purchased) => Ok(Step::Done(purchased)),
            Reserved::InFlight(first) => Ok(Step::InFlight(first)),
        }
    }

    /// Checks every purchase rule and reserves (loading the sale first if needed).
    async fn reserve(&self, request: ReserveRequest) -> Result<Reserved, ServiceError> {
        let reservation = match self.hot.reserve(&request).await {
            Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {
                self.load_sale(&request.sale_id).await?;
                self.hot.reserve(&request).await?
            }
            other => other?,
        };
        Ok(match reservation {
            Reservation::New(order) => Reserved::New(order),
            // Our own reservation, made by a first try whose answer was lost (a connection that
            // broke under the call, retried once by the hot store): it is new, not a replay.
            Reservation::Existing { order, settled: false } if order.id == request.new_order_id => Reserved::New(order),
            Reservation::Existing { order, settled: true } => {
                Reserved::Replay(Purchased { order: self.current(order).await?, replayed: true })
            }
            Reservation::Existing { order, settled: false } => Reserved::InFlight(order),
        })
    }

    /// Settles what `reserve` made: a new reservation is made durable, then confirmed or released.
    async fn settle_reserved(self: Arc<Self>, reserved: Reserved) -> Result<Step, ServiceError> {
        match reserved {
            Reserved::New(order) => self.make_durable(order).await.map(Step::Done),
            Reserved::Replay(purchased) => Ok(Step::Done(purchased)),
            Reserved::InFlight(first) => Ok(Step::InFlight(first)),
        }
    }

    /// Commits a reserved order, then confirms or releases it.
    pub(super) async fn make_durable(self: &Arc<Self>, order: OrderRecord) -> Result<Purchased, ServiceError> {
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
                            app.end_sold_out(&order.sale_id).await;
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
                self.heal_oversold(&order.sale_id);
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

    /// The hot state counted units the record has sold: it lost writes (a Redis failover
    /// promoted a replica that had not received them, or an old append-only file came back).
    /// If the record has every unit confirmed, the sale ends SOLD_OUT now, in a task of its own
    /// (one at a time per sale on this node), instead of refusing buyers one by one until the
    /// rush is over. Otherwise (holds may still come back) reconciliation rebuilds the hot state
    /// from the record once the sale is quiet: a rebuild under live reservations would forget
    /// their buyers' units and let them past the per-buyer limit with another key.
    fn heal_oversold(self: &Arc<Self>, sale: &SaleId) {
        if !self.healing.lock().unwrap_or_else(|e| e.into_inner()).insert(sale.clone()) {
            return;
        }
        let (app, sale) = (self.clone(), sale.clone());
        self.tasks.spawn(async move {
            match app.records.get_sale(&sale).await {
                Ok(Some(record)) if crate::domain::all_confirmed(record.rules.allocated, record.sold, record.held) => {
                    tracing::warn!(%sale, "every unit is durably sold: ending the sale the hot state kept open");
                    app.end_sold_out(&sale).await;
                    app.feeds.touch(&sale);
                }
                Ok(_) => tracing::warn!(%sale, "the hot state drifted from the record: reconciliation rebuilds it when the sale is quiet"),
                Err(error) => tracing::warn!(%sale, error = ?error, "could not read the record; reconciliation heals the sale"),
            }
            app.healing.lock().unwrap_or_else(|e| e.into_inner()).remove(&sale);
        });
    }

    /// Confirms or releases a reservation; true when a confirm sold the last unit.
    async fn settle(self: &Arc<Self>, order: &OrderRecord, how: Settle) -> Result<bool, ServiceError> {
        let sold_out = match how {
            Settle::Confirm => self.confirm(order).await?,
            Settle::Release => {
                match self.hot.release(order, self.clock.now()).await {
                    // The sale's hot state was dropped (a rebuild from the record is under way):
                    // the rebuilt state never held this reservation, so there is nothing to undo.
                    Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {}
                    // The units went to the head of the line first.
                    Ok(handed) => self.hand_on(&order.sale_id, handed),
                    Err(error) => return Err(error.into()),
                }
                false
            }
        };
        match how {
            Settle::Confirm => self.metrics.confirmed.increment(1),
            Settle::Release => self.metrics.released.increment(1),
        }
        self.feeds.touch(&order.sale_id);
        Ok(sold_out)
    }

    /// A durable order as it stands now: the hot state keeps a hold as it was made, so a
    /// replayed hold is read from the record (it may have been paid, cancelled or expired since).
    async fn current(&self, order: OrderRecord) -> Result<OrderRecord, ServiceError> {
        if order.status != crate::domain::OrderStatus::Held {
            return Ok(order);
        }
        Ok(self.records.get_order(&order.id).await?.unwrap_or(order))
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
