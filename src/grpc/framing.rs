//! Refusals that tonic makes itself, before any handler runs, get the same shape as the
//! service's own: a status code that says what went wrong, a plain message and a
//! `google.rpc.ErrorInfo` with a machine-readable reason.
//!
//! tonic answers these with a bare status (no details) and wording of its own:
//! - a request above `--max-message-bytes`: OUT_OF_RANGE "Error, decoded message length too
//!   large…" → RESOURCE_EXHAUSTED, MESSAGE_TOO_LARGE (metadata `limit_bytes`, `size_bytes`);
//! - bytes that are not the method's request message (prost's decoder error) or a bad frame:
//!   INTERNAL with the decoder's text → INVALID_ARGUMENT, MALFORMED_MESSAGE, no decoder text;
//! - an unknown service or method: UNIMPLEMENTED with no message → UNIMPLEMENTED,
//!   UNKNOWN_METHOD, naming the method.
//!
//! They are all "trailers-only" answers (the status in the response headers), so a middleware
//! around the gRPC routes rewrites those headers; grpc-web, outside it, translates the result as
//! usual. Every status the service itself returns carries ErrorInfo, so a status without
//! details is one of tonic's and the only kind rewritten.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::error::DOMAIN;
use crate::pb::ErrorReason;

const DETAILS: &str = "grpc-status-details-bin";

/// The middleware: `limit` is the largest request message accepted, in bytes.
pub async fn explain_refusals(State(limit): State<usize>, request: Request, next: Next) -> Response {
    // A reference-counted copy: the path is only read for a refusal.
    let uri = request.uri().clone();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if headers.contains_key(DETAILS) {
        return response;
    }
    let Some(refused) = Status::from_header_map(headers) else { return response };
    let Some(explained) = explain(&refused, uri.path(), limit) else { return response };
    if let Err(error) = explained.add_header(headers) {
        tracing::error!(error = %error, "could not write an explained refusal");
    }
    response
}

/// The service's version of one of tonic's bare refusals, if it is one.
fn explain(refused: &Status, method: &str, limit: usize) -> Option<Status> {
    let (code, reason, message, metadata) = match refused.code() {
        Code::OutOfRange => {
            let mut metadata = HashMap::from([("limit_bytes".to_owned(), limit.to_string())]);
            if let Some(size) = found_size(refused.message()) {
                metadata.insert("size_bytes".to_owned(), size.to_string());
            }
            (
                Code::ResourceExhausted,
                ErrorReason::MessageTooLarge,
                format!("the request message is larger than this server accepts ({limit} bytes)"),
                metadata,
            )
        }
        Code::Internal => (
            Code::InvalidArgument,
            ErrorReason::MalformedMessage,
            format!("the request could not be read as the request message of {method}"),
            HashMap::new(),
        ),
        Code::Unimplemented => {
            let message = match refused.message() {
                "" => format!("there is no method {method} on this server"),
                // e.g. a compression this server does not speak: tonic's words are the reason.
                other => other.to_owned(),
            };
            (
                Code::Unimplemented,
                ErrorReason::UnknownMethod,
                message,
                HashMap::from([("method".to_owned(), method.to_owned())]),
            )
        }
        _ => return None,
    };
    let mut details = ErrorDetails::new();
    details.set_error_info(reason.as_str_name(), DOMAIN, metadata);
    Some(Status::with_error_details(code, message, details))
}

/// The size tonic names in "found N bytes".
fn found_size(message: &str) -> Option<usize> {
    message.split("found ").nth(1)?.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(status: &Status) -> String {
        status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
    }

    #[test]
    fn tonic_refusals_get_a_code_a_reason_and_plain_words() {
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 1048580 bytes, the limit is: 65536 bytes",
        );
        let explained = explain(&big, "/flashsale.v1.PurchaseService/Purchase", 65536).unwrap();
        assert_eq!((explained.code(), reason(&explained).as_str()), (Code::ResourceExhausted, "MESSAGE_TOO_LARGE"));
        let info = explained.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.metadata["limit_bytes"], "65536");
        assert_eq!(info.metadata["size_bytes"], "1048580");

        let garbage = Status::internal("failed to decode Protobuf message: buffer underflow");
        let explained = explain(&garbage, "/flashsale.v1.PurchaseService/Purchase", 1).unwrap();
        assert_eq!((explained.code(), reason(&explained).as_str()), (Code::InvalidArgument, "MALFORMED_MESSAGE"));
        assert!(!explained.message().contains("Protobuf") && !explained.message().contains("underflow"));

        let unknown = Status::unimplemented("");
        let explained = explain(&unknown, "/flashsale.v1.PurchaseService/Refund", 1).unwrap();
        assert_eq!((explained.code(), reason(&explained).as_str()), (Code::Unimplemented, "UNKNOWN_METHOD"));
        assert!(explained.message().contains("/flashsale.v1.PurchaseService/Refund"));

        assert!(explain(&Status::cancelled("gone"), "/x/y", 1).is_none());
    }
}
