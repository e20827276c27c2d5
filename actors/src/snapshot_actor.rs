//! The snapshot actor: one per collected server, started and restarted by
//! the supervisor.
//!
//! Connections: one session on the remote server, kept between snapshots
//! and watched so that a lost server is noticed within seconds, not at the
//! next snapshot; repository sessions are borrowed from the shared
//! [`RepoPool`] for each piece of work and given back.
//!
//! Failures go through [`SnapshotActor::fail`]: the error is reported (status,
//! log, `powa_snapshot_metas.errors`) and the actor stops itself, so that
//! [`crate::restart`] restarts it; `started()` then waits a backoff delay
//! that grows with consecutive failures. A panic inside the snapshot work is
//! caught and takes the same path; a panic in a handler is caught by
//! [`crate::restart`], which restarts the actor the same way. Errors that waiting cannot fix (bad
//! credentials, version mismatch, a server not registered properly) leave
//! the actor idle in a `Failed` state until a reload asks it to try again.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use futures_util::FutureExt;
use slog::{debug, error, info, o, warn, Logger};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::connect::{connect_remote, connect_remote_database};
use crate::copy::Prepared;
use crate::error::{backoff_delay, classify, pg_message, retry_policy, ErrorKind, Retry};
use crate::fencing::Fence;
use crate::gate::Gate;
use crate::layout::{Generation, Layout};
use crate::membership::FleetView;
use crate::protocol;
use crate::redact::scrub;
use crate::repo_pool::RepoPool;
use crate::repository::{self, LastSnapshot};
use crate::schedule;
use crate::server::{ServerSpec, SrvId};
use crate::settings::Settings;
use crate::snapshot::{
    take_snapshot, CatalogRefresh, Job, OpenDatabase, SnapshotError, SnapshotReport, Step,
};
use crate::status::{Report, SnapshotFailed, StatusActor, WorkerReport, WorkerState};

mod life;

use life::{AfterWork, ForceRefusal, Life, OnDue};

/// A forced snapshot is refused when the last one is this recent.
const FORCE_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// A remote session that closed while a snapshot or a connection was
/// using it is looked at again this long after, once it is idle.
const CLOSED_RECHECK: Duration = Duration::from_secs(1);

/// Take a snapshot as soon as a permit is free, ahead of scheduled ones.
#[derive(Message)]
#[rtype(result = "Result<ForceAccepted, String>")]
pub struct ForceSnapshot;

/// How a forced snapshot was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForceAccepted {
    /// A permit was free: the snapshot is starting now.
    Started,
    /// Queued for a permit, ahead of every scheduled snapshot.
    Queued,
}

/// REFRESH_DB_CAT: copy the catalogs of these databases (all when empty)
/// at the next snapshot, whatever their age.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct RefreshCatalogs(pub Vec<String>);

/// Sent on reload to servers whose row did not change: reconnect if not
/// healthy, otherwise redo the version bookkeeping.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Refresh(pub Arc<Settings>);

/// Stop for good (server removed or deactivated). The supervisor drops its
/// address first, so its guard (`restart.rs`) does not restart the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

/// Daemon stop: no new snapshot; answer once the running one (if any) has
/// finished and the sessions are closed. The caller bounds the wait.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Report the current state again (the status actor restarted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish;

/// Internal: (re)connect and plan the next snapshot.
#[derive(Message)]
#[rtype(result = "()")]
struct Connect;

/// Internal: the timer of the next snapshot fired.
#[derive(Message)]
#[rtype(result = "()")]
struct Due;

/// What every snapshot actor shares with the others.
#[derive(Clone)]
pub struct Shared {
    pub gate: Gate,
    pub pool: RepoPool,
    pub status: Addr<StatusActor>,
    pub logger: Logger,
    /// This member's view of the fleet: the pid that fences its snapshots.
    pub fleet: FleetView,
}

pub struct SnapshotActor {
    spec: ServerSpec,
    settings: Arc<Settings>,
    shared: Shared,
    logger: Logger,
    report: WorkerReport,
    /// What the actor is doing, with the remote session while idle.
    life: Life<Remote>,
    /// Catalogs asked for by REFRESH_DB_CAT, for the next snapshot.
    catalogs: CatalogRefresh,
    /// The next snapshot the schedule asks for (a forced one does not move it).
    due: Option<SystemTime>,
    timer: Option<SpawnHandle>,
    /// Consecutive failures; reset by a successful snapshot.
    failures: u32,
    /// Why the last attempt failed (kind, on the repository side, reason),
    /// kept across the restart for the status.
    last_failure: Option<(ErrorKind, bool, String)>,
    idle_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Removed from the fleet (`Retire`): reports nothing more.
    retired: bool,
}

