//! SCHEDULED → ACTIVE → ENDED on a manual clock: transitions happen on their own, purchases
//! follow the status, and every end gives the unsold units back to the product exactly once.

use std::time::Duration;

use flashsale::domain::UnixMillis;
use flashsale_client::pb;
use pb::{EndReason, SaleStatus};
use tonic::Code;

use crate::helpers::{authed, next_message, read_until, reason, spawn_app_with, timestamp, AppOptions, TestApp};

/// 2030-01-01T00:00:00Z: where the manual clock starts.
const T0: UnixMillis = UnixMillis(1_893_456_000_000);
const MINUTE: Duration = Duration::from_secs(60);

async fn app_on_manual_clock() -> TestApp {
    spawn_app_with(AppOptions { manual_clock: Some(T0), ..AppOptions::default() }).await
}

fn at(offset: Duration) -> Option<prost_types::Timestamp> {
    Some(timestamp(UnixMillis(T0.0 + offset.as_millis() as i64)))
}

/// A sale of `allocated` units of `product_id` open during [T0 + start, T0 + end).
fn scheduled(product_id: &str, allocated: i64, start: Duration, end: Duration) -> pb::CreateSaleRequest {
    pb::CreateSaleRequest {
        queue: None,
        product_id: product_id.into(),
        allocated,
        unit_price: Some(pb::Money { amount_minor: 500, currency: "EUR".into() }),
        per_user_limit: 0,
        max_per_purchase: 5,
        start_time: at(start),
        end_time: at(end),
        hold_seconds: 0,
    }
}

async fn inventory(app: &TestApp, product_id: &str) -> i64 {
    app.get_product(product_id).await.inventory
}

/// Polls until the product's inventory is `expected`.
async fn inventory_becomes(app: &TestApp, product_id: &str, expected: i64) {
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let now = inventory(app, product_id).await;
            if now == expected {
                return;
            }
            last = Some(now);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "inventory should become {expected}, last seen {last:?}");
}

/// Polls GetSale until the sale has `status`.
async fn sale_becomes(app: &TestApp, sale_id: &str, status: SaleStatus) -> pb::Sale {
    app.eventually(&format!("sale {sale_id} {status:?}"), || async {
        let sale = app.get_sale(sale_id).await;
        (sale.status() == status).then_some(sale)
    })
    .await
}

