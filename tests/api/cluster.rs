//! Many nodes and faults: real `flashsale` processes sharing one Redis and one MongoDB.
//!
//! On the shared test servers (a fresh key prefix and database each): a rush split across two
//! nodes sells exactly the allocation; a watcher on one node sees purchases made on the other;
//! one buyer's concurrent purchases over both nodes stay within the per-user limit.
//!
//! Faults, each on private servers so that stopping them disturbs no other test, with short
//! reconciliation settings: Redis restarted mid-rush without its keys, and from an append-only
//! file; the MongoDB test server stopped mid-rush and restarted on its file; one of two nodes
//! killed with SIGKILL. Buyers retry BACKEND_UNAVAILABLE (and a dead node's transport errors, on
//! the other node) with the same idempotency key, as clients are told to. Each ends with the same
//! checks ([`verify`]): once reconciliation has settled, every unit is accounted for (sold =
//! allocated, or units left and every buyer served), the orders in MongoDB add up to the units
//! taken from stock, every acknowledged order is there exactly once, per-user limits hold.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashsale::auth::JwtKeys;
use flashsale::clock::{Clock, SystemClock};
use flashsale::domain::{Role, UnixMillis};
use flashsale_client::pb;
use flashsale_client::pb::admin_service_client::AdminServiceClient;
use flashsale_client::pb::feeds_service_client::FeedsServiceClient;
use flashsale_client::pb::purchase_service_client::PurchaseServiceClient;
use futures::StreamExt;
use mongodb::bson::{doc, Bson, Document};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::helpers::{authed, error_metadata, poll_until, read_until, reason, timestamp, BinaryServer};
use crate::mongo_support::{self, MongoTestServer};
use crate::redis_support::{self, RedisServer};

const SECRET: &str = "cluster-test-secret-long-enough-for-hs256-signing";
/// Longest a client waits for one answer: a hung call is a failure, not a retry.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A client's pause before retrying BACKEND_UNAVAILABLE or a stock refusal.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Bound on one rush, outages included.
const RUSH_DEADLINE: Duration = Duration::from_secs(240);
/// Bound on reconciliation settling everything once the rush is over.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// Concurrent buyers of a rush.
const WORKERS: usize = 32;

/// Reconciliation settings of the nodes.
#[derive(Clone, Copy)]
struct Reconcile {
    interval_ms: u64,
    orphan_after_ms: u64,
}

/// Faults: reconciliation often, orphans settled after 2 s.
// Orphans must outlive the slowest commit: a batch failing against a stopped MongoDB spends
// seconds in server selection, so anything younger may still be on its way to the record.
const FAULT_RECONCILE: Reconcile = Reconcile { interval_ms: 500, orphan_after_ms: 12_000 };
/// No faults: production's defaults.
const CALM_RECONCILE: Reconcile = Reconcile { interval_ms: 10_000, orphan_after_ms: 30_000 };

// ---- servers and nodes -----------------------------------------------------------------------

/// Where the nodes of one test keep their state.
#[derive(Clone, Debug)]
struct Backends {
    redis_uri: String,
    prefix: String,
    mongo_uri: String,
    database: String,
}

impl Backends {
    /// The process's shared servers (the shared Redis Cluster with `FLASHSALE_TEST_REDIS=cluster`:
    /// the nodes take its seed list), with a key prefix and a database of its own.
    fn shared() -> Self {
        let redis_uri = match redis_support::on_cluster() {
            true => tokio::task::block_in_place(redis_support::shared_cluster).uri(),
            false => tokio::task::block_in_place(redis_support::shared_redis).uri(),
        };
        let mongo = tokio::task::block_in_place(mongo_support::shared);
        Self {
            redis_uri,
            prefix: redis_support::fresh_prefix(),
            mongo_uri: mongo.uri(),
            database: mongo_support::fresh_database("cluster"),
        }
    }

    /// Private servers (the URIs stay valid across restarts on the same ports).
    fn private(redis: &RedisServer, mongo: &MongoTestServer) -> Self {
        Self {
            redis_uri: redis.uri(),
            prefix: "fs:".into(),
            mongo_uri: mongo.uri(),
            database: mongo_support::fresh_database("fault"),
        }
    }

    /// A connection to the nodes' Redis (one instance or the Cluster).
    async fn redis(&self) -> flashsale::store::redis::Connection {
        let topology = flashsale::store::redis::Topology::of(&self.redis_uri, false);
        flashsale::store::redis::Connection::open(&self.redis_uri, topology).await.expect("connect to Redis")
    }

    /// Ids of a sale's reservations in flight, read from Redis (see `store/redis/mod.rs`).
    async fn pending(&self, sale_id: &str) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.redis().await;
        redis::cmd("HKEYS").arg(format!("{}{{sale:{sale_id}}}:pending", self.prefix)).query_async(&mut conn).await
    }

    /// The sale as MongoDB holds it, read with the driver.
    async fn record(&self, sale_id: &str) -> mongodb::error::Result<RecordState> {
        let client = mongodb::Client::with_uri_str(&self.mongo_uri).await?;
        let db = client.database(&self.database);
        let mut cursor = db.collection::<Document>("orders").find(doc! { "sale_id": sale_id }).await?;
        let mut state = RecordState::default();
        while let Some(order) = cursor.next().await {
            let order = order?;
            state.orders += 1;
            state.units += number(&order, "quantity");
        }
        let sale = db
            .collection::<Document>("sales")
            .find_one(doc! { "_id": sale_id })
            .await?
            .expect("the sale is in MongoDB");
        state.sold = number(&sale, "sold");
        state.status = sale.get_str("status").unwrap_or_default().to_owned();
        state.end_reason = sale.get_str("end_reason").unwrap_or_default().to_owned();
        Ok(state)
    }
}

/// A sale in MongoDB: its orders and its own counters.
#[derive(Debug, Default, Clone, PartialEq)]
struct RecordState {
    orders: usize,
    /// Units in its orders.
    units: i64,
    /// The sale document's `sold`.
    sold: i64,
    status: String,
    end_reason: String,
}

/// An integer field (the test server returns small Int64 as Int32).
fn number(doc: &Document, field: &str) -> i64 {
    match doc.get(field) {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        other => panic!("{field} is not an integer in {doc:?}: {other:?}"),
    }
}

/// One `flashsale` process.
struct Node {
    server: BinaryServer,
    channel: Channel,
    _data: tempfile::TempDir,
}

impl Node {
    async fn start(backends: &Backends, reconcile: Reconcile) -> Node {
        let data = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> =
            ["serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"].map(String::from).into();
        args.extend([
            "--data-dir".into(),
            data.path().display().to_string(),
            "--jwt-secret".into(),
            SECRET.into(),
            "--buyer-purchases-per-sec".into(),
            "0".into(),
            "--ip-purchases-per-sec".into(),
            "0".into(),
            "--ip-logins-per-sec".into(),
            "0".into(),
            "--feed-interval-ms".into(),
            "20".into(),
            "--redis-uri".into(),
            backends.redis_uri.clone(),
            "--redis-key-prefix".into(),
            backends.prefix.clone(),
            "--mongodb-uri".into(),
            backends.mongo_uri.clone(),
            "--mongodb-database".into(),
            backends.database.clone(),
            "--reconcile-interval-ms".into(),
            reconcile.interval_ms.to_string(),
            "--orphan-after-ms".into(),
            reconcile.orphan_after_ms.to_string(),
        ]);
        let server = tokio::task::spawn_blocking(move || BinaryServer::start(args)).await.expect("start flashsale");
        let channel = server.channel().await;
        Node { server, channel, _data: data }
    }

    fn log(&self) -> String {
        self.server.log.as_ref().map_or_else(|| "(stderr)".into(), |p| p.display().to_string())
    }
}

/// Two nodes on `backends`.
async fn two_nodes(backends: &Backends, reconcile: Reconcile) -> [Node; 2] {
    let a = Node::start(backends, reconcile).await;
    let b = Node::start(backends, reconcile).await;
    eprintln!("node A log: {}\nnode B log: {}", a.log(), b.log());
    [a, b]
}

// ---- the API as a client sees it ---------------------------------------------------------------

/// Tokens signed with the nodes' secret, as `flashsale token` makes them.
struct Shop {
    keys: JwtKeys,
    admin: String,
}

impl Shop {
    fn new() -> Self {
        let keys = JwtKeys::new(SECRET.as_bytes());
        let admin = keys.issue("cluster-admin", "Admin", Role::Admin, SystemClock.now(), Duration::from_secs(3600)).0;
        Self { keys, admin }
    }

