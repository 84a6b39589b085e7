//! The real binary killed with SIGKILL in the middle of a rush, then restarted on the same data
//! directory: every acknowledged order is still there, once, and the sale carries on; a
//! consumer of the order feed, cut off by the kill, resumes from its cursor and sees every
//! order once.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashsale::clock::{Clock, SystemClock};
use flashsale::domain::{Role, UnixMillis};
use flashsale_client::pb;
use flashsale_client::pb::admin_service_client::AdminServiceClient;
use flashsale_client::pb::feeds_service_client::FeedsServiceClient;
use flashsale_client::pb::purchase_service_client::PurchaseServiceClient;
use futures::StreamExt;
use tonic::Code;

use crate::helpers::{authed, clean_env, reason, timestamp, BinaryServer};

const SECRET: &str = "crash-test-secret-that-is-long-enough-for-hs256";
const ALLOCATED: i64 = 3_000;
const PER_USER_LIMIT: u32 = 3;
const BUYERS: usize = 600;
/// Acknowledged orders after which the server is killed.
const KILL_AFTER: usize = 500;
const RUSH_WORKERS: usize = 32;

/// `flashsale serve` on `data_dir` (embedded backend) and free ports, once it prints that it
/// listens; killed (SIGKILL) when dropped, so a failing test never leaves it behind.
fn start_server(data_dir: &Path) -> BinaryServer {
    let mut args: Vec<OsString> =
        ["serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--data-dir"].map(OsString::from).into();
    args.push(data_dir.into());
    args.extend(
        ["--jwt-secret", SECRET, "--buyer-purchases-per-sec", "0", "--ip-purchases-per-sec", "0"].map(OsString::from),
    );
    BinaryServer::start(args)
}

/// An admin token printed by `flashsale token`, as an operator would get it.
fn admin_token_from_cli(data_dir: &Path) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    command.args(["token", "--role", "admin", "--jwt-secret", SECRET, "--data-dir"]).arg(data_dir);
    clean_env(&mut command);
    let output = command.output().expect("run flashsale token");
    assert!(output.status.success(), "flashsale token failed: {}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).expect("utf-8 token").trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token:?}");
    token
}

fn buyer_id(i: usize) -> String {
    format!("crash-buyer-{i}")
}

/// Quantities of buyer `i`'s purchases, 3 units in all (the per-user limit).
fn plan(i: usize) -> &'static [u32] {
    if i % 2 == 0 {
        &[1, 1, 1]
    } else {
        &[2, 1]
    }
}

