//! The record contract: every `RecordStore` keeps the same promises. Each contract function is
//! generic over the trait and runs against the embedded record (redb in a temp dir) and the
//! MongoDB record (on the shared MongoDB test server, a fresh database per test). Then
//! MongoDB-only tests: concurrent order batches under write conflicts, the stored document
//! types, connection errors, and a server that goes away and comes back.

use crate::mongo_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::domain::{
    CommitRefusal, DisplayName, Email, EndReason, HoldEnd, HoldRefusal, IdempotencyKey, Money, OrderId, OrderRecord,
    OrderStatus, ProductId, ProductRecord, Role, SaleId, SaleRecord, SaleRules, SaleStatus, UnixMillis, UserId,
    UserRecord, WaitlistEntry,
};
use flashsale::store::embedded::RedbRecords;
use flashsale::store::mongo::{connect, MongoRecords};
use flashsale::store::{RecordStore, StoreError};
use mongodb::bson::{doc, Bson, Document};

// ---- fixtures --------------------------------------------------------------------------------

fn user(email: &str, name: &str) -> UserRecord {
    UserRecord {
        id: UserId::generate(),
        email: Email::parse(email).unwrap(),
        display_name: DisplayName::parse(name).unwrap(),
        role: Role::Buyer,
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${name}"),
        created_at: UnixMillis(1_700_000_000_000),
    }
}

fn product(inventory: i64) -> ProductRecord {
    ProductRecord {
        id: ProductId::generate(),
        name: "Lamp ✨".into(),
        description: "A lamp that glows".into(),
        inventory,
        created_at: UnixMillis(1_700_000_000_001),
    }
}

fn sale(product: &ProductRecord, allocated: i64, status: SaleStatus) -> SaleRecord {
    SaleRecord {
        id: SaleId::generate(),
        product_id: product.id.clone(),
        rules: SaleRules {
            queue: None,
            allocated,
            per_user_limit: 4,
            max_per_purchase: 3,
            start: UnixMillis(1_700_000_100_000),
            end: UnixMillis(1_700_000_700_000),
            unit_price: Money::parse(1999, "EUR").unwrap(),
            hold_seconds: 0,
        },
        sold: 0,
        held: 0,
        status,
        end_reason: None,
        ended_at: None,
        created_at: UnixMillis(1_700_000_050_000),
        generation: 1,
    }
}

fn order(sale: &SaleRecord, buyer: &UserId, quantity: u32, key: &str) -> OrderRecord {
    OrderRecord {
        id: OrderId::generate(),
        sale_id: sale.id.clone(),
        buyer_id: buyer.clone(),
        buyer_name: "Zoë 🎉".into(),
        quantity,
        unit_price: sale.rules.unit_price,
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        created_at: UnixMillis(1_700_000_200_000),
        status: OrderStatus::Confirmed,
        expires_at: None,
        payment_reference: None,
        settled_at: None,
    }
}

/// The fields of a sale, comparable (the record type has no `PartialEq`).
fn sale_fields(sale: &SaleRecord) -> impl PartialEq + std::fmt::Debug {
    (
        sale.id.clone(),
        sale.product_id.clone(),
        sale.rules,
        sale.sold,
        sale.status,
        sale.end_reason,
        sale.ended_at,
        sale.created_at,
    )
}

fn user_fields(user: &UserRecord) -> impl PartialEq + std::fmt::Debug {
    (
        user.id.clone(),
        user.email.clone(),
        user.display_name.clone(),
        user.role,
        user.password_hash.clone(),
        user.created_at,
    )
}

fn product_fields(product: &ProductRecord) -> impl PartialEq + std::fmt::Debug {
    (product.id.clone(), product.name.clone(), product.description.clone(), product.inventory, product.created_at)
}

fn ids<'a>(sales: impl IntoIterator<Item = &'a SaleRecord>) -> Vec<SaleId> {
    sales.into_iter().map(|s| s.id.clone()).collect()
}

async fn inventory<R: RecordStore>(store: &R, product: &ProductRecord) -> i64 {
    store.get_product(&product.id).await.unwrap().expect("product").inventory
}

async fn sold<R: RecordStore>(store: &R, sale: &SaleRecord) -> i64 {
    store.get_sale(&sale.id).await.unwrap().expect("sale").sold
}

/// Stores a product and a sale of it (in the given status), and returns both.
async fn on_sale<R: RecordStore>(store: &R, allocated: i64, status: SaleStatus) -> (ProductRecord, SaleRecord) {
    let product = product(allocated + 10);
    store.create_product(product.clone()).await.unwrap();
    let sale = store.create_sale(sale(&product, allocated, status)).await.unwrap();
    (product, sale)
}

// ---- the contract ----------------------------------------------------------------------------

async fn emails_are_unique_and_upsert_keeps_the_id<R: RecordStore>(store: &R) {
    let ann = user("ann@example.com", "Ann");
    store.create_user(ann.clone()).await.unwrap();
    let twin = user("ann@example.com", "Other Ann");
    assert!(matches!(store.create_user(twin).await, Err(StoreError::EmailTaken)));

    let found = store.user_by_email(&ann.email).await.unwrap().expect("ann");
    assert_eq!(user_fields(&found), user_fields(&ann));
    assert!(store.user_by_email(&Email::parse("bob@example.com").unwrap()).await.unwrap().is_none());

    let mut admin = user("ann@example.com", "Ann Admin");
    admin.role = Role::Admin;
    let stored = store.upsert_user_by_email(admin.clone()).await.unwrap();
    assert_eq!(stored.id, ann.id, "an upsert keeps the existing account's id");
    let found = store.user_by_email(&ann.email).await.unwrap().expect("ann");
    assert_eq!((found.id, found.display_name.as_str(), found.role), (ann.id.clone(), "Ann Admin", Role::Admin));

    let carol = user("carol@example.com", "Carol");
    let stored = store.upsert_user_by_email(carol.clone()).await.unwrap();
    assert_eq!(user_fields(&stored), user_fields(&carol));
    assert_eq!(user_fields(&store.user_by_email(&carol.email).await.unwrap().expect("carol")), user_fields(&carol));
    assert!(matches!(store.create_user(user("carol@example.com", "C2")).await, Err(StoreError::EmailTaken)));
}

