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
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use futures_util::stream::poll_fn;
use slog::{debug, error, info, warn, Logger};
use tokio_postgres::{AsyncMessage, Client, Notification};

use crate::connect::{prepare_repository, LISTENER_ROLE};
use crate::error::{backoff_delay, classify};
use crate::layout::Layout;
use crate::liveness::Component;
use crate::privileges::PermissionRule;
use crate::probes::Probes;
use crate::protocol::{self, Answer, Command, Request};
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
    logger: Logger,
    session: Option<Session>,
    failures: u32,
    in_flight: Rc<InFlight>,
    probes: Probes,
}

/// The live LISTEN session.
#[derive(Clone)]
struct Session {
    client: Rc<Client>,
    /// The permission check of [`PermissionRule::sql`], built once.
    permission_sql: Rc<str>,
}

impl Listener {
    pub fn new(
        settings: Arc<Settings>,
        supervisor: Addr<Supervisor>,
        status: Addr<StatusActor>,
        logger: Logger,
    ) -> Listener {
        Listener {
            settings,
            supervisor,
            status,
            logger: logger.new(slog::o!("actor" => "listener")),
            session: None,
            failures: 0,
            in_flight: Rc::default(),
            probes: Probes::default(),
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
                    Ok::<_, tokio_postgres::Error>(PermissionRule::new(row.get(0), &layout))
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
                    Ok(rule) => {
                        info!(act.logger, "listening for commands"; "channel" => protocol::LISTEN_CHANNEL);
                        act.probes.readiness.set_repository(true);
                        act.probes.readiness.set_listening(true);
                        act.session = Some(Session {
                            client,
                            permission_sql: rule.sql().into(),
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
        if n.channel() != protocol::LISTEN_CHANNEL {
            return;
        }
        let Some(session) = self.session.clone() else {
            return;
        };
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
            let logger = self.logger.clone();
            ctx.spawn(
                async move {
                    match permitted(&session, sender_pid).await {
                        Ok(true) => send_answer(&session.client, &channel, &answer, &logger).await,
                        Ok(false) => {
                            debug!(logger, "invalid command from a role without permission: \
                                not answered"; "sender_pid" => sender_pid)
                        }
                        Err(e) => warn!(logger, "permission check failed"; "error" => %e),
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
        ctx.spawn(
            async move {
                let answers = execute(
                    &session,
                    sender_pid,
                    &request,
                    &supervisor,
                    &status,
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

/// Whether the backend that sent the notification may give commands. A
/// sender whose session is already gone cannot be checked and is denied.
async fn permitted(session: &Session, sender_pid: i32) -> Result<bool, tokio_postgres::Error> {
    let rows = session
        .client
        .query(&*session.permission_sql, &[&sender_pid])
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
    logger: &Logger,
) -> Vec<Answer> {
    if let Err(refused) = check(session, sender_pid, request, logger).await {
        return vec![refused];
    }
    info!(logger, "command received"; "command" => request.command.kind().as_str(), "sender_pid" => sender_pid);
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

async fn send_answer(client: &Client, channel: &str, answer: &Answer, logger: &Logger) {
    let payload = answer.encode();
    if let Err(e) = client
        .execute("SELECT pg_catalog.pg_notify($1, $2)", &[&channel, &payload])
        .await
    {
        warn!(logger, "could not send an answer"; "error" => %e);
    }
}
