//! The supervisor: owns the registry srvid → snapshot actor, built from the
//! repository's `powa_servers`, and applies reloads as a difference.
//!
//! Start-up is a reload from an empty registry, so both share one path:
//! new servers get an actor, servers gone or deactivated are retired,
//! servers whose row changed are retired and started again with the new
//! row, and the others are asked to refresh (reconnect when unhealthy,
//! redo the version bookkeeping). Snapshot actors are spread over several
//! arbiters (threads); each runs under [`restart`](crate::restart), so a
//! failing or panicking actor restarts without this actor's help. A panic
//! here restarts this actor in place: it keeps its registry (the snapshot
//! actors run on) and loads the server list again through the start-up
//! path, which repairs whatever the panic left half done. Only this actor holds strong
//! addresses of snapshot actors: dropping the entry and sending `Retire`
//! ends one for good.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use slog::{error, info, Logger};
use thiserror::Error;

use crate::error::backoff_delay;
use crate::gate::Gate;
use crate::liveness::Component;
use crate::member_actor::{MemberActor, Servers};
use crate::membership::FleetView;
use crate::probes::Probes;
use crate::repo_pool::RepoPool;
use crate::repository;
use crate::restart::{self, Escalation, Guard};
use crate::server::{ServerSpec, SrvId};
use crate::settings::Settings;
use crate::snapshot_actor::{
    ForceAccepted, ForceSnapshot, Publish, Refresh, RefreshCatalogs, Retire, Shared, Shutdown,
    SnapshotActor,
};
use crate::status::{Forget, Republish, StatusActor};

/// Re-reads the configuration file (and applies what the binary owns, such
/// as the log level), with the changed settings that only a restart
/// applies. An error keeps the running configuration.
pub type ConfigReloader = Box<dyn FnMut() -> Result<(Settings, Vec<String>), String>>;

/// Re-read the configuration and the server list, apply the difference.
#[derive(Message)]
#[rtype(result = "Result<ReloadOutcome, ReloadError>")]
pub struct Reload;

/// What a reload changed, by srvid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub started: Vec<SrvId>,
    pub stopped: Vec<SrvId>,
    pub restarted: Vec<SrvId>,
    pub refreshed: Vec<SrvId>,
    /// Changed settings that only a restart applies.
    pub restart_needed: Vec<String>,
}

#[derive(Debug, Error, Clone)]
pub enum ReloadError {
    /// The configuration file is broken: the running configuration is kept.
    #[error("configuration not reloaded, the running one is kept: {0}")]
    Config(String),
    /// The server list could not be read: the running fleet is kept.
    #[error("could not read the server list from the repository: {0}")]
    Repository(String),
}

/// Force a snapshot of one server.
#[derive(Message)]
#[rtype(result = "Result<ForceAccepted, String>")]
pub struct Force(pub SrvId);

/// REFRESH_DB_CAT for one server.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct RefreshCatalogsOf(pub SrvId, pub Vec<String>);

/// The membership claimed this server: collect it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Own(pub SrvId);

/// The membership hands this server over: stop its actor, waiting for its
/// snapshot in flight (at most the grace period); answered once stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub SrvId);

/// Stop every snapshot actor, waiting at most the grace period for the
/// snapshots in flight; what is still running then is rolled back when the
/// process exits and its sessions close.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

struct Entry {
    spec: ServerSpec,
    addr: Addr<SnapshotActor>,
}

pub struct Supervisor {
    settings: Arc<Settings>,
    reload_config: ConfigReloader,
    shared: Shared,
    registry: HashMap<SrvId, Entry>,
    /// The repository's server list as last read.
    servers: Vec<ServerSpec>,
    /// The servers this member claimed (a snapshot actor runs for each one
    /// still in `servers`).
    owned: BTreeSet<SrvId>,
    membership: Addr<MemberActor>,
    arbiters: Vec<Arbiter>,
    next_arbiter: usize,
    logger: Logger,
    stopping: bool,
    /// The server list was read once: no more first-load retries.
    loaded: bool,
    probes: Probes,
}

