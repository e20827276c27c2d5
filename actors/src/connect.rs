//! Opening collector sessions: one place sets what every connection needs
//! (TLS, timeouts, keepalives, `application_name`, `lock_timeout`), so that
//! a hung or slow server cannot wedge the actor that talks to it.
//!
//! TLS follows libpq's options (see [`crate::tls`]): the repository's come
//! from its connection string, the remote servers' from the settings
//! (`powa_servers` has no column for them); both fall back to `PGSSLMODE`,
//! `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY`.

use std::time::Duration;

use futures_util::future::poll_fn;
use thiserror::Error;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client, Config};

use crate::copy::Prepared;
use crate::error::{classify, pg_message, ErrorKind};
use crate::layout::Layout;
use crate::pgpass::{self, Lookup};
use crate::redact::redact_dsn;
use crate::server::ServerSpec;
use crate::settings::Settings;
use crate::text::truncate;
use crate::tls::{self, MakeTls, SslParams, TlsError, TlsOptions};

/// `application_name` is truncated by PostgreSQL at 63 bytes.
const APPLICATION_NAME_MAX: usize = 63;

#[derive(Debug, Error)]
pub enum ConnectError {
    /// The repository DSN does not parse (the DSN shown is redacted).
    #[error("invalid connection string \"{dsn}\": {reason}")]
    InvalidDsn { dsn: String, reason: String },
    #[error("could not connect to {target}: {}{note}", pg_message(.source))]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
        /// More context, such as a password file that was not used.
        note: String,
    },
    /// The TLS options cannot be used (a missing or unreadable file).
    #[error("could not connect to {target}: {source}")]
    Tls {
        target: String,
        #[source]
        source: TlsError,
    },
    #[error("could not set up the session on {target}: {}", pg_message(.source))]
    Setup {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connected at the TCP level, but the TLS handshake, the startup
    /// exchange or the session setup got no answer in time: a frozen or
    /// overloaded server.
    #[error("could not connect to {target}: no answer within {}s ({stage}): the server is not answering", .after.as_secs_f64())]
    Timeout {
        target: String,
        stage: &'static str,
        after: Duration,
    },
    /// Every repository session the pool may open is held by work that
    /// does not finish (see [`crate::repo_pool`]).
    #[error("no repository session free within {}s: the repository is not answering the sessions in use", .after.as_secs_f64())]
    PoolBusy { after: Duration },
}

impl ConnectError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::InvalidDsn { .. } | ConnectError::Tls { .. } => ErrorKind::Setup,
            ConnectError::Connect { source, .. } | ConnectError::Setup { source, .. } => {
                classify(source)
            }
            ConnectError::Timeout { .. } | ConnectError::PoolBusy { .. } => ErrorKind::Connection,
        }
    }
}

/// powa-fleet's release, shown to powa-web (the workspace's version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The role of the session powa-web takes for the collector's presence.
pub const LISTENER_ROLE: &str = "listener";

/// powa-web (4.1 and 5) believes a remote collector runs when one client
/// session on the repository has an `application_name` like
/// `PoWA collector - main thread (%`, and shows what follows `main thread`
/// as the collector's name and version: the reference names its LISTEN
/// session so. powa-fleet's listener is that session.
const PRESENCE_PREFIX: &str = "PoWA collector - main thread";

/// `powa-fleet` plus a role (`repository`, a server name) and the member
/// the session belongs to (` @name`), cut to what PostgreSQL keeps, on a
/// character boundary: the member part is the one cut, so the role stays
/// readable. The listener's name is the one powa-web looks for, naming
/// powa-fleet, its version and the member inside the parentheses powa-web
/// prints, so that each member of a fleet shows as a collector of its own.
pub fn application_name(role: &str, member: Option<&str>) -> String {
    let (head, tail) = if role == LISTENER_ROLE {
        (format!("{PRESENCE_PREFIX} (powa-fleet {VERSION}"), ")")
    } else {
        (format!("powa-fleet: {role}"), "")
    };
    let room = APPLICATION_NAME_MAX.saturating_sub(head.len() + MEMBER_MARK.len() + tail.len());
    match member.map(|name| truncate(name, room)) {
        Some(name) if !name.is_empty() => format!("{head}{MEMBER_MARK}{name}{tail}"),
        _ => truncate(&format!("{head}{tail}"), APPLICATION_NAME_MAX).to_owned(),
    }
}

