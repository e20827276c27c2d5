//! A remote server whose powa extension differs from the repository's in
//! major.minor has another SQL schema: it must not be collected, the
//! reason must be stored where powa-web shows it, and the rest of the
//! fleet must not notice.

use std::path::Path;
use std::time::Duration;

use powa_fleet_harness::daemon::{eventually, Daemon, Requester};
use powa_fleet_harness::fleet::{coalesce_seq, stored_errors};
use powa_fleet_harness::{require_binaries, Fleet};

mod common;
use common::{BIN, FAST};
#[tokio::test(flavor = "multi_thread")]
async fn a_remote_of_another_powa_minor_is_refused_alone_with_a_stored_error() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(2).unwrap();
    let version = fleet
        .repository
        .psql(
            "powa",
            "SELECT extversion FROM pg_extension WHERE extname = 'powa'",
        )
        .unwrap();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
    // The next minor release of the same major: same generation of SQL
    // for the session, another schema for the snapshot.
    let other = format!("{major}.{}.0", minor + 1);
    fleet.remotes[0]
        .psql(
            "powa",
            &format!("UPDATE pg_extension SET extversion = '{other}' WHERE extname = 'powa'"),
        )
        .unwrap();
    let refused = fleet.register(0, 5, None).unwrap();
    let healthy = fleet.register(1, 5, None).unwrap();
    let dsn = fleet.repository_dsn();
    let repo = fleet.repository.client("powa").await.unwrap();
    let before = coalesce_seq(&repo, refused).await;
    let mut daemon = Daemon::start(Path::new(BIN), &dsn, FAST).unwrap();

    let stored = eventually(Duration::from_secs(30), || async {
        stored_errors(&repo, refused)
            .await
            .is_some_and(|e| e.iter().any(|m| m.contains("version mismatch")))
    })
    .await;
    let errors = stored_errors(&repo, refused).await.unwrap_or_default();
    assert!(
        stored,
        "no stored mismatch error: {errors:?}\n{}",
        daemon.log()
    );
    let error = errors
        .iter()
        .find(|m| m.contains("version mismatch"))
        .unwrap();
    assert!(
        error.contains(&version) && error.contains(&other),
        "the error names both versions: {error}"
    );

    // The other server keeps its rhythm, the refused one gets no snapshot.
    let landed = eventually(Duration::from_secs(30), || async {
        coalesce_seq(&repo, healthy).await >= before + 2
    })
    .await;
    assert!(landed, "the healthy server stopped:\n{}", daemon.log());
    assert_eq!(stored_errors(&repo, healthy).await, None);
    assert_eq!(
        coalesce_seq(&repo, refused).await,
        before,
        "{}",
        daemon.log()
    );
    assert!(daemon.is_alive());
    let mut client = Requester::connect(&dsn).await.unwrap();
    let status = client
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await
        .expect("WORKERS_STATUS answered");
    assert!(
        status.contains(&format!("\"{healthy}\": \"running\"")),
        "{status}"
    );
    assert!(
        !status.contains(&format!("\"{refused}\": \"running\"")),
        "{status}"
    );
}