async fn products_list_oldest_first_and_take_stock<R: RecordStore>(store: &R) {
    assert!(store.products_page(None, 10).await.unwrap().is_empty());
    let products: Vec<ProductRecord> = (0..3).map(|i| product(i * 10)).collect();
    for p in &products {
        store.create_product(p.clone()).await.unwrap();
    }
    let listed = store.products_page(None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(product_fields).collect::<Vec<_>>(),
        products.iter().map(product_fields).collect::<Vec<_>>()
    );
    // A page ends at an id; the next starts after it.
    let first = store.products_page(None, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        [products[0].id.clone(), products[1].id.clone()]
    );
    let rest = store.products_page(Some(&products[1].id), 2).await.unwrap();
    assert_eq!(rest.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), [products[2].id.clone()]);

    let found = store.get_product(&products[1].id).await.unwrap().expect("product");
    assert_eq!(product_fields(&found), product_fields(&products[1]));
    assert!(store.get_product(&ProductId::generate()).await.unwrap().is_none());

    let after = store.add_stock(&products[2].id, 5).await.unwrap();
    assert_eq!(after.inventory, 25);
    assert_eq!(inventory(store, &products[2]).await, 25);
    assert!(matches!(store.add_stock(&ProductId::generate(), 5).await, Err(StoreError::NotFound)));
}

async fn a_sale_takes_its_allocation_atomically<R: RecordStore>(store: &R) {
    let lamp = product(100);
    store.create_product(lamp.clone()).await.unwrap();
    let first = sale(&lamp, 30, SaleStatus::Scheduled);
    let created = store.create_sale(first.clone()).await.unwrap();
    assert_eq!(sale_fields(&created), sale_fields(&first));
    assert_eq!(inventory(store, &lamp).await, 70);

    let too_big = sale(&lamp, 71, SaleStatus::Scheduled);
    match store.create_sale(too_big.clone()).await {
        Err(StoreError::InsufficientInventory { inventory }) => assert_eq!(inventory, 70),
        other => panic!("expected InsufficientInventory, got {other:?}"),
    }
    assert_eq!(inventory(store, &lamp).await, 70, "a refused sale takes nothing");
    assert!(store.get_sale(&too_big.id).await.unwrap().is_none(), "a refused sale is not stored");

    let exact = store.create_sale(sale(&lamp, 70, SaleStatus::Scheduled)).await.unwrap();
    assert_eq!(inventory(store, &lamp).await, 0);

    let ghost = product(5);
    assert!(matches!(store.create_sale(sale(&ghost, 1, SaleStatus::Scheduled)).await, Err(StoreError::NotFound)));

    let stored = store.get_sale(&first.id).await.unwrap().expect("sale");
    assert_eq!(sale_fields(&stored), sale_fields(&first));
    assert!(store.get_sale(&SaleId::generate()).await.unwrap().is_none());
    let _ = exact;
}

/// Filters on cross-references (`product_id`, `sale_id`, `buyer_id`) must match: ids are stored
/// as strings. (A MongoDB record storing them as ObjectIds would fail here on the test server,
/// where a filter on an ObjectId field other than `_id` never matches.)
async fn sales_list_newest_first_by_product<R: RecordStore>(store: &R) {
    let lamp = product(100);
    let desk = product(100);
    store.create_product(lamp.clone()).await.unwrap();
    store.create_product(desk.clone()).await.unwrap();
    let a = store.create_sale(sale(&lamp, 10, SaleStatus::Scheduled)).await.unwrap();
    let b = store.create_sale(sale(&desk, 10, SaleStatus::Active)).await.unwrap();
    let c = store.create_sale(sale(&lamp, 10, SaleStatus::Active)).await.unwrap();

    assert_eq!(ids(&store.sales_page(None, None, 10).await.unwrap()), ids([&c, &b, &a]));
    assert_eq!(ids(&store.sales_page(Some(&lamp.id), None, 10).await.unwrap()), ids([&c, &a]));
    assert_eq!(ids(&store.sales_page(Some(&desk.id), None, 10).await.unwrap()), ids([&b]));
    assert!(store.sales_page(Some(&ProductId::generate()), None, 10).await.unwrap().is_empty());
    // Newest first, a page at a time: the next page starts below the last id.
    assert_eq!(ids(&store.sales_page(None, None, 2).await.unwrap()), ids([&c, &b]));
    assert_eq!(ids(&store.sales_page(None, Some(&b.id), 2).await.unwrap()), ids([&a]));
    assert_eq!(ids(&store.sales_page(Some(&lamp.id), Some(&c.id), 1).await.unwrap()), ids([&a]));

    assert_eq!(ids(&store.open_sales().await.unwrap()), ids([&c, &b, &a]));
    store.end_sale(&b.id, EndReason::ByAdmin, UnixMillis(1_700_000_300_000)).await.unwrap();
    assert_eq!(ids(&store.open_sales().await.unwrap()), ids([&c, &a]));
}

async fn activation_moves_scheduled_to_active_once<R: RecordStore>(store: &R) {
    let (_, scheduled) = on_sale(store, 10, SaleStatus::Scheduled).await;
    let (started, changed) = store.activate_sale(&scheduled.id, UnixMillis(1_700_000_090_000)).await.unwrap();
    assert!(changed);
    assert_eq!((started.status, started.rules.start), (SaleStatus::Active, UnixMillis(1_700_000_090_000)));
    let stored = store.get_sale(&scheduled.id).await.unwrap().expect("sale");
    assert_eq!(sale_fields(&stored), sale_fields(&started));

    let (again, changed) = store.activate_sale(&scheduled.id, UnixMillis(1_700_000_095_000)).await.unwrap();
    assert!(!changed, "an active sale is returned unchanged");
    assert_eq!(again.rules.start, UnixMillis(1_700_000_090_000));

    store.end_sale(&scheduled.id, EndReason::ByAdmin, UnixMillis(1_700_000_099_000)).await.unwrap();
    assert!(matches!(
        store.activate_sale(&scheduled.id, UnixMillis(1_700_000_100_000)).await,
        Err(StoreError::WrongStatus(SaleStatus::Ended))
    ));
    assert!(matches!(store.activate_sale(&SaleId::generate(), UnixMillis(0)).await, Err(StoreError::NotFound)));
}

