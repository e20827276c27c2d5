//! Every SQL statement powa-fleet sends to the repository (and the few it
//! sends to a remote server for version bookkeeping), for PoWA 4.1 and 5.x.
//! Objects are qualified with the schema the session's [`Layout`] found;
//! where the two versions differ, the layout's [`Generation`] decides.

use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::error::{classify, pg_message, ErrorKind};
pub use crate::layout::PowaVersion;
use crate::layout::{BadVersion, Generation, Layout};
pub use crate::schedule::LastSnapshot;
use crate::server::{ServerSpec, SrvId};

#[derive(Debug, Error)]
pub enum RepositoryError {
    #[error("{what}: {}", pg_message(.source))]
    Sql {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the powa extension is not installed in the {0} database")]
    NoPowa(&'static str),
    #[error(transparent)]
    BadVersion(#[from] BadVersion),
    #[error("PoWA {0} is too old: powa-fleet needs PoWA 4.1 or newer on the repository")]
    TooOld(PowaVersion),
    #[error(
        "PoWA {0} is not supported yet: powa-fleet collects PoWA 4.1 or newer 4.x, and PoWA 5.x"
    )]
    TooNew(PowaVersion),
    #[error("PoWA version mismatch: repository has {repository}, remote server has {remote} (major.minor must match)")]
    Mismatch {
        repository: PowaVersion,
        remote: PowaVersion,
    },
}

impl RepositoryError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RepositoryError::Sql { source, .. } => classify(source),
            _ => ErrorKind::Setup,
        }
    }
}

pub(crate) fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RepositoryError {
    move |source| RepositoryError::Sql { what, source }
}

/// The version of the `powa` extension installed on `client`'s database.
pub async fn powa_version(client: &Client) -> Result<PowaVersion, RepositoryError> {
    extension_version(client, "repository").await
}

async fn extension_version(
    client: &Client,
    side: &'static str,
) -> Result<PowaVersion, RepositoryError> {
    let row = client
        .query_opt(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'powa'",
            &[],
        )
        .await
        .map_err(sql("reading the powa version"))?;
    let Some(row) = row else {
        return Err(RepositoryError::NoPowa(side));
    };
    Ok(PowaVersion::parse(row.get(0))?)
}

/// Refuse repositories older than PoWA 4.1, and majors after 5, whose SQL
/// is unknown.
pub fn check_supported(version: &PowaVersion) -> Result<(), RepositoryError> {
    if (version.major, version.minor) < (4, 1) {
        return Err(RepositoryError::TooOld(*version));
    }
    if version.major > 5 {
        return Err(RepositoryError::TooNew(*version));
    }
    Ok(())
}

/// The servers to collect: `id > 0 AND frequency > 0`, by id.
pub async fn list_servers(
    client: &Client,
    layout: &Layout,
) -> Result<Vec<ServerSpec>, RepositoryError> {
    let rows = client
        .query(
            &format!(
                "SELECT id, hostname, port, username, password, dbname, frequency, alias \
                 FROM {} WHERE id > 0 AND frequency > 0 ORDER BY id",
                layout.qualify("powa_servers")
            ),
            &[],
        )
        .await
        .map_err(sql("reading powa_servers"))?;
    Ok(rows
        .iter()
        .map(|row| ServerSpec {
            srvid: row.get(0),
            hostname: row.get(1),
            port: u16::try_from(row.get::<_, i32>(2)).unwrap_or(0),
            username: row.get(3),
            password: row.get(4),
            dbname: row.get(5),
            frequency: u32::try_from(row.get::<_, i32>(6)).unwrap_or(1),
            alias: row.get(7),
        })
        .collect())
}

pub async fn last_snapshot(
    client: &Client,
    layout: &Layout,
    srvid: SrvId,
) -> Result<LastSnapshot, RepositoryError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT EXTRACT(EPOCH FROM snapts)::float8 FROM {} WHERE srvid = $1",
                layout.qualify("powa_snapshot_metas")
            ),
            &[&srvid],
        )
        .await
        .map_err(sql("reading powa_snapshot_metas"))?;
    Ok(match row {
        None => LastSnapshot::NotRegistered,
        Some(row) => {
            let epoch: f64 = row.get(0);
            if epoch.is_finite() && epoch > 0.0 {
                LastSnapshot::At(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(epoch))
            } else {
                LastSnapshot::Never
            }
        }
    })
}

