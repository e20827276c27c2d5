//! powa-web never asks the collector whether it runs: its configuration
//! page (Collector Detail) and the alert every page shows look for a client
//! session on the repository whose `application_name` is like
//! `PoWA collector - main thread (%`, and print what follows `main thread`
//! as the collector's name and version. These tests run that lookup on the
//! repository while powa-fleet collects (one member, then two: each is a
//! collector of its own, named), and while the reference does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use powa_fleet_harness::daemon::{eventually, Daemon, Requester};
use powa_fleet_harness::fleet::powa_major_version;
use powa_fleet_harness::reference::Reference;
use powa_fleet_harness::{require_binaries, Fleet};
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What powa-web's Collector Detail lists as remote collectors: the text
/// it shows (`Remote collector` and the rest of the session's name after
/// `PoWA collector - main thread`), the database and the client address.
async fn remote_collectors(repo: &Client) -> Vec<(String, String, String)> {
    repo.query(
        "SELECT 'Remote collector' \
                || coalesce(substring(application_name, \
                                      length('PoWA collector - main thread ')), ''), \
                datname::text, coalesce(host(client_addr), '<local>') \
           FROM pg_stat_activity \
          WHERE application_name LIKE 'PoWA collector - main thread (%' \
            AND backend_type = 'client backend' \
          ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn all_running(dsn: &str, srvid: i32) -> bool {
    let expected = format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}");
    let mut client = Requester::connect(dsn).await.unwrap();
    client
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await
        == Some(expected)
}

#[tokio::test(flavor = "multi_thread")]
async fn powa_web_finds_powa_fleet_running_and_names_it() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(1).unwrap();
    let srvid = fleet.register(0, 5, None).unwrap();
    let dsn = fleet.repository_dsn();
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(remote_collectors(&repo).await.is_empty());

    let mut daemon = Daemon::start(Path::new(BIN), &dsn, &named("m1")).unwrap();
    let up = eventually(Duration::from_secs(20), || all_running(&dsn, srvid)).await;
    assert!(
        up,
        "powa-fleet never reported its worker:\n{}",
        daemon.log()
    );
    let listed = |names: &[&str]| -> Vec<(String, String, String)> {
        names
            .iter()
            .map(|name| {
                (
                    format!("Remote collector (powa-fleet {VERSION} @{name})"),
                    "powa".to_string(),
                    "127.0.0.1".to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        remote_collectors(&repo).await,
        listed(&["m1"]),
        "{}",
        daemon.log()
    );

    // A second member of the fleet is a second remote collector, named.
    let mut second = Daemon::start(Path::new(BIN), &dsn, &named("m2")).unwrap();
    let both = eventually(Duration::from_secs(20), || async {
        remote_collectors(&repo).await == listed(&["m1", "m2"])
    })
    .await;
    assert!(
        both,
        "{:?}\n{}",
        remote_collectors(&repo).await,
        second.log()
    );
    second.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(second.wait_exit(Duration::from_secs(15)).is_some());
    let one = eventually(Duration::from_secs(5), || async {
        remote_collectors(&repo).await == listed(&["m1"])
    })
    .await;
    assert!(one, "{:?}", remote_collectors(&repo).await);

    // Once powa-fleet is gone, powa-web must say no collector runs.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(15)).is_some());
    let gone = eventually(Duration::from_secs(5), || async {
        remote_collectors(&repo).await.is_empty()
    })
    .await;
    assert!(gone, "a main-thread session outlived powa-fleet");
}

/// A configuration naming the member.
fn named(name: &str) -> String {
    format!("[member]\nname = \"{name}\"\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn powa_web_finds_the_reference_the_same_way() {
    assert!(
        Reference::available(),
        "the reference collector is needed: apt-get install powa-collector python3-psycopg2"
    );
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(1).unwrap();
    let srvid = fleet.register(0, 5, None).unwrap();
    let dsn = fleet.repository_dsn();
    let repo = fleet.repository.client("powa").await.unwrap();
    let major = powa_major_version(&fleet.repository).unwrap();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reference-releases");
    std::fs::create_dir_all(&cache).unwrap();
    let reference = Reference::start_for_powa(major, &dsn, &cache).unwrap();
    // The reference answers late at times (its main loop sleeps).
    let up = eventually(Duration::from_secs(40), || all_running(&dsn, srvid)).await;
    assert!(
        up,
        "the reference never reported its worker:\n{}",
        reference.log()
    );
    let found = remote_collectors(&repo).await;
    assert_eq!(found.len(), 1, "{found:?}");
    // The same shape as powa-fleet's: `Remote collector (<release>)`.
    let (text, datname, addr) = &found[0];
    assert!(
        text.starts_with("Remote collector (") && text.ends_with(')'),
        "{text}"
    );
    assert_eq!((datname.as_str(), addr.as_str()), ("powa", "127.0.0.1"));
}
