//! The daemon as a DBA runs it: a real repository and remote servers, the
//! powa-fleet binary, commands sent through NOTIFY the way powa-web sends
//! them, signals, and what ends up in the repository.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use powa_fleet_harness::daemon::{eventually, Daemon, Requester};
use powa_fleet_harness::fleet::{coalesce_seq, powa_major_version, stored_errors};
use powa_fleet_harness::{require_binaries, Fleet};
use tokio_postgres::Client;

mod common;
use common::{
    ask_workers_status as workers_status, collecting, collector_sessions, fleet, snapshots_reach,
    start, Collecting, BIN, FAST,
};

/// No collector session on any cluster of the fleet (within 3 s).
async fn assert_no_session_left(fleet: &Fleet) {
    for cluster in std::iter::once(&fleet.repository).chain(&fleet.remotes) {
        let c = cluster.client("powa").await.unwrap();
        let gone = eventually(Duration::from_secs(3), || async {
            collector_sessions(&c).await == 0
        })
        .await;
        assert!(gone, "sessions left on {}", cluster.port());
    }
}

/// A collector session waiting on a lock (within 20 s): a snapshot held by
/// a test's lock on a staging table.
async fn a_snapshot_waits_on_a_lock(client: &Client) -> bool {
    eventually(Duration::from_secs(20), || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name LIKE '%powa-fleet%' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n > 0
    })
    .await
}

