//! Purchases outlive their callers: a client that gives up (deadline, dropped call, closed
//! connection) never leaves a reservation in flight, a retry of its key never hangs, and a sale
//! rushed by impatient clients still sells exactly its allocation and ends SOLD_OUT. On the
//! backend `spawn_app` runs on (embedded, or Redis + MongoDB with ORPHAN_AFTER_MS at its default,
//! so nothing here leans on the orphan sweep).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flashsale::auth::{Caller, JwtKeys};
use flashsale::backends::Backends;
use flashsale::clock::{Clock, SystemClock};
use flashsale::domain::{IdempotencyKey, Money, SaleId, SaleRules, SaleStatus, UnixMillis, UserId};
use flashsale::service::{App, NewSale};
use flashsale::Settings;
use flashsale_client::pb;
use futures::StreamExt;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use crate::gates::{Gates, Step};
use crate::helpers::{
    assert_refused, authed, is_sold_out, poll_until, production_backends, refusal, spawn_app_with,
    use_shared_production_backends, AppOptions, SECRET,
};

/// The application itself, in process, on gated backends: a test drops a purchase's future
/// exactly where a client's cancel would (tonic drops the request future at its next `.await`).
struct InProcess {
    app: Arc<App>,
    gates: Arc<Gates>,
    _data: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn in_process() -> InProcess {
    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings { data_dir: data.path().into(), ..Settings::default() };
    if production_backends() {
        use_shared_production_backends(&mut settings);
    }
    let gates = Arc::new(Gates::default());
    let backends = gates.wrap(Backends::open(&settings).await.expect("open the backends"));
    let shutdown = CancellationToken::new();
    let keys = JwtKeys::new(SECRET.as_bytes());
    let app = App::start(backends, keys, &settings, Arc::new(SystemClock), shutdown.clone()).await.expect("start");
    InProcess { app, gates, _data: data, shutdown }
}

impl InProcess {
    /// A product and an active sale of `allocated` units, one per purchase.
    async fn sale(&self, allocated: i64) -> SaleId {
        let product = self.app.create_product("Gated".into(), String::new(), allocated).await.unwrap();
        let now = SystemClock.now();
        let rules = SaleRules {
            queue: None,
            allocated,
            per_user_limit: 0,
            max_per_purchase: 1,
            start: now,
            end: UnixMillis(now.0 + 3_600_000),
            unit_price: Money::parse(500, "EUR").unwrap(),
            hold_seconds: 0,
        };
        self.app.create_sale(NewSale { product_id: product.id, rules, start_now: true }).await.unwrap().sale_id
    }

    /// Polls the sale until it shows `sold` units sold and nothing in flight.
    async fn settles_at(&self, sale: &SaleId, sold: i64) {
        poll_until("the abandoned purchase to settle", Duration::from_secs(10), || async {
            let view = self.app.sale_view(sale).await.unwrap();
            (view.sold == sold && view.sold + view.remaining == view.rules.allocated).then_some(())
        })
        .await;
    }
}

fn caller(id: &str) -> Caller {
    Caller { user_id: UserId::parse(id).unwrap(), display_name: "Ann".into(), role: flashsale::domain::Role::Buyer }
}

fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::parse(text).unwrap()
}