async fn an_end_returns_unsold_units_exactly_once<R: RecordStore>(store: &R) {
    let lamp = product(50);
    store.create_product(lamp.clone()).await.unwrap();
    let open = store.create_sale(sale(&lamp, 20, SaleStatus::Active)).await.unwrap();
    assert_eq!(inventory(store, &lamp).await, 30);
    let buyer = UserId::generate();
    let outcomes = store
        .commit_orders(&[order(&open, &buyer, 3, "a"), order(&open, &buyer, 3, "b"), order(&open, &buyer, 1, "c")])
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok));

    let at = UnixMillis(1_700_000_400_000);
    let (ended, changed) = store.end_sale(&open.id, EndReason::ByAdmin, at).await.unwrap();
    assert!(changed);
    assert_eq!(
        (ended.status, ended.end_reason, ended.ended_at, ended.sold),
        (SaleStatus::Ended, Some(EndReason::ByAdmin), Some(at), 7)
    );
    assert_eq!(inventory(store, &lamp).await, 30 + 13, "allocated - sold goes back");

    let (again, changed) = store.end_sale(&open.id, EndReason::TimeUp, UnixMillis(1_700_000_500_000)).await.unwrap();
    assert!(!changed, "an ended sale does not end again");
    assert_eq!((again.end_reason, again.ended_at), (Some(EndReason::ByAdmin), Some(at)));
    assert_eq!(inventory(store, &lamp).await, 43, "units return once");
    let stored = store.get_sale(&open.id).await.unwrap().expect("sale");
    assert_eq!(sale_fields(&stored), sale_fields(&ended));

    let (_, untouched) = on_sale(store, 8, SaleStatus::Scheduled).await;
    let (ended, _) = store.end_sale(&untouched.id, EndReason::TimeUp, at).await.unwrap();
    assert_eq!((ended.sold, ended.end_reason), (0, Some(EndReason::TimeUp)));
    let product = store.get_product(&untouched.product_id).await.unwrap().expect("product");
    assert_eq!(product.inventory, 18, "an unsold sale gives everything back");

    assert!(matches!(store.end_sale(&SaleId::generate(), EndReason::ByAdmin, at).await, Err(StoreError::NotFound)));
}

async fn a_batch_refuses_per_order_and_keeps_the_rest<R: RecordStore>(store: &R) {
    let (_, a) = on_sale(store, 5, SaleStatus::Active).await;
    let (_, b) = on_sale(store, 10, SaleStatus::Active).await;
    let (_, c) = on_sale(store, 10, SaleStatus::Active).await;
    store.end_sale(&c.id, EndReason::ByAdmin, UnixMillis(1_700_000_300_000)).await.unwrap();
    let (ann, bob, cat) = (UserId::generate(), UserId::generate(), UserId::generate());

    assert_eq!(store.commit_orders(&[order(&a, &ann, 1, "k0")]).await.unwrap(), vec![Ok(())]);
    let batch = vec![
        order(&a, &ann, 2, "k1"), // sold 3 of 5
        order(&a, &bob, 3, "k2"), // would be 6
        order(&a, &bob, 2, "k2"), // sold 5: the refused order's key was not taken
        order(&a, &ann, 1, "k0"), // full: oversell is checked before the duplicate key
        order(&b, &ann, 1, "k0"), // the same key in another sale is another order
        order(&b, &ann, 1, "k0"), // the same order twice in one batch
        order(&b, &cat, 1, "k9"),
        order(&c, &ann, 1, "k5"), // after the end
        order(&b, &ann, 1, "k1"),
    ];
    let outcomes = store.commit_orders(&batch).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            Ok(()),
            Err(CommitRefusal::WouldOversell),
            Ok(()),
            Err(CommitRefusal::WouldOversell),
            Ok(()),
            Err(CommitRefusal::Duplicate),
            Ok(()),
            Err(CommitRefusal::SaleEnded),
            Ok(()),
        ]
    );
    assert_eq!((sold(store, &a).await, sold(store, &b).await, sold(store, &c).await), (5, 3, 0));
    for (order, outcome) in batch.iter().zip(&outcomes) {
        let stored = store.get_order(&order.id).await.unwrap();
        match outcome {
            Ok(()) => assert_eq!(stored.as_ref(), Some(order), "accepted orders are stored as given"),
            Err(_) => assert_eq!(stored, None, "refused orders are not stored"),
        }
    }

    // Against orders stored by an earlier batch.
    let later = [order(&b, &cat, 1, "k9"), order(&b, &cat, 1, "k10")];
    assert_eq!(store.commit_orders(&later).await.unwrap(), vec![Err(CommitRefusal::Duplicate), Ok(())]);
    assert_eq!(sold(store, &b).await, 4);

    // A batch naming a missing sale writes nothing at all.
    let ghost = sale(&product(1), 1, SaleStatus::Active);
    let doomed = [order(&b, &bob, 1, "x"), order(&ghost, &bob, 1, "y")];
    assert!(matches!(store.commit_orders(&doomed).await, Err(StoreError::NotFound)));
    assert_eq!(store.get_order(&doomed[0].id).await.unwrap(), None);
    assert_eq!(sold(store, &b).await, 4);

    assert_eq!(store.commit_orders(&[]).await.unwrap(), vec![]);
}

