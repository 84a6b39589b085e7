//! The durable record in redb: one file, ACID write transactions, each commit fsynced
//! (`Durability::Immediate`, redb's default). Records are stored in the format of `format.rs`
//! (versioned JSON documents). Every call runs on the
//! blocking pool.
//!
//! Tables: `users` (id -> user), `users_by_email` (email -> id), `products` (id -> product),
//! `sales` (id -> sale), `orders` (id -> order), `waitlist` ((sale, buyer) -> place),
//! `order_events` (sequence -> event). Ids are UUIDv7, so key order is creation order.
//!
//! Order events are numbered from the last one in the table, inside the write transaction that
//! stores the orders or ends the holds they describe: redb runs one write transaction at a
//! time, so sequences follow commit order without gaps, and the events cost no fsync of their
//! own. Pruning old events never deletes the newest, which carries the numbering on.
//!
//! An order batch inserts each order once, into `orders`, whose keys grow in creation order:
//! a batch dirties a few pages at the tail of one B-tree before its fsync. Indexes keyed by
//! buyer would dirty one page per order (random keys), and even a (sale, order) index would
//! double the inserts; so the by-sale, per-buyer and idempotency-key indexes live in memory
//! ([`OrderIndex`]), rebuilt from `orders` when the store opens (one scan; about 200 bytes of
//! memory per order). Files written before the by-sale index moved to memory still hold an
//! `orders_by_sale` table; opening deletes it.

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use foldhash::{HashMap, HashSet};
use redb::{Database, ReadableTable, TableDefinition};

use super::format::{decode_event, encode_event, event_sale, Stored};
use crate::domain::{
    ended_hold, hold_counters, judge_hold, judge_order, CommitOutcome, Email, EndReason, EventsPage, IdempotencyKey,
    OrderEvent, OrderEventKind, OrderId, OrderRecord, OrderStatus, ProductId, ProductRecord, SaleId, SaleRecord,
    SaleStatus, UnixMillis, UserId, UserRecord, WaitlistEntry,
};
use crate::store::{HoldChange, HoldOutcome, OrderFilter, RecordStore, StoreError};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const USERS_BY_EMAIL: TableDefinition<&str, &str> = TableDefinition::new("users_by_email");
const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products");
const SALES: TableDefinition<&str, &[u8]> = TableDefinition::new("sales");
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
/// Places in sales' lines, by (sale id, buyer id).
const WAITLIST: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("waitlist");
/// Order events by sequence.
const ORDER_EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("order_events");
/// The newest events kept in memory for followers near the head (~0.5 s of a rush).
const EVENTS_TAIL: usize = 16_384;
/// Most events one pruning transaction deletes.
const PRUNE_CHUNK: usize = 10_000;
/// The on-disk by-sale index of earlier versions, deleted at open (now kept in memory).
const OBSOLETE_ORDERS_BY_SALE: TableDefinition<(&str, &str), ()> = TableDefinition::new("orders_by_sale");

/// The redb-backed record store.
#[derive(Clone)]
pub struct RedbRecords {
    db: Arc<Database>,
    /// std Mutex: held for map operations only, never across an `.await` or a disk write.
    index: Arc<Mutex<OrderIndex>>,
    /// Serialises `commit_orders` from its duplicate check to its index update, so two
    /// batches can never both store the same idempotency key.
    order_writer: Arc<Mutex<()>>,
}

/// In-memory indexes over the durable `orders` table.
#[derive(Default)]
struct OrderIndex {
    /// A sale's orders, by id (creation order).
    by_sale: HashMap<SaleId, std::collections::BTreeSet<OrderId>>,
    /// A buyer's orders, oldest first.
    by_buyer: HashMap<UserId, Vec<OrderId>>,
    /// The order of each (buyer, sale, idempotency key).
    by_key: HashMap<(UserId, SaleId, IdempotencyKey), OrderId>,
    /// HELD orders by deadline (the expiry timer's question).
    holds: std::collections::BTreeSet<(UnixMillis, OrderId)>,
    /// Each sale's order events, by sequence: a one-sale feed reads its own events, not every
    /// sale's (about 8 bytes per event).
    events_by_sale: HashMap<SaleId, Vec<u64>>,
    /// The newest event in `events_by_sale`: every event up to it is there.
    events_indexed: u64,
    /// The oldest event kept, as the table holds it.
    events_oldest: Option<u64>,
    /// The newest events (at most [`EVENTS_TAIL`]), without a gap up to `events_indexed`:
    /// followers near the head, which is where they are during a rush, read them here, with no
    /// read transaction, decoding or blocking-pool hop.
    tail: std::collections::VecDeque<OrderEvent>,
}

