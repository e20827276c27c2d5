//! The member actor: keeps this collector's membership session on the
//! repository, and every [`HEARTBEAT`] reads the live members, bids for
//! leadership, and claims or hands over servers so that this member
//! collects exactly the servers the assignment gives it.
//!
//! Claiming a server is taking its lock and then asking the supervisor to
//! start its snapshot actor. Handing one over is the reverse, in that
//! order: the supervisor stops the actor (waiting for its snapshot in
//! flight, if any), and only then is the lock released, so the new owner
//! starts between two snapshots. When the membership session is lost
//! the locks go with it: the snapshot actors keep their sessions but every
//! snapshot is fenced off (see [`crate::fencing`]) until a new session
//! claims the servers again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use slog::{info, warn, Logger};
use tokio_postgres::Client;

use crate::assignment::{owned_by, Member};
use crate::connect::connect_repository;
use crate::error::backoff_delay;
use crate::membership::{self, FleetView, HEARTBEAT, MEMBER_ROLE};
use crate::server::SrvId;
use crate::settings::Settings;
use crate::supervisor::{Own, Release, Supervisor};

/// How long a heartbeat (or the set-up after connecting) may take.
const BEAT_DEADLINE: Duration = Duration::from_secs(5);
/// Servers claimed at most per heartbeat (one round trip each).
const CLAIMS_PER_BEAT: usize = 1000;

/// The servers registered in the repository (sent after every reload).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Servers(pub Vec<SrvId>);

/// The supervisor to start and stop snapshot actors through.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach(pub Addr<Supervisor>);

/// New settings (reload): a new repository DSN is used at the next
/// reconnection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MemberSettings(pub Arc<Settings>);

pub struct MemberActor {
    settings: Arc<Settings>,
    view: FleetView,
    logger: Logger,
    supervisor: Option<Addr<Supervisor>>,
    session: Option<Arc<Client>>,
    /// A connection or a heartbeat is in flight.
    busy: bool,
    /// The server list changed during a heartbeat: beat again after it,
    /// not a heartbeat period later.
    beat_again: bool,
    /// When the next connection attempt may start.
    retry_at: Option<tokio::time::Instant>,
    failures: u32,
    srvids: Vec<SrvId>,
    /// The servers whose snapshot actor runs on this member's word.
    running: BTreeSet<SrvId>,
    /// Being handed over (actor stopping, then lock released).
    releasing: BTreeSet<SrvId>,
}

