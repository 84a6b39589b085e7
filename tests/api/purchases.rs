//! Purchases under contention: exactly the allocated units are sold, per-user limits hold under
//! concurrency, and every order belongs to the subject of the token that made it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use flashsale_client::pb;
use futures::StreamExt;
use rand::Rng;
use tonic::Code;

use crate::helpers::{assert_refused, authed, error_metadata, is_sold_out, reason, refusal, spawn_app, timestamp};

/// The old project's rehearsal: 300 buyers, at most 50 at a time, random quantities, 200 units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehearsal_sells_exactly_the_allocated_units() {
    let app = spawn_app().await;
    let sale = app.active_sale(200, 0, 7).await;
    let buyers: Vec<(String, String, u32)> = {
        let mut rng = rand::rng();
        (0..300)
            .map(|i| {
                let id = format!("rehearsal-buyer-{i}");
                let token = app.buyer_token(&id, &format!("Buyer {i}"));
                (id, token, rng.random_range(1..=7))
            })
            .collect()
    };

    let outcomes: Vec<(u32, Result<pb::PurchaseResponse, tonic::Status>)> =
        futures::stream::iter(buyers.iter().enumerate())
            .map(|(i, (_, token, quantity))| {
                let (app, sale_id) = (&app, sale.id.as_str());
                async move { (*quantity, app.buy(token, sale_id, *quantity, &format!("rehearsal-{i}")).await) }
            })
            .buffer_unordered(50)
            .collect()
            .await;

    let mut sold = 0u64;
    // Refusals for any reason but lack of stock; checked last so the accounting is checked
    // even when the wording is off.
    let mut unexpected = Vec::new();
    for (quantity, outcome) in &outcomes {
        match outcome {
            Ok(response) => {
                let order = response.order.as_ref().expect("a successful purchase carries its order");
                assert_eq!(order.quantity, *quantity);
                assert!(!response.replayed, "a first attempt is never a replay");
                sold += u64::from(order.quantity);
            }
            Err(status) if status.code() == Code::ResourceExhausted && reason(status) == "INSUFFICIENT_STOCK" => {
                let remaining: u32 = error_metadata(status, "remaining")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or_else(|| panic!("INSUFFICIENT_STOCK without a numeric `remaining`: {status:?}"));
                assert!(remaining < *quantity, "refused {quantity} units with {remaining} left");
            }
            Err(status) if status.code() == Code::ResourceExhausted && reason(status) == "SOLD_OUT" => {}
            Err(status) => unexpected.push(status.clone()),
        }
    }
    assert_eq!(sold, 200, "the sum of acknowledged quantities is the allocation");

    let ended = app.wait_for_sale(&sale.id, "the sold-out sale to end", |s| s.status() == pb::SaleStatus::Ended).await;
    assert_eq!((ended.sold, ended.remaining), (200, 0));
    assert_eq!(ended.end_reason(), pb::EndReason::SoldOut);

    let listed: Vec<u64> = futures::stream::iter(buyers.iter())
        .map(|(id, token, _)| {
            let (app, sale_id) = (&app, sale.id.as_str());
            async move {
                let orders = app.my_orders(token, sale_id).await;
                for order in &orders {
                    assert_eq!(&order.buyer_id, id, "ListMyOrders shows another buyer's order");
                    assert_eq!(order.sale_id, sale_id);
                }
                orders.iter().map(|o| u64::from(o.quantity)).sum::<u64>()
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert_eq!(listed.iter().sum::<u64>(), 200, "every acknowledged order is kept");

    let mut feed = app
        .feeds()
        .watch_sale(pb::WatchSaleRequest { sale_id: sale.id.clone() })
        .await
        .expect("watch the ended sale")
        .into_inner();
    let last = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let snapshot = feed.message().await.expect("feed message").expect("the feed ended before ENDED");
            if snapshot.status() == pb::SaleStatus::Ended {
                return snapshot;
            }
        }
    })
    .await
    .expect("an ENDED snapshot within 10 s");
    assert_eq!((last.sold, last.remaining, last.allocated), (200, 0, 200));
    assert_eq!(last.end_reason(), pb::EndReason::SoldOut);
    let after = tokio::time::timeout(Duration::from_secs(10), feed.message())
        .await
        .expect("the feed ends after its ENDED snapshot");
    assert!(matches!(after, Ok(None)), "the feed goes on after ENDED: {after:?}");

    let mut kinds: Vec<String> = unexpected
        .iter()
        .map(|s| format!("{:?} {} {:?}", s.code(), reason(s), error_metadata(s, "end_reason")))
        .collect();
    kinds.sort();
    kinds.dedup();
    assert!(
        unexpected.is_empty(),
        "{} refusals were not RESOURCE_EXHAUSTED SOLD_OUT / INSUFFICIENT_STOCK but {kinds:?}",
        unexpected.len()
    );
}