/// A purchase whose caller gives up at `step` (its future dropped there) still ends durable and
/// confirmed; a retry with its key gets that order.
async fn abandoned_at(step: Step) {
    let run = in_process().await;
    let sale = run.sale(3).await;
    let ann = caller("ann");
    let stop = run.gates.arm(step);
    let mut purchase = Box::pin(run.app.purchase(&ann, sale.clone(), 1, key("k1")));
    tokio::select! {
        done = &mut purchase => panic!("the purchase finished before {step:?}: {done:?}"),
        _ = stop.reached => {}
    }
    drop(purchase); // the caller gives up exactly here
    let _ = stop.go.send(()); // (the stop is gone if the purchase was dropped with it)

    run.settles_at(&sale, 1).await;
    let orders = run.app.list_orders(&ann.user_id, Some(&sale)).await.unwrap();
    assert_eq!(orders.len(), 1, "the abandoned purchase is durable, once");
    let retry = run.app.purchase(&ann, sale.clone(), 1, key("k1")).await.expect("the retry is answered");
    assert!(retry.replayed, "the retry is answered with the first order");
    assert_eq!(retry.order.id, orders[0].id);
    run.settles_at(&sale, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_right_after_the_reservation_still_buys() {
    abandoned_at(Step::Reserved).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_during_the_commit_still_buys() {
    abandoned_at(Step::Commit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_before_the_confirm_still_buys() {
    abandoned_at(Step::Confirm).await;
}

/// A purchase whose commit fails and whose caller gives up before the release: the units still
/// go back, and a retry with the key buys afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_before_a_failed_commit_is_released_gets_its_units_back() {
    let run = in_process().await;
    let sale = run.sale(2).await;
    let ann = caller("ann");
    run.gates.fail_next_commit();
    let stop = run.gates.arm(Step::Release);
    let mut purchase = Box::pin(run.app.purchase(&ann, sale.clone(), 1, key("k1")));
    tokio::select! {
        done = &mut purchase => panic!("the purchase finished before its release: {done:?}"),
        _ = stop.reached => {}
    }
    drop(purchase);
    let _ = stop.go.send(()); // (the stop is gone if the purchase was dropped with it)

    run.settles_at(&sale, 0).await;
    let view = run.app.sale_view(&sale).await.unwrap();
    assert_eq!(view.remaining, 2, "the reserved unit is back on sale");
    let retry = run.app.purchase(&ann, sale.clone(), 1, key("k1")).await.expect("a fresh purchase");
    assert!(!retry.replayed, "nothing was bought the first time, so the retry buys afresh");
    run.settles_at(&sale, 1).await;
}

/// Ending a sale by an admin who leaves halfway (after the hot state stopped selling, during the
/// record's end) still ends it in the record, returns the unsold units, and tells the hot state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_sale_whose_caller_leaves_still_ends_the_sale() {
    let run = in_process().await;
    let sale = run.sale(4).await;
    // The record's end goes through the committer's queue: a stopped commit holds it behind.
    let stop = run.gates.arm(Step::Commit);
    let bob = caller("bob");
    let mut buying = Box::pin(run.app.purchase(&bob, sale.clone(), 1, key("b1")));
    tokio::select! {
        done = &mut buying => panic!("finished early: {done:?}"),
        _ = stop.reached => {}
    }
    let mut ending = Box::pin(run.app.end_sale(&sale));
    assert!(futures::poll!(&mut ending).is_pending());
    drop(ending); // the admin gives up while the end waits behind the commit
    let _ = stop.go.send(()); // (the stop is gone if the purchase was dropped with it)
    drop(buying);

    // The bought unit stays sold, the other three go back to the product, once.
    poll_until("the abandoned end to finish", Duration::from_secs(10), || async {
        let view = run.app.sale_view(&sale).await.unwrap();
        let inventory = run.app.get_product(&view.product_id).await.unwrap().inventory;
        (view.status == SaleStatus::Ended && view.sold == 1 && view.remaining == 3 && inventory == 3).then_some(())
    })
    .await;
}

/// Over the socket: a retry of a key whose first attempt is stuck waits at most
/// `--in-flight-wait-ms` and answers UNAVAILABLE; once the first settles, every retry (several
/// at once) gets its one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_abandoned_key_is_answered_within_the_bound() {
    let gates = Arc::new(Gates::default());
    let mut options = AppOptions::default();
    options.settings.in_flight_wait = Duration::from_millis(300);
    options.wrap = Some(Box::new({
        let gates = gates.clone();
        move |backends| gates.wrap(backends)
    }));
    let app = spawn_app_with(options).await;
    let sale = app.active_sale(5, 0, 1).await;
    let token = app.buyer_token("carol", "Carol");

    let stop = gates.arm(Step::Commit);
    let first = {
        let (app_channel, token, sale) = (app.channel.clone(), token.clone(), sale.id.clone());
        tokio::spawn(async move {
            let mut client = flashsale_client::pb::purchase_service_client::PurchaseServiceClient::new(app_channel);
            let request = pb::PurchaseRequest {
                admission_pass: String::new(),
                sale_id: sale,
                quantity: 1,
                idempotency_key: "stuck".into(),
            };
            client.purchase(authed(request, &token)).await
        })
    };
    stop.reached.await.unwrap();
    first.abort(); // the first caller gives up

    let waited = refusal(app.buy(&token, &sale.id, 1, "stuck").await);
    assert_refused(&waited, Code::Unavailable, "BACKEND_UNAVAILABLE");

    let _ = stop.go.send(()); // (the stop is gone if the purchase was dropped with it)
    let retries: Vec<_> = futures::future::join_all((0..6).map(|_| app.buy(&token, &sale.id, 1, "stuck"))).await;
    let ids: HashSet<String> = retries
        .into_iter()
        .map(|r| {
            let r = r.expect("a retry after the first attempt settled is answered");
            assert!(r.replayed);
            r.order.unwrap().id
        })
        .collect();
    assert_eq!(ids.len(), 1, "every retry names the one order");
    assert_eq!(app.my_orders(&token, &sale.id).await.len(), 1);
    assert_eq!(app.get_sale(&sale.id).await.sold, 1);
}

/// How an impatient buyer gives up.
#[derive(Debug, Clone, Copy)]
enum GiveUp {
    /// A gRPC deadline of 0-20 ms (the server drops the call when it passes).
    Deadline,
    /// The client drops the call after 0-20 ms (HTTP/2 RST_STREAM).
    DropCall,
    /// The client closes its connection after 0-20 ms.
    CloseConnection,
}

/// Half the callers give up at random points; then patient buyers ask for the rest: the sale
/// sells exactly its allocation, ends SOLD_OUT, and every acknowledged order is in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_callers_give_up_and_the_sale_still_sells_exactly_its_allocation() {
    const ALLOCATED: i64 = 300;
    // Fewer than the units, one each: the sale is still open when the impatient callers are gone.
    const IMPATIENT: usize = 250;
    let app = spawn_app_with(AppOptions::default()).await;
    let sale = app.active_sale(ALLOCATED, 0, 2).await;
    let addr = app.addr;

    // Impatient buyers: each attempt has its own key; many never learn their outcome.
    let impatient: Vec<Option<pb::Order>> = futures::stream::iter(0..IMPATIENT)
        .map(|i| {
            let token = app.buyer_token(&format!("impatient-{}", i % 150), "Impatient");
            let (channel, sale_id) = (app.channel.clone(), sale.id.clone());
            async move {
                let (mode, within) = {
                    let mut rng = rand::rng();
                    let mode = [GiveUp::Deadline, GiveUp::DropCall, GiveUp::CloseConnection][rng.random_range(0..3)];
                    (mode, Duration::from_micros(rng.random_range(0..=20_000)))
                };
                let request = pb::PurchaseRequest {
                    admission_pass: String::new(),
                    sale_id,
                    quantity: 1,
                    idempotency_key: format!("imp-{i}"),
                };
                let mut request = authed(request, &token);
                match mode {
                    GiveUp::Deadline => {
                        request.set_timeout(within);
                        let mut client =
                            flashsale_client::pb::purchase_service_client::PurchaseServiceClient::new(channel);
                        client.purchase(request).await.ok().and_then(|r| r.into_inner().order)
                    }
                    GiveUp::DropCall => {
                        let mut client =
                            flashsale_client::pb::purchase_service_client::PurchaseServiceClient::new(channel);
                        tokio::time::timeout(within, client.purchase(request)).await.ok()?.ok()?.into_inner().order
                    }
                    GiveUp::CloseConnection => {
                        let own = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.ok()?;
                        let call = tokio::spawn(async move {
                            let mut client =
                                flashsale_client::pb::purchase_service_client::PurchaseServiceClient::new(own);
                            client.purchase(request).await
                        });
                        tokio::time::sleep(within).await;
                        call.abort(); // drops the call and the only handle of its connection
                        call.await.ok()?.ok()?.into_inner().order
                    }
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    // The callers are gone; what they reserved settles: nothing stays in flight (as the metric
    // read from the live state at each scrape says).
    let gauge = format!("flashsale_units_in_flight{{sale=\"{}\"}}", sale.id);
    poll_until("nothing in flight after the impatient callers left", Duration::from_secs(10), || async {
        (app.metric(&gauge).await == Some(0.0)).then_some(())
    })
    .await;
    let live = app.get_sale(&sale.id).await;
    assert_eq!(live.status, pb::SaleStatus::Active as i32);
    assert_eq!(live.sold + live.remaining, live.allocated, "nothing in flight: {live:?}");

    // Patient buyers: buy until the sale says it has nothing left. Like any client they try a
    // key again when the backends were too slow to answer (BACKEND_UNAVAILABLE: the MongoDB
    // test server is shared by every test of the process).
    let patient: Vec<Vec<pb::Order>> = futures::stream::iter(0..40)
        .map(|b| {
            let token = app.buyer_token(&format!("patient-{b}"), "Patient");
            let (app, sale_id) = (&app, sale.id.clone());
            async move {
                let mut orders = Vec::new();
                let mut unavailable = 0;
                loop {
                    match app.buy(&token, &sale_id, 1, &format!("pat-{b}-{}", orders.len())).await {
                        Ok(response) => orders.push(response.order.unwrap()),
                        Err(status) if is_sold_out(&status) => return orders,
                        Err(status) if status.code() == tonic::Code::Unavailable && unavailable < 20 => {
                            unavailable += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => panic!("a patient buyer was refused: {status:?}"),
                    }
                }
            }
        })
        .buffer_unordered(40)
        .collect()
        .await;

    let sale = app.get_sale(&sale.id).await;
    assert_eq!(sale.sold, ALLOCATED, "every unit is sold while buyers still ask: {sale:?}");
    assert_eq!(sale.remaining, 0);
    assert_eq!(sale.status, pb::SaleStatus::Ended as i32, "the sale ends: {sale:?}");
    assert_eq!(sale.end_reason, pb::EndReason::SoldOut as i32);

    // The record holds exactly the allocation, and every order anyone was told about.
    let mut stored: HashMap<String, u32> = HashMap::new();
    let buyers = (0..150).map(|i| format!("impatient-{i}")).chain((0..40).map(|b| format!("patient-{b}")));
    for buyer in buyers {
        for order in app.my_orders(&app.buyer_token(&buyer, "x"), &sale.id).await {
            assert!(stored.insert(order.id.clone(), order.quantity).is_none());
        }
    }
    assert_eq!(stored.values().map(|&q| i64::from(q)).sum::<i64>(), ALLOCATED, "orders add up to the allocation");
    for order in impatient.iter().flatten().chain(patient.iter().flatten()) {
        assert_eq!(stored.get(&order.id), Some(&order.quantity), "acknowledged order {} is stored", order.id);
    }
    let abandoned = IMPATIENT - impatient.iter().flatten().count();
    assert!(abandoned > 0, "some impatient callers did give up");
}
