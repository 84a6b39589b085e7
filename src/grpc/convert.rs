//! Conversions between protobuf messages and domain/store types. Requests are validated here:
//! every violation is collected, so a client learns all its bad fields at once.

use prost_types::Timestamp;

use crate::domain::{
    EndReason, FieldViolation, Money, OrderRecord, OrderStatus, ProductRecord, QueueRules, SaleStatus, SaleView,
    UnixMillis,
};
use crate::pb;
use crate::service::ServiceError;

/// Collects field violations while a request is converted.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// The value, or `None` after recording why not.
    pub fn check<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        result.map_err(|v| self.0.push(v)).ok()
    }

    /// Records a violation when `ok` is false.
    pub fn require(&mut self, ok: bool, field: &'static str, description: &str) {
        if !ok {
            self.0.push(FieldViolation::new(field, description));
        }
    }

    /// The converted value when nothing was recorded, else INVALID_ARGUMENT with every
    /// violation. `value` is `None` exactly when some check failed.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ServiceError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(ServiceError::InvalidArgument(self.0)),
        }
    }
}

/// A protobuf timestamp.
pub fn timestamp(at: UnixMillis) -> Timestamp {
    Timestamp { seconds: at.0.div_euclid(1000), nanos: (at.0.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A required timestamp field, to millisecond precision.
pub fn millis(field: &'static str, at: Option<&Timestamp>) -> Result<UnixMillis, FieldViolation> {
    let at = at.ok_or_else(|| FieldViolation::new(field, "is required"))?;
    if !(0..1_000_000_000).contains(&at.nanos) || !(0..=253_402_300_799).contains(&at.seconds) {
        return Err(FieldViolation::new(field, "is not a valid timestamp"));
    }
    Ok(UnixMillis(at.seconds * 1000 + i64::from(at.nanos / 1_000_000)))
}

/// A Money field.
pub fn money(field_present: Option<&pb::Money>) -> Result<Money, FieldViolation> {
    let money = field_present.ok_or_else(|| FieldViolation::new("unit_price", "is required"))?;
    Money::parse(money.amount_minor, &money.currency)
}

fn pb_money(money: Money) -> pb::Money {
    pb::Money { amount_minor: money.amount_minor, currency: money.currency.as_str().to_owned() }
}

/// The API's status enum.
pub fn pb_status(status: SaleStatus) -> pb::SaleStatus {
    match status {
        SaleStatus::Scheduled => pb::SaleStatus::Scheduled,
        SaleStatus::Active => pb::SaleStatus::Active,
        SaleStatus::Ended => pb::SaleStatus::Ended,
    }
}

fn pb_end_reason(reason: Option<EndReason>) -> pb::EndReason {
    match reason {
        None => pb::EndReason::Unspecified,
        Some(EndReason::SoldOut) => pb::EndReason::SoldOut,
        Some(EndReason::TimeUp) => pb::EndReason::TimeUp,
        Some(EndReason::ByAdmin) => pb::EndReason::ByAdmin,
    }
}

impl From<&ProductRecord> for pb::Product {
    fn from(p: &ProductRecord) -> Self {
        Self {
            id: p.id.to_string(),
            name: p.name.clone(),
            description: p.description.clone(),
            inventory: p.inventory,
            created_at: Some(timestamp(p.created_at)),
        }
    }
}

impl From<&SaleView> for pb::Sale {
    fn from(v: &SaleView) -> Self {
        Self {
            id: v.sale_id.to_string(),
            product_id: v.product_id.to_string(),
            allocated: v.rules.allocated,
            sold: v.sold,
            remaining: v.remaining,
            unit_price: Some(pb_money(v.rules.unit_price)),
            per_user_limit: v.rules.per_user_limit,
            max_per_purchase: v.rules.max_per_purchase,
            start_time: Some(timestamp(v.rules.start)),
            end_time: Some(timestamp(v.rules.end)),
            status: pb_status(v.status).into(),
            end_reason: pb_end_reason(v.end_reason).into(),
            ended_at: v.ended_at.map(timestamp),
            created_at: Some(timestamp(v.created_at)),
            hold_seconds: v.rules.hold_seconds,
            held: v.held,
            confirmed: v.sold - v.held,
            waitlist_length: v.waitlist,
            queue: v.rules.queue.map(pb_queue),
            queue_waiting: v.line.map_or(0, |l| l.waiting()),
            queue_admitted: v.line.map_or(0, |l| l.admitted),
        }
    }
}

/// A waiting room's options.
pub fn pb_queue(q: QueueRules) -> pb::QueueOptions {
    pb::QueueOptions {
        prequeue_seconds: q.prequeue_seconds,
        admit_per_second: q.admit_per_second,
        max_active_buyers: q.max_active_buyers,
        admission_seconds: q.admission_seconds,
    }
}

/// An EnterQueue message.
pub fn queue_update(u: &crate::service::QueueUpdate) -> pb::QueueUpdate {
    use crate::service::QueueState;
    let state = match u.state {
        QueueState::Waiting => pb::QueueState::Waiting,
        QueueState::Admitted => pb::QueueState::Admitted,
        QueueState::Expired => pb::QueueState::Expired,
        QueueState::Closed => pb::QueueState::Closed,
    };
    pb::QueueUpdate {
        sale_id: u.sale.to_string(),
        state: state.into(),
        position: u.position,
        ahead: u.ahead,
        estimated_wait: u.estimated_wait.and_then(|d| prost_types::Duration::try_from(d).ok()),
        admission_pass: u.pass.as_ref().map(|(pass, _)| pass.clone()).unwrap_or_default(),
        admission_expires_at: u.pass.as_ref().map(|(_, at)| timestamp(*at)),
        waiting: u.waiting,
        admitted: u.admitted,
        server_time: Some(timestamp(u.server_time)),
        starts_at: Some(timestamp(u.starts_at)),
        prequeue: u.prequeue,
    }
}

/// The WatchSale message for a view, stamped with the server's time.
pub fn snapshot(v: &SaleView, server_time: UnixMillis) -> pb::SaleSnapshot {
    pb::SaleSnapshot {
        sale_id: v.sale_id.to_string(),
        version: v.version,
        status: pb_status(v.status).into(),
        end_reason: pb_end_reason(v.end_reason).into(),
        allocated: v.rules.allocated,
        sold: v.sold,
        remaining: v.remaining,
        unit_price: Some(pb_money(v.rules.unit_price)),
        per_user_limit: v.rules.per_user_limit,
        max_per_purchase: v.rules.max_per_purchase,
        start_time: Some(timestamp(v.rules.start)),
        end_time: Some(timestamp(v.rules.end)),
        ended_at: v.ended_at.map(timestamp),
        server_time: Some(timestamp(server_time)),
        product_id: v.product_id.to_string(),
        hold_seconds: v.rules.hold_seconds,
        held: v.held,
        confirmed: v.sold - v.held,
        waitlist_length: v.waitlist,
        queue: v.rules.queue.map(pb_queue),
        queue_waiting: v.line.map_or(0, |l| l.waiting()),
        queue_admitted: v.line.map_or(0, |l| l.admitted),
    }
}

/// The Leaderboard message for a view, cut to `top_n` entries.
pub fn leaderboard(v: &SaleView, top_n: usize) -> pb::LeaderboardSnapshot {
    pb::LeaderboardSnapshot {
        sale_id: v.sale_id.to_string(),
        version: v.version,
        entries: v
            .leaderboard
            .iter()
            .take(top_n)
            .map(|e| pb::LeaderboardEntry {
                rank: e.rank,
                display_name: e.display_name.to_string(),
                units: e.units,
                first_purchase_at: Some(timestamp(e.first_purchase_at)),
            })
            .collect(),
        total_buyers: v.total_buyers,
        status: pb_status(v.status).into(),
    }
}

impl From<&OrderRecord> for pb::Order {
    fn from(o: &OrderRecord) -> Self {
        Self {
            id: o.id.to_string(),
            sale_id: o.sale_id.to_string(),
            buyer_id: o.buyer_id.to_string(),
            quantity: o.quantity,
            unit_price: Some(pb_money(o.unit_price)),
            total: Some(pb_money(o.unit_price.times(o.quantity))),
            idempotency_key: o.idempotency_key.as_str().to_owned(),
            created_at: Some(timestamp(o.created_at)),
            status: pb_order_status(o.status).into(),
            expires_at: o.expires_at.map(timestamp),
            payment_reference: o.payment_reference.clone().unwrap_or_default(),
            settled_at: o.settled_at.map(timestamp),
            buyer_name: o.buyer_name.to_string(),
        }
    }
}

impl From<&crate::domain::OrderEvent> for pb::OrderEvent {
    fn from(event: &crate::domain::OrderEvent) -> Self {
        use crate::domain::OrderEventKind as Kind;
        let kind = match event.kind {
            Kind::Created => pb::OrderEventKind::Created,
            Kind::Confirmed => pb::OrderEventKind::Confirmed,
            Kind::Cancelled => pb::OrderEventKind::Cancelled,
            Kind::Expired => pb::OrderEventKind::Expired,
        };
        Self {
            sequence: event.sequence,
            kind: kind.into(),
            order: Some((&event.order).into()),
            at: Some(timestamp(event.at())),
        }
    }
}

/// The page a listing request asks for: `page_size` (0: the default; above the maximum: the
/// maximum) and `page_token` as sent.
pub fn page_ask(v: &mut Violations, page_size: i32, page_token: &str) -> Option<crate::service::PageAsk> {
    let size = crate::paging::page_size(page_size);
    v.require(size.is_some(), "page_size", "must not be negative");
    v.require(page_token.len() <= 1024, "page_token", "is not a token this service issued");
    Some(crate::service::PageAsk { size: size?, token: page_token.to_owned() })
}

/// A request's order status filter: unset (any) or one status.
pub fn order_status(v: &mut Violations, raw: i32) -> Option<Option<OrderStatus>> {
    match pb::OrderStatus::try_from(raw) {
        Ok(pb::OrderStatus::Unspecified) => Some(None),
        Ok(pb::OrderStatus::Held) => Some(Some(OrderStatus::Held)),
        Ok(pb::OrderStatus::Confirmed) => Some(Some(OrderStatus::Confirmed)),
        Ok(pb::OrderStatus::Cancelled) => Some(Some(OrderStatus::Cancelled)),
        Ok(pb::OrderStatus::Expired) => Some(Some(OrderStatus::Expired)),
        Err(_) => {
            v.require(false, "status", "is not an order status");
            None
        }
    }
}

/// The API's order status.
pub fn pb_order_status(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Held => pb::OrderStatus::Held,
        OrderStatus::Confirmed => pb::OrderStatus::Confirmed,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        OrderStatus::Expired => pb::OrderStatus::Expired,
    }
}

impl From<crate::domain::WaitlistPlace> for pb::WaitlistPlace {
    fn from(place: crate::domain::WaitlistPlace) -> Self {
        Self { position: place.position, quantity: place.quantity, length: place.length }
    }
}
