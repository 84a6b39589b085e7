//! The `HotStore` contract: one suite, run against the in-process `MemoryHot`, against
//! `RedisHot` on a real `redis-server` and against `RedisHot` on a real Redis Cluster of three
//! masters and three replicas (each started once per test process, a fresh key prefix per
//! test). Then what only Redis can get wrong: scripts flushed from the server, an outage and a
//! restart, change notifications between nodes, the key layout.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::domain::{
    EndReason, IdempotencyKey, Money, OrderId, OrderRecord, OrderStatus, ProductId, PurchaseRefusal, Quantity, SaleId,
    SaleRecord, SaleRules, SaleStatus, SaleView, UnixMillis, UserId, WaitlistEntry, WaitlistPlace,
};
use flashsale::store::embedded::MemoryHot;
use flashsale::store::redis::{change_listener, connect, connect_to, spawn_change_listener, RedisHot, Topology};
use flashsale::store::{ChangeSink, HotError, HotStore, JoinRequest, Reservation, ReserveRequest, Settled};
use tokio_util::sync::CancellationToken;

use crate::redis_support::{fresh_prefix, shared_cluster, shared_redis, RedisServer};

/// What a change listener told its sink.
#[derive(Debug, PartialEq)]
enum Heard {
    Changed(SaleId),
    Resubscribed,
}

/// A sink that passes on what it hears; it follows the sales in its list.
struct Ears(tokio::sync::mpsc::UnboundedSender<Heard>, std::sync::Mutex<Vec<SaleId>>);

impl Ears {
    fn follow(&self, sale: &SaleId) {
        self.1.lock().unwrap().push(sale.clone());
    }
}

impl ChangeSink for Ears {
    fn followed(&self) -> Vec<SaleId> {
        self.1.lock().unwrap().clone()
    }

    fn changed(&self, sale: SaleId) {
        let _ = self.0.send(Heard::Changed(sale));
    }

    fn resubscribed(&self) {
        let _ = self.0.send(Heard::Resubscribed);
    }
}

fn ears() -> (Arc<Ears>, tokio::sync::mpsc::UnboundedReceiver<Heard>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (Arc::new(Ears(tx, Default::default())), rx)
}

async fn redis_hot(prefix: &str) -> RedisHot {
    connect(&shared_redis().uri(), prefix).await.expect("connect to the test redis-server")
}

/// A store on the shared Redis Cluster.
async fn cluster_hot(prefix: &str) -> RedisHot {
    let cluster = tokio::task::block_in_place(shared_cluster);
    connect_to(&cluster.uri(), prefix, Topology::Cluster).await.expect("connect to the test Redis Cluster")
}

/// A plain connection to the shared server, for poking at it.
async fn raw_connection() -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(shared_redis().uri()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// The contract

/// Which implementation a contract test runs against.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Redis,
    Cluster,
}

impl Backend {
    /// An empty store (for Redis: a fresh key prefix on the shared server).
    async fn fresh(self) -> Arc<dyn HotStore> {
        match self {
            Self::Memory => Arc::new(MemoryHot::default()),
            Self::Redis => Arc::new(redis_hot(&fresh_prefix()).await),
            Self::Cluster => Arc::new(cluster_hot(&fresh_prefix()).await),
        }
    }
}

/// Runs each named contract test against both backends.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Redis).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Cluster).await;
                }
            )*
        }
    };
}

contract_tests!(
    refuses_outside_the_sale_window,
    refuses_in_rule_order_quantity_limit_stock,
    refusals_change_nothing,
    replays_settled_and_in_flight_purchases,
    wait_settled_follows_confirm_and_release,
    release_gives_units_and_key_back,
    leaderboard_ranks_units_then_first_purchase,
    load_sale_rebuilds_from_durable_orders_and_never_overwrites,
    concurrent_reserves_never_oversell_nor_exceed_the_limit,
    status_changes_start_and_end_sales,
    holds_are_sold_held_and_ranked_once_paid,
    the_line_opens_only_when_nothing_is_left_and_something_may_come_back,
    given_back_units_serve_the_line_in_order_then_go_on_sale,
    a_served_hold_that_fails_to_commit_serves_the_next_in_line,
    a_head_that_can_no_longer_be_served_leaves_the_line_when_the_last_hold_is_paid,
    a_hold_ended_before_its_confirm_is_settled_once,
    a_rebuild_ranks_paid_holds_as_the_live_board_did,
    a_restored_line_gets_the_units_on_sale_first,
);

async fn a_restored_line_gets_the_units_on_sale_first(backend: Backend) {
    let hot = backend.fresh().await;
    let sale = active_sale(&*hot, hold_rules(2, 0, 1)).await;
    let line = [entry("zed", 1), entry("yan", 1), entry("xia", 1)];
    let handed = hot.restore_line(&sale.id, &line, UnixMillis(T0 + 10)).await.unwrap();
    let served: Vec<_> = handed.served.iter().map(|o| (o.buyer_id.to_string(), o.id.clone())).collect();
    assert_eq!(served, [("zed".to_owned(), line[0].order_id.clone()), ("yan".to_owned(), line[1].order_id.clone())]);
    let v = view(&*hot, &sale).await;
    assert_eq!((v.remaining, v.in_flight, v.waitlist), (0, 2, 1));
    assert_eq!(hot.waitlist_place(&sale.id, &user("xia")).await.unwrap().map(|p| p.position), Some(1));
    // A line that has buyers is not restored over.
    let again = hot.restore_line(&sale.id, &[entry("wes", 1)], UnixMillis(T0 + 11)).await.unwrap();
    assert_eq!(again, flashsale::store::Handed::default());
    assert_eq!(view(&*hot, &sale).await.waitlist, 1);
}

async fn a_rebuild_ranks_paid_holds_as_the_live_board_did(backend: Backend) {
    let hot = backend.fresh().await;
    let sale = active_sale(&*hot, hold_rules(4, 0, 2)).await;
    let a1 = buy(&*hot, &sale, "ann", "k-1", 1, T0 + 1).await;
    let a2 = buy(&*hot, &sale, "ann", "k-2", 1, T0 + 2).await;
    let b = buy(&*hot, &sale, "bob", "k-3", 2, T0 + 3).await;
    // Paid in another order than made: Ann's newer hold first.
    let paid = [
        ended(&a2, OrderStatus::Confirmed, T0 + 50),
        ended(&b, OrderStatus::Confirmed, T0 + 60),
        ended(&a1, OrderStatus::Confirmed, T0 + 70),
    ];
    for order in &paid {
        hot.end_hold(order, order.settled_at.unwrap()).await.unwrap();
    }
    let board = |v: SaleView| {
        v.leaderboard.iter().map(|e| (e.display_name.to_string(), e.units, e.first_purchase_at)).collect::<Vec<_>>()
    };
    let live = board(view(&*hot, &sale).await);
    assert_eq!(
        live,
        [("Name of ann".to_owned(), 2, UnixMillis(T0 + 50)), ("Name of bob".to_owned(), 2, UnixMillis(T0 + 60))]
    );
    hot.forget_sale(&sale.id).await.unwrap();
    hot.load_sale(&sale, &[paid[2].clone(), paid[0].clone(), paid[1].clone()]).await.unwrap();
    assert_eq!(board(view(&*hot, &sale).await), live, "the same board after a rebuild from the record");
}

