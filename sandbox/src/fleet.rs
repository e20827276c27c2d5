//! A PoWA repository and remote servers, set up the way a DBA would.

use tokio_postgres::Client;

use crate::cluster::{Cluster, ClusterOptions};
use crate::error::HarnessError;
use crate::workload::{second_database_sql, workload_sql, SECOND_DATABASE};

/// Libraries a remote server preloads for PoWA's datasources.
pub const REMOTE_PRELOAD: &[&str] = &["pg_stat_statements", "pg_qualstats", "pg_stat_kcache"];

/// Extensions created in a remote server's `powa` database.
const REMOTE_EXTENSIONS: &str = "CREATE EXTENSION pg_stat_statements; \
     CREATE EXTENSION btree_gist; CREATE EXTENSION powa; \
     CREATE EXTENSION pg_qualstats; CREATE EXTENSION pg_stat_kcache; \
     CREATE EXTENSION hypopg;";

/// A repository only needs powa and what it requires: the datasource
/// tables of remote servers are part of the powa extension.
const REPOSITORY_EXTENSIONS: &str = "CREATE EXTENSION pg_stat_statements; \
     CREATE EXTENSION btree_gist; CREATE EXTENSION powa;";

/// PoWA 5's per-database datasources ("db modules"), each activated for
/// every database of a registered server.
pub const DB_MODULES: &[&str] = &[
    "pg_stat_all_tables",
    "pg_stat_all_indexes",
    "pg_stat_user_functions",
];

pub struct Fleet {
    pub repository: Cluster,
    pub remotes: Vec<Cluster>,
}

/// Options of a remote server cluster.
pub fn remote_options() -> ClusterOptions {
    ClusterOptions {
        preload: REMOTE_PRELOAD.iter().map(|s| s.to_string()).collect(),
        extra_conf: vec![
            // Sample every query, so a short workload shows in pg_qualstats.
            "pg_qualstats.sample_rate = 1".to_string(),
            "pg_stat_statements.max = 30000".to_string(),
            "track_functions = 'all'".to_string(),
        ],
        ..ClusterOptions::default()
    }
}

/// Options of a repository cluster.
pub fn repository_options() -> ClusterOptions {
    ClusterOptions {
        preload: vec!["pg_stat_statements".to_string()],
        ..ClusterOptions::default()
    }
}

/// Create the `powa` database and PoWA's extensions on a remote server.
pub fn setup_remote(cluster: &Cluster) -> Result<(), HarnessError> {
    cluster.psql("postgres", "CREATE DATABASE powa")?;
    cluster.psql("powa", REMOTE_EXTENSIONS)?;
    Ok(())
}

/// Create the `powa` database and extension on a repository.
pub fn setup_repository(cluster: &Cluster) -> Result<(), HarnessError> {
    cluster.psql("postgres", "CREATE DATABASE powa")?;
    cluster.psql("powa", REPOSITORY_EXTENSIONS)?;
    Ok(())
}

/// Create [`SECOND_DATABASE`] on a remote server and run
/// [`second_database_sql`] in it: per-database datasources and catalogs
/// (PoWA 5) then have something outside the `powa` database to show.
pub fn setup_second_database(cluster: &Cluster) -> Result<(), HarnessError> {
    cluster.psql("postgres", &format!("CREATE DATABASE {SECOND_DATABASE}"))?;
    cluster.psql(SECOND_DATABASE, &second_database_sql())?;
    Ok(())
}

/// The major version of the `powa` extension in `cluster`'s `powa`
/// database: 4 or 5. Both a repository and a remote server have one.
pub fn powa_major_version(cluster: &Cluster) -> Result<u32, HarnessError> {
    let out = cluster.psql(
        "powa",
        "SELECT split_part(extversion, '.', 1) FROM pg_extension WHERE extname = 'powa'",
    )?;
    out.parse()
        .map_err(|_| HarnessError::Other(format!("unexpected powa version {out:?}")))
}

/// psql lines activating [`DB_MODULES`] for the server whose id is the SQL
/// expression `srvid`, for every database (PoWA 5 only).
fn activate_db_modules_sql(srvid: &str) -> String {
    let modules: Vec<String> = DB_MODULES.iter().map(|m| format!("'{m}'")).collect();
    format!(
        "SELECT powa_activate_db_module({srvid}, m) \
         FROM unnest(ARRAY[{}]::text[]) m \\g /dev/null\n",
        modules.join(", ")
    )
}

/// Activate PoWA 5's per-database modules ([`DB_MODULES`]) for `srvid`, on
/// every database of the server. `powa_register_server` already does it
/// (and [`register_server`] makes sure of it); this turns them back on
/// after a test switched them off. PoWA 4 has no such modules.
pub fn activate_db_modules(repository: &Cluster, srvid: i32) -> Result<(), HarnessError> {
    repository.psql("powa", &activate_db_modules_sql(&srvid.to_string()))?;
    Ok(())
}

