//! The hot path in Redis, shared by every node: one Lua script per operation, so each purchase is
//! one atomic step on the server whichever node serves it.
//!
//! # Key layout
//!
//! Every key of a sale carries the hash tag `{sale:ID}`, so all of them hash to one Redis Cluster
//! slot and every script touches one slot only. Every key a script touches is passed in `KEYS`.
//! `P` is the key prefix (`connect`'s `key_prefix`, e.g. `flashsale:`).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{sale:ID}:meta` | hash | rules (`product_id`, `allocated`, `per_user_limit`, `max_per_purchase`, `start`, `end`, `price`, `currency`), lifecycle (`status`, `end_reason`, `ended_at`) and counters (`remaining`, `sold`, `in_flight`, `version`); its presence means the sale is loaded |
//! | `P{sale:ID}:units` | hash | buyer id → units held or in flight (the per-user limit) |
//! | `P{sale:ID}:keys` | hash | `buyer:idempotency key` → the order it made (JSON: id, buyer, name, quantity, key, time) |
//! | `P{sale:ID}:pending` | hash | order id → the order (JSON), for reservations not yet confirmed or released: what reconciliation with the record looks at |
//! | `P{sale:ID}:board` | sorted set | member `<first purchase>:<buyer>` with score `-units`: ascending order is the leaderboard order (most units, then earlier first purchase, then buyer id) |
//! | `P{sale:ID}:firsts` | hash | buyer id → their board member (it keeps the first purchase time) |
//! | `P{sale:ID}:names` | hash | buyer id → display name shown on the board |
//! | `Psales:open` | set | ids of loaded sales not ended, for the scheduler; a single key, only read or written by plain commands outside the scripts |
//!
//! Changes are published on the channel `P{sale:ID}:changes` (payload: the new version);
//! [`spawn_change_listener`] turns them into callbacks on every node.
//!
//! The key prefix must not contain `{` or `}`, or the hash tag would not be the sale's.

mod changes;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, Script, ScriptInvocation, Value};
use anyhow::Context as _;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{
    check_purchase, BuyerSnapshot, EndReason, IdempotencyKey, LeaderboardEntry, Money, OrderId, ProductId,
    PurchaseRefusal, SaleId, SaleRules, SaleStatus, UnixMillis, UserId,
};
use crate::store::{
    tally, Confirmed, HotError, HotStore, OrderRecord, Reservation, ReserveRequest, SaleRecord, SaleView, Settled,
    LEADERBOARD_MAX,
};

pub use changes::spawn_change_listener;

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
/// NOSCRIPT (a restarted or flushed server), loads the script and runs it again.
struct Scripts {
    reserve: Script,
    confirm: Script,
    release: Script,
    settled: Script,
    set_status: Script,
    load_sale: Script,
    view: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    reserve: Script::new(include_str!("reserve.lua")),
    confirm: Script::new(include_str!("confirm.lua")),
    release: Script::new(include_str!("release.lua")),
    settled: Script::new(include_str!("settled.lua")),
    set_status: Script::new(include_str!("set_status.lua")),
    load_sale: Script::new(include_str!("load_sale.lua")),
    view: Script::new(include_str!("view.lua")),
});

/// The hot state of every sale, in Redis.
#[derive(Clone)]
pub struct RedisHot {
    /// One multiplexed connection that reconnects on its own; cloning it is cheap and every
    /// clone pipelines over the same socket, so concurrent purchases do not queue for a pool.
    conn: ConnectionManager,
    /// Prepended to every key and channel (several deployments can share one Redis).
    prefix: Arc<str>,
}

