//! The one mapping from [`ServiceError`] to a gRPC status with a machine-readable reason in
//! `google.rpc.ErrorInfo` (domain "flashsale.v1"), plus `BadRequest` field violations and
//! `RetryInfo` where they apply. Internal causes are logged with their chain, never sent.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::admission::PassProblem;
use crate::domain::PurchaseRefusal;
use crate::pb::ErrorReason;
use crate::service::ServiceError;

/// ErrorInfo domain of every flashsale error.
pub const DOMAIN: &str = "flashsale.v1";

/// The reason name clients see, e.g. "SOLD_OUT".
pub fn reason_of(error: &ServiceError) -> ErrorReason {
    match error {
        ServiceError::InvalidArgument(_) => ErrorReason::InvalidField,
        ServiceError::Unauthenticated(crate::auth::TokenError::Missing) => ErrorReason::TokenMissing,
        ServiceError::Unauthenticated(_) => ErrorReason::TokenInvalid,
        ServiceError::BadCredentials => ErrorReason::BadCredentials,
        ServiceError::AdminRequired => ErrorReason::AdminRequired,
        ServiceError::ProductNotFound => ErrorReason::ProductNotFound,
        ServiceError::SaleNotFound => ErrorReason::SaleNotFound,
        ServiceError::OrderNotFound => ErrorReason::OrderNotFound,
        ServiceError::EmailTaken => ErrorReason::EmailTaken,
        ServiceError::InsufficientInventory { .. } => ErrorReason::InsufficientInventory,
        ServiceError::SaleNotScheduled(_) => ErrorReason::SaleNotScheduled,
        ServiceError::Purchase(refusal) => match refusal {
            PurchaseRefusal::SaleNotFound => ErrorReason::SaleNotFound,
            PurchaseRefusal::NotStarted { .. } => ErrorReason::SaleNotStarted,
            PurchaseRefusal::Ended { .. } => ErrorReason::SaleEnded,
            PurchaseRefusal::InvalidQuantity(_) => ErrorReason::InvalidField,
            PurchaseRefusal::UserLimitReached { .. } => ErrorReason::UserLimitReached,
            PurchaseRefusal::SoldOut => ErrorReason::SoldOut,
            PurchaseRefusal::InsufficientStock { .. } => ErrorReason::InsufficientStock,
            PurchaseRefusal::IdempotencyKeyReused => ErrorReason::IdempotencyKeyReused,
            PurchaseRefusal::NoWaitlist | PurchaseRefusal::UnitsOnSale { .. } => ErrorReason::WaitlistUnavailable,
        },
        ServiceError::RoleNotAllowed(_) => ErrorReason::RoleNotAllowed,
        ServiceError::HoldExpired(_) => ErrorReason::HoldExpired,
        ServiceError::OrderNotHeld(_) => ErrorReason::OrderNotHeld,
        ServiceError::PageTokenInvalid(_) => ErrorReason::PageTokenInvalid,
        ServiceError::CursorExpired { .. } => ErrorReason::CursorExpired,
        ServiceError::CursorUnknown { .. } => ErrorReason::CursorUnknown,
        ServiceError::Admission(PassProblem::Missing) => ErrorReason::AdmissionRequired,
        ServiceError::Admission(PassProblem::Expired { .. }) => ErrorReason::AdmissionExpired,
        ServiceError::Admission(_) => ErrorReason::AdmissionInvalid,
        ServiceError::QueueNotOpen { .. } => ErrorReason::QueueNotOpen,
        ServiceError::RateLimited { .. } => ErrorReason::RateLimited,
        ServiceError::SignInBusy { .. } => ErrorReason::SignInBusy,
        ServiceError::Unavailable(_) => ErrorReason::BackendUnavailable,
        ServiceError::Internal(_) => ErrorReason::InternalError,
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let reason = reason_of(&error).as_str_name();
        metrics::counter!("flashsale_errors_total", "reason" => reason).increment(1);
        let mut metadata = HashMap::new();
        let mut details = ErrorDetails::new();
        let code = match &error {
            ServiceError::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description.clone());
                }
                Code::InvalidArgument
            }
            ServiceError::Purchase(PurchaseRefusal::InvalidQuantity(v)) => {
                details.add_bad_request_violation(v.field, v.description.clone());
                Code::InvalidArgument
            }
            ServiceError::Unauthenticated(problem) => {
                metadata.insert("problem".into(), problem.problem().into());
                Code::Unauthenticated
            }
            ServiceError::BadCredentials => Code::Unauthenticated,
            ServiceError::AdminRequired => Code::PermissionDenied,
            ServiceError::RoleNotAllowed(role) => {
                metadata.insert("role".into(), role.as_str().into());
                Code::PermissionDenied
            }
            ServiceError::HoldExpired(order) => {
                if let Some(deadline) = order.expires_at {
                    metadata.insert("expires_at".into(), super::convert::timestamp(deadline).to_string());
                }
                Code::FailedPrecondition
            }
            ServiceError::OrderNotHeld(status) => {
                metadata.insert("status".into(), status.as_str().into());
                Code::FailedPrecondition
            }
            ServiceError::Purchase(PurchaseRefusal::NoWaitlist) => {
                metadata.insert("why".into(), "NO_HOLDS".into());
                Code::FailedPrecondition
            }
            ServiceError::Purchase(PurchaseRefusal::UnitsOnSale { remaining }) => {
                metadata.insert("why".into(), "UNITS_ON_SALE".into());
                metadata.insert("remaining".into(), remaining.to_string());
                Code::FailedPrecondition
            }
            ServiceError::ProductNotFound | ServiceError::SaleNotFound | ServiceError::OrderNotFound => Code::NotFound,
            ServiceError::Purchase(PurchaseRefusal::SaleNotFound) => Code::NotFound,
            ServiceError::EmailTaken => Code::AlreadyExists,
            ServiceError::InsufficientInventory { inventory } => {
                metadata.insert("inventory".into(), inventory.to_string());
                Code::FailedPrecondition
            }
            ServiceError::SaleNotScheduled(_) => Code::FailedPrecondition,
            ServiceError::Purchase(PurchaseRefusal::NotStarted { start }) => {
                metadata.insert("start_time".into(), super::convert::timestamp(*start).to_string());
                Code::FailedPrecondition
            }
            ServiceError::Purchase(PurchaseRefusal::Ended { reason }) => {
                metadata.insert("end_reason".into(), reason.as_str().into());
                Code::FailedPrecondition
            }
            ServiceError::Purchase(PurchaseRefusal::IdempotencyKeyReused) => Code::FailedPrecondition,
            ServiceError::Purchase(PurchaseRefusal::SoldOut) => Code::ResourceExhausted,
            ServiceError::Purchase(PurchaseRefusal::InsufficientStock { remaining }) => {
                metadata.insert("remaining".into(), remaining.to_string());
                Code::ResourceExhausted
            }
            ServiceError::Purchase(PurchaseRefusal::UserLimitReached { limit, bought }) => {
                metadata.insert("limit".into(), limit.to_string());
                metadata.insert("bought".into(), bought.to_string());
                Code::ResourceExhausted
            }
            ServiceError::PageTokenInvalid(problem) => {
                metadata.insert("problem".into(), problem.as_str().into());
                Code::InvalidArgument
            }
            ServiceError::CursorExpired { oldest, head } => {
                metadata.insert("oldest_sequence".into(), oldest.to_string());
                metadata.insert("head_sequence".into(), head.to_string());
                Code::OutOfRange
            }
            ServiceError::CursorUnknown { head } => {
                metadata.insert("head_sequence".into(), head.to_string());
                Code::InvalidArgument
            }
            ServiceError::Admission(PassProblem::Missing) => Code::PermissionDenied,
            ServiceError::Admission(PassProblem::Expired { at }) => {
                metadata.insert("expired_at".into(), super::convert::timestamp(*at).to_string());
                Code::PermissionDenied
            }
            ServiceError::Admission(problem) => {
                metadata.insert("problem".into(), problem.as_str().into());
                Code::PermissionDenied
            }
            ServiceError::QueueNotOpen { opens_at } => {
                if let Some(at) = opens_at {
                    metadata.insert("opens_at".into(), super::convert::timestamp(*at).to_string());
                }
                Code::FailedPrecondition
            }
            ServiceError::RateLimited { retry_after } => {
                details.set_retry_info(Some(*retry_after));
                metadata.insert("retry_after_ms".into(), retry_after.as_millis().to_string());
                Code::ResourceExhausted
            }
            ServiceError::SignInBusy { retry_after } => {
                details.set_retry_info(Some(*retry_after));
                metadata.insert("retry_after_ms".into(), retry_after.as_millis().to_string());
                Code::Unavailable
            }
            ServiceError::Unavailable(_) => {
                tracing::warn!(error = ?anyhow_chain(&error), "request failed: backend unavailable");
                Code::Unavailable
            }
            ServiceError::Internal(_) => {
                tracing::error!(error = ?anyhow_chain(&error), "request failed: internal error");
                Code::Internal
            }
        };
        details.set_error_info(reason, DOMAIN, metadata);
        Status::with_error_details(code, error.to_string(), details)
    }
}

/// The error with its whole `source()` chain, for logs.
fn anyhow_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
