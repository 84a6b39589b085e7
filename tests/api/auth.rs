//! Accounts and tokens: registration and login, email normalisation, refused credentials and
//! tokens, and who may call what.

use std::time::Duration;

use flashsale::auth::JwtKeys;
use flashsale::domain::{Role, UnixMillis};
use flashsale_client::pb;
use prost::Message;
use tonic::Code;

use crate::helpers::{
    assert_refused, authed, base64url_encode, error_metadata, jwt_claims, refusal, spawn_app, TestApp,
};

async fn register(app: &TestApp, email: &str, name: &str, password: &str) -> Result<pb::AuthResponse, tonic::Status> {
    app.auth()
        .register(pb::RegisterRequest { email: email.into(), display_name: name.into(), password: password.into() })
        .await
        .map(tonic::Response::into_inner)
}

async fn login(app: &TestApp, email: &str, password: &str) -> Result<pb::AuthResponse, tonic::Status> {
    app.auth()
        .login(pb::LoginRequest { email: email.into(), password: password.into() })
        .await
        .map(tonic::Response::into_inner)
}

/// A purchase by `token` that needs nothing but a valid token to succeed.
async fn purchase_with(app: &TestApp, token: &str) -> Result<pb::PurchaseResponse, tonic::Status> {
    let sale = app.active_sale(5, 0, 1).await;
    app.buy(token, &sale.id, 1, "auth-check").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_user_logs_in_and_buys() {
    let app = spawn_app().await;
    let registered = register(&app, "dana@example.com", "Dana", "s3cret-pass").await.expect("register");
    let user = registered.user.expect("the account");
    assert_eq!(user.email, "dana@example.com");
    assert_eq!(user.display_name, "Dana");

    let logged_in = login(&app, "dana@example.com", "s3cret-pass").await.expect("login");
    assert_eq!(logged_in.user.as_ref().map(|u| &u.id), Some(&user.id), "login speaks for the same account");
    assert!(logged_in.expires_at.is_some_and(|t| t.seconds * 1000 > app.now().0), "expiry in the future");

    let order = purchase_with(&app, &logged_in.access_token).await.expect("the login token buys").order.expect("order");
    assert_eq!(order.buyer_id, user.id, "the order belongs to the token's subject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_are_normalised() {
    let app = spawn_app().await;
    let registered = register(&app, " Ann@Example.COM ", "Ann", "ann-password").await.expect("register");
    assert_eq!(registered.user.expect("user").email, "ann@example.com");

    login(&app, "ann@example.com", "ann-password").await.expect("login with the normalised email");
    login(&app, "  ANN@example.com", "ann-password").await.expect("login ignores case and spaces");

    let status = refusal(register(&app, "ANN@example.com", "Ann Again", "another-password").await);
    assert_refused(&status, Code::AlreadyExists, "EMAIL_TAKEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_never_say_which_part_was_wrong() {
    let app = spawn_app().await;
    register(&app, "eve@example.com", "Eve", "eve-password").await.expect("register");

    let wrong_password = refusal(login(&app, "eve@example.com", "not-her-password").await);
    assert_refused(&wrong_password, Code::Unauthenticated, "BAD_CREDENTIALS");
    let unknown_email = refusal(login(&app, "nobody@example.com", "eve-password").await);
    assert_refused(&unknown_email, Code::Unauthenticated, "BAD_CREDENTIALS");
    assert_eq!(wrong_password.message(), unknown_email.message(), "the two refusals read the same");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_needs_a_token() {
    let app = spawn_app().await;
    let sale = app.active_sale(5, 0, 1).await;
    let status = refusal(
        app.purchase()
            .purchase(tonic::Request::new(pb::PurchaseRequest {
                admission_pass: String::new(),
                sale_id: sale.id.clone(),
                quantity: 1,
                idempotency_key: "anonymous".into(),
            }))
            .await,
    );
    assert_refused(&status, Code::Unauthenticated, "TOKEN_MISSING");
    assert_eq!(app.get_sale(&sale.id).await.remaining, 5);
}

fn tampered(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("a JWT");
    let mut chars: Vec<char> = signature.chars().collect();
    // The first character carries six signature bits (the last one carries padding bits too).
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", chars.into_iter().collect::<String>())
}

fn unsigned_admin_token() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = base64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims =
        serde_json::json!({ "sub": "intruder", "name": "Intruder", "role": "admin", "iat": now, "exp": now + 3600 });
    format!("{header}.{}.", base64url_encode(claims.to_string().as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_tokens_are_refused() {
    let app = spawn_app().await;
    let now = app.now();
    let good = app.buyer_token("honest", "Honest");
    purchase_with(&app, &good).await.expect("the untouched token is accepted");

    let (expired, _) =
        app.keys.issue("late", "Late", Role::Buyer, UnixMillis(now.0 - 7_200_000), Duration::from_secs(60));
    let other_keys = JwtKeys::new(b"some-other-secret-that-is-32-bytes-long!!");
    let (foreign, _) = other_keys.issue("stranger", "Stranger", Role::Admin, now, Duration::from_secs(3600));
    let cases = [
        ("expired", expired, "EXPIRED"),
        ("tampered signature", tampered(&good), "BAD_SIGNATURE"),
        ("signed with another secret", foreign, "BAD_SIGNATURE"),
        ("alg none", unsigned_admin_token(), "UNSUPPORTED_ALGORITHM"),
        ("not a JWT", "x".into(), "MALFORMED"),
        ("garbled header", "eyJhbGciOiJIUzI1NiJ9t.e30.AAAA".into(), "MALFORMED"),
    ];
    for (what, token, problem) in cases {
        let status = refusal(purchase_with(&app, &token).await);
        assert_eq!(
            (status.code(), crate::helpers::reason(&status).as_str()),
            (Code::Unauthenticated, "TOKEN_INVALID"),
            "{what} token: {status:?}"
        );
        assert_eq!(error_metadata(&status, "problem").as_deref(), Some(problem), "{what} token: {status:?}");
        // Plain words, not the verifier's: no "JSON error", "Base64 error", "InvalidSignature".
        let message = status.message();
        assert!(
            !message.contains("error") && !message.contains("Error") && !message.contains("Invalid"),
            "{what}: {message}"
        );
    }
    let status =
        refusal(app.admin().list_sales(authed(pb::ListSalesRequest::default(), &unsigned_admin_token())).await);
    assert_refused(&status, Code::Unauthenticated, "TOKEN_INVALID");
}

/// Calls every AdminService method with `token`; returns each method's name and outcome.
async fn call_every_admin_method(app: &TestApp, token: &str) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let mut admin = app.admin();
    let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_string();
    let product =
        pb::CreateProductRequest { name: "Forbidden".into(), description: String::new(), initial_inventory: 5 };
    let sale = pb::CreateSaleRequest {
        queue: None,
        product_id: id.clone(),
        allocated: 1,
        unit_price: Some(pb::Money { amount_minor: 100, currency: "USD".into() }),
        per_user_limit: 0,
        max_per_purchase: 1,
        start_time: None,
        end_time: Some(crate::helpers::timestamp(UnixMillis(app.now().0 + 3_600_000))),
        hold_seconds: 0,
    };
    vec![
        ("CreateProduct", admin.create_product(authed(product, token)).await.map(drop)),
        ("ListProducts", admin.list_products(authed(pb::ListProductsRequest::default(), token)).await.map(drop)),
        (
            "GetProduct",
            admin.get_product(authed(pb::GetProductRequest { product_id: id.clone() }, token)).await.map(drop),
        ),
        (
            "AddStock",
            admin.add_stock(authed(pb::AddStockRequest { product_id: id.clone(), units: 1 }, token)).await.map(drop),
        ),
        ("CreateSale", admin.create_sale(authed(sale, token)).await.map(drop)),
        ("StartSale", admin.start_sale(authed(pb::StartSaleRequest { sale_id: id.clone() }, token)).await.map(drop)),
        ("EndSale", admin.end_sale(authed(pb::EndSaleRequest { sale_id: id.clone() }, token)).await.map(drop)),
        ("GetSale", admin.get_sale(authed(pb::GetSaleRequest { sale_id: id.clone() }, token)).await.map(drop)),
        ("ListSales", admin.list_sales(authed(pb::ListSalesRequest::default(), token)).await.map(drop)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_token_cannot_call_any_admin_method() {
    let app = spawn_app().await;
    let token = app.buyer_token("buyer", "Buyer");
    for (method, outcome) in call_every_admin_method(&app, &token).await {
        let status = outcome.expect_err(method);
        assert_eq!(
            (status.code(), crate::helpers::reason(&status).as_str()),
            (Code::PermissionDenied, "ADMIN_REQUIRED"),
            "{method}: {status:?}"
        );
    }
    let products = app
        .admin()
        .list_products(authed(pb::ListProductsRequest::default(), &app.admin_token()))
        .await
        .expect("list products")
        .into_inner();
    assert!(products.products.is_empty(), "the refused CreateProduct created nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_user_is_a_buyer() {
    let app = spawn_app().await;
    let registered = register(&app, "finn@example.com", "Finn", "finn-password").await.expect("register");
    assert_eq!(registered.user.as_ref().expect("user").role(), pb::Role::Buyer);
    let claims = jwt_claims(&registered.access_token);
    assert_eq!(claims["role"], "buyer");
    assert_eq!(claims["name"], "Finn");
    assert_eq!(claims["sub"], registered.user.as_ref().unwrap().id.as_str());

    for (method, outcome) in call_every_admin_method(&app, &registered.access_token).await {
        let status = outcome.expect_err(method);
        assert_eq!(
            (status.code(), crate::helpers::reason(&status).as_str()),
            (Code::PermissionDenied, "ADMIN_REQUIRED"),
            "{method}: {status:?}"
        );
    }
    purchase_with(&app, &registered.access_token).await.expect("a buyer may buy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_never_echoed() {
    let app = spawn_app().await;
    let password = "hunter2-but-longer";
    let registered = register(&app, "gus@example.com", "Gus", password).await.expect("register");
    let logged_in = login(&app, "gus@example.com", password).await.expect("login");
    for response in [&registered, &logged_in] {
        let bytes = response.encode_to_vec();
        assert!(!bytes.windows(password.len()).any(|w| w == password.as_bytes()), "the response carries the password");
        let claims = jwt_claims(&response.access_token).to_string();
        assert!(!claims.contains(password), "the token carries the password: {claims}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_and_auth_need_no_token() {
    let app = spawn_app().await;
    let sale = app.active_sale(5, 0, 1).await;

    let snapshot = app
        .feeds()
        .watch_sale(tonic::Request::new(pb::WatchSaleRequest { sale_id: sale.id.clone() }))
        .await
        .expect("WatchSale without a token")
        .into_inner()
        .message()
        .await
        .expect("a first snapshot")
        .expect("the stream is open");
    assert_eq!((snapshot.sale_id.as_str(), snapshot.remaining), (sale.id.as_str(), 5));

    let board = app
        .feeds()
        .leaderboard(tonic::Request::new(pb::LeaderboardRequest { sale_id: sale.id.clone(), top_n: 3 }))
        .await
        .expect("Leaderboard without a token")
        .into_inner()
        .message()
        .await
        .expect("a first leaderboard")
        .expect("the stream is open");
    assert_eq!(board.sale_id, sale.id);

    register(&app, "hal@example.com", "Hal", "hal-password").await.expect("Register without a token");
    login(&app, "hal@example.com", "hal-password").await.expect("Login without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_required() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 1).await;
    let token = app.buyer_token("schemer", "Schemer");
    let with_header = |value: String, key: &str| {
        let mut request = tonic::Request::new(pb::PurchaseRequest {
            admission_pass: String::new(),
            sale_id: sale.id.clone(),
            quantity: 1,
            idempotency_key: key.into(),
        });
        request.metadata_mut().insert("authorization", value.parse().unwrap());
        request
    };
    for (i, scheme) in ["Bearer", "bearer", "BEARER", "bEARER"].into_iter().enumerate() {
        app.purchase()
            .purchase(with_header(format!("{scheme} {token}"), &format!("k{i}")))
            .await
            .unwrap_or_else(|status| panic!("{scheme}: {status:?}"));
    }
    for value in [token.clone(), format!("Token {token}"), "Bearer".into()] {
        let status = refusal(app.purchase().purchase(with_header(value.clone(), "refused")).await);
        assert_refused(&status, Code::Unauthenticated, "TOKEN_MISSING");
        assert!(status.message().contains("authorization: Bearer <token>"), "shows the expected form: {status:?}");
    }
}

/// Sign-ins beyond the hashing pool's capacity are refused at once, with a hint of when to retry,
/// and the pool has the threads it was given. The real binary, so that its threads can be counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_beyond_the_hashing_pool_are_refused_at_once() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let server = crate::helpers::BinaryServer::start([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--data-dir",
        data_dir,
        "--jwt-secret",
        "sign-in-storm-secret-long-enough-for-hs256",
        "--ip-logins-per-sec",
        "0",
        "--auth-cores",
        "0.5",
        "--auth-queue",
        "0",
    ]);
    let channel = server.channel().await;
    let outcomes = futures::future::join_all((0..24).map(|i| {
        let mut auth = pb::auth_service_client::AuthServiceClient::new(channel.clone());
        async move {
            auth.register(pb::RegisterRequest {
                email: format!("storm{i}@example.com"),
                display_name: format!("Storm {i}"),
                password: "correct horse".into(),
            })
            .await
        }
    }))
    .await;
    let registered = outcomes.iter().filter(|o| o.is_ok()).count();
    let busy: Vec<&tonic::Status> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(registered >= 1, "the pool serves while full: {busy:?}");
    assert!(!busy.is_empty(), "24 sign-ins at once on one thread with no queue: some are refused");
    for status in busy {
        assert_refused(status, Code::Unavailable, "SIGN_IN_BUSY");
        let retry = tonic_types::StatusExt::get_error_details(status).retry_info().and_then(|r| r.retry_delay);
        assert!(retry.is_some_and(|d| d > Duration::ZERO), "RetryInfo says when to retry: {status:?}");
    }
    // Counted once the server answered (it prints its address before it starts the service).
    let hashing_threads = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("flashsale-auth"))
        .count();
    assert_eq!(hashing_threads, 1, "the pool runs the threads it was given");
}
