//! Opening collector sessions: one place sets what every connection needs
//! (timeouts, keepalives, `application_name`, `lock_timeout`), so that a
//! hung or slow server cannot wedge the actor that talks to it.

use std::time::Duration;

use thiserror::Error;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{classify, pg_message, ErrorKind};
use crate::pgpass::{self, Lookup};
use crate::redact::redact_dsn;
use crate::server::ServerSpec;
use crate::settings::Settings;

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
    #[error("could not set up the session on {target}: {}", pg_message(.source))]
    Setup {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::InvalidDsn { .. } => ErrorKind::Setup,
            ConnectError::Connect { source, .. } | ConnectError::Setup { source, .. } => {
                classify(source)
            }
        }
    }
}

/// `powa-fleet` plus a role (`repository`, `listener`, a server name),
/// cut to what PostgreSQL keeps, on a character boundary.
pub fn application_name(role: &str) -> String {
    let mut name = format!("powa-fleet: {role}");
    if name.len() > APPLICATION_NAME_MAX {
        let mut end = APPLICATION_NAME_MAX;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// Parse the repository DSN into a config; the error never shows the password.
pub fn repository_config(dsn: &str) -> Result<Config, ConnectError> {
    dsn.parse::<Config>()
        .map_err(|err| ConnectError::InvalidDsn {
            dsn: redact_dsn(dsn),
            reason: err.to_string(),
        })
}

/// Connect to the repository database named by the settings.
pub async fn connect_repository(settings: &Settings, role: &str) -> Result<Client, ConnectError> {
    let config = repository_config(settings.repository_dsn.expose())?;
    let target = format!("repository {}", describe(&config));
    connect(config, settings, role, target).await
}

/// Connect to a remote server's PoWA database.
/// A server registered without a password gets the one of the libpq
/// password file, if any.
pub async fn connect_remote(
    spec: &ServerSpec,
    settings: &Settings,
    role: &str,
) -> Result<Client, ConnectError> {
    let target = format!("remote server {}", spec.host_port());
    let mut config = spec.pg_config();
    let mut note = String::new();
    if spec.password.is_none() {
        match pgpass::lookup(&spec.hostname, spec.port, &spec.dbname, &spec.username) {
            Lookup::Found(password) => {
                config.password(password);
            }
            Lookup::NotFound => {}
            Lookup::Ignored(reason) => note = format!(" (password file not used: {reason})"),
        }
    }
    connect_with_note(config, settings, role, target, note).await
}

/// Open a session with the common settings, spawn its connection task on
/// the current runtime, and prepare the session. The task ends by itself
/// when the client is dropped or the server goes away.
pub async fn connect(
    config: Config,
    settings: &Settings,
    role: &str,
    target: String,
) -> Result<Client, ConnectError> {
    connect_with_note(config, settings, role, target, String::new()).await
}

async fn connect_with_note(
    mut config: Config,
    settings: &Settings,
    role: &str,
    target: String,
    note: String,
) -> Result<Client, ConnectError> {
    apply_common(&mut config, settings, role);
    let (client, connection) =
        config
            .connect(NoTls)
            .await
            .map_err(|source| ConnectError::Connect {
                target: target.clone(),
                source,
                note,
            })?;
    tokio::spawn(async move {
        // The error, if any, surfaces on the client's next query.
        let _ = connection.await;
    });
    prepare_session(&client, settings)
        .await
        .map_err(|source| ConnectError::Setup { target, source })?;
    Ok(client)
}

/// Timeouts, keepalives and `application_name` on a config before connecting.
pub fn apply_common(config: &mut Config, settings: &Settings, role: &str) {
    config
        .application_name(application_name(role))
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .keepalives_idle(settings.keepalive_idle);
}

/// `lock_timeout` when the server leaves it at 0, `statement_timeout`.
async fn prepare_session(
    client: &Client,
    settings: &Settings,
) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one("SELECT current_setting('lock_timeout')", &[])
        .await?;
    let current: String = row.get(0);
    let mut sql = String::new();
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
    client.batch_execute(&sql).await
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
    fn application_name_is_bounded() {
        assert_eq!(application_name("listener"), "powa-fleet: listener");
        let long = application_name(&"é".repeat(100));
        assert!(long.len() <= APPLICATION_NAME_MAX);
        assert!(long.starts_with("powa-fleet: é"));
    }

    #[test]
    fn invalid_dsn_error_hides_the_password() {
        let err = repository_config("host=a password=hunter2 bogus").unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(err.kind(), ErrorKind::Setup);
    }

    #[test]
    fn describe_names_host_port_db() {
        let config = repository_config("host=db1 port=5433 dbname=powa password=x").unwrap();
        assert_eq!(describe(&config), "db1:5433/powa");
    }
}
