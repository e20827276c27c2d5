//! Keeping passwords out of logs, status answers and stored errors.

use std::fmt;

/// A value that must never be printed: `Debug` and `Display` show `********`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that needs it (a connection).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

const MASK: &str = "********";

/// A connection string with its password masked, in either libpq form:
/// `key=value` (`password=...`, quoted or not) or URI
/// (`postgresql://user:pass@host/db`, and `?password=` in the query).
pub fn redact_dsn(dsn: &str) -> String {
    let trimmed = dsn.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        redact_uri(dsn)
    } else {
        redact_key_value(dsn)
    }
}

fn redact_uri(dsn: &str) -> String {
    let scheme_end = dsn.find("://").map(|i| i + 3).unwrap_or(0);
    let (scheme, rest) = dsn.split_at(scheme_end);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}:{MASK}{}", &userinfo[..colon], &authority[at..]),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key == "password" => format!("{key}={MASK}"),
                    _ => param.to_string(),
                })
                .collect();
            format!("{path}{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

fn redact_key_value(dsn: &str) -> String {
    let mut out = String::with_capacity(dsn.len());
    let mut rest = dsn;
    while let Some(pos) = find_password_key(rest) {
        let (before, after_key) = rest.split_at(pos);
        out.push_str(before);
        let eq = after_key.find('=').expect("key found with its '='");
        out.push_str(&after_key[..=eq]);
        let value = after_key[eq + 1..].trim_start();
        let skipped = after_key.len() - eq - 1 - value.len();
        out.push_str(&after_key[eq + 1..eq + 1 + skipped]);
        out.push_str(MASK);
        rest = &value[value_len(value)..];
    }
    out.push_str(rest);
    out
}

/// Byte offset of a `password` key (followed by optional spaces and `=`)
/// that starts a key=value pair.
fn find_password_key(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find("password") {
        let at = from + found;
        let starts_pair = at == 0 || text[..at].ends_with(char::is_whitespace);
        let after = text[at + "password".len()..].trim_start();
        if starts_pair && after.starts_with('=') {
            return Some(at);
        }
        from = at + "password".len();
    }
    None
}

/// Length of a libpq value: single-quoted with backslash escapes, or up to
/// the next whitespace.
fn value_len(value: &str) -> usize {
    if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '\'') => return i + 2,
                _ => {}
            }
        }
        value.len()
    } else {
        value.find(char::is_whitespace).unwrap_or(value.len())
    }
}

/// `text` with every occurrence of each non-empty secret masked: a last line
/// of defence for error strings that may quote connection parameters.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?} {s}"), "******** ********");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn key_value_passwords_are_masked() {
        assert_eq!(
            redact_dsn("host=a password=hunter2 user=b"),
            "host=a password=******** user=b"
        );
        assert_eq!(
            redact_dsn("host=a password = 'hun ter\\'2' dbname=x"),
            "host=a password = ******** dbname=x"
        );
        assert_eq!(redact_dsn("password=x"), "password=********");
        assert_eq!(redact_dsn("host=a mypassword=x"), "host=a mypassword=x");
    }

    #[test]
    fn uri_passwords_are_masked() {
        assert_eq!(
            redact_dsn("postgresql://powa:hunter2@db:5432/powa"),
            "postgresql://powa:********@db:5432/powa"
        );
        assert_eq!(
            redact_dsn("postgres://db/powa?user=u&password=hunter2&sslmode=require"),
            "postgres://db/powa?user=u&password=********&sslmode=require"
        );
        assert_eq!(
            redact_dsn("postgresql://powa@db/powa"),
            "postgresql://powa@db/powa"
        );
    }

    #[test]
    fn scrub_masks_every_occurrence() {
        assert_eq!(
            scrub("a hunter2 b hunter2", &["hunter2", ""]),
            "a ******** b ********"
        );
    }
}
