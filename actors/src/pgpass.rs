//! Passwords from a libpq password file, for servers whose
//! `powa_servers.password` is NULL (storing passwords in the repository is
//! discouraged). tokio-postgres does not read the file itself.
//!
//! Same rules as libpq: the file is `PGPASSFILE`, else `~/.pgpass`; each
//! line is `hostname:port:database:username:password`, `*` matches
//! anything, `\` escapes `:` and `\`, a line starting with `#` is a
//! comment, the first matching line wins; a file readable by group or
//! others is ignored.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// What looking up a password gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(String),
    NotFound,
    /// The file exists but is not used; the reason is worth a warning.
    Ignored(String),
}

/// The password file libpq would read.
pub fn passfile() -> Option<PathBuf> {
    match std::env::var_os("PGPASSFILE") {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pgpass")),
    }
}

/// The password for these connection parameters, from the password file.
pub fn lookup(host: &str, port: u16, dbname: &str, user: &str) -> Lookup {
    let Some(path) = passfile() else {
        return Lookup::NotFound;
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        return Lookup::NotFound;
    };
    if !meta.is_file() {
        return Lookup::Ignored(format!("{} is not a plain file", path.display()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Lookup::Ignored(format!(
            "{} has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        ));
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => find(&text, host, port, dbname, user).map_or(Lookup::NotFound, Lookup::Found),
        Err(e) => Lookup::Ignored(format!("cannot read {}: {e}", path.display())),
    }
}

/// The first matching line's password in password-file `text`, as libpq
/// reads it: a field matches when it is exactly `*` (unescaped) or equal to
/// the value once its escapes are undone; the password ends at the next
/// unescaped `:`; a first matching line with an empty password means none.
pub fn find(text: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), dbname, user];
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .find_map(|line| {
            let mut rest = line;
            for value in wanted {
                rest = matching_field(rest, value)?;
            }
            Some(unescape_password(rest))
        })
        .filter(|password| !password.is_empty())
}

/// The rest of `line` after its first field, if that field matches `value`
/// and ends with `:`.
fn matching_field<'a>(line: &'a str, value: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut field = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => field.push(escaped),
                None => return None,
            },
            ':' => return (field == value).then(|| &line[i + 1..]),
            c => field.push(c),
        }
    }
    None
}

/// The password field: escapes undone, up to the first unescaped `:`; a
/// backslash ending the line is kept.
fn unescape_password(field: &str) -> String {
    let mut password = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => password.push(chars.next().unwrap_or('\\')),
            c => password.push(c),
        }
    }
    password
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n\
        db1:5432:powa:powa:first\n\
        *:5433:*:powa:second\n\
        db1:5432:powa:powa:shadowed\n\
        db\\:2:*:*:*:with\\:colon:and\\\\slash\n\
        other:*:*:*:back\\\\slash\n";

    #[test]
    fn first_matching_line_wins_with_wildcards() {
        assert_eq!(
            find(FILE, "db1", 5432, "powa", "powa").as_deref(),
            Some("first")
        );
        assert_eq!(
            find(FILE, "anyhost", 5433, "x", "powa").as_deref(),
            Some("second")
        );
        assert_eq!(find(FILE, "db1", 5432, "powa", "other"), None);
    }

    #[test]
    fn escapes_are_honoured() {
        assert_eq!(
            find(FILE, "db:2", 1, "d", "u").as_deref(),
            // libpq ends the password at the unescaped colon.
            Some("with:colon")
        );
    }

    #[test]
    fn libpq_details() {
        // An escaped star is a literal star, not a wildcard.
        assert_eq!(find("\\*:*:*:*:pw\n", "db", 1, "d", "u"), None);
        assert_eq!(
            find("\\*:*:*:*:pw\n", "*", 1, "d", "u").as_deref(),
            Some("pw")
        );
        // The password ends at an unescaped colon; a final backslash stays.
        assert_eq!(
            find("*:*:*:*:pw:extra\n", "h", 1, "d", "u").as_deref(),
            Some("pw")
        );
        assert_eq!(
            find("*:*:*:*:pw\\\n", "h", 1, "d", "u").as_deref(),
            Some("pw\\")
        );
        // Only a line starting with '#' is a comment.
        assert_eq!(
            find(" #:*:*:*:pw\n", " #", 1, "d", "u").as_deref(),
            Some("pw")
        );
        // The first matching line wins even with an empty password.
        assert_eq!(find("*:*:*:*:\n*:*:*:*:pw\n", "h", 1, "d", "u"), None);
    }

    #[test]
    fn escaped_backslash() {
        assert_eq!(
            find(FILE, "other", 1, "d", "u").as_deref(),
            Some("back\\slash")
        );
    }

    #[test]
    fn short_lines_are_skipped() {
        assert_eq!(
            find("a:b:c\n*:*:*:*:pw\n", "h", 1, "d", "u").as_deref(),
            Some("pw")
        );
    }
}
