//! The waiting room of a sale with `queue` on: a line that buyers enter instead of rushing
//! Purchase, and the admissions it gives out.
//!
//! - **Order.** Buyers who enter before the start (the pre-queue window) are ordered by a
//!   shuffle key, [`shuffle_score`]: HMAC-SHA256 of the buyer under a per-sale seed derived
//!   from the server's secret. That is a uniformly random order nobody can predict or steer
//!   (arriving early, or in a given order, changes nothing), and every node computes the same
//!   key without asking the others. Buyers who enter after the start line up behind the whole
//!   pre-queue in arrival order ([`PREQUEUE_SPAN`] + their arrival number).
//! - **Places are ranks.** Once admission begins (the first admission round after the start)
//!   the pre-queue is closed: later arrivals only ever go to the back, so a buyer's rank never
//!   changes again and their position is their rank minus the line's `head` (the ranks already
//!   passed). A buyer who re-enters after losing their place gets a new entry at the back; the
//!   old one stays where it was, behind the head.
//! - **Admission** takes the line from its head, at most the tokens of a bucket filled at
//!   `admit_per_second` (holding one second's worth) and the room `max_active_buyers` leaves.
//!   A buyer not seen for the grace time (every stream dropped) is passed over and loses the
//!   place.
//!
//! [`Line`] is the in-process implementation; the Redis one (`queue_*.lua`) follows it step
//! for step.

use std::collections::{BTreeSet, HashMap};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{FieldViolation, UnixMillis, UserId};

/// A sale's waiting room, as configured at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRules {
    /// Seconds before the start during which arrivals are shuffled at the start.
    pub prequeue_seconds: u32,
    /// Admissions per second; 0: no rate limit.
    pub admit_per_second: u32,
    /// Most admissions counting at once; 0: no cap.
    pub max_active_buyers: u32,
    /// How long an admission (its pass) lasts.
    pub admission_seconds: u32,
}

/// Default admission length when none is given.
pub const DEFAULT_ADMISSION_SECONDS: u32 = 300;
/// Most admissions per second a sale may ask for.
pub const MAX_ADMIT_PER_SECOND: u32 = 100_000;
/// Largest cap a sale may ask for.
pub const MAX_ACTIVE_BUYERS: u32 = 1_000_000;
/// Longest pre-queue window and admission.
pub const MAX_QUEUE_SECONDS: u32 = 86_400;

/// Shuffle keys of pre-queue arrivals are below this; arrival `n` after the start gets
/// `PREQUEUE_SPAN + n`. Both fit a double exactly (Redis sorted-set scores are doubles).
pub const PREQUEUE_SPAN: u64 = 1 << 52;

impl QueueRules {
    /// Checks a CreateSale's options (admission 0 reads as the default).
    pub fn parse(
        prequeue_seconds: u32,
        admit_per_second: u32,
        max_active_buyers: u32,
        admission_seconds: u32,
    ) -> Result<Self, FieldViolation> {
        if prequeue_seconds > MAX_QUEUE_SECONDS {
            return Err(FieldViolation::new("queue.prequeue_seconds", "must be at most 86400 (a day)"));
        }
        if admit_per_second > MAX_ADMIT_PER_SECOND {
            return Err(FieldViolation::new("queue.admit_per_second", "must be at most 100000"));
        }
        if max_active_buyers > MAX_ACTIVE_BUYERS {
            return Err(FieldViolation::new("queue.max_active_buyers", "must be at most 1000000"));
        }
        if admit_per_second == 0 && max_active_buyers == 0 {
            return Err(FieldViolation::new(
                "queue.admit_per_second",
                "set admit_per_second, max_active_buyers or both: a waiting room must say how it admits",
            ));
        }
        if admission_seconds > MAX_QUEUE_SECONDS {
            return Err(FieldViolation::new("queue.admission_seconds", "must be at most 86400 (a day)"));
        }
        let admission_seconds = if admission_seconds == 0 { DEFAULT_ADMISSION_SECONDS } else { admission_seconds };
        Ok(Self { prequeue_seconds, admit_per_second, max_active_buyers, admission_seconds })
    }

    /// When the room opens for a sale starting at `start`.
    pub fn opens_at(&self, start: UnixMillis) -> UnixMillis {
        UnixMillis(start.0.saturating_sub(i64::from(self.prequeue_seconds) * 1000))
    }

    /// How long an admission lasts, in milliseconds.
    pub fn admission_millis(&self) -> i64 {
        i64::from(self.admission_seconds) * 1000
    }
}

