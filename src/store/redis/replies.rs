//! Reading what the scripts and commands answer: every script answers an array whose first
//! element is a code; meta fields come back in the order asked for. Anything else is a
//! [`MalformedReply`] (a bug or a foreign key), reported as unavailable and logged.

use std::collections::HashMap;

use ::redis::{RedisError, Value};

use crate::domain::{
    check_join, check_purchase, BuyerSnapshot, EndReason, LineSnapshot, Money, PurchaseRefusal, QueueRules, SaleRules,
    SaleStatus, UnixMillis,
};
use crate::store::{HotError, ReserveRequest};

/// A script or command answered something this code does not expect (a bug or a foreign key).
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
struct MalformedReply(String);

pub(super) fn unavailable(error: RedisError) -> HotError {
    let transient =
        error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() || error.is_timeout();
    if !transient {
        tracing::error!(error = %error, "Redis command failed");
    }
    HotError::Unavailable(Box::new(error))
}

pub(super) fn malformed(what: impl Into<String>) -> HotError {
    let error = MalformedReply(what.into());
    tracing::error!(error = %error, "cannot read the hot state");
    HotError::Unavailable(Box::new(error))
}

/// Reading script replies: every script answers an array whose first element is a code.
pub(super) fn array(value: Value) -> Result<Vec<Value>, HotError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(malformed(format!("expected an array, got {other:?}"))),
    }
}

pub(super) fn text(value: &Value) -> Result<String, HotError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|_| malformed("non-UTF-8 text")),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(malformed(format!("expected text, got {other:?}"))),
    }
}

pub(super) fn optional_text(value: &Value) -> Result<Option<String>, HotError> {
    match value {
        Value::Nil => Ok(None),
        other => text(other).map(Some),
    }
}

pub(super) fn int(value: &Value) -> Result<i64, HotError> {
    match value {
        Value::Int(n) => Ok(*n),
        other => {
            let raw = text(other)?;
            raw.parse().map_err(|_| malformed(format!("expected an integer, got {raw:?}")))
        }
    }
}

pub(super) fn item(items: &[Value], at: usize) -> Result<&Value, HotError> {
    items.get(at).ok_or_else(|| malformed(format!("reply too short: no element {at}")))
}

pub(super) fn money(amount: &Value, currency: &Value) -> Result<Money, HotError> {
    Money::parse(int(amount)?, &text(currency)?).map_err(|e| malformed(e.to_string()))
}

pub(super) fn parse_status(code: &str) -> Result<SaleStatus, HotError> {
    SaleStatus::parse(code).ok_or_else(|| malformed(format!("unknown status {code:?}")))
}

/// An end reason as stored: its name, or "" while the sale has not ended.
pub(super) fn reason_code(reason: Option<EndReason>) -> &'static str {
    reason.map_or("", EndReason::as_str)
}

pub(super) fn parse_reason(code: &str) -> Result<Option<EndReason>, HotError> {
    match code {
        "" => Ok(None),
        name => EndReason::parse(name).map(Some).ok_or_else(|| malformed(format!("unknown end reason {name:?}"))),
    }
}

/// The meta fields `reserve.lua` reads, in its order (it returns them with a refusal).
pub(super) const RESERVE_FIELDS: [&str; 11] = [
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
    "hold_seconds",
];

/// The meta fields `join.lua` reads, in its order (it returns them with a refusal).
pub(super) const JOIN_FIELDS: [&str; 13] = [
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
    "hold_seconds",
    "held",
    "in_flight",
];

/// The facts a script refused on, `{'REFUSED', rule, meta, bought, ...}`: the sale's meta
/// (`fields`, in the script's order) and the buyer's snapshot.
fn refused_facts<'a>(items: &'a [Value], fields: &[&'a str]) -> Result<(Meta<'a>, BuyerSnapshot), HotError> {
    let Value::Array(values) = item(items, 2)? else {
        return Err(malformed("a refusal without the sale's facts"));
    };
    let meta = Meta::new(fields, values)?;
    let buyer = BuyerSnapshot {
        status: parse_status(&meta.text("status")?)?,
        end_reason: parse_reason(&meta.text("end_reason")?)?,
        remaining: meta.int("remaining")?,
        bought: u32::try_from(int(item(items, 3)?)?).map_err(|_| malformed("units out of range"))?,
    };
    Ok((meta, buyer))
}

/// A refusal of `join.lua`, stated by the domain's `check_join` from the facts the script sent
/// (as [`reserve_refusal`] does for a purchase).
pub(super) fn join_refusal(items: &[Value], quantity: u32, now: UnixMillis) -> Result<PurchaseRefusal, HotError> {
    let rule = text(item(items, 1)?)?;
    if rule == "SALE_NOT_FOUND" {
        return Ok(PurchaseRefusal::SaleNotFound);
    }
    let (meta, buyer) = refused_facts(items, &JOIN_FIELDS)?;
    let live = LineSnapshot { buyer, outstanding: int(item(items, 4)?)? };
    match check_join(&meta.rules()?, live, now, quantity) {
        Err(refusal) => Ok(refusal),
        Ok(_) => Err(malformed(format!("the join script refused ({rule}) what the sale's rules accept"))),
    }
}