    fn buyer(&self, id: &str) -> String {
        self.keys.issue(id, &format!("Buyer {id}"), Role::Buyer, SystemClock.now(), Duration::from_secs(3600)).0
    }

    /// A product holding `allocated` units, and an ACTIVE sale of all of them for an hour.
    async fn sale(&self, node: &Channel, allocated: i64, per_user_limit: u32, max_per_purchase: u32) -> pb::Sale {
        let mut admin = AdminServiceClient::new(node.clone());
        let product = admin
            .create_product(authed(
                pb::CreateProductRequest {
                    name: "Cluster sneaker".into(),
                    description: String::new(),
                    initial_inventory: allocated,
                },
                &self.admin,
            ))
            .await
            .expect("create product")
            .into_inner();
        admin
            .create_sale(authed(
                pb::CreateSaleRequest {
                    queue: None,
                    product_id: product.id,
                    allocated,
                    unit_price: Some(pb::Money { amount_minor: 2500, currency: "EUR".into() }),
                    per_user_limit,
                    max_per_purchase,
                    start_time: None,
                    end_time: Some(timestamp(UnixMillis(SystemClock.now().0 + 3_600_000))),
                    hold_seconds: 0,
                },
                &self.admin,
            ))
            .await
            .expect("create sale")
            .into_inner()
    }

    async fn get_sale(&self, node: &Channel, sale_id: &str) -> Result<pb::Sale, Status> {
        let mut admin = AdminServiceClient::new(node.clone());
        within(admin.get_sale(authed(pb::GetSaleRequest { sale_id: sale_id.into() }, &self.admin)))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn product(&self, node: &Channel, product_id: &str) -> pb::Product {
        AdminServiceClient::new(node.clone())
            .get_product(authed(pb::GetProductRequest { product_id: product_id.into() }, &self.admin))
            .await
            .expect("get product")
            .into_inner()
    }
}

/// `call`, or DEADLINE_EXCEEDED after [`CALL_TIMEOUT`].
async fn within<T>(call: impl std::future::Future<Output = Result<T, Status>>) -> Result<T, Status> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("the client got no answer within {CALL_TIMEOUT:?}"))))
}

async fn buy(
    node: &Channel,
    token: &str,
    sale_id: &str,
    quantity: u32,
    key: &str,
) -> Result<pb::PurchaseResponse, Status> {
    let request = pb::PurchaseRequest {
        admission_pass: String::new(),
        sale_id: sale_id.into(),
        quantity,
        idempotency_key: key.into(),
    };
    within(PurchaseServiceClient::new(node.clone()).purchase(authed(request, token)))
        .await
        .map(tonic::Response::into_inner)
}

/// Every page of the buyer's orders in the sale.
async fn my_orders(node: &Channel, token: &str, sale_id: &str) -> Vec<pb::Order> {
    let client = flashsale_client::Client::from_channel(node.clone()).with_token(token).expect("a token");
    tokio::time::timeout(CALL_TIMEOUT, client.my_orders(sale_id))
        .await
        .expect("ListMyOrders answered in time")
        .expect("list my orders")
}

// ---- the rush ----------------------------------------------------------------------------------

/// How a buyer's purchases went, in the end.
#[derive(Debug, Clone, PartialEq)]
enum BuyerEnd {
    /// Every planned unit bought.
    Served,
    /// Stopped by a stock refusal once every unit was sold.
    SoldOut,
    /// Stopped by something a client should never see (recorded in `unexpected`).
    Failed,
}

/// An acknowledged purchase.
#[derive(Debug, Clone)]
struct Ack {
    buyer: usize,
    key: String,
    quantity: u32,
    order_id: String,
    replayed: bool,
    at: Instant,
}

/// What a rush saw.
#[derive(Default)]
struct Journal {
    acks: Vec<Ack>,
    /// When each BACKEND_UNAVAILABLE arrived.
    unavailable_at: Vec<Instant>,
    /// Answers no client should get, described.
    unexpected: Vec<String>,
    ends: HashMap<usize, BuyerEnd>,
    /// Every (buyer, key) sent, with its quantity.
    sent: HashMap<(usize, String), u32>,
}

/// A rush: buyers alternate between the nodes, `WORKERS` at a time; each makes its planned
/// purchases one after another, retrying as a client is told to.
struct Rush {
    sale: pb::Sale,
    tag: String,
    tokens: Vec<String>,
    plan: fn(usize) -> Vec<u32>,
    nodes: Vec<Channel>,
    /// Cleared just before a node is killed: its transport errors are then expected.
    alive: Vec<AtomicBool>,
    shop: Arc<Shop>,
    deadline: Instant,
    next_buyer: AtomicUsize,
    acked_units: AtomicI64,
    unavailable: AtomicUsize,
    node_gone: AtomicUsize,
    stock_refusals: AtomicUsize,
    journal: Mutex<Journal>,
}

enum Answer {
    /// BACKEND_UNAVAILABLE: retry with the same key.
    Unavailable,
    /// A transport error from a node known dead: retry elsewhere with the same key.
    NodeGone,
    /// SALE_ENDED because every unit was sold.
    Ended,
    /// SOLD_OUT or INSUFFICIENT_STOCK.
    NoStock {
        insufficient: bool,
    },
    Unexpected,
}

fn classify(status: &Status, node_alive: bool) -> Answer {
    match (status.code(), reason(status).as_str()) {
        (Code::Unavailable, "BACKEND_UNAVAILABLE") => Answer::Unavailable,
        (Code::ResourceExhausted, "SOLD_OUT") => Answer::NoStock { insufficient: false },
        (Code::ResourceExhausted, "INSUFFICIENT_STOCK") => Answer::NoStock { insufficient: true },
        (Code::FailedPrecondition, "SALE_ENDED")
            if error_metadata(status, "end_reason").is_some_and(|r| r.contains("SOLD_OUT")) =>
        {
            Answer::Ended
        }
        (_, "") if !node_alive => Answer::NodeGone,
        _ => Answer::Unexpected,
    }
}

impl Rush {
    fn new(
        tag: &str,
        shop: Arc<Shop>,
        sale: pb::Sale,
        buyers: usize,
        plan: fn(usize) -> Vec<u32>,
        nodes: &[&Node],
    ) -> Arc<Self> {
        Arc::new(Self {
            tokens: (0..buyers).map(|i| shop.buyer(&format!("{tag}-{i}"))).collect(),
            tag: tag.into(),
            sale,
            plan,
            nodes: nodes.iter().map(|n| n.channel.clone()).collect(),
            alive: nodes.iter().map(|_| AtomicBool::new(true)).collect(),
            shop,
            deadline: Instant::now() + RUSH_DEADLINE,
            next_buyer: AtomicUsize::new(0),
            acked_units: AtomicI64::new(0),
            unavailable: AtomicUsize::new(0),
            node_gone: AtomicUsize::new(0),
            stock_refusals: AtomicUsize::new(0),
            journal: Mutex::new(Journal::default()),
        })
    }

    fn buyer_id(&self, buyer: usize) -> String {
        format!("{}-{buyer}", self.tag)
    }

    fn buyers(&self) -> usize {
        self.tokens.len()
    }

    fn planned_units(&self, buyer: usize) -> i64 {
        (self.plan)(buyer).iter().map(|&q| i64::from(q)).sum()
    }

    /// Starts the workers.
    fn start(self: &Arc<Self>) -> tokio::task::JoinSet<()> {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..WORKERS {
            let rush = self.clone();
            workers.spawn(async move {
                loop {
                    let buyer = rush.next_buyer.fetch_add(1, Ordering::SeqCst);
                    if buyer >= rush.buyers() {
                        break;
                    }
                    let end = rush.run_buyer(buyer).await;
                    rush.journal.lock().unwrap().ends.insert(buyer, end);
                }
            });
        }
        workers
    }

    /// The node a buyer uses: its own (buyers alternate), or the next one alive.
    fn node_for(&self, buyer: usize) -> usize {
        let n = self.nodes.len();
        (0..n).map(|i| (buyer + i) % n).find(|&i| self.alive[i].load(Ordering::SeqCst)).expect("a node alive")
    }

    fn unexpected(&self, buyer: usize, key: &str, what: String) -> BuyerEnd {
        self.journal.lock().unwrap().unexpected.push(format!("{} {key}: {what}", self.buyer_id(buyer)));
        BuyerEnd::Failed
    }