/// One snapshot datasource of a server (`powa_functions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datasource {
    /// The extension or module it belongs to (`module` on PoWA 4, `name`
    /// on PoWA 5).
    pub module: String,
    /// Its objects live in its own extension's schema, not in powa's
    /// (PoWA 5; always false on PoWA 4).
    pub external: bool,
    /// Set-returning function on the remote; its `_tmp` table on the repository.
    pub query_source: String,
    /// SQL run on the remote after the copy; PoWA 5 writes `{extname}`
    /// where an extension's schema goes.
    pub query_cleanup: Option<String>,
    pub function_name: String,
}

impl Datasource {
    /// The source function, qualified with its schema in `layout` (the
    /// remote's); `None` when its extension is not installed there.
    pub fn source_function(&self, layout: &Layout) -> Option<String> {
        let schema = layout.datasource_schema(&self.module, self.external)?;
        Some(format!("{schema}.{}", quote_ident(&self.query_source)))
    }

    /// `<query_source>_tmp`, qualified with its schema in `layout` (the
    /// repository's); `None` when its extension is not installed there.
    pub fn staging_table(&self, layout: &Layout) -> Option<String> {
        let schema = layout.datasource_schema(&self.module, self.external)?;
        Some(format!(
            "{schema}.{}",
            quote_ident(&format!("{}_tmp", self.query_source))
        ))
    }
}

/// The SQL listing the enabled snapshot datasources of a server (`$1`).
pub fn datasources_sql(layout: &Layout) -> String {
    let columns = match layout.generation() {
        Generation::Four => "module, false",
        Generation::Five => "name, external",
    };
    format!(
        "SELECT {columns}, query_source, query_cleanup, function_name FROM {} \
         WHERE operation = 'snapshot' AND enabled AND srvid = $1 ORDER BY priority, 1",
        layout.qualify("powa_functions")
    )
}

/// The enabled snapshot datasources of `srvid`, by priority; rows without a
/// `query_source` are skipped and described in the returned warnings.
pub async fn datasources<C: GenericClient>(
    client: &C,
    layout: &Layout,
    srvid: SrvId,
) -> Result<(Vec<Datasource>, Vec<String>), RepositoryError> {
    // Typed: read at every snapshot, without a statement prepared for it.
    let rows = client
        .query_typed(&datasources_sql(layout), &[(&srvid, Type::INT4)])
        .await
        .map_err(sql("reading powa_functions"))?;
    let mut found = Vec::new();
    let mut warnings = Vec::new();
    for row in rows {
        let module: String = row.get(0);
        match row.get::<_, Option<String>>(2) {
            Some(query_source) => found.push(Datasource {
                module,
                external: row.get(1),
                query_source,
                query_cleanup: row.get(3),
                function_name: row.get(4),
            }),
            None => warnings.push(format!("datasource {module} has no query_source, skipped")),
        }
    }
    Ok((found, warnings))
}

/// A per-database datasource (PoWA 5 `powa_db_functions`): copied from
/// each remote database it is enabled for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbDatasource {
    pub name: String,
    /// A query (not a function) run in each database.
    pub query_source: String,
    /// The qualified staging table on the repository.
    pub tmp_table: String,
    /// `None`: every database.
    pub dbnames: Option<Vec<String>>,
}

impl DbDatasource {
    pub fn wants(&self, dbname: &str) -> bool {
        self.dbnames
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == dbname))
    }
}

/// The enabled per-database datasources of `srvid` for a remote running
/// PostgreSQL `server_version_num`, by priority.
pub async fn db_datasources<C: GenericClient>(
    client: &C,
    layout: &Layout,
    srvid: SrvId,
    server_version_num: i32,
) -> Result<Vec<DbDatasource>, RepositoryError> {
    let rows = client
        .query(
            &format!(
                "SELECT db_module, query_source, tmp_table, dbnames FROM {}($1, $2) \
                 WHERE operation = 'snapshot' AND enabled AND query_source IS NOT NULL \
                 ORDER BY priority, db_module",
                layout.qualify("powa_db_functions")
            ),
            &[&srvid, &server_version_num],
        )
        .await
        .map_err(sql("reading powa_db_functions"))?;
    Ok(rows
        .iter()
        .map(|row| DbDatasource {
            name: row.get(0),
            query_source: row.get(1),
            tmp_table: row.get(2),
            dbnames: row.get(3),
        })
        .collect())
}

