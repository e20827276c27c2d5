//! Who may do what, in SQL: the rule the listener applies to a command's
//! sender, and the privilege report of `powa-fleet check` (what the
//! repository role and each remote role lack to do their work, and
//! whether LISTEN/NOTIFY is allowed). Nothing here writes to a table.

use tokio_postgres::Client;

use crate::layout::{Generation, Layout};
use crate::repository::{quote_ident, quote_literal, sql, Datasource, RepositoryError};
use crate::server::SrvId;

/// Who may send commands, decided once per session from the server and
/// PoWA versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermissionRule {
    /// PostgreSQL 14+ with PoWA 4: member of `pg_signal_backend`.
    SignalBackend,
    /// Older PostgreSQL with PoWA 4: INSERT privilege on `powa_statements`
    /// (the qualified table).
    InsertStatements(String),
    /// PoWA 5: member of a role `powa_roles` (the qualified table) maps to
    /// `powa_admin`, `powa_write_all_data` or `powa_signal_backend`, or of
    /// `pg_signal_backend` on PostgreSQL 14+.
    PowaRoles { table: String, signal_backend: bool },
}

impl PermissionRule {
    pub fn new(server_version_num: i32, layout: &Layout) -> PermissionRule {
        let signal_backend = server_version_num >= 140000;
        match layout.generation() {
            Generation::Five => PermissionRule::PowaRoles {
                table: layout.qualify("powa_roles"),
                signal_backend,
            },
            Generation::Four if signal_backend => PermissionRule::SignalBackend,
            Generation::Four => PermissionRule::InsertStatements(layout.qualify("powa_statements")),
        }
    }

    /// One row with one boolean for the sender's pid (`$1`); no row, or
    /// NULL, when its session is gone.
    pub fn sql(&self) -> String {
        match self {
            PermissionRule::SignalBackend => {
                "SELECT pg_catalog.pg_has_role(a.usesysid, 'pg_signal_backend', 'MEMBER') \
                 FROM pg_catalog.pg_stat_activity a WHERE a.pid = $1"
                    .to_string()
            }
            PermissionRule::InsertStatements(table) => format!(
                "SELECT pg_catalog.has_table_privilege(a.usesysid, {}, 'INSERT') \
                 FROM pg_catalog.pg_stat_activity a WHERE a.pid = $1",
                quote_literal(table)
            ),
            PermissionRule::PowaRoles {
                table,
                signal_backend,
            } => {
                let predefined = if *signal_backend {
                    "SELECT 'pg_signal_backend'::name UNION ALL "
                } else {
                    ""
                };
                format!(
                    "SELECT pg_catalog.bool_or(pg_catalog.pg_has_role(a.usesysid, r.oid, 'MEMBER')) \
                     FROM pg_catalog.pg_stat_activity a \
                     CROSS JOIN ({predefined}SELECT rolname FROM {table} \
                       WHERE powa_role IN ('powa_admin', 'powa_write_all_data', 'powa_signal_backend') \
                     ) AS allowed(rolname) \
                     JOIN pg_catalog.pg_roles r ON r.rolname = allowed.rolname \
                     WHERE a.pid = $1"
                )
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(powa: &str) -> Layout {
        Layout::from_rows([("powa".to_string(), "\"P\"".to_string(), powa.to_string())])
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

    fn plain_layout(powa: &str) -> Layout {
        Layout::from_rows([("powa".to_string(), "p".to_string(), powa.to_string())])
    }

    #[test]
    fn each_powa_and_postgresql_gets_its_permission_rule() {
        assert_eq!(
            PermissionRule::new(150000, &plain_layout("4.1.4")),
            PermissionRule::SignalBackend
        );
        let old = PermissionRule::new(130000, &plain_layout("4.1.4"));
        assert_eq!(
            old,
            PermissionRule::InsertStatements("p.powa_statements".into())
        );
        assert!(old
            .sql()
            .contains("has_table_privilege(a.usesysid, 'p.powa_statements', 'INSERT')"));
        let five = PermissionRule::new(150000, &plain_layout("5.1.2"));
        let sql = five.sql();
        assert!(
            sql.contains(
                "SELECT 'pg_signal_backend'::name UNION ALL SELECT rolname FROM p.powa_roles"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("'powa_admin', 'powa_write_all_data', 'powa_signal_backend'"),
            "{sql}"
        );
        let five_old = PermissionRule::new(130000, &plain_layout("5.1.2")).sql();
        assert!(!five_old.contains("pg_signal_backend'::name"), "{five_old}");
    }
}
