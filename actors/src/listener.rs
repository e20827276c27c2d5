//! The listener: holds the repository session that runs
//! `LISTEN powa_collector`, turns each notification into a typed request
//! (through [`protocol`], the only module that knows the text format),
//! checks that the sender may ask, dispatches it and answers with
//! `SELECT pg_notify($1, $2)` — bound parameters, never SQL built from the
//! channel or the command.
//!
//! The session is a `StreamHandler` over the connection's messages: when
//! the repository goes away the stream ends, the actor stops, and its actix
//! `Supervisor` restarts it, which reconnects after a backoff and LISTENs
//! again. Requests are handled concurrently (they are short); a bound on
//! requests in flight keeps a flood of notifications from growing memory.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use futures_util::stream::poll_fn;
use slog::{debug, error, info, warn, Logger};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Notification};

use crate::connect::{prepare_repository, LISTENER_ROLE};
use crate::error::{backoff_delay, classify};
use crate::layout::Layout;
use crate::liveness::Component;
use crate::membership::{self, FleetView};
use crate::privileges::PermissionRule;
use crate::probes::Probes;
use crate::protocol::gather::{self, Gather, Kind, Part, GATHER_CHANNEL};
use crate::protocol::{self, Answer, Command, Request};
use crate::server::SrvId;
use crate::settings::Settings;
use crate::snapshot_actor::ForceAccepted;
use crate::status::{Details, StatusActor, WorkersStatus};
use crate::supervisor::{Force, RefreshCatalogsOf, Reload, Supervisor};

/// Requests handled at once; beyond this a request is answered with an
/// error instead of queueing without bound.
const MAX_IN_FLIGHT: usize = 256;
/// Requests of one sending backend handled at once: one session flooding
/// the channel leaves room for the others.
const MAX_IN_FLIGHT_PER_SENDER: usize = MAX_IN_FLIGHT / 2;

/// Requests being handled, in all and per sending backend.
#[derive(Default)]
struct InFlight {
    total: Cell<usize>,
    per_sender: RefCell<HashMap<i32, usize>>,
}

/// One request's place in [`InFlight`], given back when dropped: when the
/// request is done, or dropped with the listener's context at a restart.
struct Slot {
    counts: Rc<InFlight>,
    sender: i32,
}

