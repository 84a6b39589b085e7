//! Holds and the waitlist (see `domain/holds.rs` for the rules).
//!
//! Every end of a hold is decided by the record first (`RecordStore::end_hold`: one transaction,
//! conditional on the order still being HELD), then applied to the hot state
//! (`HotStore::end_hold`, which settles only a hold it still holds). So of a payment racing the
//! expiry, on one node or many, exactly one wins, and the units of a hold are never both
//! confirmed and given back. Both steps run detached ([`App::detached`]): a caller that goes
//! away between them cannot leave the record and the hot state disagreeing; if the hot store
//! cannot be reached, the hot step is retried in the background (and reconciliation rebuilds a
//! shared hot state that drifted from the record).
//!
//! Units given back go to the head of the waitlist as new holds ([`App::hand_on`]): each is made
//! durable and confirmed like a purchase, in a task of its own.

use std::sync::Arc;

use crate::auth::Caller;
use crate::domain::{
    HoldEnd, HoldRefusal, OrderId, OrderRecord, OrderStatus, Role, SaleId, UnixMillis, WaitlistEntry, WaitlistPlace,
};
use crate::store::{Handed, HoldChange, HotError, JoinRequest};

use super::{App, ServiceError};

/// Held orders read per round of the expiry timer.
const EXPIRY_BATCH: usize = 256;

/// What ConfirmOrder or CancelOrder answers.
#[derive(Debug, Clone)]
pub struct HoldAnswer {
    /// The order as it is now.
    pub order: OrderRecord,
    /// True when the order already was as asked (the same call repeated); nothing changed.
    pub replayed: bool,
}

impl App {
    /// Pays a held order: by its buyer, or by a payments token for any order.
    pub async fn confirm_order(
        self: &Arc<Self>,
        caller: &Caller,
        id: &OrderId,
        reference: String,
    ) -> Result<HoldAnswer, ServiceError> {
        let order = self.order_for(caller, id, |role| role == Role::Payments).await?;
        let app = self.clone();
        self.detached(async move {
            let now = app.clock.now();
            let mut outcome = app.end_hold(&order.id, HoldEnd::Confirm, now, Some(&reference)).await?;
            if let Err((HoldRefusal::Expired, _)) = outcome {
                // Past its deadline, not expired yet (the timer runs behind by moments): expire it
                // now, so the payer's answer and the units agree at once. If another call ended it
                // meanwhile (a payment judged a moment earlier), the answer is what it is now.
                outcome = match app.end_hold(&order.id, HoldEnd::Expire, now, None).await? {
                    Ok(expired) => Err((HoldRefusal::NotHeld(OrderStatus::Expired), expired)),
                    other => other,
                };
            }
            match outcome {
                Ok(order) => Ok(HoldAnswer { order, replayed: false }),
                Err((HoldRefusal::NotHeld(OrderStatus::Confirmed), order))
                    if order.payment_reference.as_deref() == Some(reference.as_str()) =>
                {
                    Ok(HoldAnswer { order, replayed: true })
                }
                Err((HoldRefusal::NotHeld(OrderStatus::Expired), order)) => {
                    Err(ServiceError::HoldExpired(Box::new(order)))
                }
                Err((HoldRefusal::NotHeld(status), _)) => Err(ServiceError::OrderNotHeld(status)),
                Err((refusal, _)) => Err(ServiceError::Internal(Box::new(refusal))),
            }
        })
        .await
    }

    /// Cancels a held order: by its buyer or an admin.
    pub async fn cancel_order(self: &Arc<Self>, caller: &Caller, id: &OrderId) -> Result<HoldAnswer, ServiceError> {
        let order = self.order_for(caller, id, |role| role == Role::Admin).await?;
        let app = self.clone();
        self.detached(async move {
            match app.end_hold(&order.id, HoldEnd::Cancel, app.clock.now(), None).await? {
                Ok(order) => Ok(HoldAnswer { order, replayed: false }),
                Err((HoldRefusal::NotHeld(OrderStatus::Cancelled), order)) => Ok(HoldAnswer { order, replayed: true }),
                Err((HoldRefusal::NotHeld(status), _)) => Err(ServiceError::OrderNotHeld(status)),
                Err((refusal, _)) => Err(ServiceError::Internal(Box::new(refusal))),
            }
        })
        .await
    }