async fn orders_are_found_by_buyer_sale_and_key<R: RecordStore>(store: &R) {
    let (_, s) = on_sale(store, 100, SaleStatus::Active).await;
    let (_, t) = on_sale(store, 100, SaleStatus::Active).await;
    let (ann, bob) = (UserId::generate(), UserId::generate());
    let mut o1 = order(&s, &ann, 1, "first");
    // Small and large integers alike come back exactly.
    o1.created_at = UnixMillis(5);
    let o2 = order(&s, &bob, 2, "first");
    let mut o3 = order(&t, &ann, 3, "first");
    o3.created_at = UnixMillis(i64::from(i32::MAX) + 1);
    let o4 = order(&s, &ann, 1, "second");
    store.commit_orders(&[o1.clone(), o2.clone()]).await.unwrap();
    store.commit_orders(std::slice::from_ref(&o3)).await.unwrap();
    store.commit_orders(std::slice::from_ref(&o4)).await.unwrap();

    assert_eq!(store.orders_of_buyer(&ann, None).await.unwrap(), vec![o1.clone(), o3.clone(), o4.clone()]);
    assert_eq!(store.orders_of_buyer(&ann, Some(&s.id)).await.unwrap(), vec![o1.clone(), o4.clone()]);
    assert_eq!(store.orders_of_buyer(&ann, Some(&t.id)).await.unwrap(), vec![o3.clone()]);
    assert_eq!(store.orders_of_buyer(&bob, Some(&t.id)).await.unwrap(), vec![]);
    assert_eq!(store.orders_of_buyer(&UserId::generate(), None).await.unwrap(), vec![]);

    assert_eq!(store.orders_of_sale(&s.id).await.unwrap(), vec![o1.clone(), o2.clone(), o4.clone()]);
    assert_eq!(store.orders_of_sale(&t.id).await.unwrap(), vec![o3.clone()]);
    assert_eq!(store.orders_of_sale(&SaleId::generate()).await.unwrap(), vec![]);

    let first = IdempotencyKey::parse("first").unwrap();
    assert_eq!(store.order_by_key(&ann, &s.id, &first).await.unwrap(), Some(o1.clone()));
    assert_eq!(store.order_by_key(&bob, &s.id, &first).await.unwrap(), Some(o2.clone()));
    assert_eq!(store.order_by_key(&ann, &t.id, &first).await.unwrap(), Some(o3.clone()));
    assert_eq!(store.order_by_key(&bob, &t.id, &first).await.unwrap(), None);
    assert_eq!(store.order_by_key(&ann, &s.id, &IdempotencyKey::parse("third").unwrap()).await.unwrap(), None);

    assert_eq!(store.get_order(&o3.id).await.unwrap(), Some(o3));
    assert_eq!(store.get_order(&OrderId::generate()).await.unwrap(), None);
}

async fn each_build_of_a_sale_takes_the_next_generation<R: RecordStore>(store: &R) {
    let (_, s) = on_sale(store, 10, SaleStatus::Active).await;
    assert_eq!(store.get_sale(&s.id).await.unwrap().unwrap().generation, 1);
    let next = store.next_generation(&s.id).await.unwrap();
    assert_eq!((next.id.clone(), next.generation, next.rules), (s.id.clone(), 2, s.rules));
    assert_eq!(store.next_generation(&s.id).await.unwrap().generation, 3);
    assert_eq!(store.get_sale(&s.id).await.unwrap().unwrap().generation, 3, "kept");
    assert!(matches!(store.next_generation(&SaleId::generate()).await, Err(StoreError::NotFound)));
}

/// A HELD order of `sale` expiring at `expires_at`.
fn hold(sale: &SaleRecord, buyer: &UserId, quantity: u32, key: &str, expires_at: i64) -> OrderRecord {
    OrderRecord {
        status: OrderStatus::Held,
        expires_at: Some(UnixMillis(expires_at)),
        ..order(sale, buyer, quantity, key)
    }
}

async fn counters<R: RecordStore>(store: &R, sale: &SaleRecord) -> (i64, i64) {
    let sale = store.get_sale(&sale.id).await.unwrap().expect("sale");
    (sale.sold, sale.held)
}

async fn a_hold_ends_once_and_only_as_the_rules_allow<R: RecordStore>(store: &R) {
    let (_, s) = on_sale(store, 5, SaleStatus::Active).await;
    let ann = UserId::generate();
    let (paid, lapsed) = (hold(&s, &ann, 2, "k-1", 1_000), hold(&s, &ann, 1, "k-2", 2_000));
    let outcomes = store.commit_orders(&[paid.clone(), lapsed.clone()]).await.unwrap();
    assert_eq!(outcomes, [Ok(()), Ok(())]);
    assert_eq!(counters(store, &s).await, (3, 3), "held units count as sold and as held");
    let found = store.get_order(&paid.id).await.unwrap().unwrap();
    assert_eq!((found.status, found.expires_at), (OrderStatus::Held, Some(UnixMillis(1_000))));

    // A confirm at the deadline is too late; before it, it wins, once.
    let late = store.end_hold(&paid.id, HoldEnd::Confirm, UnixMillis(1_000), Some("pay-1")).await.unwrap();
    assert!(matches!(late, Err((HoldRefusal::Expired, ref order)) if order.status == OrderStatus::Held));
    let confirmed = store.end_hold(&paid.id, HoldEnd::Confirm, UnixMillis(999), Some("pay-1")).await.unwrap().unwrap();
    assert_eq!(
        (confirmed.status, confirmed.payment_reference.as_deref(), confirmed.settled_at),
        (OrderStatus::Confirmed, Some("pay-1"), Some(UnixMillis(999)))
    );
    assert_eq!(counters(store, &s).await, (3, 1), "a confirmed hold stays sold");
    let again = store.end_hold(&paid.id, HoldEnd::Expire, UnixMillis(5_000), None).await.unwrap();
    assert!(matches!(again, Err((HoldRefusal::NotHeld(OrderStatus::Confirmed), _))));
    let stored = store.get_order(&paid.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.payment_reference.as_deref()), (OrderStatus::Confirmed, Some("pay-1")));

    // An expiry before the deadline changes nothing; at it, the units leave `sold`.
    let early = store.end_hold(&lapsed.id, HoldEnd::Expire, UnixMillis(1_999), None).await.unwrap();
    assert!(matches!(early, Err((HoldRefusal::NotDue, _))));
    let expired = store.end_hold(&lapsed.id, HoldEnd::Expire, UnixMillis(2_000), None).await.unwrap().unwrap();
    assert_eq!(expired.status, OrderStatus::Expired);
    assert_eq!(counters(store, &s).await, (2, 0));
    let cancel = store.end_hold(&lapsed.id, HoldEnd::Cancel, UnixMillis(2_001), None).await.unwrap();
    assert!(matches!(cancel, Err((HoldRefusal::NotHeld(OrderStatus::Expired), _))), "ended once");
    assert_eq!(counters(store, &s).await, (2, 0), "units given back once");
    assert!(matches!(
        store.end_hold(&OrderId::generate(), HoldEnd::Cancel, UnixMillis(0), None).await,
        Err(StoreError::NotFound)
    ));
}

