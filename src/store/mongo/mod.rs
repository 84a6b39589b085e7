//! The durable record in MongoDB: the production backend of [`RecordStore`], shared by every
//! flashsale node of a deployment. It needs a replica set (multi-document transactions).
//!
//! Collections (the document layout is in `documents.rs`):
//! - `users` (unique `email`), `products` (with the inventory not allocated to any sale),
//!   `sales` (rules, `sold`, status), `orders` (unique `(buyer_id, sale_id, idempotency_key)`,
//!   listed by `sale_id` and by `buyer_id` in `_id` order; ids are UUIDv7, so that is creation
//!   order), `waitlist` (places in sales' lines).
//! - `order_events` (`_id` the sequence) and `counters` (document `order_events`: the last
//!   sequence given). The transaction that stores orders or ends holds also raises the counter
//!   by its number of events and inserts them. Two transactions that both raise it conflict, so
//!   one commits before the other can take the next numbers: sequences follow commit order
//!   without gaps, and an aborted transaction gives its numbers back. This works on every
//!   deployment that has transactions (change streams are not needed). The counter is raised
//!   last in the transaction, so it is held for as short a time as possible; a batch already
//!   conflicts with any other batch of the same sale on the sale's counters.
//!
//! What must be atomic runs in one multi-document transaction (read concern snapshot, write
//! concern majority): creating a sale with taking its allocation from the product's inventory;
//! ending a sale with returning its unsold units (the end is conditional on the sale not being
//! ended yet, so units return once); and each batch of orders, which raises every touched
//! sale's `sold` with a conditional `$inc` (`sold <= allocated - n` and not ended) before
//! inserting the accepted orders, so the record refuses oversell whatever the hot state
//! believes. Transactions follow the driver's rules: the whole transaction is retried on the
//! `TransientTransactionError` label and the commit alone on `UnknownTransactionCommitResult`,
//! a bounded number of times with a short randomised backoff.
//!
//! Failures to reach the servers are [`StoreError::Unavailable`] (safe to retry); anything else
//! is [`StoreError::Internal`], with the driver's error as the source.
//!
//! Files: `connect.rs` (connecting, the indexes), `txn.rs` (the transaction runner and its
//! bounds and retries), `errors.rs` (what a driver error means), `documents.rs` (the stored
//! documents), this file (the store: one attempt function per transaction, then the trait).

mod connect;
mod documents;
mod errors;
mod txn;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;
use mongodb::options::{ReturnDocument, TransactionOptions};
use mongodb::{Client, ClientSession, Collection, Database, SessionCursor};
use serde::de::DeserializeOwned;

use crate::domain::WaitlistEntry;
use crate::domain::{
    ended_hold, hold_counters, judge_hold, judge_order, CommitOutcome, Email, EndReason, EventsPage, IdempotencyKey,
    OrderEvent, OrderEventKind, OrderId, OrderRecord, OrderStatus, ProductId, ProductRecord, SaleId, SaleRecord,
    SaleStatus, UnixMillis, UserId, UserRecord,
};
use crate::retry;
use crate::store::{HoldChange, HoldOutcome, OrderFilter, RecordStore, StoreError};

pub use connect::connect;
use documents::{CounterDoc, EventDoc, OrderDoc, ProductDoc, SaleDoc, UserDoc, WaitlistDoc};
use errors::{is_duplicate_key, store_error};
use txn::{unsettled, Attempt, NotCommitted, TxnFailure};

/// The `counters` document numbering order events.
const EVENTS_COUNTER: &str = "order_events";

/// The MongoDB-backed record store. Cheap to clone: clones share the client's connection pool.
#[derive(Clone)]
pub struct MongoRecords {
    client: Client,
    db: Database,
    users: Collection<UserDoc>,
    products: Collection<ProductDoc>,
    sales: Collection<SaleDoc>,
    orders: Collection<OrderDoc>,
    /// Places in sales' lines, `_id` "<sale>/<buyer>".
    waitlist: Collection<WaitlistDoc>,
    /// Order events, `_id` the sequence.
    events: Collection<EventDoc>,
    /// Named sequences (`order_events`).
    counters: Collection<CounterDoc>,
    txn_options: TransactionOptions,
    /// Transactions and commits retried since start (conflicts, transient errors).
    retries: Arc<AtomicU64>,
}

