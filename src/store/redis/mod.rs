//! The hot path in Redis, shared by every node. Every step of a purchase (reserve, confirm,
//! release) is one Lua script, so each is one atomic step on the server whichever node serves
//! it; a few bookkeeping operations use plain commands:
//!
//! | operation | round trips to Redis |
//! |---|---|
//! | `reserve`, `confirm`, `release`, `view`, `wait_settled` (each poll), `end_hold`, `join_waitlist`, `leave_waitlist` | 1: one script (`reserve.lua`, `confirm.lua`, `release.lua`, `view.lua`, `settled.lua`, `end_hold.lua`, `join.lua`, `leave.lua`; `common.lua` holds what several share) |
//! | `waitlist_place` | 1: a `MULTI` pipeline (`ZRANK` + `HGET` + `ZCARD`) |
//! | `restore_line` | 1: `restore_line.lua` |
//! | `has_sale` | 1: `EXISTS` |
//! | `in_flight` | 1: a `MULTI` pipeline (`HMGET` + `HVALS`) |
//! | `load_sale` | 1: `load_sale.lua` |
//! | `set_status` | 1: `set_status.lua` |
//! | `forget_sale` | 1: `DEL` of the sale's keys |
//!
//! Each is sent once more if the connection broke under it (see `RedisHot::once_more`).
//!
//! # One instance or a Cluster
//!
//! [`connect_to`] takes one Redis (a `ConnectionManager`) or a Redis Cluster (the redis crate's
//! cluster client, given any of its nodes as seeds). In a Cluster, every request names keys of
//! one sale, so it goes to the master of that sale's slot; the client follows `MOVED` and `ASK`
//! redirections, refreshes its slot map after a failover and retries meanwhile. Nothing here
//! lists keys across sales: which sales are open is the record's to say (the scheduler and the
//! reconciliation read it there), so no request ever spans two slots.
//!
//! Changes are published with `PUBLISH` on one instance and `SPUBLISH` (sharded pub/sub,
//! Redis 7) in a Cluster, where a sale's channel lives on its own slot's shard and each node
//! subscribes only to the sales its watchers follow (`changes.rs`). The scripts are the same
//! text with that one word set before them ([`Scripts::new`]).
//!
//! # Key layout
//!
//! Every key of a sale carries the hash tag `{sale:ID}`, so all of them hash to one Redis Cluster
//! slot and every script touches one slot only. Every key a script touches is passed in `KEYS`.
//! `P` is the key prefix (`connect`'s `key_prefix`, e.g. `flashsale:`).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{sale:ID}:meta` | hash | the layout's `format` (1), rules (`product_id`, `allocated`, `per_user_limit`, `max_per_purchase`, `start`, `end`, `price`, `currency`, `hold_seconds`, `queue`: the waiting room's four options, comma-separated, empty without one), creation time (`created_at`), lifecycle (`status`, `end_reason`, `ended_at`) and counters (`remaining`, `sold` (held or confirmed), `held`, `in_flight`, `spare` (units given back, kept for the head of the line), `line_seq`, `version`); its presence means the sale is loaded. Fields added with holds may be absent in a sale loaded before them: they read as 0 |
//! | `P{sale:ID}:units` | hash | buyer id → units held or in flight (the per-user limit) |
//! | `P{sale:ID}:keys` | hash | `buyer:idempotency key` → the order it made (JSON: id, buyer, name, quantity, key, time) |
//! | `P{sale:ID}:pending` | hash | order id → the order (JSON), for reservations not yet confirmed or released: what reconciliation with the record looks at |
//! | `P{sale:ID}:board` | sorted set | member `<first purchase>:<buyer>` with score `-units`: ascending order is the leaderboard order (most units, then earlier first purchase, then buyer id) |
//! | `P{sale:ID}:firsts` | hash | buyer id → their board member (it keeps the first purchase time) |
//! | `P{sale:ID}:names` | hash | buyer id → display name shown on the board |
//! | `P{sale:ID}:holds` | hash | order id → the order (JSON), for durable HELD orders |
//! | `P{sale:ID}:line` | sorted set | buyer id with score = their turn (`line_seq` when they joined): the waitlist, head first |
//! | `P{sale:ID}:waiting` | hash | buyer id → their waitlist entry (JSON, `order.rs`) |
//!
//! Changes are published on the channel `P{sale:ID}:changes` (payload: the new version);
//! [`spawn_change_listener`] turns them into callbacks on every node.
//!
//! The key prefix must not contain `{` or `}`, or the hash tag would not be the sale's.

