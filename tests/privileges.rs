//! Least privilege: the collector runs with the grants the README lists,
//! and nothing more — a non-superuser on the repository with DML on PoWA's
//! tables, and on the remote server a non-superuser member of
//! `pg_read_all_stats` allowed to run `pg_qualstats_reset()`. Snapshots
//! land without any datasource error, WORKERS_STATUS answers, and
//! `powa-fleet check` agrees (and names what a weaker role lacks).

use std::path::Path;
use std::time::Duration;

use powa_fleet_harness::daemon::{eventually, run_command, CommandOutput, Daemon, Requester};
use powa_fleet_harness::fleet::{coalesce_seq, powa_major_version, stored_errors};
use powa_fleet_harness::{require_binaries, Fleet};

mod common;
use common::{BIN, FAST};

/// The repository grants of the README's "Least privilege" section.
const REPOSITORY_GRANTS: &str = "CREATE ROLE powa_collector LOGIN; \
     GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO powa_collector;";

/// The remote grants of the README's "Least privilege" section.
const REMOTE_GRANTS: &str = "CREATE ROLE powa_remote LOGIN; \
     GRANT pg_read_all_stats TO powa_remote; \
     GRANT EXECUTE ON FUNCTION pg_qualstats_reset() TO powa_remote; \
     GRANT SELECT ON powa_statements, powa_databases TO powa_remote;";

fn check(dsn: &str) -> CommandOutput {
    let out = run_command(Path::new(BIN), dsn, "", &["check"], &[]).expect("check runs");
    eprintln!(
        "powa-fleet check (exit {:?}):\n{}{}",
        out.code, out.stdout, out.stderr
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn non_superuser_roles_collect_and_answer() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(1).expect("fleet starts");
    fleet.repository.psql("powa", REPOSITORY_GRANTS).unwrap();
    fleet.remotes[0].psql("powa", REMOTE_GRANTS).unwrap();
    let srvid = fleet.register(0, 5, None).unwrap();
    fleet
        .repository
        .psql(
            "powa",
            &format!("UPDATE powa_servers SET username = 'powa_remote' WHERE id = {srvid}"),
        )
        .unwrap();
    fleet.workload(0, 50).unwrap();
    let dsn = format!(
        "host={} port={} user=powa_collector dbname=powa",
        fleet.repository.host(),
        fleet.repository.port()
    );
    let repo = fleet.repository.client("powa").await.unwrap();
    let roles: i64 = repo
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('powa_collector') \
             AND NOT rolsuper",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 1);

    let out = check(&dsn);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("privileges OK"), "{out:?}");

    let daemon = Daemon::start(Path::new(BIN), &dsn, FAST).expect("daemon starts");
    let landed = eventually(Duration::from_secs(40), || async {
        coalesce_seq(&repo, srvid).await >= 3
    })
    .await;
    assert!(landed, "no snapshot as non-superusers:\n{}", daemon.log());
    assert_eq!(
        stored_errors(&repo, srvid).await,
        None,
        "datasource errors:\n{}",
        daemon.log()
    );
    let statements: i64 = repo
        .query_one(
            "SELECT count(*) FROM powa_statements WHERE srvid = $1",
            &[&srvid],
        )
        .await
        .unwrap()
        .get(0);
    assert!(statements > 0, "no statement collected:\n{}", daemon.log());
    // The remote sessions are the non-superuser's.
    let remote_user = fleet.remotes[0]
        .psql(
            "postgres",
            "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity \
             WHERE application_name LIKE '%powa-fleet%'",
        )
        .unwrap();
    assert_eq!(remote_user, "powa_remote");

    // Commands are answered (the sender, as powa-web's, is privileged).
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let answer = client
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await;
    assert_eq!(
        answer,
        Some(format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}")),
        "{}",
        daemon.log()
    );
    drop(daemon);

    // With less, check names what is missing and fails.
    fleet.remotes[0]
        .psql(
            "powa",
            "REVOKE pg_read_all_stats FROM powa_remote; \
             REVOKE SELECT ON powa_databases FROM powa_remote; \
             REVOKE EXECUTE ON FUNCTION pg_qualstats_reset() FROM powa_remote; \
             CREATE DATABASE locked; REVOKE CONNECT ON DATABASE locked FROM PUBLIC;",
        )
        .unwrap();
    // Half the rights on a staging table are not enough.
    fleet
        .repository
        .psql(
            "powa",
            "REVOKE DELETE ON powa_statements_src_tmp FROM powa_collector",
        )
        .unwrap();
    let powa5 = powa_major_version(&fleet.repository).unwrap() >= 5;
    if powa5 {
        fleet
            .repository
            .psql(
                "powa",
                "REVOKE INSERT ON powa_all_tables_src_tmp FROM powa_collector",
            )
            .unwrap();
    }
    let out = check(&dsn);
    assert_eq!(out.code, Some(1), "{out:?}");
    for missing in [
        "membership in pg_read_all_stats",
        "SELECT on public.powa_databases",
        // PoWA 5 names the cleanup with pg_qualstats's schema.
        "pg_qualstats_reset()",
        "powa_statements_src_tmp",
    ] {
        assert!(out.stdout.contains(missing), "{missing}: {out:?}");
    }
    // Per-database sessions and staging tables are PoWA 5's only.
    for missing in [
        "CONNECT on database locked",
        "INSERT, DELETE on public.powa_all_tables_src_tmp",
    ] {
        assert_eq!(out.stdout.contains(missing), powa5, "{missing}: {out:?}");
    }
    fleet
        .repository
        .psql("powa", "REVOKE UPDATE ON powa_servers FROM powa_collector")
        .unwrap();
    let out = check(&dsn);
    assert!(
        out.stdout.contains("UPDATE (version) on powa_servers"),
        "{out:?}"
    );
}
