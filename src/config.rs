//! Configuration: built-in defaults < file < environment < command-line
//! flags, merged with figment.
//!
//! The file is powa-fleet's TOML file (named by `--config` or
//! `POWA_FLEET_CONFIG`), or, when none is named, the reference collector's
//! JSON file found in its usual places, so that powa-fleet replaces it
//! without new configuration. Every error names the file and the key and
//! says what was expected; DSNs only ever appear redacted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Json, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use powa_fleet_actors::connect::repository_config;
use powa_fleet_actors::redact::{redact_dsn, scrub, Secret};
use powa_fleet_actors::settings::Settings;
use powa_fleet_actors::tls::{SslMode, TlsOptions};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Prefix of the environment variables (`POWA_FLEET_LOG__LEVEL=debug`).
pub const ENV_PREFIX: &str = "POWA_FLEET_";
/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "POWA_FLEET_CONFIG";

/// Where the reference collector looks for its JSON file, in order.
pub fn legacy_locations() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/etc/powa-collector.conf")];
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        paths.push(home.join(".config/powa-collector.conf"));
        paths.push(home.join(".powa-collector.conf"));
    }
    paths.push(PathBuf::from("./powa-collector.conf"));
    paths
}

/// The first existing file among `candidates`.
pub fn find_legacy(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    #[serde(alias = "warn")]
    Warning,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn slog(self) -> slog::Level {
        match self {
            LogLevel::Error => slog::Level::Error,
            LogLevel::Warning => slog::Level::Warning,
            LogLevel::Info => slog::Level::Info,
            LogLevel::Debug => slog::Level::Debug,
            LogLevel::Trace => slog::Level::Trace,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Console,
    Json,
}

/// The configuration file's schema.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log at debug level (the reference collector's key).
    #[serde(default)]
    pub debug: bool,
    /// Name servers by alias rather than `host:port` in logs and status.
    #[serde(default)]
    pub use_server_alias: bool,
    #[serde(default)]
    pub repository: RepositorySection,
    #[serde(default)]
    pub remote: RemoteSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub snapshots: SnapshotsSection,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    #[serde(default)]
    pub restart: RestartSection,
    #[serde(default)]
    pub shutdown: ShutdownSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub member: MemberSection,
}

/// The HTTP endpoint (`/metrics`, `/healthz`, `/readyz`), off unless
/// `listen` is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `address:port` to listen on, e.g. `127.0.0.1:9188`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl HttpSection {
    /// The address to listen on, validated at load.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.listen.as_deref().and_then(|l| l.parse().ok())
    }
}

/// This collector among the others sharing the repository.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    /// Shown in `application_name` and status; default host name and pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySection {
    /// libpq connection string of the repository database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsn: Option<String>,
}

/// TLS of the remote server connections, with libpq's names and meaning
/// (`powa_servers` has no column for them). Defaults come from libpq's
/// environment variables `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and
/// `PGSSLKEY`, else `prefer` and libpq's default files.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteSection {
    pub sslmode: SslMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslcert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslkey: Option<PathBuf>,
}

/// libpq's environment variable behind each `remote` key.
const LIBPQ_ENV: [(&str, &str); 4] = [
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub level: LogLevel,
    pub format: LogFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: LogLevel::Info,
            format: LogFormat::Console,
            file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsSection {
    pub max_concurrent: usize,
    pub worker_threads: usize,
}

impl Default for SnapshotsSection {
    fn default() -> Self {
        let d = Settings::default();
        SnapshotsSection {
            max_concurrent: d.max_concurrent_snapshots,
            worker_threads: d.worker_threads,
        }
    }
}

/// Seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSection {
    pub connect: f64,
    pub lock: f64,
    pub statement: f64,
    pub remote: f64,
    pub keepalive_idle: f64,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        let d = Settings::default();
        TimeoutsSection {
            connect: d.connect_timeout.as_secs_f64(),
            lock: d.lock_timeout.as_secs_f64(),
            statement: d.statement_timeout.as_secs_f64(),
            remote: d.remote_silence.as_secs_f64(),
            keepalive_idle: d.keepalive_idle.as_secs_f64(),
        }
    }
}

/// Seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartSection {
    pub backoff_min: f64,
    pub backoff_max: f64,
}

impl Default for RestartSection {
    fn default() -> Self {
        let d = Settings::default();
        RestartSection {
            backoff_min: d.backoff_min.as_secs_f64(),
            backoff_max: d.backoff_max.as_secs_f64(),
        }
    }
}

/// Seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    pub grace: f64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            grace: Settings::default().shutdown_grace.as_secs_f64(),
        }
    }
}

/// Values given on the command line; only those present override.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flags {
    pub repository_dsn: Option<String>,
    pub debug: bool,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub log_file: Option<PathBuf>,
    pub max_concurrent_snapshots: Option<usize>,
    pub http_listen: Option<String>,
}

impl Flags {
    fn dict(&self) -> Dict {
        let mut root = serde_json::Map::new();
        let mut section = |name: &str, key: &str, value: serde_json::Value| {
            let entry = root
                .entry(name.to_string())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            entry
                .as_object_mut()
                .expect("sections are objects")
                .insert(key.to_string(), value);
        };
        if let Some(dsn) = &self.repository_dsn {
            section("repository", "dsn", dsn.clone().into());
        }
        if let Some(level) = &self.log_level {
            section("log", "level", level.clone().into());
        }
        if let Some(format) = &self.log_format {
            section("log", "format", format.clone().into());
        }
        if let Some(file) = &self.log_file {
            section("log", "file", file.display().to_string().into());
        }
        if let Some(n) = self.max_concurrent_snapshots {
            section("snapshots", "max_concurrent", n.into());
        }
        if let Some(listen) = &self.http_listen {
            section("http", "listen", listen.clone().into());
        }
        if self.debug {
            root.insert("debug".into(), true.into());
        }
        Serialized::defaults(serde_json::Value::Object(root))
            .data()
            .ok()
            .and_then(|mut m| m.remove(&Profile::Default))
            .unwrap_or_default()
    }
}

/// What a (re)load reads: the same file, environment and flags each time.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config`, else `POWA_FLEET_CONFIG` at load time.
    pub config: Option<PathBuf>,
    pub flags: Flags,
    /// Where to look for the reference's JSON file when no file is named.
    pub legacy: Vec<PathBuf>,
}

impl Sources {
    pub fn new(config: Option<PathBuf>, flags: Flags) -> Sources {
        Sources {
            config,
            flags,
            legacy: legacy_locations(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration{}: key `{key}` {problem}", in_file(.file))]
    BadValue {
        file: Option<String>,
        key: &'static str,
        problem: String,
    },
    #[error("no repository configured: set `repository.dsn` in a configuration file \
             (--config or {CONFIG_ENV}), in {ENV_PREFIX}REPOSITORY__DSN, or with --repository-dsn{}", looked(.looked_in))]
    MissingDsn { looked_in: Vec<String> },
    #[error("cannot open log file {path}: {reason}")]
    LogFile { path: String, reason: String },
}

fn in_file(file: &Option<String>) -> String {
    file.as_ref()
        .map(|f| format!(" in {f}"))
        .unwrap_or_default()
}

fn looked(paths: &[String]) -> String {
    if paths.is_empty() {
        String::new()
    } else {
        format!(" (no file found in {})", paths.join(", "))
    }
}

/// Built-in defaults, named so `powa-fleet config` can say so.
struct Defaults;

impl Provider for Defaults {
    fn metadata(&self) -> Metadata {
        Metadata::named("built-in default")
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Serialized::defaults(Config::default()).data()
    }
}

/// libpq's TLS environment variables as defaults of the `remote` section,
/// above the built-in defaults and below the file.
struct LibpqEnv<'a>(&'a Environment);

impl Provider for LibpqEnv<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named("libpq environment variable")
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut remote = serde_json::Map::new();
        for (key, var) in LIBPQ_ENV {
            if let Some(value) = self.0.get(var).filter(|v| !v.is_empty()) {
                remote.insert(key.to_string(), value.into());
            }
        }
        if remote.is_empty() {
            return Ok(Map::new());
        }
        let root = serde_json::json!({ "remote": remote });
        Serialized::defaults(root).data()
    }
}

