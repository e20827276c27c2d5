//! Equivalence with the reference collector (Debian's powa-collector):
//! the same quiescent remote server, collected into two repositories, one
//! by each collector, must give the same history. Also reports, per
//! collector, the wall time and CPU time of one snapshot of about 2000
//! statements.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use powa_fleet_harness::daemon::{eventually, Daemon};
use powa_fleet_harness::fleet::{
    coalesce_seq, register_server, remote_options, repository_options, setup_remote,
    setup_repository, stored_errors,
};
use powa_fleet_harness::reference::{cpu_seconds, Reference};
use powa_fleet_harness::workload::workload_sql;
use powa_fleet_harness::{require_binaries, Cluster, ClusterOptions};
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");

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
async fn after_snapshot(repo: &Client, srvid: i32, n: i64, pid: u32) -> f64 {
    let done = eventually(Duration::from_secs(60), || async {
        coalesce_seq(repo, srvid).await > n
    })
    .await;
    assert!(done, "snapshot {n} never came");
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

async fn rows(repo: &Client, sql: &str, srvid: i32) -> Vec<String> {
    repo.query(sql, &[&srvid])
        .await
        .unwrap()
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
        out.push((name, rows(repo, &sql, srvid).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn same_history_as_the_reference_collector() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    assert!(
        Reference::available(),
        "the reference collector is needed: apt-get install powa-collector python3-psycopg2"
    );
    let remote = Cluster::start(remote_options()).unwrap();
    setup_remote(&remote).unwrap();
    remote.psql("powa", &workload_sql(2000, 0)).unwrap();
    let ours = repository();
    let theirs = repository();
    let mut srvids = Vec::new();
    for repo in [&ours, &theirs] {
        let srvid = register_server(repo, &remote.host(), remote.port(), 5, None).unwrap();
        // Keep the remote quiescent: pg_qualstats is not reset between the
        // two collectors' snapshots.
        repo.psql(
            "powa",
            &format!("UPDATE powa_functions SET query_cleanup = NULL WHERE srvid = {srvid}"),
        )
        .unwrap();
        srvids.push(srvid);
    }
    let ours_client = ours.client("powa").await.unwrap();
    let theirs_client = theirs.client("powa").await.unwrap();

    // powa-fleet: CPU between its first and third snapshot.
    let mut daemon = Daemon::start(Path::new(BIN), &ours.dsn("powa"), "").unwrap();
    let pid = daemon.pid() as u32;
    let start = after_snapshot(&ours_client, srvids[0], 1, pid).await;
    let end = after_snapshot(&ours_client, srvids[0], 3, pid).await;
    let our_cpu = (end - start) / 2.0;
    let our_wall = last_snapshot_seconds(&ours_client, srvids[0]).await;
    daemon.signal(Signal::SIGTERM);
    assert!(daemon
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));

    // The reference, on the other repository.
    let reference = Reference::start(&theirs.dsn("powa")).unwrap();
    let start = after_snapshot(&theirs_client, srvids[1], 1, reference.pid()).await;
    let end = after_snapshot(&theirs_client, srvids[1], 3, reference.pid()).await;
    let their_cpu = (end - start) / 2.0;
    let their_wall = last_snapshot_seconds(&theirs_client, srvids[1]).await;
    drop(reference);

    eprintln!(
        "one snapshot of ~2000 statements: powa-fleet {our_wall:.3}s wall, {our_cpu:.3}s CPU; \
         reference {their_wall:.3}s wall, {their_cpu:.3}s CPU"
    );
    let ours_history = history(&ours_client, srvids[0]).await;
    let theirs_history = history(&theirs_client, srvids[1]).await;
    for ((name, mine), (_, reference)) in ours_history.iter().zip(&theirs_history) {
        assert!(!mine.is_empty(), "{name}: nothing collected");
        assert_eq!(mine, reference, "{name} differs from the reference");
    }
    let statements = &ours_history[0].1;
    assert!(statements.len() >= 2000, "{} statements", statements.len());
    for (client, srvid) in [(&ours_client, srvids[0]), (&theirs_client, srvids[1])] {
        assert_eq!(stored_errors(client, srvid).await, None);
    }
}
