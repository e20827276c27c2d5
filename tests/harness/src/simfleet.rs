//! A simulated fleet for benchmarks: remote clusters that each listen on
//! many loopback addresses, so that every (address, port) pair is a
//! distinct registered server, plus a log of every committed snapshot
//! written by the repository itself, so that any collector (powa-fleet or
//! the reference) is measured the same way.

use std::net::Ipv4Addr;

use crate::cluster::{Cluster, ClusterOptions};
use crate::error::HarnessError;
use crate::fleet::{register_server, remote_options, repository_options};
use crate::fleet::{setup_remote, setup_repository};
use crate::workload::workload_sql;

/// PostgreSQL accepts at most 64 listen addresses per cluster.
pub const ADDRESSES_PER_REMOTE: usize = 60;

/// One row per committed snapshot: `started` is the snapshot
/// transaction's start, `ended` its commit (a deferred trigger fires at
/// commit time). Both collectors run a snapshot as one transaction.
const SNAPSHOT_LOG: &str = "
CREATE TABLE public.bench_snapshots(srvid int, started timestamptz, ended timestamptz);
CREATE FUNCTION public.bench_log_snapshot() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.bench_snapshots VALUES (NEW.srvid, now(), clock_timestamp());
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER bench_log_snapshot AFTER UPDATE ON public.powa_snapshot_metas
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.snapts IS DISTINCT FROM OLD.snapts)
    EXECUTE FUNCTION public.bench_log_snapshot();
";

/// The `n`th distinct loopback address (127.0.0.2 and up).
pub fn loopback(n: usize) -> Ipv4Addr {
    let i = n + 1;
    Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 1)
}

pub struct SimFleet {
    pub repository: Cluster,
    pub remotes: Vec<Cluster>,
    /// Every (host, port) the remotes listen on, in registration order.
    pub addresses: Vec<(String, u16)>,
}

impl SimFleet {
    /// A repository allowing `repo_connections` sessions, and enough remote
    /// clusters for `servers` addresses, each with `statements` distinct
    /// statements padded with `comment_bytes`-byte comments.
    pub fn build(
        servers: usize,
        repo_connections: usize,
        statements: usize,
        comment_bytes: usize,
    ) -> Result<SimFleet, HarnessError> {
        let remotes_needed = servers.div_ceil(ADDRESSES_PER_REMOTE);
        std::thread::scope(|scope| {
            let repository = scope.spawn(|| {
                let mut opts = repository_options();
                opts.extra_conf
                    .push(format!("max_connections = {repo_connections}"));
                let cluster = Cluster::start(opts)?;
                setup_repository(&cluster)?;
                cluster.psql("powa", SNAPSHOT_LOG)?;
                Ok::<_, HarnessError>(cluster)
            });
            let remotes: Vec<_> = (0..remotes_needed)
                .map(|r| {
                    let first = r * ADDRESSES_PER_REMOTE;
                    let count = ADDRESSES_PER_REMOTE.min(servers - first);
                    scope.spawn(move || {
                        let cluster =
                            Cluster::start(remote_cluster_options(first, count, statements))?;
                        setup_remote(&cluster)?;
                        cluster.psql("powa", &workload_sql(statements, comment_bytes))?;
                        Ok::<_, HarnessError>(cluster)
                    })
                })
                .collect();
            let repository = repository.join().expect("setup thread panicked")?;
            let remotes = remotes
                .into_iter()
                .map(|h| h.join().expect("setup thread panicked"))
                .collect::<Result<Vec<_>, _>>()?;
            let mut addresses = Vec::new();
            for (r, cluster) in remotes.iter().enumerate() {
                let first = r * ADDRESSES_PER_REMOTE;
                let count = ADDRESSES_PER_REMOTE.min(servers - first);
                addresses.extend(
                    (first..first + count).map(|n| (loopback(n).to_string(), cluster.port())),
                );
            }
            Ok(SimFleet {
                repository,
                remotes,
                addresses,
            })
        })
    }

    pub fn repository_dsn(&self) -> String {
        self.repository.dsn("powa")
    }

    /// Register the addresses `range` with `frequency`; their srvids.
    pub fn register(
        &self,
        range: std::ops::Range<usize>,
        frequency: i32,
    ) -> Result<Vec<i32>, HarnessError> {
        self.addresses[range]
            .iter()
            .map(|(host, port)| register_server(&self.repository, host, *port, frequency, None))
            .collect()
    }

    /// Forget every snapshot logged and every `snapts`, so that the next
    /// collector starts cold, as on a fresh repository.
    pub fn reset(&self) -> Result<(), HarnessError> {
        self.repository.psql(
            "powa",
            "TRUNCATE public.bench_snapshots; \
             ALTER TABLE public.powa_snapshot_metas DISABLE TRIGGER bench_log_snapshot; \
             UPDATE public.powa_snapshot_metas SET snapts = '-infinity', errors = NULL; \
             ALTER TABLE public.powa_snapshot_metas ENABLE TRIGGER bench_log_snapshot;",
        )?;
        Ok(())
    }

    /// Unregister `srvid` and drop its data.
    pub fn unregister(&self, srvid: i32) -> Result<(), HarnessError> {
        self.repository.psql(
            "powa",
            &format!("SELECT public.powa_delete_and_purge_server({srvid}) \\g /dev/null"),
        )?;
        Ok(())
    }
}

fn remote_cluster_options(first: usize, count: usize, statements: usize) -> ClusterOptions {
    let mut opts = remote_options();
    opts.listen_addresses = (first..first + count).map(loopback).collect();
    opts.extra_conf.push(format!(
        "pg_stat_statements.max = {}",
        (statements + 1000).max(30000)
    ));
    opts.extra_conf
        .push(format!("max_connections = {}", count * 2 + 20));
    opts
}

/// A committed snapshot, as the repository logged it (seconds since the
/// Unix epoch).
#[derive(Debug, Clone, Copy)]
pub struct LoggedSnapshot {
    pub srvid: i32,
    pub started: f64,
    pub ended: f64,
}

/// Every snapshot logged so far, by srvid then commit time.
pub fn logged_snapshots(repository: &Cluster) -> Result<Vec<LoggedSnapshot>, HarnessError> {
    let out = repository.psql(
        "powa",
        "COPY (SELECT srvid, extract(epoch FROM started), extract(epoch FROM ended) \
         FROM public.bench_snapshots ORDER BY srvid, ended) TO STDOUT",
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(LoggedSnapshot {
                srvid: f.next()?.parse().ok()?,
                started: f.next()?.parse().ok()?,
                ended: f.next()?.parse().ok()?,
            })
        })
        .collect())
}

/// The repository's clock, in seconds since the Unix epoch.
pub fn repository_clock(repository: &Cluster) -> Result<f64, HarnessError> {
    let out = repository.psql("powa", "SELECT extract(epoch FROM clock_timestamp())")?;
    out.trim()
        .parse()
        .map_err(|_| HarnessError::Other(format!("unexpected clock {out:?}")))
}

/// Memory and threads of a live process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessMemory {
    pub rss_mib: f64,
    pub peak_mib: f64,
    pub threads: u32,
}

pub fn process_memory(pid: u32) -> ProcessMemory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().trim_end_matches("kB").trim())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    ProcessMemory {
        rss_mib: field("VmRSS:") / 1024.0,
        peak_mib: field("VmHWM:") / 1024.0,
        threads: field("Threads:") as u32,
    }
}

/// The value below which a fraction `p` of `sorted` lies.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