/// The shuffle key of a pre-queue arrival: the first 52 bits of HMAC-SHA256(seed, buyer).
pub fn shuffle_score(seed: &[u8], buyer: &UserId) -> u64 {
    let mut mac = Hmac::<Sha256>::new_from_slice(seed).expect("HMAC takes keys of any length");
    mac.update(buyer.as_str().as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) >> 12
}

/// Where a buyer stands after entering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In the pre-queue: the order is drawn when admission begins.
    PreQueue,
    /// In line at this rank (0 = the first place the line ever had).
    Waiting {
        /// The rank.
        rank: u64,
    },
    /// Admitted until `expires`; `ticket` is the admission's rank, unique in the sale.
    Admitted {
        /// When the admission ends.
        expires: UnixMillis,
        /// The rank it was admitted from.
        ticket: u64,
    },
}

/// A line's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Admission has begun (the pre-queue is drawn and closed).
    pub started: bool,
    /// Ranks passed (admitted or passed over).
    pub head: u64,
    /// Entries ever made (ranks handed out).
    pub length: u64,
    /// Admissions so far.
    pub admitted: u64,
    /// Buyers passed over because they were gone.
    pub dropped: u64,
    /// Admissions counting against the cap now.
    pub active: u64,
}

impl LineCounts {
    /// Buyers waiting (entries not yet reached).
    pub fn waiting(&self) -> u64 {
        self.length.saturating_sub(self.head)
    }
}

/// One admission round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmitAsk {
    /// The time of the round.
    pub now: UnixMillis,
    /// The sale's room.
    pub rules: QueueRules,
    /// A buyer not seen for this long is passed over.
    pub grace_ms: i64,
    /// False while nothing is on sale: no one is admitted (the bucket still fills).
    pub open: bool,
    /// Most admissions in one round.
    pub batch: u32,
    /// When admission opened (the sale's start): the bucket fills from then on, whenever the
    /// first round runs.
    pub since: UnixMillis,
}

/// The token bucket: tokens after refilling from `refill_at` to `now` at `rate` per second,
/// holding at most one second's worth (at least one token).
pub fn refill(tokens: f64, refill_at: UnixMillis, now: UnixMillis, rate: u32) -> f64 {
    let elapsed = (now.0 - refill_at.0).max(0) as f64;
    let burst = f64::from(rate.max(1));
    (tokens + elapsed * f64::from(rate) / 1000.0).min(burst)
}

/// A sale's line in process (the embedded backend).
#[derive(Debug, Default)]
pub struct Line {
    /// Pre-queue entries by shuffle key, until admission begins.
    pre: BTreeSet<(u64, UserId)>,
    /// Entries in rank order once admission began.
    ranks: Vec<UserId>,
    /// Each buyer's current entry: its rank (`None` while in the pre-queue).
    entry: HashMap<UserId, Option<u64>>,
    started: bool,
    head: u64,
    /// When each buyer was last seen (entering, or a node's heartbeat for their stream).
    seen: HashMap<UserId, UnixMillis>,
    /// Admissions: buyer -> (expiry, ticket).
    admitted: HashMap<UserId, (UnixMillis, u64)>,
    /// Admissions counting against the cap, by expiry.
    active: BTreeSet<(UnixMillis, UserId)>,
    tokens: f64,
    refill_at: Option<UnixMillis>,
    admitted_total: u64,
    dropped_total: u64,
}

impl Line {
    /// A buyer enters: their admission if it lasts, their place if it is still ahead, else a
    /// new entry (in the pre-queue with its shuffle key before admission began, else at the
    /// back).
    pub fn enter(&mut self, buyer: &UserId, now: UnixMillis, prequeue_score: Option<u64>) -> Place {
        self.seen.insert(buyer.clone(), now);
        if let Some(&(expires, ticket)) = self.admitted.get(buyer) {
            if expires > now {
                return Place::Admitted { expires, ticket };
            }
        }
        match self.entry.get(buyer) {
            Some(None) => return Place::PreQueue,
            Some(Some(rank)) if *rank >= self.head => return Place::Waiting { rank: *rank },
            _ => {}
        }
        self.admitted.remove(buyer);
        match prequeue_score {
            Some(score) if !self.started => {
                self.pre.insert((score, buyer.clone()));
                self.entry.insert(buyer.clone(), None);
                Place::PreQueue
            }
            _ => {
                let rank = self.length();
                self.ranks.push(buyer.clone());
                self.entry.insert(buyer.clone(), Some(rank));
                Place::Waiting { rank }
            }
        }
    }

    fn length(&self) -> u64 {
        (self.pre.len() + self.ranks.len()) as u64
    }

