//! Waiting rooms: the pre-queue's draw, first come first served after the start, the rate and
//! the cap on a manual clock, passes refused in every way they can be wrong, places kept across
//! dropped streams and lost past the grace time, CLOSED for everyone at the end, admission
//! paused while every unit is held. Each test runs on the embedded backend and, through
//! `scripts/test`, on Redis + MongoDB.

use std::time::Duration;

use flashsale::config::Settings;
use flashsale::domain::UnixMillis;
use flashsale_client::pb;
use tonic::Code;

use crate::helpers::{
    assert_refused, authed, base64url_decode, base64url_encode, error_metadata, next_message, read_until,
    spawn_app_with, stream_refusal, timestamp, AppOptions, TestApp,
};

const T0: i64 = 1_900_000_000_000;

/// A server on a manual clock at `T0` whose waiting rooms keep a silent buyer's place for
/// `grace`.
async fn manual_app(grace: Duration) -> TestApp {
    let defaults = AppOptions::default();
    spawn_app_with(AppOptions {
        manual_clock: Some(UnixMillis(T0)),
        settings: Settings { queue_grace: grace, ..defaults.settings },
        ..defaults
    })
    .await
}

/// A sale of `allocated` units with a waiting room, starting `start_in` from now (`None`: now),
/// ending in a day.
async fn queued_sale(
    app: &TestApp,
    allocated: i64,
    start_in: Option<Duration>,
    queue: pb::QueueOptions,
    hold_seconds: u32,
) -> pb::Sale {
    let product = app.create_product(allocated).await;
    app.create_sale(pb::CreateSaleRequest {
        product_id: product.id,
        allocated,
        unit_price: Some(pb::Money { amount_minor: 500, currency: "EUR".into() }),
        per_user_limit: 0,
        max_per_purchase: 1,
        start_time: start_in.map(|d| timestamp(UnixMillis(app.now().0 + d.as_millis() as i64))),
        end_time: Some(timestamp(UnixMillis(app.now().0 + 86_400_000))),
        hold_seconds,
        queue: Some(queue),
    })
    .await
}

fn room(
    prequeue_seconds: u32,
    admit_per_second: u32,
    max_active_buyers: u32,
    admission_seconds: u32,
) -> pb::QueueOptions {
    pb::QueueOptions { prequeue_seconds, admit_per_second, max_active_buyers, admission_seconds }
}

async fn enter(app: &TestApp, token: &str, sale_id: &str) -> tonic::Streaming<pb::QueueUpdate> {
    app.purchase()
        .enter_queue(authed(pb::EnterQueueRequest { sale_id: sale_id.into() }, token))
        .await
        .expect("enter the waiting room")
        .into_inner()
}

/// Enters, reads the first message, and drops the stream.
async fn place(app: &TestApp, token: &str, sale_id: &str) -> pb::QueueUpdate {
    let mut updates = enter(app, token, sale_id).await;
    next_message(&mut updates, "the first place").await.expect("a first message")
}

fn state(update: &pb::QueueUpdate) -> pb::QueueState {
    pb::QueueState::try_from(update.state).expect("a known state")
}

/// The admission's rank, read from its pass (`<sale>\n<buyer>\n<expiry>\n<ticket>`, base64url,
/// before the dot).
pub(crate) fn ticket(pass: &str) -> u64 {
    let body = base64url_decode(pass.split('.').next().unwrap()).expect("base64url");
    String::from_utf8(body).unwrap().rsplit('\n').next().unwrap().parse().expect("a ticket")
}

