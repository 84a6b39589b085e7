//! Waiting rooms (sales with `queue` on): entering, the admission rounds, the streams that tell
//! each buyer their place, and the pass Purchase and JoinWaitlist check.
//!
//! - The line itself is the [`QueueStore`]'s (in process, or one per sale in Redis shared by
//!   every node). Each node that has buyers of a sale in its streams runs a **room** for it: a
//!   task that, every [`ROUND`], tells the store which buyers it still sees (every quarter of the
//!   grace time), runs an admission round once the sale is open, and measures the admission
//!   rate. Rounds of several nodes share the store's bucket and cap, so the room admits at its
//!   rate however many nodes run rounds. A room whose node has had no stream of the sale for the
//!   grace time stops; the line goes on in the store.
//! - Each stream knows its buyer's rank, which never changes once admission began, so its
//!   position is the rank minus the line's head: a stream reads nothing per update. The room
//!   wakes exactly the streams its round passed, which then read their admission, and publishes
//!   its counters to all at most every [`PUBLISH_EVERY`].
//! - A pass is checked from its text ([`crate::admission`]): signature, sale, buyer, expiry. No
//!   store is read for it on the purchase path; whether a sale has a room is cached per node
//!   (the option is fixed at creation).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::admission::PassProblem;
use crate::auth::Caller;
use crate::domain::{
    shuffle_score, AdmitAsk, IdempotencyKey, LineCounts, Place, QueueRules, SaleId, SaleRules, SaleStatus, SaleView,
    UnixMillis, UserId,
};
use crate::feeds::SaleSource;
use crate::store::EnterAsk;

use super::{App, Purchased, ServiceError};

/// How often a room runs an admission round.
const ROUND: Duration = Duration::from_millis(100);
/// Longest time between two publications of a room's counters to its streams (positions and
/// estimates); admissions and the end are told at once.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Most admissions in one round (a Redis script stays short).
const ROUND_BATCH: u32 = 5_000;
/// The admission rate is measured over this much of the clock.
const RATE_WINDOW_MS: i64 = 10_000;
/// A stream that cannot read its place (a backend down) tries again after this.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Where a buyer stands, as EnterQueue streams it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// In line.
    Waiting,
    /// Admitted: the pass lets them purchase.
    Admitted,
    /// The admission expired.
    Expired,
    /// The sale ended.
    Closed,
}

/// One message of an EnterQueue stream.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueUpdate {
    /// The sale.
    pub sale: SaleId,
    /// Where the buyer stands.
    pub state: QueueState,
    /// 1 for the next admitted; 0 when not waiting or in the pre-queue.
    pub position: u64,
    /// Buyers ahead.
    pub ahead: u64,
    /// Until admission, from the measured (or configured) rate.
    pub estimated_wait: Option<Duration>,
    /// The admission pass and its expiry.
    pub pass: Option<(String, UnixMillis)>,
    /// Buyers in the room not yet admitted.
    pub waiting: u64,
    /// Admissions so far.
    pub admitted: u64,
    /// The server's clock.
    pub server_time: UnixMillis,
    /// The sale's start.
    pub starts_at: UnixMillis,
    /// In the pre-queue (the order is drawn at the start).
    pub prequeue: bool,
}

/// What a room publishes to its streams.
#[derive(Debug, Clone, Default, PartialEq)]
struct RoomState {
    counts: LineCounts,
    /// Admissions per second, measured; `None` before there is a measure.
    rate: Option<f64>,
    /// The sale ended.
    closed: bool,
}

/// A sale's room on this node.
pub(super) struct Room {
    sale: SaleId,
    state: watch::Sender<RoomState>,
    /// Buyers with open streams here, and how many each.
    local: Mutex<HashMap<UserId, u32>>,
    /// Streams waiting at a rank, woken when a round passes it: (rank, stream) -> waker.
    waiters: Mutex<BTreeMap<(u64, u64), Arc<Notify>>>,
}

/// This node's rooms.
#[derive(Default)]
pub(super) struct Rooms {
    /// std Mutex: held to find, create or retire a room, never across an `.await`.
    rooms: Mutex<HashMap<SaleId, Arc<Room>>>,
    /// Whether each sale has a room (its option never changes): the purchase path's check.
    options: std::sync::RwLock<HashMap<SaleId, Option<QueueRules>>>,
    next_stream: AtomicU64,
}

