//! Properties of configuration loading: any configuration written as
//! TOML or as the reference's JSON loads back to itself; any file, broken
//! or not, loads or gets an error naming what is wrong, never a panic, and
//! neither the error nor `powa-fleet config` ever shows the password.

use std::path::PathBuf;

use figment::Jail;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

use super::*;

/// Cases for this family: a tenth of `POWAFLEET_PROPTEST_CASES`, else
/// 10000. One load is a file written and read through figment, some 2 ms
/// in the test profile (the other families' cases take microseconds):
/// 10^5 of them would add minutes to every run; the longer mode runs 10^5.
fn family_cases() -> u32 {
    std::env::var("POWAFLEET_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(100_000)
        / 10
}

fn runner(share: f64) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: ((f64::from(family_cases()) * share).ceil() as u32).max(1),
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// A distinctive password, so that finding it in a message is a leak.
const SECRET: &str = "Pw-7Hq3Zx";

fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn dsn() -> impl Strategy<Value = String> {
    (
        "[a-z0-9.]{1,10}",
        1u16..,
        "[^\0]{0,10}",
        "[^\0]{0,10}",
        proptest::sample::select(vec!["", " sslmode=require", " sslmode=disable"]),
    )
        .prop_map(|(host, port, user, db, ssl)| {
            format!(
                "host={host} port={port} user={} password={} dbname={}{ssl}",
                quoted(&user),
                quoted(SECRET),
                quoted(&db)
            )
        })
}

fn path() -> impl Strategy<Value = Option<PathBuf>> {
    proptest::option::of("[^\0]{1,20}".prop_map(PathBuf::from))
}

fn seconds(zero_ok: bool) -> impl Strategy<Value = f64> {
    let low = if zero_ok { 0.0 } else { 0.001 };
    prop_oneof![low..1e6, Just(1.0), Just(if zero_ok { 0.0 } else { 30.0 })]
}

fn config() -> impl Strategy<Value = Config> {
    let remote = (
        proptest::sample::select(vec![
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]),
        path(),
        path(),
        path(),
    )
        .prop_map(|(sslmode, sslrootcert, sslcert, sslkey)| RemoteSection {
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
        });
    let log = (
        proptest::sample::select(vec![
            LogLevel::Error,
            LogLevel::Warning,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ]),
        proptest::sample::select(vec![LogFormat::Console, LogFormat::Json]),
        path(),
    )
        .prop_map(|(level, format, file)| LogSection {
            level,
            format,
            file,
        });
    let timeouts = (
        seconds(false),
        seconds(false),
        seconds(true),
        seconds(false),
        seconds(false),
    )
        .prop_map(
            |(connect, lock, statement, remote, keepalive_idle)| TimeoutsSection {
                connect,
                lock,
                statement,
                remote,
                keepalive_idle,
            },
        );
    let restart = (seconds(false), seconds(false)).prop_map(|(a, b)| RestartSection {
        backoff_min: a.min(b),
        backoff_max: a.max(b),
    });
    (
        (any::<bool>(), any::<bool>(), dsn()),
        remote,
        log,
        (1usize..1000, 0usize..64),
        timeouts,
        restart,
        seconds(true),
        proptest::option::of((any::<[u8; 4]>(), 1u16..)),
        proptest::option::of("[A-Za-z0-9:._-]{1,30}"),
    )
        .prop_map(
            |(
                (debug, use_server_alias, dsn),
                remote,
                log,
                (max, threads),
                timeouts,
                restart,
                grace,
                listen,
                member_name,
            )| {
                Config {
                    debug,
                    use_server_alias,
                    repository: RepositorySection { dsn: Some(dsn) },
                    remote,
                    log,
                    snapshots: SnapshotsSection {
                        max_concurrent: max,
                        worker_threads: threads,
                    },
                    timeouts,
                    restart,
                    shutdown: ShutdownSection { grace },
                    http: HttpSection {
                        listen: listen
                            .map(|([a, b, c, d], port)| format!("{a}.{b}.{c}.{d}:{port}")),
                    },
                    member: MemberSection { name: member_name },
                }
            },
        )
}

/// A TOML basic string: JSON's escapes, plus DEL, which TOML wants escaped.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s)
        .expect("strings serialise")
        .replace('\u{7f}', "\\u007F")
}

fn toml_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => toml_string(s),
        other => other.to_string(),
    }
}

/// The configuration as a TOML file: top-level keys, then one table per
/// section.
fn to_toml(config: &Config) -> String {
    let value = serde_json::to_value(config).expect("config serialises");
    let mut top = String::new();
    let mut tables = String::new();
    for (key, value) in value.as_object().expect("an object") {
        match value {
            serde_json::Value::Object(section) => {
                tables.push_str(&format!("[{key}]\n"));
                for (k, v) in section {
                    tables.push_str(&format!("{k} = {}\n", toml_value(v)));
                }
            }
            other => top.push_str(&format!("{key} = {}\n", toml_value(other))),
        }
    }
    top + &tables
}

