//! Reconciliation of a shared hot state (Redis) with the record, at start-up and every few
//! seconds on every node. The record is the truth:
//!
//! - a reservation in flight for longer than any commit takes belonged to a node that died or
//!   lost its answer: if its order is in the record it is confirmed, otherwise released (its
//!   units go back to stock, its key is freed) — never lost, never sold twice;
//! - a sale whose hot counters or status disagree with the record while it is quiet (nothing in
//!   flight, no hot change while the record was read) is dropped from the hot state and rebuilt
//!   from the record (e.g. Redis restarted from an old append-only file, or lost its keys);
//! - a sale the hot state ended but the record did not (a node died in between) is ended, and so
//!   is a sale whose every unit is durably sold (the node that sold its last unit died first).
//!
//! Concurrent reconciliations on several nodes are safe: confirm and release are idempotent,
//! and a rebuild reads only the record.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{SaleRecord, SaleStatus, UnixMillis};

use super::{App, ServiceError};

pub(super) async fn run(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = app.reconcile().await {
            tracing::warn!(error = ?error, "reconciliation failed; retrying later");
        }
    }
}

impl App {
    /// Reconciles every open sale of the record with the hot state.
    pub(super) async fn reconcile(&self) -> Result<(), ServiceError> {
        let now = self.clock.now();
        for sale in self.records.open_sales().await? {
            if let Err(error) = self.reconcile_sale(&sale, now).await {
                tracing::warn!(sale = %sale.id, error = ?error, "could not reconcile the sale");
            }
        }
        Ok(())
    }

    async fn reconcile_sale(&self, sale: &SaleRecord, now: UnixMillis) -> Result<(), ServiceError> {
        if !self.hot.has_sale(&sale.id).await? {
            tracing::warn!(sale = %sale.id, "hot state missing (lost by the hot store): rebuilding from the record");
            self.load_sale(&sale.id).await?;
            self.feeds.touch(&sale.id);
            return Ok(());
        }
        let in_flight = self.hot.in_flight(&sale.id).await?;
        let mut settled = 0;
        let orphan_before = now.0 - self.orphan_after.as_millis() as i64;
        for order in in_flight.iter().filter(|o| o.created_at.0 <= orphan_before) {
            let stored = self.records.order_by_key(&order.buyer_id, &order.sale_id, &order.idempotency_key).await?;
            // Each settlement is one idempotent script: a reconciliation stopped between two of
            // them (shutdown) leaves the rest for the next round.
            let is_stored = stored.is_some();
            if let Some(stored) = stored.filter(|stored| stored.id == order.id && stored.status.takes_units()) {
                tracing::warn!(sale = %sale.id, order = %order.id, "orphaned reservation is durable: confirming it");
                // As the record has it (a hold may have ended since).
                if self.confirm(&stored).await? {
                    // The dead node's order was the last unit.
                    self.end_sold_out(&sale.id).await;
                }
                self.metrics.swept_confirmed.increment(1);
            } else if order.idempotency_key.as_str().starts_with("waitlist-") && !is_stored {
                // A hold the line gave to its head, whose node died (or lost the script's answer)
                // before making it durable: make it durable now rather than take the buyer's
                // turn away (the record still refuses anything past the allocation).
                tracing::warn!(sale = %sale.id, order = %order.id, "orphaned hold from the line: making it durable");
                if let Some(app) = self.me.upgrade() {
                    if let Err(error) = app.make_durable(order.clone()).await {
                        tracing::warn!(sale = %sale.id, order = %order.id, error = ?error, "could not make an orphaned hold from the line durable");
                    }
                }
            } else {
                tracing::warn!(sale = %sale.id, order = %order.id, "orphaned reservation was never durable (or its hold ended since): releasing it");
                let handed = self.hot.release(order, now).await?;
                self.hand_on(&sale.id, handed);
                self.metrics.swept_released.increment(1);
            }
            settled += 1;
        }
        if settled > 0 {
            self.feeds.touch(&sale.id);
        }
        if settled < in_flight.len() {
            // Live purchases are under way: counters legitimately differ until they settle.
            return Ok(());
        }
        // Compare only a quiet sale: nothing in flight, and no hot change while the record was
        // read (every reservation bumps the version, and a commit always follows a
        // reservation), so both sides describe the same instant.
        let Some(before) = self.hot.view(&sale.id).await? else { return Ok(()) };
        let record = self.records.get_sale(&sale.id).await?.ok_or(ServiceError::SaleNotFound)?;
        let Some(after) = self.hot.view(&sale.id).await? else { return Ok(()) };
        if after.version != before.version || (before.status != SaleStatus::Ended && before.in_flight != 0) {
            return Ok(());
        }
        if before.status == SaleStatus::Ended && record.status != SaleStatus::Ended {
            let reason = before.end_reason.unwrap_or(crate::domain::EndReason::TimeUp);
            tracing::warn!(sale = %sale.id, ?reason, "sale ended in the hot state only: ending it in the record");
            return self.end_sale_now(&sale.id, reason).await;
        }
        let drifted = before.sold != record.sold || before.held != record.held || before.status != record.status;
        // A hold ends in the record first, then in the hot state, with nothing in flight between:
        // a round that reads the record between the two sees a difference that is about to go.
        // Only the same difference seen by two rounds in a row is drift.
        let seen = (before.sold, before.held, record.sold, record.held);
        let confirmed_drift = {
            let mut suspects = self.drift_suspects.lock().unwrap_or_else(|e| e.into_inner());
            match drifted {
                false => {
                    suspects.remove(&sale.id);
                    false
                }
                true if suspects.get(&sale.id) == Some(&seen) => {
                    suspects.remove(&sale.id);
                    true
                }
                true => {
                    suspects.insert(sale.id.clone(), seen);
                    false
                }
            }
        };
        if drifted && !confirmed_drift {
            return Ok(());
        }
        if drifted {
            tracing::warn!(
                sale = %sale.id, hot_sold = before.sold, record_sold = record.sold,
                hot_status = ?before.status, record_status = ?record.status,
                "hot state drifted from the record: rebuilding it"
            );
            // Forget, then rebuild in a new generation (versions keep growing); stopped between
            // the two, the next use or round rebuilds it.
            self.hot.forget_sale(&sale.id).await?;
            self.load_sale(&sale.id).await?;
            self.feeds.touch(&sale.id);
        } else if record.status != SaleStatus::Ended
            && crate::domain::all_confirmed(record.rules.allocated, record.sold, record.held)
        {
            // Every unit is durably sold, yet the sale is open (the node that confirmed its last
            // unit died before ending it).
            self.end_sold_out(&sale.id).await;
        }
        Ok(())
    }
}
