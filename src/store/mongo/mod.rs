//! The durable record in MongoDB: the production backend of [`RecordStore`], shared by every
//! flashsale node of a deployment. It needs a replica set (multi-document transactions).
//!
//! Collections (the document layout is in `documents.rs`):
//! - `users` (unique `email`), `products` (with the inventory not allocated to any sale),
//!   `sales` (rules, `sold`, status), `orders` (unique `(buyer_id, sale_id, idempotency_key)`,
//!   listed by `sale_id` and by `buyer_id` in `_id` order; ids are UUIDv7, so that is creation
//!   order).
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

mod documents;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::{
    Error as MongoError, ErrorKind, InsertManyError, WriteFailure, TRANSIENT_TRANSACTION_ERROR,
    UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{
    ClientOptions, DatabaseOptions, IndexOptions, ReadConcern, ReturnDocument, TransactionOptions, WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel, SessionCursor};
use serde::de::DeserializeOwned;

use crate::domain::{Email, EndReason, IdempotencyKey, OrderId, ProductId, SaleId, SaleStatus, UnixMillis, UserId};
use crate::store::{
    CommitOutcome, CommitRefusal, OrderRecord, ProductRecord, RecordStore, SaleRecord, StoreError, UserRecord,
};

use documents::{OrderDoc, ProductDoc, SaleDoc, UserDoc};

/// How long `connect` (and every later operation) looks for a usable server before giving up,
/// unless the URI sets `serverSelectionTimeoutMS`.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening one connection may take, unless the URI sets `connectTimeoutMS`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one transaction (the first and its retries) before giving up as `Unavailable`.
const MAX_TXN_ATTEMPTS: u32 = 12;
/// Attempts of one commit whose outcome is unknown before giving up.
const MAX_COMMIT_ATTEMPTS: u32 = 5;
/// Bounds on one transaction attempt, well below the server's transaction lifetime
/// (`transactionLifetimeLimitSeconds`: 60 s by default, 10 s in docker-compose.yml): its reads
/// and writes may take this long before it is aborted and reported unavailable...
const TXN_BODY_LIMIT: Duration = Duration::from_secs(3);
/// ...and its commit this long on the server (`maxCommitTimeMS`). flashsale's transactions take
/// milliseconds; these only matter when a server stalls.
const TXN_COMMIT_LIMIT: Duration = Duration::from_secs(2);
/// Backoff between retries: doubling from the first, capped, and randomised within
/// [half, whole] so that retrying nodes spread out.
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// Server error codes meaning "this server cannot serve now": worth retrying elsewhere or later.
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    64,    // WriteConcernFailed (no majority in time)
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// The MongoDB-backed record store. Cheap to clone: clones share the client's connection pool.
#[derive(Clone)]
pub struct MongoRecords {
    client: Client,
    db: Database,
    users: Collection<UserDoc>,
    products: Collection<ProductDoc>,
    sales: Collection<SaleDoc>,
    orders: Collection<OrderDoc>,
    txn_options: TransactionOptions,
    /// Transactions and commits retried since start (conflicts, transient errors).
    retries: Arc<AtomicU64>,
}

/// Connects to MongoDB at `uri`, checks that a server answers (within a few seconds unless the
/// URI sets `serverSelectionTimeoutMS`) and is part of a replica set or sharded cluster (a
/// standalone server has no transactions), and creates the indexes the record needs in
/// `database`. Errors name MongoDB and the URI, without its credentials.
pub async fn connect(uri: &str, database: &str) -> anyhow::Result<MongoRecords> {
    let shown = redact_uri(uri);
    let mut options = ClientOptions::parse(uri).await.with_context(|| format!("invalid MongoDB URI {shown}"))?;
    options.server_selection_timeout.get_or_insert(SERVER_SELECTION_TIMEOUT);
    options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
    options.app_name.get_or_insert_with(|| "flashsale".to_owned());
    let client = Client::with_options(options).with_context(|| format!("invalid MongoDB options in {shown}"))?;
    let records = MongoRecords::new(client, database);
    records.db.run_command(doc! { "ping": 1 }).await.with_context(|| format!("MongoDB at {shown} is unreachable"))?;
    let hello = records
        .db
        .run_command(doc! { "hello": 1 })
        .await
        .with_context(|| format!("asking MongoDB at {shown} what it is"))?;
    let replicated = hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid");
    anyhow::ensure!(
        replicated,
        "MongoDB at {shown} is a standalone server: flashsale needs a replica set (or a sharded cluster) for transactions"
    );
    records
        .create_indexes()
        .await
        .with_context(|| format!("creating the indexes of MongoDB database {database:?} at {shown}"))?;
    tracing::info!(uri = %shown, database, "connected to MongoDB");
    Ok(records)
}

/// `uri` with any `user:password@` replaced by `***@`, for messages and logs.
fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &uri[..scheme_end], &rest[at..]),
        None => uri.to_owned(),
    }
}

