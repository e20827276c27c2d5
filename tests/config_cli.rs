//! The configuration as a user meets it through the binary: what
//! `powa-fleet config` shows, and the exit code and message of every
//! broken configuration. No PostgreSQL needed: a configuration error stops
//! everything before any connection.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");

/// Run the binary in an empty home and working directory.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("POWA_FLEET_CONFIG");
    for (k, _) in std::env::vars() {
        if k.starts_with("POWA_FLEET_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_shows_merged_values_sources_and_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        "[repository]\ndsn = \"host=db user=powa password=Sup3rSecret dbname=powa\"\n\
         [snapshots]\nmax_concurrent = 3\n[timeouts]\nconnect = 4\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &[
            "--config",
            file.to_str().unwrap(),
            "--log-level",
            "debug",
            "config",
        ],
        &[("POWA_FLEET_SNAPSHOTS__MAX_CONCURRENT", "6")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!text.contains("Sup3rSecret"), "{text}");
    assert!(text.contains("password=********"), "{text}");
    assert!(
        text.contains("snapshots.max_concurrent = 6  # from environment variable POWA_FLEET_SNAPSHOTS__MAX_CONCURRENT"),
        "{text}"
    );
    assert!(
        text.contains("timeouts.connect = 4.0  # from file"),
        "{text}"
    );
    assert!(
        text.contains("log.level = \"debug\"  # from command-line flag"),
        "{text}"
    );
    assert!(
        text.contains("shutdown.grace = 5.0  # from built-in default"),
        "{text}"
    );
}

#[test]
fn broken_configurations_exit_2_with_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    let path = file.to_str().unwrap();
    let cases: &[(&str, &str)] = &[
        ("[repository\ndsn = 'host=a'\n", "fleet.toml"),
        ("[repository]\ndsn = 'host=a'\nbogus = 1\n", "bogus"),
        (
            "[repository]\ndsn = 'host=a'\n[snapshots]\nmax_concurrent = 'x'\n",
            "max_concurrent",
        ),
        ("[log]\nlevel = 'info'\n", "repository.dsn"),
        (
            "[repository]\ndsn = 'host=a port=x password=Pw-in-dsn'\n",
            "repository.dsn",
        ),
        (
            "[repository]\ndsn = 'host=a'\n[log]\nlevel = 'chatty'\n",
            "chatty",
        ),
        (
            "[repository]\ndsn = 'host=a'\n[restart]\nbackoff_min = 9\nbackoff_max = 3\n",
            "restart.backoff_min",
        ),
        (
            "[repository]\ndsn = 'host=a'\n[snapshots]\nmax_concurrent = 0\n",
            "snapshots.max_concurrent",
        ),
        // A syntax error must not quote the line, which holds a password.
        (
            "[repository]\ndsn = 'host=a password=Pw-in-dsn' junk\n",
            "line 2",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(&file, text).unwrap();
        for command in ["run", "config"] {
            let out = run(dir.path(), &["--config", path, command], &[]);
            let message = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{text:?}: {message}");
            assert!(message.contains(needle), "{text:?}: {message}");
            assert!(!message.contains("Pw-in-dsn"), "{message}");
        }
    }
    let out = run(
        dir.path(),
        &["--config", "/nonexistent/fleet.toml", "run"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/fleet.toml"),
        "{}",
        stderr(&out)
    );
    // A log file that cannot be opened is a configuration error too.
    std::fs::write(&file, "[repository]\ndsn = 'host=a'\n").unwrap();
    let out = run(
        dir.path(),
        &["--config", path, "--log-file", "/nonexistent/x.log", "run"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent/x.log"));
}

#[test]
fn usage_version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = run(dir.path(), &["--help"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("status"));
    let out = run(dir.path(), &["no-such-command"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_sample_configurations_load() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = root.join("conf/powa-fleet.toml");
    let out = run(
        dir.path(),
        &["--config", sample.to_str().unwrap(), "config"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The reference's file, found where the reference looks (here the
    // working directory).
    std::fs::copy(
        root.join("conf/powa-collector.conf-dist"),
        dir.path().join("powa-collector.conf"),
    )
    .unwrap();
    let out = run(dir.path(), &["config"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    // On machines with /etc/powa-collector.conf, that one comes first.
    assert!(text.contains("powa-collector.conf"), "{text}");
}
