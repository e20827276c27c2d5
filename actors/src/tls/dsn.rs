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
        Ok(take_from_uri(dsn))
    } else {
        take_from_key_value(dsn)
    }
}

fn take_from_uri(dsn: &str) -> (String, SslParams) {
    let mut params = SslParams::default();
    let Some((head, query)) = dsn.split_once('?') else {
        return (dsn.to_string(), params);
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key);
            if SSL_KEYS.contains(&key.as_str()) {
                set_param(&mut params, &key, percent_decode(value));
                false
            } else {
                true
            }
        })
        .collect();
    let rest = if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    (rest, params)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(text.get(i + 1..i + 3).unwrap_or(""), 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn take_from_key_value(dsn: &str) -> Result<(String, SslParams), String> {
    let mut params = SslParams::default();
    let mut kept = Vec::new();
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
            return Err(format!("missing \"=\" after \"{key}\""));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value of \"{key}\"")),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of \"{key}\"")),
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
