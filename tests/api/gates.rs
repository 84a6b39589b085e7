//! Test doubles around the real backends that stop a purchase at a chosen step until the test
//! lets it go, or make the next commit fail: cancellation at each await point of a purchase made
//! deterministic instead of timed.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flashsale::backends::Backends;
use flashsale::domain::{
    CommitOutcome, Email, EndReason, EventsPage, IdempotencyKey, OrderId, OrderRecord, ProductId, ProductRecord,
    SaleId, SaleRecord, SaleView, UnixMillis, UserId, UserRecord, WaitlistEntry, WaitlistPlace,
};
use flashsale::store::{
    Confirmed, Handed, HoldChange, HoldOutcome, HoldSettled, HotError, HotStore, JoinRequest, OrderFilter, RecordStore,
    Reservation, ReserveRequest, Settled, StoreError,
};
use tokio::sync::oneshot;

/// Where a purchase can be stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// After the hot store reserved, before the reservation is handed back.
    Reserved,
    /// Inside the record's commit of the order's batch.
    Commit,
    /// Before the hot store confirms a durable order.
    Confirm,
    /// Before the hot store releases a reservation whose commit failed.
    Release,
}

/// A stop armed at one step: the first call that reaches it reports in and waits.
struct Armed {
    step: Step,
    reached: oneshot::Sender<()>,
    go: oneshot::Receiver<()>,
}

/// Shared by the wrapped backends and the test.
#[derive(Default)]
pub struct Gates {
    armed: Mutex<Option<Armed>>,
    /// Fail the next commit (as if the record were unreachable).
    fail_next_commit: Mutex<bool>,
}

/// The test's end of an armed stop.
pub struct Stop {
    /// Resolves when a call reaches the step.
    pub reached: oneshot::Receiver<()>,
    /// Lets it go on.
    pub go: oneshot::Sender<()>,
}

impl Gates {
    /// Stops the next call that reaches `step`.
    pub fn arm(&self, step: Step) -> Stop {
        let (reached_tx, reached) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some(Armed { step, reached: reached_tx, go: go_rx });
        Stop { reached, go }
    }

    /// Makes the next commit fail with `Unavailable`.
    pub fn fail_next_commit(&self) {
        *self.fail_next_commit.lock().unwrap() = true;
    }

