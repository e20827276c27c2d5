//! Equivalence with the reference collector (Debian's powa-collector on
//! PoWA 4.1; on PoWA 5, which that release does not know, the PyPI release
//! that does): the same quiescent remote server, collected into two
//! repositories, one by each collector, must give the same history. Also
//! reports, per collector, the wall time and CPU time of one snapshot of
//! about 2000 statements.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use powa_fleet_harness::daemon::{eventually, Daemon};
use powa_fleet_harness::fleet::{
    coalesce_seq, powa_major_version, register_server, remote_options, repository_options,
    setup_remote, setup_repository, setup_second_database, stored_errors,
};
use powa_fleet_harness::reference::{cpu_seconds, Reference};
use powa_fleet_harness::workload::{workload_sql, SECOND_DATABASE};
use powa_fleet_harness::{require_binaries, Cluster, ClusterOptions};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");

/// Where releases from PyPI are installed, shared with the benchmarks.
fn release_cache() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reference-releases");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repository() -> Cluster {
    let mut opts: ClusterOptions = repository_options();
    // Commit timestamps give each snapshot's duration from the repository.
    opts.extra_conf
        .push("track_commit_timestamp = on".to_string());
    let cluster = Cluster::start(opts).unwrap();
    setup_repository(&cluster).unwrap();
    cluster
}