/// What separates a session's role from its member's name.
const MEMBER_MARK: &str = " @";

/// An open session, whether it is encrypted, and where PoWA's objects are
/// in its database.
pub struct Session {
    pub client: Client,
    pub tls: bool,
    pub layout: Layout,
    /// Counts the notifications the session receives: on the repository,
    /// a session waiting for a fleet-wide slot listens for their release
    /// (see [`crate::fencing::wait_for_slot`]).
    pub notified: watch::Receiver<u64>,
    /// The COPY statements prepared on it so far.
    pub prepared: Prepared,
}

/// Parse the repository DSN into a config and its TLS options (the `ssl*`
/// keys, else libpq's environment variables); the error never shows the
/// password.
pub fn repository_config(dsn: &str) -> Result<(Config, TlsOptions), ConnectError> {
    repository_config_with_env(dsn, tls::process_env)
}

/// [`repository_config`] with the environment read through `env`.
pub fn repository_config_with_env(
    dsn: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Config, TlsOptions), ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidDsn {
        dsn: redact_dsn(dsn),
        reason,
    };
    let (rest, params) = tls::take_ssl_params(dsn).map_err(invalid)?;
    let options = params
        .or(SslParams::from_env(&env))
        .resolve()
        .map_err(invalid)?;
    let mut config = rest
        .parse::<Config>()
        .map_err(|err| invalid(err.to_string()))?;
    apply_env_defaults(&mut config, &env).map_err(invalid)?;
    if config.get_password().is_none() {
        if let Some(password) = password_file_entry(&config) {
            config.password(password);
        }
    }
    config.ssl_mode(options.mode.pg());
    Ok((config, options))
}

/// libpq's environment defaults for what a connection string leaves out:
/// `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`.
fn apply_env_defaults(
    config: &mut Config,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    if config.get_hosts().is_empty() {
        if let Some(hosts) = env("PGHOST") {
            for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                config.host(host);
            }
        }
    }
    if config.get_ports().is_empty() {
        if let Some(port) = env("PGPORT") {
            let port = port
                .trim()
                .parse::<u16>()
                .map_err(|_| format!("invalid PGPORT \"{port}\""))?;
            config.port(port);
        }
    }
    if config.get_user().is_none() {
        if let Some(user) = env("PGUSER") {
            config.user(&user);
        }
    }
    if config.get_dbname().is_none() {
        if let Some(dbname) = env("PGDATABASE") {
            config.dbname(&dbname);
        }
    }
    if config.get_password().is_none() {
        if let Some(password) = env("PGPASSWORD") {
            config.password(password);
        }
    }
    Ok(())
}

/// The repository's password from the libpq password file, when the
/// connection string and the environment name none (first TCP host).
fn password_file_entry(config: &Config) -> Option<String> {
    let host = match config.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(name) => name.clone(),
        _ => return None,
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user()?;
    let dbname = config.get_dbname().unwrap_or(user);
    match pgpass::lookup(&host, port, dbname, user) {
        Lookup::Found(password) => Some(password),
        Lookup::NotFound | Lookup::Ignored(_) => None,
    }
}

/// The repository's config (common settings applied) and TLS connector,
/// for callers that drive the connection themselves (the listener, the
/// client commands); [`MakeTls::used`] tells afterwards whether it is
/// encrypted.
pub fn prepare_repository(
    settings: &Settings,
    role: &str,
) -> Result<(Config, MakeTls), ConnectError> {
    let (mut config, options) = repository_config(settings.repository_dsn.expose())?;
    apply_common(&mut config, settings, role);
    let connector = options.connector().map_err(|source| ConnectError::Tls {
        target: format!("repository {}", describe(&config)),
        source,
    })?;
    Ok((config, connector))
}