impl MongoRecords {
    /// How many transactions (whole, or their commit) were retried since this store was
    /// connected: a measure of write contention between nodes.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// One attempt of `create_sale`.
    async fn create_sale_attempt(
        &self,
        s: &mut ClientSession,
        sale: &SaleRecord,
    ) -> Result<Attempt<SaleRecord>, MongoError> {
        let allocated = sale.rules.allocated;
        let product_id = sale.product_id.as_str();
        let taken = self
            .products
            .update_one(
                doc! { "_id": product_id, "inventory": { "$gte": allocated } },
                doc! { "$inc": { "inventory": -allocated } },
            )
            .session(&mut *s)
            .await?;
        if taken.matched_count == 0 {
            let refusal = match self.products.find_one(doc! { "_id": product_id }).session(&mut *s).await? {
                None => StoreError::NotFound,
                Some(product) => StoreError::InsufficientInventory { inventory: product.inventory },
            };
            return Ok(Attempt::Abort(Err(refusal)));
        }
        self.sales.insert_one(SaleDoc::from(sale)).session(&mut *s).await?;
        Ok(Attempt::Commit(sale.clone()))
    }

    /// One attempt of `end_sale`.
    async fn end_sale_attempt(
        &self,
        s: &mut ClientSession,
        id: &SaleId,
        reason: EndReason,
        at: UnixMillis,
    ) -> Result<Attempt<(SaleRecord, bool)>, MongoError> {
        let Some(current) = self.sales.find_one(doc! { "_id": id.as_str() }).session(&mut *s).await? else {
            return Ok(Attempt::Abort(Err(StoreError::NotFound)));
        };
        let ended = current.is_ended();
        let (sold, allocated) = (current.sold, current.allocated);
        let mut sale = match SaleRecord::try_from(current) {
            Ok(sale) => sale,
            Err(e) => return Ok(Attempt::Abort(Err(e))),
        };
        if ended {
            return Ok(Attempt::Abort(Ok((sale, false))));
        }
        // Conditional on what was read: a concurrent end or order batch makes this match
        // nothing (or conflict on a replica set), and the attempt runs again.
        let marked = self
            .sales
            .update_one(
                doc! { "_id": id.as_str(), "status": { "$ne": SaleStatus::Ended.as_str() }, "sold": sold },
                doc! { "$set": {
                    "status": SaleStatus::Ended.as_str(),
                    "end_reason": reason.as_str(),
                    "ended_at": at.0,
                } },
            )
            .session(&mut *s)
            .await?;
        if marked.matched_count == 0 {
            return Ok(Attempt::Conflict("the sale changed while it was being ended"));
        }
        let returned = self
            .products
            .update_one(doc! { "_id": sale.product_id.as_str() }, doc! { "$inc": { "inventory": allocated - sold } })
            .session(&mut *s)
            .await?;
        if returned.matched_count == 0 {
            return Ok(Attempt::Abort(Err(StoreError::NotFound)));
        }
        sale.status = SaleStatus::Ended;
        sale.end_reason = Some(reason);
        sale.ended_at = Some(at);
        Ok(Attempt::Commit((sale, true)))
    }