/// Wait for the collector's `n`-th snapshot; returns its CPU seconds then.
/// `log` gives the collector's log, shown if the snapshot never comes.
async fn after_snapshot(
    repo: &Client,
    srvid: i32,
    n: i64,
    pid: u32,
    log: &dyn Fn() -> String,
) -> f64 {
    let done = eventually(Duration::from_secs(60), || async {
        coalesce_seq(repo, srvid).await > n
    })
    .await;
    if !done {
        let log = log();
        let lines: Vec<&str> = log.lines().collect();
        panic!(
            "snapshot {n} never came; the collector's log ends with:\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    cpu_seconds(pid).expect("collector alive")
}

async fn last_snapshot_seconds(repo: &Client, srvid: i32) -> f64 {
    repo.query_one(
        "SELECT EXTRACT(EPOCH FROM pg_xact_commit_timestamp(xmin) - snapts)::float8 \
         FROM powa_snapshot_metas WHERE srvid = $1",
        &[&srvid],
    )
    .await
    .unwrap()
    .get(0)
}

async fn rows(repo: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    repo.query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{e:?}: {sql}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Keys and time-independent values of what the workload left in history.
async fn history(repo: &Client, srvid: i32) -> Vec<(&'static str, Vec<String>)> {
    let workload = "SELECT queryid FROM powa_statements WHERE srvid = $1 \
                    AND query LIKE '%powa_fleet_workload%'";
    let queries: [(&'static str, String); 5] = [
        (
            "statements",
            format!(
                "SELECT DISTINCT format('%s %s %s %s %s', queryid, dbid, userid, \
                 (record).calls, (record).rows) FROM powa_statements_history_current \
                 WHERE srvid = $1 AND queryid IN ({workload}) ORDER BY 1"
            ),
        ),
        (
            "kcache",
            format!(
                "SELECT DISTINCT format('%s %s %s', queryid, dbid, userid) \
                 FROM powa_kcache_metrics_current \
                 WHERE srvid = $1 AND queryid IN ({workload}) ORDER BY 1"
            ),
        ),
        (
            "qualstats",
            format!(
                "SELECT DISTINCT format('%s %s %s', qualid, queryid, occurences) \
                 FROM powa_qualstats_quals_history_current \
                 WHERE srvid = $1 AND queryid IN ({workload}) ORDER BY 1"
            ),
        ),
        (
            "databases",
            "SELECT datname::text FROM powa_databases WHERE srvid = $1 ORDER BY 1".to_string(),
        ),
        (
            "bgwriter",
            "SELECT (count(*) > 0)::text FROM powa_stat_bgwriter_history_current \
             WHERE srvid = $1"
                .to_string(),
        ),
    ];
    let mut out = Vec::new();
    for (name, sql) in queries {
        out.push((name, rows(repo, &sql, &[&srvid]).await));
    }
    out
}

/// The workload's tables, indexes and functions in both databases of the
/// remote server, read from the remote itself: database oids, object oids
/// and `database.object` names, to find their per-database statistics
/// without relying on the catalogs the collectors copied.
struct WorkloadObjects {
    dbids: Vec<u32>,
    oids: Vec<u32>,
    names: Vec<String>,
}

async fn workload_objects(remote: &Cluster) -> WorkloadObjects {
    let mut objects = WorkloadObjects {
        dbids: Vec::new(),
        oids: Vec::new(),
        names: Vec::new(),
    };
    for db in ["powa", SECOND_DATABASE] {
        let client = remote.client(db).await.unwrap();
        for row in client
            .query(
                "SELECT d.oid, o.oid, o.name FROM pg_database d, \
                 (SELECT oid, relname::text AS name FROM pg_class \
                  WHERE relname LIKE 'powa\\_fleet%' \
                  UNION ALL SELECT oid, proname::text FROM pg_proc \
                  WHERE proname LIKE 'powa\\_fleet%') o \
                 WHERE d.datname = current_database()",
                &[],
            )
            .await
            .unwrap()
        {
            objects.dbids.push(row.get(0));
            objects.oids.push(row.get(1));
            objects
                .names
                .push(format!("{db}.{}", row.get::<_, String>(2)));
        }
    }
    objects
}

/// PoWA 5's per-database history: the time-independent statistics of the
/// workload's tables, indexes and functions in both databases (identical
/// in every snapshot of a quiescent server), the databases the modules
/// visited, and one timestamp per snapshot across all databases.
async fn db_module_history(
    repo: &Client,
    srvid: i32,
    objects: &WorkloadObjects,
) -> Vec<(&'static str, Vec<String>)> {
    let objects_join = "JOIN unnest($2::oid[], $3::oid[], $4::text[]) AS o(dbid, oid, name) \
                        ON o.dbid = h.dbid";
    let of_objects: [(&'static str, String); 3] = [
        (
            "all_tables",
            format!(
                "SELECT DISTINCT format('%s size %s seq_scan %s seq_tup_read %s idx_scan %s \
                 inserted %s live %s analyzed %s', o.name, (h.record).tbl_size, \
                 (h.record).seq_scan, (h.record).seq_tup_read, (h.record).idx_scan, \
                 (h.record).n_tup_ins, (h.record).n_liv_tup, (h.record).analyze_count) \
                 FROM powa_all_tables_history_current h {objects_join} AND o.oid = h.relid \
                 WHERE h.srvid = $1 ORDER BY 1"
            ),
        ),
        (
            "all_indexes",
            format!(
                "SELECT DISTINCT format('%s size %s idx_scan %s idx_tup_read %s \
                 idx_tup_fetch %s', o.name, (h.record).idx_size, (h.record).idx_scan, \
                 (h.record).idx_tup_read, (h.record).idx_tup_fetch) \
                 FROM powa_all_indexes_history_current h {objects_join} \
                 AND o.oid = h.indexrelid WHERE h.srvid = $1 ORDER BY 1"
            ),
        ),
        (
            "user_functions",
            format!(
                "SELECT DISTINCT format('%s calls %s', o.name, (h.record).calls) \
                 FROM powa_user_functions_history_current h {objects_join} \
                 AND o.oid = h.funcid WHERE h.srvid = $1 ORDER BY 1"
            ),
        ),
    ];
    let of_server: [(&'static str, &str); 2] = [
        (
            "db module databases",
            "SELECT DISTINCT d.datname::text FROM powa_all_tables_history_current h \
             JOIN powa_databases d ON d.srvid = h.srvid AND d.oid = h.dbid \
             WHERE h.srvid = $1 ORDER BY 1",
        ),
        (
            "one db module timestamp per snapshot",
            "SELECT (count(DISTINCT ts) = (SELECT coalesce_seq - 1 \
             FROM powa_snapshot_metas WHERE srvid = $1))::text FROM ( \
             SELECT (record).ts FROM powa_all_tables_history_current WHERE srvid = $1 \
             UNION ALL SELECT (record).ts FROM powa_all_indexes_history_current \
             WHERE srvid = $1 \
             UNION ALL SELECT (record).ts FROM powa_user_functions_history_current \
             WHERE srvid = $1) t",
        ),
    ];
    let mut out = Vec::new();
    for (name, sql) in of_objects {
        let params: [&(dyn ToSql + Sync); 4] =
            [&srvid, &objects.dbids, &objects.oids, &objects.names];
        out.push((name, rows(repo, &sql, &params).await));
    }
    for (name, sql) in of_server {
        out.push((name, rows(repo, sql, &[&srvid]).await));
    }
    out
}

/// PoWA 5's copies of the remote's catalogs, keyed by names (database,
/// schema, relation, type, language) rather than oids.
async fn catalogs(repo: &Client, srvid: i32) -> Vec<(&'static str, Vec<String>)> {
    let database = "JOIN powa_catalog_databases d ON d.srvid = c.srvid AND d.oid = c.dbid";
    let sizes: Vec<String> = [
        "class",
        "attribute",
        "namespace",
        "type",
        "collation",
        "proc",
        "language",
    ]
    .iter()
    .map(|catalog| {
        format!(
            "SELECT 'pg_{catalog}' AS catalog, dbid, count(*) AS n \
             FROM powa_catalog_{catalog} WHERE srvid = $1 GROUP BY dbid"
        )
    })
    .collect();
    let queries: [(&'static str, String); 6] = [
        (
            "catalog databases",
            "SELECT format('%s %s', datname, \
             CASE WHEN last_refresh IS NULL THEN 'not imported' ELSE 'imported' END) \
             FROM powa_catalog_databases WHERE srvid = $1 ORDER BY 1"
                .to_string(),
        ),
        (
            "catalog roles",
            "SELECT rolname FROM powa_catalog_roles WHERE srvid = $1 ORDER BY 1".to_string(),
        ),
        (
            "catalog sizes",
            format!(
                "SELECT format('%s %s %s rows', c.catalog, d.datname, c.n) \
                 FROM ({}) c JOIN powa_catalog_databases d \
                 ON d.srvid = $1 AND d.oid = c.dbid ORDER BY 1",
                sizes.join(" UNION ALL ")
            ),
        ),
        (
            "catalog relations",
            format!(
                "SELECT format('%s %s.%s kind %s columns %s tuples %s', d.datname, \
                 n.nspname, c.relname, c.relkind, c.relnatts, c.reltuples) \
                 FROM powa_catalog_class c {database} \
                 JOIN powa_catalog_namespace n ON n.srvid = c.srvid AND n.dbid = c.dbid \
                 AND n.oid = c.relnamespace \
                 WHERE c.srvid = $1 AND c.relname LIKE 'powa\\_fleet%' ORDER BY 1"
            ),
        ),
        (
            "catalog columns",
            format!(
                "SELECT format('%s %s %s %s %s', d.datname, c.relname, a.attnum, \
                 a.attname, t.typname) \
                 FROM powa_catalog_attribute a \
                 JOIN powa_catalog_class c ON c.srvid = a.srvid AND c.dbid = a.dbid \
                 AND c.oid = a.attrelid {database} \
                 JOIN powa_catalog_type t ON t.srvid = a.srvid AND t.dbid = a.dbid \
                 AND t.oid = a.atttypid \
                 WHERE a.srvid = $1 AND a.attnum > 0 AND c.relname LIKE 'powa\\_fleet%' \
                 ORDER BY 1"
            ),
        ),
        (
            // regprocedure is the text the remote printed, which depends on
            // the search_path of the session that read pg_proc.
            "catalog functions",
            format!(
                "SELECT format('%s %s %s', d.datname, c.regprocedure, l.lanname) \
                 FROM powa_catalog_proc c {database} \
                 JOIN powa_catalog_language l ON l.srvid = c.srvid AND l.dbid = c.dbid \
                 AND l.oid = c.prolang \
                 WHERE c.srvid = $1 AND c.proname LIKE 'powa\\_fleet%' ORDER BY 1"
            ),
        ),
    ];
    let mut out = Vec::new();
    for (name, sql) in queries {
        out.push((name, rows(repo, &sql, &[&srvid]).await));
    }
    out
}

/// Everything compared on a PoWA `major` repository.
async fn everything(
    repo: &Client,
    srvid: i32,
    major: u32,
    objects: &WorkloadObjects,
) -> Vec<(&'static str, Vec<String>)> {
    let mut out = history(repo, srvid).await;
    if major >= 5 {
        out.extend(db_module_history(repo, srvid, objects).await);
        out.extend(catalogs(repo, srvid).await);
    }
    out
}

/// The same rows, or a panic naming the rows only one side has.
fn assert_same(name: &str, mine: &[String], reference: &[String]) {
    if mine == reference {
        return;
    }
    let ours: BTreeSet<&String> = mine.iter().collect();
    let theirs: BTreeSet<&String> = reference.iter().collect();
    let only_ours: Vec<_> = ours.difference(&theirs).take(20).collect();
    let only_theirs: Vec<_> = theirs.difference(&ours).take(20).collect();
    panic!(
        "{name} differs from the reference ({} rows against {}); \
         only powa-fleet has {only_ours:#?}; only the reference has {only_theirs:#?}",
        mine.len(),
        reference.len()
    );
}

/// Keep the remote quiescent: pg_qualstats is not reset between the two
/// collectors' snapshots. On PoWA 5, powa_functions is a view and the
/// cleanup belongs to the extension (powa_extension_functions), for every
/// server of the repository.
fn keep_qualstats(repo: &Cluster, srvid: i32, major: u32) {
    let sql = if major >= 5 {
        "UPDATE powa_extension_functions SET query_cleanup = NULL".to_string()
    } else {
        format!("UPDATE powa_functions SET query_cleanup = NULL WHERE srvid = {srvid}")
    };
    repo.psql("powa", &sql).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn same_history_as_the_reference_collector() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    assert!(
        Reference::available(),
        "the reference collector is needed: apt-get install powa-collector python3-psycopg2"
    );
    let mut options = remote_options();
    // No autovacuum: the per-database statistics and table sizes must not
    // move between the two collectors' runs.
    options.extra_conf.push("autovacuum = off".to_string());
    let remote = Cluster::start(options).unwrap();
    setup_remote(&remote).unwrap();
    remote.psql("powa", &workload_sql(2000, 0)).unwrap();
    setup_second_database(&remote).unwrap();
    let major = powa_major_version(&remote).unwrap();
    let objects = workload_objects(&remote).await;
    let ours = repository();
    let theirs = repository();
    let mut srvids = Vec::new();
    for repo in [&ours, &theirs] {
        let srvid = register_server(repo, &remote.host(), remote.port(), 5, None).unwrap();
        keep_qualstats(repo, srvid, major);
        srvids.push(srvid);
    }
    let ours_client = ours.client("powa").await.unwrap();
    let theirs_client = theirs.client("powa").await.unwrap();

    // powa-fleet: CPU between its first and third snapshot.
    let mut daemon = Daemon::start(Path::new(BIN), &ours.dsn("powa"), "").unwrap();
    let pid = daemon.pid() as u32;
    let log = || daemon.log();
    let start = after_snapshot(&ours_client, srvids[0], 1, pid, &log).await;
    let end = after_snapshot(&ours_client, srvids[0], 3, pid, &log).await;
    let our_cpu = (end - start) / 2.0;
    let our_wall = last_snapshot_seconds(&ours_client, srvids[0]).await;
    daemon.signal(Signal::SIGTERM);
    assert!(daemon
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));

    // The reference, on the other repository.
    let reference =
        Reference::start_for_powa(major, &theirs.dsn("powa"), &release_cache()).unwrap();
    let log = || reference.log();
    let start = after_snapshot(&theirs_client, srvids[1], 1, reference.pid(), &log).await;
    let end = after_snapshot(&theirs_client, srvids[1], 3, reference.pid(), &log).await;
    let their_cpu = (end - start) / 2.0;
    let their_wall = last_snapshot_seconds(&theirs_client, srvids[1]).await;
    drop(reference);

    eprintln!(
        "one snapshot of ~2000 statements: powa-fleet {our_wall:.3}s wall, {our_cpu:.3}s CPU; \
         reference {their_wall:.3}s wall, {their_cpu:.3}s CPU"
    );
    let ours_history = everything(&ours_client, srvids[0], major, &objects).await;
    let theirs_history = everything(&theirs_client, srvids[1], major, &objects).await;
    for ((name, mine), (_, reference)) in ours_history.iter().zip(&theirs_history) {
        assert!(!mine.is_empty(), "{name}: nothing collected");
        assert_same(name, mine, reference);
    }
    let statements = &ours_history[0].1;
    assert!(statements.len() >= 2000, "{} statements", statements.len());
    for (client, srvid) in [(&ours_client, srvids[0]), (&theirs_client, srvids[1])] {
        assert_eq!(stored_errors(client, srvid).await, None);
    }
}