impl MemberActor {
    pub fn new(settings: Arc<Settings>, view: FleetView, logger: Logger) -> MemberActor {
        let logger = logger.new(slog::o!("actor" => "membership", "member" => view.get().name));
        MemberActor {
            settings,
            view,
            logger,
            supervisor: None,
            session: None,
            busy: false,
            beat_again: false,
            retry_at: None,
            failures: 0,
            srvids: Vec::new(),
            running: BTreeSet::new(),
            releasing: BTreeSet::new(),
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        match &self.session {
            Some(client) if !client.is_closed() => self.heartbeat(client.clone(), ctx),
            _ => self.reconnect(ctx),
        }
    }

    fn lost(&mut self, why: &str) {
        if self.session.take().is_some() || self.view.pid().is_some() {
            warn!(self.logger, "membership session lost: no snapshot is written until it is back";
                "error" => why);
        }
        self.view.update(|v| {
            v.pid = None;
            v.leader = false;
            v.owned.clear();
            v.members.clear();
        });
        self.failures = self.failures.saturating_add(1);
        let delay = backoff_delay(
            self.failures - 1,
            self.settings.backoff_min.min(Duration::from_secs(1)),
            self.settings.backoff_max.min(Duration::from_secs(10)),
        );
        self.retry_at = Some(tokio::time::Instant::now() + delay);
    }

    fn reconnect(&mut self, ctx: &mut Context<Self>) {
        if self.session.is_some() {
            self.lost("the repository closed the session");
        }
        if self
            .retry_at
            .is_some_and(|at| tokio::time::Instant::now() < at)
        {
            return;
        }
        self.busy = true;
        // The membership session's role carries the member's name already.
        let settings = Arc::new(Settings {
            member_name: None,
            ..(*self.settings).clone()
        });
        let role = format!("{MEMBER_ROLE}{}", self.view.get().name);
        let deadline = settings.connect_timeout + BEAT_DEADLINE;
        let fut = async move {
            let join = async {
                let session = connect_repository(&settings, &role)
                    .await
                    .map_err(|e| e.to_string())?;
                let facts = membership::prepare_session(&session.client)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((session.client, facts))
            };
            tokio::time::timeout(deadline, join)
                .await
                .unwrap_or_else(|_| Err("the repository is not answering".to_string()))
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            match result {
                Ok((client, facts)) => {
                    info!(act.logger, "joined the fleet"; "session_pid" => facts.pid,
                    "frozen_member_detection" => if facts.idle_session_timeout {
                        "idle_session_timeout"
                    } else {
                        "TCP keepalives only (PostgreSQL < 14)"
                    });
                    act.failures = 0;
                    act.retry_at = None;
                    act.view.update(|v| v.pid = Some(facts.pid));
                    act.session = Some(Arc::new(client));
                    act.tick(ctx);
                }
                Err(e) => act.lost(&e),
            }
        }));
    }

    fn heartbeat(&mut self, client: Arc<Client>, ctx: &mut Context<Self>) {
        let Some(me) = self.view.pid() else { return };
        self.busy = true;
        let view = self.view.get();
        let srvids = self.srvids.clone();
        let releasing = self.releasing.clone();
        let running = self.running.clone();
        let beat = async move {
            let members = membership::live_members(&*client).await?;
            let leader = view.leader || membership::try_lead(&client).await?;
            let wanted: BTreeSet<SrvId> = if members.iter().any(|m| m.pid == me) {
                owned_by(&members, me, &srvids).into_iter().collect()
            } else {
                // Our member lock is not visible: own nothing rather than guess.
                BTreeSet::new()
            };
            let mut claimed = Vec::new();
            // A bounded number per beat, so that a beat stays well within
            // its deadline on a fleet of thousands; the rest come next beat.
            for &srvid in wanted.difference(&view.owned).take(CLAIMS_PER_BEAT) {
                if membership::try_claim(&client, srvid).await? {
                    claimed.push(srvid);
                }
            }
            let to_release: Vec<SrvId> = view
                .owned
                .union(&running)
                .filter(|s| !wanted.contains(s) && !releasing.contains(s))
                .copied()
                .collect();
            Ok::<_, tokio_postgres::Error>(Beat {
                members,
                leader,
                claimed,
                wanted,
                to_release,
            })
        };
        // A repository that stops answering must not keep the member
        // believing it is one: past the deadline the session is given up.
        let fut = async move {
            match tokio::time::timeout(BEAT_DEADLINE, beat).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "the heartbeat got no answer within {}s",
                    BEAT_DEADLINE.as_secs()
                )),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            match result {
                Ok(beat) => {
                    act.apply(beat, ctx);
                    if std::mem::take(&mut act.beat_again) {
                        act.tick(ctx);
                    }
                }
                Err(e) => act.lost(&e),
            }
        }));
    }

    fn apply(&mut self, beat: Beat, ctx: &mut Context<Self>) {
        let before = self.view.get();
        if before.members != beat.members {
            info!(self.logger, "fleet members changed";
                "members" => beat.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "));
        }
        if beat.leader && !before.leader {
            info!(self.logger, "leading the fleet");
        }
        self.view.update(|v| {
            v.members = beat.members;
            v.leader = beat.leader;
            v.owned.extend(beat.claimed.iter().copied());
        });
        let Some(supervisor) = self.supervisor.clone() else {
            return;
        };
        // Every server held and wanted runs (claimed now or earlier).
        let owned = self.view.get().owned;
        for &srvid in owned.intersection(&beat.wanted) {
            if self.running.insert(srvid) {
                supervisor.do_send(Own(srvid));
            }
        }
        for srvid in beat.to_release {
            self.releasing.insert(srvid);
            let supervisor = supervisor.clone();
            let client = self.session.clone();
            let held = self.view.owns(srvid);
            let fut = async move {
                // First the actor stops (its snapshot in flight ends),
                // then the lock goes: the next owner starts between two
                // snapshots.
                let _ = supervisor.send(Release(srvid)).await;
                match (held, client) {
                    (true, Some(client)) => membership::release(&client, srvid)
                        .await
                        .map_err(|e| e.to_string()),
                    _ => Ok(()),
                }
            };
            ctx.spawn(fut.into_actor(self).map(move |result, act, _| {
                act.releasing.remove(&srvid);
                act.running.remove(&srvid);
                act.view.update(|v| {
                    v.owned.remove(&srvid);
                });
                if let Err(e) = result {
                    // The lock goes with the session, which is then lost.
                    warn!(act.logger, "could not hand a server over"; "srvid" => srvid, "error" => e);
                }
            }));
        }
    }
}

/// What one heartbeat learnt and did.
struct Beat {
    members: Vec<Member>,
    leader: bool,
    claimed: Vec<SrvId>,
    /// What the assignment gives this member.
    wanted: BTreeSet<SrvId>,
    to_release: Vec<SrvId>,
}

impl Actor for MemberActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(HEARTBEAT, |act, ctx| act.tick(ctx));
        self.tick(ctx);
    }
}

/// A panic in a handler (see [`crate::restart`]) is taken as a lost
/// session: the locks go with it, and the next heartbeat reconnects and
/// claims again, as after a repository restart.
impl Supervised for MemberActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        if let Some(panic) = crate::restart::take_panic() {
            warn!(self.logger, "membership restarted after a panic"; "cause" => panic);
        }
        self.busy = false;
        self.lost("restarted after a panic");
    }
}

impl Handler<Servers> for MemberActor {
    type Result = ();

    fn handle(&mut self, Servers(mut srvids): Servers, ctx: &mut Context<Self>) {
        srvids.sort_unstable();
        self.view.update(|v| v.known = srvids.clone());
        self.srvids = srvids;
        self.beat_again = self.busy;
        self.tick(ctx);
    }
}

impl Handler<Attach> for MemberActor {
    type Result = ();

    fn handle(&mut self, Attach(supervisor): Attach, _: &mut Context<Self>) {
        self.supervisor = Some(supervisor);
    }
}

impl Handler<MemberSettings> for MemberActor {
    type Result = ();

    fn handle(&mut self, MemberSettings(settings): MemberSettings, _: &mut Context<Self>) {
        self.settings = settings;
    }
}
