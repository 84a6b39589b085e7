//! The verdict of a finished rush: what must hold whatever the load. Each check says what it
//! compared, so a failure explains itself.

use std::collections::{BTreeMap, HashMap, HashSet};

use flashsale_client::pb;

use crate::rush::{AttemptRecord, Outcome};
use crate::setup::Buyer;

/// One check and its outcome.
#[derive(Debug, Clone)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// The numbers compared.
    pub detail: String,
}

/// Every check of a rehearsal.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// In the order they were made.
    pub checks: Vec<Check>,
}

impl Verdict {
    /// True when every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    fn check(&mut self, name: &'static str, passed: bool, detail: String) {
        self.checks.push(Check { name, passed, detail });
    }

    /// One line per check, then PASS or FAIL.
    pub fn render(&self) -> String {
        let mut out = String::from("verdict:\n");
        for c in &self.checks {
            out.push_str(&format!("  [{}] {}: {}\n", if c.passed { " ok " } else { "FAIL" }, c.name, c.detail));
        }
        out.push_str(if self.passed() { "VERDICT: PASS\n" } else { "VERDICT: FAIL\n" });
        out
    }
}

/// What the verdict looks at.
pub struct Evidence<'a> {
    /// Every attempt of the rush.
    pub records: &'a [AttemptRecord],
    /// The buyers, indexed as in the records.
    pub buyers: &'a [Buyer],
    /// The sale's per-user limit (0 = unlimited).
    pub per_user_limit: u32,
    /// GetSale after the rush (and after the sale ended).
    pub sale: &'a pb::Sale,
    /// The last WatchSale snapshot (the ENDED one), if the feed delivered it.
    pub final_snapshot: Option<&'a pb::SaleSnapshot>,
    /// ListMyOrders of each buyer in the sale, indexed like `buyers`.
    pub listed: &'a [Vec<pb::Order>],
    /// With callers that gave up: what else is checked.
    pub abandon: Option<AbandonEvidence<'a>>,
}

/// What a rush with callers that gave up must show besides.
pub struct AbandonEvidence<'a> {
    /// GetSale right after the rush, before anything ended the sale.
    pub after_rush: &'a pb::Sale,
    /// Longest one retry call of a come-back caller may take.
    pub retry_bound: std::time::Duration,
}