fn assert_refused(result: Result<pb::PurchaseResponse, tonic::Status>, code: Code, why: &str) {
    let status = result.expect_err(&format!("the purchase should be refused with {why}"));
    assert_eq!((status.code(), reason(&status).as_str()), (code, why), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_sale_opens_and_closes_on_its_own() {
    let app = app_on_manual_clock().await;
    let product = app.create_product(100).await;
    let sale = app.create_sale(scheduled(&product.id, 40, MINUTE, 2 * MINUTE)).await;
    assert_eq!(sale.status(), SaleStatus::Scheduled);
    assert_eq!(sale.end_reason(), EndReason::Unspecified);
    assert_eq!((sale.start_time, sale.end_time), (at(MINUTE), at(2 * MINUTE)));
    assert_eq!(inventory(&app, &product.id).await, 60, "the sale takes its units at creation");

    let ann = app.buyer_token("ann", "Ann");
    let bob = app.buyer_token("bob", "Bob");
    assert_refused(app.buy(&ann, &sale.id, 1, "too-early").await, Code::FailedPrecondition, "SALE_NOT_STARTED");
    let mut watch = app.watch(&sale.id).await;
    let first = next_message(&mut watch, "snapshot").await.unwrap();
    assert_eq!(first.status(), SaleStatus::Scheduled);

    app.advance(MINUTE);
    let active = sale_becomes(&app, &sale.id, SaleStatus::Active).await;
    assert_eq!(active.start_time, at(MINUTE));
    read_until(&mut watch, "the watcher sees ACTIVE", |s| s.status() == SaleStatus::Active).await;
    app.buy(&ann, &sale.id, 3, "first").await.expect("an ACTIVE sale sells");
    app.buy(&bob, &sale.id, 2, "first").await.expect("an ACTIVE sale sells");
    assert_eq!(app.get_sale(&sale.id).await.sold, 5);

    app.advance(MINUTE);
    let ended = sale_becomes(&app, &sale.id, SaleStatus::Ended).await;
    assert_eq!(ended.end_reason(), EndReason::TimeUp);
    assert_eq!(ended.ended_at, at(2 * MINUTE));
    assert_eq!(ended.sold, 5);
    assert_refused(app.buy(&ann, &sale.id, 1, "too-late").await, Code::FailedPrecondition, "SALE_ENDED");
    let seen = read_until(&mut watch, "the watcher sees ENDED", |s| s.status() == SaleStatus::Ended).await;
    assert_eq!(seen.last().unwrap().end_reason(), EndReason::TimeUp);
    assert_eq!(next_message(&mut watch, "after ENDED").await, None, "the feed ends after ENDED");

    // 100 - 40 allocated + 35 unsold.
    inventory_becomes(&app, &product.id, 95).await;
    let again = app.end_sale(&sale.id).await;
    assert_eq!(
        (again.status(), again.end_reason()),
        (SaleStatus::Ended, EndReason::TimeUp),
        "ending twice changes nothing"
    );
    assert_eq!(again.ended_at, ended.ended_at);
    app.advance(60 * MINUTE);
    assert_eq!(inventory(&app, &product.id).await, 95, "unsold units come back exactly once");
    assert_eq!(app.get_sale(&sale.id).await.end_reason(), EndReason::TimeUp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_ended_before_its_start_never_opens() {
    let app = app_on_manual_clock().await;
    let product = app.create_product(50).await;
    let cancelled = app.create_sale(scheduled(&product.id, 10, MINUTE, 2 * MINUTE)).await;
    // Same window: when it has moved, the scheduler has passed the cancelled sale's instants too.
    let sentinel = app.create_sale(scheduled(&product.id, 5, MINUTE, 2 * MINUTE)).await;
    assert_eq!(inventory(&app, &product.id).await, 35);

    let ended = app.end_sale(&cancelled.id).await;
    assert_eq!((ended.status(), ended.end_reason()), (SaleStatus::Ended, EndReason::ByAdmin));
    inventory_becomes(&app, &product.id, 45).await;

    app.advance(MINUTE);
    sale_becomes(&app, &sentinel.id, SaleStatus::Active).await;
    let still = app.get_sale(&cancelled.id).await;
    assert_eq!((still.status(), still.end_reason()), (SaleStatus::Ended, EndReason::ByAdmin));
    let buyer = app.buyer_token("hopeful", "Hopeful");
    assert_refused(app.buy(&buyer, &cancelled.id, 1, "k").await, Code::FailedPrecondition, "SALE_ENDED");

    app.advance(MINUTE);
    let sentinel = sale_becomes(&app, &sentinel.id, SaleStatus::Ended).await;
    assert_eq!(sentinel.end_reason(), EndReason::TimeUp);
    inventory_becomes(&app, &product.id, 50).await;
    let still = app.end_sale(&cancelled.id).await;
    assert_eq!(still.end_reason(), EndReason::ByAdmin, "the time-up must not re-end an ended sale");
    assert_eq!(inventory(&app, &product.id).await, 50, "every unit came back once, none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_sale_opens_a_scheduled_sale_now() {
    let app = app_on_manual_clock().await;
    let product = app.create_product(20).await;
    let sale = app.create_sale(scheduled(&product.id, 20, 10 * MINUTE, 20 * MINUTE)).await;
    app.advance(MINUTE);

    let started = app
        .admin()
        .start_sale(authed(pb::StartSaleRequest { sale_id: sale.id.clone() }, &app.admin_token()))
        .await
        .expect("start sale")
        .into_inner();
    assert_eq!(started.status(), SaleStatus::Active);
    assert_eq!(started.start_time, at(MINUTE), "the start time becomes now");
    let buyer = app.buyer_token("prompt", "Prompt");
    app.buy(&buyer, &sale.id, 2, "k").await.expect("a started sale sells");

    let again = app
        .admin()
        .start_sale(authed(pb::StartSaleRequest { sale_id: sale.id.clone() }, &app.admin_token()))
        .await
        .expect_err("an ACTIVE sale cannot start again");
    assert_eq!((again.code(), reason(&again).as_str()), (Code::FailedPrecondition, "SALE_NOT_SCHEDULED"));

    app.advance(19 * MINUTE);
    let ended = sale_becomes(&app, &sale.id, SaleStatus::Ended).await;
    assert_eq!((ended.end_reason(), ended.sold), (EndReason::TimeUp, 2));
    inventory_becomes(&app, &product.id, 18).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_sale_ends_with_nothing_to_return() {
    let app = app_on_manual_clock().await;
    let product = app.create_product(10).await;
    let sale = app
        .create_sale(pb::CreateSaleRequest {
            start_time: None,
            ..scheduled(&product.id, 6, Duration::ZERO, 60 * MINUTE)
        })
        .await;
    assert_eq!(sale.status(), SaleStatus::Active);
    let mut watch = app.watch(&sale.id).await;

    app.buy(&app.buyer_token("first", "First"), &sale.id, 3, "k").await.expect("purchase");
    app.buy(&app.buyer_token("second", "Second"), &sale.id, 3, "k").await.expect("the last units");

    let ended = sale_becomes(&app, &sale.id, SaleStatus::Ended).await;
    assert_eq!((ended.end_reason(), ended.sold), (EndReason::SoldOut, 6));
    let seen = read_until(&mut watch, "the watcher sees ENDED", |s| s.status() == SaleStatus::Ended).await;
    let last = seen.last().unwrap();
    assert_eq!((last.end_reason(), last.sold, last.remaining), (EndReason::SoldOut, 6, 0));
    assert_eq!(next_message(&mut watch, "after ENDED").await, None);

    let refused = app.buy(&app.buyer_token("third", "Third"), &sale.id, 1, "k").await.expect_err("nothing left");
    assert!(
        matches!(
            (refused.code(), reason(&refused).as_str()),
            (Code::FailedPrecondition, "SALE_ENDED") | (Code::ResourceExhausted, "SOLD_OUT")
        ),
        "{refused:?}"
    );

    assert_eq!(inventory(&app, &product.id).await, 4, "a sold-out sale returns nothing");
    let again = app.end_sale(&sale.id).await;
    assert_eq!(again.end_reason(), EndReason::SoldOut, "ending twice changes nothing");
    assert_eq!(inventory(&app, &product.id).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_sale_by_admin_is_seen_by_watchers_and_returns_the_rest_once() {
    let app = app_on_manual_clock().await;
    let product = app.create_product(30).await;
    let sale = app
        .create_sale(pb::CreateSaleRequest {
            start_time: None,
            ..scheduled(&product.id, 20, Duration::ZERO, 60 * MINUTE)
        })
        .await;
    // Ends on its own at the same instant the admin-ended sale would have.
    let sentinel = app
        .create_sale(pb::CreateSaleRequest {
            start_time: None,
            ..scheduled(&product.id, 1, Duration::ZERO, 60 * MINUTE)
        })
        .await;
    assert_eq!(inventory(&app, &product.id).await, 9);
    app.buy(&app.buyer_token("early", "Early"), &sale.id, 4, "k").await.expect("purchase");
    let mut watch = app.watch(&sale.id).await;
    next_message(&mut watch, "snapshot").await.unwrap();

    app.advance(MINUTE);
    let ended = app.end_sale(&sale.id).await;
    assert_eq!((ended.status(), ended.end_reason(), ended.sold), (SaleStatus::Ended, EndReason::ByAdmin, 4));
    assert_eq!(ended.ended_at, at(MINUTE));

    let seen = read_until(&mut watch, "the watcher sees ENDED", |s| s.status() == SaleStatus::Ended).await;
    let last = seen.last().unwrap();
    assert_eq!((last.end_reason(), last.sold), (EndReason::ByAdmin, 4));
    assert_eq!(last.ended_at, at(MINUTE));
    assert_eq!(next_message(&mut watch, "after ENDED").await, None);

    // 30 - 20 - 1 + 16 unsold.
    inventory_becomes(&app, &product.id, 25).await;
    let again = app.end_sale(&sale.id).await;
    assert_eq!((again.end_reason(), again.ended_at), (EndReason::ByAdmin, at(MINUTE)));
    assert_eq!(inventory(&app, &product.id).await, 25);
    assert_refused(
        app.buy(&app.buyer_token("late", "Late"), &sale.id, 1, "k").await,
        Code::FailedPrecondition,
        "SALE_ENDED",
    );
    let restart = app
        .admin()
        .start_sale(authed(pb::StartSaleRequest { sale_id: sale.id.clone() }, &app.admin_token()))
        .await
        .expect_err("an ENDED sale cannot start again");
    assert_eq!((restart.code(), reason(&restart).as_str()), (Code::FailedPrecondition, "SALE_NOT_SCHEDULED"));

    app.advance(60 * MINUTE);
    sale_becomes(&app, &sentinel.id, SaleStatus::Ended).await;
    inventory_becomes(&app, &product.id, 26).await;
    assert_eq!(app.get_sale(&sale.id).await.end_reason(), EndReason::ByAdmin);
    assert_eq!(inventory(&app, &product.id).await, 26, "only the sentinel's unit came back");
}
