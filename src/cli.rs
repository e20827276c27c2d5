//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Flags;

/// A crash-resilient PoWA collector for a whole fleet of PostgreSQL servers.
#[derive(Debug, Parser)]
#[command(name = "powa-fleet", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML, or JSON when it ends in .json)
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Repository connection string (libpq key=value or URI), without a
    /// password: any local user can read a command line
    #[arg(long, global = true, value_name = "DSN")]
    pub repository_dsn: Option<String>,
    /// Log at debug level
    #[arg(long, short = 'd', global = true)]
    pub debug: bool,
    /// Log level: error, warning, info, debug, trace
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: console or json
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log to this file instead of stderr
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Snapshots allowed to run at once, fleet-wide
    #[arg(long, global = true, value_name = "N")]
    pub max_concurrent_snapshots: Option<usize>,
}

impl GlobalArgs {
    /// A password in `--repository-dsn` would be readable by every local
    /// user (`ps`, `/proc/PID/cmdline`) for as long as the daemon runs:
    /// refuse it and say where a password goes instead.
    pub fn check_no_password(&self) -> Result<(), String> {
        match &self.repository_dsn {
            Some(dsn) if powa_fleet_actors::redact::redact_dsn(dsn) != *dsn => Err(
                "--repository-dsn must not contain a password: every local user can read \
                 a command line. Put it in the password file (~/.pgpass or PGPASSFILE), \
                 in PGPASSWORD, or in the configuration file's [repository] dsn"
                    .to_string(),
            ),
            _ => Ok(()),
        }
    }

    pub fn flags(&self) -> Flags {
        Flags {
            repository_dsn: self.repository_dsn.clone(),
            debug: self.debug,
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
            log_file: self.log_file.clone(),
            max_concurrent_snapshots: self.max_concurrent_snapshots,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the collector (the default)
    Run,
    /// Print the merged configuration, where each value comes from, secrets redacted
    Config,
    /// Connect to the repository and every active server and report what
    /// is wrong: reachability, TLS, versions, privileges (exit 1 if anything)
    Check,
    /// Start a throwaway repository and two remote servers and collect them live
    Demo,
    /// Ask a running collector for the state of its workers
    Status {
        /// Only this server
        srvid: Option<i32>,
        /// Print the raw JSON answer
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the answer
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
    /// Ask a running collector to reload its configuration and server list
    Reload {
        /// Seconds to wait for the answer
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Ask a running collector to take a snapshot of one server now
    Snapshot {
        srvid: i32,
        /// Seconds to wait for the answer
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_on_the_command_line_is_refused() {
        for dsn in [
            "host=db password=hunter2",
            "host=db password='hun ter2'",
            "postgresql://u:hunter2@db/powa",
            "postgresql://u@db/powa?password=hunter2",
        ] {
            let cli = Cli::parse_from(["powa-fleet", "--repository-dsn", dsn, "status"]);
            let err = cli.global.check_no_password().unwrap_err();
            assert!(
                err.contains("PGPASSWORD") && !err.contains("hunter2"),
                "{err}"
            );
        }
        for dsn in ["host=db user=powa dbname=powa", "postgresql://u@db/powa"] {
            let cli = Cli::parse_from(["powa-fleet", "--repository-dsn", dsn]);
            assert_eq!(cli.global.check_no_password(), Ok(()), "{dsn}");
        }
    }
}