impl MongoRecords {
    fn new(client: Client, database: &str) -> Self {
        let db = client.database_with_options(
            database,
            DatabaseOptions::builder()
                .write_concern(WriteConcern::majority())
                .read_concern(ReadConcern::majority())
                .build(),
        );
        Self {
            users: db.collection("users"),
            products: db.collection("products"),
            sales: db.collection("sales"),
            orders: db.collection("orders"),
            txn_options: TransactionOptions::builder()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::majority())
                .max_commit_time(TXN_COMMIT_LIMIT)
                .build(),
            retries: Arc::new(AtomicU64::new(0)),
            client,
            db,
        }
    }

    /// How many transactions (whole, or their commit) were retried since this store was
    /// connected: a measure of write contention between nodes.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    async fn create_indexes(&self) -> Result<(), MongoError> {
        fn index(keys: Document, name: &str, unique: bool) -> IndexModel {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).unique(unique).build())
                .build()
        }
        self.users.create_index(index(doc! { "email": 1 }, "email_unique", true)).await?;
        self.orders
            .create_index(index(doc! { "buyer_id": 1, "sale_id": 1, "idempotency_key": 1 }, "order_key_unique", true))
            .await?;
        self.orders.create_index(index(doc! { "sale_id": 1, "_id": 1 }, "orders_by_sale", false)).await?;
        self.orders.create_index(index(doc! { "buyer_id": 1, "_id": 1 }, "orders_by_buyer", false)).await?;
        self.sales.create_index(index(doc! { "product_id": 1, "_id": -1 }, "sales_by_product", false)).await?;
        Ok(())
    }

    fn note_retry(&self, what: &'static str, attempt: u32, why: &dyn std::fmt::Display) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flashsale_record_retries_total", "operation" => what).increment(1);
        tracing::debug!(operation = what, attempt, reason = %why, "retrying a MongoDB transaction");
    }

    /// Runs `body` in a transaction until it commits, aborts by itself, or fails for good.
    ///
    /// The whole transaction runs again when the body or the commit fails with the
    /// `TransientTransactionError` label (unless no server could be selected at all: the servers
    /// are down, and the caller hears it at once) or the body reports a [`Attempt::Conflict`]; the commit
    /// alone runs again on `UnknownTransactionCommitResult`. `body` must therefore read
    /// everything it decides on inside the transaction.
    async fn transaction<T, F>(&self, what: &'static str, mut body: F) -> Result<T, TxnFailure<T>>
    where
        T: Send,
        F: for<'s> FnMut(&'s mut ClientSession) -> BoxFuture<'s, Result<Attempt<T>, MongoError>> + Send,
    {
        let mut session = self.client.start_session().await.map_err(|e| TxnFailure::Store(store_error(e)))?;
        let mut attempt = 1;
        loop {
            session
                .start_transaction()
                .with_options(self.txn_options.clone())
                .await
                .map_err(|e| TxnFailure::Store(store_error(e)))?;
            let Ok(done) = tokio::time::timeout(TXN_BODY_LIMIT, body(&mut session)).await else {
                abort_quietly(&mut session).await;
                let stalled = Stalled { operation: what, limit: TXN_BODY_LIMIT };
                return Err(TxnFailure::Store(StoreError::Unavailable(Box::new(stalled))));
            };
            let why: Box<dyn std::fmt::Display + Send + Sync> = match done {
                Ok(Attempt::Commit(answer)) => match self.commit(what, &mut session).await {
                    Ok(()) => return Ok(answer),
                    Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && !is_server_selection(&e) => Box::new(e),
                    Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => {
                        return Err(TxnFailure::CommitUnknown { answer, error: e })
                    }
                    Err(e) => return Err(TxnFailure::Store(store_error(e))),
                },
                Ok(Attempt::Abort(answer)) => {
                    abort_quietly(&mut session).await;
                    return answer.map_err(TxnFailure::Store);
                }
                Ok(Attempt::Conflict(why)) => {
                    abort_quietly(&mut session).await;
                    Box::new(why)
                }
                Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && !is_server_selection(&e) => {
                    abort_quietly(&mut session).await;
                    Box::new(e)
                }
                Err(e) => {
                    abort_quietly(&mut session).await;
                    return Err(TxnFailure::Store(store_error(e)));
                }
            };
            if attempt >= MAX_TXN_ATTEMPTS {
                return Err(TxnFailure::Store(StoreError::Unavailable(Box::new(GaveUp {
                    operation: what,
                    attempts: attempt,
                    last: why.to_string(),
                }))));
            }
            self.note_retry(what, attempt, &why);
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// Commits, retrying while the outcome is unknown (the driver then commits with majority
    /// write concern, and a server that already committed answers success).
    async fn commit(&self, what: &'static str, session: &mut ClientSession) -> Result<(), MongoError> {
        let mut attempt = 1;
        loop {
            match session.commit_transaction().await {
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && attempt < MAX_COMMIT_ATTEMPTS => {
                    self.note_retry(what, attempt, &e);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
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

    /// One attempt of `commit_orders`: decides every order exactly as the embedded record does
    /// (ended, then oversell, then duplicate key, in batch order), then writes.
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
        let mut added: HashMap<&str, i64> = HashMap::new();
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
            let outcome = if sale.is_ended() {
                Err(CommitRefusal::SaleEnded)
            } else if sale.sold + quantity > sale.allocated {
                Err(CommitRefusal::WouldOversell)
            } else if keys.contains(&key) {
                Err(CommitRefusal::Duplicate)
            } else {
                sale.sold += quantity;
                *added.entry(order.sale_id.as_str()).or_default() += quantity;
                keys.insert(key);
                accepted.push(OrderDoc::from(order));
                Ok(())
            };
            outcomes.push(outcome);
        }
        if accepted.is_empty() {
            return Ok(Attempt::Abort(Ok(outcomes)));
        }

        // The record's own guard against oversell: each sale's count rises only if the sale
        // is still open and has room, whatever was read above.
        for (sale_id, n) in &added {
            let allocated = sales[*sale_id].allocated;
            let raised = self
                .sales
                .update_one(
                    doc! {
                        "_id": *sale_id,
                        "status": { "$ne": SaleStatus::Ended.as_str() },
                        "sold": { "$lte": allocated - n },
                    },
                    doc! { "$inc": { "sold": *n } },
                )
                .session(&mut *s)
                .await?;
            if raised.matched_count != 1 {
                return Ok(Attempt::Conflict("a sale ended or sold more while the batch was decided"));
            }
        }
        match self.orders.insert_many(&accepted).session(&mut *s).await {
            Ok(_) => Ok(Attempt::Commit(outcomes)),
            Err(e) if is_duplicate_key(&e) => Ok(Attempt::Conflict("an order with the same key was stored meanwhile")),
            Err(e) => Err(e),
        }
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

    async fn find_orders(&self, filter: Document) -> Result<Vec<OrderRecord>, StoreError> {
        let docs: Vec<OrderDoc> = self
            .orders
            .find(filter)
            .sort(doc! { "_id": 1 })
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        docs.into_iter().map(OrderRecord::try_from).collect()
    }

    async fn find_sales(&self, filter: Document) -> Result<Vec<SaleRecord>, StoreError> {
        let docs: Vec<SaleDoc> = self
            .sales
            .find(filter)
            .sort(doc! { "_id": -1 })
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        docs.into_iter().map(SaleRecord::try_from).collect()
    }

    async fn sale_by_id(&self, id: &str) -> Result<Option<SaleRecord>, StoreError> {
        self.sales.find_one(doc! { "_id": id }).await.map_err(store_error)?.map(SaleRecord::try_from).transpose()
    }
}

/// What one attempt of a transaction's body decided.
enum Attempt<T> {
    /// Commit, then answer this.
    Commit(T),
    /// Nothing to write: abort, then answer this.
    Abort(Result<T, StoreError>),
    /// What the attempt read changed under it (a conditional write matched nothing, a unique
    /// key appeared): abort and run the body again.
    Conflict(&'static str),
}

/// Why a transaction gave no answer.
enum TxnFailure<T> {
    /// It failed; nothing was written.
    Store(StoreError),
    /// The commit was sent, but whether it took effect stayed unknown; `answer` is the answer
    /// had it committed. The caller checks what is stored.
    CommitUnknown { answer: T, error: MongoError },
}

/// A transaction that kept conflicting.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: the transaction still conflicted after {attempts} attempts (last: {last})")]
struct GaveUp {
    operation: &'static str,
    attempts: u32,
    last: String,
}

/// A transaction whose reads and writes took longer than allowed (a stalled server).
#[derive(Debug, thiserror::Error)]
#[error("{operation}: the transaction's reads and writes took longer than {limit:?}; it was aborted")]
struct Stalled {
    operation: &'static str,
    limit: Duration,
}

/// A commit whose outcome could not be learnt, and what the check afterwards found.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: commit outcome unknown and the record shows it did not happen")]
struct NotCommitted {
    operation: &'static str,
    #[source]
    source: MongoError,
}

/// The error to report when the check after an unknown commit could not settle it either: the
/// write may or may not be in the record (reconciliation with the record settles it later).
fn unsettled(operation: &'static str, error: MongoError, check: StoreError) -> StoreError {
    tracing::error!(operation, error = %error, check = ?check, "commit outcome unknown; the record may hold the write");
    StoreError::Unavailable(Box::new(error))
}

async fn abort_quietly(session: &mut ClientSession) {
    // An abort after a failed command or commit may itself fail (the server already dropped
    // the transaction, or the driver considers it committed): nothing more to undo then.
    let _ = session.abort_transaction().await;
}

fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_FIRST.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    let millis = full.as_millis() as u64;
    Duration::from_millis(rand::random_range(millis / 2..=millis))
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

/// Whether no server could be selected: the driver already waited the whole server selection
/// timeout for one, so retrying the transaction would only multiply that wait while the
/// servers are down. (The driver labels it transient inside a transaction.)
fn is_server_selection(error: &MongoError) -> bool {
    matches!(error.kind.as_ref(), ErrorKind::ServerSelection { .. })
}

/// Whether the server could not be reached or cannot serve now.
fn is_unavailable(error: &MongoError) -> bool {
    match error.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(command) => UNAVAILABLE_CODES.contains(&command.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => UNAVAILABLE_CODES.contains(&concern.code),
        ErrorKind::InsertMany(InsertManyError { write_concern_error: Some(concern), .. }) => {
            UNAVAILABLE_CODES.contains(&concern.code)
        }
        _ => false,
    }
}

fn is_duplicate_key(error: &MongoError) -> bool {
    const DUPLICATE_KEY: i32 = 11000;
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(InsertManyError { write_errors: Some(errors), .. }) => {
            errors.iter().any(|e| e.code == DUPLICATE_KEY)
        }
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// The store's view of a driver error.
fn store_error(error: MongoError) -> StoreError {
    if is_unavailable(&error) {
        StoreError::Unavailable(Box::new(error))
    } else {
        StoreError::Internal(Box::new(error))
    }
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

    async fn upsert_user_by_email(&self, mut user: UserRecord) -> Result<UserRecord, StoreError> {
        // Insert-or-replace under the unique email index: a lost race to insert reads again.
        for _ in 0..3 {
            let existing = self.users.find_one(doc! { "email": user.email.as_str() }).await.map_err(store_error)?;
            match existing {
                Some(existing) => {
                    user.id = UserRecord::try_from(existing)?.id;
                    let replaced = self
                        .users
                        .replace_one(doc! { "_id": user.id.as_str() }, UserDoc::from(&user))
                        .await
                        .map_err(store_error)?;
                    if replaced.matched_count == 1 {
                        return Ok(user);
                    }
                }
                None => match self.users.insert_one(UserDoc::from(&user)).await {
                    Ok(_) => return Ok(user),
                    Err(e) if is_duplicate_key(&e) => {}
                    Err(e) => return Err(store_error(e)),
                },
            }
        }
        Err(StoreError::Internal("the account kept changing while it was being stored".into()))
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        self.users
            .find_one(doc! { "email": email.as_str() })
            .await
            .map_err(store_error)?
            .map(UserRecord::try_from)
            .transpose()
    }

    async fn create_product(&self, product: ProductRecord) -> Result<(), StoreError> {
        self.products.insert_one(ProductDoc::from(&product)).await.map_err(store_error)?;
        Ok(())
    }

    async fn list_products(&self) -> Result<Vec<ProductRecord>, StoreError> {
        let docs: Vec<ProductDoc> = self
            .products
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        docs.into_iter().map(ProductRecord::try_from).collect()
    }

    async fn get_product(&self, id: &ProductId) -> Result<Option<ProductRecord>, StoreError> {
        self.products
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(store_error)?
            .map(ProductRecord::try_from)
            .transpose()
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

    async fn list_sales(&self, product: Option<&ProductId>) -> Result<Vec<SaleRecord>, StoreError> {
        let filter = match product {
            Some(product) => doc! { "product_id": product.as_str() },
            None => doc! {},
        };
        self.find_sales(filter).await
    }

    async fn open_sales(&self) -> Result<Vec<SaleRecord>, StoreError> {
        self.find_sales(doc! { "status": { "$ne": SaleStatus::Ended.as_str() } }).await
    }

    async fn activate_sale(&self, id: &SaleId, start: UnixMillis) -> Result<(SaleRecord, bool), StoreError> {
        // Read, then a write conditional on the status read: a concurrent change reads again.
        for _ in 0..5 {
            let mut sale = self.sale_by_id(id.as_str()).await?.ok_or(StoreError::NotFound)?;
            match sale.status {
                SaleStatus::Active => return Ok((sale, false)),
                SaleStatus::Ended => return Err(StoreError::WrongStatus(SaleStatus::Ended)),
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
                        return Ok((sale, true));
                    }
                }
            }
        }
        Err(StoreError::Internal("the sale kept changing while it was being started".into()))
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
        self.orders
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(store_error)?
            .map(OrderRecord::try_from)
            .transpose()
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

    async fn order_by_key(
        &self,
        buyer: &UserId,
        sale: &SaleId,
        key: &IdempotencyKey,
    ) -> Result<Option<OrderRecord>, StoreError> {
        self.orders
            .find_one(doc! { "buyer_id": buyer.as_str(), "sale_id": sale.as_str(), "idempotency_key": key.as_str() })
            .await
            .map_err(store_error)?
            .map(OrderRecord::try_from)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(
            redact_uri("mongodb://ann:s3cret@db1:27017,db2/?replicaSet=rs0"),
            "mongodb://***@db1:27017,db2/?replicaSet=rs0"
        );
        assert_eq!(
            redact_uri("mongodb+srv://ann:p@ss@cluster.example.com/app"),
            "mongodb+srv://***@cluster.example.com/app"
        );
        assert_eq!(redact_uri("mongodb://127.0.0.1:27017/?w=majority"), "mongodb://127.0.0.1:27017/?w=majority");
        assert_eq!(redact_uri("not a uri"), "not a uri");
    }

    #[test]
    fn unreachable_servers_are_unavailable_and_the_rest_internal() {
        let io: MongoError = ErrorKind::Io(Arc::new(std::io::ErrorKind::ConnectionRefused.into())).into();
        assert!(matches!(store_error(io), StoreError::Unavailable(_)));
        let bad = MongoError::custom("a bug");
        assert!(matches!(store_error(bad), StoreError::Internal(_)));
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        for attempt in 1..=MAX_TXN_ATTEMPTS {
            let pause = backoff(attempt);
            assert!(pause <= BACKOFF_CAP, "{pause:?} after attempt {attempt}");
        }
        assert!(backoff(1) <= BACKOFF_FIRST);
        assert!(backoff(10) >= BACKOFF_CAP / 2);
    }
}
