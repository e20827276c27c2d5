//! One throwaway PostgreSQL cluster: `initdb` in a temporary directory,
//! its own port on loopback, trust authentication for 127.0.0.0/8, and a
//! Unix socket inside the directory, so that clusters of parallel tests
//! never meet. Dropping the value stops the cluster and removes everything.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_postgres::{Client, NoTls};

use crate::error::HarnessError;
use crate::pgbin::PgBin;

/// How a cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Addresses it listens on (several loopback addresses make several
    /// distinct hosts for a simulated fleet; PostgreSQL accepts up to 64).
    pub listen_addresses: Vec<Ipv4Addr>,
    /// `shared_preload_libraries`.
    pub preload: Vec<String>,
    /// Raw `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// A fixed port; a free one is picked when `None`.
    pub port: Option<u16>,
    /// TLS (`ssl = on`) with this certificate; off when `None`.
    pub tls: Option<ServerTls>,
    /// `pg_hba.conf` TCP rules replacing initdb's and the default one
    /// (trust for every role from 127.0.0.0/8); the first matching rule
    /// wins. Unix-socket sessions stay trusted.
    pub hba: Option<Vec<String>>,
}

/// A server certificate, its key, and the CA clients certificates must
/// chain to (needed for `cert` authentication), as PEM text.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            listen_addresses: vec![Ipv4Addr::LOCALHOST],
            preload: Vec::new(),
            extra_conf: Vec::new(),
            port: None,
            tls: None,
            hba: None,
        }
    }
}

pub struct Cluster {
    bin: PgBin,
    // Declared last among the paths so it is removed after the stop.
    dir: tempfile::TempDir,
    data: PathBuf,
    host: String,
    port: u16,
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| HarnessError::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| HarnessError::io("finding a free port", e))
}

