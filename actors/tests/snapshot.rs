//! One remote snapshot against real clusters: what lands in the
//! repository, what is recorded when something fails, and what is left
//! behind (nothing) when the remote dies in the middle.

use std::time::{Duration, SystemTime};

use powa_fleet_actors::copy::Prepared;
use powa_fleet_actors::error::{pg_message, ErrorKind};
use powa_fleet_actors::layout::{Generation, Layout};
use powa_fleet_actors::repository::{self, LastSnapshot};
use powa_fleet_actors::snapshot::{
    take_snapshot, CatalogRefresh, Job, SnapshotError, SnapshotReport, Step,
};
use powa_fleet_harness::{require_binaries, Cluster, Fleet};
use tokio_postgres::{Client, NoTls};

async fn layout(client: &Client) -> Layout {
    Layout::read(client).await.expect("extensions readable")
}

/// One snapshot as the snapshot actor takes it: per-database sessions
/// are opened on `cluster`, locked to `pg_catalog` as the collector's are.
async fn snapshot(
    cluster: &Cluster,
    repo: &mut Client,
    remote: &mut Client,
    srvid: i32,
    remote_silence: Duration,
    observer: &mut dyn FnMut(Step),
) -> Result<SnapshotReport, SnapshotError> {
    snapshot_as(
        cluster,
        "postgres",
        repo,
        remote,
        srvid,
        remote_silence,
        observer,
    )
    .await
}

/// [`snapshot`], with the per-database sessions opened as `user`.
async fn snapshot_as(
    cluster: &Cluster,
    user: &str,
    repo: &mut Client,
    remote: &mut Client,
    srvid: i32,
    remote_silence: Duration,
    observer: &mut dyn FnMut(Step),
) -> Result<SnapshotReport, SnapshotError> {
    let mut prepared = (Prepared::default(), Prepared::default());
    snapshot_prepared(
        cluster,
        user,
        (repo, remote),
        &mut prepared,
        srvid,
        remote_silence,
        observer,
    )
    .await
}

/// [`snapshot_as`], on sessions whose COPY statements prepared so far are
/// `prepared` (the repository's, the remote's), as the daemon keeps them.
async fn snapshot_prepared(
    cluster: &Cluster,
    user: &str,
    (repo, remote): (&mut Client, &mut Client),
    prepared: &mut (Prepared, Prepared),
    srvid: i32,
    remote_silence: Duration,
    observer: &mut dyn FnMut(Step),
) -> Result<SnapshotReport, SnapshotError> {
    let repository = layout(repo).await;
    let remote_layout = layout(remote).await;
    let base = format!(
        "host={} port={} user={user}",
        cluster.host(),
        cluster.port()
    );
    let open = move |dbname: String| {
        let dsn = format!("{base} dbname={dbname}");
        Box::pin(async move {
            let (client, connection) = tokio_postgres::connect(&dsn, NoTls)
                .await
                .map_err(|e| pg_message(&e))?;
            tokio::spawn(connection);
            client
                .batch_execute("SET search_path = pg_catalog")
                .await
                .map_err(|e| pg_message(&e))?;
            Ok(client)
        }) as futures_util::future::BoxFuture<'static, Result<Client, String>>
    };
    let catalogs = CatalogRefresh::default();
    let job = Job {
        srvid,
        remote_silence,
        repository: &repository,
        remote: &remote_layout,
        catalogs: &catalogs,
        open_database: &open,
        fence: None,
        slot_freed: None,
    };
    let (repo_prepared, remote_prepared) = prepared;
    take_snapshot(repo, repo_prepared, remote, remote_prepared, &job, observer).await
}

async fn count(repo: &Client, sql: &str, srvid: i32) -> i64 {
    repo.query_one(sql, &[&srvid]).await.unwrap().get(0)
}

