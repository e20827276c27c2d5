//! Faults the daemon must survive, or end loudly on: a log sink that fails,
//! a frozen repository, a remote frozen during a reload, stop signals sent
//! twice at once, a password on the command line. Each test measures how
//! long the daemon takes to recover and its peak memory (printed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use powa_fleet_harness::daemon::{eventually, Daemon, Requester};
use powa_fleet_harness::fleet::coalesce_seq;
use powa_fleet_harness::{require_binaries, Fleet};
use tokio_postgres::Client;

mod common;
use common::{
    collecting, collecting_with, collector_sessions, fleet, snapshots_reach, start, workers_status,
    Collecting, BIN, FAST,
};

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    /// The reason when mounting is not allowed (root in a container
    /// without CAP_SYS_ADMIN).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.path().to_path_buf(), dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill what is left of a filesystem with one file.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![b'x'; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_filesystem_drops_lines_and_collection_goes_on() {
    if !is_root() {
        eprintln!("SKIPPED a_full_log_filesystem_drops_lines_and_collection_goes_on: mounting a tmpfs needs root");
        return;
    }
    let fs = match Tmpfs::mount("256k") {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("SKIPPED a_full_log_filesystem_drops_lines_and_collection_goes_on: cannot mount a tmpfs: {e}");
            return;
        }
    };
    let fleet = fleet(1);
    let srvid = fleet.register(0, 5, None).unwrap();
    let log_file = fs.0.join("powa-fleet.log");
    let config = format!(
        "{FAST}[log]\nlevel = \"debug\"\nfile = \"{}\"\n",
        log_file.display()
    );
    let mut daemon = start(&fleet, &config);
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, srvid, 2, Duration::from_secs(20)).await,
        "{}",
        daemon.log()
    );
    // The filesystem is full: once the log file's last page is used up,
    // every line fails with ENOSPC.
    fill(&fs.0.join("filler"));
    let full = eventually(Duration::from_secs(40), || async {
        daemon.log().contains("dropping log lines")
    })
    .await;
    assert!(full, "no line was refused:\n{}", daemon.log());
    let seq = coalesce_seq(&repo, srvid).await;
    let collected = snapshots_reach(&repo, srvid, seq + 2, Duration::from_secs(20)).await;
    let answer = workers_status(&fleet.repository_dsn(), Duration::from_secs(5)).await;
    assert!(daemon.is_alive(), "died:\n{}", daemon.log());
    assert!(collected, "collection stopped with a full log filesystem");
    assert_eq!(
        answer,
        Some(format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}"))
    );
    let stderr = daemon.log();
    assert_eq!(
        stderr.matches("dropping log lines").count(),
        1,
        "said once:\n{stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Space again: lines get through, and stderr says how many were lost.
    let size = std::fs::metadata(&log_file).unwrap().len();
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    let freed = Instant::now();
    let recovered = eventually(Duration::from_secs(15), || async {
        std::fs::metadata(&log_file).unwrap().len() > size
    })
    .await;
    let recovery = freed.elapsed();
    assert!(recovered, "nothing logged after space came back");
    let stderr = daemon.log();
    assert!(stderr.contains("works again"), "{stderr}");
    assert!(
        std::fs::read_to_string(&log_file)
            .unwrap()
            .contains("snapshot"),
        "the log file has lines again"
    );
    let seq = coalesce_seq(&repo, srvid).await;
    assert!(snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(10)).await);
    eprintln!(
        "full log filesystem: logging back {:?} after space was freed; peak RSS {} KiB",
        recovery,
        peak_rss_kib(daemon.pid())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_stop_signals_at_once_are_one_graceful_stop() {
    let Collecting {
        fleet: _fleet,
        mut daemon,
        ..
    } = collecting(1, 5, FAST, Duration::from_secs(20)).await;
    // Without faults: the baseline of the peak memory printed by the others.
    let baseline = peak_rss_kib(daemon.pid());
    // What GNU timeout does: one signal to the process, one to its group.
    let asked = Instant::now();
    daemon.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(5));
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(8)).expect("exits");
    let log = daemon.log();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!log.contains("second stop signal"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    eprintln!(
        "two stop signals 5 ms apart: stopped gracefully in {:?}; peak RSS before the stop {baseline} KiB",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_on_the_command_line_is_refused_before_anything_starts() {
    let fleet = fleet(0);
    let dsn = format!("{} password=Pw-cli-7", fleet.repository_dsn());
    let mut child = Command::new(BIN)
        .args(["--config", "/dev/null", "--repository-dsn", &dsn, "run"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "the daemon runs with a password in /proc/{}/cmdline",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("must not contain a password") && stderr.contains("PGPASSWORD"),
        "{stderr}"
    );
    assert!(!stderr.contains("Pw-cli-7"), "{stderr}");

    // The same DSN without the password, the password in PGPASSWORD: runs.
    let mut daemon = Daemon::start_with_env(
        Path::new(BIN),
        &fleet.repository_dsn(),
        FAST,
        &[("PGPASSWORD", "Pw-cli-7")],
    )
    .unwrap();
    let answer = workers_status(&fleet.repository_dsn(), Duration::from_secs(10)).await;
    assert_eq!(
        answer.as_deref(),
        Some("WORKERS_STATUS OK {}"),
        "{}",
        daemon.log()
    );
    assert!(daemon.is_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_repository_is_reported_and_everything_resumes_after_the_thaw() {
    let fleet = fleet(1);
    let srvid = fleet.register(0, 5, None).unwrap();
    // Every deadline short: connect 2 s, statements 4 s (6 s on our side).
    let config = format!(
        "{FAST}[snapshots]\nmax_concurrent = 1\n[timeouts]\nconnect = 2\nstatement = 4\nremote = 8\n"
    );
    let mut daemon = start(&fleet, &config);
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, srvid, 2, Duration::from_secs(20)).await,
        "{}",
        daemon.log()
    );
    let seq = coalesce_seq(&repo, srvid).await;
    assert!(snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(10)).await);

    // Frozen well past every deadline: the daemon says what is wrong.
    fleet.repository.freeze();
    let frozen = Instant::now();
    let said = eventually(Duration::from_secs(25), || async {
        let log = daemon.log();
        log.contains("no answer within") || log.contains("no repository session free")
    })
    .await;
    let noticed = frozen.elapsed();
    std::thread::sleep(Duration::from_secs(25).saturating_sub(frozen.elapsed()));
    let alive = daemon.is_alive();
    fleet.repository.thaw();
    let thawed = Instant::now();
    assert!(
        alive,
        "died while the repository was frozen:\n{}",
        daemon.log()
    );
    assert!(
        said,
        "nothing said about the frozen repository:\n{}",
        daemon.log()
    );

    // Snapshots and answers resume.
    let repo = fleet.repository.client("powa").await.unwrap();
    let seq = coalesce_seq(&repo, srvid).await;
    let resumed = snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(30)).await;
    let snapshot_back = thawed.elapsed();
    let answer = workers_status(&fleet.repository_dsn(), Duration::from_secs(20)).await;
    let answer_back = thawed.elapsed();
    assert!(resumed, "no snapshot after the thaw:\n{}", daemon.log());
    assert!(
        answer.is_some(),
        "no answer after the thaw:\n{}",
        daemon.log()
    );
    let answer = answer.unwrap();
    assert!(answer.starts_with("WORKERS_STATUS OK "), "{answer}");
    // The wait did not pile up sessions: at most the pool's bound
    // (1 snapshot + 4), the listener and the membership session.
    let sessions = collector_sessions(&repo).await;
    assert!(
        sessions <= 7,
        "{sessions} collector sessions on the repository"
    );
    eprintln!(
        "frozen repository: reported {noticed:?} after the freeze; after the thaw, \
         snapshot {snapshot_back:?}, WORKERS_STATUS answered {answer_back:?}; peak RSS {} KiB",
        peak_rss_kib(daemon.pid())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_first_load_of_the_server_list_is_retried() {
    let fleet = fleet(1);
    let srvid = fleet.register(0, 5, None).unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    // The server list cannot be read at start: the first loads wait on
    // this lock and give up after the 1 s lock timeout.
    repo.batch_execute("BEGIN; LOCK TABLE powa_servers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut daemon = start(&fleet, &format!("{FAST}[timeouts]\nlock = 1\n"));
    let refused = eventually(Duration::from_secs(20), || async {
        daemon
            .log()
            .matches("initial server list not loaded")
            .count()
            >= 2
    })
    .await;
    assert!(refused, "{}", daemon.log());
    repo.batch_execute("COMMIT").await.unwrap();
    let released = Instant::now();
    let collected = snapshots_reach(&repo, srvid, 2, Duration::from_secs(20)).await;
    let recovery = released.elapsed();
    assert!(
        collected,
        "never loaded after the lock went:\n{}",
        daemon.log()
    );
    let answer = workers_status(&fleet.repository_dsn(), Duration::from_secs(5)).await;
    assert_eq!(
        answer,
        Some(format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}"))
    );
    assert!(daemon.is_alive());
    eprintln!(
        "first load failed: collected {recovery:?} after the repository could answer; peak RSS {} KiB",
        peak_rss_kib(daemon.pid())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_frozen_during_a_reload_holds_no_repository_session() {
    use std::net::Ipv4Addr;
    require_binaries().expect("PostgreSQL and PoWA installed");
    // One remote cluster reachable as six hosts: six servers of the
    // fleet, more than the pool's sessions (1 snapshot slot + 4).
    let hosts: Vec<Ipv4Addr> = (1..=6).map(|i| Ipv4Addr::new(127, 61, 7, i)).collect();
    let mut frozen_options = powa_fleet_harness::fleet::remote_options();
    frozen_options.listen_addresses = hosts.clone();
    let fleet = Fleet::start_with(
        powa_fleet_harness::fleet::repository_options(),
        vec![frozen_options, powa_fleet_harness::fleet::remote_options()],
    )
    .expect("fleet starts");
    let port = fleet.remotes[0].port();
    let frozen: Vec<i32> = hosts
        .iter()
        .map(|h| {
            powa_fleet_harness::fleet::register_server(
                &fleet.repository,
                &h.to_string(),
                port,
                10,
                None,
            )
            .unwrap()
        })
        .collect();
    let healthy = fleet.register(1, 5, None).unwrap();
    // A snapshot of a frozen server may hold the one slot until its
    // remote silence limit (3 s): the healthy server's rhythm allows that;
    // a bookkeeping holding repository sessions would stall it for good.
    let config =
        format!("{FAST}[snapshots]\nmax_concurrent = 1\n[timeouts]\nconnect = 2\nremote = 3\n");
    let daemon = start(&fleet, &config);
    let repo = fleet.repository.client("powa").await.unwrap();
    let all_running = eventually(Duration::from_secs(30), || async {
        workers_status(&fleet.repository_dsn(), Duration::from_secs(3))
            .await
            .is_some_and(|a| a.matches("\"running\"").count() == 7)
    })
    .await;
    assert!(all_running, "{}", daemon.log());

    // Frozen, then a reload: six bookkeepings ask a server that is silent.
    fleet.remotes[0].freeze();
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let answer = client.ask("RELOAD", "", Duration::from_secs(10)).await;
    let reloaded = Instant::now();
    let seq = coalesce_seq(&repo, healthy).await;
    // The healthy server keeps its 5 s rhythm meanwhile.
    let kept = snapshots_reach(&repo, healthy, seq + 3, Duration::from_secs(20)).await;
    let rhythm = reloaded.elapsed();
    fleet.remotes[0].thaw();
    let thawed = Instant::now();
    assert_eq!(answer.as_deref(), Some("RELOAD OK OK"));
    assert!(
        kept,
        "the healthy server lost its rhythm while a frozen remote's bookkeeping ran:\n{}",
        daemon.log()
    );

    // After the thaw, the six servers are collected again.
    let before: Vec<i64> = {
        let mut v = Vec::new();
        for srvid in &frozen {
            v.push(coalesce_seq(&repo, *srvid).await);
        }
        v
    };
    let resumed = eventually(Duration::from_secs(60), || async {
        let mut all = true;
        for (srvid, seq) in frozen.iter().zip(&before) {
            all &= coalesce_seq(&repo, *srvid).await > *seq;
        }
        all
    })
    .await;
    assert!(resumed, "not collected after the thaw:\n{}", daemon.log());
    eprintln!(
        "remote frozen during a reload: healthy server's 3 snapshots in {rhythm:?}; \
         the six frozen ones collected again {:?} after the thaw; peak RSS {} KiB",
        thawed.elapsed(),
        peak_rss_kib(daemon.pid())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_cut_off_after_it_went_through_is_not_called_aborted() {
    let Collecting {
        fleet,
        srvid,
        mut daemon,
        repo,
    } = collecting(1, 5, FAST, Duration::from_secs(20)).await;

    // A synchronous standby that never comes: a COMMIT is written locally,
    // then waits. Terminating the session then is what a lost connection
    // at COMMIT looks like to the collector: the snapshot committed, the
    // answer never came.
    repo.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        .await
        .unwrap();
    repo.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let before = coalesce_seq(&repo, srvid).await;
    let cut = eventually(Duration::from_secs(20), || async {
        let terminated: i64 = repo
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE wait_event = 'SyncRep' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        terminated > 0
    })
    .await;
    repo.batch_execute("ALTER SYSTEM RESET synchronous_standby_names")
        .await
        .unwrap();
    repo.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let cut_at = Instant::now();
    assert!(cut, "no COMMIT waited:\n{}", daemon.log());

    let settled = eventually(Duration::from_secs(15), || async {
        daemon.log().contains("the snapshot is in the repository")
    })
    .await;
    let settle_time = cut_at.elapsed();
    assert!(settled, "{}", daemon.log());
    assert_eq!(coalesce_seq(&repo, srvid).await, before + 1, "it committed");
    let errors = powa_fleet_harness::fleet::stored_errors(&repo, srvid)
        .await
        .unwrap_or_default();
    assert!(
        !errors
            .iter()
            .any(|e| e.contains("aborted") || e.contains("unknown")),
        "a committed snapshot recorded as lost: {errors:?}"
    );
    // The rhythm goes on, and the worker is healthy.
    assert!(snapshots_reach(&repo, srvid, before + 2, Duration::from_secs(15)).await);
    let answer = workers_status(&fleet.repository_dsn(), Duration::from_secs(5)).await;
    assert_eq!(
        answer,
        Some(format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}"))
    );
    assert!(daemon.is_alive());
    eprintln!(
        "COMMIT cut off: settled as committed {settle_time:?} after the cut; peak RSS {} KiB",
        peak_rss_kib(daemon.pid())
    );
}

/// Terminate the daemon's LISTEN session on the repository.
async fn terminate_listener(repo: &Client) -> i64 {
    repo.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name LIKE 'PoWA collector - main thread (powa-fleet %'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_in_flight_at_a_listener_restart_leak_no_slot() {
    let Collecting {
        fleet,
        daemon,
        repo,
        ..
    } = collecting(
        1,
        5,
        &format!("{FAST}[timeouts]\nlock = 60\n"),
        Duration::from_secs(20),
    )
    .await;
    // Reloads wait on this lock: 300 RELOADs stay in flight.
    let locker = fleet.repository.client("powa").await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE powa_servers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let channel = Requester::new_channel();
    for _ in 0..300 {
        client.notify(&format!("RELOAD {channel}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The repository drops the LISTEN session while they wait.
    assert_eq!(terminate_listener(&repo).await, 1);
    let cut = Instant::now();
    locker.batch_execute("COMMIT").await.unwrap();
    // Back, and not refusing everything as "too many requests".
    let answered = eventually(Duration::from_secs(20), || async {
        let answer = workers_status(&fleet.repository_dsn(), Duration::from_secs(2)).await;
        answer.is_some_and(|a| a.starts_with("WORKERS_STATUS OK"))
    })
    .await;
    let recovery = cut.elapsed();
    assert!(answered, "{}", daemon.log());
    eprintln!(
        "listener restarted with 300 requests in flight: answering {recovery:?} after the cut; peak RSS {} KiB",
        peak_rss_kib(daemon.pid())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_payloads_from_a_role_without_permission_get_no_answer() {
    let fleet = fleet(1);
    let srvid = fleet.register(0, 5, None).unwrap();
    fleet
        .repository
        .psql("powa", "CREATE ROLE nobody LOGIN")
        .unwrap();
    let mut daemon = start(&fleet, FAST);
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(snapshots_reach(&repo, srvid, 2, Duration::from_secs(20)).await);
    let dsn = fleet
        .repository_dsn()
        .replace("user=postgres", "user=nobody");
    let mut nobody = Requester::connect(&dsn).await.unwrap();
    let channel = Requester::new_channel();
    nobody.listen(&channel).await.unwrap();
    let seq = coalesce_seq(&repo, srvid).await;
    let flood = Instant::now();
    // Thousands of payloads that each ask for an answer on its channel.
    for i in 0..3000 {
        let payload = match i % 3 {
            0 => format!("NO_SUCH_COMMAND {channel}"),
            1 => format!("WORKERS_STATUS {channel} not-a-srvid"),
            _ => format!("FORCE_SNAPSHOT {channel}"),
        };
        nobody.notify(&payload).await.unwrap();
    }
    // A privileged client is answered meanwhile, within 3 s.
    let mut admin = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let asked = Instant::now();
    let answer = admin
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await;
    let latency = asked.elapsed();
    assert_eq!(
        answer,
        Some(format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}")),
        "{}",
        daemon.log()
    );
    let sent = nobody.next_on(&channel, Duration::from_secs(3)).await;
    assert_eq!(sent, None, "answered a role without permission");
    assert!(
        snapshots_reach(&repo, srvid, seq + 2, Duration::from_secs(15)).await,
        "snapshots fell behind during the flood"
    );
    assert!(daemon.is_alive());
    eprintln!(
        "3000 malformed NOTIFYs without permission: flood sent in {:?}, WORKERS_STATUS in {latency:?}; peak RSS {} KiB",
        asked.duration_since(flood),
        peak_rss_kib(daemon.pid())
    );
}

/// The daemon with handlers that panic (`kind:handler[*N]`, see
/// `powa_fleet_actors::fault::PANIC_IN_ENV`).
#[cfg(feature = "fault-injection")]
fn start_panicking(fleet: &Fleet, extra: &str, handlers: &str) -> Daemon {
    Daemon::start_with_env(
        Path::new(BIN),
        &fleet.repository_dsn(),
        extra,
        // Backtraces would make the peak memory that of their symbolication.
        &[
            (powa_fleet_actors::fault::PANIC_IN_ENV, handlers),
            ("RUST_BACKTRACE", "0"),
        ],
    )
    .expect("daemon starts")
}

/// The time between the first log line containing `from` and the first
/// later one containing `to`, from the daemon's own timestamps
/// (`Mon DD HH:MM:SS.mmm` at the start of each line).
#[cfg(feature = "fault-injection")]
fn log_gap(log: &str, from: &str, to: &str) -> Option<Duration> {
    let at = |line: &str| -> Option<f64> {
        let clock = line.split_whitespace().nth(2)?;
        let mut parts = clock.split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let mut lines = log.lines();
    let start = lines.by_ref().find(|l| l.contains(from)).and_then(at)?;
    let end = lines.find(|l| l.contains(to)).and_then(at)?;
    Some(Duration::from_secs_f64((end - start).max(0.0)))
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_the_supervisor_restarts_it_in_place_and_collection_goes_on() {
    let Collecting {
        fleet,
        srvid,
        mut daemon,
        repo,
    } = collecting_with(1, 5, Duration::from_secs(20), |fleet| {
        start_panicking(fleet, FAST, "supervisor:reload")
    })
    .await;
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let panicked = Instant::now();
    let answer = client.ask("RELOAD", "", Duration::from_secs(5)).await;
    let seq = coalesce_seq(&repo, srvid).await;
    let collected = snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(15)).await;
    let collecting_back = panicked.elapsed();
    let status = workers_status(&fleet.repository_dsn(), Duration::from_secs(10)).await;
    let log = daemon.log();
    assert!(
        collected,
        "no snapshot after the supervisor panicked:\n{log}"
    );
    assert_eq!(
        status,
        Some(format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}"))
    );
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("RELOAD ERROR")),
        "{answer:?}\n{log}"
    );
    assert!(
        log.contains("injected fault in the supervisor's reload handler"),
        "{log}"
    );
    assert!(
        log.contains("panic in a handler, restarting in place"),
        "{log}"
    );
    // Restarted through the start-up path: the server list read again.
    let after = &log[log.find("supervisor restarted").expect("restart logged")..];
    assert!(after.contains("fleet reloaded"), "{log}");
    // And it still does its job.
    let answer = client.ask("RELOAD", "", Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some("RELOAD OK OK"), "{}", daemon.log());
    assert!(daemon.is_alive());
    let reloaded = log_gap(&log, "panic in a handler", "fleet reloaded");
    eprintln!(
        "supervisor panic: server list loaded again {reloaded:?} after it, next snapshot \
         {collecting_back:?} after it (5 s rhythm); peak RSS {} KiB",
        peak_rss_kib(daemon.pid())
    );
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_the_listener_restarts_it_and_it_listens_again() {
    let Collecting {
        fleet,
        srvid,
        mut daemon,
        repo,
    } = collecting_with(1, 5, Duration::from_secs(20), |fleet| {
        start_panicking(fleet, FAST, "listener:workers_status")
    })
    .await;
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let panicked = Instant::now();
    let lost = client
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await;
    assert_eq!(lost, None, "the panicking request is not answered");
    let answer = workers_status(&fleet.repository_dsn(), Duration::from_secs(20)).await;
    let answering_back = panicked.elapsed();
    let log = daemon.log();
    assert_eq!(
        answer,
        Some(format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}")),
        "{log}"
    );
    assert!(log.contains("listener restarted after a panic"), "{log}");
    assert!(
        log.matches("listening for commands").count() >= 2,
        "LISTEN again:\n{log}"
    );
    let seq = coalesce_seq(&repo, srvid).await;
    assert!(snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(10)).await);
    assert!(daemon.is_alive());
    let listening = log_gap(&log, "panic in a handler", "listening for commands");
    eprintln!(
        "listener panic: listening again {listening:?} after it; answered {answering_back:?} \
         after it (3 s of it waiting for the lost answer); peak RSS {} KiB",
        peak_rss_kib(daemon.pid())
    );
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_the_status_actor_restarts_it_with_fresh_reports() {
    let fleet = fleet(2);
    let busy = fleet.register(0, 5, None).unwrap();
    // Reports nothing between its rare snapshots: only a fresh report
    // asked after the restart puts it back in the answer.
    let quiet = fleet.register(1, 3600, None).unwrap();
    let mut daemon = start_panicking(&fleet, FAST, "status:workers_status");
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, busy, 2, Duration::from_secs(20)).await,
        "{}",
        daemon.log()
    );
    let both = format!("WORKERS_STATUS OK {{\"{busy}\": \"running\", \"{quiet}\": \"running\"}}");
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let panicked = Instant::now();
    let refused = client
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await;
    assert!(
        refused
            .as_deref()
            .is_some_and(|a| a.starts_with("WORKERS_STATUS ERROR")),
        "{refused:?}"
    );
    let back = eventually(Duration::from_secs(10), || async {
        workers_status(&fleet.repository_dsn(), Duration::from_secs(2)).await == Some(both.clone())
    })
    .await;
    let answering_back = panicked.elapsed();
    let log = daemon.log();
    assert!(back, "{log}");
    assert!(
        log.contains("injected fault in the status's workers_status handler"),
        "{log}"
    );
    let seq = coalesce_seq(&repo, busy).await;
    assert!(snapshots_reach(&repo, busy, seq + 1, Duration::from_secs(10)).await);
    assert!(daemon.is_alive());
    eprintln!(
        "status actor panic: every worker reported again {answering_back:?} after it; peak RSS {} KiB",
        peak_rss_kib(daemon.pid())
    );
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_a_snapshot_actors_handler_restarts_it_alone() {
    let fleet = fleet(2);
    let first = fleet.register(0, 5, None).unwrap();
    let second = fleet.register(1, 5, None).unwrap();
    // The first Due of whichever actor gets there first.
    let started = Instant::now();
    let mut daemon = start_panicking(&fleet, FAST, "snapshot:due");
    let repo = fleet.repository.client("powa").await.unwrap();
    let panicked = eventually(Duration::from_secs(20), || async {
        daemon
            .log()
            .contains("injected fault in the snapshot's due handler")
    })
    .await;
    assert!(panicked, "{}", daemon.log());
    let both = eventually(Duration::from_secs(30), || async {
        coalesce_seq(&repo, first).await >= 2 && coalesce_seq(&repo, second).await >= 2
    })
    .await;
    let collecting = started.elapsed();
    let log = daemon.log();
    assert!(both, "a server was never collected after the panic:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("panic in a handler, restarting in place")
                && l.contains("actor: snapshot actor")),
        "{log}"
    );
    let answer = workers_status(&fleet.repository_dsn(), Duration::from_secs(10)).await;
    let answer = answer.unwrap();
    assert!(
        answer.contains(&format!("\"{first}\": ")) && answer.contains(&format!("\"{second}\": ")),
        "{answer}"
    );
    // Healthy again at the next snapshot that succeeds.
    let healthy = eventually(Duration::from_secs(15), || async {
        workers_status(&fleet.repository_dsn(), Duration::from_secs(2)).await
            == Some(format!(
                "WORKERS_STATUS OK {{\"{first}\": \"running\", \"{second}\": \"running\"}}"
            ))
    })
    .await;
    assert!(healthy, "{}", daemon.log());
    assert!(daemon.is_alive());
    let reconnected = log_gap(&log, "panic in a handler", "connected");
    eprintln!(
        "snapshot actor handler panic: reconnected {reconnected:?} after it (backoff 0.2 s); \
         both servers collected {collecting:?} after the start; peak RSS {} KiB",
        peak_rss_kib(daemon.pid())
    );
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn an_actor_that_keeps_panicking_ends_the_process_with_the_reason() {
    let fleet = fleet(1);
    fleet.register(0, 5, None).unwrap();
    // Every report panics: each restart asks for fresh reports, which panic.
    let started = Instant::now();
    let mut daemon = start_panicking(&fleet, FAST, "status:report*1000");
    let status = daemon.wait_exit(Duration::from_secs(20));
    let ended = started.elapsed();
    let log = daemon.log();
    let status = status.unwrap_or_else(|| panic!("still running:\n{log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("ending the process"), "{log}");
    assert!(
        log.contains("the status actor panicked 5 times within 60s")
            && log.contains("last panic: injected fault in the status's report handler"),
        "{log}"
    );
    eprintln!("status actor panicking in a loop: process ended {ended:?} after the start (exit 1)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_due_during_a_reloads_bookkeeping_is_taken_when_it_ends() {
    let fleet = fleet(1);
    let srvid = fleet.register(0, 10, None).unwrap();
    // The bookkeeping may wait 25 s on a silent remote.
    let mut daemon = start(&fleet, &format!("{FAST}[timeouts]\nremote = 25\n"));
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, srvid, 2, Duration::from_secs(30)).await,
        "{}",
        daemon.log()
    );
    // Right after a snapshot: the next one is due in about 10 s.
    let seq = coalesce_seq(&repo, srvid).await;
    assert!(snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(15)).await);
    fleet.remotes[0].freeze();
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let answer = client.ask("RELOAD", "", Duration::from_secs(5)).await;
    // Past the due time, before the silence limit.
    tokio::time::sleep(Duration::from_secs(14)).await;
    fleet.remotes[0].thaw();
    let thawed = Instant::now();
    assert_eq!(answer.as_deref(), Some("RELOAD OK OK"), "{}", daemon.log());
    let resumed = snapshots_reach(&repo, srvid, seq + 2, Duration::from_secs(10)).await;
    let resumed_after = thawed.elapsed();
    assert!(
        resumed,
        "the snapshot due during the bookkeeping was never taken:\n{}",
        daemon.log()
    );
    // And the rhythm goes on.
    assert!(snapshots_reach(&repo, srvid, seq + 3, Duration::from_secs(15)).await);
    assert!(daemon.is_alive());
    eprintln!(
        "snapshot due during a frozen remote's bookkeeping: taken {resumed_after:?} after the thaw; peak RSS {} KiB",
        peak_rss_kib(daemon.pid())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_attempt_failing_during_shutdown_ends_it_at_once() {
    let fleet = fleet(1);
    fleet.register(0, 5, None).unwrap();
    // Each attempt on the frozen remote fails after at most 4 s; the
    // grace period is far longer.
    fleet.remotes[0].freeze();
    let config = "[restart]\nbackoff_min = 0.2\nbackoff_max = 1\n[shutdown]\ngrace = 20\n\
                  [timeouts]\nconnect = 2\nstatement = 2\n";
    let mut daemon = start(&fleet, config);
    let connecting = eventually(Duration::from_secs(15), || async {
        daemon.log().contains("fleet reloaded")
    })
    .await;
    assert!(connecting, "{}", daemon.log());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(30));
    let took = asked.elapsed();
    fleet.remotes[0].thaw();
    let log = daemon.log();
    let status = status.unwrap_or_else(|| panic!("still running:\n{log}"));
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        took < Duration::from_secs(8),
        "the stop waited {took:?} for an attempt that had failed:\n{log}"
    );
    eprintln!(
        "stop during a failing connection attempt: exited {took:?} after SIGTERM (grace 20 s)"
    );
}
