//! `powa-fleet check`: connect to the repository and to every collected
//! server the way the daemon would, without writing anything, and print
//! one line for each: reachable or the error, TLS in use, PoWA and
//! extension versions, and the privileges the collector's roles lack.
//! Exit 0 when every line is OK, 1 otherwise.
//!
//! Connections: one repository session, then one session per remote
//! server (a few at a time), each under the connect timeout plus a bound
//! on the queries.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use powa_fleet_actors::connect::{connect_remote, connect_repository, describe, repository_config};
use powa_fleet_actors::layout::Generation;
use powa_fleet_actors::privileges;
use powa_fleet_actors::redact::scrub;
use powa_fleet_actors::repository::{self, Datasource, PowaVersion};
use powa_fleet_actors::server::ServerSpec;
use powa_fleet_actors::settings::Settings;

/// Something is wrong (unreachable, TLS failure, versions, privileges).
const EXIT_PROBLEM: u8 = 1;
/// Remote servers checked at once.
const PARALLEL: usize = 4;
/// Bound on the queries of one check, on top of the connect timeout.
const QUERIES: Duration = Duration::from_secs(30);

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// `OK` or `PROBLEM` and the details of a reachable side.
fn verdict(problems: &[String], details: Vec<String>) -> String {
    let mut text = if problems.is_empty() {
        "OK".to_string()
    } else {
        "PROBLEM".to_string()
    };
    for detail in details {
        text.push_str(", ");
        text.push_str(&detail);
    }
    if !problems.is_empty() {
        text.push_str(", ");
        text.push_str(&problems.join(", "));
    }
    text
}

pub fn run(settings: &Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("powa-fleet: {e}");
            return ExitCode::from(EXIT_PROBLEM);
        }
    };
    if runtime.block_on(check(settings)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEM)
    }
}