impl Supervisor {
    pub fn new(
        settings: Settings,
        reload_config: ConfigReloader,
        status: Addr<StatusActor>,
        membership: Addr<MemberActor>,
        fleet: FleetView,
        logger: Logger,
    ) -> Supervisor {
        let settings = Arc::new(settings);
        let threads = match settings.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shared = Shared {
            gate: Gate::new(settings.max_concurrent_snapshots),
            pool: RepoPool::new(settings.clone()),
            status,
            logger: logger.clone(),
            fleet,
        };
        Supervisor {
            settings,
            reload_config,
            shared,
            registry: HashMap::new(),
            servers: Vec::new(),
            owned: BTreeSet::new(),
            membership,
            arbiters: (0..threads).map(|_| Arbiter::new()).collect(),
            next_arbiter: 0,
            logger,
            stopping: false,
            loaded: false,
            probes: Probes::default(),
        }
    }

    /// Beat into these probes' liveness, mark the server list loaded in
    /// their readiness, export reloads and snapshot slots in their metrics.
    pub fn with_probes(mut self, probes: Probes) -> Supervisor {
        probes.metrics.watch_gate(self.shared.gate.clone());
        self.probes = probes;
        self
    }

    fn start_actor(&mut self, spec: ServerSpec) {
        let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
        self.next_arbiter += 1;
        let settings = self.settings.clone();
        let shared = self.shared.clone();
        let srvid = spec.srvid;
        let actor_spec = spec.clone();
        let guard = Guard {
            kind: "snapshot actor",
            logger: self.logger.new(slog::o!("srvid" => srvid)),
            // Its restarts wait a growing backoff; one server's bug never
            // ends the process.
            escalation: Escalation::Never,
        };
        let addr = restart::start_in_arbiter(&arbiter.handle(), guard, move |_| {
            SnapshotActor::new(actor_spec, settings, shared)
        });
        self.registry.insert(srvid, Entry { spec, addr });
    }

    fn retire_actor(&mut self, srvid: SrvId) {
        if let Some(entry) = self.registry.remove(&srvid) {
            // The entry held the only strong address: once `Retire` stops
            // the actor, its guard (`restart.rs`) has no reason to restart it.
            entry.addr.do_send(Retire);
            self.shared.status.do_send(Forget(srvid));
        }
    }

    /// Run an actor for every server of the list this member owns; with
    /// `refresh`, unchanged ones are asked to refresh. Returns what changed.
    fn apply(&mut self, refresh: bool) -> ReloadOutcome {
        let mut outcome = ReloadOutcome::default();
        let mut wanted: HashMap<SrvId, ServerSpec> = self
            .servers
            .iter()
            .filter(|s| self.owned.contains(&s.srvid))
            .map(|s| (s.srvid, s.clone()))
            .collect();
        let mut known: Vec<SrvId> = self.registry.keys().copied().collect();
        known.sort_unstable();
        for srvid in known {
            match wanted.remove(&srvid) {
                None => {
                    self.retire_actor(srvid);
                    outcome.stopped.push(srvid);
                }
                Some(spec) if spec != self.registry[&srvid].spec => {
                    self.retire_actor(srvid);
                    self.start_actor(spec);
                    outcome.restarted.push(srvid);
                }
                Some(_) if !refresh => {}
                Some(_) => {
                    self.registry[&srvid]
                        .addr
                        .do_send(Refresh(self.settings.clone()));
                    outcome.refreshed.push(srvid);
                }
            }
        }
        let mut new: Vec<ServerSpec> = wanted.into_values().collect();
        new.sort_by_key(|s| s.srvid);
        for spec in new {
            outcome.started.push(spec.srvid);
            self.start_actor(spec);
        }
        outcome
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.probes
            .liveness
            .keep_beating(Component::Supervisor, ctx);
        // Start-up is a reload from an empty registry.
        ctx.notify(InitialLoad { attempt: 0 });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Restarted in place after a panic (see [`restart`]): the registry and
/// the arbiters stay, the server list is loaded again as at start-up.
impl Supervised for Supervisor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        let panic = restart::take_panic().unwrap_or_else(|| "stopped".to_string());
        error!(self.logger, "supervisor restarted, loading the server list again";
            "cause" => panic);
        self.loaded = false;
    }
}