/// A purchase the server acknowledged, or one in flight when it died (outcome unknown).
#[derive(Debug, Clone)]
struct Attempt {
    buyer: usize,
    key: String,
    quantity: u32,
    order_id: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_survive_kill_9() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let keys = flashsale::auth::JwtKeys::new(SECRET.as_bytes());
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..=BUYERS)
            .map(|i| {
                keys.issue(
                    &buyer_id(i),
                    &format!("Crash buyer {i}"),
                    Role::Buyer,
                    SystemClock.now(),
                    Duration::from_secs(3600),
                )
                .0
            })
            .collect(),
    );

    let dir = data_dir.path().to_path_buf();
    let mut server = tokio::task::spawn_blocking(move || start_server(&dir)).await.unwrap();
    let admin = admin_token_from_cli(data_dir.path());
    let channel = server.channel().await;
    let mut admin_api = AdminServiceClient::new(channel.clone());
    let product = admin_api
        .create_product(authed(
            pb::CreateProductRequest {
                name: "Crash sneaker".into(),
                description: String::new(),
                initial_inventory: ALLOCATED,
            },
            &admin,
        ))
        .await
        .expect("create product")
        .into_inner();
    let sale = admin_api
        .create_sale(authed(
            pb::CreateSaleRequest {
                queue: None,
                product_id: product.id.clone(),
                allocated: ALLOCATED,
                unit_price: Some(pb::Money { amount_minor: 4999, currency: "USD".into() }),
                per_user_limit: PER_USER_LIMIT,
                max_per_purchase: 3,
                start_time: None,
                end_time: Some(timestamp(UnixMillis(SystemClock.now().0 + 3_600_000))),
                hold_seconds: 0,
            },
            &admin,
        ))
        .await
        .expect("create sale")
        .into_inner();

    // A watcher follows the sale until the server dies, remembering the newest version it saw.
    let mut watch = FeedsServiceClient::new(channel.clone())
        .watch_sale(pb::WatchSaleRequest { sale_id: sale.id.clone() })
        .await
        .expect("watch the sale")
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut newest = 0;
        while let Ok(Some(snapshot)) = watch.message().await {
            newest = newest.max(snapshot.version);
        }
        newest
    });

    // A consumer of the order feed, dropping its stream now and then, until the server dies.
    let consumer = flashsale_client::Client::from_channel(channel.clone()).with_token(&admin).unwrap();
    let seen = Arc::new(Mutex::new(crate::orders::Seen::default()));
    let follower = tokio::spawn({
        let (seen, sale_id) = (seen.clone(), sale.id.clone());
        async move {
            loop {
                let cursor = seen.lock().unwrap().cursor;
                let Ok(mut stream) = consumer.follow_orders(cursor, &sale_id).await else { return };
                let take = rand::Rng::random_range(&mut rand::rng(), 1..80);
                for _ in 0..take {
                    match stream.message().await {
                        Ok(Some(event)) => seen.lock().unwrap().take(event),
                        Ok(None) | Err(_) => return, // the server is gone
                    }
                }
            }
        }
    });

    // The rush: workers take buyers in turn; each buyer makes its purchases one after another.
    let next_buyer = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let mut rush = tokio::task::JoinSet::new();
    for _ in 0..RUSH_WORKERS {
        let (next_buyer, acknowledged, stop, attempts) =
            (next_buyer.clone(), acknowledged.clone(), stop.clone(), attempts.clone());
        let (tokens, sale_id) = (tokens.clone(), sale.id.clone());
        let mut purchase = PurchaseServiceClient::new(channel.clone());
        rush.spawn(async move {
            'buyers: while !stop.load(Ordering::SeqCst) {
                let buyer = next_buyer.fetch_add(1, Ordering::SeqCst);
                if buyer >= BUYERS {
                    break;
                }
                for (n, &quantity) in plan(buyer).iter().enumerate() {
                    let key = format!("{}-purchase-{n}", buyer_id(buyer));
                    let request = pb::PurchaseRequest {
                        admission_pass: String::new(),
                        sale_id: sale_id.clone(),
                        quantity,
                        idempotency_key: key.clone(),
                    };
                    let outcome = purchase.purchase(authed(request, &tokens[buyer])).await;
                    let order_id = match outcome {
                        Ok(response) => {
                            let order = response.into_inner().order.expect("an order");
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                            Some(order.id)
                        }
                        Err(_) => None,
                    };
                    let failed = order_id.is_none();
                    attempts.lock().unwrap().push(Attempt { buyer, key, quantity, order_id });
                    if failed {
                        break 'buyers; // the server is gone
                    }
                }
            }
        });
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acknowledged.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(tokio::time::Instant::now() < deadline, "the rush stalled before {KILL_AFTER} orders");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), rush.join_all())
        .await
        .expect("the rush's calls fail once the server is gone");
    tokio::time::timeout(Duration::from_secs(60), follower).await.expect("the feed ends with the server").unwrap();
    let seen_before_kill = seen.lock().unwrap().events.len();
    drop(channel);

    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let acked: Vec<&Attempt> = attempts.iter().filter(|a| a.order_id.is_some()).collect();
    let in_flight: Vec<&Attempt> = attempts.iter().filter(|a| a.order_id.is_none()).collect();
    let planned: usize = (0..BUYERS).map(|i| plan(i).len()).sum();
    assert!(acked.len() >= KILL_AFTER);
    assert!(acked.len() < planned, "the kill should come mid-rush ({} of {planned} acknowledged)", acked.len());

    // Restart on the same data directory.
    let dir = data_dir.path().to_path_buf();
    let server = tokio::task::spawn_blocking(move || start_server(&dir)).await.unwrap();
    let channel = server.channel().await;
    let purchase = PurchaseServiceClient::new(channel.clone());
    let mut admin_api = AdminServiceClient::new(channel.clone());

    let sale_id: &str = &sale.id;

    // The restarted process goes on numbering versions above everything published before.
    let newest_before = tokio::time::timeout(Duration::from_secs(30), watcher).await.expect("the stream ends").unwrap();
    assert!(newest_before > 0);
    let first_after = FeedsServiceClient::new(channel.clone())
        .watch_sale(pb::WatchSaleRequest { sale_id: sale.id.clone() })
        .await
        .expect("watch after the restart")
        .into_inner()
        .message()
        .await
        .expect("a snapshot")
        .expect("a first snapshot");
    assert!(
        first_after.version > newest_before,
        "the version went back across the restart: {newest_before} before, {} after",
        first_after.version
    );

    // Every acknowledged order is there, as acknowledged.
    let checks = futures::stream::iter(acked.iter().map(|attempt| {
        let mut purchase = purchase.clone();
        let token = tokens[attempt.buyer].clone();
        async move {
            let order_id = attempt.order_id.clone().unwrap();
            let order = purchase
                .get_order(authed(pb::GetOrderRequest { order_id: order_id.clone() }, &token))
                .await
                .unwrap_or_else(|e| {
                    panic!("acknowledged order {order_id} of {} is lost: {e:?}", buyer_id(attempt.buyer))
                })
                .into_inner();
            assert_eq!(order.id, order_id);
            assert_eq!(order.sale_id, sale_id);
            assert_eq!(order.buyer_id, buyer_id(attempt.buyer));
            assert_eq!(order.quantity, attempt.quantity);
            assert_eq!(order.idempotency_key, attempt.key);
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>();
    checks.await;

    // Retrying an acknowledged purchase answers the first order and changes nothing.
    let retries = futures::stream::iter(acked.iter().map(|attempt| {
        let mut purchase = purchase.clone();
        let token = tokens[attempt.buyer].clone();
        let sale_id = sale.id.clone();
        async move {
            let request = pb::PurchaseRequest {
                admission_pass: String::new(),
                sale_id,
                quantity: attempt.quantity,
                idempotency_key: attempt.key.clone(),
            };
            let response = purchase
                .purchase(authed(request, &token))
                .await
                .unwrap_or_else(|e| panic!("retry of {} failed: {e:?}", attempt.key))
                .into_inner();
            assert_eq!(response.order.map(|o| o.id), attempt.order_id, "a retry must return the same order");
            assert!(response.replayed, "a retry of {} must say it was replayed", attempt.key);
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>();
    retries.await;

    // Purchases whose answer was lost in the crash are safe to retry with the same key: they
    // were either stored (replayed) or not (made now), never twice.
    for attempt in &in_flight {
        let request = pb::PurchaseRequest {
            admission_pass: String::new(),
            sale_id: sale.id.clone(),
            quantity: attempt.quantity,
            idempotency_key: attempt.key.clone(),
        };
        purchase
            .clone()
            .purchase(authed(request, &tokens[attempt.buyer]))
            .await
            .unwrap_or_else(|e| panic!("retry of in-flight {} failed: {e:?}", attempt.key));
    }

    // The counters agree with the orders: sold == every buyer's units, remaining == the rest.
    let touched: HashSet<usize> = attempts.iter().map(|a| a.buyer).collect();
    let lists = futures::stream::iter(touched.iter().copied().map(|buyer| {
        let mut purchase = purchase.clone();
        let token = tokens[buyer].clone();
        let sale_id = sale.id.clone();
        async move {
            let orders = purchase
                .list_my_orders(authed(pb::ListMyOrdersRequest { sale_id, ..Default::default() }, &token))
                .await
                .expect("list my orders")
                .into_inner()
                .orders;
            (buyer, orders)
        }
    }))
    .buffer_unordered(16)
    .collect::<HashMap<usize, Vec<pb::Order>>>()
    .await;
    let mut units_by_buyer = HashMap::new();
    for (buyer, orders) in &lists {
        let keys: HashSet<&str> = orders.iter().map(|o| o.idempotency_key.as_str()).collect();
        assert_eq!(keys.len(), orders.len(), "an order was stored twice for {}: {orders:?}", buyer_id(*buyer));
        assert!(orders.iter().all(|o| o.buyer_id == buyer_id(*buyer) && o.sale_id == sale_id));
        units_by_buyer.insert(*buyer, orders.iter().map(|o| i64::from(o.quantity)).sum::<i64>());
    }
    for attempt in &acked {
        assert!(
            lists[&attempt.buyer].iter().any(|o| Some(&o.id) == attempt.order_id.as_ref()),
            "ListMyOrders of {} misses {}",
            buyer_id(attempt.buyer),
            attempt.key
        );
    }
    let sold_by_orders: i64 = units_by_buyer.values().sum();
    let after = admin_api
        .get_sale(authed(pb::GetSaleRequest { sale_id: sale.id.clone() }, &admin))
        .await
        .expect("get sale")
        .into_inner();
    assert_eq!(after.status(), pb::SaleStatus::Active);
    assert_eq!(after.sold, sold_by_orders, "sold must equal the units in every buyer's orders");
    assert_eq!(after.remaining, ALLOCATED - after.sold);

    // Per-buyer counts were rebuilt: a buyer at the limit stays there.
    let full: Vec<usize> = units_by_buyer
        .iter()
        .filter(|&(_, &units)| units == i64::from(PER_USER_LIMIT))
        .map(|(&buyer, _)| buyer)
        .take(20)
        .collect();
    assert!(!full.is_empty(), "some buyers should have reached the limit before the kill");
    for buyer in full {
        let request = pb::PurchaseRequest {
            admission_pass: String::new(),
            sale_id: sale.id.clone(),
            quantity: 1,
            idempotency_key: "one-more".into(),
        };
        let refused = purchase
            .clone()
            .purchase(authed(request, &tokens[buyer]))
            .await
            .expect_err("a buyer at the per-user limit cannot buy more after a restart");
        assert_eq!(
            (refused.code(), reason(&refused).as_str()),
            (Code::ResourceExhausted, "USER_LIMIT_REACHED"),
            "{refused:?}"
        );
    }

    // And the sale keeps selling.
    let newcomer = &tokens[BUYERS];
    let request = pb::PurchaseRequest {
        admission_pass: String::new(),
        sale_id: sale.id.clone(),
        quantity: 2,
        idempotency_key: "after-restart".into(),
    };
    let response = purchase.clone().purchase(authed(request, newcomer)).await.expect("the sale sells after a restart");
    let response = response.into_inner();
    assert!(!response.replayed);
    let response_id = response.order.expect("an order").id;
    let last = admin_api
        .get_sale(authed(pb::GetSaleRequest { sale_id: sale.id.clone() }, &admin))
        .await
        .expect("get sale")
        .into_inner();
    assert_eq!((last.sold, last.remaining), (after.sold + 2, after.remaining - 2));

    // The feed consumer resumes from its cursor on the restarted server: every order the record
    // holds (the rush's, the in-flight retries', the newcomer's), once each.
    let all_orders: HashSet<String> = lists.values().flatten().map(|o| o.id.clone()).chain([response_id]).collect();
    let consumer = flashsale_client::Client::from_channel(channel.clone()).with_token(&admin).unwrap();
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen_before_kill > 0, "the consumer saw events before the kill");
    crate::orders::follow_with_drops(&|| consumer.clone(), &sale.id, &mut seen, |s| s.events.len() >= all_orders.len())
        .await;
    assert!(seen.duplicates.is_empty(), "events delivered twice across the kill: {:?}", seen.duplicates);
    let created: HashSet<String> = seen.events.keys().map(|(id, _)| id.clone()).collect();
    assert_eq!(created, all_orders, "the feed holds exactly the orders of the record");
    assert!(seen.events.keys().all(|(_, kind)| *kind == pb::OrderEventKind::Created as i32));
    drop(server);
}
