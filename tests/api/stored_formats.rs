//! Data directories written before stored formats were versioned keep working: the committed
//! fixture `tests/fixtures/redb-v0` (written by an earlier release) is opened by the current
//! embedded record and served, its sales, orders, idempotency keys and limits intact.

use std::path::Path;
use std::sync::Arc;

use flashsale::domain::{
    EndReason, IdempotencyKey, Money, OrderId, ProductId, Role, SaleId, SaleStatus, UnixMillis, UserId,
};
use flashsale::store::embedded::RedbRecords;
use flashsale::store::RecordStore;
use flashsale_client::pb;
use tonic::Code;

use crate::helpers::{assert_refused, production_backends, refusal, spawn_app_with, AppOptions};

/// A copy of the fixture (opening a record writes to it; the committed file stays as it is).
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redb-v0/flashsale.redb");
    std::fs::copy(&fixture, dir.path().join("flashsale.redb")).expect("copy the fixture");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_of_an_earlier_release_reads_back_whole() {
    let dir = fixture_copy();
    let store = RedbRecords::open(dir.path()).expect("open the fixture");

    let ann = store.user_by_email(&flashsale::domain::Email::parse("ann@example.com").unwrap()).await.unwrap().unwrap();
    assert_eq!((ann.id.as_str(), ann.display_name.as_str(), ann.role), ("fixture-user-ann", "Ann", Role::Buyer));
    assert!(ann.password_hash.starts_with("$argon2id$"));
    let admin = store.user_by_email(&flashsale::domain::Email::parse("admin@example.com").unwrap()).await.unwrap();
    assert_eq!(admin.map(|u| u.role), Some(Role::Admin));

    let product = store.get_product(&ProductId::parse("fixture-product").unwrap()).await.unwrap().unwrap();
    assert_eq!(
        (product.name.as_str(), product.description.as_str(), product.inventory),
        ("Sneaker", "limited, size 42", 88)
    );

    let open = store.get_sale(&SaleId::parse("fixture-sale-open").unwrap()).await.unwrap().unwrap();
    assert_eq!((open.status, open.end_reason, open.sold, open.generation), (SaleStatus::Active, None, 3, 0));
    assert_eq!((open.rules.allocated, open.rules.per_user_limit, open.rules.max_per_purchase), (10, 3, 2));
    assert_eq!(open.rules.unit_price, Money::parse(1999, "USD").unwrap());
    let ended = store.get_sale(&SaleId::parse("fixture-sale-ended").unwrap()).await.unwrap().unwrap();
    assert_eq!((ended.status, ended.end_reason, ended.sold), (SaleStatus::Ended, Some(EndReason::SoldOut), 2));
    assert_eq!(ended.ended_at, Some(UnixMillis(1_700_000_000_200)));

    let orders = store.orders_of_sale(&open.id).await.unwrap();
    let summary: Vec<(&str, &str, u32, &str)> =
        orders.iter().map(|o| (o.id.as_str(), o.buyer_id.as_str(), o.quantity, o.idempotency_key.as_str())).collect();
    assert_eq!(
        summary,
        [("fixture-order-1", "fixture-user-ann", 2, "ann-1"), ("fixture-order-2", "fixture-user-bob", 1, "bob-1")]
    );
    assert_eq!(orders[0].unit_price, Money::parse(1999, "USD").unwrap());
    let by_key = store
        .order_by_key(&UserId::parse("fixture-user-ann").unwrap(), &ended.id, &IdempotencyKey::parse("ann-2").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_key.id, OrderId::parse("fixture-order-3").unwrap());

    // Written back in the current format, it reads back the same.
    let next = store.next_generation(&open.id).await.unwrap();
    assert_eq!((next.generation, next.rules, next.sold), (1, open.rules, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_record_of_an_earlier_release() {
    if production_backends() {
        return; // the fixture is an embedded record; the test above reads it on every run
    }
    let app = spawn_app_with(AppOptions { data_dir: Some(Arc::new(fixture_copy())), ..AppOptions::default() }).await;

    let open = app.get_sale("fixture-sale-open").await;
    assert_eq!((open.status(), open.sold, open.remaining, open.allocated), (pb::SaleStatus::Active, 3, 7, 10));
    assert_eq!(open.unit_price, Some(pb::Money { amount_minor: 1999, currency: "USD".into() }));
    assert_eq!(open.created_at, Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 }));
    let ended = app.get_sale("fixture-sale-ended").await;
    assert_eq!(
        (ended.status(), ended.end_reason(), ended.sold, ended.remaining),
        (pb::SaleStatus::Ended, pb::EndReason::SoldOut, 2, 0)
    );
    assert_eq!(app.get_product("fixture-product").await.inventory, 88);

    let ann = app.buyer_token("fixture-user-ann", "Ann");
    let mine: Vec<(String, u32)> = app.my_orders(&ann, "").await.into_iter().map(|o| (o.id, o.quantity)).collect();
    assert_eq!(mine, [("fixture-order-1".to_owned(), 2), ("fixture-order-3".to_owned(), 2)]);

    // Idempotency keys and per-buyer units came back from the old file.
    let retry = app.buy(&ann, "fixture-sale-open", 2, "ann-1").await.expect("a retry of an old purchase");
    assert!(retry.replayed);
    assert_eq!(retry.order.unwrap().id, "fixture-order-1");
    let over = refusal(app.buy(&ann, "fixture-sale-open", 2, "ann-new").await);
    assert_refused(&over, Code::ResourceExhausted, "USER_LIMIT_REACHED");
    app.buy(&ann, "fixture-sale-open", 1, "ann-new").await.expect("up to the limit");
    let after = app.get_sale("fixture-sale-open").await;
    assert_eq!((after.sold, after.remaining), (4, 6));
    let watched = app
        .feeds()
        .watch_sale(pb::WatchSaleRequest { sale_id: "fixture-sale-open".into() })
        .await
        .expect("watch")
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watched.sold, 4);
}
