//! What a DBA running Prometheus and systemd checks: `/metrics` parsed by
//! Prometheus' own client parser, `/healthz` and `/readyz` asked with a
//! real HTTP client (curl) while the repository is up, stopped and frozen,
//! systemd's notifications received on a datagram socket, and a wedged
//! actor ending the process.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use powa_fleet_harness::daemon::{eventually, Daemon, Requester};
use powa_fleet_harness::fleet::coalesce_seq;

mod common;
use common::{fleet, BIN, FAST};

/// Every family issue-listed name, as a Prometheus parser reports it.
const FAMILIES: [&str; 20] = [
    "powa_fleet_build_info",
    "powa_fleet_repository_up",
    "powa_fleet_listener_up",
    "powa_fleet_server_up",
    "powa_fleet_snapshots",
    "powa_fleet_snapshot_duration_seconds",
    "powa_fleet_last_snapshot_timestamp_seconds",
    "powa_fleet_snapshot_lag_seconds",
    "powa_fleet_snapshots_in_flight",
    "powa_fleet_snapshot_slot_waiters",
    "powa_fleet_rows_copied",
    "powa_fleet_worker_restarts",
    "powa_fleet_commands",
    "powa_fleet_log_lines_dropped",
    "powa_fleet_config_last_reload_successful",
    "powa_fleet_config_last_reload_success_timestamp_seconds",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
];

/// A free port on 127.0.0.1.
fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `(status, body)` of a GET, or None when nothing answered in 3 s.
fn get(address: &str, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "3", "-w", "\n%{http_code}"]);
    if let Some(accept) = accept {
        cmd.args(["-H", &format!("Accept: {accept}")]);
    }
    let out = cmd
        .arg(format!("http://{address}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}

/// prometheus-client (Prometheus' Python client) from PyPI, once per
/// target directory.
fn python_parser() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prometheus-client-0.21.1");
    if !dir.join("prometheus_client").is_dir() {
        let status = Command::new("/usr/bin/python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&dir)
            .arg("prometheus-client==0.21.1")
            .status()
            .expect("pip runs");
        assert!(status.success(), "pip could not install prometheus-client");
    }
    dir
}

/// Parse an exposition with Prometheus' parser (`openmetrics` or the text
/// format); one `name type samples` line per family, or the parser's error.
fn parse(exposition: &str, openmetrics: bool) -> Result<Vec<(String, String, usize)>, String> {
    let script = if openmetrics {
        "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n"
    } else {
        "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n"
    };
    let script = format!(
        "{script}for f in p(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n"
    );
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", python_parser())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            Some((
                w.next()?.to_string(),
                w.next()?.to_string(),
                w.next()?.parse().ok()?,
            ))
        })
        .collect())
}