/// Connects to Redis at `uri` and checks it answers PING, within a few seconds. Keys and channels
/// start with `key_prefix`, which must not contain `{` or `}`.
pub async fn connect(uri: &str, key_prefix: &str) -> anyhow::Result<RedisHot> {
    if key_prefix.contains(['{', '}']) {
        anyhow::bail!("the Redis key prefix {key_prefix:?} must not contain '{{' or '}}' (they would break the per-sale hash tags)");
    }
    let shown = redact(uri);
    let client = ::redis::Client::open(uri).with_context(|| format!("invalid Redis URI {shown}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_max_delay(Duration::from_secs(1));
    let ready = async {
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        ::redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, RedisError>(conn)
    };
    let conn = tokio::time::timeout(STARTUP_TIMEOUT, ready)
        .await
        .map_err(|_| anyhow::anyhow!("Redis at {shown} did not answer PING within {STARTUP_TIMEOUT:?}"))?
        .with_context(|| format!("cannot reach Redis at {shown}"))?;
    Ok(RedisHot { conn, prefix: key_prefix.into() })
}

/// The URI without its password, for messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &uri[..scheme], &uri[at + 1..]),
        _ => uri.to_owned(),
    }
}

/// The keys of one sale; all share the hash tag `{sale:ID}` (see the module docs).
struct SaleKeys {
    /// meta, units, keys, pending, board, firsts, names: `KEYS[1..=7]` of every script.
    keys: [String; 7],
    /// Where changes of the sale are published.
    channel: String,
}

impl SaleKeys {
    fn new(prefix: &str, sale: &SaleId) -> Self {
        let base = format!("{prefix}{{sale:{sale}}}:");
        Self {
            keys: ["meta", "units", "keys", "pending", "board", "firsts", "names"].map(|k| format!("{base}{k}")),
            channel: format!("{base}changes"),
        }
    }

    fn meta(&self) -> &str {
        &self.keys[0]
    }

    fn pending(&self) -> &str {
        &self.keys[3]
    }

    /// An invocation of `script` with this sale's keys as `KEYS`.
    fn invoke<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in &self.keys {
            invocation.key(key.as_str());
        }
        invocation
    }
}

/// The channel a sale's changes are published on.
fn change_channel(prefix: &str, sale: &SaleId) -> String {
    SaleKeys::new(prefix, sale).channel
}

/// The key listing open sales.
fn open_sales_key(prefix: &str) -> String {
    format!("{prefix}sales:open")
}

/// The idempotency record's field: buyer ids never contain ':', so the split is unambiguous.
fn key_field(buyer: &UserId, key: &IdempotencyKey) -> String {
    format!("{buyer}:{}", key.as_str())
}

/// A buyer's leaderboard member: the first purchase time, order-preserving as fixed-width text
/// (sign bit flipped, so negative times sort first too), then the buyer id. Equal scores sort by
/// member, so ties go to the earlier first purchase, then the smaller buyer id.
fn board_member(first_purchase: UnixMillis, buyer: &UserId) -> String {
    format!("{:020}:{buyer}", (first_purchase.0 as u64) ^ (1 << 63))
}

fn parse_board_member(member: &str) -> Option<UnixMillis> {
    let (time, _buyer) = member.split_once(':')?;
    Some(UnixMillis((time.parse::<u64>().ok()? ^ (1 << 63)) as i64))
}

/// An order as the hot state stores it (sale and price are the sale's, kept once in meta).
#[derive(Debug, Serialize, Deserialize)]
struct StoredOrder {
    id: OrderId,
    buyer_id: UserId,
    buyer_name: std::sync::Arc<str>,
    quantity: u32,
    idempotency_key: IdempotencyKey,
    created_at: UnixMillis,
}

impl StoredOrder {
    fn of(order: &OrderRecord) -> Self {
        Self {
            id: order.id.clone(),
            buyer_id: order.buyer_id.clone(),
            buyer_name: order.buyer_name.clone(),
            quantity: order.quantity,
            idempotency_key: order.idempotency_key.clone(),
            created_at: order.created_at,
        }
    }

    fn encode(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn into_order(self, sale_id: &SaleId, unit_price: Money) -> OrderRecord {
        OrderRecord {
            id: self.id,
            sale_id: sale_id.clone(),
            buyer_id: self.buyer_id,
            buyer_name: self.buyer_name,
            quantity: self.quantity,
            unit_price,
            idempotency_key: self.idempotency_key,
            created_at: self.created_at,
        }
    }
}

/// A script or command answered something this code does not expect (a bug or a foreign key).
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
struct MalformedReply(String);

fn unavailable(error: RedisError) -> HotError {
    let transient =
        error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() || error.is_timeout();
    if !transient {
        tracing::error!(error = %error, "Redis command failed");
    }
    HotError::Unavailable(Box::new(error))
}

fn malformed(what: impl Into<String>) -> HotError {
    let error = MalformedReply(what.into());
    tracing::error!(error = %error, "cannot read the hot state");
    HotError::Unavailable(Box::new(error))
}

/// Reading script replies: every script answers an array whose first element is a code.
fn array(value: Value) -> Result<Vec<Value>, HotError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(malformed(format!("expected an array, got {other:?}"))),
    }
}