impl InFlight {
    fn take(self: &Rc<Self>, sender: i32) -> Option<Slot> {
        let mine = self.per_sender.borrow().get(&sender).copied().unwrap_or(0);
        if self.total.get() >= MAX_IN_FLIGHT || mine >= MAX_IN_FLIGHT_PER_SENDER {
            return None;
        }
        self.total.set(self.total.get() + 1);
        *self.per_sender.borrow_mut().entry(sender).or_default() += 1;
        Some(Slot {
            counts: self.clone(),
            sender,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let counts = &self.counts;
        counts.total.set(counts.total.get() - 1);
        let mut per_sender = counts.per_sender.borrow_mut();
        if let Some(n) = per_sender.get_mut(&self.sender) {
            *n -= 1;
            if *n == 0 {
                per_sender.remove(&self.sender);
            }
        }
    }
}

/// The answer when the actor that does the work is gone (stopping) or was
/// just restarted (a panic dropped the request).
const UNAVAILABLE: &str = "The collector is stopping or restarting a part, retry later";
/// How long a member with no leader in sight waits for one to be elected
/// (the repository just restarted, say) before answering itself.
const LEADER_WAIT: Duration = Duration::from_secs(3);

/// How long the leader waits for the other members' workers before
/// answering a fleet-wide request with what it has.
const GATHER_BUDGET: Duration = Duration::from_millis(1500);
/// How long the leader waits for the other members to acknowledge a reload.
const RELOAD_BUDGET: Duration = Duration::from_secs(5);

/// The state shown for a registered server no member collects.
const UNCOLLECTED: &str = "waiting for a collector";

/// Gatherings in flight, by id: where their parts go.
type Pending = Rc<RefCell<HashMap<u64, tokio::sync::mpsc::UnboundedSender<Part>>>>;

/// New settings after a reload (the DSN change takes effect at the next
/// reconnection).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NewSettings(pub Arc<Settings>);

/// Internal: open the session and LISTEN.
#[derive(Message)]
#[rtype(result = "()")]
struct Connect;

pub struct Listener {
    settings: Arc<Settings>,
    supervisor: Addr<Supervisor>,
    status: Addr<StatusActor>,
    fleet: FleetView,
    logger: Logger,
    session: Option<Session>,
    failures: u32,
    in_flight: Rc<InFlight>,
    probes: Probes,
    pending: Pending,
    next_gather: Rc<Cell<u64>>,
}

/// The live LISTEN session.
#[derive(Clone)]
struct Session {
    client: Rc<Client>,
    /// The permission check of [`PermissionRule::sql`], built once.
    permission_sql: Rc<str>,
    /// Where the other members send this member's gatherings.
    reply_channel: Rc<str>,
}

impl Listener {
    pub fn new(
        settings: Arc<Settings>,
        supervisor: Addr<Supervisor>,
        status: Addr<StatusActor>,
        fleet: FleetView,
        logger: Logger,
    ) -> Listener {
        Listener {
            settings,
            supervisor,
            status,
            fleet,
            logger: logger.new(slog::o!("actor" => "listener")),
            session: None,
            failures: 0,
            in_flight: Rc::default(),
            probes: Probes::default(),
            pending: Pending::default(),
            next_gather: Rc::new(Cell::new(1)),
        }
    }

    /// Beat into these probes' liveness, say in their readiness whether
    /// the session is up, count commands in their metrics.
    pub fn with_probes(mut self, probes: Probes) -> Listener {
        self.probes = probes;
        self
    }

    fn session_down(&self) {
        self.probes.readiness.set_listening(false);
        self.probes.readiness.set_repository(false);
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.probes.liveness.keep_beating(Component::Listener, ctx);
        let delay = match self.failures {
            0 => Duration::ZERO,
            n => backoff_delay(
                n - 1,
                self.settings.backoff_min,
                self.settings.backoff_max.min(Duration::from_secs(30)),
            ),
        };
        if !delay.is_zero() {
            info!(self.logger, "reconnecting to the repository"; "in_secs" => delay.as_secs_f64());
        }
        ctx.notify_later(Connect, delay);
    }
}

impl Supervised for Listener {
    fn restarting(&mut self, _: &mut Context<Self>) {
        if let Some(panic) = crate::restart::take_panic() {
            warn!(self.logger, "listener restarted after a panic, will LISTEN again";
                "cause" => panic);
        }
        self.session_down();
        self.session = None;
        // The requests in flight are dropped with the old context (their
        // slots with them); start a new count all the same.
        self.in_flight = Rc::default();
        self.failures = self.failures.saturating_add(1);
    }
}

impl Handler<NewSettings> for Listener {
    type Result = ();

    fn handle(&mut self, NewSettings(settings): NewSettings, _: &mut Context<Self>) {
        self.settings = settings;
    }
}

impl Handler<Connect> for Listener {
    type Result = ();

    fn handle(&mut self, _: Connect, ctx: &mut Context<Self>) {
        let (config, tls) = match prepare_repository(&self.settings, LISTENER_ROLE) {
            Ok(prepared) => prepared,
            Err(e) => {
                error!(self.logger, "cannot listen"; "error" => %e);
                ctx.stop();
                return;
            }
        };
        let statement_timeout = self.settings.statement_timeout.as_millis();
        // `connect_timeout` covers the TCP connect only: bound the TLS
        // handshake and startup exchange too (the mailbox waits meanwhile).
        let connect_timeout = self.settings.connect_timeout;
        let setup_deadline = crate::connect::statement_deadline(&self.settings);
        let fut = async move { tokio::time::timeout(connect_timeout, config.connect(tls)).await };
        ctx.wait(fut.into_actor(self).map(move |result, act, ctx| {
            let (client, mut connection) = match result {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    warn!(act.logger, "cannot connect to the repository to listen";
                        "error_type" => classify(&e).as_str(), "error" => %e);
                    ctx.stop();
                    return;
                }
                Err(_) => {
                    warn!(act.logger, "cannot connect to the repository to listen";
                        "error_type" => "connection",
                        "error" => format!("no answer within {}s (TCP, TLS and startup): \
                            the repository is not answering", connect_timeout.as_secs_f64()));
                    ctx.stop();
                    return;
                }
            };
            // The connection is driven by this stream: notifications arrive
            // through it and the client's queries progress while it is polled.
            ctx.add_stream(poll_fn(move |cx| connection.poll_message(cx)));
            let client = Rc::new(client);
            let setup = client.clone();
            // Spawned, not waited for: a waiting future would keep the
            // context from polling the stream that drives this very query.
            let setup = async move {
                setup
                        .batch_execute(&format!(
                            "SET statement_timeout = {statement_timeout}; LISTEN {}",
                            protocol::LISTEN_CHANNEL
                        ))
                        .await?;
                    let row = setup
                        .query_one(
                            "SELECT pg_catalog.current_setting('server_version_num')::int",
                            &[],
                        )
                        .await?;
                    let layout = Layout::read(&setup).await?;
                    let pid: i32 = setup
                        .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
                        .await?
                        .get(0);
                    let reply_channel = gather::reply_channel(pid);
                    setup
                        .batch_execute(&format!("LISTEN {GATHER_CHANNEL}; LISTEN {reply_channel}"))
                        .await?;
                    Ok::<_, tokio_postgres::Error>((
                        PermissionRule::new(row.get(0), &layout),
                        reply_channel,
                    ))
            };
            ctx.spawn(
                async move {
                    match tokio::time::timeout(setup_deadline, setup).await {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err(format!(
                            "no answer within {}s: the repository is not answering",
                            setup_deadline.as_secs()
                        )),
                    }
                }
                .into_actor(act)
                .map(move |result, act, ctx| match result {
                    Ok((rule, reply_channel)) => {
                        info!(act.logger, "listening for commands"; "channel" => protocol::LISTEN_CHANNEL);
                        act.probes.readiness.set_repository(true);
                        act.probes.readiness.set_listening(true);
                        act.session = Some(Session {
                            client,
                            permission_sql: rule.sql().into(),
                            reply_channel: reply_channel.into(),
                        });
                        act.failures = 0;
                    }
                    Err(e) => {
                        warn!(act.logger, "cannot LISTEN on the repository"; "error" => %e);
                        ctx.stop();
                    }
                }),
            );
        }));
    }
}

impl StreamHandler<Result<AsyncMessage, tokio_postgres::Error>> for Listener {
    fn handle(
        &mut self,
        item: Result<AsyncMessage, tokio_postgres::Error>,
        ctx: &mut Context<Self>,
    ) {
        match item {
            Ok(AsyncMessage::Notification(n)) => self.on_notification(n, ctx),
            Ok(AsyncMessage::Notice(notice)) => {
                debug!(self.logger, "repository notice"; "notice" => notice.message())
            }
            Ok(_) => {}
            Err(e) => {
                warn!(self.logger, "repository session lost"; "error" => %e);
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        warn!(
            self.logger,
            "repository session closed, will reconnect and LISTEN again"
        );
        ctx.stop();
    }
}

impl Listener {
    fn on_notification(&mut self, n: Notification, ctx: &mut Context<Self>) {
        let Some(session) = self.session.clone() else {
            return;
        };
        if n.channel() == GATHER_CHANNEL {
            self.on_gather(&session, n.payload(), ctx);
            return;
        }
        if n.channel() == &*session.reply_channel {
            if let Some(part) = gather::parse_part(n.payload()) {
                if let Some(tx) = self.pending.borrow().get(&part.id) {
                    let _ = tx.send(part);
                }
            }
            return;
        }
        if n.channel() != protocol::LISTEN_CHANNEL {
            return;
        }
        let sender_pid = n.process_id();
        let (request, answer_now) = match protocol::parse(n.payload()) {
            Ok(request) => {
                if let Command::WorkersStatus { .. } = request.command {
                    crate::fault::panic_in("listener", "workers_status");
                }
                (Some(request), None)
            }
            Err(rejection) => {
                warn!(self.logger, "invalid command ignored";
                    "sender_pid" => sender_pid, "reason" => %rejection);
                (None, rejection.reply)
            }
        };
        let Some(slot) = self.in_flight.take(sender_pid) else {
            warn!(self.logger, "too many commands in flight, refusing one"; "sender_pid" => sender_pid);
            if let Some(request) = &request {
                self.probes
                    .metrics
                    .command(request.command.kind().as_str(), "REFUSED");
                if let Some(channel) = request.reply_to.channel() {
                    let answer =
                        Answer::error(request.command.kind(), "Too many requests, retry later");
                    self.spawn_answer(session, channel.to_string(), answer, ctx);
                }
            }
            return;
        };
        if request.is_none() {
            self.probes.metrics.command("INVALID", "ERROR");
        }
        if let Some((channel, answer)) = answer_now {
            // Counted and checked like a command: any role that can
            // connect may NOTIFY us, and must not make us NOTIFY at will.
            // Every member got it: the leader answers.
            let fleet = self.fleet.clone();
            let logger = self.logger.clone();
            ctx.spawn(
                async move {
                    if answers_here(&session, &fleet, None).await {
                        match permitted(&session, sender_pid).await {
                            Ok(true) => {
                                send_answer(&session.client, &channel, &answer, &logger).await
                            }
                            Ok(false) => {
                                debug!(logger, "invalid command from a role without permission: \
                                    not answered"; "sender_pid" => sender_pid)
                            }
                            Err(e) => warn!(logger, "permission check failed"; "error" => %e),
                        }
                    }
                    drop(slot);
                }
                .into_actor(self),
            );
            return;
        }
        let Some(request) = request else { return };
        let supervisor = self.supervisor.clone();
        let status = self.status.clone();
        let logger = self.logger.clone();
        let metrics = self.probes.metrics.clone();
        let fleet = self.fleet.clone();
        let gatherer = Gatherer {
            fleet: fleet.clone(),
            pending: self.pending.clone(),
            next: self.next_gather.clone(),
        };
        ctx.spawn(
            async move {
                // Every member receives every request; one answers it.
                let answering = answers_here(&session, &fleet, request.command.srvid()).await;
                if !answering {
                    // RELOAD included: the leader asks every member to
                    // reload and answers once they acknowledged.
                    drop(slot);
                    return;
                }
                let answers = execute(
                    &session,
                    sender_pid,
                    &request,
                    &supervisor,
                    &status,
                    &gatherer,
                    &logger,
                )
                .await;
                if let Some(first) = answers.first() {
                    metrics.command(request.command.kind().as_str(), first.status().as_str());
                }
                if let Some(channel) = request.reply_to.channel() {
                    // One session sends them in order.
                    for answer in &answers {
                        send_answer(&session.client, channel, answer, &logger).await;
                    }
                }
                drop(slot);
            }
            .into_actor(self),
        );
    }

    /// Another member's leader asks for this member's workers.
    fn on_gather(&mut self, session: &Session, payload: &str, ctx: &mut Context<Self>) {
        let Some(request) = Gather::parse(payload) else {
            return;
        };
        if request.reply_to == *session.reply_channel {
            // Our own request: the leader has its workers at hand.
            return;
        }
        let Some(member_pid) = self.fleet.pid() else {
            return;
        };
        let status = self.status.clone();
        let supervisor = self.supervisor.clone();
        let client = session.client.clone();
        let logger = self.logger.clone();
        ctx.spawn(
            async move {
                let entries = if request.kind == Kind::Reload {
                    info!(logger, "reloading, as the leader asks");
                    let outcome = match supervisor.send(Reload).await {
                        Ok(Ok(_)) => gather::RELOADED.to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "the collector is stopping".to_string(),
                    };
                    vec![(0, outcome)]
                } else {
                    match local_entries(&status, request.kind).await {
                        Ok(entries) => entries,
                        Err(_) => return,
                    }
                };
                for part in gather::encode_parts(request.id, member_pid, &entries) {
                    if let Err(e) = client
                        .query_typed(
                            NOTIFY,
                            &[(&request.reply_to, Type::TEXT), (&part, Type::TEXT)],
                        )
                        .await
                    {
                        warn!(logger, "could not send workers to the leader"; "error" => %e);
                        return;
                    }
                }
            }
            .into_actor(self),
        );
    }

    fn spawn_answer(
        &self,
        session: Session,
        channel: String,
        answer: Answer,
        ctx: &mut Context<Self>,
    ) {
        let logger = self.logger.clone();
        ctx.spawn(
            async move { send_answer(&session.client, &channel, &answer, &logger).await }
                .into_actor(self),
        );
    }
}

/// One member's answer to a gathering so far: (parts received, parts in
/// all, entries).
type Received = (usize, usize, Vec<(SrvId, String)>);

/// What the leader needs to gather the other members' workers.
struct Gatherer {
    fleet: FleetView,
    pending: Pending,
    next: Rc<Cell<u64>>,
}

/// This member's entries for a gathering: (srvid, state or item).
async fn local_entries(
    status: &Addr<StatusActor>,
    kind: Kind,
) -> Result<Vec<(SrvId, String)>, MailboxError> {
    Ok(match kind {
        Kind::Reload => Vec::new(),
        Kind::Workers => status.send(WorkersStatus { wanted: None }).await?,
        Kind::Fleet => {
            let now = SystemTime::now();
            status
                .send(Details { wanted: None })
                .await?
                .iter()
                .map(|r| (r.srvid, protocol::fleet_item(r, now)))
                .collect()
        }
    })
}

impl Gatherer {
    /// The other members' entries, by member pid, from those whose every
    /// part arrived within `budget`; and the members that did not answer.
    async fn others(
        &self,
        session: &Session,
        kind: Kind,
        budget: Duration,
    ) -> (BTreeMap<i32, Vec<(SrvId, String)>>, Vec<String>) {
        let view = self.fleet.get();
        let others: Vec<&crate::assignment::Member> = view
            .members
            .iter()
            .filter(|m| Some(m.pid) != view.pid)
            .collect();
        if others.is_empty() {
            return (BTreeMap::new(), Vec::new());
        }
        let id = self.next.get();
        self.next.set(id + 1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.pending.borrow_mut().insert(id, tx);
        let request = Gather {
            kind,
            reply_to: session.reply_channel.to_string(),
            id,
        };
        let mut got: BTreeMap<i32, Received> = BTreeMap::new();
        let sent = session
            .client
            .query_typed(
                NOTIFY,
                &[
                    (&GATHER_CHANNEL, Type::TEXT),
                    (&request.encode(), Type::TEXT),
                ],
            )
            .await;
        let done = |got: &BTreeMap<i32, Received>, pid: i32| {
            got.get(&pid).is_some_and(|(n, total, _)| n == total)
        };
        if sent.is_ok() {
            let deadline = tokio::time::Instant::now() + budget;
            while !others.iter().all(|m| done(&got, m.pid)) {
                let Ok(Some(part)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                    break;
                };
                let entry = got
                    .entry(part.member_pid)
                    .or_insert((0, part.total, vec![]));
                entry.0 += 1;
                entry.2.extend(part.entries);
            }
        }
        self.pending.borrow_mut().remove(&id);
        let missing = others
            .iter()
            .filter(|m| !done(&got, m.pid))
            .map(|m| m.name.clone())
            .collect();
        let complete = got
            .into_iter()
            .filter(|(_, (n, total, _))| n == total)
            .map(|(pid, (_, _, entries))| (pid, entries))
            .collect();
        (complete, missing)
    }

    /// After this member's reload: every other member reloads, and the
    /// answer names those that failed or did not acknowledge in time.
    async fn reload_others(&self, session: &Session) -> Result<(), String> {
        let (acks, missing) = self.others(session, Kind::Reload, RELOAD_BUDGET).await;
        let names = self.fleet.get().members;
        let name_of = |pid: i32| {
            names
                .iter()
                .find(|m| m.pid == pid)
                .map_or_else(|| pid.to_string(), |m| m.name.clone())
        };
        let mut problems: Vec<String> = acks
            .iter()
            .filter_map(|(pid, entries)| match entries.first() {
                Some((_, outcome)) if outcome == gather::RELOADED => None,
                Some((_, outcome)) => Some(format!("member {}: {outcome}", name_of(*pid))),
                None => Some(format!("member {}: no outcome", name_of(*pid))),
            })
            .collect();
        if !missing.is_empty() {
            problems.push(format!("not acknowledged by {}", missing.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// This member's entries, the others', and the registered servers no
    /// member reported (WORKERS_STATUS only).
    async fn fleet(
        &self,
        session: &Session,
        status: &Addr<StatusActor>,
        kind: Kind,
    ) -> Result<Vec<(SrvId, String)>, MailboxError> {
        let mut all: BTreeMap<SrvId, String> = BTreeMap::new();
        let (others, _) = self.others(session, kind, GATHER_BUDGET).await;
        for (srvid, entry) in others.into_values().flatten() {
            all.entry(srvid).or_insert(entry);
        }
        // Ours last: on a server being handed over, the owner's word wins.
        all.extend(local_entries(status, kind).await?);
        if kind == Kind::Workers {
            for srvid in self.fleet.get().known {
                all.entry(srvid).or_insert_with(|| UNCOLLECTED.to_string());
            }
        }
        Ok(all.into_iter().collect())
    }
}

/// Whether this member answers a request about `srvid` (`None`: about
/// the fleet): the owner of a server answers for it; the leader answers
/// for the fleet and for servers no member holds. Without a leader in
/// sight (all members reconnecting) a member waits for one, then answers
/// itself rather than leave the client without an answer.
async fn answers_here(session: &Session, fleet: &FleetView, srvid: Option<SrvId>) -> bool {
    if let Some(srvid) = srvid {
        if fleet.owns(srvid) {
            return true;
        }
        match membership::server_holders(&*session.client).await {
            Ok(held) if held.iter().any(|(s, _)| *s == srvid) => return false,
            Ok(_) => {}
            // Cannot tell: let the leader rule decide.
            Err(_) => {}
        }
    }
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        if fleet.is_leader() {
            return true;
        }
        if let Ok(Some(pid)) = membership::leader(&*session.client).await {
            if Some(pid) != fleet.pid() {
                return false;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the backend that sent the notification may give commands. A
/// sender whose session is already gone cannot be checked and is denied.
async fn permitted(session: &Session, sender_pid: i32) -> Result<bool, tokio_postgres::Error> {
    let rows = session
        .client
        .query_typed(&session.permission_sql, &[(&sender_pid, Type::INT4)])
        .await?;
    Ok(rows
        .first()
        .and_then(|row| row.get::<_, Option<bool>>(0))
        .unwrap_or(false))
}

/// Run one request and produce its answers (one, except FLEET_STATUS).
async fn execute(
    session: &Session,
    sender_pid: i32,
    request: &Request,
    supervisor: &Addr<Supervisor>,
    status: &Addr<StatusActor>,
    gatherer: &Gatherer,
    logger: &Logger,
) -> Vec<Answer> {
    if let Err(refused) = check(session, sender_pid, request, logger).await {
        return vec![refused];
    }
    info!(logger, "command received"; "command" => request.command.kind().as_str(), "sender_pid" => sender_pid);
    // Fleet-wide requests: the leader answers for every member.
    match &request.command {
        Command::WorkersStatus { srvid: None } => {
            return vec![match gatherer.fleet(session, status, Kind::Workers).await {
                Ok(states) => protocol::workers_status(&states, None),
                Err(_) => Answer::error(request.command.kind(), "The collector is stopping"),
            }];
        }
        Command::FleetStatus { srvid: None } => {
            return match gatherer.fleet(session, status, Kind::Fleet).await {
                Ok(entries) => {
                    let items: Vec<String> = entries.into_iter().map(|(_, item)| item).collect();
                    protocol::fleet_status(&items)
                }
                Err(_) => vec![Answer::error(
                    request.command.kind(),
                    "The collector is stopping",
                )],
            };
        }
        _ => {}
    }
    if let Command::FleetStatus { srvid } = &request.command {
        return match status.send(Details { wanted: *srvid }).await {
            Ok(reports) => {
                let now = SystemTime::now();
                let items: Vec<String> = reports
                    .iter()
                    .map(|report| protocol::fleet_item(report, now))
                    .collect();
                protocol::fleet_status(&items)
            }
            Err(_) => vec![Answer::error(request.command.kind(), UNAVAILABLE)],
        };
    }
    if let Command::Reload = &request.command {
        let word = request.command.kind();
        return vec![match supervisor.send(Reload).await {
            Ok(Ok(outcome)) => match gatherer.reload_others(session).await {
                Ok(()) if outcome.restart_needed.is_empty() => Answer::reload_done(),
                Ok(()) => Answer::reload_done_but_restart_needed(&outcome.restart_needed),
                Err(problems) => Answer::error(word, problems),
            },
            Ok(Err(e)) => Answer::error(word, e.to_string()),
            Err(_) => Answer::error(word, UNAVAILABLE),
        }];
    }
    vec![execute_one(request, supervisor, status).await]
}

/// The permission check; the refusal to send when it fails.
async fn check(
    session: &Session,
    sender_pid: i32,
    request: &Request,
    logger: &Logger,
) -> Result<(), Answer> {
    let word = request.command.kind();
    match permitted(session, sender_pid).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            warn!(logger, "command refused: permission denied"; "command" => word.as_str(), "sender_pid" => sender_pid);
            Err(Answer::permission_denied(word))
        }
        Err(e) => {
            warn!(logger, "permission check failed"; "error" => %e);
            Err(Answer::error(word, "Could not check permissions"))
        }
    }
}

/// The commands answered in one payload, once permitted.
async fn execute_one(
    request: &Request,
    supervisor: &Addr<Supervisor>,
    status: &Addr<StatusActor>,
) -> Answer {
    let word = request.command.kind();
    match &request.command {
        Command::Reload => match supervisor.send(Reload).await {
            Ok(Ok(outcome)) if outcome.restart_needed.is_empty() => Answer::reload_done(),
            Ok(Ok(outcome)) => Answer::reload_done_but_restart_needed(&outcome.restart_needed),
            Ok(Err(e)) => Answer::error(word, e.to_string()),
            Err(_) => Answer::error(word, UNAVAILABLE),
        },
        Command::WorkersStatus { srvid } => {
            match status.send(WorkersStatus { wanted: *srvid }).await {
                Ok(states) => protocol::workers_status(&states, *srvid),
                Err(_) => Answer::error(word, UNAVAILABLE),
            }
        }
        Command::ForceSnapshot { srvid } => match supervisor.send(Force(*srvid)).await {
            Ok(Ok(ForceAccepted::Started)) => Answer::snapshot_in_progress(),
            Ok(Ok(ForceAccepted::Queued)) => Answer::snapshot_will_begin(),
            Ok(Err(reason)) => Answer::error(word, reason),
            Err(_) => Answer::error(word, UNAVAILABLE),
        },
        Command::RefreshDbCat { srvid, dbnames } => {
            match supervisor
                .send(RefreshCatalogsOf(*srvid, dbnames.clone()))
                .await
            {
                Ok(Ok(())) => Answer::catalogs_will_refresh(),
                Ok(Err(reason)) => Answer::error(word, reason),
                Err(_) => Answer::error(word, UNAVAILABLE),
            }
        }
        // Answered in parts by `execute`; never routed here.
        Command::FleetStatus { .. } => Answer::error(word, "Answered in parts"),
    }
}

/// Typed wherever it is sent: one round trip, no statement prepared (and
/// closed) for each answer.
const NOTIFY: &str = "SELECT pg_catalog.pg_notify($1, $2)";

async fn send_answer(client: &Client, channel: &str, answer: &Answer, logger: &Logger) {
    let payload = answer.encode();
    if let Err(e) = client
        .query_typed(NOTIFY, &[(&channel, Type::TEXT), (&payload, Type::TEXT)])
        .await
    {
        warn!(logger, "could not send an answer"; "error" => %e);
    }
}
