//! The NOTIFY protocol spoken by powa-web, both ways: parsing and encoding
//! requests, encoding and decoding answers, the worker states and the
//! FLEET_STATUS items, for the daemon and for powa-fleet's own client.
//!
//! The collector's repository connection runs `LISTEN powa_collector`. A
//! client sends `NOTIFY powa_collector, 'COMMAND CHANNEL ARG...'`; the answer
//! is a notification on `CHANNEL` whose payload is `COMMAND STATUS DATA`.
//! This module is the only place that knows that text: [`parse`] turns a
//! payload into a typed [`Request`] (or a typed [`Rejection`] carrying the
//! answer to send), and [`Answer::encode`] turns an answer back into a
//! payload; [`Request::encode`] and [`Answer::decode`] are the client's
//! side of the same text. It does no I/O and owns no connection; the listener sends
//! answers with `SELECT pg_notify($1, $2)`, binding the channel and the
//! payload as parameters.
//!
//! # Grammar
//!
//! Words are separated by single ASCII spaces, exactly as the payload was
//! built by the client: two spaces in a row make an empty word. Trailing
//! spaces are ignored, because powa-web builds its payload as
//! `"%s %s %s" % (command, channel, " ".join(args))` and so ends every
//! argument-less request with a space.
//!
//! | command | arguments |
//! |---|---|
//! | `RELOAD` | none |
//! | `WORKERS_STATUS` | optional srvid |
//! | `FORCE_SNAPSHOT` | srvid |
//! | `REFRESH_DB_CAT` | srvid, count, `count` database names (0 = all) |
//!
//! A srvid is a positive `i32` written with ASCII digits only: `abc`, `-1`,
//! `+1` or `0` are errors, never "every server". Missing or extra arguments
//! are errors too.
//!
//! # Channels
//!
//! `CHANNEL` is `-` when the client wants no answer. Any other word is the
//! channel to answer on, whatever it contains (`"`, `'`, `{`, `}`...): it is
//! only ever a bound parameter. It cannot contain a space, since spaces
//! separate words. A request without a channel is not executed (the
//! reference daemon ran it silently). A channel that `pg_notify` would
//! refuse (empty, longer than 63 bytes, i.e. `NAMEDATALEN - 1`, or holding a
//! NUL byte) rejects the request without an answer: there is nowhere valid
//! to send one.
//!
//! # Limits
//!
//! A NOTIFY payload must be shorter than 8000 bytes. Every encoded answer
//! fits in [`MAX_PAYLOAD`] bytes: words echoed from a request are cut to
//! [`MAX_ECHO`] bytes, and data is cut on a character boundary. A
//! `WORKERS_STATUS` list that does not fit keeps every server that is not
//! `running` first, then as many healthy ones as fit (see
//! [`workers_status`]). Parsing is linear in the payload size and copies
//! only what the request keeps.

use std::fmt;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::report::{WorkerReport, WorkerState};
use crate::text::truncate;

pub mod gather;

#[cfg(test)]
mod both_ways;
#[cfg(test)]
mod tests;

/// The channel the collector listens on.
pub const LISTEN_CHANNEL: &str = "powa_collector";

/// NOTIFY payloads must be shorter than 8000 bytes.
pub const MAX_PAYLOAD: usize = 7999;

/// Longest channel name `pg_notify` accepts (`NAMEDATALEN - 1`).
pub const MAX_CHANNEL: usize = 63;

/// Longest piece of a request (command word, bad argument) echoed back in an
/// answer or kept for the log.
pub const MAX_ECHO: usize = 64;

/// Longest worker state kept in a `WORKERS_STATUS` answer, so that one
/// verbose error cannot crowd every other server out of the list.
pub const MAX_STATE: usize = 1024;

/// The channel word meaning "do not answer".
const NO_ANSWER: &str = "-";

/// Where the answer to a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    /// Answer with a notification on this channel.
    Channel(String),
    /// The client sent `-`: do not answer.
    Nobody,
}

impl ReplyTo {
    /// The channel to answer on, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            ReplyTo::Channel(c) => Some(c),
            ReplyTo::Nobody => None,
        }
    }
}

/// The commands the collector understands, without their arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Reload,
    WorkersStatus,
    ForceSnapshot,
    RefreshDbCat,
    /// powa-fleet's own: every worker's details, in as many parts as needed.
    FleetStatus,
}