/// The file's text, parsed by figment's TOML or JSON provider and named
/// as figment names a file it reads itself (`TOML file`, with its path as
/// the source), so that errors and `powa-fleet config` say which file.
struct FileProvider<'a>(&'a FileText);

impl Provider for FileProvider<'_> {
    fn metadata(&self) -> Metadata {
        let format = if self.0.json { "JSON" } else { "TOML" };
        Metadata::from(format!("{format} file"), self.0.source.as_path())
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        if self.0.json {
            Json::string(&self.0.text).data()
        } else {
            Toml::string(&self.0.text).data()
        }
    }
}

/// `POWA_FLEET_<SECTION>__<KEY>` variables, read from `Environment` with
/// the rules of figment's `Env::prefixed(ENV_PREFIX).split("__")`: the
/// prefix in any case, names trimmed and lowercased, a name with an empty
/// part skipped, values parsed as figment parses them (`5` a number,
/// `true` a boolean, else a string); `POWA_FLEET_CONFIG` names the file
/// and is not a key.
struct EnvProvider<'a>(&'a Environment);

impl Provider for EnvProvider<'_> {
    fn metadata(&self) -> Metadata {
        // figment's own naming, which `source_label` recognises.
        Env::prefixed(ENV_PREFIX).metadata()
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut dict = Value::from(Dict::new());
        for (name, value) in &self.0.vars {
            let Some(key) = env_key(name) else { continue };
            let value: Value = value.parse().unwrap_or_else(|e| match e {});
            dict = merged(dict, figment::util::nest(&key, value));
        }
        let dict = dict.into_dict().unwrap_or_default();
        Ok(Map::from([(Profile::Default, dict)]))
    }
}

/// The configuration key a variable sets, if it sets one.
fn env_key(name: &str) -> Option<String> {
    let name = name.trim();
    let prefix = name.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    let rest = &name[ENV_PREFIX.len()..];
    if rest.eq_ignore_ascii_case("config") {
        return None;
    }
    let key = rest.replace("__", ".");
    let key = key.trim();
    if key.split('.').any(str::is_empty) {
        return None;
    }
    Some(key.to_ascii_lowercase())
}

/// `b` over `a`, dictionaries merged key by key (figment's merge order).
fn merged(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Dict(_, mut a), Value::Dict(tag, b)) => {
            for (key, value) in b {
                let value = match a.remove(&key) {
                    Some(old) => merged(old, value),
                    None => value,
                };
                a.insert(key, value);
            }
            Value::Dict(tag, a)
        }
        (_, b) => b,
    }
}

struct FlagsProvider(Dict);

impl Provider for FlagsProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flag")
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Map::from([(Profile::Default, self.0.clone())]))
    }
}

/// A loaded, validated configuration and where each value came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    figment: Figment,
}

/// Read and validate the configuration: the named file (`--config`, else
/// `POWA_FLEET_CONFIG`) or the reference's JSON file, the process
/// environment and the flags, built by [`from_parts`].
pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let env = Environment::of_process();
    let named = sources
        .config
        .clone()
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
    let file = match &named {
        Some(path) => Some(FileText::read(path, true)?),
        None => find_legacy(&sources.legacy)
            .map(|path| FileText::read(&path, false))
            .transpose()?,
    };
    let looked_in: &[PathBuf] = if named.is_none() {
        &sources.legacy
    } else {
        &[]
    };
    from_parts(file, &env, &sources.flags, looked_in)
}

