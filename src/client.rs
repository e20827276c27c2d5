//! Client commands (`status`, `reload`, `snapshot`): talk to a running
//! collector through the repository exactly as powa-web does — LISTEN on a
//! private channel, NOTIFY `powa_collector`, wait for the answer whose first
//! word is the command — keeping the session open until then, since the
//! collector checks the sender's role through it.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::stream::poll_fn;
use futures_util::StreamExt;
use powa_fleet_actors::connect::prepare_repository;
use powa_fleet_actors::settings::Settings;
use tokio_postgres::AsyncMessage;

/// No answer, or an `ERROR`/`UNKNOWN` answer.
const EXIT_NO_ANSWER: u8 = 3;
/// The repository cannot be reached.
const EXIT_RUNTIME: u8 = 1;

enum Outcome {
    /// The status word and the data of each answer (several for
    /// FLEET_STATUS, in order).
    Answer {
        status: String,
        data: Vec<String>,
    },
    NoAnswer,
}

/// `(part, parts)` of a `FLEET_STATUS` answer's data `"<part>/<parts> ..."`.
fn part_of(data: &str) -> Option<(usize, usize)> {
    let (counter, _) = data.split_once(' ')?;
    let (part, parts) = counter.split_once('/')?;
    Some((part.parse().ok()?, parts.parse().ok()?))
}

async fn ask(
    settings: &Settings,
    command: &str,
    args: &str,
    timeout: Duration,
) -> Result<Outcome, String> {
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
    let payload = format!("{command} {channel} {args}");
    client
        .execute(
            "SELECT pg_catalog.pg_notify('powa_collector', $1)",
            &[&payload.trim_end()],
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
        let mut words = n.payload().splitn(3, ' ');
        if words.next() != Some(command) {
            continue;
        }
        let status = words.next().unwrap_or_default().to_string();
        let data = words.next().unwrap_or_default().to_string();
        // A FLEET_STATUS answer comes in parts; anything else in one.
        let counted = (command == "FLEET_STATUS" && status == "OK")
            .then(|| part_of(&data))
            .flatten();
        collected.push(data);
        match counted {
            Some((_, parts)) if collected.len() < parts => continue,
            _ => {
                return Ok(Outcome::Answer {
                    status,
                    data: collected,
                })
            }
        }
    }
}

fn run(
    settings: &Settings,
    command: &str,
    args: &str,
    timeout: f64,
    show: impl FnOnce(&[String]),
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
    match runtime.block_on(ask(settings, command, args, timeout)) {
        Err(e) => {
            eprintln!("powa-fleet: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
        Ok(Outcome::NoAnswer) => {
            eprintln!(
                "powa-fleet: no collector answered {command} within {:.1}s \
                 (is it running against this repository?)",
                timeout.as_secs_f64()
            );
            ExitCode::from(EXIT_NO_ANSWER)
        }
        Ok(Outcome::Answer { status, data }) if status == "OK" => {
            show(&data);
            ExitCode::SUCCESS
        }
        Ok(Outcome::Answer { status, data }) => {
            let hint = if status == "UNKNOWN" {
                " (the collector is not powa-fleet?)"
            } else {
                ""
            };
            eprintln!("powa-fleet: {command} {status}: {}{hint}", data.join(" "));
            ExitCode::from(EXIT_NO_ANSWER)
        }
    }
}

/// Every worker's details, whatever the fleet size: FLEET_STATUS answers
/// in as many parts as needed (WORKERS_STATUS, what powa-web asks, must fit
/// in one payload).
pub fn status(settings: &Settings, srvid: Option<i32>, json: bool, timeout: f64) -> ExitCode {
    let args = srvid.map(|s| s.to_string()).unwrap_or_default();
    run(settings, "FLEET_STATUS", &args, timeout, |parts| {
        let mut workers: Vec<serde_json::Value> = Vec::new();
        for part in parts {
            let array = part.split_once(' ').map_or("[]", |(_, a)| a);
            if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(array) {
                workers.extend(items);
            }
        }
        if json {
            println!("{}", serde_json::Value::Array(workers));
            return;
        }
        print_table(&workers);
    })
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
        "{:>6}  {:<24} {:<32} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>4}  LAST ERROR",
        "SRVID", "NAME", "STATE", "SNAPSHOT", "SECONDS", "LAG", "ROWS", "NEXT", "RESTARTS", "TLS"
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
            "{:>6}  {:<24} {:<32} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>4}  {}",
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
            error
        );
    }
}

pub fn reload(settings: &Settings, timeout: f64) -> ExitCode {
    run(settings, "RELOAD", "", timeout, |_| println!("reloaded"))
}

pub fn snapshot(settings: &Settings, srvid: i32, timeout: f64) -> ExitCode {
    run(
        settings,
        "FORCE_SNAPSHOT",
        &srvid.to_string(),
        timeout,
        |data| println!("{}", data.join(" ")),
    )
}
