//! What the daemon's integration tests share: the binary under test, the
//! fleet and daemon set-up, and the waits on the repository. Each test
//! file uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use powa_fleet_harness::daemon::{eventually, Daemon, Requester};
use powa_fleet_harness::fleet::coalesce_seq;
use powa_fleet_harness::{require_binaries, Fleet};
use tokio_postgres::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");

/// Short backoffs and grace so failures and stops show quickly.
pub const FAST: &str = "[restart]\nbackoff_min = 0.2\nbackoff_max = 2\n[shutdown]\ngrace = 3\n";

/// A repository and `remotes` remote clusters.
pub fn fleet(remotes: usize) -> Fleet {
    require_binaries().expect("PostgreSQL and PoWA installed");
    Fleet::start(remotes).expect("fleet starts")
}

/// The daemon on `fleet`'s repository, with `extra` as its configuration.
pub fn start(fleet: &Fleet, extra: &str) -> Daemon {
    Daemon::start(Path::new(BIN), &fleet.repository_dsn(), extra).expect("daemon starts")
}

/// Whether server `srvid` reaches snapshot `seq` within `timeout`.
pub async fn snapshots_reach(repo: &Client, srvid: i32, seq: i64, timeout: Duration) -> bool {
    eventually(timeout, || async { coalesce_seq(repo, srvid).await >= seq }).await
}

/// One server (on the first remote, every `frequency` s) that a daemon
/// has snapshotted twice: the start of most tests. Fields drop in order,
/// the daemon before the clusters it uses. Bind `fleet` (as `_fleet` if
/// unused): a field a pattern leaves out is dropped at once.
pub struct Collecting {
    pub repo: Client,
    pub daemon: Daemon,
    pub srvid: i32,
    pub fleet: Fleet,
}

/// A fleet of `remotes` clusters, its first server registered at
/// `frequency` and collected by a daemon started with `config`; panics
/// (with the daemon's log) unless two snapshots land within `within`.
pub async fn collecting(
    remotes: usize,
    frequency: i32,
    config: &str,
    within: Duration,
) -> Collecting {
    collecting_with(remotes, frequency, within, |fleet| start(fleet, config)).await
}

/// [`collecting`], the daemon started by `start`.
pub async fn collecting_with(
    remotes: usize,
    frequency: i32,
    within: Duration,
    start: impl FnOnce(&Fleet) -> Daemon,
) -> Collecting {
    let fleet = fleet(remotes);
    let srvid = fleet.register(0, frequency, None).unwrap();
    let daemon = start(&fleet);
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, srvid, 2, within).await,
        "no two snapshots within {within:?}:\n{}",
        daemon.log()
    );
    Collecting {
        repo,
        daemon,
        srvid,
        fleet,
    }
}

/// WORKERS_STATUS asked once, answered within `timeout`.
pub async fn ask_workers_status(dsn: &str, timeout: Duration) -> Option<String> {
    let mut client = Requester::connect(dsn).await.unwrap();
    client.ask("WORKERS_STATUS", "", timeout).await
}

/// WORKERS_STATUS answered within `timeout`, asked again from new sessions
/// until then (the listener may be restarting).
pub async fn workers_status(dsn: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut c) = Requester::connect(dsn).await {
            if let Some(answer) = c.ask("WORKERS_STATUS", "", Duration::from_secs(2)).await {
                return Some(answer);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The daemon's sessions on a cluster, by their application name.
pub async fn collector_sessions(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%powa-fleet%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}