impl SnapshotActor {
    pub fn new(spec: ServerSpec, settings: Arc<Settings>, shared: Shared) -> SnapshotActor {
        let name = spec.name(settings.use_server_alias);
        let logger = shared
            .logger
            .new(o!("srvid" => spec.srvid, "server" => name.clone()));
        SnapshotActor {
            report: WorkerReport::new(spec.srvid, name),
            spec,
            settings,
            shared,
            logger,
            life: Life::default(),
            catalogs: CatalogRefresh::default(),
            due: None,
            timer: None,
            failures: 0,
            last_failure: None,
            idle_waiters: Vec::new(),
            retired: false,
        }
    }

    /// Learn the moment the remote session's connection ends (its task
    /// drops the sender of `closed`), rather than look at every server's
    /// session every few seconds: an idle fleet costs no wake-ups.
    fn watch_remote(&self, mut closed: watch::Receiver<u64>, ctx: &mut Context<Self>) {
        ctx.spawn(
            async move { while closed.changed().await.is_ok() {} }
                .into_actor(self)
                .map(|(), act, ctx| act.remote_closed(ctx)),
        );
    }

    /// Some remote session of this actor closed (maybe an earlier one):
    /// if the idle one is closed, the server is lost; work in progress
    /// finds out for itself, or gives the session back closed.
    fn remote_closed(&mut self, ctx: &mut Context<Self>) {
        if self.life.busy() {
            ctx.run_later(CLOSED_RECHECK, |act, ctx| act.remote_closed(ctx));
            return;
        }
        if self
            .life
            .idle_remote()
            .is_some_and(|r| r.client.is_closed())
        {
            self.fail(
                ErrorKind::Connection,
                false,
                "connection to the remote server lost".to_string(),
                ctx,
            );
        }
    }

    fn publish(&self) {
        // The supervisor has the status forget a retired server: a late
        // report (work that ends after the retirement) would bring its
        // entry and its metrics back for good.
        if self.retired {
            return;
        }
        self.shared.status.do_send(Report(self.report.clone()));
    }

    fn set_state(&mut self, state: WorkerState) {
        self.report.state = state;
        self.publish();
    }

    /// Passwords that must never leave the actor in an error string.
    fn scrub(&self, text: &str) -> String {
        let mut secrets = vec![];
        if let Some(p) = &self.spec.password {
            secrets.push(p.as_str());
        }
        scrub(text, &secrets)
    }

    /// Report a failure and act on it per [`retry_policy`]. `repository`
    /// says which side failed, for the state powa-web shows.
    fn fail(&mut self, kind: ErrorKind, repository: bool, reason: String, ctx: &mut Context<Self>) {
        log_failure(&self.logger, kind, &self.scrub(&reason));
        self.failed(kind, repository, reason, ctx);
    }

    /// [`Self::fail`] for a failure already logged.
    fn failed(
        &mut self,
        kind: ErrorKind,
        repository: bool,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let reason = self.scrub(&reason);
        self.report.last_errors = vec![reason.clone()];
        self.life.disconnect();
        self.cancel_timer(ctx);
        if self.life.stopping() {
            return;
        }
        match retry_policy(kind) {
            Retry::AfterReload => {
                // Waiting will not help, but a person may fix it without
                // telling us: try again now and then, and at every reload.
                let retry = self.settings.backoff_max;
                self.set_state(WorkerState::Failed(format!(
                    "{reason} (fix it, then reload; retried every {}s)",
                    retry.as_secs()
                )));
                self.report.next_due = Some(SystemTime::now() + retry);
                self.timer = Some(ctx.notify_later(Connect, retry));
            }
            Retry::Backoff | Retry::NextSchedule => {
                self.last_failure = Some((kind, repository, reason));
                // `restart.rs` restarts us; `restarting` and
                // `started` plan the next attempt.
                ctx.stop();
            }
        }
    }

