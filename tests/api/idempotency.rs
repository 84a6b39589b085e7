//! Idempotency keys: a retry of a purchase returns the first order and changes nothing; a key
//! is scoped to one buyer in one sale.

use std::collections::HashSet;
use std::sync::Arc;

use tonic::Code;

use crate::helpers::{assert_refused, refusal, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_returns_the_first_order_and_changes_nothing() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 5).await;
    let token = app.buyer_token("retrier", "Retrier");

    let first = app.buy(&token, &sale.id, 2, "key-1").await.expect("first attempt");
    assert!(!first.replayed);
    let order = first.order.expect("order");
    assert_eq!(app.get_sale(&sale.id).await.remaining, 8);

    let retry = app.buy(&token, &sale.id, 2, "key-1").await.expect("retry");
    assert!(retry.replayed, "a retry says it was answered from the first result");
    assert_eq!(retry.order.as_ref(), Some(&order), "a retry returns the first order as it was");

    let sale = app.get_sale(&sale.id).await;
    assert_eq!((sale.sold, sale.remaining), (2, 8), "the retry took no stock");
    let orders = app.my_orders(&token, &sale.id).await;
    assert_eq!(orders, vec![order]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_one_key_make_one_order() {
    let app = Arc::new(spawn_app().await);
    let sale = app.active_sale(100, 0, 5).await;
    let token = app.buyer_token("double-clicker", "Clicker");

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (app, sale_id, token) = (app.clone(), sale.id.clone(), token.clone());
            tokio::spawn(async move { app.buy(&token, &sale_id, 3, "same-key").await })
        })
        .collect();
    let mut order_ids = HashSet::new();
    let mut originals = 0;
    for task in tasks {
        let response = task.await.expect("task").expect("every call with the key succeeds");
        order_ids.insert(response.order.expect("order").id);
        if !response.replayed {
            originals += 1;
        }
    }
    assert_eq!(order_ids.len(), 1, "one order id for every call");
    assert_eq!(originals, 1, "exactly one call made the order; the others are replays");

    let sale = app.get_sale(&sale.id).await;
    assert_eq!((sale.sold, sale.remaining), (3, 97), "stock taken once");
    let orders = app.my_orders(&token, &sale.id).await;
    assert_eq!(orders.len(), 1);
    assert!(order_ids.contains(&orders[0].id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_quantity_is_refused() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 5).await;
    let token = app.buyer_token("forgetful", "Forgetful");

    let order = app.buy(&token, &sale.id, 1, "key-1").await.expect("first").order.expect("order");
    let status = refusal(app.buy(&token, &sale.id, 2, "key-1").await);
    assert_refused(&status, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");

    let sale = app.get_sale(&sale.id).await;
    assert_eq!((sale.sold, sale.remaining), (1, 9), "the refused call took nothing");
    assert_eq!(app.my_orders(&token, &sale.id).await, vec![order]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_scoped_to_its_buyer() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 5).await;
    let ann = app.buyer_token("ann-id", "Ann");
    let bob = app.buyer_token("bob-id", "Bob");

    let ann_order = app.buy(&ann, &sale.id, 2, "shared-key").await.expect("ann").order.expect("order");
    let bob_response = app.buy(&bob, &sale.id, 3, "shared-key").await.expect("bob, same key");
    assert!(!bob_response.replayed, "another buyer's key is not this buyer's retry");
    let bob_order = bob_response.order.expect("order");
    assert_ne!(bob_order.id, ann_order.id);
    assert_eq!((bob_order.buyer_id.as_str(), bob_order.quantity), ("bob-id", 3));

    let sale = app.get_sale(&sale.id).await;
    assert_eq!((sale.sold, sale.remaining), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_scoped_to_its_sale() {
    let app = spawn_app().await;
    let first_sale = app.active_sale(10, 0, 5).await;
    let second_sale = app.active_sale(10, 0, 5).await;
    let token = app.buyer_token("collector", "Collector");

    let first = app.buy(&token, &first_sale.id, 2, "my-key").await.expect("first sale").order.expect("order");
    let second = app.buy(&token, &second_sale.id, 4, "my-key").await.expect("second sale, same key");
    assert!(!second.replayed);
    let second = second.order.expect("order");
    assert_ne!(second.id, first.id);
    assert_eq!((second.sale_id.as_str(), second.quantity), (second_sale.id.as_str(), 4));

    assert_eq!(app.get_sale(&first_sale.id).await.remaining, 8);
    assert_eq!(app.get_sale(&second_sale.id).await.remaining, 6);
}
