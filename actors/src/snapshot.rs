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
//!
//! On PoWA 5 the per-database datasources and catalogs
//! ([`crate::per_database`]) are copied into the same repository
//! transaction, before `powa_take_snapshot`.

use std::time::{Duration, Instant};

use futures_util::future::{join, join3, try_join, try_join3, try_join4};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::copy::{Prepared, Staging};
use crate::error::pg_message;
use crate::fencing::{self, Fenced};
use crate::job::{copy_one, is_lost, on_remote, remote, repo, settle};
pub use crate::job::{
    CatalogRefresh, CopyPlan, Job, OpenDatabase, SnapshotError, SnapshotReport, Step,
};
use crate::layout::{Generation, Layout};
use crate::per_database;
use crate::repository::{self, Datasource};
use crate::server::SrvId;

/// After [`SnapshotError::CommitUnknown`], on another session: whether
/// the snapshot that would have set `coalesce_seq` to `recorded_seq` is in
/// the repository.
pub async fn committed(
    repo: &Client,
    layout: &Layout,
    srvid: SrvId,
    recorded_seq: i64,
) -> Result<bool, tokio_postgres::Error> {
    Ok(coalesce_seq(repo, layout, srvid).await? >= recorded_seq)
}

/// The server's `coalesce_seq`, which each recorded snapshot bumps.
async fn coalesce_seq(
    repo: &impl GenericClient,
    layout: &Layout,
    srvid: SrvId,
) -> Result<i64, tokio_postgres::Error> {
    let sql = format!(
        "SELECT coalesce_seq FROM {} WHERE srvid = $1",
        layout.qualify("powa_snapshot_metas")
    );
    // Typed: no statement prepared (and closed) for one use.
    Ok(repo
        .query_typed_one(&sql, &[(&srvid, Type::INT4)])
        .await?
        .get(0))
}

/// A COMMIT error after which nobody can tell whether it committed: the
/// session is gone (no SQLSTATE, a connection exception, or the backend
/// terminated: class 57P, as when a commit waiting for a synchronous
/// standby is cancelled after committing locally).
fn commit_outcome_unknown(err: &tokio_postgres::Error, client: &Client) -> bool {
    match err.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            client.is_closed() || code.starts_with("08") || code.starts_with("57P")
        }
    }
}

/// The copy of one global datasource: its source function called with
/// `0` (the remote's own data) in the schema it lives in on the remote,
/// into `<query_source>_tmp` in the schema it lives in on the repository.
/// The error says which side lacks the datasource's extension.
pub fn global_plan(job: &Job<'_>, ds: &Datasource) -> Result<CopyPlan, String> {
    let missing = |side: &str| {
        format!(
            "{}: extension {} is not installed on the {side}",
            ds.module, ds.module
        )
    };
    let function = ds
        .source_function(job.remote)
        .ok_or_else(|| missing("remote server"))?;
    let table = ds
        .staging_table(job.repository)
        .ok_or_else(|| missing("repository"))?;
    // Rows the remote role may not see cannot be stored (see
    // `hidden_statements`): leave them out rather than fail the COPY.
    let statements = ds.query_source == STATEMENTS_SOURCE;
    let filter = if statements {
        " WHERE queryid IS NOT NULL"
    } else {
        ""
    };
    Ok(CopyPlan {
        name: ds.module.clone(),
        source: format!(
            "COPY (SELECT {}, * FROM {function}(0){filter}) TO STDOUT",
            job.srvid
        ),
        source_label: format!("{function}(0)"),
        table,
        skips_hidden_statements: statements,
    })
}

/// The source function of pg_stat_statements' rows. A remote role that is not a
/// member of `pg_read_all_stats` sees other roles' statements with a NULL
/// `queryid`; PoWA's staging table cannot hold such a row, and one of them
/// would fail the whole COPY (the reference loses every statement then:
/// powa-team/powa#198).
const STATEMENTS_SOURCE: &str = "powa_statements_src";