    fn cancel_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
    }

    fn arm(&mut self, due: SystemTime, ctx: &mut Context<Self>) {
        self.cancel_timer(ctx);
        self.due = Some(due);
        self.report.next_due = Some(due);
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        self.timer = Some(ctx.notify_later(Due, wait));
    }

    fn healthy(&self) -> bool {
        self.report.state == WorkerState::Running
    }

    fn wake_idle_waiters(&mut self) {
        for waiter in self.idle_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl Actor for SnapshotActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut delay = match self.failures {
            0 => Duration::ZERO,
            n => backoff_delay(n - 1, self.settings.backoff_min, self.settings.backoff_max),
        };
        if let Some((kind, _, _)) = &self.last_failure {
            if retry_policy(*kind) == Retry::NextSchedule {
                // Nothing is broken for good (an SQL error, a timeout): the
                // backoff paces the first retries, the schedule the others.
                delay = delay.min(Duration::from_secs(self.spec.frequency.into()));
            }
        }
        if let Some((kind, repository, reason)) = self.last_failure.take() {
            let state = match (kind, repository) {
                (ErrorKind::Connection, true) => WorkerState::NoRepository(reason),
                (ErrorKind::Connection, false) => WorkerState::NoRemote(reason),
                _ => WorkerState::Restarting {
                    at: SystemTime::now() + delay,
                    reason,
                },
            };
            self.report.next_due = Some(SystemTime::now() + delay);
            self.set_state(state);
            info!(self.logger, "retrying"; "in_secs" => delay.as_secs_f64(), "failures" => self.failures);
        } else {
            self.set_state(WorkerState::Starting);
        }
        ctx.notify_later(Connect, delay);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.wake_idle_waiters();
    }
}

/// Restarted after it stopped itself ([`SnapshotActor::fail`]) or after a
/// panic in a handler (see [`crate::restart`]): whatever ran is dropped with
/// the old context, `started` reconnects after the backoff.
impl Supervised for SnapshotActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.failures = self.failures.saturating_add(1);
        self.report.restarts += 1;
        self.life.restarted();
        self.timer = None;
        if let Some(panic) = crate::restart::take_panic() {
            let reason = self.scrub(&format!("internal error (panic): {panic}"));
            self.report.last_errors = vec![reason.clone()];
            self.last_failure = Some((ErrorKind::Internal, false, reason));
        } else if self.last_failure.is_none() {
            self.last_failure = Some((
                ErrorKind::Internal,
                false,
                "actor stopped unexpectedly".into(),
            ));
        }
        if self.life.stopping() {
            // A shutdown waited for the work the restart dropped.
            self.set_state(WorkerState::Stopped);
            self.wake_idle_waiters();
        }
    }
}

/// What a successful (re)connection learns.
struct Connected {
    remote: Remote,
    /// Whether the remote session is encrypted.
    tls: bool,
    last: LastSnapshot,
}

/// A failed step, reduced to what the actor needs to decide.
struct StepFailure {
    kind: ErrorKind,
    reason: String,
    /// Write it to `powa_snapshot_metas.errors` (replacing).
    record: bool,
    /// The repository failed, not the remote server.
    repository: bool,
}

impl StepFailure {
    fn new(kind: ErrorKind, reason: impl ToString) -> StepFailure {
        StepFailure {
            kind,
            reason: reason.to_string(),
            record: true,
            repository: false,
        }
    }
}

/// Runs a future, turning a panic into an internal failure.
async fn guarded<T>(
    fut: impl std::future::Future<Output = Result<T, StepFailure>>,
) -> Result<T, StepFailure> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(StepFailure {
                kind: ErrorKind::Internal,
                reason: format!("internal error (panic): {what}"),
                record: false,
                repository: false,
            })
        }
    }
}

/// The repository could not give a session: reported, but not written to
/// the repository (which is what failed).
fn pool_failure(e: crate::connect::ConnectError) -> StepFailure {
    StepFailure {
        kind: e.kind(),
        reason: e.to_string(),
        record: false,
        repository: true,
    }
}

/// Bounds work on servers that may stop answering: a frozen server keeps
/// TCP alive and never reaches its own statement_timeout, so only a
/// deadline on our side gets the actor out.
async fn within<T>(
    deadline: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, StepFailure>>,
) -> Result<T, StepFailure> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(result) => result,
        Err(_) => Err(StepFailure::new(
            ErrorKind::Timeout,
            format!(
                "{what} did not finish within {}s: a server is not answering",
                deadline.as_secs()
            ),
        )),
    }
}

/// The remote session, and where PoWA's objects are on it.
struct Remote {
    client: Client,
    layout: Layout,
    prepared: Prepared,
    /// Ends (its sender dropped) when the session's connection does.
    closed: watch::Receiver<u64>,
}

