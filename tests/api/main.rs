//! Integration tests: the real server on a real socket, one test binary.

mod abandon;
mod auth;
mod client;
mod cluster;
mod crash;
mod errors;
mod feeds;
mod gates;
mod grpcurl;
mod helpers;
mod holds;
mod hot_contract;
mod idempotency;
mod lifecycle;
#[path = "../support/mongo.rs"]
mod mongo_support;
mod orders;
mod purchases;
mod queue;
mod record_contract;
mod redis_cluster;
#[path = "../support/redis.rs"]
mod redis_support;
mod server;
mod stored_formats;
