//! flashsale: a gRPC-first flash-sale service.
//!
//! # Layout
//! - [`domain`]: pure rules: ids and validated values, purchase checks, the sale lifecycle,
//!   leaderboard ordering. No transport or storage types.
//! - [`store`]: the two backend traits, [`store::HotStore`] (stock, per-buyer counts,
//!   idempotency, leaderboard: the atomic hot path) and [`store::RecordStore`] (the durable
//!   record), with the embedded implementation (in process + redb) and the production ones
//!   (Redis Lua scripts, MongoDB transactions).
//! - [`service`]: the application: purchase flow with group commit, admin and auth use cases,
//!   the lifecycle scheduler, start-up recovery, reconciliation of a shared hot state with the
//!   record. Speaks domain types and [`service::ServiceError`].
//! - [`web`]: the browser page (built from `clients/web`, embedded in the binary).
//! - [`feeds`]: one upstream per sale, coalesced and fanned out to every watcher.
//! - [`grpc`]: one thin file per gRPC service (authenticate, convert, call, map the error), the
//!   auth interceptor and the one `From<ServiceError> for Status`.
//! - [`server`]: wires everything onto a bound listener: tonic + grpc-web + CORS, reflection,
//!   health, metrics, graceful shutdown.
//! - [`auth`], [`clock`], [`config`], [`metrics`]: tokens and passwords, injectable time, the
//!   command line, Prometheus counters.

pub mod auth;
pub mod clock;
pub mod config;
pub mod domain;
pub mod feeds;
pub mod grpc;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod web;

pub use config::Settings;

/// Code generated from `proto/flashsale/v1/*.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("flashsale.v1");

    /// The encoded descriptors of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("flashsale_descriptor");
}