impl SnapshotActor {
    /// Opens sessions on the other databases of the server, as its PoWA
    /// database is opened; errors never show the password.
    fn database_opener(&self) -> Arc<OpenDatabase> {
        let spec = self.spec.clone();
        let settings = self.settings.clone();
        Arc::new(move |dbname: String| {
            let spec = spec.clone();
            let settings = settings.clone();
            Box::pin(async move {
                let role = spec.name(settings.use_server_alias);
                connect_remote_database(&spec, &settings, &role, &dbname)
                    .await
                    .map(|session| session.client)
                    .map_err(|e| scrub(&e.to_string(), &[spec.password.as_deref().unwrap_or("")]))
            })
        })
    }
}

/// How long connecting, bookkeeping or one snapshot may take in all.
fn work_deadline(settings: &Settings) -> Duration {
    crate::connect::statement_deadline(settings)
}

/// The version bookkeeping: the remote is asked first, within the remote
/// silence limit, and only then is a repository session borrowed to save
/// the answer; a frozen remote never holds a pooled session.
async fn bookkeeping(
    pool: &RepoPool,
    remote: &Client,
    srvid: SrvId,
    settings: &Settings,
) -> Result<(), StepFailure> {
    let inventory = within(
        settings.remote_silence,
        "reading the remote server's versions",
        async {
            repository::remote_inventory(remote)
                .await
                .map_err(|e| StepFailure::new(e.kind(), e))
        },
    )
    .await?;
    let repo = pool.get().await.map_err(pool_failure)?;
    within(work_deadline(settings), "the version bookkeeping", async {
        repository::save_versions(&repo, repo.layout(), srvid, &inventory)
            .await
            .map_err(|e| StepFailure::new(e.kind(), e))
    })
    .await
}

/// Tries at finding out whether a COMMIT cut off by a lost session went
/// through, one second apart (the repository may be restarting).
const COMMIT_CHECKS: u32 = 3;

/// A COMMIT cut off by a lost session: ask the repository, on a new
/// session, whether the snapshot is there. It becomes a success if it is,
/// an aborted snapshot if it is not, and stays "outcome unknown" (never
/// "aborted") when the repository cannot tell us.
async fn settle_commit<R>(
    pool: &RepoPool,
    srvid: SrvId,
    result: Result<(R, Duration, Result<SnapshotReport, SnapshotError>), StepFailure>,
    logger: &Logger,
) -> Result<(R, Duration, Result<SnapshotReport, SnapshotError>), StepFailure> {
    let Ok((
        remote,
        waited,
        Err(SnapshotError::CommitUnknown {
            recorded_seq: Some(seq),
            report,
            source,
        }),
    )) = result
    else {
        return result;
    };
    let deadline = pool.statement_deadline();
    for attempt in 0..COMMIT_CHECKS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let Ok(repo) = pool.get().await else { continue };
        let check = crate::snapshot::committed(&repo, repo.layout(), srvid, seq);
        match tokio::time::timeout(deadline, check).await {
            Ok(Ok(true)) => {
                let mut report = *report;
                warn!(logger, "the repository session was lost during COMMIT, \
                    but the snapshot is in the repository"; "error" => pg_message(&source));
                report.warnings.push(format!(
                    "repository session lost during COMMIT, snapshot committed: {}",
                    pg_message(&source)
                ));
                return Ok((remote, waited, Ok(report)));
            }
            Ok(Ok(false)) => {
                let aborted = SnapshotError::Repository {
                    what: "committing",
                    source,
                };
                return Ok((remote, waited, Err(aborted)));
            }
            Ok(Err(_)) | Err(_) => {}
        }
    }
    let unknown = SnapshotError::CommitUnknown {
        recorded_seq: Some(seq),
        report,
        source,
    };
    Ok((remote, waited, Err(unknown)))
}

/// Vacuum the staging tables a committed snapshot used
/// ([`repository::vacuum_staging`]), on a pooled session, apart from the
/// actor: it holds no snapshot slot and delays no schedule. A failure (the
/// repository away, the statement deadline passed) is only logged: the
/// next one retries.
fn spawn_staging_vacuum(pool: &RepoPool, tables: Vec<String>, logger: &Logger) {
    let pool = pool.clone();
    let logger = logger.clone();
    tokio::spawn(async move {
        let deadline = pool.statement_deadline();
        let vacuum = async {
            let repo = pool.get().await.map_err(|e| e.to_string())?;
            repository::vacuum_staging(&repo, &tables)
                .await
                .map_err(|e| pg_message(&e))
        };
        match tokio::time::timeout(deadline, vacuum).await {
            Ok(Ok(vacuumed)) => debug!(logger, "staging tables vacuumed"; "tables" => vacuumed),
            Ok(Err(error)) => {
                debug!(logger, "vacuuming the staging tables failed"; "error" => error)
            }
            Err(_) => debug!(logger, "vacuuming the staging tables timed out";
                "after_secs" => deadline.as_secs()),
        }
    });
}