    /// One attempt of `commit_orders`: decides every order with the domain's `judge_order`, as the
    /// embedded record does (in batch order), then writes.
    async fn commit_orders_attempt(
        &self,
        s: &mut ClientSession,
        batch: &[OrderRecord],
    ) -> Result<Attempt<Vec<CommitOutcome>>, MongoError> {
        let sale_ids: Vec<&str> = distinct(batch.iter().map(|o| o.sale_id.as_str()));
        let found = self.sales.find(doc! { "_id": { "$in": &sale_ids } }).session(&mut *s).await?;
        let mut sales: HashMap<String, SaleDoc> =
            collect(found, s).await?.into_iter().map(|sale| (sale.id.clone(), sale)).collect();
        if sales.len() != sale_ids.len() {
            return Ok(Attempt::Abort(Err(StoreError::NotFound)));
        }
        let mut keys = self.existing_keys(s, batch).await?;

        let mut outcomes = Vec::with_capacity(batch.len());
        let mut accepted = Vec::new();
        // Per sale: (units, of which held).
        let mut added: HashMap<&str, (i64, i64)> = HashMap::new();
        for order in batch {
            let Some(sale) = sales.get_mut(order.sale_id.as_str()) else {
                return Ok(Attempt::Abort(Err(StoreError::NotFound)));
            };
            let quantity = i64::from(order.quantity);
            let key = (
                order.buyer_id.as_str().to_owned(),
                order.sale_id.as_str().to_owned(),
                order.idempotency_key.as_str().to_owned(),
            );
            let outcome = judge_order(sale.is_ended(), sale.sold, sale.allocated, order.quantity, keys.contains(&key));
            if outcome.is_ok() {
                sale.sold += quantity;
                let counts = added.entry(order.sale_id.as_str()).or_default();
                counts.0 += quantity;
                if order.status == OrderStatus::Held {
                    counts.1 += quantity;
                }
                keys.insert(key);
                accepted.push(OrderDoc::from(order));
            }
            outcomes.push(outcome);
        }
        if accepted.is_empty() {
            return Ok(Attempt::Abort(Ok(outcomes)));
        }

        // The record's own guard against oversell: each sale's count rises only if the sale
        // is still open and has room, whatever was read above.
        for (sale_id, (n, held)) in &added {
            let allocated = sales[*sale_id].allocated;
            let raised = self
                .sales
                .update_one(
                    doc! {
                        "_id": *sale_id,
                        "status": { "$ne": SaleStatus::Ended.as_str() },
                        "sold": { "$lte": allocated - n },
                    },
                    doc! { "$inc": { "sold": *n, "held": *held } },
                )
                .session(&mut *s)
                .await?;
            if raised.matched_count != 1 {
                return Ok(Attempt::Conflict("a sale ended or sold more while the batch was decided"));
            }
        }
        match self.orders.insert_many(&accepted).session(&mut *s).await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                return Ok(Attempt::Conflict("an order with the same key was stored meanwhile"))
            }
            Err(e) => return Err(e),
        }
        let stored = batch.iter().zip(&outcomes).filter(|(_, outcome)| outcome.is_ok());
        self.append_events(s, stored.map(|(order, _)| (OrderEventKind::Created, order)).collect()).await?;
        Ok(Attempt::Commit(outcomes))
    }

    /// Numbers `events` after the last sequence given and inserts them, in the caller's
    /// transaction (see the module's notes on the counter).
    async fn append_events(
        &self,
        s: &mut ClientSession,
        events: Vec<(OrderEventKind, &OrderRecord)>,
    ) -> Result<(), MongoError> {
        if events.is_empty() {
            return Ok(());
        }
        let n = events.len() as i64;
        let counter = self
            .counters
            .find_one_and_update(doc! { "_id": EVENTS_COUNTER }, doc! { "$inc": { "seq": n } })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *s)
            .await?;
        let first = counter.map_or(1, |c| c.seq - n + 1);
        let docs: Vec<EventDoc> = events
            .into_iter()
            .zip(first..)
            .map(|((kind, order), sequence)| EventDoc::new(sequence, kind, order))
            .collect();
        self.events.insert_many(docs).session(&mut *s).await?;
        Ok(())
    }

    /// The last sequence given (0 before the first event).
    async fn events_head(&self) -> Result<u64, StoreError> {
        let counter = self.counters.find_one(doc! { "_id": EVENTS_COUNTER }).await.map_err(store_error)?;
        Ok(counter.map_or(0, |c| u64::try_from(c.seq).unwrap_or(0)))
    }

    /// The (buyer, sale, key) triples of `batch` already stored.
    async fn existing_keys(
        &self,
        s: &mut ClientSession,
        batch: &[OrderRecord],
    ) -> Result<HashSet<(String, String, String)>, MongoError> {
        let filter = doc! {
            "buyer_id": { "$in": distinct(batch.iter().map(|o| o.buyer_id.as_str())) },
            "sale_id": { "$in": distinct(batch.iter().map(|o| o.sale_id.as_str())) },
            "idempotency_key": { "$in": distinct(batch.iter().map(|o| o.idempotency_key.as_str())) },
        };
        let found = self.orders.find(filter).session(&mut *s).await?;
        Ok(collect(found, s).await?.into_iter().map(|o| (o.buyer_id, o.sale_id, o.idempotency_key)).collect())
    }

    /// One attempt of `end_holds`: the orders' statuses are read and changed inside the
    /// transaction, each write conditional on the order still being HELD, so of two nodes
    /// ending one hold (a payment racing the expiry) one commits and the other reads the
    /// outcome again. Each touched sale's counters move once, by the batch's sum.
    async fn end_holds_attempt(
        &self,
        s: &mut ClientSession,
        batch: &[HoldChange],
    ) -> Result<Attempt<Vec<Option<HoldOutcome>>>, MongoError> {
        let ids = distinct(batch.iter().map(|c| c.id.as_str()));
        let found = self.orders.find(doc! { "_id": { "$in": &ids } }).session(&mut *s).await?;
        let mut current = HashMap::new();
        for found in collect(found, s).await? {
            match OrderRecord::try_from(found) {
                Ok(order) => current.insert(order.id.as_str().to_owned(), order),
                Err(e) => return Ok(Attempt::Abort(Err(e))),
            };
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut changed = Vec::new();
        // Per sale: (sold, held, units given back).
        let mut deltas: HashMap<String, (i64, i64, i64)> = HashMap::new();
        for change in batch {
            let Some(order) = current.get(change.id.as_str()) else {
                outcomes.push(None);
                continue;
            };
            if let Err(refusal) = judge_hold(order, change.end, change.at) {
                outcomes.push(Some(Err((refusal, order.clone()))));
                continue;
            }
            let ended = ended_hold(order, change.end, change.at, change.reference.as_deref());
            let (sold, held) = hold_counters(change.end, order.quantity);
            let delta = deltas.entry(order.sale_id.as_str().to_owned()).or_default();
            delta.0 += sold;
            delta.1 += held;
            if change.end.gives_back() {
                delta.2 += i64::from(order.quantity);
            }
            changed.push(ended.clone());
            current.insert(ended.id.as_str().to_owned(), ended.clone());
            outcomes.push(Some(Ok(ended)));
        }
        if changed.is_empty() {
            return Ok(Attempt::Abort(Ok(outcomes)));
        }
        for ended in &changed {
            let mut set = doc! { "status": ended.status.as_str() };
            if let Some(at) = ended.settled_at {
                set.insert("settled_at", at.0);
            }
            if let Some(reference) = &ended.payment_reference {
                set.insert("payment_reference", reference.as_str());
            }
            let written = self
                .orders
                .update_one(
                    doc! { "_id": ended.id.as_str(), "status": OrderStatus::Held.as_str() },
                    doc! { "$set": set },
                )
                .session(&mut *s)
                .await?;
            if written.matched_count == 0 {
                return Ok(Attempt::Conflict("a hold ended meanwhile"));
            }
        }
        for (sale_id, (sold, held, given_back)) in &deltas {
            let sale = self
                .sales
                .find_one_and_update(
                    doc! { "_id": sale_id.as_str() },
                    doc! { "$inc": { "sold": *sold, "held": *held } },
                )
                .return_document(ReturnDocument::After)
                .session(&mut *s)
                .await?;
            let Some(sale) = sale else {
                return Ok(Attempt::Abort(Err(StoreError::NotFound)));
            };
            if *given_back > 0 && sale.is_ended() {
                // The sale gave back its unsold units when it ended; its holds' come back now.
                let returned = self
                    .products
                    .update_one(doc! { "_id": sale.product_id() }, doc! { "$inc": { "inventory": *given_back } })
                    .session(&mut *s)
                    .await?;
                if returned.matched_count == 0 {
                    return Ok(Attempt::Abort(Err(StoreError::NotFound)));
                }
            }
        }
        let events = changed.iter().filter_map(|order| Some((OrderEventKind::of_hold_end(order.status)?, order)));
        self.append_events(s, events.collect()).await?;
        Ok(Attempt::Commit(outcomes))
    }

    async fn find_orders(&self, filter: Document) -> Result<Vec<OrderRecord>, StoreError> {
        find_all(&self.orders, filter, doc! { "_id": 1 }).await
    }

    async fn find_sales(&self, filter: Document) -> Result<Vec<SaleRecord>, StoreError> {
        find_all(&self.sales, filter, doc! { "_id": -1 }).await
    }

    async fn sale_by_id(&self, id: &str) -> Result<Option<SaleRecord>, StoreError> {
        find_one(&self.sales, doc! { "_id": id }).await
    }
}