mod changes;
mod keys;
mod order;
mod queue;
mod replies;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, ScriptInvocation, Value};
use anyhow::Context as _;
use async_trait::async_trait;

use crate::domain::{
    shown_remaining, tally, LeaderboardEntry, OrderRecord, OrderStatus, ProductId, SaleId, SaleRecord, SaleView,
    UnixMillis, UserId, WaitlistEntry, WaitlistPlace, LEADERBOARD_MAX,
};
use crate::store::{
    redact_uri, Confirmed, Handed, HoldSettled, HotError, HotStore, JoinRequest, Reservation, ReserveRequest, Settled,
};

pub use changes::{change_listener, spawn_change_listener};
use keys::{board_member, key_field, parse_board_member, SaleKeys};
use order::{StoredEntry, StoredOrder};
use replies::{
    array, expect_ok, int, item, join_refusal, malformed, money, optional_text, parse_reason, parse_status,
    reason_code, reserve_refusal, text, unavailable, Meta, VIEW_FIELDS,
};

/// The layout of a sale's keys this code writes (`format` in its meta): the table above, the
/// order encoding of `order.rs`. A sale built by a newer layout is refused, not misread.
const FORMAT: &str = "1";

/// How long one attempt to open a TCP connection to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `connect` may take in all before it reports Redis unreachable.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command may wait for its reply before it fails as unavailable (a hung server must
/// not hold purchases forever; every script is short).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection attempts per failed connection, with exponential backoff from 100 ms: during an
/// outage a call fails within about a second instead of hanging.
const RECONNECT_RETRIES: usize = 2;

/// The scripts, one per operation, loaded from their own files. `Script` sends EVALSHA and, on
/// NOSCRIPT (a restarted or flushed server, a replica promoted after a failover), loads the
/// script (on every master of a Cluster) and runs it again.
pub(super) struct Scripts {
    reserve: Script,
    confirm: Script,
    release: Script,
    settled: Script,
    set_status: Script,
    load_sale: Script,
    view: Script,
    end_hold: Script,
    join: Script,
    leave: Script,
    restore_line: Script,
    pub(super) room_enter: Script,
    pub(super) room_admit: Script,
    pub(super) room_counts: Script,
}

impl Scripts {
    /// Every script with `local PUBLISH = '<publish>'` before it: the command that publishes a
    /// change (`PUBLISH`, or `SPUBLISH` in a Cluster).
    fn new(publish: &str) -> Self {
        let script = |parts: &[&str]| {
            let mut text = format!("local PUBLISH = '{publish}'\n");
            parts.iter().for_each(|part| text.push_str(part));
            Script::new(&text)
        };
        let common = include_str!("common.lua");
        let room = include_str!("queue_common.lua");
        Self {
            reserve: script(&[include_str!("reserve.lua")]),
            confirm: script(&[common, include_str!("confirm.lua")]),
            release: script(&[common, include_str!("release.lua")]),
            settled: script(&[include_str!("settled.lua")]),
            set_status: script(&[include_str!("set_status.lua")]),
            load_sale: script(&[include_str!("load_sale.lua")]),
            view: script(&[include_str!("view.lua")]),
            end_hold: script(&[common, include_str!("end_hold.lua")]),
            join: script(&[common, include_str!("join.lua")]),
            leave: script(&[common, include_str!("leave.lua")]),
            restore_line: script(&[common, include_str!("restore_line.lua")]),
            room_enter: script(&[room, include_str!("queue_enter.lua")]),
            room_admit: script(&[room, include_str!("queue_admit.lua")]),
            room_counts: script(&[room, include_str!("queue_counts.lua")]),
        }
    }
}