/// Write a failure to `powa_snapshot_metas.errors` so powa-web shows it.
/// A failure in the log, before anything else is tried: recording it in
/// the repository may wait for a repository that does not answer.
fn log_failure(logger: &Logger, kind: ErrorKind, reason: &str) {
    error!(logger, "collection failed"; "error_type" => kind.as_str(), "error" => reason);
}

async fn record_error(pool: &RepoPool, srvid: SrvId, message: &str, logger: &Logger) {
    let deadline = pool.statement_deadline();
    let result = match pool.get().await {
        Ok(repo) => tokio::time::timeout(
            deadline,
            repository::record_connection_error(&repo, repo.layout(), srvid, message),
        )
        .await
        .map_err(|_| {
            format!(
                "the repository did not answer within {}s",
                deadline.as_secs()
            )
        })
        .and_then(|r| r.map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = result {
        warn!(logger, "could not record the error in the repository"; "error" => e);
    }
}

impl Handler<Connect> for SnapshotActor {
    type Result = ();

    fn handle(&mut self, _: Connect, ctx: &mut Context<Self>) {
        if !self.life.start_connecting() {
            return;
        }
        let spec = self.spec.clone();
        let settings = self.settings.clone();
        let pool = self.shared.pool.clone();
        let logger = self.logger.clone();
        let deadline = work_deadline(&settings);
        // Repository sessions are borrowed only around each query, and the
        // wait for one is not the servers' fault: only the work itself runs
        // under the deadline.
        // Each stage is boxed: the state of a stage exists only while it
        // runs. Unboxed, every server's connect future held the largest
        // stage's state (about 45 KB: the TLS and startup exchange) from the
        // start, and at start-up all of them wait at once for a
        // repository session.
        let work = guarded(async move {
            let last = {
                let repo = Box::pin(pool.get()).await.map_err(pool_failure)?;
                Box::pin(within(deadline, "reading the last snapshot", async {
                    repository::last_snapshot(&repo, repo.layout(), spec.srvid)
                        .await
                        .map_err(|e| StepFailure::new(e.kind(), e))
                }))
                .await?
            };
            if last == LastSnapshot::NotRegistered {
                return Err(StepFailure {
                    kind: ErrorKind::Setup,
                    reason: "server not registered properly: no row in powa_snapshot_metas \
                             (register it with powa_register_server)"
                        .to_string(),
                    record: false,
                    repository: false,
                });
            }
            let session = Box::pin(within(deadline, "connecting", async {
                connect_remote(&spec, &settings, &spec.name(settings.use_server_alias))
                    .await
                    .map_err(|e| StepFailure::new(e.kind(), e))
            }))
            .await?;
            let tls = session.tls;
            let remote = Remote {
                client: session.client,
                layout: session.layout,
                prepared: session.prepared,
                closed: session.notified,
            };
            Box::pin(bookkeeping(&pool, &remote.client, spec.srvid, &settings)).await?;
            Ok(Connected { remote, tls, last })
        });
        let pool = self.shared.pool.clone();
        let srvid = self.spec.srvid;
        let password = self.spec.password.clone().unwrap_or_default();
        let work = async move {
            let result = work.await;
            if let Err(failure) = &result {
                let reason = scrub(&failure.reason, &[&password]);
                log_failure(&logger, failure.kind, &reason);
                if failure.record {
                    record_error(&pool, srvid, &reason, &logger).await;
                }
            }
            result
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            match result {
                Ok(Connected { remote, tls, last }) => {
                    act.watch_remote(remote.closed.clone(), ctx);
                    act.life.work_ended(Some(remote));
                    act.report.tls = Some(tls);
                    let frequency = Duration::from_secs(act.spec.frequency.into());
                    // A fresh worker (start-up, a server taken over from a
                    // lost member) takes a snapshot it just missed at once;
                    // after a failure the backoff and the spreading pace
                    // the retries.
                    let take_overdue = act.failures == 0;
                    let due = schedule::first_due(
                        SystemTime::now(),
                        &last,
                        frequency,
                        take_overdue,
                        |n| rand::random::<u64>() % n.max(1),
                    );
                    info!(act.logger, "connected"; "next_snapshot_in_secs" =>
                        due.duration_since(SystemTime::now()).unwrap_or_default().as_secs());
                    // `running` means healthy: after a failure, the server
                    // is not healthy again until a snapshot succeeds.
                    let state = match (act.failures, act.report.last_errors.first()) {
                        (0, _) | (_, None) => WorkerState::Running,
                        (_, Some(reason)) => WorkerState::Restarting {
                            at: due,
                            reason: reason.clone(),
                        },
                    };
                    act.set_state(state);
                    act.arm(due, ctx);
                }
                Err(failure) => {
                    act.life.work_ended(None);
                    act.failed(failure.kind, failure.repository, failure.reason, ctx)
                }
            }
            // A shutdown waits for this attempt, whatever its outcome.
            if act.life.stopping() {
                act.cancel_timer(ctx);
                act.set_state(WorkerState::Stopped);
                act.wake_idle_waiters();
            }
        }));
    }
}

