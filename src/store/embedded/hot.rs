//! In-process hot state: one [`SaleState`] per sale behind its own mutex.
//!
//! The maps hash with foldhash (seeded per process), not SipHash, which was ~6% of the
//! server's CPU in a rush. Their keys are not free for a client to choose in bulk: ids come
//! from signed tokens and from the server, and an idempotency key enters a sale's map only
//! with a purchase that reserved stock, so a sale holds at most as many as its allocation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use foldhash::HashMap;
use tokio::sync::Notify;

use crate::domain::{
    all_confirmed, check_join, check_purchase, hand_over, shown_remaining, tally, BuyerSnapshot, EndReason,
    IdempotencyKey, Leaderboard, LineSnapshot, OrderId, OrderRecord, OrderStatus, ProductId, PurchaseRefusal, SaleId,
    SaleRecord, SaleRules, SaleStatus, SaleView, UnixMillis, UserId, WaitlistEntry, WaitlistPlace, LEADERBOARD_MAX,
};
use crate::store::{
    Confirmed, Handed, HoldSettled, HotError, HotStore, JoinRequest, Reservation, ReserveRequest, Settled,
};

/// Hot state of every loaded sale.
#[derive(Default)]
pub struct MemoryHot {
    /// std RwLock: held only to find or insert a sale's `Arc`, never across an `.await`; reads
    /// (every purchase) do not contend with each other.
    sales: RwLock<HashMap<SaleId, Arc<HotSale>>>,
}

struct HotSale {
    /// std Mutex: the critical section is a few map operations (the whole atomic purchase
    /// step), never held across an `.await`, so a blocking lock is cheaper than tokio's.
    state: Mutex<SaleState>,
    /// Woken whenever an in-flight order of this sale settles; waiters re-check their key.
    settled: Notify,
}

#[derive(Debug)]
struct SaleState {
    id: SaleId,
    product_id: ProductId,
    created_at: UnixMillis,
    rules: SaleRules,
    status: SaleStatus,
    end_reason: Option<EndReason>,
    ended_at: Option<UnixMillis>,
    /// Units a new purchase may take: allocated - sold - in flight.
    remaining: i64,
    /// Units in durable HELD or CONFIRMED orders.
    sold: i64,
    /// Of `sold`, units in HELD orders.
    held: i64,
    /// Units of reservations not yet confirmed or released.
    in_flight: i64,
    /// Durable HELD orders, by id.
    holds: HashMap<OrderId, OrderRecord>,
    /// Buyers waiting for units given back, first in line first.
    line: VecDeque<WaitlistEntry>,
    /// Units given back and kept for the head of the line (too few for it yet).
    spare: i64,
    /// Units each buyer holds or has in flight.
    buyers: HashMap<UserId, u32>,
    /// Every order by (buyer, key), with whether it is durable yet.
    keys: HashMap<(UserId, IdempotencyKey), KeyEntry>,
    board: Leaderboard,
    version: u64,
}

#[derive(Debug)]
struct KeyEntry {
    order: OrderRecord,
    durable: bool,
}

impl MemoryHot {
    fn sale(&self, id: &SaleId) -> Option<Arc<HotSale>> {
        self.sales.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    fn sale_or_refuse(&self, id: &SaleId) -> Result<Arc<HotSale>, HotError> {
        self.sale(id).ok_or(HotError::Refused(PurchaseRefusal::SaleNotFound))
    }
}

impl HotSale {
    fn lock(&self) -> std::sync::MutexGuard<'_, SaleState> {
        // A panic while holding the lock cannot leave a half-applied purchase (every step
        // checks before it writes), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SaleState {
    /// Units given back go to the line first (the domain's `hand_over`): each buyer served gets
    /// a reservation of a new hold, in flight like a purchase's, for the caller to make durable.
    fn give_back(&mut self, units: i64, now: UnixMillis) -> Handed {
        let outstanding = self.held + self.in_flight;
        let handover = hand_over(&mut self.line, self.spare + units, outstanding, self.status);
        self.spare = handover.spare;
        self.remaining += handover.to_sale;
        let mut handed =
            Handed { dropped: handover.dropped.into_iter().map(|e| e.buyer_id).collect(), ..Handed::default() };
        for entry in handover.served {
            let order = entry.served(&self.id, &self.rules, now);
            self.in_flight += i64::from(order.quantity);
            *self.buyers.entry(order.buyer_id.clone()).or_insert(0) += order.quantity;
            let key = (order.buyer_id.clone(), order.idempotency_key.clone());
            self.keys.insert(key, KeyEntry { order: order.clone(), durable: false });
            handed.served.push(order);
        }
        self.version += 1;
        handed
    }

