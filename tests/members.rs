//! Several powa-fleet instances on one repository share the fleet: every
//! server is collected by exactly one member, a member killed, frozen,
//! added or stopped moves its servers within seconds, no server is ever
//! snapshotted twice in a period, every request gets one answer, and
//! every session of a member carries its name.
//! Counts come from the repository (its own log of committed snapshots and
//! `pg_locks`), never from the collectors' logs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use powa_fleet_harness::daemon::{eventually, Daemon, Requester};
use powa_fleet_harness::require_binaries;
use powa_fleet_harness::simfleet::{logged_snapshots, repository_clock, SimFleet};
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");
const SERVERS: usize = 21;
/// Registered later, collected once every member reloaded.
const ADDED: usize = 3;
const FREQUENCY: f64 = 5.0;
/// `snapshots.max_concurrent` of every member: a fleet-wide limit.
const LIMIT: usize = 2;

fn member(fleet: &SimFleet, name: &str) -> Daemon {
    let config = format!(
        "[snapshots]\nmax_concurrent = {LIMIT}\n[timeouts]\nremote = 3\n\
         [restart]\nbackoff_min = 0.2\nbackoff_max = 2\n[shutdown]\ngrace = 3\n\
         [member]\nname = \"{name}\"\n"
    );
    Daemon::start(BIN.as_ref(), &fleet.repository_dsn(), &config).expect("member starts")
}

