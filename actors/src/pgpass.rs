//! Passwords from a libpq password file, for servers whose
//! `powa_servers.password` is NULL (storing passwords in the repository is
//! discouraged). tokio-postgres does not read the file itself.
//!
//! Same rules as libpq: the file is `PGPASSFILE`, else `~/.pgpass`; each
//! line is `hostname:port:database:username:password`, `*` matches
//! anything, `\` escapes `:` and `\`, `#` starts a comment line, the first
//! matching line wins; a file readable by group or others is ignored.

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

/// The first matching line's password in password-file `text`.
pub fn find(text: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), dbname, user];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .find_map(|line| {
            let fields = split_fields(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, value)| field == "*" || field == value);
            matches.then(|| fields[4].clone())
        })
}

/// Split on unescaped `:`; the fifth field takes the rest of the line.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("never empty").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            other => fields.last_mut().expect("never empty").push(other),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n\
        db1:5432:powa:powa:first\n\
        *:5433:*:powa:second\n\
        db1:5432:powa:powa:shadowed\n\
        db\\:2:*:*:*:with\\:colon:and\\\\slash\n";

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
            Some("with:colon:and\\slash")
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