/// 2,000 buyers at once for 500 units, one each: 500 distinct winners, and nobody gets a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_buyers_one_unit_each() {
    let app = Arc::new(spawn_app().await);
    let sale = app.active_sale(500, 1, 1).await;

    let mut tasks = Vec::with_capacity(2000);
    for i in 0..2000 {
        let (app, sale_id) = (app.clone(), sale.id.clone());
        let id = format!("rush-buyer-{i}");
        let token = app.buyer_token(&id, &format!("Rusher {i}"));
        tasks.push(tokio::spawn(async move {
            let first = app.buy(&token, &sale_id, 1, &format!("first-{i}")).await;
            // A second, distinct purchase (new key): winners are over their limit of 1, and
            // the sale may meanwhile have sold out and ended.
            let second = app.buy(&token, &sale_id, 1, &format!("second-{i}")).await;
            (id, first, second)
        }));
    }

    let mut winners = HashSet::new();
    let mut order_ids = HashSet::new();
    for task in tasks {
        let (id, first, second) = task.await.expect("buyer task");
        match first {
            Ok(response) => {
                let order = response.order.expect("order");
                assert_eq!(order.buyer_id, id);
                assert_eq!(order.quantity, 1);
                assert!(order_ids.insert(order.id), "two purchases share an order id");
                assert!(winners.insert(id.clone()), "{id} won twice");
                let second = refusal(second);
                assert!(
                    (second.code() == Code::ResourceExhausted && reason(&second) == "USER_LIMIT_REACHED")
                        || is_sold_out(&second),
                    "a winner's second purchase: {second:?}"
                );
            }
            Err(first) => {
                assert!(is_sold_out(&first), "a loser's first purchase: {first:?}");
                let second = refusal(second);
                assert!(is_sold_out(&second), "a loser's second purchase: {second:?}");
            }
        }
    }
    assert_eq!(winners.len(), 500, "exactly the allocation is sold, one unit per buyer");
    assert_eq!(order_ids.len(), 500);

    let ended = app.wait_for_sale(&sale.id, "the sold-out sale to end", |s| s.status() == pb::SaleStatus::Ended).await;
    assert_eq!((ended.sold, ended.remaining), (500, 0));
    assert_eq!(ended.end_reason(), pb::EndReason::SoldOut);
}

/// One buyer racing themself: 20 concurrent purchases against a limit of 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_purchases_cannot_exceed_the_per_user_limit() {
    let app = Arc::new(spawn_app().await);
    let sale = app.active_sale(100, 5, 5).await;
    let token = app.buyer_token("greedy", "Greedy");

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (app, sale_id, token) = (app.clone(), sale.id.clone(), token.clone());
            tokio::spawn(async move { app.buy(&token, &sale_id, 1, &format!("greedy-{i}")).await })
        })
        .collect();
    let (mut accepted, mut limited) = (0, 0);
    for task in tasks {
        match task.await.expect("purchase task") {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_refused(&status, Code::ResourceExhausted, "USER_LIMIT_REACHED");
                assert_eq!(error_metadata(&status, "limit").as_deref(), Some("5"));
                limited += 1;
            }
        }
    }
    assert_eq!((accepted, limited), (5, 15));

    let orders = app.my_orders(&token, &sale.id).await;
    assert_eq!(orders.iter().map(|o| o.quantity).sum::<u32>(), 5);
    let sale = app.get_sale(&sale.id).await;
    assert_eq!((sale.sold, sale.remaining), (5, 95));
}

/// The buyer is the token's subject; another buyer's order is invisible; totals are computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_belong_to_the_token_subject() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 5).await;
    let ann = app.buyer_token("ann-id", "Ann");
    let bob = app.buyer_token("bob-id", "Bob");

    let ann_order = app.buy(&ann, &sale.id, 3, "ann-1").await.expect("ann buys").order.expect("order");
    assert_eq!(ann_order.buyer_id, "ann-id");
    assert_eq!(ann_order.sale_id, sale.id);
    assert_eq!(ann_order.quantity, 3);
    assert_eq!(ann_order.idempotency_key, "ann-1");
    assert_eq!(ann_order.unit_price, Some(pb::Money { amount_minor: 1999, currency: "USD".into() }));
    assert_eq!(ann_order.total, Some(pb::Money { amount_minor: 3 * 1999, currency: "USD".into() }));
    let bob_order = app.buy(&bob, &sale.id, 2, "bob-1").await.expect("bob buys").order.expect("order");
    assert_eq!(bob_order.buyer_id, "bob-id");

    // Another sale, another price and currency: the total follows the sale's unit price.
    let product = app.create_product(20).await;
    let euro_sale = app
        .create_sale(pb::CreateSaleRequest {
            queue: None,
            product_id: product.id,
            allocated: 20,
            unit_price: Some(pb::Money { amount_minor: 250, currency: "EUR".into() }),
            per_user_limit: 0,
            max_per_purchase: 5,
            start_time: None,
            end_time: Some(timestamp(flashsale::domain::UnixMillis(app.now().0 + 3_600_000))),
            hold_seconds: 0,
        })
        .await;
    let euro_order = app.buy(&ann, &euro_sale.id, 4, "ann-2").await.expect("ann buys in euros").order.expect("order");
    assert_eq!(euro_order.unit_price, Some(pb::Money { amount_minor: 250, currency: "EUR".into() }));
    assert_eq!(euro_order.total, Some(pb::Money { amount_minor: 1000, currency: "EUR".into() }));

    let own = app
        .purchase()
        .get_order(authed(pb::GetOrderRequest { order_id: ann_order.id.clone() }, &ann))
        .await
        .expect("ann reads her order")
        .into_inner();
    assert_eq!(own, ann_order);
    let status =
        refusal(app.purchase().get_order(authed(pb::GetOrderRequest { order_id: ann_order.id.clone() }, &bob)).await);
    assert_refused(&status, Code::NotFound, "ORDER_NOT_FOUND");

    let ann_in_sale: Vec<String> = app.my_orders(&ann, &sale.id).await.into_iter().map(|o| o.id).collect();
    assert_eq!(ann_in_sale, vec![ann_order.id.clone()]);
    let ann_everywhere: Vec<String> = app.my_orders(&ann, "").await.into_iter().map(|o| o.id).collect();
    assert_eq!(ann_everywhere, vec![ann_order.id, euro_order.id], "all her orders, oldest first");
    let bob_everywhere: Vec<String> = app.my_orders(&bob, "").await.into_iter().map(|o| o.id).collect();
    assert_eq!(bob_everywhere, vec![bob_order.id]);
}
