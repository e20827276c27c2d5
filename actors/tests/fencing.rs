//! Fencing against real clusters: a snapshot commits only while its
//! member's membership session holds the server's lock, never within the
//! gap of the last one, never beside another snapshot of the server, and
//! never beyond the fleet-wide slots.

use std::time::{Duration, Instant};

use powa_fleet_actors::copy::Prepared;
use powa_fleet_actors::error::pg_message;
use powa_fleet_actors::fencing::{Fence, Fenced};
use powa_fleet_actors::layout::Layout;
use powa_fleet_actors::membership::{self, SLOT_SPACE};
use powa_fleet_actors::snapshot::{
    take_snapshot, CatalogRefresh, Job, SnapshotError, SnapshotReport, Step,
};
use powa_fleet_harness::fleet::coalesce_seq;
use powa_fleet_harness::{require_binaries, Cluster, Fleet};
use tokio_postgres::{Client, NoTls};

async fn fenced_snapshot(
    cluster: &Cluster,
    repo: &mut Client,
    remote: &mut Client,
    srvid: i32,
    fence: Fence,
    observer: &mut dyn FnMut(Step),
) -> Result<SnapshotReport, SnapshotError> {
    let repository = Layout::read(repo).await.unwrap();
    let remote_layout = Layout::read(remote).await.unwrap();
    let base = format!(
        "host={} port={} user=postgres",
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
        remote_silence: Duration::from_secs(10),
        repository: &repository,
        remote: &remote_layout,
        catalogs: &catalogs,
        open_database: &open,
        fence: Some(fence),
        slot_freed: None,
    };
    let (mut repo_prepared, mut remote_prepared) = (Prepared::default(), Prepared::default());
    take_snapshot(
        repo,
        &mut repo_prepared,
        remote,
        &mut remote_prepared,
        &job,
        observer,
    )
    .await
}

fn fenced(result: &Result<SnapshotReport, SnapshotError>) -> Option<Fenced> {
    match result {
        Err(SnapshotError::Fenced(why)) => Some(why.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_commits_only_while_its_member_holds_the_server() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(1).expect("fleet starts");
    let srvid = fleet.register(0, 300, None).unwrap();
    let remote_cluster = &fleet.remotes[0];
    let mut repo = fleet.repository.client("powa").await.unwrap();
    let mut remote = remote_cluster.client("powa").await.unwrap();
    let watcher = fleet.repository.client("powa").await.unwrap();
    let member = fleet.repository.client("powa").await.unwrap();
    let facts = membership::prepare_session(&member).await.unwrap();
    let fence = Fence {
        member_pid: facts.pid,
        min_gap: Duration::ZERO,
        slots: 1,
        forced: false,
        stall_limit: Duration::from_secs(30),
    };
    let mut quiet = |_: Step| {};

    // Not claimed: refused, nothing recorded.
    let result = fenced_snapshot(
        remote_cluster,
        &mut repo,
        &mut remote,
        srvid,
        fence,
        &mut quiet,
    )
    .await;
    assert_eq!(fenced(&result), Some(Fenced::NotOwner), "{result:?}");
    assert_eq!(coalesce_seq(&watcher, srvid).await, 1);

    // Claimed: written.
    assert!(membership::try_claim(&member, srvid).await.unwrap());
    let result = fenced_snapshot(
        remote_cluster,
        &mut repo,
        &mut remote,
        srvid,
        fence,
        &mut quiet,
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(coalesce_seq(&watcher, srvid).await, 2);

    // Within the gap of the last one: refused.
    let close = Fence {
        min_gap: Duration::from_secs(60),
        ..fence
    };
    let result = fenced_snapshot(
        remote_cluster,
        &mut repo,
        &mut remote,
        srvid,
        close,
        &mut quiet,
    )
    .await;
    assert!(
        matches!(fenced(&result), Some(Fenced::TooSoon(_))),
        "{result:?}"
    );
    assert_eq!(coalesce_seq(&watcher, srvid).await, 2);

    // Another snapshot of the server in flight (its metas row locked): refused.
    let mut other = fleet.repository.client("powa").await.unwrap();
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM powa_snapshot_metas WHERE srvid = $1 FOR UPDATE",
        &[&srvid],
    )
    .await
    .unwrap();
    let result = fenced_snapshot(
        remote_cluster,
        &mut repo,
        &mut remote,
        srvid,
        fence,
        &mut quiet,
    )
    .await;
    assert_eq!(fenced(&result), Some(Fenced::InFlight), "{result:?}");
    tx.rollback().await.unwrap();

    // Every fleet-wide slot taken: the snapshot waits for one.
    let slot_holder = fleet.repository.client("powa").await.unwrap();
    slot_holder
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({SLOT_SPACE}, 0)"
        ))
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        slot_holder.batch_execute("COMMIT").await.unwrap();
        slot_holder
    });
    let started = Instant::now();
    let result = fenced_snapshot(
        remote_cluster,
        &mut repo,
        &mut remote,
        srvid,
        fence,
        &mut quiet,
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "did not wait for the slot: {:?}",
        started.elapsed()
    );
    assert_eq!(coalesce_seq(&watcher, srvid).await, 3);
    let _ = release.await;

    // The membership session lost mid-snapshot: the commit is refused and
    // nothing of the snapshot is visible.
    let pid = facts.pid;
    let repository = &fleet.repository;
    let mut cut = |step: Step| {
        if step == Step::BeforeTakeSnapshot {
            repository
                .psql(
                    "powa",
                    &format!("SELECT pg_terminate_backend({pid}) \\g /dev/null"),
                )
                .unwrap();
            // The backend is gone once its locks are.
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let result = fenced_snapshot(
        remote_cluster,
        &mut repo,
        &mut remote,
        srvid,
        fence,
        &mut cut,
    )
    .await;
    assert_eq!(fenced(&result), Some(Fenced::NotOwner), "{result:?}");
    assert_eq!(coalesce_seq(&watcher, srvid).await, 3);
}
