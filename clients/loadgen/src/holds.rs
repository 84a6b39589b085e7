//! `loadgen rehearse --hold-seconds N`: a drop with checkout holds. The rush's buyers get HELD
//! orders; a share of them pay (`--pay-ratio`), the rest cancel or let their holds expire; with
//! `--waitlist`, late buyers wait in line for the units given back and pay what they are given.
//! The verdict adds what holds must never break:
//!
//! - confirmed <= allocated (and sold <= allocated) in every snapshot the feed showed;
//! - every order ended CONFIRMED, CANCELLED or EXPIRED, none stayed HELD, none was paid and
//!   then given back;
//! - each freed unit was handed on or returned once: the units of cancelled and expired orders
//!   equal the units the line was given plus the units that went back on sale after the rush;
//! - confirmed + returned to the product == allocated once the sale ended;
//! - the buyers the line served were the first who joined it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flashsale_client::pb;
use futures::StreamExt;
use rand::{Rng, SeedableRng};

use crate::rush::Outcome;
use crate::setup::{self, Buyer};
use crate::stats::{per_sec, Figures};
use crate::target::{authed, Session};
use crate::verdict::Check;

/// What the hold rehearsal is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct HoldPlan {
    /// The sale's hold time.
    pub hold_seconds: u32,
    /// Share of held orders paid; the rest are cancelled (half) or left to expire.
    pub pay_ratio: f64,
    /// Seed of the pay / cancel / expire draw.
    pub seed: u64,
}

/// What the snapshots of the sale showed, at every moment.
#[derive(Debug, Default)]
pub struct HoldFeed {
    /// The most confirmed units seen.
    pub max_confirmed: i64,
    /// The most sold (held + confirmed) units seen.
    pub max_sold: i64,
    /// Snapshots seen.
    pub snapshots: usize,
}

/// Follows WatchSale until it ends, keeping the largest counters it showed.
pub async fn follow(session: &Session, sale_id: &str) -> anyhow::Result<tokio::task::JoinHandle<HoldFeed>> {
    let mut stream = crate::rehearse::open_watch(session, sale_id).await?;
    Ok(tokio::spawn(async move {
        let mut feed = HoldFeed::default();
        while let Ok(Some(s)) = stream.message().await {
            feed.max_confirmed = feed.max_confirmed.max(s.confirmed);
            feed.max_sold = feed.max_sold.max(s.sold);
            feed.snapshots += 1;
        }
        feed
    }))
}

/// The rehearsal's figures and checks once the sale settled.
pub struct HoldOutcome {
    /// The checks, added to the rush's verdict.
    pub checks: Vec<Check>,
    /// The sale at the end.
    pub sale: pb::Sale,
}

