//! powa-web in a real browser while powa-fleet collects: powa-web 4.1.4
//! on PoWA 4.1, 5.0.2 on PoWA 5 (from PyPI, in a private virtual
//! environment with selenium), served on 127.0.0.1 and driven in headless
//! Chromium by `tests/powa_web_browser.py`. The configuration page's
//! Collector Detail must name powa-fleet, its version and the member with a check
//! mark, the server list and the server's page must show its worker
//! running, the collector actions must report success, and no page may say
//! that no collector runs.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use powa_fleet_harness::daemon::{eventually, Daemon, Requester};
use powa_fleet_harness::fleet::powa_major_version;
use powa_fleet_harness::{require_binaries, Fleet};

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The powa-web release that serves a PoWA `major` repository.
fn powa_web_release(major: u32) -> &'static str {
    if major >= 5 {
        "5.0.2"
    } else {
        "4.1.4"
    }
}

/// A virtual environment of Debian's Python (its psycopg2, tornado and
/// SQLAlchemy visible) with powa-web `release` and selenium, made once
/// (in place: a virtual environment's scripts name its path).
fn environment(release: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("powa-web-{release}"));
    let complete = root.join("installed");
    if complete.exists() {
        return root;
    }
    let _ = std::fs::remove_dir_all(&root);
    let run = |command: &mut Command, what: &str| {
        let status = command.status().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(status.success(), "{what} failed ({status})");
    };
    run(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--system-site-packages"])
            .arg(&root),
        "creating a virtual environment (apt-get install python3-venv)",
    );
    run(
        Command::new(root.join("bin/pip"))
            .args(["install", "--quiet", "selenium"])
            .arg(format!("powa-web=={release}")),
        "installing selenium and powa-web from PyPI",
    );
    std::fs::write(&complete, release).unwrap();
    root
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// powa-web serving the repository, killed when dropped.
struct PowaWeb {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl PowaWeb {
    fn start(env: &Path, repository: &powa_fleet_harness::Cluster) -> PowaWeb {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("powa-web.conf");
        std::fs::write(
            &config,
            format!(
                "servers={{'main': {{'host': '{}', 'port': '{}', 'database': 'powa'}}}}\n\
                 cookie_secret=\"powa-fleet-test\"\naddress=\"127.0.0.1\"\nport={port}\n",
                repository.host(),
                repository.port()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("powa-web.log")).unwrap();
        let child = Command::new(env.join("bin/powa-web"))
            .arg(format!("--config={}", config.display()))
            // Its other configuration places are looked up from HOME.
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting powa-web");
        let web = PowaWeb {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "powa-web did not listen:\n{}",
                web.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        web
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("powa-web.log")).unwrap_or_default()
    }
}

impl Drop for PowaWeb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn powa_web_shows_powa_fleet_as_the_running_collector() {
    require_binaries().expect("PostgreSQL and PoWA installed");
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "a browser is needed: apt-get install chromium chromium-driver"
    );
    let fleet = Fleet::start(1).unwrap();
    // Snapshots only when forced (the first one at a random time within
    // the hour), so that the test's own forced one is accepted.
    let srvid = fleet.register(0, 3600, None).unwrap();
    let dsn = fleet.repository_dsn();
    let daemon = Daemon::start(Path::new(BIN), &dsn, "[member]\nname = \"web-1\"\n").unwrap();
    let running = format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}");
    let up = eventually(Duration::from_secs(20), || async {
        let mut client = Requester::connect(&dsn).await.unwrap();
        client
            .ask("WORKERS_STATUS", "", Duration::from_secs(3))
            .await
            == Some(running.clone())
    })
    .await;
    assert!(
        up,
        "powa-fleet never reported its worker:\n{}",
        daemon.log()
    );

    let major = powa_major_version(&fleet.repository).unwrap();
    let release = powa_web_release(major);
    let env = tokio::task::spawn_blocking(move || environment(release))
        .await
        .unwrap();
    let web = PowaWeb::start(&env, &fleet.repository);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powa_web_browser.py");
    let url = web.url.clone();
    // The member's name follows the release inside the parentheses.
    let collector = format!("powa-fleet {VERSION} @web-1");
    let web_major = if major >= 5 { "5" } else { "4" };
    let out = tokio::task::spawn_blocking({
        let python = env.join("bin/python");
        let collector = collector.clone();
        move || {
            Command::new(python)
                .arg(script)
                .args([&url, "main", &srvid.to_string(), &collector, web_major])
                .output()
                .expect("running the browser script")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("powa-web {release} in Chromium:\n{stdout}");
    assert!(
        out.status.success(),
        "{}\n{stdout}\npowa-web log:\n{}\npowa-fleet log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        web.log(),
        daemon.log()
    );
    // Every check ran (the script stops at the first failure).
    let mut expected = vec![
        format!("Collector Detail: Remote collector ({collector}): \u{2713}"),
        "server list:".to_string(),
        "Collector status for this instance: running".to_string(),
        "Reload collector reports".to_string(),
        "says no collector runs".to_string(),
    ];
    if major >= 5 {
        expected.push("Force a snapshot reports".to_string());
        expected.push("Refresh catalogs reports".to_string());
    }
    for line in expected {
        assert!(stdout.contains(&line), "no check {line:?}:\n{stdout}");
    }
}