async fn metas(repo: &Client, srvid: i32) -> (i64, Option<Vec<String>>, f64) {
    let row = repo
        .query_one(
            "SELECT coalesce_seq, errors, EXTRACT(EPOCH FROM snapts)::float8 \
             FROM powa_snapshot_metas WHERE srvid = $1",
            &[&srvid],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// History tables a first snapshot fills (the `_current` ones, since no
/// coalesce has run yet).
fn history_tables(generation: Generation) -> &'static [&'static str] {
    match generation {
        Generation::Four => &[
            "powa_statements_history_current",
            "powa_kcache_metrics_current",
            "powa_stat_bgwriter_history_current",
            "powa_all_relations_history_current",
            "powa_user_functions_history_current",
        ],
        // Per-database datasources and catalogs, from every database.
        Generation::Five => &[
            "powa_statements_history_current",
            "powa_kcache_metrics_current",
            "powa_stat_bgwriter_history_current",
            "powa_all_tables_history_current",
            "powa_all_indexes_history_current",
            "powa_catalog_class",
            "powa_catalog_attribute",
            "powa_catalog_databases",
        ],
    }
}

async fn generation(client: &Client) -> Generation {
    layout(client).await.generation()
}

/// Relation and function statistics come from PoWA's C functions, which
/// return nothing on PostgreSQL 15 with PoWA 4.1.4: for those, the
/// repository must hold exactly what the remote's source returns.
const FROM_C_FUNCTIONS: &[(&str, &str)] = &[
    (
        "powa_all_relations_history_current",
        "powa_all_relations_src",
    ),
    (
        "powa_user_functions_history_current",
        "powa_user_functions_src",
    ),
];

async fn history_counts(repo: &Client, srvid: i32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for table in history_tables(generation(repo).await)
        .iter()
        .chain(&["powa_qualstats_quals_history_current"])
    {
        let n = count(
            repo,
            &format!("SELECT count(*) FROM {table} WHERE srvid = $1"),
            srvid,
        )
        .await;
        out.push((table.to_string(), n));
    }
    out
}

/// Every history table has rows, or as many as the remote source gives.
async fn assert_history_filled(repo: &Client, remote: &Client, srvid: i32, skip: &str) {
    for (table, n) in history_counts(repo, srvid).await {
        if table.contains(skip) {
            continue;
        }
        match FROM_C_FUNCTIONS.iter().find(|(t, _)| *t == table) {
            Some((_, source)) => {
                let at_source: i64 = remote
                    .query_one(&format!("SELECT count(*) FROM public.{source}(0)"), &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(
                    n > 0,
                    at_source > 0,
                    "{table}: {n} rows, {source}: {at_source}"
                );
            }
            None => assert!(n > 0, "{table} has no row for server {srvid}"),
        }
    }
}

/// Rows of the server left in any staging table.
async fn tmp_rows(repo: &Client, srvid: i32) -> i64 {
    let tables: Vec<String> = repo
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c \
             JOIN pg_extension e ON e.extnamespace = c.relnamespace AND e.extname = 'powa' \
             WHERE c.relkind = 'r' AND c.relname LIKE '%\\_src\\_tmp'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 7, "staging tables: {tables:?}");
    let mut total = 0;
    for table in tables {
        total += count(
            repo,
            &format!("SELECT count(*) FROM {table} WHERE srvid = $1"),
            srvid,
        )
        .await;
    }
    total
}

fn fleet() -> Fleet {
    require_binaries().expect("PostgreSQL and PoWA installed");
    Fleet::start(1).expect("fleet starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn first_snapshot_fills_every_history_table() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    fleet.workload(0, 2000).unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();
    let (seq_before, _, _) = metas(&repo, srvid).await;

    let mut steps = Vec::new();
    let report = snapshot(
        &fleet.remotes[0],
        &mut repo,
        &mut remote,
        srvid,
        Duration::from_secs(30),
        &mut |s| steps.push(s),
    )
    .await
    .expect("snapshot");

    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.rows >= 2000, "{report:?}");
    let done: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::DatasourceDone { module, .. } => Some(module.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(report.datasources, done.len(), "{steps:?}");
    match generation(&repo).await {
        Generation::Four => assert_eq!(report.datasources, 7, "{steps:?}"),
        // Each database that allows connections gives its tables, indexes
        // and functions, and its catalogs the first time.
        Generation::Five => {
            for db in ["powa", "postgres", "template1"] {
                for name in [
                    format!("pg_stat_all_tables in database {db}"),
                    format!("catalog pg_class in database {db}"),
                ] {
                    assert!(done.contains(&name.as_str()), "{name} missing: {done:?}");
                }
            }
        }
    }
    // pg_qualstats history needs the statements PoWA already knows (its
    // snapshot function runs before the statements one): the second
    // snapshot has them.
    assert_history_filled(&repo, &remote, srvid, "qualstats").await;
    let statements = count(
        &repo,
        "SELECT count(*) FROM powa_statements_history_current WHERE srvid = $1",
        srvid,
    )
    .await;
    assert!(statements >= 2000, "{statements} statements");
    let (seq_after, errors, snapts) = metas(&repo, srvid).await;
    assert_eq!(seq_after, seq_before + 1);
    assert_eq!(errors, None);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - snapts).abs() < 60.0, "snapts {snapts} now {now}");
    assert_eq!(tmp_rows(&repo, srvid).await, 0, "tmp tables emptied");
    assert!(matches!(
        repository::last_snapshot(&repo, &layout(&repo).await, srvid)
            .await
            .unwrap(),
        LastSnapshot::At(_)
    ));

    fleet.workload(0, 2000).unwrap();
    let second = snapshot(
        &fleet.remotes[0],
        &mut repo,
        &mut remote,
        srvid,
        Duration::from_secs(30),
        &mut |_| {},
    )
    .await
    .expect("second snapshot");
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_history_filled(&repo, &remote, srvid, "no table is skipped").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_extension_is_recorded_and_the_rest_lands() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    fleet.workload(0, 50).unwrap();
    fleet.remotes[0]
        .psql("powa", "DROP EXTENSION pg_qualstats")
        .unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();

    let report = snapshot(
        &fleet.remotes[0],
        &mut repo,
        &mut remote,
        srvid,
        Duration::from_secs(30),
        &mut |_| {},
    )
    .await
    .expect("snapshot goes on");

    // The qualstats source and its cleanup both fail.
    assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
    assert!(
        report.errors[0].contains("pg_qualstats"),
        "{:?}",
        report.errors
    );
    let (_, errors, _) = metas(&repo, srvid).await;
    assert_eq!(errors.as_deref(), Some(&report.errors[..]));
    assert_history_filled(&repo, &remote, srvid, "qualstats").await;
    let qualstats = count(
        &repo,
        "SELECT count(*) FROM powa_qualstats_quals_history_current WHERE srvid = $1",
        srvid,
    )
    .await;
    assert_eq!(qualstats, 0);
}