fn text(value: &Value) -> Result<String, HotError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|_| malformed("non-UTF-8 text")),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(malformed(format!("expected text, got {other:?}"))),
    }
}

fn optional_text(value: &Value) -> Result<Option<String>, HotError> {
    match value {
        Value::Nil => Ok(None),
        other => text(other).map(Some),
    }
}

fn int(value: &Value) -> Result<i64, HotError> {
    match value {
        Value::Int(n) => Ok(*n),
        other => {
            let raw = text(other)?;
            raw.parse().map_err(|_| malformed(format!("expected an integer, got {raw:?}")))
        }
    }
}

fn item(items: &[Value], at: usize) -> Result<&Value, HotError> {
    items.get(at).ok_or_else(|| malformed(format!("reply too short: no element {at}")))
}

fn money(amount: &Value, currency: &Value) -> Result<Money, HotError> {
    Money::parse(int(amount)?, &text(currency)?).map_err(|e| malformed(e.to_string()))
}

fn parse_status(code: &str) -> Result<SaleStatus, HotError> {
    SaleStatus::parse(code).ok_or_else(|| malformed(format!("unknown status {code:?}")))
}

/// An end reason as stored: its name, or "" while the sale has not ended.
fn reason_code(reason: Option<EndReason>) -> &'static str {
    reason.map_or("", EndReason::as_str)
}

fn parse_reason(code: &str) -> Result<Option<EndReason>, HotError> {
    match code {
        "" => Ok(None),
        name => EndReason::parse(name).map(Some).ok_or_else(|| malformed(format!("unknown end reason {name:?}"))),
    }
}

/// The meta fields `reserve.lua` reads, in its order (it returns them with a refusal).
const RESERVE_FIELDS: [&str; 10] = [
    "status",
    "end_reason",
    "start",
    "end",
    "max_per_purchase",
    "per_user_limit",
    "remaining",
    "price",
    "currency",
    "allocated",
];

/// A refusal of `reserve.lua`. For a sale rule, the script decided atomically to refuse and sent
/// the facts it decided on; the refusal itself is stated by the domain's `check_purchase` from
/// those facts, so both backends refuse in exactly the same words.
fn reserve_refusal(items: &[Value], request: &ReserveRequest) -> Result<PurchaseRefusal, HotError> {
    let rule = text(item(items, 1)?)?;
    match rule.as_str() {
        "SALE_NOT_FOUND" => return Ok(PurchaseRefusal::SaleNotFound),
        "IDEMPOTENCY_KEY_REUSED" => return Ok(PurchaseRefusal::IdempotencyKeyReused),
        _ => {}
    }
    let Value::Array(values) = item(items, 2)? else {
        return Err(malformed("a refusal without the sale's facts"));
    };
    let meta = Meta::new(&RESERVE_FIELDS, values)?;
    let live = BuyerSnapshot {
        status: parse_status(&meta.text("status")?)?,
        end_reason: parse_reason(&meta.text("end_reason")?)?,
        remaining: meta.int("remaining")?,
        bought: u32::try_from(int(item(items, 3)?)?).map_err(|_| malformed("units out of range"))?,
    };
    match check_purchase(&meta.rules()?, live, request.now, request.quantity) {
        Err(refusal) => Ok(refusal),
        Ok(_) => Err(malformed(format!("the reserve script refused ({rule}) what the sale's rules accept"))),
    }
}

