//! What one snapshot is given and what it gives back, shared by the
//! global steps (`snapshot.rs`) and the PoWA 5 per-database ones
//! (`per_database.rs`): the [`Job`], the catalogs to refresh, the
//! [`SnapshotReport`], the [`SnapshotError`] that loses it whole, progress
//! [`Step`]s, and [`copy_one`], one datasource copied under a savepoint on
//! both sides.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Duration;

use futures_util::future::{join, join3, maybe_done, BoxFuture, MaybeDone};
use thiserror::Error;
use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};

use crate::copy::{pipe, Landing, PipeError, Prepared, Staging};
use crate::error::{classify, pg_message, ErrorKind};
use crate::fencing::{Fence, Fenced};
use crate::layout::Layout;
use crate::server::SrvId;

/// What one snapshot did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotReport {
    /// Datasources copied successfully.
    pub datasources: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Stored in `powa_snapshot_metas.errors` (datasource, cleanup and
    /// `powa_take_snapshot` failures).
    pub errors: Vec<String>,
    /// The count `powa_take_snapshot` returned (details in the repository log).
    pub internal_errors: i32,
    pub elapsed: Duration,
    /// Worth a log line, not an error (skipped datasources, nothing to do).
    pub warnings: Vec<String>,
    /// Why `powa_take_snapshot` failed, when it did: the copy committed its
    /// errors but no snapshot was recorded.
    pub not_recorded: Option<String>,
    /// The staging tables (qualified) this snapshot copied into: once it
    /// has committed, their rows are dead (`powa_take_snapshot` deleted
    /// them), see [`crate::repository::vacuum_staging`].
    pub staged: Vec<String>,
}

/// A snapshot lost as a whole: nothing was committed (but for
/// [`SnapshotError::CommitUnknown`], where nobody knows yet).
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot aborted, remote server failed while {what}: {}", pg_message(.source))]
    Remote {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("snapshot aborted, repository failed while {what}: {}", pg_message(.source))]
    Repository {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The remote server sent nothing for `secs` seconds.
    #[error("snapshot aborted, remote server sent nothing for {secs}s while {what}: it is not answering")]
    RemoteSilent { what: &'static str, secs: u64 },
    /// The repository session was lost while committing: the snapshot may
    /// be in the repository or not. It is there if `coalesce_seq` reached
    /// `recorded_seq` (what the transaction set); `report` is what the
    /// snapshot did if so.
    #[error("snapshot outcome unknown: the repository session was lost while committing: {}", pg_message(.source))]
    CommitUnknown {
        recorded_seq: Option<i64>,
        report: Box<SnapshotReport>,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The fence refused the snapshot: rolled back, nothing to report in
    /// the repository (another member collects the server, or just did).
    #[error("snapshot not written: {0}")]
    Fenced(Fenced),
}

impl SnapshotError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::Remote { source, .. } | SnapshotError::Repository { source, .. } => {
                classify(source)
            }
            SnapshotError::RemoteSilent { .. } | SnapshotError::CommitUnknown { .. } => {
                ErrorKind::Connection
            }
            SnapshotError::Fenced(_) => ErrorKind::Internal,
        }
    }
}