fn load_file(jail: &Jail, name: &str, text: &str) -> Result<Loaded, ConfigError> {
    let path = jail.directory().join(name);
    std::fs::write(&path, text).expect("file written");
    load(&Sources {
        config: Some(path),
        flags: Flags::default(),
        legacy: vec![],
    })
}

/// Equal, but for the last bit of a float: serde_json (without its
/// `float_roundtrip` feature) may read a decimal 1 ulp off.
fn same(a: &Config, b: &Config) -> bool {
    fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value::{Number, Object};
        match (a, b) {
            (Object(a), Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| close(v, w)))
            }
            (Number(x), Number(y)) => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= x.abs().max(y.abs()) * 1e-15,
                _ => x == y,
            },
            (a, b) => a == b,
        }
    }
    let value = |c: &Config| serde_json::to_value(c).expect("config serialises");
    close(&value(a), &value(b))
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

#[test]
fn toml_and_json_files_load_back_to_what_they_say() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let result = runner(0.5).run(&(config(), any::<bool>()), |(config, json)| {
            let (name, text) = if json {
                (
                    "fleet.json",
                    serde_json::to_string_pretty(&config).expect("JSON"),
                )
            } else {
                ("fleet.toml", to_toml(&config))
            };
            let loaded = load_file(jail, name, &text)
                .map_err(|e| TestCaseError::fail(format!("{text}\n→ {e}")))?;
            check(same(&loaded.config, &config), || {
                format!("{text}\n→ {:?}", loaded.config)
            })?;
            let shown = loaded.describe();
            check(!shown.contains(SECRET), || shown.clone())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        Ok(())
    });
}

/// What breaks a file in one place: where, how (cut there, put a piece
/// in, add it at the end, or put it for the rest of the line), and the
/// piece.
fn edit() -> impl Strategy<Value = (prop::sample::Index, u8, String)> {
    (
        any::<prop::sample::Index>(),
        0..4u8,
        prop_oneof![
            proptest::sample::select(vec!["\"", "'", "\\", "[", "\n", "=", "{", "}", ",", "#"])
                .prop_map(str::to_owned),
            "[^\0]{1,3}",
            "\n[a-z_.]{1,12} = (-?[0-9.e]{1,6}|\"[^\"]{0,5}\"|true|\\[\\]|\\{\\})\n",
        ],
    )
}

fn apply((index, how, piece): (prop::sample::Index, u8, String), text: &str) -> String {
    let mut at = index.index(text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    match how {
        0 => text[..at].to_string(),
        1 => format!("{}{piece}{}", &text[..at], &text[at..]),
        2 => format!("{text}{piece}"),
        _ => {
            let end = text[at..].find('\n').map_or(text.len(), |n| at + n);
            format!("{}{piece}{}", &text[..at], &text[end..])
        }
    }
}

#[test]
fn broken_files_get_an_error_naming_the_problem() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let strategy = (
            config(),
            any::<bool>(),
            prop::collection::vec(edit(), 1..3),
            proptest::option::weighted(0.1, any::<String>()),
        )
            .prop_map(|(config, json, edits, random)| {
                let text = match random {
                    Some(random) => random,
                    None if json => serde_json::to_string_pretty(&config).expect("JSON"),
                    None => to_toml(&config),
                };
                let broken = edits.into_iter().fold(text, |text, e| apply(e, &text));
                (json, broken)
            });
        let result = runner(0.5).run(&strategy, |(json, text)| {
            let name = if json { "fleet.json" } else { "fleet.toml" };
            match load_file(jail, name, &text) {
                Ok(loaded) => {
                    let shown = loaded.describe();
                    check(!shown.contains(SECRET), || shown.clone())
                }
                Err(e) => {
                    let message = e.to_string();
                    check(!message.contains(SECRET), || format!("{text}\n→ {message}"))?;
                    let named = message.contains(name)
                        || matches!(e, ConfigError::MissingDsn { .. })
                        || message.contains("key `");
                    check(named, || format!("{text}\n→ {message}"))
                }
            }
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        Ok(())
    });
}

/// Cases the properties found, kept as they were.
#[test]
fn regressions() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        // A stray quote before `password` hid it from the redaction of the
        // DSN quoted in the error.
        let text = format!(
            "[repository]\ndsn = \"host=0 port=1 user='a\\\\A' 'password='{SECRET}' dbname=''\"\n"
        );
        let message = load_file(jail, "fleet.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(message.contains("repository.dsn"), "{message}");
        assert!(!message.contains(SECRET), "{message}");
        // Likewise a stray brace.
        let text = format!("[repository]\ndsn = \"host=a user='a' }}password='{SECRET}'\"\n");
        let message = load_file(jail, "fleet.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(!message.contains(SECRET), "{message}");
        Ok(())
    });
}