impl CommandKind {
    /// The command word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Reload => "RELOAD",
            CommandKind::WorkersStatus => "WORKERS_STATUS",
            CommandKind::ForceSnapshot => "FORCE_SNAPSHOT",
            CommandKind::RefreshDbCat => "REFRESH_DB_CAT",
            CommandKind::FleetStatus => "FLEET_STATUS",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        match word {
            "RELOAD" => Some(CommandKind::Reload),
            "WORKERS_STATUS" => Some(CommandKind::WorkersStatus),
            "FORCE_SNAPSHOT" => Some(CommandKind::ForceSnapshot),
            "REFRESH_DB_CAT" => Some(CommandKind::RefreshDbCat),
            "FLEET_STATUS" => Some(CommandKind::FleetStatus),
            _ => None,
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed command with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Re-read the server list and apply the changes.
    Reload,
    /// Report worker states, of one server or of all (`None`).
    WorkersStatus { srvid: Option<i32> },
    /// Take a snapshot of this server now.
    ForceSnapshot { srvid: i32 },
    /// Refresh these databases' catalogs at the next snapshot (empty = all).
    RefreshDbCat { srvid: i32, dbnames: Vec<String> },
    /// Every worker's details (or one server's), answered in parts.
    FleetStatus { srvid: Option<i32> },
}

impl Command {
    /// The one server the command is about, if any.
    pub fn srvid(&self) -> Option<i32> {
        match self {
            Command::WorkersStatus { srvid } | Command::FleetStatus { srvid } => *srvid,
            Command::ForceSnapshot { srvid } | Command::RefreshDbCat { srvid, .. } => Some(*srvid),
            Command::Reload => None,
        }
    }

    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Reload => CommandKind::Reload,
            Command::WorkersStatus { .. } => CommandKind::WorkersStatus,
            Command::ForceSnapshot { .. } => CommandKind::ForceSnapshot,
            Command::RefreshDbCat { .. } => CommandKind::RefreshDbCat,
            Command::FleetStatus { .. } => CommandKind::FleetStatus,
        }
    }
}

/// A well-formed request, ready to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub reply_to: ReplyTo,
    pub command: Command,
}

impl Request {
    /// The payload a client sends, `COMMAND CHANNEL ARG...`: what [`parse`]
    /// reads back as this request.
    pub fn encode(&self) -> String {
        let channel = self.reply_to.channel().unwrap_or(NO_ANSWER);
        let mut out = format!("{} {channel}", self.command.kind());
        // Writing to a String cannot fail.
        match &self.command {
            Command::Reload => {}
            Command::WorkersStatus { srvid } | Command::FleetStatus { srvid } => {
                if let Some(srvid) = srvid {
                    let _ = write!(out, " {srvid}");
                }
            }
            Command::ForceSnapshot { srvid } => {
                let _ = write!(out, " {srvid}");
            }
            Command::RefreshDbCat { srvid, dbnames } => {
                let _ = write!(out, " {srvid} {}", dbnames.len());
                for name in dbnames {
                    out.push(' ');
                    out.push_str(name);
                }
            }
        }
        out
    }
}