impl Handler<Due> for SnapshotActor {
    type Result = ();

    fn handle(&mut self, _: Due, ctx: &mut Context<Self>) {
        crate::fault::panic_in("snapshot", "due");
        self.timer = None;
        let (mut remote, forced) = match self.life.start_snapshot() {
            OnDue::Snapshot { remote, forced } => (remote, forced),
            OnDue::Connect => {
                ctx.notify(Connect);
                return;
            }
            // Remembered by the life: taken when the work ends.
            OnDue::AfterWork => return,
            OnDue::Ignore => return,
        };
        let due = if forced {
            SystemTime::now()
        } else {
            self.due.unwrap_or_else(SystemTime::now)
        };
        let gate = self.shared.gate.clone();
        let pool = self.shared.pool.clone();
        let srvid = self.spec.srvid;
        let logger = self.logger.clone();
        let deadline = work_deadline(&self.settings);
        let remote_silence = self.settings.remote_silence;
        // Given back if the snapshot does not record them.
        let catalogs = std::mem::take(&mut self.catalogs);
        let catalogs_asked = catalogs.clone();
        let open_database = self.database_opener();
        let frequency = Duration::from_secs(self.spec.frequency.into());
        // Never two snapshots of a server within half a period; a forced
        // one only keeps clear of the one just taken.
        let min_gap = if forced {
            (frequency / 2).min(FORCE_MIN_INTERVAL / 2)
        } else {
            frequency / 2
        };
        let fleet = self.shared.fleet.clone();
        let slots = self.settings.max_concurrent_snapshots;
        let work = guarded(async move {
            // A remote server that does not answer must not take one of the
            // fleet's snapshot slots: ask it first, outside the limit.
            match tokio::time::timeout(remote_silence, remote.client.simple_query("")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(StepFailure::new(
                        classify(&e),
                        format!(
                            "remote server failed before the snapshot: {}",
                            pg_message(&e)
                        ),
                    ))
                }
                Err(_) => {
                    return Err(StepFailure::new(
                        ErrorKind::Connection,
                        format!(
                            "remote server sent nothing for {}s: it is not answering",
                            remote_silence.as_secs()
                        ),
                    ))
                }
            }
            // Waiting for a permit is not the server's fault: the deadline
            // starts once the snapshot may run.
            let _permit = gate.acquire(forced, due).await;
            let waited = SystemTime::now().duration_since(due).unwrap_or_default();
            let mut repo = pool.get().await.map_err(pool_failure)?;
            within(deadline, "the snapshot", async move {
                let mut observer =
                    |step: Step| debug!(logger, "snapshot step"; "step" => format!("{step:?}"));
                crate::fault::before_snapshot(srvid);
                let repo_layout = repo.layout().clone();
                // Read after the permit: the membership session may have
                // changed while waiting. Without one, nothing may commit.
                let Some(member_pid) = fleet.pid() else {
                    return Ok((
                        remote,
                        waited,
                        Err(SnapshotError::Fenced(crate::fencing::Fenced::NotOwner)),
                    ));
                };
                let job = Job {
                    fence: Some(Fence {
                        member_pid,
                        min_gap,
                        slots,
                        forced,
                        stall_limit: remote_silence + Duration::from_secs(10),
                    }),
                    srvid,
                    remote_silence,
                    repository: &repo_layout,
                    remote: &remote.layout,
                    catalogs: &catalogs,
                    open_database: &*open_database,
                    slot_freed: Some(repo.notified()),
                };
                let (repo_client, repo_prepared) = repo.with_prepared();
                let outcome = take_snapshot(
                    repo_client,
                    repo_prepared,
                    &mut remote.client,
                    &mut remote.prepared,
                    &job,
                    &mut observer,
                )
                .await;
                Ok((remote, waited, outcome))
            })
            .await
        });
        let pool = self.shared.pool.clone();
        let logger = self.logger.clone();
        let password = self.spec.password.clone().unwrap_or_default();
        let work = async move {
            let result = settle_commit(&pool, srvid, work.await, &logger).await;
            // A snapshot lost as a whole is logged, then written where
            // powa-web shows it.
            let lost = match &result {
                Ok((_, _, Err(SnapshotError::Fenced(_)))) | Ok((_, _, Ok(_))) => None,
                Ok((_, _, Err(e))) => Some((e.kind(), e.to_string(), true)),
                Err(failure) => Some((failure.kind, failure.reason.clone(), failure.record)),
            };
            if let Some((kind, reason, record)) = lost {
                let reason = scrub(&reason, &[&password]);
                log_failure(&logger, kind, &reason);
                if record {
                    record_error(&pool, srvid, &reason, &logger).await;
                }
            }
            if let Ok((_, _, Ok(report))) = &result {
                if !report.staged.is_empty() && pool.claim_staging_vacuum() {
                    spawn_staging_vacuum(&pool, report.staged.clone(), &logger);
                }
            }
            result
        };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            let now = SystemTime::now();
            let recorded =
                matches!(&result, Ok((_, _, Ok(report))) if report.not_recorded.is_none());
            if !recorded {
                act.catalogs.merge(catalogs_asked);
                act.shared.status.do_send(SnapshotFailed(srvid));
            }
            match result {
                Ok((remote, waited, Ok(report))) => {
                    act.life.work_ended(Some(remote));
                    act.failures = 0;
                    if report.errors.is_empty() {
                        info!(act.logger, "snapshot taken"; "rows" => report.rows,
                            "seconds" => report.elapsed.as_secs_f64(),
                            "lag_secs" => waited.as_secs_f64());
                    } else {
                        warn!(act.logger, "snapshot taken with errors"; "rows" => report.rows,
                            "errors" => report.errors.join("; "));
                    }
                    if report.not_recorded.is_none() {
                        act.report.last_snapshot = Some(now);
                        act.report.last_duration = Some(report.elapsed);
                        act.report.last_rows = report.rows;
                    }
                    act.report.last_lag = Some(waited);
                    act.report.last_errors = report.errors.iter().map(|e| act.scrub(e)).collect();
                    let frequency = Duration::from_secs(act.spec.frequency.into());
                    let scheduled = act.due.unwrap_or(now);
                    let (next, skipped) = if forced && scheduled > now {
                        // A forced snapshot leaves the rhythm alone.
                        (scheduled, 0)
                    } else {
                        schedule::next_due(scheduled, frequency, now)
                    };
                    if skipped > 0 {
                        warn!(act.logger, "collection is late, skipping missed snapshots";
                            "skipped" => skipped);
                        act.report.skipped += u64::from(skipped);
                    }
                    // A snapshot the repository refused is not healthy: say
                    // so until one is recorded; the schedule paces retries.
                    act.report.state = match &report.not_recorded {
                        None => WorkerState::Running,
                        Some(reason) => WorkerState::Restarting {
                            at: next,
                            reason: act.scrub(reason),
                        },
                    };
                    act.arm(next, ctx);
                    act.publish();
                }
                Ok((remote, _, Err(SnapshotError::Fenced(why)))) => {
                    // Not a failure: the server is (being) handed over, or
                    // another member just took it. Keep the session and the
                    // rhythm; the membership retires this actor if needed.
                    act.life.work_ended(Some(remote));
                    info!(act.logger, "snapshot not taken"; "reason" => %why);
                    let frequency = Duration::from_secs(act.spec.frequency.into());
                    let scheduled = act.due.unwrap_or(now);
                    let (next, skipped) = schedule::next_due(scheduled, frequency, now);
                    act.report.skipped += u64::from(skipped);
                    act.arm(next, ctx);
                    act.publish();
                }
                Ok((_, _, Err(e))) => {
                    act.life.work_ended(None);
                    let repository = matches!(e, SnapshotError::Repository { .. });
                    act.failed(e.kind(), repository, e.to_string(), ctx)
                }
                Err(failure) => {
                    act.life.work_ended(None);
                    act.failed(failure.kind, failure.repository, failure.reason, ctx)
                }
            }
            if act.life.stopping() {
                act.set_state(WorkerState::Stopped);
                act.wake_idle_waiters();
            }
        }));
    }
}