pub(crate) fn remote(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SnapshotError {
    move |source| SnapshotError::Remote { what, source }
}

/// A remote step, given up when the server stays silent for `limit`; the
/// inner result is the step's own.
pub(crate) async fn on_remote<T>(
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<Result<T, tokio_postgres::Error>, SnapshotError> {
    remote_within(limit, what, fut).await
}

pub(crate) fn repo(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SnapshotError {
    move |source| SnapshotError::Repository { what, source }
}

/// Progress events, for logs and for tests that inject faults.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    DatasourceDone {
        module: String,
        /// The staging table it landed in.
        table: String,
        rows: u64,
    },
    DatasourceFailed {
        module: String,
        error: String,
    },
    BeforeTakeSnapshot,
}

/// A failure that costs the whole snapshot (a lost connection), as
/// opposed to one datasource (an SQL error under a savepoint).
pub(crate) fn is_lost(err: &tokio_postgres::Error) -> bool {
    err.code().is_none()
}

/// Opens a session on another database of the remote server (PoWA 5
/// per-database datasources and catalogs); the error is for the user.
pub type OpenDatabase = dyn Fn(String) -> BoxFuture<'static, Result<Client, String>> + Send + Sync;

/// What one snapshot needs besides its two sessions.
pub struct Job<'a> {
    pub srvid: SrvId,
    /// Every remote step must answer within this.
    pub remote_silence: Duration,
    /// Where PoWA's objects are on the repository and on the remote.
    pub repository: &'a Layout,
    pub remote: &'a Layout,
    /// PoWA 5: catalogs to copy whatever their age.
    pub catalogs: &'a CatalogRefresh,
    pub open_database: &'a OpenDatabase,
    /// What the snapshot must prove before it writes (several members);
    /// `None` writes unconditionally (one snapshot driven by hand).
    pub fence: Option<Fence>,
    /// Changes when a fleet-wide slot may just have been freed (the
    /// repository session's notifications): a snapshot waiting for one
    /// asks again at once instead of at its next poll.
    pub slot_freed: Option<watch::Receiver<u64>>,
}

/// The query counting the statements `plan` left out because the remote
/// role cannot see their `queryid`: counted only when the role lacks
/// `pg_read_all_stats` (superusers have it), so a well-granted role pays
/// nothing.
fn hidden_statements_sql(plan: &CopyPlan) -> String {
    format!(
        "SELECT CASE WHEN pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE') THEN 0 \
         ELSE (SELECT pg_catalog.count(*) FROM {} WHERE queryid IS NULL) END",
        plan.source_label
    )
}

/// The error stored for `hidden` statements left out, if any.
fn hidden_statements_error(plan: &CopyPlan, hidden: i64) -> Option<String> {
    (hidden > 0).then(|| {
        format!(
            "{}: {hidden} statements of other roles not copied: the remote role \
             sees them with a NULL queryid (grant it pg_read_all_stats)",
            plan.name
        )
    })
}

/// One copy from the remote into a staging table of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    /// The datasource, in steps and error messages.
    pub name: String,
    /// What runs on the remote, for error messages.
    pub source_label: String,
    /// `COPY (...) TO STDOUT` on the remote.
    pub source: String,
    /// The qualified staging table on the repository.
    pub table: String,
    /// pg_stat_statements' rows: those the remote role cannot see are left
    /// out and counted (see [`hidden_statements`]).
    pub skips_hidden_statements: bool,
}

impl CopyPlan {
    pub(crate) fn sink(&self) -> String {
        format!("COPY {} FROM STDIN", self.table)
    }
}

/// Catalogs to copy at the next snapshot whatever their age.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CatalogRefresh {
    #[default]
    Nothing,
    All,
    Databases(BTreeSet<String>),
}

impl CatalogRefresh {
    /// A REFRESH_DB_CAT request: no name means every database.
    pub fn request(dbnames: &[String]) -> CatalogRefresh {
        if dbnames.is_empty() {
            CatalogRefresh::All
        } else {
            CatalogRefresh::Databases(dbnames.iter().cloned().collect())
        }
    }

    /// Both requests at once.
    pub fn merge(&mut self, other: CatalogRefresh) {
        *self = match (std::mem::take(self), other) {
            (CatalogRefresh::All, _) | (_, CatalogRefresh::All) => CatalogRefresh::All,
            (CatalogRefresh::Nothing, other) | (other, CatalogRefresh::Nothing) => other,
            (CatalogRefresh::Databases(mut a), CatalogRefresh::Databases(b)) => {
                a.extend(b);
                CatalogRefresh::Databases(a)
            }
        };
    }

    pub fn forces(&self, dbname: &str) -> bool {
        match self {
            CatalogRefresh::Nothing => false,
            CatalogRefresh::All => true,
            CatalogRefresh::Databases(names) => names.contains(dbname),
        }
    }
}