/// Connect to the repository database named by the settings.
pub async fn connect_repository(settings: &Settings, role: &str) -> Result<Session, ConnectError> {
    let (config, options) = repository_config(settings.repository_dsn.expose())?;
    let target = format!("repository {}", describe(&config));
    connect(config, &options, settings, role, target).await
}

/// Connect to a remote server's PoWA database, with the remote TLS options.
/// A server registered without a password gets the one of the libpq
/// password file, if any.
pub async fn connect_remote(
    spec: &ServerSpec,
    settings: &Settings,
    role: &str,
) -> Result<Session, ConnectError> {
    connect_remote_database(spec, settings, role, &spec.dbname).await
}

/// Connect to database `dbname` of a remote server, as its PoWA database
/// is connected to (per-database datasources and catalogs).
pub async fn connect_remote_database(
    spec: &ServerSpec,
    settings: &Settings,
    role: &str,
    dbname: &str,
) -> Result<Session, ConnectError> {
    let target = if dbname == spec.dbname {
        format!("remote server {}", spec.host_port())
    } else {
        format!("remote server {} database {dbname}", spec.host_port())
    };
    let mut config = spec.pg_config();
    config.dbname(dbname);
    config.ssl_mode(settings.remote_tls.mode.pg());
    let mut note = String::new();
    if spec.password.is_none() {
        if let Some(password) = tls::process_env("PGPASSWORD") {
            config.password(password);
        } else {
            match pgpass::lookup(&spec.hostname, spec.port, dbname, &spec.username) {
                Lookup::Found(password) => {
                    config.password(password);
                }
                Lookup::NotFound => {}
                Lookup::Ignored(reason) => note = format!(" (password file not used: {reason})"),
            }
        }
    }
    connect_with_note(config, &settings.remote_tls, settings, role, target, note).await
}

/// Open a session with the common settings, spawn its connection task on
/// the current runtime, and prepare the session. The task ends by itself
/// when the client is dropped or the server goes away.
pub async fn connect(
    config: Config,
    tls: &TlsOptions,
    settings: &Settings,
    role: &str,
    target: String,
) -> Result<Session, ConnectError> {
    connect_with_note(config, tls, settings, role, target, String::new()).await
}

async fn connect_with_note(
    mut config: Config,
    tls: &TlsOptions,
    settings: &Settings,
    role: &str,
    target: String,
    note: String,
) -> Result<Session, ConnectError> {
    apply_common(&mut config, settings, role);
    let connector = tls.connector().map_err(|source| ConnectError::Tls {
        target: target.clone(),
        source,
    })?;
    // `connect_timeout` bounds each TCP connect only: the TLS handshake and
    // the startup exchange with a frozen server would wait forever.
    let timeout = |stage| ConnectError::Timeout {
        target: target.clone(),
        stage,
        after: settings.connect_timeout,
    };
    let (client, connection) =
        tokio::time::timeout(settings.connect_timeout, config.connect(connector.clone()))
            .await
            .map_err(|_| timeout("TCP, TLS and startup"))?
            .map_err(|source| ConnectError::Connect {
                target: target.clone(),
                source,
                note,
            })?;
    let (notify, notified) = watch::channel(0u64);
    let mut connection = connection;
    tokio::spawn(async move {
        // The error, if any, surfaces on the client's next query.
        while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(_) = message {
                notify.send_modify(|count| *count += 1);
            }
        }
        // The client reads as closed before the watchers of `notify` learn
        // that the connection ended.
        drop(connection);
        drop(notify);
    });
    let layout = tokio::time::timeout(settings.connect_timeout, prepare_session(&client, settings))
        .await
        .map_err(|_| timeout("session setup"))?
        .map_err(|source| ConnectError::Setup { target, source })?;
    Ok(Session {
        client,
        tls: connector.used(),
        layout,
        notified,
        prepared: Prepared::default(),
    })
}

