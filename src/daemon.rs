//! `powa-fleet run`: the daemon. Checks the repository, starts the actor
//! system (status, supervisor, listener) and turns signals into messages:
//! SIGHUP reloads, SIGTERM/SIGINT stop within the grace period, a second
//! stop signal (a second or more after the first) exits at once.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use powa_fleet_actors::connect::connect_repository;
use powa_fleet_actors::listener::{Listener, NewSettings};
use powa_fleet_actors::member_actor::{Attach, MemberActor, MemberSettings};
use powa_fleet_actors::membership::{self, FleetView};
use powa_fleet_actors::repository;
use powa_fleet_actors::status::StatusActor;
use powa_fleet_actors::supervisor::{Reload, StopAll, Supervisor};
use slog::{error, info, warn, Logger};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Loaded, Sources};
use crate::logging::Logging;

/// Exit code when the repository is unusable at start-up.
const EXIT_STARTUP: u8 = 1;

/// Stop signals this close to the first one are the same request.
const SAME_STOP_REQUEST: Duration = Duration::from_secs(1);

pub fn run(sources: Sources, loaded: Loaded, logging: Logging) -> ExitCode {
    let logger = logging.logger.clone();
    let flusher = logging.clone();
    let settings = loaded.settings();
    let system = System::new();
    let code = system.block_on(async move {
        if let Err(message) = check_repository(&settings).await {
            error!(logger, "cannot start"; "error" => &message);
            return ExitCode::from(EXIT_STARTUP);
        }
        info!(logger, "starting"; "version" => env!("CARGO_PKG_VERSION"),
            "max_concurrent_snapshots" => settings.max_concurrent_snapshots);
        let name = settings
            .member_name
            .clone()
            .unwrap_or_else(membership::default_name);
        info!(logger, "fleet member"; "name" => &name);
        let fleet = FleetView::new(&name);
        let member =
            MemberActor::new(Arc::new(settings.clone()), fleet.clone(), logger.clone()).start();
        let status = StatusActor::default().start();
        let listener_settings = Arc::new(settings.clone());
        let reload_logger = logger.clone();
        let (settings_tx, mut settings_rx) = tokio::sync::mpsc::unbounded_channel();
        let reloader = Box::new(move || match config::load(&sources) {
            Ok(loaded) => {
                logging.set_level(loaded.log_level());
                let settings = loaded.settings();
                let _ = settings_tx.send(Arc::new(settings.clone()));
                Ok(settings)
            }
            Err(e) => {
                warn!(reload_logger, "configuration not reloaded"; "error" => %e);
                Err(e.to_string())
            }
        });
        let supervisor = Supervisor::new(
            settings.clone(),
            reloader,
            status.clone(),
            member.clone(),
            fleet.clone(),
            logger.clone(),
        )
        .start();
        member.do_send(Attach(supervisor.clone()));
        let listener = {
            let supervisor = supervisor.clone();
            let status = status.clone();
            let logger = logger.clone();
            let fleet = fleet.clone();
            actix::Supervisor::start(move |_| {
                Listener::new(listener_settings, supervisor, status, fleet, logger)
            })
        };
        {
            let listener = listener.clone();
            actix_rt::spawn(async move {
                while let Some(settings) = settings_rx.recv().await {
                    member.do_send(MemberSettings(settings.clone()));
                    listener.do_send(NewSettings(settings));
                }
            });
        }
        wait_for_signals(&supervisor, &logger, settings.shutdown_grace).await;
        drop(listener);
        ExitCode::SUCCESS
    });
    drop(system);
    flusher.flush();
    code
}

/// Refuse to start on a repository that is unreachable or too old.
async fn check_repository(settings: &powa_fleet_actors::settings::Settings) -> Result<(), String> {
    let client = connect_repository(settings, "startup check")
        .await
        .map_err(|e| e.to_string())?
        .client;
    let version = repository::powa_version(&client)
        .await
        .map_err(|e| e.to_string())?;
    repository::check_supported(&version).map_err(|e| e.to_string())
}

async fn wait_for_signals(supervisor: &Addr<Supervisor>, logger: &Logger, grace: Duration) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!(logger, "cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!(logger, "SIGHUP received, reloading");
                let supervisor = supervisor.clone();
                actix_rt::spawn(async move { let _ = supervisor.send(Reload).await; });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!(logger, "stopping"; "grace_secs" => grace.as_secs_f64());
    let first = tokio::time::Instant::now();
    let stop = tokio::time::timeout(grace + Duration::from_secs(1), supervisor.send(StopAll));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        // GNU timeout, systemd and a shell's Ctrl-C signal the process and
        // its group at once: what arrives right after the first stop signal
        // is the same request, not an impatient second one.
        if first.elapsed() >= SAME_STOP_REQUEST {
            warn!(logger, "second stop signal, exiting now");
            std::process::exit(1)
        }
    }
    info!(logger, "stopped");
}