impl Handler<ForceSnapshot> for SnapshotActor {
    type Result = Result<ForceAccepted, String>;

    fn handle(&mut self, _: ForceSnapshot, ctx: &mut Context<Self>) -> Self::Result {
        let refusal = self.life.may_force().err();
        if refusal == Some(ForceRefusal::InProgress) {
            return Err("A snapshot is already in progress".to_string());
        }
        if refusal == Some(ForceRefusal::AlreadyForced) {
            return Err("A snapshot is already forced".to_string());
        }
        if !self.healthy() || refusal == Some(ForceRefusal::NotReady) {
            return Err(format!(
                "Server is not ready: {}",
                protocol::worker_state(&self.report.state, SystemTime::now())
            ));
        }
        if let Some(last) = self.report.last_snapshot {
            if SystemTime::now().duration_since(last).unwrap_or_default() < FORCE_MIN_INTERVAL {
                return Err("Last snapshot is less than 10 seconds old".to_string());
            }
        }
        let (running, waiting) = self.shared.gate.load();
        let free = running < self.settings.max_concurrent_snapshots && waiting == 0;
        self.life.force();
        self.cancel_timer(ctx);
        ctx.notify(Due);
        Ok(if free {
            ForceAccepted::Started
        } else {
            ForceAccepted::Queued
        })
    }
}

