//! Checkout holds and the waitlist through the API, on a manual clock: HELD -> CONFIRMED /
//! CANCELLED / EXPIRED, confirms racing the expiry, the payments role, the line served in
//! order, WatchMyOrders, a sale ending with holds outstanding, and a restart with holds
//! outstanding. Run on both backends (`FLASHSALE_TEST_BACKEND`).

use std::time::Duration;

use flashsale::domain::UnixMillis;
use flashsale_client::pb;
use pb::{OrderStatus, SaleStatus};
use tonic::Code;

use crate::helpers::{
    assert_refused, authed, error_metadata, next_message, production_backends, refusal, spawn_app_with, timestamp,
    AppOptions, TestApp,
};

/// 2030-01-01T00:00:00Z: where the manual clock starts.
const T0: UnixMillis = UnixMillis(1_893_456_000_000);
const HOLD: Duration = Duration::from_secs(60);

async fn app_on_manual_clock() -> TestApp {
    spawn_app_with(AppOptions { manual_clock: Some(T0), ..AppOptions::default() }).await
}

impl TestApp {
    /// An ACTIVE sale with holds of [`HOLD`], open for an hour from now.
    pub(crate) async fn hold_sale(&self, allocated: i64, per_user_limit: u32, max_per_purchase: u32) -> pb::Sale {
        let product = self.create_product(allocated + 5).await;
        self.create_sale(pb::CreateSaleRequest {
            queue: None,
            product_id: product.id,
            allocated,
            unit_price: Some(pb::Money { amount_minor: 2500, currency: "EUR".into() }),
            per_user_limit,
            max_per_purchase,
            start_time: None,
            end_time: Some(timestamp(UnixMillis(self.now().0 + 3_600_000))),
            hold_seconds: HOLD.as_secs() as u32,
        })
        .await
    }

    pub(crate) async fn held(&self, token: &str, sale_id: &str, quantity: u32, key: &str) -> pb::Order {
        let order = self.buy(token, sale_id, quantity, key).await.expect("a hold").order.unwrap();
        assert_eq!(order.status(), OrderStatus::Held, "{order:?}");
        order
    }

