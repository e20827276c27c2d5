//! `powa-fleet run`: the daemon. Checks the repository, starts the actor
//! system (status, supervisor, listener) and turns signals into messages:
//! SIGHUP reloads, SIGTERM/SIGINT stop within the grace period, a second
//! stop signal (a second or more after the first) exits at once. The
//! status actor, the supervisor and the listener run under
//! [`restart`](powa_fleet_actors::restart): a panic restarts one in place,
//! one that keeps panicking ends the process (exit 1, the reason logged).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use powa_fleet_actors::connect::connect_repository;
use powa_fleet_actors::listener::{Listener, NewSettings};
use powa_fleet_actors::liveness;
use powa_fleet_actors::member_actor::{Attach, MemberActor, MemberSettings};
use powa_fleet_actors::membership::{self, FleetView};
use powa_fleet_actors::probes::Probes;
use powa_fleet_actors::repository;
use powa_fleet_actors::restart::{self, Escalation, Fatal, Guard};
use powa_fleet_actors::status::{ReportsFrom, StatusActor};
use powa_fleet_actors::supervisor::{Reload, StopAll, Supervisor};
use slog::{debug, error, info, warn, Logger};
use tokio::signal::unix::{signal, SignalKind};

use crate::allocator;
use crate::config::{self, Loaded, Sources};
use crate::http::Endpoint;
use crate::logging::Logging;
use crate::notify::Systemd;

/// Exit code when the repository is unusable at start-up or the HTTP
/// address cannot be bound.
const EXIT_STARTUP: u8 = 1;
/// Exit code when an actor is wedged, or keeps panicking.
const EXIT_FATAL: u8 = 1;

/// Stop signals this close to the first one are the same request.
const SAME_STOP_REQUEST: Duration = Duration::from_secs(1);
/// How often the allocator is asked whether freed memory is worth giving
/// back: soon enough that the start-up burst (every server connecting at
/// once) leaves the RSS within seconds of its end.
const TRIM_EVERY: Duration = Duration::from_secs(10);

pub fn run(sources: Sources, loaded: Loaded, logging: Logging) -> ExitCode {
    let logger = logging.logger.clone();
    let flusher = logging.clone();
    let mut settings = loaded.settings();
    // The member's name is fixed for the life of the process (changing
    // `member.name` waits for a restart): every session it opens carries it.
    let name = settings
        .member_name
        .get_or_insert_with(membership::default_name)
        .clone();
    let http_listen = loaded.config.http.address();
    let system = System::new();
    let code = system.block_on(async move {
        if let Err(message) = check_repository(&settings).await {
            error!(logger, "cannot start"; "error" => &message);
            return ExitCode::from(EXIT_STARTUP);
        }
        info!(logger, "starting"; "version" => env!("CARGO_PKG_VERSION"),
            "max_concurrent_snapshots" => settings.max_concurrent_snapshots);
        let probes = Probes::default();
        probes.metrics.watch_readiness(probes.readiness.clone());
        {
            let logging = logging.clone();
            probes
                .metrics
                .watch_log_drops(move || logging.lines_dropped());
        }
        let mut endpoint = Endpoint::new(probes.clone(), logger.clone());
        if let Err(message) = endpoint.apply(http_listen).await {
            error!(logger, "cannot start"; "error" => &message);
            return ExitCode::from(EXIT_STARTUP);
        }
        let systemd = Systemd::default();
        watch_liveness(&probes, &logger, &logging);
        actix_rt::spawn(trim_allocator(logger.clone()));
        if let Err(e) = systemd.spawn(probes.clone(), logger.clone()) {
            warn!(logger, "cannot notify systemd"; "error" => %e);
        }
        let (fatal, mut fatal_rx) = Fatal::channel();
        let guard = |kind| Guard {
            kind,
            logger: logger.clone(),
            escalation: Escalation::EndProcess(fatal.clone()),
        };
        info!(logger, "fleet member"; "name" => &name);
        let fleet = FleetView::new(&name);
        probes.metrics.watch_fleet(fleet.clone());
        let member = {
            let settings = Arc::new(settings.clone());
            let fleet = fleet.clone();
            let logger = logger.clone();
            restart::start(guard("member actor"), move |_| {
                MemberActor::new(settings, fleet, logger)
            })
        };
        let status = {
            let probes = probes.clone();
            restart::start(guard("status actor"), move |_| {
                StatusActor::default().with_probes(probes)
            })
        };
        let listener_settings = Arc::new(settings.clone());
        let reload_logger = logger.clone();
        let (settings_tx, mut settings_rx) = tokio::sync::mpsc::unbounded_channel();
        let (http_tx, mut http_rx) = tokio::sync::mpsc::unbounded_channel();
        let reload_systemd = systemd.clone();
        let reload_probes = probes.clone();
        let started_with = loaded.config.clone();
        let reloader = Box::new(move || {
            reload_systemd.reloading(&reload_probes, &reload_logger);
            match config::load(&sources) {
                Ok(loaded) => {
                    logging.set_level(loaded.log_level());
                    let new = &loaded.config;
                    let mut restart_needed = config::restart_needed(&started_with, new);
                    match logging.reload(new.log.format, new.log.file.as_deref()) {
                        Ok(names) => restart_needed.extend(names.into_iter().map(String::from)),
                        Err(e) => warn!(reload_logger,
                            "log file not reopened, the current one is kept"; "error" => %e),
                    }
                    if !restart_needed.is_empty() {
                        warn!(reload_logger, "changed settings wait for a restart";
                            "settings" => restart_needed.join(", "));
                    }
                    let mut settings = loaded.settings();
                    settings.member_name = Some(name.clone());
                    let _ = settings_tx.send(Arc::new(settings.clone()));
                    let _ = http_tx.send(new.http.address());
                    Ok((settings, restart_needed))
                }
                Err(e) => {
                    warn!(reload_logger, "configuration not reloaded"; "error" => %e);
                    Err(e.to_string())
                }
            }
        });
        let supervisor = {
            let supervisor = Supervisor::new(
                settings.clone(),
                reloader,
                status.clone(),
                member.clone(),
                fleet.clone(),
                logger.clone(),
            )
            .with_probes(probes.clone());
            restart::start(guard("supervisor"), move |_| supervisor)
        };
        status.do_send(ReportsFrom(supervisor.clone().recipient()));
        member.do_send(Attach(supervisor.clone()));
        let listener = {
            let supervisor = supervisor.clone();
            let status = status.clone();
            let logger = logger.clone();
            let probes = probes.clone();
            let fleet = fleet.clone();
            restart::start(guard("listener"), move |_| {
                Listener::new(listener_settings, supervisor, status, fleet, logger)
                    .with_probes(probes)
            })
        };
        {
            let logger = logger.clone();
            actix_rt::spawn(async move {
                while let Some(listen) = http_rx.recv().await {
                    if let Err(e) = endpoint.apply(listen).await {
                        error!(logger, "HTTP endpoint not changed"; "error" => &e);
                    }
                }
            });
        }
        {
            let listener = listener.clone();
            actix_rt::spawn(async move {
                while let Some(settings) = settings_rx.recv().await {
                    member.do_send(MemberSettings(settings.clone()));
                    listener.do_send(NewSettings(settings));
                }
            });
        }
        let code = wait_for_signals(
            &supervisor,
            &logger,
            settings.shutdown_grace,
            &mut fatal_rx,
            || {
                probes.liveness.set_stopping();
                systemd.stopping(&logger);
            },
        )
        .await;
        drop(listener);
        code
    });
    drop(system);
    flusher.flush();
    code
}

