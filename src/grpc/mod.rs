//! The gRPC surface: one file per service, each handler shaped the same way: authenticate
//! (the caller from request extensions) -> convert the request (INVALID_ARGUMENT on failure) ->
//! call the [`App`](crate::service::App) -> convert the answer or map the error
//! ([`error`] holds the one `From<ServiceError> for Status`).

mod admin;
mod auth;
pub mod codec;
mod convert;
pub mod error;
mod feeds;
mod framing;
mod interceptor;
mod orders;
mod purchase;
mod rate_limit;

pub use admin::AdminApi;
pub use auth::AuthApi;
pub use feeds::FeedsApi;
pub use framing::explain_refusals;
pub use interceptor::{authenticate, caller, require_admin, require_buyer, require_order_reader, require_payer};
pub use orders::OrdersApi;
pub use purchase::PurchaseApi;
pub use rate_limit::RateLimits;