/// A buyer's stream registered in a room; leaving it (drop) unregisters.
struct Presence {
    room: Arc<Room>,
    buyer: UserId,
    stream: u64,
    wake: Arc<Notify>,
    /// The rank this stream waits at in `room.waiters`.
    waiting_at: Option<u64>,
    /// The room's counters as this stream last read them (a change since wakes it).
    changes: watch::Receiver<RoomState>,
}

impl Presence {
    /// Waits at `rank` for a round to pass it (`None`: waits at no rank).
    fn wait_at(&mut self, rank: Option<u64>) {
        if self.waiting_at == rank {
            return;
        }
        let mut waiters = self.room.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = self.waiting_at.take() {
            waiters.remove(&(old, self.stream));
        }
        if let Some(rank) = rank {
            waiters.insert((rank, self.stream), self.wake.clone());
            self.waiting_at = Some(rank);
        }
    }
}

impl Presence {
    /// Whether a round passed `rank` since the stream waited there: the round takes passed
    /// ranks out of the waiters as it wakes them (its counters reach the streams later).
    fn passed(&self, rank: u64) -> bool {
        self.waiting_at == Some(rank)
            && !self.room.waiters.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&(rank, self.stream))
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.wait_at(None);
        let mut local = self.room.local.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = local.get_mut(&self.buyer) {
            *count -= 1;
            if *count == 0 {
                local.remove(&self.buyer);
            }
        }
    }
}

impl App {
    /// The sale's waiting room, if it has one (cached: the option is fixed at creation).
    pub(super) async fn queue_of(&self, sale: &SaleId) -> Result<Option<QueueRules>, ServiceError> {
        if let Some(known) = self.rooms.options.read().unwrap_or_else(|e| e.into_inner()).get(sale) {
            return Ok(*known);
        }
        let Some(record) = self.records.get_sale(sale).await? else { return Ok(None) };
        self.rooms.options.write().unwrap_or_else(|e| e.into_inner()).insert(sale.clone(), record.rules.queue);
        Ok(record.rules.queue)
    }

    /// [`App::purchase`] behind the sale's waiting room, if it has one: the pass must be valid
    /// for the caller in this sale. A retry of a purchase the pass made (same key) is answered
    /// with its order even after the pass expired; a new purchase frees the admission's place
    /// under the room's cap.
    pub async fn purchase_with_pass(
        self: &Arc<Self>,
        caller: &Caller,
        sale: SaleId,
        quantity: u32,
        key: IdempotencyKey,
        pass: &str,
    ) -> Result<Purchased, ServiceError> {
        let queue = match self.check_admission(caller, &sale, pass).await {
            Err(ServiceError::Admission(PassProblem::Expired { at })) => {
                match self.records.order_by_key(&caller.user_id, &sale, &key).await? {
                    Some(order) if order.quantity == quantity => return Ok(Purchased { order, replayed: true }),
                    _ => return Err(ServiceError::Admission(PassProblem::Expired { at })),
                }
            }
            other => other?,
        };
        let purchased = self.purchase(caller, sale.clone(), quantity, key).await?;
        if !purchased.replayed && queue.is_some_and(|q| q.max_active_buyers > 0) {
            self.admission_used(&sale, &caller.user_id);
        }
        Ok(purchased)
    }

    /// Checks the admission pass of a purchase or a waitlist join: valid for the caller in this
    /// sale when it has a room (returned), ignored when it has none.
    pub async fn check_admission(
        &self,
        caller: &Caller,
        sale: &SaleId,
        pass: &str,
    ) -> Result<Option<QueueRules>, ServiceError> {
        let queue = self.queue_of(sale).await?;
        if queue.is_some() {
            let now = self.clock.now();
            self.keys.admissions().check(pass, sale, &caller.user_id, now).map_err(ServiceError::Admission)?;
        }
        Ok(queue)
    }

