//! libpq's `ssl*` keys taken out of a connection string (key=value or
//! URI), and from libpq's environment variables: what tokio-postgres
//! would refuse or ignore, resolved into [`TlsOptions`].

use std::path::PathBuf;

use crate::tls::{SslMode, TlsOptions};

/// The `ssl*` values found in a connection string, not yet resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslParams {
    pub mode: Option<String>,
    pub rootcert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl SslParams {
    /// libpq's environment variables `PGSSLMODE`, `PGSSLROOTCERT`,
    /// `PGSSLCERT`, `PGSSLKEY`, through `env`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> SslParams {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        SslParams {
            mode: get("PGSSLMODE"),
            rootcert: get("PGSSLROOTCERT"),
            cert: get("PGSSLCERT"),
            key: get("PGSSLKEY"),
        }
    }

    /// Each value of `self`, else the one of `fallback`.
    pub fn or(self, fallback: SslParams) -> SslParams {
        SslParams {
            mode: self.mode.or(fallback.mode),
            rootcert: self.rootcert.or(fallback.rootcert),
            cert: self.cert.or(fallback.cert),
            key: self.key.or(fallback.key),
        }
    }

    pub fn resolve(self) -> Result<TlsOptions, String> {
        Ok(TlsOptions {
            mode: match &self.mode {
                Some(text) => SslMode::parse(text)?,
                None => SslMode::default(),
            },
            rootcert: self.rootcert.map(PathBuf::from),
            cert: self.cert.map(PathBuf::from),
            key: self.key.map(PathBuf::from),
        })
    }
}

/// The process environment, for [`SslParams::from_env`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

const SSL_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn set_param(params: &mut SslParams, key: &str, value: String) {
    match key {
        "sslmode" => params.mode = Some(value),
        "sslrootcert" => params.rootcert = Some(value),
        "sslcert" => params.cert = Some(value),
        "sslkey" => params.key = Some(value),
        _ => unreachable!("only SSL_KEYS are set"),
    }
}

/// Split a libpq connection string (key=value or URI) into the same string
/// without its `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, and those
/// values. Errors never quote a value (it could be a password).
pub fn take_ssl_params(dsn: &str) -> Result<(String, SslParams), String> {
    let trimmed = dsn.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        take_from_uri(dsn)
    } else {
        take_from_key_value(dsn)
    }
}

fn take_from_uri(dsn: &str) -> Result<(String, SslParams), String> {
    let mut params = SslParams::default();
    let Some((head, query)) = dsn.split_once('?') else {
        return Ok((dsn.to_string(), params));
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key, "a query parameter name")?;
        if SSL_KEYS.contains(&key.as_str()) {
            let value = percent_decode(value, &format!("the value of \"{key}\""))?;
            set_param(&mut params, &key, value);
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

/// libpq's URI decoding: every `%` starts two hex digits, `%00` is
/// refused, the result must be UTF-8. The `percent-encoding` crate decodes
/// but lets malformed escapes through, hence the check first. Errors say
/// where, never the text (it could be a password).
fn percent_decode(text: &str, what: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!(
                "invalid percent-encoding in {what}: \"%\" must be followed by two hex digits"
            ));
        }
        if hex == Some(b"00") {
            return Err(format!(
                "invalid percent-encoding in {what}: %00 is not allowed"
            ));
        }
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| format!("invalid percent-encoding in {what}: not UTF-8 once decoded"))
}

/// libpq's connection parameters: the only words an error may quote. In a
/// malformed string any word can be a piece of a password (a stray quote
/// earlier on shifts every key and value after it).
const LIBPQ_KEYWORDS: [&str; 42] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
    "scram_client_key",
];

/// A key as an error names it: quoted when it is a libpq parameter, else
/// not shown at all.
fn key_name(key: &str) -> String {
    if LIBPQ_KEYWORDS.contains(&key) {
        format!("\"{key}\"")
    } else {
        "a word that is no connection parameter".to_string()
    }
}