/// WORKERS_STATUS answered within `timeout`, asking again from a new
/// session while the repository or the daemon's LISTEN is still coming back.
async fn answers_again(dsn: &str, timeout: Duration) -> bool {
    eventually(timeout, || async {
        match Requester::connect(dsn).await {
            Ok(mut c) => c
                .ask("WORKERS_STATUS", "", Duration::from_secs(1))
                .await
                .is_some(),
            Err(_) => false,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn collects_reloads_stops_servers_and_exits_cleanly() {
    let fleet = fleet(2);
    let first = fleet.register(0, 5, None).unwrap();
    fleet.workload(0, 200).unwrap();
    let mut daemon = start(&fleet, FAST);
    let repo = fleet.repository.client("powa").await.unwrap();
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();

    assert!(
        snapshots_reach(&repo, first, 2, Duration::from_secs(20)).await,
        "first snapshot never came:\n{}",
        daemon.log()
    );
    let answer = client
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await
        .unwrap_or_else(|| panic!("no answer:\n{}", daemon.log()));
    assert_eq!(
        answer,
        format!("WORKERS_STATUS OK {{\"{first}\": \"running\"}}")
    );

    // A server registered later is collected after RELOAD.
    let second = fleet.register(1, 5, Some("second")).unwrap();
    let answer = client.ask("RELOAD", "", Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some("RELOAD OK OK"));
    assert!(
        snapshots_reach(&repo, second, 2, Duration::from_secs(20)).await,
        "second server never snapshotted:\n{}",
        daemon.log()
    );
    let answer = client
        .ask(
            "WORKERS_STATUS",
            &second.to_string(),
            Duration::from_secs(3),
        )
        .await;
    assert_eq!(
        answer,
        Some(format!("WORKERS_STATUS OK {{\"{second}\": \"running\"}}"))
    );

    // Deactivated and reloaded: its actor is gone, no more snapshots.
    repo.execute("SELECT powa_deactivate_server($1)", &[&first])
        .await
        .unwrap();
    daemon.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || async {
            workers_status(&fleet.repository_dsn(), Duration::from_secs(3))
                .await
                .is_some_and(|answer| !answer.contains(&format!("\"{first}\"")))
        })
        .await,
        "deactivated server still listed:\n{}",
        daemon.log()
    );
    let frozen = coalesce_seq(&repo, first).await;
    let still_going = coalesce_seq(&repo, second).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        coalesce_seq(&repo, first).await,
        frozen,
        "deactivated server snapshotted"
    );
    assert!(
        coalesce_seq(&repo, second).await > still_going,
        "active server stopped"
    );

    // SIGTERM: exit 0 within the grace period, no session left anywhere.
    daemon.signal(Signal::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(6))
        .expect("exits in time");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert_no_session_left(&fleet).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_commands_get_answers_and_change_nothing() {
    // 30 s, well above the 10 s a forced snapshot needs since the last one,
    // so that FORCE_SNAPSHOT can be accepted between two scheduled ones.
    let Collecting {
        fleet,
        srvid,
        mut daemon,
        repo,
    } = collecting(1, 30, FAST, Duration::from_secs(40)).await;
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let t = Duration::from_secs(3);

    let answer = client.ask("WORKERS_STATUS", "abc", t).await.unwrap();
    assert!(answer.starts_with("WORKERS_STATUS ERROR "), "{answer}");
    let answer = client.ask("WORKERS_STATUS", "-1", t).await.unwrap();
    assert!(answer.starts_with("WORKERS_STATUS ERROR "), "{answer}");
    let answer = client.ask("WORKERS_STATUS", "999", t).await.unwrap();
    assert_eq!(answer, "WORKERS_STATUS OK {}");
    let answer = client.ask("FOO", "", t).await.unwrap();
    assert!(answer.starts_with("FOO UNKNOWN"), "{answer}");
    let answer = client.ask("FORCE_SNAPSHOT", "999", t).await.unwrap();
    assert!(answer.starts_with("FORCE_SNAPSHOT ERROR "), "{answer}");
    let answer = client.ask("FORCE_SNAPSHOT", "", t).await.unwrap();
    assert!(answer.starts_with("FORCE_SNAPSHOT ERROR "), "{answer}");

    // Channels the reference choked on: quotes, braces; SQL in the payload.
    for channel in ["we\"ird", "{x}", "a'b"] {
        client.listen(channel).await.unwrap();
        client
            .notify(&format!("WORKERS_STATUS {channel}"))
            .await
            .unwrap();
        let answer = client.next_on(channel, t).await;
        assert_eq!(
            answer,
            Some(format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}")),
            "channel {channel}"
        );
    }
    client
        .notify("RELOAD x'; CREATE TABLE injected(); --")
        .await
        .unwrap();
    // Empty, channel-less and oversized payloads: no answer possible.
    client.notify("").await.unwrap();
    client.notify("RELOAD").await.unwrap();
    client
        .notify(&format!("WORKERS_STATUS {}", "c".repeat(7900)))
        .await
        .unwrap();

    // A burst: every request answered.
    let channel = Requester::new_channel();
    client.listen(&channel).await.unwrap();
    for _ in 0..100 {
        client
            .notify(&format!("WORKERS_STATUS {channel}"))
            .await
            .unwrap();
    }
    let mut answered = 0;
    while client.next_on(&channel, t).await.is_some() {
        answered += 1;
        if answered == 100 {
            break;
        }
    }
    assert_eq!(answered, 100);

    // Forced snapshot: with the last one over 10 s old and the next one
    // 30 s after it, accepted and started at once (a free slot), then
    // refused while it runs or because it is too recent.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = coalesce_seq(&repo, srvid).await;
    let answer = client
        .ask("FORCE_SNAPSHOT", &srvid.to_string(), t)
        .await
        .unwrap();
    assert_eq!(answer, "FORCE_SNAPSHOT OK Snapshot in progress");
    let answer = client
        .ask("FORCE_SNAPSHOT", &srvid.to_string(), t)
        .await
        .unwrap();
    assert!(
        answer == "FORCE_SNAPSHOT ERROR A snapshot is already in progress"
            || answer == "FORCE_SNAPSHOT ERROR Last snapshot is less than 10 seconds old",
        "{answer}"
    );
    assert!(
        snapshots_reach(&repo, srvid, before + 1, Duration::from_secs(5)).await,
        "the forced snapshot was not taken:\n{}",
        daemon.log()
    );

    let injected: i64 = repo
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'injected'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(injected, 0);
    assert!(daemon.is_alive(), "{}", daemon.log());
    let seq = coalesce_seq(&repo, srvid).await;
    assert!(snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(35)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_without_permission_is_refused() {
    let fleet = fleet(1);
    let srvid = fleet.register(0, 5, None).unwrap();
    fleet
        .repository
        .psql("powa", "CREATE ROLE nobody LOGIN")
        .unwrap();
    let daemon = start(&fleet, FAST);
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(snapshots_reach(&repo, srvid, 2, Duration::from_secs(20)).await);

    let dsn = fleet
        .repository_dsn()
        .replace("user=postgres", "user=nobody");
    let mut nobody = Requester::connect(&dsn).await.unwrap();
    let t = Duration::from_secs(3);
    for (command, args) in [
        ("WORKERS_STATUS", ""),
        ("RELOAD", ""),
        ("FORCE_SNAPSHOT", "1"),
    ] {
        let answer = nobody.ask(command, args, t).await;
        assert_eq!(answer, Some(format!("{command} ERROR Permission denied")));
    }
    fleet
        .repository
        .psql("powa", "GRANT pg_signal_backend TO nobody")
        .unwrap();
    let answer = nobody.ask("WORKERS_STATUS", "", t).await.unwrap();
    assert!(answer.starts_with("WORKERS_STATUS OK"), "{answer}");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread")]
async fn survives_a_repository_restart() {
    let fleet = fleet(1);
    let srvid = fleet.register(0, 5, None).unwrap();
    let mut daemon = start(&fleet, FAST);
    {
        let repo = fleet.repository.client("powa").await.unwrap();
        assert!(snapshots_reach(&repo, srvid, 2, Duration::from_secs(20)).await);
    }
    fleet.repository.stop_immediate().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.repository.start_again().unwrap();

    let answered = answers_again(&fleet.repository_dsn(), Duration::from_secs(20)).await;
    assert!(answered, "no answer after the restart:\n{}", daemon.log());
    let repo = fleet.repository.client("powa").await.unwrap();
    let seq = coalesce_seq(&repo, srvid).await;
    assert!(
        snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(20)).await,
        "snapshots did not resume:\n{}",
        daemon.log()
    );
    assert!(daemon.is_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_reported_without_its_password() {
    let fleet = fleet(1);
    let good = fleet.register(0, 5, None).unwrap();
    let password = "Pw-never-in-logs-4711";
    fleet
        .repository
        .psql(
            "powa",
            &format!(
                "SELECT powa_register_server(hostname => '127.0.0.1', port => 1, \
                 username => 'powa', password => '{password}', frequency => 5)"
            ),
        )
        .unwrap();
    let bad: i32 = fleet
        .repository
        .psql("powa", "SELECT id FROM powa_servers WHERE port = 1")
        .unwrap()
        .parse()
        .unwrap();
    let mut daemon = start(&fleet, FAST);
    let repo = fleet.repository.client("powa").await.unwrap();

    let recorded = eventually(Duration::from_secs(15), || async {
        let errors = stored_errors(&repo, bad).await;
        errors.is_some_and(|e| e.iter().any(|m| m.contains("could not connect")))
    })
    .await;
    assert!(recorded, "error not recorded:\n{}", daemon.log());
    // The good server may still be starting on a loaded machine.
    let good_running = format!("\"{good}\": \"running\"");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        let status = workers_status(&fleet.repository_dsn(), Duration::from_secs(3))
            .await
            .unwrap_or_default();
        if status.contains(&good_running) || tokio::time::Instant::now() >= deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.contains(&good_running), "{status}");
    assert!(
        status.contains(&format!("\"{bad}\": \"no connection to remote server\"")),
        "{status}"
    );
    // The good server keeps its rhythm meanwhile.
    assert!(snapshots_reach(&repo, good, 3, Duration::from_secs(20)).await);

    let errors: String = repo
        .query_one(
            "SELECT coalesce(array_to_string(errors, ' '), '') FROM powa_snapshot_metas WHERE srvid = $1",
            &[&bad],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!errors.contains(password), "{errors}");
    assert!(!status.contains(password));
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(6));
    let log = daemon.log();
    assert!(log.contains("could not connect"), "{log}");
    assert!(!log.contains(password), "password in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_start_on_an_unusable_repository() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    // Nothing listens on port 1.
    let mut daemon = Daemon::start(
        Path::new(BIN),
        "host=127.0.0.1 port=1 dbname=powa user=powa password=Pw-start-9",
        "[timeouts]\nconnect = 2\n",
    )
    .unwrap();
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1));
    let log = daemon.log();
    assert!(
        log.contains("cannot start") && log.contains("127.0.0.1:1"),
        "{log}"
    );
    assert!(!log.contains("Pw-start-9"), "{log}");

    // PoWA older than 4.1.
    let repository =
        powa_fleet_harness::Cluster::start(powa_fleet_harness::fleet::repository_options())
            .unwrap();
    repository.psql("postgres", "CREATE DATABASE powa").unwrap();
    repository
        .psql(
            "powa",
            // Whatever PoWA the tree has, the catalog says 4.0.1.
            "CREATE EXTENSION pg_stat_statements; CREATE EXTENSION btree_gist; \
             CREATE EXTENSION powa; \
             UPDATE pg_extension SET extversion = '4.0.1' WHERE extname = 'powa'",
        )
        .unwrap();
    let mut daemon = Daemon::start(Path::new(BIN), &repository.dsn("powa"), "").unwrap();
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(daemon.log().contains("4.0.1"), "{}", daemon.log());

    // No collector runs there now: the client says so, exit code 3.
    let out = std::process::Command::new(BIN)
        .args([
            "--config",
            "/dev/null",
            "--repository-dsn",
            &repository.dsn("powa"),
        ])
        .args(["status", "--timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no collector answered"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_server_is_detected_and_the_others_keep_their_rhythm() {
    let fleet = fleet(2);
    let frozen = fleet.register(0, 5, None).unwrap();
    let healthy = fleet.register(1, 5, None).unwrap();
    // One snapshot slot for the whole fleet: a frozen server must not hold
    // it while the daemon waits for it to answer.
    let config =
        format!("{FAST}[snapshots]\nmax_concurrent = 1\n[timeouts]\nconnect = 2\nremote = 8\n");
    let daemon = start(&fleet, &config);
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(snapshots_reach(&repo, frozen, 2, Duration::from_secs(20)).await);
    // Freeze it just after a snapshot, between two.
    let seq = coalesce_seq(&repo, frozen).await;
    assert!(snapshots_reach(&repo, frozen, seq + 1, Duration::from_secs(10)).await);
    fleet.remotes[0].freeze();
    let reported = eventually(Duration::from_secs(20), || async {
        let errors = stored_errors(&repo, frozen).await;
        errors.is_some_and(|e| e.iter().any(|m| m.contains("not answering")))
    })
    .await;
    let errors = stored_errors(&repo, frozen).await.unwrap_or_default();
    assert!(
        !errors.iter().any(|m| m.contains("snapshot aborted")),
        "the frozen server took the snapshot slot: {errors:?}"
    );
    let seq = coalesce_seq(&repo, healthy).await;
    let kept = snapshots_reach(&repo, healthy, seq + 2, Duration::from_secs(15)).await;
    fleet.remotes[0].thaw();
    assert!(reported, "freeze not reported:\n{}", daemon.log());
    assert!(
        kept,
        "the healthy server lost its rhythm:\n{}",
        daemon.log()
    );
    // Back to normal after the thaw.
    let seq = coalesce_seq(&repo, frozen).await;
    assert!(
        snapshots_reach(&repo, frozen, seq + 1, Duration::from_secs(30)).await,
        "no recovery after thaw:\n{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_metas_row_is_reported_not_collected() {
    let fleet = fleet(1);
    let srvid = fleet.register(0, 5, None).unwrap();
    fleet
        .repository
        .psql(
            "powa",
            &format!("DELETE FROM powa_snapshot_metas WHERE srvid = {srvid}"),
        )
        .unwrap();
    let daemon = start(&fleet, FAST);
    let dsn = fleet.repository_dsn();
    let reported = eventually(Duration::from_secs(10), || async {
        workers_status(&dsn, Duration::from_secs(2))
            .await
            .is_some_and(|a| a.contains("not registered properly"))
    })
    .await;
    assert!(reported, "{}", daemon.log());
    let history: i64 = fleet
        .repository
        .psql(
            "powa",
            &format!("SELECT count(*) FROM powa_statements_history_current WHERE srvid = {srvid}"),
        )
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(history, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_port_moves_the_worker_and_a_deleted_server_goes() {
    let Collecting {
        fleet,
        srvid: moving,
        mut daemon,
        repo,
    } = collecting(2, 5, FAST, Duration::from_secs(20)).await;
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();

    // Point the server at the other cluster: the worker reconnects there.
    let new_port = i32::from(fleet.remotes[1].port());
    repo.execute(
        "UPDATE powa_servers SET port = $2 WHERE id = $1",
        &[&moving, &new_port],
    )
    .await
    .unwrap();
    let answer = client.ask("RELOAD", "", Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some("RELOAD OK OK"));
    let there = fleet.remotes[1].client("powa").await.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            collector_sessions(&there).await > 0
        })
        .await,
        "no session on the new port:\n{}",
        daemon.log()
    );
    let old = fleet.remotes[0].client("powa").await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            collector_sessions(&old).await == 0
        })
        .await,
        "the old session stayed"
    );
    let seq = coalesce_seq(&repo, moving).await;
    assert!(snapshots_reach(&repo, moving, seq + 1, Duration::from_secs(15)).await);

    // Deleted and reloaded: gone from the status, and no session left.
    repo.execute("SELECT powa_delete_and_purge_server($1)", &[&moving])
        .await
        .unwrap();
    let answer = client.ask("RELOAD", "", Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some("RELOAD OK OK"));
    let answer = client
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(answer, "WORKERS_STATUS OK {}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            collector_sessions(&there).await == 0
        })
        .await,
        "the deleted server's session stayed"
    );
    assert!(daemon.is_alive());
}

/// `(failures, delay in seconds)` of each "retrying" line about `srvid`.
#[cfg(feature = "fault-injection")]
fn retries(log: &str, srvid: i32) -> Vec<(u32, f64)> {
    let field = |line: &str, key: &str| -> Option<String> {
        let start = line.find(&format!("{key}: "))? + key.len() + 2;
        let rest = &line[start..];
        Some(
            rest[..rest.find(',').unwrap_or(rest.len())]
                .trim()
                .to_string(),
        )
    };
    log.lines()
        .filter(|l| {
            l.contains("retrying") && field(l, "srvid").as_deref() == Some(&srvid.to_string())
        })
        .filter_map(|l| {
            Some((
                field(l, "failures")?.parse().ok()?,
                field(l, "in_secs")?.parse().ok()?,
            ))
        })
        .collect()
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_worker_restarts_with_growing_delays_alone() {
    let fleet = fleet(2);
    let faulty = fleet.register(0, 5, None).unwrap();
    let healthy = fleet.register(1, 5, None).unwrap();
    let faulty_id = faulty.to_string();
    let mut daemon = Daemon::start_with_env(
        Path::new(BIN),
        &fleet.repository_dsn(),
        "[restart]\nbackoff_min = 0.5\nbackoff_max = 4\n",
        &[(powa_fleet_actors::fault::PANIC_ENV, faulty_id.as_str())],
    )
    .unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, healthy, 4, Duration::from_secs(30)).await,
        "{}",
        daemon.log()
    );

    // Each retry also waits for the server's slot in its period (up to 5 s
    // here, spread at random), so three attempts can take a while.
    let three = eventually(Duration::from_secs(40), || async {
        retries(&daemon.log(), faulty).len() >= 3
    })
    .await;
    let attempts = retries(&daemon.log(), faulty);
    assert!(three, "{attempts:?}\n{}", daemon.log());
    for pair in attempts.windows(2) {
        let ((f1, d1), (f2, d2)) = (pair[0], pair[1]);
        assert_eq!(f2, f1 + 1, "{attempts:?}");
        assert!(d2 >= d1 - 1e-6, "delays must not shrink: {attempts:?}");
        assert!(d2 <= 4.0 + 1e-6, "capped: {attempts:?}");
    }
    assert!(daemon.log().contains("injected fault"), "{}", daemon.log());
    let status = workers_status(&fleet.repository_dsn(), Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        status.contains(&format!("\"{healthy}\": \"running\"")),
        "{status}"
    );
    assert!(
        status.contains(&format!("\"{faulty}\": \"restarting in")),
        "{status}"
    );
    assert_eq!(
        coalesce_seq(&repo, faulty).await,
        1,
        "no snapshot of the faulty server"
    );
    assert!(daemon.is_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_snapshot_rolls_it_back_and_exits_in_time() {
    let fleet = fleet(1);
    let srvid = fleet.register(0, 5, None).unwrap();
    fleet.workload(0, 100).unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    // Hold the statements' staging table: the snapshot will wait on it.
    repo.batch_execute("BEGIN; LOCK TABLE powa_statements_src_tmp IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let config = "[timeouts]\nlock = 60\n[shutdown]\ngrace = 2\n";
    let mut daemon = start(&fleet, config);
    let watcher = fleet.repository.client("powa").await.unwrap();
    let blocked = a_snapshot_waits_on_a_lock(&watcher).await;
    assert!(blocked, "no snapshot in flight:\n{}", daemon.log());

    let asked = std::time::Instant::now();
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(8)).expect("exits");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
    repo.batch_execute("COMMIT").await.unwrap();

    // Nothing of the interrupted snapshot is visible, no session is left.
    assert_eq!(coalesce_seq(&watcher, srvid).await, 1);
    let staged: i64 = watcher
        .query_one(
            "SELECT (SELECT count(*) FROM powa_kcache_src_tmp WHERE srvid = $1) \
             + (SELECT count(*) FROM powa_statements_src_tmp WHERE srvid = $1) \
             + (SELECT count(*) FROM powa_databases_src_tmp WHERE srvid = $1)",
            &[&srvid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(staged, 0);
    assert_no_session_left(&fleet).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_each_server_resumes_its_rhythm() {
    let fleet = fleet(2);
    let servers = [
        fleet.register(0, 10, None).unwrap(),
        fleet.register(1, 10, None).unwrap(),
    ];
    let mut daemon = start(&fleet, FAST);
    let repo = fleet.repository.client("powa").await.unwrap();
    for srvid in servers {
        assert!(snapshots_reach(&repo, srvid, 3, Duration::from_secs(40)).await);
    }
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5)).expect("killed");

    let snapts = |srvid: i32| {
        let repo = &repo;
        async move {
            repo.query_one(
                "SELECT EXTRACT(EPOCH FROM snapts)::float8 FROM powa_snapshot_metas WHERE srvid = $1",
                &[&srvid],
            )
            .await
            .unwrap()
            .get::<_, f64>(0)
        }
    };
    let before = [snapts(servers[0]).await, snapts(servers[1]).await];
    let restarted = start(&fleet, FAST);
    for (i, srvid) in servers.into_iter().enumerate() {
        let moved = eventually(Duration::from_secs(25), || async {
            snapts(srvid).await > before[i]
        })
        .await;
        assert!(
            moved,
            "server {srvid} not collected again:\n{}",
            restarted.log()
        );
        let gap = snapts(srvid).await - before[i];
        // The next snapshot keeps the 10 s rhythm instead of firing at once.
        assert!(
            (9.0..=12.0).contains(&gap),
            "server {srvid}: {gap:.2}s after the last one"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_servers_down_at_once_do_not_flood_the_repository() {
    let fleet = fleet(1);
    let good = fleet.register(0, 5, None).unwrap();
    // 300 servers on loopback ports where nothing listens.
    fleet
        .repository
        .psql(
            "powa",
            "SELECT count(powa_register_server(hostname => '127.0.0.1', port => p, \
             username => 'powa', frequency => 5)) FROM generate_series(20001, 20300) p",
        )
        .unwrap();
    let mut daemon = start(
        &fleet,
        "[snapshots]\nmax_concurrent = 2\n[restart]\nbackoff_min = 0.5\nbackoff_max = 5\n",
    );
    let repo = fleet.repository.client("powa").await.unwrap();
    let watcher = fleet.repository.client("powa").await.unwrap();

    let mut most_sessions = 0;
    let mut at_most = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let now = collector_sessions(&watcher).await;
        if now > most_sessions {
            most_sessions = now;
            at_most = watcher
                .query_one(
                    "SELECT string_agg(application_name || ' ' || state, ', ') \
                     FROM pg_stat_activity WHERE application_name LIKE 'powa-fleet%'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, Option<String>>(0)
                .unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 2 snapshots + 4 extra sessions in the pool, plus the listener and
    // the membership session.
    assert!(
        most_sessions <= 8,
        "{most_sessions} repository sessions: {at_most}"
    );
    let seq = coalesce_seq(&repo, good).await;
    assert!(
        snapshots_reach(&repo, good, seq + 2, Duration::from_secs(15)).await,
        "the reachable server lost its rhythm:\n{}",
        daemon
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let recorded: i64 = repo
        .query_one(
            "SELECT count(*) FROM powa_snapshot_metas m JOIN powa_servers s ON s.id = m.srvid \
             WHERE s.port > 20000 AND m.errors IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 300, "every failure is recorded");

    // WORKERS_STATUS stays one valid answer under 8000 bytes, failures first.
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let mut latencies = Vec::new();
    for _ in 0..50 {
        let sent = std::time::Instant::now();
        let answer = client
            .ask("WORKERS_STATUS", "", Duration::from_secs(3))
            .await
            .expect("an answer");
        latencies.push(sent.elapsed());
        assert!(answer.len() < 8000, "{} bytes", answer.len());
        let json = answer.strip_prefix("WORKERS_STATUS OK ").unwrap();
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).unwrap();
        assert!(map.len() > 100, "{} servers listed", map.len());
        assert!(map.values().all(|v| v != "running") || map.len() == 301);
    }
    // The CLI shows every server, whatever the fleet size, with details.
    let cli = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args([
                "--config",
                "/dev/null",
                "--repository-dsn",
                &fleet.repository_dsn(),
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let workers: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(workers.len(), 301);
    let down = workers.iter().find(|w| w["srvid"] != good).unwrap();
    assert_eq!(down["state"], "no connection to remote server");
    assert!(down["last_errors"][0]
        .as_str()
        .unwrap()
        .contains("could not connect"));
    assert!(
        workers.iter().all(|w| w["member"].is_string()),
        "{workers:?}"
    );
    let out = cli(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // A line per server under the header, then the members: this one
    // collects all 301 and leads.
    assert_eq!(text.lines().take_while(|l| !l.is_empty()).count(), 302);
    let members: Vec<&str> = text.lines().skip_while(|l| !l.is_empty()).skip(2).collect();
    assert_eq!(members.len(), 1, "{text}");
    assert!(
        members[0].contains(" 301 ") && members[0].ends_with("leader"),
        "{text}"
    );

    latencies.sort();
    eprintln!(
        "WORKERS_STATUS with 301 servers: median {:?}, max {:?}; collector CPU {:.2}s",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        powa_fleet_harness::reference::cpu_seconds(daemon.pid() as u32).unwrap_or_default()
    );
    assert!(daemon.is_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_configuration_at_reload_keeps_the_running_one() {
    let Collecting {
        fleet,
        srvid,
        mut daemon,
        repo,
    } = collecting(1, 5, FAST, Duration::from_secs(20)).await;
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();

    let good = std::fs::read_to_string(daemon.config_path()).unwrap();
    std::fs::write(daemon.config_path(), "[repository\nbroken").unwrap();
    let answer = client
        .ask("RELOAD", "", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(answer.starts_with("RELOAD ERROR "), "{answer}");
    assert!(answer.contains("running one is kept"), "{answer}");
    daemon.signal(Signal::SIGHUP);
    let seq = coalesce_seq(&repo, srvid).await;
    assert!(snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(15)).await);
    assert!(daemon.is_alive());
    assert!(
        daemon.log().contains("configuration not reloaded"),
        "{}",
        daemon.log()
    );

    // Fixed, with debug logging: applied without restarting the worker.
    std::fs::write(daemon.config_path(), format!("debug = true\n{good}")).unwrap();
    let answer = client.ask("RELOAD", "", Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some("RELOAD OK OK"));
    let answer = client
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(
        answer,
        format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}")
    );
    let seq = coalesce_seq(&repo, srvid).await;
    assert!(snapshots_reach(&repo, srvid, seq + 1, Duration::from_secs(15)).await);
    assert!(
        daemon.log().contains("DEBG"),
        "debug lines after the reload"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_null_password_comes_from_the_password_file() {
    let fleet = fleet(1);
    let remote = &fleet.remotes[0];
    let secret = "Pgpass-Secret-71";
    remote
        .psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; \
                 CREATE ROLE powa_pw LOGIN SUPERUSER PASSWORD '{secret}'"
            ),
        )
        .unwrap();
    // That role must authenticate with SCRAM: its rule comes first.
    let hba = remote.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all powa_pw 127.0.0.0/8 scram-sha-256\n{rules}"),
    )
    .unwrap();
    remote.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    let srvid: i32 = fleet
        .repository
        .psql(
            "powa",
            &format!(
                "SELECT powa_register_server(hostname => '{}', port => {}, username => 'powa_pw', \
                 frequency => 5) \\g /dev/null\nSELECT id FROM powa_servers WHERE username = 'powa_pw'",
                remote.host(),
                remote.port()
            ),
        )
        .unwrap()
        .parse()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# powa-fleet\n{}:{}:powa:powa_pw:{secret}\n",
            remote.host(),
            remote.port()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = Daemon::start_with_env(
        Path::new(BIN),
        &fleet.repository_dsn(),
        FAST,
        &[("PGPASSFILE", passfile.to_str().unwrap())],
    )
    .unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, srvid, 2, Duration::from_secs(20)).await,
        "no snapshot with the password file:\n{}",
        daemon.log()
    );
    assert!(!daemon.log().contains(secret));

    // A password file others can read is not used, and the error says so.
    drop(daemon);
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let daemon = Daemon::start_with_env(
        Path::new(BIN),
        &fleet.repository_dsn(),
        FAST,
        &[("PGPASSFILE", passfile.to_str().unwrap())],
    )
    .unwrap();
    let explained = eventually(Duration::from_secs(15), || async {
        let errors = stored_errors(&repo, srvid).await;
        errors.is_some_and(|e| e.iter().any(|m| m.contains("password file not used")))
    })
    .await;
    assert!(explained, "{}", daemon.log());
}

/// Snapshots in flight while the repository crashes: nothing partial is
/// left, the daemon reconnects, LISTEN comes back, every schedule resumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_crash_mid_snapshot_loses_nothing_and_everything_resumes() {
    let fleet = fleet(2);
    let servers = [
        fleet.register(0, 5, None).unwrap(),
        fleet.register(1, 5, None).unwrap(),
    ];
    fleet.workload(0, 200).unwrap();
    let mut daemon = start(&fleet, &format!("{FAST}[timeouts]\nlock = 60\n"));
    let before = {
        let repo = fleet.repository.client("powa").await.unwrap();
        for srvid in servers {
            assert!(snapshots_reach(&repo, srvid, 2, Duration::from_secs(30)).await);
        }
        // Hold the statements' staging table: the next snapshots wait on it.
        let locker = fleet.repository.client("powa").await.unwrap();
        locker
            .batch_execute("BEGIN; LOCK TABLE powa_statements_src_tmp IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let blocked = a_snapshot_waits_on_a_lock(&repo).await;
        assert!(blocked, "no snapshot in flight:\n{}", daemon.log());
        [
            coalesce_seq(&repo, servers[0]).await,
            coalesce_seq(&repo, servers[1]).await,
        ]
    };
    fleet.repository.stop_immediate().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.repository.start_again().unwrap();

    // Nothing of the interrupted snapshots survived the crash.
    let repo = fleet.repository.client("powa").await.unwrap();
    let staged: i64 = repo
        .query_one(
            "SELECT (SELECT count(*) FROM powa_statements_src_tmp) \
             + (SELECT count(*) FROM powa_kcache_src_tmp) \
             + (SELECT count(*) FROM powa_databases_src_tmp)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(staged, 0);
    let history: i64 = repo
        .query_one(
            "SELECT count(*) FROM powa_statements_history_current WHERE srvid = $1",
            &[&servers[0]],
        )
        .await
        .unwrap()
        .get(0);
    for (srvid, seq) in servers.iter().zip(before) {
        assert_eq!(coalesce_seq(&repo, *srvid).await, seq);
    }

    // LISTEN is back: WORKERS_STATUS gets an answer.
    let answered = answers_again(&fleet.repository_dsn(), Duration::from_secs(30)).await;
    assert!(answered, "no answer after the crash:\n{}", daemon.log());
    // Every server's schedule resumes, and history grows again.
    for (srvid, seq) in servers.iter().zip(before) {
        assert!(
            snapshots_reach(&repo, *srvid, seq + 2, Duration::from_secs(30)).await,
            "server {srvid} did not resume:\n{}",
            daemon.log()
        );
    }
    let history_after: i64 = repo
        .query_one(
            "SELECT count(*) FROM powa_statements_history_current WHERE srvid = $1",
            &[&servers[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(history_after > history, "{history_after} <= {history}");
    assert!(daemon.is_alive());
}

/// `powa_take_snapshot` raising on the repository, for one server: the
/// error is stored where powa-web shows it, attempts stay paced (no spin),
/// the other server keeps its rhythm, and collection comes back once the
/// cause is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_take_snapshot_is_recorded_paced_and_recovers() {
    let fleet = fleet(2);
    let failing = fleet.register(0, 5, None).unwrap();
    let healthy = fleet.register(1, 5, None).unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    repo.batch_execute(&format!(
        "CREATE FUNCTION public.refuse_snapshot() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'snapshots of this server are refused for a test'; END $$; \
         CREATE TRIGGER refuse_snapshot BEFORE UPDATE ON powa_snapshot_metas \
         FOR EACH ROW WHEN (NEW.srvid = {failing} AND NEW.snapts IS DISTINCT FROM OLD.snapts) \
         EXECUTE FUNCTION public.refuse_snapshot();"
    ))
    .await
    .unwrap();
    // Default restart settings: the pace is the daemon's own.
    let mut daemon = start(&fleet, "");
    let recorded = eventually(Duration::from_secs(20), || async {
        stored_errors(&repo, failing)
            .await
            .is_some_and(|e| e.iter().any(|e| e.contains("refused for a test")))
    })
    .await;
    assert!(recorded, "error not stored:\n{}", daemon.log());

    let pid = daemon.pid() as u32;
    let cpu_before = powa_fleet_harness::reference::cpu_seconds(pid).unwrap();
    let attempts_before = daemon.log().matches("refused for a test").count();
    let healthy_seq = coalesce_seq(&repo, healthy).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let attempts = daemon.log().matches("refused for a test").count() - attempts_before;
    let cpu = powa_fleet_harness::reference::cpu_seconds(pid).unwrap() - cpu_before;
    // Backoff from 1 s, capped at the 5 s period: a handful of attempts
    // (each logged on a line or two), not a loop.
    assert!(attempts <= 20, "{attempts} log lines of attempts in 20 s");
    // On PoWA 5 every refused attempt copies all the catalogs again (about
    // 28 000 rows), since none of them was recorded.
    let cpu_bound = if powa_major_version(&fleet.repository).unwrap() >= 5 {
        3.0
    } else {
        1.0
    };
    assert!(cpu < cpu_bound, "{cpu:.2} s of CPU in 20 s");
    assert!(
        coalesce_seq(&repo, healthy).await >= healthy_seq + 3,
        "the healthy server lost its rhythm:\n{}",
        daemon.log()
    );
    let status = workers_status(&fleet.repository_dsn(), Duration::from_secs(3))
        .await
        .expect("WORKERS_STATUS answered");
    assert!(status.contains("refused for a test"), "{status}");

    repo.batch_execute("DROP TRIGGER refuse_snapshot ON powa_snapshot_metas")
        .await
        .unwrap();
    let seq = coalesce_seq(&repo, failing).await;
    assert!(
        snapshots_reach(&repo, failing, seq + 1, Duration::from_secs(20)).await,
        "no recovery:\n{}",
        daemon.log()
    );
    assert_eq!(stored_errors(&repo, failing).await, None);
    assert!(daemon.is_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_of_a_powa_role_may_send_commands_on_powa_5_only() {
    let fleet = fleet(1);
    let srvid = fleet.register(0, 5, None).unwrap();
    // PoWA 5 creates and maps its roles at install; on PoWA 4 the same
    // name carries no right.
    fleet
        .repository
        .psql(
            "powa",
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'powa_signal_backend') \
             THEN CREATE ROLE powa_signal_backend NOLOGIN; END IF; END $$; \
             CREATE ROLE web LOGIN IN ROLE powa_signal_backend;",
        )
        .unwrap();
    let daemon = start(&fleet, FAST);
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(snapshots_reach(&repo, srvid, 2, Duration::from_secs(30)).await);

    let dsn = fleet.repository_dsn().replace("user=postgres", "user=web");
    let mut web = Requester::connect(&dsn).await.unwrap();
    let answer = web
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await
        .unwrap();
    if powa_major_version(&fleet.repository).unwrap() >= 5 {
        assert!(answer.starts_with("WORKERS_STATUS OK {"), "{answer}");
    } else {
        assert_eq!(answer, "WORKERS_STATUS ERROR Permission denied");
    }
    drop(daemon);
}

/// `last_refresh` of each database's catalogs for `srvid`, by name.
async fn catalog_refreshes(repo: &Client, srvid: i32) -> Vec<(String, f64)> {
    repo.query(
        "SELECT datname, EXTRACT(EPOCH FROM last_refresh)::float8 FROM powa_catalog_databases \
         WHERE srvid = $1 AND last_refresh IS NOT NULL ORDER BY datname",
        &[&srvid],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_db_cat_copies_the_named_catalogs_again_at_the_next_snapshot() {
    let Collecting {
        fleet,
        srvid,
        daemon,
        repo,
    } = collecting(1, 5, FAST, Duration::from_secs(30)).await;
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let t = Duration::from_secs(3);
    let ask = format!("{srvid} 1 powa");

    if powa_major_version(&fleet.repository).unwrap() < 5 {
        let answer = client.ask("REFRESH_DB_CAT", &ask, t).await.unwrap();
        assert_eq!(
            answer,
            "REFRESH_DB_CAT ERROR PoWA 4 keeps no catalogs: nothing to refresh"
        );
        drop(daemon);
        return;
    }
    // The first snapshot copied every database's catalogs.
    let before = catalog_refreshes(&repo, srvid).await;
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["postgres", "powa", "template1"]);

    let answer = client.ask("REFRESH_DB_CAT", &ask, t).await.unwrap();
    assert_eq!(
        answer,
        "REFRESH_DB_CAT OK Catalogs will be refreshed during the next snapshot"
    );
    let seq = coalesce_seq(&repo, srvid).await;
    assert!(snapshots_reach(&repo, srvid, seq + 2, Duration::from_secs(30)).await);
    let after = catalog_refreshes(&repo, srvid).await;
    for ((name, was), (_, now)) in before.iter().zip(&after) {
        if name == "powa" {
            assert!(now > was, "powa catalogs not refreshed: {was} → {now}");
        } else {
            assert_eq!(now, was, "{name} catalogs refreshed unasked");
        }
    }
    let answer = client
        .ask("REFRESH_DB_CAT", &format!("{srvid} 2 powa"), t)
        .await
        .unwrap();
    assert!(answer.starts_with("REFRESH_DB_CAT ERROR "), "{answer}");
    drop(daemon);
}

/// The pids of the daemon's sessions on a cluster.
async fn collector_pids(client: &Client) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE '%powa-fleet%' \
             ORDER BY pid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_session_lost_between_snapshots_is_noticed_and_reopened() {
    let fleet = fleet(1);
    // Hours between snapshots: only the session's own end can tell.
    fleet.register(0, 3600, None).unwrap();
    let daemon = start(&fleet, FAST);
    let connected = eventually(Duration::from_secs(30), || async {
        daemon.log().contains("INFO connected")
    })
    .await;
    assert!(connected, "not connected:\n{}", daemon.log());
    let remote = fleet.remotes[0].client("powa").await.unwrap();
    let before = collector_pids(&remote).await;
    assert_eq!(
        before.len(),
        1,
        "one session on the remote: {before:?}\n{}",
        daemon.log()
    );
    remote
        .execute("SELECT pg_terminate_backend($1)", &[&before[0]])
        .await
        .unwrap();
    let reopened = eventually(Duration::from_secs(15), || async {
        let now = collector_pids(&remote).await;
        now.len() == 1 && now != before
    })
    .await;
    assert!(reopened, "no new session on the remote:\n{}", daemon.log());
    assert!(
        daemon
            .log()
            .contains("connection to the remote server lost"),
        "{}",
        daemon.log()
    );
    // Connected again, and saying what happened until a snapshot succeeds.
    let dsn = fleet.repository_dsn();
    let told = eventually(Duration::from_secs(10), || async {
        workers_status(&dsn, Duration::from_secs(2))
            .await
            .is_some_and(|s| s.contains("restarting in") && s.contains("remote server lost"))
    })
    .await;
    assert!(
        told,
        "{:?}",
        workers_status(&dsn, Duration::from_secs(2)).await
    );
}
