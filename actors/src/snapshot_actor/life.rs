//! The life of a snapshot actor as one value: what it is doing
//! ([`Phase`]), whether a forced snapshot waits ([`Life::forced`]) and
//! whether a snapshot fell due during the bookkeeping of a reload
//! ([`Life::due_waits`]: taken when it ends, never lost).
//! Pure: the actor asks it what an event may do and acts on the answer;
//! the tests below drive every transition without a database or an actor
//! system (`R` is the remote session, a plain value in the tests).
//!
//! ```text
//!               connect                 due (session kept)
//!  Disconnected ───────► Busy(Connecting) ──► Idle ──────► Busy(Snapshot)
//!       ▲                     │ ok            ▲  │ reload        │ ok
//!       │ failed              └──────────────►┘  └► Busy(Refreshing)
//!       └──────────────── any failure ◄───────────────────────────┘
//!  shutdown: Busy(w) ─► Stopping(w) ─(w ends)─► Stopped; not busy ─► Stopped
//! ```
//!
//! A session is only held while idle: connecting, bookkeeping and snapshot
//! work own it while they run and give it back when they end.

/// The work that runs, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Connecting, reading the last snapshot, the version bookkeeping.
    Connecting,
    /// Pinging the server, waiting for a slot, taking the snapshot.
    Snapshot,
    /// The version bookkeeping of a reload, on the kept session.
    Refreshing,
}

/// What the actor is doing.
#[derive(Debug, PartialEq, Eq)]
pub enum Phase<R> {
    /// No session; a `Connect` is planned (start-up, backoff, a failure
    /// that waits for a reload).
    Disconnected,
    /// Connected, the next snapshot's timer armed.
    Idle(R),
    Busy(Work),
    /// Stop asked while `Work` runs: it ends, then the actor is stopped.
    Stopping(Work),
    /// Nothing more starts: stopped by the daemon, or retired.
    Stopped,
}

/// Why a forced snapshot is refused, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForceRefusal {
    InProgress,
    AlreadyForced,
    NotReady,
}

/// What a `Due` timer may do.
#[derive(Debug, PartialEq, Eq)]
pub enum OnDue<R> {
    /// Take the snapshot with this session (`forced`: asked by a client).
    Snapshot { remote: R, forced: bool },
    /// No session: connect first.
    Connect,
    /// Busy with a reload's bookkeeping: remembered, the snapshot is
    /// taken when it ends ([`AfterWork::SnapshotDue`]).
    AfterWork,
    /// Busy with a snapshot or connecting (which plans the next one), or
    /// stopping: nothing.
    Ignore,
}

/// What is left to do when work ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWork {
    Nothing,
    /// A snapshot fell due meanwhile: take it now.
    SnapshotDue,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Life<R> {
    phase: Phase<R>,
    /// A forced snapshot was accepted and not yet taken; cleared when a
    /// snapshot ends and at a restart.
    forced: bool,
    /// A `Due` arrived during a reload's bookkeeping: its timer is spent,
    /// so the snapshot is taken when the bookkeeping ends.
    due_waits: bool,
}

impl<R> Default for Life<R> {
    fn default() -> Self {
        Life {
            phase: Phase::Disconnected,
            forced: false,
            due_waits: false,
        }
    }
}

impl<R> Life<R> {
    #[cfg(test)]
    pub fn phase(&self) -> &Phase<R> {
        &self.phase
    }

    pub fn busy(&self) -> bool {
        matches!(self.phase, Phase::Busy(_) | Phase::Stopping(_))
    }

