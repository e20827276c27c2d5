//! A remote server as the repository's `powa_servers` table describes it.
//!
//! The password is kept here because the connection needs it, but it never
//! leaves this type in readable form: `Debug` redacts it and no method
//! returns it except [`ServerSpec::pg_config`].

use std::fmt;

/// `powa_servers.id`: positive for remote servers, 0 for the repository itself.
pub type SrvId = i32;

/// One row of `powa_servers` with `id > 0 AND frequency > 0`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub srvid: SrvId,
    pub hostname: String,
    pub port: u16,
    pub username: String,
    /// NULL means "let the client library find it" (`.pgpass`, certificates, trust).
    pub password: Option<String>,
    pub dbname: String,
    /// Seconds between two snapshots; always positive for a collected server.
    pub frequency: u32,
    pub alias: Option<String>,
}

impl ServerSpec {
    /// `host:port`, the name the reference collector uses.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.hostname, self.port)
    }

    /// The name logs and status use: the alias when asked for and set,
    /// `host:port` otherwise.
    pub fn name(&self, use_alias: bool) -> String {
        match (&self.alias, use_alias) {
            (Some(alias), true) => alias.clone(),
            _ => self.host_port(),
        }
    }

    /// Connection parameters for tokio-postgres (password included).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.hostname)
            .port(self.port)
            .user(&self.username)
            .dbname(&self.dbname);
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }
}

impl fmt::Debug for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSpec")
            .field("srvid", &self.srvid)
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("dbname", &self.dbname)
            .field("frequency", &self.frequency)
            .field("alias", &self.alias)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServerSpec {
        ServerSpec {
            srvid: 3,
            hostname: "db1".into(),
            port: 5433,
            username: "powa".into(),
            password: Some("s3cret-pw".into()),
            dbname: "powa".into(),
            frequency: 300,
            alias: Some("billing".into()),
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let text = format!("{:?}", spec());
        assert!(!text.contains("s3cret-pw"), "{text}");
        assert!(text.contains("********"));
    }

    #[test]
    fn name_follows_use_server_alias() {
        assert_eq!(spec().name(true), "billing");
        assert_eq!(spec().name(false), "db1:5433");
        let mut no_alias = spec();
        no_alias.alias = None;
        assert_eq!(no_alias.name(true), "db1:5433");
    }
}
