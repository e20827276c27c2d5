//! What changes with the PostgreSQL release under PoWA, checked on every
//! stack: pg_stat_statements' own version (1.11 on PostgreSQL 17 renamed
//! and added columns), the checkpointer statistics PostgreSQL 17 moved out
//! of pg_stat_bgwriter (PoWA 5's `pg_stat_checkpointer` datasource), and
//! statements whose `queryid` the remote role may not see (NULL: the
//! reference's COPY fails on them, powa-team/powa#198).

use std::path::Path;
use std::time::Duration;

use powa_fleet_harness::daemon::{eventually, Daemon};
use powa_fleet_harness::fleet::{coalesce_seq, powa_major_version, stored_errors};
use powa_fleet_harness::{require_binaries, Cluster, Fleet};
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");

fn server_major(cluster: &Cluster) -> u32 {
    cluster
        .psql(
            "powa",
            "SELECT current_setting('server_version_num')::int / 10000",
        )
        .unwrap()
        .parse()
        .unwrap()
}

async fn snapshots(repo: &Client, srvid: i32, seq: i64, daemon: &Daemon) {
    let landed = eventually(Duration::from_secs(40), || async {
        coalesce_seq(repo, srvid).await >= seq
    })
    .await;
    assert!(landed, "no snapshot {seq}:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_are_copied_exactly_whatever_pg_stat_statements_version() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(1).unwrap();
    let remote = &fleet.remotes[0];
    let pgss = remote
        .psql(
            "powa",
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'",
        )
        .unwrap();
    // PostgreSQL 17 ships 1.11 (shared_blk_*_time, jit_deform_*,
    // stats_since); 15 ships 1.10.
    let expected = match server_major(remote) {
        17 => Some("1.11"),
        15 => Some("1.10"),
        _ => None,
    };
    if let Some(expected) = expected {
        assert_eq!(pgss, expected);
    }
    let srvid = fleet.register(0, 5, None).unwrap();
    // A statement of its own, run a known number of times.
    remote
        .psql(
            "powa",
            &"SELECT count(*) AS version_marker FROM pg_class WHERE relpages >= 0;\n".repeat(7),
        )
        .unwrap();
    let (calls, rows): (i64, i64) = {
        let out = remote
            .psql(
                "powa",
                "SELECT calls, rows FROM pg_stat_statements \
                 WHERE query LIKE '%version_marker%' AND query NOT LIKE '%pg_stat_statements%'",
            )
            .unwrap();
        let (c, r) = out.split_once('|').expect("the statement is tracked");
        (c.parse().unwrap(), r.parse().unwrap())
    };
    assert_eq!((calls, rows), (7, 7));

    let daemon = Daemon::start(Path::new(BIN), &fleet.repository_dsn(), "").unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    snapshots(&repo, srvid, 2, &daemon).await;
    assert_eq!(stored_errors(&repo, srvid).await, None, "{}", daemon.log());
    let row = repo
        .query_one(
            "SELECT max((h.record).calls), max((h.record).rows) \
               FROM powa_statements s \
               JOIN powa_statements_history_current h USING (srvid, queryid, dbid, userid) \
              WHERE s.srvid = $1 AND s.query LIKE '%version_marker%' \
                AND s.query NOT LIKE '%pg_stat_statements%'",
            &[&srvid],
        )
        .await
        .unwrap();
    let stored: (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    assert_eq!(stored, (Some(calls), Some(rows)), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpointer_statistics_land_on_powa_5() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(1).unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    let datasource: i64 = repo
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE proname = 'powa_stat_checkpointer_src'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if powa_major_version(&fleet.repository).unwrap() < 5 {
        // PoWA 4.1 has no bgwriter nor checkpointer datasource.
        assert_eq!(datasource, 0);
        return;
    }
    assert_eq!(datasource, 1);
    let remote = &fleet.remotes[0];
    remote.psql("powa", "CHECKPOINT; CHECKPOINT;").unwrap();
    // Where PostgreSQL 17 counts requested checkpoints now (before 17:
    // pg_stat_bgwriter.checkpoints_req, which PoWA reads there).
    let view = if server_major(remote) >= 17 {
        "SELECT num_requested FROM pg_stat_checkpointer"
    } else {
        "SELECT checkpoints_req FROM pg_stat_bgwriter"
    };
    let requested: i64 = remote.psql("powa", view).unwrap().parse().unwrap();
    assert!(requested >= 2, "{requested}");
    let srvid = fleet.register(0, 5, None).unwrap();
    let daemon = Daemon::start(Path::new(BIN), &fleet.repository_dsn(), "").unwrap();
    snapshots(&repo, srvid, 2, &daemon).await;
    assert_eq!(stored_errors(&repo, srvid).await, None, "{}", daemon.log());
    let stored: Option<i64> = repo
        .query_one(
            "SELECT max((record).num_requested) \
               FROM powa_stat_checkpointer_history_current WHERE srvid = $1",
            &[&srvid],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored.is_some_and(|n| n >= requested),
        "stored {stored:?}, remote {requested}:\n{}",
        daemon.log()
    );
}

/// The remote grants of the README's least-privilege section, without
/// `pg_read_all_stats`: other roles' statements then show a NULL queryid.
const NARROW_REMOTE_GRANTS: &str = "CREATE ROLE powa_remote LOGIN; \
     GRANT EXECUTE ON FUNCTION pg_qualstats_reset() TO powa_remote; \
     GRANT SELECT ON powa_statements, powa_databases TO powa_remote;";

#[tokio::test(flavor = "multi_thread")]
async fn statements_hidden_from_the_remote_role_cost_only_themselves() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(1).unwrap();
    let remote = &fleet.remotes[0];
    remote.psql("powa", NARROW_REMOTE_GRANTS).unwrap();
    let srvid = fleet.register(0, 5, None).unwrap();
    fleet
        .repository
        .psql(
            "powa",
            &format!("UPDATE powa_servers SET username = 'powa_remote' WHERE id = {srvid}"),
        )
        .unwrap();
    // Statements of postgres (hidden from powa_remote) and of powa_remote.
    fleet.workload(0, 20).unwrap();
    remote
        .psql(
            "powa",
            "SET ROLE powa_remote; SELECT count(*) AS visible_marker FROM pg_class;",
        )
        .unwrap();
    let hidden: i64 = remote
        .psql(
            "powa",
            "SET ROLE powa_remote; \
             SELECT count(*) FROM pg_stat_statements WHERE queryid IS NULL",
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(hidden > 0, "the remote role sees every statement");

    let daemon = Daemon::start(Path::new(BIN), &fleet.repository_dsn(), "").unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    snapshots(&repo, srvid, 2, &daemon).await;
    // What the role may see is collected.
    let visible: i64 = repo
        .query_one(
            "SELECT count(*) FROM powa_statements \
              WHERE srvid = $1 AND query LIKE '%visible_marker%'",
            &[&srvid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(visible, 1, "{}", daemon.log());
    // What it may not see is said, with the grant that shows it.
    let errors = stored_errors(&repo, srvid).await.unwrap_or_default();
    let statements_errors: Vec<&String> = errors
        .iter()
        .filter(|e| e.starts_with("pg_stat_statements"))
        .collect();
    assert_eq!(statements_errors.len(), 1, "{errors:?}");
    let error = statements_errors[0];
    assert!(
        error.contains("NULL queryid") && error.contains("pg_read_all_stats"),
        "{error}"
    );
    assert!(!error.contains("violates not-null constraint"), "{error}");
}