impl OrderIndex {
    fn add(&mut self, order: &OrderRecord) {
        self.by_sale.entry(order.sale_id.clone()).or_default().insert(order.id.clone());
        self.by_buyer.entry(order.buyer_id.clone()).or_default().push(order.id.clone());
        self.by_key.insert(Self::key(order), order.id.clone());
        if let (OrderStatus::Held, Some(deadline)) = (order.status, order.expires_at) {
            self.holds.insert((deadline, order.id.clone()));
        }
    }

    /// Indexes a stored event by sale (events come in sequence order).
    fn index_event(&mut self, sale: &SaleId, sequence: u64) {
        self.events_by_sale.entry(sale.clone()).or_default().push(sequence);
        self.events_indexed = self.events_indexed.max(sequence);
        self.events_oldest.get_or_insert(sequence);
    }

    /// Indexes events just committed (in sequence order: their writer holds `order_writer`) and
    /// keeps them in the tail.
    fn add_events(&mut self, events: Vec<OrderEvent>) {
        for event in events {
            self.index_event(&event.order.sale_id, event.sequence);
            if self.tail.len() == EVENTS_TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(event);
        }
    }

    /// Forgets the events before `first_kept` (pruned).
    fn prune_events(&mut self, first_kept: u64) {
        for sequences in self.events_by_sale.values_mut() {
            let gone = sequences.partition_point(|s| *s < first_kept);
            sequences.drain(..gone);
        }
        self.events_by_sale.retain(|_, sequences| !sequences.is_empty());
        while self.tail.front().is_some_and(|e| e.sequence < first_kept) {
            self.tail.pop_front();
        }
        self.events_oldest = self.events_oldest.map(|oldest| oldest.max(first_kept));
    }

    /// At most `limit` of a sale's event sequences above `after`.
    fn sale_events(&self, sale: &SaleId, after: u64, limit: usize) -> &[u64] {
        let all = self.events_by_sale.get(sale).map_or(&[][..], Vec::as_slice);
        let from = all.partition_point(|s| *s <= after);
        &all[from..(from + limit).min(all.len())]
    }

    /// The events after `after` (of one sale, or all), when the tail holds every one of them.
    fn tail_events(&self, after: u64, sale: Option<&SaleId>, limit: usize) -> Option<EventsPage> {
        let front = self.tail.front()?.sequence;
        if after + 1 < front {
            return None;
        }
        let at = |sequence: u64| self.tail.get((sequence - front) as usize).cloned();
        let events: Vec<OrderEvent> = match sale {
            None => {
                let skip = (after + 1 - front) as usize;
                if skip >= self.tail.len() {
                    Vec::new()
                } else {
                    self.tail.range(skip..).take(limit).cloned().collect()
                }
            }
            Some(sale) => self.sale_events(sale, after, limit).iter().filter_map(|s| at(*s)).collect(),
        };
        let scanned = match events.last() {
            Some(last) if events.len() == limit => last.sequence,
            _ => self.events_indexed.max(after),
        };
        Some(EventsPage { events, oldest: self.events_oldest, head: self.events_indexed, scanned })
    }

    /// The (buyer, sale, idempotency key) an order is found by.
    fn key(order: &OrderRecord) -> (UserId, SaleId, IdempotencyKey) {
        (order.buyer_id.clone(), order.sale_id.clone(), order.idempotency_key.clone())
    }
}

macro_rules! internal_from {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> Self {
                StoreError::Internal(Box::new(e))
            }
        }
    )*};
}
internal_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