/// Judges a finished rush.
pub fn judge(e: &Evidence<'_>) -> Verdict {
    let mut verdict = Verdict::default();

    // Acknowledged orders, once each (a replay carries the first order's id).
    let mut acked: HashMap<&str, (u32, u32)> = HashMap::new(); // order id -> (buyer, quantity)
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut stock_refused_quantities: Vec<u32> = Vec::new();
    // Keys of callers that gave up for good: their orders may be durable all the same.
    let mut abandoned_keys: HashSet<&str> = HashSet::new();
    for r in e.records {
        match &r.outcome {
            Outcome::Acked { order_id, quantity, .. } => {
                acked.insert(order_id.as_str(), (r.buyer, *quantity));
            }
            Outcome::Refused(refusal) => {
                *refusals.entry(refusal.label()).or_default() += 1;
                if refusal.is_stock() {
                    stock_refused_quantities.push(r.quantity);
                }
            }
            Outcome::Failed(refusal) => {
                *failures.entry(format!("{} ({})", refusal.label(), refusal.message)).or_default() += 1;
            }
            Outcome::Abandoned => {
                abandoned_keys.insert(r.key.as_str());
            }
        }
    }
    // Orders of those keys, from ListMyOrders.
    let abandoned_durable: Vec<&pb::Order> =
        e.listed.iter().flatten().filter(|o| abandoned_keys.contains(o.idempotency_key.as_str())).collect();
    let abandoned_units: i64 = abandoned_durable.iter().map(|o| i64::from(o.quantity)).sum();
    let acked_sum: i64 = acked.values().map(|&(_, q)| i64::from(q)).sum();

    let unexpected: Vec<String> = refusals
        .iter()
        .filter(|(label, _)| {
            !matches!(label.as_str(), "SOLD_OUT" | "INSUFFICIENT_STOCK" | "SALE_ENDED" | "USER_LIMIT_REACHED")
        })
        .map(|(label, n)| format!("{n}× {label}"))
        .chain(failures.iter().map(|(label, n)| format!("{n}× failed {label}")))
        .collect();
    let odd_ends = e
        .records
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::Refused(f) if f.reason == "SALE_ENDED" && !f.is_stock()))
        .count();
    let mut summary: Vec<String> = refusals.iter().map(|(l, n)| format!("{n}× {l}")).collect();
    if !abandoned_keys.is_empty() {
        summary.push(format!(
            "{}× abandoned for good ({} of them bought all the same)",
            abandoned_keys.len(),
            abandoned_durable.len()
        ));
    }
    verdict.check(
        "only stock or limit refusals",
        unexpected.is_empty() && odd_ends == 0,
        if unexpected.is_empty() && odd_ends == 0 {
            format!(
                "{} acknowledged; refused: {}",
                acked.len(),
                if summary.is_empty() { "none".into() } else { summary.join(", ") }
            )
        } else {
            format!(
                "unexpected: {}{}",
                unexpected.join(", "),
                if odd_ends > 0 { format!(", {odd_ends}× SALE_ENDED not by sell-out") } else { String::new() }
            )
        },
    );

    let (allocated, sold) = (e.sale.allocated, e.sale.sold);
    verdict.check(
        "no oversell",
        sold <= allocated && acked_sum + abandoned_units == sold,
        if abandoned_units > 0 {
            format!("GetSale sold {sold} of {allocated} allocated; acknowledged orders sum to {acked_sum}, orders of callers that gave up to {abandoned_units}")
        } else {
            format!("GetSale sold {sold} of {allocated} allocated; acknowledged orders sum to {acked_sum}")
        },
    );

    // Sold out, or no refused buyer asked for what is still left.
    let left = allocated - sold;
    let could_have_served = stock_refused_quantities.iter().filter(|&&q| i64::from(q) <= left).count();
    verdict.check(
        "sold the allocation or met all demand",
        sold == allocated || could_have_served == 0,
        if sold == allocated {
            format!("sold exactly the {allocated} allocated units")
        } else if could_have_served == 0 {
            format!("{left} units left and no buyer refused for stock asked for that few ({} stock refusals)", stock_refused_quantities.len())
        } else {
            format!("{left} units left, yet {could_have_served} attempts asking for no more than that were refused for stock")
        },
    );

    // Per-user limit, from the acknowledged orders and from ListMyOrders.
    let mut acked_by_buyer: HashMap<u32, u64> = HashMap::new();
    for &(buyer, quantity) in acked.values() {
        *acked_by_buyer.entry(buyer).or_default() += u64::from(quantity);
    }
    let listed_by_buyer: Vec<u64> =
        e.listed.iter().map(|orders| orders.iter().map(|o| u64::from(o.quantity)).sum()).collect();
    let most_acked = acked_by_buyer.values().copied().max().unwrap_or(0);
    let most_listed = listed_by_buyer.iter().copied().max().unwrap_or(0);
    let limit = u64::from(e.per_user_limit);
    verdict.check(
        "no buyer above the per-user limit",
        limit == 0 || (most_acked <= limit && most_listed <= limit),
        if limit == 0 {
            format!("no limit set; most units of one buyer: {most_acked} acknowledged, {most_listed} listed")
        } else {
            format!("limit {limit}; most units of one buyer: {most_acked} acknowledged, {most_listed} listed")
        },
    );

    // ListMyOrders holds exactly the acknowledged orders, each under its own buyer.
    let mut listed_ids: HashSet<&str> = HashSet::new();
    let mut misplaced = 0usize;
    for (i, orders) in e.listed.iter().enumerate() {
        for order in orders {
            listed_ids.insert(order.id.as_str());
            if abandoned_keys.contains(order.idempotency_key.as_str()) {
                continue; // bought by a caller that gave up: counted above
            }
            let ours =
                acked.get(order.id.as_str()).is_none_or(|&(buyer, q)| buyer as usize == i && q == order.quantity);
            if order.buyer_id != e.buyers[i].id || order.sale_id != e.sale.id || !ours {
                misplaced += 1;
            }
        }
    }
    let missing = acked.keys().filter(|id| !listed_ids.contains(*id)).count();
    let extra = listed_ids.iter().filter(|id| !acked.contains_key(*id)).count().saturating_sub(abandoned_durable.len());
    let listed_sum: u64 = listed_by_buyer.iter().sum();
    verdict.check(
        "ListMyOrders holds every acknowledged order",
        missing == 0 && extra == 0 && misplaced == 0 && listed_sum as i64 == sold,
        format!(
            "{} orders listed summing to {listed_sum} units; {missing} acknowledged missing, {extra} unknown, {misplaced} misattributed",
            listed_ids.len()
        ),
    );

    if let Some(abandon) = &e.abandon {
        let rushed = abandon.after_rush;
        verdict.check(
            "nothing left in flight",
            rushed.sold + rushed.remaining == rushed.allocated,
            format!(
                "after the rush: sold {} + remaining {} of {} allocated ({:?})",
                rushed.sold,
                rushed.remaining,
                rushed.allocated,
                rushed.status()
            ),
        );
        verdict.check(
            "sold out while buyers asked",
            e.sale.end_reason() == pb::EndReason::SoldOut && sold == allocated,
            format!("ended {:?}, sold {sold} of {allocated}", e.sale.end_reason()),
        );
        let came_back: Vec<&AttemptRecord> = e.records.iter().filter(|r| r.longest_retry_call.is_some()).collect();
        let unanswered =
            came_back.iter().filter(|r| !matches!(r.outcome, Outcome::Acked { .. } | Outcome::Refused(_))).count();
        let longest = came_back.iter().filter_map(|r| r.longest_retry_call).max().unwrap_or_default();
        verdict.check(
            "every come-back caller answered within the bound",
            unanswered == 0 && longest <= abandon.retry_bound,
            format!(
                "{} abandoned keys retried: {unanswered} without an answer; longest call {} ms (bound {} ms)",
                came_back.len(),
                longest.as_millis(),
                abandon.retry_bound.as_millis()
            ),
        );
    }

    match e.final_snapshot {
        Some(s) => verdict.check(
            "final WatchSale snapshot agrees",
            s.status() == pb::SaleStatus::Ended
                && s.sold == acked_sum + abandoned_units
                && s.sold == sold
                && s.remaining == allocated - sold,
            format!(
                "{:?} snapshot: sold {}, remaining {}; orders sum to {}",
                s.status(),
                s.sold,
                s.remaining,
                acked_sum + abandoned_units
            ),
        ),
        None => verdict.check("final WatchSale snapshot agrees", false, "the feed delivered no ENDED snapshot".into()),
    }
    verdict
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rush::Refusal;

    fn buyer(i: usize) -> Buyer {
        Buyer { id: format!("b{i}"), bearer: "Bearer x".parse().unwrap() }
    }

    fn acked(buyer: u32, id: &str, quantity: u32) -> AttemptRecord {
        let outcome = Outcome::Acked { order_id: id.into(), quantity, replayed: false };
        record(buyer, quantity, outcome)
    }

    fn record(buyer: u32, quantity: u32, outcome: Outcome) -> AttemptRecord {
        AttemptRecord {
            buyer,
            quantity,
            start: Duration::ZERO,
            end: Duration::from_millis(1),
            calls: 1,
            outcome,
            key: format!("k{buyer}-{quantity}"),
            gave_up: None,
            comes_back: false,
            longest_retry_call: None,
        }
    }

    fn sold_out(buyer: u32, quantity: u32) -> AttemptRecord {
        let mut refusal = Refusal::from_status(&tonic::Status::resource_exhausted("sold out"));
        refusal.reason = "SOLD_OUT".into();
        record(buyer, quantity, Outcome::Refused(refusal))
    }

    fn order(id: &str, buyer: &str, quantity: u32) -> pb::Order {
        pb::Order { id: id.into(), sale_id: "s".into(), buyer_id: buyer.into(), quantity, ..Default::default() }
    }

    fn sale(allocated: i64, sold: i64) -> pb::Sale {
        pb::Sale { id: "s".into(), allocated, sold, remaining: allocated - sold, ..Default::default() }
    }

    fn ended(sold: i64, remaining: i64) -> pb::SaleSnapshot {
        pb::SaleSnapshot { status: pb::SaleStatus::Ended as i32, sold, remaining, ..Default::default() }
    }

    #[test]
    fn a_clean_sell_out_passes() {
        let buyers = [buyer(0), buyer(1), buyer(2)];
        let records = [acked(0, "o1", 2), acked(1, "o2", 1), sold_out(2, 1)];
        let listed = [vec![order("o1", "b0", 2)], vec![order("o2", "b1", 1)], vec![]];
        let (sale, snapshot) = (sale(3, 3), ended(3, 0));
        let e = Evidence {
            records: &records,
            buyers: &buyers,
            per_user_limit: 2,
            sale: &sale,
            final_snapshot: Some(&snapshot),
            listed: &listed,
            abandon: None,
        };
        let verdict = judge(&e);
        assert!(verdict.passed(), "{}", verdict.render());
    }

    #[test]
    fn oversell_a_lost_order_and_a_broken_limit_fail() {
        let buyers = [buyer(0), buyer(1)];
        let records = [acked(0, "o1", 3), acked(1, "o2", 1)];
        let listed = [vec![order("o1", "b0", 3)], vec![]];
        let (sale, snapshot) = (sale(3, 4), ended(4, 0));
        let e = Evidence {
            records: &records,
            buyers: &buyers,
            per_user_limit: 2,
            sale: &sale,
            final_snapshot: Some(&snapshot),
            listed: &listed,
            abandon: None,
        };
        let verdict = judge(&e);
        let failed: Vec<&str> = verdict.checks.iter().filter(|c| !c.passed).map(|c| c.name).collect();
        assert_eq!(
            failed,
            [
                "no oversell",
                "no buyer above the per-user limit",
                "ListMyOrders holds every acknowledged order",
                "final WatchSale snapshot agrees"
            ]
        );
    }

    #[test]
    fn stock_left_while_a_buyer_was_refused_fails() {
        let buyers = [buyer(0), buyer(1)];
        let records = [acked(0, "o1", 1), sold_out(1, 1)];
        let listed = [vec![order("o1", "b0", 1)], vec![]];
        let (sale, snapshot) = (sale(3, 1), ended(1, 2));
        let e = Evidence {
            records: &records,
            buyers: &buyers,
            per_user_limit: 0,
            sale: &sale,
            final_snapshot: Some(&snapshot),
            listed: &listed,
            abandon: None,
        };
        let verdict = judge(&e);
        assert!(!verdict.passed());
        assert!(!verdict.checks[2].passed, "{}", verdict.render());
    }

    #[test]
    fn orders_of_callers_that_gave_up_count_but_strangers_do_not() {
        let buyers = [buyer(0), buyer(1)];
        let mut gone = record(1, 1, Outcome::Abandoned);
        gone.key = "left".into();
        let records = [acked(0, "o1", 2), gone];
        let mut bought_anyway = order("o2", "b1", 1);
        bought_anyway.idempotency_key = "left".into();
        let (sale, snapshot, after) = (sale(3, 3), ended(3, 0), sale(3, 3));
        let mut sold_out = sale.clone();
        sold_out.end_reason = pb::EndReason::SoldOut as i32;
        let listed = [vec![order("o1", "b0", 2)], vec![bought_anyway.clone()]];
        let abandon = || Some(AbandonEvidence { after_rush: &after, retry_bound: Duration::from_secs(5) });
        let e = Evidence {
            records: &records,
            buyers: &buyers,
            per_user_limit: 0,
            sale: &sold_out,
            final_snapshot: Some(&snapshot),
            listed: &listed,
            abandon: abandon(),
        };
        let verdict = judge(&e);
        assert!(verdict.passed(), "{}", verdict.render());

        // The same order under a key nobody used: not accounted for.
        let mut stranger = bought_anyway;
        stranger.idempotency_key = "unknown".into();
        let listed = [vec![order("o1", "b0", 2)], vec![stranger]];
        let verdict = judge(&Evidence { listed: &listed, ..e });
        assert!(!verdict.passed(), "{}", verdict.render());

        // Units left in flight after the rush fail the check of their own.
        let mut stuck = sale.clone();
        stuck.remaining = 0;
        stuck.sold = 2;
        let listed = [vec![order("o1", "b0", 2)], vec![order("o2", "b1", 1)]];
        let e = Evidence {
            listed: &listed,
            abandon: Some(AbandonEvidence { after_rush: &stuck, retry_bound: Duration::from_secs(5) }),
            ..e
        };
        let verdict = judge(&e);
        assert!(verdict.checks.iter().any(|c| c.name == "nothing left in flight" && !c.passed), "{}", verdict.render());
    }
}
