//! What a driver error means for the store: the server cannot serve now (`Unavailable`, safe to
//! retry), a duplicate key, or anything else (`Internal`).

use mongodb::error::{Error as MongoError, ErrorKind, InsertManyError, WriteFailure};

use crate::store::StoreError;

/// Server error codes meaning "this server cannot serve now": worth retrying elsewhere or later.
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    64,    // WriteConcernFailed (no majority in time)
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Whether no server could be selected: the driver already waited the whole server selection
/// timeout for one, so retrying the transaction would only multiply that wait while the
/// servers are down. (The driver labels it transient inside a transaction.)
pub(super) fn is_server_selection(error: &MongoError) -> bool {
    matches!(error.kind.as_ref(), ErrorKind::ServerSelection { .. })
}

/// Whether the server could not be reached or cannot serve now.
pub(super) fn is_unavailable(error: &MongoError) -> bool {
    match error.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(command) => UNAVAILABLE_CODES.contains(&command.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => UNAVAILABLE_CODES.contains(&concern.code),
        ErrorKind::InsertMany(InsertManyError { write_concern_error: Some(concern), .. }) => {
            UNAVAILABLE_CODES.contains(&concern.code)
        }
        _ => false,
    }
}

pub(super) fn is_duplicate_key(error: &MongoError) -> bool {
    const DUPLICATE_KEY: i32 = 11000;
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(InsertManyError { write_errors: Some(errors), .. }) => {
            errors.iter().any(|e| e.code == DUPLICATE_KEY)
        }
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// The store's view of a driver error.
pub(super) fn store_error(error: MongoError) -> StoreError {
    if is_unavailable(&error) {
        StoreError::Unavailable(Box::new(error))
    } else {
        StoreError::Internal(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn unreachable_servers_are_unavailable_and_the_rest_internal() {
        let io: MongoError = ErrorKind::Io(Arc::new(std::io::ErrorKind::ConnectionRefused.into())).into();
        assert!(matches!(store_error(io), StoreError::Unavailable(_)));
        let bad = MongoError::custom("a bug");
        assert!(matches!(store_error(bad), StoreError::Internal(_)));
    }
}