/// Member name → servers whose lock its membership session holds, from
/// `pg_locks` (the key spaces are the collector's, see membership.rs).
async fn holdings(repo: &Client) -> BTreeMap<String, Vec<i32>> {
    let rows = repo
        .query(
            "SELECT substr(a.application_name, length('powa-fleet: member ') + 1), \
                    s.objid::int \
             FROM pg_locks m \
             JOIN pg_stat_activity a ON a.pid = m.pid \
             LEFT JOIN pg_locks s ON s.pid = m.pid AND s.locktype = 'advisory' \
                  AND s.objsubid = 2 AND s.classid = x'706f7702'::int::oid \
             WHERE m.locktype = 'advisory' AND m.objsubid = 2 \
               AND m.classid = x'706f7701'::int::oid AND m.objid = m.pid::oid",
            &[],
        )
        .await
        .unwrap();
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for row in rows {
        let servers = out.entry(row.get(0)).or_default();
        if let Some(srvid) = row.get::<_, Option<i32>>(1) {
            servers.push(srvid);
        }
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

/// The members are exactly `names` and together hold every server once.
async fn settled(repo: &Client, names: &[&str], srvids: &[i32]) -> bool {
    let held = holdings(repo).await;
    let members: Vec<&str> = held.keys().map(String::as_str).collect();
    let mut all: Vec<i32> = held.values().flatten().copied().collect();
    all.sort_unstable();
    members == names && all == srvids && held.values().all(|v| !v.is_empty())
}

/// The smallest gap between two committed snapshots of one server, and
/// which server, over the whole log.
fn closest_pair(repository: &powa_fleet_harness::Cluster) -> Option<(i32, f64)> {
    let log = logged_snapshots(repository).unwrap();
    let mut best: Option<(i32, f64)> = None;
    for pair in log.windows(2) {
        if pair[0].srvid == pair[1].srvid {
            let gap = pair[1].started - pair[0].started;
            if best.map_or(true, |(_, g)| gap < g) {
                best = Some((pair[0].srvid, gap));
            }
        }
    }
    best
}

/// The most snapshot transactions the repository logged in flight at one
/// instant, and the snapshots of that instant. A snapshot takes its
/// fleet-wide slot before its transaction starts and frees it when it
/// commits, so the logged spans lie inside the slots.
fn most_in_flight(repository: &powa_fleet_harness::Cluster) -> (usize, String) {
    let log = logged_snapshots(repository).unwrap();
    let mut events: Vec<(f64, i32, usize)> = Vec::new();
    for (i, s) in log.iter().enumerate() {
        events.push((s.started, 1, i));
        events.push((s.ended, -1, i));
    }
    // At one instant, a commit before a start.
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut open, mut most, mut worst) = (Vec::new(), 0, String::new());
    for (_, d, i) in events {
        if d > 0 {
            open.push(i);
        } else {
            open.retain(|&j| j != i);
        }
        if open.len() > most {
            most = open.len();
            worst = open
                .iter()
                .map(|&j| {
                    let s = log[j];
                    format!("server {} {:.3}..{:.3}", s.srvid, s.started, s.ended)
                })
                .collect::<Vec<_>>()
                .join(", ");
        }
    }
    (most, worst)
}

/// For every server, the first snapshot committed after `since` (seconds
/// since the epoch, repository clock), as a delay from `since`.
fn first_after(repository: &powa_fleet_harness::Cluster, since: f64) -> BTreeMap<i32, f64> {
    let mut out = BTreeMap::new();
    for s in logged_snapshots(repository).unwrap() {
        if s.started > since {
            out.entry(s.srvid).or_insert(s.ended - since);
        }
    }
    out
}

/// The `application_name` of every collector session on `cluster`
/// (powa-fleet's own, and the one powa-web looks for), sorted.
async fn collector_sessions(cluster: &powa_fleet_harness::Cluster) -> Vec<String> {
    let client = cluster.client("powa").await.unwrap();
    let rows = client
        .query(
            "SELECT application_name FROM pg_stat_activity \
             WHERE application_name LIKE 'powa-fleet%' \
                OR application_name LIKE 'PoWA collector - main thread (%' \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Each member's name is in every session it has on the repository (its
/// listener, named as powa-web looks for it, its membership session, its
/// pooled sessions) and on the remote servers; none is unnamed.
async fn sessions_named(fleet: &SimFleet, names: &[&str]) -> Result<(), String> {
    let on_repository = collector_sessions(&fleet.repository).await;
    let belongs = |session: &str, name: &str| {
        session.ends_with(&format!(" @{name}"))
            || session.ends_with(&format!(" @{name})"))
            || session == format!("powa-fleet: member {name}")
    };
    for session in &on_repository {
        if !names.iter().any(|name| belongs(session, name)) {
            return Err(format!("{session:?} names no member: {on_repository:?}"));
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    for name in names {
        let listener = format!("PoWA collector - main thread (powa-fleet {version} @{name})");
        let count = |wanted: &str| on_repository.iter().filter(|s| *s == wanted).count();
        if count(&listener) != 1 || count(&format!("powa-fleet: member {name}")) != 1 {
            return Err(format!(
                "{name}: not one listener and one membership session: {on_repository:?}"
            ));
        }
        if count(&format!("powa-fleet: repository @{name}")) == 0 {
            return Err(format!(
                "{name}: no pooled session named: {on_repository:?}"
            ));
        }
    }
    let mut on_remotes = Vec::new();
    for remote in &fleet.remotes {
        on_remotes.extend(collector_sessions(remote).await);
    }
    for session in &on_remotes {
        if !names.iter().any(|name| belongs(session, name)) {
            return Err(format!(
                "remote session {session:?} names no member: {on_remotes:?}"
            ));
        }
    }
    for name in names {
        if !on_remotes.iter().any(|s| belongs(s, name)) {
            return Err(format!(
                "{name} has no remote session named: {on_remotes:?}"
            ));
        }
    }
    Ok(())
}

/// Send `command`, wait for its first answer, then make sure no second
/// answer comes.
async fn answers(requester: &mut Requester, command: &str) -> Vec<String> {
    let channel = Requester::new_channel();
    requester.listen(&channel).await.unwrap();
    // `COMMAND CHANNEL ARGS`, as powa-web sends it.
    let payload = match command.split_once(' ') {
        Some((word, args)) => format!("{word} {channel} {args}"),
        None => format!("{command} {channel}"),
    };
    requester.notify(&payload).await.unwrap();
    let mut got = Vec::new();
    let mut wait = Duration::from_secs(10);
    while let Some(answer) = requester.next_on(&channel, wait).await {
        got.push(answer);
        wait = Duration::from_secs(3);
    }
    got
}

/// The lines of the members' logs about the servers not in `seen`.
fn about_missing(daemons: &[&Daemon], srvids: &[i32], seen: &BTreeMap<i32, f64>) -> String {
    let mut out = String::new();
    for srvid in srvids.iter().filter(|s| !seen.contains_key(s)) {
        let tag = format!("srvid: {srvid}");
        for (i, d) in daemons.iter().enumerate() {
            for line in d.log().lines() {
                let at = line.find(&tag);
                let whole = at.is_some_and(|at| {
                    !line[at + tag.len()..].starts_with(|c: char| c.is_ascii_digit())
                });
                if whole {
                    out.push_str(&format!("[{i}] {line}\n"));
                }
            }
        }
    }
    out
}

fn logs(daemons: &[&Daemon]) -> String {
    daemons
        .iter()
        .map(|d| {
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n-----\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_members_share_the_fleet_through_kill_freeze_join_stop_and_restart() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    let fleet = SimFleet::build(SERVERS + ADDED, 200, 200, 100).expect("fleet starts");
    let mut srvids = fleet.register(0..SERVERS, FREQUENCY as i32).unwrap();
    srvids.sort_unstable();
    let repo = fleet.repository.client("powa").await.unwrap();

    // Three members: each holds some servers, together all, each once.
    let started = Instant::now();
    let mut a = member(&fleet, "a");
    let b = member(&fleet, "b");
    let c = member(&fleet, "c");
    assert!(
        eventually(Duration::from_secs(15), || settled(
            &repo,
            &["a", "b", "c"],
            &srvids
        ))
        .await,
        "members did not settle: {:?}\n{}",
        holdings(&repo).await,
        logs(&[&a, &b, &c])
    );
    println!(
        "three members formed in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Steady state: every server snapshotted each period, once each has its
    // first snapshot (the largest: on PoWA 5 it copies every catalog, and
    // the fleet-wide limit lets only LIMIT of them run at once).
    let first_done = eventually(Duration::from_secs(40), || async {
        let log = logged_snapshots(&fleet.repository).unwrap();
        srvids.iter().all(|id| log.iter().any(|s| s.srvid == *id))
    })
    .await;
    assert!(
        first_done,
        "not every server snapshotted once:\n{}",
        logs(&[&a, &b, &c])
    );
    let t0 = repository_clock(&fleet.repository).unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let log = logged_snapshots(&fleet.repository).unwrap();
    for srvid in &srvids {
        let n = log
            .iter()
            .filter(|s| s.srvid == *srvid && s.started > t0 && s.started <= t0 + 10.0)
            .count();
        assert!(
            (1..=3).contains(&n),
            "server {srvid}: {n} snapshots in two periods\n{}",
            logs(&[&a, &b, &c])
        );
    }

    // Every session of each member says whose it is.
    let mut named = Err(String::new());
    for _ in 0..10 {
        named = sessions_named(&fleet, &["a", "b", "c"]).await;
        if named.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Err(why) = named {
        panic!("{why}");
    }

    // One answer to each command, whichever member answers. RELOAD
    // reaches every member: new servers are claimed by their owners, which
    // know them only once they reloaded.
    let mut requester = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    srvids.extend(
        fleet
            .register(SERVERS..SERVERS + ADDED, FREQUENCY as i32)
            .unwrap(),
    );
    srvids.sort_unstable();
    let got = answers(&mut requester, "RELOAD").await;
    assert_eq!(got, vec!["RELOAD OK OK".to_string()]);
    assert!(
        eventually(Duration::from_secs(10), || settled(
            &repo,
            &["a", "b", "c"],
            &srvids
        ))
        .await,
        "new servers not claimed after RELOAD: {:?}\n{}",
        holdings(&repo).await,
        logs(&[&a, &b, &c])
    );
    // Collected and reporting before the fleet-wide status below.
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The leader's answer covers every member's workers.
    let got = answers(&mut requester, "WORKERS_STATUS").await;
    assert_eq!(got.len(), 1, "{got:?}");
    let states: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(got[0].strip_prefix("WORKERS_STATUS OK ").unwrap()).unwrap();
    let listed: Vec<i32> = states.keys().map(|k| k.parse().unwrap()).collect();
    let mut listed = listed;
    listed.sort_unstable();
    assert_eq!(listed, srvids, "{got:?}");
    assert!(
        states.values().all(|s| s == "running"),
        "{got:?}\n{}",
        logs(&[&a, &b, &c])
    );
    let got = answers(&mut requester, &format!("WORKERS_STATUS {}", srvids[0])).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("WORKERS_STATUS OK"), "{got:?}");
    // The owner answers for its server, once, whatever it says.
    for command in [
        format!("FORCE_SNAPSHOT {}", srvids[1]),
        format!("REFRESH_DB_CAT {} postgres", srvids[2]),
    ] {
        let got = answers(&mut requester, &command).await;
        let word = command.split(' ').next().unwrap();
        assert_eq!(got.len(), 1, "{command}: {got:?}");
        assert!(got[0].starts_with(word), "{command}: {got:?}");
    }

    // `powa-fleet status`: every server with its member, then the members.
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["--config", "/dev/null", "--repository-dsn"])
            .arg(fleet.repository_dsn())
            .arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let workers: Vec<serde_json::Value> = serde_json::from_str(&status(true)).unwrap();
    let held = holdings(&repo).await;
    let mut listed: Vec<i32> = Vec::new();
    for w in &workers {
        let srvid = w["srvid"].as_i64().unwrap() as i32;
        let member = w["member"].as_str().unwrap_or("-");
        assert!(
            held.get(member).is_some_and(|s| s.contains(&srvid)),
            "server {srvid} shown on {member}: {held:?}"
        );
        listed.push(srvid);
    }
    listed.sort_unstable();
    assert_eq!(listed, srvids, "{workers:?}");
    let table = status(false);
    let members: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.is_empty())
        .skip(2)
        .collect();
    assert_eq!(members.len(), 3, "{table}");
    assert_eq!(
        members.iter().filter(|l| l.ends_with("leader")).count(),
        1,
        "{table}"
    );
    for m in &members {
        let name = m.split_whitespace().next().unwrap();
        let count: usize = m.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(count, held[name].len(), "{table}");
    }

    // kill -9 of a, SIGSTOP of b past the detection time, then SIGCONT:
    // c takes everything, then b comes back and the fleet rebalances.
    let t_fail = repository_clock(&fleet.repository).unwrap();
    let failed_at = Instant::now();
    a.signal(Signal::SIGKILL);
    b.signal(Signal::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(15), || settled(&repo, &["c"], &srvids)).await,
        "c did not take every server: {:?}\n{}",
        holdings(&repo).await,
        logs(&[&c])
    );
    let detected = failed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.signal(Signal::SIGCONT);
    assert!(
        eventually(Duration::from_secs(20), || async {
            first_after(&fleet.repository, t_fail).len() == srvids.len()
        })
        .await,
        "not every server was snapshotted again: {:?}\n{:?}\n{}",
        first_after(&fleet.repository, t_fail),
        holdings(&repo).await,
        about_missing(&[&b, &c], &srvids, &first_after(&fleet.repository, t_fail))
    );
    let takeover = first_after(&fleet.repository, t_fail);
    let worst = takeover.values().copied().fold(0.0, f64::max);
    println!(
        "failure detected in {:.1}s; every server snapshotted again within {worst:.1}s",
        detected.as_secs_f64()
    );
    assert!(worst <= 20.0, "{takeover:?}");
    assert!(
        eventually(Duration::from_secs(15), || settled(
            &repo,
            &["b", "c"],
            &srvids
        ))
        .await,
        "b did not rejoin: {:?}\n{}",
        holdings(&repo).await,
        logs(&[&b, &c])
    );
    let _ = a.wait_exit(Duration::from_secs(1));

    // A member added and one stopped cleanly: the rest rebalance.
    let mut d = member(&fleet, "d");
    assert!(
        eventually(Duration::from_secs(15), || settled(
            &repo,
            &["b", "c", "d"],
            &srvids
        ))
        .await,
        "d got no share: {:?}\n{}",
        holdings(&repo).await,
        logs(&[&b, &c, &d])
    );
    let mut c = c;
    c.signal(Signal::SIGTERM);
    assert!(
        c.wait_exit(Duration::from_secs(10)).is_some(),
        "c did not stop"
    );
    assert!(
        eventually(Duration::from_secs(15), || settled(
            &repo,
            &["b", "d"],
            &srvids
        ))
        .await,
        "c's servers were not taken over: {:?}\n{}",
        holdings(&repo).await,
        logs(&[&b, &d])
    );

    // The repository restarts: the members re-form and go on.
    drop(repo);
    drop(requester);
    fleet.repository.restart().unwrap();
    let restarted = Instant::now();
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || settled(
            &repo,
            &["b", "d"],
            &srvids
        ))
        .await,
        "members did not re-form: {:?}\n{}",
        holdings(&repo).await,
        logs(&[&b, &d])
    );
    println!(
        "members re-formed {:.1}s after the repository restart",
        restarted.elapsed().as_secs_f64()
    );
    let t_restart = repository_clock(&fleet.repository).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            first_after(&fleet.repository, t_restart).len() == srvids.len()
        })
        .await,
        "not every server was snapshotted after the restart: {:?}\n{}",
        first_after(&fleet.repository, t_restart),
        logs(&[&b, &d])
    );
    let mut requester = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let got = answers(&mut requester, "WORKERS_STATUS").await;
    assert_eq!(got.len(), 1, "{got:?}");

    // The limit held across members, catch-up after failures included.
    let (most, at) = most_in_flight(&fleet.repository);
    println!("most snapshots in flight across members: {most} (limit {LIMIT})");
    assert!(most <= LIMIT, "{most} snapshots in flight at once: {at}");

    // Never twice: no two snapshots of a server within half a period.
    let (srvid, gap) = closest_pair(&fleet.repository).expect("snapshots logged");
    println!("closest snapshots of one server: {gap:.2}s apart (server {srvid})");
    assert!(
        gap >= FREQUENCY / 2.0,
        "server {srvid} snapshotted twice {gap:.2}s apart"
    );
    d.signal(Signal::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(10));
}
