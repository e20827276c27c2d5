//! Every SQL statement powa-fleet sends to the repository (and the few it
//! sends to a remote server for version bookkeeping), for PoWA 4.1 and 5.x.
//! Objects are qualified with the schema the session's [`Layout`] found;
//! where the two versions differ, the layout's [`Generation`] decides.

use std::fmt;
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::error::{classify, pg_message, ErrorKind};
use crate::layout::{Generation, Layout};
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
    #[error("unreadable powa version \"{0}\"")]
    BadVersion(String),
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

fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RepositoryError {
    move |source| RepositoryError::Sql { what, source }
}

/// `powa` extension version, e.g. 4.1.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PowaVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl PowaVersion {
    pub fn parse(text: &str) -> Result<PowaVersion, RepositoryError> {
        let bad = || RepositoryError::BadVersion(text.to_string());
        let mut parts = text.trim().split('.');
        let mut next = |required: bool| -> Result<u32, RepositoryError> {
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
    PowaVersion::parse(row.get(0))
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

/// What the repository knows of a server's last snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum LastSnapshot {
    /// No `powa_snapshot_metas` row: not registered with `powa_register_server`.
    NotRegistered,
    /// Registered, never snapshotted (`-infinity`).
    Never,
    At(SystemTime),
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
    let rows = client
        .query(&datasources_sql(layout), &[&srvid])
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
            Some((_, version)) => PowaVersion::parse(version),
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

/// LISTEN on a private channel and NOTIFY it, as the listener does with
/// `powa_collector` and the answer channels: fails if the role may not.
pub async fn try_listen_notify(client: &Client, channel: &str) -> Result<(), RepositoryError> {
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await
        .map_err(sql("LISTEN"))?;
    client
        .execute("SELECT pg_catalog.pg_notify($1, 'check')", &[&channel])
        .await
        .map_err(sql("NOTIFY"))?;
    client
        .batch_execute(&format!("UNLISTEN {}", quote_ident(channel)))
        .await
        .map_err(sql("UNLISTEN"))
}

/// What the collector's repository role lacks to do its work: read the
/// server list and the datasources, stage rows, take snapshots, record
/// errors and versions. Empty when nothing is missing.
pub async fn repository_missing_privileges(
    client: &Client,
    layout: &Layout,
) -> Result<Vec<String>, RepositoryError> {
    let mut wanted = vec![
        Privilege::table("SELECT", layout, "powa_servers"),
        Privilege {
            what: "UPDATE (version) on powa_servers".to_string(),
            check: "has_column_privilege($1, 'version', 'UPDATE')".to_string(),
            object: layout.qualify("powa_servers"),
        },
        Privilege::table("SELECT", layout, "powa_functions"),
        Privilege::table("SELECT, UPDATE", layout, "powa_snapshot_metas"),
    ];
    wanted.push(Privilege::table(
        "INSERT, UPDATE, DELETE",
        layout,
        layout.extension_table_name(),
    ));
    wanted.push(Privilege::execute(layout, "powa_take_snapshot", "integer"));
    if layout.generation() == Generation::Five {
        wanted.push(Privilege::execute(
            layout,
            "powa_db_functions",
            "integer, integer",
        ));
        wanted.push(Privilege::execute(
            layout,
            "powa_catalog_functions",
            "integer, integer, interval",
        ));
    }
    let mut missing = Vec::new();
    for privilege in wanted {
        let ok: bool = client
            .query_one(&format!("SELECT {}", privilege.check), &[&privilege.object])
            .await
            .map_err(sql("checking the repository role's privileges"))?
            .get(0);
        if !ok {
            missing.push(privilege.what);
        }
    }
    Ok(missing)
}

/// One privilege the repository role needs: how it is named to the user,
/// the check (`$1` is the object), the qualified object.
struct Privilege {
    what: String,
    check: String,
    object: String,
}

impl Privilege {
    fn table(privileges: &'static str, layout: &Layout, table: &str) -> Privilege {
        // Several privileges in one has_table_privilege() mean "any of".
        let check = privileges
            .split(", ")
            .map(|p| format!("has_table_privilege($1, '{p}')"))
            .collect::<Vec<_>>()
            .join(" AND ");
        Privilege {
            what: format!("{privileges} on {table}"),
            check,
            object: layout.qualify(table),
        }
    }

    fn execute(layout: &Layout, function: &str, arguments: &str) -> Privilege {
        Privilege {
            what: format!("EXECUTE on {function}({arguments})"),
            check: "has_function_privilege($1, 'EXECUTE')".to_string(),
            object: format!("{}({arguments})", layout.qualify(function)),
        }
    }
}

/// Staging tables (qualified) the repository role cannot fill.
pub async fn staging_missing_privileges(
    client: &Client,
    tables: &[String],
) -> Result<Vec<String>, RepositoryError> {
    let rows = client
        .query(
            "SELECT 'INSERT, DELETE on ' || t FROM unnest($1::text[]) AS t \
             WHERE CASE WHEN pg_catalog.to_regclass(t) IS NULL THEN true \
                   ELSE NOT (has_table_privilege(pg_catalog.to_regclass(t), 'INSERT') \
                             AND has_table_privilege(pg_catalog.to_regclass(t), 'DELETE')) END",
            &[&tables],
        )
        .await
        .map_err(sql("checking the staging tables' privileges"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// PoWA 5: the staging tables the per-database datasources and catalogs of
/// `srvid` write to (qualified).
pub async fn per_database_staging(
    client: &Client,
    layout: &Layout,
    srvid: SrvId,
) -> Result<Vec<String>, RepositoryError> {
    // The PostgreSQL version picks the queries, not the tables: 0 will do.
    let rows = client
        .query(
            &format!(
                "SELECT tmp_table FROM {}($1, 0) WHERE operation = 'snapshot' AND enabled \
                 UNION SELECT tmp_table FROM {}($1, 0) ORDER BY 1",
                layout.qualify("powa_db_functions"),
                layout.qualify("powa_catalog_functions")
            ),
            &[&srvid],
        )
        .await
        .map_err(sql("reading the per-database staging tables"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// PoWA tables of the remote's own powa database that its source functions
/// read (found by running them as a role without any grant).
const REMOTE_READ_TABLES: [&str; 2] = ["powa_statements", "powa_databases"];

/// The function a cleanup of the form `SELECT name()` calls, as a
/// signature `to_regprocedure` resolves (`pg_qualstats_reset()`).
fn cleanup_function(cleanup: &str) -> Option<String> {
    let call = cleanup.trim().trim_end_matches(';').trim_end();
    let (select, rest) = call.split_at_checked(6)?;
    if !select.eq_ignore_ascii_case("select") {
        return None;
    }
    let name = rest.trim().strip_suffix("()")?;
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '"'));
    plain.then(|| format!("{name}()"))
}

/// What the remote role lacks to run `datasources`: EXECUTE on each source
/// function (called as `<source>(0)`) and on each cleanup function (such
/// as `pg_qualstats_reset()`, revoked from PUBLIC by pg_qualstats), SELECT
/// on the tables the source functions read, `pg_read_all_stats` (without
/// it, other roles' statements are hidden from the statistics), and on
/// PoWA 5 CONNECT on every database that allows connections.
pub async fn remote_missing_privileges(
    remote: &Client,
    layout: &Layout,
    datasources: &[Datasource],
) -> Result<Vec<String>, RepositoryError> {
    // A datasource whose extension is missing is reported by the snapshot
    // itself; here it has no function to check.
    let mut functions: Vec<String> = datasources
        .iter()
        .filter_map(|d| Some(format!("{}(integer)", d.source_function(layout)?)))
        .collect();
    functions.extend(datasources.iter().filter_map(|d| {
        let cleanup = layout.expand(d.query_cleanup.as_deref()?).ok()?;
        cleanup_function(&cleanup)
    }));
    let tables: Vec<String> = REMOTE_READ_TABLES
        .iter()
        .map(|t| layout.qualify(t))
        .collect();
    let per_database = layout.generation() == Generation::Five;
    let rows = remote
        .query(
            "SELECT 'EXECUTE on ' || f FROM unnest($1::text[]) AS f \
             WHERE CASE WHEN pg_catalog.to_regprocedure(f) IS NULL THEN true \
                   ELSE NOT has_function_privilege(pg_catalog.to_regprocedure(f), 'EXECUTE') END \
             UNION ALL \
             SELECT 'SELECT on ' || t FROM unnest($2::text[]) AS t \
             WHERE CASE WHEN pg_catalog.to_regclass(t) IS NULL THEN false \
                   ELSE NOT has_table_privilege(pg_catalog.to_regclass(t), 'SELECT') END \
             UNION ALL \
             SELECT 'membership in pg_read_all_stats' \
             WHERE NOT pg_has_role('pg_read_all_stats', 'MEMBER') \
             UNION ALL \
             (SELECT 'CONNECT on database ' || datname FROM pg_catalog.pg_database \
              WHERE $3 AND datallowconn AND NOT has_database_privilege(datname, 'CONNECT') \
              ORDER BY datname)",
            &[&functions, &tables, &per_database],
        )
        .await
        .map_err(sql("checking the remote role's privileges"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
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

    #[test]
    fn cleanup_functions_are_recognised() {
        assert_eq!(
            cleanup_function("SELECT pg_qualstats_reset()").as_deref(),
            Some("pg_qualstats_reset()")
        );
        assert_eq!(
            cleanup_function(" select public.f(); ").as_deref(),
            Some("public.f()")
        );
        assert_eq!(cleanup_function("SELECT f(1)"), None);
        assert_eq!(cleanup_function("DELETE FROM t"), None);
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
    fn every_listed_table_privilege_is_required() {
        let p = Privilege::table(
            "INSERT, UPDATE, DELETE",
            &layout("4.1.4"),
            "powa_extensions",
        );
        assert_eq!(p.what, "INSERT, UPDATE, DELETE on powa_extensions");
        assert_eq!(
            p.check,
            "has_table_privilege($1, 'INSERT') AND has_table_privilege($1, 'UPDATE') \
             AND has_table_privilege($1, 'DELETE')"
        );
        assert_eq!(p.object, "\"P\".powa_extensions");
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