/// Every metric name in the expressions of conf/grafana-dashboard.json.
fn dashboard_metrics() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 10, "{exprs:?}");
    let mut names: Vec<String> = Vec::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find(|c: char| c.is_ascii_lowercase()) {
            rest = &rest[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            if word.starts_with("powa_fleet_") || word.starts_with("process_") {
                names.push(word.to_string());
            }
            rest = &rest[end..];
        }
    }
    names.sort();
    names.dedup();
    names
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_readiness_over_http() {
    let fleet = fleet(2);
    let weird = "we\"ird\\alias";
    let first = fleet.register(0, 5, Some(weird)).unwrap();
    let second = fleet.register(1, 5, None).unwrap();
    let address = free_address();
    let extra = format!("use_server_alias = true\n{FAST}[http]\nlisten = \"{address}\"\n");
    let mut daemon =
        Daemon::start(Path::new(BIN), &fleet.repository_dsn(), &extra).expect("daemon starts");
    let repo = fleet.repository.client("powa").await.unwrap();

    let ready = eventually(Duration::from_secs(20), || async {
        get(&address, "/readyz", None).is_some_and(|(code, _)| code == 200)
    })
    .await;
    assert!(
        ready,
        "never ready: {:?}\n{}",
        get(&address, "/readyz", None),
        daemon.log()
    );
    assert_eq!(
        get(&address, "/healthz", None).unwrap(),
        (200, "alive\n".into())
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            coalesce_seq(&repo, first).await >= 2 && coalesce_seq(&repo, second).await >= 2
        })
        .await,
        "no snapshots:\n{}",
        daemon.log()
    );
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    assert!(client
        .ask("WORKERS_STATUS", "", Duration::from_secs(3))
        .await
        .is_some());

    // The text format, as Prometheus' parser reads it.
    let (code, text) = get(&address, "/metrics", None).unwrap();
    assert_eq!(code, 200);
    let families = parse(&text, false).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for name in FAMILIES {
        assert!(
            families
                .iter()
                .any(|(n, _, samples)| n == name && *samples > 0),
            "{name} missing from\n{text}"
        );
    }
    // Every metric the Grafana dashboard names is exported.
    for name in dashboard_metrics() {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&name) && l[name.len()..].starts_with(['{', ' '])),
            "the dashboard uses {name}, not in\n{text}"
        );
    }
    let escaped = r#"server="we\"ird\\alias""#;
    let ok_first =
        format!("powa_fleet_snapshots_total{{srvid=\"{first}\",{escaped},outcome=\"ok\"}}");
    assert!(sample(&text, &ok_first).unwrap_or(0.0) >= 1.0, "{text}");
    assert_eq!(sample(&text, "powa_fleet_repository_up"), Some(1.0));
    assert_eq!(sample(&text, "powa_fleet_listener_up"), Some(1.0));
    assert!(
        text.contains("powa_fleet_commands_total{command=\"WORKERS_STATUS\",status=\"OK\"} 1"),
        "{text}"
    );
    // OpenMetrics when asked for, as Prometheus asks.
    let (code, om) = get(
        &address,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(om.ends_with("# EOF\n"), "{om}");
    let families = parse(&om, true).unwrap_or_else(|e| panic!("{e}\n{om}"));
    assert!(families
        .iter()
        .any(|(n, t, _)| n == "powa_fleet_snapshots" && t == "counter"));

    // The repository stops: not ready, still alive, answered at once.
    fleet.repository.stop().unwrap();
    let started = Instant::now();
    let not_ready = eventually(Duration::from_secs(10), || async {
        get(&address, "/readyz", None).is_some_and(|(code, body)| {
            code == 503 && body.contains("no session on the repository")
        })
    })
    .await;
    assert!(
        not_ready,
        "{:?}\n{}",
        get(&address, "/readyz", None),
        daemon.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(get(&address, "/healthz", None).map(|(c, _)| c), Some(200));
    let (_, text) = get(&address, "/metrics", None).unwrap();
    assert_eq!(
        sample(&text, "powa_fleet_repository_up"),
        Some(0.0),
        "{text}"
    );
    // Back when it returns.
    fleet.repository.start_again().unwrap();
    let ready = eventually(Duration::from_secs(30), || async {
        get(&address, "/readyz", None).is_some_and(|(code, _)| code == 200)
    })
    .await;
    assert!(
        ready,
        "{:?}\n{}",
        get(&address, "/readyz", None),
        daemon.log()
    );

    // Frozen: every endpoint still answers within curl's 3 s.
    fleet.repository.freeze();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let asked = Instant::now();
        let answer = get(&address, path, None);
        assert!(answer.is_some(), "{path} did not answer while frozen");
        assert!(asked.elapsed() < Duration::from_secs(2), "{path} was slow");
    }
    fleet.repository.thaw();

    // A retired server's series disappear.
    let repo = fleet.repository.client("powa").await.unwrap();
    repo.execute("SELECT powa_deactivate_server($1)", &[&second])
        .await
        .unwrap();
    daemon.signal(Signal::SIGHUP);
    let gone = eventually(Duration::from_secs(15), || async {
        get(&address, "/metrics", None).is_some_and(|(_, t)| {
            !t.contains(&format!("srvid=\"{second}\"")) && t.contains(&format!("srvid=\"{first}\""))
        })
    })
    .await;
    assert!(
        gone,
        "{:?}\n{}",
        get(&address, "/metrics", None),
        daemon.log()
    );
    assert!(daemon.is_alive());
}

