//! systemd's notify protocol (sd-notify: a datagram to `NOTIFY_SOCKET`,
//! no libsystemd): `READY=1` once the server list is loaded and LISTEN is
//! active, `RELOADING=1` (with `MONOTONIC_USEC`) then `READY=1` around
//! every reload, `STOPPING=1`, a one-line `STATUS=`, and `WATCHDOG=1` every
//! half `WATCHDOG_USEC` only while every actor is alive, so that systemd
//! restarts a wedged daemon. Without `NOTIFY_SOCKET` every call does
//! nothing.
//!
//! The messages go from a thread of their own that reads shared state
//! ([`Probes`]): a blocked actor thread cannot keep the watchdog fed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use powa_fleet_actors::probes::Probes;
use sd_notify::NotifyState;
use slog::{warn, Logger};

/// How often the thread looks at the state.
const TICK: Duration = Duration::from_millis(100);
/// How often `STATUS=` is refreshed (when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another process: libsystemd's
/// rule (sd-notify's own check also refuses a missing `WATCHDOG_PID`).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Shared between the thread and the reload path.
#[derive(Clone, Default)]
pub struct Systemd {
    inner: Arc<Reloading>,
}

#[derive(Default)]
struct Reloading {
    /// READY=1 was sent: the start-up load (and its retries), which goes
    /// through the reload path too, is not a reload for systemd.
    ready: AtomicBool,
    pending: AtomicBool,
    /// Reloads finished when this one began.
    done_before: AtomicU64,
}

fn send(states: &[NotifyState], logger: &Logger) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(logger, "cannot notify systemd"; "error" => %e);
    }
}

impl Systemd {
    /// A reload begins (SIGHUP or RELOAD): `RELOADING=1`; the thread sends
    /// `READY=1` when the supervisor has finished it.
    pub fn reloading(&self, probes: &Probes, logger: &Logger) {
        if !self.inner.ready.load(Ordering::Relaxed) {
            return;
        }
        self.inner
            .done_before
            .store(probes.readiness.reloads_done(), Ordering::Relaxed);
        self.inner.pending.store(true, Ordering::Relaxed);
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        send(&states, logger);
    }

    pub fn stopping(&self, logger: &Logger) {
        send(
            &[NotifyState::Stopping, NotifyState::Status("stopping")],
            logger,
        );
    }

    /// Start the thread.
    pub fn spawn(&self, probes: Probes, logger: Logger) -> std::io::Result<()> {
        // Not under systemd: nothing to say, no thread waking ten times a
        // second to say it.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Ok(());
        }
        let watchdog = watchdog_interval().map(|usec| usec / 2);
        let shared = self.clone();
        std::thread::Builder::new()
            .name("systemd-notify".into())
            .spawn(move || shared.run(probes, watchdog, logger))
            .map(|_| ())
    }

    fn run(&self, probes: Probes, watchdog: Option<Duration>, logger: Logger) {
        let mut ready = false;
        let mut last_status = String::new();
        let mut status_at = Instant::now();
        let mut fed_at: Option<Instant> = None;
        loop {
            let line = probes.fleet.line();
            if !ready && probes.readiness.listening() && probes.readiness.servers_loaded() {
                ready = true;
                self.inner.ready.store(true, Ordering::Relaxed);
                send(&[NotifyState::Ready, NotifyState::Status(&line)], &logger);
                last_status = line.clone();
                status_at = Instant::now();
            }
            if self.inner.pending.load(Ordering::Relaxed)
                && probes.readiness.reloads_done() > self.inner.done_before.load(Ordering::Relaxed)
            {
                self.inner.pending.store(false, Ordering::Relaxed);
                send(&[NotifyState::Ready, NotifyState::Status(&line)], &logger);
                last_status = line.clone();
            }
            if ready && line != last_status && status_at.elapsed() >= STATUS_EVERY {
                send(&[NotifyState::Status(&line)], &logger);
                last_status = line;
                status_at = Instant::now();
            }
            if let Some(every) = watchdog {
                let due = fed_at.map_or(true, |at| at.elapsed() >= every);
                if due && probes.liveness.check().is_ok() {
                    send(&[NotifyState::Watchdog], &logger);
                    fed_at = Some(Instant::now());
                }
            }
            std::thread::sleep(TICK);
        }
    }
}
