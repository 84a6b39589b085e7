//! The key layout of a sale in Redis (see the table in `mod.rs`): every key of a sale carries
//! the hash tag `{sale:ID}`, so all of them hash to one Redis Cluster slot.

use ::redis::{Script, ScriptInvocation};

use crate::domain::{IdempotencyKey, SaleId, UnixMillis, UserId};

/// The keys of one sale; all share the hash tag `{sale:ID}` (see the module docs).
pub(super) struct SaleKeys {
    /// meta, units, keys, pending, board, firsts, names, holds, line, waiting: `KEYS[1..=10]` of
    /// every script.
    pub(super) keys: [String; 10],
    /// Where changes of the sale are published.
    pub(super) channel: String,
}

impl SaleKeys {
    pub(super) fn new(prefix: &str, sale: &SaleId) -> Self {
        let base = format!("{prefix}{{sale:{sale}}}:");
        Self {
            keys: ["meta", "units", "keys", "pending", "board", "firsts", "names", "holds", "line", "waiting"]
                .map(|k| format!("{base}{k}")),
            channel: format!("{base}changes"),
        }
    }

    pub(super) fn meta(&self) -> &str {
        &self.keys[0]
    }

    pub(super) fn pending(&self) -> &str {
        &self.keys[3]
    }

    pub(super) fn line(&self) -> &str {
        &self.keys[8]
    }

    pub(super) fn waiting(&self) -> &str {
        &self.keys[9]
    }

    /// An invocation of `script` with this sale's keys as `KEYS`.
    pub(super) fn invoke<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in &self.keys {
            invocation.key(key.as_str());
        }
        invocation
    }
}

/// The channel a sale's changes are published on.
pub(super) fn change_channel(prefix: &str, sale: &SaleId) -> String {
    SaleKeys::new(prefix, sale).channel
}

/// The idempotency record's field: buyer ids never contain ':', so the split is unambiguous.
pub(super) fn key_field(buyer: &UserId, key: &IdempotencyKey) -> String {
    format!("{buyer}:{}", key.as_str())
}

/// A buyer's leaderboard member: the first purchase time, order-preserving as fixed-width text
/// (sign bit flipped, so negative times sort first too), then the buyer id. Equal scores sort by
/// member, so ties go to the earlier first purchase, then the smaller buyer id.
pub(super) fn board_member(first_purchase: UnixMillis, buyer: &UserId) -> String {
    format!("{:020}:{buyer}", (first_purchase.0 as u64) ^ (1 << 63))
}

pub(super) fn parse_board_member(member: &str) -> Option<UnixMillis> {
    let (time, _buyer) = member.split_once(':')?;
    Some(UnixMillis((time.parse::<u64>().ok()? ^ (1 << 63)) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_members_sort_like_first_purchase_times() {
        let buyer = UserId::parse("u").unwrap();
        let times = [-5_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        let members: Vec<_> = times.iter().map(|t| board_member(UnixMillis(*t), &buyer)).collect();
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(members, sorted);
        for (t, member) in times.iter().zip(&members) {
            assert_eq!(parse_board_member(member), Some(UnixMillis(*t)));
        }
    }

    #[test]
    fn every_key_of_a_sale_carries_its_hash_tag() {
        let sale = SaleId::parse("s-1").unwrap();
        let keys = SaleKeys::new("fs:", &sale);
        for key in keys.keys.iter().chain([&keys.channel]) {
            assert!(key.starts_with("fs:{sale:s-1}:"), "{key}");
        }
    }
}