    /// A purchase with a pass succeeded: the admission stops counting against the room's cap.
    /// In the background (the purchase is answered already); if it fails, the admission
    /// simply counts until it expires.
    fn admission_used(&self, sale: &SaleId, buyer: &UserId) {
        let (queue, sale, buyer) = (self.queue.clone(), sale.clone(), buyer.clone());
        self.tasks.spawn(async move {
            if let Err(error) = queue.done(&sale, &buyer).await {
                tracing::debug!(%sale, error = ?error, "could not free an admission; it counts until it expires");
            }
        });
    }

    /// The view with its room's counters, for a sale with a room: this node's room's latest,
    /// else the store's.
    pub(super) async fn with_line(&self, mut view: SaleView) -> Result<SaleView, ServiceError> {
        if view.rules.queue.is_none() {
            return Ok(view);
        }
        let local = self.rooms.rooms.lock().unwrap_or_else(|e| e.into_inner()).get(&view.sale_id).cloned();
        view.line = Some(match local {
            Some(room) => room.state.borrow().counts,
            None => self.queue.counts(&view.sale_id).await?,
        });
        Ok(view)
    }

    /// Enters the caller into the sale's room and streams their place (see the proto).
    pub async fn enter_queue(
        &self,
        caller: &Caller,
        sale: &SaleId,
    ) -> Result<impl futures::Stream<Item = QueueUpdate> + Send + 'static, ServiceError> {
        let view = SaleSource::current(self, sale).await?.ok_or(ServiceError::SaleNotFound)?;
        let Some(queue) = view.rules.queue else { return Err(ServiceError::QueueNotOpen { opens_at: None }) };
        let now = self.clock.now();
        let opens_at = queue.opens_at(view.rules.start);
        if view.status != SaleStatus::Ended && now < opens_at {
            return Err(ServiceError::QueueNotOpen { opens_at: Some(opens_at) });
        }
        let app = self.me.upgrade().ok_or_else(|| ServiceError::Unavailable("the server is stopping".into()))?;
        let mut waiter = Waiter {
            app,
            caller: caller.user_id.clone(),
            sale: view.sale_id.clone(),
            rules: view.rules,
            room: None,
            last: None,
            done: false,
        };
        if view.status != SaleStatus::Ended {
            let presence = self.join_room(&view.sale_id, &caller.user_id);
            waiter.room = Some((presence, waiter.enter().await?));
        }
        Ok(futures::stream::unfold(waiter, Waiter::next))
    }

    /// Registers a buyer's stream in this node's room of the sale, starting the room if needed.
    fn join_room(&self, sale: &SaleId, buyer: &UserId) -> Presence {
        let mut rooms = self.rooms.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms
            .entry(sale.clone())
            .or_insert_with(|| {
                let room = Arc::new(Room {
                    sale: sale.clone(),
                    state: watch::Sender::new(RoomState::default()),
                    local: Mutex::default(),
                    waiters: Mutex::default(),
                });
                if let Some(app) = self.me.upgrade() {
                    self.tasks.spawn(app.run_room(room.clone()));
                }
                room
            })
            .clone();
        *room.local.lock().unwrap_or_else(|e| e.into_inner()).entry(buyer.clone()).or_default() += 1;
        Presence {
            buyer: buyer.clone(),
            stream: self.rooms.next_stream.fetch_add(1, Ordering::Relaxed),
            wake: Arc::new(Notify::new()),
            waiting_at: None,
            changes: room.state.subscribe(),
            room,
        }
    }

    /// A room's rounds, until the sale ends, the server stops, or the node has had no stream of
    /// the sale for the grace time. Every step is one atomic call of the store, so stopping
    /// between any two leaves the line whole.
    async fn run_room(self: Arc<Self>, room: Arc<Room>) {
        let grace_ms = i64::try_from(self.queue_grace.as_millis()).unwrap_or(i64::MAX);
        let mut rounds = tokio::time::interval(ROUND);
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut samples: VecDeque<(i64, u64)> = VecDeque::new();
        let mut touched_at = i64::MIN;
        let mut idle_since: Option<i64> = None;
        let mut published_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = rounds.tick() => {}
            }
            let now = self.clock.now();
            let view = match SaleSource::current(&*self, &room.sale).await {
                Ok(Some(view)) => view,
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(sale = %room.sale, error = ?error, "a waiting room could not read its sale; next round");
                    continue;
                }
            };
            if view.status == SaleStatus::Ended {
                room.state.send_modify(|state| state.closed = true);
                if let Err(error) = self.queue.close(&room.sale).await {
                    tracing::debug!(sale = %room.sale, error = ?error, "could not close a waiting room's line");
                }
                break;
            }
            let buyers: Vec<UserId> = room.local.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
            if buyers.is_empty() {
                let since = *idle_since.get_or_insert(now.0);
                if now.0 - since >= grace_ms && self.retire_room(&room, false) {
                    return;
                }
            } else {
                idle_since = None;
                if now.0.saturating_sub(touched_at) >= grace_ms / 4 {
                    match self.queue.touch(&room.sale, &buyers, now).await {
                        Ok(()) => touched_at = now.0,
                        Err(error) => tracing::debug!(sale = %room.sale, error = ?error, "could not mark buyers seen"),
                    }
                }
            }
            let Some(queue) = view.rules.queue else { break };
            let counts = if view.status == SaleStatus::Active && now >= view.rules.start {
                let ask = AdmitAsk {
                    now,
                    rules: queue,
                    grace_ms,
                    open: view.remaining > 0,
                    batch: ROUND_BATCH,
                    since: view.rules.start,
                };
                self.queue.admit(&room.sale, &ask).await
            } else {
                self.queue.counts(&room.sale).await
            };
            let counts = match counts {
                Ok(counts) => counts,
                Err(error) => {
                    tracing::debug!(sale = %room.sale, error = ?error, "an admission round failed; next round");
                    continue;
                }
            };
            samples.push_back((now.0, counts.admitted));
            while samples.len() > 2 && samples.front().is_some_and(|(at, _)| now.0 - at > RATE_WINDOW_MS) {
                samples.pop_front();
            }
            let rate = match (samples.front(), samples.back()) {
                (Some(&(from, first)), Some(&(to, last))) if to - from >= 1000 && last > first => {
                    Some((last - first) as f64 * 1000.0 / (to - from) as f64)
                }
                _ => None,
            };
            let before = room.state.borrow().counts;
            // Streams whose rank the round passed read their admission now.
            {
                let mut waiters = room.waiters.lock().unwrap_or_else(|e| e.into_inner());
                let behind = waiters.split_off(&(counts.head, 0));
                for wake in std::mem::replace(&mut *waiters, behind).into_values() {
                    wake.notify_one();
                }
            }
            let due = published_at.elapsed() >= PUBLISH_EVERY || counts.started != before.started;
            if due {
                published_at = tokio::time::Instant::now();
                room.state.send_if_modified(|state| {
                    let next = RoomState { counts, rate, closed: false };
                    let changed = *state != next;
                    *state = next;
                    changed
                });
            }
            if (counts.admitted, counts.length, counts.head) != (before.admitted, before.length, before.head) || due {
                self.feeds.touch(&room.sale);
            }
        }
        self.retire_room(&room, true);
    }

    /// Takes a room out of this node's rooms, unless it is idle only (`ended` false) and a
    /// stream joined it meanwhile; true when it went.
    fn retire_room(&self, room: &Arc<Room>, ended: bool) -> bool {
        let mut rooms = self.rooms.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if !ended && !room.local.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return false;
        }
        if rooms.get(&room.sale).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.sale);
        }
        true
    }
}