/// The answer of a script that may only refuse because the sale is not loaded.
fn expect_ok(items: &[Value]) -> Result<(), HotError> {
    if text(item(items, 0)?)? != "REFUSED" {
        return Ok(());
    }
    match text(item(items, 1)?)?.as_str() {
        "SALE_NOT_FOUND" => Err(HotError::Refused(PurchaseRefusal::SaleNotFound)),
        other => Err(malformed(format!("unexpected refusal {other:?}"))),
    }
}

/// The meta fields `view` reads, in order.
const VIEW_FIELDS: [&str; 15] = [
    "product_id",
    "allocated",
    "per_user_limit",
    "max_per_purchase",
    "start",
    "end",
    "price",
    "currency",
    "status",
    "end_reason",
    "ended_at",
    "remaining",
    "sold",
    "version",
    "in_flight",
];

/// The meta fields `open_sales` reads, in order (the rules and the status).
const RULE_FIELDS: [&str; 9] =
    ["allocated", "per_user_limit", "max_per_purchase", "start", "end", "price", "currency", "status", "product_id"];

/// Meta fields read by name from an HMGET reply.
struct Meta<'a>(HashMap<&'a str, &'a Value>);

impl<'a> Meta<'a> {
    fn new(fields: &[&'a str], values: &'a [Value]) -> Result<Self, HotError> {
        if values.len() != fields.len() {
            return Err(malformed("meta has the wrong number of fields"));
        }
        Ok(Self(fields.iter().copied().zip(values).collect()))
    }

    fn value(&self, field: &str) -> Result<&'a Value, HotError> {
        match self.0.get(field) {
            Some(Value::Nil) | None => Err(malformed(format!("sale meta lacks {field}"))),
            Some(value) => Ok(value),
        }
    }

    fn int(&self, field: &str) -> Result<i64, HotError> {
        int(self.value(field)?)
    }

    fn u32(&self, field: &str) -> Result<u32, HotError> {
        u32::try_from(self.int(field)?).map_err(|_| malformed(format!("{field} out of range")))
    }

    fn text(&self, field: &str) -> Result<String, HotError> {
        text(self.value(field)?)
    }

