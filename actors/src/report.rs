//! What one snapshot actor reports about its server: its [`WorkerState`]
//! and the [`WorkerReport`] the status actor keeps. Plain data; the text
//! powa-web and the CLI see is built from it in `protocol.rs`.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::server::SrvId;

/// What a snapshot actor is doing, as far as a user cares.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum WorkerState {
    /// Connecting and checking versions.
    Starting,
    /// Healthy: connected, on schedule (possibly taking a snapshot).
    Running,
    /// The remote server cannot be reached; retried with backoff.
    NoRemote(String),
    /// The repository cannot be reached; retried with backoff.
    NoRepository(String),
    /// Failed; a new attempt is planned at the given time.
    Restarting {
        at: SystemTime,
        reason: String,
    },
    /// Waiting will not help (bad credentials, version mismatch, not
    /// registered): nothing is collected until a reload.
    Failed(String),
    Stopping,
    Stopped,
}

/// Everything known about one server's collection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerReport {
    pub srvid: SrvId,
    /// Alias or `host:port`, per `use_server_alias`.
    pub name: String,
    pub state: WorkerState,
    /// When the last successful snapshot ended.
    pub last_snapshot: Option<SystemTime>,
    pub last_duration: Option<Duration>,
    /// How long the last snapshot started after its due time (waiting for
    /// a concurrency slot): the collection's lag behind its schedule.
    pub last_lag: Option<Duration>,
    pub last_rows: u64,
    /// Errors of the last snapshot or connection attempt (redacted).
    pub last_errors: Vec<String>,
    pub restarts: u32,
    pub next_due: Option<SystemTime>,
    /// Scheduled snapshots skipped because the previous ones ran late.
    pub skipped: u64,
    /// Whether the session on the remote server is encrypted; `None` until
    /// the first connection.
    pub tls: Option<bool>,
}

impl WorkerReport {
    pub fn new(srvid: SrvId, name: String) -> WorkerReport {
        WorkerReport {
            srvid,
            name,
            state: WorkerState::Starting,
            last_snapshot: None,
            last_duration: None,
            last_lag: None,
            last_rows: 0,
            last_errors: Vec::new(),
            restarts: 0,
            next_due: None,
            skipped: 0,
            tls: None,
        }
    }
}