    pub(crate) async fn confirm(
        &self,
        token: &str,
        order_id: &str,
        reference: &str,
    ) -> Result<pb::ConfirmOrderResponse, tonic::Status> {
        self.purchase()
            .confirm_order(authed(
                pb::ConfirmOrderRequest { order_id: order_id.into(), payment_reference: reference.into() },
                token,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    pub(crate) async fn cancel(&self, token: &str, order_id: &str) -> Result<pb::CancelOrderResponse, tonic::Status> {
        self.purchase()
            .cancel_order(authed(pb::CancelOrderRequest { order_id: order_id.into() }, token))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn join(&self, token: &str, sale_id: &str, quantity: u32) -> Result<pb::WaitlistPlace, tonic::Status> {
        self.purchase()
            .join_waitlist(authed(
                pb::JoinWaitlistRequest { admission_pass: String::new(), sale_id: sale_id.into(), quantity },
                token,
            ))
            .await
            .map(|r| r.into_inner().place.expect("a place"))
    }

    async fn order(&self, token: &str, order_id: &str) -> pb::Order {
        self.purchase()
            .get_order(authed(pb::GetOrderRequest { order_id: order_id.into() }, token))
            .await
            .expect("get order")
            .into_inner()
    }

    /// Polls GetOrder until the order has `status`.
    async fn order_becomes(&self, token: &str, order_id: &str, status: OrderStatus) -> pb::Order {
        self.eventually(&format!("order {order_id} {status:?}"), || async {
            let order = self.order(token, order_id).await;
            (order.status() == status).then_some(order)
        })
        .await
    }

    /// A payments token issued by an admin.
    async fn payments_token(&self) -> String {
        self.admin()
            .issue_service_token(authed(
                pb::IssueServiceTokenRequest {
                    role: pb::Role::Payments.into(),
                    name: "payments-webhook".into(),
                    ttl_seconds: 600,
                },
                &self.admin_token(),
            ))
            .await
            .expect("issue a payments token")
            .into_inner()
            .access_token
    }

    /// (sold, held, confirmed, remaining, waitlist length) of a sale.
    async fn counters(&self, sale_id: &str) -> (i64, i64, i64, i64, u64) {
        let s = self.get_sale(sale_id).await;
        (s.sold, s.held, s.confirmed, s.remaining, s.waitlist_length)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_paid_before_its_deadline_and_then_ranks() {
    let app = app_on_manual_clock().await;
    let sale = app.hold_sale(2, 0, 2).await;
    assert_eq!(sale.hold_seconds, 60);
    let ann = app.buyer_token("ann", "Ann");
    let order = app.held(&ann, &sale.id, 2, "k-1").await;
    assert_eq!(order.expires_at, Some(timestamp(UnixMillis(T0.0 + 60_000))));
    assert_eq!(app.counters(&sale.id).await, (2, 2, 0, 0, 0));
    let gauge = |name: &str| format!("{name}{{sale=\"{}\"}}", sale.id);
    assert_eq!(app.metric(&gauge("flashsale_units_held")).await, Some(2.0));
    assert_eq!(app.metric(&gauge("flashsale_units_confirmed")).await, Some(0.0));
    assert_eq!(app.metric(&gauge("flashsale_units_remaining")).await, Some(0.0));
    // The leaderboard ranks confirmed units only.
    let mut board = app.leaderboard(&sale.id, 10).await;
    assert!(next_message(&mut board, "the first board").await.unwrap().entries.is_empty());

    app.advance(Duration::from_secs(59));
    let paid = app.confirm(&ann, &order.id, "pay-1").await.unwrap();
    assert!(!paid.replayed);
    let paid = paid.order.unwrap();
    assert_eq!((paid.status(), paid.payment_reference.as_str()), (OrderStatus::Confirmed, "pay-1"));
    assert_eq!(paid.settled_at, Some(timestamp(UnixMillis(T0.0 + 59_000))));
    // The same payment again is a replay; another payment of a paid order is refused.
    assert!(app.confirm(&ann, &order.id, "pay-1").await.unwrap().replayed);
    let twice = refusal(app.confirm(&ann, &order.id, "pay-2").await);
    assert_refused(&twice, Code::FailedPrecondition, "ORDER_NOT_HELD");
    assert_eq!(error_metadata(&twice, "status").as_deref(), Some("CONFIRMED"));
    // A replayed purchase shows the order as it is now.
    let replay = app.buy(&ann, &sale.id, 2, "k-1").await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.order.unwrap().status(), OrderStatus::Confirmed);

    // Every unit confirmed: the sale ends SOLD_OUT and Ann ranks with her two units.
    let ended = app.wait_for_sale(&sale.id, "sold out", |s| s.status() == SaleStatus::Ended).await;
    assert_eq!((ended.end_reason(), ended.confirmed, ended.held), (pb::EndReason::SoldOut, 2, 0));
    let seen = crate::helpers::read_until(&mut board, "Ann ranked", |b| !b.entries.is_empty()).await;
    let last = seen.last().unwrap();
    assert_eq!((last.entries[0].display_name.as_str(), last.entries[0].units), ("Ann", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_expires_on_its_own_and_its_buyer_may_buy_again() {
    let app = app_on_manual_clock().await;
    let sale = app.hold_sale(1, 1, 1).await;
    let (ann, bob) = (app.buyer_token("ann", "Ann"), app.buyer_token("bob", "Bob"));
    let order = app.held(&ann, &sale.id, 1, "k-1").await;
    assert_refused(&refusal(app.buy(&bob, &sale.id, 1, "k-b").await), Code::ResourceExhausted, "SOLD_OUT");
    // Ann's limit counts her hold.
    let limited = refusal(app.buy(&ann, &sale.id, 1, "k-2").await);
    assert_refused(&limited, Code::ResourceExhausted, "USER_LIMIT_REACHED");

    app.advance(HOLD);
    let expired = app.order_becomes(&ann, &order.id, OrderStatus::Expired).await;
    assert_eq!(expired.settled_at, Some(timestamp(UnixMillis(T0.0 + 60_000))));
    app.wait_for_sale(&sale.id, "the unit back on sale", |s| s.remaining == 1 && s.held == 0 && s.sold == 0).await;
    let late = refusal(app.confirm(&ann, &order.id, "pay-late").await);
    assert_refused(&late, Code::FailedPrecondition, "HOLD_EXPIRED");
    assert!(error_metadata(&late, "expires_at").is_some());

    // Her expired hold no longer counts against her limit.
    let again = app.held(&ann, &sale.id, 1, "k-2").await;
    assert_ne!(again.id, order.id);
    assert_eq!(app.counters(&sale.id).await, (1, 1, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_at_the_deadline_is_too_late_even_before_the_timer_runs() {
    let app = app_on_manual_clock().await;
    let sale = app.hold_sale(1, 0, 1).await;
    let ann = app.buyer_token("ann", "Ann");
    let order = app.held(&ann, &sale.id, 1, "k-1").await;
    app.advance(HOLD);
    // Whichever comes first, the confirm or the timer, the hold is expired and the unit is back.
    assert_refused(&refusal(app.confirm(&ann, &order.id, "pay").await), Code::FailedPrecondition, "HOLD_EXPIRED");
    assert_eq!(app.order(&ann, &order.id).await.status(), OrderStatus::Expired);
    app.wait_for_sale(&sale.id, "the unit back", |s| s.remaining == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_hold_gives_its_units_back_once() {
    let app = app_on_manual_clock().await;
    let sale = app.hold_sale(3, 0, 2).await;
    let (ann, bob) = (app.buyer_token("ann", "Ann"), app.buyer_token("bob", "Bob"));
    let order = app.held(&ann, &sale.id, 2, "k-1").await;
    // Someone else's order does not exist for Bob.
    assert_refused(&refusal(app.cancel(&bob, &order.id).await), Code::NotFound, "ORDER_NOT_FOUND");
    let cancelled = app.cancel(&ann, &order.id).await.unwrap();
    assert_eq!((cancelled.order.unwrap().status(), cancelled.replayed), (OrderStatus::Cancelled, false));
    assert!(app.cancel(&ann, &order.id).await.unwrap().replayed);
    assert_refused(&refusal(app.confirm(&ann, &order.id, "pay").await), Code::FailedPrecondition, "ORDER_NOT_HELD");
    assert_eq!(app.counters(&sale.id).await, (0, 0, 0, 3, 0));

    // An admin may cancel a buyer's hold; a confirmed order cannot be cancelled.
    let bobs = app.held(&bob, &sale.id, 1, "k-b").await;
    app.cancel(&app.admin_token(), &bobs.id).await.unwrap();
    let kept = app.held(&bob, &sale.id, 1, "k-b2").await;
    app.confirm(&bob, &kept.id, "pay").await.unwrap();
    let refused = refusal(app.cancel(&bob, &kept.id).await);
    assert_refused(&refused, Code::FailedPrecondition, "ORDER_NOT_HELD");
    assert_eq!(app.counters(&sale.id).await, (1, 0, 1, 2, 0));
}

/// Many confirms race the expiry at one clock instant: each order ends exactly once, and what
/// its payers were told is what the record holds; confirmed + given back == allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_racing_the_expiry_end_each_hold_once() {
    const HOLDS: usize = 24;
    let app = app_on_manual_clock().await;
    let product = app.create_product(HOLDS as i64).await;
    let sale = app
        .create_sale(pb::CreateSaleRequest {
            queue: None,
            product_id: product.id.clone(),
            allocated: HOLDS as i64,
            unit_price: Some(pb::Money { amount_minor: 100, currency: "EUR".into() }),
            per_user_limit: 0,
            max_per_purchase: 1,
            start_time: None,
            end_time: Some(timestamp(UnixMillis(T0.0 + 3_600_000))),
            hold_seconds: 60,
        })
        .await;
    let payments = app.payments_token().await;
    let mut orders = Vec::new();
    for i in 0..HOLDS {
        let token = app.buyer_token(&format!("b{i}"), &format!("Buyer {i}"));
        orders.push((token.clone(), app.held(&token, &sale.id, 1, "k").await));
    }
    app.advance(HOLD - Duration::from_millis(1));
    // Three payers per order (the buyer, the webhook twice), while the clock reaches the deadline.
    let mut calls = tokio::task::JoinSet::new();
    for (i, (token, order)) in orders.iter().enumerate() {
        for payer in [token.clone(), payments.clone(), payments.clone()] {
            let (app_channel, id) = (app.purchase(), order.id.clone());
            calls.spawn(async move {
                let mut client = app_channel;
                // As a payment webhook does: UNAVAILABLE (the outcome is not known) is retried
                // with the same reference until the answer is definite.
                for _ in 0..20 {
                    let request =
                        pb::ConfirmOrderRequest { order_id: id.clone(), payment_reference: format!("pay-{i}") };
                    let answer = client.confirm_order(authed(request, &payer)).await;
                    match answer.map(|r| r.into_inner().order.unwrap().status()).map_err(|s| crate::helpers::reason(&s))
                    {
                        Err(reason) if reason == "BACKEND_UNAVAILABLE" => continue,
                        answer => return (id, answer),
                    }
                }
                panic!("the confirm of {id} stayed unavailable");
            });
        }
    }
    // Once some have been paid, the clock reaches the deadline under the rest.
    app.wait_for_sale(&sale.id, "a first payment", |s| s.confirmed >= 1).await;
    app.advance(Duration::from_millis(1));
    let mut told = std::collections::HashMap::<String, Vec<Result<OrderStatus, String>>>::new();
    while let Some(done) = calls.join_next().await {
        let (id, answer) = done.unwrap();
        told.entry(id).or_default().push(answer);
    }
    let mut confirmed = 0;
    for (token, order) in &orders {
        let stored = app.order_becomes_settled(token, &order.id).await;
        let answers = &told[&order.id];
        match stored.status() {
            OrderStatus::Confirmed => {
                confirmed += 1;
                assert!(answers.iter().all(|a| *a == Ok(OrderStatus::Confirmed)), "{answers:?}");
            }
            OrderStatus::Expired => {
                assert!(answers.iter().all(|a| *a == Err("HOLD_EXPIRED".to_owned())), "{answers:?}")
            }
            other => panic!("order {} ended {other:?}", order.id),
        }
    }
    assert!(confirmed > 0, "confirms before the deadline win");
    let after = app.wait_for_sale(&sale.id, "every hold settled", |s| s.held == 0).await;
    assert_eq!((after.sold, after.confirmed), (confirmed, confirmed));
    assert_eq!(after.remaining, HOLDS as i64 - confirmed, "each expired unit given back once");
}

impl TestApp {
    /// Polls until the order is no longer HELD.
    async fn order_becomes_settled(&self, token: &str, order_id: &str) -> pb::Order {
        self.eventually(&format!("order {order_id} settled"), || async {
            let order = self.order(token, order_id).await;
            (order.status() != OrderStatus::Held).then_some(order)
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payments_role_confirms_any_order_and_nothing_else() {
    let app = app_on_manual_clock().await;
    let sale = app.hold_sale(2, 0, 1).await;
    let ann = app.buyer_token("ann", "Ann");
    let order = app.held(&ann, &sale.id, 1, "k-1").await;
    let payments = app.payments_token().await;
    let paid = app.confirm(&payments, &order.id, "psp-123").await.unwrap().order.unwrap();
    assert_eq!((paid.status(), paid.buyer_id.as_str()), (OrderStatus::Confirmed, "ann"));

    let bought = refusal(app.buy(&payments, &sale.id, 1, "k-p").await);
    assert_refused(&bought, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    assert_eq!(error_metadata(&bought, "role").as_deref(), Some("payments"));
    assert_refused(&refusal(app.cancel(&payments, &order.id).await), Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    assert_refused(&refusal(app.join(&payments, &sale.id, 1).await), Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let listed = app.purchase().list_my_orders(authed(pb::ListMyOrdersRequest::default(), &payments)).await;
    assert_refused(&refusal(listed), Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let admin = app.admin().get_sale(authed(pb::GetSaleRequest { sale_id: sale.id.clone() }, &payments)).await;
    assert_refused(&refusal(admin), Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    // Only an admin issues service tokens, and only for the payments role.
    let by_buyer = app
        .admin()
        .issue_service_token(authed(
            pb::IssueServiceTokenRequest { role: pb::Role::Payments.into(), name: "x".into(), ttl_seconds: 0 },
            &ann,
        ))
        .await;
    assert_refused(&refusal(by_buyer), Code::PermissionDenied, "ADMIN_REQUIRED");
    let as_admin = app
        .admin()
        .issue_service_token(authed(
            pb::IssueServiceTokenRequest { role: pb::Role::Admin.into(), name: "x".into(), ttl_seconds: 0 },
            &app.admin_token(),
        ))
        .await;
    assert_refused(&refusal(as_admin), Code::InvalidArgument, "INVALID_FIELD");
    // A buyer confirms only their own orders.
    let bob = app.buyer_token("bob", "Bob");
    let bobs = app.held(&bob, &sale.id, 1, "k-b").await;
    assert_refused(&refusal(app.confirm(&ann, &bobs.id, "pay").await), Code::NotFound, "ORDER_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_gets_given_back_units_first_and_in_order() {
    let app = app_on_manual_clock().await;
    let sale = app.hold_sale(2, 1, 1).await;
    let token = |name: &str| app.buyer_token(name, name);
    let (ann, bob, cy, dee, eve) = (token("ann"), token("bob"), token("cy"), token("dee"), token("eve"));

    let refused = refusal(app.join(&cy, &sale.id, 1).await);
    assert_refused(&refused, Code::FailedPrecondition, "WAITLIST_UNAVAILABLE");
    assert_eq!(error_metadata(&refused, "why").as_deref(), Some("UNITS_ON_SALE"));
    let a = app.held(&ann, &sale.id, 1, "k").await;
    let _b = app.held(&bob, &sale.id, 1, "k").await;
    assert_eq!(app.join(&cy, &sale.id, 1).await.unwrap().position, 1);
    assert_eq!(app.join(&dee, &sale.id, 1).await.unwrap().position, 2);
    assert_eq!(app.join(&cy, &sale.id, 1).await.unwrap().position, 1, "joining again keeps the place");
    assert_eq!(app.counters(&sale.id).await, (2, 2, 0, 0, 2));

    // Ann cancels at +30 s: her unit goes to Cy, not to Eve who asks to buy.
    app.advance(Duration::from_secs(30));
    app.cancel(&ann, &a.id).await.unwrap();
    let cys = app
        .eventually("Cy served", || async {
            app.my_orders(&cy, &sale.id).await.into_iter().find(|o| o.status() == OrderStatus::Held)
        })
        .await;
    assert_eq!(cys.expires_at, Some(timestamp(UnixMillis(T0.0 + 90_000))), "a fresh deadline");
    assert_refused(&refusal(app.buy(&eve, &sale.id, 1, "k").await), Code::ResourceExhausted, "SOLD_OUT");
    assert_eq!(app.join(&dee, &sale.id, 1).await.unwrap().position, 1, "Dee moved up");

    // Bob's hold expires at +60 s: Dee is served. Cy's expires at +90 s: nobody waits, so the
    // unit goes back on sale and Eve buys it.
    app.advance(Duration::from_secs(30));
    app.eventually("Dee served", || async {
        app.my_orders(&dee, &sale.id).await.into_iter().find(|o| o.status() == OrderStatus::Held)
    })
    .await;
    app.advance(Duration::from_secs(30));
    app.order_becomes(&cy, &cys.id, OrderStatus::Expired).await;
    app.wait_for_sale(&sale.id, "the unit on sale", |s| s.remaining == 1 && s.waitlist_length == 0).await;
    app.held(&eve, &sale.id, 1, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_the_line_and_the_joins_it_refuses() {
    let app = app_on_manual_clock().await;
    let no_holds = app.active_sale(1, 0, 1).await;
    let cy = app.buyer_token("cy", "Cy");
    let refused = refusal(app.join(&cy, &no_holds.id, 1).await);
    assert_refused(&refused, Code::FailedPrecondition, "WAITLIST_UNAVAILABLE");
    assert_eq!(error_metadata(&refused, "why").as_deref(), Some("NO_HOLDS"));

    let sale = app.hold_sale(1, 0, 1).await;
    let ann = app.buyer_token("ann", "Ann");
    let a = app.held(&ann, &sale.id, 1, "k").await;
    assert_refused(&refusal(app.join(&cy, &sale.id, 2).await), Code::InvalidArgument, "INVALID_FIELD");
    app.join(&cy, &sale.id, 1).await.unwrap();
    let leave = |token: String| {
        let mut client = app.purchase();
        let sale_id = sale.id.clone();
        async move {
            client.leave_waitlist(authed(pb::LeaveWaitlistRequest { sale_id }, &token)).await.unwrap().into_inner().left
        }
    };
    assert!(leave(cy.clone()).await);
    assert!(!leave(cy.clone()).await, "leaving twice changes nothing");
    // Nobody waits: the cancelled unit goes straight back on sale.
    app.cancel(&ann, &a.id).await.unwrap();
    app.wait_for_sale(&sale.id, "the unit on sale", |s| s.remaining == 1).await;
    // Paid, nothing can come back: joining is SOLD_OUT.
    let b = app.held(&ann, &sale.id, 1, "k2").await;
    app.confirm(&ann, &b.id, "pay").await.unwrap();
    app.wait_for_sale(&sale.id, "sold out", |s| s.status() == SaleStatus::Ended).await;
    assert_refused(&refusal(app.join(&cy, &sale.id, 1).await), Code::ResourceExhausted, "SOLD_OUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_my_orders_follows_the_line_and_the_hold_to_the_end() {
    let app = app_on_manual_clock().await;
    let sale = app.hold_sale(1, 0, 1).await;
    let (ann, cy) = (app.buyer_token("ann", "Ann"), app.buyer_token("cy", "Cy"));
    let a = app.held(&ann, &sale.id, 1, "k").await;
    app.join(&cy, &sale.id, 1).await.unwrap();
    let mut updates = app
        .purchase()
        .watch_my_orders(authed(pb::WatchMyOrdersRequest { sale_id: sale.id.clone() }, &cy))
        .await
        .unwrap()
        .into_inner();
    let first = next_message(&mut updates, "the first update").await.unwrap();
    assert!(first.orders.is_empty());
    assert_eq!(first.waitlist.map(|p| (p.position, p.quantity)), Some((1, 1)));
    assert!(!first.last);

    app.cancel(&ann, &a.id).await.unwrap();
    let seen = crate::helpers::read_until(&mut updates, "Cy's hold", |u| !u.orders.is_empty()).await;
    let served = seen.last().unwrap();
    assert_eq!(served.orders[0].status(), OrderStatus::Held);
    assert_eq!(served.waitlist, None, "out of the line once served");
    let hold = served.orders[0].id.clone();

    // Cy pays; the sale sells out and the stream ends with Cy's confirmed order.
    app.confirm(&cy, &hold, "pay").await.unwrap();
    let seen = crate::helpers::read_until(&mut updates, "the last update", |u| u.last).await;
    let last = seen.last().unwrap();
    assert_eq!(last.sale_status(), SaleStatus::Ended);
    assert_eq!(last.orders[0].status(), OrderStatus::Confirmed);
    assert!(next_message(&mut updates, "the end").await.is_none());
}

/// At the end time, outstanding holds keep their own deadline; the units not confirmed go back
/// to the product exactly once, each when its hold settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_that_ends_with_holds_outstanding_returns_each_unit_once() {
    let app = app_on_manual_clock().await;
    let product = app.create_product(10).await;
    let sale = app
        .create_sale(pb::CreateSaleRequest {
            queue: None,
            product_id: product.id.clone(),
            allocated: 5,
            unit_price: Some(pb::Money { amount_minor: 100, currency: "EUR".into() }),
            per_user_limit: 0,
            max_per_purchase: 2,
            start_time: None,
            end_time: Some(timestamp(UnixMillis(T0.0 + 30_000))),
            hold_seconds: 60,
        })
        .await;
    let (ann, bob) = (app.buyer_token("ann", "Ann"), app.buyer_token("bob", "Bob"));
    let kept = app.held(&ann, &sale.id, 2, "k").await;
    let lapsed = app.held(&bob, &sale.id, 1, "k").await;
    assert_eq!(app.get_product(&product.id).await.inventory, 5);

    app.advance(Duration::from_secs(30));
    app.wait_for_sale(&sale.id, "ended on time", |s| s.status() == SaleStatus::Ended).await;
    // The live state says ENDED as the end begins; the record gives the units back a moment later.
    app.eventually("the two units nobody held back to the product", || async {
        (app.get_product(&product.id).await.inventory == 7).then_some(())
    })
    .await;
    // Ann still pays within her hold's own deadline.
    app.advance(Duration::from_secs(20));
    app.confirm(&ann, &kept.id, "pay").await.unwrap();
    app.advance(Duration::from_secs(10));
    app.order_becomes(&bob, &lapsed.id, OrderStatus::Expired).await;
    app.eventually("Bob's unit back to the product", || async {
        (app.get_product(&product.id).await.inventory == 8).then_some(())
    })
    .await;
    let after = app.get_sale(&sale.id).await;
    assert_eq!((after.sold, after.held, after.confirmed, after.remaining), (2, 0, 2, 3));
}

/// A restart with holds outstanding: the new process expires each of them once, on time (on
/// Redis + MongoDB the new process finds the same key prefix and database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_outstanding_at_a_restart_expire_once() {
    let mut settings = AppOptions::default().settings;
    if production_backends() {
        crate::helpers::use_shared_production_backends(&mut settings);
    }
    let app =
        spawn_app_with(AppOptions { settings: settings.clone(), manual_clock: Some(T0), ..AppOptions::default() })
            .await;
    let sale = app.hold_sale(3, 0, 1).await;
    let ann = app.buyer_token("ann", "Ann");
    let mut holds = Vec::new();
    for key in ["k1", "k2", "k3"] {
        holds.push(app.held(&ann, &sale.id, 1, key).await);
    }
    app.confirm(&ann, &holds[0].id, "pay").await.unwrap();
    let data_dir = app.data_dir.clone();
    app.stop().await.unwrap();

    let restarted = spawn_app_with(AppOptions {
        settings,
        manual_clock: Some(UnixMillis(T0.0 + 61_000)),
        data_dir: Some(data_dir),
        ..AppOptions::default()
    })
    .await;
    for hold in &holds[1..] {
        restarted.order_becomes(&ann, &hold.id, OrderStatus::Expired).await;
    }
    let after = restarted.wait_for_sale(&sale.id, "two units back", |s| s.remaining == 2).await;
    assert_eq!((after.sold, after.held, after.confirmed), (1, 0, 1));
}

/// The line outlives the hot state: after a restart (embedded), or a Redis that lost the sale's
/// keys (production), the buyers waiting keep their places, and a unit given back goes to the
/// head as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_outlives_a_restart() {
    let mut settings = AppOptions::default().settings;
    if production_backends() {
        crate::helpers::use_shared_production_backends(&mut settings);
    }
    let app =
        spawn_app_with(AppOptions { settings: settings.clone(), manual_clock: Some(T0), ..AppOptions::default() })
            .await;
    let sale = app.hold_sale(1, 1, 1).await;
    let (ann, cy, dee) = (app.buyer_token("ann", "Ann"), app.buyer_token("cy", "Cy"), app.buyer_token("dee", "Dee"));
    let held = app.held(&ann, &sale.id, 1, "k").await;
    assert_eq!(app.join(&cy, &sale.id, 1).await.unwrap().position, 1);
    assert_eq!(app.join(&dee, &sale.id, 1).await.unwrap().position, 2);
    let data_dir = app.data_dir.clone();
    app.stop().await.unwrap();
    if production_backends() {
        // The hot state lost with Redis: the restarted node rebuilds it from the record.
        let uri = settings.redis_uri.clone().unwrap();
        let topology = flashsale::store::redis::Topology::of(&uri, settings.redis_cluster);
        let mut redis = flashsale::store::redis::Connection::open(&uri, topology).await.unwrap();
        let keys: Vec<String> =
            ::redis::cmd("KEYS").arg(format!("{}*", settings.redis_key_prefix)).query_async(&mut redis).await.unwrap();
        assert!(!keys.is_empty());
        let _: i64 = ::redis::cmd("DEL").arg(&keys).query_async(&mut redis).await.unwrap();
    }

    let restarted = spawn_app_with(AppOptions {
        settings,
        manual_clock: Some(T0),
        data_dir: Some(data_dir),
        ..AppOptions::default()
    })
    .await;
    // Joining again answers the place kept.
    let place = restarted.join(&dee, &sale.id, 1).await.unwrap();
    assert_eq!((place.position, place.length), (2, 2));
    restarted.cancel(&ann, &held.id).await.unwrap();
    let served = restarted
        .eventually("Cy served from the restored line", || async {
            restarted.my_orders(&cy, &sale.id).await.into_iter().find(|o| o.status() == OrderStatus::Held)
        })
        .await;
    assert_eq!(served.idempotency_key, format!("waitlist-{}", served.id));
    assert_eq!(restarted.join(&dee, &sale.id, 1).await.unwrap().position, 1, "Dee moved up");
    assert_refused(&refusal(restarted.buy(&ann, &sale.id, 1, "k2").await), Code::ResourceExhausted, "SOLD_OUT");
}