    fn rules(&self) -> Result<SaleRules, HotError> {
        Ok(SaleRules {
            allocated: self.int("allocated")?,
            per_user_limit: self.u32("per_user_limit")?,
            max_per_purchase: self.u32("max_per_purchase")?,
            start: UnixMillis(self.int("start")?),
            end: UnixMillis(self.int("end")?),
            unit_price: money(self.value("price")?, self.value("currency")?)?,
        })
    }
}

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
        F: Fn(ConnectionManager) -> Fut,
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
        pending
            .iter()
            .map(|raw| {
                let stored: StoredOrder = serde_json::from_str(raw).map_err(|e| malformed(e.to_string()))?;
                Ok(stored.into_order(sale, unit_price))
            })
            .collect()
    }

    /// Where an order stands now.
    async fn settlement(&self, order: &OrderRecord) -> Result<Option<Settled>, HotError> {
        let keys = self.keys(&order.sale_id);
        let mut invocation = keys.invoke(&SCRIPTS.settled);
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
    async fn load_sale(&self, sale: &SaleRecord, orders: &[OrderRecord]) -> Result<(), HotError> {
        if sale.status != SaleStatus::Ended {
            // Listed before the sale is built: a sale listed but absent is skipped by
            // `open_sales`, while a sale built but never listed would never be ended on time.
            let _: i64 =
                self.command(::redis::cmd("SADD").arg(open_sales_key(&self.prefix)).arg(sale.id.as_str())).await?;
        }
        let (_, units, sold) = tally(orders);
        // Standings in the leaderboard's terms: units, first purchase and name of the first order.
        let mut standings: HashMap<&UserId, (i64, UnixMillis, &str)> = HashMap::new();
        for order in orders {
            standings.entry(&order.buyer_id).or_insert((0, order.created_at, &*order.buyer_name)).0 +=
                i64::from(order.quantity);
        }
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
            ("status", sale.status.as_str().to_owned()),
            ("end_reason", reason_code(sale.end_reason).to_owned()),
            ("ended_at", sale.ended_at.map(|t| t.0.to_string()).unwrap_or_default()),
            ("remaining", (rules.allocated - sold).to_string()),
            ("sold", sold.to_string()),
            ("in_flight", "0".to_owned()),
            ("version", crate::store::first_version(sale.generation).to_string()),
        ];
        let keys = self.keys(&sale.id);
        let mut invocation = keys.invoke(&SCRIPTS.load_sale);
        invocation.arg(&keys.channel).arg(meta.len()).arg(units.len()).arg(orders.len()).arg(standings.len());
        for (field, value) in &meta {
            invocation.arg(*field).arg(value);
        }
        for (buyer, held) in &units {
            invocation.arg(buyer.as_str()).arg(*held);
        }
        for order in orders {
            invocation.arg(key_field(&order.buyer_id, &order.idempotency_key)).arg(StoredOrder::of(order).encode());
        }
        for (buyer, (held, first, name)) in &standings {
            invocation.arg(buyer.as_str()).arg(board_member(*first, buyer)).arg(-held).arg(*name);
        }
        self.run(&invocation).await?;
        Ok(())
    }

    async fn has_sale(&self, sale: &SaleId) -> Result<bool, HotError> {
        self.command(::redis::cmd("EXISTS").arg(self.keys(sale).meta())).await
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, HotError> {
        let candidate = StoredOrder {
            id: request.new_order_id.clone(),
            buyer_id: request.buyer_id.clone(),
            buyer_name: request.buyer_name.clone(),
            quantity: request.quantity,
            idempotency_key: request.idempotency_key.clone(),
            created_at: request.now,
        };
        let keys = self.keys(&request.sale_id);
        let mut invocation = keys.invoke(&SCRIPTS.reserve);
        invocation
            .arg(request.buyer_id.as_str())
            .arg(key_field(&request.buyer_id, &request.idempotency_key))
            .arg(request.quantity)
            .arg(request.now.0)
            .arg(request.new_order_id.as_str())
            .arg(candidate.encode());
        let reply = self.run(&invocation).await?;
        match text(item(&reply, 0)?)?.as_str() {
            "NEW" => {
                let unit_price = money(item(&reply, 1)?, item(&reply, 2)?)?;
                Ok(Reservation::New(candidate.into_order(&request.sale_id, unit_price)))
            }
            "EXISTING" => {
                let raw = text(item(&reply, 1)?)?;
                let first: StoredOrder = serde_json::from_str(&raw).map_err(|e| malformed(e.to_string()))?;
                let settled = int(item(&reply, 2)?)? == 1;
                let unit_price = money(item(&reply, 3)?, item(&reply, 4)?)?;
                Ok(Reservation::Existing { order: first.into_order(&request.sale_id, unit_price), settled })
            }
            "REFUSED" => Err(HotError::Refused(reserve_refusal(&reply, request)?)),
            other => Err(malformed(format!("unknown reserve reply {other:?}"))),
        }
    }

    async fn confirm(&self, order: &OrderRecord) -> Result<Confirmed, HotError> {
        let keys = self.keys(&order.sale_id);
        let mut invocation = keys.invoke(&SCRIPTS.confirm);
        invocation
            .arg(order.buyer_id.as_str())
            .arg(key_field(&order.buyer_id, &order.idempotency_key))
            .arg(order.id.as_str())
            .arg(order.quantity)
            .arg(board_member(order.created_at, &order.buyer_id))
            .arg(&*order.buyer_name)
            .arg(StoredOrder::of(order).encode())
            .arg(&keys.channel);
        let reply = self.run(&invocation).await?;
        expect_ok(&reply)?;
        Ok(Confirmed { sold_out: int(item(&reply, 1)?)? == 1 })
    }

    async fn release(&self, order: &OrderRecord) -> Result<(), HotError> {
        let keys = self.keys(&order.sale_id);
        let mut invocation = keys.invoke(&SCRIPTS.release);
        invocation
            .arg(order.buyer_id.as_str())
            .arg(key_field(&order.buyer_id, &order.idempotency_key))
            .arg(order.id.as_str())
            .arg(&keys.channel);
        expect_ok(&self.run(&invocation).await?)
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
        let mut invocation = keys.invoke(&SCRIPTS.set_status);
        invocation
            .arg(sale.status.as_str())
            .arg(reason_code(sale.end_reason))
            .arg(sale.ended_at.map(|t| t.0.to_string()).unwrap_or_default())
            .arg(sale.rules.start.0)
            .arg(&keys.channel);
        expect_ok(&self.run(&invocation).await?)?;
        // The list of open sales is its own key (another slot in a Cluster), so it is updated
        // after the script; `open_sales` checks each listed sale's status, so a failure here
        // leaves at most a stale entry, never a wrong answer.
        let command = if sale.status == SaleStatus::Ended { "SREM" } else { "SADD" };
        let _: i64 =
            self.command(::redis::cmd(command).arg(open_sales_key(&self.prefix)).arg(sale.id.as_str())).await?;
        Ok(())
    }

    async fn view(&self, sale: &SaleId) -> Result<Option<SaleView>, HotError> {
        let keys = self.keys(sale);
        let mut invocation = keys.invoke(&SCRIPTS.view);
        invocation.arg(LEADERBOARD_MAX);
        for field in VIEW_FIELDS {
            invocation.arg(field);
        }
        let reply = self.run(&invocation).await?;
        if reply.is_empty() {
            return Ok(None);
        }
        let [meta, buyers, top, names] = <[Value; 4]>::try_from(reply).map_err(|_| malformed("view reply"))?;
        let meta_values = array(meta)?;
        let meta = Meta::new(&VIEW_FIELDS, &meta_values)?;
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
            remaining: if status == SaleStatus::Ended { rules.allocated - sold } else { meta.int("remaining")? },
            leaderboard,
            total_buyers: u64::try_from(int(&buyers)?).map_err(|_| malformed("buyers"))?,
        }))
    }

    async fn in_flight(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, HotError> {
        let mut orders = self.pending_orders(sale).await?;
        orders.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(orders)
    }

    async fn forget_sale(&self, sale: &SaleId) -> Result<(), HotError> {
        let keys = self.keys(sale);
        // Two slots (the sale's and the open-sales set): a plain pipeline, not a transaction.
        self.pipeline(::redis::pipe().del(&keys.keys[..]).srem(open_sales_key(&self.prefix), sale.as_str())).await
    }

    async fn open_sales(&self) -> Result<Vec<(SaleId, SaleRules, SaleStatus)>, HotError> {
        let listed: Vec<String> = self.command(::redis::cmd("SMEMBERS").arg(open_sales_key(&self.prefix))).await?;
        let ids: Vec<SaleId> = listed.iter().filter_map(|raw| SaleId::parse(raw).ok()).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One HMGET per sale, each on its own slot, sent together.
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET").arg(self.keys(id).meta()).arg(&RULE_FIELDS);
        }
        let metas: Vec<Vec<Value>> = self.pipeline(&pipe).await?;
        let mut open = Vec::new();
        for (id, values) in ids.into_iter().zip(&metas) {
            if values.iter().all(|v| matches!(v, Value::Nil)) {
                continue; // listed, not (or no longer) loaded
            }
            let meta = Meta::new(&RULE_FIELDS, values)?;
            let status = parse_status(&meta.text("status")?)?;
            if status != SaleStatus::Ended {
                open.push((id, meta.rules()?, status));
            }
        }
        Ok(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_members_sort_like_first_purchase_times() {
        let buyer = UserId::parse("u").unwrap();
        let times = [-5_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        let members: Vec<_> = times.iter().map(|t| board_member(UnixMillis(*t), &buyer)).collect();
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(members, sorted);
        for (t, member) in times.iter().zip(&members) {
            assert_eq!(parse_board_member(member), Some(UnixMillis(*t)));
        }
    }

    #[test]
    fn every_key_of_a_sale_carries_its_hash_tag() {
        let sale = SaleId::parse("s-1").unwrap();
        let keys = SaleKeys::new("fs:", &sale);
        for key in keys.keys.iter().chain([&keys.channel]) {
            assert!(key.starts_with("fs:{sale:s-1}:"), "{key}");
        }
    }

    #[test]
    fn uris_are_shown_without_passwords() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
