//! The waiting rooms in Redis: one script per step (`queue_enter.lua`, `queue_admit.lua`,
//! `queue_counts.lua`, with `queue_common.lua` before each; built in `mod.rs`), plain commands for heartbeats and
//! purchases. Every key of a room carries the sale's hash tag, so a room lives in one slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{sale:ID}:q:meta` | hash | `started` (1 once admission began), `head` (ranks passed), `seq` (arrivals after the start), `tokens` and `refill_at` (the bucket), `admitted`, `dropped` |
//! | `P{sale:ID}:q:line` | sorted set | entries by rank: a pre-queue arrival's id scored by its shuffle key, a later arrival's by `PREQUEUE_SPAN` + its arrival number (a buyer's second entry is `id/n`) |
//! | `P{sale:ID}:q:tickets` | hash | buyer → their current entry |
//! | `P{sale:ID}:q:seen` | sorted set | buyer → when last seen (ms) |
//! | `P{sale:ID}:q:admitted` | hash | buyer → `expiry:ticket` of their admission |
//! | `P{sale:ID}:q:active` | sorted set | buyer → admission expiry, while it counts against the cap |

use ::redis::{Script, Value};
use async_trait::async_trait;

use super::keys::change_channel;
use super::replies::{int, item, malformed, text};
use super::RedisHot;
use crate::domain::{AdmitAsk, LineCounts, Place, SaleId, UnixMillis, UserId, PREQUEUE_SPAN};
use crate::store::{EnterAsk, HotError, QueueStore};

/// How long a closed room's keys stay (late readers see its last counts).
const CLOSED_ROOM_SECONDS: i64 = 3600;
/// Buyers per heartbeat command.
const TOUCH_CHUNK: usize = 1000;

/// A room's keys, in the scripts' `KEYS` order.
fn room_keys(prefix: &str, sale: &SaleId) -> [String; 6] {
    ["meta", "line", "tickets", "seen", "admitted", "active"].map(|k| format!("{prefix}{{sale:{sale}}}:q:{k}"))
}

fn counts(reply: Vec<Value>) -> Result<LineCounts, HotError> {
    let n = |at| -> Result<u64, HotError> {
        u64::try_from(int(item(&reply, at)?)?).map_err(|_| malformed("a room count below zero"))
    };
    Ok(LineCounts { started: n(0)? == 1, head: n(1)?, length: n(2)?, admitted: n(3)?, dropped: n(4)?, active: n(5)? })
}

impl RedisHot {
    async fn room(&self, script: &Script, sale: &SaleId, args: &[String]) -> Result<Vec<Value>, HotError> {
        let mut invocation = script.prepare_invoke();
        for key in room_keys(self.key_prefix(), sale) {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg.as_str());
        }
        self.run(&invocation).await
    }
}

#[async_trait]
impl QueueStore for RedisHot {
    async fn enter(&self, sale: &SaleId, ask: &EnterAsk) -> Result<Place, HotError> {
        let score = ask.prequeue_score.map(|s| s.to_string()).unwrap_or_default();
        let args = [ask.buyer.to_string(), ask.now.0.to_string(), score, PREQUEUE_SPAN.to_string()];
        let reply = self.room(&self.scripts.room_enter, sale, &args).await?;
        let number = |at| -> Result<u64, HotError> {
            u64::try_from(int(item(&reply, at)?)?).map_err(|_| malformed("a negative rank"))
        };
        match text(item(&reply, 0)?)?.as_str() {
            "PRE" => Ok(Place::PreQueue),
            "WAITING" => Ok(Place::Waiting { rank: number(1)? }),
            "ADMITTED" => Ok(Place::Admitted { expires: UnixMillis(int(item(&reply, 1)?)?), ticket: number(2)? }),
            other => Err(malformed(format!("queue_enter.lua answered {other:?}"))),
        }
    }

    async fn admit(&self, sale: &SaleId, ask: &AdmitAsk) -> Result<LineCounts, HotError> {
        let args = [
            ask.now.0.to_string(),
            ask.rules.admit_per_second.to_string(),
            ask.rules.max_active_buyers.to_string(),
            ask.rules.admission_millis().to_string(),
            ask.grace_ms.to_string(),
            if ask.open { "1" } else { "0" }.to_owned(),
            ask.batch.to_string(),
            change_channel(self.key_prefix(), sale),
            ask.since.0.to_string(),
        ];
        counts(self.room(&self.scripts.room_admit, sale, &args).await?)
    }

    async fn touch(&self, sale: &SaleId, buyers: &[UserId], now: UnixMillis) -> Result<(), HotError> {
        let seen = &room_keys(self.key_prefix(), sale)[3];
        for chunk in buyers.chunks(TOUCH_CHUNK) {
            let mut command = ::redis::cmd("ZADD");
            command.arg(seen);
            for buyer in chunk {
                command.arg(now.0).arg(buyer.as_str());
            }
            let _: i64 = self.command(&command).await?;
        }
        Ok(())
    }

    async fn done(&self, sale: &SaleId, buyer: &UserId) -> Result<(), HotError> {
        let active = &room_keys(self.key_prefix(), sale)[5];
        let _: i64 = self.command(::redis::cmd("ZREM").arg(active).arg(buyer.as_str())).await?;
        Ok(())
    }

    async fn counts(&self, sale: &SaleId) -> Result<LineCounts, HotError> {
        counts(self.room(&self.scripts.room_counts, sale, &[]).await?)
    }

    async fn close(&self, sale: &SaleId) -> Result<(), HotError> {
        let mut pipeline = ::redis::pipe();
        for key in room_keys(self.key_prefix(), sale) {
            pipeline.cmd("EXPIRE").arg(key).arg(CLOSED_ROOM_SECONDS).ignore();
        }
        let () = self.pipeline(&pipeline).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_room_key_carries_the_sales_hash_tag() {
        let sale = SaleId::parse("s-1").unwrap();
        for key in room_keys("fs:", &sale) {
            assert!(key.starts_with("fs:{sale:s-1}:q:"), "{key}");
        }
    }
}
