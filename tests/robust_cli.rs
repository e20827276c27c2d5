//! The binary on arbitrary input: `powa-fleet config` and `powa-fleet
//! check` on a few hundred generated configuration files and connection
//! strings (broken or not) exit 0, 1 or 2 with a message, never with a
//! panic (101) or a signal, and never print the password. Every server
//! they may reach is a closed port or a missing socket on this machine,
//! so `check` fails fast; no PostgreSQL needed.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");
const SECRET: &str = "Pw-9Rk2Tz";
/// Longest an invocation may take: `check` waits for the connect timeout
/// (1 s here) and its queries' bound.
const DEADLINE: Duration = Duration::from_secs(30);

fn run(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("POWA_FLEET_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("POWA_FLEET_TIMEOUTS__CONNECT", "1");
    let started = Instant::now();
    let child = cmd.spawn().expect("binary starts");
    let out = child.wait_with_output().expect("binary runs");
    assert!(
        started.elapsed() < DEADLINE,
        "{args:?} took {:?}",
        started.elapsed()
    );
    out
}

fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A connection string to nowhere reachable: a closed port, a missing
/// socket directory, or no host at all; with odd values and keys.
fn dsn() -> impl Strategy<Value = String> {
    let host = proptest::sample::select(vec![
        "127.0.0.1",
        "127.0.0.1,127.0.0.2",
        "/nonexistent-socket-dir",
        "''",
        "127.0.0.1 port=1",
    ]);
    let port = proptest::sample::select(vec!["1", "0", "99999", "x", "''", "1,2", "-1"]);
    let extra = prop::collection::vec(
        (
            proptest::sample::select(vec![
                "user",
                "dbname",
                "sslmode",
                "sslrootcert",
                "sslcert",
                "sslkey",
                "application_name",
                "options",
                "connect_timeout",
                "bogus",
                "",
            ]),
            prop_oneof![
                "[a-z-]{0,12}",
                "[^\0]{0,8}",
                Just("verify-full".to_string()),
                Just("require".to_string())
            ],
        ),
        0..3,
    );
    let key_value = (host, port, extra, any::<bool>()).prop_map(|(host, port, extra, pw)| {
        let mut text = format!("host={host} port={port}");
        if pw {
            text.push_str(&format!(" password={}", quoted(SECRET)));
        }
        for (k, v) in extra {
            text.push_str(&format!(" {k}={}", quoted(&v)));
        }
        text
    });
    let uri = (
        "[a-z]{0,4}",
        "(:1|:x|:99999)?",
        "(\\?[a-z]{1,8}=[a-z%0-9-]{0,6})?",
    )
        .prop_map(|(db, port, query)| {
            format!("postgresql://powa:{SECRET}@127.0.0.1{port}/{db}{query}")
        });
    prop_oneof![4 => key_value, 2 => uri, 1 => "[^\0]{0,30}"]
}

/// A configuration file, TOML or JSON, then maybe broken in one place.
fn file() -> impl Strategy<Value = (bool, String)> {
    let toml = (dsn(), "[a-z_]{1,10}", "-?[0-9.]{1,4}").prop_map(|(dsn, key, number)| {
        format!(
            "[repository]\ndsn = {}\n[timeouts]\nconnect = 1\n[snapshots]\n{key} = {number}\n",
            serde_json::to_string(&dsn).unwrap()
        )
    });
    let json = (dsn(), any::<bool>()).prop_map(|(dsn, debug)| {
        serde_json::json!({"repository": {"dsn": dsn}, "debug": debug, "timeouts": {"connect": 1}})
            .to_string()
    });
    let text = prop_oneof![(Just(false), toml), (Just(true), json)];
    (
        text,
        any::<prop::sample::Index>(),
        proptest::option::of("[^\0]{0,3}"),
    )
        .prop_map(|((json, text), at, piece)| {
            let text = match piece {
                None => text,
                Some(piece) => {
                    let mut at = at.index(text.len() + 1);
                    while !text.is_char_boundary(at) {
                        at -= 1;
                    }
                    format!("{}{piece}{}", &text[..at], &text[at..])
                }
            };
            (json, text)
        })
}

/// Asserts a clean exit; returns the code.
fn assert_clean_exit(what: &str, out: &Output) -> i32 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0..=2)),
        "{what}: exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(
        !stdout.trim().is_empty() || !stderr.trim().is_empty(),
        "{what}: no message"
    );
    if code == Some(2) {
        assert!(stderr.contains("powa-fleet:"), "{what}: {stderr}");
    }
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{what}: password shown\nstdout: {stdout}\nstderr: {stderr}"
    );
    code.unwrap_or_default()
}

/// The generated inputs reach each outcome: a configuration shown (0), a
/// failed check (1), a configuration error (2).
fn assert_every_outcome(codes: &[i32]) {
    for code in 0..=2 {
        assert!(codes.contains(&code), "no input exited {code}: {codes:?}");
    }
}

/// Generated inputs, the same on every run (a fixed seed), so a failure
/// is found again.
fn generate<S: Strategy>(strategy: S, count: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).expect("value").current())
        .collect()
}

#[test]
fn config_and_check_on_generated_files_exit_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut codes = Vec::new();
    for (i, (json, text)) in generate(file(), 120).into_iter().enumerate() {
        let name = if json { "fleet.json" } else { "fleet.toml" };
        let path = dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        let path = path.to_str().unwrap();
        for command in ["config", "check"] {
            let out = run(dir.path(), &["--config", path, command]);
            codes.push(assert_clean_exit(
                &format!("case {i} {command} on {text:?}"),
                &out,
            ));
        }
    }
    assert_every_outcome(&codes);
}

#[test]
fn check_on_generated_connection_strings_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let mut codes = Vec::new();
    for (i, dsn) in generate(dsn(), 80).into_iter().enumerate() {
        for command in ["config", "check"] {
            let flag = format!("--repository-dsn={dsn}");
            let out = run(
                dir.path(),
                &["--config", empty.to_str().unwrap(), &flag, command],
            );
            codes.push(assert_clean_exit(
                &format!("case {i} {command} with {dsn:?}"),
                &out,
            ));
        }
    }
    assert_every_outcome(&codes);
}
