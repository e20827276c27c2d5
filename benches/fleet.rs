//! Fleet benchmark: a simulated fleet on this machine, collected by
//! powa-fleet at several snapshot concurrency limits, to choose the
//! default from measurement.
//!
//! The fleet: one repository and a few remote clusters, each listening on
//! several loopback addresses (127.0.0.2, 127.0.0.3, ...), so that every
//! (address, port) pair is a distinct registered server; about 2000
//! statements per remote. For each limit, the daemon runs for a window and
//! its log gives the snapshots taken and their durations.
//!
//! Usage: cargo bench --bench fleet -- [servers] [frequency_s] [window_s] [limits]
//! e.g.   cargo bench --bench fleet -- 60 15 45 1,2,4,8

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use powa_fleet_harness::daemon::Daemon;
use powa_fleet_harness::fleet::{
    register_server, remote_options, repository_options, setup_remote, setup_repository,
};
use powa_fleet_harness::reference::cpu_seconds;
use powa_fleet_harness::workload::workload_sql;
use powa_fleet_harness::{require_binaries, Cluster};

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");
/// PostgreSQL accepts at most 64 listen addresses per cluster.
const ADDRESSES_PER_REMOTE: usize = 32;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Durations (seconds) of the snapshots a daemon log reports.
fn snapshot_seconds(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("snapshot taken"))
        .filter_map(|l| {
            let start = l.find("seconds: ")? + "seconds: ".len();
            let rest = &l[start..];
            rest[..rest.find(',').unwrap_or(rest.len())]
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let servers: usize = arg(&args, 0, 60);
    let frequency: i32 = arg(&args, 1, 15);
    let window: u64 = arg(&args, 2, 45);
    let limits: Vec<usize> = args
        .get(3)
        .map(|l| l.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8]);
    require_binaries().expect("PostgreSQL and PoWA installed");

    let remotes_needed = servers.div_ceil(ADDRESSES_PER_REMOTE);
    println!("setting up {servers} servers on {remotes_needed} remote clusters...");
    let mut repo_opts = repository_options();
    repo_opts.extra_conf.push("max_connections = 300".into());
    let repository = Cluster::start(repo_opts).unwrap();
    setup_repository(&repository).unwrap();
    let mut remotes = Vec::new();
    for r in 0..remotes_needed {
        let mut opts = remote_options();
        let first = 2 + r * ADDRESSES_PER_REMOTE;
        opts.listen_addresses = (first..first + ADDRESSES_PER_REMOTE)
            .map(|i| Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 1))
            .collect();
        let cluster = Cluster::start(opts).unwrap();
        setup_remote(&cluster).unwrap();
        cluster.psql("powa", &workload_sql(2000, 0)).unwrap();
        remotes.push((cluster, first));
    }
    let mut registered = 0;
    'outer: for (cluster, first) in &remotes {
        for i in *first..*first + ADDRESSES_PER_REMOTE {
            if registered == servers {
                break 'outer;
            }
            let host = Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 1).to_string();
            register_server(&repository, &host, cluster.port(), frequency, None).unwrap();
            registered += 1;
        }
    }

    println!(
        "\n{servers} servers, frequency {frequency}s, window {window}s (after one period of warm-up)\n"
    );
    println!(
        "{:>6} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10} {:>9}",
        "limit", "snapshots", "scheduled", "done %", "p50 s", "p90 s", "CPU ms/sn", "peak MiB"
    );
    for limit in limits {
        let config = format!("[snapshots]\nmax_concurrent = {limit}\n[log]\nlevel = \"info\"\n");
        let mut daemon = Daemon::start(Path::new(BIN), &repository.dsn("powa"), &config).unwrap();
        let pid = daemon.pid() as u32;
        // Warm-up: one period, so every server has found its slot.
        std::thread::sleep(Duration::from_secs(frequency as u64));
        let warm_log = daemon.log();
        let skip = snapshot_seconds(&warm_log).len();
        let cpu_start = cpu_seconds(pid).unwrap_or(f64::NAN);
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(window));
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid).unwrap_or(f64::NAN) - cpu_start;
        let peak = peak_rss_mib(pid);
        let mut durations: Vec<f64> = snapshot_seconds(&daemon.log())[skip..].to_vec();
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        daemon.wait_exit(Duration::from_secs(15));
        durations.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let scheduled = servers as f64 * elapsed / frequency as f64;
        println!(
            "{:>6} {:>10} {:>10.0} {:>8.1} {:>8.3} {:>8.3} {:>10.1} {:>9.1}",
            limit,
            durations.len(),
            scheduled,
            100.0 * durations.len() as f64 / scheduled,
            percentile(&durations, 0.5),
            percentile(&durations, 0.9),
            1000.0 * cpu / durations.len().max(1) as f64,
            peak
        );
    }
}