/// A catalog copied from each remote database (PoWA 5
/// `powa_catalog_functions`), when its copy there is older than a year
/// or a refresh was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub name: String,
    pub query_source: String,
    pub tmp_table: String,
    /// Databases whose copy is recent enough.
    pub fresh: Vec<String>,
}

/// The catalogs of `srvid` and where they are fresh.
pub async fn catalogs<C: GenericClient>(
    client: &C,
    layout: &Layout,
    srvid: SrvId,
    server_version_num: i32,
) -> Result<Vec<Catalog>, RepositoryError> {
    let rows = client
        .query(
            &format!(
                "SELECT catname, query_source, tmp_table, excluded_dbnames \
                 FROM {}($1, $2) WHERE query_source IS NOT NULL ORDER BY catname",
                layout.qualify("powa_catalog_functions")
            ),
            &[&srvid, &server_version_num],
        )
        .await
        .map_err(sql("reading powa_catalog_functions"))?;
    Ok(rows
        .iter()
        .map(|row| Catalog {
            name: row.get(0),
            query_source: row.get(1),
            tmp_table: row.get(2),
            fresh: row.get(3),
        })
        .collect())
}

/// Replace the server's stored errors (connection failures, lost snapshots).
pub async fn record_connection_error(
    client: &Client,
    layout: &Layout,
    srvid: SrvId,
    message: &str,
) -> Result<(), RepositoryError> {
    client
        .execute(
            &format!(
                "UPDATE {} SET errors = ARRAY[$2::text] WHERE srvid = $1",
                layout.qualify("powa_snapshot_metas")
            ),
            &[&srvid, &message],
        )
        .await
        .map_err(sql("recording an error in powa_snapshot_metas"))?;
    Ok(())
}

/// Append errors to the server's stored errors, inside the snapshot.
pub async fn append_errors(
    tx: &Transaction<'_>,
    layout: &Layout,
    srvid: SrvId,
    errors: &[String],
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        &format!(
            "UPDATE {} SET errors = pg_catalog.array_cat(errors, $2::text[]) WHERE srvid = $1",
            layout.qualify("powa_snapshot_metas")
        ),
        &[&srvid, &errors],
    )
    .await
    .map(|_| ())
}

/// Clear the server's stored errors (when `powa_take_snapshot` failed and
/// could not do it itself).
pub async fn clear_errors(
    tx: &Transaction<'_>,
    layout: &Layout,
    srvid: SrvId,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        &format!(
            "UPDATE {} SET errors = NULL WHERE srvid = $1",
            layout.qualify("powa_snapshot_metas")
        ),
        &[&srvid],
    )
    .await
    .map(|_| ())
}