fn take_from_key_value(dsn: &str) -> Result<(String, SslParams), String> {
    let mut params = SslParams::default();
    let mut kept = Vec::new();
    let mut last_key: Option<String> = None;
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // After a pair, the word may be the rest of a value that
            // needed quotes (`password=a b`): never quote it.
            return Err(match &last_key {
                None => format!("missing \"=\" after {}", key_name(&key)),
                Some(last) => format!(
                    "missing \"=\" in the word after the value of {} \
                     (a value with spaces must be quoted)",
                    key_name(last)
                ),
            });
        }
        if key.is_empty() {
            return Err(match &last_key {
                None => "missing key before \"=\"".to_string(),
                Some(last) => format!(
                    "missing key before \"=\" after the value of {}",
                    key_name(last)
                ),
            });
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(format!("unterminated quoted value of {}", key_name(&key)))
                        }
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of {}", key_name(&key))),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        value.push(next);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if SSL_KEYS.contains(&key.as_str()) {
            set_param(&mut params, &key, value);
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
        last_key = Some(key);
    }
    Ok((kept.join(" "), params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::SslMode;
    use std::path::PathBuf;

    #[test]
    fn ssl_keys_leave_key_value_strings() {
        let (rest, params) = take_ssl_params(
            "host=db sslmode=verify-full password='a b\\'c' sslrootcert = '/etc/ca dir/root.crt' \
             sslcert=/c.crt sslkey=/c.key",
        )
        .unwrap();
        assert_eq!(rest, "host='db' password='a b\\'c'");
        assert_eq!(params.mode.as_deref(), Some("verify-full"));
        assert_eq!(params.rootcert.as_deref(), Some("/etc/ca dir/root.crt"));
        assert_eq!(params.cert.as_deref(), Some("/c.crt"));
        assert_eq!(params.key.as_deref(), Some("/c.key"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn ssl_keys_leave_uris() {
        let (rest, params) = take_ssl_params(
            "postgresql://u:pw@db:5433/powa?sslmode=verify-ca&application_name=x&sslrootcert=%2Ftmp%2Fca.crt",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u:pw@db:5433/powa?application_name=x");
        assert_eq!(params.mode.as_deref(), Some("verify-ca"));
        assert_eq!(params.rootcert.as_deref(), Some("/tmp/ca.crt"));
        let (rest, params) = take_ssl_params("postgres://db/powa?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://db/powa");
        assert_eq!(params.mode.as_deref(), Some("require"));
    }

    #[test]
    fn errors_never_quote_values() {
        let err = take_ssl_params("host=db password='hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("password"), "{err}");
    }

    #[test]
    fn errors_never_quote_the_rest_of_an_unquoted_value() {
        let err = take_ssl_params("host=db password=hunter2 secret2 user=u").unwrap_err();
        assert!(!err.contains("secret2"), "{err}");
        assert!(err.contains("password") && err.contains("quoted"), "{err}");
        let err = take_ssl_params("host=db ='x'").unwrap_err();
        assert!(err.contains("missing key"), "{err}");
    }

    #[test]
    fn errors_quote_no_word_but_libpq_parameters() {
        // A stray quote shifts the password into the place of a key.
        let err = take_ssl_params(":=' password='PwAAAa0%' =/ \\").unwrap_err();
        assert!(!err.contains("PwAAAa0"), "{err}");
        let err = take_ssl_params("hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = take_ssl_params("port").unwrap_err();
        assert!(err.contains("after \"port\""), "{err}");
        let err = take_ssl_params("host=db port").unwrap_err();
        assert!(err.contains("value of \"host\""), "{err}");
    }

    #[test]
    fn uri_percent_encoding_is_checked() {
        for (uri, what) in [
            ("postgresql://h/d?sslrootcert=%2", "two hex digits"),
            ("postgresql://h/d?sslrootcert=%+1", "two hex digits"),
            ("postgresql://h/d?sslrootcert=%zz", "two hex digits"),
            ("postgresql://h/d?sslcert=a%00b", "%00"),
            ("postgresql://h/d?sslkey=%ff", "UTF-8"),
            ("postgresql://h/d?ssl%4", "name"),
        ] {
            let err = take_ssl_params(uri).unwrap_err();
            assert!(err.contains(what), "{uri}: {err}");
        }
        let (_, params) = take_ssl_params("postgresql://h/d?sslkey=%C3%A9t%C3%A9").unwrap();
        assert_eq!(params.key.as_deref(), Some("été"));
    }

    #[test]
    fn connection_string_wins_over_environment() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("require".to_string()),
            "PGSSLROOTCERT" => Some("/env/root.crt".to_string()),
            _ => None,
        };
        let options = SslParams {
            mode: Some("verify-ca".into()),
            ..SslParams::default()
        }
        .or(SslParams::from_env(env))
        .resolve()
        .unwrap();
        assert_eq!(options.mode, SslMode::VerifyCa);
        assert_eq!(options.rootcert, Some(PathBuf::from("/env/root.crt")));
    }
}