static ONE_INSTANCE: LazyLock<Scripts> = LazyLock::new(|| Scripts::new("PUBLISH"));
static SHARDED: LazyLock<Scripts> = LazyLock::new(|| Scripts::new("SPUBLISH"));

/// One Redis or a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One instance (with replicas or not): one connection.
    Single,
    /// A Redis Cluster: the cluster client, seeded with any of its nodes.
    Cluster,
}

impl Topology {
    /// A list of seed nodes (`redis://a:7000,redis://b:7001`) names a Cluster; one URI names
    /// one instance unless `cluster` says otherwise.
    pub fn of(uri: &str, cluster: bool) -> Self {
        if cluster || uri.contains(',') {
            Self::Cluster
        } else {
            Self::Single
        }
    }
}

/// The connection to one instance or to a Cluster, used alike by every request (and by tools
/// and tests that read the keys themselves).
#[derive(Clone)]
pub enum Connection {
    /// One multiplexed connection that reconnects on its own; cloning it is cheap and every
    /// clone pipelines over the same socket, so concurrent purchases do not queue for a pool.
    Single(ConnectionManager),
    /// One multiplexed connection per master (and replica), routed by slot.
    Cluster(ClusterConnection),
}

impl Connection {
    /// A connection to Redis at `uri` as `topology` says, with the timeouts and retries every
    /// request of the hot path has.
    pub async fn open(uri: &str, topology: Topology) -> anyhow::Result<Self> {
        let shown = redact_uri(uri);
        Ok(match topology {
            Topology::Single => {
                let client = ::redis::Client::open(uri).with_context(|| format!("invalid Redis URI {shown}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(RECONNECT_RETRIES)
                    .set_max_delay(Duration::from_secs(1));
                Self::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            Topology::Cluster => {
                let client = cluster_client(uri).with_context(|| format!("invalid Redis Cluster seeds {shown}"))?;
                Self::Cluster(client.build()?.get_async_connection().await?)
            }
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The hot state of every sale, in Redis.
#[derive(Clone)]
pub struct RedisHot {
    conn: Connection,
    /// Prepended to every key and channel (several deployments can share one Redis).
    prefix: Arc<str>,
    /// The scripts as this topology publishes.
    scripts: &'static Scripts,
}

/// What a script that gave units back answered, from its third element: the holds it reserved
/// for the head of the line, the buyers it dropped, then (when it served anyone) the price.
fn handed(reply: &[Value], sale: &SaleId) -> Result<Handed, HotError> {
    let served = match reply.get(2) {
        Some(Value::Array(served)) => served,
        _ => return Ok(Handed::default()),
    };
    let dropped = match reply.get(3) {
        Some(Value::Array(dropped)) => dropped
            .iter()
            .map(|v| UserId::parse(&text(v)?).map_err(|e| malformed(e.to_string())))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let served = if served.is_empty() {
        Vec::new()
    } else {
        let unit_price = money(item(reply, 4)?, item(reply, 5)?)?;
        served
            .iter()
            .map(|raw| StoredOrder::decode(&text(raw)?)?.into_order(sale, unit_price))
            .collect::<Result<_, _>>()?
    };
    Ok(Handed { served, dropped })
}

/// A place in a line: `{position, quantity, length}`.
fn place(items: &[Value]) -> Result<WaitlistPlace, HotError> {
    let number = |at| u64::try_from(int(item(items, at)?)?).map_err(|_| malformed("a place out of range"));
    Ok(WaitlistPlace {
        position: number(0)?,
        quantity: u32::try_from(number(1)?).map_err(|_| malformed("a quantity out of range"))?,
        length: number(2)?,
    })
}

/// Connects to Redis at `uri` ([`Topology::of`] the URI: a comma-separated list is a Cluster's
/// seeds) and checks it answers PING, within a few seconds. Keys and channels start with
/// `key_prefix`, which must not contain `{` or `}`.
pub async fn connect(uri: &str, key_prefix: &str) -> anyhow::Result<RedisHot> {
    connect_to(uri, key_prefix, Topology::of(uri, false)).await
}

/// [`connect`] with the topology given.
pub async fn connect_to(uri: &str, key_prefix: &str, topology: Topology) -> anyhow::Result<RedisHot> {
    if key_prefix.contains(['{', '}']) {
        anyhow::bail!("the Redis key prefix {key_prefix:?} must not contain '{{' or '}}' (they would break the per-sale hash tags)");
    }
    let shown = redact_uri(uri);
    let ready = async {
        let mut conn = Connection::open(uri, topology).await?;
        ::redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, anyhow::Error>(conn)
    };
    let conn = tokio::time::timeout(STARTUP_TIMEOUT, ready)
        .await
        .map_err(|_| anyhow::anyhow!("Redis at {shown} did not answer PING within {STARTUP_TIMEOUT:?}"))?
        .with_context(|| format!("cannot reach Redis at {shown}"))?;
    let scripts = match topology {
        Topology::Single => &*ONE_INSTANCE,
        Topology::Cluster => &*SHARDED,
    };
    Ok(RedisHot { conn, prefix: key_prefix.into(), scripts })
}

/// A Cluster client seeded with the URIs of `uri`. A request follows redirections and is
/// retried ([`CLUSTER_RETRIES`] times, waits growing to [`CLUSTER_MAX_WAIT_MS`]) within
/// [`RESPONSE_TIMEOUT`] in all: a failover longer than that (the cluster's node timeout plus an
/// election) answers `BACKEND_UNAVAILABLE` meanwhile, and buyers retry with the same key.
pub(super) fn cluster_client(uri: &str) -> Result<ClusterClientBuilder, RedisError> {
    let seeds: Vec<&str> = uri.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    // Parsed here so that a bad seed is named now, not at the first request.
    for seed in &seeds {
        ::redis::IntoConnectionInfo::into_connection_info(*seed)?;
    }
    Ok(ClusterClientBuilder::new(seeds)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_MIN_WAIT_MS)
        .max_retry_wait(CLUSTER_MAX_WAIT_MS))
}

/// Retries of a Cluster request: redirections (`MOVED`, `ASK`), `TRYAGAIN`, `CLUSTERDOWN` and a
/// lost connection to a master each take one.
const CLUSTER_RETRIES: u32 = 12;
const CLUSTER_MIN_WAIT_MS: u64 = 50;
const CLUSTER_MAX_WAIT_MS: u64 = 500;

impl RedisHot {
    fn keys(&self, sale: &SaleId) -> SaleKeys {
        SaleKeys::new(&self.prefix, sale)
    }

    /// The key prefix this store uses.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    async fn run(&self, invocation: &ScriptInvocation<'_>) -> Result<Vec<Value>, HotError> {
        let reply: Value = self.once_more(|mut conn| async move { invocation.invoke_async(&mut conn).await }).await?;
        array(reply)
    }

    /// A plain command, through [`RedisHot::once_more`].
    async fn command<T: ::redis::FromRedisValue>(&self, command: &::redis::Cmd) -> Result<T, HotError> {
        self.once_more(|mut conn| async move { command.query_async(&mut conn).await }).await
    }

    /// A pipeline, through [`RedisHot::once_more`].
    async fn pipeline<T: ::redis::FromRedisValue>(&self, pipeline: &::redis::Pipeline) -> Result<T, HotError> {
        self.once_more(|mut conn| async move { pipeline.query_async(&mut conn).await }).await
    }

    /// Sends a request, and once more if the connection broke under it. After Redis restarts,
    /// the connection manager learns that its connection is dead only from the first request
    /// that fails on it, then reconnects: without a second try, that request would fail though
    /// Redis is back. Every request here may run twice: the scripts are idempotent (a second
    /// reserve with the same order id finds that order's reservation, which the purchase flow
    /// takes as its own) and so are the plain commands.
    async fn once_more<T, F, Fut>(&self, send: F) -> Result<T, HotError>
    where
        F: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        match send(self.conn.clone()).await {
            Err(error) if (error.is_connection_dropped() || error.is_io_error()) && !error.is_timeout() => {
                tracing::debug!(error = %error, "the Redis connection broke under a request; sending it again");
                send(self.conn.clone()).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    /// Reservations of a sale not yet confirmed or released (for reconciliation with the
    /// record: each is either committed or must be released). Empty when the sale is not loaded.
    pub async fn pending_orders(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, HotError> {
        let keys = self.keys(sale);
        let (price, pending): (Vec<Value>, Vec<String>) = self
            .pipeline(
                ::redis::pipe()
                    .atomic()
                    .cmd("HMGET")
                    .arg(keys.meta())
                    .arg(&["price", "currency"])
                    .cmd("HVALS")
                    .arg(keys.pending()),
            )
            .await?;
        if price.iter().any(|v| matches!(v, Value::Nil)) {
            return Ok(Vec::new());
        }
        let unit_price = money(item(&price, 0)?, item(&price, 1)?)?;
        pending.iter().map(|raw| StoredOrder::decode(raw)?.into_order(sale, unit_price)).collect()
    }

    /// Where an order stands now.
    async fn settlement(&self, order: &OrderRecord) -> Result<Option<Settled>, HotError> {
        let keys = self.keys(&order.sale_id);
        let mut invocation = keys.invoke(&self.scripts.settled);
        invocation.arg(key_field(&order.buyer_id, &order.idempotency_key)).arg(order.id.as_str());
        let reply = self.run(&invocation).await?;
        expect_ok(&reply)?;
        match text(item(&reply, 0)?)?.as_str() {
            "CONFIRMED" => Ok(Some(Settled::Confirmed)),
            "RELEASED" => Ok(Some(Settled::Released)),
            "IN_FLIGHT" => Ok(None),
            other => Err(malformed(format!("unknown settlement {other:?}"))),
        }
    }
}

#[async_trait]
impl HotStore for RedisHot {
    async fn load_sale(&self, sale: &SaleRecord, orders: &[OrderRecord]) -> Result<bool, HotError> {
        let tally = tally(orders);
        let (board, units, sold) = (&tally.board, &tally.units, tally.sold);
        let holds: Vec<&OrderRecord> = orders.iter().filter(|o| o.status == OrderStatus::Held).collect();
        let rules = &sale.rules;
        let meta: Vec<(&str, String)> = vec![
            ("product_id", sale.product_id.to_string()),
            ("allocated", rules.allocated.to_string()),
            ("per_user_limit", rules.per_user_limit.to_string()),
            ("max_per_purchase", rules.max_per_purchase.to_string()),
            ("start", rules.start.0.to_string()),
            ("end", rules.end.0.to_string()),
            ("price", rules.unit_price.amount_minor.to_string()),
            ("currency", rules.unit_price.currency.as_str().to_owned()),
            ("hold_seconds", rules.hold_seconds.to_string()),
            ("queue", replies::queue_field(rules.queue)),
            ("held", tally.held.to_string()),
            ("spare", "0".to_owned()),
            ("status", sale.status.as_str().to_owned()),
            ("end_reason", reason_code(sale.end_reason).to_owned()),
            ("ended_at", sale.ended_at.map(|t| t.0.to_string()).unwrap_or_default()),
            ("remaining", (rules.allocated - sold).to_string()),
            ("sold", sold.to_string()),
            ("in_flight", "0".to_owned()),
            ("version", crate::domain::first_version(sale.generation).to_string()),
            ("created_at", sale.created_at.0.to_string()),
            ("format", FORMAT.to_owned()),
        ];
        let keys = self.keys(&sale.id);
        let mut invocation = keys.invoke(&self.scripts.load_sale);
        invocation
            .arg(&keys.channel)
            .arg(meta.len())
            .arg(units.len())
            .arg(orders.len())
            .arg(board.len())
            .arg(holds.len());
        for (field, value) in &meta {
            invocation.arg(*field).arg(value);
        }
        for (buyer, held) in units {
            invocation.arg(buyer.as_str()).arg(*held);
        }
        for order in orders {
            invocation.arg(key_field(&order.buyer_id, &order.idempotency_key)).arg(StoredOrder::of(order).encode()?);
        }
        for standing in board.standings() {
            let buyer = standing.buyer;
            invocation
                .arg(buyer.as_str())
                .arg(board_member(standing.first_purchase_at, buyer))
                .arg(-standing.units)
                .arg(standing.display_name.as_ref());
        }
        for hold in holds {
            invocation.arg(hold.id.as_str()).arg(StoredOrder::of(hold).encode()?);
        }
        let reply = self.run(&invocation).await?;
        Ok(text(item(&reply, 0)?)? == "LOADED")
    }

    async fn has_sale(&self, sale: &SaleId) -> Result<bool, HotError> {
        self.command(::redis::cmd("EXISTS").arg(self.keys(sale).meta())).await
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, HotError> {
        let candidate = StoredOrder::requested(request).encode()?;
        let keys = self.keys(&request.sale_id);
        let mut invocation = keys.invoke(&self.scripts.reserve);
        invocation
            .arg(request.buyer_id.as_str())
            .arg(key_field(&request.buyer_id, &request.idempotency_key))
            .arg(request.quantity)
            .arg(request.now.0)
            .arg(request.new_order_id.as_str())
            .arg(candidate);
        let reply = self.run(&invocation).await?;
        match text(item(&reply, 0)?)?.as_str() {
            "NEW" => {
                let unit_price = money(item(&reply, 1)?, item(&reply, 2)?)?;
                // As stored: HELD with its deadline in a sale with holds.
                let stored = StoredOrder::decode(&text(item(&reply, 3)?)?)?;
                let order = stored.into_order(&request.sale_id, unit_price)?;
                Ok(Reservation::New(OrderRecord { buyer_name: request.buyer_name.clone(), ..order }))
            }
            "EXISTING" => {
                let first = StoredOrder::decode(&text(item(&reply, 1)?)?)?;
                let settled = int(item(&reply, 2)?)? == 1;
                let unit_price = money(item(&reply, 3)?, item(&reply, 4)?)?;
                Ok(Reservation::Existing { order: first.into_order(&request.sale_id, unit_price)?, settled })
            }
            "REFUSED" => Err(HotError::Refused(reserve_refusal(&reply, request)?)),
            other => Err(malformed(format!("unknown reserve reply {other:?}"))),
        }
    }

    async fn confirm(&self, order: &OrderRecord) -> Result<Confirmed, HotError> {
        let keys = self.keys(&order.sale_id);
        let mut invocation = keys.invoke(&self.scripts.confirm);
        invocation
            .arg(order.buyer_id.as_str())
            .arg(key_field(&order.buyer_id, &order.idempotency_key))
            .arg(order.id.as_str())
            .arg(order.quantity)
            .arg(board_member(order.created_at, &order.buyer_id))
            .arg(&*order.buyer_name)
            .arg(StoredOrder::of(order).encode()?)
            .arg(&keys.channel)
            .arg(order.status.as_str());
        let reply = self.run(&invocation).await?;
        expect_ok(&reply)?;
        Ok(Confirmed { sold_out: int(item(&reply, 1)?)? == 1 })
    }

    async fn release(&self, order: &OrderRecord, now: UnixMillis) -> Result<Handed, HotError> {
        let keys = self.keys(&order.sale_id);
        let mut invocation = keys.invoke(&self.scripts.release);
        invocation
            .arg(order.buyer_id.as_str())
            .arg(key_field(&order.buyer_id, &order.idempotency_key))
            .arg(order.id.as_str())
            .arg(&keys.channel)
            .arg(now.0);
        let reply = self.run(&invocation).await?;
        expect_ok(&reply)?;
        handed(&reply, &order.sale_id)
    }

    async fn wait_settled(&self, order: &OrderRecord) -> Result<Settled, HotError> {
        // Polling with a short backoff: an order settles within one group commit, so a
        // subscription per waiter would cost more than the few reads it saves. The caller bounds
        // the wait (the node that reserved it may have died: reconciliation settles it then).
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(settled) = self.settlement(order).await? {
                return Ok(settled);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn set_status(&self, sale: &SaleRecord) -> Result<(), HotError> {
        let keys = self.keys(&sale.id);
        let mut invocation = keys.invoke(&self.scripts.set_status);
        invocation
            .arg(sale.status.as_str())
            .arg(reason_code(sale.end_reason))
            .arg(sale.ended_at.map(|t| t.0.to_string()).unwrap_or_default())
            .arg(sale.rules.start.0)
            .arg(&keys.channel);
        expect_ok(&self.run(&invocation).await?)
    }

    async fn view(&self, sale: &SaleId) -> Result<Option<SaleView>, HotError> {
        let keys = self.keys(sale);
        let mut invocation = keys.invoke(&self.scripts.view);
        invocation.arg(LEADERBOARD_MAX);
        for field in VIEW_FIELDS {
            invocation.arg(field);
        }
        let reply = self.run(&invocation).await?;
        if reply.is_empty() {
            return Ok(None);
        }
        let [meta, buyers, top, names, line] = <[Value; 5]>::try_from(reply).map_err(|_| malformed("view reply"))?;
        let meta_values = array(meta)?;
        let meta = Meta::new(&VIEW_FIELDS, &meta_values)?;
        // Absent: built before the format was named, the same layout.
        if let Some(format) = meta.optional("format")?.filter(|f| f != FORMAT) {
            return Err(malformed(format!("sale {sale}: hot state format {format:?}, newer than this program reads")));
        }
        let rules = meta.rules()?;
        let status = parse_status(&meta.text("status")?)?;
        let sold = meta.int("sold")?;
        let top = array(top)?;
        let names = array(names)?;
        let leaderboard = top
            .chunks(2)
            .zip(&names)
            .zip(1..)
            .map(|((pair, name), rank)| {
                let member = text(item(pair, 0)?)?;
                let score: f64 = text(item(pair, 1)?)?.parse().map_err(|_| malformed("board score"))?;
                Ok(LeaderboardEntry {
                    rank,
                    display_name: text(name)?.into(),
                    units: -score as i64,
                    first_purchase_at: parse_board_member(&member).ok_or_else(|| malformed("board member"))?,
                })
            })
            .collect::<Result<Vec<_>, HotError>>()?;
        Ok(Some(SaleView {
            sale_id: sale.clone(),
            product_id: ProductId::parse(&meta.text("product_id")?).map_err(|e| malformed(e.to_string()))?,
            version: u64::try_from(meta.int("version")?).map_err(|_| malformed("version"))?,
            rules,
            status,
            end_reason: parse_reason(&meta.text("end_reason")?)?,
            ended_at: optional_text(meta.value("ended_at")?)?
                .filter(|t| !t.is_empty())
                .map(|t| t.parse().map(UnixMillis).map_err(|_| malformed("ended_at")))
                .transpose()?,
            sold,
            held: meta.optional_int("held")?.unwrap_or(0),
            remaining: shown_remaining(status, rules.allocated, sold, meta.int("remaining")?),
            waitlist: u64::try_from(int(&line)?).map_err(|_| malformed("line length"))?,
            in_flight: meta.int("in_flight")?,
            leaderboard,
            total_buyers: u64::try_from(int(&buyers)?).map_err(|_| malformed("buyers"))?,
            created_at: UnixMillis(meta.int("created_at")?),
            line: None,
        }))
    }

    async fn in_flight(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, HotError> {
        let mut orders = self.pending_orders(sale).await?;
        orders.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(orders)
    }

    async fn forget_sale(&self, sale: &SaleId) -> Result<(), HotError> {
        let keys = self.keys(sale);
        self.command(::redis::cmd("DEL").arg(&keys.keys[..])).await
    }

    async fn end_hold(&self, order: &OrderRecord, now: UnixMillis) -> Result<HoldSettled, HotError> {
        if order.status == OrderStatus::Held {
            return Err(malformed("end_hold of an order still held"));
        }
        let keys = self.keys(&order.sale_id);
        let mut invocation = keys.invoke(&self.scripts.end_hold);
        invocation
            .arg(order.id.as_str())
            .arg(order.status.as_str())
            .arg(now.0)
            .arg(board_member(order.bought_at(), &order.buyer_id))
            .arg(&*order.buyer_name)
            .arg(&keys.channel);
        let reply = self.run(&invocation).await?;
        expect_ok(&reply)?;
        Ok(HoldSettled { sold_out: int(item(&reply, 1)?)? == 1, handed: handed(&reply, &order.sale_id)? })
    }

    async fn join_waitlist(&self, request: &JoinRequest) -> Result<WaitlistPlace, HotError> {
        let keys = self.keys(&request.sale_id);
        let entry = &request.entry;
        let mut invocation = keys.invoke(&self.scripts.join);
        invocation
            .arg(entry.buyer_id.as_str())
            .arg(entry.quantity)
            .arg(request.now.0)
            .arg(StoredEntry::encode(entry)?)
            .arg(&keys.channel);
        let reply = self.run(&invocation).await?;
        match text(item(&reply, 0)?)?.as_str() {
            "PLACED" => place(&reply[1..]),
            "REFUSED" => Err(HotError::Refused(join_refusal(&reply, entry.quantity, request.now)?)),
            other => Err(malformed(format!("unknown join reply {other:?}"))),
        }
    }

    async fn leave_waitlist(&self, sale: &SaleId, buyer: &UserId, now: UnixMillis) -> Result<Option<Handed>, HotError> {
        let keys = self.keys(sale);
        let mut invocation = keys.invoke(&self.scripts.leave);
        invocation.arg(buyer.as_str()).arg(now.0).arg(&keys.channel);
        let reply = self.run(&invocation).await?;
        expect_ok(&reply)?;
        if int(item(&reply, 1)?)? == 0 {
            return Ok(None);
        }
        handed(&reply, sale).map(Some)
    }

    async fn restore_line(&self, sale: &SaleId, line: &[WaitlistEntry], now: UnixMillis) -> Result<Handed, HotError> {
        if line.is_empty() {
            return Ok(Handed::default());
        }
        let keys = self.keys(sale);
        let mut invocation = keys.invoke(&self.scripts.restore_line);
        invocation.arg(now.0).arg(&keys.channel);
        for entry in line {
            invocation.arg(entry.buyer_id.as_str()).arg(StoredEntry::encode(entry)?);
        }
        let reply = self.run(&invocation).await?;
        expect_ok(&reply)?;
        handed(&reply, sale)
    }

    async fn waitlist_place(&self, sale: &SaleId, buyer: &UserId) -> Result<Option<WaitlistPlace>, HotError> {
        let keys = self.keys(sale);
        let (rank, entry, length): (Option<u64>, Option<String>, u64) = self
            .pipeline(
                ::redis::pipe()
                    .atomic()
                    .cmd("ZRANK")
                    .arg(keys.line())
                    .arg(buyer.as_str())
                    .cmd("HGET")
                    .arg(keys.waiting())
                    .arg(buyer.as_str())
                    .cmd("ZCARD")
                    .arg(keys.line()),
            )
            .await?;
        let (Some(rank), Some(entry)) = (rank, entry) else { return Ok(None) };
        #[derive(serde::Deserialize)]
        struct Quantity {
            quantity: u32,
        }
        let wanted: Quantity = serde_json::from_str(&entry).map_err(|e| malformed(format!("a waitlist entry: {e}")))?;
        Ok(Some(WaitlistPlace { position: rank + 1, quantity: wanted.quantity, length }))
    }
}