/// Make the space of the dead rows in staging tables (qualified) reusable.
///
/// Every snapshot copies its rows into the shared `*_src_tmp` tables and
/// `powa_take_snapshot` deletes them in the same transaction: after the
/// commit they are dead, and the next COPY appends after them until a
/// vacuum marks the space free. Autovacuum visits them about once a minute
/// at best, and a busy repository then grows them by hundreds of MB
/// between two visits (powa-team/powa-collector#27). It never waits for
/// a lock nor makes a snapshot wait: `SKIP_LOCKED` passes over a table
/// another vacuum (or anything stronger than a COPY) holds, and `TRUNCATE
/// false` keeps the table's pages (the next COPYs reuse them) instead of
/// taking the ACCESS EXCLUSIVE lock that would stop snapshots in flight.
/// Only the tables the role owns (directly, through a role it belongs to,
/// or as a superuser) are vacuumed: PostgreSQL would skip the others with a
/// warning in its log at every call; they are left to autovacuum. How many
/// were vacuumed.
pub async fn vacuum_staging(
    client: &Client,
    tables: &[String],
) -> Result<usize, tokio_postgres::Error> {
    if tables.is_empty() {
        return Ok(0);
    }
    let owned: Vec<String> = client
        .query_typed(
            "SELECT t FROM pg_catalog.unnest($1::text[]) t \
             JOIN pg_catalog.pg_class c ON c.oid = t::regclass \
             WHERE pg_catalog.pg_has_role(c.relowner, 'USAGE')",
            &[(&tables, Type::TEXT_ARRAY)],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if owned.is_empty() {
        return Ok(0);
    }
    client
        .batch_execute(&format!(
            "VACUUM (SKIP_LOCKED, TRUNCATE false) {}",
            owned.join(", ")
        ))
        .await?;
    Ok(owned.len())
}

/// Remove the rows of `srvid` staged in `table` (qualified).
pub async fn clear_staged(
    tx: &Transaction<'_>,
    srvid: SrvId,
    table: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(&format!("DELETE FROM {table} WHERE srvid = $1"), &[&srvid])
        .await
        .map(|_| ())
}

/// What a remote server runs: its PostgreSQL version, its extensions and
/// their versions, and hypopg's availability (it need not be installed in
/// the powa database to be usable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteInventory {
    pub server_version: String,
    /// `(extname, extversion)` of the powa database, by name.
    pub extensions: Vec<(String, String)>,
    /// `default_version` of hypopg when available.
    pub hypopg: Option<String>,
}

impl RemoteInventory {
    /// The version of the `powa` extension, if installed.
    pub fn powa(&self) -> Result<PowaVersion, RepositoryError> {
        match self.extensions.iter().find(|(name, _)| name == "powa") {
            Some((_, version)) => Ok(PowaVersion::parse(version)?),
            None => Err(RepositoryError::NoPowa("remote server's PoWA")),
        }
    }
}

