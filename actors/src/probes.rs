//! What the actors tell the outside world without being asked: their
//! heartbeats ([`Liveness`]), whether the daemon is ready to serve
//! ([`Readiness`]) and the Prometheus [`Metrics`]. Everything here is
//! shared state written by the actors as things change and read by the
//! HTTP endpoint and systemd's notifications, which therefore never wait
//! on an actor or on the repository.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::liveness::Liveness;
use crate::metrics::Metrics;

/// The three views, cloned into every actor that feeds them.
#[derive(Clone, Default)]
pub struct Probes {
    pub liveness: Liveness,
    pub readiness: Readiness,
    pub metrics: Metrics,
    pub fleet: FleetSummary,
}

/// A snapshot actor whose last snapshot started this late counts as late.
pub const LATE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// How the fleet is doing, counted by the status actor at each report,
/// for systemd's one-line status.
#[derive(Clone, Default)]
pub struct FleetSummary {
    inner: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    servers: AtomicUsize,
    running: AtomicUsize,
    late: AtomicUsize,
}

impl FleetSummary {
    pub fn set(&self, servers: usize, running: usize, late: usize) {
        self.inner.servers.store(servers, Ordering::Relaxed);
        self.inner.running.store(running, Ordering::Relaxed);
        self.inner.late.store(late, Ordering::Relaxed);
    }

    /// `12 servers: 10 collected, 2 failing, 1 late`.
    pub fn line(&self) -> String {
        let servers = self.inner.servers.load(Ordering::Relaxed);
        let running = self.inner.running.load(Ordering::Relaxed);
        let late = self.inner.late.load(Ordering::Relaxed);
        format!(
            "{servers} servers: {running} collected, {} failing, {late} late",
            servers.saturating_sub(running)
        )
    }
}

/// Whether the daemon can do its job: a repository session, LISTEN
/// active, the server list loaded.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Flags>,
}

#[derive(Default)]
struct Flags {
    /// The listener's session on the repository is connected: it is always
    /// open, so it is the first to notice the repository going away.
    repository: AtomicBool,
    /// `LISTEN powa_collector` is active on that session.
    listening: AtomicBool,
    /// A server list was read from the repository and applied (it stays
    /// applied when a later reload fails).
    servers_loaded: AtomicBool,
    /// Reloads finished (successful or not), for systemd's READY=1.
    reloads_done: AtomicU64,
}

impl Readiness {
    pub fn set_repository(&self, up: bool) {
        self.inner.repository.store(up, Ordering::Relaxed);
    }

    pub fn set_listening(&self, up: bool) {
        self.inner.listening.store(up, Ordering::Relaxed);
    }

    pub fn set_servers_loaded(&self) {
        self.inner.servers_loaded.store(true, Ordering::Relaxed);
    }

    /// A reload (or the start-up load) ended, well or not.
    pub fn reload_done(&self) {
        self.inner.reloads_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloads_done(&self) -> u64 {
        self.inner.reloads_done.load(Ordering::Relaxed)
    }

    pub fn repository(&self) -> bool {
        self.inner.repository.load(Ordering::Relaxed)
    }

    pub fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }

    pub fn servers_loaded(&self) -> bool {
        self.inner.servers_loaded.load(Ordering::Relaxed)
    }

    /// Ready, or every reason why not.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let mut reasons = Vec::new();
        if !self.repository() {
            reasons.push("no session on the repository");
        }
        if !self.listening() {
            reasons.push("LISTEN powa_collector is not active");
        }
        if !self.servers_loaded() {
            reasons.push("the server list is not loaded");
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_all_three() {
        let r = Readiness::default();
        assert_eq!(r.check().unwrap_err().len(), 3);
        r.set_repository(true);
        r.set_listening(true);
        assert_eq!(
            r.check().unwrap_err(),
            vec!["the server list is not loaded"]
        );
        r.set_servers_loaded();
        assert!(r.check().is_ok());
        r.set_repository(false);
        assert_eq!(r.check().unwrap_err(), vec!["no session on the repository"]);
    }
}
