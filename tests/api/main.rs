//! Integration tests: the real server on a real socket, one test binary.

mod helpers;
mod purchases;
mod idempotency;
mod errors;
mod auth;
mod feeds;
mod lifecycle;
mod crash;
mod grpcurl;
mod server;
mod record_contract;
mod hot_contract;
