//! In-process waiting rooms: one [`Line`] per sale behind its own mutex.
//!
//! The line lives in memory only: a restart empties the rooms, and buyers enter again (those
//! who come back before the start are drawn as before; after it they line up in arrival order).
//! Orders never depend on it: a pass is checked by its signature, not against the room.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use foldhash::HashMap;

use crate::domain::{AdmitAsk, Line, LineCounts, Place, SaleId, UnixMillis, UserId};
use crate::store::{EnterAsk, HotError, QueueStore};

/// Every sale's room.
#[derive(Default)]
pub struct MemoryQueue {
    /// std Mutex: held only to find or insert a room.
    rooms: Mutex<HashMap<SaleId, Arc<Mutex<Line>>>>,
}

impl MemoryQueue {
    fn room(&self, sale: &SaleId) -> Arc<Mutex<Line>> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.entry(sale.clone()).or_default().clone()
    }

    /// Runs `step` on the sale's line; each step is a few map operations, never an `.await`.
    fn with<T>(&self, sale: &SaleId, step: impl FnOnce(&mut Line) -> T) -> T {
        let room = self.room(sale);
        let mut line = room.lock().unwrap_or_else(|e| e.into_inner());
        step(&mut line)
    }
}

#[async_trait]
impl QueueStore for MemoryQueue {
    async fn enter(&self, sale: &SaleId, ask: &EnterAsk) -> Result<Place, HotError> {
        Ok(self.with(sale, |line| line.enter(&ask.buyer, ask.now, ask.prequeue_score)))
    }

    async fn admit(&self, sale: &SaleId, ask: &AdmitAsk) -> Result<LineCounts, HotError> {
        Ok(self.with(sale, |line| line.admit(ask)))
    }

    async fn touch(&self, sale: &SaleId, buyers: &[UserId], now: UnixMillis) -> Result<(), HotError> {
        self.with(sale, |line| line.touch(buyers, now));
        Ok(())
    }

    async fn done(&self, sale: &SaleId, buyer: &UserId) -> Result<(), HotError> {
        self.with(sale, |line| line.done(buyer));
        Ok(())
    }

    async fn counts(&self, sale: &SaleId) -> Result<LineCounts, HotError> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        Ok(rooms.get(sale).map(|line| line.lock().unwrap_or_else(|e| e.into_inner()).counts()).unwrap_or_default())
    }

    async fn close(&self, sale: &SaleId) -> Result<(), HotError> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).remove(sale);
        Ok(())
    }
}
