//! Every error reason the embedded server can reach, each with its gRPC code and its
//! `google.rpc.ErrorInfo` reason (and details where the contract promises them).

use std::time::Duration;

use flashsale::domain::UnixMillis;
use flashsale_client::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    assert_refused, authed, error_metadata, refusal, spawn_app, spawn_app_with, timestamp, violated_fields, AppOptions,
    TestApp,
};

/// A well-formed id that names nothing.
const UNKNOWN_ID: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

fn assert_invalid_field(status: &tonic::Status, field: &str) {
    assert_refused(status, Code::InvalidArgument, "INVALID_FIELD");
    let fields = violated_fields(status);
    assert!(fields.iter().any(|f| f == field), "BadRequest names {fields:?}, not {field:?}: {status:?}");
}

fn hours_from_now(app: &TestApp, hours: i64) -> prost_types::Timestamp {
    timestamp(UnixMillis(app.now().0 + hours * 3_600_000))
}

/// A sale request for `product_id` that is valid as it stands.
fn sale_request(app: &TestApp, product_id: &str, allocated: i64) -> pb::CreateSaleRequest {
    pb::CreateSaleRequest {
        queue: None,
        product_id: product_id.into(),
        allocated,
        unit_price: Some(pb::Money { amount_minor: 500, currency: "USD".into() }),
        per_user_limit: 0,
        max_per_purchase: 5,
        start_time: None,
        end_time: Some(hours_from_now(app, 1)),
        hold_seconds: 0,
    }
}