impl Handler<Refresh> for SnapshotActor {
    type Result = ();

    fn handle(&mut self, Refresh(settings): Refresh, ctx: &mut Context<Self>) {
        self.settings = settings;
        if self.life.busy() || self.life.stopping() {
            return;
        }
        let healthy = self.healthy();
        let Some(remote) = self.life.start_refreshing(healthy) else {
            // Not healthy: try again now, from a clean slate.
            info!(self.logger, "reconnecting on reload");
            self.failures = 0;
            self.cancel_timer(ctx);
            ctx.notify(Connect);
            return;
        };
        // Healthy: keep the session and the rhythm, redo the bookkeeping.
        let pool = self.shared.pool.clone();
        let srvid = self.spec.srvid;
        let settings = self.settings.clone();
        let work = guarded(async move {
            bookkeeping(&pool, &remote.client, srvid, &settings).await?;
            Ok(remote)
        });
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            match result {
                Ok(remote) => {
                    if act.life.work_ended(Some(remote)) == AfterWork::SnapshotDue {
                        // Its timer fired, or a forced one was accepted,
                        // while the bookkeeping ran.
                        ctx.notify(Due);
                    }
                }
                Err(failure) => {
                    act.life.work_ended(None);
                    act.fail(failure.kind, failure.repository, failure.reason, ctx)
                }
            }
            if act.life.stopping() {
                act.wake_idle_waiters();
            }
        }));
    }
}

impl Handler<Publish> for SnapshotActor {
    type Result = ();

    fn handle(&mut self, _: Publish, _: &mut Context<Self>) {
        self.publish();
    }
}

impl Handler<RefreshCatalogs> for SnapshotActor {
    type Result = Result<(), String>;

    fn handle(
        &mut self,
        RefreshCatalogs(dbnames): RefreshCatalogs,
        _: &mut Context<Self>,
    ) -> Self::Result {
        if let Some(remote) = self.life.idle_remote() {
            if remote.layout.generation() == Generation::Four {
                return Err("PoWA 4 keeps no catalogs: nothing to refresh".to_string());
            }
        }
        debug!(self.logger, "catalog refresh asked"; "databases" => dbnames.join(" "));
        self.catalogs.merge(CatalogRefresh::request(&dbnames));
        Ok(())
    }
}

impl Handler<Retire> for SnapshotActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        info!(self.logger, "server removed from the fleet, stopping");
        self.retired = true;
        self.life.retire();
        ctx.stop();
    }
}

impl Handler<Shutdown> for SnapshotActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        let waiting = self.life.shut_down();
        self.cancel_timer(ctx);
        if !waiting {
            self.set_state(WorkerState::Stopped);
            return Box::pin(async {});
        }
        self.set_state(WorkerState::Stopping);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.idle_waiters.push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
