//! The per-database part of a PoWA 5 snapshot.
//!
//! Some statistics (tables, indexes, functions) and the catalogs powa-web
//! shows next to them exist per database, so they are read over one
//! session per remote database that allows connections, one database at a
//! time, into the snapshot's repository transaction. Per-database
//! datasources run at every snapshot in the databases they are enabled
//! for; a catalog is copied again only when the repository's copy for
//! that database is a year old, or when REFRESH_DB_CAT asked for it.
//!
//! A database that cannot be reached, or whose session is lost, costs its
//! own rows only (an error for the server); a remote that stops answering
//! costs the snapshot, as elsewhere.

use futures_util::future::{join, try_join};
use tokio_postgres::Transaction;

use crate::copy::{Prepared, Staging};
use crate::error::pg_message;
use crate::job::{
    copy_one, is_lost, on_remote, remote, repo, settle, CatalogRefresh, CopyPlan, Job,
    SnapshotError, SnapshotReport, Step,
};
use crate::repository::{self, quote_literal, Catalog, DbDatasource};
use crate::server::SrvId;

/// The subquery giving the oid of the session's database.
const DBID: &str = "(SELECT oid AS dbid FROM pg_catalog.pg_database \
                    WHERE datname = pg_catalog.current_database()) AS d";

/// What to copy from database `dbname`: its enabled datasources, with the
/// snapshot's timestamp (`ts`, an SQL literal), then its stale or forced
/// catalogs. Rows are prefixed with the server id and the database oid.
pub fn plan_database(
    srvid: SrvId,
    ts: &str,
    dbname: &str,
    datasources: &[DbDatasource],
    catalogs: &[Catalog],
    refresh: &CatalogRefresh,
) -> Vec<CopyPlan> {
    let modules = datasources.iter().filter(|m| m.wants(dbname)).map(|m| {
        // The query comes from the repository's own PoWA tables, as is.
        CopyPlan {
            name: format!("{} in database {dbname}", m.name),
            source_label: format!("the {} query", m.name),
            source: format!(
                "COPY (SELECT {srvid} AS srvid, {ts}::timestamptz AS ts, d.dbid, src.* \
                 FROM ({}) AS src CROSS JOIN {DBID}) TO STDOUT",
                m.query_source
            ),
            table: m.tmp_table.clone(),
            skips_hidden_statements: false,
        }
    });
    let catalogs = catalogs
        .iter()
        .filter(|c| refresh.forces(dbname) || !c.fresh.iter().any(|d| d == dbname))
        .map(|c| CopyPlan {
            name: format!("catalog {} in database {dbname}", c.name),
            source_label: format!("the {} catalog query", c.name),
            source: format!(
                "COPY (SELECT {srvid} AS srvid, d.dbid, src.* \
                 FROM ({}) AS src CROSS JOIN {DBID}) TO STDOUT",
                c.query_source
            ),
            table: c.tmp_table.clone(),
            skips_hidden_statements: false,
        });
    modules.chain(catalogs).collect()
}

