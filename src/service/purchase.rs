//! The purchase flow: reserve atomically in the hot store, make the order durable through the
//! group committer, then confirm (acknowledge) or release (give the units back).

use crate::auth::Caller;
use crate::domain::{IdempotencyKey, OrderId, PurchaseRefusal, SaleId, UserId};
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

impl App {
    /// Buys `quantity` units of `sale_id` for `caller`, all or nothing; returns once durable.
    pub async fn purchase(
        &self,
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
        for _ in 0..ATTEMPTS {
            let reservation = match self.hot.reserve(&request).await {
                Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {
                    self.load_sale(&request.sale_id).await?;
                    self.hot.reserve(&request).await?
                }
                other => other?,
            };
            match reservation {
                Reservation::New(order) => return self.make_durable(order).await,
                Reservation::Existing { order, settled: true } => return Ok(Purchased { order, replayed: true }),
                Reservation::Existing { order, settled: false } => match self.hot.wait_settled(&order).await {
                    Ok(Settled::Confirmed) => return Ok(Purchased { order, replayed: true }),
                    // The first attempt failed and gave its units back, or the sale's hot state
                    // was rebuilt meanwhile: try afresh (a durable first order is found again).
                    Ok(Settled::Released) | Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {
                        request.now = self.clock.now()
                    }
                    Err(error) => return Err(error.into()),
                },
            }
        }
        Err(ServiceError::Unavailable("the purchase could not be settled; retry with the same key".into()))
    }

    async fn make_durable(&self, order: OrderRecord) -> Result<Purchased, ServiceError> {
        let outcome = self.committer.commit(order.clone()).await;
        if !matches!(outcome, Ok(Ok(()))) {
            match self.hot.release(&order).await {
                // The sale's hot state was dropped (a rebuild from the record is under way):
                // the rebuilt state never held this reservation, so there is nothing to undo.
                Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {}
                other => other?,
            }
            self.feeds.touch(&order.sale_id);
        }
        match outcome {
            Ok(Ok(())) => {
                let confirmed = match self.hot.confirm(&order).await {
                    // Dropped for a rebuild between commit and confirm: rebuild it now (it then
                    // holds this durable order) and confirm, which changes nothing more.
                    Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {
                        self.load_sale(&order.sale_id).await?;
                        self.hot.confirm(&order).await?
                    }
                    other => other?,
                };
                self.feeds.touch(&order.sale_id);
                if confirmed.sold_out {
                    self.end_sale_now(&order.sale_id, crate::domain::EndReason::SoldOut).await?;
                }
                Ok(Purchased { order, replayed: false })
            }
            Ok(Err(CommitRefusal::SaleEnded)) => {
                let reason = self.records.get_sale(&order.sale_id).await?.and_then(|s| s.end_reason);
                Err(ServiceError::Purchase(PurchaseRefusal::Ended {
                    reason: reason.unwrap_or(crate::domain::EndReason::ByAdmin),
                }))
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

    /// Loads a sale's hot state from the record if it is not loaded (a sale created by another
    /// process, or ended before this process started).
    pub(super) async fn load_sale(&self, sale_id: &SaleId) -> Result<(), ServiceError> {
        if self.hot.has_sale(sale_id).await? {
            return Ok(());
        }
        let sale = self.records.get_sale(sale_id).await?.ok_or(ServiceError::SaleNotFound)?;
        let orders = self.records.orders_of_sale(sale_id).await?;
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