/// Read a remote server's [`RemoteInventory`] (no write anywhere).
pub async fn remote_inventory(remote: &Client) -> Result<RemoteInventory, RepositoryError> {
    let server_version: String = remote
        .query_one("SELECT pg_catalog.current_setting('server_version')", &[])
        .await
        .map_err(sql("reading the remote server version"))?
        .get(0);
    let extensions = remote
        .query(
            "SELECT extname::text, extversion FROM pg_catalog.pg_extension ORDER BY extname",
            &[],
        )
        .await
        .map_err(sql("reading the remote extensions"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let hypopg: Option<String> = remote
        .query_opt(
            "SELECT default_version FROM pg_catalog.pg_available_extensions \
             WHERE name = 'hypopg'",
            &[],
        )
        .await
        .map_err(sql("checking hypopg on the remote server"))?
        .and_then(|row| row.get(0));
    Ok(RemoteInventory {
        server_version,
        extensions,
        hypopg,
    })
}

/// Version bookkeeping: the remote's PostgreSQL version, its extension
/// versions (`powa_extensions` on PoWA 4, `powa_extension_config` on
/// PoWA 5), hypopg availability; then refuse a powa major.minor different
/// from the repository's.
pub async fn update_versions(
    repo: &Client,
    layout: &Layout,
    remote: &Client,
    srvid: SrvId,
) -> Result<(), RepositoryError> {
    let inventory = remote_inventory(remote).await?;
    save_versions(repo, layout, srvid, &inventory).await
}

/// The repository side of [`update_versions`], for callers that read the
/// remote's inventory first, without holding a repository session while a
/// remote that may not answer is asked.
pub async fn save_versions(
    repo: &Client,
    layout: &Layout,
    srvid: SrvId,
    inventory: &RemoteInventory,
) -> Result<(), RepositoryError> {
    repo.execute(
        &format!(
            "UPDATE {} SET version = $2 WHERE id = $1 AND version IS DISTINCT FROM $2",
            layout.qualify("powa_servers")
        ),
        &[&srvid, &inventory.server_version],
    )
    .await
    .map_err(sql("saving the server version"))?;

    let table = layout.extension_table();
    for (name, version) in &inventory.extensions {
        repo.execute(
            &format!(
                "UPDATE {table} SET version = $3 \
                 WHERE srvid = $1 AND extname = $2 AND version IS DISTINCT FROM $3"
            ),
            &[&srvid, name, version],
        )
        .await
        .map_err(sql("saving extension versions"))?;
    }

    match &inventory.hypopg {
        Some(version) => repo
            .execute(
                &format!(
                    "INSERT INTO {table} (srvid, extname, version) VALUES ($1, 'hypopg', $2) \
                     ON CONFLICT (srvid, extname) DO UPDATE SET version = EXCLUDED.version"
                ),
                &[&srvid, version],
            )
            .await
            .map_err(sql("saving the hypopg version"))?,
        None => repo
            .execute(
                &format!("DELETE FROM {table} WHERE srvid = $1 AND extname = 'hypopg'"),
                &[&srvid],
            )
            .await
            .map_err(sql("forgetting hypopg"))?,
    };

    let repository = powa_version(repo).await?;
    let remote = inventory.powa()?;
    if !repository.compatible(&remote) {
        return Err(RepositoryError::Mismatch { repository, remote });
    }
    Ok(())
}

/// `text` as a single-quoted SQL literal (standard_conforming_strings).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `name` as a double-quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        let v = PowaVersion::parse("4.1.4").unwrap();
        assert_eq!(
            v,
            PowaVersion {
                major: 4,
                minor: 1,
                patch: 4
            }
        );
        assert_eq!(v.to_string(), "4.1.4");
        assert_eq!(PowaVersion::parse("5.0").unwrap().patch, 0);
        assert_eq!(PowaVersion::parse("5.0.0dev").unwrap().major, 5);
        assert!(PowaVersion::parse("four").is_err());
        assert!(v.compatible(&PowaVersion::parse("4.1.0").unwrap()));
        assert!(!v.compatible(&PowaVersion::parse("4.2.0").unwrap()));
    }

    #[test]
    fn old_powa_and_unknown_majors_are_refused() {
        assert!(check_supported(&PowaVersion::parse("4.0.1").unwrap()).is_err());
        assert!(check_supported(&PowaVersion::parse("3.2.0").unwrap()).is_err());
        assert!(check_supported(&PowaVersion::parse("4.1.0").unwrap()).is_ok());
        assert!(check_supported(&PowaVersion::parse("5.1.2").unwrap()).is_ok());
        let message = check_supported(&PowaVersion::parse("6.0.0").unwrap())
            .unwrap_err()
            .to_string();
        assert!(message.contains("6.0.0 is not supported yet"), "{message}");
        let message = check_supported(&PowaVersion::parse("4.0.1").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("4.0.1") && message.contains("4.1"),
            "{message}"
        );
    }

    fn layout(powa: &str) -> Layout {
        Layout::from_rows([("powa".to_string(), "\"P\"".to_string(), powa.to_string())])
    }

    #[test]
    fn each_powa_gets_its_datasource_columns() {
        assert_eq!(
            datasources_sql(&layout("4.1.4")),
            "SELECT module, false, query_source, query_cleanup, function_name \
             FROM \"P\".powa_functions WHERE operation = 'snapshot' AND enabled \
             AND srvid = $1 ORDER BY priority, 1"
        );
        assert!(datasources_sql(&layout("5.1.2")).starts_with("SELECT name, external, "));
    }

    #[test]
    fn datasource_objects_follow_the_layout() {
        let ds = Datasource {
            module: "pg_qualstats".into(),
            external: false,
            query_source: "powa_qualstats_src".into(),
            query_cleanup: None,
            function_name: "powa_qualstats_snapshot".into(),
        };
        let l = layout("5.1.2");
        assert_eq!(
            ds.source_function(&l).unwrap(),
            "\"P\".\"powa_qualstats_src\""
        );
        assert_eq!(
            ds.staging_table(&l).unwrap(),
            "\"P\".\"powa_qualstats_src_tmp\""
        );
        let external = Datasource {
            external: true,
            ..ds
        };
        assert_eq!(external.staging_table(&l), None);
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(
            quote_ident("powa_statements_src"),
            "\"powa_statements_src\""
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