/// Copy the per-database datasources and catalogs of every remote
/// database (the staging tables written to are in `staging`).
pub(crate) async fn copy_all(
    job: &Job<'_>,
    remote_tx: &Transaction<'_>,
    repo_tx: &Transaction<'_>,
    staging: &mut Staging<'_>,
    report: &mut SnapshotReport,
    observer: &mut dyn FnMut(Step),
) -> Result<(), SnapshotError> {
    let silence = job.remote_silence;
    let what = "reading the remote databases";
    let row = on_remote(
        silence,
        what,
        remote_tx.query_one(
            "SELECT pg_catalog.to_json(pg_catalog.now()) #>> '{}', \
             pg_catalog.current_setting('server_version_num')::int",
            &[],
        ),
    )
    .await?
    .map_err(remote(what))?;
    // Every database's rows carry the remote's snapshot time.
    let ts = quote_literal(row.get(0));
    let server_version_num: i32 = row.get(1);
    let databases: Vec<String> = on_remote(
        silence,
        what,
        remote_tx.query(
            "SELECT datname::text FROM pg_catalog.pg_database WHERE datallowconn \
             ORDER BY datname",
            &[],
        ),
    )
    .await?
    .map_err(remote(what))?
    .iter()
    .map(|r| r.get(0))
    .collect();

    settle(staging, report, observer).await?;
    let Some((datasources, catalogs)) =
        read_plans(job, repo_tx, staging, server_version_num, report).await?
    else {
        return Ok(());
    };
    for dbname in &databases {
        let plans = plan_database(
            job.srvid,
            &ts,
            dbname,
            &datasources,
            &catalogs,
            job.catalogs,
        );
        if plans.is_empty() {
            continue;
        }
        let opened = tokio::time::timeout(silence, (job.open_database)(dbname.clone())).await;
        let mut client = match opened {
            Ok(Ok(client)) => client,
            Ok(Err(reason)) => {
                report.errors.push(format!("database {dbname}: {reason}"));
                continue;
            }
            Err(_) => {
                return Err(SnapshotError::RemoteSilent {
                    what: "connecting to a database",
                    secs: silence.as_secs(),
                })
            }
        };
        let what = "opening a transaction";
        // This session lives for this snapshot only.
        let mut db_prepared = Prepared::default();
        let db_tx = match on_remote(silence, what, client.transaction()).await? {
            Ok(tx) => tx,
            Err(e) => {
                report
                    .errors
                    .push(format!("database {dbname}: {}", pg_message(&e)));
                continue;
            }
        };
        for plan in &plans {
            let copied = copy_one(
                silence,
                &db_tx,
                &mut db_prepared,
                repo_tx,
                staging,
                plan,
                report,
                observer,
            );
            match copied.await {
                Ok(()) => {}
                // This database's session only: the others go on.
                Err(e @ SnapshotError::Remote { .. }) => {
                    report.errors.push(format!("database {dbname}: {e}"));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // Read-only: how it ends changes nothing.
        let _ = on_remote(silence, "ending a transaction", db_tx.commit()).await;
    }
    Ok(())
}

/// The per-database datasources and the catalogs of the server, read under
/// a savepoint: when the repository cannot list them, the error is the
/// server's and the snapshot goes on without them (`None`).
async fn read_plans(
    job: &Job<'_>,
    repo_tx: &Transaction<'_>,
    staging: &mut Staging<'_>,
    server_version_num: i32,
    report: &mut SnapshotReport,
) -> Result<Option<(Vec<DbDatasource>, Vec<Catalog>)>, SnapshotError> {
    let opening = format!("{}SAVEPOINT powa_fleet_db_functions", staging.take_ending());
    // Sent at once, answered in order.
    let (opened, read) = join(repo_tx.batch_execute(&opening), async {
        try_join(
            repository::db_datasources(repo_tx, job.repository, job.srvid, server_version_num),
            repository::catalogs(repo_tx, job.repository, job.srvid, server_version_num),
        )
        .await
    })
    .await;
    opened.map_err(repo("opening a savepoint"))?;
    match read {
        Ok(plans) => {
            repo_tx
                .batch_execute("RELEASE SAVEPOINT powa_fleet_db_functions")
                .await
                .map_err(repo("releasing a savepoint"))?;
            Ok(Some(plans))
        }
        Err(repository::RepositoryError::Sql { source, .. }) if is_lost(&source) => {
            Err(repo("reading the per-database datasources")(source))
        }
        Err(e) => {
            repo_tx
                .batch_execute(
                    "ROLLBACK TO SAVEPOINT powa_fleet_db_functions; \
                     RELEASE SAVEPOINT powa_fleet_db_functions",
                )
                .await
                .map_err(repo("rolling back a savepoint"))?;
            report.errors.push(format!(
                "per-database datasources and catalogs skipped: {e}"
            ));
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, dbnames: Option<&[&str]>) -> DbDatasource {
        DbDatasource {
            name: name.into(),
            query_source: format!("SELECT * FROM {name}"),
            tmp_table: format!("public.{name}_tmp"),
            dbnames: dbnames.map(|d| d.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn catalog(name: &str, fresh: &[&str]) -> Catalog {
        Catalog {
            name: name.into(),
            query_source: format!("SELECT oid FROM {name}"),
            tmp_table: format!("public.{name}_tmp"),
            fresh: fresh.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(plans: &[CopyPlan]) -> Vec<&str> {
        plans.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn modules_follow_their_database_list_and_catalogs_their_age() {
        let modules = [
            module("pg_stat_all_tables", None),
            module("pg_stat_user_functions", Some(&["app"])),
        ];
        let catalogs = [catalog("pg_class", &["app"]), catalog("pg_proc", &[])];
        let app = plan_database(
            1,
            "'t'",
            "app",
            &modules,
            &catalogs,
            &CatalogRefresh::Nothing,
        );
        assert_eq!(
            names(&app),
            [
                "pg_stat_all_tables in database app",
                "pg_stat_user_functions in database app",
                "catalog pg_proc in database app"
            ]
        );
        let other = plan_database(
            1,
            "'t'",
            "other",
            &modules,
            &catalogs,
            &CatalogRefresh::Nothing,
        );
        assert_eq!(
            names(&other),
            [
                "pg_stat_all_tables in database other",
                "catalog pg_class in database other",
                "catalog pg_proc in database other"
            ]
        );
        let forced = CatalogRefresh::request(&["app".to_string()]);
        let app = plan_database(1, "'t'", "app", &[], &catalogs, &forced);
        assert_eq!(
            names(&app),
            [
                "catalog pg_class in database app",
                "catalog pg_proc in database app"
            ]
        );
    }

    #[test]
    fn rows_carry_server_timestamp_and_database() {
        let plans = plan_database(
            4,
            "'2026-11-27T05:00:00+00:00'",
            "app",
            &[module("pg_stat_all_tables", None)],
            &[catalog("pg_class", &[])],
            &CatalogRefresh::Nothing,
        );
        assert_eq!(
            plans[0].source,
            "COPY (SELECT 4 AS srvid, '2026-11-27T05:00:00+00:00'::timestamptz AS ts, d.dbid, \
             src.* FROM (SELECT * FROM pg_stat_all_tables) AS src CROSS JOIN (SELECT oid AS dbid \
             FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) AS d) \
             TO STDOUT"
        );
        assert_eq!(plans[0].table, "public.pg_stat_all_tables_tmp");
        assert!(plans[1]
            .source
            .starts_with("COPY (SELECT 4 AS srvid, d.dbid, src.* FROM (SELECT oid FROM pg_class)"));
    }

    #[test]
    fn refresh_requests_add_up() {
        let mut r = CatalogRefresh::Nothing;
        r.merge(CatalogRefresh::request(&["a".into()]));
        r.merge(CatalogRefresh::request(&["b".into()]));
        assert!(r.forces("a") && r.forces("b") && !r.forces("c"));
        r.merge(CatalogRefresh::request(&[]));
        assert_eq!(r, CatalogRefresh::All);
        r.merge(CatalogRefresh::request(&["a".into()]));
        assert_eq!(r, CatalogRefresh::All);
    }
}
