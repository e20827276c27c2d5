//! Client commands (`status`, `reload`, `snapshot`): talk to a running
//! collector through the repository exactly as powa-web does — LISTEN on a
//! private channel, NOTIFY `powa_collector`, wait for the answer whose first
//! word is the command — keeping the session open until then, since the
//! collector checks the sender's role through it. The text of requests and
//! answers is the engine's `protocol` module's, as for the daemon.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::stream::poll_fn;
use futures_util::StreamExt;
use powa_fleet_actors::connect::prepare_repository;
use powa_fleet_actors::membership::{roster, Roster};
use powa_fleet_actors::protocol::{
    Answer, Command, CommandKind, FleetPart, ReplyTo, Request, Status, LISTEN_CHANNEL,
};
use powa_fleet_actors::settings::Settings;
use tokio_postgres::AsyncMessage;

/// No answer, or an `ERROR`/`UNKNOWN` answer.
const EXIT_NO_ANSWER: u8 = 3;
/// The repository cannot be reached.
const EXIT_RUNTIME: u8 = 1;

enum Outcome {
    /// The status and the data of each answer (several for
    /// FLEET_STATUS, in order).
    Answer {
        status: Status,
        data: Vec<String>,
        /// FLEET_STATUS: the members and who collects what, read from the
        /// repository once the answer is in.
        roster: Option<Roster>,
    },
    NoAnswer,
}

