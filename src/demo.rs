//! `powa-fleet demo`: a throwaway repository and two remote servers with a
//! workload, collected live by a powa-fleet daemon started on them, with a
//! status line per server every few seconds. Ctrl-C stops the daemon and
//! removes every cluster.

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use powa_fleet_sandbox::pgbin::INSTALL_HINT;
use powa_fleet_sandbox::{require_binaries, Fleet};

const FREQUENCY: i32 = 10;

pub fn run() -> ExitCode {
    if let Err(missing) = require_binaries() {
        if !install_packages() {
            eprintln!("powa-fleet demo: {missing}");
            return ExitCode::FAILURE;
        }
    }
    println!("starting a repository and two remote servers...");
    let fleet = match Fleet::start(2) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("powa-fleet demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    for remote in 0..2 {
        let alias = format!("demo-{}", remote + 1);
        if let Err(e) = fleet
            .register(remote, FREQUENCY, Some(&alias))
            .and_then(|_| fleet.workload(remote, 500))
        {
            eprintln!("powa-fleet demo: {e}");
            return ExitCode::FAILURE;
        }
    }
    let log = std::env::temp_dir().join(format!("powa-fleet-demo-{}.log", std::process::id()));
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("powa-fleet demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let child = Command::new(exe)
        .arg("run")
        .arg("--repository-dsn")
        .arg(fleet.repository_dsn())
        .arg("--log-file")
        .arg(&log)
        .env("POWA_FLEET_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("powa-fleet demo: cannot start the collector: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "collector running (pid {}), repository: {}\nlog: {}\nsnapshots every {FREQUENCY}s; Ctrl-C to stop and clean up",
        child.id(),
        fleet.repository_dsn(),
        log.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let repo = match fleet.repository.client("powa").await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("powa-fleet demo: {e}");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("the collector exited ({status}); see {}", log.display());
                break;
            }
            let rows = repo
                .query(
                    "SELECT coalesce(s.alias, s.hostname || ':' || s.port), \
                     CASE WHEN m.snapts = '-infinity' THEN 'never' \
                          ELSE to_char(m.snapts, 'HH24:MI:SS') END, \
                     (SELECT count(*) FROM powa_statements_history_current h WHERE h.srvid = s.id), \
                     coalesce(array_to_string(m.errors, ' | '), '') \
                     FROM powa_servers s JOIN powa_snapshot_metas m ON m.srvid = s.id \
                     WHERE s.id > 0 ORDER BY s.id",
                    &[],
                )
                .await;
            match rows {
                Ok(rows) => {
                    for row in rows {
                        let (name, last, history, errors): (String, String, i64, String) =
                            (row.get(0), row.get(1), row.get(2), row.get(3));
                        println!(
                            "{name:<8} last snapshot {last:<8} statement history rows {history:<6} errors: {}",
                            if errors.is_empty() { "none" } else { &errors }
                        );
                    }
                }
                Err(e) => eprintln!("repository query failed: {e}"),
            }
            // Keep the servers busy so each snapshot has something new.
            for remote in 0..2 {
                let _ = fleet.workload(remote, 50);
            }
        }
    });
    println!("stopping the collector and removing the clusters...");
    // Ctrl-C in a terminal reaches the collector too; a second stop signal
    // would make it exit at once, so only signal it if it is still running
    // after a moment.
    std::thread::sleep(Duration::from_millis(500));
    if matches!(child.try_wait(), Ok(None)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = child.wait();
    drop(fleet);
    ExitCode::SUCCESS
}

/// Install PostgreSQL 15 and PoWA from Debian when we can; say how otherwise.
fn install_packages() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let apt = std::path::Path::new("/usr/bin/apt-get").exists();
    if !(root && apt) {
        eprintln!("PostgreSQL 15 and PoWA are needed; as root, run: {INSTALL_HINT}");
        return false;
    }
    println!("installing PostgreSQL 15 and PoWA: {INSTALL_HINT}");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(INSTALL_HINT)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    ok && require_binaries().is_ok()
}