/// Keepalive probes after `timeouts.keepalive_idle` of silence.
const KEEPALIVE_PROBES: u32 = 3;

/// Time between two keepalive probes: a third of the idle time, 1 to 10 s.
pub fn keepalive_interval(settings: &Settings) -> Duration {
    (settings.keepalive_idle / 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before
/// the kernel drops the connection (a peer gone, a network black hole);
/// as long as the keepalives take to give up, as libpq recommends.
pub fn tcp_user_timeout(settings: &Settings) -> Duration {
    settings.keepalive_idle + keepalive_interval(settings) * KEEPALIVE_PROBES
}

/// Timeouts, keepalives and `application_name` on a config before
/// connecting. The TLS handshake and startup exchange are bounded by the
/// caller ([`connect`] does it).
pub fn apply_common(config: &mut Config, settings: &Settings, role: &str) {
    config
        .application_name(application_name(role, settings.member_name.as_deref()))
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .keepalives_idle(settings.keepalive_idle)
        .keepalives_interval(keepalive_interval(settings))
        .keepalives_retries(KEEPALIVE_PROBES)
        .tcp_user_timeout(tcp_user_timeout(settings));
}

/// How long one statement on a repository session may take on our side:
/// the server's own `statement_timeout` plus the connect timeout for the
/// network; a frozen server never reaches its own timeout.
pub fn statement_deadline(settings: &Settings) -> Duration {
    let statements = if settings.statement_timeout.is_zero() {
        Duration::from_secs(3600)
    } else {
        settings.statement_timeout
    };
    settings.connect_timeout + statements
}

/// `lock_timeout` when the server leaves it at 0, `statement_timeout`, and
/// `search_path = pg_catalog` where the layout wants it; returns the layout.
async fn prepare_session(
    client: &Client,
    settings: &Settings,
) -> Result<Layout, tokio_postgres::Error> {
    let layout = Layout::read(client).await?;
    let row = client
        .query_one("SELECT pg_catalog.current_setting('lock_timeout')", &[])
        .await?;
    let current: String = row.get(0);
    let mut sql = String::new();
    if layout.wants_catalog_search_path() {
        sql.push_str("SET search_path = pg_catalog;");
    }
    if current == "0" {
        sql.push_str(&format!(
            "SET lock_timeout = {};",
            millis(settings.lock_timeout)
        ));
    }
    sql.push_str(&format!(
        "SET statement_timeout = {};",
        millis(settings.statement_timeout)
    ));
    client.batch_execute(&sql).await?;
    Ok(layout)
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// `host:port/dbname` of a config, for messages (never the password).
pub fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_string());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_environment_fills_what_the_dsn_leaves_out() {
        let env = |name: &str| match name {
            "PGHOST" => Some("envhost".to_string()),
            "PGPORT" => Some("6543".to_string()),
            "PGUSER" => Some("envuser".to_string()),
            "PGDATABASE" => Some("envdb".to_string()),
            "PGPASSWORD" => Some("envsecret".to_string()),
            _ => None,
        };
        let (config, _) = repository_config_with_env("sslmode=disable", env).unwrap();
        assert_eq!(describe(&config), "envhost:6543/envdb");
        assert_eq!(config.get_user(), Some("envuser"));
        assert_eq!(config.get_password(), Some(&b"envsecret"[..]));
        // What the DSN says wins.
        let (config, _) = repository_config_with_env(
            "host=db port=5433 user=u dbname=d password=p sslmode=disable",
            env,
        )
        .unwrap();
        assert_eq!(describe(&config), "db:5433/d");
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_password(), Some(&b"p"[..]));
        let bad_port = |name: &str| (name == "PGPORT").then(|| "abc".to_string());
        let err = repository_config_with_env("host=db", bad_port).unwrap_err();
        assert!(err.to_string().contains("invalid PGPORT"), "{err}");
    }

    #[test]
    fn application_name_is_bounded() {
        assert_eq!(
            application_name("repository", None),
            "powa-fleet: repository"
        );
        let long = application_name(&"é".repeat(100), None);
        assert!(long.len() <= APPLICATION_NAME_MAX);
        assert!(long.starts_with("powa-fleet: é"));
    }

    #[test]
    fn application_name_names_the_member_and_cuts_it_first() {
        assert_eq!(
            application_name("repository", Some("db1:42")),
            "powa-fleet: repository @db1:42"
        );
        // The member part is cut on a character boundary; the role stays.
        let name = application_name("repository", Some(&"é".repeat(40)));
        assert!(name.len() <= APPLICATION_NAME_MAX, "{name}");
        assert!(name.starts_with("powa-fleet: repository @é"), "{name}");
        assert!(name.len() >= APPLICATION_NAME_MAX - 1, "{name}");
        // A role that fills the room leaves the member out rather than
        // showing half of a mark.
        let role = "r".repeat(70);
        assert_eq!(
            application_name(&role, Some("db1")),
            format!("powa-fleet: {}", &role[..APPLICATION_NAME_MAX - 12])
        );
    }

    #[test]
    fn listener_is_named_as_powa_web_looks_for_it() {
        let name = application_name(LISTENER_ROLE, None);
        assert_eq!(
            name,
            format!("PoWA collector - main thread (powa-fleet {VERSION})")
        );
        assert!(name.len() <= APPLICATION_NAME_MAX, "{name}");
        // powa-web shows the text after `main thread` as the collector.
        assert_eq!(
            &name[PRESENCE_PREFIX.len()..],
            format!(" (powa-fleet {VERSION})")
        );
    }

    #[test]
    fn listener_names_its_member_inside_what_powa_web_shows() {
        let name = application_name(LISTENER_ROLE, Some("db1:42"));
        assert_eq!(
            &name[PRESENCE_PREFIX.len()..],
            format!(" (powa-fleet {VERSION} @db1:42)")
        );
        // However long the member name, the session keeps powa-web's
        // pattern and its closing parenthesis, within 63 bytes.
        let name = application_name(LISTENER_ROLE, Some(&"é".repeat(40)));
        assert!(name.len() <= APPLICATION_NAME_MAX, "{name}");
        assert!(
            name.starts_with(&format!("{PRESENCE_PREFIX} (powa-fleet {VERSION} @é")),
            "{name}"
        );
        assert!(name.ends_with("é)"), "{name}");
    }

    #[test]
    fn invalid_dsn_error_hides_the_password() {
        let err = repository_config("host=a password=hunter2 bogus").unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(err.kind(), ErrorKind::Setup);
    }

    #[test]
    fn repository_tls_comes_from_the_dsn_then_the_environment() {
        let env = |name: &str| (name == "PGSSLMODE").then(|| "require".to_string());
        let (config, options) =
            repository_config_with_env("host=db sslmode=verify-ca sslrootcert=/r.crt", env)
                .unwrap();
        assert_eq!(options.mode, crate::tls::SslMode::VerifyCa);
        assert_eq!(
            options.rootcert.as_deref(),
            Some(std::path::Path::new("/r.crt"))
        );
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let (config, options) = repository_config_with_env("host=db", env).unwrap();
        assert_eq!(options.mode, crate::tls::SslMode::Require);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let (_, options) = repository_config_with_env("host=db", |_| None).unwrap();
        assert_eq!(options.mode, crate::tls::SslMode::Prefer);
        let err = repository_config_with_env("host=db password=hunter2 sslmode=bogus", |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid sslmode") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn describe_names_host_port_db() {
        let (config, _) = repository_config("host=db1 port=5433 dbname=powa password=x").unwrap();
        assert_eq!(describe(&config), "db1:5433/powa");
    }
}
