//! Runtime settings the actors need, built by the binary from its
//! configuration (file, environment, flags). Kept free of figment so the
//! engine can be driven from tests without a configuration file.

use std::time::Duration;

use crate::redact::Secret;
use crate::tls::TlsOptions;

/// Everything the actor system reads from the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// libpq connection string (key=value or URI) of the repository database.
    pub repository_dsn: Secret<String>,
    /// TLS options of the remote server connections (`powa_servers` has
    /// none; the repository's are in its DSN).
    pub remote_tls: TlsOptions,
    /// Name servers by their alias instead of `host:port` in logs and status.
    pub use_server_alias: bool,
    /// At most this many snapshots run at once, fleet-wide.
    pub max_concurrent_snapshots: usize,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// `lock_timeout` set on connections whose server-side value is 0.
    pub lock_timeout: Duration,
    /// `statement_timeout` for every collector session; zero disables it.
    pub statement_timeout: Duration,
    /// How long a remote server may stay silent during a snapshot before
    /// it is given up as not answering (frozen, packets dropped).
    pub remote_silence: Duration,
    /// Idle time before TCP keepalive probes start on every connection.
    pub keepalive_idle: Duration,
    /// First delay before restarting a failed snapshot actor.
    pub backoff_min: Duration,
    /// Longest delay between two restarts of a failing snapshot actor.
    pub backoff_max: Duration,
    /// How long a stop waits for in-flight snapshots before rolling them back.
    pub shutdown_grace: Duration,
    /// Threads the snapshot actors are spread over; 0 means one per core.
    pub worker_threads: usize,
    /// This member's name among the collectors sharing the repository
    /// (`application_name` of its membership session, status); `None`
    /// means host name and process id.
    pub member_name: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            repository_dsn: Secret::new("postgresql:///powa".to_string()),
            remote_tls: TlsOptions::default(),
            use_server_alias: false,
            max_concurrent_snapshots: 2,
            connect_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(300),
            remote_silence: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(5),
            worker_threads: 0,
            member_name: None,
        }
    }
}