fn get<T: Stored>(table: &impl ReadableTable<&'static str, &'static [u8]>, id: &str) -> Result<Option<T>, StoreError> {
    table.get(id)?.map(|v| T::decode(id, v.value())).transpose()
}

impl RedbRecords {
    /// Opens (or creates) `<data_dir>/flashsale.redb` and its tables.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let path = data_dir.join("flashsale.redb");
        let db = Database::create(&path).with_context(|| format!("opening {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(USERS)?;
        txn.open_table(USERS_BY_EMAIL)?;
        txn.open_table(PRODUCTS)?;
        txn.open_table(SALES)?;
        txn.open_table(ORDERS)?;
        txn.open_table(WAITLIST)?;
        txn.open_table(ORDER_EVENTS)?;
        txn.delete_table(OBSOLETE_ORDERS_BY_SALE)?;
        txn.commit()?;
        let mut index = OrderIndex::default();
        let txn = db.begin_read()?;
        for entry in txn.open_table(ORDERS)?.iter()? {
            let (key, value) = entry?;
            let order = OrderRecord::decode(key.value(), value.value())?;
            index.add(&order);
        }
        for entry in txn.open_table(ORDER_EVENTS)?.iter()? {
            let (sequence, value) = entry?;
            index.index_event(&event_sale(sequence.value(), value.value())?, sequence.value());
        }
        Ok(Self { db: Arc::new(db), index: Arc::new(Mutex::new(index)), order_writer: Arc::default() })
    }

    /// Up to `size` ids of orders `filter` may admit (its sale's, or its buyer's), above `after`,
    /// by id.
    fn index_chunk(&self, filter: &OrderFilter, after: Option<&OrderId>, size: usize) -> Vec<OrderId> {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let above = |ids: &mut dyn Iterator<Item = &OrderId>| -> Vec<OrderId> {
            ids.filter(|id| after.is_none_or(|a| *id > a)).cloned().collect()
        };
        let mut ids = match (&filter.sale, &filter.buyer) {
            // A sale's ids are kept in order: a range of them.
            (Some(sale), None) => {
                let from = after.map_or(Bound::Unbounded, Bound::Excluded);
                return index
                    .by_sale
                    .get(sale)
                    .map_or_else(Vec::new, |ids| ids.range((from, Bound::Unbounded)).take(size).cloned().collect());
            }
            // A buyer's orders are few: their list, even when a sale is named too.
            (_, Some(buyer)) => index.by_buyer.get(buyer).map_or_else(Vec::new, |ids| above(&mut ids.iter())),
            (None, None) => above(&mut index.by_key.values()),
        };
        ids.sort_unstable();
        ids.truncate(size);
        ids
    }

    /// Deletes at most `limit` events that happened before `before`, oldest first, never the
    /// newest, in one write transaction.
    async fn prune_events_chunk(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        let index = self.index.clone();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let (pruned, last) = {
                let mut table = txn.open_table(ORDER_EVENTS)?;
                let newest = table.last()?.map_or(0, |(sequence, _)| sequence.value());
                // Events are in commit order, which is time order but for the milliseconds
                // between a purchase and its commit: the scan stops at the first one to keep.
                let mut old = Vec::new();
                for entry in table.range(..newest)?.take(limit) {
                    let (sequence, value) = entry?;
                    if decode_event(sequence.value(), value.value())?.at() >= before {
                        break;
                    }
                    old.push(sequence.value());
                }
                for sequence in &old {
                    table.remove(sequence)?;
                }
                (old.len() as u64, old.last().copied())
            };
            if let Some(last) = last {
                txn.commit()?;
                index.lock().unwrap_or_else(|e| e.into_inner()).prune_events(last + 1);
            }
            Ok(pruned)
        })
        .await
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db)).await.map_err(|e| StoreError::Internal(Box::new(e)))?
    }

    async fn update_sale<F>(&self, id: &SaleId, change: F) -> Result<(SaleRecord, bool), StoreError>
    where
        F: FnOnce(&mut SaleRecord, &redb::WriteTransaction) -> Result<bool, StoreError> + Send + 'static,
    {
        let id = id.clone();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let (sale, changed) = {
                let mut sales = txn.open_table(SALES)?;
                let mut sale: SaleRecord = get(&sales, id.as_str())?.ok_or(StoreError::NotFound)?;
                let changed = change(&mut sale, &txn)?;
                if changed {
                    sales.insert(id.as_str(), sale.encode()?.as_slice())?;
                }
                (sale, changed)
            };
            if changed {
                txn.commit()?;
            }
            Ok((sale, changed))
        })
        .await
    }
}

