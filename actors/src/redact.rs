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
///
/// A string that does not parse has no structure to trust (`p=assword=x`,
/// `password=a b` are a password with a typo, one that needed quotes): then
/// only its keys are shown, every value and stray word masked.
pub fn redact_dsn(dsn: &str) -> String {
    let trimmed = dsn.trim_start();
    let uri = trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://");
    let parses = crate::tls::take_ssl_params(dsn)
        .is_ok_and(|(rest, _)| rest.parse::<tokio_postgres::Config>().is_ok());
    match (uri, parses) {
        (true, true) => redact_uri(dsn),
        (true, false) => {
            let scheme_end = dsn.find("://").map_or(0, |i| i + 3);
            format!("{}{MASK}", &dsn[..scheme_end])
        }
        // The same reading as in messages: `user='x' 'password='y'` still
        // has its password found.
        (false, true) => scrub(dsn, &[]),
        (false, false) => keys_only(dsn),
    }
}

/// `key=********` for each pair of a broken key=value string, `********`
/// for each other word.
fn keys_only(dsn: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut rest = dsn.trim_start();
    while !rest.is_empty() {
        match key_value_at(rest) {
            Some(pair) => {
                out.push(format!("{}={MASK}", pair.key));
                rest = &rest[pair.value_end.max(1).min(rest.len())..];
            }
            None => {
                out.push(MASK.to_string());
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                rest = &rest[end..];
            }
        }
        rest = rest.trim_start();
    }
    out.join(" ")
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

/// `text` with the passwords it quotes masked, found by the structure that
/// carries them, never by searching for the password as a substring (a
/// password `a` or `select` would mangle every message it touches, and one
/// quoted with escapes or percent-encoded would not be found):
///
/// * in a connection URI (`postgres://` or `postgresql://`, up to the next
///   whitespace), the password of the user info and of a `password`
///   query parameter;
/// * in `key=value` text, the value of every `password` key, and of any
///   key whose value (quoted or not, escapes undone) is one of `secrets`.
///
/// Everything else is left byte for byte. Error strings only ever quote a
/// password inside a connection string (tokio-postgres and PostgreSQL never
/// print one; this crate's own errors quote no values), so this is the last
/// line of defence for what goes to logs, stored errors and status answers.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let secrets: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let starts_token = at == 0 || text[..at].ends_with(is_boundary);
        if starts_token && (rest.starts_with("postgres://") || rest.starts_with("postgresql://")) {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push_str(&text[copied..at]);
            out.push_str(&redact_uri(&rest[..end]));
            at += end;
            copied = at;
            continue;
        }
        if starts_token {
            if let Some(pair) = key_value_at(rest) {
                if pair.key == "password" || secrets.contains(&pair.value.as_str()) {
                    out.push_str(&text[copied..at + pair.value_start]);
                    out.push_str(MASK);
                    copied = at + pair.value_end;
                    at += pair.value_end.max(1);
                } else {
                    // A URI value (`dsn='postgres://...'`) is looked into.
                    let value = &rest[pair.value_start..];
                    let skip = usize::from(value.starts_with('\''));
                    if value[skip..].starts_with("postgres") {
                        at += pair.value_start + skip;
                    } else {
                        at += pair.value_end.max(1);
                    }
                }
                continue;
            }
        }
        at += rest.chars().next().map_or(1, char::len_utf8);
    }
    out.push_str(&text[copied..]);
    out
}

/// What may stand before a key or a URI: anything but a key character
/// (`"host=a"`, `(password=x)`, `dsn:postgres://...`, a stray `}` or `'`
/// of a broken string), so that `mypassword=` is not a password key.
fn is_boundary(c: char) -> bool {
    !(c.is_ascii_alphanumeric() || c == '_')
}

/// A `key = value` pair at the start of `text`: libpq key characters,
/// optional spaces, `=`, optional spaces, a value (single-quoted with
/// backslash escapes, or up to whitespace with backslash escapes).
struct Pair<'a> {
    key: &'a str,
    /// The value with its quotes and escapes undone.
    value: String,
    value_start: usize,
    value_end: usize,
}