/// Status word of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Error => "ERROR",
            Status::Unknown => "UNKNOWN",
        }
    }

    fn from_word(word: &str) -> Option<Status> {
        [Status::Ok, Status::Error, Status::Unknown]
            .into_iter()
            .find(|status| status.as_str() == word)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An answer: command word, status and data; see [`Answer::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// At most [`MAX_ECHO`] bytes.
    command: String,
    status: Status,
    data: String,
}

impl Answer {
    /// `COMMAND OK data`.
    pub fn ok(command: CommandKind, data: impl Into<String>) -> Self {
        Self::new(command.as_str(), Status::Ok, data.into())
    }

    /// `COMMAND ERROR reason`.
    pub fn error(command: CommandKind, reason: impl Into<String>) -> Self {
        Self::new(command.as_str(), Status::Error, reason.into())
    }

    /// `COMMAND ERROR Permission denied`: the sender's role may not drive
    /// the collector.
    pub fn permission_denied(command: CommandKind) -> Self {
        Self::error(command, "Permission denied")
    }

    /// `WORD UNKNOWN Message "WORD" invalid, command ignored`, the answer
    /// powa-web expects for a command it does not know. The word is cut to
    /// [`MAX_ECHO`] bytes.
    pub fn unknown(word: &str) -> Self {
        let word = bounded(word, MAX_ECHO);
        let data = format!("Message \"{word}\" invalid, command ignored");
        Self {
            command: word,
            status: Status::Unknown,
            data,
        }
    }

    /// `RELOAD OK OK`, once the reload is done.
    pub fn reload_done() -> Self {
        Self::ok(CommandKind::Reload, "OK")
    }

    /// `RELOAD OK OK; restart needed for: snapshots.worker_threads, …`:
    /// done, but these changed settings wait for a restart.
    pub fn reload_done_but_restart_needed(settings: &[String]) -> Self {
        let mut data = format!("OK; restart needed for: {}", settings.join(", "));
        if data.len() > MAX_PAYLOAD - 64 {
            data.truncate(MAX_PAYLOAD - 64);
        }
        Self::ok(CommandKind::Reload, data)
    }

    /// `FORCE_SNAPSHOT OK Snapshot in progress`.
    pub fn snapshot_in_progress() -> Self {
        Self::ok(CommandKind::ForceSnapshot, "Snapshot in progress")
    }

    /// `FORCE_SNAPSHOT OK Snapshot will begin shortly`.
    pub fn snapshot_will_begin() -> Self {
        Self::ok(CommandKind::ForceSnapshot, "Snapshot will begin shortly")
    }

    /// `REFRESH_DB_CAT OK Catalogs will be refreshed during the next snapshot`.
    pub fn catalogs_will_refresh() -> Self {
        Self::ok(
            CommandKind::RefreshDbCat,
            "Catalogs will be refreshed during the next snapshot",
        )
    }

    fn new(command: &str, status: Status, data: String) -> Self {
        Self {
            command: bounded(command, MAX_ECHO),
            status,
            data,
        }
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn data(&self) -> &str {
        &self.data
    }

    /// The notification payload, `COMMAND STATUS DATA`, at most
    /// [`MAX_PAYLOAD`] bytes: data that does not fit is cut on a character
    /// boundary. NUL bytes, which PostgreSQL text cannot hold, become
    /// U+FFFD.
    pub fn encode(&self) -> String {
        let head = self.command.len() + 1 + self.status.as_str().len() + 1;
        // `command` is bounded, so `head` is far below the limit.
        let room = MAX_PAYLOAD.saturating_sub(head);
        let data = truncate(&self.data, room);
        let mut out = String::with_capacity(head + data.len());
        out.push_str(&self.command);
        out.push(' ');
        out.push_str(self.status.as_str());
        out.push(' ');
        out.push_str(data);
        if out.contains('\0') {
            // U+FFFD takes 3 bytes: re-cut after replacing.
            let replaced = out.replace('\0', "\u{FFFD}");
            return truncate(&replaced, MAX_PAYLOAD).to_owned();
        }
        out
    }
}

impl Answer {
    /// A received payload `COMMAND STATUS DATA` (what [`Answer::encode`]
    /// sends); `None` when the status word is none of ours.
    pub fn decode(payload: &str) -> Option<Answer> {
        let mut words = payload.splitn(3, ' ');
        let command = words.next().unwrap_or_default().to_string();
        let status = Status::from_word(words.next().unwrap_or_default())?;
        let data = words.next().unwrap_or_default().to_string();
        Some(Answer {
            command,
            status,
            data,
        })
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Why a payload was not executed. Strings kept here are cut to
/// [`MAX_ECHO`] bytes. The `Display` text is the reason sent in `ERROR`
/// answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("empty message")]
    Empty,
    #[error("command \"{command}\" has no answer channel")]
    MissingChannel { command: String },
    #[error("answer channel is empty")]
    EmptyChannel,
    #[error("answer channel is {len} bytes long, at most {MAX_CHANNEL} are allowed")]
    ChannelTooLong { len: usize },
    #[error("answer channel contains a NUL byte")]
    ChannelHasNul,
    #[error("Message \"{word}\" invalid, command ignored")]
    UnknownCommand { word: String },
    #[error("{command} needs an answer channel, \"-\" given")]
    NeedsAnswer { command: CommandKind },
    #[error("{command}: missing {what}")]
    MissingArgument {
        command: CommandKind,
        what: &'static str,
    },
    #[error("{command}: {extra} unexpected argument(s)")]
    TooManyArguments { command: CommandKind, extra: usize },
    #[error("{command}: invalid server id \"{value}\", expected a positive integer")]
    InvalidServerId { command: CommandKind, value: String },
    #[error("{command}: invalid number of databases \"{value}\"")]
    InvalidDbCount { command: CommandKind, value: String },
    #[error("{command}: {expected} database(s) announced, {found} given")]
    DbCountMismatch {
        command: CommandKind,
        expected: usize,
        found: usize,
    },
    #[error("{command}: invalid database name \"{value}\"")]
    InvalidDbName { command: CommandKind, value: String },
}

/// A payload that is not executed: why, and what to answer where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// The channel and the answer to send there; `None` when the client
    /// asked for no answer or no valid channel is known.
    pub reply: Option<(String, Answer)>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.reason, f)
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    fn silent(reason: RejectReason) -> Self {
        Self {
            reason,
            reply: None,
        }
    }
}

/// Parse one NOTIFY payload received on [`LISTEN_CHANNEL`].
///
/// Never panics; runs in time linear in `payload.len()`.
pub fn parse(payload: &str) -> Result<Request, Rejection> {
    let payload = payload.trim_end_matches(' ');
    if payload.is_empty() {
        return Err(Rejection::silent(RejectReason::Empty));
    }
    let mut words = payload.split(' ');
    // `split` yields at least one word.
    let word = words.next().unwrap_or_default();
    let Some(channel) = words.next() else {
        return Err(Rejection::silent(RejectReason::MissingChannel {
            command: bounded(word, MAX_ECHO),
        }));
    };
    let reply_to = if channel == NO_ANSWER {
        ReplyTo::Nobody
    } else if channel.is_empty() {
        return Err(Rejection::silent(RejectReason::EmptyChannel));
    } else if channel.len() > MAX_CHANNEL {
        return Err(Rejection::silent(RejectReason::ChannelTooLong {
            len: channel.len(),
        }));
    } else if channel.contains('\0') {
        return Err(Rejection::silent(RejectReason::ChannelHasNul));
    } else {
        ReplyTo::Channel(channel.to_owned())
    };

    let reject = |reason: RejectReason, answer: Answer| Rejection {
        reason,
        reply: reply_to.channel().map(|c| (c.to_owned(), answer)),
    };

    let Some(kind) = CommandKind::from_word(word) else {
        let reason = RejectReason::UnknownCommand {
            word: bounded(word, MAX_ECHO),
        };
        return Err(reject(reason, Answer::unknown(word)));
    };
    let fail = |reason: RejectReason| {
        let answer = Answer::error(kind, reason.to_string());
        reject(reason, answer)
    };

    let command = match kind {
        CommandKind::Reload => {
            no_more(kind, &mut words).map_err(fail)?;
            Command::Reload
        }
        CommandKind::WorkersStatus | CommandKind::FleetStatus => {
            if reply_to == ReplyTo::Nobody {
                // Asking for a status nobody reads is a no-op.
                return Err(Rejection::silent(RejectReason::NeedsAnswer {
                    command: kind,
                }));
            }
            let srvid = match words.next() {
                None => None,
                Some(w) => Some(srvid(kind, w).map_err(fail)?),
            };
            no_more(kind, &mut words).map_err(fail)?;
            if kind == CommandKind::FleetStatus {
                Command::FleetStatus { srvid }
            } else {
                Command::WorkersStatus { srvid }
            }
        }
        CommandKind::ForceSnapshot => {
            let srvid = required_srvid(kind, words.next()).map_err(fail)?;
            no_more(kind, &mut words).map_err(fail)?;
            Command::ForceSnapshot { srvid }
        }
        CommandKind::RefreshDbCat => {
            let srvid = required_srvid(kind, words.next()).map_err(fail)?;
            let count = db_count(kind, words.next()).map_err(fail)?;
            let names = words;
            // Count first (no copy), then copy only a request that holds.
            let found = names.clone().count();
            if found != count {
                return Err(fail(RejectReason::DbCountMismatch {
                    command: kind,
                    expected: count,
                    found,
                }));
            }
            let mut dbnames = Vec::with_capacity(count);
            for name in names {
                if name.is_empty() || name.contains('\0') {
                    return Err(fail(RejectReason::InvalidDbName {
                        command: kind,
                        value: bounded(name, MAX_ECHO),
                    }));
                }
                dbnames.push(name.to_owned());
            }
            Command::RefreshDbCat { srvid, dbnames }
        }
    };
    Ok(Request { reply_to, command })
}

fn no_more<'a>(
    command: CommandKind,
    words: &mut impl Iterator<Item = &'a str>,
) -> Result<(), RejectReason> {
    match words.count() {
        0 => Ok(()),
        extra => Err(RejectReason::TooManyArguments { command, extra }),
    }
}

fn required_srvid(command: CommandKind, word: Option<&str>) -> Result<i32, RejectReason> {
    match word {
        Some(w) => srvid(command, w),
        None => Err(RejectReason::MissingArgument {
            command,
            what: "server id",
        }),
    }
}

/// A positive `i32` in ASCII digits (leading zeros allowed).
fn srvid(command: CommandKind, word: &str) -> Result<i32, RejectReason> {
    match ascii_number::<i32>(word) {
        Some(id) if id > 0 => Ok(id),
        _ => Err(RejectReason::InvalidServerId {
            command,
            value: bounded(word, MAX_ECHO),
        }),
    }
}

fn db_count(command: CommandKind, word: Option<&str>) -> Result<usize, RejectReason> {
    let Some(word) = word else {
        return Err(RejectReason::MissingArgument {
            command,
            what: "number of databases",
        });
    };
    ascii_number::<usize>(word).ok_or_else(|| RejectReason::InvalidDbCount {
        command,
        value: bounded(word, MAX_ECHO),
    })
}

/// Digits only: `str::parse` would also take a leading `+`.
fn ascii_number<T: std::str::FromStr>(word: &str) -> Option<T> {
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    word.parse().ok()
}

/// Build the `WORKERS_STATUS` answer from `(srvid, state)` pairs (one per
/// server).
///
/// The data is a JSON object keyed by srvid as a string, formatted like the
/// reference (`{"1": "running", "2": "stopped"}`). With `wanted`, only that
/// server is listed (`{}` if it is not in `states`). States longer than
/// [`MAX_STATE`] bytes are cut.
///
/// When everything does not fit in one payload, the object lists the
/// servers whose state is not exactly `running` first, then the healthy
/// ones, by ascending srvid within each group, skipping any entry that
/// would overflow: the answer stays valid JSON and under [`MAX_PAYLOAD`].
/// powa-web shows a blank state for servers left out.
pub fn workers_status<S: AsRef<str>>(states: &[(i32, S)], wanted: Option<i32>) -> Answer {
    const OPEN: &str = "{";
    const CLOSE: &str = "}";
    const SEP: &str = ", ";
    let kind = CommandKind::WorkersStatus;
    let budget = MAX_PAYLOAD - (kind.as_str().len() + 1 + Status::Ok.as_str().len() + 1);

    let mut order: Vec<(bool, i32, &str)> = states
        .iter()
        .filter(|(id, _)| wanted.is_none() || wanted == Some(*id))
        .map(|(id, s)| {
            let s = truncate(s.as_ref(), MAX_STATE);
            (s == "running", *id, s)
        })
        .collect();
    // `false` (not running) sorts first.
    order.sort_unstable_by_key(|&(running, id, _)| (running, id));

    let mut out = String::with_capacity(budget.min(64 + order.len() * 24));
    out.push_str(OPEN);
    let mut entry = String::with_capacity(64);
    let mut first = true;
    for (_, id, state) in order {
        entry.clear();
        // Writing to a String cannot fail.
        let _ = write!(entry, "\"{id}\": ");
        entry.push_str(&json_string(state));
        let sep = if first { 0 } else { SEP.len() };
        if out.len() + sep + entry.len() + CLOSE.len() > budget {
            continue;
        }
        if !first {
            out.push_str(SEP);
        }
        out.push_str(&entry);
        first = false;
    }
    out.push_str(CLOSE);
    Answer::ok(kind, out)
}

/// Build the `FLEET_STATUS` answers: `items` (one JSON object per worker)
/// split into as many payloads as needed, each
/// `FLEET_STATUS OK <part>/<parts> [item, ...]` under [`MAX_PAYLOAD`], so a
/// client gets every server whatever the fleet size. An item too large for
/// a payload on its own is left out (callers bound their items well below).
pub fn fleet_status<S: AsRef<str>>(items: &[S]) -> Vec<Answer> {
    let kind = CommandKind::FleetStatus;
    // Room for "FLEET_STATUS OK " and a "<part>/<parts> " counter.
    let budget = MAX_PAYLOAD - (kind.as_str().len() + 1 + Status::Ok.as_str().len() + 1) - 24;
    let mut chunks: Vec<String> = Vec::new();
    let mut current = String::from("[");
    for item in items {
        let item = item.as_ref();
        if item.len() + 2 > budget {
            continue;
        }
        let sep = if current.len() > 1 { 2 } else { 0 };
        if current.len() + sep + item.len() + 1 > budget {
            current.push(']');
            chunks.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push_str(", ");
        }
        current.push_str(item);
    }
    current.push(']');
    chunks.push(current);
    let parts = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| Answer::ok(kind, format!("{}/{parts} {chunk}", i + 1)))
        .collect()
}

/// One `FLEET_STATUS` answer's data, `<part>/<parts> [item, ...]`, as
/// [`fleet_status`] builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPart<'a> {
    /// From 1.
    pub part: usize,
    pub parts: usize,
    /// The JSON array of this part's items.
    pub items: &'a str,
}

impl<'a> FleetPart<'a> {
    /// `None` when `data` has no `<part>/<parts>` counter.
    pub fn parse(data: &'a str) -> Option<FleetPart<'a>> {
        let (counter, items) = data.split_once(' ')?;
        let (part, parts) = counter.split_once('/')?;
        Some(FleetPart {
            part: part.parse().ok()?,
            parts: parts.parse().ok()?,
            items,
        })
    }
}

/// The text WORKERS_STATUS answers for a state. powa-web knows `running`,
/// `stopping`, `stopped` and the two `no connection` strings by heart and
/// shows anything else as it is.
pub fn worker_state(state: &WorkerState, now: SystemTime) -> String {
    match state {
        WorkerState::Starting => "starting".to_string(),
        WorkerState::Running => "running".to_string(),
        WorkerState::NoRemote(_) => "no connection to remote server".to_string(),
        WorkerState::NoRepository(_) => "no connection to repository server".to_string(),
        WorkerState::Restarting { at, reason } => {
            let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
            format!("restarting in {}s: {reason}", wait.as_secs())
        }
        WorkerState::Failed(reason) => format!("error: {reason}"),
        WorkerState::Stopping => "stopping".to_string(),
        WorkerState::Stopped => "stopped".to_string(),
    }
}

/// Longest error string kept per worker in a FLEET_STATUS item, and how
/// many: one item must always fit in a NOTIFY payload.
const ITEM_TEXT_BYTES: usize = 512;
const ITEM_ERRORS: usize = 3;

/// One worker as a `FLEET_STATUS` item: a compact JSON object, times as
/// Unix epoch seconds, texts cut to [`ITEM_TEXT_BYTES`].
pub fn fleet_item(report: &WorkerReport, now: SystemTime) -> String {
    let epoch = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
    };
    let cut = |text: &str| truncate(text, ITEM_TEXT_BYTES).to_owned();
    let errors: Vec<String> = report
        .last_errors
        .iter()
        .take(ITEM_ERRORS)
        .map(|e| cut(e))
        .collect();
    let state = worker_state(&report.state, now);
    serde_json::json!({
        "srvid": report.srvid,
        "name": cut(&report.name),
        "state": cut(&state),
        "last_snapshot": epoch(report.last_snapshot),
        "last_duration": report.last_duration.map(|d| d.as_secs_f64()),
        "last_lag": report.last_lag.map(|d| d.as_secs_f64()),
        "last_rows": report.last_rows,
        "last_errors": errors,
        "restarts": report.restarts,
        "next_due": epoch(report.next_due),
        "skipped": report.skipped,
        "tls": report.tls,
    })
    .to_string()
}

fn json_string(s: &str) -> String {
    // Serialising a `str` cannot fail; fall back to an empty string anyway.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// An owned copy of `s` of at most `max` bytes, ending with `...` if cut.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut out = truncate(s, max.saturating_sub(3)).to_owned();
    out.push_str("...");
    out
}
