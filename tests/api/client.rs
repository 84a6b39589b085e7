//! The Rust client (`clients/rust`) against the real server: a buyer registers, buys, lists
//! and watches; a purchase answered BACKEND_UNAVAILABLE is retried with its key and buys once;
//! a refusal comes back with its reason.

use std::sync::Arc;

use flashsale_client::{new_key, Client, Error};

use crate::gates::Gates;
use crate::helpers::{spawn_app_with, AppOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_registers_buys_and_watches_with_the_rust_client() {
    let gates = Arc::new(Gates::default());
    let wrap = {
        let gates = gates.clone();
        move |backends| gates.wrap(backends)
    };
    let app = spawn_app_with(AppOptions { wrap: Some(Box::new(wrap)), ..AppOptions::default() }).await;
    let sale = app.active_sale(3, 2, 2).await;

    let client = Client::from_channel(app.channel.clone());
    let ann = client.register("ann.client@example.com", "Ann", "correct horse").await.expect("register");
    let again = client.login("ann.client@example.com", "correct horse").await.expect("log in");

    // The first commit fails: the client retries with the same key, and one order is made.
    gates.fail_next_commit();
    let key = new_key();
    let bought = ann.buy(&sale.id, 2, &key).await.expect("bought after a retry");
    assert_eq!(bought.order.quantity, 2);
    let replay = again.buy(&sale.id, 2, &key).await.expect("the same key again");
    assert!(replay.replayed);
    assert_eq!(replay.order.id, bought.order.id);
    assert_eq!(ann.my_orders(&sale.id).await.unwrap().len(), 1);

    // A refusal carries its reason.
    match ann.buy(&sale.id, 1, &new_key()).await {
        Err(Error::Refused(refusal)) => {
            assert_eq!(refusal.reason, "USER_LIMIT_REACHED");
            assert!(!refusal.retryable());
            assert_eq!(refusal.metadata.get("limit").map(String::as_str), Some("2"));
        }
        other => panic!("expected USER_LIMIT_REACHED, got {other:?}"),
    }

    let mut feed = client.watch(&sale.id).await.expect("watch");
    let first = feed.message().await.unwrap().expect("a first snapshot");
    assert_eq!((first.sold, first.remaining), (2, 1));
}