/// Receive every datagram sent to `socket` within `timeout` until `until`
/// matches one.
fn receive_until(
    socket: &UnixDatagram,
    timeout: Duration,
    until: &str,
    got: &mut Vec<String>,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = message.lines().any(|l| l == until);
            got.push(message);
            if hit {
                return true;
            }
        }
    }
    false
}

/// A socket standing for systemd's: its directory (kept while in use),
/// the socket, and its path for `NOTIFY_SOCKET`.
fn notify_socket() -> (tempfile::TempDir, UnixDatagram, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let path_text = path.display().to_string();
    (dir, socket, path_text)
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let fleet = fleet(1);
    fleet.register(0, 5, None).unwrap();
    let (_dir, socket, path_text) = notify_socket();
    let mut daemon = Daemon::start_with_env(
        Path::new(BIN),
        &fleet.repository_dsn(),
        FAST,
        &[("NOTIFY_SOCKET", &path_text), ("WATCHDOG_USEC", "2000000")],
    )
    .expect("daemon starts");
    let mut got = Vec::new();
    assert!(
        receive_until(&socket, Duration::from_secs(20), "READY=1", &mut got),
        "{got:?}\n{}",
        daemon.log()
    );
    // Ready once the server list is loaded; the server may not be claimed
    // yet (the member's next heartbeat), so only the line's form is known.
    let ready = got.last().unwrap();
    assert!(
        ready.contains("STATUS=") && ready.contains(" servers: "),
        "{ready}"
    );
    // The start-up load is not a reload for systemd.
    assert!(!got.iter().any(|m| m.contains("RELOADING=1")), "{got:?}");

    // WATCHDOG=1 every half WATCHDOG_USEC (1 s).
    got.clear();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_millis(3500);
    let mut pings = 0;
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "WATCHDOG=1")
            {
                pings += 1;
            }
        }
    }
    assert!((3..=5).contains(&pings), "{pings} watchdog pings in 3.5 s");

    // A reload: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    got.clear();
    daemon.signal(Signal::SIGHUP);
    assert!(
        receive_until(&socket, Duration::from_secs(10), "RELOADING=1", &mut got),
        "{got:?}"
    );
    let reloading = got.last().unwrap().clone();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(
        receive_until(&socket, Duration::from_secs(10), "READY=1", &mut got),
        "{got:?}"
    );
    // Seconds after the start, the server is collected.
    let reloaded = got.last().unwrap();
    assert!(
        reloaded.contains("STATUS=1 servers: 1 collected"),
        "{reloaded}"
    );

    daemon.signal(Signal::SIGTERM);
    assert!(
        receive_until(&socket, Duration::from_secs(5), "STOPPING=1", &mut got),
        "{got:?}"
    );
    let status = daemon.wait_exit(Duration::from_secs(6)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wedged_actor_fails_healthz_stops_the_watchdog_and_ends_the_process() {
    let fleet = fleet(1);
    fleet.register(0, 5, None).unwrap();
    let (_dir, socket, path_text) = notify_socket();
    let address = free_address();
    let mut daemon = Daemon::start_with_env(
        Path::new(BIN),
        &fleet.repository_dsn(),
        &format!("{FAST}[http]\nlisten = \"{address}\"\n"),
        &[
            ("NOTIFY_SOCKET", &path_text),
            ("WATCHDOG_USEC", "2000000"),
            ("POWAFLEET_FAULT_WEDGE_STATUS", "120"),
        ],
    )
    .expect("daemon starts");
    let mut got = Vec::new();
    assert!(
        receive_until(&socket, Duration::from_secs(20), "READY=1", &mut got),
        "{got:?}\n{}",
        daemon.log()
    );
    // The status actor's handler blocks its thread (the injected fault).
    let mut requester = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let answer = requester
        .ask("WORKERS_STATUS", "", Duration::from_secs(1))
        .await;
    assert_eq!(answer, None, "the status actor answered");
    let wedged_at = Instant::now();
    let unhealthy = eventually(Duration::from_secs(25), || async {
        get(&address, "/healthz", None)
            .is_some_and(|(code, body)| code == 503 && body.contains("status actor has not run"))
    })
    .await;
    assert!(
        unhealthy,
        "{:?}\n{}",
        get(&address, "/healthz", None),
        daemon.log()
    );
    // No watchdog ping while unhealthy (those sent before are drained).
    let mut buf = [0u8; 4096];
    while socket.recv(&mut buf).is_ok() {}
    let mut late_pings = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                late_pings += 1;
            }
        }
    }
    assert_eq!(late_pings, 0, "watchdog fed while wedged");
    let status = daemon
        .wait_exit(Duration::from_secs(30).saturating_sub(wedged_at.elapsed()))
        .unwrap_or_else(|| panic!("still running 30 s after the wedge:\n{}", daemon.log()));
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("exiting: an actor is wedged or dead"), "{log}");
    assert!(log.contains("the status actor has not run for"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_reopens_the_log_moves_the_endpoint_and_names_what_needs_a_restart() {
    let fleet = fleet(1);
    fleet.register(0, 5, None).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("fleet.log");
    let first = free_address();
    let section = |listen: &str, threads: usize| {
        format!(
            "{FAST}[snapshots]\nworker_threads = {threads}\n[log]\nfile = \"{}\"\n[http]\nlisten = \"{listen}\"\n",
            log.display()
        )
    };
    let mut daemon = Daemon::start(Path::new(BIN), &fleet.repository_dsn(), &section(&first, 1))
        .expect("daemon starts");
    let started = eventually(Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("listening for commands"))
    })
    .await;
    assert!(started, "{}", daemon.log());

    // logrotate without copytruncate: rename, then SIGHUP.
    let rotated = logs.path().join("fleet.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    daemon.signal(Signal::SIGHUP);
    let reopened = eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("fleet reloaded"))
    })
    .await;
    assert!(reopened, "no new log file after SIGHUP: {}", daemon.log());
    // Nothing lost: the old lines stay in the rotated file, the signal's
    // own line is in one of the two (lines are written asynchronously).
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("listening for commands"), "{old}");
    let new = std::fs::read_to_string(&log).unwrap();
    assert!(
        old.contains("SIGHUP received") || new.contains("SIGHUP received"),
        "{old}\n---\n{new}"
    );

    // A new address and a setting sized at start, through RELOAD.
    let second = free_address();
    let config = daemon.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(&section(&first, 1), &section(&second, 3));
    std::fs::write(&config, text).unwrap();
    let mut client = Requester::connect(&fleet.repository_dsn()).await.unwrap();
    let answer = client.ask("RELOAD", "", Duration::from_secs(10)).await;
    assert_eq!(
        answer.as_deref(),
        Some("RELOAD OK OK; restart needed for: snapshots.worker_threads"),
        "{}",
        daemon.log()
    );
    let moved = eventually(Duration::from_secs(10), || async {
        get(&second, "/healthz", None).is_some_and(|(code, _)| code == 200)
    })
    .await;
    assert!(
        moved,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&first, "/healthz", None).is_none()
        })
        .await,
        "the old address still answers"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("changed settings wait for a restart")
            && text.contains("snapshots.worker_threads"),
        "{text}"
    );
    assert!(daemon.is_alive());
}