    async fn run_buyer(&self, buyer: usize) -> BuyerEnd {
        let token = &self.tokens[buyer];
        let mut purchases: VecDeque<(String, u32)> =
            (self.plan)(buyer).into_iter().enumerate().map(|(n, q)| (format!("p{n}"), q)).collect();
        while let Some((key, quantity)) = purchases.pop_front() {
            self.journal.lock().unwrap().sent.insert((buyer, key.clone()), quantity);
            // Whether an attempt with this key may have made an order (its answer was lost).
            let mut uncertain = false;
            loop {
                if Instant::now() > self.deadline {
                    return self.unexpected(buyer, &key, format!("still unanswered after {RUSH_DEADLINE:?}"));
                }
                let node = self.node_for(buyer);
                let answer = buy(&self.nodes[node], token, &self.sale.id, quantity, &key).await;
                let status = match answer {
                    Ok(response) => {
                        let order = response.order.expect("a purchase answers its order");
                        self.acked_units.fetch_add(i64::from(quantity), Ordering::SeqCst);
                        self.journal.lock().unwrap().acks.push(Ack {
                            buyer,
                            key: key.clone(),
                            quantity,
                            order_id: order.id,
                            replayed: response.replayed,
                            at: Instant::now(),
                        });
                        break;
                    }
                    Err(status) => status,
                };
                match classify(&status, self.alive[node].load(Ordering::SeqCst)) {
                    Answer::Unavailable => {
                        uncertain = true;
                        self.unavailable.fetch_add(1, Ordering::SeqCst);
                        self.journal.lock().unwrap().unavailable_at.push(Instant::now());
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Answer::NodeGone => {
                        uncertain = true;
                        self.node_gone.fetch_add(1, Ordering::SeqCst);
                    }
                    Answer::Ended => return BuyerEnd::SoldOut,
                    Answer::NoStock { insufficient } => {
                        self.stock_refusals.fetch_add(1, Ordering::SeqCst);
                        // Sold out for real once every unit is in an acknowledged order; until then
                        // units in flight may come back (a failed commit gives them back).
                        if let Ok(sale) = self.shop.get_sale(&self.nodes[node], &self.sale.id).await {
                            if sale.sold >= sale.allocated {
                                return BuyerEnd::SoldOut;
                            }
                        }
                        if insufficient && quantity > 1 && !uncertain {
                            // Fewer units are left than asked for: buy them one at a time
                            // instead (new keys; the refused one made nothing).
                            for unit in (0..quantity).rev() {
                                purchases.push_front((format!("{key}-u{unit}"), 1));
                            }
                            break;
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Answer::Unexpected => {
                        return self.unexpected(
                            buyer,
                            &key,
                            format!("{:?} {}: {status:?}", status.code(), reason(&status)),
                        );
                    }
                }
            }
        }
        BuyerEnd::Served
    }

    /// Waits until at least `units` are in acknowledged orders.
    async fn wait_for_units(&self, units: i64) {
        poll_until(&format!("{units} units acknowledged"), Duration::from_secs(120), || async {
            (self.acked_units.load(Ordering::SeqCst) >= units).then_some(())
        })
        .await
    }

    /// Waits until `more` BACKEND_UNAVAILABLE answers arrived after `since`.
    async fn wait_for_unavailable(&self, since: Instant, more: usize) {
        poll_until(&format!("{more} BACKEND_UNAVAILABLE answers"), Duration::from_secs(60), || async {
            let seen = self.journal.lock().unwrap().unavailable_at.iter().filter(|&&t| t >= since).count();
            (seen >= more).then_some(())
        })
        .await
    }

    /// The first fresh (not replayed) acknowledgement after `since`, and when.
    fn first_sale_after(&self, since: Instant) -> Option<Duration> {
        self.journal.lock().unwrap().acks.iter().filter(|a| a.at > since && !a.replayed).map(|a| a.at - since).min()
    }

    async fn finish(&self, workers: tokio::task::JoinSet<()>) {
        tokio::time::timeout(RUSH_DEADLINE + CALL_TIMEOUT, workers.join_all())
            .await
            .expect("the rush ends within its deadline");
        let journal = self.journal.lock().unwrap();
        assert!(
            journal.unexpected.is_empty(),
            "{} answers no client should get, e.g. {:#?}",
            journal.unexpected.len(),
            &journal.unexpected[..journal.unexpected.len().min(10)]
        );
        assert_eq!(journal.ends.len(), self.buyers());
    }

    fn summary(&self) -> String {
        let journal = self.journal.lock().unwrap();
        format!(
            "{} acknowledged ({} replayed), {} BACKEND_UNAVAILABLE, {} dead-node errors, {} stock refusals",
            journal.acks.len(),
            journal.acks.iter().filter(|a| a.replayed).count(),
            self.unavailable.load(Ordering::SeqCst),
            self.node_gone.load(Ordering::SeqCst),
            self.stock_refusals.load(Ordering::SeqCst),
        )
    }
}

// ---- watchers ----------------------------------------------------------------------------------

/// What a watcher saw: every snapshot, and the status its stream failed with, if it did.
type Watched = Result<Vec<pb::SaleSnapshot>, (Vec<pb::SaleSnapshot>, Status)>;

/// A WatchSale stream followed in a task until it ends.
struct Watcher {
    node: &'static str,
    task: tokio::task::JoinHandle<Watched>,
}

impl Watcher {
    /// Opens WatchSale on `channel` (called `node` in messages) and follows it to its end.
    async fn open(node: &'static str, channel: &Channel, sale_id: &str) -> Self {
        let mut stream = FeedsServiceClient::new(channel.clone())
            .watch_sale(pb::WatchSaleRequest { sale_id: sale_id.into() })
            .await
            .unwrap_or_else(|e| panic!("WatchSale on node {node}: {e:?}"))
            .into_inner();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                match stream.message().await {
                    Ok(Some(snapshot)) => seen.push(snapshot),
                    Ok(None) => return Ok(seen),
                    Err(status) => return Err((seen, status)),
                }
            }
        });
        Self { node, task }
    }

    /// Waits for the stream's end and checks what it showed: versions that never decreased, and
    /// a last snapshot that is the sale's final state, after which the stream closed cleanly.
    async fn ends_with(self, last: &pb::Sale) -> Vec<pb::SaleSnapshot> {
        let node = self.node;
        let seen = match tokio::time::timeout(SETTLE_DEADLINE, self.task).await {
            Err(_) => panic!("node {node}'s watcher: the stream did not end within {SETTLE_DEADLINE:?}"),
            Ok(joined) => match joined.expect("the watcher task") {
                Ok(seen) => seen,
                Err((seen, status)) => panic!(
                    "node {node}'s watcher: the stream failed after {} snapshots (last {:?}): {status:?}",
                    seen.len(),
                    seen.last()
                ),
            },
        };
        let end = seen.last().unwrap_or_else(|| panic!("node {node}'s watcher saw nothing"));
        assert_eq!(
            (end.status(), end.end_reason(), end.sold, end.remaining),
            (last.status(), last.end_reason(), last.sold, last.remaining),
            "node {node}'s watcher ended on another state than the sale's final one"
        );
        if let Some(w) = seen.windows(2).find(|w| w[1].version < w[0].version) {
            panic!("node {node}'s watcher saw the version go back: {} then {}", w[0].version, w[1].version);
        }
        seen
    }
}

// ---- the end checks ----------------------------------------------------------------------------

/// What [`verify`] found.
struct Verified {
    sold: i64,
    remaining: i64,
    /// How long reconciliation took to settle everything after the rush.
    settled_in: Duration,
}

