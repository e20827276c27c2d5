//! The harness itself: clusters start with PoWA, servers register, the
//! workload lands, and faults (freeze, kill) behave as the tests need.

use std::time::Duration;

use powa_fleet_sandbox::fleet::{
    activate_db_modules, powa_major_version, setup_second_database, DB_MODULES,
};
use powa_fleet_sandbox::workload::SECOND_DATABASE;
use powa_fleet_sandbox::{require_binaries, Fleet};

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_has_powa_everywhere_and_registers_servers() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(2).expect("fleet starts");

    for cluster in std::iter::once(&fleet.repository).chain(&fleet.remotes) {
        let version = cluster
            .psql(
                "powa",
                "SELECT extversion FROM pg_extension WHERE extname = 'powa'",
            )
            .unwrap();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
        let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
        assert!((major, minor) >= (4, 1), "powa {version}");
        assert_eq!(powa_major_version(cluster).unwrap(), major);
    }
    let powa5 = powa_major_version(&fleet.repository).unwrap() >= 5;
    for remote in &fleet.remotes {
        let extensions = remote
            .psql(
                "powa",
                "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension \
                 WHERE extname IN ('pg_stat_statements', 'pg_qualstats', 'pg_stat_kcache')",
            )
            .unwrap();
        assert_eq!(extensions, "pg_qualstats,pg_stat_kcache,pg_stat_statements");
    }

    let first = fleet.register(0, 30, Some("first")).unwrap();
    let second = fleet.register(1, 60, None).unwrap();
    assert_ne!(first, second);
    let repo = fleet.repository.client("powa").await.unwrap();
    for (srvid, frequency) in [(first, 30), (second, 60)] {
        let row = repo
            .query_one(
                "SELECT s.frequency, m.srvid IS NOT NULL FROM powa_servers s \
                 LEFT JOIN powa_snapshot_metas m ON m.srvid = s.id WHERE s.id = $1",
                &[&srvid],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), frequency);
        assert!(row.get::<_, bool>(1), "metas row for {srvid}");
        if powa5 {
            // Every per-database module, for all databases (NULL dbnames).
            let modules: Vec<String> = repo
                .query(
                    "SELECT db_module FROM powa_db_module_config \
                     WHERE srvid = $1 AND enabled AND dbnames IS NULL ORDER BY 1",
                    &[&srvid],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut expected: Vec<&str> = DB_MODULES.to_vec();
            expected.sort();
            assert_eq!(modules, expected, "db modules of {srvid}");
        }
    }
    if powa5 {
        repo.execute(
            "SELECT powa_deactivate_db_module($1, 'pg_stat_all_tables')",
            &[&first],
        )
        .await
        .unwrap();
        activate_db_modules(&fleet.repository, first).unwrap();
        let enabled: i64 = repo
            .query_one(
                "SELECT count(*) FROM powa_db_module_config WHERE srvid = $1 AND enabled",
                &[&first],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(enabled, DB_MODULES.len() as i64);
    }

    fleet.workload(0, 2000).unwrap();
    let count: i64 = fleet.remotes[0]
        .psql("powa", "SELECT count(*) FROM pg_stat_statements")
        .unwrap()
        .parse()
        .unwrap();
    assert!(count >= 2000, "{count} statements");

    setup_second_database(&fleet.remotes[1]).unwrap();
    let calls = fleet.remotes[1]
        .psql(
            SECOND_DATABASE,
            "SELECT calls FROM pg_stat_user_functions WHERE funcname = 'powa_fleet_triple'",
        )
        .unwrap();
    assert_eq!(calls, "5");
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_thaw_kill_and_start_again() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(1).expect("fleet starts");
    let remote = &fleet.remotes[0];
    let client = remote.client("powa").await.unwrap();

    remote.freeze();
    let frozen =
        tokio::time::timeout(Duration::from_millis(500), client.simple_query("SELECT 1")).await;
    assert!(frozen.is_err(), "a frozen server must not answer");
    remote.thaw();
    let thawed =
        tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1")).await;
    assert!(matches!(thawed, Ok(Ok(_))), "answers again after thaw");

    remote.kill();
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "killed server"
    );
    assert!(remote.postmaster_pid().is_none());
    remote.start_again().unwrap();
    let again = remote.client("powa").await.unwrap();
    assert_eq!(
        again
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}