/// Read the answer of the last copy, sent ahead of what follows, and
/// record how it ended; the next statement must start with
/// [`Staging::take_ending`].
pub(crate) async fn settle(
    staging: &mut Staging<'_>,
    report: &mut SnapshotReport,
    observer: &mut dyn FnMut(Step),
) -> Result<(), SnapshotError> {
    if let Some(mut landing) = staging.landing.take() {
        let rows = landing.rows().await;
        if record_landing(staging, landing, rows, report, observer)? {
            staging.landed();
        } else {
            staging.failed();
        }
    }
    Ok(())
}

/// What a landing's answer means for the report: `Ok(true)` when the rows
/// are in, `Ok(false)` when the datasource failed alone.
fn record_landing(
    staging: &mut Staging<'_>,
    landing: Landing,
    rows: Result<u64, tokio_postgres::Error>,
    report: &mut SnapshotReport,
    observer: &mut dyn FnMut(Step),
) -> Result<bool, SnapshotError> {
    match rows {
        Ok(rows) => {
            staging.stage(&landing.table);
            report.datasources += 1;
            report.rows += rows;
            report.bytes += landing.bytes;
            report.errors.extend(landing.notes);
            observer(Step::DatasourceDone {
                module: landing.name,
                table: landing.table,
                rows,
            });
            Ok(true)
        }
        Err(e) if is_lost(&e) => Err(repo("copying a datasource")(e)),
        Err(e) => {
            let error = format!(
                "{}: error while inserting into {}: {}",
                landing.name,
                landing.table,
                pg_message(&e)
            );
            observer(Step::DatasourceFailed {
                module: landing.name,
                error: error.clone(),
            });
            report.errors.push(error);
            Ok(false)
        }
    }
}

/// The remote's savepoint around one datasource.
const SOURCE_SAVEPOINT: &str = "SAVEPOINT powa_fleet_src";

/// Ends the remote's savepoint whatever the copy did: it only read, so
/// there is nothing to keep, and the end can go out before the copy's
/// outcome is known, right behind it.
const SOURCE_END: &str = "ROLLBACK TO SAVEPOINT powa_fleet_src; RELEASE SAVEPOINT powa_fleet_src";

/// A request polled once, which makes tokio-postgres send it now (requests
/// go out in the order they are first polled); its answer is awaited
/// later, after the answers of the requests sent before it.
async fn send_now<F: Future>(fut: Pin<&mut MaybeDone<F>>) {
    let _ = futures_util::poll!(fut);
}

/// `fut`, unless the remote stays silent for `limit` (any step, not only
/// one statement's: [`on_remote`] is this for one statement).
async fn remote_within<T>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = T>,
) -> Result<T, SnapshotError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| SnapshotError::RemoteSilent {
            what,
            secs: limit.as_secs(),
        })
}

