//! Integration tests: the real server on a real socket, one test binary.

mod helpers;
#[path = "../support/mongo.rs"]
mod mongo_support;
#[path = "../support/redis.rs"]
mod redis_support;
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
mod cluster;