impl Fleet {
    /// A repository and `n_remotes` remote servers, started in parallel.
    pub fn start(n_remotes: usize) -> Result<Fleet, HarnessError> {
        Fleet::start_with(
            repository_options(),
            (0..n_remotes).map(|_| remote_options()).collect(),
        )
    }

    /// A repository and remote servers with the given options (based on
    /// [`repository_options`] and [`remote_options`]), started in parallel.
    pub fn start_with(
        repository: ClusterOptions,
        remotes: Vec<ClusterOptions>,
    ) -> Result<Fleet, HarnessError> {
        std::thread::scope(|scope| {
            let repository = scope.spawn(|| {
                let cluster = Cluster::start(repository)?;
                setup_repository(&cluster)?;
                Ok::<_, HarnessError>(cluster)
            });
            let remotes: Vec<_> = remotes
                .into_iter()
                .map(|options| {
                    scope.spawn(|| {
                        let cluster = Cluster::start(options)?;
                        setup_remote(&cluster)?;
                        Ok::<_, HarnessError>(cluster)
                    })
                })
                .collect();
            let repository = repository.join().expect("setup thread panicked")?;
            let remotes = remotes
                .into_iter()
                .map(|h| h.join().expect("setup thread panicked"))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Fleet {
                repository,
                remotes,
            })
        })
    }

    pub fn repository_dsn(&self) -> String {
        self.repository.dsn("powa")
    }

    /// Register remote `remote` with `powa_register_server` (all PoWA
    /// datasources, on PoWA 5 the per-database modules too) and return its
    /// srvid.
    pub fn register(
        &self,
        remote: usize,
        frequency: i32,
        alias: Option<&str>,
    ) -> Result<i32, HarnessError> {
        let cluster = &self.remotes[remote];
        register_server(
            &self.repository,
            &cluster.host(),
            cluster.port(),
            frequency,
            alias,
        )
    }

    /// Run `statements` distinct statements on remote `remote`.
    pub fn workload(&self, remote: usize, statements: usize) -> Result<(), HarnessError> {
        self.remotes[remote].psql("powa", &workload_sql(statements, 0))?;
        Ok(())
    }
}

/// Register `host:port` on `repository` as user postgres, database powa,
/// with pg_stat_kcache and pg_qualstats. On PoWA 5 the per-database modules
/// ([`DB_MODULES`]) are active for it too, so that every test exercises
/// them. One psql session, whatever the version (benchmarks register
/// thousands of servers).
pub fn register_server(
    repository: &Cluster,
    host: &str,
    port: u16,
    frequency: i32,
    alias: Option<&str>,
) -> Result<i32, HarnessError> {
    let alias = match alias {
        Some(a) => format!("'{}'", a.replace('\'', "''")),
        None => "NULL".to_string(),
    };
    let out = repository.psql(
        "powa",
        &format!(
            "SELECT powa_register_server(hostname => '{host}', port => {port}, \
             alias => {alias}, username => 'postgres', dbname => 'powa', \
             frequency => {frequency}, \
             extensions => ARRAY['pg_stat_kcache', 'pg_qualstats']) \\g /dev/null\n\
             SELECT id AS srvid, (SELECT split_part(extversion, '.', 1)::int >= 5 \
             FROM pg_extension WHERE extname = 'powa') AS db_modules \
             FROM powa_servers WHERE hostname = '{host}' AND port = {port} \\gset\n\
             \\if :db_modules\n{}\\endif\n\
             SELECT :srvid;",
            activate_db_modules_sql(":srvid")
        ),
    )?;
    out.trim()
        .parse()
        .map_err(|_| HarnessError::Other(format!("unexpected srvid {out:?}")))
}

/// `powa_snapshot_metas.coalesce_seq` of `srvid`: it grows by one with each
/// snapshot that commits.
pub async fn coalesce_seq(repository: &Client, srvid: i32) -> i64 {
    repository
        .query_one(
            "SELECT coalesce_seq FROM powa_snapshot_metas WHERE srvid = $1",
            &[&srvid],
        )
        .await
        .expect("reading powa_snapshot_metas")
        .get(0)
}

/// `powa_snapshot_metas.errors` of `srvid`: what powa-web shows for it.
pub async fn stored_errors(repository: &Client, srvid: i32) -> Option<Vec<String>> {
    repository
        .query_one(
            "SELECT errors FROM powa_snapshot_metas WHERE srvid = $1",
            &[&srvid],
        )
        .await
        .expect("reading powa_snapshot_metas")
        .get(0)
}
