//! TLS against real clusters with `ssl = on` and certificates from a
//! throwaway CA: `require` encrypts, `verify-full` accepts the right CA and
//! host name and refuses a wrong host name with a clear message (never the
//! password), client certificates authenticate, and `powa-fleet check`
//! reports TLS per server and fails when a server is unreachable.

use std::path::Path;
use std::time::Duration;

use powa_fleet_harness::certs::TestCa;
use powa_fleet_harness::daemon::{eventually, run_command, CommandOutput, Daemon};
use powa_fleet_harness::fleet::{coalesce_seq, remote_options, repository_options, stored_errors};
use powa_fleet_harness::{require_binaries, ClusterOptions, Fleet, ServerTls};
use tokio_postgres::Client;

mod common;
use common::{BIN, FAST};

/// Each snapshot step in the log: a failure shows where a snapshot stood
/// (and the debug log must not show the password either).
const STEPS: &str = "[log]\nlevel = \"debug\"\n";

const PASSWORD: &str = "Tls-S3cret-pw-7781";

/// TLS on, with a certificate of `ca` for `names`.
fn with_tls(mut options: ClusterOptions, ca: &TestCa, names: &[&str]) -> ClusterOptions {
    let server = ca.server("server", names).expect("server certificate");
    options.tls = Some(ServerTls {
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
        client_ca_pem: Some(ca.root_pem()),
    });
    options
}

fn fleet(repository: ClusterOptions, remotes: Vec<ClusterOptions>) -> Fleet {
    require_binaries().expect("PostgreSQL and PoWA installed");
    Fleet::start_with(repository, remotes).expect("fleet starts")
}

fn toml_path(path: &Path) -> String {
    format!("'{}'", path.display())
}

fn check(fleet: &Fleet, dsn_suffix: &str, extra: &str) -> CommandOutput {
    let dsn = format!("{} {dsn_suffix}", fleet.repository_dsn());
    let out =
        run_command(Path::new(BIN), &dsn, extra, &["check"], &[]).expect("powa-fleet check runs");
    // Shown with --nocapture, and with a failure.
    eprintln!(
        "powa-fleet check (exit {:?}):\n{}{}",
        out.code, out.stdout, out.stderr
    );
    out
}

/// What each session of a cluster is doing, to explain a failure.
async fn sessions(client: &Client) -> String {
    let rows = client
        .query(
            "SELECT format('%s %s %s/%s %s', application_name, state, \
                    wait_event_type, wait_event, left(query, 100)) \
             FROM pg_stat_activity WHERE backend_type = 'client backend'",
            &[],
        )
        .await;
    match rows {
        Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0) + "\n").collect(),
        Err(e) => format!("(pg_stat_activity: {e})"),
    }
}

/// The line of `powa-fleet check` about server `srvid`.
fn server_line(out: &CommandOutput, srvid: i32) -> String {
    out.stdout
        .lines()
        .find(|l| l.starts_with(&format!("server {srvid} ")))
        .unwrap_or_else(|| panic!("no line for server {srvid}:\n{out:?}"))
        .to_string()
}