async fn a_head_that_can_no_longer_be_served_leaves_the_line_when_the_last_hold_is_paid(backend: Backend) {
    let hot = backend.fresh().await;
    let sale = active_sale(&*hot, hold_rules(3, 0, 2)).await;
    let a = buy(&*hot, &sale, "ann", "k-a", 1, T0 + 1).await;
    let b = buy(&*hot, &sale, "bob", "k-b", 1, T0 + 2).await;
    let c = buy(&*hot, &sale, "cy", "k-c", 1, T0 + 3).await;
    join(&*hot, &sale, "zed", 2).await.unwrap();
    // One unit back: kept for zed, who wants two (two more may come back).
    hot.end_hold(&ended(&a, OrderStatus::Expired, T0 + 100), UnixMillis(T0 + 100)).await.unwrap();
    let paid = hot.end_hold(&ended(&b, OrderStatus::Confirmed, T0 + 101), UnixMillis(T0 + 101)).await.unwrap();
    assert!(paid.handed.dropped.is_empty(), "one unit kept + one held can still serve zed");
    assert_eq!(view(&*hot, &sale).await.remaining, 0);
    // The last hold paid: nothing more can come back, so zed leaves the line and the kept unit
    // goes back on sale instead of staying stuck.
    let last = hot.end_hold(&ended(&c, OrderStatus::Confirmed, T0 + 102), UnixMillis(T0 + 102)).await.unwrap();
    assert_eq!(last.handed.dropped, [user("zed")]);
    let v = view(&*hot, &sale).await;
    assert_eq!((v.remaining, v.waitlist, v.sold, v.held, v.in_flight), (1, 0, 2, 0, 0));
    reserve_new(&*hot, &request(&sale, "xia", "k-x", 1, T0 + 103)).await;
}

async fn a_hold_ended_before_its_confirm_is_settled_once(backend: Backend) {
    let hot = backend.fresh().await;
    let sale = active_sale(&*hot, hold_rules(2, 0, 2)).await;
    // Durable in the record, cancelled there at once, before this state heard it was durable.
    let order = reserve_new(&*hot, &request(&sale, "ann", "k-a", 2, T0 + 1)).await;
    assert_eq!(view(&*hot, &sale).await.in_flight, 2);
    hot.end_hold(&ended(&order, OrderStatus::Cancelled, T0 + 5), UnixMillis(T0 + 5)).await.unwrap();
    let v = view(&*hot, &sale).await;
    assert_eq!((v.remaining, v.sold, v.held, v.in_flight), (2, 0, 0, 0), "the units are back");
    // The late confirm finds it settled: nothing is counted twice.
    hot.confirm(&order).await.unwrap();
    let v = view(&*hot, &sale).await;
    assert_eq!((v.remaining, v.sold, v.held, v.in_flight), (2, 0, 0, 0));
    assert_eq!(hot.wait_settled(&order).await.unwrap(), Settled::Confirmed);
    // The same for a payment: it counts as confirmed once.
    let paid = reserve_new(&*hot, &request(&sale, "bob", "k-b", 1, T0 + 10)).await;
    hot.end_hold(&ended(&paid, OrderStatus::Confirmed, T0 + 11), UnixMillis(T0 + 11)).await.unwrap();
    hot.confirm(&paid).await.unwrap();
    let v = view(&*hot, &sale).await;
    assert_eq!((v.remaining, v.sold, v.held, v.in_flight), (1, 1, 0, 0));
    assert_eq!(v.leaderboard.iter().map(|e| e.units).sum::<i64>(), 1);
}

/// A sale whose orders are held for ten seconds.
fn hold_rules(allocated: i64, per_user_limit: u32, max_per_purchase: u32) -> SaleRules {
    SaleRules { hold_seconds: 10, ..rules(allocated, per_user_limit, max_per_purchase) }
}

fn entry(buyer: &str, quantity: u32) -> WaitlistEntry {
    WaitlistEntry {
        order_id: OrderId::generate(),
        buyer_id: user(buyer),
        buyer_name: format!("Name of {buyer}").into(),
        quantity,
        joined_at: UnixMillis(T0 + 5),
    }
}

async fn join(hot: &dyn HotStore, sale: &SaleRecord, buyer: &str, quantity: u32) -> Result<WaitlistPlace, HotError> {
    hot.join_waitlist(&JoinRequest { sale_id: sale.id.clone(), entry: entry(buyer, quantity), now: UnixMillis(T0 + 5) })
        .await
}

/// The hold `order` ended as `status` at `now`, as the record says.
fn ended(order: &OrderRecord, status: OrderStatus, now: i64) -> OrderRecord {
    OrderRecord { status, settled_at: Some(UnixMillis(now)), ..order.clone() }
}

async fn holds_are_sold_held_and_ranked_once_paid(backend: Backend) {
    let hot = backend.fresh().await;
    let sale = active_sale(&*hot, hold_rules(3, 0, 2)).await;
    let order = buy(&*hot, &sale, "ann", "k-1", 2, T0 + 10).await;
    assert_eq!((order.status, order.expires_at), (OrderStatus::Held, Some(UnixMillis(T0 + 10 + 10_000))));
    let v = view(&*hot, &sale).await;
    assert_eq!((v.sold, v.held, v.remaining), (2, 2, 1));
    assert!(v.leaderboard.is_empty(), "a held order does not rank");
    // A replay answers the hold as it was made.
    match hot.reserve(&request(&sale, "ann", "k-1", 2, T0 + 20)).await.unwrap() {
        Reservation::Existing { order: first, settled: true } => {
            assert_eq!((first.id, first.status), (order.id.clone(), OrderStatus::Held))
        }
        other => panic!("expected the settled hold, got {other:?}"),
    }

    let paid = hot.end_hold(&ended(&order, OrderStatus::Confirmed, T0 + 30), UnixMillis(T0 + 30)).await.unwrap();
    assert!(!paid.sold_out, "one unit is still on sale");
    let v = view(&*hot, &sale).await;
    assert_eq!((v.sold, v.held, v.remaining), (2, 0, 1));
    assert_eq!(
        v.leaderboard.iter().map(|e| (e.display_name.to_string(), e.units)).collect::<Vec<_>>(),
        [("Name of ann".to_owned(), 2)]
    );
    // Settling again changes nothing.
    hot.end_hold(&ended(&order, OrderStatus::Confirmed, T0 + 30), UnixMillis(T0 + 31)).await.unwrap();
    assert_eq!(view(&*hot, &sale).await.leaderboard[0].units, 2);

    // The last unit held then paid: every unit confirmed, sold out.
    let last = buy(&*hot, &sale, "bob", "k-2", 1, T0 + 40).await;
    assert!(!hot.confirm(&last).await.unwrap().sold_out, "held, not confirmed");
    assert!(hot.end_hold(&ended(&last, OrderStatus::Confirmed, T0 + 50), UnixMillis(T0 + 50)).await.unwrap().sold_out);
}

