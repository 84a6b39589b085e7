//! Operators' view: the real `grpcurl` against the server, through server reflection.

use std::path::PathBuf;
use std::process::Command;

use flashsale::domain::UnixMillis;
use serde_json::Value;

use crate::helpers::{spawn_app, timestamp, TestApp};

/// The grpcurl binary: `$GRPCURL`, else `.tools/bin/grpcurl` (both set up by `scripts/test`).
fn grpcurl_path() -> PathBuf {
    let path = match std::env::var_os("GRPCURL") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/grpcurl"),
    };
    assert!(
        path.is_file(),
        "grpcurl not found at {} (GRPCURL unset or wrong): run scripts/test, which installs it",
        path.display()
    );
    path
}

pub(crate) struct Outcome {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs grpcurl with `args` (off the async runtime, which serves the test server).
pub(crate) async fn grpcurl(args: Vec<String>) -> Outcome {
    let path = grpcurl_path();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&path).args(&args).output().unwrap_or_else(|e| panic!("run {}: {e}", path.display()))
    })
    .await
    .unwrap();
    Outcome {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `grpcurl -plaintext [-H authorization] -d DATA ADDR METHOD`, expecting JSON back.
async fn call(app: &TestApp, token: Option<&str>, method: &str, data: Value) -> Value {
    let outcome = grpcurl(call_args(app, token, method, &data)).await;
    assert!(outcome.success, "grpcurl {method} failed:\n{}{}", outcome.stdout, outcome.stderr);
    serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|e| panic!("{method} printed no JSON ({e}): {}", outcome.stdout))
}

fn call_args(app: &TestApp, token: Option<&str>, method: &str, data: &Value) -> Vec<String> {
    let mut args = vec!["-plaintext".to_owned(), "-max-time".into(), "20".into()];
    if let Some(token) = token {
        args.extend(["-H".to_owned(), format!("authorization: Bearer {token}")]);
    }
    args.extend(["-d".to_owned(), data.to_string(), app.addr.to_string(), method.to_owned()]);
    args
}

/// An int64 field of grpcurl's JSON: a string, or absent when 0.
fn int(value: &Value, field: &str) -> i64 {
    match &value[field] {
        Value::Null => 0,
        Value::String(text) => text.parse().unwrap_or_else(|e| panic!("{field}: {text:?}: {e}")),
        Value::Number(number) => number.as_i64().unwrap(),
        other => panic!("{field} is not an integer: {other}"),
    }
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("{field} missing from {value}"))
}