    /// Buyers whose streams are open were seen now.
    pub fn touch(&mut self, buyers: &[UserId], now: UnixMillis) {
        for buyer in buyers {
            self.seen.insert(buyer.clone(), now);
        }
    }

    /// A buyer's admission stops counting against the cap (they bought).
    pub fn done(&mut self, buyer: &UserId) {
        if let Some(&(expires, _)) = self.admitted.get(buyer) {
            self.active.remove(&(expires, buyer.clone()));
        }
    }

    /// One admission round: closes and draws the pre-queue the first time, then admits from
    /// the head as the bucket and the cap allow.
    pub fn admit(&mut self, ask: &AdmitAsk) -> LineCounts {
        if !self.started {
            self.started = true;
            for (_, buyer) in std::mem::take(&mut self.pre) {
                self.entry.insert(buyer.clone(), Some(self.ranks.len() as u64));
                self.ranks.push(buyer);
            }
        }
        let refill_at = *self.refill_at.get_or_insert(ask.since.min(ask.now));
        if ask.rules.admit_per_second > 0 {
            self.tokens = refill(self.tokens, refill_at, ask.now, ask.rules.admit_per_second);
        }
        self.refill_at = Some(ask.now.max(refill_at));
        while let Some(first) = self.active.first().cloned() {
            if first.0 > ask.now {
                break;
            }
            self.active.remove(&first);
        }
        let mut allowed = u64::from(ask.batch);
        if ask.rules.admit_per_second > 0 {
            allowed = allowed.min(self.tokens.floor() as u64);
        }
        if ask.rules.max_active_buyers > 0 {
            allowed = allowed.min(u64::from(ask.rules.max_active_buyers).saturating_sub(self.active.len() as u64));
        }
        if !ask.open {
            allowed = 0;
        }
        let mut given = 0;
        while given < allowed && self.head < self.ranks.len() as u64 {
            let rank = self.head;
            let buyer = self.ranks[rank as usize].clone();
            self.head += 1;
            if self.entry.get(&buyer) != Some(&Some(rank)) {
                continue; // an old entry of a buyer who entered again
            }
            let gone = self.seen.get(&buyer).is_none_or(|seen| seen.0 + ask.grace_ms < ask.now.0);
            if gone {
                self.dropped_total += 1;
                continue;
            }
            let expires = UnixMillis(ask.now.0 + ask.rules.admission_millis());
            self.admitted.insert(buyer.clone(), (expires, rank));
            self.active.insert((expires, buyer));
            self.admitted_total += 1;
            given += 1;
        }
        if ask.rules.admit_per_second > 0 {
            self.tokens -= given as f64;
        }
        self.counts()
    }

