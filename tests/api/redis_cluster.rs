//! flashsale on a real Redis Cluster of three masters and three replicas, started by the test:
//! a master killed with SIGKILL in the middle of a rush, its replica promoted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashsale_client::pb;
use tonic::Code;

use crate::helpers::{authed, poll_until, reason, spawn_app_with, AppOptions, TestApp};
use crate::redis_support::RedisCluster;

/// What one buyer of the rush was told in the end.
enum Told {
    /// An acknowledged order.
    Bought(Box<pb::Order>),
    /// Sold out, or the sale ended.
    Refused(String),
}

/// A buyer as a real client behaves: one idempotency key, tried again on an error that says
/// nothing about the order (unavailable, unknown, deadline) until a final answer.
async fn buy_until_answered(app: &TestApp, token: &str, sale: &str, key: &str, bought: &AtomicUsize) -> Told {
    for _ in 0..400 {
        match app.buy(token, sale, 1, key).await {
            Ok(response) => {
                bought.fetch_add(1, Ordering::Relaxed);
                return Told::Bought(Box::new(response.order.expect("an order")));
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Internal
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => return Told::Refused(reason(&status)),
        }
    }
    panic!("buyer {key} never got an answer");
}

/// 400 buyers rush 150 units; when 40 are sold, the master of the sale's slot is killed with
/// SIGKILL and its replica takes over (whatever it had not received is lost). The record
/// refuses oversell and the node heals the hot state from it: exactly the allocation is sold,
/// every acknowledged order is in the record, nobody bought twice, and the sale sells out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_rush_loses_no_order_and_sells_exactly_the_allocation() {
    let cluster = Arc::new(tokio::task::block_in_place(RedisCluster::start));
    // A MongoDB test server of its own: the rush would slow every other test's commits.
    let mongo = tokio::task::block_in_place(|| crate::mongo_support::MongoTestServer::start(None));
    let mut options = AppOptions::default();
    options.settings.redis_uri = Some(cluster.uri());
    options.settings.redis_cluster = true;
    options.settings.redis_key_prefix = crate::redis_support::fresh_prefix();
    options.settings.mongodb_uri = Some(mongo.uri());
    options.settings.mongodb_database = crate::mongo_support::fresh_database("failover");
    options.settings.reconcile_interval = Duration::from_millis(500);
    options.settings.orphan_after = Duration::from_secs(5);
    let prefix = options.settings.redis_key_prefix.clone();
    let app = Arc::new(spawn_app_with(options).await);
    let sale = app.active_sale(150, 1, 1).await;
    let meta = format!("{prefix}{{sale:{}}}:meta", sale.id);
    let victim = tokio::task::block_in_place(|| cluster.master_of(&meta).port);

    let bought = Arc::new(AtomicUsize::new(0));
    let buyers: Vec<_> = (0..400)
        .map(|i| {
            let (app, sale, bought) = (app.clone(), sale.id.clone(), bought.clone());
            tokio::spawn(async move {
                let token = app.buyer_token(&format!("rusher-{i}"), &format!("Rusher {i}"));
                (format!("rusher-{i}"), buy_until_answered(&app, &token, &sale, &format!("k-{i}"), &bought).await)
            })
        })
        .collect();
    poll_until("40 units sold before the kill", Duration::from_secs(60), || {
        let bought = bought.clone();
        async move { (bought.load(Ordering::Relaxed) >= 40).then_some(()) }
    })
    .await;
    let killed = cluster.nodes.iter().find(|n| n.port == victim).unwrap();
    tokio::task::block_in_place(|| killed.kill());
    // Its replica is promoted: every slot is served again by three masters.
    tokio::task::block_in_place(|| cluster.wait_healthy(Duration::from_secs(60)));
    assert!(!cluster.masters().contains(&victim), "the killed master still serves slots");

    let mut told = HashMap::new();
    for buyer in buyers {
        let (id, answer) = buyer.await.unwrap();
        told.insert(id, answer);
    }
    let acknowledged: Vec<&pb::Order> =
        told.values().filter_map(|t| if let Told::Bought(order) = t { Some(order.as_ref()) } else { None }).collect();
    for answer in told.values() {
        if let Told::Refused(why) = answer {
            assert!(why == "SOLD_OUT" || why == "SALE_ENDED", "a buyer was refused with {why}");
        }
    }

    // The sale sells out: the record ends it with exactly its allocation sold.
    let ended = poll_until("the sale to end sold out", Duration::from_secs(60), || {
        let app = app.clone();
        let id = sale.id.clone();
        async move {
            let now = app.get_sale(&id).await;
            (now.status() == pb::SaleStatus::Ended).then_some(now)
        }
    })
    .await;
    assert_eq!(ended.end_reason(), pb::EndReason::SoldOut);
    assert_eq!((ended.sold, ended.remaining), (150, 0));

    // Every acknowledged order is in the record, and the record holds no more than 150.
    let admin = app.admin_token();
    let mut recorded: HashMap<String, pb::Order> = HashMap::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListSaleOrdersRequest {
            sale_id: sale.id.clone(),
            page_size: 1000,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = app.orders().list_sale_orders(authed(request, &admin)).await.unwrap().into_inner();
        recorded.extend(page.orders.into_iter().map(|o| (o.id.clone(), o)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let units: u32 = recorded.values().map(|o| o.quantity).sum();
    assert_eq!(units, 150, "the record sold {units} units of 150");
    for order in &acknowledged {
        assert!(recorded.contains_key(&order.id), "acknowledged order {} is not in the record", order.id);
    }
    let buyers: HashSet<_> = recorded.values().map(|o| o.buyer_id.clone()).collect();
    assert_eq!(buyers.len(), recorded.len(), "a buyer holds two orders under a limit of one");
    assert_eq!(acknowledged.len(), recorded.len(), "an order in the record was never acknowledged to its buyer");
}
