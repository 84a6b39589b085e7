//! The public feeds: WatchSale and Leaderboard, as any watcher (no token) sees them.

use std::time::Duration;

use flashsale::domain::UnixMillis;
use flashsale_client::pb;
use flashsale_client::pb::feeds_service_client::FeedsServiceClient;
use pb::{EndReason, SaleStatus};
use tonic::Code;

use crate::helpers::{
    next_message, read_until, reason, spawn_app, spawn_app_with, stream_refusal, timestamp, AppOptions, TestApp,
};

/// A fixed start for tests on a manual clock (2030-01-01T00:00:00Z).
const T0: UnixMillis = UnixMillis(1_893_456_000_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sale_starts_with_a_full_snapshot() {
    let app = spawn_app().await;
    let sale = app.active_sale(100, 4, 2).await;

    let mut watch = app.watch(&sale.id).await;
    let first = next_message(&mut watch, "first snapshot").await.expect("a snapshot");

    assert_eq!(first.sale_id, sale.id);
    assert_eq!(first.product_id, sale.product_id);
    assert!(first.version > 0, "version must start above 0: {first:?}");
    assert_eq!(first.status(), SaleStatus::Active);
    assert_eq!(first.end_reason(), EndReason::Unspecified);
    assert_eq!(first.allocated, 100);
    assert_eq!(first.sold, 0);
    assert_eq!(first.remaining, 100);
    assert_eq!(first.unit_price, Some(pb::Money { amount_minor: 1999, currency: "USD".into() }));
    assert_eq!(first.per_user_limit, 4);
    assert_eq!(first.max_per_purchase, 2);
    assert_eq!(first.start_time, sale.start_time);
    assert_eq!(first.end_time, sale.end_time);
    assert!(first.start_time.is_some() && first.end_time.is_some());
    assert_eq!(first.ended_at, None);
    assert!(first.server_time.is_some(), "server_time is for countdowns: {first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sale_sends_updates_after_purchases_with_increasing_versions() {
    let app = spawn_app().await;
    let sale = app.active_sale(50, 0, 5).await;
    let mut watch = app.watch(&sale.id).await;
    let first = next_message(&mut watch, "first snapshot").await.unwrap();
    assert_eq!(first.sold, 0);

    let mut bought = 0;
    for (i, quantity) in [3u32, 1, 5, 2].into_iter().enumerate() {
        let token = app.buyer_token(&format!("watcher-buyer-{i}"), &format!("Buyer {i}"));
        app.buy(&token, &sale.id, quantity, "only").await.expect("purchase");
        bought += i64::from(quantity);
    }

    let updates = read_until(&mut watch, "a snapshot with every purchase", |s| s.sold == bought).await;
    let mut version = first.version;
    let mut sold = first.sold;
    for update in &updates {
        assert!(update.version > version, "versions must strictly increase: {} after {version}", update.version);
        assert!(update.sold >= sold, "sold went back from {sold} to {}", update.sold);
        // `remaining` excludes units of purchases in flight, so mid-stream the sum may dip.
        assert!(update.sold + update.remaining <= 50, "sold + remaining exceeds the allocation: {update:?}");
        assert_eq!(update.sale_id, sale.id);
        assert_eq!(update.status(), SaleStatus::Active);
        version = update.version;
        sold = update.sold;
    }
    let last = updates.last().unwrap();
    assert_eq!(last.sold, bought);
    // Nothing is in flight any more: the next state adds up exactly.
    let settled = read_until(&mut watch, "sold + remaining = allocated", |s| s.sold + s.remaining == 50);
    if last.sold + last.remaining != 50 {
        let settled = settled.await;
        assert_eq!(settled.last().unwrap().remaining, 50 - bought);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_feeds_end_after_the_ended_snapshot() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 0, 5).await;
    let token = app.buyer_token("ender", "Ender");
    app.buy(&token, &sale.id, 2, "k").await.expect("purchase");
    let mut watch = app.watch(&sale.id).await;
    let mut board = app.leaderboard(&sale.id, 10).await;
    next_message(&mut watch, "watch snapshot").await.unwrap();
    next_message(&mut board, "leaderboard snapshot").await.unwrap();

    let ended = app.end_sale(&sale.id).await;
    assert_eq!(ended.status(), SaleStatus::Ended);

    let seen = read_until(&mut watch, "the ENDED snapshot", |s| s.status() == SaleStatus::Ended).await;
    let last = seen.last().unwrap();
    assert_eq!(last.end_reason(), EndReason::ByAdmin);
    assert_eq!(last.sold, 2);
    assert!(last.ended_at.is_some(), "an ENDED snapshot says when: {last:?}");
    assert_eq!(next_message(&mut watch, "after ENDED").await, None, "WatchSale must end after ENDED");

    let seen = read_until(&mut board, "the ENDED leaderboard", |s| s.status() == SaleStatus::Ended).await;
    let last = seen.last().unwrap();
    assert_eq!(last.entries.len(), 1);
    assert_eq!((last.entries[0].display_name.as_str(), last.entries[0].units), ("Ender", 2));
    assert_eq!(next_message(&mut board, "after ENDED").await, None, "Leaderboard must end after ENDED");

    // A watcher that comes after the end gets the final state once, then the end.
    let mut late = app.watch(&sale.id).await;
    let only = next_message(&mut late, "late watcher").await.expect("a snapshot");
    assert_eq!((only.status(), only.end_reason(), only.sold), (SaleStatus::Ended, EndReason::ByAdmin, 2));
    assert_eq!(next_message(&mut late, "late watcher after ENDED").await, None);
    let mut late_board = app.leaderboard(&sale.id, 10).await;
    let only = next_message(&mut late_board, "late leaderboard").await.expect("a snapshot");
    assert_eq!(only.status(), SaleStatus::Ended);
    assert_eq!(next_message(&mut late_board, "late leaderboard after ENDED").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_arriving_after_the_end_starts_with_the_final_state() {
    // A long feed interval keeps the feed's last published (pre-end) state around for a while:
    // a watcher that comes after the end must not be shown it.
    let mut options = AppOptions::default();
    options.settings.feed_interval = Duration::from_secs(2);
    let app = spawn_app_with(options).await;
    let sale = app.active_sale(10, 0, 5).await;
    let mut early = app.watch(&sale.id).await;
    let mut early_board = app.leaderboard(&sale.id, 10).await;
    next_message(&mut early, "early watcher").await.unwrap();
    next_message(&mut early_board, "early leaderboard").await.unwrap();

    app.end_sale(&sale.id).await;
    let mut late = app.watch(&sale.id).await;
    let mut late_board = app.leaderboard(&sale.id, 10).await;
    let first = next_message(&mut late, "late watcher").await.expect("a snapshot");
    let first_board = next_message(&mut late_board, "late leaderboard").await.expect("a snapshot");
    assert_eq!(
        (first.status(), first.end_reason(), first_board.status()),
        (SaleStatus::Ended, EndReason::ByAdmin, SaleStatus::Ended),
        "the sale ended before these watchers came, so their first snapshots must say so: \
         {first:?} {first_board:?}"
    );
    assert_eq!(next_message(&mut late, "late watcher after ENDED").await, None);
    assert_eq!(next_message(&mut late_board, "late leaderboard after ENDED").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_time_is_when_the_state_was_published_or_when_the_watcher_joined() {
    let app = spawn_app_with(AppOptions { manual_clock: Some(T0), ..AppOptions::default() }).await;
    let sale = app.active_sale(10, 0, 5).await;
    let at = |secs: i64| Some(timestamp(UnixMillis(T0.0 + secs * 1000)));
    let mut early = app.watch(&sale.id).await;
    let first = next_message(&mut early, "first snapshot").await.expect("a snapshot");
    assert_eq!(first.server_time, at(0));

    // Every watcher is sent the same update, stamped when it was published.
    app.advance(Duration::from_secs(5));
    app.buy(&app.buyer_token("clock-buyer", "Clock"), &sale.id, 1, "k").await.expect("purchase");
    let update = read_until(&mut early, "the purchase", |s| s.sold == 1).await.pop().unwrap();
    assert_eq!(update.server_time, at(5));

    // A minute later, nothing changed since: a new watcher's first snapshot is that same state,
    // stamped when it is sent (the page sets its countdown clock from it).
    app.advance(Duration::from_secs(60));
    let mut late = app.watch(&sale.id).await;
    let first = next_message(&mut late, "late watcher").await.expect("a snapshot");
    assert_eq!((first.version, first.server_time), (update.version, at(65)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watchers_do_not_block_a_rush() {
    const UNITS: i64 = 300;
    let app = spawn_app().await;
    let sale = app.active_sale(UNITS, 1, 1).await;

    // Watchers that never read, on a connection of their own (as slow clients would be). Big
    // leaderboard messages fill their flow-control windows during the rush.
    let stalled = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect the stalled watchers");
    let mut parked = Vec::new();
    let mut parked_boards = Vec::new();
    for _ in 0..20 {
        let mut feeds = FeedsServiceClient::new(stalled.clone());
        let watch = feeds.watch_sale(pb::WatchSaleRequest { sale_id: sale.id.clone() }).await.expect("watch");
        parked.push(watch.into_inner());
        let board = feeds
            .leaderboard(pb::LeaderboardRequest { sale_id: sale.id.clone(), top_n: 100 })
            .await
            .expect("leaderboard");
        parked_boards.push(board.into_inner());
    }

    let mut rush = tokio::task::JoinSet::new();
    for i in 0..UNITS {
        let token = app.buyer_token(&format!("rush-{i}"), &format!("Rusher number {i:03}"));
        let mut purchase = app.purchase();
        let sale_id = sale.id.clone();
        rush.spawn(async move {
            purchase
                .purchase(crate::helpers::authed(
                    pb::PurchaseRequest {
                        admission_pass: String::new(),
                        sale_id,
                        quantity: 1,
                        idempotency_key: format!("rush-{i}"),
                    },
                    &token,
                ))
                .await
        });
    }
    // A deadline only so that a blocked server fails the test instead of hanging it.
    let outcomes = tokio::time::timeout(Duration::from_secs(120), rush.join_all())
        .await
        .expect("the rush must complete while watchers are stalled");
    let failures: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} purchases failed, e.g. {:?}", failures.len(), failures.first());

    let after = app.get_sale(&sale.id).await;
    assert_eq!((after.sold, after.remaining), (UNITS, 0));
    // Watchers on other connections still get the news.
    let mut fresh = app.watch(&sale.id).await;
    let seen = read_until(&mut fresh, "a fresh watcher sees the sale sold", |s| s.sold == UNITS).await;
    assert_eq!(seen.last().unwrap().remaining, 0);
    drop(parked);
    drop(parked_boards);
}

/// Mints a buyer token whose display name is `name`.
fn buyer(app: &TestApp, name: &str) -> String {
    app.buyer_token(&format!("lb-{}", name.to_lowercase()), name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_ranks_by_units_then_earlier_first_purchase() {
    let app = spawn_app_with(AppOptions { manual_clock: Some(T0), ..AppOptions::default() }).await;
    let sale = app.active_sale(100, 0, 10).await;
    let mut board = app.leaderboard(&sale.id, 10).await;
    let first = next_message(&mut board, "first leaderboard").await.expect("a snapshot");
    assert_eq!(first.sale_id, sale.id);
    assert!(first.version > 0);
    assert_eq!(first.status(), SaleStatus::Active);
    assert!(first.entries.is_empty(), "no buyer yet: {first:?}");
    assert_eq!(first.total_buyers, 0);

    // One purchase a second. Carol reaches 3 units before Alice does, but Alice bought first:
    // the tie goes to Alice.
    let steps = [("Alice", 1u32), ("Bob", 5), ("Carol", 3), ("Alice", 2), ("Dave", 1)];
    for (i, (name, quantity)) in steps.into_iter().enumerate() {
        app.advance(Duration::from_secs(1));
        app.buy(&buyer(&app, name), &sale.id, quantity, &format!("step-{i}")).await.expect("purchase");
    }
    let at = |secs: i64| Some(timestamp(UnixMillis(T0.0 + secs * 1000)));

    let seen = read_until(&mut board, "every buyer on the board", |s| {
        s.total_buyers == 4 && s.entries.iter().map(|e| e.units).sum::<i64>() == 12
    })
    .await;
    let mut version = first.version;
    for snapshot in &seen {
        assert!(snapshot.version > version, "versions must strictly increase");
        version = snapshot.version;
    }
    let last = seen.last().unwrap();
    let ranking: Vec<_> =
        last.entries.iter().map(|e| (e.rank, e.display_name.as_str(), e.units, e.first_purchase_at)).collect();
    assert_eq!(
        ranking,
        vec![(1, "Bob", 5, at(2)), (2, "Alice", 3, at(1)), (3, "Carol", 3, at(3)), (4, "Dave", 1, at(5)),]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_respects_top_n() {
    let app = spawn_app().await;
    let sale = app.active_sale(100, 0, 12).await;
    // Buyer i buys i + 1 units: the ranking is known without ties.
    for i in 0..12u32 {
        app.buy(&app.buyer_token(&format!("top-{i}"), &format!("Top {i}")), &sale.id, i + 1, "k")
            .await
            .expect("purchase");
    }

    let mut top3 = app.leaderboard(&sale.id, 3).await;
    let seen = read_until(&mut top3, "all 12 buyers counted", |s| s.total_buyers == 12).await;
    let names: Vec<_> =
        seen.last().unwrap().entries.iter().map(|e| (e.rank, e.display_name.clone(), e.units)).collect();
    assert_eq!(names, vec![(1, "Top 11".to_owned(), 12), (2, "Top 10".to_owned(), 11), (3, "Top 9".to_owned(), 10)]);

    // 0 means 10.
    let mut default = app.leaderboard(&sale.id, 0).await;
    let seen = read_until(&mut default, "all 12 buyers counted", |s| s.total_buyers == 12).await;
    let last = seen.last().unwrap();
    assert_eq!(last.entries.len(), 10);
    assert_eq!(last.entries.iter().map(|e| e.rank).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    assert_eq!((last.entries[9].display_name.as_str(), last.entries[9].units), ("Top 2", 3));

    // Above the documented 1..100 range.
    let status =
        stream_refusal(app.feeds().leaderboard(pb::LeaderboardRequest { sale_id: sale.id.clone(), top_n: 101 })).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason(&status), "INVALID_FIELD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_never_show_an_email() {
    let app = spawn_app().await;
    let sale = app.active_sale(30, 0, 5).await;
    let people = [
        ("Ann.Private.8841@Example.com", "Ann"),
        ("ben.hidden.5512@example.org", "Ben"),
        ("  cat.secret.9907@example.net ", "Cat"),
    ];
    let mut watch = app.watch(&sale.id).await;
    let mut board = app.leaderboard(&sale.id, 100).await;

    for (i, (email, name)) in people.iter().enumerate() {
        let account = app
            .auth()
            .register(pb::RegisterRequest {
                email: (*email).into(),
                display_name: (*name).into(),
                password: "correct horse battery".into(),
            })
            .await
            .expect("register")
            .into_inner();
        app.buy(&account.access_token, &sale.id, i as u32 + 1, "k").await.expect("purchase");
    }

    let mut watched = read_until(&mut watch, "every purchase watched", |s| s.sold == 6).await;
    let mut boards = read_until(&mut board, "every buyer on the board", |s| s.total_buyers == 3).await;
    let names: Vec<_> = boards.last().unwrap().entries.iter().map(|e| e.display_name.clone()).collect();
    assert_eq!(names, ["Cat", "Ben", "Ann"], "the board shows display names");

    app.end_sale(&sale.id).await;
    watched.extend(read_until(&mut watch, "ENDED", |s| s.status() == SaleStatus::Ended).await);
    boards.extend(read_until(&mut board, "ENDED", |s| s.status() == SaleStatus::Ended).await);

    let secrets: Vec<String> = people
        .iter()
        .flat_map(|(email, _)| {
            let email = email.trim().to_lowercase();
            let local = email.split('@').next().unwrap().to_owned();
            [email, local]
        })
        .collect();
    let check = |debug: String, bytes: Vec<u8>| {
        let debug = debug.to_lowercase();
        let bytes = bytes.to_ascii_lowercase();
        for secret in &secrets {
            assert!(!debug.contains(secret.as_str()), "a feed message shows {secret}: {debug}");
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a feed message's bytes hold {secret}"
            );
        }
    };
    for message in &watched {
        check(format!("{message:?}"), prost::Message::encode_to_vec(message));
    }
    for message in &boards {
        check(format!("{message:?}"), prost::Message::encode_to_vec(message));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_of_an_unknown_sale_are_not_found() {
    let app = spawn_app().await;
    let unknown = "0192c7a4-0000-7000-8000-000000000000";

    let status = stream_refusal(app.feeds().watch_sale(pb::WatchSaleRequest { sale_id: unknown.into() })).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(reason(&status), "SALE_NOT_FOUND");

    let status =
        stream_refusal(app.feeds().leaderboard(pb::LeaderboardRequest { sale_id: unknown.into(), top_n: 5 })).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(reason(&status), "SALE_NOT_FOUND");

    let status = stream_refusal(app.feeds().watch_sale(pb::WatchSaleRequest { sale_id: "not a sale!".into() })).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason(&status), "INVALID_FIELD");
}