async fn ask(settings: &Settings, command: Command, timeout: Duration) -> Result<Outcome, String> {
    let kind = command.kind();
    let (config, tls) = prepare_repository(settings, "client").map_err(|e| e.to_string())?;
    let (client, mut connection) = config
        .connect(tls)
        .await
        .map_err(|e| format!("cannot connect to the repository: {e}"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n);
            }
        }
    });
    let channel = format!("powa_fleet_cli_{}", std::process::id());
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(|e| format!("LISTEN failed: {e}"))?;
    let payload = Request {
        reply_to: ReplyTo::Channel(channel.clone()),
        command,
    }
    .encode();
    client
        .execute(
            "SELECT pg_catalog.pg_notify($1, $2)",
            &[&LISTEN_CHANNEL, &payload],
        )
        .await
        .map_err(|e| format!("NOTIFY failed: {e}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut collected = Vec::new();
    loop {
        let Ok(Some(n)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            return Ok(Outcome::NoAnswer);
        };
        if n.channel() != channel {
            continue;
        }
        let Some(answer) = Answer::decode(n.payload()) else {
            continue;
        };
        if answer.command() != kind.as_str() {
            continue;
        }
        let status = answer.status();
        // A FLEET_STATUS answer comes in parts; anything else in one.
        let counted = (kind == CommandKind::FleetStatus && status == Status::Ok)
            .then(|| FleetPart::parse(answer.data()).map(|p| (p.part, p.parts)))
            .flatten();
        collected.push(answer.data().to_string());
        match counted {
            Some((_, parts)) if collected.len() < parts => continue,
            _ => {
                let roster = if kind == CommandKind::FleetStatus {
                    roster(&client).await.ok()
                } else {
                    None
                };
                return Ok(Outcome::Answer {
                    status,
                    data: collected,
                    roster,
                });
            }
        }
    }
}

fn run(
    settings: &Settings,
    command: Command,
    timeout: f64,
    show: impl FnOnce(&[String], Option<&Roster>),
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("powa-fleet: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let timeout = Duration::from_secs_f64(timeout.max(0.1));
    let command_word = command.kind();
    match runtime.block_on(ask(settings, command, timeout)) {
        Err(e) => {
            eprintln!("powa-fleet: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
        Ok(Outcome::NoAnswer) => {
            eprintln!(
                "powa-fleet: no collector answered {command_word} within {:.1}s \
                 (is it running against this repository?)",
                timeout.as_secs_f64()
            );
            ExitCode::from(EXIT_NO_ANSWER)
        }
        Ok(Outcome::Answer {
            status: Status::Ok,
            data,
            roster,
        }) => {
            show(&data, roster.as_ref());
            ExitCode::SUCCESS
        }
        Ok(Outcome::Answer { status, data, .. }) => {
            let hint = if status == Status::Unknown {
                " (the collector is not powa-fleet?)"
            } else {
                ""
            };
            eprintln!(
                "powa-fleet: {command_word} {status}: {}{hint}",
                data.join(" ")
            );
            ExitCode::from(EXIT_NO_ANSWER)
        }
    }
}

/// Every worker's details, whatever the fleet size: FLEET_STATUS answers
/// in as many parts as needed (WORKERS_STATUS, what powa-web asks, must fit
/// in one payload).
pub fn status(settings: &Settings, srvid: Option<i32>, json: bool, timeout: f64) -> ExitCode {
    run(
        settings,
        Command::FleetStatus { srvid },
        timeout,
        |parts, roster| {
            let mut workers: Vec<serde_json::Value> = Vec::new();
            for part in parts {
                let array = FleetPart::parse(part).map_or("[]", |p| p.items);
                if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(array) {
                    workers.extend(items);
                }
            }
            // Which member collects each server.
            if let Some(roster) = roster {
                for w in &mut workers {
                    let member = w["srvid"]
                        .as_i64()
                        .and_then(|id| i32::try_from(id).ok())
                        .and_then(|id| roster.member_of(id));
                    if let Some(object) = w.as_object_mut() {
                        object.insert("member".into(), member.into());
                    }
                }
            }
            if json {
                println!("{}", serde_json::Value::Array(workers));
                return;
            }
            print_table(&workers);
            if let Some(roster) = roster {
                print_members(roster);
            }
        },
    )
}

fn print_members(roster: &Roster) {
    println!();
    println!("{:<40} {:>8} {:>8}  ROLE", "MEMBER", "PID", "SERVERS");
    for m in &roster.members {
        let role = if roster.leader == Some(m.pid) {
            "leader"
        } else {
            ""
        };
        println!(
            "{:<40} {:>8} {:>8}  {role}",
            m.name,
            m.pid,
            roster.count_of(m)
        );
    }
}

fn print_table(workers: &[serde_json::Value]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let ago = |v: &serde_json::Value| match v.as_f64() {
        Some(t) => format!("{:.0}s ago", (now - t).max(0.0)),
        None => "never".to_string(),
    };
    let due = |v: &serde_json::Value| match v.as_f64() {
        Some(t) => format!("in {:.0}s", (t - now).max(0.0)),
        None => "-".to_string(),
    };
    println!(
        "{:>6}  {:<24} {:<32} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>4}  {:<20} LAST ERROR",
        "SRVID",
        "NAME",
        "STATE",
        "SNAPSHOT",
        "SECONDS",
        "LAG",
        "ROWS",
        "NEXT",
        "RESTARTS",
        "TLS",
        "MEMBER"
    );
    for w in workers {
        let text = |key: &str| w[key].as_str().unwrap_or_default().to_string();
        let error = w["last_errors"]
            .as_array()
            .and_then(|e| e.first())
            .and_then(|e| e.as_str())
            .unwrap_or("");
        let tls = match w["tls"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        println!(
            "{:>6}  {:<24} {:<32} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>4}  {:<20} {}",
            w["srvid"],
            text("name"),
            text("state"),
            ago(&w["last_snapshot"]),
            w["last_duration"]
                .as_f64()
                .map_or("-".to_string(), |d| format!("{d:.2}")),
            w["last_lag"]
                .as_f64()
                .map_or("-".to_string(), |d| format!("{d:.1}")),
            w["last_rows"],
            due(&w["next_due"]),
            w["restarts"],
            tls,
            w["member"].as_str().unwrap_or("-"),
            error
        );
    }
}

pub fn reload(settings: &Settings, timeout: f64) -> ExitCode {
    run(settings, Command::Reload, timeout, |_, _| {
        println!("reloaded")
    })
}

pub fn snapshot(settings: &Settings, srvid: i32, timeout: f64) -> ExitCode {
    run(
        settings,
        Command::ForceSnapshot { srvid },
        timeout,
        |data, _| println!("{}", data.join(" ")),
    )
}