/// (collector sessions, of which encrypted) on a cluster.
async fn collector_tls(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE '%powa-fleet%'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Whether server `srvid` reaches snapshot `seq`. The window absorbs a
/// loaded machine: a first snapshot on PoWA 5 reads every catalog.
async fn snapshots_reach(repo: &Client, srvid: i32, seq: i64) -> bool {
    eventually(Duration::from_secs(60), || async {
        coalesce_seq(repo, srvid).await >= seq
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn require_encrypts_every_collector_session() {
    let ca = TestCa::new("require CA").unwrap();
    let names = ["localhost", "127.0.0.1"];
    let fleet = fleet(
        with_tls(repository_options(), &ca, &names),
        vec![with_tls(remote_options(), &ca, &names)],
    );
    let srvid = fleet.register(0, 5, None).unwrap();
    let dsn = format!("{} sslmode=require", fleet.repository_dsn());
    let daemon = Daemon::start(
        Path::new(BIN),
        &dsn,
        &format!("[remote]\nsslmode = \"require\"\n{FAST}{STEPS}"),
    )
    .unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, srvid, 2).await,
        "no snapshot over TLS:\n{}\nrepository sessions:\n{}",
        daemon.log(),
        sessions(&repo).await
    );
    let remote = fleet.remotes[0].client("powa").await.unwrap();
    let (sessions, encrypted) = collector_tls(&remote).await;
    assert!(
        sessions > 0 && sessions == encrypted,
        "remote: {sessions} sessions, {encrypted} encrypted"
    );
    let (sessions, encrypted) = collector_tls(&repo).await;
    assert!(
        sessions > 0 && sessions == encrypted,
        "repository: {sessions} sessions, {encrypted} encrypted"
    );

    // The worker's report says so too.
    let status = run_command(
        Path::new(BIN),
        &dsn,
        "",
        &["status", "--json", &srvid.to_string()],
        &[],
    )
    .unwrap();
    let workers: serde_json::Value =
        serde_json::from_str(status.stdout.trim()).unwrap_or_else(|_| panic!("status: {status:?}"));
    assert_eq!(
        workers[0]["tls"],
        serde_json::Value::Bool(true),
        "{workers}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_collects_with_the_right_ca_and_host_name() {
    let ca = TestCa::new("verify CA").unwrap();
    let names = ["localhost", "127.0.0.1"];
    let fleet = fleet(
        with_tls(repository_options(), &ca, &names),
        vec![with_tls(remote_options(), &ca, &names)],
    );
    let srvid = fleet.register(0, 5, None).unwrap();
    let root = ca.root();
    let dsn = format!(
        "{} sslmode=verify-full sslrootcert='{}'",
        fleet.repository_dsn(),
        root.display()
    );
    let extra = format!(
        "[remote]\nsslmode = \"verify-full\"\nsslrootcert = {}\n{FAST}{STEPS}",
        toml_path(&root)
    );
    let daemon = Daemon::start(Path::new(BIN), &dsn, &extra).unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, srvid, 2).await,
        "no snapshot with verify-full:\n{}\nrepository sessions:\n{}",
        daemon.log(),
        sessions(&repo).await
    );
    let remote = fleet.remotes[0].client("powa").await.unwrap();
    let (sessions, encrypted) = collector_tls(&remote).await;
    assert!(
        sessions > 0 && sessions == encrypted,
        "remote: {sessions} sessions, {encrypted} encrypted"
    );
    assert_eq!(stored_errors(&repo, srvid).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_refuses_a_host_name_mismatch_without_showing_the_password() {
    let ca = TestCa::new("mismatch CA").unwrap();
    // The certificate names another host than the one registered.
    let fleet = fleet(
        repository_options(),
        vec![with_tls(remote_options(), &ca, &["db.example.test"])],
    );
    let srvid = fleet.register(0, 5, None).unwrap();
    fleet
        .repository
        .psql(
            "powa",
            &format!("UPDATE powa_servers SET password = '{PASSWORD}' WHERE id = {srvid}"),
        )
        .unwrap();
    let root = toml_path(&ca.root());
    let expected = "certificate is not valid for host 127.0.0.1 (sslmode verify-full)";

    let out = check(
        &fleet,
        "",
        &format!("[remote]\nsslmode = \"verify-full\"\nsslrootcert = {root}\n"),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = server_line(&out, srvid);
    assert!(line.contains("FAILED") && line.contains(expected), "{line}");
    assert!(!format!("{out:?}").contains(PASSWORD), "{out:?}");

    // verify-ca checks the chain only: the same certificate is accepted.
    let out = check(
        &fleet,
        "",
        &format!("[remote]\nsslmode = \"verify-ca\"\nsslrootcert = {root}\n"),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(server_line(&out, srvid).contains("OK, TLS yes"), "{out:?}");

    // Another CA: the chain is refused.
    let other = TestCa::new("other CA").unwrap();
    let out = check(
        &fleet,
        "",
        &format!(
            "[remote]\nsslmode = \"verify-ca\"\nsslrootcert = {}\n",
            toml_path(&other.root())
        ),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        server_line(&out, srvid).contains("not signed by a trusted root certificate"),
        "{out:?}"
    );

    // The collector stores the cause where powa-web shows it, and never
    // the password.
    let daemon = Daemon::start(
        Path::new(BIN),
        &fleet.repository_dsn(),
        &format!("[remote]\nsslmode = \"verify-full\"\nsslrootcert = {root}\n{FAST}{STEPS}"),
    )
    .unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    // The first attempt fails at once; the window only absorbs a loaded
    // machine (each step of a connection has its own 10 s limit).
    let stored = eventually(Duration::from_secs(60), || async {
        stored_errors(&repo, srvid)
            .await
            .is_some_and(|errors| errors.iter().any(|e| e.contains(expected)))
    })
    .await;
    assert!(
        stored,
        "stored errors: {:?}\nrepository sessions:\n{}\ndaemon log:\n{}",
        stored_errors(&repo, srvid).await,
        sessions(&repo).await,
        daemon.log()
    );
    let errors = format!("{:?}", stored_errors(&repo, srvid).await);
    assert!(!errors.contains(PASSWORD), "{errors}");
    // The log line follows the repository write by a moment.
    let logged = eventually(Duration::from_secs(10), || async {
        daemon.log().contains(expected)
    })
    .await;
    assert!(logged, "{}", daemon.log());
    assert!(!daemon.log().contains(PASSWORD), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_authenticates_the_remote_role() {
    let ca = TestCa::new("client CA").unwrap();
    let mut remote = with_tls(remote_options(), &ca, &["127.0.0.1"]);
    remote.hba = Some(vec![
        "hostssl all fleet_cert 127.0.0.0/8 cert".to_string(),
        "host all fleet_cert 127.0.0.0/8 reject".to_string(),
        "host all all 127.0.0.0/8 trust".to_string(),
    ]);
    let fleet = fleet(repository_options(), vec![remote]);
    fleet.remotes[0]
        .psql("postgres", "CREATE ROLE fleet_cert LOGIN SUPERUSER")
        .unwrap();
    let srvid = fleet.register(0, 5, None).unwrap();
    fleet
        .repository
        .psql(
            "powa",
            &format!("UPDATE powa_servers SET username = 'fleet_cert' WHERE id = {srvid}"),
        )
        .unwrap();
    let client = ca.client("fleet_cert", "fleet_cert").unwrap();
    let root = toml_path(&ca.root());

    // Without a certificate the server refuses the role.
    let out = check(&fleet, "", "[remote]\nsslmode = \"require\"\n");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(server_line(&out, srvid).contains("FAILED"), "{out:?}");

    let extra = format!(
        "[remote]\nsslmode = \"verify-full\"\nsslrootcert = {root}\nsslcert = {}\nsslkey = {}\n",
        toml_path(&client.cert),
        toml_path(&client.key)
    );
    let out = check(&fleet, "", &extra);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(server_line(&out, srvid).contains("OK, TLS yes"), "{out:?}");

    let daemon = Daemon::start(
        Path::new(BIN),
        &fleet.repository_dsn(),
        &format!("{extra}{FAST}{STEPS}"),
    )
    .unwrap();
    let repo = fleet.repository.client("powa").await.unwrap();
    assert!(
        snapshots_reach(&repo, srvid, 2).await,
        "no snapshot with a client certificate:\n{}\nrepository sessions:\n{}",
        daemon.log(),
        sessions(&repo).await
    );
    let user: String = fleet.remotes[0]
        .psql(
            "postgres",
            "SELECT string_agg(DISTINCT a.usename || ' ' || s.client_dn, ',') \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE '%powa-fleet%'",
        )
        .unwrap();
    assert_eq!(user, "fleet_cert /CN=fleet_cert", "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_prints_a_line_per_server_and_fails_on_an_unreachable_one() {
    let ca = TestCa::new("check CA").unwrap();
    let fleet = fleet(
        repository_options(),
        vec![
            with_tls(remote_options(), &ca, &["127.0.0.1"]),
            remote_options(),
        ],
    );
    let encrypted = fleet.register(0, 5, None).unwrap();
    let plain = fleet.register(1, 5, Some("plain")).unwrap();

    // Default sslmode prefer: TLS where the server offers it.
    let out = check(&fleet, "", "");
    assert_eq!(out.code, Some(0), "{out:?}");
    let first = out.stdout.lines().next().unwrap_or_default();
    let powa = fleet
        .repository
        .psql(
            "powa",
            "SELECT extversion FROM pg_extension WHERE extname = 'powa'",
        )
        .unwrap();
    assert!(
        first.starts_with("repository ")
            && first.contains(&format!(": OK, TLS no, powa {powa},"))
            && first.contains("LISTEN and NOTIFY allowed"),
        "{out:?}"
    );
    let line = server_line(&out, encrypted);
    let pg_major = fleet.remotes[0]
        .psql(
            "powa",
            "SELECT current_setting('server_version_num')::int / 10000",
        )
        .unwrap();
    assert!(
        line.contains(&format!("OK, TLS yes, PostgreSQL {pg_major}")),
        "{line}"
    );
    assert!(line.contains("(matches the repository)"), "{line}");
    assert!(
        line.contains("pg_qualstats") && line.contains("privileges OK"),
        "{line}"
    );
    assert!(server_line(&out, plain).contains("OK, TLS no"), "{out:?}");

    // One server down: its line says why, the other stays OK, exit 1.
    fleet.remotes[1].stop().unwrap();
    let out = check(&fleet, "", "");
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = server_line(&out, plain);
    assert!(
        line.contains("FAILED: could not connect to remote server"),
        "{line}"
    );
    assert!(
        server_line(&out, encrypted).contains("OK, TLS yes"),
        "{out:?}"
    );
}
