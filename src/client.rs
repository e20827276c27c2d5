//! Client commands (`status`, `reload`, `snapshot`): talk to a running
//! collector through the repository exactly as powa-web does — LISTEN on a
//! private channel, NOTIFY `powa_collector`, wait for the answer whose first
//! word is the command — keeping the session open until then, since the
//! collector checks the sender's role through it.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::stream::poll_fn;
use futures_util::StreamExt;
use powa_fleet_actors::connect::{apply_common, repository_config};
use powa_fleet_actors::settings::Settings;
use tokio_postgres::{AsyncMessage, NoTls};

/// No answer, or an `ERROR`/`UNKNOWN` answer.
const EXIT_NO_ANSWER: u8 = 3;
/// The repository cannot be reached.
const EXIT_RUNTIME: u8 = 1;

enum Outcome {
    Answer { status: String, data: String },
    NoAnswer,
}

async fn ask(
    settings: &Settings,
    command: &str,
    args: &str,
    timeout: Duration,
) -> Result<Outcome, String> {
    let mut config =
        repository_config(settings.repository_dsn.expose()).map_err(|e| e.to_string())?;
    apply_common(&mut config, settings, "client");
    let (client, mut connection) = config
        .connect(NoTls)
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
    loop {
        let Ok(Some(n)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            return Ok(Outcome::NoAnswer);
        };
        if n.channel() != channel {
            continue;
        }
        let mut parts = n.payload().splitn(3, ' ');
        if parts.next() != Some(command) {
            continue;
        }
        let status = parts.next().unwrap_or_default().to_string();
        let data = parts.next().unwrap_or_default().to_string();
        return Ok(Outcome::Answer { status, data });
    }
}

fn run(
    settings: &Settings,
    command: &str,
    args: &str,
    timeout: f64,
    show: impl FnOnce(&str),
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
            eprintln!("powa-fleet: {command} {status}: {data}");
            ExitCode::from(EXIT_NO_ANSWER)
        }
    }
}

pub fn status(settings: &Settings, srvid: Option<i32>, json: bool, timeout: f64) -> ExitCode {
    let args = srvid.map(|s| s.to_string()).unwrap_or_default();
    run(settings, "WORKERS_STATUS", &args, timeout, |data| {
        if json {
            println!("{data}");
            return;
        }
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(data) {
            Ok(map) => {
                let mut rows: Vec<(i64, String)> = map
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.parse().unwrap_or(i64::MAX),
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect();
                rows.sort();
                println!("{:>6}  STATE", "SRVID");
                for (srvid, state) in rows {
                    println!("{srvid:>6}  {state}");
                }
            }
            Err(_) => println!("{data}"),
        }
    })
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
        |data| println!("{data}"),
    )
}
