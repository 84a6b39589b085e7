//! The transaction runner: runs one attempt function in a transaction, retries it on transient
//! errors and conflicts (with the one backoff of `crate::retry`), retries a commit whose outcome
//! is unknown, and bounds each attempt well below the server's transaction lifetime.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use mongodb::error::{Error as MongoError, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::ClientSession;

use super::errors::{is_server_selection, store_error};
use super::MongoRecords;
use crate::retry::Backoff;
use crate::store::StoreError;

/// Attempts of one transaction (the first and its retries) before giving up as `Unavailable`.
const MAX_TXN_ATTEMPTS: u32 = 12;
/// Attempts of one commit whose outcome is unknown before giving up.
const MAX_COMMIT_ATTEMPTS: u32 = 5;
/// Bounds on one transaction attempt, well below the server's transaction lifetime
/// (`transactionLifetimeLimitSeconds`: 60 s by default, 10 s in docker-compose.yml): its reads
/// and writes may take this long before it is aborted and reported unavailable...
const TXN_BODY_LIMIT: Duration = Duration::from_secs(3);
/// ...and its commit this long on the server (`maxCommitTimeMS`). flashsale's transactions take
/// milliseconds; these only matter when a server stalls.
pub(super) const TXN_COMMIT_LIMIT: Duration = Duration::from_secs(2);
/// Backoff between retries: doubling from the first, capped, and randomised within
/// [half, whole] so that retrying nodes spread out.
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_CAP: Duration = Duration::from_millis(250);

impl MongoRecords {
    fn note_retry(&self, what: &'static str, attempt: u32, why: &dyn std::fmt::Display) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flashsale_record_retries_total", "operation" => what).increment(1);
        tracing::debug!(operation = what, attempt, reason = %why, "retrying a MongoDB transaction");
    }

    /// Runs `body` in a transaction until it commits, aborts by itself, or fails for good.
    ///
    /// The whole transaction runs again when the body or the commit fails with the
    /// `TransientTransactionError` label (unless no server could be selected at all: the servers
    /// are down, and the caller hears it at once) or the body reports a [`Attempt::Conflict`]; the commit
    /// alone runs again on `UnknownTransactionCommitResult`. `body` must therefore read
    /// everything it decides on inside the transaction.
    pub(super) async fn transaction<T, F>(&self, what: &'static str, mut body: F) -> Result<T, TxnFailure<T>>
    where
        T: Send,
        F: for<'s> FnMut(&'s mut ClientSession) -> BoxFuture<'s, Result<Attempt<T>, MongoError>> + Send,
    {
        let mut session = self.client.start_session().await.map_err(|e| TxnFailure::Store(store_error(e)))?;
        let mut attempt = 1;
        let mut pauses = backoff();
        loop {
            session
                .start_transaction()
                .with_options(self.txn_options.clone())
                .await
                .map_err(|e| TxnFailure::Store(store_error(e)))?;
            let Ok(done) = tokio::time::timeout(TXN_BODY_LIMIT, body(&mut session)).await else {
                abort_quietly(&mut session).await;
                let stalled = Stalled { operation: what, limit: TXN_BODY_LIMIT };
                return Err(TxnFailure::Store(StoreError::Unavailable(Box::new(stalled))));
            };
            let why: Box<dyn std::fmt::Display + Send + Sync> = match done {
                Ok(Attempt::Commit(answer)) => match self.commit(what, &mut session).await {
                    Ok(()) => return Ok(answer),
                    Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && !is_server_selection(&e) => Box::new(e),
                    Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => {
                        return Err(TxnFailure::CommitUnknown { answer, error: e })
                    }
                    Err(e) => return Err(TxnFailure::Store(store_error(e))),
                },
                Ok(Attempt::Abort(answer)) => {
                    abort_quietly(&mut session).await;
                    return answer.map_err(TxnFailure::Store);
                }
                Ok(Attempt::Conflict(why)) => {
                    abort_quietly(&mut session).await;
                    Box::new(why)
                }
                Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && !is_server_selection(&e) => {
                    abort_quietly(&mut session).await;
                    Box::new(e)
                }
                Err(e) => {
                    abort_quietly(&mut session).await;
                    return Err(TxnFailure::Store(store_error(e)));
                }
            };
            if attempt >= MAX_TXN_ATTEMPTS {
                return Err(TxnFailure::Store(StoreError::Unavailable(Box::new(GaveUp {
                    operation: what,
                    attempts: attempt,
                    last: why.to_string(),
                }))));
            }
            self.note_retry(what, attempt, &why);
            tokio::time::sleep(pauses.next_pause()).await;
            attempt += 1;
        }
    }

    /// Commits, retrying while the outcome is unknown (the driver then commits with majority
    /// write concern, and a server that already committed answers success).
    async fn commit(&self, what: &'static str, session: &mut ClientSession) -> Result<(), MongoError> {
        let mut attempt = 1;
        let mut pauses = backoff();
        loop {
            match session.commit_transaction().await {
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && attempt < MAX_COMMIT_ATTEMPTS => {
                    self.note_retry(what, attempt, &e);
                    tokio::time::sleep(pauses.next_pause()).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

/// What one attempt of a transaction's body decided.
pub(super) enum Attempt<T> {
    /// Commit, then answer this.
    Commit(T),
    /// Nothing to write: abort, then answer this.
    Abort(Result<T, StoreError>),
    /// What the attempt read changed under it (a conditional write matched nothing, a unique
    /// key appeared): abort and run the body again.
    Conflict(&'static str),
}

/// Why a transaction gave no answer.
pub(super) enum TxnFailure<T> {
    /// It failed; nothing was written.
    Store(StoreError),
    /// The commit was sent, but whether it took effect stayed unknown; `answer` is the answer
    /// had it committed. The caller checks what is stored.
    CommitUnknown { answer: T, error: MongoError },
}

/// A transaction that kept conflicting.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: the transaction still conflicted after {attempts} attempts (last: {last})")]
struct GaveUp {
    operation: &'static str,
    attempts: u32,
    last: String,
}

/// A transaction whose reads and writes took longer than allowed (a stalled server).
#[derive(Debug, thiserror::Error)]
#[error("{operation}: the transaction's reads and writes took longer than {limit:?}; it was aborted")]
struct Stalled {
    operation: &'static str,
    limit: Duration,
}

/// A commit whose outcome could not be learnt, and what the check afterwards found.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: commit outcome unknown and the record shows it did not happen")]
pub(super) struct NotCommitted {
    pub(super) operation: &'static str,
    #[source]
    pub(super) source: MongoError,
}

/// The error to report when the check after an unknown commit could not settle it either: the
/// write may or may not be in the record (reconciliation with the record settles it later).
pub(super) fn unsettled(operation: &'static str, error: MongoError, check: StoreError) -> StoreError {
    tracing::error!(operation, error = %error, check = ?check, "commit outcome unknown; the record may hold the write");
    StoreError::Unavailable(Box::new(error))
}

async fn abort_quietly(session: &mut ClientSession) {
    // An abort after a failed command or commit may itself fail (the server already dropped
    // the transaction, or the driver considers it committed): nothing more to undo then.
    let _ = session.abort_transaction().await;
}

/// The pauses between retries of one transaction or commit.
fn backoff() -> Backoff {
    Backoff::new(BACKOFF_FIRST, BACKOFF_CAP).with_jitter()
}