fn run(mut command: Command, what: &str) -> Result<Output, HarnessError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io(format!("running {what}"), e))?;
    if !output.status.success() {
        return Err(HarnessError::Command {
            command: what.to_string(),
            status: output.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(output)
}

impl Cluster {
    pub fn start(opts: ClusterOptions) -> Result<Cluster, HarnessError> {
        let bin = PgBin::from_env();
        let dir = tempfile::Builder::new()
            .prefix("powa-fleet-pg-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a cluster directory", e))?;
        if let Some((uid, gid)) = bin.postgres_user() {
            nix::unistd::chown(
                dir.path(),
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| HarnessError::Other(format!("chown of the cluster directory: {e}")))?;
        }
        let data = dir.path().join("data");
        let mut initdb = bin.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;

        let addresses: Vec<String> = opts
            .listen_addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        let mut conf = vec![
            format!("listen_addresses = '{}'", addresses.join(",")),
            format!("unix_socket_directories = '{}'", dir.path().display()),
            "shared_buffers = 16MB".to_string(),
            "max_connections = 200".to_string(),
            // Speed without lying about commits: synchronous_commit stays
            // on, so a killed cluster keeps every committed transaction.
            "fsync = off".to_string(),
            "full_page_writes = off".to_string(),
            "log_min_messages = warning".to_string(),
            "log_line_prefix = '%m [%p] %q%u@%d '".to_string(),
        ];
        if !opts.preload.is_empty() {
            conf.push(format!(
                "shared_preload_libraries = '{}'",
                opts.preload.join(",")
            ));
        }
        if let Some(tls) = &opts.tls {
            conf.extend(write_tls_files(&bin, &data, tls)?);
        }
        conf.extend(opts.extra_conf.iter().cloned());
        append(&data.join("postgresql.conf"), &conf.join("\n"))?;
        match &opts.hba {
            Some(rules) => {
                let text = format!("local all all trust\n{}\n", rules.join("\n"));
                let path = data.join("pg_hba.conf");
                std::fs::write(&path, text)
                    .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
            }
            None => append(&data.join("pg_hba.conf"), "host all all 127.0.0.0/8 trust")?,
        }

        let host = addresses[0].clone();
        let mut cluster = Cluster {
            bin,
            dir,
            data,
            host,
            port: 0,
        };
        // Parallel tests may grab the same free port between our check and
        // the postmaster's bind: try a few.
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = match opts.port {
                Some(port) => port,
                None => free_port()?,
            };
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
            if opts.port.is_some() {
                break;
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn pg_ctl_start(&self) -> Result<(), HarnessError> {
        let mut cmd = self.bin.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start");
        run(cmd, "pg_ctl start")
            .map(|_| ())
            .map_err(|e| HarnessError::Other(format!("{e}\nserver log:\n{}", self.log_tail(20))))
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), HarnessError> {
        let mut cmd = self.bin.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", mode, "stop"]);
        run(cmd, "pg_ctl stop").map(|_| ())
    }

    pub fn host(&self) -> String {
        self.host.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// libpq key=value connection string for `dbname`, as `postgres`.
    pub fn dsn(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.host, self.port
        )
    }

    /// A session on `dbname`, its connection driven by a tokio task.
    pub async fn client(&self, dbname: &str) -> Result<Client, HarnessError> {
        let (client, connection) = tokio_postgres::connect(&self.dsn(dbname), NoTls)
            .await
            .map_err(|e| HarnessError::sql(format!("connecting to {}", self.dsn(dbname)), e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Run SQL with psql (blocking); returns the unaligned, tuples-only output.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, HarnessError> {
        let mut child = Command::new(self.bin.psql())
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                dbname,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HarnessError::io("running psql", e))?;
        // Feed the script from another thread: psql's output could fill its
        // pipe while we are still writing, and both sides would wait.
        let mut stdin = child.stdin.take().expect("piped");
        let script = sql.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let output = child
            .wait_with_output()
            .map_err(|e| HarnessError::io("running psql", e))?;
        let written = writer.join().expect("writer thread");
        if !output.status.success() {
            return Err(HarnessError::Command {
                command: format!("psql on {}", self.dsn(dbname)),
                status: output.status,
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        written.map_err(|e| HarnessError::io("writing to psql", e))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Clean shutdown (`-m fast`).
    pub fn stop(&self) -> Result<(), HarnessError> {
        self.pg_ctl_stop("fast")
    }

    /// Crash-like shutdown (`-m immediate`).
    pub fn stop_immediate(&self) -> Result<(), HarnessError> {
        self.pg_ctl_stop("immediate")
    }

    /// Start again after a stop or a kill, on the same port.
    pub fn start_again(&self) -> Result<(), HarnessError> {
        self.pg_ctl_start()
    }

    pub fn restart(&self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start_again()
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The postmaster and its children (backends, auxiliary processes).
    fn processes(&self) -> Vec<i32> {
        let Some(postmaster) = self.postmaster_pid() else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<i32>().ok());
                if ppid == Some(postmaster) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    fn signal_all(&self, signal: Signal) {
        for pid in self.processes() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILL the postmaster and every backend, like a machine crash.
    pub fn kill(&self) {
        let pids = self.processes();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        // Wait until they are gone so that a restart finds the port free.
        for _ in 0..100 {
            if pids.iter().all(|p| kill(Pid::from_raw(*p), None).is_err()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
    }

    /// SIGSTOP every process of the cluster: a server that stops answering.
    pub fn freeze(&self) {
        self.signal_all(Signal::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal_all(Signal::SIGCONT);
    }
}

/// Server certificate files in the data directory, owned by the server's
/// user with the permissions PostgreSQL demands; the settings naming them.
fn write_tls_files(bin: &PgBin, data: &Path, tls: &ServerTls) -> Result<Vec<String>, HarnessError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)];
    if let Some(ca) = &tls.client_ca_pem {
        files.push(("client_ca.crt", ca));
    }
    for (name, text) in &files {
        let path = data.join(name);
        std::fs::write(&path, text)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
        if let Some((uid, gid)) = bin.postgres_user() {
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| HarnessError::Other(format!("chown of {}: {e}", path.display())))?;
        }
    }
    let mut conf = vec![
        "ssl = on".to_string(),
        "ssl_cert_file = 'server.crt'".to_string(),
        "ssl_key_file = 'server.key'".to_string(),
    ];
    if tls.client_ca_pem.is_some() {
        conf.push("ssl_ca_file = 'client_ca.crt'".to_string());
    }
    Ok(conf)
}

fn append(path: &Path, text: &str) -> Result<(), HarnessError> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
    writeln!(file, "\n{text}")
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.postmaster_pid().is_some() {
            self.thaw();
            if self.stop_immediate().is_err() {
                self.kill();
            }
        }
    }
}