/// A refusal of `reserve.lua`. For a sale rule, the script decided atomically to refuse and sent
/// the facts it decided on; the refusal itself is stated by the domain's `check_purchase` from
/// those facts, so both backends refuse in exactly the same words.
pub(super) fn reserve_refusal(items: &[Value], request: &ReserveRequest) -> Result<PurchaseRefusal, HotError> {
    let rule = text(item(items, 1)?)?;
    match rule.as_str() {
        "SALE_NOT_FOUND" => return Ok(PurchaseRefusal::SaleNotFound),
        "IDEMPOTENCY_KEY_REUSED" => return Ok(PurchaseRefusal::IdempotencyKeyReused),
        _ => {}
    }
    let (meta, live) = refused_facts(items, &RESERVE_FIELDS)?;
    match check_purchase(&meta.rules()?, live, request.now, request.quantity) {
        Err(refusal) => Ok(refusal),
        Ok(_) => Err(malformed(format!("the reserve script refused ({rule}) what the sale's rules accept"))),
    }
}

/// The answer of a script that may only refuse because the sale is not loaded.
pub(super) fn expect_ok(items: &[Value]) -> Result<(), HotError> {
    if text(item(items, 0)?)? != "REFUSED" {
        return Ok(());
    }
    match text(item(items, 1)?)?.as_str() {
        "SALE_NOT_FOUND" => Err(HotError::Refused(PurchaseRefusal::SaleNotFound)),
        other => Err(malformed(format!("unexpected refusal {other:?}"))),
    }
}

/// The meta fields `view` reads, in order.
pub(super) const VIEW_FIELDS: [&str; 20] = [
    "format",
    "product_id",
    "created_at",
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
    "hold_seconds",
    "held",
    "queue",
];

/// The meta field `queue`: `prequeue_seconds,admit_per_second,max_active_buyers,admission_seconds`
/// (empty without a waiting room).
pub(super) fn queue_field(queue: Option<QueueRules>) -> String {
    queue.map_or_else(String::new, |q| {
        format!("{},{},{},{}", q.prequeue_seconds, q.admit_per_second, q.max_active_buyers, q.admission_seconds)
    })
}

fn parse_queue(raw: &str) -> Result<QueueRules, HotError> {
    let bad = || malformed(format!("queue: expected four counts, got {raw:?}"));
    let numbers: Vec<u32> = raw.split(',').map(|n| n.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let [prequeue, rate, cap, admission] = numbers[..] else { return Err(bad()) };
    QueueRules::parse(prequeue, rate, cap, admission).map_err(|e| malformed(format!("queue: {e}")))
}

/// Meta fields read by name from an HMGET reply.
pub(super) struct Meta<'a>(HashMap<&'a str, &'a Value>);

impl<'a> Meta<'a> {
    pub(super) fn new(fields: &[&'a str], values: &'a [Value]) -> Result<Self, HotError> {
        if values.len() != fields.len() {
            return Err(malformed("meta has the wrong number of fields"));
        }
        Ok(Self(fields.iter().copied().zip(values).collect()))
    }

    pub(super) fn value(&self, field: &str) -> Result<&'a Value, HotError> {
        match self.0.get(field) {
            Some(Value::Nil) | None => Err(malformed(format!("sale meta lacks {field}"))),
            Some(value) => Ok(value),
        }
    }

    /// A field that may be absent.
    pub(super) fn optional(&self, field: &str) -> Result<Option<String>, HotError> {
        match self.0.get(field) {
            Some(value) => optional_text(value),
            None => Ok(None),
        }
    }

    pub(super) fn int(&self, field: &str) -> Result<i64, HotError> {
        int(self.value(field)?)
    }

    pub(super) fn u32(&self, field: &str) -> Result<u32, HotError> {
        u32::try_from(self.int(field)?).map_err(|_| malformed(format!("{field} out of range")))
    }

    pub(super) fn text(&self, field: &str) -> Result<String, HotError> {
        text(self.value(field)?)
    }

    pub(super) fn rules(&self) -> Result<SaleRules, HotError> {
        Ok(SaleRules {
            allocated: self.int("allocated")?,
            per_user_limit: self.u32("per_user_limit")?,
            max_per_purchase: self.u32("max_per_purchase")?,
            start: UnixMillis(self.int("start")?),
            end: UnixMillis(self.int("end")?),
            unit_price: money(self.value("price")?, self.value("currency")?)?,
            // Absent in sales loaded before holds existed: none.
            hold_seconds: self
                .optional_int("hold_seconds")?
                .map_or(Ok(0), |n| u32::try_from(n).map_err(|_| malformed("hold_seconds out of range")))?,
            // Absent (or empty) without a waiting room, and in replies that do not read it.
            queue: match self.optional("queue")?.filter(|q| !q.is_empty()) {
                None => None,
                Some(raw) => Some(parse_queue(&raw)?),
            },
        })
    }

    /// An integer field that may be absent.
    pub(super) fn optional_int(&self, field: &str) -> Result<Option<i64>, HotError> {
        self.optional(field)?
            .map(|raw| raw.parse().map_err(|_| malformed(format!("{field}: expected an integer, got {raw:?}"))))
            .transpose()
    }
}