async fn the_line_opens_only_when_nothing_is_left_and_something_may_come_back(backend: Backend) {
    let hot = backend.fresh().await;
    let no_holds = active_sale(&*hot, rules(1, 0, 1)).await;
    assert!(matches!(join(&*hot, &no_holds, "zed", 1).await, Err(HotError::Refused(PurchaseRefusal::NoWaitlist))));

    let sale = active_sale(&*hot, hold_rules(2, 2, 2)).await;
    assert!(matches!(
        join(&*hot, &sale, "zed", 1).await,
        Err(HotError::Refused(PurchaseRefusal::UnitsOnSale { remaining: 2 }))
    ));
    let held = buy(&*hot, &sale, "ann", "k-1", 2, T0 + 1).await;
    assert!(matches!(join(&*hot, &sale, "zed", 3).await, Err(HotError::Refused(PurchaseRefusal::InvalidQuantity(_)))));
    assert!(matches!(
        join(&*hot, &sale, "ann", 1).await,
        Err(HotError::Refused(PurchaseRefusal::UserLimitReached { limit: 2, bought: 2 }))
    ));
    let first = join(&*hot, &sale, "zed", 1).await.unwrap();
    assert_eq!((first.position, first.quantity, first.length), (1, 1, 1));
    let second = join(&*hot, &sale, "yan", 2).await.unwrap();
    assert_eq!((second.position, second.length), (2, 2));
    // Joining again keeps the place (and its quantity).
    assert_eq!(join(&*hot, &sale, "zed", 2).await.unwrap(), WaitlistPlace { position: 1, quantity: 1, length: 2 });
    assert_eq!(hot.waitlist_place(&sale.id, &user("yan")).await.unwrap().map(|p| p.position), Some(2));
    assert_eq!(view(&*hot, &sale).await.waitlist, 2);

    // Every unit paid: nothing can come back, the line is closed for newcomers.
    hot.end_hold(&ended(&held, OrderStatus::Confirmed, T0 + 9), UnixMillis(T0 + 9)).await.unwrap();
    assert!(matches!(join(&*hot, &sale, "xia", 1).await, Err(HotError::Refused(PurchaseRefusal::SoldOut))));

    // An ended sale's line closes.
    let mut done = sale.clone();
    done.status = SaleStatus::Ended;
    done.end_reason = Some(EndReason::TimeUp);
    hot.set_status(&done).await.unwrap();
    assert_eq!(view(&*hot, &sale).await.waitlist, 0);
    assert_eq!(hot.waitlist_place(&sale.id, &user("zed")).await.unwrap(), None);
}

async fn given_back_units_serve_the_line_in_order_then_go_on_sale(backend: Backend) {
    let hot = backend.fresh().await;
    let sale = active_sale(&*hot, hold_rules(3, 0, 2)).await;
    let a = buy(&*hot, &sale, "ann", "k-a", 1, T0 + 1).await;
    let b = buy(&*hot, &sale, "bob", "k-b", 2, T0 + 2).await;
    join(&*hot, &sale, "zed", 2).await.unwrap();
    join(&*hot, &sale, "yan", 1).await.unwrap();

    // One unit back: the head wants two, so it waits for the head (not for sale, not for yan).
    let first = hot.end_hold(&ended(&a, OrderStatus::Expired, T0 + 100), UnixMillis(T0 + 100)).await.unwrap();
    assert!(first.handed.served.is_empty());
    assert!(matches!(
        hot.reserve(&request(&sale, "xia", "k-x", 1, T0 + 101)).await,
        Err(HotError::Refused(PurchaseRefusal::SoldOut))
    ));
    assert_eq!(view(&*hot, &sale).await.remaining, 0);

    // Two more back: zed gets a hold of two (one spare + one), yan one, the line is empty.
    let second = hot.end_hold(&ended(&b, OrderStatus::Cancelled, T0 + 200), UnixMillis(T0 + 200)).await.unwrap();
    let served: Vec<_> = second.handed.served.iter().map(|o| (o.buyer_id.to_string(), o.quantity)).collect();
    assert_eq!(served, [("zed".to_owned(), 2), ("yan".to_owned(), 1)]);
    for hold in &second.handed.served {
        assert_eq!((hold.status, hold.expires_at), (OrderStatus::Held, Some(UnixMillis(T0 + 200 + 10_000))));
        assert_eq!(hold.idempotency_key.as_str(), format!("waitlist-{}", hold.id));
    }
    let v = view(&*hot, &sale).await;
    assert_eq!((v.waitlist, v.remaining, v.sold, v.held), (0, 0, 0, 0), "the line's holds are in flight");
    for hold in &second.handed.served {
        hot.confirm(hold).await.unwrap();
    }
    let v = view(&*hot, &sale).await;
    assert_eq!((v.sold, v.held, v.remaining), (3, 3, 0));

    // The line is empty: a unit given back now goes on sale.
    let zed_hold = &second.handed.served[0];
    let third =
        hot.end_hold(&ended(zed_hold, OrderStatus::Expired, T0 + 20_000), UnixMillis(T0 + 20_000)).await.unwrap();
    assert!(third.handed.served.is_empty());
    assert_eq!(view(&*hot, &sale).await.remaining, 2);
    reserve_new(&*hot, &request(&sale, "xia", "k-x2", 2, T0 + 20_001)).await;
}

async fn a_served_hold_that_fails_to_commit_serves_the_next_in_line(backend: Backend) {
    let hot = backend.fresh().await;
    let sale = active_sale(&*hot, hold_rules(1, 0, 1)).await;
    let a = buy(&*hot, &sale, "ann", "k-a", 1, T0 + 1).await;
    join(&*hot, &sale, "zed", 1).await.unwrap();
    join(&*hot, &sale, "yan", 1).await.unwrap();
    let handed = hot.end_hold(&ended(&a, OrderStatus::Expired, T0 + 100), UnixMillis(T0 + 100)).await.unwrap().handed;
    assert_eq!(handed.served.len(), 1);
    // zed's hold never becomes durable: its unit goes to yan, now the head.
    let next = hot.release(&handed.served[0], UnixMillis(T0 + 150)).await.unwrap();
    assert_eq!(next.served.iter().map(|o| o.buyer_id.to_string()).collect::<Vec<_>>(), ["yan"]);
    // yan was served: no longer in line, leaving changes nothing.
    assert_eq!(hot.leave_waitlist(&sale.id, &user("yan"), UnixMillis(T0 + 160)).await.unwrap(), None);
}

const T0: i64 = 1_700_000_000_000;
const END: i64 = T0 + 60_000;

fn price() -> Money {
    Money::parse(250, "EUR").unwrap()
}