/// A configuration file as read: where it is and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct FileText {
    /// The path as named (`powa-fleet config` shows it).
    pub path: PathBuf,
    /// The path errors and sources name: absolute, as figment names a
    /// file it reads (relative to the current directory).
    pub source: PathBuf,
    pub text: String,
    /// The reference's JSON rather than powa-fleet's TOML.
    pub json: bool,
}

impl FileText {
    /// Read `path` (see [`FileText::new`]); figment's errors and the
    /// sources `powa-fleet config` shows name it by its absolute path.
    pub fn read(path: &Path, named: bool) -> Result<FileText, ConfigError> {
        let unreadable = |reason: String| ConfigError::Unreadable {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| unreadable(format!("not UTF-8 text ({})", e.utf8_error())))?;
        let mut file = FileText::new(path, text, named);
        if path.is_relative() {
            if let Ok(cwd) = std::env::current_dir() {
                file.source = cwd.join(path);
            }
        }
        Ok(file)
    }

    /// The text of `path`. A file found in the reference's places (not
    /// `named`) is its JSON whatever its name, and so is a named one
    /// ending in `.json` or starting with `{` (`--config
    /// /etc/powa-collector.conf` works as is); any other is TOML.
    pub fn new(path: &Path, text: String, named: bool) -> FileText {
        let json = !named
            || path.extension().is_some_and(|e| e == "json")
            || text.trim_start().starts_with('{');
        FileText {
            path: path.to_path_buf(),
            source: path.to_path_buf(),
            text,
            json,
        }
    }
}

/// Environment variables as a load sees them, in the process's order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Environment {
    vars: Vec<(String, String)>,
}

