//! Where PoWA's objects live on one connection, and which PoWA it is.
//!
//! Every object is qualified with the schema of the extension that owns
//! it, read once per session from `pg_extension`; nothing relies on
//! `search_path`. The powa version decides which SQL a session gets:
//! PoWA 4 and PoWA 5 differ in their datasource layout, their extension
//! bookkeeping table and their per-database features.

use std::collections::BTreeMap;
use std::fmt;

use tokio_postgres::Client;

/// `powa` extension version, e.g. 4.1.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PowaVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl PowaVersion {
    pub fn parse(text: &str) -> Result<PowaVersion, BadVersion> {
        let bad = || BadVersion(text.to_string());
        let mut parts = text.trim().split('.');
        let mut next = |required: bool| -> Result<u32, BadVersion> {
            match parts.next() {
                Some(p) => {
                    // "5.0.0dev" style suffixes are tolerated on the last part.
                    let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().map_err(|_| bad())
                }
                None if required => Err(bad()),
                None => Ok(0),
            }
        };
        Ok(PowaVersion {
            major: next(true)?,
            minor: next(true)?,
            patch: next(false)?,
        })
    }

    /// Same major.minor: the same SQL schema.
    pub fn compatible(&self, other: &PowaVersion) -> bool {
        self.major == other.major && self.minor == other.minor
    }
}