fn key_value_at(text: &str) -> Option<Pair<'_>> {
    let key_len = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    if key_len == 0 {
        return None;
    }
    let key = &text[..key_len];
    let after_key = &text[key_len..];
    let eq_rest = after_key.trim_start().strip_prefix('=')?;
    let value_text = eq_rest.trim_start();
    let value_start = text.len() - value_text.len();
    let mut value = String::new();
    let mut len = 0;
    if let Some(quoted) = value_text.strip_prefix('\'') {
        let mut escaped = false;
        len = value_text.len();
        for (i, c) in quoted.char_indices() {
            match (escaped, c) {
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '\'') => {
                    len = i + 2;
                    break;
                }
                (false, c) => value.push(c),
            }
        }
    } else {
        let mut escaped = false;
        for (i, c) in value_text.char_indices() {
            if !escaped && c.is_whitespace() {
                break;
            }
            len = i + c.len_utf8();
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (_, c) => {
                    value.push(c);
                    escaped = false;
                }
            }
        }
    }
    Some(Pair {
        key,
        value,
        value_start,
        value_end: value_start + len,
    })
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
        assert_eq!(
            redact_dsn("host=a application_name=mypassword=x"),
            "host=a application_name=mypassword=x"
        );
        // tokio-postgres knows no `mypassword`: the string does not parse.
        assert_eq!(
            redact_dsn("host=a mypassword=x"),
            "host=******** mypassword=********"
        );
        // Broken strings (found by the configuration properties): only
        // their keys are shown.
        assert_eq!(
            redact_dsn("user='a\\b' 'password='Pw-7Hq3Zx' dbname=''"),
            "user=******** ******** dbname=********"
        );
        assert_eq!(
            redact_dsn("host=a port=10 user='' p=assword='Pw-7Hq3Zx' dbname=''"),
            "host=******** port=******** user=******** p=******** dbname=********"
        );
        assert_eq!(
            redact_dsn("host=a password=hunter2 secret2"),
            "host=******** password=******** ********"
        );
        assert_eq!(
            redact_dsn("postgresql://u:pw@h:port/d"),
            "postgresql://********"
        );
        // In messages, the password key is found after any non-key
        // character.
        assert_eq!(
            scrub("user='a' }password='Pw' 'password=x", &[]),
            "user='a' }password=******** 'password=********"
        );
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
    fn scrub_masks_passwords_where_connection_strings_hold_them() {
        assert_eq!(
            scrub(
                "invalid connection string \"host=a password=hunter2 port=x\": bad port",
                &["hunter2", ""]
            ),
            "invalid connection string \"host=a password=******** port=x\": bad port"
        );
        assert_eq!(
            scrub("to postgresql://u:hunter2@db/powa failed", &[]),
            "to postgresql://u:********@db/powa failed"
        );
        // Quoted with escapes, or percent-encoded: a substring search for
        // the password itself would not find them.
        assert_eq!(
            scrub("dsn: password='it\\'s' user=u", &["it's"]),
            "dsn: password=******** user=u"
        );
        assert_eq!(
            scrub("dsn: postgres://u:p%40ss@h?sslmode=require", &["p@ss"]),
            "dsn: postgres://u:********@h?sslmode=require"
        );
        assert_eq!(
            scrub("dsn='postgresql://u:pw@h' x", &[]),
            "dsn='postgresql://u:********@h' x"
        );
        // A secret given under another key is masked too.
        assert_eq!(scrub("pass=hunter2 x", &["hunter2"]), "pass=******** x");
    }

    #[test]
    fn scrub_leaves_unrelated_text_alone() {
        let text = "connection to a server at \"db\" failed: a timeout; retry a";
        assert_eq!(scrub(text, &["a"]), text);
        let text = "permission denied for table powa_statements: SELECT needs SELECT";
        assert_eq!(scrub(text, &["SELECT", "select"]), text);
        let text = "hunter2hunter2 is not hunter2";
        assert_eq!(scrub(text, &["hunter2"]), text);
        // Short and repeated passwords are masked where they are values.
        assert_eq!(
            scrub("a: password=a user=a password = 'a' a=b", &["a"]),
            "a: password=******** user=******** password = ******** a=b"
        );
        assert_eq!(
            scrub("aa password=aa x", &["a", "aa"]),
            "aa password=******** x"
        );
    }
}