    fn take_from_buyer(&mut self, buyer: &UserId, units: u32) {
        if let Some(held) = self.buyers.get_mut(buyer) {
            *held = held.saturating_sub(units);
        }
    }

    fn sold_out(&self) -> bool {
        all_confirmed(self.rules.allocated, self.sold, self.held)
    }

    fn place(&self, buyer: &UserId) -> Option<WaitlistPlace> {
        let at = self.line.iter().position(|e| e.buyer_id == *buyer)?;
        Some(WaitlistPlace {
            position: at as u64 + 1,
            quantity: self.line[at].quantity,
            length: self.line.len() as u64,
        })
    }
}

#[async_trait]
impl HotStore for MemoryHot {
    async fn load_sale(&self, sale: &SaleRecord, orders: &[OrderRecord]) -> Result<bool, HotError> {
        let tally = tally(orders);
        let holds =
            orders.iter().filter(|o| o.status == OrderStatus::Held).map(|o| (o.id.clone(), o.clone())).collect();
        let keys = orders
            .iter()
            .map(|o| {
                let key = (o.buyer_id.clone(), o.idempotency_key.clone());
                (key, KeyEntry { order: o.clone(), durable: true })
            })
            .collect();
        let state = SaleState {
            id: sale.id.clone(),
            product_id: sale.product_id.clone(),
            created_at: sale.created_at,
            rules: sale.rules,
            status: sale.status,
            end_reason: sale.end_reason,
            ended_at: sale.ended_at,
            remaining: sale.rules.allocated - tally.sold,
            sold: tally.sold,
            held: tally.held,
            in_flight: 0,
            holds,
            line: VecDeque::new(),
            spare: 0,
            buyers: tally.units,
            keys,
            board: tally.board,
            version: crate::domain::first_version(sale.generation),
        };
        let hot = Arc::new(HotSale { state: Mutex::new(state), settled: Notify::new() });
        // Never replace a loaded sale: its in-flight reservations live only here.
        let mut sales = self.sales.write().unwrap_or_else(|e| e.into_inner());
        match sales.entry(sale.id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => Ok(false),
            std::collections::hash_map::Entry::Vacant(place) => {
                place.insert(hot);
                Ok(true)
            }
        }
    }