async fn buy_with(
    app: &TestApp,
    token: &str,
    sale_id: &str,
    key: &str,
    pass: &str,
) -> Result<pb::PurchaseResponse, tonic::Status> {
    app.purchase()
        .purchase(authed(
            pb::PurchaseRequest {
                sale_id: sale_id.into(),
                quantity: 1,
                idempotency_key: key.into(),
                admission_pass: pass.into(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until the sale shows `admitted` admissions.
async fn admitted(app: &TestApp, sale_id: &str, admitted: u64) -> pb::Sale {
    app.wait_for_sale(sale_id, &format!("{admitted} admitted"), |s| s.queue_admitted == admitted).await
}

/// `pass` with one character of its body changed.
fn altered(pass: &str) -> String {
    let mut bytes = pass.as_bytes().to_vec();
    bytes[4] = if bytes[4] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// `pass` with a shorter tag (12 bytes of 16).
fn cut(pass: &str) -> String {
    let (body, tag) = pass.split_once('.').unwrap();
    format!("{body}.{}", base64url_encode(&base64url_decode(tag).unwrap()[..12]))
}

/// Spearman's rank correlation of positions 0..n against `ranks`.
fn spearman(ranks: &[u64]) -> f64 {
    let n = ranks.len() as f64;
    let d2: f64 = ranks.iter().enumerate().map(|(i, r)| (i as f64 - *r as f64).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prequeue_is_drawn_at_random_and_later_arrivals_line_up_behind_in_order() {
    const EARLY: usize = 1000;
    const LATE: usize = 20;
    let app = manual_app(Duration::from_secs(86_400)).await;
    // Two sales whose rooms open a minute before their start, admitting everyone at once.
    let options = room(120, 0, 100_000, 3600);
    let sales = [
        queued_sale(&app, 10, Some(Duration::from_secs(60)), options, 0).await,
        queued_sale(&app, 10, Some(Duration::from_secs(60)), options, 0).await,
    ];
    let buyers: Vec<String> = (0..EARLY + LATE).map(|i| app.buyer_token(&format!("b{i:04}"), "Buyer")).collect();
    for sale in &sales {
        for token in &buyers[..EARLY] {
            let first = place(&app, token, &sale.id).await;
            assert_eq!(state(&first), pb::QueueState::Waiting);
            assert!(first.prequeue && first.position == 0, "no place before the draw: {first:?}");
        }
    }
    app.advance(Duration::from_secs(60));
    let mut orders = Vec::new();
    for sale in &sales {
        admitted(&app, &sale.id, EARLY as u64).await;
        for token in &buyers[EARLY..] {
            let late = place(&app, token, &sale.id).await;
            assert!(!late.prequeue, "after the start: no pre-queue");
        }
        admitted(&app, &sale.id, (EARLY + LATE) as u64).await;
        let mut tickets = Vec::new();
        for token in &buyers {
            let update = place(&app, token, &sale.id).await;
            assert_eq!(state(&update), pb::QueueState::Admitted, "{update:?}");
            tickets.push(ticket(&update.admission_pass));
        }
        let (early, late) = tickets.split_at(EARLY);
        // Under no correlation, Spearman's rho over 1000 has a standard deviation of
        // 1/sqrt(999) ~ 0.032: |rho| < 0.13 is four of them.
        let rho = spearman(early);
        assert!(rho.abs() < 0.13, "arrival order shows through the draw: rho = {rho}");
        let mut drawn = early.to_vec();
        drawn.sort_unstable();
        assert_eq!(drawn, (0..EARLY as u64).collect::<Vec<_>>(), "the pre-queue holds the first {EARLY} places");
        assert_eq!(late, (EARLY as u64..(EARLY + LATE) as u64).collect::<Vec<_>>(), "later arrivals in order");
        orders.push(early.to_vec());
    }
    assert_ne!(orders[0], orders[1], "each sale draws its own order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_follows_the_rate_and_the_cap_on_the_clock() {
    let app = manual_app(Duration::from_secs(86_400)).await;
    let rated = queued_sale(&app, 100, None, room(0, 10, 0, 600), 0).await;
    let buyers: Vec<String> = (0..60).map(|i| app.buyer_token(&format!("r{i}"), "Buyer")).collect();
    for (i, token) in buyers.iter().enumerate() {
        let first = place(&app, token, &rated.id).await;
        assert_eq!((state(&first), first.position), (pb::QueueState::Waiting, i as u64 + 1));
    }
    // Ten a second: half a second lets five in, however many rounds run meanwhile.
    app.advance(Duration::from_millis(500));
    admitted(&app, &rated.id, 5).await;
    app.advance(Duration::from_millis(1500));
    admitted(&app, &rated.id, 15).await;
    // A minute's pause fills the bucket with one second's worth, no more.
    app.advance(Duration::from_secs(60));
    let sale = admitted(&app, &rated.id, 25).await;
    assert_eq!(sale.queue_waiting, 35);
    // Those admitted are the first in line.
    for (i, token) in buyers.iter().enumerate() {
        let update = place(&app, token, &rated.id).await;
        let expected = if i < 25 { pb::QueueState::Admitted } else { pb::QueueState::Waiting };
        assert_eq!(state(&update), expected, "buyer {i}: {update:?}");
        if i >= 25 {
            assert_eq!(update.position, i as u64 - 25 + 1);
        }
    }

    // Three at once; a purchase or an expiry makes room.
    let capped = queued_sale(&app, 100, None, room(0, 0, 3, 10), 0).await;
    for token in &buyers[..8] {
        place(&app, token, &capped.id).await;
    }
    app.advance(Duration::from_millis(100));
    admitted(&app, &capped.id, 3).await;
    let first = place(&app, &buyers[0], &capped.id).await;
    assert_eq!(state(&first), pb::QueueState::Admitted);
    buy_with(&app, &buyers[0], &capped.id, "cap-1", &first.admission_pass).await.expect("an admitted buyer buys");
    app.advance(Duration::from_millis(100));
    admitted(&app, &capped.id, 4).await;
    // The three others' admissions end after ten seconds.
    app.advance(Duration::from_secs(10));
    admitted(&app, &capped.id, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_are_refused_forged_altered_for_another_buyer_or_sale_and_expired() {
    let app = manual_app(Duration::from_secs(86_400)).await;
    let sale = queued_sale(&app, 10, None, room(0, 100, 0, 60), 0).await;
    let other = queued_sale(&app, 10, None, room(0, 100, 0, 60), 0).await;
    let plain = app.active_sale(10, 0, 1).await;
    let (ann, bob) = (app.buyer_token("ann", "Ann"), app.buyer_token("bob", "Bob"));
    for token in [&ann, &bob] {
        place(&app, token, &sale.id).await;
        place(&app, token, &other.id).await;
    }
    app.advance(Duration::from_secs(1));
    admitted(&app, &sale.id, 2).await;
    admitted(&app, &other.id, 2).await;
    let ann_pass = place(&app, &ann, &sale.id).await.admission_pass;
    let ann_other_pass = place(&app, &ann, &other.id).await.admission_pass;
    assert!(!ann_pass.is_empty());

    let refused = buy_with(&app, &ann, &sale.id, "k0", "").await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, "ADMISSION_REQUIRED");
    let problem = |status: &tonic::Status| error_metadata(status, "problem");
    for (pass, expected) in [
        ("not a pass".to_owned(), "MALFORMED"),
        (format!("{ann_pass}x"), "MALFORMED"),
        (altered(&ann_pass), "BAD_SIGNATURE"),
        (cut(&ann_pass), "BAD_SIGNATURE"),
    ] {
        let refused = buy_with(&app, &ann, &sale.id, "k1", &pass).await.unwrap_err();
        assert_refused(&refused, Code::PermissionDenied, "ADMISSION_INVALID");
        assert_eq!(problem(&refused).as_deref(), Some(expected), "{pass}");
    }
    // A pass re-signed by anyone without the server's secret.
    let forged = {
        let (body, _) = ann_pass.split_once('.').unwrap();
        format!("{body}.AAAAAAAAAAAAAAAAAAAAAA")
    };
    let refused = buy_with(&app, &ann, &sale.id, "k1", &forged).await.unwrap_err();
    assert_eq!(problem(&refused).as_deref(), Some("BAD_SIGNATURE"));
    let refused = buy_with(&app, &bob, &sale.id, "k1", &ann_pass).await.unwrap_err();
    assert_eq!(problem(&refused).as_deref(), Some("OTHER_BUYER"));
    let refused = buy_with(&app, &ann, &sale.id, "k1", &ann_other_pass).await.unwrap_err();
    assert_eq!(problem(&refused).as_deref(), Some("OTHER_SALE"));
    let refused = app
        .purchase()
        .join_waitlist(authed(
            pb::JoinWaitlistRequest { sale_id: sale.id.clone(), quantity: 1, admission_pass: String::new() },
            &ann,
        ))
        .await
        .unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, "ADMISSION_REQUIRED");
    // A sale without a room ignores the field.
    buy_with(&app, &ann, &plain.id, "plain", "whatever").await.expect("no room, no pass needed");

    let bought = buy_with(&app, &ann, &sale.id, "k1", &ann_pass).await.expect("the pass lets Ann buy");
    assert_eq!(app.get_sale(&sale.id).await.sold, 1);
    app.advance(Duration::from_secs(60));
    let refused = buy_with(&app, &ann, &sale.id, "k2", &ann_pass).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, "ADMISSION_EXPIRED");
    assert!(error_metadata(&refused, "expired_at").is_some());
    // A retry of the purchase the pass made is still answered with its order.
    let retry = buy_with(&app, &ann, &sale.id, "k1", &ann_pass).await.expect("a retry after the expiry");
    assert!(retry.replayed);
    assert_eq!(retry.order.unwrap().id, bought.order.unwrap().id);
    assert_eq!(app.get_sale(&sale.id).await.sold, 1);
    let expired = place(&app, &ann, &sale.id).await;
    assert_eq!(state(&expired), pb::QueueState::Waiting, "an expired admission enters again at the back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_keeps_the_place_for_the_grace_time_only() {
    let app = manual_app(Duration::from_secs(30)).await;
    let sale = queued_sale(&app, 10, None, room(0, 0, 1, 20), 0).await;
    let tokens: Vec<String> = ["ann", "bob", "cat", "dan"].iter().map(|id| app.buyer_token(id, id)).collect();
    let mut streams = Vec::new();
    for token in &tokens {
        streams.push(enter(&app, token, &sale.id).await);
    }
    app.advance(Duration::from_millis(100));
    admitted(&app, &sale.id, 1).await;
    // Bob drops his stream and comes back: the same place.
    let mut bob = streams.remove(1);
    let first = next_message(&mut bob, "bob's place").await.unwrap();
    drop(bob);
    let again = place(&app, &tokens[1], &sale.id).await;
    assert_eq!((state(&again), again.position), (pb::QueueState::Waiting, 1), "{first:?} then {again:?}");
    // Cat's stream stays open; Ann's admission and Bob's grace both run out.
    let mut cat = streams.remove(1);
    let mut ann = streams.remove(0);
    read_until(&mut ann, "Ann admitted", |u| state(u) == pb::QueueState::Admitted).await;
    app.advance(Duration::from_secs(40));
    read_until(&mut ann, "Ann's admission expires", |u| state(u) == pb::QueueState::Expired).await;
    assert!(next_message(&mut ann, "after EXPIRED").await.is_none(), "the stream ends after EXPIRED");
    let admitted_cat = read_until(&mut cat, "Cat admitted past Bob", |u| state(u) == pb::QueueState::Admitted).await;
    assert!(!admitted_cat.last().unwrap().admission_pass.is_empty());
    // Ann and Cat; Bob was passed over.
    admitted(&app, &sale.id, 2).await;
    // Bob, back after the grace time, gets a new place at the back (behind Dan).
    let back = place(&app, &tokens[1], &sale.id).await;
    assert_eq!((state(&back), back.position), (pb::QueueState::Waiting, 2), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyone_in_the_room_is_told_closed_when_the_sale_ends() {
    let app = manual_app(Duration::from_secs(86_400)).await;
    let sale = queued_sale(&app, 10, None, room(0, 0, 1, 600), 0).await;
    let mut streams = Vec::new();
    for i in 0..5 {
        let token = app.buyer_token(&format!("c{i}"), "Buyer");
        let mut updates = enter(&app, &token, &sale.id).await;
        next_message(&mut updates, "first place").await.unwrap();
        streams.push(updates);
    }
    let mut watch = app.watch(&sale.id).await;
    read_until(&mut watch, "the room's counts in WatchSale", |s| {
        s.queue.is_some() && s.queue_waiting + s.queue_admitted == 5
    })
    .await;
    app.end_sale(&sale.id).await;
    for (i, updates) in streams.iter_mut().enumerate() {
        read_until(updates, &format!("stream {i} told CLOSED"), |u| state(u) == pb::QueueState::Closed).await;
        assert!(next_message(updates, "after CLOSED").await.is_none());
    }
    // Entering an ended sale answers CLOSED at once.
    let late = place(&app, &app.buyer_token("late", "Late"), &sale.id).await;
    assert_eq!(state(&late), pb::QueueState::Closed);

    // Before the room opens, and on a sale without one: QUEUE_NOT_OPEN.
    let later = queued_sale(&app, 10, Some(Duration::from_secs(600)), room(60, 10, 0, 0), 0).await;
    let token = app.buyer_token("early", "Early");
    let refused =
        stream_refusal(app.purchase().enter_queue(authed(pb::EnterQueueRequest { sale_id: later.id.clone() }, &token)))
            .await;
    assert_refused(&refused, Code::FailedPrecondition, "QUEUE_NOT_OPEN");
    assert_eq!(error_metadata(&refused, "opens_at"), Some(timestamp(UnixMillis(T0 + 540_000)).to_string()));
    assert_eq!(later.queue.unwrap().admission_seconds, 300, "0 reads as five minutes");
    let plain = app.active_sale(10, 0, 1).await;
    let refused =
        stream_refusal(app.purchase().enter_queue(authed(pb::EnterQueueRequest { sale_id: plain.id }, &token))).await;
    assert_refused(&refused, Code::FailedPrecondition, "QUEUE_NOT_OPEN");
    assert_eq!(error_metadata(&refused, "opens_at"), None);
    // A room that admits neither by rate nor by cap is refused at creation.
    let product = app.create_product(1).await;
    let refused = app
        .admin()
        .create_sale(authed(
            pb::CreateSaleRequest {
                product_id: product.id,
                allocated: 1,
                unit_price: Some(pb::Money { amount_minor: 1, currency: "EUR".into() }),
                per_user_limit: 0,
                max_per_purchase: 1,
                start_time: None,
                end_time: Some(timestamp(UnixMillis(T0 + 3_600_000))),
                hold_seconds: 0,
                queue: Some(room(0, 0, 0, 0)),
            },
            &app.admin_token(),
        ))
        .await
        .unwrap_err();
    assert_refused(&refused, Code::InvalidArgument, "INVALID_FIELD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_pauses_while_every_unit_is_held_and_resumes_when_one_comes_back() {
    let app = manual_app(Duration::from_secs(86_400)).await;
    let sale = queued_sale(&app, 1, None, room(0, 100, 0, 600), 600).await;
    let (ann, bob) = (app.buyer_token("ann", "Ann"), app.buyer_token("bob", "Bob"));
    let mut ann_room = enter(&app, &ann, &sale.id).await;
    app.advance(Duration::from_secs(1));
    let admitted_ann = read_until(&mut ann_room, "Ann admitted", |u| state(u) == pb::QueueState::Admitted).await;
    let pass = admitted_ann.last().unwrap().admission_pass.clone();
    let held = buy_with(&app, &ann, &sale.id, "ann-1", &pass).await.expect("Ann holds the only unit");
    admitted(&app, &sale.id, 1).await;
    // The bucket is full, Bob is first in line, but nothing is on sale: a round passes him by.
    app.advance(Duration::from_secs(1));
    let mut bob_room = enter(&app, &bob, &sale.id).await;
    let waiting = next_message(&mut bob_room, "Bob waits").await.unwrap();
    assert_eq!((state(&waiting), waiting.position), (pb::QueueState::Waiting, 1));
    let sale_now = app.wait_for_sale(&sale.id, "a round with Bob in line", |s| s.queue_waiting == 1).await;
    assert_eq!(sale_now.queue_admitted, 1, "no admission while the only unit is held");
    // Ann cancels: the unit is on sale again, and Bob is let in.
    app.purchase()
        .cancel_order(authed(pb::CancelOrderRequest { order_id: held.order.unwrap().id }, &ann))
        .await
        .expect("cancel");
    read_until(&mut bob_room, "Bob admitted once the unit came back", |u| state(u) == pb::QueueState::Admitted).await;
    assert_eq!(app.get_sale(&sale.id).await.remaining, 1);
}