/// Every document `filter` matches, in `sort` order, read back as records.
async fn find_all<D, R>(collection: &Collection<D>, filter: Document, sort: Document) -> Result<Vec<R>, StoreError>
where
    D: DeserializeOwned + Send + Sync,
    R: TryFrom<D, Error = StoreError>,
{
    let docs: Vec<D> =
        collection.find(filter).sort(sort).await.map_err(store_error)?.try_collect().await.map_err(store_error)?;
    docs.into_iter().map(R::try_from).collect()
}

/// At most `limit` documents `filter` matches, in `sort` order, read back as records.
async fn find_page<D, R>(
    collection: &Collection<D>,
    filter: Document,
    sort: Document,
    limit: usize,
) -> Result<Vec<R>, StoreError>
where
    D: DeserializeOwned + Send + Sync,
    R: TryFrom<D, Error = StoreError>,
{
    let docs: Vec<D> = collection
        .find(filter)
        .sort(sort)
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)?;
    docs.into_iter().map(R::try_from).collect()
}

/// The query of the orders `filter` admits.
fn order_query(filter: &OrderFilter) -> Document {
    let mut query = doc! {};
    if let Some(sale) = &filter.sale {
        query.insert("sale_id", sale.as_str());
    }
    if let Some(buyer) = &filter.buyer {
        query.insert("buyer_id", buyer.as_str());
    }
    if let Some(status) = filter.status {
        // Orders stored before holds existed have no status: CONFIRMED.
        query.insert(
            "status",
            match status {
                OrderStatus::Confirmed => doc! { "$in": [OrderStatus::Confirmed.as_str(), mongodb::bson::Bson::Null] },
                other => doc! { "$eq": other.as_str() },
            },
        );
    }
    if let Some(at) = filter.created_after {
        query.insert("created_at", doc! { "$gte": at.0 });
    }
    query
}

