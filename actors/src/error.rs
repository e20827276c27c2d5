//! What can go wrong, classified once, and what to do about each kind.
//!
//! Every layer has its own error type (connection, snapshot, repository);
//! they all reduce to an [`ErrorKind`], and [`retry_policy`] is the one
//! place that decides whether a failure is retried on a timer or waits for a
//! person to fix something.

use std::time::Duration;

use tokio_postgres::error::SqlState;

/// Low-cardinality classification of failures, for logs, status and retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The server could not be reached, or the connection was lost.
    Connection,
    /// The server refused who we are (authentication or privileges).
    Auth,
    /// A lock or statement timeout.
    Timeout,
    /// The server is not set up for PoWA as expected: wrong version,
    /// missing extension or database, not registered properly.
    Setup,
    /// Any other SQL error.
    Sql,
    /// A bug in powa-fleet (a panic, a broken invariant).
    Internal,
}

impl ErrorKind {
    /// Stable lower-case name used in logs (`error_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Auth => "auth",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Setup => "setup",
            ErrorKind::Sql => "sql",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Classify a tokio-postgres error by its SQLSTATE, or as a connection
/// failure when there is none (I/O error, closed connection, timeout).
pub fn classify(err: &tokio_postgres::Error) -> ErrorKind {
    let Some(code) = err.code() else {
        return ErrorKind::Connection;
    };
    let class = &code.code()[..2];
    if class == "08"
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        ErrorKind::Connection
    } else if class == "28" || *code == SqlState::INSUFFICIENT_PRIVILEGE {
        ErrorKind::Auth
    } else if *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::QUERY_CANCELED {
        ErrorKind::Timeout
    } else if *code == SqlState::INVALID_CATALOG_NAME
        || *code == SqlState::UNDEFINED_FUNCTION
        || *code == SqlState::UNDEFINED_TABLE
        || *code == SqlState::UNDEFINED_OBJECT
        || *code == SqlState::FEATURE_NOT_SUPPORTED
    {
        ErrorKind::Setup
    } else {
        ErrorKind::Sql
    }
}

/// What to do after a failure of a given kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Try again after the actor's backoff delay.
    Backoff,
    /// Try again at the next scheduled snapshot; nothing is broken for good.
    NextSchedule,
    /// Waiting will not help: report it and wait for a reload.
    AfterReload,
}

/// The single mapping from error kind to retry behaviour.
pub fn retry_policy(kind: ErrorKind) -> Retry {
    match kind {
        ErrorKind::Connection | ErrorKind::Internal => Retry::Backoff,
        ErrorKind::Timeout | ErrorKind::Sql => Retry::NextSchedule,
        ErrorKind::Auth | ErrorKind::Setup => Retry::AfterReload,
    }
}

/// Exponential backoff with jitter: `min * 2^failures`, capped at `max`,
/// then scaled by a random factor in [0.5, 1.0] so that servers failing
/// together do not retry together.
pub fn backoff_delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let exp = min.saturating_mul(1u32 << failures.min(20));
    let capped = exp.min(max).max(min);
    let jitter = 0.5 + rand::random::<f64>() * 0.5;
    capped.mul_f64(jitter).max(min.min(capped))
}

/// A readable one-line message for a tokio-postgres error: the server's
/// message (and detail) when there is one, else the client-side error.
pub fn pg_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for _ in 0..100 {
            let first = backoff_delay(0, min, max);
            assert!(first >= min && first <= Duration::from_secs(1), "{first:?}");
            let fourth = backoff_delay(3, min, max);
            assert!(fourth >= Duration::from_secs(4) && fourth <= Duration::from_secs(8));
            let late = backoff_delay(30, min, max);
            assert!(late >= Duration::from_secs(30) && late <= max, "{late:?}");
        }
    }

    #[test]
    fn policies_cover_each_kind() {
        assert_eq!(retry_policy(ErrorKind::Connection), Retry::Backoff);
        assert_eq!(retry_policy(ErrorKind::Auth), Retry::AfterReload);
        assert_eq!(retry_policy(ErrorKind::Setup), Retry::AfterReload);
        assert_eq!(retry_policy(ErrorKind::Timeout), Retry::NextSchedule);
    }
}