/// The first load of the server list; retried with a growing delay until
/// one load (this one, or a reload asked meanwhile) succeeds.
#[derive(Message)]
#[rtype(result = "()")]
struct InitialLoad {
    attempt: u32,
}

/// Longest delay between two attempts at the first load.
const INITIAL_LOAD_BACKOFF_MAX: Duration = Duration::from_secs(60);

impl Handler<InitialLoad> for Supervisor {
    type Result = ();

    fn handle(&mut self, InitialLoad { attempt }: InitialLoad, ctx: &mut Context<Self>) {
        if self.loaded || self.stopping {
            return;
        }
        let addr = ctx.address();
        let min = self.settings.backoff_min;
        let max = self.settings.backoff_max.min(INITIAL_LOAD_BACKOFF_MAX);
        ctx.spawn(async move { addr.send(Reload).await }.into_actor(self).map(
            move |result, act, ctx| {
                if let Ok(Err(e)) = result {
                    if act.loaded {
                        return;
                    }
                    let delay = backoff_delay(attempt, min, max);
                    error!(act.logger, "initial server list not loaded, retrying";
                        "error" => %e, "attempt" => attempt + 1,
                        "in_secs" => delay.as_secs_f64());
                    ctx.notify_later(
                        InitialLoad {
                            attempt: attempt + 1,
                        },
                        delay,
                    );
                }
            },
        ));
    }
}

impl Handler<Reload> for Supervisor {
    type Result = ResponseActFuture<Self, Result<ReloadOutcome, ReloadError>>;

    fn handle(&mut self, _: Reload, ctx: &mut Context<Self>) -> Self::Result {
        if self.loaded {
            // A reload of a running fleet (the first load is retried anyway).
            crate::fault::panic_in("supervisor", "reload");
        }
        let config = (self.reload_config)();
        let pool = self.shared.pool.clone();
        let fut = async move {
            let (settings, restart_needed) = config.map_err(ReloadError::Config)?;
            crate::tls::forget_configs();
            let deadline = pool.statement_deadline();
            let repo = pool
                .get()
                .await
                .map_err(|e| ReloadError::Repository(e.to_string()))?;
            let servers =
                tokio::time::timeout(deadline, repository::list_servers(&repo, repo.layout()))
                    .await
                    .map_err(|_| {
                        ReloadError::Repository(format!(
                            "the repository did not answer within {}s",
                            deadline.as_secs()
                        ))
                    })?
                    .map_err(|e| ReloadError::Repository(e.to_string()))?;
            Ok((settings, restart_needed, servers))
        };
        // Reloads are applied one at a time, in order.
        let (tx, rx) = tokio::sync::oneshot::channel();
        ctx.wait(fut.into_actor(self).map(move |result, act, _| {
            let outcome = result.map(|(settings, restart_needed, servers)| {
                if act.stopping {
                    return ReloadOutcome::default();
                }
                let settings = Arc::new(settings);
                act.shared
                    .gate
                    .set_capacity(settings.max_concurrent_snapshots);
                act.shared.pool.set_settings(settings.clone());
                act.settings = settings;
                act.loaded = true;
                act.membership
                    .do_send(Servers(servers.iter().map(|s| s.srvid).collect()));
                act.servers = servers;
                ReloadOutcome {
                    restart_needed,
                    ..act.apply(true)
                }
            });
            act.probes.metrics.reload(outcome.is_ok());
            if outcome.is_ok() {
                act.probes.readiness.set_servers_loaded();
            }
            act.probes.readiness.reload_done();
            match &outcome {
                Ok(o) => info!(act.logger, "fleet reloaded";
                    "started" => format!("{:?}", o.started), "stopped" => format!("{:?}", o.stopped),
                    "restarted" => format!("{:?}", o.restarted), "unchanged" => o.refreshed.len()),
                Err(e) => error!(act.logger, "reload failed"; "error" => %e),
            }
            let _ = tx.send(outcome);
        }));
        Box::pin(
            async move {
                rx.await.unwrap_or_else(|_| {
                    Err(ReloadError::Repository("the supervisor stopped".into()))
                })
            }
            .into_actor(self),
        )
    }
}

