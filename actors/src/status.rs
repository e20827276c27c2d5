//! The status actor: the latest report of every snapshot actor, answered
//! from memory so that WORKERS_STATUS stays fast whatever the fleet size
//! and whatever the snapshot actors are busy with.
//!
//! Snapshot actors push a whole [`WorkerReport`] each time something changes;
//! nothing here talks to a database. After a panic in a handler the actor
//! is restarted in place ([`crate::restart`]): what it held may be half
//! updated or miss a lost report, so it starts empty, as at start-up, and
//! asks the supervisor for a fresh report of every worker.

use std::collections::BTreeMap;
use std::time::SystemTime;

use actix::prelude::*;

use crate::liveness::Component;
use crate::probes::{Probes, LATE_AFTER};
use crate::protocol;
pub use crate::report::{WorkerReport, WorkerState};
use crate::server::SrvId;

/// Replace the report of one server.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Report(pub WorkerReport);

/// Drop a server that left the fleet.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget(pub SrvId);

/// A snapshot of this server was lost or refused by the repository (for
/// the metrics; its report says why).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotFailed(pub SrvId);

/// The one-word-ish states powa-web shows, for one server or all.
#[derive(Message)]
#[rtype(result = "Vec<(SrvId, String)>")]
pub struct WorkersStatus {
    pub wanted: Option<SrvId>,
}

/// Asked of the supervisor after a restart: every snapshot actor reports
/// again; the answer is the fleet's srvids (the others are forgotten).
#[derive(Message)]
#[rtype(result = "Vec<SrvId>")]
pub struct Republish;

/// Where to ask for [`Republish`] (the supervisor starts after this actor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportsFrom(pub Recipient<Republish>);

/// Every detail, for the CLI.
#[derive(Message)]
#[rtype(result = "Vec<WorkerReport>")]
pub struct Details {
    pub wanted: Option<SrvId>,
}

#[derive(Default)]
pub struct StatusActor {
    workers: BTreeMap<SrvId, WorkerReport>,
    probes: Probes,
    reports_from: Option<Recipient<Republish>>,
}

/// Snapshot actors report with `do_send`, which ignores the mailbox bound:
/// a burst of reports never makes them wait.
impl Actor for StatusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.probes.liveness.keep_beating(Component::Status, ctx);
    }
}

impl Supervised for StatusActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.workers.clear();
        let Some(source) = self.reports_from.clone() else {
            return;
        };
        ctx.spawn(
            async move { source.send(Republish).await }
                .into_actor(self)
                .map(|fleet, act, _| {
                    if let Ok(fleet) = fleet {
                        act.workers.retain(|srvid, _| fleet.contains(srvid));
                    }
                }),
        );
    }
}

impl Handler<ReportsFrom> for StatusActor {
    type Result = ();

    fn handle(&mut self, ReportsFrom(source): ReportsFrom, _: &mut Self::Context) {
        self.reports_from = Some(source);
    }
}

impl StatusActor {
    fn summarise(&self) {
        let running = self
            .workers
            .values()
            .filter(|r| r.state == WorkerState::Running)
            .count();
        let late = self
            .workers
            .values()
            .filter(|r| r.last_lag.is_some_and(|lag| lag > LATE_AFTER))
            .count();
        self.probes.fleet.set(self.workers.len(), running, late);
    }

    /// Beat into these probes' liveness and feed their metrics.
    pub fn with_probes(mut self, probes: Probes) -> StatusActor {
        self.probes = probes;
        self
    }

    fn selected(&self, wanted: Option<SrvId>) -> impl Iterator<Item = &WorkerReport> {
        self.workers
            .range(match wanted {
                Some(id) => id..=id,
                None => SrvId::MIN..=SrvId::MAX,
            })
            .map(|(_, report)| report)
    }
}

impl Handler<Report> for StatusActor {
    type Result = ();

    fn handle(&mut self, Report(report): Report, _: &mut Self::Context) {
        crate::fault::panic_in("status", "report");
        self.probes.metrics.report(&report);
        self.workers.insert(report.srvid, report);
        self.summarise();
    }
}

impl Handler<Forget> for StatusActor {
    type Result = ();

