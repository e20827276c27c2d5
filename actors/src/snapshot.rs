//! One remote snapshot, atomic on the repository.
//!
//! Two transactions are open for the whole snapshot: one on the remote
//! server, one on the repository. Each datasource runs under a savepoint on
//! both sides, so a failing datasource (missing extension, lock timeout, bad
//! data) is rolled back alone and recorded as an error string; then
//! `powa_take_snapshot(S)` runs under its own savepoint; the collected errors
//! are appended to `powa_snapshot_metas.errors` after it (it clears them);
//! the repository commits last. Losing either connection aborts the whole
//! snapshot: nothing of it is visible on the repository.

use std::time::{Duration, Instant};

use thiserror::Error;
use tokio_postgres::{Client, Transaction};

use crate::copy::{pipe, PipeError};
use crate::error::{classify, pg_message, ErrorKind};
use crate::repository::{self, quote_ident, Datasource, POWA_SCHEMA};
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
}

/// A snapshot lost as a whole: nothing was committed.
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
}

impl SnapshotError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::Remote { source, .. } | SnapshotError::Repository { source, .. } => {
                classify(source)
            }
            SnapshotError::RemoteSilent { .. } => ErrorKind::Connection,
        }
    }
}

fn remote(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SnapshotError {
    move |source| SnapshotError::Remote { what, source }
}

/// A remote step, given up when the server stays silent for `limit`; the
/// inner result is the step's own.
async fn on_remote<T>(
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

fn repo(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SnapshotError {
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
fn is_lost(err: &tokio_postgres::Error) -> bool {
    err.code().is_none()
}

/// For one datasource: the remote `COPY ... TO STDOUT`, the repository's
/// staging table, and the `COPY ... FROM STDIN` into it.
pub fn copy_statements(srvid: SrvId, ds: &Datasource) -> (String, String, String) {
    let source = format!(
        "COPY (SELECT {srvid}, * FROM {POWA_SCHEMA}.{}(0)) TO STDOUT",
        quote_ident(&ds.query_source)
    );
    let table = format!(
        "{POWA_SCHEMA}.{}",
        quote_ident(&format!("{}_tmp", ds.query_source))
    );
    let sink = format!("COPY {table} FROM STDIN");
    (source, table, sink)
}

/// Take one snapshot of `srvid` (SPEC steps 1–7). The remote server must
/// answer every step within `remote_silence`.
pub async fn take_snapshot(
    repo_client: &mut Client,
    remote_client: &mut Client,
    srvid: SrvId,
    remote_silence: Duration,
    observer: &mut dyn FnMut(Step),
) -> Result<SnapshotReport, SnapshotError> {
    let started = Instant::now();
    let mut report = SnapshotReport::default();
    let mut repo_tx = repo_client
        .transaction()
        .await
        .map_err(repo("opening the transaction"))?;
    let (datasources, warnings) = repository::datasources(&repo_tx, srvid)
        .await
        .map_err(|e| match e {
            repository::RepositoryError::Sql { source, .. } => {
                repo("reading powa_functions")(source)
            }
            other => unreachable!("datasources only fails on SQL: {other}"),
        })?;
    report.warnings = warnings;
    if datasources.is_empty() {
        report
            .warnings
            .push("no enabled snapshot datasource: nothing to do".to_string());
        repo_tx.commit().await.map_err(repo("committing"))?;
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    let what = "opening the transaction";
    let mut remote_tx = on_remote(remote_silence, what, remote_client.transaction())
        .await?
        .map_err(remote(what))?;

    for ds in &datasources {
        copy_datasource(
            remote_silence,
            &mut remote_tx,
            &mut repo_tx,
            srvid,
            ds,
            &mut report,
            observer,
        )
        .await?;
        if let Some(cleanup) = &ds.query_cleanup {
            cleanup_datasource(remote_silence, &mut remote_tx, cleanup, &mut report).await?;
        }
    }

    observer(Step::BeforeTakeSnapshot);
    let sp = repo_tx
        .savepoint("powa_take_snapshot")
        .await
        .map_err(repo("opening a savepoint"))?;
    match sp
        .query_one("SELECT public.powa_take_snapshot($1)", &[&srvid])
        .await
    {
        Ok(row) => {
            report.internal_errors = row.get(0);
            sp.commit().await.map_err(repo("releasing a savepoint"))?;
        }
        Err(e) if is_lost(&e) => return Err(repo("calling powa_take_snapshot")(e)),
        Err(e) => {
            sp.rollback()
                .await
                .map_err(repo("rolling back a savepoint"))?;
            // powa_take_snapshot clears the stored errors first; it did not
            // get that far, so do it here before appending ours.
            repository::clear_errors(&repo_tx, srvid)
                .await
                .map_err(repo("clearing errors"))?;
            // What was staged for it would otherwise be taken in by the next
            // snapshot, next to that snapshot's own copy.
            for ds in &datasources {
                repository::clear_staged(&repo_tx, srvid, &ds.query_source)
                    .await
                    .map_err(repo("clearing staged rows"))?;
            }
            let reason = format!("powa_take_snapshot({srvid}) failed: {}", pg_message(&e));
            report.errors.push(reason.clone());
            report.not_recorded = Some(reason);
        }
    }
    if !report.errors.is_empty() {
        repository::append_errors(&repo_tx, srvid, &report.errors)
            .await
            .map_err(repo("recording errors"))?;
    }
    repo_tx.commit().await.map_err(repo("committing"))?;
    // powa_take_snapshot renames the session; give the pooled session its
    // own name back (RESET restores the one set at connection).
    if let Err(e) = repo_client.batch_execute("RESET application_name").await {
        report
            .warnings
            .push(format!("resetting application_name: {}", pg_message(&e)));
    }
    // The repository side is done; a remote that vanishes now only loses
    // the cleanup's effect, which the next snapshot copes with.
    match on_remote(remote_silence, "committing", remote_tx.commit()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report
            .warnings
            .push(format!("ending the remote transaction: {}", pg_message(&e))),
        Err(e) => report.warnings.push(e.to_string()),
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn copy_datasource(
    remote_silence: Duration,
    remote_tx: &mut Transaction<'_>,
    repo_tx: &mut Transaction<'_>,
    srvid: SrvId,
    ds: &Datasource,
    report: &mut SnapshotReport,
    observer: &mut dyn FnMut(Step),
) -> Result<(), SnapshotError> {
    let (source_sql, sink_table, sink_sql) = copy_statements(srvid, ds);
    let what = "opening a savepoint";
    let remote_sp = on_remote(remote_silence, what, remote_tx.savepoint("powa_fleet_src"))
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
        &source_sql,
        &sink_table,
        &sink_sql,
    )
    .await;
    match piped {
        Ok(copied) => {
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
                module: ds.module.clone(),
                rows: copied.rows,
            });
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
                    "{}: error while calling {POWA_SCHEMA}.{}(0) on the remote server: {}",
                    ds.module,
                    ds.query_source,
                    pg_message(&e)
                ),
                PipeError::Sink(e) => format!(
                    "{}: error while inserting into {POWA_SCHEMA}.{}_tmp: {}",
                    ds.module,
                    ds.query_source,
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
                module: ds.module.clone(),
                error: error.clone(),
            });
            report.errors.push(error);
        }
    }
    Ok(())
}

async fn cleanup_datasource(
    remote_silence: Duration,
    remote_tx: &mut Transaction<'_>,
    cleanup: &str,
    report: &mut SnapshotReport,
) -> Result<(), SnapshotError> {
    let what = "opening a savepoint";
    let sp = on_remote(
        remote_silence,
        what,
        remote_tx.savepoint("powa_fleet_cleanup"),
    )
    .await?
    .map_err(remote(what))?;
    // query_cleanup is SQL written by PoWA in powa_functions, run as is.
    let what = "running a cleanup query";
    match on_remote(remote_silence, what, sp.batch_execute(cleanup)).await? {
        Ok(()) => {
            let what = "releasing a savepoint";
            on_remote(remote_silence, what, sp.commit())
                .await?
                .map_err(remote(what))?
        }
        Err(e) if is_lost(&e) => return Err(remote(what)(e)),
        Err(e) => {
            let what = "rolling back a savepoint";
            on_remote(remote_silence, what, sp.rollback())
                .await?
                .map_err(remote(what))?;
            report.errors.push(format!(
                "error while running \"{cleanup}\" on the remote server: {}",
                pg_message(&e)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_statements_quote_the_source() {
        let ds = Datasource {
            module: "pg_stat_statements".into(),
            query_source: "powa_statements_src".into(),
            query_cleanup: None,
            function_name: "powa_statements_snapshot".into(),
        };
        let (source, table, sink) = copy_statements(7, &ds);
        assert_eq!(
            source,
            "COPY (SELECT 7, * FROM public.\"powa_statements_src\"(0)) TO STDOUT"
        );
        assert_eq!(table, "public.\"powa_statements_src_tmp\"");
        assert_eq!(sink, "COPY public.\"powa_statements_src_tmp\" FROM STDIN");
    }
}