async fn the_holds_of_an_ended_sale_return_their_units_to_the_product<R: RecordStore>(store: &R) {
    let (product, s) = on_sale(store, 5, SaleStatus::Active).await;
    let start = inventory(store, &product).await;
    let (ann, bob) = (UserId::generate(), UserId::generate());
    let (kept, dropped) = (hold(&s, &ann, 2, "k-1", 9_000), hold(&s, &bob, 1, "k-2", 9_000));
    store.commit_orders(&[kept.clone(), dropped.clone()]).await.unwrap();
    // The end returns what no order holds: 5 - 3.
    store.end_sale(&s.id, EndReason::TimeUp, UnixMillis(5_000)).await.unwrap();
    assert_eq!(inventory(store, &product).await, start + 2);
    // A hold keeps its own deadline after the end: paid, it stays sold; cancelled, its unit
    // returns to the product, once.
    store.end_hold(&kept.id, HoldEnd::Confirm, UnixMillis(6_000), Some("pay")).await.unwrap().unwrap();
    store.end_hold(&dropped.id, HoldEnd::Cancel, UnixMillis(6_000), None).await.unwrap().unwrap();
    assert!(store.end_hold(&dropped.id, HoldEnd::Cancel, UnixMillis(6_001), None).await.unwrap().is_err());
    assert_eq!(inventory(store, &product).await, start + 3);
    assert_eq!(counters(store, &s).await, (2, 0));
}

async fn holds_are_listed_earliest_deadline_first<R: RecordStore>(store: &R) {
    let (_, s) = on_sale(store, 10, SaleStatus::Active).await;
    let buyer = UserId::generate();
    let late = hold(&s, &buyer, 1, "late", 3_000);
    let early = hold(&s, &buyer, 1, "early", 1_000);
    let middle = hold(&s, &buyer, 1, "middle", 2_000);
    let paid = order(&s, &buyer, 1, "paid");
    store.commit_orders(&[late.clone(), early.clone(), paid, middle.clone()]).await.unwrap();
    let listed: Vec<OrderId> = store.earliest_holds(10).await.unwrap().into_iter().map(|o| o.id).collect();
    assert_eq!(listed, [early.id.clone(), middle.id.clone(), late.id.clone()]);
    assert_eq!(store.earliest_holds(1).await.unwrap()[0].id, early.id);
    store.end_hold(&early.id, HoldEnd::Cancel, UnixMillis(10), None).await.unwrap().unwrap();
    let listed: Vec<OrderId> = store.earliest_holds(10).await.unwrap().into_iter().map(|o| o.id).collect();
    assert_eq!(listed, [middle.id, late.id], "an ended hold is no longer listed");
}

async fn places_in_line_are_kept_first_come_first<R: RecordStore>(store: &R) {
    let (_, s) = on_sale(store, 5, SaleStatus::Active).await;
    let (_, other) = on_sale(store, 5, SaleStatus::Active).await;
    let place = |buyer: &str, at: i64| WaitlistEntry {
        order_id: OrderId::generate(),
        buyer_id: UserId::parse(buyer).unwrap(),
        buyer_name: format!("Name of {buyer}").into(),
        quantity: 1,
        joined_at: UnixMillis(at),
    };
    let (zed, yan) = (place("zed", 10), place("yan", 20));
    store.save_waitlist_entry(&s.id, &yan).await.unwrap();
    store.save_waitlist_entry(&s.id, &zed).await.unwrap();
    store.save_waitlist_entry(&s.id, &place("zed", 30)).await.unwrap(); // zed keeps the first place
    store.save_waitlist_entry(&other.id, &place("xia", 5)).await.unwrap();
    assert_eq!(store.waitlist_of_sale(&s.id).await.unwrap(), [zed.clone(), yan.clone()]);
    store.remove_waitlist_entries(&s.id, &[zed.buyer_id.clone(), UserId::parse("nobody").unwrap()]).await.unwrap();
    assert_eq!(store.waitlist_of_sale(&s.id).await.unwrap(), [yan]);
    assert_eq!(store.waitlist_of_sale(&other.id).await.unwrap().len(), 1, "another sale's line is its own");
}