    /// The order `id`, if the caller may act on it: it is theirs, or their role (`any_order`)
    /// may act on every order. Anyone else hears it does not exist.
    async fn order_for(
        &self,
        caller: &Caller,
        id: &OrderId,
        any_order: impl Fn(Role) -> bool,
    ) -> Result<OrderRecord, ServiceError> {
        match self.records.get_order(id).await? {
            Some(order) if order.buyer_id == caller.user_id || any_order(caller.role) => Ok(order),
            _ => Err(ServiceError::OrderNotFound),
        }
    }

    /// Ends a hold in the record, then in the hot state; the record's outcome is returned. The
    /// caller runs it detached or in a task of its own (two writes).
    pub(super) async fn end_hold(
        self: &Arc<Self>,
        id: &OrderId,
        end: HoldEnd,
        at: UnixMillis,
        reference: Option<&str>,
    ) -> Result<crate::store::HoldOutcome, ServiceError> {
        let change = HoldChange { id: id.clone(), end, at, reference: reference.map(str::to_owned) };
        let outcome = self.committer.end_hold(change).await?.ok_or(ServiceError::OrderNotFound)?;
        if let Ok(ended) = &outcome {
            metrics::counter!("flashsale_holds_ended_total", "outcome" => ended.status.as_str()).increment(1);
        }
        // Also when the record says the hold had ended already: the call that ended it may have
        // died (or lost its answer) before the hot state heard. Settling is idempotent.
        let ended = match &outcome {
            Ok(ended) => Some(ended),
            Err((HoldRefusal::NotHeld(status), current)) if *status != OrderStatus::Held => Some(current),
            Err(_) => None,
        };
        if let Some(ended) = ended {
            if let Err(error) = self.settle_hold(ended).await {
                // The record's word stands; the hot state follows in the background.
                tracing::warn!(order = %ended.id, error = ?error, "could not settle an ended hold in the hot state; retrying in the background");
                let ended = ended.clone();
                self.retry_in_background(move |app| {
                    let ended = ended.clone();
                    Box::pin(async move { app.settle_hold(&ended).await })
                });
            }
        }
        Ok(outcome)
    }

    /// Applies an ended hold to the hot state: a confirmed one may sell the sale out, a given-back
    /// one serves the line.
    async fn settle_hold(self: &Arc<Self>, ended: &OrderRecord) -> Result<(), ServiceError> {
        let settled = match self.hot.end_hold(ended, self.clock.now()).await {
            // Not loaded (an ended sale after a restart): its next load reads the record.
            Err(HotError::Refused(crate::domain::PurchaseRefusal::SaleNotFound)) => return Ok(()),
            other => other?,
        };
        self.feeds.touch(&ended.sale_id);
        self.hand_on(&ended.sale_id, settled.handed);
        if settled.sold_out {
            self.end_sold_out(&ended.sale_id).await;
        }
        Ok(())
    }

    /// Makes the holds the line was given durable, each in a task of its own (a purchase's path:
    /// commit, then confirm or release), and wakes the expiry timer for their deadlines.
    pub(super) fn hand_on(&self, sale: &SaleId, handed: Handed) {
        for buyer in &handed.dropped {
            tracing::info!(%sale, %buyer, "a waiting buyer's quantity can no longer be served: taken out of the line");
        }
        // Out of the line: no longer a place to keep.
        let left: Vec<_> =
            handed.served.iter().map(|o| o.buyer_id.clone()).chain(handed.dropped.iter().cloned()).collect();
        self.forget_places(sale, left);
        let Some(app) = self.me.upgrade() else { return };
        for order in handed.served {
            tracing::info!(sale = %order.sale_id, order = %order.id, buyer = %order.buyer_id, "units given back go to the head of the line");
            metrics::counter!("flashsale_waitlist_served_total").increment(1);
            let app = app.clone();
            self.tasks.spawn(async move {
                if let Err(error) = app.make_durable(order).await {
                    tracing::warn!(error = ?error, "a hold for the head of the line was not made durable");
                }
            });
        }
    }

