//! Properties of configuration loading: any configuration written as
//! TOML or as the reference's JSON loads back to itself; any file, broken
//! or not, loads or gets an error naming what is wrong, never a panic, and
//! neither the error nor `powa-fleet config` ever shows the password.
//!
//! The generated files go through [`from_parts`], the function [`load`]
//! hands the file's text, the environment and the flags to, so that a
//! case costs a parse rather than a file written and read; smaller
//! properties check that `load` answers for a written file as
//! `from_parts` does for its text, and that the environment is read as
//! figment's own `Env` reads it.

use std::path::{Path, PathBuf};

use figment::Jail;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

use super::*;

/// Cases for this family and run: `POWAFLEET_PROPTEST_CASES`, else
/// 10^5, as for the other families.
fn family_cases() -> u32 {
    match std::env::var("POWAFLEET_PROPTEST_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("POWAFLEET_PROPTEST_CASES={text:?} is not a number")),
        Err(_) => 100_000,
    }
}

/// A property taking `share` of the family's cases.
fn runner(share: f64) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: ((f64::from(family_cases()) * share).ceil() as u32).max(1),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..RunnerConfig::default()
    })
}

/// Where the generated files say they are.
const DIR: &str = "/etc/powa-fleet";

/// `name` with `text`, loaded as `load` loads a named file, with no
/// environment and no flags.
fn load_text(name: &str, text: &str) -> Result<Loaded, ConfigError> {
    let file = FileText::new(&Path::new(DIR).join(name), text.to_string(), true);
    from_parts(Some(file), &Environment::default(), &Flags::default(), &[])
}

/// Strings matching `pattern`, parsed once (a `&str` strategy parses
/// its pattern again for every case).
fn text(pattern: &str) -> proptest::string::RegexGeneratorStrategy<String> {
    proptest::string::string_regex(pattern).expect("a valid pattern")
}

/// A distinctive password, so that finding it in a message is a leak.
const SECRET: &str = "Pw-7Hq3Zx";

fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn dsn() -> impl Strategy<Value = String> {
    (
        text("[a-z0-9.]{1,10}"),
        1u16..,
        text("[^\0]{0,10}"),
        text("[^\0]{0,10}"),
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
    proptest::option::of(text("[^\0]{1,20}").prop_map(PathBuf::from))
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
        proptest::option::of(text("[A-Za-z0-9:._-]{1,30}")),
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

/// Generated configurations written as `name` (TOML, or JSON if it
/// ends in `.json`) load back to themselves, and `powa-fleet config`
/// does not show the password. A case costs twice a broken file's (most
/// of those stop at the first error), hence the smaller share.
fn files_load_back_to_what_they_say(name: &str) {
    let json = name.ends_with(".json");
    let result = runner(0.15).run(&config(), |config| {
        let text = if json {
            serde_json::to_string_pretty(&config).expect("JSON")
        } else {
            to_toml(&config)
        };
        let loaded =
            load_text(name, &text).map_err(|e| TestCaseError::fail(format!("{text}\n→ {e}")))?;
        check(
            loaded.config == config || same(&loaded.config, &config),
            || format!("{text}\n→ {:?}", loaded.config),
        )?;
        let shown = loaded.describe();
        check(!shown.contains(SECRET), || shown.clone())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// One test per format, so that the two run side by side.
#[test]
fn toml_files_load_back_to_what_they_say() {
    files_load_back_to_what_they_say("fleet.toml");
}

#[test]
fn json_files_load_back_to_what_they_say() {
    files_load_back_to_what_they_say("fleet.json");
}

/// A value's name in the configuration (`warning`, `verify-full`).
fn name_of(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value).expect("serialises") {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Over a generated file, environment variables (in any case) and flags
/// set some keys from two other generated configurations: the loaded
/// configuration has the flags' values over the environment's over the
/// file's, libpq's variables stay below the file, and `powa-fleet config`
/// names the source of each.
#[test]
fn the_environment_and_flags_override_the_file() {
    let strategy = (
        (config(), config(), config()),
        (any::<u8>(), any::<u8>(), any::<bool>()),
    );
    let result = runner(0.03).run(
        &strategy,
        |((file, env, flag), (in_env, in_flags, lower))| {
            let text = to_toml(&file);
            let mut expected = file.clone();
            let mut vars: Vec<(String, String)> = Vec::new();
            let mut sources: Vec<(&str, String)> = Vec::new();
            let mut var = |key: &'static str, value: String| {
                let name = format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase());
                sources.push((key, format!("environment variable {name}")));
                vars.push((if lower { name.to_lowercase() } else { name }, value));
            };
            if in_env & 1 != 0 {
                expected.log.level = env.log.level;
                var("log.level", name_of(env.log.level));
            }
            if in_env & 2 != 0 {
                expected.snapshots.max_concurrent = env.snapshots.max_concurrent;
                var(
                    "snapshots.max_concurrent",
                    name_of(env.snapshots.max_concurrent),
                );
            }
            if in_env & 4 != 0 {
                expected.timeouts.connect = env.timeouts.connect;
                var("timeouts.connect", env.timeouts.connect.to_string());
            }
            if let (true, Some(listen)) = (in_env & 8 != 0, &env.http.listen) {
                expected.http.listen = Some(listen.clone());
                var("http.listen", listen.clone());
            }
            if in_env & 16 != 0 {
                // Below the file, which always sets it.
                vars.push(("PGSSLMODE".into(), name_of(env.remote.sslmode)));
            }
            let mut flags = Flags::default();
            if in_flags & 1 != 0 {
                expected.log.level = flag.log.level;
                flags.log_level = Some(name_of(flag.log.level));
                sources.push(("log.level", "command-line flag".into()));
            }
            if in_flags & 2 != 0 {
                expected.snapshots.max_concurrent = flag.snapshots.max_concurrent;
                flags.max_concurrent_snapshots = Some(flag.snapshots.max_concurrent);
                sources.push(("snapshots.max_concurrent", "command-line flag".into()));
            }
            if let (true, Some(listen)) = (in_flags & 4 != 0, &flag.http.listen) {
                expected.http.listen = Some(listen.clone());
                flags.http_listen = Some(listen.clone());
                sources.push(("http.listen", "command-line flag".into()));
            }
            if in_flags & 8 != 0 {
                expected.repository.dsn = flag.repository.dsn.clone();
                flags.repository_dsn = flag.repository.dsn.clone();
                sources.push(("repository.dsn", "command-line flag".into()));
            }
            if in_flags & 16 != 0 {
                expected.debug = true;
                flags.debug = true;
            }
            let file_text = FileText::new(&Path::new(DIR).join("fleet.toml"), text.clone(), true);
            let loaded = from_parts(
                Some(file_text),
                &Environment::new(vars.clone()),
                &flags,
                &[],
            )
            .map_err(|e| TestCaseError::fail(format!("{text}\n{vars:?}\n{flags:?}\n→ {e}")))?;
            check(
                loaded.config == expected || same(&loaded.config, &expected),
                || format!("{text}\n{vars:?}\n{flags:?}\n→ {:?}", loaded.config),
            )?;
            let shown = loaded.describe();
            check(!shown.contains(SECRET), || shown.clone())?;
            // The last source given for a key is the one that wins.
            let winners: std::collections::BTreeMap<&str, &String> =
                sources.iter().map(|(key, source)| (*key, source)).collect();
            for (key, source) in winners {
                let line = shown.lines().find(|l| l.starts_with(&format!("{key} = ")));
                check(
                    line.is_some_and(|l| l.ends_with(&format!("# from {source}"))),
                    || format!("{key} from {source}?\n{shown}"),
                )?;
            }
            let sslmode = shown.lines().find(|l| l.starts_with("remote.sslmode = "));
            check(sslmode.is_some_and(|l| l.contains("# from file ")), || {
                shown.clone()
            })
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
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
            text("[^\0]{1,3}"),
            text("\n[a-z_.]{1,12} = (-?[0-9.e]{1,6}|\"[^\"]{0,5}\"|true|\\[\\]|\\{\\})\n"),
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

/// A file: a generated configuration as TOML or JSON (`json`, else
/// either), or one time in ten any text, broken by `edits` edits; and
/// whether it is JSON.
fn file(
    json: Option<bool>,
    edits: std::ops::Range<usize>,
) -> impl Strategy<Value = (bool, String)> {
    (
        config(),
        json.map_or_else(|| any::<bool>().boxed(), |json| Just(json).boxed()),
        prop::collection::vec(edit(), edits),
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
        })
}

/// Generated files, broken, named `name`, load or get an error naming
/// what is wrong, and neither shows the password.
fn broken_files_get_an_error_naming_the_problem(name: &str) {
    let json = name.ends_with(".json");
    let result = runner(0.35).run(&file(Some(json), 1..3), |(_, text)| {
        match load_text(name, &text) {
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
}

#[test]
fn broken_toml_files_get_an_error_naming_the_problem() {
    broken_files_get_an_error_naming_the_problem("fleet.toml");
}

#[test]
fn broken_json_files_get_an_error_naming_the_problem() {
    broken_files_get_an_error_naming_the_problem("fleet.json");
}

/// What `load` answers, as comparable text: the configuration and its
/// sources, or the error.
fn outcome(result: Result<Loaded, ConfigError>) -> Result<String, String> {
    result
        .map(|loaded| format!("{:?}\n{}", loaded.config, loaded.describe()))
        .map_err(|e| e.to_string())
}

/// `load` on a file written to disk answers as `from_parts` on its text:
/// the properties above test the loader users run. A case writes and
/// reads a file, hence a small share.
#[test]
fn a_written_file_loads_as_its_text_does() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let result = runner(0.005).run(&file(None, 0..3), |(json, text)| {
            let path = jail
                .directory()
                .join(if json { "fleet.json" } else { "fleet.toml" });
            // A new file each time: ext4 flushes a file truncated and
            // rewritten when it is closed, which would cost milliseconds.
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, &text).expect("file written");
            let from_disk = outcome(load(&Sources {
                config: Some(path.clone()),
                flags: Flags::default(),
                legacy: vec![],
            }));
            let from_text = outcome(from_parts(
                Some(FileText::new(&path, text.clone(), true)),
                &Environment::default(),
                &Flags::default(),
                &[],
            ));
            check(from_disk == from_text, || {
                format!("{text}\n→ {from_disk:?}\n≠ {from_text:?}")
            })
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        Ok(())
    });
}

/// How the generated variable names start.
const VAR_PREFIXES: [&str; 7] = [
    "POWA_FLEET_",
    "powa_fleet_",
    "Powa_Fleet_",
    " POWA_FLEET_",
    "POWA_FLEET",
    "PGSSL",
    "",
];

/// How they go on, beside random text.
const VAR_NAMES: [&str; 9] = [
    "CONFIG",
    "config",
    "LOG__LEVEL",
    "log__level ",
    "SNAPSHOTS__MAX_CONCURRENT",
    "REPOSITORY__DSN",
    "MODE",
    "A____B",
    "__X",
];

/// Environment variables, most for powa-fleet, in odd spellings.
fn variables() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = (
        proptest::sample::select(VAR_PREFIXES.to_vec()),
        prop_oneof![
            proptest::sample::select(VAR_NAMES.to_vec()).prop_map(str::to_owned),
            text("[A-Za-z_. ]{1,14}"),
        ],
    )
        .prop_map(|(prefix, rest)| format!("{prefix}{rest}"));
    let value = prop_oneof![
        proptest::sample::select(vec!["5", "-1.5", "true", "[1, 2]", "{a = 1}", "\"x\"", ""])
            .prop_map(str::to_owned),
        text("[^\0]{0,8}"),
    ];
    prop::collection::vec((name, value), 0..5)
}

/// `Environment` and `EnvProvider` read the process's variables as
/// figment's `Env::prefixed(ENV_PREFIX).split("__")` does. Few cases: each
/// sets process variables while other tests of this binary run (libc's
/// `setenv` races with any `getenv` outside Rust's lock).
#[test]
fn environment_variables_read_as_figment_reads_them() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let figments = Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__");
        let result = runner(0.003).run(&variables(), |vars| {
            for (name, value) in &vars {
                std::env::set_var(name, value);
            }
            let env = Environment::of_process();
            let ours = EnvProvider(&env).data();
            let theirs = figments.data();
            for (name, _) in &vars {
                std::env::remove_var(name);
            }
            let (ours, theirs) = (ours.expect("no error"), theirs.expect("no error"));
            check(ours == theirs, || {
                format!("{vars:?}\n→ {ours:?}\n≠ {theirs:?}")
            })?;
            // libpq's variables: those set to something, by exact name.
            let last = |var: &str| vars.iter().rev().find(|(n, _)| n == var);
            let mut expected: Vec<&str> = LIBPQ_ENV
                .iter()
                .filter(|(_, var)| last(var).is_some_and(|(_, v)| !v.is_empty()))
                .map(|(key, _)| *key)
                .collect();
            expected.sort_unstable();
            let remote = LibpqEnv(&env).data().expect("no error");
            let found: Vec<&str> = remote
                .get(&Profile::Default)
                .and_then(|d| d.get("remote"))
                .and_then(|r| r.as_dict())
                .map(|d| d.keys().map(String::as_str).collect())
                .unwrap_or_default();
            check(found == expected, || format!("{vars:?}\n→ {remote:?}"))
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        // Every spelling above at once: several set one key, and the
        // process's order decides.
        let vars: Vec<String> = VAR_PREFIXES
            .iter()
            .flat_map(|p| VAR_NAMES.iter().map(move |n| format!("{p}{n}")))
            .collect();
        for (i, name) in vars.iter().enumerate() {
            std::env::set_var(name, i.to_string());
        }
        let ours = EnvProvider(&Environment::of_process()).data();
        let theirs = figments.data();
        for name in &vars {
            std::env::remove_var(name);
        }
        assert_eq!(ours.expect("no error"), theirs.expect("no error"));
        Ok(())
    });
}

/// Cases the properties found, kept as they were.
#[test]
fn regressions() {
    // A stray quote before `password` hid it from the redaction of the
    // DSN quoted in the error.
    let text = format!(
        "[repository]\ndsn = \"host=0 port=1 user='a\\\\A' 'password='{SECRET}' dbname=''\"\n"
    );
    let message = load_text("fleet.toml", &text).unwrap_err().to_string();
    assert!(message.contains("repository.dsn"), "{message}");
    assert!(!message.contains(SECRET), "{message}");
    // Likewise a stray brace.
    let text = format!("[repository]\ndsn = \"host=a user='a' }}password='{SECRET}'\"\n");
    let message = load_text("fleet.toml", &text).unwrap_err().to_string();
    assert!(!message.contains(SECRET), "{message}");
}