/// Take one snapshot of `job.srvid` (SPEC steps 1–7, and on PoWA 5 the
/// per-database datasources and catalogs before step 5).
///
/// `repo_prepared` and `remote_prepared` are the COPY statements each
/// session has prepared so far; they must belong to those sessions.
pub async fn take_snapshot(
    repo_client: &mut Client,
    repo_prepared: &mut Prepared,
    remote_client: &mut Client,
    remote_prepared: &mut Prepared,
    job: &Job<'_>,
    observer: &mut dyn FnMut(Step),
) -> Result<SnapshotReport, SnapshotError> {
    let started = Instant::now();
    let srvid = job.srvid;
    let remote_silence = job.remote_silence;
    let layout = job.repository;
    let mut report = SnapshotReport::default();
    // The fleet-wide slot is taken before the transaction starts, so the
    // snapshot's time (its transaction's start) is inside its slot.
    let slot = match &job.fence {
        Some(fence) => Some(
            fencing::wait_for_slot(repo_client, fence, job.slot_freed.clone())
                .await
                .map_err(repo("waiting for a fleet-wide slot"))?,
        ),
        None => None,
    };
    let repo_tx = repo_client
        .transaction()
        .await
        .map_err(repo("opening the transaction"))?;
    // The slot's move, the fence's check and the list of datasources are
    // sent at once (pipelined on the session, run in this order): one
    // round trip instead of one each. A failure of the first aborts the
    // transaction, and its error is the one reported (answers come back
    // in order).
    let slot_moved = async {
        match slot {
            Some(slot) => fencing::hand_slot_to(&repo_tx, slot)
                .await
                .map_err(repo("taking a fleet-wide slot")),
            None => Ok(()),
        }
    };
    let fenced = async {
        match &job.fence {
            Some(fence) => fencing::enter(&repo_tx, layout, srvid, fence)
                .await
                .map_err(repo("checking the fence")),
            None => Ok(None),
        }
    };
    let listed = async {
        repository::datasources(&repo_tx, layout, srvid)
            .await
            .map_err(|e| match e {
                repository::RepositoryError::Sql { source, .. } => {
                    repo("reading powa_functions")(source)
                }
                other => unreachable!("datasources only fails on SQL: {other}"),
            })
    };
    let ((), refusal, (datasources, warnings)) = try_join3(slot_moved, fenced, listed).await?;
    if let Some(refusal) = refusal {
        return Err(SnapshotError::Fenced(refusal));
    }
    report.warnings = warnings;
    if datasources.is_empty() {
        report
            .warnings
            .push("no enabled snapshot datasource: nothing to do".to_string());
        commit_fenced(repo_tx, job).await?;
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    let what = "opening the transaction";
    let remote_tx = on_remote(remote_silence, what, remote_client.transaction())
        .await?
        .map_err(remote(what))?;

    let mut staging = Staging::new(repo_prepared);
    for ds in &datasources {
        match global_plan(job, ds) {
            Ok(plan) => {
                let copied = copy_one(
                    remote_silence,
                    &remote_tx,
                    remote_prepared,
                    &repo_tx,
                    &mut staging,
                    &plan,
                    &mut report,
                    observer,
                );
                copied.await?;
            }
            Err(error) => {
                observer(Step::DatasourceFailed {
                    module: ds.module.clone(),
                    error: error.clone(),
                });
                report.errors.push(error);
            }
        }
        if let Some(cleanup) = &ds.query_cleanup {
            match job.remote.expand(cleanup) {
                Ok(cleanup) => {
                    cleanup_datasource(remote_silence, &remote_tx, &cleanup, &mut report).await?
                }
                Err(extension) => report.errors.push(format!(
                    "{}: cleanup not run, extension {extension} is not installed on the remote server",
                    ds.module
                )),
            }
        }
    }
    if layout.generation() == Generation::Five {
        per_database::copy_all(
            job,
            &remote_tx,
            &repo_tx,
            &mut staging,
            &mut report,
            observer,
        )
        .await?;
    }

    settle(&mut staging, &mut report, observer).await?;
    // Staging tables written to, emptied again if the snapshot is refused.
    let staged = std::mem::take(&mut staging.staged);
    observer(Step::BeforeTakeSnapshot);
    // The last copy's ending, the savepoint and the call go out at once.
    let opening = format!("{}SAVEPOINT powa_take_snapshot", staging.take_ending());
    let call = format!("SELECT {}($1)", layout.qualify("powa_take_snapshot"));
    let (opened, called) = join(
        repo_tx.batch_execute(&opening),
        repo_tx.query_typed_one(&call, &[(&srvid, Type::INT4)]),
    )
    .await;
    opened.map_err(repo("opening a savepoint"))?;
    let took = match called {
        Ok(row) => {
            report.internal_errors = row.get(0);
            true
        }
        Err(e) if is_lost(&e) => return Err(repo("calling powa_take_snapshot")(e)),
        Err(e) => {
            repo_tx
                .batch_execute(
                    "ROLLBACK TO SAVEPOINT powa_take_snapshot; \
                     RELEASE SAVEPOINT powa_take_snapshot",
                )
                .await
                .map_err(repo("rolling back a savepoint"))?;
            // powa_take_snapshot clears the stored errors first; it did not
            // get that far, so do it here before appending ours.
            repository::clear_errors(&repo_tx, layout, srvid)
                .await
                .map_err(repo("clearing errors"))?;
            // What was staged for it would otherwise be taken in by the next
            // snapshot, next to that snapshot's own copy.
            for table in &staged {
                repository::clear_staged(&repo_tx, srvid, table)
                    .await
                    .map_err(repo("clearing staged rows"))?;
            }
            let reason = format!("powa_take_snapshot({srvid}) failed: {}", pg_message(&e));
            report.errors.push(reason.clone());
            report.not_recorded = Some(reason);
            false
        }
    };
    // The rest goes out at once and runs in this order: the savepoint's
    // release, the errors, the fence's last check with what this
    // transaction leaves in coalesce_seq (how to tell, should the session
    // be lost during COMMIT, whether the snapshot is there), and the
    // session's own name back (powa_take_snapshot renames it; RESET
    // restores the one set at connection, and a session that waited for
    // a slot stops listening for their release: both take effect at
    // commit).
    let released = async {
        if took {
            repo_tx
                .batch_execute("RELEASE SAVEPOINT powa_take_snapshot")
                .await
                .map_err(repo("releasing a savepoint"))?;
        }
        Ok(())
    };
    let recorded = async {
        if !report.errors.is_empty() {
            repository::append_errors(&repo_tx, layout, srvid, &report.errors)
                .await
                .map_err(repo("recording errors"))?;
        }
        Ok(())
    };
    let sequence = async {
        match &report.not_recorded {
            Some(_) => Ok(None),
            None => coalesce_seq(&repo_tx, layout, srvid)
                .await
                .map(Some)
                .map_err(repo("reading the snapshot's sequence")),
        }
    };
    let reset = format!("RESET application_name; {}", fencing::UNLISTEN);
    let renamed = async {
        repo_tx
            .batch_execute(&reset)
            .await
            .map_err(repo("resetting application_name"))
    };
    let ((), (), (holds, recorded_seq), ()) = try_join4(
        released,
        recorded,
        try_join(fence_holds(&repo_tx, job), sequence),
        renamed,
    )
    .await?;
    if !holds {
        repo_tx
            .rollback()
            .await
            .map_err(repo("rolling back a fenced snapshot"))?;
        reset_session(repo_client, &reset, &mut report).await;
        return Err(SnapshotError::Fenced(Fenced::NotOwner));
    }
    if let Err(e) = repo_tx.commit().await {
        if commit_outcome_unknown(&e, repo_client) {
            report.elapsed = started.elapsed();
            return Err(SnapshotError::CommitUnknown {
                recorded_seq,
                report: Box::new(report),
                source: e,
            });
        }
        return Err(repo("committing")(e));
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
    report.staged = staged;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The session's own name back, and no more listening for slots, after
/// a rollback undid what the transaction had set.
async fn reset_session(repo_client: &Client, reset: &str, report: &mut SnapshotReport) {
    if let Err(e) = repo_client.batch_execute(reset).await {
        report
            .warnings
            .push(format!("resetting application_name: {}", pg_message(&e)));
    }
}

/// Just before the commit: does the member still hold the server (always
/// true without a fence)?
async fn fence_holds(repo_tx: &Transaction<'_>, job: &Job<'_>) -> Result<bool, SnapshotError> {
    match &job.fence {
        None => Ok(true),
        Some(fence) => fencing::still_holds(repo_tx, job.srvid, fence)
            .await
            .map_err(repo("checking the fence")),
    }
}

/// Commit, once the fence (if any) proved the member still holds the
/// server; otherwise roll back.
async fn commit_fenced(repo_tx: Transaction<'_>, job: &Job<'_>) -> Result<(), SnapshotError> {
    if !fence_holds(&repo_tx, job).await? {
        repo_tx
            .rollback()
            .await
            .map_err(repo("rolling back a fenced snapshot"))?;
        return Err(SnapshotError::Fenced(Fenced::NotOwner));
    }
    repo_tx.commit().await.map_err(repo("committing"))
}

async fn cleanup_datasource(
    remote_silence: Duration,
    remote_tx: &Transaction<'_>,
    cleanup: &str,
    report: &mut SnapshotReport,
) -> Result<(), SnapshotError> {
    // Sent at once, answered in order: the release fails, harmlessly,
    // when the cleanup did. query_cleanup is SQL written by PoWA in
    // powa_functions, run as is.
    let what = "running a cleanup query";
    let (opened, cleaned, released) = on_remote(remote_silence, what, async {
        Ok(join3(
            remote_tx.batch_execute("SAVEPOINT powa_fleet_cleanup"),
            remote_tx.batch_execute(cleanup),
            remote_tx.batch_execute("RELEASE SAVEPOINT powa_fleet_cleanup"),
        )
        .await)
    })
    .await?
    .map_err(remote(what))?;
    opened.map_err(remote("opening a savepoint"))?;
    match cleaned {
        Ok(()) => released.map_err(remote("releasing a savepoint"))?,
        Err(e) if is_lost(&e) => return Err(remote(what)(e)),
        Err(e) => {
            let what = "rolling back a savepoint";
            on_remote(
                remote_silence,
                what,
                remote_tx.batch_execute(
                    "ROLLBACK TO SAVEPOINT powa_fleet_cleanup; \
                     RELEASE SAVEPOINT powa_fleet_cleanup",
                ),
            )
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
    use futures_util::future::BoxFuture;

    use super::*;
    use crate::layout::Layout;

    fn no_database(_: String) -> BoxFuture<'static, Result<Client, String>> {
        Box::pin(async { Err("no database".to_string()) })
    }

    fn datasource(module: &str, external: bool, source: &str) -> Datasource {
        Datasource {
            module: module.into(),
            external,
            query_source: source.into(),
            query_cleanup: None,
            function_name: format!("{source}_snapshot"),
        }
    }

    fn layout(rows: &[(&str, &str)], powa: &str) -> Layout {
        Layout::from_rows(
            rows.iter()
                .map(|(n, s)| (n.to_string(), s.to_string(), powa.to_string())),
        )
    }

    #[test]
    fn powa_4_copies_from_and_into_powa_schema() {
        let l = layout(&[("powa", "public")], "4.1.4");
        let refresh = CatalogRefresh::default();
        let job = Job {
            srvid: 7,
            remote_silence: Duration::from_secs(1),
            repository: &l,
            remote: &l,
            catalogs: &refresh,
            open_database: &no_database,
            fence: None,
            slot_freed: None,
        };
        let plan = global_plan(
            &job,
            &datasource("pg_stat_statements", false, "powa_statements_src"),
        )
        .unwrap();
        assert_eq!(
            plan.source,
            "COPY (SELECT 7, * FROM public.\"powa_statements_src\"(0) WHERE queryid IS NOT NULL) TO STDOUT"
        );
        assert_eq!(plan.table, "public.\"powa_statements_src_tmp\"");
        assert_eq!(
            plan.sink(),
            "COPY public.\"powa_statements_src_tmp\" FROM STDIN"
        );
    }

    #[test]
    fn powa_5_external_datasources_live_in_their_extension_schema() {
        let remote = layout(&[("powa", "p"), ("pg_track_settings", "ts")], "5.1.2");
        let repo = layout(
            &[("powa", "\"P R\""), ("pg_track_settings", "rts")],
            "5.1.2",
        );
        let refresh = CatalogRefresh::default();
        let job = Job {
            srvid: 3,
            remote_silence: Duration::from_secs(1),
            repository: &repo,
            remote: &remote,
            catalogs: &refresh,
            open_database: &no_database,
            fence: None,
            slot_freed: None,
        };
        let external = global_plan(
            &job,
            &datasource("pg_track_settings", true, "pg_track_settings_rds_src"),
        )
        .unwrap();
        assert_eq!(
            external.source,
            "COPY (SELECT 3, * FROM ts.\"pg_track_settings_rds_src\"(0)) TO STDOUT"
        );
        assert_eq!(external.table, "rts.\"pg_track_settings_rds_src_tmp\"");
        let internal = global_plan(
            &job,
            &datasource("pg_qualstats", false, "powa_qualstats_src"),
        )
        .unwrap();
        assert_eq!(internal.source_label, "p.\"powa_qualstats_src\"(0)");
        assert_eq!(internal.table, "\"P R\".\"powa_qualstats_src_tmp\"");
        let missing = global_plan(
            &job,
            &datasource("pg_wait_sampling", true, "powa_wait_sampling_src"),
        )
        .unwrap_err();
        assert_eq!(
            missing,
            "pg_wait_sampling: extension pg_wait_sampling is not installed on the remote server"
        );
    }
}