impl Handler<RefreshCatalogsOf> for Supervisor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(
        &mut self,
        RefreshCatalogsOf(srvid, dbnames): RefreshCatalogsOf,
        _: &mut Context<Self>,
    ) -> Self::Result {
        let addr = self.registry.get(&srvid).map(|e| e.addr.clone());
        Box::pin(async move {
            match addr {
                None => Err(format!("Server {srvid} is not collected")),
                Some(addr) => addr
                    .send(RefreshCatalogs(dbnames))
                    .await
                    .unwrap_or_else(|_| Err("The server's worker is restarting".to_string())),
            }
        })
    }
}

impl Handler<Force> for Supervisor {
    type Result = ResponseFuture<Result<ForceAccepted, String>>;

    fn handle(&mut self, Force(srvid): Force, _: &mut Context<Self>) -> Self::Result {
        let addr = self.registry.get(&srvid).map(|e| e.addr.clone());
        Box::pin(async move {
            match addr {
                None => Err(format!("Server {srvid} is not collected")),
                Some(addr) => addr
                    .send(ForceSnapshot)
                    .await
                    .unwrap_or_else(|_| Err("The server's worker is restarting".to_string())),
            }
        })
    }
}

impl Handler<Republish> for Supervisor {
    type Result = MessageResult<Republish>;

    fn handle(&mut self, _: Republish, _: &mut Context<Self>) -> Self::Result {
        for entry in self.registry.values() {
            entry.addr.do_send(Publish);
        }
        MessageResult(self.registry.keys().copied().collect())
    }
}

impl Handler<Own> for Supervisor {
    type Result = ();

    fn handle(&mut self, Own(srvid): Own, _: &mut Context<Self>) {
        if self.stopping || !self.owned.insert(srvid) {
            return;
        }
        let outcome = self.apply(false);
        if !outcome.started.is_empty() {
            info!(self.logger, "server claimed"; "srvid" => srvid);
        }
    }
}

impl Handler<Release> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Release(srvid): Release, _: &mut Context<Self>) -> Self::Result {
        self.owned.remove(&srvid);
        let Some(entry) = self.registry.remove(&srvid) else {
            return Box::pin(async {});
        };
        info!(self.logger, "handing a server over"; "srvid" => srvid);
        let status = self.shared.status.clone();
        let grace = self.settings.shutdown_grace;
        Box::pin(async move {
            // Past the grace period the snapshot in flight is cut off; the
            // fence keeps it from committing once the lock is gone.
            let _ = tokio::time::timeout(grace, entry.addr.send(Shutdown)).await;
            entry.addr.do_send(Retire);
            // After the actor's last report: the status forgets it for good.
            status.do_send(Forget(srvid));
        })
    }
}

impl Handler<StopAll> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopAll, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let grace = self.settings.shutdown_grace;
        let waits: Vec<_> = self
            .registry
            .values()
            .map(|e| e.addr.send(Shutdown))
            .collect();
        let logger = self.logger.clone();
        let pool = self.shared.pool.clone();
        Box::pin(async move {
            let all = join_all(waits);
            if tokio::time::timeout(grace, all).await.is_err() {
                info!(logger, "grace period over, rolling back the snapshots still running";
                    "grace_secs" => grace.as_secs_f64());
            }
            pool.close_idle();
            // Let the connection tasks see their clients go.
            tokio::time::sleep(Duration::from_millis(50)).await;
        })
    }
}