fn rules(allocated: i64, per_user_limit: u32, max_per_purchase: u32) -> SaleRules {
    SaleRules {
        queue: None,
        allocated,
        per_user_limit,
        max_per_purchase,
        start: UnixMillis(T0),
        end: UnixMillis(END),
        unit_price: price(),
        hold_seconds: 0,
    }
}

fn sale(rules: SaleRules, status: SaleStatus) -> SaleRecord {
    SaleRecord {
        id: SaleId::generate(),
        product_id: ProductId::parse("product-1").unwrap(),
        rules,
        sold: 0,
        held: 0,
        status,
        end_reason: None,
        ended_at: None,
        created_at: UnixMillis(T0 - 1000),
        generation: 1,
    }
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn request(sale: &SaleRecord, buyer: &str, key: &str, quantity: u32, now: i64) -> ReserveRequest {
    ReserveRequest {
        sale_id: sale.id.clone(),
        buyer_id: user(buyer),
        buyer_name: format!("Name of {buyer}").into(),
        quantity,
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        new_order_id: OrderId::generate(),
        now: UnixMillis(now),
    }
}

/// A loaded, active sale.
async fn active_sale(hot: &dyn HotStore, rules: SaleRules) -> SaleRecord {
    let sale = sale(rules, SaleStatus::Active);
    hot.load_sale(&sale, &[]).await.unwrap();
    sale
}

async fn reserve_new(hot: &dyn HotStore, request: &ReserveRequest) -> OrderRecord {
    match hot.reserve(request).await {
        Ok(Reservation::New(order)) => order,
        other => panic!("expected a new reservation, got {other:?}"),
    }
}

/// Reserves and confirms.
async fn buy(hot: &dyn HotStore, sale: &SaleRecord, buyer: &str, key: &str, quantity: u32, now: i64) -> OrderRecord {
    let order = reserve_new(hot, &request(sale, buyer, key, quantity, now)).await;
    hot.confirm(&order).await.unwrap();
    order
}

async fn refusal(hot: &dyn HotStore, request: &ReserveRequest) -> PurchaseRefusal {
    match hot.reserve(request).await {
        Err(HotError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn view(hot: &dyn HotStore, sale: &SaleRecord) -> SaleView {
    hot.view(&sale.id).await.unwrap().expect("sale loaded")
}

fn quantity_violation(quantity: u32, max: u32) -> PurchaseRefusal {
    PurchaseRefusal::InvalidQuantity(Quantity::parse(quantity, max).unwrap_err())
}

async fn refuses_outside_the_sale_window(backend: Backend) {
    let hot = backend.fresh().await;
    let hot = hot.as_ref();

    let unknown = sale(rules(10, 0, 5), SaleStatus::Active);
    assert_eq!(refusal(hot, &request(&unknown, "a", "k", 1, T0)).await, PurchaseRefusal::SaleNotFound);
    assert!(!hot.has_sale(&unknown.id).await.unwrap());
    assert!(hot.view(&unknown.id).await.unwrap().is_none());

    let scheduled = sale(rules(10, 0, 5), SaleStatus::Scheduled);
    hot.load_sale(&scheduled, &[]).await.unwrap();
    assert!(hot.has_sale(&scheduled.id).await.unwrap());
    let not_started = PurchaseRefusal::NotStarted { start: UnixMillis(T0) };
    // SCHEDULED refuses even inside the window: the scheduler has not started it yet.
    assert_eq!(refusal(hot, &request(&scheduled, "a", "k", 1, T0 + 10)).await, not_started);

    let active = active_sale(hot, rules(10, 0, 5)).await;
    assert_eq!(refusal(hot, &request(&active, "a", "k", 1, T0 - 1)).await, not_started);
    assert!(matches!(hot.reserve(&request(&active, "a", "k1", 1, T0)).await, Ok(Reservation::New(_))));
    assert!(matches!(hot.reserve(&request(&active, "a", "k2", 1, END - 1)).await, Ok(Reservation::New(_))));
    let time_up = PurchaseRefusal::Ended { reason: EndReason::TimeUp };
    assert_eq!(refusal(hot, &request(&active, "a", "k3", 1, END)).await, time_up);

    let mut ended = active_sale(hot, rules(10, 0, 5)).await;
    ended.status = SaleStatus::Ended;
    ended.end_reason = Some(EndReason::SoldOut);
    ended.ended_at = Some(UnixMillis(T0 + 5));
    hot.set_status(&ended).await.unwrap();
    // A sale that ended sold out says so.
    assert_eq!(refusal(hot, &request(&ended, "a", "k", 1, T0 + 10)).await, PurchaseRefusal::SoldOut);
    ended.end_reason = Some(EndReason::ByAdmin);
    hot.set_status(&ended).await.unwrap();
    let by_admin = PurchaseRefusal::Ended { reason: EndReason::ByAdmin };
    assert_eq!(refusal(hot, &request(&ended, "a", "k", 1, T0 + 10)).await, by_admin);

    // An ended sale without a recorded reason reads as time up.
    let mut no_reason = sale(rules(10, 0, 5), SaleStatus::Ended);
    no_reason.ended_at = Some(UnixMillis(T0));
    hot.load_sale(&no_reason, &[]).await.unwrap();
    assert_eq!(refusal(hot, &request(&no_reason, "a", "k", 1, T0 + 10)).await, time_up);
}

async fn refuses_in_rule_order_quantity_limit_stock(backend: Backend) {
    let hot = backend.fresh().await;
    let hot = hot.as_ref();
    let now = T0 + 100;

    // Quantity: 1..=max per purchase.
    let sale = active_sale(hot, rules(5, 3, 2)).await;
    assert_eq!(refusal(hot, &request(&sale, "a", "k", 0, now)).await, quantity_violation(0, 2));
    assert_eq!(refusal(hot, &request(&sale, "a", "k", 3, now)).await, quantity_violation(3, 2));

    // The per-user limit counts units held and units in flight.
    buy(hot, &sale, "a", "k1", 2, now).await;
    let over = PurchaseRefusal::UserLimitReached { limit: 3, bought: 2 };
    assert_eq!(refusal(hot, &request(&sale, "a", "k2", 2, now)).await, over);
    reserve_new(hot, &request(&sale, "a", "k3", 1, now)).await; // in flight
    let full = PurchaseRefusal::UserLimitReached { limit: 3, bought: 3 };
    assert_eq!(refusal(hot, &request(&sale, "a", "k4", 1, now)).await, full);

    // Stock: no partial fills; 2 of 5 left.
    assert_eq!(view(hot, &sale).await.remaining, 2);
    buy(hot, &sale, "b", "k1", 1, now).await;
    let short = PurchaseRefusal::InsufficientStock { remaining: 1 };
    assert_eq!(refusal(hot, &request(&sale, "c", "k1", 2, now)).await, short);
    buy(hot, &sale, "c", "k1", 1, now).await;
    assert_eq!(refusal(hot, &request(&sale, "d", "k1", 1, now)).await, PurchaseRefusal::SoldOut);

    // Order of the rules on a sold-out sale: quantity, then the limit, then stock.
    assert_eq!(refusal(hot, &request(&sale, "d", "k1", 0, now)).await, quantity_violation(0, 2));
    assert_eq!(refusal(hot, &request(&sale, "a", "k9", 1, now)).await, full);
    // ... and the window before all of them.
    let time_up = PurchaseRefusal::Ended { reason: EndReason::TimeUp };
    assert_eq!(refusal(hot, &request(&sale, "a", "k9", 0, END)).await, time_up);

    // Zero means unlimited.
    let unlimited = active_sale(hot, rules(100, 0, 10)).await;
    for i in 0..5 {
        buy(hot, &unlimited, "a", &format!("k{i}"), 10, now).await;
    }
    assert_eq!(view(hot, &unlimited).await.sold, 50);
}

async fn refusals_change_nothing(backend: Backend) {
    let hot = backend.fresh().await;
    let hot = hot.as_ref();
    let now = T0 + 100;
    let sale = active_sale(hot, rules(3, 2, 2)).await;
    buy(hot, &sale, "a", "k1", 2, now).await;
    reserve_new(hot, &request(&sale, "b", "k1", 1, now)).await;
    let before = view(hot, &sale).await;
    for request in [
        request(&sale, "c", "k1", 0, now), // quantity
        request(&sale, "a", "k2", 1, now), // limit
        request(&sale, "c", "k1", 1, now), // sold out (one in flight)
        request(&sale, "c", "k1", 2, END), // time up
        request(&sale, "a", "k1", 1, now), // key reused
    ] {
        refusal(hot, &request).await;
        assert_eq!(view(hot, &sale).await, before, "a refusal changed the sale: {request:?}");
    }
}

async fn replays_settled_and_in_flight_purchases(backend: Backend) {
    let hot = backend.fresh().await;
    let hot = hot.as_ref();
    let sale = active_sale(hot, rules(10, 0, 5)).await;

    let first = request(&sale, "a", "key-1", 2, T0 + 100);
    let order = reserve_new(hot, &first).await;
    assert_eq!(order.id, first.new_order_id);
    assert_eq!(order.sale_id, sale.id);
    assert_eq!((order.quantity, order.unit_price, order.created_at), (2, price(), UnixMillis(T0 + 100)));
    assert_eq!(&*order.buyer_name, "Name of a");
    assert_eq!(order.idempotency_key.as_str(), "key-1");

    // A retry gets the first order (not a new one), in flight...
    let retry = request(&sale, "a", "key-1", 2, T0 + 200);
    match hot.reserve(&retry).await.unwrap() {
        Reservation::Existing { order: existing, settled } => {
            assert_eq!(existing, order);
            assert!(!settled);
        }
        other => panic!("expected the first order, got {other:?}"),
    }
    assert_eq!(view(hot, &sale).await.remaining, 8, "a replay reserved again");

    // ... then settled.
    hot.confirm(&order).await.unwrap();
    assert!(
        matches!(hot.reserve(&retry).await.unwrap(), Reservation::Existing { order: ref o, settled: true } if *o == order)
    );

    // The same key with another quantity is refused; another buyer's same key is theirs.
    let reused = request(&sale, "a", "key-1", 3, T0 + 200);
    assert_eq!(refusal(hot, &reused).await, PurchaseRefusal::IdempotencyKeyReused);
    reserve_new(hot, &request(&sale, "b", "key-1", 3, T0 + 200)).await;

    // A retry is answered first, even after the sale ended.
    let mut ended = sale.clone();
    ended.status = SaleStatus::Ended;
    ended.end_reason = Some(EndReason::ByAdmin);
    ended.ended_at = Some(UnixMillis(T0 + 300));
    hot.set_status(&ended).await.unwrap();
    let late = request(&sale, "a", "key-1", 2, END + 1);
    assert!(
        matches!(hot.reserve(&late).await.unwrap(), Reservation::Existing { order: ref o, settled: true } if *o == order)
    );
    assert_eq!(view(hot, &sale).await.sold, 2);
}

async fn wait_settled_follows_confirm_and_release(backend: Backend) {
    let hot = backend.fresh().await;
    let sale = active_sale(hot.as_ref(), rules(10, 0, 5)).await;
    let limit = Duration::from_secs(5);

    let confirmed = reserve_new(hot.as_ref(), &request(&sale, "a", "k1", 1, T0)).await;
    let waiter = tokio::spawn({
        let (hot, order) = (hot.clone(), confirmed.clone());
        async move { hot.wait_settled(&order).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await; // let the waiter find it in flight
    assert!(!waiter.is_finished(), "wait_settled returned while the order was in flight");
    hot.confirm(&confirmed).await.unwrap();
    let settled = tokio::time::timeout(limit, waiter).await.expect("waiter woke").unwrap().unwrap();
    assert_eq!(settled, Settled::Confirmed);
    assert_eq!(hot.wait_settled(&confirmed).await.unwrap(), Settled::Confirmed);

    let released = reserve_new(hot.as_ref(), &request(&sale, "a", "k2", 1, T0)).await;
    let waiter = tokio::spawn({
        let (hot, order) = (hot.clone(), released.clone());
        async move { hot.wait_settled(&order).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    hot.release(&released, UnixMillis(0)).await.unwrap();
    let settled = tokio::time::timeout(limit, waiter).await.expect("waiter woke").unwrap().unwrap();
    assert_eq!(settled, Settled::Released);

    // The key was reused by a new order after the release: the old one still reads released.
    let again = reserve_new(hot.as_ref(), &request(&sale, "a", "k2", 1, T0)).await;
    assert_ne!(again.id, released.id);
    assert_eq!(hot.wait_settled(&released).await.unwrap(), Settled::Released);
}

async fn release_gives_units_and_key_back(backend: Backend) {
    let hot = backend.fresh().await;
    let hot = hot.as_ref();
    let sale = active_sale(hot, rules(2, 2, 2)).await;

    let order = reserve_new(hot, &request(&sale, "a", "k1", 2, T0)).await;
    assert_eq!(view(hot, &sale).await.remaining, 0);
    assert_eq!(refusal(hot, &request(&sale, "b", "k1", 1, T0)).await, PurchaseRefusal::SoldOut);

    hot.release(&order, UnixMillis(0)).await.unwrap();
    let after = view(hot, &sale).await;
    assert_eq!((after.remaining, after.sold, after.total_buyers), (2, 0, 0));
    assert!(after.leaderboard.is_empty());
    // Releasing again, or an order never reserved, changes nothing.
    hot.release(&order, UnixMillis(0)).await.unwrap();
    assert_eq!(view(hot, &sale).await, after);

    // The key is free again (a new order), and the buyer's limit too.
    let again = reserve_new(hot, &request(&sale, "a", "k1", 2, T0 + 1)).await;
    assert_ne!(again.id, order.id);
    hot.confirm(&again).await.unwrap();
    // A release after the confirm changes nothing.
    let confirmed = view(hot, &sale).await;
    hot.release(&again, UnixMillis(0)).await.unwrap();
    assert_eq!(view(hot, &sale).await, confirmed);
    assert_eq!((confirmed.sold, confirmed.remaining), (2, 0));
}

async fn leaderboard_ranks_units_then_first_purchase(backend: Backend) {
    let hot = backend.fresh().await;
    let hot = hot.as_ref();
    let sale = active_sale(hot, rules(100, 0, 10)).await;
    buy(hot, &sale, "b", "k1", 2, T0 + 20).await;
    buy(hot, &sale, "a", "k1", 2, T0 + 10).await;
    buy(hot, &sale, "c", "k1", 1, T0 + 5).await;
    let ranked = |view: &SaleView| {
        view.leaderboard
            .iter()
            .map(|e| (e.rank, e.display_name.to_string(), e.units, e.first_purchase_at.0 - T0))
            .collect::<Vec<_>>()
    };
    let names = |s: &str| format!("Name of {s}");
    assert_eq!(
        ranked(&view(hot, &sale).await),
        [(1, names("a"), 2, 10), (2, names("b"), 2, 20), (3, names("c"), 1, 5)]
    );
    // More units win; the first purchase time stays the first.
    buy(hot, &sale, "c", "k2", 2, T0 + 30).await;
    let now = view(hot, &sale).await;
    assert_eq!(ranked(&now), [(1, names("c"), 3, 5), (2, names("a"), 2, 10), (3, names("b"), 2, 20)]);
    assert_eq!((now.total_buyers, now.sold), (3, 7));

    // Reserved but not confirmed is not on the board.
    reserve_new(hot, &request(&sale, "d", "k1", 9, T0 + 40)).await;
    assert_eq!(view(hot, &sale).await.total_buyers, 3);

    // The board shows at most 100 buyers, however many bought; same ms ties by buyer id.
    let big = active_sale(hot, rules(1000, 0, 10)).await;
    for i in 0..105 {
        buy(hot, &big, &format!("u{i:03}"), "k", 1, T0 + 50).await;
    }
    let view = view(hot, &big).await;
    assert_eq!((view.leaderboard.len(), view.total_buyers), (100, 105));
    assert_eq!(view.leaderboard[0].display_name.as_ref(), "Name of u000");
    assert_eq!(view.leaderboard[99].display_name.as_ref(), "Name of u099");
}

async fn load_sale_rebuilds_from_durable_orders_and_never_overwrites(backend: Backend) {
    let live = backend.fresh().await;
    let mut record = active_sale(live.as_ref(), rules(20, 5, 3)).await;
    let mut orders = Vec::new();
    for (buyer, key, quantity, at) in [("a", "k1", 2, 10), ("b", "k1", 3, 20), ("a", "k2", 3, 30), ("c", "k1", 1, 40)] {
        orders.push(buy(live.as_ref(), &record, buyer, key, quantity, T0 + at).await);
    }
    let before = view(live.as_ref(), &record).await;
    record.sold = orders.iter().map(|o| i64::from(o.quantity)).sum();

    // A live sale is never replaced, even by a record that disagrees.
    let in_flight = reserve_new(live.as_ref(), &request(&record, "d", "k1", 1, T0 + 50)).await;
    let with_reservation = view(live.as_ref(), &record).await;
    live.load_sale(&record, &[]).await.unwrap();
    assert_eq!(view(live.as_ref(), &record).await, with_reservation);
    live.confirm(&in_flight).await.unwrap();
    assert!(view(live.as_ref(), &record).await.version > with_reservation.version);

    // A store that lost the sale rebuilds the same state from the durable orders, in the next
    // generation: its versions start above every version the lost state published.
    let rebuilt = backend.fresh().await;
    let rebuilt = rebuilt.as_ref();
    assert!(!rebuilt.has_sale(&record.id).await.unwrap());
    let newest_lost = view(live.as_ref(), &record).await.version;
    record.generation += 1;
    rebuilt.load_sale(&record, &orders).await.unwrap();
    assert!(rebuilt.has_sale(&record.id).await.unwrap());
    let after = view(rebuilt, &record).await;
    assert_eq!(SaleView { version: before.version, ..after.clone() }, before);
    assert!(after.version > newest_lost, "{} after a rebuild, {newest_lost} before", after.version);
    assert_eq!(after.created_at, record.created_at);

    // Idempotency keys, per-user counts and stock come back too.
    let replay = request(&record, "a", "k2", 3, T0 + 60);
    match rebuilt.reserve(&replay).await.unwrap() {
        Reservation::Existing { order, settled } => assert_eq!((order, settled), (orders[2].clone(), true)),
        other => panic!("expected the durable order, got {other:?}"),
    }
    let at_limit = PurchaseRefusal::UserLimitReached { limit: 5, bought: 5 };
    assert_eq!(refusal(rebuilt, &request(&record, "a", "k3", 1, T0 + 60)).await, at_limit);
    assert_eq!(after.remaining, 11);
}

async fn concurrent_reserves_never_oversell_nor_exceed_the_limit(backend: Backend) {
    const TASKS: usize = 500;
    const BUYERS: usize = 100;
    let hot = backend.fresh().await;
    let sale = active_sale(hot.as_ref(), rules(100, 3, 2)).await;
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let (hot, sale, start) = (hot.clone(), sale.clone(), start.clone());
            tokio::spawn(async move {
                let buyer = format!("buyer{}", i % BUYERS);
                let request = request(&sale, &buyer, &format!("key{i}"), 1, T0 + 1);
                start.wait().await;
                match hot.reserve(&request).await {
                    Ok(Reservation::New(order)) => {
                        // Every fifth commit "fails": its units go back to the others.
                        if i % 5 == 0 {
                            hot.release(&order, UnixMillis(0)).await.unwrap();
                            None
                        } else {
                            hot.confirm(&order).await.unwrap();
                            Some(buyer)
                        }
                    }
                    Err(HotError::Refused(PurchaseRefusal::SoldOut | PurchaseRefusal::UserLimitReached { .. })) => None,
                    other => panic!("unexpected answer {other:?}"),
                }
            })
        })
        .collect();
    let mut per_buyer: HashMap<String, u32> = HashMap::new();
    for task in tasks {
        if let Some(buyer) = task.await.unwrap() {
            *per_buyer.entry(buyer).or_default() += 1;
        }
    }
    let sold: u32 = per_buyer.values().sum();
    let view = view(hot.as_ref(), &sale).await;
    assert!(sold <= 100, "oversold: {sold}");
    assert_eq!(view.sold, i64::from(sold));
    assert_eq!(view.remaining, 100 - view.sold);
    assert!(per_buyer.values().all(|&units| units <= 3), "a buyer passed the limit: {per_buyer:?}");
    let board_units: i64 = view.leaderboard.iter().map(|e| e.units).sum();
    assert_eq!(board_units, view.sold);
    assert_eq!(view.total_buyers as usize, per_buyer.len());
    // Released units went back: buyers whose every attempt was released can still buy them.
    let mut extra = 0;
    for buyer in 0..BUYERS {
        let buyer = format!("buyer{buyer}");
        let mut held = per_buyer.get(&buyer).copied().unwrap_or(0);
        while held < 3 && view.sold + extra < 100 {
            reserve_new(hot.as_ref(), &request(&sale, &buyer, &format!("late{held}"), 1, T0 + 2)).await;
            held += 1;
            extra += 1;
        }
    }
    assert_eq!(view.sold + extra, 100, "units were lost");
    assert_eq!(refusal(hot.as_ref(), &request(&sale, "someone", "k", 1, T0 + 3)).await, PurchaseRefusal::SoldOut);
}

async fn status_changes_start_and_end_sales(backend: Backend) {
    let hot = backend.fresh().await;
    let hot = hot.as_ref();
    let mut scheduled = sale(rules(10, 0, 5), SaleStatus::Scheduled);
    let mut active = sale(rules(20, 0, 5), SaleStatus::Active);
    let ended = SaleRecord {
        end_reason: Some(EndReason::TimeUp),
        ended_at: Some(UnixMillis(END)),
        ..sale(rules(30, 0, 5), SaleStatus::Ended)
    };
    for sale in [&scheduled, &active, &ended] {
        hot.load_sale(sale, &[]).await.unwrap();
    }
    for sale in [&scheduled, &active, &ended] {
        let loaded = view(hot, sale).await;
        assert_eq!((loaded.status, loaded.rules), (sale.status, sale.rules));
    }

    // Starting early moves the start.
    let version = view(hot, &scheduled).await.version;
    scheduled.status = SaleStatus::Active;
    scheduled.rules.start = UnixMillis(T0 - 5_000);
    hot.set_status(&scheduled).await.unwrap();
    let started = view(hot, &scheduled).await;
    assert_eq!((started.status, started.rules.start), (SaleStatus::Active, UnixMillis(T0 - 5_000)));
    assert!(started.version > version);
    reserve_new(hot, &request(&scheduled, "a", "k", 1, T0 - 1_000)).await;

    // Ending stops the sale; its view shows the unsold units given back.
    buy(hot, &active, "a", "k1", 3, T0).await;
    reserve_new(hot, &request(&active, "b", "k1", 2, T0)).await; // in flight, never confirmed
    active.status = SaleStatus::Ended;
    active.end_reason = Some(EndReason::ByAdmin);
    active.ended_at = Some(UnixMillis(T0 + 7));
    hot.set_status(&active).await.unwrap();
    assert_eq!(
        refusal(hot, &request(&active, "c", "k1", 1, T0 + 8)).await,
        PurchaseRefusal::Ended { reason: EndReason::ByAdmin }
    );
    let gone = view(hot, &active).await;
    assert_eq!(
        (gone.status, gone.end_reason, gone.ended_at, gone.sold, gone.remaining),
        (SaleStatus::Ended, Some(EndReason::ByAdmin), Some(UnixMillis(T0 + 7)), 3, 17)
    );
    let ended_view = view(hot, &ended).await;
    assert_eq!(
        (ended_view.status, ended_view.end_reason, ended_view.remaining),
        (SaleStatus::Ended, Some(EndReason::TimeUp), 30)
    );
    assert_eq!(ended_view.product_id, ended.product_id);
    assert_eq!(ended_view.rules, ended.rules);

    let unknown = sale(rules(1, 0, 1), SaleStatus::Active);
    assert!(matches!(hot.set_status(&unknown).await, Err(HotError::Refused(PurchaseRefusal::SaleNotFound))));
}

// ---------------------------------------------------------------------------------------------
// Redis only

#[tokio::test]
async fn redis_reloads_its_scripts_after_script_flush() {
    let hot = redis_hot(&fresh_prefix()).await;
    let sale = active_sale(&hot, rules(10, 0, 5)).await;
    buy(&hot, &sale, "a", "k1", 1, T0).await;

    let mut raw = raw_connection().await;
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
    // As `Scripts::new` builds it for one instance.
    let text = format!("local PUBLISH = 'PUBLISH'\n{}", include_str!("../../src/store/redis/reserve.lua"));
    let sha = ::redis::Script::new(&text).get_hash().to_owned();
    let cached: Vec<bool> = ::redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query_async(&mut raw).await.unwrap();
    assert_eq!(cached, [false]);

    buy(&hot, &sale, "b", "k1", 2, T0).await;
    assert_eq!(view(&hot, &sale).await.sold, 3);
    let cached: Vec<bool> = ::redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query_async(&mut raw).await.unwrap();
    assert_eq!(cached, [true]);
}

#[tokio::test]
async fn redis_keys_of_a_sale_share_one_hash_tag() {
    let prefix = fresh_prefix();
    let hot = redis_hot(&prefix).await;
    let sale = active_sale(&hot, rules(10, 0, 5)).await;
    buy(&hot, &sale, "a", "k1", 1, T0).await;
    reserve_new(&hot, &request(&sale, "b", "k1", 1, T0)).await;

    let mut raw = raw_connection().await;
    let keys: Vec<String> = ::redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut raw).await.unwrap();
    let tag = format!("{prefix}{{sale:{}}}:", sale.id);
    let others: Vec<_> = keys.iter().filter(|k| !k.starts_with(&tag)).collect();
    assert!(others.is_empty(), "keys outside the sale's slot: {others:?}");
    let per_sale: HashSet<_> = keys.iter().filter_map(|k| k.strip_prefix(&tag)).collect();
    for key in ["meta", "units", "keys", "pending", "board", "firsts", "names"] {
        assert!(per_sale.contains(key), "no {key} key in {keys:?}");
    }
}

/// The hot state names its layout: a sale without the name (built before it existed, the same
/// layout) reads as usual; a sale of a newer layout is refused, never misread.
#[tokio::test]
async fn redis_reads_its_own_layout_and_refuses_a_newer_one() {
    let prefix = fresh_prefix();
    let hot = redis_hot(&prefix).await;
    let sale = active_sale(&hot, rules(10, 0, 5)).await;
    buy(&hot, &sale, "a", "k1", 1, T0).await;
    let meta = format!("{prefix}{{sale:{}}}:meta", sale.id);
    let mut raw = raw_connection().await;
    let format: String = ::redis::cmd("HGET").arg(&meta).arg("format").query_async(&mut raw).await.unwrap();
    assert_eq!(format, "1");

    ::redis::cmd("HDEL").arg(&meta).arg("format").query_async::<()>(&mut raw).await.unwrap();
    assert_eq!(view(&hot, &sale).await.sold, 1, "a sale built before the layout was named");

    ::redis::cmd("HSET").arg(&meta).arg("format").arg("2").query_async::<()>(&mut raw).await.unwrap();
    assert!(matches!(hot.view(&sale.id).await, Err(HotError::Unavailable(_))), "a newer layout is refused");
}

#[tokio::test]
async fn redis_lists_reservations_never_confirmed() {
    let hot = redis_hot(&fresh_prefix()).await;
    let sale = active_sale(&hot, rules(10, 0, 5)).await;
    let confirmed = buy(&hot, &sale, "a", "k1", 1, T0).await;
    let pending = reserve_new(&hot, &request(&sale, "b", "k1", 2, T0 + 1)).await;
    let released = reserve_new(&hot, &request(&sale, "c", "k1", 3, T0 + 2)).await;
    hot.release(&released, UnixMillis(0)).await.unwrap();
    assert_eq!(hot.pending_orders(&sale.id).await.unwrap(), std::slice::from_ref(&pending));
    // Confirming twice (a retried confirm) counts once.
    hot.confirm(&confirmed).await.unwrap();
    hot.confirm(&pending).await.unwrap();
    assert!(hot.pending_orders(&sale.id).await.unwrap().is_empty());
    assert_eq!(view(&hot, &sale).await.sold, 3);
}

#[tokio::test]
async fn redis_change_listener_reports_changes_of_its_prefix() {
    let prefix = fresh_prefix();
    let hot = redis_hot(&prefix).await;
    let other = redis_hot(&fresh_prefix()).await;
    let sale = active_sale(&hot, rules(10, 0, 5)).await;
    let foreign = active_sale(&other, rules(10, 0, 5)).await;

    let (sink, mut changes) = ears();
    let shutdown = CancellationToken::new();
    let listener = spawn_change_listener(&shared_redis().uri(), &prefix, sink, shutdown.clone());
    // Once subscribed it says so (whoever listens re-reads what it follows).
    let first = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await.expect("subscribed").unwrap();
    assert_eq!(first, Heard::Resubscribed);

    buy(&other, &foreign, "a", "k1", 1, T0).await;
    buy(&hot, &sale, "a", "k1", 1, T0).await;
    let next = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await.expect("a change").unwrap();
    assert_eq!(next, Heard::Changed(sale.id), "a change of another prefix was reported");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), listener).await.expect("listener stops on shutdown").unwrap();
}

#[tokio::test]
async fn redis_unreachable_at_connect_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let error = match connect(&format!("redis://127.0.0.1:{port}/"), "x:").await {
        Ok(_) => panic!("connected to a closed port"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("Redis"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(connect(&shared_redis().uri(), "bad{prefix}:").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_unavailable_then_recovers() {
    let server = RedisServer::start();
    let uri = server.uri();
    let prefix = fresh_prefix();
    let hot = connect(&uri, &prefix).await.unwrap();
    let sale = active_sale(&hot, rules(1000, 0, 5)).await;
    buy(&hot, &sale, "a", "k1", 1, T0).await;

    let (sink, mut changes) = ears();
    let shutdown = CancellationToken::new();
    let _listener = spawn_change_listener(&uri, &prefix, sink, shutdown.clone());
    tokio::time::timeout(Duration::from_secs(10), changes.recv()).await.expect("subscribed");

    let (port, dir) = server.stop();
    for _ in 0..2 {
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), hot.reserve(&request(&sale, "b", "k1", 1, T0))).await;
        assert!(matches!(outcome, Ok(Err(HotError::Unavailable(_)))), "{outcome:?}");
        let outcome = tokio::time::timeout(Duration::from_secs(10), hot.view(&sale.id)).await;
        assert!(matches!(outcome, Ok(Err(HotError::Unavailable(_)))), "{outcome:?}");
    }

    // The same port again, without persistence: the connection manager reconnects; the sale is
    // gone and loads again; the listener resubscribes.
    let _server = RedisServer::start_on(port, dir);
    let deadline = Instant::now() + Duration::from_secs(15);
    let present = loop {
        match hot.has_sale(&sale.id).await {
            Ok(present) => break present,
            Err(HotError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => panic!("no recovery: {error:?}"),
        }
    };
    assert!(!present);
    assert_eq!(refusal(&hot, &request(&sale, "b", "k1", 1, T0)).await, PurchaseRefusal::SaleNotFound);
    hot.load_sale(&sale, &[]).await.unwrap();
    // The listener resubscribes and says so, then reports changes again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline.into(), changes.recv()).await {
            Ok(Some(Heard::Resubscribed)) => break,
            Ok(Some(_)) => {}
            _ => panic!("the change listener did not resubscribe after the restart"),
        }
    }
    for attempt in 0.. {
        buy(&hot, &sale, "b", &format!("again{attempt}"), 1, T0).await;
        match tokio::time::timeout(Duration::from_millis(200), changes.recv()).await {
            Ok(Some(heard)) => {
                assert_eq!(heard, Heard::Changed(sale.id.clone()));
                break;
            }
            _ if Instant::now() < deadline => continue,
            _ => panic!("no change reported after the restart"),
        }
    }
    shutdown.cancel();
}

// ---------------------------------------------------------------------------------------------
// Redis Cluster only

/// Sales land on every shard (their hash tags spread over the slots), each sale's scripts run
/// on its own master, and the change listener follows exactly the sales it is given over
/// sharded pub/sub: a followed sale's change is heard, another's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_spreads_sales_over_shards_and_follows_changes_sale_by_sale() {
    let cluster = tokio::task::block_in_place(shared_cluster);
    let prefix = fresh_prefix();
    let hot = cluster_hot(&prefix).await;
    let mut sales = Vec::new();
    let mut shards = HashSet::new();
    // 24 sales miss a shard with probability 3 × (2/3)^24 < 2·10⁻⁴.
    for _ in 0..24 {
        let sale = active_sale(&hot, rules(10, 0, 5)).await;
        buy(&hot, &sale, "a", "k1", 1, T0).await;
        let meta = format!("{prefix}{{sale:{}}}:meta", sale.id);
        let master = tokio::task::block_in_place(|| cluster.master_of(&meta).port);
        shards.insert(master);
        sales.push(sale);
    }
    assert_eq!(shards.len(), 3, "24 sales on {} shards of 3", shards.len());
    for sale in &sales {
        assert_eq!(view(&hot, sale).await.sold, 1);
    }

    let (sink, mut changes) = ears();
    let (followed, other) = (&sales[0], &sales[1]);
    sink.follow(&followed.id);
    let shutdown = CancellationToken::new();
    let listener = tokio::spawn(change_listener(&cluster.uri(), &prefix, Topology::Cluster, sink, shutdown.clone()));
    // The subscription's confirmation: whoever follows the sale re-reads it.
    hear(&mut changes, Heard::Changed(followed.id.clone()), &other.id).await;
    buy(&hot, other, "b", "k1", 1, T0).await;
    buy(&hot, followed, "b", "k1", 1, T0).await;
    hear(&mut changes, Heard::Changed(followed.id.clone()), &other.id).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), listener).await.expect("listener stops on shutdown").unwrap();
}

/// Waits for `want`, failing on a change of `unfollowed`.
async fn hear(changes: &mut tokio::sync::mpsc::UnboundedReceiver<Heard>, want: Heard, unfollowed: &SaleId) {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await;
        match next.expect("heard in time").expect("listener alive") {
            heard if heard == want => return,
            Heard::Changed(sale) => assert_ne!(&sale, unfollowed, "a sale nobody follows was heard"),
            Heard::Resubscribed => {}
        }
    }
}