async fn order_pages_follow_ids_and_filters<R: RecordStore>(store: &R) {
    let (_, s) = on_sale(store, 100, SaleStatus::Active).await;
    let (_, t) = on_sale(store, 100, SaleStatus::Active).await;
    let (ann, bob) = (UserId::generate(), UserId::generate());
    let mut made = Vec::new();
    for i in 0..7 {
        let buyer = if i % 2 == 0 { &ann } else { &bob };
        let mut o =
            if i < 4 { order(&s, buyer, 1, &format!("k{i}")) } else { hold(&s, buyer, 1, &format!("k{i}"), 9_000) };
        o.created_at = UnixMillis(1_000 + i);
        made.push(o);
    }
    // Committed out of id order: listings still go by id.
    let (front, back) = made.split_at(3);
    store.commit_orders(back).await.unwrap();
    store.commit_orders(front).await.unwrap();
    store.commit_orders(&[order(&t, &ann, 1, "other-sale")]).await.unwrap();
    let of_sale = flashsale::store::OrderFilter { sale: Some(s.id.clone()), ..Default::default() };
    let id_list = |orders: Vec<OrderRecord>| orders.into_iter().map(|o| o.id).collect::<Vec<_>>();
    let all: Vec<OrderId> = made.iter().map(|o| o.id.clone()).collect();

    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = id_list(store.orders_page(&of_sale, after.as_ref(), 3).await.unwrap());
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        walked.extend(page);
    }
    assert_eq!(walked, all, "pages of 3 walk the sale's orders by id, once each");
    assert_eq!(store.count_orders(&of_sale).await.unwrap(), 7);

    let held = flashsale::store::OrderFilter { status: Some(OrderStatus::Held), ..of_sale.clone() };
    assert_eq!(id_list(store.orders_page(&held, None, 10).await.unwrap()), all[4..].to_vec());
    assert_eq!(store.count_orders(&held).await.unwrap(), 3);
    let confirmed = flashsale::store::OrderFilter { status: Some(OrderStatus::Confirmed), ..of_sale.clone() };
    assert_eq!(id_list(store.orders_page(&confirmed, Some(&all[1]), 10).await.unwrap()), all[2..4].to_vec());
    let recent = flashsale::store::OrderFilter { created_after: Some(UnixMillis(1_005)), ..of_sale.clone() };
    assert_eq!(id_list(store.orders_page(&recent, None, 10).await.unwrap()), all[5..].to_vec());
    let anns =
        flashsale::store::OrderFilter { buyer: Some(ann.clone()), sale: Some(s.id.clone()), ..Default::default() };
    let expected: Vec<OrderId> = all.iter().step_by(2).cloned().collect();
    assert_eq!(id_list(store.orders_page(&anns, None, 2).await.unwrap()), expected[..2].to_vec());
    assert_eq!(id_list(store.orders_page(&anns, Some(&expected[1]), 10).await.unwrap()), expected[2..].to_vec());
}

async fn order_events_follow_commit_order_without_gaps<R: RecordStore>(store: &R) {
    let (_, s) = on_sale(store, 100, SaleStatus::Active).await;
    let (_, t) = on_sale(store, 100, SaleStatus::Active).await;
    let ann = UserId::generate();
    let empty = store.order_events(0, None, 10).await.unwrap();
    assert_eq!((empty.events.len(), empty.oldest, empty.head), (0, None, 0));

    let (mut a, mut b) = (hold(&s, &ann, 1, "a", 5_000), hold(&s, &ann, 1, "b", 5_000));
    let mut c = order(&t, &ann, 2, "c");
    (a.created_at, b.created_at, c.created_at) = (UnixMillis(1_000), UnixMillis(1_001), UnixMillis(2_000));
    let refused = order(&s, &ann, 1, "a"); // the same key again: refused, no event
    store.commit_orders(&[a.clone(), b.clone()]).await.unwrap();
    store.commit_orders(&[c.clone(), refused]).await.unwrap();
    store.end_hold(&b.id, HoldEnd::Confirm, UnixMillis(4_000), Some("pay-b")).await.unwrap().unwrap();
    store.end_hold(&a.id, HoldEnd::Expire, UnixMillis(5_000), None).await.unwrap().unwrap();
    // A refused end writes no event.
    store.end_hold(&a.id, HoldEnd::Cancel, UnixMillis(5_001), None).await.unwrap().unwrap_err();

    use flashsale::domain::OrderEventKind as Kind;
    let page = store.order_events(0, None, 100).await.unwrap();
    let seen: Vec<(u64, Kind, OrderId, OrderStatus)> =
        page.events.iter().map(|e| (e.sequence, e.kind, e.order.id.clone(), e.order.status)).collect();
    assert_eq!(
        seen,
        [
            (1, Kind::Created, a.id.clone(), OrderStatus::Held),
            (2, Kind::Created, b.id.clone(), OrderStatus::Held),
            (3, Kind::Created, c.id.clone(), OrderStatus::Confirmed),
            (4, Kind::Confirmed, b.id.clone(), OrderStatus::Confirmed),
            (5, Kind::Expired, a.id.clone(), OrderStatus::Expired),
        ]
    );
    assert_eq!((page.oldest, page.head, page.scanned), (Some(1), 5, 5));
    assert_eq!(page.events[3].order.payment_reference.as_deref(), Some("pay-b"));
    assert_eq!(page.events[3].at(), UnixMillis(4_000), "a hold's end happened when it settled");

    // From a cursor, in small reads, and of one sale.
    let after_two = store.order_events(2, None, 2).await.unwrap();
    assert_eq!(after_two.events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(after_two.scanned, 4);
    let of_s = store.order_events(0, Some(&s.id), 100).await.unwrap();
    assert_eq!(of_s.events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 4, 5]);
    assert_eq!(of_s.scanned, 5, "the other sale's event was looked at too");
    assert!(store.order_events(5, None, 10).await.unwrap().events.is_empty());

    // Pruning deletes what happened before the time, never the newest event; the numbering goes on.
    assert_eq!(store.prune_order_events(UnixMillis(3_000)).await.unwrap(), 3);
    let kept = store.order_events(0, None, 100).await.unwrap();
    assert_eq!(kept.events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [4, 5]);
    assert_eq!((kept.oldest, kept.head), (Some(4), 5));
    assert_eq!(flashsale::domain::check_cursor(3, kept.oldest, kept.head), Ok(()));
    assert!(flashsale::domain::check_cursor(2, kept.oldest, kept.head).is_err(), "event 3 is gone");
    assert_eq!(store.prune_order_events(UnixMillis(1_000_000)).await.unwrap(), 1, "the newest stays");
    let d = order(&t, &ann, 1, "d");
    store.commit_orders(std::slice::from_ref(&d)).await.unwrap();
    let last = store.order_events(5, None, 100).await.unwrap();
    assert_eq!(last.events.iter().map(|e| (e.sequence, e.order.id.clone())).collect::<Vec<_>>(), [(6, d.id)]);
    assert_eq!((last.oldest, last.head), (Some(5), 6));
}

/// One test per contract function and backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::RedbRecords::open(dir.path()).unwrap();
                    super::$name(&store).await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = super::mongo_store("contract").await;
                    super::$name(&store).await;
                }
            )*
        }
    };
}