impl fmt::Display for PowaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A `powa` version text that is not `major.minor[.patch]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable powa version \"{0}\"")]
pub struct BadVersion(pub String);

/// The two SQL layouts powa-fleet speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// PoWA 4.1 and later 4.x.
    Four,
    /// PoWA 5.x: per-extension schemas, per-database modules, catalogs.
    Five,
}

/// The extensions of one database: schema and version of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// extname → (quoted schema, extversion)
    extensions: BTreeMap<String, (String, String)>,
}

/// Used when powa is absent (a database without PoWA, such as the other
/// databases of a remote server): where PoWA installs by default.
const DEFAULT_SCHEMA: &str = "public";

impl Layout {
    /// Read the extensions of the session's database.
    pub async fn read(client: &Client) -> Result<Layout, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT e.extname::text, pg_catalog.quote_ident(n.nspname)::text, e.extversion \
                 FROM pg_catalog.pg_extension e \
                 JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace",
                &[],
            )
            .await?;
        Ok(Layout::from_rows(
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))),
        ))
    }

    /// From `(extname, quoted schema, version)` triples.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, String, String)>) -> Layout {
        Layout {
            extensions: rows
                .into_iter()
                .map(|(name, schema, version)| (name, (schema, version)))
                .collect(),
        }
    }

    /// The raw version text of `powa`, if installed.
    pub fn powa_version_text(&self) -> Option<&str> {
        self.extensions.get("powa").map(|(_, v)| v.as_str())
    }

    /// The version of `powa`; `None` when not installed or unreadable.
    pub fn powa_version(&self) -> Option<PowaVersion> {
        self.powa_version_text()
            .and_then(|v| PowaVersion::parse(v).ok())
    }

    /// Which SQL this session gets (PoWA 4 when powa is absent: the other
    /// databases of a remote server never run PoWA SQL).
    pub fn generation(&self) -> Generation {
        match self.powa_version() {
            Some(v) if v.major >= 5 => Generation::Five,
            _ => Generation::Four,
        }
    }

    /// PoWA 5 sessions, and sessions on a database without PoWA, run with
    /// `search_path = pg_catalog`, so that no object can be shadowed by a
    /// user's schema. PoWA 4 functions resolve some names through the
    /// search_path, so their sessions keep the default.
    pub fn wants_catalog_search_path(&self) -> bool {
        !self.extensions.contains_key("powa") || self.generation() == Generation::Five
    }

    /// The quoted schema of powa's own objects.
    pub fn powa(&self) -> &str {
        self.schema_of("powa").unwrap_or(DEFAULT_SCHEMA)
    }

    /// The quoted schema of extension `name`, if installed.
    pub fn schema_of(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).map(|(s, _)| s.as_str())
    }

    /// The schema of a datasource's objects: its own extension's for an
    /// external one, powa's otherwise.
    pub fn datasource_schema(&self, name: &str, external: bool) -> Option<&str> {
        if external {
            self.schema_of(name)
        } else {
            self.schema_of("powa")
        }
    }

    /// `schema.name` in powa's schema, for PoWA's own objects (plain
    /// names that need no quoting).
    pub fn qualify(&self, name: &str) -> String {
        debug_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        format!("{}.{name}", self.powa())
    }

    /// A PoWA 5 SQL template with `{extname}` where an extension's schema
    /// goes (`SELECT {pg_qualstats}.pg_qualstats_reset()`); `{{` and `}}`
    /// stand for braces. The error names an extension that is not
    /// installed.
    pub fn expand(&self, template: &str) -> Result<String, String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(at) = rest.find(['{', '}']) {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                out.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            let name = tail[1..]
                .find('}')
                .map(|end| &tail[1..=end])
                .filter(|name| {
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            match name {
                Some(name) => {
                    out.push_str(self.schema_of(name).ok_or_else(|| name.to_string())?);
                    rest = &tail[name.len() + 2..];
                }
                None => {
                    out.push_str(&tail[..1]);
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The name of the table where extension versions are kept.
    pub fn extension_table_name(&self) -> &'static str {
        match self.generation() {
            Generation::Four => "powa_extensions",
            Generation::Five => "powa_extension_config",
        }
    }

    /// [`Layout::extension_table_name`], qualified.
    pub fn extension_table(&self) -> String {
        self.qualify(self.extension_table_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(rows: &[(&str, &str, &str)]) -> Layout {
        Layout::from_rows(
            rows.iter()
                .map(|(n, s, v)| (n.to_string(), s.to_string(), v.to_string())),
        )
    }

    #[test]
    fn powa_4_keeps_the_default_search_path_and_its_tables() {
        let l = layout(&[
            ("powa", "public", "4.1.4"),
            ("plpgsql", "pg_catalog", "1.0"),
        ]);
        assert_eq!(l.generation(), Generation::Four);
        assert!(!l.wants_catalog_search_path());
        assert_eq!(l.extension_table(), "public.powa_extensions");
        // An internal datasource lives with powa.
        assert_eq!(
            l.datasource_schema("pg_stat_statements", false),
            Some("public")
        );
    }

    #[test]
    fn powa_5_qualifies_by_extension_schema() {
        let l = layout(&[
            ("powa", "\"Powa Schema\"", "5.1.2"),
            ("pg_qualstats", "qs", "2.0.4"),
        ]);
        assert_eq!(l.generation(), Generation::Five);
        assert!(l.wants_catalog_search_path());
        assert_eq!(l.extension_table(), "\"Powa Schema\".powa_extension_config");
        assert_eq!(l.datasource_schema("pg_qualstats", true), Some("qs"));
        assert_eq!(
            l.datasource_schema("pg_qualstats", false),
            Some("\"Powa Schema\"")
        );
        assert_eq!(l.datasource_schema("pg_wait_sampling", true), None);
        assert_eq!(l.qualify("powa_servers"), "\"Powa Schema\".powa_servers");
    }

    #[test]
    fn templates_name_extension_schemas() {
        let l = layout(&[
            ("powa", "public", "5.1.2"),
            ("pg_qualstats", "\"Q s\"", "2.0.4"),
        ]);
        assert_eq!(
            l.expand("SELECT {pg_qualstats}.pg_qualstats_reset()")
                .unwrap(),
            "SELECT \"Q s\".pg_qualstats_reset()"
        );
        assert_eq!(l.expand("SELECT 1").unwrap(), "SELECT 1");
        assert_eq!(
            l.expand("SELECT '{{}}' || {powa}.f()").unwrap(),
            "SELECT '{}' || public.f()"
        );
        assert_eq!(l.expand("SELECT '{ x }'").unwrap(), "SELECT '{ x }'");
        assert_eq!(
            l.expand("SELECT {pg_wait_sampling}.reset()").unwrap_err(),
            "pg_wait_sampling"
        );
    }

    #[test]
    fn a_database_without_powa_is_locked_to_pg_catalog() {
        let l = layout(&[("plpgsql", "pg_catalog", "1.0")]);
        assert!(l.wants_catalog_search_path());
        assert_eq!(l.powa_version(), None);
        assert_eq!(l.powa(), "public");
    }
}
