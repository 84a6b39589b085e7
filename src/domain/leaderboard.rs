//! Leaderboard ordering: most units first, ties broken by the earlier first purchase (then by
//! user id, so the order is total and stable).

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Arc;

use foldhash::HashMap;

use super::{UnixMillis, UserId};

/// One ranked buyer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderboardEntry {
    /// 1-based rank.
    pub rank: u32,
    /// The buyer's public name.
    pub display_name: Arc<str>,
    /// Units bought.
    pub units: i64,
    /// When the buyer's first purchase was accepted.
    pub first_purchase_at: UnixMillis,
}

/// One buyer's standing, as [`Leaderboard::standings`] lists them.
#[derive(Debug, Clone, Copy)]
pub struct BuyerStanding<'a> {
    /// The buyer.
    pub buyer: &'a UserId,
    /// Units bought.
    pub units: i64,
    /// When the first purchase was accepted.
    pub first_purchase_at: UnixMillis,
    /// The name shown (that of the first purchase).
    pub display_name: &'a Arc<str>,
}

#[derive(Debug)]
struct Standing {
    units: i64,
    first_purchase_at: UnixMillis,
    display_name: Arc<str>,
}

/// Buyers of one sale, kept in rank order as purchases arrive (O(log n) per purchase).
#[derive(Debug, Default)]
pub struct Leaderboard {
    ranked: BTreeSet<(Reverse<i64>, UnixMillis, UserId)>,
    standings: HashMap<UserId, Standing>,
}

impl Leaderboard {
    /// Credits `units` to `buyer`; `at` counts as the first purchase if the buyer is new.
    pub fn record(&mut self, buyer: &UserId, display_name: &Arc<str>, units: i64, at: UnixMillis) {
        match self.standings.get_mut(buyer) {
            Some(standing) => {
                self.ranked.remove(&(Reverse(standing.units), standing.first_purchase_at, buyer.clone()));
                standing.units += units;
                // The earliest, whatever order purchases are credited in (a later commit batch, a
                // hold paid before an older one, a rebuild from the record).
                standing.first_purchase_at = standing.first_purchase_at.min(at);
                self.ranked.insert((Reverse(standing.units), standing.first_purchase_at, buyer.clone()));
            }
            None => {
                self.standings.insert(
                    buyer.clone(),
                    Standing { units, first_purchase_at: at, display_name: display_name.clone() },
                );
                self.ranked.insert((Reverse(units), at, buyer.clone()));
            }
        }
    }

    /// The first `n` buyers in rank order.
    pub fn top(&self, n: usize) -> Vec<LeaderboardEntry> {
        self.ranked
            .iter()
            .take(n)
            .zip(1..)
            .map(|((Reverse(units), at, buyer), rank)| LeaderboardEntry {
                rank,
                display_name: self.standings[buyer].display_name.clone(),
                units: *units,
                first_purchase_at: *at,
            })
            .collect()
    }

    /// Every buyer's standing, in no particular order (to copy the board elsewhere).
    pub fn standings(&self) -> impl Iterator<Item = BuyerStanding<'_>> {
        self.standings.iter().map(|(buyer, s)| BuyerStanding {
            buyer,
            units: s.units,
            first_purchase_at: s.first_purchase_at,
            display_name: &s.display_name,
        })
    }

    /// How many distinct buyers bought.
    pub fn len(&self) -> usize {
        self.standings.len()
    }

    /// True when nobody bought yet.
    pub fn is_empty(&self) -> bool {
        self.standings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_purchase_is_the_earliest_credited_in_any_order() {
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        let mut board = Leaderboard::default();
        board.record(&a, &Arc::from("Al"), 1, UnixMillis(30));
        board.record(&b, &Arc::from("Bea"), 2, UnixMillis(20));
        // Al's older purchase credited later (a hold paid after a newer one): it counts as first.
        board.record(&a, &Arc::from("Al"), 1, UnixMillis(10));
        let top = board.top(2);
        assert_eq!((top[0].display_name.as_ref(), top[0].first_purchase_at), ("Al", UnixMillis(10)));
        assert_eq!(top[1].display_name.as_ref(), "Bea");
    }

    #[test]
    fn ranks_by_units_then_earlier_first_purchase() {
        let (a, b, c) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap(), UserId::parse("c").unwrap());
        let name = |s: &str| Arc::<str>::from(s);
        let mut board = Leaderboard::default();
        board.record(&b, &name("Bea"), 2, UnixMillis(20));
        board.record(&a, &name("Al"), 2, UnixMillis(10));
        board.record(&c, &name("Cy"), 1, UnixMillis(5));
        let names: Vec<_> = board.top(10).iter().map(|e| e.display_name.to_string()).collect();
        assert_eq!(names, ["Al", "Bea", "Cy"]);
        board.record(&c, &name("Cy"), 2, UnixMillis(30));
        let top = board.top(2);
        assert_eq!(top[0].display_name.as_ref(), "Cy");
        assert_eq!((top[0].rank, top[0].units, top[0].first_purchase_at), (1, 3, UnixMillis(5)));
        assert_eq!(top[1].display_name.as_ref(), "Al");
        assert_eq!(board.len(), 3);
    }
}