    /// Expires every hold whose deadline has passed at `now`; returns the next deadline known.
    /// Run by the scheduler's task (each expiry is two writes: no request can cancel them).
    pub(super) async fn expire_due_holds(
        self: &Arc<Self>,
        now: UnixMillis,
    ) -> Result<Option<UnixMillis>, ServiceError> {
        loop {
            let holds = self.records.earliest_holds(EXPIRY_BATCH).await?;
            let full = holds.len() == EXPIRY_BATCH;
            let due: Vec<&OrderRecord> = holds.iter().filter(|h| h.expires_at.is_some_and(|d| d <= now)).collect();
            let next = holds.iter().filter_map(|h| h.expires_at).find(|d| *d > now);
            // All at once, so that the group committer ends them in a few transactions. Another
            // node may expire the same holds at the same moment: the record lets one win each.
            let ended =
                futures::future::join_all(due.iter().map(|hold| self.end_hold(&hold.id, HoldEnd::Expire, now, None)))
                    .await;
            for (hold, outcome) in due.iter().zip(ended) {
                if outcome?.is_ok() {
                    tracing::info!(sale = %hold.sale_id, order = %hold.id, "hold expired");
                }
            }
            if next.is_some() || !full || due.is_empty() {
                return Ok(next);
            }
        }
    }

    /// Puts the caller in a sale's line, or answers the place they have.
    pub async fn join_waitlist(
        self: &Arc<Self>,
        caller: &Caller,
        sale_id: SaleId,
        quantity: u32,
    ) -> Result<WaitlistPlace, ServiceError> {
        let now = self.clock.now();
        let request = JoinRequest {
            sale_id,
            entry: WaitlistEntry {
                order_id: OrderId::generate(),
                buyer_id: caller.user_id.clone(),
                buyer_name: caller.display_name.clone(),
                quantity,
                joined_at: now,
            },
            now,
        };
        // Detached: the place is taken in the hot store (one atomic step), then kept in the
        // record so that the line outlives the hot state; a caller that goes between the two
        // must not leave a place the record does not know.
        let app = self.clone();
        self.detached(async move {
            let place = match app.hot.join_waitlist(&request).await {
                Err(HotError::Refused(crate::domain::PurchaseRefusal::SaleNotFound)) => {
                    app.load_sale(&request.sale_id).await?;
                    app.hot.join_waitlist(&request).await?
                }
                other => other?,
            };
            app.feeds.touch(&request.sale_id);
            // A buyer who had a place keeps the one stored first (this entry is then ignored).
            if let Err(error) = app.records.save_waitlist_entry(&request.sale_id, &request.entry).await {
                tracing::warn!(sale = %request.sale_id, error = ?error, "could not keep a place in line in the record; retrying in the background");
                let (sale, entry) = (request.sale_id.clone(), request.entry.clone());
                app.retry_in_background(move |app| {
                    let (sale, entry) = (sale.clone(), entry.clone());
                    Box::pin(async move { Ok(app.records.save_waitlist_entry(&sale, &entry).await?) })
                });
            }
            Ok(place)
        })
        .await
    }

    /// Forgets places in a sale's line in the record (left, served or dropped), retrying in the
    /// background when the record cannot be reached (a place kept too long only comes back,
    /// after a restart, as a buyer already served or gone: `App::restore_line` skips those).
    pub(super) fn forget_places(&self, sale: &SaleId, buyers: Vec<crate::domain::UserId>) {
        if buyers.is_empty() {
            return;
        }
        let sale = sale.clone();
        self.retry_in_background_now(move |app| {
            let (sale, buyers) = (sale.clone(), buyers.clone());
            Box::pin(async move { Ok(app.records.remove_waitlist_entries(&sale, &buyers).await?) })
        });
    }

    /// Takes the caller out of a sale's line; false when they were not in it.
    pub async fn leave_waitlist(self: &Arc<Self>, caller: &Caller, sale: &SaleId) -> Result<bool, ServiceError> {
        let (app, sale, buyer) = (self.clone(), sale.clone(), caller.user_id.clone());
        // Detached: leaving may hand spare units to the next in line, whose hold must then be
        // made durable whatever the caller does.
        self.detached(async move {
            let left = match app.hot.leave_waitlist(&sale, &buyer, app.clock.now()).await {
                Err(HotError::Refused(crate::domain::PurchaseRefusal::SaleNotFound)) => None,
                other => other?,
            };
            let Some(handed) = left else { return Ok(false) };
            app.feeds.touch(&sale);
            app.forget_places(&sale, vec![buyer.clone()]);
            app.hand_on(&sale, handed);
            Ok(true)
        })
        .await
    }

    /// The caller's place in a sale's line, if any.
    pub async fn waitlist_place(&self, caller: &Caller, sale: &SaleId) -> Result<Option<WaitlistPlace>, ServiceError> {
        match self.hot.waitlist_place(sale, &caller.user_id).await {
            Err(HotError::Refused(crate::domain::PurchaseRefusal::SaleNotFound)) => Ok(None),
            other => Ok(other?),
        }
    }
}