async fn try_create_sale(app: &TestApp, request: pb::CreateSaleRequest) -> Result<pb::Sale, tonic::Status> {
    app.admin().create_sale(authed(request, &app.admin_token())).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_fields_are_validated() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 3).await;
    let token = app.buyer_token("buyer", "Buyer");

    assert_invalid_field(&refusal(app.buy(&token, &sale.id, 0, "k-zero").await), "quantity");
    assert_invalid_field(&refusal(app.buy(&token, &sale.id, 4, "k-four").await), "quantity");
    assert_invalid_field(&refusal(app.buy(&token, &sale.id, 1, "").await), "idempotency_key");
    assert_invalid_field(&refusal(app.buy(&token, "not a sale id!", 1, "k-id").await), "sale_id");
    assert_invalid_field(&refusal(app.buy(&token, "", 1, "k-empty").await), "sale_id");

    let sale = app.get_sale(&sale.id).await;
    assert_eq!((sale.sold, sale.remaining), (0, 10), "refused purchases took nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_fields_are_validated() {
    let app = spawn_app().await;
    let admin = app.admin_token();

    let status = refusal(
        app.admin()
            .create_product(authed(
                pb::CreateProductRequest { name: "Socks".into(), description: String::new(), initial_inventory: -1 },
                &admin,
            ))
            .await,
    );
    assert_invalid_field(&status, "initial_inventory");

    let product = app.create_product(100).await;
    let ends_before_it_starts = pb::CreateSaleRequest {
        start_time: Some(hours_from_now(&app, 2)),
        end_time: Some(hours_from_now(&app, 1)),
        ..sale_request(&app, &product.id, 10)
    };
    assert_invalid_field(&refusal(try_create_sale(&app, ends_before_it_starts).await), "end_time");

    let lower_case_currency = pb::CreateSaleRequest {
        unit_price: Some(pb::Money { amount_minor: 500, currency: "usd".into() }),
        ..sale_request(&app, &product.id, 10)
    };
    assert_invalid_field(&refusal(try_create_sale(&app, lower_case_currency).await), "unit_price.currency");

    let nothing_allocated = sale_request(&app, &product.id, 0);
    assert_invalid_field(&refusal(try_create_sale(&app, nothing_allocated).await), "allocated");

    let status = refusal(app.admin().get_sale(authed(pb::GetSaleRequest { sale_id: "{sale:1}".into() }, &admin)).await);
    assert_invalid_field(&status, "sale_id");

    let product = app
        .admin()
        .get_product(authed(pb::GetProductRequest { product_id: product.id.clone() }, &admin))
        .await
        .expect("get product")
        .into_inner();
    assert_eq!(product.inventory, 100, "refused sales took no inventory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_invalid_tokens_are_unauthenticated() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 1).await;
    let request = || pb::PurchaseRequest {
        admission_pass: String::new(),
        sale_id: sale.id.clone(),
        quantity: 1,
        idempotency_key: "k".into(),
    };

    let status = refusal(app.purchase().purchase(tonic::Request::new(request())).await);
    assert_refused(&status, Code::Unauthenticated, "TOKEN_MISSING");

    let status = refusal(app.purchase().purchase(authed(request(), "not.a.token")).await);
    assert_refused(&status, Code::Unauthenticated, "TOKEN_INVALID");

    let status = refusal(app.admin().list_sales(tonic::Request::new(pb::ListSalesRequest::default())).await);
    assert_refused(&status, Code::Unauthenticated, "TOKEN_MISSING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_bad_credentials() {
    let app = spawn_app().await;
    app.auth()
        .register(pb::RegisterRequest {
            email: "cat@example.com".into(),
            display_name: "Cat".into(),
            password: "correct horse".into(),
        })
        .await
        .expect("register");
    let status = refusal(
        app.auth().login(pb::LoginRequest { email: "cat@example.com".into(), password: "wrong horse".into() }).await,
    );
    assert_refused(&status, Code::Unauthenticated, "BAD_CREDENTIALS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_may_not_administer() {
    let app = spawn_app().await;
    let token = app.buyer_token("buyer", "Buyer");
    let status = refusal(
        app.admin()
            .create_product(authed(
                pb::CreateProductRequest { name: "Mine".into(), description: String::new(), initial_inventory: 1 },
                &token,
            ))
            .await,
    );
    assert_refused(&status, Code::PermissionDenied, "ADMIN_REQUIRED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let buyer = app.buyer_token("buyer", "Buyer");

    let status =
        refusal(app.admin().get_product(authed(pb::GetProductRequest { product_id: UNKNOWN_ID.into() }, &admin)).await);
    assert_refused(&status, Code::NotFound, "PRODUCT_NOT_FOUND");
    let status = refusal(
        app.admin().add_stock(authed(pb::AddStockRequest { product_id: UNKNOWN_ID.into(), units: 5 }, &admin)).await,
    );
    assert_refused(&status, Code::NotFound, "PRODUCT_NOT_FOUND");
    let status = refusal(try_create_sale(&app, sale_request(&app, UNKNOWN_ID, 1)).await);
    assert_refused(&status, Code::NotFound, "PRODUCT_NOT_FOUND");

    let status = refusal(app.admin().get_sale(authed(pb::GetSaleRequest { sale_id: UNKNOWN_ID.into() }, &admin)).await);
    assert_refused(&status, Code::NotFound, "SALE_NOT_FOUND");
    let status =
        refusal(app.admin().start_sale(authed(pb::StartSaleRequest { sale_id: UNKNOWN_ID.into() }, &admin)).await);
    assert_refused(&status, Code::NotFound, "SALE_NOT_FOUND");
    let status = refusal(app.admin().end_sale(authed(pb::EndSaleRequest { sale_id: UNKNOWN_ID.into() }, &admin)).await);
    assert_refused(&status, Code::NotFound, "SALE_NOT_FOUND");
    assert_refused(&refusal(app.buy(&buyer, UNKNOWN_ID, 1, "k").await), Code::NotFound, "SALE_NOT_FOUND");
    let status = match app.feeds().watch_sale(pb::WatchSaleRequest { sale_id: UNKNOWN_ID.into() }).await {
        Err(status) => status,
        Ok(stream) => refusal(stream.into_inner().message().await),
    };
    assert_refused(&status, Code::NotFound, "SALE_NOT_FOUND");

    let status =
        refusal(app.purchase().get_order(authed(pb::GetOrderRequest { order_id: UNKNOWN_ID.into() }, &buyer)).await);
    assert_refused(&status, Code::NotFound, "ORDER_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_registers_once() {
    let app = spawn_app().await;
    let register = || pb::RegisterRequest {
        email: "dup@example.com".into(),
        display_name: "Dup".into(),
        password: "long enough".into(),
    };
    app.auth().register(register()).await.expect("first registration");
    let status = refusal(app.auth().register(register()).await);
    assert_refused(&status, Code::AlreadyExists, "EMAIL_TAKEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_sale_refuses_purchases_until_started() {
    let app = spawn_app().await;
    let product = app.create_product(10).await;
    let sale = app
        .create_sale(pb::CreateSaleRequest {
            start_time: Some(hours_from_now(&app, 1)),
            end_time: Some(hours_from_now(&app, 2)),
            ..sale_request(&app, &product.id, 10)
        })
        .await;
    assert_eq!(sale.status(), pb::SaleStatus::Scheduled);
    let token = app.buyer_token("early-bird", "Early");

    let status = refusal(app.buy(&token, &sale.id, 1, "too-early").await);
    assert_refused(&status, Code::FailedPrecondition, "SALE_NOT_STARTED");
    let start = error_metadata(&status, "start_time").unwrap_or_default();
    let rfc3339 = start.len() >= 20
        && start.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && start.as_bytes()[4] == b'-'
        && start.as_bytes()[10] == b'T';
    assert!(rfc3339, "SALE_NOT_STARTED carries the start time in RFC 3339 as `start_time`: {status:?}");

    let started = app
        .admin()
        .start_sale(authed(pb::StartSaleRequest { sale_id: sale.id.clone() }, &app.admin_token()))
        .await
        .expect("start sale")
        .into_inner();
    assert_eq!(started.status(), pb::SaleStatus::Active);
    app.buy(&token, &sale.id, 1, "on-time").await.expect("the started sale sells");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_sale_refuses_purchases() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 5).await;
    let ended = app
        .admin()
        .end_sale(authed(pb::EndSaleRequest { sale_id: sale.id.clone() }, &app.admin_token()))
        .await
        .expect("end sale")
        .into_inner();
    assert_eq!((ended.status(), ended.end_reason()), (pb::SaleStatus::Ended, pb::EndReason::ByAdmin));

    let status = refusal(app.buy(&app.buyer_token("late", "Late"), &sale.id, 1, "too-late").await);
    assert_refused(&status, Code::FailedPrecondition, "SALE_ENDED");
    assert!(
        error_metadata(&status, "end_reason").is_some_and(|r| r.contains("BY_ADMIN")),
        "SALE_ENDED names why: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_idempotency_key_is_refused() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 5).await;
    let token = app.buyer_token("reuser", "Reuser");
    app.buy(&token, &sale.id, 1, "key").await.expect("first");
    let status = refusal(app.buy(&token, &sale.id, 3, "key").await);
    assert_refused(&status, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_cannot_allocate_more_than_the_inventory() {
    let app = spawn_app().await;
    let product = app.create_product(10).await;
    let status = refusal(try_create_sale(&app, sale_request(&app, &product.id, 11)).await);
    assert_refused(&status, Code::FailedPrecondition, "INSUFFICIENT_INVENTORY");
    assert_eq!(error_metadata(&status, "inventory").as_deref(), Some("10"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_sale_says_so() {
    let app = spawn_app().await;
    let sale = app.active_sale(2, 0, 2).await;
    app.buy(&app.buyer_token("first", "First"), &sale.id, 2, "all").await.expect("buy every unit");
    let status = refusal(app.buy(&app.buyer_token("second", "Second"), &sale.id, 1, "none-left").await);
    assert_refused(&status, Code::ResourceExhausted, "SOLD_OUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_partial_fills() {
    let app = spawn_app().await;
    let sale = app.active_sale(3, 0, 2).await;
    app.buy(&app.buyer_token("first", "First"), &sale.id, 2, "two").await.expect("buy two of three");
    let status = refusal(app.buy(&app.buyer_token("second", "Second"), &sale.id, 2, "two-more").await);
    assert_refused(&status, Code::ResourceExhausted, "INSUFFICIENT_STOCK");
    assert_eq!(error_metadata(&status, "remaining").as_deref(), Some("1"), "{status:?}");
    assert_eq!(app.get_sale(&sale.id).await.remaining, 1, "nothing was partly filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_is_enforced() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 2, 2).await;
    let token = app.buyer_token("limited", "Limited");
    app.buy(&token, &sale.id, 2, "two").await.expect("up to the limit");
    let status = refusal(app.buy(&token, &sale.id, 1, "one-more").await);
    assert_refused(&status, Code::ResourceExhausted, "USER_LIMIT_REACHED");
    assert_eq!(error_metadata(&status, "limit").as_deref(), Some("2"), "{status:?}");
    assert_eq!(error_metadata(&status, "bought").as_deref(), Some("2"), "{status:?}");
}

fn assert_rate_limited_with_retry_info(status: &tonic::Status) {
    assert_refused(status, Code::ResourceExhausted, "RATE_LIMITED");
    let retry = status.get_error_details().retry_info().cloned();
    let delay = retry.and_then(|r| r.retry_delay);
    assert!(delay.is_some_and(|d| d > Duration::ZERO), "RATE_LIMITED without a retry delay: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_purchasing_too_fast_is_rate_limited() {
    let mut options = AppOptions::default();
    options.settings.buyer_purchases_per_sec = 1;
    let app = spawn_app_with(options).await;
    let sale = app.active_sale(100, 0, 1).await;
    let token = app.buyer_token("hammer", "Hammer");

    let attempts = (0..5).map(|i| {
        let (app, token, sale_id) = (&app, &token, sale.id.as_str());
        async move { app.buy(token, sale_id, 1, &format!("burst-{i}")).await }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let limited: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(!limited.is_empty(), "5 purchases at once under a limit of 1/s were all accepted");
    for status in &limited {
        assert_rate_limited_with_retry_info(status);
    }

    let other = app.buyer_token("patient", "Patient");
    app.buy(&other, &sale.id, 1, "calm").await.expect("the limit is per buyer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_too_fast_is_rate_limited() {
    let mut options = AppOptions::default();
    options.settings.ip_logins_per_sec = 1;
    let app = spawn_app_with(options).await;

    let attempts = (0..5).map(|_| {
        let app = &app;
        async move {
            app.auth()
                .login(pb::LoginRequest { email: "nobody@example.com".into(), password: "guessing-123".into() })
                .await
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let mut limited = 0;
    for outcome in &outcomes {
        let status = outcome.as_ref().expect_err("an unknown email never logs in");
        if crate::helpers::reason(status) == "RATE_LIMITED" {
            assert_rate_limited_with_retry_info(status);
            limited += 1;
        } else {
            assert_refused(status, Code::Unauthenticated, "BAD_CREDENTIALS");
        }
    }
    assert!(limited >= 1, "5 logins at once under a limit of 1/s were all let through: {outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_scheduled_sale_can_be_started() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 1).await;
    assert_eq!(sale.status(), pb::SaleStatus::Active);
    let status = refusal(
        app.admin().start_sale(authed(pb::StartSaleRequest { sale_id: sale.id.clone() }, &app.admin_token())).await,
    );
    assert_refused(&status, Code::FailedPrecondition, "SALE_NOT_SCHEDULED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_cleanly() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 1).await;
    let token = app.buyer_token("big", "Big");

    let huge_key = "k".repeat(1024 * 1024);
    let status = refusal(app.buy(&token, &sale.id, 1, &huge_key).await);
    assert_refused(&status, Code::ResourceExhausted, "MESSAGE_TOO_LARGE");
    let limit = flashsale::Settings::default().max_message_bytes.to_string();
    assert_eq!(error_metadata(&status, "limit_bytes"), Some(limit.clone()), "{status:?}");
    assert!(status.message().contains(&limit), "the message names the limit: {status:?}");
    let size: usize = error_metadata(&status, "size_bytes").and_then(|s| s.parse().ok()).expect("size_bytes");
    assert!(size > 1024 * 1024, "{size}");

    app.buy(&token, &sale.id, 1, "normal").await.expect("the server still serves afterwards");
    assert_eq!(app.get_sale(&sale.id).await.sold, 1, "the oversized purchase took nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_the_request_message_are_an_invalid_argument() {
    let app = spawn_app().await;
    let token = app.buyer_token("garbled", "Garbled");
    // Field 1 with wire type 7, which protobuf does not have; then a length running past the end.
    for body in [vec![0x0f, 0x01], vec![0x0a, 0x7f, b'x']] {
        for (path, token) in [
            ("/flashsale.v1.AuthService/Login", None),
            ("/flashsale.v1.PurchaseService/Purchase", Some(token.as_str())),
            ("/flashsale.v1.FeedsService/WatchSale", None),
        ] {
            let status = refusal(app.raw_call(path, body.clone(), token).await);
            assert_refused(&status, Code::InvalidArgument, "MALFORMED_MESSAGE");
            let message = status.message().to_lowercase();
            assert!(
                !message.contains("protobuf") && !message.contains("wire type") && !message.contains("buffer"),
                "no decoder internals: {status:?}"
            );
            assert!(status.message().contains(path), "the message names the method: {status:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_is_unimplemented_and_named() {
    let app = spawn_app().await;
    // With a token: an authenticated service checks it before it looks at the method.
    let token = app.buyer_token("explorer", "Explorer");
    for path in
        ["/flashsale.v1.PurchaseService/Refund", "/flashsale.v1.NoSuchService/Do", "/flashsale.v1.FeedsService/Watch"]
    {
        let status = refusal(app.raw_call(path, Vec::new(), Some(&token)).await);
        assert_refused(&status, Code::Unimplemented, "UNKNOWN_METHOD");
        assert!(status.message().contains(path), "the message names the method: {status:?}");
        assert_eq!(error_metadata(&status, "method").as_deref(), Some(path));
    }
}

/// Five logins at once, the i-th with the headers `headers(i)`; how many were rate limited
/// (the others are refused as bad credentials).
async fn limited_logins(
    app: &crate::helpers::TestApp,
    headers: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> usize {
    let attempts = (0..5).map(|i| {
        let mut request = tonic::Request::new(pb::LoginRequest {
            email: "nobody@example.com".into(),
            password: "guessing-123".into(),
        });
        for (name, value) in headers(i) {
            request.metadata_mut().append(name, value.parse().unwrap());
        }
        let mut auth = app.auth();
        async move { auth.login(request).await }
    });
    let mut limited = 0;
    for outcome in futures::future::join_all(attempts).await {
        let status = outcome.expect_err("an unknown email never logs in");
        if crate::helpers::reason(&status) == "RATE_LIMITED" {
            limited += 1;
        } else {
            assert_refused(&status, Code::Unauthenticated, "BAD_CREDENTIALS");
        }
    }
    limited
}

/// Behind a trusted proxy each forwarded client has its own per-address limit; from a peer that
/// is not trusted, forwarded addresses are ignored: every attempt counts against the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limits_follow_forwarded_addresses_only_from_trusted_proxies() {
    let mut options = AppOptions::default();
    options.settings.ip_logins_per_sec = 1;
    options.settings.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let behind_proxy = spawn_app_with(options).await;
    // Five clients, one attempt each: none is limited.
    let apart = limited_logins(&behind_proxy, |i| vec![("x-forwarded-for", format!("198.51.100.{}", 10 + i))]).await;
    assert_eq!(apart, 0, "five forwarded clients were limited as one");
    let envoy =
        limited_logins(&behind_proxy, |i| vec![("x-envoy-external-address", format!("198.51.100.{}", 20 + i))]).await;
    assert_eq!(envoy, 0, "five clients named by Envoy were limited as one");
    // One client forging the start of the list: the proxy's own entry (rightmost) counts.
    let forged = limited_logins(&behind_proxy, |i| {
        vec![("x-forwarded-for", format!("203.0.113.{i}, 198.51.100.30, 127.0.0.1"))]
    })
    .await;
    assert!(forged >= 1, "one client behind forged addresses escaped its limit");

    let mut options = AppOptions::default();
    options.settings.ip_logins_per_sec = 1;
    let direct = spawn_app_with(options).await;
    let spoofed = limited_logins(&direct, |i| {
        vec![
            ("x-forwarded-for", format!("198.51.100.{}", 40 + i)),
            ("x-envoy-external-address", format!("198.51.100.{}", 50 + i)),
        ]
    })
    .await;
    assert!(spoofed >= 1, "an untrusted peer escaped its limit by naming other addresses");
}