    async fn has_sale(&self, sale: &SaleId) -> Result<bool, HotError> {
        Ok(self.sale(sale).is_some())
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, HotError> {
        let sale = self.sale_or_refuse(&request.sale_id)?;
        let mut state = sale.lock();
        let key = (request.buyer_id.clone(), request.idempotency_key.clone());
        // Rule 5 first: a retry gets its first answer even after the sale ended.
        if let Some(entry) = state.keys.get(&key) {
            if entry.order.quantity != request.quantity {
                return Err(PurchaseRefusal::IdempotencyKeyReused.into());
            }
            return Ok(Reservation::Existing { order: entry.order.clone(), settled: entry.durable });
        }
        let bought = state.buyers.get(&request.buyer_id).copied().unwrap_or(0);
        let live =
            BuyerSnapshot { status: state.status, end_reason: state.end_reason, remaining: state.remaining, bought };
        let quantity = check_purchase(&state.rules, live, request.now, request.quantity)?;
        let (status, expires_at) = state.rules.new_order_terms(request.now);
        let order = OrderRecord {
            id: request.new_order_id.clone(),
            sale_id: request.sale_id.clone(),
            buyer_id: request.buyer_id.clone(),
            buyer_name: request.buyer_name.clone(),
            quantity: quantity.get(),
            unit_price: state.rules.unit_price,
            idempotency_key: request.idempotency_key.clone(),
            created_at: request.now,
            status,
            expires_at,
            payment_reference: None,
            settled_at: None,
        };
        let units = i64::from(quantity.get());
        state.remaining -= units;
        state.in_flight += units;
        *state.buyers.entry(request.buyer_id.clone()).or_insert(0) += quantity.get();
        state.keys.insert(key, KeyEntry { order: order.clone(), durable: false });
        state.version += 1;
        Ok(Reservation::New(order))
    }

    async fn confirm(&self, order: &OrderRecord) -> Result<Confirmed, HotError> {
        let sale = self.sale_or_refuse(&order.sale_id)?;
        let confirmed = {
            let mut state = sale.lock();
            let key = (order.buyer_id.clone(), order.idempotency_key.clone());
            let units = i64::from(order.quantity);
            match state.keys.get_mut(&key) {
                // Confirming twice changes nothing.
                Some(entry) if entry.order.id == order.id && entry.durable => {
                    return Ok(Confirmed { sold_out: state.sold_out() });
                }
                Some(entry) if entry.order.id == order.id => {
                    entry.durable = true;
                    state.in_flight -= units;
                }
                // Released (its commit looked failed) but durable after all: take the units
                // again and credit the buyer.
                _ => {
                    state.keys.insert(key, KeyEntry { order: order.clone(), durable: true });
                    state.remaining -= units;
                    *state.buyers.entry(order.buyer_id.clone()).or_insert(0) += order.quantity;
                }
            }
            state.sold += units;
            if order.status == OrderStatus::Held {
                // Ranked once paid (`end_hold`).
                state.held += units;
                state.holds.insert(order.id.clone(), order.clone());
            } else {
                state.board.record(&order.buyer_id, &order.buyer_name, units, order.created_at);
            }
            state.version += 1;
            Confirmed { sold_out: state.sold_out() }
        };
        sale.settled.notify_waiters();
        Ok(confirmed)
    }

    async fn release(&self, order: &OrderRecord, now: UnixMillis) -> Result<Handed, HotError> {
        let sale = self.sale_or_refuse(&order.sale_id)?;
        let handed = {
            let mut state = sale.lock();
            let key = (order.buyer_id.clone(), order.idempotency_key.clone());
            if state.keys.get(&key).is_some_and(|e| e.order.id == order.id && !e.durable) {
                state.keys.remove(&key);
                state.in_flight -= i64::from(order.quantity);
                state.take_from_buyer(&order.buyer_id, order.quantity);
                state.give_back(i64::from(order.quantity), now)
            } else {
                Handed::default()
            }
        };
        sale.settled.notify_waiters();
        Ok(handed)
    }

    async fn wait_settled(&self, order: &OrderRecord) -> Result<Settled, HotError> {
        let sale = self.sale_or_refuse(&order.sale_id)?;
        let key = (order.buyer_id.clone(), order.idempotency_key.clone());
        loop {
            // Created before the check: `notify_waiters` wakes futures created before it runs.
            let notified = sale.settled.notified();
            match sale.lock().keys.get(&key) {
                Some(entry) if entry.order.id == order.id && entry.durable => return Ok(Settled::Confirmed),
                Some(entry) if entry.order.id == order.id => {}
                _ => return Ok(Settled::Released),
            }
            notified.await;
        }
    }

    async fn set_status(&self, sale: &SaleRecord) -> Result<(), HotError> {
        let hot = self.sale_or_refuse(&sale.id)?;
        let mut state = hot.lock();
        state.status = sale.status;
        state.end_reason = sale.end_reason;
        state.ended_at = sale.ended_at;
        state.rules.start = sale.rules.start;
        if sale.status == SaleStatus::Ended {
            // The line closes with the sale; its buyers learn it from the sale's status.
            state.line.clear();
        }
        state.version += 1;
        Ok(())
    }

    async fn view(&self, sale: &SaleId) -> Result<Option<SaleView>, HotError> {
        let Some(hot) = self.sale(sale) else { return Ok(None) };
        let state = hot.lock();
        Ok(Some(SaleView {
            sale_id: sale.clone(),
            product_id: state.product_id.clone(),
            version: state.version,
            rules: state.rules,
            status: state.status,
            end_reason: state.end_reason,
            ended_at: state.ended_at,
            sold: state.sold,
            held: state.held,
            remaining: shown_remaining(state.status, state.rules.allocated, state.sold, state.remaining),
            waitlist: state.line.len() as u64,
            in_flight: state.in_flight,
            leaderboard: state.board.top(LEADERBOARD_MAX),
            total_buyers: state.board.len() as u64,
            created_at: state.created_at,
            line: None,
        }))
    }

    async fn in_flight(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, HotError> {
        let Some(hot) = self.sale(sale) else { return Ok(Vec::new()) };
        let state = hot.lock();
        let mut orders: Vec<_> = state.keys.values().filter(|e| !e.durable).map(|e| e.order.clone()).collect();
        orders.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(orders)
    }

    async fn forget_sale(&self, sale: &SaleId) -> Result<(), HotError> {
        self.sales.write().unwrap_or_else(|e| e.into_inner()).remove(sale);
        Ok(())
    }

    async fn end_hold(&self, order: &OrderRecord, now: UnixMillis) -> Result<HoldSettled, HotError> {
        let sale = self.sale_or_refuse(&order.sale_id)?;
        let settled = {
            let mut state = sale.lock();
            let units = i64::from(order.quantity);
            let key = (order.buyer_id.clone(), order.idempotency_key.clone());
            let in_flight = state.keys.get(&key).is_some_and(|e| e.order.id == order.id && !e.durable);
            if order.status == OrderStatus::Held {
                return Ok(HoldSettled { handed: Handed::default(), sold_out: state.sold_out() });
            }
            if state.holds.remove(&order.id).is_some() {
                state.held -= units;
            } else if in_flight {
                // The record ended the hold before this state heard it was durable (its confirm
                // is still to come, or was lost): settle it from in flight; the late confirm
                // then finds it confirmed already.
                state.in_flight -= units;
                state.sold += units;
            } else {
                // Settled before (or not a hold this state holds): nothing more to do.
                return Ok(HoldSettled { handed: Handed::default(), sold_out: state.sold_out() });
            }
            if let Some(entry) = state.keys.get_mut(&key) {
                entry.order = order.clone();
                entry.durable = true;
            }
            let handed = if order.status == OrderStatus::Confirmed {
                state.board.record(&order.buyer_id, &order.buyer_name, units, order.bought_at());
                // Fewer units may come back now: units kept for the head may never suffice.
                state.give_back(0, now)
            } else {
                state.sold -= units;
                state.take_from_buyer(&order.buyer_id, order.quantity);
                state.give_back(units, now)
            };
            HoldSettled { handed, sold_out: state.sold_out() }
        };
        sale.settled.notify_waiters();
        Ok(settled)
    }

    async fn join_waitlist(&self, request: &JoinRequest) -> Result<WaitlistPlace, HotError> {
        let sale = self.sale_or_refuse(&request.sale_id)?;
        let mut state = sale.lock();
        let entry = &request.entry;
        if let Some(place) = state.place(&entry.buyer_id) {
            return Ok(place);
        }
        let bought = state.buyers.get(&entry.buyer_id).copied().unwrap_or(0);
        let buyer =
            BuyerSnapshot { status: state.status, end_reason: state.end_reason, remaining: state.remaining, bought };
        let live = LineSnapshot { buyer, outstanding: state.held + state.in_flight };
        check_join(&state.rules, live, request.now, entry.quantity)?;
        state.line.push_back(entry.clone());
        state.version += 1;
        Ok(state.place(&entry.buyer_id).expect("just joined"))
    }

    async fn leave_waitlist(&self, sale: &SaleId, buyer: &UserId, now: UnixMillis) -> Result<Option<Handed>, HotError> {
        let sale = self.sale_or_refuse(sale)?;
        let mut state = sale.lock();
        let Some(at) = state.line.iter().position(|e| e.buyer_id == *buyer) else { return Ok(None) };
        state.line.remove(at);
        // The line moved up: units kept for the old head may serve the new one, or go on sale.
        Ok(Some(state.give_back(0, now)))
    }

    async fn restore_line(&self, sale: &SaleId, line: &[WaitlistEntry], now: UnixMillis) -> Result<Handed, HotError> {
        let sale = self.sale_or_refuse(sale)?;
        let mut state = sale.lock();
        if line.is_empty() || !state.line.is_empty() || state.status == SaleStatus::Ended {
            return Ok(Handed::default());
        }
        state.line.extend(line.iter().cloned());
        // Nothing is on sale while buyers wait: what is left goes to them first.
        let units = std::mem::take(&mut state.remaining);
        Ok(state.give_back(units, now))
    }

    async fn waitlist_place(&self, sale: &SaleId, buyer: &UserId) -> Result<Option<WaitlistPlace>, HotError> {
        let sale = self.sale_or_refuse(sale)?;
        let state = sale.lock();
        Ok(state.place(buyer))
    }
}