    async fn pass(&self, step: Step) {
        let armed = {
            let mut slot = self.armed.lock().unwrap();
            match slot.take() {
                Some(armed) if armed.step == step => Some(armed),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        if let Some(Armed { reached, go, .. }) = armed {
            let _ = reached.send(());
            if go.await.is_err() {
                // The test dropped its stop without letting the call go: it never goes on, as in
                // a process killed right there.
                std::future::pending::<()>().await;
            }
        }
    }

    /// `backends` with this stop and failure switch in front of them.
    pub fn wrap(self: &Arc<Self>, backends: Backends) -> Backends {
        Backends {
            records: Arc::new(GatedRecords { inner: backends.records, gates: self.clone() }),
            hot: Arc::new(GatedHot { inner: backends.hot, gates: self.clone() }),
            queue: backends.queue,
            shared: backends.shared,
        }
    }
}

struct GatedRecords {
    inner: Arc<dyn RecordStore>,
    gates: Arc<Gates>,
}

struct GatedHot {
    inner: Arc<dyn HotStore>,
    gates: Arc<Gates>,
}

#[derive(Debug, thiserror::Error)]
#[error("commit failed by the test")]
struct InjectedFailure;

#[async_trait]
impl RecordStore for GatedRecords {
    async fn create_user(&self, user: UserRecord) -> Result<(), StoreError> {
        self.inner.create_user(user).await
    }
    async fn upsert_user_by_email(&self, user: UserRecord) -> Result<UserRecord, StoreError> {
        self.inner.upsert_user_by_email(user).await
    }
    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        self.inner.user_by_email(email).await
    }
    async fn create_product(&self, product: ProductRecord) -> Result<(), StoreError> {
        self.inner.create_product(product).await
    }
    async fn products_page(&self, after: Option<&ProductId>, limit: usize) -> Result<Vec<ProductRecord>, StoreError> {
        self.inner.products_page(after, limit).await
    }
    async fn get_product(&self, id: &ProductId) -> Result<Option<ProductRecord>, StoreError> {
        self.inner.get_product(id).await
    }
    async fn add_stock(&self, id: &ProductId, units: i64) -> Result<ProductRecord, StoreError> {
        self.inner.add_stock(id, units).await
    }
    async fn create_sale(&self, sale: SaleRecord) -> Result<SaleRecord, StoreError> {
        self.inner.create_sale(sale).await
    }
    async fn get_sale(&self, id: &SaleId) -> Result<Option<SaleRecord>, StoreError> {
        self.inner.get_sale(id).await
    }
    async fn sales_page(
        &self,
        product: Option<&ProductId>,
        before: Option<&SaleId>,
        limit: usize,
    ) -> Result<Vec<SaleRecord>, StoreError> {
        self.inner.sales_page(product, before, limit).await
    }
    async fn open_sales(&self) -> Result<Vec<SaleRecord>, StoreError> {
        self.inner.open_sales().await
    }
    async fn activate_sale(&self, id: &SaleId, start: UnixMillis) -> Result<(SaleRecord, bool), StoreError> {
        self.inner.activate_sale(id, start).await
    }
    async fn next_generation(&self, id: &SaleId) -> Result<SaleRecord, StoreError> {
        self.inner.next_generation(id).await
    }
    async fn end_sale(&self, id: &SaleId, reason: EndReason, at: UnixMillis) -> Result<(SaleRecord, bool), StoreError> {
        self.inner.end_sale(id, reason, at).await
    }
    async fn commit_orders(&self, batch: &[OrderRecord]) -> Result<Vec<CommitOutcome>, StoreError> {
        self.gates.pass(Step::Commit).await;
        if std::mem::take(&mut *self.gates.fail_next_commit.lock().unwrap()) {
            return Err(StoreError::Unavailable(Box::new(InjectedFailure)));
        }
        self.inner.commit_orders(batch).await
    }
    async fn get_order(&self, id: &OrderId) -> Result<Option<OrderRecord>, StoreError> {
        self.inner.get_order(id).await
    }
    async fn orders_of_buyer(&self, buyer: &UserId, sale: Option<&SaleId>) -> Result<Vec<OrderRecord>, StoreError> {
        self.inner.orders_of_buyer(buyer, sale).await
    }
    async fn orders_of_sale(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, StoreError> {
        self.inner.orders_of_sale(sale).await
    }
    async fn orders_page(
        &self,
        filter: &OrderFilter,
        after: Option<&OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        self.inner.orders_page(filter, after, limit).await
    }
    async fn count_orders(&self, filter: &OrderFilter) -> Result<u64, StoreError> {
        self.inner.count_orders(filter).await
    }
    async fn order_events(&self, after: u64, sale: Option<&SaleId>, limit: usize) -> Result<EventsPage, StoreError> {
        self.inner.order_events(after, sale, limit).await
    }
    async fn prune_order_events(&self, before: UnixMillis) -> Result<u64, StoreError> {
        self.inner.prune_order_events(before).await
    }
    async fn order_by_key(
        &self,
        buyer: &UserId,
        sale: &SaleId,
        key: &IdempotencyKey,
    ) -> Result<Option<OrderRecord>, StoreError> {
        self.inner.order_by_key(buyer, sale, key).await
    }
    async fn end_holds(&self, batch: &[HoldChange]) -> Result<Vec<Option<HoldOutcome>>, StoreError> {
        self.inner.end_holds(batch).await
    }
    async fn earliest_holds(&self, limit: usize) -> Result<Vec<OrderRecord>, StoreError> {
        self.inner.earliest_holds(limit).await
    }
    async fn save_waitlist_entry(&self, sale: &SaleId, entry: &WaitlistEntry) -> Result<(), StoreError> {
        self.inner.save_waitlist_entry(sale, entry).await
    }
    async fn remove_waitlist_entries(&self, sale: &SaleId, buyers: &[UserId]) -> Result<(), StoreError> {
        self.inner.remove_waitlist_entries(sale, buyers).await
    }
    async fn waitlist_of_sale(&self, sale: &SaleId) -> Result<Vec<WaitlistEntry>, StoreError> {
        self.inner.waitlist_of_sale(sale).await
    }
}

#[async_trait]
impl HotStore for GatedHot {
    async fn load_sale(&self, sale: &SaleRecord, orders: &[OrderRecord]) -> Result<bool, HotError> {
        self.inner.load_sale(sale, orders).await
    }
    async fn has_sale(&self, sale: &SaleId) -> Result<bool, HotError> {
        self.inner.has_sale(sale).await
    }
    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, HotError> {
        let reservation = self.inner.reserve(request).await;
        if matches!(reservation, Ok(Reservation::New(_))) {
            self.gates.pass(Step::Reserved).await;
        }
        reservation
    }
    async fn confirm(&self, order: &OrderRecord) -> Result<Confirmed, HotError> {
        self.gates.pass(Step::Confirm).await;
        self.inner.confirm(order).await
    }
    async fn release(&self, order: &OrderRecord, now: UnixMillis) -> Result<Handed, HotError> {
        self.gates.pass(Step::Release).await;
        self.inner.release(order, now).await
    }
    async fn wait_settled(&self, order: &OrderRecord) -> Result<Settled, HotError> {
        self.inner.wait_settled(order).await
    }
    async fn set_status(&self, sale: &SaleRecord) -> Result<(), HotError> {
        self.inner.set_status(sale).await
    }
    async fn view(&self, sale: &SaleId) -> Result<Option<SaleView>, HotError> {
        self.inner.view(sale).await
    }
    async fn in_flight(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, HotError> {
        self.inner.in_flight(sale).await
    }
    async fn forget_sale(&self, sale: &SaleId) -> Result<(), HotError> {
        self.inner.forget_sale(sale).await
    }
    async fn end_hold(&self, order: &OrderRecord, now: UnixMillis) -> Result<HoldSettled, HotError> {
        self.inner.end_hold(order, now).await
    }
    async fn join_waitlist(&self, request: &JoinRequest) -> Result<WaitlistPlace, HotError> {
        self.inner.join_waitlist(request).await
    }
    async fn leave_waitlist(&self, sale: &SaleId, buyer: &UserId, now: UnixMillis) -> Result<Option<Handed>, HotError> {
        self.inner.leave_waitlist(sale, buyer, now).await
    }
    async fn waitlist_place(&self, sale: &SaleId, buyer: &UserId) -> Result<Option<WaitlistPlace>, HotError> {
        self.inner.waitlist_place(sale, buyer).await
    }
    async fn restore_line(&self, sale: &SaleId, line: &[WaitlistEntry], now: UnixMillis) -> Result<Handed, HotError> {
        self.inner.restore_line(sale, line, now).await
    }
}
