//! loadgen: rehearses a flash sale against a flashsale server, judges the outcome and measures it.
//!
//! # Layout
//! - [`cli`]: the command line (`rehearse`, `flood`, `watch`, `prepare-h2load`); every number is
//!   a flag.
//! - [`target`]: the server under test: a pool of HTTP/2 channels used round-robin, the admin
//!   token, and optionally a `flashsale` binary started on port 0 with a temp data dir.
//! - [`setup`]: what a rehearsal prepares through the API: a product and an ACTIVE sale, and
//!   buyers (registered through AuthService, or tokens minted with the server's secret).
//! - [`rush`]: the purchase engine: N concurrent workers, retries of UNAVAILABLE with the same
//!   idempotency key, one record per attempt; callers that give up (`--abandon`), some coming
//!   back with their key, then patient buyers until the sale sells out.
//! - [`orders`]: a consumer of the order feed during a rush (`--order-feed`): delivery lag, and
//!   every acknowledged order once.
//! - [`storm`]: callers registering and logging in during a rush (`--sign-in-storm`).
//! - [`verdict`]: the correctness checks of a finished rush (exact sell-out, no oversell,
//!   per-user limit, ListMyOrders and the final WatchSale snapshot agree).
//! - [`stats`]: throughput and HDR latency percentiles, printed and as `name value` figures.
//! - [`chart`]: remaining stock and purchases/s over time as an SVG.
//! - [`rehearse`], [`flood`], [`watch`], [`h2load`]: one module per subcommand.

pub mod chart;
pub mod cli;
pub mod flood;
pub mod h2load;
pub mod holds;
pub mod orders;
pub mod queue;
pub mod rehearse;
pub mod rush;
pub mod setup;
pub mod stats;
pub mod storm;
pub mod target;
pub mod verdict;
pub mod watch;

pub use cli::{Cli, Command};