/// Appends events after the table's last, in the order given, in the caller's write transaction
/// (one at a time: the numbering follows commit order). Returns them, for the in-memory index
/// once the transaction committed.
fn append_events<'a>(
    txn: &redb::WriteTransaction,
    events: impl Iterator<Item = (OrderEventKind, &'a OrderRecord)>,
) -> Result<Vec<OrderEvent>, StoreError> {
    let mut table = txn.open_table(ORDER_EVENTS)?;
    let first = table.last()?.map_or(0, |(sequence, _)| sequence.value()) + 1;
    let mut appended = Vec::new();
    for (sequence, (kind, order)) in (first..).zip(events) {
        table.insert(sequence, encode_event(kind, order)?.as_slice())?;
        appended.push(OrderEvent { sequence, kind, order: order.clone() });
    }
    Ok(appended)
}

/// The orders with these ids, in the order given (ids the table lacks are skipped).
fn orders_in(
    orders: &impl ReadableTable<&'static str, &'static [u8]>,
    ids: &[OrderId],
) -> Result<Vec<OrderRecord>, StoreError> {
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(order) = get::<OrderRecord>(orders, id.as_str())? {
            found.push(order);
        }
    }
    Ok(found)
}

#[async_trait]
impl RecordStore for RedbRecords {
    async fn create_user(&self, user: UserRecord) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut by_email = txn.open_table(USERS_BY_EMAIL)?;
                if by_email.get(user.email.as_str())?.is_some() {
                    return Err(StoreError::EmailTaken);
                }
                by_email.insert(user.email.as_str(), user.id.as_str())?;
                txn.open_table(USERS)?.insert(user.id.as_str(), user.encode()?.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn upsert_user_by_email(&self, mut user: UserRecord) -> Result<UserRecord, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut by_email = txn.open_table(USERS_BY_EMAIL)?;
                let existing = by_email.get(user.email.as_str())?.map(|id| id.value().to_owned());
                match existing {
                    Some(id) => user.id = UserId::parse(&id).map_err(|e| StoreError::Internal(Box::new(e)))?,
                    None => {
                        by_email.insert(user.email.as_str(), user.id.as_str())?;
                    }
                }
                txn.open_table(USERS)?.insert(user.id.as_str(), user.encode()?.as_slice())?;
            }
            txn.commit()?;
            Ok(user)
        })
        .await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        let email = email.clone();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let Some(id) = txn.open_table(USERS_BY_EMAIL)?.get(email.as_str())?.map(|v| v.value().to_owned()) else {
                return Ok(None);
            };
            get(&txn.open_table(USERS)?, &id)
        })
        .await
    }

    async fn create_product(&self, product: ProductRecord) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(PRODUCTS)?.insert(product.id.as_str(), product.encode()?.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn products_page(&self, after: Option<&ProductId>, limit: usize) -> Result<Vec<ProductRecord>, StoreError> {
        let after = after.cloned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(PRODUCTS)?;
            let from = after.as_ref().map_or(Bound::Unbounded, |id| Bound::Excluded(id.as_str()));
            let mut products = Vec::new();
            for entry in table.range::<&str>((from, Bound::Unbounded))?.take(limit) {
                let (key, value) = entry?;
                products.push(ProductRecord::decode(key.value(), value.value())?);
            }
            Ok(products)
        })
        .await
    }

    async fn get_product(&self, id: &ProductId) -> Result<Option<ProductRecord>, StoreError> {
        let id = id.clone();
        self.blocking(move |db| get(&db.begin_read()?.open_table(PRODUCTS)?, id.as_str())).await
    }

    async fn add_stock(&self, id: &ProductId, units: i64) -> Result<ProductRecord, StoreError> {
        let id = id.clone();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let product = {
                let mut products = txn.open_table(PRODUCTS)?;
                let mut product: ProductRecord = get(&products, id.as_str())?.ok_or(StoreError::NotFound)?;
                product.inventory = product.inventory.saturating_add(units);
                products.insert(id.as_str(), product.encode()?.as_slice())?;
                product
            };
            txn.commit()?;
            Ok(product)
        })
        .await
    }

    async fn create_sale(&self, sale: SaleRecord) -> Result<SaleRecord, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut products = txn.open_table(PRODUCTS)?;
                let mut product: ProductRecord =
                    get(&products, sale.product_id.as_str())?.ok_or(StoreError::NotFound)?;
                if product.inventory < sale.rules.allocated {
                    return Err(StoreError::InsufficientInventory { inventory: product.inventory });
                }
                product.inventory -= sale.rules.allocated;
                products.insert(product.id.as_str(), product.encode()?.as_slice())?;
                txn.open_table(SALES)?.insert(sale.id.as_str(), sale.encode()?.as_slice())?;
            }
            txn.commit()?;
            Ok(sale)
        })
        .await
    }

    async fn get_sale(&self, id: &SaleId) -> Result<Option<SaleRecord>, StoreError> {
        let id = id.clone();
        self.blocking(move |db| get(&db.begin_read()?.open_table(SALES)?, id.as_str())).await
    }

    async fn sales_page(
        &self,
        product: Option<&ProductId>,
        before: Option<&SaleId>,
        limit: usize,
    ) -> Result<Vec<SaleRecord>, StoreError> {
        let (product, before) = (product.cloned(), before.cloned());
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SALES)?;
            let to = before.as_ref().map_or(Bound::Unbounded, |id| Bound::Excluded(id.as_str()));
            let mut sales = Vec::new();
            for entry in table.range::<&str>((Bound::Unbounded, to))?.rev() {
                if sales.len() == limit {
                    break;
                }
                let (key, value) = entry?;
                let sale = SaleRecord::decode(key.value(), value.value())?;
                if product.as_ref().is_none_or(|p| *p == sale.product_id) {
                    sales.push(sale);
                }
            }
            Ok(sales)
        })
        .await
    }

    async fn open_sales(&self) -> Result<Vec<SaleRecord>, StoreError> {
        let mut sales = self.sales_page(None, None, usize::MAX).await?;
        sales.retain(|s| s.status != SaleStatus::Ended);
        Ok(sales)
    }

    async fn activate_sale(&self, id: &SaleId, start: UnixMillis) -> Result<(SaleRecord, bool), StoreError> {
        self.update_sale(id, move |sale, _| match sale.status {
            SaleStatus::Scheduled => {
                sale.status = SaleStatus::Active;
                sale.rules.start = start;
                Ok(true)
            }
            SaleStatus::Active => Ok(false),
            SaleStatus::Ended => Err(StoreError::WrongStatus(SaleStatus::Ended)),
        })
        .await
    }

    async fn next_generation(&self, id: &SaleId) -> Result<SaleRecord, StoreError> {
        let (sale, _) = self
            .update_sale(id, |sale, _| {
                sale.generation += 1;
                Ok(true)
            })
            .await?;
        Ok(sale)
    }

    async fn end_sale(&self, id: &SaleId, reason: EndReason, at: UnixMillis) -> Result<(SaleRecord, bool), StoreError> {
        self.update_sale(id, move |sale, txn| {
            if sale.status == SaleStatus::Ended {
                return Ok(false);
            }
            sale.status = SaleStatus::Ended;
            sale.end_reason = Some(reason);
            sale.ended_at = Some(at);
            let unsold = sale.rules.allocated - sale.sold;
            let mut products = txn.open_table(PRODUCTS)?;
            let mut product: ProductRecord = get(&products, sale.product_id.as_str())?.ok_or(StoreError::NotFound)?;
            product.inventory += unsold;
            products.insert(product.id.as_str(), product.encode()?.as_slice())?;
            Ok(true)
        })
        .await
    }

    async fn commit_orders(&self, batch: &[OrderRecord]) -> Result<Vec<CommitOutcome>, StoreError> {
        let batch = batch.to_vec();
        let (index, order_writer) = (self.index.clone(), self.order_writer.clone());
        self.blocking(move |db| {
            let _writing = order_writer.lock().unwrap_or_else(|e| e.into_inner());
            let txn = db.begin_write()?;
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut stored = Vec::with_capacity(batch.len());
            // Which of the batch's keys are stored already: the index lock is held for these
            // look-ups only (the writer lock above keeps other batches out until the index is
            // updated below).
            let stored_before: HashSet<(UserId, SaleId, IdempotencyKey)> = {
                let index = index.lock().unwrap_or_else(|e| e.into_inner());
                batch.iter().map(OrderIndex::key).filter(|key| index.by_key.contains_key(key)).collect()
            };
            {
                let mut sales = txn.open_table(SALES)?;
                let mut orders = txn.open_table(ORDERS)?;
                // Keys of this batch so far.
                let mut batch_keys = HashSet::default();
                // Sales touched by this batch, read once and written back once.
                let mut touched: HashMap<SaleId, SaleRecord> = HashMap::default();
                for order in &batch {
                    let sale = match touched.entry(order.sale_id.clone()) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let sale = get(&sales, order.sale_id.as_str())?.ok_or(StoreError::NotFound)?;
                            e.insert(sale)
                        }
                    };
                    let key = OrderIndex::key(order);
                    let taken = stored_before.contains(&key) || batch_keys.contains(&key);
                    let ended = sale.status == SaleStatus::Ended;
                    let outcome = judge_order(ended, sale.sold, sale.rules.allocated, order.quantity, taken);
                    if outcome.is_ok() {
                        sale.sold += i64::from(order.quantity);
                        if order.status == OrderStatus::Held {
                            sale.held += i64::from(order.quantity);
                        }
                        orders.insert(order.id.as_str(), order.encode()?.as_slice())?;
                        batch_keys.insert(key);
                        stored.push(order);
                    }
                    outcomes.push(outcome);
                }
                for sale in touched.values() {
                    sales.insert(sale.id.as_str(), sale.encode()?.as_slice())?;
                }
            }
            let events = append_events(&txn, stored.iter().map(|order| (OrderEventKind::Created, *order)))?;
            txn.commit()?;
            let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
            for order in stored {
                index.add(order);
            }
            index.add_events(events);
            Ok(outcomes)
        })
        .await
    }

    async fn get_order(&self, id: &OrderId) -> Result<Option<OrderRecord>, StoreError> {
        let id = id.clone();
        self.blocking(move |db| get(&db.begin_read()?.open_table(ORDERS)?, id.as_str())).await
    }

    async fn orders_of_buyer(&self, buyer: &UserId, sale: Option<&SaleId>) -> Result<Vec<OrderRecord>, StoreError> {
        let ids = self.index.lock().unwrap_or_else(|e| e.into_inner()).by_buyer.get(buyer).cloned().unwrap_or_default();
        let sale = sale.cloned();
        self.blocking(move |db| {
            let mut found = orders_in(&db.begin_read()?.open_table(ORDERS)?, &ids)?;
            found.retain(|order| sale.as_ref().is_none_or(|s| *s == order.sale_id));
            Ok(found)
        })
        .await
    }

    async fn orders_of_sale(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, StoreError> {
        // By id: UUIDv7 ids sort by creation (commit order can differ slightly).
        let ids: Vec<OrderId> = {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            index.by_sale.get(sale).map(|ids| ids.iter().cloned().collect()).unwrap_or_default()
        };
        self.blocking(move |db| orders_in(&db.begin_read()?.open_table(ORDERS)?, &ids)).await
    }

    async fn orders_page(
        &self,
        filter: &OrderFilter,
        after: Option<&OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let mut page = Vec::new();
        let mut from = after.cloned();
        // Ids from the in-memory indexes a chunk at a time (the lock is held for the copy only),
        // then the orders read and filtered, until the page is full or the ids run out.
        loop {
            let chunk = self.index_chunk(filter, from.as_ref(), limit.saturating_mul(2).clamp(64, 4096));
            let Some(last) = chunk.last().cloned() else { return Ok(page) };
            let wanted = filter.clone();
            let room = limit - page.len();
            let found = self
                .blocking(move |db| {
                    let mut found = orders_in(&db.begin_read()?.open_table(ORDERS)?, &chunk)?;
                    found.retain(|order| wanted.admits(order));
                    found.truncate(room);
                    Ok(found)
                })
                .await?;
            page.extend(found);
            if page.len() >= limit {
                return Ok(page);
            }
            from = Some(last);
        }
    }

    async fn count_orders(&self, filter: &OrderFilter) -> Result<u64, StoreError> {
        if filter.status.is_none() && filter.created_after.is_none() && filter.buyer.is_none() {
            if let Some(sale) = &filter.sale {
                let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
                return Ok(index.by_sale.get(sale).map_or(0, |ids| ids.len() as u64));
            }
        }
        // A chunk at a time: the count never holds the sale's orders in memory at once.
        const CHUNK: usize = 4096;
        let (mut count, mut after) = (0, None);
        loop {
            let page = self.orders_page(filter, after.as_ref(), CHUNK).await?;
            count += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == CHUNK => after = Some(last.id.clone()),
                _ => return Ok(count),
            }
        }
    }

    async fn order_by_key(
        &self,
        buyer: &UserId,
        sale: &SaleId,
        key: &IdempotencyKey,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let lookup = (buyer.clone(), sale.clone(), key.clone());
        let Some(id) = self.index.lock().unwrap_or_else(|e| e.into_inner()).by_key.get(&lookup).cloned() else {
            return Ok(None);
        };
        self.get_order(&id).await
    }

    async fn end_holds(&self, batch: &[HoldChange]) -> Result<Vec<Option<HoldOutcome>>, StoreError> {
        let batch = batch.to_vec();
        let (index, order_writer) = (self.index.clone(), self.order_writer.clone());
        self.blocking(move |db| {
            // One write transaction (redb runs one at a time): the status each change reads is
            // the one it changes, so a racing confirm and expiry cannot both end a hold.
            let _writing = order_writer.lock().unwrap_or_else(|e| e.into_inner());
            let txn = db.begin_write()?;
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut ended_ids = Vec::new();
            {
                let mut orders = txn.open_table(ORDERS)?;
                let mut sales = txn.open_table(SALES)?;
                let mut products = txn.open_table(PRODUCTS)?;
                for change in &batch {
                    let Some(order) = get::<OrderRecord>(&orders, change.id.as_str())? else {
                        outcomes.push(None);
                        continue;
                    };
                    if let Err(refusal) = judge_hold(&order, change.end, change.at) {
                        outcomes.push(Some(Err((refusal, order))));
                        continue;
                    }
                    let ended = ended_hold(&order, change.end, change.at, change.reference.as_deref());
                    orders.insert(ended.id.as_str(), ended.encode()?.as_slice())?;
                    let mut sale: SaleRecord = get(&sales, order.sale_id.as_str())?.ok_or(StoreError::NotFound)?;
                    let (sold, held) = hold_counters(change.end, order.quantity);
                    sale.sold += sold;
                    sale.held += held;
                    sales.insert(sale.id.as_str(), sale.encode()?.as_slice())?;
                    if change.end.gives_back() && sale.status == SaleStatus::Ended {
                        // The sale gave back its unsold units when it ended; a hold's come back now.
                        let mut product: ProductRecord =
                            get(&products, sale.product_id.as_str())?.ok_or(StoreError::NotFound)?;
                        product.inventory += i64::from(order.quantity);
                        products.insert(product.id.as_str(), product.encode()?.as_slice())?;
                    }
                    if let Some(deadline) = ended.expires_at {
                        ended_ids.push((deadline, ended.id.clone()));
                    }
                    outcomes.push(Some(Ok(ended)));
                }
            }
            let ended = outcomes.iter().flatten().filter_map(|outcome| outcome.as_ref().ok());
            let events = append_events(
                &txn,
                ended.filter_map(|order| Some((OrderEventKind::of_hold_end(order.status)?, order))),
            )?;
            txn.commit()?;
            let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
            for hold in &ended_ids {
                index.holds.remove(hold);
            }
            index.add_events(events);
            Ok(outcomes)
        })
        .await
    }

    async fn save_waitlist_entry(&self, sale: &SaleId, entry: &WaitlistEntry) -> Result<(), StoreError> {
        let (sale, entry) = (sale.clone(), entry.clone());
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut line = txn.open_table(WAITLIST)?;
                let key = (sale.as_str(), entry.buyer_id.as_str());
                if line.get(key)?.is_some() {
                    return Ok(()); // the first place stays
                }
                line.insert(key, entry.encode()?.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn remove_waitlist_entries(&self, sale: &SaleId, buyers: &[UserId]) -> Result<(), StoreError> {
        let (sale, buyers) = (sale.clone(), buyers.to_vec());
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut line = txn.open_table(WAITLIST)?;
                for buyer in &buyers {
                    line.remove((sale.as_str(), buyer.as_str()))?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn waitlist_of_sale(&self, sale: &SaleId) -> Result<Vec<WaitlistEntry>, StoreError> {
        let sale = sale.clone();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(WAITLIST)?;
            let mut line = Vec::new();
            for row in table.range((sale.as_str(), "")..)? {
                let (key, value) = row?;
                let (row_sale, buyer) = key.value();
                if row_sale != sale.as_str() {
                    break;
                }
                line.push(WaitlistEntry::decode(&format!("{row_sale}/{buyer}"), value.value())?);
            }
            // First come first: by join time, then by order id (UUIDv7, made when each joined).
            line.sort_by(|a, b| (a.joined_at, &a.order_id).cmp(&(b.joined_at, &b.order_id)));
            Ok(line)
        })
        .await
    }

    async fn order_events(&self, after: u64, sale: Option<&SaleId>, limit: usize) -> Result<EventsPage, StoreError> {
        // Near the head, from the tail in memory. Otherwise one sale's: its sequences from the
        // in-memory index, read before the table (the index is updated after each commit, so the
        // table then holds every event it names), and the read goes on after the newest indexed
        // event.
        let one_sale: Option<(Vec<u64>, u64)> = {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(page) = index.tail_events(after, sale, limit) {
                return Ok(page);
            }
            sale.map(|sale| (index.sale_events(sale, after, limit).to_vec(), index.events_indexed))
        };
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(ORDER_EVENTS)?;
            let mut page = EventsPage {
                oldest: table.first()?.map(|(sequence, _)| sequence.value()),
                head: table.last()?.map_or(0, |(sequence, _)| sequence.value()),
                scanned: after,
                events: Vec::new(),
            };
            if let Some((sequences, indexed)) = one_sale {
                for sequence in &sequences {
                    // One pruned meanwhile is skipped; the cursor check then refuses the gap.
                    if let Some(value) = table.get(sequence)? {
                        page.events.push(decode_event(*sequence, value.value())?);
                    }
                }
                page.scanned = match sequences.last() {
                    Some(last) if sequences.len() == limit => *last,
                    _ => indexed.max(after),
                };
                return Ok(page);
            }
            for entry in table.range((Bound::Excluded(after), Bound::Unbounded))?.take(limit) {
                let (sequence, value) = entry?;
                page.scanned = sequence.value();
                page.events.push(decode_event(sequence.value(), value.value())?);
            }
            Ok(page)
        })
        .await
    }

    async fn prune_order_events(&self, before: UnixMillis) -> Result<u64, StoreError> {
        // Bounded write transactions, one after another: redb has one writer, and the group
        // committer waits for it; a week-old rush of a million events must not stall purchases.
        let mut pruned = 0;
        loop {
            let now = self.prune_events_chunk(before, PRUNE_CHUNK).await?;
            pruned += now;
            if now < PRUNE_CHUNK as u64 {
                return Ok(pruned);
            }
        }
    }

    async fn earliest_holds(&self, limit: usize) -> Result<Vec<OrderRecord>, StoreError> {
        let ids: Vec<OrderId> = {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            index.holds.iter().take(limit).map(|(_, id)| id.clone()).collect()
        };
        self.blocking(move |db| orders_in(&db.begin_read()?.open_table(ORDERS)?, &ids)).await
    }
}