/// One EnterQueue stream.
struct Waiter {
    app: Arc<App>,
    caller: UserId,
    sale: SaleId,
    rules: SaleRules,
    /// The stream's presence in this node's room and the buyer's place; `None` for a sale that
    /// had ended when the stream began.
    room: Option<(Presence, Place)>,
    /// The last update sent.
    last: Option<QueueUpdate>,
    done: bool,
}

impl Waiter {
    /// Enters (or re-enters) the line: the buyer's admission, place, or a new place.
    async fn enter(&self) -> Result<Place, ServiceError> {
        let now = self.app.clock.now();
        let prequeue_score = (now < self.rules.start)
            .then(|| shuffle_score(&self.app.keys.admissions().shuffle_seed(&self.sale), &self.caller));
        let ask = EnterAsk { buyer: self.caller.clone(), now, prequeue_score };
        Ok(self.app.queue.enter(&self.sale, &ask).await?)
    }

    /// Learns the place again (the draw happened, or a round passed the rank): the stream then
    /// waits at no rank until it knows its new one.
    async fn enter_again(&mut self) {
        match self.enter().await {
            Ok(place) => {
                if let Some((presence, known)) = &mut self.room {
                    presence.wait_at(None);
                    *known = place;
                }
            }
            Err(error) => {
                tracing::debug!(sale = %self.sale, error = ?error, "a waiting-room stream could not read its place; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    fn update(&self, state: QueueState, room: &RoomState) -> QueueUpdate {
        QueueUpdate {
            sale: self.sale.clone(),
            state,
            position: 0,
            ahead: 0,
            estimated_wait: None,
            pass: None,
            waiting: room.counts.waiting(),
            admitted: room.counts.admitted,
            server_time: self.app.clock.now(),
            starts_at: self.rules.start,
            prequeue: false,
        }
    }

    fn finish(mut self, update: QueueUpdate) -> Option<(QueueUpdate, Self)> {
        self.done = true;
        Some((update, self))
    }

    async fn next(mut self) -> Option<(QueueUpdate, Self)> {
        loop {
            if self.done || self.app.is_stopping() {
                return None;
            }
            let Some((presence, place)) = &mut self.room else {
                let closed = self.update(QueueState::Closed, &RoomState::default());
                return self.finish(closed);
            };
            let (state, place) = (presence.changes.borrow_and_update().clone(), *place);
            if state.closed {
                let closed = self.update(QueueState::Closed, &state);
                return self.finish(closed);
            }
            let (update, admitted_until) = match place {
                Place::Admitted { expires, .. } if self.app.clock.now() >= expires => {
                    let expired = self.update(QueueState::Expired, &state);
                    return self.finish(expired);
                }
                Place::Admitted { expires, ticket } => {
                    let mut update = self.update(QueueState::Admitted, &state);
                    let pass = self.app.keys.admissions().issue(&self.sale, &self.caller, expires, ticket);
                    update.pass = Some((pass, expires));
                    (update, Some(expires))
                }
                Place::PreQueue if state.counts.started => {
                    // The order is drawn: learn the rank.
                    self.enter_again().await;
                    continue;
                }
                Place::PreQueue => {
                    let mut update = self.update(QueueState::Waiting, &state);
                    update.prequeue = true;
                    (update, None)
                }
                Place::Waiting { rank } if rank < state.counts.head || presence.passed(rank) => {
                    // A round passed this rank: admitted, or passed over (then a new place).
                    self.enter_again().await;
                    continue;
                }
                Place::Waiting { rank } => {
                    presence.wait_at(Some(rank));
                    let position = rank - state.counts.head + 1;
                    let mut update = self.update(QueueState::Waiting, &state);
                    update.position = position;
                    update.ahead = position - 1;
                    let configured = self.rules.queue.map_or(0, |q| q.admit_per_second);
                    let rate = state.rate.or((configured > 0).then_some(f64::from(configured)));
                    update.estimated_wait = rate.map(|r| Duration::from_secs_f64(update.ahead as f64 / r));
                    (update, None)
                }
            };
            if self.last.as_ref().is_none_or(|last| !same_place(last, &update)) {
                self.last = Some(update.clone());
                return Some((update, self));
            }
            // Nothing new to say: wait for the room, this stream's turn, or the admission's end.
            let app = self.app.clone();
            let Some((presence, _)) = &mut self.room else { return None };
            let wake = presence.wake.clone();
            let expiry = async {
                match admitted_until {
                    Some(at) => app.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = presence.changes.changed() => {}
                _ = wake.notified() => {}
                _ = expiry => {}
                _ = app.shutdown.cancelled() => return None,
            }
        }
    }
}

/// Whether two updates say the same (the clock aside).
fn same_place(a: &QueueUpdate, b: &QueueUpdate) -> bool {
    a.state == b.state
        && a.position == b.position
        && a.waiting == b.waiting
        && a.admitted == b.admitted
        && a.prequeue == b.prequeue
        && a.pass == b.pass
}