/// After the rush: late buyers join the line, winners pay, cancel or let expire, the line is
/// served and pays, everything settles; then the sale ends and is judged.
pub async fn settle(
    session: &Session,
    plan: HoldPlan,
    prepared: &crate::rehearse::Prepared,
    late: &[Buyer],
    records: &[crate::rush::AttemptRecord],
    feed: tokio::task::JoinHandle<HoldFeed>,
    figures: &mut Figures,
) -> anyhow::Result<HoldOutcome> {
    let (sale, buyers) = (&prepared.sale, prepared.buyers.as_slice());
    let after_rush = setup::get_sale(session, &sale.id).await?;
    let unsold_after_rush = after_rush.allocated - after_rush.sold;
    println!(
        "after the rush: {} held, {} confirmed, {} left",
        after_rush.held, after_rush.confirmed, after_rush.remaining
    );

    // Late buyers line up one after another: their join order is the order they must be served.
    let mut joined = Vec::new();
    for (i, buyer) in late.iter().enumerate() {
        let joined_place = session
            .pool
            .purchase()
            .join_waitlist(authed(
                pb::JoinWaitlistRequest { admission_pass: String::new(), sale_id: sale.id.clone(), quantity: 1 },
                &buyer.bearer,
            ))
            .await;
        match joined_place {
            Ok(place) => joined.push((i, place.into_inner().place.map_or(0, |p| p.position))),
            Err(status) => println!("late buyer {i} could not join the line: {}", status.message()),
        }
    }
    if !late.is_empty() {
        println!("waitlist: {} of {} late buyers in line", joined.len(), late.len());
    }

    // Each winner pays, cancels or lets the hold expire.
    let mut draw = rand::rngs::StdRng::seed_from_u64(plan.seed);
    let mut decisions = Vec::new();
    for record in records {
        if let Outcome::Acked { order_id, replayed: false, .. } = &record.outcome {
            let roll: f64 = draw.random();
            let choice = if roll < plan.pay_ratio {
                Choice::Pay
            } else if roll < plan.pay_ratio + (1.0 - plan.pay_ratio) / 2.0 {
                Choice::Cancel
            } else {
                Choice::Expire
            };
            decisions.push((buyers[record.buyer as usize].clone(), order_id.clone(), choice));
        }
    }
    let started = Instant::now();
    let acted = futures::stream::iter(decisions.iter().cloned())
        .map(|(buyer, order_id, choice)| act(session, buyer, order_id, choice))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let late_actions = acted.iter().filter(|a| matches!(a, Ok(Acted::Late))).count();
    let failed_actions: Vec<String> = acted.into_iter().filter_map(Result::err).collect();
    if late_actions > 0 {
        println!("{late_actions} payments or cancels came after their hold expired (told so: HOLD_EXPIRED)");
    }
    figures.add("late_actions", late_actions);
    let count = |c: Choice| decisions.iter().filter(|d| d.2 == c).count();
    println!(
        "winners: {} paid, {} cancelled, {} left to expire ({:.1} s)",
        count(Choice::Pay),
        count(Choice::Cancel),
        count(Choice::Expire),
        started.elapsed().as_secs_f64()
    );

    // The line's buyers pay what they are given, until the sale settles: nothing held, nobody
    // waiting. The holds left to expire do so at their deadline.
    let deadline = Instant::now() + Duration::from_secs(u64::from(plan.hold_seconds) * 3 + 30);
    let expiry_watch = Instant::now();
    let mut paid_from_line = std::collections::HashSet::new();
    let settled = loop {
        let listed = if late.is_empty() { Vec::new() } else { setup::list_orders(session, late, &sale.id, 64).await? };
        for (buyer, orders) in late.iter().zip(listed) {
            for order in orders {
                if order.status() == pb::OrderStatus::Held && paid_from_line.insert(order.id.clone()) {
                    let _ = act(session, buyer.clone(), order.id.clone(), Choice::Pay).await;
                }
            }
        }
        let now = setup::get_sale(session, &sale.id).await?;
        if now.held == 0 && now.waitlist_length == 0 && now.sold + now.remaining == now.allocated {
            break now;
        }
        anyhow::ensure!(Instant::now() < deadline, "the sale did not settle: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let settle_secs = expiry_watch.elapsed().as_secs_f64();

    let ended = setup::end_sale_if_open(session, &sale.id).await?;
    let feed = tokio::time::timeout(Duration::from_secs(30), feed).await.context("the feed did not end")??;
    let product = session
        .pool
        .admin()
        .get_product(authed(pb::GetProductRequest { product_id: sale.product_id.clone() }, &session.admin))
        .await
        .context("GetProduct")?
        .into_inner();
    let everyone: Vec<Buyer> = buyers.iter().chain(late).cloned().collect();
    let orders: Vec<pb::Order> = setup::list_orders(session, &everyone, &sale.id, 64).await?.concat();

    let units = |status: pb::OrderStatus| -> i64 {
        orders.iter().filter(|o| o.status() == status).map(|o| i64::from(o.quantity)).sum()
    };
    let confirmed = units(pb::OrderStatus::Confirmed);
    let freed = units(pb::OrderStatus::Cancelled) + units(pb::OrderStatus::Expired);
    let expired = orders.iter().filter(|o| o.status() == pb::OrderStatus::Expired).count();
    let from_line: Vec<&pb::Order> = orders.iter().filter(|o| o.idempotency_key.starts_with("waitlist-")).collect();
    let handed: i64 = from_line.iter().map(|o| i64::from(o.quantity)).sum();
    let returned = product.inventory;
    let back_on_sale = returned - unsold_after_rush;

    // Served in line order: the buyers served are the first k who joined, so nobody behind was
    // served while someone ahead was left waiting. (The holds' creation times cannot order them
    // more finely: each hand-over is stamped with the time its caller read, and concurrent
    // callers read their clocks in any order. The API tests check the exact order.)
    let served: std::collections::HashSet<usize> = late
        .iter()
        .enumerate()
        .filter(|(_, buyer)| from_line.iter().any(|o| o.buyer_id == buyer.id))
        .map(|(i, _)| i)
        .collect();
    let in_order = joined.iter().take(served.len()).all(|(i, _)| served.contains(i));
    let served_order = served;

    // Expiries as the server handled them: from the first deadline to the last expiry, and how
    // long after its deadline each hold expired.
    let expired_orders: Vec<&pb::Order> = orders.iter().filter(|o| o.status() == pb::OrderStatus::Expired).collect();
    let first_deadline = expired_orders.iter().map(|o| millis(o.expires_at.as_ref())).min().unwrap_or(0);
    let last_expiry = expired_orders.iter().map(|o| millis(o.settled_at.as_ref())).max().unwrap_or(0);
    let span = Duration::from_millis(u64::try_from(last_expiry - first_deadline).unwrap_or(0).max(1));
    let expiries_per_sec = per_sec(expired as u64, span);
    let mut lags: Vec<i64> =
        expired_orders.iter().map(|o| millis(o.settled_at.as_ref()) - millis(o.expires_at.as_ref())).collect();
    lags.sort_unstable();
    let at = |q: f64| lags.get(((lags.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    let (lag_p50, lag_p99) = (at(0.5), at(0.99));
    println!(
        "settled in {settle_secs:.1} s: {confirmed} confirmed, {freed} freed ({expired} orders expired), {handed} handed to the line, {returned} returned to the product"
    );
    figures.add("hold_seconds", plan.hold_seconds);
    figures.add("confirmed", confirmed);
    figures.add("freed_units", freed);
    figures.add("handed_to_line", handed);
    figures.add("returned", returned);
    figures.add("expired_orders", expired);
    figures.add("settle_s", format!("{settle_secs:.2}"));
    figures.add("expiries_per_sec", format!("{expiries_per_sec:.1}"));
    figures.add("expiry_lag_p50_ms", lag_p50);
    figures.add("expiry_lag_p99_ms", lag_p99);
    println!(
        "expiries: {expired} orders from the first deadline to the last expiry in {:.3} s ({expiries_per_sec:.0}/s); lag after the deadline p50 {lag_p50} ms, p99 {lag_p99} ms",
        span.as_secs_f64(),
    );

    let checks = vec![
        Check {
            name: "confirmed <= allocated, and sold <= allocated, in every snapshot",
            passed: feed.max_confirmed <= sale.allocated && feed.max_sold <= sale.allocated && feed.snapshots > 0,
            detail: format!(
                "at most {} confirmed and {} sold of {} in {} snapshots",
                feed.max_confirmed, feed.max_sold, sale.allocated, feed.snapshots
            ),
        },
        Check {
            name: "every hold ended, once: nothing HELD, every payment answered",
            passed: units(pb::OrderStatus::Held) == 0 && failed_actions.is_empty() && settled.held == 0,
            detail: match failed_actions.first() {
                Some(first) => format!("{} actions failed, e.g. {first}", failed_actions.len()),
                None => format!("{} orders, none held", orders.len()),
            },
        },
        Check {
            name: "each freed unit handed on or returned once",
            passed: freed == handed + back_on_sale,
            detail: format!("{freed} freed = {handed} to the line + {back_on_sale} back on sale after the rush"),
        },
        Check {
            name: "confirmed + returned == allocated",
            passed: confirmed + returned == sale.allocated && ended.confirmed == confirmed,
            detail: format!("{confirmed} + {returned} of {}", sale.allocated),
        },
        Check {
            name: "the buyers served from the line were the first in it",
            passed: in_order,
            detail: format!("{} of {} waiting buyers served", served_order.len(), joined.len()),
        },
    ];
    Ok(HoldOutcome { checks, sale: ended })
}

fn millis(at: Option<&prost_types::Timestamp>) -> i64 {
    at.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    Pay,
    Cancel,
    Expire,
}

/// What a payment or a cancel was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acted {
    /// Done as asked (or nothing to do: a hold left to expire).
    Done,
    /// Too late: the hold had expired first (HOLD_EXPIRED, or ORDER_NOT_HELD for an expired
    /// order): a definite answer, when the payers are slower than the hold time.
    Late,
}

/// Pays (with a test reference) or cancels an order; leaving it to expire does nothing.
/// UNAVAILABLE is retried with the same reference, as a payment webhook does. An answer that
/// is neither done nor too late is an error.
async fn act(session: &Session, buyer: Buyer, order_id: String, choice: Choice) -> Result<Acted, String> {
    for _ in 0..10 {
        let mut client = session.pool.purchase();
        let answer = match choice {
            Choice::Expire => return Ok(Acted::Done),
            Choice::Pay => {
                let request = pb::ConfirmOrderRequest {
                    order_id: order_id.clone(),
                    payment_reference: format!("pay-{order_id}"),
                };
                client.confirm_order(authed(request, &buyer.bearer)).await.map(|_| ())
            }
            Choice::Cancel => client
                .cancel_order(authed(pb::CancelOrderRequest { order_id: order_id.clone() }, &buyer.bearer))
                .await
                .map(|_| ()),
        };
        match answer {
            Ok(()) => return Ok(Acted::Done),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) if expired(&status) => return Ok(Acted::Late),
            Err(status) => return Err(format!("{choice:?} {order_id}: {}", status.message())),
        }
    }
    Err(format!("{choice:?} {order_id}: still unavailable"))
}

/// HOLD_EXPIRED, or ORDER_NOT_HELD for an order that expired.
fn expired(status: &tonic::Status) -> bool {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info();
    info.is_some_and(|info| {
        info.reason == "HOLD_EXPIRED"
            || (info.reason == "ORDER_NOT_HELD" && info.metadata.get("status").is_some_and(|s| s == "EXPIRED"))
    })
}

/// The late buyers' tokens, minted or registered like the rush's.
pub async fn late_buyers(session: &Session, count: usize, mint: bool, tag: &str) -> anyhow::Result<Arc<Vec<Buyer>>> {
    if count == 0 {
        return Ok(Arc::new(Vec::new()));
    }
    let (buyers, _) = setup::buyers(session, count, mint, 8, &format!("{tag}-late")).await?;
    Ok(Arc::new(buyers))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt};

    use super::expired;

    fn refusal(code: Code, reason: &str, metadata: &[(&str, &str)]) -> tonic::Status {
        let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        tonic::Status::with_error_details(
            code,
            "refused",
            ErrorDetails::with_error_info(reason, "flashsale.v1", metadata),
        )
    }

    #[test]
    fn a_payment_after_the_expiry_is_late_not_failed() {
        assert!(expired(&refusal(Code::FailedPrecondition, "HOLD_EXPIRED", &[])));
        assert!(expired(&refusal(Code::FailedPrecondition, "ORDER_NOT_HELD", &[("status", "EXPIRED")])));
        assert!(!expired(&refusal(Code::FailedPrecondition, "ORDER_NOT_HELD", &[("status", "CANCELLED")])));
        assert!(!expired(&refusal(Code::NotFound, "ORDER_NOT_FOUND", &[])));
        assert!(!expired(&tonic::Status::unavailable("down")));
    }
}