impl Environment {
    /// The process's variables now (names and values that are not UTF-8
    /// read lossily, as figment's `Env` does).
    pub fn of_process() -> Environment {
        Environment::new(std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        }))
    }

    pub fn new<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Environment {
        Environment {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `name`, the first if it is set twice (as `getenv`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Build and validate the configuration from what [`load`] read: the
/// file's text, the environment and the flags, above the built-in
/// defaults. It touches neither the file system nor the process
/// environment, so that the property tests run the loader users run at
/// the speed of a parser. `looked_in` is where a file was looked for when
/// none was named, for the error when no DSN is set.
pub fn from_parts(
    file: Option<FileText>,
    env: &Environment,
    flags: &Flags,
    looked_in: &[PathBuf],
) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::from(Defaults).merge(LibpqEnv(env));
    if let Some(file) = &file {
        figment = figment.merge(FileProvider(file));
    }
    figment = figment
        .merge(EnvProvider(env))
        .merge(FlagsProvider(flags.dict()));

    let file_name = file.as_ref().map(|f| f.path.display().to_string());
    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
    validate(&config, &figment, file_name)?;
    if config.repository.dsn.is_none() {
        return Err(ConfigError::MissingDsn {
            looked_in: looked_in.iter().map(|p| p.display().to_string()).collect(),
        });
    }
    Ok(Loaded {
        config,
        file: file.map(|f| f.path),
        figment,
    })
}

/// A parser message without the quoted source line (TOML errors show the
/// broken line, which may hold a password) and with any DSN password masked.
fn without_source_lines(message: &str) -> String {
    let kept: Vec<&str> = message
        .lines()
        .filter(|line| {
            let t = line.trim_start();
            let numbered = t
                .split_once(" |")
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            !(numbered || t.starts_with('|'))
        })
        .collect();
    // A message, not a DSN: masked where it quotes a connection string.
    scrub(&kept.join(" "), &[])
}

/// figment's error, one line per problem, with the source of the value.
fn describe_figment_error(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let mut text = without_source_lines(&e.to_string());
            // Values are not echoed for the DSN (it may hold a password).
            if e.path.iter().any(|p| p == "dsn") {
                text = format!("key `repository.dsn`: {}", kind_without_value(&e.kind));
                if let Some(source) = e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                    text.push_str(&format!(" in {source}"));
                }
            }
            text
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn kind_without_value(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(_, expected) => format!("invalid type, expected {expected}"),
        other => other.to_string(),
    }
}

/// Checks serde cannot express; the error names the key and its source.
fn validate(config: &Config, figment: &Figment, file: Option<String>) -> Result<(), ConfigError> {
    let source_of = |key: &str| -> Option<String> {
        figment
            .find_metadata(key)
            .map(|m| source_label(key, m))
            .or_else(|| file.clone())
    };
    let bad = |key: &'static str, problem: String| ConfigError::BadValue {
        file: source_of(key),
        key,
        problem,
    };
    if let Some(dsn) = &config.repository.dsn {
        if let Err(e) = repository_config(dsn) {
            return Err(bad("repository.dsn", format!("does not parse: {e}")));
        }
    }
    if let Some(listen) = &config.http.listen {
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "http.listen",
                format!("is {listen:?}, expected address:port such as 127.0.0.1:9188"),
            ));
        }
    }
    if config.snapshots.max_concurrent == 0 {
        return Err(bad(
            "snapshots.max_concurrent",
            "must be at least 1".to_string(),
        ));
    }
    let seconds: [(&'static str, f64, bool); 8] = [
        ("timeouts.connect", config.timeouts.connect, false),
        ("timeouts.lock", config.timeouts.lock, false),
        ("timeouts.statement", config.timeouts.statement, true),
        ("timeouts.remote", config.timeouts.remote, false),
        (
            "timeouts.keepalive_idle",
            config.timeouts.keepalive_idle,
            false,
        ),
        ("restart.backoff_min", config.restart.backoff_min, false),
        ("restart.backoff_max", config.restart.backoff_max, false),
        ("shutdown.grace", config.shutdown.grace, true),
    ];
    for (key, value, zero_ok) in seconds {
        if !value.is_finite() || value < 0.0 || (!zero_ok && value == 0.0) || value > 1e9 {
            let expected = if zero_ok {
                "a number of seconds, 0 or more"
            } else {
                "a number of seconds greater than 0"
            };
            return Err(bad(key, format!("is {value}, expected {expected}")));
        }
    }
    if config.restart.backoff_min > config.restart.backoff_max {
        return Err(bad(
            "restart.backoff_min",
            format!(
                "({}) must not exceed restart.backoff_max ({})",
                config.restart.backoff_min, config.restart.backoff_max
            ),
        ));
    }
    Ok(())
}

/// "file /etc/x.toml", "environment variable POWA_FLEET_LOG__LEVEL", …
fn source_label(key: &str, metadata: &Metadata) -> String {
    if metadata.name.starts_with("libpq") {
        let var = LIBPQ_ENV
            .iter()
            .find(|(k, _)| key.strip_prefix("remote.") == Some(*k))
            .map_or("", |(_, v)| v);
        format!("libpq environment variable {var}")
    } else if metadata.name.contains("environment") {
        format!(
            "environment variable {ENV_PREFIX}{}",
            key.replace('.', "__").to_uppercase()
        )
    } else if let Some(source) = &metadata.source {
        format!("file {source}")
    } else {
        metadata.name.to_string()
    }
}

/// The settings changed from `running` to `new` that a reload cannot
/// apply (threads and the session pool are sized at start).
pub fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let mut names = Vec::new();
    if new.snapshots.worker_threads != running.snapshots.worker_threads {
        names.push("snapshots.worker_threads".to_string());
    }
    if new.snapshots.max_concurrent > running.snapshots.max_concurrent {
        names.push(format!(
            "snapshots.max_concurrent above {} (the repository session pool is sized at start)",
            running.snapshots.max_concurrent
        ));
    }
    if new.member != running.member {
        names.push("member.name".to_string());
    }
    names
}

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value)
}