/// The document `filter` matches, if any, read back as a record.
async fn find_one<D, R>(collection: &Collection<D>, filter: Document) -> Result<Option<R>, StoreError>
where
    D: DeserializeOwned + Send + Sync,
    R: TryFrom<D, Error = StoreError>,
{
    collection.find_one(filter).await.map_err(store_error)?.map(R::try_from).transpose()
}

fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    values.filter(|v| seen.insert(*v)).collect()
}

async fn collect<T: DeserializeOwned + Send + Sync>(
    mut cursor: SessionCursor<T>,
    session: &mut ClientSession,
) -> Result<Vec<T>, MongoError> {
    let mut items = Vec::new();
    while let Some(item) = cursor.next(session).await {
        items.push(item?);
    }
    Ok(items)
}

#[async_trait]
impl RecordStore for MongoRecords {
    async fn create_user(&self, user: UserRecord) -> Result<(), StoreError> {
        match self.users.insert_one(UserDoc::from(&user)).await {
            Ok(_) => Ok(()),
            // Ids are fresh UUIDs: a duplicate key is the unique email.
            Err(e) if is_duplicate_key(&e) => Err(StoreError::EmailTaken),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn upsert_user_by_email(&self, user: UserRecord) -> Result<UserRecord, StoreError> {
        // Insert-or-replace under the unique email index: a lost race to insert reads again.
        let attempt = || async {
            let mut user = user.clone();
            let existing = self.users.find_one(doc! { "email": user.email.as_str() }).await.map_err(store_error)?;
            match existing {
                Some(existing) => {
                    user.id = UserRecord::try_from(existing)?.id;
                    let replaced = self
                        .users
                        .replace_one(doc! { "_id": user.id.as_str() }, UserDoc::from(&user))
                        .await
                        .map_err(store_error)?;
                    Ok((replaced.matched_count == 1).then_some(user))
                }
                None => match self.users.insert_one(UserDoc::from(&user)).await {
                    Ok(_) => Ok(Some(user)),
                    Err(e) if is_duplicate_key(&e) => Ok(None),
                    Err(e) => Err(store_error(e)),
                },
            }
        };
        retry::until_settled(3, attempt)
            .await?
            .ok_or_else(|| StoreError::Internal("the account kept changing while it was being stored".into()))
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        find_one(&self.users, doc! { "email": email.as_str() }).await
    }

    async fn create_product(&self, product: ProductRecord) -> Result<(), StoreError> {
        self.products.insert_one(ProductDoc::from(&product)).await.map_err(store_error)?;
        Ok(())
    }

    async fn products_page(&self, after: Option<&ProductId>, limit: usize) -> Result<Vec<ProductRecord>, StoreError> {
        let filter = match after {
            Some(after) => doc! { "_id": { "$gt": after.as_str() } },
            None => doc! {},
        };
        find_page(&self.products, filter, doc! { "_id": 1 }, limit).await
    }

    async fn get_product(&self, id: &ProductId) -> Result<Option<ProductRecord>, StoreError> {
        find_one(&self.products, doc! { "_id": id.as_str() }).await
    }

    async fn add_stock(&self, id: &ProductId, units: i64) -> Result<ProductRecord, StoreError> {
        self.products
            .find_one_and_update(doc! { "_id": id.as_str() }, doc! { "$inc": { "inventory": units } })
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_error)?
            .ok_or(StoreError::NotFound)
            .and_then(ProductRecord::try_from)
    }

    async fn create_sale(&self, sale: SaleRecord) -> Result<SaleRecord, StoreError> {
        let records = self.clone();
        let wanted = sale.clone();
        let outcome = self
            .transaction("create_sale", move |s| {
                let (records, sale) = (records.clone(), wanted.clone());
                Box::pin(async move { records.create_sale_attempt(s, &sale).await })
            })
            .await;
        match outcome {
            Ok(sale) => Ok(sale),
            Err(TxnFailure::Store(e)) => Err(e),
            Err(TxnFailure::CommitUnknown { answer, error }) => match self.sale_by_id(sale.id.as_str()).await {
                Ok(Some(_)) => Ok(answer),
                Ok(None) => {
                    Err(StoreError::Unavailable(Box::new(NotCommitted { operation: "create_sale", source: error })))
                }
                Err(check) => Err(unsettled("create_sale", error, check)),
            },
        }
    }

    async fn get_sale(&self, id: &SaleId) -> Result<Option<SaleRecord>, StoreError> {
        self.sale_by_id(id.as_str()).await
    }

    async fn sales_page(
        &self,
        product: Option<&ProductId>,
        before: Option<&SaleId>,
        limit: usize,
    ) -> Result<Vec<SaleRecord>, StoreError> {
        let mut filter = doc! {};
        if let Some(product) = product {
            filter.insert("product_id", product.as_str());
        }
        if let Some(before) = before {
            filter.insert("_id", doc! { "$lt": before.as_str() });
        }
        find_page(&self.sales, filter, doc! { "_id": -1 }, limit).await
    }

    async fn open_sales(&self) -> Result<Vec<SaleRecord>, StoreError> {
        self.find_sales(doc! { "status": { "$ne": SaleStatus::Ended.as_str() } }).await
    }

    async fn activate_sale(&self, id: &SaleId, start: UnixMillis) -> Result<(SaleRecord, bool), StoreError> {
        // Read, then a write conditional on the status read: a concurrent change reads again.
        let attempt = || async {
            let mut sale = self.sale_by_id(id.as_str()).await?.ok_or(StoreError::NotFound)?;
            match sale.status {
                SaleStatus::Active => Ok(Some((sale, false))),
                SaleStatus::Ended => Err(StoreError::WrongStatus(SaleStatus::Ended)),
                SaleStatus::Scheduled => {
                    let changed = self
                        .sales
                        .update_one(
                            doc! { "_id": id.as_str(), "status": SaleStatus::Scheduled.as_str() },
                            doc! { "$set": { "status": SaleStatus::Active.as_str(), "start_at": start.0 } },
                        )
                        .await
                        .map_err(store_error)?;
                    if changed.matched_count == 1 {
                        sale.status = SaleStatus::Active;
                        sale.rules.start = start;
                        return Ok(Some((sale, true)));
                    }
                    Ok(None)
                }
            }
        };
        retry::until_settled(5, attempt)
            .await?
            .ok_or_else(|| StoreError::Internal("the sale kept changing while it was being started".into()))
    }

    async fn next_generation(&self, id: &SaleId) -> Result<SaleRecord, StoreError> {
        // One atomic update: nodes rebuilding at once each get a generation of their own.
        self.sales
            .find_one_and_update(doc! { "_id": id.as_str() }, doc! { "$inc": { "generation": 1_i64 } })
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_error)?
            .ok_or(StoreError::NotFound)
            .and_then(SaleRecord::try_from)
    }