/// Give freed memory back to the system, checked every [`TRIM_EVERY`] for
/// the life of the process: the start-up burst, then whatever a large
/// snapshot or a reload of a long server list freed.
async fn trim_allocator(logger: Logger) {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    let mut trimmer = allocator::Trimmer::default();
    loop {
        every.tick().await;
        let started = std::time::Instant::now();
        if trimmer.trim_if_worth_it() {
            debug!(logger, "freed memory given back to the system";
                "ms" => started.elapsed().as_secs_f64() * 1000.0);
        }
    }
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

/// End the process, reason logged, when an actor stops beating: it cannot
/// be trusted to restart itself, and systemd restarts the whole daemon.
fn watch_liveness(probes: &Probes, logger: &Logger, logging: &Logging) {
    let exit_logger = logger.clone();
    let logging = logging.clone();
    let watching = probes.liveness.watch(liveness::CHECK_EVERY, move |reason| {
        error!(exit_logger, "exiting: an actor is wedged or dead"; "reason" => &reason);
        logging.flush();
        eprintln!("powa-fleet: exiting: {reason}");
        std::process::exit(EXIT_FATAL.into());
    });
    if let Err(e) = watching {
        warn!(logger, "cannot watch the actors' liveness"; "error" => %e);
    }
}

async fn wait_for_signals(
    supervisor: &Addr<Supervisor>,
    logger: &Logger,
    grace: Duration,
    fatal: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    on_stop: impl FnOnce(),
) -> ExitCode {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!(logger, "cannot install signal handlers");
        return ExitCode::from(EXIT_FATAL);
    };
    let mut code = ExitCode::SUCCESS;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!(logger, "SIGHUP received, reloading");
                let supervisor = supervisor.clone();
                actix_rt::spawn(async move { let _ = supervisor.send(Reload).await; });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(reason) = fatal.recv() => {
                // A restart in place does not help: stop as for a signal,
                // then exit non-zero so that systemd starts us afresh.
                error!(logger, "ending the process"; "reason" => reason);
                code = ExitCode::from(EXIT_FATAL);
                break;
            }
        }
    }
    info!(logger, "stopping"; "grace_secs" => grace.as_secs_f64());
    on_stop();
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
    code
}