impl Loaded {
    /// The engine's settings.
    pub fn settings(&self) -> Settings {
        let c = &self.config;
        Settings {
            repository_dsn: Secret::new(c.repository.dsn.clone().unwrap_or_default()),
            remote_tls: TlsOptions {
                mode: c.remote.sslmode,
                rootcert: c.remote.sslrootcert.clone(),
                cert: c.remote.sslcert.clone(),
                key: c.remote.sslkey.clone(),
            },
            use_server_alias: c.use_server_alias,
            max_concurrent_snapshots: c.snapshots.max_concurrent,
            connect_timeout: secs(c.timeouts.connect),
            lock_timeout: secs(c.timeouts.lock),
            statement_timeout: secs(c.timeouts.statement),
            remote_silence: secs(c.timeouts.remote),
            keepalive_idle: secs(c.timeouts.keepalive_idle),
            backoff_min: secs(c.restart.backoff_min),
            backoff_max: secs(c.restart.backoff_max),
            shutdown_grace: secs(c.shutdown.grace),
            worker_threads: c.snapshots.worker_threads,
            member_name: c.member.name.clone().filter(|n| !n.trim().is_empty()),
        }
    }

    /// `debug = true` wins over `log.level`, like the reference's key.
    pub fn log_level(&self) -> slog::Level {
        if self.config.debug {
            slog::Level::Debug
        } else {
            self.config.log.level.slog()
        }
    }

    /// `key = value  # from source` lines, secrets redacted.
    pub fn describe(&self) -> String {
        let value = serde_json::to_value(&self.config).expect("config serialises");
        // The sources merged once for all keys (`find_metadata` merges
        // them again for each).
        let merged = self.figment.find_value("").ok();
        let mut lines = Vec::new();
        flatten("", &value, &mut |key, value| {
            let shown = if key == "repository.dsn" {
                serde_json::Value::String(redact_dsn(value.as_str().unwrap_or_default()))
            } else {
                value.clone()
            };
            let source = merged
                .as_ref()
                .and_then(|merged| merged.find_ref(key))
                .and_then(|v| self.figment.get_metadata(v.tag()))
                .map(|m| source_label(key, m))
                .unwrap_or_else(|| "built-in default".to_string());
            lines.push(format!("{key} = {shown}  # from {source}"));
        });
        lines.join("\n")
    }
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut dyn FnMut(&str, &serde_json::Value)) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out(prefix, other),
    }
}