    /// The line's counters.
    pub fn counts(&self) -> LineCounts {
        LineCounts {
            started: self.started,
            head: self.head,
            length: self.length(),
            admitted: self.admitted_total,
            dropped: self.dropped_total,
            active: self.active.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buyer(n: usize) -> UserId {
        UserId::parse(&format!("buyer-{n}")).unwrap()
    }

    fn rules(rate: u32, cap: u32) -> QueueRules {
        QueueRules::parse(60, rate, cap, 10).unwrap()
    }

    fn ask(now: i64, rules: QueueRules) -> AdmitAsk {
        AdmitAsk { now: UnixMillis(now), rules, grace_ms: 30_000, open: true, batch: 10_000, since: UnixMillis(0) }
    }

    /// Admission order of `n` pre-queue arrivals (arriving in index order) under `seed`.
    fn drawn(n: usize, seed: &[u8]) -> Vec<usize> {
        let mut line = Line::default();
        for i in 0..n {
            let b = buyer(i);
            assert_eq!(line.enter(&b, UnixMillis(i as i64), Some(shuffle_score(seed, &b))), Place::PreQueue);
        }
        line.admit(&ask(n as i64, QueueRules::parse(0, 0, 1_000_000, 10).unwrap()));
        (0..n)
            .map(|i| match line.enter(&buyer(i), UnixMillis(n as i64), None) {
                Place::Admitted { ticket, .. } => ticket as usize,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// Spearman's rank correlation of arrival order and admission order.
    fn spearman(ranks: &[usize]) -> f64 {
        let n = ranks.len() as f64;
        let d2: f64 = ranks.iter().enumerate().map(|(i, r)| (i as f64 - *r as f64).powi(2)).sum();
        1.0 - 6.0 * d2 / (n * (n * n - 1.0))
    }

    #[test]
    fn the_prequeue_is_drawn_uniformly_not_by_arrival() {
        // Under no correlation Spearman's rho over n = 1000 has standard deviation
        // 1/sqrt(n-1) ~ 0.032; |rho| < 0.13 is four standard deviations.
        let first = drawn(1000, b"seed one");
        let rho = spearman(&first);
        assert!(rho.abs() < 0.13, "arrival and admission order correlate: rho = {rho}");
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "every arrival admitted once");
        let second = drawn(1000, b"seed two");
        assert_ne!(first, second, "another seed draws another order");
        assert!(spearman(&second).abs() < 0.13);
        assert_eq!(first, drawn(1000, b"seed one"), "the same seed draws the same order on every node");
    }

    #[test]
    fn arrivals_after_the_start_queue_in_order_behind_the_prequeue() {
        let mut line = Line::default();
        for i in 0..5 {
            line.enter(&buyer(i), UnixMillis(0), Some(shuffle_score(b"s", &buyer(i))));
        }
        let r = rules(0, 1_000);
        line.admit(&AdmitAsk { open: false, ..ask(1_000, r) });
        for i in 5..10 {
            assert_eq!(line.enter(&buyer(i), UnixMillis(1_000), Some(1)), Place::Waiting { rank: i as u64 });
        }
        line.admit(&ask(2_000, r));
        for i in 5..10 {
            assert!(
                matches!(line.enter(&buyer(i), UnixMillis(2_000), None), Place::Admitted { ticket, .. } if ticket == i as u64)
            );
        }
    }

    #[test]
    fn the_rate_fills_a_bucket_of_one_second() {
        let mut line = Line::default();
        for i in 0..100 {
            line.enter(&buyer(i), UnixMillis(0), None);
        }
        let r = rules(10, 0);
        assert_eq!(line.admit(&ask(0, r)).admitted, 0);
        assert_eq!(line.admit(&ask(500, r)).admitted, 5);
        assert_eq!(line.admit(&ask(1_000, r)).admitted, 10);
        // A long pause fills the bucket to one second's worth, no more.
        assert_eq!(line.admit(&ask(10_000, r)).admitted, 20);
        assert_eq!(line.admit(&AdmitAsk { open: false, ..ask(10_500, r) }).admitted, 20);
    }

    #[test]
    fn the_cap_frees_with_expiry_and_purchases() {
        let mut line = Line::default();
        for i in 0..10 {
            line.enter(&buyer(i), UnixMillis(0), None);
        }
        let r = rules(0, 3);
        let counts = line.admit(&ask(0, r));
        assert_eq!((counts.admitted, counts.active, counts.waiting()), (3, 3, 7));
        assert_eq!(line.admit(&ask(1_000, r)).admitted, 3);
        line.done(&buyer(0));
        assert_eq!(line.admit(&ask(2_000, r)).admitted, 4);
        // Admissions last ten seconds: the first three's end, buyer 3's counts on.
        assert_eq!(line.admit(&ask(10_000, r)).admitted, 6);
    }

    #[test]
    fn a_buyer_gone_past_the_grace_is_passed_over_and_reenters_at_the_back() {
        let mut line = Line::default();
        for i in 0..3 {
            line.enter(&buyer(i), UnixMillis(0), None);
        }
        let r = rules(0, 100);
        line.touch(&[buyer(1), buyer(2)], UnixMillis(40_000));
        let counts = line.admit(&ask(40_000, r));
        assert_eq!((counts.admitted, counts.dropped), (2, 1));
        assert_eq!(line.enter(&buyer(0), UnixMillis(40_000), None), Place::Waiting { rank: 3 });
        // Entering again while the place lasts resumes it.
        assert_eq!(line.enter(&buyer(0), UnixMillis(41_000), None), Place::Waiting { rank: 3 });
        assert!(matches!(line.enter(&buyer(1), UnixMillis(41_000), None), Place::Admitted { ticket: 1, .. }));
        // After the admission expired, a new place at the back.
        assert_eq!(line.enter(&buyer(1), UnixMillis(50_000), None), Place::Waiting { rank: 4 });
        let counts = line.admit(&ask(50_000, r));
        assert_eq!((counts.admitted, counts.head, counts.length), (4, 5, 5));
    }

    #[test]
    fn options_are_checked() {
        assert!(QueueRules::parse(0, 0, 0, 0).is_err());
        assert!(QueueRules::parse(86_401, 1, 0, 0).is_err());
        assert!(QueueRules::parse(0, 100_001, 0, 0).is_err());
        assert_eq!(QueueRules::parse(0, 5, 0, 0).unwrap().admission_seconds, DEFAULT_ADMISSION_SECONDS);
    }
}
