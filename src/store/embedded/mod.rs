//! The embedded backend: needs no other server. Hot state lives in process ([`MemoryHot`], one
//! mutex per sale, no lock across sales); the record lives in redb ([`RedbRecords`]), an
//! embedded ACID key-value store in one file under the data directory.

mod format;
mod hot;
mod queue;
mod records;

pub use hot::MemoryHot;
pub use queue::MemoryQueue;
pub use records::RedbRecords;