#[cfg(test)]
#[path = "config_properties.rs"]
#[allow(clippy::result_large_err)]
mod properties;

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn sources(config: Option<&str>, flags: Flags) -> Sources {
        Sources {
            config: config.map(PathBuf::from),
            flags,
            legacy: vec![],
        }
    }

    #[test]
    fn precedence_default_file_env_flag() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "fleet.toml",
                r#"
                use_server_alias = true
                [repository]
                dsn = "host=file dbname=powa"
                [snapshots]
                max_concurrent = 3
                [log]
                level = "warning"
                "#,
            )?;
            jail.set_env("POWA_FLEET_SNAPSHOTS__MAX_CONCURRENT", "5");
            jail.set_env("POWA_FLEET_LOG__LEVEL", "error");
            let flags = Flags {
                log_level: Some("debug".into()),
                ..Flags::default()
            };
            let loaded = load(&sources(Some("fleet.toml"), flags)).unwrap();
            let c = &loaded.config;
            assert!(c.use_server_alias); // file over default
            assert_eq!(c.snapshots.max_concurrent, 5); // env over file
            assert_eq!(c.log.level, LogLevel::Debug); // flag over env
            assert_eq!(c.timeouts.lock, 2.0); // default
            let text = loaded.describe();
            assert!(text.contains("snapshots.max_concurrent = 5  # from environment variable POWA_FLEET_SNAPSHOTS__MAX_CONCURRENT"), "{text}");
            assert!(
                text.contains("log.level = \"debug\"  # from command-line flag"),
                "{text}"
            );
            assert!(
                text.contains("use_server_alias = true  # from file"),
                "{text}"
            );
            assert!(
                text.contains("timeouts.lock = 2.0  # from built-in default"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn legacy_json_is_found_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "second.conf",
                r#"{"repository": {"dsn": "host=second"}, "debug": true}"#,
            )?;
            jail.create_file("third.conf", r#"{"repository": {"dsn": "host=third"}}"#)?;
            let dir = jail.directory().to_path_buf();
            let candidates = vec![
                dir.join("missing.conf"),
                dir.join("second.conf"),
                dir.join("third.conf"),
            ];
            assert_eq!(find_legacy(&candidates), Some(dir.join("second.conf")));
            // The reference's file name is read as JSON.
            std::fs::copy(dir.join("second.conf"), dir.join("powa-collector.conf")).unwrap();
            let loaded = load(&Sources {
                config: None,
                flags: Flags::default(),
                legacy: vec![dir.join("missing.conf"), dir.join("powa-collector.conf")],
            })
            .unwrap();
            assert_eq!(loaded.config.repository.dsn.as_deref(), Some("host=second"));
            assert_eq!(loaded.log_level(), slog::Level::Debug);
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        Jail::expect_with(|jail| {
            let cases = [
                (
                    "[repository]\ndsn = 'host=a'\n[snapshots]\nmax_concurent = 3\n",
                    "max_concurent",
                ),
                (
                    "[repository]\ndsn = 'host=a'\n[snapshots]\nmax_concurrent = 'many'\n",
                    "max_concurrent",
                ),
                (
                    "[repository]\ndsn = 'host=a'\n[snapshots]\nmax_concurrent = 0\n",
                    "snapshots.max_concurrent",
                ),
                (
                    "[repository]\ndsn = 'host=a'\n[restart]\nbackoff_min = 10\nbackoff_max = 5\n",
                    "restart.backoff_min",
                ),
                (
                    "[repository]\ndsn = 'host=a'\n[log]\nlevel = 'loud'\n",
                    "loud",
                ),
                (
                    "[repository]\ndsn = 'host=a password=hunter2 port=notaport'\n",
                    "repository.dsn",
                ),
                ("[repository\ndsn = 'x'\n", "fleet.toml"),
                (
                    "[repository]\ndsn = 'host=a'\n[http]\nlisten = 'localhost'\n",
                    "http.listen",
                ),
            ];
            for (text, needle) in cases {
                jail.create_file("fleet.toml", text)?;
                let err = load(&sources(Some("fleet.toml"), Flags::default())).unwrap_err();
                let message = err.to_string();
                assert!(message.contains(needle), "{text:?} → {message}");
                assert!(message.contains("fleet.toml"), "{text:?} → {message}");
                assert!(!message.contains("hunter2"), "{message}");
            }
            Ok(())
        });
    }

    #[test]
    fn a_missing_dsn_or_file_is_an_error() {
        Jail::expect_with(|_| {
            let err = load(&sources(None, Flags::default())).unwrap_err();
            assert!(matches!(err, ConfigError::MissingDsn { .. }), "{err}");
            let err = load(&sources(Some("nope.toml"), Flags::default())).unwrap_err();
            assert!(err.to_string().contains("nope.toml"), "{err}");
            std::fs::write("latin1.toml", b"[repository]\ndsn = 'host=caf\xe9'\n").unwrap();
            let err = load(&sources(Some("latin1.toml"), Flags::default())).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, ConfigError::Unreadable { .. }), "{message}");
            assert!(message.contains("latin1.toml"), "{message}");
            assert!(message.contains("not UTF-8"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn remote_tls_defaults_from_libpq_environment() {
        Jail::expect_with(|jail| {
            jail.create_file("fleet.toml", "[repository]\ndsn = 'host=a'\n")?;
            jail.set_env("PGSSLMODE", "verify-full");
            jail.set_env("PGSSLROOTCERT", "/env/root.crt");
            let loaded = load(&sources(Some("fleet.toml"), Flags::default())).unwrap();
            let tls = loaded.settings().remote_tls;
            assert_eq!(tls.mode, SslMode::VerifyFull);
            assert_eq!(tls.rootcert, Some(PathBuf::from("/env/root.crt")));
            let text = loaded.describe();
            assert!(
                text.contains(
                    "remote.sslmode = \"verify-full\"  # from libpq environment variable PGSSLMODE"
                ),
                "{text}"
            );
            // The file wins over libpq's variables, the configuration's own
            // variables over the file.
            jail.create_file(
                "fleet.toml",
                "[repository]\ndsn = 'host=a'\n[remote]\nsslmode = 'require'\nsslcert = '/f.crt'\n",
            )?;
            jail.set_env("POWA_FLEET_REMOTE__SSLCERT", "/e.crt");
            let tls = load(&sources(Some("fleet.toml"), Flags::default()))
                .unwrap()
                .settings()
                .remote_tls;
            assert_eq!(tls.mode, SslMode::Require);
            assert_eq!(tls.cert, Some(PathBuf::from("/e.crt")));
            jail.create_file(
                "fleet.toml",
                "[repository]\ndsn = 'host=a'\n[remote]\nsslmode = 'sometimes'\n",
            )?;
            let err = load(&sources(Some("fleet.toml"), Flags::default())).unwrap_err();
            assert!(err.to_string().contains("sslmode"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn http_listen_from_file_environment_or_flag() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "fleet.toml",
                "[repository]\ndsn = 'host=a'\n[http]\nlisten = '127.0.0.1:9188'\n",
            )?;
            let address = |flags: Flags| {
                load(&sources(Some("fleet.toml"), flags))
                    .unwrap()
                    .config
                    .http
                    .address()
                    .map(|a| a.to_string())
            };
            assert_eq!(address(Flags::default()).as_deref(), Some("127.0.0.1:9188"));
            jail.set_env("POWA_FLEET_HTTP__LISTEN", "127.0.0.2:9000");
            assert_eq!(address(Flags::default()).as_deref(), Some("127.0.0.2:9000"));
            let flag = Flags {
                http_listen: Some("[::1]:9188".into()),
                ..Flags::default()
            };
            assert_eq!(address(flag).as_deref(), Some("[::1]:9188"));
            jail.create_file("fleet.toml", "[repository]\ndsn = 'host=a'\n")?;
            jail.clear_env();
            assert_eq!(address(Flags::default()), None);
            Ok(())
        });
    }

    #[test]
    fn settings_sized_at_start_need_a_restart() {
        let running = Config::default();
        let mut new = running.clone();
        new.snapshots.max_concurrent = 1;
        new.http.listen = Some("127.0.0.1:9188".into());
        assert!(restart_needed(&running, &new).is_empty());
        new.snapshots.worker_threads = 3;
        new.snapshots.max_concurrent = 8;
        let names = restart_needed(&running, &new);
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(names[0], "snapshots.worker_threads");
        assert!(names[1].starts_with("snapshots.max_concurrent above 2"));
    }

    #[test]
    fn settings_follow_the_configuration() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "fleet.toml",
                "[repository]\ndsn = 'host=a'\n[timeouts]\nconnect = 2.5\n[shutdown]\ngrace = 7\n",
            )?;
            let settings = load(&sources(Some("fleet.toml"), Flags::default()))
                .unwrap()
                .settings();
            assert_eq!(settings.connect_timeout, Duration::from_millis(2500));
            assert_eq!(settings.shutdown_grace, Duration::from_secs(7));
            assert_eq!(settings.repository_dsn.expose(), "host=a");
            Ok(())
        });
    }
}
