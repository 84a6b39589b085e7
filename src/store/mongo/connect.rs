//! Connecting: the client's timeouts, the check that the server can run transactions (a replica
//! set or a sharded cluster, not a standalone server), and the indexes the record needs.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;
use mongodb::options::{ClientOptions, DatabaseOptions, IndexOptions, ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, IndexModel};

use super::txn::TXN_COMMIT_LIMIT;
use super::MongoRecords;
use crate::store::redact_uri;

/// How long `connect` (and every later operation) looks for a usable server before giving up,
/// unless the URI sets `serverSelectionTimeoutMS`.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening one connection may take, unless the URI sets `connectTimeoutMS`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
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
            waitlist: db.collection("waitlist"),
            events: db.collection("order_events"),
            counters: db.collection("counters"),
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
        self.orders.create_index(index(doc! { "status": 1, "expires_at": 1 }, "holds_by_deadline", false)).await?;
        self.waitlist.create_index(index(doc! { "sale_id": 1, "joined_at": 1 }, "line_by_sale", false)).await?;
        self.sales.create_index(index(doc! { "product_id": 1, "_id": -1 }, "sales_by_product", false)).await?;
        self.events.create_index(index(doc! { "sale_id": 1, "_id": 1 }, "events_by_sale", false)).await?;
        self.events.create_index(index(doc! { "at": 1 }, "events_by_time", false)).await?;
        // The counter exists before any transaction raises it (no collection is created inside
        // a transaction).
        self.counters
            .update_one(doc! { "_id": super::EVENTS_COUNTER }, doc! { "$setOnInsert": { "seq": 0_i64 } })
            .upsert(true)
            .await?;
        Ok(())
    }
}