    fn handle(&mut self, Forget(srvid): Forget, _: &mut Self::Context) {
        self.workers.remove(&srvid);
        self.probes.metrics.forget(srvid);
        self.summarise();
    }
}

impl Handler<SnapshotFailed> for StatusActor {
    type Result = ();

    fn handle(&mut self, SnapshotFailed(srvid): SnapshotFailed, _: &mut Self::Context) {
        self.probes.metrics.snapshot_failed(srvid);
    }
}

impl Handler<WorkersStatus> for StatusActor {
    type Result = MessageResult<WorkersStatus>;

    fn handle(&mut self, msg: WorkersStatus, _: &mut Self::Context) -> Self::Result {
        crate::fault::in_status_handler();
        crate::fault::panic_in("status", "workers_status");
        let now = SystemTime::now();
        MessageResult(
            self.selected(msg.wanted)
                .map(|r| (r.srvid, protocol::worker_state(&r.state, now)))
                .collect(),
        )
    }
}

impl Handler<Details> for StatusActor {
    type Result = MessageResult<Details>;

    fn handle(&mut self, msg: Details, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.selected(msg.wanted).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn reports_are_kept_replaced_and_forgotten() {
        let status = StatusActor::default().start();
        let mut one = WorkerReport::new(1, "a:5432".into());
        one.state = WorkerState::Running;
        let mut two = WorkerReport::new(2, "b:5432".into());
        two.state = WorkerState::NoRemote("refused".into());
        status.send(Report(one.clone())).await.unwrap();
        status.send(Report(two)).await.unwrap();

        let all = status.send(WorkersStatus { wanted: None }).await.unwrap();
        assert_eq!(
            all,
            vec![
                (1, "running".to_string()),
                (2, "no connection to remote server".to_string())
            ]
        );
        let only = status
            .send(WorkersStatus { wanted: Some(2) })
            .await
            .unwrap();
        assert_eq!(only.len(), 1);
        let none = status
            .send(WorkersStatus { wanted: Some(7) })
            .await
            .unwrap();
        assert!(none.is_empty());

        one.state = WorkerState::Stopping;
        status.send(Report(one)).await.unwrap();
        status.send(Forget(2)).await.unwrap();
        let all = status.send(WorkersStatus { wanted: None }).await.unwrap();
        assert_eq!(all, vec![(1, "stopping".to_string())]);
    }

    /// A panic in a handler, for the restart test.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Crash;

    impl Handler<Crash> for StatusActor {
        type Result = ();
        fn handle(&mut self, _: Crash, _: &mut Self::Context) {
            panic!("crash");
        }
    }

    /// The supervisor's part: on `Republish`, server 1 reports afresh;
    /// server 2 left the fleet.
    struct Fleet(Addr<StatusActor>);

    impl Actor for Fleet {
        type Context = Context<Self>;
    }

    impl Handler<Republish> for Fleet {
        type Result = MessageResult<Republish>;
        fn handle(&mut self, _: Republish, _: &mut Context<Self>) -> Self::Result {
            let mut fresh = WorkerReport::new(1, "a:5432".into());
            fresh.state = WorkerState::Stopping;
            self.0.do_send(Report(fresh));
            MessageResult(vec![1])
        }
    }

    #[actix_rt::test]
    async fn after_a_panic_every_worker_reports_afresh_and_gone_ones_are_forgotten() {
        let guard = crate::restart::Guard {
            kind: "status actor",
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            escalation: crate::restart::Escalation::Never,
        };
        let status = crate::restart::start(guard, |_| StatusActor::default());
        let fleet = Fleet(status.clone()).start();
        status.send(ReportsFrom(fleet.recipient())).await.unwrap();
        for srvid in [1, 2] {
            let mut report = WorkerReport::new(srvid, "a:5432".into());
            report.state = WorkerState::Running;
            status.send(Report(report)).await.unwrap();
        }
        assert!(status.send(Crash).await.is_err());
        let mut answer = vec![];
        for _ in 0..50 {
            answer = status.send(WorkersStatus { wanted: None }).await.unwrap();
            if answer == vec![(1, "stopping".to_string())] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(answer, vec![(1, "stopping".to_string())]);
    }
}