/// Print every line; true when all are OK.
async fn check(settings: &Settings) -> bool {
    let name = repository_config(settings.repository_dsn.expose())
        .map(|(config, _)| describe(&config))
        .unwrap_or_else(|_| "(invalid DSN)".to_string());
    let bound = settings.connect_timeout + QUERIES;
    let repo = match tokio::time::timeout(bound, check_repository(settings)).await {
        Ok(Ok(repo)) => repo,
        Ok(Err(reason)) => {
            println!("repository {name}: FAILED: {reason}");
            return false;
        }
        Err(_) => {
            println!(
                "repository {name}: FAILED: no answer within {}s",
                bound.as_secs()
            );
            return false;
        }
    };
    let lines: Vec<(String, bool)> = stream::iter(repo.servers.iter())
        .map(|(spec, datasources)| async move {
            let label = format!(
                "server {} ({})",
                spec.srvid,
                spec.name(settings.use_server_alias)
            );
            let password = spec.password.clone().unwrap_or_default();
            let outcome = tokio::time::timeout(
                bound,
                check_remote(spec, settings, datasources, &repo.version),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", bound.as_secs())));
            match outcome {
                Ok((text, ok)) => (format!("{label}: {}", scrub(&text, &[&password])), ok),
                Err(reason) => (
                    format!("{label}: FAILED: {}", scrub(&reason, &[&password])),
                    false,
                ),
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    println!("repository {name}: {}", repo.line);
    let mut all_ok = repo.ok;
    if lines.is_empty() {
        println!("no active remote server in powa_servers");
    }
    for (line, ok) in lines {
        println!("{line}");
        all_ok &= ok;
    }
    all_ok
}

struct Repository {
    line: String,
    ok: bool,
    version: PowaVersion,
    servers: Vec<(ServerSpec, Vec<Datasource>)>,
}

async fn check_repository(settings: &Settings) -> Result<Repository, String> {
    let session = connect_repository(settings, "check")
        .await
        .map_err(|e| e.to_string())?;
    let client = &session.client;
    let version = repository::powa_version(client)
        .await
        .map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    if let Err(e) = repository::check_supported(&version) {
        problems.push(e.to_string());
    }
    let channel = format!("powa_fleet_check_{}", std::process::id());
    let commands = match privileges::try_listen_notify(client, &channel).await {
        Ok(()) => "commands: LISTEN and NOTIFY allowed".to_string(),
        Err(e) => {
            problems.push(format!("cannot answer commands: {e}"));
            "commands: no".to_string()
        }
    };
    let layout = &session.layout;
    let mut missing = privileges::repository_missing_privileges(client, layout)
        .await
        .map_err(|e| e.to_string())?;
    let specs = repository::list_servers(client, layout)
        .await
        .map_err(|e| e.to_string())?;
    let mut servers = Vec::new();
    let mut tables = BTreeSet::new();
    let mut absent = BTreeSet::new();
    for spec in specs {
        let (sources, _) = repository::datasources(client, layout, spec.srvid)
            .await
            .map_err(|e| e.to_string())?;
        for source in &sources {
            match source.staging_table(layout) {
                Some(table) => {
                    tables.insert(table);
                }
                None => {
                    absent.insert(source.module.clone());
                }
            }
        }
        if layout.generation() == Generation::Five {
            // Only the staging tables matter here, not the queries, which
            // follow each server's PostgreSQL version.
            tables.extend(
                privileges::per_database_staging(client, layout, spec.srvid)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        servers.push((spec, sources));
    }
    if !absent.is_empty() {
        let names: Vec<String> = absent.into_iter().collect();
        problems.push(format!(
            "extensions not installed on the repository: {}",
            names.join(", ")
        ));
    }
    let tables: Vec<String> = tables.into_iter().collect();
    missing.extend(
        privileges::staging_missing_privileges(client, &tables)
            .await
            .map_err(|e| e.to_string())?,
    );
    if !missing.is_empty() {
        problems.push(format!("missing privileges: {}", missing.join(", ")));
    }
    let line = verdict(
        &problems,
        vec![
            format!("TLS {}", yes_no(session.tls)),
            format!("powa {version}"),
            commands,
        ],
    );
    Ok(Repository {
        ok: problems.is_empty(),
        line,
        version,
        servers,
    })
}

/// The line of one reachable server and whether it is OK; `Err` when it
/// cannot be reached or read.
async fn check_remote(
    spec: &ServerSpec,
    settings: &Settings,
    datasources: &[Datasource],
    repository_version: &PowaVersion,
) -> Result<(String, bool), String> {
    let session = connect_remote(spec, settings, "check")
        .await
        .map_err(|e| e.to_string())?;
    let remote = &session.client;
    let inventory = repository::remote_inventory(remote)
        .await
        .map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let powa = match inventory.powa() {
        Ok(version) if version.compatible(repository_version) => {
            format!("powa {version} (matches the repository)")
        }
        Ok(version) => {
            problems.push(format!(
                "powa {version} differs from the repository's {repository_version} (major.minor must match)"
            ));
            format!("powa {version}")
        }
        Err(e) => {
            problems.push(e.to_string());
            "powa missing".to_string()
        }
    };
    let mut names: BTreeSet<String> = inventory
        .extensions
        .iter()
        .filter(|(name, _)| name != "powa")
        .map(|(name, version)| format!("{name} {version}"))
        .collect();
    if let Some(version) = &inventory.hypopg {
        if !inventory
            .extensions
            .iter()
            .any(|(name, _)| name == "hypopg")
        {
            names.insert(format!("hypopg {version} (available)"));
        }
    }
    let missing = privileges::remote_missing_privileges(remote, &session.layout, datasources)
        .await
        .map_err(|e| e.to_string())?;
    let privileges = if missing.is_empty() {
        "privileges OK".to_string()
    } else {
        problems.push(format!("missing privileges: {}", missing.join(", ")));
        "privileges insufficient".to_string()
    };
    let line = verdict(
        &problems,
        vec![
            format!("TLS {}", yes_no(session.tls)),
            format!("PostgreSQL {}", inventory.server_version),
            powa,
            format!(
                "extensions: {}",
                names.into_iter().collect::<Vec<_>>().join(", ")
            ),
            privileges,
        ],
    );
    Ok((line, problems.is_empty()))
}