/// Copy one datasource under a savepoint on both sides. A datasource that
/// fails alone is recorded in the report; `Err` is a failure that costs
/// the whole snapshot. The copy's own answer is read with the next
/// statement's ([`settle`], or the next call).
///
/// The statements of each side are sent at once and answered in order:
/// on the remote the savepoint, the COPY, the count of hidden statements
/// and the savepoint's end; on the repository the last copy's answer, its
/// savepoint's ending (a release, betting that it landed: when it did
/// not, the bet fails as a whole and is sent again with a rollback), this
/// copy's savepoint and lock, then the COPY once the lock is held.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn copy_one(
    remote_silence: Duration,
    remote_tx: &Transaction<'_>,
    remote_prepared: &mut Prepared,
    repo_tx: &Transaction<'_>,
    staging: &mut Staging<'_>,
    plan: &CopyPlan,
    report: &mut SnapshotReport,
    observer: &mut dyn FnMut(Step),
) -> Result<(), SnapshotError> {
    let source_started = join(remote_tx.batch_execute(SOURCE_SAVEPOINT), async {
        let statement = remote_prepared.statement(remote_tx, &plan.source).await?;
        remote_tx.copy_out(&statement).await
    });
    let mut landing = staging.landing.take();
    if landing.is_some() {
        staging.landed();
    }
    let opening = staging.opening(&plan.table);
    // Until this copy lands, whatever happens (this database's session
    // lost, say), the next statement rolls it back.
    staging.failed();
    let sink_sql = plan.sink();
    let landed = async {
        match &mut landing {
            Some(landing) => Some(landing.rows().await),
            None => None,
        }
    };
    let sink_ready = join(
        repo_tx.batch_execute(&opening),
        staging.prepared.statement(repo_tx, &sink_sql),
    );
    let what = "copying a datasource";
    let (source_started, landed, (mut locked, mut sink_statement)) = join3(
        remote_within(remote_silence, what, source_started),
        landed,
        sink_ready,
    )
    .await;
    // The last copy's outcome first, whatever happens to this one.
    if let (Some(last), Some(rows)) = (landing, landed) {
        if !record_landing(staging, last, rows, report, observer)? {
            // The bet on a release failed whole: send it again with the
            // last copy's rollback.
            let opening = format!(
                "{}{}",
                Staging::ROLLBACK,
                &opening[Staging::RELEASE.len()..]
            );
            (locked, sink_statement) = join(
                repo_tx.batch_execute(&opening),
                staging.prepared.statement(repo_tx, &sink_sql),
            )
            .await;
        }
    }
    let (savepoint, source) = source_started?;
    savepoint.map_err(remote("opening a savepoint"))?;
    // Sent now, answered once the COPY is done.
    let count_sql =
        (plan.skips_hidden_statements && source.is_ok()).then(|| hidden_statements_sql(plan));
    let mut count = pin!(maybe_done(async {
        match &count_sql {
            Some(sql) => Some(remote_tx.query_typed_one(sql, &[]).await),
            None => None,
        }
    }));
    send_now(count.as_mut()).await;
    let mut end = pin!(maybe_done(remote_tx.batch_execute(SOURCE_END)));
    send_now(end.as_mut()).await;

    let piped = match (locked, sink_statement, source) {
        (Err(e), _, _) | (Ok(()), Err(e), _) => Err(PipeError::Sink(e)),
        (Ok(()), Ok(_), Err(e)) => Err(PipeError::Source(e)),
        (Ok(()), Ok(statement), Ok(source)) => match repo_tx.copy_in(&statement).await {
            Ok(sink) => pipe(remote_silence, source, sink).await,
            Err(e) => Err(PipeError::Sink(e)),
        },
    };
    let error = match piped {
        Ok((sink, bytes)) => {
            let landing = Landing::start(sink, plan.name.clone(), plan.table.clone(), bytes).await;
            let landing = staging.landing.insert(landing);
            remote_within(remote_silence, "counting hidden statements", count.as_mut()).await?;
            match count.as_mut().take_output().flatten() {
                Some(Ok(row)) => landing
                    .notes
                    .extend(hidden_statements_error(plan, row.get(0))),
                Some(Err(e)) if is_lost(&e) => return Err(remote("counting hidden statements")(e)),
                Some(Err(e)) => report.warnings.push(format!(
                    "{}: counting hidden statements: {}",
                    plan.name,
                    pg_message(&e)
                )),
                None => {}
            }
            None
        }
        Err(PipeError::Source(e)) if is_lost(&e) => return Err(remote("copying a datasource")(e)),
        Err(PipeError::Sink(e)) if is_lost(&e) => return Err(repo("copying a datasource")(e)),
        Err(PipeError::Silent(limit)) => {
            return Err(SnapshotError::RemoteSilent {
                what: "copying a datasource",
                secs: limit.as_secs(),
            })
        }
        Err(PipeError::Source(e)) => Some(format!(
            "{}: error while calling {} on the remote server: {}",
            plan.name,
            plan.source_label,
            pg_message(&e)
        )),
        Err(PipeError::Sink(e)) => Some(format!(
            "{}: error while inserting into {}: {}",
            plan.name,
            plan.table,
            pg_message(&e)
        )),
    };
    let what = "ending a savepoint";
    remote_within(remote_silence, what, end.as_mut()).await?;
    if let Some(Err(e)) = end.as_mut().take_output() {
        return Err(remote(what)(e));
    }
    if let Some(error) = error {
        observer(Step::DatasourceFailed {
            module: plan.name.clone(),
            error: error.clone(),
        });
        report.errors.push(error);
    }
    Ok(())
}
