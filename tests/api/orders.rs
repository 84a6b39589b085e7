//! Orders out to the shop: paged listings (stable while a rush inserts orders, tokens refused
//! across listings, filters or when altered), the fulfillment role, the order feed followed by
//! a consumer that drops its stream at random points, and its cursor's limits. The same tests
//! run on Redis + MongoDB (`FLASHSALE_TEST_BACKEND=production`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use flashsale::domain::{Role, UnixMillis};
use flashsale_client::pb;
use futures::StreamExt;
use pb::{OrderEventKind, OrderStatus};
use rand::Rng;
use tonic::transport::Channel;
use tonic::Code;

use crate::helpers::{
    assert_refused, authed, error_metadata, production_backends, refusal, spawn_app, spawn_app_with, AppOptions,
    TestApp,
};

/// Buys one unit for each token, 32 at a time; the acknowledged order ids.
async fn buy_each(
    purchase: pb::purchase_service_client::PurchaseServiceClient<Channel>,
    tokens: Vec<String>,
    sale: String,
    tag: String,
) -> Vec<String> {
    futures::stream::iter(tokens.into_iter().enumerate())
        .map(|(i, token)| {
            let mut purchase = purchase.clone();
            let request = pb::PurchaseRequest {
                admission_pass: String::new(),
                sale_id: sale.clone(),
                quantity: 1,
                idempotency_key: format!("{tag}-{i}"),
            };
            async move {
                purchase.purchase(authed(request, &token)).await.expect("a purchase").into_inner().order.unwrap().id
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

fn buyers(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| app.buyer_token(&format!("{prefix}-{i}"), &format!("Buyer {i}"))).collect()
}

impl TestApp {
    async fn sale_orders_page(
        &self,
        token: &str,
        request: pb::ListSaleOrdersRequest,
    ) -> Result<pb::ListSaleOrdersResponse, tonic::Status> {
        self.orders().list_sale_orders(authed(request, token)).await.map(tonic::Response::into_inner)
    }

    async fn fulfillment_token(&self) -> String {
        self.admin()
            .issue_service_token(authed(
                pb::IssueServiceTokenRequest {
                    role: pb::Role::Fulfillment.into(),
                    name: "warehouse".into(),
                    ttl_seconds: 600,
                },
                &self.admin_token(),
            ))
            .await
            .expect("issue a fulfillment token")
            .into_inner()
            .access_token
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn walking_pages_while_orders_arrive_repeats_none_and_misses_none_that_existed() {
    let app = spawn_app().await;
    let sale = app.active_sale(2_000, 0, 1).await;
    let admin = app.admin_token();
    let before: HashSet<String> = buy_each(app.purchase(), buyers(&app, "early", 300), sale.id.clone(), "early".into())
        .await
        .into_iter()
        .collect();

    let mut seen = Vec::new();
    let mut made_during = HashSet::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let ask =
            pb::ListSaleOrdersRequest { sale_id: sale.id.clone(), page_size: 37, page_token, ..Default::default() };
        let page = app.sale_orders_page(&admin, ask).await.expect("a page");
        if pages == 0 {
            assert_eq!(page.total_size, 300, "the first page counts the orders then");
        } else {
            assert_eq!(page.total_size, 0, "later pages do not count");
        }
        assert!(page.orders.len() <= 37);
        seen.extend(page.orders.into_iter().map(|o| o.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        // A burst of new orders between two pages, as during a rush.
        if pages <= 12 {
            let tokens = buyers(&app, &format!("during-{pages}"), 15);
            made_during.extend(buy_each(app.purchase(), tokens, sale.id.clone(), format!("during-{pages}")).await);
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an order listed twice");
    let missing: Vec<_> = before.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "orders that existed before the walk were skipped: {missing:?}");
    let acknowledged: HashSet<&String> = before.iter().chain(&made_during).collect();
    assert!(unique.iter().all(|id| acknowledged.contains(id)), "an order nobody bought");
    assert!(made_during.iter().any(|id| unique.contains(id)), "orders made during the walk show on later pages");
    // Oldest first: ids (UUIDv7) only grow along the walk.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "pages are in id order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_pages_and_refuses_tokens_it_did_not_issue() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let (a, b) = (app.active_sale(50, 0, 1).await, app.active_sale(50, 0, 1).await);
    let ann = app.buyer_token("ann", "Ann");
    for i in 0..5 {
        app.buy(&ann, &a.id, 1, &format!("a-{i}")).await.expect("bought");
    }
    app.buy(&ann, &b.id, 1, "b-0").await.expect("bought");

    // ListMyOrders, two at a time: the five orders of sale a, then the end.
    let my =
        |sale: &str, token: String| pb::ListMyOrdersRequest { sale_id: sale.into(), page_size: 2, page_token: token };
    let mut mine = Vec::new();
    let mut token = String::new();
    loop {
        let page = app.purchase().list_my_orders(authed(my(&a.id, token), &ann)).await.unwrap().into_inner();
        assert!(page.orders.len() <= 2);
        mine.extend(page.orders.into_iter().map(|o| o.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(mine.len(), 5);
    let first = app.purchase().list_my_orders(authed(my(&a.id, String::new()), &ann)).await.unwrap().into_inner();
    // Another buyer, or another sale, cannot go on from ann's page.
    let bob = app.buyer_token("bob", "Bob");
    let status = refusal(app.purchase().list_my_orders(authed(my(&a.id, first.next_page_token.clone()), &bob)).await);
    assert_refused(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
    assert_eq!(error_metadata(&status, "problem").as_deref(), Some("BAD_SIGNATURE"));
    let status = refusal(app.purchase().list_my_orders(authed(my(&b.id, first.next_page_token.clone()), &ann)).await);
    assert_refused(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");

    // ListSales newest first, a page of one: b, then a (among the sales of this app).
    let sales = |token: String| pb::ListSalesRequest { product_id: String::new(), page_size: 1, page_token: token };
    let one = app.admin().list_sales(authed(sales(String::new()), &admin)).await.unwrap().into_inner();
    assert_eq!(one.sales.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [b.id.as_str()]);
    let two = app.admin().list_sales(authed(sales(one.next_page_token.clone()), &admin)).await.unwrap().into_inner();
    assert_eq!(two.sales.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [a.id.as_str()]);
    // ListProducts oldest first, a page of one.
    let products = |token: String| pb::ListProductsRequest { page_size: 1, page_token: token };
    let p1 = app.admin().list_products(authed(products(String::new()), &admin)).await.unwrap().into_inner();
    let p2 =
        app.admin().list_products(authed(products(p1.next_page_token.clone()), &admin)).await.unwrap().into_inner();
    assert_eq!(
        (p1.products[0].id.as_str(), p2.products[0].id.as_str()),
        (a.product_id.as_str(), b.product_id.as_str())
    );

    // A token of one listing given to another.
    let orders = |sale: &str, token: String| pb::ListSaleOrdersRequest {
        sale_id: sale.into(),
        page_size: 2,
        page_token: token,
        ..Default::default()
    };
    let status =
        refusal(app.orders().list_sale_orders(authed(orders(&a.id, one.next_page_token.clone()), &admin)).await);
    assert_refused(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
    assert_eq!(error_metadata(&status, "problem").as_deref(), Some("OTHER_LISTING"));
    // A token of sale a's orders given for sale b, or with another filter.
    let page = app.sale_orders_page(&admin, orders(&a.id, String::new())).await.unwrap();
    let status =
        refusal(app.orders().list_sale_orders(authed(orders(&b.id, page.next_page_token.clone()), &admin)).await);
    assert_eq!(error_metadata(&status, "problem").as_deref(), Some("BAD_SIGNATURE"));
    let filtered = pb::ListSaleOrdersRequest {
        status: OrderStatus::Confirmed.into(),
        ..orders(&a.id, page.next_page_token.clone())
    };
    assert_refused(
        &refusal(app.orders().list_sale_orders(authed(filtered, &admin)).await),
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );
    // Altered tokens: one character changed anywhere, or cut short.
    let good = page.next_page_token.clone();
    for at in [0, good.len() / 2, good.len() - 1] {
        let mut altered = good.clone().into_bytes();
        altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        let status = refusal(app.orders().list_sale_orders(authed(orders(&a.id, altered), &admin)).await);
        assert_refused(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
    }
    let cut = good[..good.len() - 3].to_owned();
    assert_refused(
        &refusal(app.orders().list_sale_orders(authed(orders(&a.id, cut), &admin)).await),
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );
    // The token itself still works, and the rest of the walk follows it.
    let rest = app.sale_orders_page(&admin, orders(&a.id, good)).await.unwrap();
    assert_eq!(rest.orders.len(), 2);
    assert!(rest.orders[0].id > page.orders[1].id);

    // Sizes: negative refused; 0 is the default (100).
    let negative = pb::ListSaleOrdersRequest { page_size: -1, ..orders(&a.id, String::new()) };
    let status = refusal(app.orders().list_sale_orders(authed(negative, &admin)).await);
    assert_refused(&status, Code::InvalidArgument, "INVALID_FIELD");
    let all = app
        .sale_orders_page(&admin, pb::ListSaleOrdersRequest { page_size: 0, ..orders(&a.id, String::new()) })
        .await
        .unwrap();
    assert_eq!((all.orders.len(), all.next_page_token.as_str()), (5, ""));
    let unknown = app.sale_orders_page(&admin, orders("no-such-sale", String::new())).await;
    assert_refused(&refusal(unknown), Code::NotFound, "SALE_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sales_orders_filter_by_status_and_creation_time() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let sale = app.hold_sale(10, 0, 1).await;
    let ann = app.buyer_token("ann", "Ann");
    let mut holds = Vec::new();
    for i in 0..4 {
        holds.push(app.held(&ann, &sale.id, 1, &format!("k{i}")).await);
    }
    app.confirm(&ann, &holds[0].id, "pay-0").await.expect("paid");
    app.cancel(&ann, &holds[1].id).await.expect("cancelled");
    let with = |status: OrderStatus| pb::ListSaleOrdersRequest {
        sale_id: sale.id.clone(),
        status: status.into(),
        ..Default::default()
    };
    let ids = |page: pb::ListSaleOrdersResponse| page.orders.into_iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(ids(app.sale_orders_page(&admin, with(OrderStatus::Confirmed)).await.unwrap()), [holds[0].id.clone()]);
    assert_eq!(ids(app.sale_orders_page(&admin, with(OrderStatus::Cancelled)).await.unwrap()), [holds[1].id.clone()]);
    assert_eq!(
        ids(app.sale_orders_page(&admin, with(OrderStatus::Held)).await.unwrap()),
        [holds[2].id.clone(), holds[3].id.clone()]
    );
    let held = app.sale_orders_page(&admin, with(OrderStatus::Held)).await.unwrap();
    assert_eq!(held.total_size, 2);
    let paid = app.sale_orders_page(&admin, with(OrderStatus::Confirmed)).await.unwrap();
    assert_eq!(paid.orders[0].payment_reference, "pay-0");
    assert_eq!(paid.orders[0].buyer_name, "Ann");

    let after = |at: prost_types::Timestamp| pb::ListSaleOrdersRequest {
        sale_id: sale.id.clone(),
        created_after: Some(at),
        ..Default::default()
    };
    let third = holds[2].created_at.unwrap();
    let recent = app.sale_orders_page(&admin, after(third)).await.unwrap();
    assert!(recent
        .orders
        .iter()
        .all(|o| o.created_at.unwrap().seconds * 1000 + i64::from(o.created_at.unwrap().nanos / 1_000_000)
            >= third.seconds * 1000 + i64::from(third.nanos / 1_000_000)));
    assert!(recent.orders.iter().any(|o| o.id == holds[2].id));
    let future = crate::helpers::timestamp(UnixMillis(app.now().0 + 60_000));
    assert!(app.sale_orders_page(&admin, after(future)).await.unwrap().orders.is_empty());
    let bad = pb::ListSaleOrdersRequest { status: 42, ..with(OrderStatus::Held) };
    assert_refused(&refusal(app.sale_orders_page(&admin, bad).await), Code::InvalidArgument, "INVALID_FIELD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fulfillment_role_reads_orders_and_nothing_else() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 1).await;
    let ann = app.buyer_token("ann", "Ann");
    let order = app.buy(&ann, &sale.id, 1, "k").await.unwrap().order.unwrap();
    let warehouse = app.fulfillment_token().await;

    let listed = app
        .sale_orders_page(&warehouse, pb::ListSaleOrdersRequest { sale_id: sale.id.clone(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(listed.orders.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [order.id.as_str()]);
    let mut feed = app.client(&warehouse).follow_orders(0, &sale.id).await.expect("follow");
    let first = crate::helpers::next_message(&mut feed, "the first event").await.expect("an event");
    assert_eq!((first.kind(), first.order.unwrap().id), (OrderEventKind::Created, order.id.clone()));

    let refused = |status: tonic::Status| {
        assert_refused(&status, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
        assert_eq!(error_metadata(&status, "role").as_deref(), Some("fulfillment"));
    };
    let purchase = pb::PurchaseRequest {
        admission_pass: String::new(),
        sale_id: sale.id.clone(),
        quantity: 1,
        idempotency_key: "w".into(),
    };
    refused(refusal(app.purchase().purchase(authed(purchase, &warehouse)).await));
    refused(refusal(
        app.purchase().get_order(authed(pb::GetOrderRequest { order_id: order.id.clone() }, &warehouse)).await,
    ));
    refused(refusal(app.purchase().list_my_orders(authed(pb::ListMyOrdersRequest::default(), &warehouse)).await));
    let confirm = pb::ConfirmOrderRequest { order_id: order.id.clone(), payment_reference: "x".into() };
    refused(refusal(app.purchase().confirm_order(authed(confirm, &warehouse)).await));
    refused(refusal(app.admin().list_sales(authed(pb::ListSalesRequest::default(), &warehouse)).await));
    refused(refusal(app.admin().get_sale(authed(pb::GetSaleRequest { sale_id: sale.id.clone() }, &warehouse)).await));
    let end = pb::EndSaleRequest { sale_id: sale.id.clone() };
    refused(refusal(app.admin().end_sale(authed(end, &warehouse)).await));

    // Buyers and payment services may not read the shop's orders.
    for (token, role) in [(ann.clone(), "buyer"), (app.service_token(Role::Payments, "psp"), "payments")] {
        let ask = pb::ListSaleOrdersRequest { sale_id: sale.id.clone(), ..Default::default() };
        let status = refusal(app.sale_orders_page(&token, ask).await);
        assert_refused(&status, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
        assert_eq!(error_metadata(&status, "role").as_deref(), Some(role));
        let watch = pb::WatchOrdersRequest { after_sequence: 0, sale_id: String::new() };
        assert_refused(
            &refusal(app.orders().watch_orders(authed(watch, &token)).await),
            Code::PermissionDenied,
            "ROLE_NOT_ALLOWED",
        );
    }
    // The admin reads them too.
    let admin = app.admin_token();
    assert_eq!(
        app.sale_orders_page(&admin, pb::ListSaleOrdersRequest { sale_id: sale.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .orders
            .len(),
        1
    );
}

/// What a feed consumer saw: each (order, kind) with its sequence.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) events: HashMap<(String, i32), u64>,
    pub(crate) duplicates: Vec<(String, i32)>,
    pub(crate) cursor: u64,
}

impl Seen {
    pub(crate) fn take(&mut self, event: pb::OrderEvent) {
        assert!(event.sequence > self.cursor, "sequence {} after {}: the feed went back", event.sequence, self.cursor);
        self.cursor = event.sequence;
        let key = (event.order.expect("an order").id, event.kind);
        if self.events.insert(key.clone(), event.sequence).is_some() {
            self.duplicates.push(key);
        }
    }
}

/// Follows the feed from `seen.cursor`, dropping the stream after a random number of events,
/// reconnecting from the last cursor, until `done` holds or 60 s pass.
pub(crate) async fn follow_with_drops(
    app_channel: &dyn Fn() -> flashsale_client::Client,
    sale: &str,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut reconnects = 0;
    while !done(seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed did not deliver everything: {} events seen",
            seen.events.len()
        );
        let mut stream = app_channel().follow_orders(seen.cursor, sale).await.expect("follow the orders");
        reconnects += 1;
        let take = rand::rng().random_range(1..60);
        for _ in 0..take {
            match tokio::time::timeout(Duration::from_millis(1_500), stream.message()).await {
                Ok(Ok(Some(event))) => seen.take(event),
                Ok(other) => panic!("the feed ended: {other:?}"),
                Err(_) => break, // idle: reconnect and look again
            }
            if done(seen) {
                break;
            }
        }
        drop(stream);
    }
    reconnects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_dropping_its_stream_at_random_sees_every_order_event_once() {
    let app = spawn_app().await;
    let sale = app.hold_sale(400, 0, 1).await;
    let warehouse = app.fulfillment_token().await;
    let rush = tokio::spawn(buy_each(app.purchase(), buyers(&app, "rush", 400), sale.id.clone(), "rush".into()));
    let client = || app.client(&warehouse);
    let mut seen = Seen::default();
    // During the rush: every creation, whatever the drops.
    let mut reconnects = follow_with_drops(&client, &sale.id, &mut seen, |s| s.events.len() >= 400).await;
    let bought = rush.await.expect("the rush");
    assert_eq!(bought.len(), 400);

    // Then payments and cancels, while the consumer keeps dropping and coming back.
    let payments = app.service_token(Role::Payments, "psp");
    let admin = app.admin_token();
    let (paid, cancelled) = (&bought[..100], &bought[100..150]);
    let confirms = futures::stream::iter(paid.iter().cloned()).for_each_concurrent(16, |id| {
        let (app, payments) = (&app, &payments);
        async move {
            app.confirm(payments, &id, &format!("pay-{id}")).await.expect("paid");
        }
    });
    let cancels = futures::stream::iter(cancelled.iter().cloned()).for_each_concurrent(16, |id| {
        let (app, admin) = (&app, &admin);
        async move {
            app.cancel(admin, &id).await.expect("cancelled");
        }
    });
    let following = follow_with_drops(&client, &sale.id, &mut seen, |s| s.events.len() >= 550);
    let ((), (), more) = tokio::join!(confirms, cancels, following);
    reconnects += more;

    assert!(seen.duplicates.is_empty(), "events delivered twice: {:?}", seen.duplicates);
    for id in &bought {
        assert!(seen.events.contains_key(&(id.clone(), OrderEventKind::Created as i32)), "no CREATED for {id}");
    }
    for id in paid {
        assert!(seen.events.contains_key(&(id.clone(), OrderEventKind::Confirmed as i32)), "no CONFIRMED for {id}");
    }
    for id in cancelled {
        assert!(seen.events.contains_key(&(id.clone(), OrderEventKind::Cancelled as i32)), "no CANCELLED for {id}");
    }
    assert_eq!(seen.events.len(), 550);
    assert!(reconnects > 5, "the consumer came back {reconnects} times");
    // Nothing else follows the last event.
    let mut rest = client().follow_orders(seen.cursor, &sale.id).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(700), rest.message()).await.is_err(), "an event nobody made");
    // Every sale's feed carries the same events, with the same sequences.
    let mut everything = Seen::default();
    follow_with_drops(&client, "", &mut everything, |s| s.events.len() >= 550).await;
    assert_eq!(everything.events, seen.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_the_head_or_older_than_the_events_kept_is_refused() {
    // 2030-01-01, then the same record eight days later (the default retention is seven).
    const T0: UnixMillis = UnixMillis(1_893_456_000_000);
    let mut settings = AppOptions::default().settings;
    if production_backends() {
        crate::helpers::use_shared_production_backends(&mut settings);
    }
    let app =
        spawn_app_with(AppOptions { settings: settings.clone(), manual_clock: Some(T0), ..AppOptions::default() })
            .await;
    let sale = app.active_sale(10, 0, 1).await;
    let ann = app.buyer_token("ann", "Ann");
    for i in 0..3 {
        app.buy(&ann, &sale.id, 1, &format!("k{i}")).await.expect("bought");
    }
    let admin = app.admin_token();
    let watch = |after: u64| pb::WatchOrdersRequest { after_sequence: after, sale_id: String::new() };
    let status = refusal(app.orders().watch_orders(authed(watch(1_000_000), &admin)).await);
    assert_refused(&status, Code::InvalidArgument, "CURSOR_UNKNOWN");
    assert_eq!(error_metadata(&status, "head_sequence").as_deref(), Some("3"));
    let data_dir = app.data_dir.clone();
    app.stop().await.unwrap();

    let later = spawn_app_with(AppOptions {
        settings,
        manual_clock: Some(UnixMillis(T0.0 + 8 * 86_400_000)),
        data_dir: Some(data_dir),
        ..AppOptions::default()
    })
    .await;
    // Pruned at start: events 1 and 2 are gone; the newest is kept. A consumer that handled
    // event 1 would miss event 2: refused.
    let status = later
        .eventually("the old events pruned", || async {
            later.orders().watch_orders(authed(watch(1), &admin)).await.err()
        })
        .await;
    assert_refused(&status, Code::OutOfRange, "CURSOR_EXPIRED");
    assert_eq!(error_metadata(&status, "oldest_sequence").as_deref(), Some("3"));
    assert_eq!(error_metadata(&status, "head_sequence").as_deref(), Some("3"));
    // A new consumer (0) starts from the oldest kept.
    let mut fresh = later.orders().watch_orders(authed(watch(0), &admin)).await.expect("follow from 0").into_inner();
    let oldest = crate::helpers::next_message(&mut fresh, "the oldest event kept").await.expect("an event");
    assert_eq!(oldest.sequence, 3);
    // From the head, a consumer goes on with the next event.
    let mut feed =
        later.orders().watch_orders(authed(watch(3), &admin)).await.expect("follow from the head").into_inner();
    let sale2 = later.active_sale(5, 0, 1).await;
    let order = later.buy(&ann, &sale2.id, 1, "next").await.unwrap().order.unwrap();
    let event = crate::helpers::next_message(&mut feed, "the next event").await.expect("an event");
    assert_eq!((event.sequence, event.order.unwrap().id), (4, order.id));
}

/// Runs `flashsale export` against the test server; its standard output.
fn export(app: &TestApp, token: &str, sale: &str, format: &str, out: Option<&std::path::Path>) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    command.args(["export", "--sale", sale, "--format", format, "--token", token, "--page-size", "700"]);
    command.arg("--addr").arg(format!("http://{}", app.addr));
    if let Some(out) = out {
        command.arg("--out").arg(out);
    }
    crate::helpers::clean_env(&mut command);
    let output = command.output().expect("run flashsale export");
    assert!(output.status.success(), "flashsale export failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("exported"), "it says what it did");
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_export_of_a_ten_thousand_order_sale_matches_the_orders_made() {
    const ORDERS: usize = 10_000;
    let app = spawn_app().await;
    let sale = app.active_sale(ORDERS as i64, 0, 1).await;
    let tokens: Vec<String> = buyers(&app, "export", 40).into_iter().cycle().take(ORDERS).collect();
    let bought: HashSet<String> =
        buy_each(app.purchase(), tokens, sale.id.clone(), "export".into()).await.into_iter().collect();
    assert_eq!(bought.len(), ORDERS);
    let warehouse = app.fulfillment_token().await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.csv");
    let stdout = tokio::task::block_in_place(|| export(&app, &warehouse, &sale.id, "csv", Some(&file)));
    assert!(stdout.is_empty(), "with --out nothing goes to standard output");
    assert!(!dir.path().join("orders.csv.part").exists(), "the partial file was renamed");
    let mut reader = csv::Reader::from_path(&file).expect("a CSV file");
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(
        header,
        [
            "order_id",
            "sale_id",
            "buyer_id",
            "buyer_name",
            "quantity",
            "unit_price_minor",
            "total_minor",
            "currency",
            "status",
            "created_at",
            "expires_at",
            "settled_at",
            "payment_reference",
            "idempotency_key"
        ]
    );
    let mut exported = HashSet::new();
    let mut previous = String::new();
    for row in reader.records() {
        let row = row.expect("a CSV row");
        assert!(row[0] > *previous, "oldest first, each once");
        previous = row[0].to_owned();
        assert_eq!(
            (&row[1], &row[4], &row[5], &row[6], &row[7], &row[8]),
            (sale.id.as_str(), "1", "1999", "1999", "USD", "CONFIRMED")
        );
        assert!(row[2].starts_with("export-") && row[3].starts_with("Buyer "), "{row:?}");
        assert!(row[9].ends_with('Z') && row[9].contains('T'), "RFC 3339 times: {}", &row[9]);
        exported.insert(row[0].to_owned());
    }
    assert_eq!(exported, bought, "the export holds exactly the orders bought");

    // JSON lines on standard output, the same orders.
    let lines = tokio::task::block_in_place(|| export(&app, &warehouse, &sale.id, "jsonl", None));
    let ids: HashSet<String> = lines
        .lines()
        .map(|line| {
            let order: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
            assert_eq!(order["quantity"], 1);
            assert_eq!(order["status"], "CONFIRMED");
            order["order_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(lines.lines().count(), ORDERS);
    assert_eq!(ids, bought);
}
