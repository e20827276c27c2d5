//! Running the powa-fleet binary against a fleet as a user would, and
//! talking to it the way powa-web does (LISTEN on a private channel, NOTIFY
//! the collector, wait for the answer).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::poll_fn;
use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

use crate::error::HarnessError;

/// A running `powa-fleet run`, killed when dropped.
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Daemon {
    /// Start `bin run` with a TOML configuration made of the repository DSN
    /// and `extra_toml` (more keys, tables after the top-level ones).
    pub fn start(
        bin: &Path,
        repository_dsn: &str,
        extra_toml: &str,
    ) -> Result<Daemon, HarnessError> {
        Daemon::start_with_env(bin, repository_dsn, extra_toml, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(
        bin: &Path,
        repository_dsn: &str,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Result<Daemon, HarnessError> {
        let dir = tempfile::tempdir().map_err(|e| HarnessError::io("creating a daemon dir", e))?;
        let config = write_config(dir.path(), repository_dsn, extra_toml)?;
        let log = dir.path().join("powa-fleet.log");
        let out = std::fs::File::create(&log)
            .map_err(|e| HarnessError::io("creating the daemon log", e))?;
        let err = out
            .try_clone()
            .map_err(|e| HarnessError::io("creating the daemon log", e))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| HarnessError::io("starting powa-fleet", e))?;
        Ok(Daemon { child, dir, log })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("powa-fleet.toml")
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), signal);
    }

    /// Still running?
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `powa-fleet.toml` in `dir`: `extra_toml` then the repository DSN.
fn write_config(
    dir: &Path,
    repository_dsn: &str,
    extra_toml: &str,
) -> Result<PathBuf, HarnessError> {
    let config = dir.join("powa-fleet.toml");
    let text = format!(
        "{extra_toml}\n[repository]\ndsn = \"{}\"\n",
        repository_dsn.replace('\\', "\\\\").replace('"', "\\\"")
    );
    std::fs::write(&config, text).map_err(|e| HarnessError::io("writing the daemon config", e))?;
    Ok(config)
}

/// What a one-shot command printed, and its exit code.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `bin --config <file> <args>` once, with the configuration the
/// daemon would get, HOME in a temporary directory, and libpq's TLS
/// variables unset unless `env` sets them.
pub fn run_command(
    bin: &Path,
    repository_dsn: &str,
    extra_toml: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<CommandOutput, HarnessError> {
    let dir = tempfile::tempdir().map_err(|e| HarnessError::io("creating a command dir", e))?;
    let config = write_config(dir.path(), repository_dsn, extra_toml)?;
    let output = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(args)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGSSLCERT")
        .env_remove("PGSSLKEY")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io("running powa-fleet", e))?;
    Ok(CommandOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static NEXT_CHANNEL: AtomicU32 = AtomicU32::new(1);

/// A repository session that sends commands and receives answers.
pub struct Requester {
    pub client: Client,
    notifications: mpsc::UnboundedReceiver<Notification>,
}

impl Requester {
    pub async fn connect(dsn: &str) -> Result<Requester, HarnessError> {
        let (client, mut connection) = tokio_postgres::connect(dsn, NoTls)
            .await
            .map_err(|e| HarnessError::sql("connecting to the repository", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut messages = poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    let _ = tx.send(n);
                }
            }
        });
        Ok(Requester {
            client,
            notifications: rx,
        })
    }

    /// A fresh channel name, like powa-web's `r12345`.
    pub fn new_channel() -> String {
        format!(
            "r{}_{}",
            std::process::id(),
            NEXT_CHANNEL.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Send a raw payload to the collector.
    pub async fn notify(&self, payload: &str) -> Result<(), HarnessError> {
        self.client
            .execute("SELECT pg_notify('powa_collector', $1)", &[&payload])
            .await
            .map_err(|e| HarnessError::sql("sending a command", e))?;
        Ok(())
    }

    /// LISTEN on `channel` (quoted as an identifier).
    pub async fn listen(&self, channel: &str) -> Result<(), HarnessError> {
        self.client
            .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
            .await
            .map_err(|e| HarnessError::sql("LISTEN", e))
    }

    /// The next notification on `channel` within `timeout`.
    pub async fn next_on(&mut self, channel: &str, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = tokio::time::timeout_at(deadline, self.notifications.recv())
                .await
                .ok()??;
            if n.channel() == channel {
                return Some(n.payload().to_string());
            }
        }
    }

    /// Ask as powa-web does: `COMMAND CHANNEL ARGS`, keep the first answer
    /// whose first word is the command.
    pub async fn ask(&mut self, command: &str, args: &str, timeout: Duration) -> Option<String> {
        let channel = Self::new_channel();
        self.listen(&channel).await.ok()?;
        let payload = if args.is_empty() {
            format!("{command} {channel}")
        } else {
            format!("{command} {channel} {args}")
        };
        self.notify(&payload).await.ok()?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = self.next_on(&channel, left).await?;
            if answer.split(' ').next() == Some(command) {
                return Some(answer);
            }
        }
    }
}

/// Poll `check` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