/// The COPY statements a session has prepared, by kind.
async fn prepared_copies(client: &Client, direction: &str) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'COPY %{direction}%'"
    );
    client.query_one(&sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_statements_are_prepared_once_and_follow_a_recreated_staging_table() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    fleet.workload(0, 50).unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();
    let mut prepared = (Prepared::default(), Prepared::default());
    let first = snapshot_prepared(
        &fleet.remotes[0],
        "postgres",
        (&mut repo, &mut remote),
        &mut prepared,
        srvid,
        Duration::from_secs(30),
        &mut |_| {},
    )
    .await
    .expect("first snapshot");
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let sinks = prepared_copies(&repo, "FROM STDIN").await;
    let sources = prepared_copies(&remote, "TO STDOUT").await;
    assert!(
        sinks >= 3 && sources >= 3,
        "{sinks} sinks, {sources} sources"
    );

    // A staging table replaced under the same name (as an upgrade of PoWA
    // may do): the prepared COPY writes into the table of that name now.
    let staging = fleet
        .repository
        .client("powa")
        .await
        .unwrap()
        .query_one(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = 'powa_statements_src_tmp'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    let schema = staging.split('.').next().unwrap().to_string();
    fleet
        .repository
        .psql(
            "powa",
            &format!(
                "ALTER TABLE {staging} RENAME TO powa_statements_src_tmp_old; \
                 CREATE TABLE {staging} (LIKE {schema}.powa_statements_src_tmp_old INCLUDING ALL)"
            ),
        )
        .unwrap();
    fleet.workload(0, 50).unwrap();
    let before = count(
        &repo,
        "SELECT count(*) FROM powa_statements_history_current WHERE srvid = $1",
        srvid,
    )
    .await;
    let second = snapshot_prepared(
        &fleet.remotes[0],
        "postgres",
        (&mut repo, &mut remote),
        &mut prepared,
        srvid,
        Duration::from_secs(30),
        &mut |_| {},
    )
    .await
    .expect("second snapshot");
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    let after = count(
        &repo,
        "SELECT count(*) FROM powa_statements_history_current WHERE srvid = $1",
        srvid,
    )
    .await;
    assert!(after > before, "statements recorded: {before} then {after}");
    let old = repo
        .query_one(
            &format!("SELECT count(*) FROM {schema}.powa_statements_src_tmp_old"),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(old, 0, "rows went into the renamed table");
    // Nothing prepared again.
    assert_eq!(prepared_copies(&repo, "FROM STDIN").await, sinks);
    assert_eq!(prepared_copies(&remote, "TO STDOUT").await, sources);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_the_repository_rejects_cost_only_their_datasource_first_or_last() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();
    let silence = Duration::from_secs(30);
    let cluster = &fleet.remotes[0];
    // The second snapshot is the steady state (on PoWA 5 the first one
    // also copies every catalog): which tables get rows, in which order.
    let mut landed = vec![];
    for _ in 0..2 {
        fleet.workload(0, 50).unwrap();
        landed.clear();
        let report = snapshot(
            cluster,
            &mut repo,
            &mut remote,
            srvid,
            silence,
            &mut |step| {
                if let Step::DatasourceDone { table, rows, .. } = step {
                    if rows > 0 && !landed.contains(&table) {
                        landed.push(table);
                    }
                }
            },
        )
        .await
        .expect("a clean snapshot");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    assert!(landed.len() >= 3, "{landed:?}");
    // The first and the last copy with rows are refused by the repository
    // while their rows go in: the copy after the first must land, and the
    // last one's failure is read just before powa_take_snapshot.
    let refused = [landed[0].clone(), landed[landed.len() - 1].clone()];
    for table in &refused {
        fleet
            .repository
            .psql(
                "powa",
                &format!("ALTER TABLE {table} ADD CONSTRAINT refused CHECK (false) NOT VALID"),
            )
            .unwrap();
    }
    fleet.workload(0, 50).unwrap();
    let mut failed = vec![];
    let report = snapshot(
        cluster,
        &mut repo,
        &mut remote,
        srvid,
        silence,
        &mut |step| {
            if let Step::DatasourceFailed { module, .. } = step {
                failed.push(module);
            }
        },
    )
    .await
    .expect("the snapshot goes on");
    assert_eq!(report.not_recorded, None);
    assert!(failed.len() >= 2, "{failed:?} {:?}", report.errors);
    assert_eq!(report.errors.len(), failed.len(), "{:?}", report.errors);
    assert!(report
        .errors
        .iter()
        .all(|e| e.contains("error while inserting into")));
    for table in &refused {
        assert!(
            report.errors.iter().any(|e| e.contains(table.as_str())),
            "{table}: {:?}",
            report.errors
        );
    }
    for table in &landed[1..landed.len() - 1] {
        assert!(
            report.staged.contains(table),
            "{table}: {:?}",
            report.staged
        );
    }
    let (_, errors, _) = metas(&repo, srvid).await;
    assert_eq!(errors.as_deref(), Some(&report.errors[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_killed_mid_snapshot_leaves_nothing_behind() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    fleet.workload(0, 200).unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();
    let (seq_before, _, snapts_before) = metas(&repo, srvid).await;

    let victim = &fleet.remotes[0];
    let mut done = 0;
    let result = snapshot(
        &fleet.remotes[0],
        &mut repo,
        &mut remote,
        srvid,
        Duration::from_secs(30),
        &mut |step| {
            if let Step::DatasourceDone { .. } = step {
                done += 1;
                if done == 2 {
                    victim.kill();
                }
            }
        },
    )
    .await;

    let err = result.expect_err("the snapshot must fail");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("remote server"), "{err}");
    // A fresh session sees the repository as before the snapshot.
    let repo = fleet.repository.client("powa").await.unwrap();
    assert_eq!(tmp_rows(&repo, srvid).await, 0);
    for (table, n) in history_counts(&repo, srvid).await {
        assert_eq!(n, 0, "{table}");
    }
    let (seq_after, _, snapts_after) = metas(&repo, srvid).await;
    assert_eq!(seq_after, seq_before);
    assert_eq!(snapts_after, snapts_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_frozen_mid_snapshot_is_given_up_after_its_silence_limit() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    fleet.workload(0, 200).unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();
    let (seq_before, _, _) = metas(&repo, srvid).await;

    let victim = &fleet.remotes[0];
    let started = std::time::Instant::now();
    let result = snapshot(
        &fleet.remotes[0],
        &mut repo,
        &mut remote,
        srvid,
        Duration::from_secs(2),
        &mut |step| {
            if let Step::DatasourceDone { .. } = step {
                victim.freeze();
            }
        },
    )
    .await;
    let waited = started.elapsed();
    victim.thaw();

    let err = result.expect_err("the snapshot must be given up");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("not answering"), "{err}");
    // Given up after the silence limit, not after a statement timeout.
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    let repo = fleet.repository.client("powa").await.unwrap();
    assert_eq!(tmp_rows(&repo, srvid).await, 0);
    assert_eq!(metas(&repo, srvid).await.0, seq_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn powa_take_snapshot_raising_is_recorded() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();
    repo.batch_execute(&format!(
        "UPDATE powa_snapshot_metas SET errors = ARRAY['old error'] WHERE srvid = {srvid};
         ALTER FUNCTION powa_take_snapshot(integer) RENAME TO powa_take_snapshot_real;
         CREATE FUNCTION powa_take_snapshot(integer) RETURNS integer LANGUAGE plpgsql
         AS $$ BEGIN RAISE EXCEPTION 'broken on purpose'; END $$;"
    ))
    .await
    .unwrap();

    let report = snapshot(
        &fleet.remotes[0],
        &mut repo,
        &mut remote,
        srvid,
        Duration::from_secs(30),
        &mut |_| {},
    )
    .await
    .expect("the snapshot itself goes on");

    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(report.errors[0].contains("broken on purpose"));
    let (_, errors, _) = metas(&repo, srvid).await;
    // The old error is gone (step 5 clears it), ours is there.
    assert_eq!(errors, Some(report.errors.clone()));
    // Nothing stays staged for the next snapshot to take in twice.
    assert_eq!(tmp_rows(&repo, srvid).await, 0);
    assert_eq!(metas(&repo, srvid).await.0, 1, "no snapshot counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn bookkeeping_and_registration_checks() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    let remote = fleet.remotes[0].client("powa").await.unwrap();

    assert_eq!(
        repository::last_snapshot(&repo, &layout(&repo).await, srvid)
            .await
            .unwrap(),
        LastSnapshot::Never
    );
    assert_eq!(
        repository::last_snapshot(&repo, &layout(&repo).await, 9999)
            .await
            .unwrap(),
        LastSnapshot::NotRegistered
    );
    let servers = repository::list_servers(&repo, &layout(&repo).await)
        .await
        .unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].port, fleet.remotes[0].port());

    repository::update_versions(&repo, &layout(&repo).await, &remote, srvid)
        .await
        .expect("bookkeeping");
    let version: Option<String> = repo
        .query_one("SELECT version FROM powa_servers WHERE id = $1", &[&srvid])
        .await
        .unwrap()
        .get(0);
    let remote_version: String = remote
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, Some(remote_version));
    let exts = repo
        .query(
            &format!(
                "SELECT extname, version FROM {} WHERE srvid = $1 ORDER BY 1",
                layout(&repo).await.extension_table()
            ),
            &[&srvid],
        )
        .await
        .unwrap();
    let names: Vec<String> = exts.iter().map(|r| r.get(0)).collect();
    assert!(names.contains(&"hypopg".to_string()), "{names:?}");
    assert!(exts.iter().all(|r| r.get::<_, Option<String>>(1).is_some()));

    // A remote whose powa differs in major.minor is refused.
    remote
        .batch_execute("UPDATE pg_extension SET extversion = '4.0.1' WHERE extname = 'powa'")
        .await
        .unwrap();
    let err = repository::update_versions(&repo, &layout(&repo).await, &remote, srvid)
        .await
        .expect_err("mismatch");
    assert_eq!(err.kind(), ErrorKind::Setup);
    assert!(err.to_string().contains("4.0.1"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_datasource_streams_in_bounded_memory() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    // 20 000 statements carrying 1 KB comments: about 20 MB of query text.
    fleet.remotes[0]
        .psql(
            "powa",
            &powa_fleet_harness::workload::workload_sql(20_000, 1024),
        )
        .unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();

    // Forget the peak so far (the workload script itself was large):
    // writing 5 to clear_refs resets VmHWM to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
    let before = peak_rss_kib();
    let report = snapshot(
        &fleet.remotes[0],
        &mut repo,
        &mut remote,
        srvid,
        Duration::from_secs(30),
        &mut |_| {},
    )
    .await
    .expect("snapshot");
    let growth = peak_rss_kib().saturating_sub(before);
    assert!(report.bytes > 20_000_000, "{} bytes", report.bytes);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        growth < 32 * 1024,
        "peak RSS grew by {growth} KiB while copying {} bytes",
        report.bytes
    );
    eprintln!(
        "copied {} bytes in {:?}, peak RSS growth {growth} KiB",
        report.bytes, report.elapsed
    );
    let _ = Duration::ZERO;
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_timeout_on_a_staging_table_costs_only_that_datasource() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    fleet.workload(0, 100).unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();
    // Another session holds kcache's staging table (as a TRUNCATE by
    // autovacuum would).
    let holder = fleet.repository.client("powa").await.unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE powa_kcache_src_tmp IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    repo.batch_execute("SET lock_timeout = '300ms'")
        .await
        .unwrap();

    let report = snapshot(
        &fleet.remotes[0],
        &mut repo,
        &mut remote,
        srvid,
        Duration::from_secs(30),
        &mut |_| {},
    )
    .await
    .expect("the snapshot goes on");
    holder.batch_execute("COMMIT").await.unwrap();

    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(
        report.errors[0].contains("powa_kcache_src_tmp"),
        "{:?}",
        report.errors
    );
    assert!(
        report.errors[0].contains("lock timeout"),
        "{:?}",
        report.errors
    );
    let (seq, errors, _) = metas(&repo, srvid).await;
    assert_eq!(seq, 2, "the snapshot committed");
    // powa_take_snapshot records its own failure (its kcache step meets the
    // same lock) before ours is appended.
    let errors = errors.unwrap();
    assert_eq!(errors.last(), report.errors.last(), "{errors:?}");
    let statements = count(
        &repo,
        "SELECT count(*) FROM powa_statements_history_current WHERE srvid = $1",
        srvid,
    )
    .await;
    assert!(statements > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_refusing_the_collector_costs_only_its_own_rows() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    fleet.remotes[0]
        .psql(
            "postgres",
            "CREATE DATABASE locked; REVOKE CONNECT ON DATABASE locked FROM PUBLIC; \
             CREATE ROLE reader LOGIN IN ROLE pg_read_all_stats;",
        )
        .unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();
    let (seq_before, _, _) = metas(&repo, srvid).await;

    let mut done = Vec::new();
    let report = snapshot_as(
        &fleet.remotes[0],
        "reader",
        &mut repo,
        &mut remote,
        srvid,
        Duration::from_secs(30),
        &mut |step| {
            if let Step::DatasourceDone { module, .. } = step {
                done.push(module);
            }
        },
    )
    .await
    .expect("the snapshot goes on");

    let (seq_after, errors, _) = metas(&repo, srvid).await;
    assert_eq!(seq_after, seq_before + 1, "the snapshot is recorded");
    if generation(&repo).await == Generation::Four {
        // No per-database part on PoWA 4: the database is never visited.
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        return;
    }
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(
        report.errors[0].starts_with("database locked: ")
            && report.errors[0].contains("permission denied for database"),
        "{:?}",
        report.errors
    );
    assert_eq!(errors, Some(report.errors.clone()), "stored for powa-web");
    assert!(done.iter().all(|m| !m.ends_with("database locked")));
    for db in ["powa", "postgres"] {
        let name = format!("pg_stat_all_tables in database {db}");
        assert!(done.contains(&name), "{name} missing: {done:?}");
    }
    let databases: Vec<String> = repo
        .query(
            "SELECT DISTINCT datname FROM powa_catalog_databases d \
             JOIN powa_all_tables_history_current h ON h.srvid = d.srvid AND h.dbid = d.oid \
             WHERE d.srvid = $1 ORDER BY 1",
            &[&srvid],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(databases, ["postgres", "powa", "template1"]);
    assert_eq!(tmp_rows(&repo, srvid).await, 0, "staging tables emptied");
}

#[tokio::test(flavor = "multi_thread")]
async fn extensions_in_their_own_schemas_are_found_on_both_sides() {
    use powa_fleet_harness::fleet::{remote_options, repository_options};
    require_binaries().expect("PostgreSQL and PoWA installed");
    let remote_cluster = Cluster::start(remote_options()).unwrap();
    let repository = Cluster::start(repository_options()).unwrap();
    let major: i32 = remote_cluster
        .psql(
            "postgres",
            "SELECT split_part(default_version, '.', 1) FROM pg_available_extensions \
             WHERE name = 'powa'",
        )
        .unwrap()
        .parse()
        .unwrap();
    // PoWA 5: powa, and what it requires, in schema "Powa" (quoted: mixed
    // case), pg_qualstats in its own schema, on both sides. PoWA 4 must be
    // installed in public.
    let (schema, qualstats) = if major >= 5 {
        ("\"Powa\"", "qs")
    } else {
        ("public", "public")
    };
    let extensions = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE SCHEMA IF NOT EXISTS {qualstats}; \
         CREATE EXTENSION pg_stat_statements SCHEMA {schema}; \
         CREATE EXTENSION btree_gist SCHEMA {schema}; \
         CREATE EXTENSION powa SCHEMA {schema}; \
         CREATE EXTENSION pg_qualstats SCHEMA {qualstats};"
    );
    for cluster in [&remote_cluster, &repository] {
        cluster.psql("postgres", "CREATE DATABASE powa").unwrap();
        cluster.psql("powa", &extensions).unwrap();
    }
    let srvid: i32 = repository
        .psql(
            "powa",
            &format!(
                "SELECT {schema}.powa_register_server(hostname => '{}', port => {}, \
                 username => 'postgres', frequency => 30, extensions => '{{pg_qualstats}}'); \
                 SELECT max(id) FROM {schema}.powa_servers",
                remote_cluster.host(),
                remote_cluster.port()
            ),
        )
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    let mut repo = repository.client("powa").await.unwrap();
    let mut remote = remote_cluster.client("powa").await.unwrap();
    for client in [&repo, &remote] {
        let l = layout(client).await;
        assert_eq!(l.powa(), schema);
        assert_eq!(l.schema_of("pg_qualstats"), Some(qualstats));
    }

    // Quals reach history once their statements are known: two rounds.
    for _ in 0..2 {
        remote_cluster
            .psql("powa", &powa_fleet_harness::workload::workload_sql(100, 0))
            .unwrap();
        let report = snapshot(
            &remote_cluster,
            &mut repo,
            &mut remote,
            srvid,
            Duration::from_secs(30),
            &mut |_| {},
        )
        .await
        .expect("snapshot");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    for table in [
        "powa_statements_history_current",
        "powa_qualstats_quals_history_current",
    ] {
        let n = count(
            &repo,
            &format!("SELECT count(*) FROM {schema}.{table} WHERE srvid = $1"),
            srvid,
        )
        .await;
        assert!(n > 0, "{table}: no row");
    }
    let errors: Option<Vec<String>> = repo
        .query_one(
            &format!("SELECT errors FROM {schema}.powa_snapshot_metas WHERE srvid = $1"),
            &[&srvid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(errors, None);
}

/// A snapshot that must land without errors.
async fn clean_snapshot(
    cluster: &Cluster,
    repo: &mut Client,
    remote: &mut Client,
    srvid: i32,
) -> SnapshotReport {
    let report = snapshot(
        cluster,
        repo,
        remote,
        srvid,
        Duration::from_secs(30),
        &mut |_| {},
    )
    .await
    .expect("snapshot");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report
}

/// Total size of the powa staging tables, in bytes.
async fn staging_bytes(repo: &Client) -> i64 {
    repo.query_one(
        "SELECT coalesce(sum(pg_catalog.pg_relation_size(c.oid)), 0)::int8 FROM pg_class c \
         JOIN pg_extension e ON e.extnamespace = c.relnamespace AND e.extname = 'powa' \
         WHERE c.relkind = 'r' AND c.relname LIKE '%\\_src\\_tmp'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn vacuuming_what_a_snapshot_staged_keeps_the_staging_tables_from_growing() {
    let fleet = fleet();
    let srvid = fleet.register(0, 30, None).unwrap();
    fleet.workload(0, 2000).unwrap();
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = fleet.remotes[0].client("powa").await.unwrap();
    // Autovacuum would blur what the collector's vacuum does.
    repo.batch_execute(
        "DO $$ DECLARE t regclass; BEGIN \
           FOR t IN SELECT c.oid FROM pg_class c WHERE c.relkind = 'r' \
                    AND c.relname LIKE '%\\_src\\_tmp' LOOP \
             EXECUTE pg_catalog.format('ALTER TABLE %s SET (autovacuum_enabled = false)', t); \
           END LOOP; END $$",
    )
    .await
    .unwrap();
    let cluster = &fleet.remotes[0];
    // Without a vacuum, each snapshot appends after the dead rows of the
    // one before (on PoWA 5 the first one also copies the catalogs, so it
    // is the largest).
    let first = clean_snapshot(cluster, &mut repo, &mut remote, srvid).await;
    assert!(first.staged.len() >= 5, "staged: {:?}", first.staged);
    let one = staging_bytes(&repo).await;
    clean_snapshot(cluster, &mut repo, &mut remote, srvid).await;
    clean_snapshot(cluster, &mut repo, &mut remote, srvid).await;
    let three = staging_bytes(&repo).await;
    assert!(
        three > one + one / 4,
        "{one} bytes after one snapshot, {three} after three"
    );
    // With one after each snapshot, the next COPY reuses the space.
    // The test's role is a superuser: every staging table is its own.
    let vacuumed = repository::vacuum_staging(&repo, &first.staged)
        .await
        .expect("vacuum");
    assert_eq!(vacuumed, first.staged.len());
    for _ in 0..4 {
        let report = clean_snapshot(cluster, &mut repo, &mut remote, srvid).await;
        repository::vacuum_staging(&repo, &report.staged)
            .await
            .expect("vacuum");
    }
    let seven = staging_bytes(&repo).await;
    assert!(
        seven <= three,
        "{three} bytes after three snapshots, {seven} after four more, each vacuumed"
    );
    assert_eq!(tmp_rows(&repo, srvid).await, 0);
}
