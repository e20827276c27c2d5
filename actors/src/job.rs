//! What one snapshot is given and what it gives back, shared by the
//! global steps (`snapshot.rs`) and the PoWA 5 per-database ones
//! (`per_database.rs`): the [`Job`], the catalogs to refresh, the
//! [`SnapshotReport`], the [`SnapshotError`] that loses it whole, progress
//! [`Step`]s, and [`copy_one`], one datasource copied under a savepoint on
//! both sides.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::BoxFuture;
use thiserror::Error;
use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};

use crate::copy::{pipe, PipeError};
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
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| SnapshotError::RemoteSilent {
            what,
            secs: limit.as_secs(),
        })
}

pub(crate) fn repo(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SnapshotError {
    move |source| SnapshotError::Repository { what, source }
}

/// Progress events, for logs and for tests that inject faults.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    DatasourceDone { module: String, rows: u64 },
    DatasourceFailed { module: String, error: String },
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

/// How many statements `plan` left out because the remote role cannot see
/// their `queryid`: counted only when the role lacks `pg_read_all_stats`
/// (superusers have it), so a well-granted role pays nothing.
async fn hidden_statements(
    remote_silence: Duration,
    remote_tx: &mut Transaction<'_>,
    plan: &CopyPlan,
    report: &mut SnapshotReport,
) -> Result<(), SnapshotError> {
    let sql = format!(
        "SELECT CASE WHEN pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE') THEN 0 \
         ELSE (SELECT pg_catalog.count(*) FROM {} WHERE queryid IS NULL) END",
        plan.source_label
    );
    // Under its own savepoint: a failed count (a timeout) must not abort
    // the copy it follows.
    let what = "opening a savepoint";
    let sp = on_remote(
        remote_silence,
        what,
        remote_tx.savepoint("powa_fleet_hidden"),
    )
    .await?
    .map_err(remote(what))?;
    let what = "counting hidden statements";
    match on_remote(remote_silence, what, sp.query_typed_one(&sql, &[])).await? {
        Ok(row) => {
            let hidden: i64 = row.get(0);
            if hidden > 0 {
                report.errors.push(format!(
                    "{}: {hidden} statements of other roles not copied: the remote role \
                     sees them with a NULL queryid (grant it pg_read_all_stats)",
                    plan.name
                ));
            }
            let what = "releasing a savepoint";
            on_remote(remote_silence, what, sp.commit())
                .await?
                .map_err(remote(what))?;
        }
        Err(e) if is_lost(&e) => return Err(remote(what)(e)),
        Err(e) => {
            report
                .warnings
                .push(format!("{}: {what}: {}", plan.name, pg_message(&e)));
            let what = "rolling back a savepoint";
            on_remote(remote_silence, what, sp.rollback())
                .await?
                .map_err(remote(what))?;
        }
    }
    Ok(())
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

/// Copy one datasource under a savepoint on both sides. `Ok(true)` when it
/// landed, `Ok(false)` when it failed alone (recorded in the report), `Err`
/// when the failure costs the whole snapshot.
pub(crate) async fn copy_one(
    remote_silence: Duration,
    remote_tx: &mut Transaction<'_>,
    repo_tx: &mut Transaction<'_>,
    plan: &CopyPlan,
    report: &mut SnapshotReport,
    observer: &mut dyn FnMut(Step),
) -> Result<bool, SnapshotError> {
    let what = "opening a savepoint";
    let mut remote_sp = on_remote(remote_silence, what, remote_tx.savepoint("powa_fleet_src"))
        .await?
        .map_err(remote(what))?;
    let repo_sp = repo_tx
        .savepoint("powa_fleet_data")
        .await
        .map_err(repo("opening a savepoint"))?;
    let piped = pipe(
        remote_silence,
        &remote_sp,
        &repo_sp,
        &plan.source,
        &plan.table,
        &plan.sink(),
    )
    .await;
    match piped {
        Ok(copied) => {
            if plan.skips_hidden_statements {
                hidden_statements(remote_silence, &mut remote_sp, plan, report).await?;
            }
            let what = "releasing a savepoint";
            on_remote(remote_silence, what, remote_sp.commit())
                .await?
                .map_err(remote(what))?;
            repo_sp
                .commit()
                .await
                .map_err(repo("releasing a savepoint"))?;
            report.datasources += 1;
            report.rows += copied.rows;
            report.bytes += copied.bytes;
            observer(Step::DatasourceDone {
                module: plan.name.clone(),
                rows: copied.rows,
            });
            Ok(true)
        }
        Err(failure) => {
            let error = match failure {
                PipeError::Source(e) if is_lost(&e) => {
                    return Err(remote("copying a datasource")(e))
                }
                PipeError::Sink(e) if is_lost(&e) => return Err(repo("copying a datasource")(e)),
                PipeError::Silent(limit) => {
                    return Err(SnapshotError::RemoteSilent {
                        what: "copying a datasource",
                        secs: limit.as_secs(),
                    })
                }
                PipeError::Source(e) => format!(
                    "{}: error while calling {} on the remote server: {}",
                    plan.name,
                    plan.source_label,
                    pg_message(&e)
                ),
                PipeError::Sink(e) => format!(
                    "{}: error while inserting into {}: {}",
                    plan.name,
                    plan.table,
                    pg_message(&e)
                ),
            };
            let what = "rolling back a savepoint";
            on_remote(remote_silence, what, remote_sp.rollback())
                .await?
                .map_err(remote(what))?;
            repo_sp
                .rollback()
                .await
                .map_err(repo("rolling back a savepoint"))?;
            observer(Step::DatasourceFailed {
                module: plan.name.clone(),
                error: error.clone(),
            });
            report.errors.push(error);
            Ok(false)
        }
    }
}
