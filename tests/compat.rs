//! The exact client path powa-web uses (a psycopg2 script, LISTEN on a
//! random channel, NOTIFY, wait up to 3 s), run against powa-fleet and
//! against the reference collector on the same kind of fleet: RELOAD and
//! WORKERS_STATUS (the only commands the reference 1.2.0 knows) must give
//! the same answers, so powa-web sees no difference.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use powa_fleet_harness::daemon::{eventually, Daemon};
use powa_fleet_harness::fleet::powa_major_version;
use powa_fleet_harness::reference::Reference;
use powa_fleet_harness::{require_binaries, Fleet};

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");

/// Ask through the powa-web-like script; `None` when no answer came.
fn powa_web(dsn: &str, command: &str, args: &[&str]) -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powa_web_client.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(dsn)
        .arg(command)
        .args(args)
        .output()
        .expect("python3 with psycopg2 (apt-get install python3-psycopg2)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() || out.status.code() == Some(3),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success().then_some(text)
}

enum Collector {
    Ours(Daemon),
    Reference(Reference),
}

impl Collector {
    fn log(&self) -> String {
        match self {
            Collector::Ours(d) => d.log(),
            Collector::Reference(r) => r.log(),
        }
    }
}

/// The same scenario, whichever collector runs it.
async fn scenario(reference: bool) {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = Fleet::start(2).unwrap();
    let first = fleet.register(0, 5, None).unwrap();
    let dsn = fleet.repository_dsn();
    let collector = if reference {
        let major = powa_major_version(&fleet.repository).unwrap();
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reference-releases");
        std::fs::create_dir_all(&cache).unwrap();
        Collector::Reference(Reference::start_for_powa(major, &dsn, &cache).unwrap())
    } else {
        Collector::Ours(Daemon::start(Path::new(BIN), &dsn, "").unwrap())
    };
    let running = format!("WORKERS_STATUS OK {{\"{first}\": \"running\"}}");
    let up = eventually(Duration::from_secs(20), || async {
        powa_web(&dsn, "WORKERS_STATUS", &[]).as_deref() == Some(running.as_str())
    })
    .await;
    assert!(up, "never answered {running}:\n{}", collector.log());

    let second = fleet.register(1, 5, None).unwrap();
    if reference {
        // The reference answers late about one time in four (its main loop
        // sleeps up to 10 s), past powa-web's 3 s: ask again, as a user would.
        let answered = eventually(Duration::from_secs(40), || async {
            powa_web(&dsn, "RELOAD", &[]).as_deref() == Some("RELOAD OK OK")
        })
        .await;
        assert!(answered, "no RELOAD answer:\n{}", collector.log());
    } else {
        assert_eq!(
            powa_web(&dsn, "RELOAD", &[]).as_deref(),
            Some("RELOAD OK OK")
        );
    }
    let both = format!("WORKERS_STATUS OK {{\"{first}\": \"running\", \"{second}\": \"running\"}}");
    let reloaded = eventually(Duration::from_secs(20), || async {
        powa_web(&dsn, "WORKERS_STATUS", &[]).as_deref() == Some(both.as_str())
    })
    .await;
    assert!(reloaded, "never answered {both}:\n{}", collector.log());
    let only = format!("WORKERS_STATUS OK {{\"{second}\": \"running\"}}");
    let patience = Duration::from_secs(if reference { 40 } else { 3 });
    let answered = eventually(patience, || async {
        powa_web(&dsn, "WORKERS_STATUS", &[&second.to_string()]).as_deref() == Some(only.as_str())
    })
    .await;
    assert!(answered, "never answered {only}:\n{}", collector.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn powa_web_client_path_with_powa_fleet() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn powa_web_client_path_with_the_reference_collector() {
    assert!(
        Reference::available(),
        "the reference collector is needed: apt-get install powa-collector python3-psycopg2"
    );
    scenario(true).await;
}