/// Waits until the nodes in `live` and the record agree with nothing in flight, then checks that
/// every unit is accounted for, the orders in MongoDB add up to the units taken from stock,
/// every acknowledged order is there exactly once, and per-user limits hold.
async fn verify(rush: &Rush, backends: &Backends, live: &[&Node]) -> Verified {
    let sale = &rush.sale;
    let shop = &rush.shop;
    let started = Instant::now();
    let (record, views) = loop {
        let pending = backends.pending(&sale.id).await;
        let record = backends.record(&sale.id).await;
        let mut views = Vec::new();
        for node in live {
            views.push(shop.get_sale(&node.channel, &sale.id).await);
        }
        if let (Ok(pending), Ok(record)) = (&pending, &record) {
            let agree = views.iter().all(|view| {
                view.as_ref().is_ok_and(|v| {
                    let ended = v.status() == pb::SaleStatus::Ended;
                    v.sold == record.sold
                        && ended == (record.status == "ENDED")
                        && (ended || v.remaining == v.allocated - v.sold)
                })
            });
            if pending.is_empty() && record.units == record.sold && agree {
                let views: Vec<pb::Sale> = views.into_iter().map(Result::unwrap).collect();
                break (record.clone(), views);
            }
        }
        let last = format!(
            "pending in Redis: {pending:?}\nrecord: {record:?}\nnodes: {:?}",
            views
                .iter()
                .map(|v| v.as_ref().map(|v| (v.sold, v.remaining, v.status())).map_err(|e| e.code()))
                .collect::<Vec<_>>()
        );
        assert!(started.elapsed() < SETTLE_DEADLINE, "nothing settled within {SETTLE_DEADLINE:?}:\n{last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let settled_in = started.elapsed();
    let view = &views[0];
    let (sold, remaining) = (view.sold, view.remaining);
    for other in &views {
        assert_eq!(
            (other.sold, other.remaining, other.status()),
            (sold, remaining, view.status()),
            "the nodes disagree"
        );
    }

    let (ends, sent, acks) = {
        let journal = rush.journal.lock().unwrap();
        (journal.ends.clone(), journal.sent.clone(), journal.acks.clone())
    };

    // Every unit is accounted for: sold out exactly, or units left and every buyer served.
    assert!(sold <= sale.allocated, "oversold: {sold} of {}", sale.allocated);
    if sold == sale.allocated {
        assert_eq!(remaining, 0);
        assert_eq!((view.status(), view.end_reason()), (pb::SaleStatus::Ended, pb::EndReason::SoldOut), "{view:?}");
        assert_eq!((record.status.as_str(), record.end_reason.as_str()), ("ENDED", "SOLD_OUT"));
    } else {
        assert_eq!(view.status(), pb::SaleStatus::Active, "{view:?}");
        assert_eq!(remaining, sale.allocated - sold, "units left = allocated - sold, none lost in flight");
        let refused: Vec<_> = ends.iter().filter(|(_, end)| **end != BuyerEnd::Served).collect();
        assert!(refused.is_empty(), "{remaining} units are left, yet buyers were refused: {refused:?}");
    }
    let product = shop.product(&live[0].channel, &sale.product_id).await;
    let expected_inventory = if view.status() == pb::SaleStatus::Ended { sale.allocated - sold } else { 0 };
    assert_eq!(product.inventory, expected_inventory, "the product's inventory after the sale");

    // The record: its orders add up to its counter and to the units taken from stock.
    assert_eq!(record.units, record.sold);
    assert_eq!(record.sold, sold);
    assert_eq!(record.units, sale.allocated - remaining, "orders in MongoDB = units taken from stock");

    // Every buyer's orders, as the API lists them.
    let node = &live[0].channel;
    let lists: HashMap<usize, Vec<pb::Order>> = futures::stream::iter(0..rush.buyers())
        .map(|buyer| async move { (buyer, my_orders(node, &rush.tokens[buyer], &sale.id).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut ids = HashSet::new();
    let mut listed_units = 0;
    for (&buyer, orders) in &lists {
        let keys: HashSet<&str> = orders.iter().map(|o| o.idempotency_key.as_str()).collect();
        assert_eq!(keys.len(), orders.len(), "an order stored twice for {}: {orders:?}", rush.buyer_id(buyer));
        let units: i64 = orders.iter().map(|o| i64::from(o.quantity)).sum();
        assert!(
            units <= i64::from(sale.per_user_limit),
            "{} holds {units} units, above the limit",
            rush.buyer_id(buyer)
        );
        for order in orders {
            assert!(ids.insert(order.id.clone()), "order {} listed twice", order.id);
            assert_eq!(
                (order.buyer_id.as_str(), order.sale_id.as_str()),
                (rush.buyer_id(buyer).as_str(), sale.id.as_str())
            );
            let sent = sent.get(&(buyer, order.idempotency_key.clone()));
            assert_eq!(sent, Some(&order.quantity), "an order the buyer never asked for: {order:?}");
        }
        if ends[&buyer] == BuyerEnd::Served {
            assert_eq!(units, rush.planned_units(buyer), "{} was served but holds {units} units", rush.buyer_id(buyer));
        }
        listed_units += units;
    }
    assert_eq!(listed_units, sold, "every buyer's orders add up to sold");
    assert_eq!(ids.len(), record.orders, "the orders listed are the orders in MongoDB");

    // Every acknowledged order is there, as acknowledged; every answer for one key is one order.
    let mut by_key: HashMap<(usize, &str), &str> = HashMap::new();
    for ack in &acks {
        let first = by_key.entry((ack.buyer, ack.key.as_str())).or_insert(ack.order_id.as_str());
        assert_eq!(*first, ack.order_id, "two orders acknowledged for {} {}", rush.buyer_id(ack.buyer), ack.key);
        assert!(
            lists[&ack.buyer]
                .iter()
                .any(|o| o.id == ack.order_id && o.quantity == ack.quantity && o.idempotency_key == ack.key),
            "acknowledged order {} ({} {}) is missing",
            ack.order_id,
            rush.buyer_id(ack.buyer),
            ack.key
        );
    }
    let found = futures::stream::iter(acks.iter())
        .map(|ack| async move {
            let mut purchase = PurchaseServiceClient::new(node.clone());
            let call = purchase
                .get_order(authed(pb::GetOrderRequest { order_id: ack.order_id.clone() }, &rush.tokens[ack.buyer]));
            let order = within(call)
                .await
                .unwrap_or_else(|e| panic!("acknowledged order {} is lost: {e:?}", ack.order_id))
                .into_inner();
            assert_eq!((order.quantity, order.idempotency_key.as_str()), (ack.quantity, ack.key.as_str()));
        })
        .buffer_unordered(16)
        .count()
        .await;
    assert_eq!(found, acks.len());
    Verified { sold, remaining, settled_in }
}

// ---- plans -------------------------------------------------------------------------------------

/// 5 units a buyer (limit 5, at most 3 a purchase): 300 buyers want 1,500.
fn five_units(buyer: usize) -> Vec<u32> {
    match buyer % 3 {
        0 => vec![3, 2],
        1 => vec![1, 2, 2],
        _ => vec![2, 1, 1, 1],
    }
}

/// 4 units a buyer (limit 4, at most 3 a purchase): 300 buyers want 1,200.
fn four_units(buyer: usize) -> Vec<u32> {
    match buyer % 3 {
        0 => vec![2, 2],
        1 => vec![1, 3],
        _ => vec![1, 1, 2],
    }
}

/// 3 units a buyer (limit 3, at most 3 a purchase): 300 buyers want 900.
fn three_units(buyer: usize) -> Vec<u32> {
    match buyer % 3 {
        0 => vec![1, 2],
        1 => vec![3],
        _ => vec![1, 1, 1],
    }
}

const ALLOCATED: i64 = 1_000;
const BUYERS: usize = 300;

// ---- many nodes --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rush_split_across_two_nodes_sells_exactly_the_allocation() {
    let backends = Backends::shared();
    let nodes = two_nodes(&backends, CALM_RECONCILE).await;
    let shop = Arc::new(Shop::new());
    let sale = shop.sale(&nodes[0].channel, ALLOCATED, 5, 3).await;
    let rush = Rush::new("split", shop.clone(), sale, BUYERS, five_units, &[&nodes[0], &nodes[1]]);

    let workers = rush.start();
    rush.finish(workers).await;
    assert_eq!(rush.unavailable.load(Ordering::SeqCst), 0, "no backend failed");

    let verified = verify(&rush, &backends, &[&nodes[0], &nodes[1]]).await;
    assert_eq!((verified.sold, verified.remaining), (ALLOCATED, 0));
    eprintln!("split rush: {}", rush.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_node_sees_purchases_made_on_the_other() {
    let backends = Backends::shared();
    let [a, b] = two_nodes(&backends, CALM_RECONCILE).await;
    let shop = Shop::new();
    let sale = shop.sale(&b.channel, 30, 3, 3).await;
    let mut watch = FeedsServiceClient::new(a.channel.clone())
        .watch_sale(pb::WatchSaleRequest { sale_id: sale.id.clone() })
        .await
        .expect("watch on node A")
        .into_inner();
    let first = read_until(&mut watch, "the first snapshot", |_| true).await;
    assert_eq!((first[0].sold, first[0].remaining), (0, 30));

    // Purchases on B, one at a time: A's watcher sees each.
    let mut sold = 0;
    for buyer in 0..4 {
        let token = shop.buyer(&format!("watched-{buyer}"));
        buy(&b.channel, &token, &sale.id, 2, "first").await.expect("a purchase on node B");
        sold += 2;
        let seen = read_until(&mut watch, &format!("sold {sold} on node A"), |s| s.sold >= sold).await;
        assert_eq!(seen.last().unwrap().sold, sold);
        assert_eq!(seen.last().unwrap().remaining, 30 - sold);
    }

    // The rest of the stock (22 units) and more, 2 units a buyer, concurrently on B; A's
    // watcher sees the sale end.
    let rest = futures::stream::iter(4..16)
        .map(|buyer| {
            let token = shop.buyer(&format!("watched-{buyer}"));
            let (node, sale_id) = (b.channel.clone(), sale.id.clone());
            async move { buy(&node, &token, &sale_id, 2, "rest").await.map(|r| r.order.unwrap().quantity) }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let bought: u32 = rest.iter().map(|r| *r.as_ref().unwrap_or(&0)).sum();
    assert_eq!(i64::from(bought), 30 - sold, "the rest sold: {rest:?}");
    let seen = read_until(&mut watch, "the ENDED snapshot on node A", |s| s.status() == pb::SaleStatus::Ended).await;
    let last = seen.last().unwrap();
    assert_eq!((last.sold, last.remaining, last.end_reason()), (30, 0, pb::EndReason::SoldOut));
    assert!(
        seen.windows(2).all(|w| w[0].sold <= w[1].sold && w[0].version <= w[1].version),
        "sold only grows: {seen:?}"
    );
    let end =
        tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("the stream ends after ENDED");
    assert!(matches!(end, Ok(None)), "the stream ends cleanly after ENDED: {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limits_hold_across_nodes() {
    const LIMIT: u32 = 5;
    const BUYERS: usize = 20;
    const ATTEMPTS: usize = 12;
    let backends = Backends::shared();
    let nodes = two_nodes(&backends, CALM_RECONCILE).await;
    let channels = [nodes[0].channel.clone(), nodes[1].channel.clone()];
    let shop = Shop::new();
    let sale = shop.sale(&channels[0], ALLOCATED, LIMIT, 2).await;

    // Each buyer sends 12 purchases of 1 or 2 units at once, alternating between the nodes.
    let results = futures::stream::iter(0..BUYERS)
        .map(|buyer| {
            let token = shop.buyer(&format!("limited-{buyer}"));
            let (channels, sale_id) = (channels.clone(), sale.id.clone());
            async move {
                let attempts =
                    (0..ATTEMPTS).map(|n| {
                        let (token, sale_id, node) =
                            (token.clone(), sale_id.clone(), channels[(buyer + n) % 2].clone());
                        async move {
                            (1 + n as u32 % 2, buy(&node, &token, &sale_id, 1 + n as u32 % 2, &format!("k{n}")).await)
                        }
                    });
                let answers = futures::future::join_all(attempts).await;
                (buyer, token, answers)
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;

    let mut total = 0;
    for (buyer, token, attempts) in results {
        let mut units = 0;
        for (quantity, result) in attempts {
            match result {
                Ok(response) => {
                    assert!(!response.replayed);
                    units += quantity;
                }
                Err(status) => {
                    assert_eq!(
                        (status.code(), reason(&status).as_str()),
                        (Code::ResourceExhausted, "USER_LIMIT_REACHED"),
                        "{status:?}"
                    );
                    assert_eq!(error_metadata(&status, "limit").as_deref(), Some("5"));
                }
            }
        }
        assert!(units <= LIMIT, "limited-{buyer} bought {units} units over both nodes, above the limit of {LIMIT}");
        assert!(units >= LIMIT - 1, "limited-{buyer} was refused with only {units} units");
        // Up to the limit, one unit at a time, then no more on either node.
        let mut n = 0;
        while units < LIMIT {
            buy(&channels[n % 2], &token, &sale.id, 1, &format!("top-up-{n}")).await.expect("a unit below the limit");
            units += 1;
            n += 1;
        }
        for (i, node) in channels.iter().enumerate() {
            let refused = buy(node, &token, &sale.id, 1, &format!("over-{i}")).await.expect_err("above the limit");
            assert_eq!(
                (refused.code(), reason(&refused).as_str()),
                (Code::ResourceExhausted, "USER_LIMIT_REACHED"),
                "{refused:?}"
            );
            assert_eq!(error_metadata(&refused, "bought").as_deref(), Some("5"));
        }
        let orders = my_orders(&channels[buyer % 2], &token, &sale.id).await;
        assert_eq!(orders.iter().map(|o| o.quantity).sum::<u32>(), LIMIT);
        total += i64::from(LIMIT);
    }
    for node in &channels {
        let view = shop.get_sale(node, &sale.id).await.expect("get sale");
        assert_eq!((view.sold, view.remaining), (total, ALLOCATED - total));
    }
    let record = backends.record(&sale.id).await.expect("read MongoDB");
    assert_eq!((record.units, record.sold), (total, total));
}

/// Reconciliation runs on every node beside live purchases and must never disturb them: two
/// buyers buy one unit at a time each, alternating nodes, while both nodes reconcile every
/// 100 ms. Nothing fails, so nothing may be refused and no node may find the hot state drifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_beside_live_purchases_never_disturbs_them() {
    const BUYERS: usize = 2;
    const PURCHASES: usize = 600;
    let backends = Backends::shared();
    let nodes = two_nodes(&backends, Reconcile { interval_ms: 100, orphan_after_ms: 30_000 }).await;
    let channels = [nodes[0].channel.clone(), nodes[1].channel.clone()];
    let shop = Shop::new();
    let sale = shop.sale(&channels[0], (BUYERS * PURCHASES) as i64, 0, 1).await;
    let buyers = (0..BUYERS).map(|b| {
        let (token, channels, sale_id) = (shop.buyer(&format!("steady-{b}")), channels.clone(), sale.id.clone());
        async move {
            let mut refused = Vec::new();
            for n in 0..PURCHASES {
                let key = format!("unit-{n}");
                match buy(&channels[(b + n) % 2], &token, &sale_id, 1, &key).await {
                    Ok(response) => assert!(!response.replayed),
                    Err(status) => refused.push((key, status)),
                }
            }
            let orders = my_orders(&channels[0], &token, &sale_id).await;
            (refused, orders)
        }
    });
    let mut refusals = Vec::new();
    let mut durable = 0;
    let mut total = 0;
    for (refused, orders) in futures::future::join_all(buyers).await {
        durable += refused.iter().filter(|(key, _)| orders.iter().any(|o| &o.idempotency_key == key)).count();
        refusals
            .extend(refused.into_iter().map(|(key, status)| format!("{key}: {:?} {}", status.code(), reason(&status))));
        total += orders.len();
    }
    let rebuilds: usize = nodes.iter().map(|n| n.server.log_text().matches("hot state drifted").count()).sum();
    assert!(
        refusals.is_empty() && rebuilds == 0,
        "{} of {} purchases refused, e.g. {:?}, {durable} of them with a durable order; the nodes rebuilt the live \
         sale's hot state {rebuilds} times (\"hot state drifted\" in their logs: {}, {})",
        refusals.len(),
        BUYERS * PURCHASES,
        &refusals[..refusals.len().min(5)],
        nodes[0].log(),
        nodes[1].log(),
    );
    assert_eq!(total, BUYERS * PURCHASES);
    for node in &channels {
        let view = shop.get_sale(node, &sale.id).await.expect("get sale");
        assert_eq!(view.sold, (BUYERS * PURCHASES) as i64);
    }
}

// ---- faults ------------------------------------------------------------------------------------

/// Private servers: Redis (without persistence, or with an append-only file) and a file-backed
/// MongoDB test server.
struct PrivateServers {
    redis: Option<RedisServer>,
    mongo: Option<MongoTestServer>,
    mongo_file: PathBuf,
    _mongo_dir: tempfile::TempDir,
}

impl PrivateServers {
    fn start(aof: bool) -> Self {
        tokio::task::block_in_place(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let file = dir.path().join("record.db");
            let redis = if aof { RedisServer::start_aof() } else { RedisServer::start() };
            Self {
                redis: Some(redis),
                mongo: Some(MongoTestServer::start(Some(&file))),
                mongo_file: file,
                _mongo_dir: dir,
            }
        })
    }

    fn backends(&self) -> Backends {
        Backends::private(self.redis.as_ref().unwrap(), self.mongo.as_ref().unwrap())
    }
}

/// Redis stopped mid-rush and started again on the same port, with an empty data set (no
/// persistence) or from its append-only file.
async fn redis_restart_mid_rush(aof: bool, tag: &str, plan: fn(usize) -> Vec<u32>, limit: u32) {
    let mut servers = PrivateServers::start(aof);
    let backends = servers.backends();
    let nodes = two_nodes(&backends, FAULT_RECONCILE).await;
    let shop = Arc::new(Shop::new());
    let sale = shop.sale(&nodes[0].channel, ALLOCATED, limit, 3).await;
    let watchers =
        [Watcher::open("A", &nodes[0].channel, &sale.id).await, Watcher::open("B", &nodes[1].channel, &sale.id).await];
    let rush = Rush::new(tag, shop.clone(), sale.clone(), BUYERS, plan, &[&nodes[0], &nodes[1]]);
    let workers = rush.start();

    rush.wait_for_units(300).await;
    let stopped_at = Instant::now();
    let (port, dir) = tokio::task::block_in_place(|| servers.redis.take().unwrap().stop());
    // Down long enough for every worker to be refused a few times.
    rush.wait_for_unavailable(stopped_at, 3 * WORKERS).await;
    let restarted_at = Instant::now();
    servers.redis = Some(tokio::task::block_in_place(|| {
        if aof {
            RedisServer::start_aof_on(port, dir)
        } else {
            RedisServer::start_on(port, dir)
        }
    }));
    let outage = restarted_at - stopped_at;
    let during = rush.unavailable.load(Ordering::SeqCst);
    let first_sale = poll_until("a sale after the restart", Duration::from_secs(60), || async {
        rush.first_sale_after(restarted_at)
    })
    .await;

    rush.finish(workers).await;
    let verified = verify(&rush, &backends, &[&nodes[0], &nodes[1]]).await;
    // Every watcher of both nodes follows the sale through the fault to its final state.
    if verified.sold < ALLOCATED {
        AdminServiceClient::new(nodes[0].channel.clone())
            .end_sale(authed(pb::EndSaleRequest { sale_id: sale.id.clone() }, &shop.admin))
            .await
            .expect("end the sale");
    }
    let last = shop.get_sale(&nodes[0].channel, &sale.id).await.expect("the final state");
    for watcher in watchers {
        watcher.ends_with(&last).await;
    }
    eprintln!(
        "redis restart ({}): outage {outage:?} with {during} BACKEND_UNAVAILABLE; first sale {first_sale:?} after the restart; \
         rush: {}; sold {} remaining {}; settled {:?} after the rush",
        if aof { "append-only file" } else { "keys lost" },
        rush.summary(),
        verified.sold,
        verified.remaining,
        verified.settled_in,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_its_keys_mid_rush() {
    // 1,200 units wanted: the sale must still sell out exactly.
    redis_restart_mid_rush(false, "redis-lost", four_units, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_its_append_only_file_mid_rush() {
    // 900 units wanted: every buyer is served and 100 units are left, none lost in flight.
    redis_restart_mid_rush(true, "redis-aof", three_units, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_stopped_and_restarted_mid_rush() {
    let mut servers = PrivateServers::start(false);
    let backends = servers.backends();
    let nodes = two_nodes(&backends, FAULT_RECONCILE).await;
    let shop = Arc::new(Shop::new());
    let sale = shop.sale(&nodes[0].channel, ALLOCATED, 3, 3).await;
    // 900 units wanted: every buyer is served, and the units of failed commits come back.
    let rush = Rush::new("mongo", shop, sale, BUYERS, three_units, &[&nodes[0], &nodes[1]]);
    let workers = rush.start();

    rush.wait_for_units(300).await;
    let stopped_at = Instant::now();
    let port = servers.mongo.as_ref().unwrap().port();
    servers.mongo.take().unwrap().kill();
    rush.wait_for_unavailable(stopped_at, 20).await;
    let restarted_at = Instant::now();
    let file = servers.mongo_file.clone();
    servers.mongo = Some(tokio::task::block_in_place(|| MongoTestServer::start_on(port, Some(&file))));
    let outage = restarted_at - stopped_at;
    let during = rush.unavailable.load(Ordering::SeqCst);
    let first_sale = poll_until("a sale after the restart", Duration::from_secs(60), || async {
        rush.first_sale_after(restarted_at)
    })
    .await;

    rush.finish(workers).await;
    let verified = verify(&rush, &backends, &[&nodes[0], &nodes[1]]).await;
    eprintln!(
        "mongodb restart: outage {outage:?} with {during} BACKEND_UNAVAILABLE; first sale {first_sale:?} after the restart; \
         rush: {}; sold {} remaining {}; settled {:?} after the rush",
        rush.summary(),
        verified.sold,
        verified.remaining,
        verified.settled_in,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_rush() {
    let servers = PrivateServers::start(false);
    let backends = servers.backends();
    let [a, mut b] = two_nodes(&backends, FAULT_RECONCILE).await;
    let shop = Arc::new(Shop::new());
    let sale = shop.sale(&a.channel, ALLOCATED, 4, 3).await;
    // 1,200 units wanted: the sale sells out exactly, the dead node's reservations included.
    let rush = Rush::new("killed", shop, sale.clone(), BUYERS, four_units, &[&a, &b]);
    let workers = rush.start();

    rush.wait_for_units(300).await;
    rush.alive[1].store(false, Ordering::SeqCst);
    b.server.kill();
    let killed_at = Instant::now();
    // Reservations in flight then (the dead node's among them): reconciliation on the
    // surviving node must settle them.
    let orphans: HashSet<String> = backends.pending(&sale.id).await.expect("read Redis").into_iter().collect();
    let settled_in = poll_until("the dead node's reservations settled", Duration::from_secs(30), || async {
        let pending: HashSet<String> = backends.pending(&sale.id).await.ok()?.into_iter().collect();
        orphans.is_disjoint(&pending).then(|| killed_at.elapsed())
    })
    .await;

    rush.finish(workers).await;
    let verified = verify(&rush, &backends, &[&a]).await;
    drop(b);
    eprintln!(
        "kill -9: {} reservations in flight at the kill, settled within {settled_in:?}; rush: {}; sold {} remaining {}; \
         settled {:?} after the rush",
        orphans.len(),
        rush.summary(),
        verified.sold,
        verified.remaining,
        verified.settled_in,
    );
    assert!(rush.node_gone.load(Ordering::SeqCst) > 0, "some buyers of the dead node retried on the other");
}

/// A sale's feed goes on after Redis lost the sale's keys, with nobody buying: the watchers of
/// both nodes see the sale end (its live state rebuilt from the record, versions still growing),
/// and their streams close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_outlive_a_redis_that_lost_the_sale() {
    let mut servers = PrivateServers::start(false);
    let backends = servers.backends();
    let [a, b] = two_nodes(&backends, CALM_RECONCILE).await;
    let shop = Shop::new();
    let sale = shop.sale(&a.channel, 10, 0, 2).await;
    buy(&a.channel, &shop.buyer("early"), &sale.id, 2, "k").await.expect("a purchase before the fault");
    let watchers = [Watcher::open("A", &a.channel, &sale.id).await, Watcher::open("B", &b.channel, &sale.id).await];

    let (port, dir) = tokio::task::block_in_place(|| servers.redis.take().unwrap().stop());
    servers.redis = Some(tokio::task::block_in_place(|| RedisServer::start_on(port, dir)));

    // Nobody buys; the feeds re-read on their own, find the sale gone from Redis and have it
    // rebuilt from the record (its live state is back without any request).
    let client = redis::Client::open(backends.redis_uri.as_str()).unwrap();
    let meta = format!("{}{{sale:{}}}:meta", backends.prefix, sale.id);
    poll_until("a feed to have the lost sale rebuilt", Duration::from_secs(5), || async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let exists: bool = redis::cmd("EXISTS").arg(&meta).query_async(&mut conn).await.ok()?;
        exists.then_some(())
    })
    .await;
    // Then the admin ends the sale: every watcher sees it.
    let ended = within(
        AdminServiceClient::new(b.channel.clone())
            .end_sale(authed(pb::EndSaleRequest { sale_id: sale.id.clone() }, &shop.admin)),
    )
    .await
    .expect("EndSale after Redis came back empty")
    .into_inner();
    assert_eq!((ended.status(), ended.sold), (pb::SaleStatus::Ended, 2), "the durable order survived");
    for watcher in watchers {
        watcher.ends_with(&ended).await;
    }
}

/// Reconciliation rebuilds a sale whose counters drifted from the record (here: Redis told a
/// wrong `sold` behind the service's back). The rebuilt state's versions are above the old
/// ones, so a watcher following the sale sees it again, correct, and sees it move on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciliation_rebuild_keeps_versions_growing() {
    let backends = Backends::shared();
    let node = Node::start(&backends, Reconcile { interval_ms: 200, orphan_after_ms: 30_000 }).await;
    let shop = Shop::new();
    let sale = shop.sale(&node.channel, 20, 0, 1).await;
    for n in 0..3 {
        buy(&node.channel, &shop.buyer(&format!("steady-{n}")), &sale.id, 1, "k").await.expect("a purchase");
    }
    let mut watch = FeedsServiceClient::new(node.channel.clone())
        .watch_sale(pb::WatchSaleRequest { sale_id: sale.id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let before = read_until(&mut watch, "sold 3", |s| s.sold == 3).await.pop().unwrap();

    // Drift: Redis now claims 7 sold; the record says 3.
    let mut conn = backends.redis().await;
    let meta = format!("{}{{sale:{}}}:meta", backends.prefix, sale.id);
    redis::cmd("HSET")
        .arg(&meta)
        .arg("sold")
        .arg(7)
        .arg("remaining")
        .arg(13)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    poll_until("reconciliation to rebuild the drifted sale", Duration::from_secs(30), || async {
        node.server.log_text().contains("hot state drifted").then_some(())
    })
    .await;

    // After the rebuild a purchase moves the sale on; the watcher sees it, with a higher version.
    buy(&node.channel, &shop.buyer("after"), &sale.id, 1, "k").await.expect("a purchase after the rebuild");
    let seen = read_until(&mut watch, "sold 4 after the rebuild", |s| s.sold == 4).await;
    let after = seen.last().unwrap();
    assert!(
        after.version > before.version,
        "versions grow across the rebuild: {} then {}",
        before.version,
        after.version
    );
    assert_eq!(after.remaining, 16);
    for w in seen.windows(2) {
        assert!(w[0].version < w[1].version, "versions only grow: {seen:?}");
    }
}

/// A node dies between its MongoDB commit and its Redis confirm of a sale's last unit: another
/// node's reconciliation confirms the orphan and ends the sale SOLD_OUT, and its watchers see it.
/// The dying node runs in this process on gated backends: its confirm never runs, exactly as
/// if the process had been killed there; the surviving node is the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_unit_confirmed_by_reconciliation_ends_the_sale() {
    let backends = Backends::shared();
    let survivor = Node::start(&backends, Reconcile { interval_ms: 200, orphan_after_ms: 1_000 }).await;
    let shop = Shop::new();
    let sale = shop.sale(&survivor.channel, 3, 0, 2).await;
    buy(&survivor.channel, &shop.buyer("first"), &sale.id, 2, "k").await.expect("two units on the survivor");
    let watcher = Watcher::open("survivor", &survivor.channel, &sale.id).await;

    // The doomed node: the same Redis and MongoDB, its confirm stopped for good.
    let data = tempfile::tempdir().unwrap();
    let settings = flashsale::Settings {
        data_dir: data.path().into(),
        jwt_secret: Some(SECRET.into()),
        redis_uri: Some(backends.redis_uri.clone()),
        redis_key_prefix: backends.prefix.clone(),
        mongodb_uri: Some(backends.mongo_uri.clone()),
        mongodb_database: backends.database.clone(),
        ..flashsale::Settings::default()
    };
    let gates = Arc::new(crate::gates::Gates::default());
    let opened = flashsale::backends::Backends::open(&settings).await.expect("open the backends");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let doomed = flashsale::service::App::start(
        gates.wrap(opened),
        JwtKeys::new(SECRET.as_bytes()),
        &settings,
        Arc::new(SystemClock),
        shutdown.clone(),
    )
    .await
    .expect("start the doomed node");
    let stop = gates.arm(crate::gates::Step::Confirm);
    let caller = flashsale::auth::Caller {
        user_id: flashsale::domain::UserId::parse("last").unwrap(),
        display_name: "Last".into(),
        role: Role::Buyer,
    };
    let buying = tokio::spawn({
        let (doomed, sale_id) = (doomed.clone(), flashsale::domain::SaleId::parse(&sale.id).unwrap());
        async move {
            let key = flashsale::domain::IdempotencyKey::parse("k").unwrap();
            let _ = doomed.purchase(&caller, sale_id, 1, key).await;
        }
    });
    stop.reached.await.expect("the last unit is committed and about to be confirmed");
    // The node dies: its work stops (the stopped confirm never goes on), its tasks end.
    drop(stop.go);
    shutdown.cancel();
    buying.abort();
    let record = backends.record(&sale.id).await.expect("read MongoDB");
    assert_eq!((record.sold, record.status.as_str()), (3, "ACTIVE"), "durable, not confirmed, not ended");

    let ended = poll_until("the survivor to end the sale SOLD_OUT", Duration::from_secs(30), || async {
        let view = shop.get_sale(&survivor.channel, &sale.id).await.ok()?;
        (view.status() == pb::SaleStatus::Ended).then_some(view)
    })
    .await;
    assert_eq!((ended.end_reason(), ended.sold, ended.remaining), (pb::EndReason::SoldOut, 3, 0));
    watcher.ends_with(&ended).await;
    let record = backends.record(&sale.id).await.expect("read MongoDB");
    assert_eq!((record.status.as_str(), record.end_reason.as_str()), ("ENDED", "SOLD_OUT"));
}

/// After Redis restarts, the first request each node sends it succeeds: the connection broken
/// by the restart is noticed by that request, which is sent again on a new connection, instead
/// of failing with BACKEND_UNAVAILABLE though Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_after_a_redis_restart_succeeds() {
    let mut servers = PrivateServers::start(true);
    let backends = servers.backends();
    let [a, b] = two_nodes(&backends, CALM_RECONCILE).await;
    let shop = Shop::new();
    let sale = shop.sale(&a.channel, 10, 0, 2).await;
    for node in [&a, &b] {
        shop.get_sale(&node.channel, &sale.id).await.expect("GetSale before the restart");
    }

    let (port, dir) = tokio::task::block_in_place(|| servers.redis.take().unwrap().stop());
    servers.redis = Some(tokio::task::block_in_place(|| RedisServer::start_aof_on(port, dir)));

    // Quiet nodes: nothing has used their connections since Redis went away.
    for (name, node) in [("A", &a), ("B", &b)] {
        let view = shop
            .get_sale(&node.channel, &sale.id)
            .await
            .unwrap_or_else(|e| panic!("the first GetSale on node {name} after the restart failed: {e:?}"));
        assert_eq!(view.remaining, 10);
    }
    buy(&b.channel, &shop.buyer("after"), &sale.id, 1, "k").await.expect("the first purchase after the restart");
}

/// Holds expire on both nodes at once (each node's timer sees every hold in the record): each
/// hold ends once, each freed unit goes to one waiting buyer or back on sale once, and the
/// sale's units all come back to the product when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_expiring_on_two_nodes_at_once_give_each_unit_back_once() {
    const UNITS: usize = 12;
    const WAITERS: usize = 4;
    let backends = Backends::shared();
    let nodes = two_nodes(&backends, CALM_RECONCILE).await;
    let shop = Shop::new();
    let mut admin = AdminServiceClient::new(nodes[0].channel.clone());
    let product = admin
        .create_product(authed(
            pb::CreateProductRequest {
                name: "Held sneaker".into(),
                description: String::new(),
                initial_inventory: UNITS as i64,
            },
            &shop.admin,
        ))
        .await
        .expect("create product")
        .into_inner();
    let sale = admin
        .create_sale(authed(
            pb::CreateSaleRequest {
                queue: None,
                product_id: product.id.clone(),
                allocated: UNITS as i64,
                unit_price: Some(pb::Money { amount_minor: 2500, currency: "EUR".into() }),
                per_user_limit: 1,
                max_per_purchase: 1,
                start_time: None,
                end_time: Some(timestamp(UnixMillis(SystemClock.now().0 + 3_600_000))),
                hold_seconds: 2,
            },
            &shop.admin,
        ))
        .await
        .expect("create sale")
        .into_inner();
    let node = |i: usize| nodes[i % 2].channel.clone();
    let mut holds = Vec::new();
    for i in 0..UNITS {
        let token = shop.buyer(&format!("holder-{i}"));
        let order = buy(&node(i), &token, &sale.id, 1, "k").await.expect("a hold").order.unwrap();
        assert_eq!(order.status(), pb::OrderStatus::Held);
        holds.push((token, order));
    }
    let mut waiters = Vec::new();
    for i in 0..WAITERS {
        let token = shop.buyer(&format!("waiter-{i}"));
        let place = PurchaseServiceClient::new(node(i))
            .join_waitlist(authed(
                pb::JoinWaitlistRequest { admission_pass: String::new(), sale_id: sale.id.clone(), quantity: 1 },
                &token,
            ))
            .await
            .expect("join the line")
            .into_inner()
            .place
            .unwrap();
        assert_eq!(place.position, i as u64 + 1);
        waiters.push(token);
    }

    // The first holds expire: every waiter gets exactly one hold, the rest go on sale.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let served = futures::future::join_all(waiters.iter().enumerate().map(|(i, token)| {
            let channel = node(i + 1);
            let sale_id = sale.id.clone();
            async move { my_orders(&channel, token, &sale_id).await }
        }))
        .await;
        if served.iter().all(|orders| !orders.is_empty()) {
            for orders in &served {
                assert_eq!(orders.len(), 1, "one hold per waiter: {orders:?}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "the line was not served: {served:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every first hold expires (the line took the first units back; the others follow within
    // the timer's rounds), each holder keeping exactly that one order.
    for (token, order) in &holds {
        let mine = poll_until("the hold expired", Duration::from_secs(20), || async {
            let mine = my_orders(&node(1), token, &sale.id).await;
            (mine.first().is_some_and(|o| o.status() != pb::OrderStatus::Held)).then_some(mine)
        })
        .await;
        assert_eq!(mine.len(), 1);
        assert_eq!((mine[0].id.as_str(), mine[0].status()), (order.id.as_str(), pb::OrderStatus::Expired));
    }

    // Then the waiters' holds expire too: every unit is back on sale, on both nodes, once.
    for channel in [&nodes[0].channel, &nodes[1].channel] {
        let settled = poll_until("every unit back on sale", Duration::from_secs(20), || async {
            let s = shop.get_sale(channel, &sale.id).await.ok()?;
            (s.held == 0 && s.remaining == UNITS as i64).then_some(s)
        })
        .await;
        assert_eq!((settled.sold, settled.confirmed, settled.waitlist_length), (0, 0, 0));
    }
    let ended = admin
        .end_sale(authed(pb::EndSaleRequest { sale_id: sale.id.clone() }, &shop.admin))
        .await
        .expect("end the sale")
        .into_inner();
    assert_eq!(ended.remaining, UNITS as i64);
    assert_eq!(shop.product(&nodes[1].channel, &product.id).await.inventory, UNITS as i64, "each unit returned once");
}

/// The order feed over two nodes sharing Redis and MongoDB: a rush split across the nodes, a
/// consumer that drops its stream at random and comes back to the other node each time, from
/// its cursor; it sees every acknowledged order once, and ListSaleOrders on either node lists
/// the same orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_feed_resumes_on_either_node() {
    let backends = Backends::shared();
    let [a, b] = two_nodes(&backends, CALM_RECONCILE).await;
    let shop = Shop::new();
    let sale = shop.sale(&a.channel, 400, 1, 1).await;
    let nodes = [a.channel.clone(), b.channel.clone()];
    let rush = futures::stream::iter(0..400)
        .map(|buyer| {
            let (node, token, sale_id) =
                (nodes[buyer % 2].clone(), shop.buyer(&format!("feed-{buyer}")), sale.id.clone());
            async move { buy(&node, &token, &sale_id, 1, "feed").await.expect("a purchase").order.unwrap().id }
        })
        .buffer_unordered(WORKERS)
        .collect::<Vec<String>>();

    let turn = AtomicUsize::new(0);
    let consumer = || {
        let node = nodes[turn.fetch_add(1, Ordering::SeqCst) % 2].clone();
        flashsale_client::Client::from_channel(node).with_token(&shop.admin).unwrap()
    };
    let mut seen = crate::orders::Seen::default();
    let following = crate::orders::follow_with_drops(&consumer, &sale.id, &mut seen, |s| s.events.len() >= 400);
    let (bought, reconnects) = tokio::join!(rush, following);

    assert!(seen.duplicates.is_empty(), "events delivered twice: {:?}", seen.duplicates);
    let created: HashSet<String> = seen.events.keys().map(|(id, _)| id.clone()).collect();
    assert_eq!(created, bought.iter().cloned().collect::<HashSet<_>>(), "every acknowledged order, nothing else");
    assert!(reconnects > 2, "the consumer moved between the nodes {reconnects} times");
    for node in &nodes {
        let listed = flashsale_client::Client::from_channel(node.clone())
            .with_token(&shop.admin)
            .unwrap()
            .sale_orders(&sale.id)
            .await
            .expect("list the sale's orders");
        assert_eq!(listed.iter().map(|o| o.id.clone()).collect::<HashSet<_>>(), created);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_waiting_room() {
    const BUYERS: usize = 30;
    let backends = Backends::shared();
    let [a, b] = two_nodes(&backends, CALM_RECONCILE).await;
    let nodes = [a.channel.clone(), b.channel.clone()];
    let shop = Shop::new();
    let product = AdminServiceClient::new(a.channel.clone())
        .create_product(authed(
            pb::CreateProductRequest {
                name: "Queued sneaker".into(),
                description: String::new(),
                initial_inventory: 100,
            },
            &shop.admin,
        ))
        .await
        .expect("create product")
        .into_inner();
    let sale = AdminServiceClient::new(a.channel.clone())
        .create_sale(authed(
            pb::CreateSaleRequest {
                product_id: product.id,
                allocated: 100,
                unit_price: Some(pb::Money { amount_minor: 2500, currency: "EUR".into() }),
                per_user_limit: 1,
                max_per_purchase: 1,
                start_time: None,
                end_time: Some(timestamp(UnixMillis(SystemClock.now().0 + 3_600_000))),
                hold_seconds: 0,
                queue: Some(pb::QueueOptions {
                    prequeue_seconds: 0,
                    admit_per_second: 10,
                    max_active_buyers: 0,
                    admission_seconds: 600,
                }),
            },
            &shop.admin,
        ))
        .await
        .expect("create sale")
        .into_inner();
    let enter = |node: &Channel, token: &str| {
        let (node, token, sale_id) = (node.clone(), token.to_owned(), sale.id.clone());
        async move {
            PurchaseServiceClient::new(node)
                .enter_queue(authed(pb::EnterQueueRequest { sale_id }, &token))
                .await
                .expect("enter the room")
                .into_inner()
        }
    };
    // Buyers arrive one after the other, alternately on each node, and wait on that node.
    let mut waiting = Vec::new();
    for i in 0..BUYERS {
        let token = shop.buyer(&format!("room-{i}"));
        let mut updates = enter(&nodes[i % 2], &token).await;
        waiting.push(tokio::spawn(async move {
            let admitted = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(update) = updates.message().await.expect("the room's stream") {
                    if update.state == pb::QueueState::Admitted as i32 {
                        return update;
                    }
                }
                panic!("the stream ended before the admission")
            })
            .await
            .expect("admitted within a minute");
            (token, admitted)
        }));
    }
    let mut admitted = Vec::new();
    for task in waiting {
        admitted.push(task.await.expect("a waiting buyer"));
    }
    // One line: admissions follow the arrival order across both nodes.
    let tickets: Vec<u64> = admitted.iter().map(|(_, update)| crate::queue::ticket(&update.admission_pass)).collect();
    assert_eq!(tickets, (0..BUYERS as u64).collect::<Vec<_>>(), "admitted in arrival order over both nodes");
    for (i, (token, update)) in admitted.iter().enumerate() {
        // The other node resumes the same admission, and takes the first node's pass.
        let other = &nodes[(i + 1) % 2];
        let mut again = enter(other, token).await;
        let resumed = again.message().await.expect("a message").expect("an update");
        assert_eq!(
            (resumed.state, &resumed.admission_expires_at),
            (pb::QueueState::Admitted as i32, &update.admission_expires_at)
        );
        let request = pb::PurchaseRequest {
            sale_id: sale.id.clone(),
            quantity: 1,
            idempotency_key: "queued".into(),
            admission_pass: update.admission_pass.clone(),
        };
        within(PurchaseServiceClient::new(other.clone()).purchase(authed(request, token)))
            .await
            .expect("a pass from one node buys on the other");
    }
    for node in &nodes {
        poll_until("both nodes show every admission", Duration::from_secs(20), || async {
            let sale = shop.get_sale(node, &sale.id).await.ok()?;
            (sale.queue_admitted == BUYERS as u64 && sale.sold == BUYERS as i64).then_some(())
        })
        .await;
    }
}