contract!(
    emails_are_unique_and_upsert_keeps_the_id,
    products_list_oldest_first_and_take_stock,
    a_sale_takes_its_allocation_atomically,
    sales_list_newest_first_by_product,
    activation_moves_scheduled_to_active_once,
    an_end_returns_unsold_units_exactly_once,
    a_batch_refuses_per_order_and_keeps_the_rest,
    orders_are_found_by_buyer_sale_and_key,
    each_build_of_a_sale_takes_the_next_generation,
    a_hold_ends_once_and_only_as_the_rules_allow,
    the_holds_of_an_ended_sale_return_their_units_to_the_product,
    holds_are_listed_earliest_deadline_first,
    places_in_line_are_kept_first_come_first,
    order_pages_follow_ids_and_filters,
    order_events_follow_commit_order_without_gaps,
);

// ---- embedded only ---------------------------------------------------------------------------

/// The embedded record keeps its by-sale, per-buyer and idempotency-key indexes in memory:
/// reopening the file must rebuild all three from the stored orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_embedded_record_finds_orders_by_sale_buyer_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let ann = UserId::generate();
    let (s, first, second) = {
        let store = RedbRecords::open(dir.path()).unwrap();
        let (_, s) = on_sale(&store, 100, SaleStatus::Active).await;
        let (first, second) = (order(&s, &ann, 1, "first"), order(&s, &ann, 2, "second"));
        store.commit_orders(std::slice::from_ref(&first)).await.unwrap();
        store.commit_orders(std::slice::from_ref(&second)).await.unwrap();
        (s, first, second)
    };
    let store = RedbRecords::open(dir.path()).unwrap();
    let both = vec![first.clone(), second.clone()];
    assert_eq!(store.orders_of_sale(&s.id).await.unwrap(), both);
    assert_eq!(store.orders_of_buyer(&ann, Some(&s.id)).await.unwrap(), both);
    let key = IdempotencyKey::parse("second").unwrap();
    assert_eq!(store.order_by_key(&ann, &s.id, &key).await.unwrap(), Some(second.clone()));
    // The reopened record still refuses a second order under a stored key.
    let retry = order(&s, &ann, 2, "second");
    assert_eq!(store.commit_orders(&[retry]).await.unwrap(), vec![Err(CommitRefusal::Duplicate)]);
    assert_eq!(sold(&store, &s).await, 3);
    // The sale's events are found by sale again (the by-sale index of events is rebuilt), and
    // new ones follow them.
    let (_, other) = on_sale(&store, 10, SaleStatus::Active).await;
    let third = order(&s, &ann, 1, "third");
    store.commit_orders(&[order(&other, &ann, 1, "elsewhere"), third.clone()]).await.unwrap();
    let events = store.order_events(0, Some(&s.id), 10).await.unwrap();
    let ids: Vec<OrderId> = events.events.iter().map(|e| e.order.id.clone()).collect();
    assert_eq!(ids, [first.id.clone(), second.id.clone(), third.id.clone()]);
    assert_eq!(events.events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 4]);
    assert_eq!(events.scanned, 4);
    let after = store.order_events(2, Some(&s.id), 10).await.unwrap();
    assert_eq!(after.events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [4]);
}

// ---- MongoDB only ----------------------------------------------------------------------------

/// A MongoDB record in a database of its own on the shared test server.
async fn mongo_store(prefix: &str) -> MongoRecords {
    let server = tokio::task::block_in_place(mongo_support::shared);
    connect(&server.uri(), &mongo_support::fresh_database(prefix)).await.expect("connecting to the test server")
}

/// Several nodes' committers at once, and another client holding transactions on the sale
/// longer than the test server lets a transaction wait: batches meet WriteConflict
/// (TransientTransactionError) and retry, and the record still sells exactly the allocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_never_oversell_and_retry_conflicts() {
    const ALLOCATED: i64 = 150;
    const INITIAL: i64 = 1000;
    let server = tokio::task::block_in_place(mongo_support::shared);
    let database = mongo_support::fresh_database("rush");
    let store = connect(&server.uri(), &database).await.unwrap();
    let lamp = product(INITIAL);
    store.create_product(lamp.clone()).await.unwrap();
    let sale = store.create_sale(sale(&lamp, ALLOCATED, SaleStatus::Active)).await.unwrap();

    let raw = mongodb::Client::with_uri_str(server.uri()).await.unwrap();
    let sales = raw.database(&database).collection::<Document>("sales");
    let (held, first_hold) = tokio::sync::oneshot::channel();
    let intruder = tokio::spawn({
        let sale_id = sale.id.to_string();
        async move {
            let mut held = Some(held);
            let mut holds = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            while holds < 3 && Instant::now() < deadline {
                let mut session = raw.start_session().await.unwrap();
                session.start_transaction().await.unwrap();
                let touched = sales
                    .update_one(doc! { "_id": &sale_id }, doc! { "$set": { "touched": true } })
                    .session(&mut session)
                    .await;
                if touched.is_ok() {
                    holds += 1;
                    if let Some(held) = held.take() {
                        let _ = held.send(());
                    }
                    // Longer than the test server's wait for a turn (250 ms).
                    tokio::time::sleep(Duration::from_millis(600)).await;
                }
                let _ = session.abort_transaction().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            holds
        }
    });
    first_hold.await.expect("the intruding transaction began");

    let store = Arc::new(store);
    let mut buyers = Vec::new();
    for task in 0..6u32 {
        let (store, sale) = (store.clone(), sale.clone());
        buyers.push(tokio::spawn(async move {
            let buyer = UserId::generate();
            let mut accepted = Vec::new();
            for batch in 0..12u32 {
                let orders: Vec<OrderRecord> = (0..5u32)
                    .map(|i| {
                        order(&sale, &buyer, (task * 7 + batch * 3 + i) % 3 + 1, &format!("t{task}-b{batch}-o{i}"))
                    })
                    .collect();
                let outcomes = store.commit_orders(&orders).await.expect("a batch commits despite conflicts");
                for (order, outcome) in orders.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(()) => accepted.push(order),
                        Err(CommitRefusal::WouldOversell) => {}
                        Err(other) => panic!("unexpected refusal {other:?}"),
                    }
                }
            }
            accepted
        }));
    }
    let mut accepted = Vec::new();
    for buyer in buyers {
        accepted.extend(buyer.await.unwrap());
    }
    assert_eq!(intruder.await.unwrap(), 3, "the intruder held its transactions");

    // Single units until the record refuses: the allocation sells out exactly.
    let last_buyer = UserId::generate();
    for i in 0.. {
        let one = order(&sale, &last_buyer, 1, &format!("last-{i}"));
        match store.commit_orders(std::slice::from_ref(&one)).await.unwrap()[0] {
            Ok(()) => accepted.push(one),
            Err(CommitRefusal::WouldOversell) => break,
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }

    let units: i64 = accepted.iter().map(|o| i64::from(o.quantity)).sum();
    let stored = store.orders_of_sale(&sale.id).await.unwrap();
    let stored_units: i64 = stored.iter().map(|o| i64::from(o.quantity)).sum();
    assert_eq!(sold(&*store, &sale).await, ALLOCATED, "sold exactly the allocation");
    assert_eq!((units, stored_units), (ALLOCATED, ALLOCATED), "every accepted unit is stored, nothing else");
    assert_eq!(
        stored.iter().map(|o| &o.id).collect::<HashSet<_>>(),
        accepted.iter().map(|o| &o.id).collect::<HashSet<_>>()
    );
    let (_, changed) = store.end_sale(&sale.id, EndReason::SoldOut, UnixMillis(1_700_000_600_000)).await.unwrap();
    assert!(changed);
    assert_eq!(inventory(&*store, &lamp).await + ALLOCATED, INITIAL, "inventory + sold = what there was");
    assert!(store.retries() > 0, "conflicting batches were retried");
}

