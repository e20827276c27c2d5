//! TLS for every collector connection, with libpq's options and meaning:
//! `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert`, `sslcert` and `sslkey`.
//!
//! tokio-postgres only knows `disable`, `prefer` and `require` and reads no
//! certificate files, so this module does the rest on rustls (ring
//! provider): it takes the `ssl*` keys out of a connection string
//! ([`take_ssl_params`]), resolves them with libpq's environment variables
//! and default files ([`TlsOptions`]), and builds the connector
//! ([`MakeTls`]) whose certificate verifier follows the mode:
//!
//! * `prefer`, `require`: encrypted, the certificate is not checked, except
//!   that `require` checks the chain like `verify-ca` when a root
//!   certificate is given (as libpq does);
//! * `verify-ca`: the chain must lead to the root certificate, any host name;
//! * `verify-full`: the chain, and the host name against the certificate.
//!
//! The connector records whether the handshake took place, so a session
//! knows whether it is encrypted (`prefer` may end up in plain text).
//!
//! Rooms: [`dsn`] takes the `ssl*` keys out of a connection string,
//! [`files`] reads the certificate and key files (with libpq's permission
//! rule), [`config`] builds and caches the rustls client configurations,
//! [`verify`] holds the certificate verifiers of each mode, [`stream`] the
//! connector and the encrypted stream tokio-postgres drives.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod config;
pub mod dsn;
mod files;
pub mod stream;
mod verify;

pub use config::forget_configs;
pub use dsn::{process_env, take_ssl_params, SslParams};
pub use stream::{MakeTls, TlsConnector, TlsStream};

/// libpq's `sslmode`, less `allow` (tokio-postgres cannot try plain text
/// first and TLS second).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    /// libpq's default: TLS when the server offers it, plain text otherwise.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<SslMode, String> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err("sslmode \"allow\" is not supported; use prefer".to_string()),
            other => Err(format!(
                "invalid sslmode \"{other}\": expected disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres does before the handshake.
    pub fn pg(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS options of one kind of connection (the repository's, or the
/// remote servers'). Paths left `None` fall back to libpq's default files
/// under `~/.postgresql` when those exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A TLS setup problem found before connecting (a missing or unreadable
/// file, a key with loose permissions), or a failed handshake.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct TlsError(pub(crate) String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_libpq() {
        assert_eq!(SslMode::parse("verify-full"), Ok(SslMode::VerifyFull));
        assert_eq!(SslMode::default(), SslMode::Prefer);
        assert!(SslMode::parse("allow")
            .unwrap_err()
            .contains("not supported"));
        assert!(SslMode::parse("bogus").unwrap_err().contains("verify-ca"));
    }
}