    async fn end_sale(&self, id: &SaleId, reason: EndReason, at: UnixMillis) -> Result<(SaleRecord, bool), StoreError> {
        let records = self.clone();
        let sale_id = id.clone();
        let outcome = self
            .transaction("end_sale", move |s| {
                let (records, id) = (records.clone(), sale_id.clone());
                Box::pin(async move { records.end_sale_attempt(s, &id, reason, at).await })
            })
            .await;
        match outcome {
            Ok(answer) => Ok(answer),
            Err(TxnFailure::Store(e)) => Err(e),
            Err(TxnFailure::CommitUnknown { answer, error }) => {
                match self.sale_by_id(id.as_str()).await {
                    // Ours, if it ended exactly as asked; someone else's end otherwise.
                    Ok(Some(sale)) if sale.status == SaleStatus::Ended => {
                        let ours = sale.end_reason == Some(reason) && sale.ended_at == Some(at);
                        Ok(if ours { answer } else { (sale, false) })
                    }
                    Ok(_) => {
                        Err(StoreError::Unavailable(Box::new(NotCommitted { operation: "end_sale", source: error })))
                    }
                    Err(check) => Err(unsettled("end_sale", error, check)),
                }
            }
        }
    }

    async fn commit_orders(&self, batch: &[OrderRecord]) -> Result<Vec<CommitOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.clone();
        let orders: Arc<[OrderRecord]> = batch.into();
        let outcome = self
            .transaction("commit_orders", move |s| {
                let (records, orders) = (records.clone(), orders.clone());
                Box::pin(async move { records.commit_orders_attempt(s, &orders).await })
            })
            .await;
        match outcome {
            Ok(outcomes) => Ok(outcomes),
            Err(TxnFailure::Store(e)) => Err(e),
            Err(TxnFailure::CommitUnknown { answer, error }) => {
                // The batch's orders were inserted all or none: one of them tells.
                let Some(probe) = batch.iter().zip(&answer).find(|(_, o)| o.is_ok()).map(|(order, _)| order) else {
                    return Ok(answer);
                };
                match self.get_order(&probe.id).await {
                    Ok(Some(_)) => Ok(answer),
                    Ok(None) => Err(StoreError::Unavailable(Box::new(NotCommitted {
                        operation: "commit_orders",
                        source: error,
                    }))),
                    Err(check) => Err(unsettled("commit_orders", error, check)),
                }
            }
        }
    }

    async fn get_order(&self, id: &OrderId) -> Result<Option<OrderRecord>, StoreError> {
        find_one(&self.orders, doc! { "_id": id.as_str() }).await
    }

    async fn orders_of_buyer(&self, buyer: &UserId, sale: Option<&SaleId>) -> Result<Vec<OrderRecord>, StoreError> {
        let mut filter = doc! { "buyer_id": buyer.as_str() };
        if let Some(sale) = sale {
            filter.insert("sale_id", sale.as_str());
        }
        self.find_orders(filter).await
    }

    async fn orders_of_sale(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, StoreError> {
        self.find_orders(doc! { "sale_id": sale.as_str() }).await
    }

    async fn orders_page(
        &self,
        filter: &OrderFilter,
        after: Option<&OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let mut query = order_query(filter);
        if let Some(after) = after {
            query.insert("_id", doc! { "$gt": after.as_str() });
        }
        find_page(&self.orders, query, doc! { "_id": 1 }, limit).await
    }

    async fn count_orders(&self, filter: &OrderFilter) -> Result<u64, StoreError> {
        self.orders.count_documents(order_query(filter)).await.map_err(store_error)
    }

    async fn order_by_key(
        &self,
        buyer: &UserId,
        sale: &SaleId,
        key: &IdempotencyKey,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let filter = doc! { "buyer_id": buyer.as_str(), "sale_id": sale.as_str(), "idempotency_key": key.as_str() };
        find_one(&self.orders, filter).await
    }

    async fn end_holds(&self, batch: &[HoldChange]) -> Result<Vec<Option<HoldOutcome>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.clone();
        let changes: Arc<[HoldChange]> = batch.into();
        let outcome = self
            .transaction("end_holds", move |s| {
                let (records, changes) = (records.clone(), changes.clone());
                Box::pin(async move { records.end_holds_attempt(s, &changes).await })
            })
            .await;
        match outcome {
            Ok(answer) => Ok(answer),
            Err(TxnFailure::Store(e)) => Err(e),
            Err(TxnFailure::CommitUnknown { answer, error }) => {
                // The batch's changes were written all or none: the first it made tells.
                let Some(probe) = answer.iter().flatten().find_map(|o| o.as_ref().ok()) else {
                    return Ok(answer);
                };
                match self.get_order(&probe.id).await {
                    Ok(Some(stored)) if stored.status == probe.status && stored.settled_at == probe.settled_at => {
                        Ok(answer)
                    }
                    Ok(_) => {
                        Err(StoreError::Unavailable(Box::new(NotCommitted { operation: "end_holds", source: error })))
                    }
                    Err(check) => Err(unsettled("end_holds", error, check)),
                }
            }
        }
    }

    async fn save_waitlist_entry(&self, sale: &SaleId, entry: &WaitlistEntry) -> Result<(), StoreError> {
        match self.waitlist.insert_one(WaitlistDoc::new(sale, entry)).await {
            // The buyer has a place already: the first one stays.
            Err(e) if is_duplicate_key(&e) => Ok(()),
            other => other.map(|_| ()).map_err(store_error),
        }
    }

    async fn remove_waitlist_entries(&self, sale: &SaleId, buyers: &[UserId]) -> Result<(), StoreError> {
        let ids: Vec<String> = buyers.iter().map(|buyer| WaitlistDoc::id(sale, buyer)).collect();
        self.waitlist.delete_many(doc! { "_id": { "$in": ids } }).await.map_err(store_error)?;
        Ok(())
    }

    async fn waitlist_of_sale(&self, sale: &SaleId) -> Result<Vec<WaitlistEntry>, StoreError> {
        find_all(&self.waitlist, doc! { "sale_id": sale.as_str() }, doc! { "joined_at": 1, "order_id": 1 }).await
    }

    async fn order_events(&self, after: u64, sale: Option<&SaleId>, limit: usize) -> Result<EventsPage, StoreError> {
        // Three reads in one causally consistent session on the primary, so each sees at least
        // what the one before saw. The head first: every event numbered up to it is committed
        // (its transaction raised the counter), so reading up to it misses none. The oldest
        // last: events after the cursor were all there when the range was read if the oldest
        // is still at or below it afterwards (pruning deletes from the oldest on).
        let primary = || mongodb::options::SelectionCriteria::ReadPreference(mongodb::options::ReadPreference::Primary);
        let mut s = self.client.start_session().causal_consistency(true).await.map_err(store_error)?;
        let head = self
            .counters
            .find_one(doc! { "_id": EVENTS_COUNTER })
            .selection_criteria(primary())
            .session(&mut s)
            .await
            .map_err(store_error)?
            .map_or(0, |c| u64::try_from(c.seq).unwrap_or(0));
        let mut filter = doc! { "_id": { "$gt": after as i64, "$lte": head as i64 } };
        if let Some(sale) = sale {
            filter.insert("sale_id", sale.as_str());
        }
        let found = self
            .events
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .selection_criteria(primary())
            .session(&mut s)
            .await
            .map_err(store_error)?;
        let mut events = Vec::new();
        for doc in collect(found, &mut s).await.map_err(store_error)? {
            events.push(OrderEvent::try_from(doc)?);
        }
        let oldest = self
            .events
            .find_one(doc! {})
            .sort(doc! { "_id": 1 })
            .selection_criteria(primary())
            .session(&mut s)
            .await
            .map_err(store_error)?
            .map(|event| event.sequence as u64);
        let mut scanned = match events.last() {
            Some(last) if events.len() == limit => last.sequence,
            _ => head.max(after),
        };
        if sale.is_none() {
            // Sequences have no gaps: one here would be an event not visible yet. Stop before it
            // and read it next time rather than move past it.
            let first = match after {
                0 => events.first().map_or(1, |e| e.sequence),
                after => after + 1,
            };
            if let Some(gap) = events.iter().zip(first..).position(|(event, expected)| event.sequence != expected) {
                events.truncate(gap);
                scanned = events.last().map_or(after, |e| e.sequence);
            }
        }
        Ok(EventsPage { events, oldest, head, scanned })
    }

    async fn prune_order_events(&self, before: UnixMillis) -> Result<u64, StoreError> {
        // Deletes a prefix in sequence order, so the events kept never have a gap a cursor
        // check could not see: up to the first event to keep (creation times only roughly follow
        // commit order), and never the newest (a follower at the head still finds where the
        // events start).
        let head = self.events_head().await? as i64;
        let keep = self
            .events
            .find_one(doc! { "at": { "$gte": before.0 } })
            .sort(doc! { "_id": 1 })
            .await
            .map_err(store_error)?
            .map_or(head, |event| event.sequence.min(head));
        let deleted = self.events.delete_many(doc! { "_id": { "$lt": keep } }).await.map_err(store_error)?;
        Ok(deleted.deleted_count)
    }

    async fn earliest_holds(&self, limit: usize) -> Result<Vec<OrderRecord>, StoreError> {
        let docs: Vec<OrderDoc> = self
            .orders
            .find(doc! { "status": OrderStatus::Held.as_str() })
            .sort(doc! { "expires_at": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        docs.into_iter().map(OrderRecord::try_from).collect()
    }
}