    pub fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping(_) | Phase::Stopped)
    }

    /// The session, while idle (for the health check).
    pub fn idle_remote(&self) -> Option<&R> {
        match &self.phase {
            Phase::Idle(remote) => Some(remote),
            _ => None,
        }
    }

    /// `Connect`: starts connecting unless busy or stopping; a session
    /// still held is dropped. `false`: nothing to do.
    pub fn start_connecting(&mut self) -> bool {
        match self.phase {
            Phase::Disconnected | Phase::Idle(_) => {
                self.phase = Phase::Busy(Work::Connecting);
                true
            }
            Phase::Busy(_) | Phase::Stopping(_) | Phase::Stopped => false,
        }
    }

    /// `Due`: take the session for a snapshot when idle.
    pub fn start_snapshot(&mut self) -> OnDue<R> {
        match std::mem::replace(&mut self.phase, Phase::Disconnected) {
            Phase::Idle(remote) => {
                self.phase = Phase::Busy(Work::Snapshot);
                OnDue::Snapshot {
                    remote,
                    forced: self.forced,
                }
            }
            Phase::Disconnected => OnDue::Connect,
            Phase::Busy(Work::Refreshing) => {
                self.phase = Phase::Busy(Work::Refreshing);
                self.due_waits = true;
                OnDue::AfterWork
            }
            other => {
                self.phase = other;
                OnDue::Ignore
            }
        }
    }

    /// A reload: with `keep` (the server is healthy) an idle session is
    /// lent to the bookkeeping (`Some`); otherwise any session is dropped
    /// and the caller reconnects (`None`, now disconnected). Busy or
    /// stopping: nothing changes (`None`); the caller checks first.
    pub fn start_refreshing(&mut self, keep: bool) -> Option<R> {
        match std::mem::replace(&mut self.phase, Phase::Disconnected) {
            Phase::Idle(remote) if keep => {
                self.phase = Phase::Busy(Work::Refreshing);
                Some(remote)
            }
            Phase::Idle(_) | Phase::Disconnected => None,
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// Whether a forced snapshot may be accepted, as far as the life goes.
    pub fn may_force(&self) -> Result<(), ForceRefusal> {
        match self.phase {
            Phase::Busy(Work::Snapshot) | Phase::Stopping(Work::Snapshot) => {
                Err(ForceRefusal::InProgress)
            }
            _ if self.forced => Err(ForceRefusal::AlreadyForced),
            Phase::Idle(_) => Ok(()),
            _ => Err(ForceRefusal::NotReady),
        }
    }

    /// Accept a forced snapshot (after [`Life::may_force`]).
    pub fn force(&mut self) {
        self.forced = true;
    }

    /// The running work ended: idle again with the session given back, or
    /// disconnected without one; stopped if a stop was asked meanwhile (the
    /// session is dropped). A snapshot's end clears a forced request. Idle
    /// again after a snapshot fell due meanwhile: [`AfterWork::SnapshotDue`].
    pub fn work_ended(&mut self, remote: Option<R>) -> AfterWork {
        let (work, stopping) = match self.phase {
            Phase::Busy(work) => (work, false),
            Phase::Stopping(work) => (work, true),
            // Retired while the work ran: stays stopped.
            Phase::Stopped => (Work::Connecting, true),
            // Work from before a restart: what runs now is not its business.
            Phase::Disconnected | Phase::Idle(_) => return AfterWork::Nothing,
        };
        if work == Work::Snapshot {
            self.forced = false;
        }
        let due = std::mem::take(&mut self.due_waits);
        self.phase = match (stopping, remote) {
            (true, _) => Phase::Stopped,
            (false, Some(remote)) => Phase::Idle(remote),
            // A failure: the restart reconnects and plans from the repository.
            (false, None) => Phase::Disconnected,
        };
        match self.phase {
            Phase::Idle(_) if due => AfterWork::SnapshotDue,
            _ => AfterWork::Nothing,
        }
    }

    /// The idle session was lost (or a failure ended it).
    pub fn disconnect(&mut self) {
        if let Phase::Idle(_) = self.phase {
            self.phase = Phase::Disconnected;
        }
    }

    /// Daemon stop: `true` when work runs and must be waited for.
    pub fn shut_down(&mut self) -> bool {
        match self.phase {
            Phase::Busy(work) | Phase::Stopping(work) => {
                self.phase = Phase::Stopping(work);
                true
            }
            Phase::Disconnected | Phase::Idle(_) | Phase::Stopped => {
                self.phase = Phase::Stopped;
                false
            }
        }
    }

    /// Removed from the fleet: stopped at once, whatever runs.
    pub fn retire(&mut self) {
        self.phase = Phase::Stopped;
    }

    /// The actor is restarted (after a stop or a panic): whatever ran is gone, a
    /// stop asked before stays.
    pub fn restarted(&mut self) {
        self.forced = false;
        self.due_waits = false;
        self.phase = if self.stopping() {
            Phase::Stopped
        } else {
            Phase::Disconnected
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session stand-in.
    type Life = super::Life<&'static str>;

    fn idle() -> Life {
        let mut life = Life::default();
        assert!(life.start_connecting());
        life.work_ended(Some("session"));
        life
    }

    #[test]
    fn connecting_then_idle_then_a_snapshot_and_back() {
        let mut life = Life::default();
        assert_eq!(life.phase(), &Phase::Disconnected);
        assert_eq!(life.start_snapshot(), OnDue::Connect);
        assert!(life.start_connecting());
        assert!(life.busy());
        assert!(!life.start_connecting(), "one thing at a time");
        assert_eq!(life.start_snapshot(), OnDue::Ignore);
        assert_eq!(life.idle_remote(), None);
        life.work_ended(Some("session"));
        assert_eq!(life.idle_remote(), Some(&"session"));
        assert_eq!(
            life.start_snapshot(),
            OnDue::Snapshot {
                remote: "session",
                forced: false
            }
        );
        assert_eq!(life.phase(), &Phase::Busy(Work::Snapshot));
        life.work_ended(Some("session"));
        assert_eq!(life.phase(), &Phase::Idle("session"));
    }

    #[test]
    fn a_failure_disconnects() {
        let mut life = idle();
        life.start_snapshot();
        life.work_ended(None);
        assert_eq!(life.phase(), &Phase::Disconnected);
        let mut life = idle();
        life.disconnect();
        assert_eq!(life.phase(), &Phase::Disconnected);
        assert!(life.start_connecting());
        life.disconnect();
        assert_eq!(life.phase(), &Phase::Busy(Work::Connecting), "only idle");
    }

    #[test]
    fn a_connect_while_idle_drops_the_session() {
        let mut life = idle();
        assert!(life.start_connecting());
        assert_eq!(life.idle_remote(), None);
    }

    #[test]
    fn forced_snapshots_are_refused_in_order() {
        let mut life = Life::default();
        assert_eq!(life.may_force(), Err(ForceRefusal::NotReady));
        life.start_connecting();
        assert_eq!(life.may_force(), Err(ForceRefusal::NotReady));
        life.work_ended(Some("session"));
        assert_eq!(life.may_force(), Ok(()));
        life.force();
        assert_eq!(life.may_force(), Err(ForceRefusal::AlreadyForced));
        assert_eq!(
            life.start_snapshot(),
            OnDue::Snapshot {
                remote: "session",
                forced: true
            }
        );
        assert_eq!(life.may_force(), Err(ForceRefusal::InProgress));
        life.work_ended(Some("session"));
        assert_eq!(life.may_force(), Ok(()), "the snapshot's end clears it");
    }

    #[test]
    fn a_forced_request_survives_other_work_and_goes_at_a_restart() {
        let mut life = idle();
        life.force();
        assert_eq!(life.start_refreshing(true), Some("session"));
        assert_eq!(life.phase(), &Phase::Busy(Work::Refreshing));
        life.work_ended(Some("session"));
        assert_eq!(life.may_force(), Err(ForceRefusal::AlreadyForced));
        life.restarted();
        assert_eq!(life.phase(), &Phase::Disconnected);
        assert_eq!(life.may_force(), Err(ForceRefusal::NotReady));
    }

    #[test]
    fn a_reload_keeps_a_healthy_session_and_drops_any_other() {
        let mut life = idle();
        assert_eq!(life.start_refreshing(false), None);
        assert_eq!(life.phase(), &Phase::Disconnected);
        let mut life = Life::default();
        assert_eq!(life.start_refreshing(true), None);
        assert_eq!(life.phase(), &Phase::Disconnected);
    }

    #[test]
    fn shutdown_waits_for_running_work_only() {
        let mut life = idle();
        assert!(!life.shut_down());
        assert_eq!(life.phase(), &Phase::Stopped);
        assert!(!life.start_connecting());
        assert_eq!(life.start_snapshot(), OnDue::Ignore);

        let mut life = idle();
        life.start_snapshot();
        assert!(life.shut_down());
        assert_eq!(life.phase(), &Phase::Stopping(Work::Snapshot));
        assert!(life.busy() && life.stopping());
        assert!(life.shut_down(), "a second stop waits too");
        assert_eq!(life.may_force(), Err(ForceRefusal::InProgress));
        life.work_ended(Some("session"));
        assert_eq!(life.phase(), &Phase::Stopped, "the session is dropped");
        assert!(!life.busy());
    }

    #[test]
    fn retired_stays_stopped_through_late_work_and_restarts() {
        let mut life = idle();
        life.start_snapshot();
        life.retire();
        life.work_ended(Some("session"));
        assert_eq!(life.phase(), &Phase::Stopped);
        life.restarted();
        assert_eq!(life.phase(), &Phase::Stopped);
        let mut life = Life::default();
        life.start_connecting();
        life.shut_down();
        life.restarted();
        assert_eq!(life.phase(), &Phase::Stopped);
    }

    #[test]
    fn a_restart_forgets_running_work() {
        let mut life = idle();
        life.start_snapshot();
        life.restarted();
        assert_eq!(life.phase(), &Phase::Disconnected);
        // The old work ending late changes nothing.
        life.work_ended(Some("old session"));
        assert_eq!(life.phase(), &Phase::Disconnected);
        assert!(life.start_connecting());
    }

    #[test]
    fn a_reload_leaves_running_work_alone() {
        let mut life = idle();
        life.start_snapshot();
        assert_eq!(life.start_refreshing(true), None);
        assert_eq!(life.phase(), &Phase::Busy(Work::Snapshot));
        life.shut_down();
        assert_eq!(life.start_refreshing(true), None);
        assert_eq!(life.phase(), &Phase::Stopping(Work::Snapshot));
    }

    #[test]
    fn a_due_during_a_reloads_bookkeeping_is_taken_when_it_ends() {
        let mut life = idle();
        assert_eq!(life.start_refreshing(true), Some("session"));
        assert_eq!(life.start_snapshot(), OnDue::AfterWork);
        assert_eq!(life.phase(), &Phase::Busy(Work::Refreshing));
        assert_eq!(life.work_ended(Some("session")), AfterWork::SnapshotDue);
        assert_eq!(
            life.start_snapshot(),
            OnDue::Snapshot {
                remote: "session",
                forced: false
            }
        );
        assert_eq!(life.work_ended(Some("session")), AfterWork::Nothing);
        // Remembered once: the next bookkeeping owes nothing.
        life.start_refreshing(true);
        assert_eq!(life.work_ended(Some("session")), AfterWork::Nothing);
    }

    #[test]
    fn a_forced_snapshot_accepted_just_before_a_reload_is_taken_after_it() {
        let mut life = idle();
        assert_eq!(life.may_force(), Ok(()));
        life.force();
        // The reload's Refresh arrives before the forced Due.
        assert_eq!(life.start_refreshing(true), Some("session"));
        assert_eq!(life.start_snapshot(), OnDue::AfterWork);
        assert_eq!(life.work_ended(Some("session")), AfterWork::SnapshotDue);
        assert_eq!(
            life.start_snapshot(),
            OnDue::Snapshot {
                remote: "session",
                forced: true
            }
        );
    }

    #[test]
    fn a_due_waiting_on_failed_or_stopped_work_goes_with_it() {
        // The bookkeeping failed: the restart plans from the repository.
        let mut life = idle();
        life.start_refreshing(true);
        assert_eq!(life.start_snapshot(), OnDue::AfterWork);
        assert_eq!(life.work_ended(None), AfterWork::Nothing);
        assert_eq!(life.phase(), &Phase::Disconnected);
        life.restarted();
        assert!(life.start_connecting());
        assert_eq!(life.work_ended(Some("session")), AfterWork::Nothing);
        // A stop asked meanwhile: nothing more starts.
        let mut life = idle();
        life.start_refreshing(true);
        life.start_snapshot();
        life.shut_down();
        assert_eq!(life.start_snapshot(), OnDue::Ignore);
        assert_eq!(life.work_ended(Some("session")), AfterWork::Nothing);
        assert_eq!(life.phase(), &Phase::Stopped);
        // A restart during the bookkeeping forgets it.
        let mut life = idle();
        life.start_refreshing(true);
        life.start_snapshot();
        life.restarted();
        assert!(life.start_connecting());
        assert_eq!(life.work_ended(Some("session")), AfterWork::Nothing);
    }

    #[test]
    fn a_due_during_a_snapshot_or_a_connection_is_not_remembered() {
        let mut life = idle();
        life.start_snapshot();
        assert_eq!(life.start_snapshot(), OnDue::Ignore);
        assert_eq!(life.work_ended(Some("session")), AfterWork::Nothing);
        let mut life = Life::default();
        life.start_connecting();
        assert_eq!(life.start_snapshot(), OnDue::Ignore);
        assert_eq!(life.work_ended(Some("session")), AfterWork::Nothing);
    }
}