/// The documents hold strings for every id and integers for money and times, whatever the
/// domain types' serde forms are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_documents_use_string_ids_and_integer_money() {
    let server = tokio::task::block_in_place(mongo_support::shared);
    let database = mongo_support::fresh_database("layout");
    let store = connect(&server.uri(), &database).await.unwrap();
    let (lamp, sale) = on_sale(&store, 10, SaleStatus::Active).await;
    let buyer = UserId::generate();
    store.commit_orders(&[order(&sale, &buyer, 2, "k")]).await.unwrap();

    let raw = mongodb::Client::with_uri_str(server.uri()).await.unwrap().database(&database);
    let stored = raw.collection::<Document>("sales").find_one(doc! { "product_id": lamp.id.as_str() }).await.unwrap();
    let stored = stored.expect("the sale is found by its product id as a string");
    assert_eq!(stored.get("_id"), Some(&Bson::String(sale.id.to_string())));
    assert!(is_integer(stored.get_document("unit_price").unwrap().get("amount_minor")), "{stored:?}");
    assert!(is_integer(stored.get("start_at")) && is_integer(stored.get("sold")), "{stored:?}");
    let order = raw.collection::<Document>("orders").find_one(doc! { "buyer_id": buyer.as_str() }).await.unwrap();
    let order = order.expect("the order is found by its buyer id as a string");
    assert_eq!(order.get("sale_id"), Some(&Bson::String(sale.id.to_string())));
    assert!(is_integer(order.get_document("unit_price").unwrap().get("amount_minor")), "{order:?}");
}

fn is_integer(value: Option<&Bson>) -> bool {
    matches!(value, Some(Bson::Int64(_) | Bson::Int32(_)))
}

/// An unreachable server fails `connect` within a few seconds, naming MongoDB and the URI
/// without its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_unreachable_server_fails_fast_and_hides_the_password() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let error = match connect(&format!("mongodb://ann:s3cret@127.0.0.1:{port}/"), "flashsale").await {
        Ok(_) => panic!("connected to a closed port"),
        Err(error) => format!("{error:#}"),
    };
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(error.contains("MongoDB") && error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
}

/// A standalone server has no transactions: refused at start-up, not at the first sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_a_standalone_server() {
    let server = tokio::task::block_in_place(mongo_support::MongoTestServer::start_standalone);
    let uri = format!("mongodb://127.0.0.1:{}/", server.port());
    let error = match connect(&uri, "flashsale").await {
        Ok(_) => panic!("accepted a standalone server"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("standalone") && error.contains("replica set") && error.contains(&uri), "{error}");
}

/// A server that goes away makes operations `Unavailable`; the same server restarted on its
/// file has the data back, and the store carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable_and_a_restarted_one_has_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("record.db");
    let mut server = tokio::task::block_in_place(|| mongo_support::MongoTestServer::start(Some(&file)));
    let store = connect(&server.uri(), "restart").await.unwrap();
    let (lamp, sale) = on_sale(&store, 10, SaleStatus::Active).await;
    let buyer = UserId::generate();
    store.commit_orders(&[order(&sale, &buyer, 2, "before")]).await.unwrap();

    let port = server.port();
    server.kill();
    assert!(matches!(store.get_product(&lamp.id).await, Err(StoreError::Unavailable(_))));
    assert!(matches!(store.commit_orders(&[order(&sale, &buyer, 1, "during")]).await, Err(StoreError::Unavailable(_))));

    let _server = tokio::task::block_in_place(|| mongo_support::MongoTestServer::start_on(port, Some(&file)));
    let deadline = Instant::now() + Duration::from_secs(20);
    let outcomes = loop {
        match store.commit_orders(&[order(&sale, &buyer, 1, "after")]).await {
            Ok(outcomes) => break outcomes,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => tokio::task::yield_now().await,
            Err(other) => panic!("the store did not recover: {other:?}"),
        }
    };
    assert_eq!(outcomes, vec![Ok(())]);
    assert_eq!(sold(&store, &sale).await, 3, "the order from before the stop survived, the refused one is absent");
    assert_eq!(store.orders_of_sale(&sale.id).await.unwrap().len(), 2);
}