/// RFC 3339 for `offset_ms` from now, as an operator would type it.
fn rfc3339_in(offset_ms: i64) -> String {
    let now = flashsale::clock::Clock::now(&flashsale::clock::SystemClock);
    timestamp(UnixMillis((now.0 + offset_ms) / 1000 * 1000)).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_describes_the_services() {
    let app = spawn_app().await;

    let list = grpcurl(vec!["-plaintext".into(), app.addr.to_string(), "list".into()]).await;
    assert!(list.success, "grpcurl list failed: {}", list.stderr);
    for service in [
        "flashsale.v1.AdminService",
        "flashsale.v1.AuthService",
        "flashsale.v1.FeedsService",
        "flashsale.v1.PurchaseService",
        "grpc.health.v1.Health",
    ] {
        assert!(list.stdout.lines().any(|line| line.trim() == service), "{service} not listed:\n{}", list.stdout);
    }

    let describe = grpcurl(vec![
        "-plaintext".into(),
        app.addr.to_string(),
        "describe".into(),
        "flashsale.v1.PurchaseService".into(),
    ])
    .await;
    assert!(describe.success, "grpcurl describe failed: {}", describe.stderr);
    assert!(describe.stdout.contains("service PurchaseService"), "{}", describe.stdout);
    assert!(
        describe
            .stdout
            .contains("rpc Purchase ( .flashsale.v1.PurchaseRequest ) returns ( .flashsale.v1.PurchaseResponse );"),
        "{}",
        describe.stdout
    );
    assert!(describe.stdout.contains("rpc ListMyOrders"), "{}", describe.stdout);

    let message = grpcurl(vec![
        "-plaintext".into(),
        app.addr.to_string(),
        "describe".into(),
        "flashsale.v1.PurchaseRequest".into(),
    ])
    .await;
    assert!(message.success, "{}", message.stderr);
    assert!(message.stdout.contains("string idempotency_key = 3;"), "{}", message.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_sale_with_grpcurl() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let admin = Some(admin.as_str());

    // Without a token the Admin API refuses, and grpcurl says why.
    let refused = grpcurl(call_args(
        &app,
        None,
        "flashsale.v1.AdminService/CreateProduct",
        &serde_json::json!({"name": "Lamp", "initialInventory": 50}),
    ))
    .await;
    assert!(!refused.success, "CreateProduct without a token must fail: {}", refused.stdout);
    assert!(refused.stderr.contains("Unauthenticated"), "{}", refused.stderr);

    let product = call(
        &app,
        admin,
        "flashsale.v1.AdminService/CreateProduct",
        serde_json::json!({"name": "Lamp", "description": "brass", "initialInventory": 50}),
    )
    .await;
    let product_id = text(&product, "id").to_owned();
    assert!(!product_id.is_empty());
    assert_eq!(text(&product, "name"), "Lamp");
    assert_eq!(int(&product, "inventory"), 50);

    let stocked = call(
        &app,
        admin,
        "flashsale.v1.AdminService/AddStock",
        serde_json::json!({"productId": product_id, "units": 25}),
    )
    .await;
    assert_eq!(text(&stocked, "id"), product_id);
    assert_eq!(int(&stocked, "inventory"), 75);

    let end = rfc3339_in(3_600_000);
    let sale = call(
        &app,
        admin,
        "flashsale.v1.AdminService/CreateSale",
        serde_json::json!({
            "productId": product_id,
            "allocated": 30,
            "unitPrice": {"amountMinor": 1500, "currency": "EUR"},
            "perUserLimit": 2,
            "maxPerPurchase": 1,
            "endTime": end,
        }),
    )
    .await;
    let sale_id = text(&sale, "id").to_owned();
    assert_eq!(text(&sale, "status"), "SALE_STATUS_ACTIVE", "{sale}");
    assert_eq!((int(&sale, "allocated"), int(&sale, "sold"), int(&sale, "remaining")), (30, 0, 30));
    assert_eq!(text(&sale, "endTime"), end);
    assert_eq!(int(&sale["unitPrice"], "amountMinor"), 1500);
    assert_eq!(text(&sale["unitPrice"], "currency"), "EUR");
    assert_eq!(sale["perUserLimit"], 2);

    let product =
        call(&app, admin, "flashsale.v1.AdminService/GetProduct", serde_json::json!({"productId": product_id})).await;
    assert_eq!(int(&product, "inventory"), 45, "the sale took 30 of 75");

    // A buyer buys with grpcurl too.
    let buyer = app.buyer_token("cli-buyer", "Cli Buyer");
    let bought = call(
        &app,
        Some(&buyer),
        "flashsale.v1.PurchaseService/Purchase",
        serde_json::json!({"saleId": sale_id, "quantity": 1, "idempotencyKey": "cli-1"}),
    )
    .await;
    assert_eq!(text(&bought["order"], "saleId"), sale_id);
    assert_eq!(text(&bought["order"], "buyerId"), "cli-buyer");
    assert_eq!(int(&bought["order"]["total"], "amountMinor"), 1500);

    // A scheduled sale, started by hand.
    let scheduled = call(
        &app,
        admin,
        "flashsale.v1.AdminService/CreateSale",
        serde_json::json!({
            "productId": product_id,
            "allocated": 10,
            "unitPrice": {"amountMinor": 900, "currency": "EUR"},
            "maxPerPurchase": 2,
            "startTime": rfc3339_in(3_600_000),
            "endTime": rfc3339_in(7_200_000),
        }),
    )
    .await;
    assert_eq!(text(&scheduled, "status"), "SALE_STATUS_SCHEDULED", "{scheduled}");
    let scheduled_id = text(&scheduled, "id").to_owned();
    let started =
        call(&app, admin, "flashsale.v1.AdminService/StartSale", serde_json::json!({"saleId": scheduled_id})).await;
    assert_eq!(text(&started, "id"), scheduled_id);
    assert_eq!(text(&started, "status"), "SALE_STATUS_ACTIVE", "{started}");
    assert!(text(&started, "startTime") < text(&scheduled, "startTime"), "the start time becomes now: {started}");

    let product =
        call(&app, admin, "flashsale.v1.AdminService/GetProduct", serde_json::json!({"productId": product_id})).await;
    assert_eq!(int(&product, "inventory"), 35);
    let sold = call(&app, admin, "flashsale.v1.AdminService/GetSale", serde_json::json!({"saleId": sale_id})).await;
    assert_eq!((int(&sold, "sold"), int(&sold, "remaining")), (1, 29));
}
