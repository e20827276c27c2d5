//! `powa-fleet`: the binary. It parses the command line, loads the
//! configuration, sets up logging and hands over to the daemon, the
//! client commands or the demo.
//!
//! Exit codes:
//! - 0: success;
//! - 1: runtime failure (repository unreachable at start, PoWA too old, an
//!   actor of the daemon that keeps panicking, …),
//!   or `check` found a problem;
//! - 2: configuration or usage error (nothing was started);
//! - 3: a client command got no answer, or an `ERROR` answer.

mod allocator;
mod assets;
mod check;
mod cli;
mod client;
mod config;
mod daemon;
mod demo;
mod http;
mod logfile;
mod logging;
mod notify;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::{Loaded, Sources};
use crate::logging::Logging;

/// Configuration or usage error.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // Before any thread exists (see `allocator`).
    allocator::configure();
    let cli = Cli::parse();
    if let Err(e) = cli.global.check_no_password() {
        eprintln!("powa-fleet: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let sources = Sources::new(cli.global.config.clone(), cli.global.flags());
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Demo = command {
        return demo::run();
    }
    if let Command::GenerateAssets { dir } = &command {
        return match assets::write(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("powa-fleet: cannot write to {}: {e}", dir.display());
                ExitCode::from(1)
            }
        };
    }
    let loaded = match config::load(&sources) {
        Ok(loaded) => loaded,
        Err(e) => return config_error(e),
    };
    match command {
        Command::Config => {
            if let Some(file) = &loaded.file {
                println!("# configuration file: {}", file.display());
            }
            println!("{}", loaded.describe());
            ExitCode::SUCCESS
        }
        Command::Run => match logging_for(&loaded) {
            Ok(logging) => daemon::run(sources, loaded, logging),
            Err(e) => config_error(e),
        },
        Command::Status {
            srvid,
            json,
            timeout,
        } => client::status(&loaded.settings(), srvid, json, timeout),
        Command::Check => check::run(&loaded.settings()),
        Command::Reload { timeout } => client::reload(&loaded.settings(), timeout),
        Command::Snapshot { srvid, timeout } => {
            client::snapshot(&loaded.settings(), srvid, timeout)
        }
        Command::Demo | Command::GenerateAssets { .. } => unreachable!("handled above"),
    }
}

fn logging_for(loaded: &Loaded) -> Result<Logging, config::ConfigError> {
    Logging::new(
        loaded.log_level(),
        loaded.config.log.format,
        loaded.config.log.file.as_deref(),
    )
}

fn config_error(e: config::ConfigError) -> ExitCode {
    eprintln!("powa-fleet: {e}");
    ExitCode::from(EXIT_CONFIG)
}
