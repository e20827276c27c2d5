//! Fleet benchmarks: a simulated fleet on this machine (a repository and
//! remote clusters that each listen on many loopback addresses, every
//! (address, port) pair a distinct registered server), collected in turn by
//! powa-fleet and by the reference collector, and measured the same way:
//! the repository logs every committed snapshot (see
//! `powa_fleet_harness::simfleet`), the collector's CPU and memory come from
//! `/proc`, WORKERS_STATUS is asked as powa-web asks it.
//!
//! Usage (release build; BENCHMARKS.md has results):
//!   cargo bench --bench fleet -- compare [servers] [frequency] [window] [collectors]
//!   cargo bench --bench fleet -- datasource [statements] [comment_bytes] [collectors]
//!   cargo bench --bench fleet -- scale [servers] [frequency] [window] [collectors]
//!   cargo bench --bench fleet -- soak [servers] [frequency] [minutes]
//!   cargo bench --bench fleet -- scrape [servers] [frequency] [window]
//!   cargo bench --bench fleet -- members [servers] [frequency] [window] [kills] [limit]
//!   cargo bench --bench fleet -- smoke
//! Collectors, comma-separated: `fleet`, `fleet:limit=N`, `fleet:threads=N`,
//! `fleet:sslmode=MODE`, `fleet:bin=PATH` (another build of powa-fleet;
//! options combine: `fleet:limit=1:threads=1`),
//! `1.2.0` (Debian's package) or another version installed from PyPI
//! (e.g. `1.3.2`). Defaults: compare 100 30 90 fleet,1.3.2,1.2.0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use powa_fleet_harness::daemon::{Daemon, Requester};
use powa_fleet_harness::reference::{cpu_seconds, install_release, Reference};
use powa_fleet_harness::require_binaries;
use powa_fleet_harness::simfleet::{
    logged_snapshots, percentile, process_memory, repository_clock, LoggedSnapshot, ProcessMemory,
    SimFleet,
};

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");
/// Debian's reference collector.
const DEBIAN_REFERENCE: &str = "1.2.0";

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

#[derive(Clone, Debug)]
enum Collector {
    Fleet {
        limit: usize,
        threads: usize,
        sslmode: Option<String>,
        /// Another powa-fleet binary (an earlier build, to compare in one run).
        bin: Option<PathBuf>,
    },
    Reference(String),
}

impl Collector {
    fn parse(spec: &str) -> Collector {
        let Some(rest) = spec.strip_prefix("fleet") else {
            return Collector::Reference(spec.to_string());
        };
        let mut limit = 2;
        let mut threads = 0;
        let mut sslmode = None;
        let mut bin = None;
        for option in rest.split(':').filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("limit", n)) => limit = n.parse().expect("limit=N"),
                Some(("threads", n)) => threads = n.parse().expect("threads=N"),
                Some(("sslmode", mode)) => sslmode = Some(mode.to_string()),
                Some(("bin", path)) => bin = Some(PathBuf::from(path)),
                _ => panic!("unknown collector option {option:?}"),
            }
        }
        Collector::Fleet {
            limit,
            threads,
            sslmode,
            bin,
        }
    }

    fn name(&self) -> String {
        match self {
            Collector::Fleet {
                limit,
                threads,
                sslmode,
                bin,
            } => {
                let tls = sslmode
                    .as_ref()
                    .map_or(String::new(), |m| format!(" sslmode={m}"));
                let bin = bin
                    .as_ref()
                    .map_or(String::new(), |b| format!(" bin={}", b.display()));
                format!("powa-fleet limit={limit} threads={threads}{tls}{bin}")
            }
            Collector::Reference(v) => format!("powa-collector {v}"),
        }
    }

    fn start(&self, dsn: &str, cache: &Path) -> Running {
        match self {
            Collector::Fleet {
                limit,
                threads,
                sslmode,
                bin,
            } => {
                let mut config = format!(
                    "[snapshots]\nmax_concurrent = {limit}\nworker_threads = {threads}\n\
                     [log]\nlevel = \"warning\"\n"
                );
                if let Some(mode) = sslmode {
                    config.push_str(&format!("[remote]\nsslmode = \"{mode}\"\n"));
                }
                let bin = bin.as_deref().unwrap_or(Path::new(BIN));
                Running::Fleet(Daemon::start(bin, dsn, &config).unwrap())
            }
            Collector::Reference(v) if v == DEBIAN_REFERENCE => {
                Running::Reference(Reference::start(dsn).unwrap())
            }
            Collector::Reference(v) => {
                let root = install_release(v, cache).unwrap();
                Running::Reference(Reference::start_from(Some(&root), dsn).unwrap())
            }
        }
    }
}

enum Running {
    Fleet(Daemon),
    Reference(Reference),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Fleet(d) => d.pid() as u32,
            Running::Reference(r) => r.pid(),
        }
    }

    fn stop(self) {
        match self {
            Running::Fleet(mut d) => {
                d.signal(Signal::SIGTERM);
                d.wait_exit(Duration::from_secs(15));
            }
            Running::Reference(r) => drop(r),
        }
    }
}

/// WORKERS_STATUS round trips, asked every `every` until `stop` is set.
fn sample_status_latency(
    dsn: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<f64>, usize)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut requester = Requester::connect(&dsn).await.unwrap();
            let mut times = Vec::new();
            let mut unanswered = 0;
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                match requester
                    .ask("WORKERS_STATUS", "", Duration::from_secs(5))
                    .await
                {
                    Some(_) => times.push(asked.elapsed().as_secs_f64() * 1000.0),
                    None => unanswered += 1,
                }
                tokio::time::sleep(every).await;
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (times, unanswered)
        })
    })
}

/// What was measured over one window of a running collector.
struct Window {
    /// Repository clock at the window's start and end.
    from: f64,
    to: f64,
    /// Collector CPU seconds over the window.
    cpu: f64,
    memory: ProcessMemory,
    /// WORKERS_STATUS round trips (ms, sorted) and requests unanswered.
    latency: Vec<f64>,
    unanswered: usize,
    /// Every snapshot logged so far.
    log: Vec<LoggedSnapshot>,
}

/// Wait `window` seconds with WORKERS_STATUS asked every `every`.
fn measure_window(fleet: &SimFleet, pid: u32, window: u64, every: Duration) -> Window {
    let from = repository_clock(&fleet.repository).unwrap();
    let cpu_before = cpu_seconds(pid).unwrap_or(f64::NAN);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_status_latency(fleet.repository_dsn(), every, stop.clone());
    std::thread::sleep(Duration::from_secs(window));
    let to = repository_clock(&fleet.repository).unwrap();
    let cpu = cpu_seconds(pid).unwrap_or(f64::NAN) - cpu_before;
    let memory = process_memory(pid);
    stop.store(true, Ordering::Relaxed);
    let (latency, unanswered) = sampler.join().unwrap();
    Window {
        from,
        to,
        cpu,
        memory,
        latency,
        unanswered,
        log: logged_snapshots(&fleet.repository).unwrap(),
    }
}

/// What one collector did over one measured window.
struct WindowResult {
    done: usize,
    scheduled: f64,
    durations: Vec<f64>,
    /// Share of consecutive snapshots of a server `frequency ± 1 s` apart.
    on_rhythm: f64,
    /// Longest time any server went without a snapshot in the window.
    max_gap: f64,
    never: usize,
}

fn window_result(
    log: &[LoggedSnapshot],
    srvids: &[i32],
    frequency: f64,
    from: f64,
    to: f64,
) -> WindowResult {
    let mut durations = Vec::new();
    let mut gaps_total = 0;
    let mut gaps_on_rhythm = 0;
    let mut max_gap: f64 = 0.0;
    let mut never = 0;
    let mut done = 0;
    for srvid in srvids {
        let ends: Vec<f64> = log
            .iter()
            .filter(|s| s.srvid == *srvid)
            .map(|s| s.ended)
            .collect();
        for pair in ends.windows(2) {
            if pair[1] > from && pair[1] <= to {
                gaps_total += 1;
                if ((pair[1] - pair[0]) - frequency).abs() <= 1.0 {
                    gaps_on_rhythm += 1;
                }
            }
        }
        let inside: Vec<f64> = ends
            .iter()
            .copied()
            .filter(|t| *t > from && *t <= to)
            .collect();
        if inside.is_empty() {
            never += 1;
        }
        done += inside.len();
        let mut previous = from;
        for t in inside.iter().chain(std::iter::once(&to)) {
            max_gap = max_gap.max(t - previous);
            previous = *t;
        }
    }
    for s in log {
        if s.ended > from && s.ended <= to && srvids.contains(&s.srvid) {
            durations.push(s.ended - s.started);
        }
    }
    durations.sort_by(|a, b| a.partial_cmp(b).unwrap());
    WindowResult {
        done,
        scheduled: srvids.len() as f64 * (to - from) / frequency,
        durations,
        on_rhythm: gaps_on_rhythm as f64 / gaps_total.max(1) as f64,
        max_gap,
        never,
    }
}

/// Cold start, one period of warm-up, a measured window with WORKERS_STATUS
/// sampled all along, then RELOAD with a newly registered server.
fn compare(args: &[String]) {
    let servers: usize = arg(args, 0, 100);
    let frequency: i32 = arg(args, 1, 30);
    let window: u64 = arg(args, 2, 90);
    let collectors = collectors(args.get(3), "fleet,1.3.2,1.2.0");
    let cache = cache_dir();
    println!("compare: {servers} servers at {frequency}s, {window}s window after one period");
    // Reference collectors hold one repository session per server.
    let fleet = SimFleet::build(servers + 1, servers + 60, 2000, 0).unwrap();
    let srvids = fleet.register(0..servers, frequency).unwrap();
    let freq = frequency as f64;
    let mut rows = Vec::new();
    for collector in &collectors {
        fleet.reset().unwrap();
        RepositorySide::reset(&fleet);
        let start_clock = repository_clock(&fleet.repository).unwrap();
        let running = collector.start(&fleet.repository_dsn(), &cache);
        let pid = running.pid();
        std::thread::sleep(Duration::from_secs(2));
        let startup = process_memory(pid);
        std::thread::sleep(Duration::from_secs(frequency as u64 - 2));
        let repository_before = RepositorySide::read(&fleet);
        let profile = Profile::start(collector, pid, window);
        let Window {
            from,
            to,
            cpu,
            memory,
            latency,
            unanswered,
            log,
        } = measure_window(&fleet, pid, window, Duration::from_millis(500));
        let result = window_result(&log, &srvids, freq, from, to);
        RepositorySide::read(&fleet).print_against(
            &repository_before,
            &collector.name(),
            result.done,
        );
        if let Some(profile) = profile {
            profile.finish();
        }
        let first = log
            .iter()
            .filter(|s| s.ended > start_clock)
            .map(|s| s.ended - start_clock)
            .fold(f64::INFINITY, f64::min);
        let reload = reload_to_first_snapshot(&fleet, servers, frequency);
        running.stop();
        let row = Row {
            name: collector.name(),
            result,
            cpu_ms: 1000.0 * cpu,
            startup,
            memory,
            latency,
            unanswered,
            reload,
            first,
        };
        row.print_raw();
        rows.push(row);
    }
    println!();
    Row::print_table(&rows);
}

/// The repository's side of a window: CPU of the whole repository cluster
/// (every backend, autovacuum and the other auxiliary processes, those that
/// exited included: the postmaster's children time) and the PoWA staging
/// tables (`*_src_tmp`) as the statistics collector sees them.
struct RepositorySide {
    cpu: f64,
    staging_bytes: i64,
    staging_live: i64,
    staging_dead: i64,
    autovacuums: i64,
}

impl RepositorySide {
    /// Empty the staging tables, so that each collector starts from the
    /// same state (they only hold rows between a COPY and its snapshot).
    fn reset(fleet: &SimFleet) {
        fleet
            .repository
            .psql(
                "powa",
                "DO $$ DECLARE t regclass; BEGIN \
                   FOR t IN SELECT relid FROM pg_catalog.pg_stat_user_tables \
                            WHERE relname LIKE '%\\_src\\_tmp' LOOP \
                     EXECUTE pg_catalog.format('TRUNCATE %s', t); \
                   END LOOP; END $$;",
            )
            .unwrap();
    }

    fn read(fleet: &SimFleet) -> RepositorySide {
        let cpu = fleet
            .repository
            .postmaster_pid()
            .map_or(f64::NAN, |pid| cluster_cpu_seconds(pid as u32));
        // Statistics reach pg_stat_user_tables within a second or so.
        std::thread::sleep(Duration::from_millis(1500));
        let line = fleet
            .repository
            .psql(
                "powa",
                "SELECT coalesce(sum(pg_catalog.pg_total_relation_size(relid)), 0), \
                        coalesce(sum(n_live_tup), 0), coalesce(sum(n_dead_tup), 0), \
                        coalesce(sum(autovacuum_count), 0) \
                 FROM pg_catalog.pg_stat_user_tables WHERE relname LIKE '%\\_src\\_tmp';",
            )
            .unwrap_or_default();
        let fields: Vec<i64> = line
            .trim()
            .split('|')
            .map(|f| f.trim().parse().unwrap_or(-1))
            .collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or(-1);
        RepositorySide {
            cpu,
            staging_bytes: field(0),
            staging_live: field(1),
            staging_dead: field(2),
            autovacuums: field(3),
        }
    }

    fn print_against(&self, before: &RepositorySide, name: &str, done: usize) {
        println!(
            "raw repository {name}: cpu_window={:.0}ms cpu_per_snapshot={:.1}ms \
             staging bytes={:.1}MiB live={} dead={} (at window start {:.1}MiB, dead={}) \
             autovacuums={}",
            1000.0 * (self.cpu - before.cpu),
            1000.0 * (self.cpu - before.cpu) / done.max(1) as f64,
            self.staging_bytes as f64 / 1048576.0,
            self.staging_live,
            self.staging_dead,
            before.staging_bytes as f64 / 1048576.0,
            before.staging_dead,
            self.autovacuums - before.autovacuums,
        );
    }
}

/// CPU seconds of a postmaster and its children, live and exited.
fn cluster_cpu_seconds(postmaster: u32) -> f64 {
    // utime, stime, cutime, cstime: fields 14 to 17 of /proc/<pid>/stat.
    let ticks = |pid: u32, with_children: bool| -> Option<(u64, u32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ppid: u32 = rest.get(1)?.parse().ok()?;
        let fields = if with_children { 11..15 } else { 11..13 };
        let sum = rest[fields]
            .iter()
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        Some((sum, ppid))
    };
    let mut total = ticks(postmaster, true).map_or(0, |(t, _)| t);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some((t, ppid)) = ticks(pid, false) {
                if ppid == postmaster {
                    total += t;
                }
            }
        }
    }
    // USER_HZ is 100 on Linux.
    total as f64 / 100.0
}

/// `perf record` of a powa-fleet collector over the measured window, when
/// `POWAFLEET_BENCH_PERF` names an output directory (one file per
/// collector; `perf report -i FILE` reads it).
struct Profile(std::process::Child);

impl Profile {
    fn start(collector: &Collector, pid: u32, window: u64) -> Option<Profile> {
        let dir = std::env::var_os("POWAFLEET_BENCH_PERF")?;
        if !matches!(collector, Collector::Fleet { .. }) {
            return None;
        }
        let name: String = collector
            .name()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let output = Path::new(&dir).join(format!("{name}.perf.data"));
        std::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "997",
                "-g",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&output)
            .args(["--", "sleep", &window.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map(Profile)
            .ok()
    }

    fn finish(mut self) {
        let _ = self.0.wait();
    }
}

/// Register address `index`, send RELOAD, and time its first snapshot.
fn reload_to_first_snapshot(fleet: &SimFleet, index: usize, frequency: i32) -> Option<f64> {
    let srvid = fleet.register(index..index + 1, frequency).unwrap()[0];
    let asked = repository_clock(&fleet.repository).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dsn = fleet.repository_dsn();
    runtime.block_on(async {
        let requester = Requester::connect(&dsn).await.unwrap();
        requester
            .notify(&format!("RELOAD {}", Requester::new_channel()))
            .await
            .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(3 * frequency as u64 + 30);
    let mut taken = None;
    while Instant::now() < deadline {
        let log = logged_snapshots(&fleet.repository).unwrap();
        if let Some(s) = log.iter().find(|s| s.srvid == srvid && s.ended > asked) {
            taken = Some(s.ended - asked);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    fleet.unregister(srvid).unwrap();
    taken
}

struct Row {
    name: String,
    result: WindowResult,
    cpu_ms: f64,
    startup: ProcessMemory,
    memory: ProcessMemory,
    latency: Vec<f64>,
    unanswered: usize,
    reload: Option<f64>,
    first: f64,
}

impl Row {
    fn print_raw(&self) {
        let r = &self.result;
        println!(
            "raw {}: done={} scheduled={:.0} never={} on_rhythm={:.3} max_gap={:.1}s \
             first_snapshot_after={:.1}s durations p50={:.3} p90={:.3} max={:.3} \
             cpu_window={:.0}ms startup_rss={:.1}MiB rss={:.1}MiB peak={:.1}MiB threads={} \
             status n={} unanswered={} p50={:.2}ms p99={:.2}ms max={:.2}ms reload={:?}",
            self.name,
            r.done,
            r.scheduled,
            r.never,
            r.on_rhythm,
            r.max_gap,
            self.first,
            percentile(&r.durations, 0.5),
            percentile(&r.durations, 0.9),
            percentile(&r.durations, 1.0),
            self.cpu_ms,
            self.startup.rss_mib,
            self.memory.rss_mib,
            self.memory.peak_mib,
            self.memory.threads,
            self.latency.len(),
            self.unanswered,
            percentile(&self.latency, 0.5),
            percentile(&self.latency, 0.99),
            percentile(&self.latency, 1.0),
            self.reload,
        );
    }

    fn print_table(rows: &[Row]) {
        println!(
            "| collector | done/scheduled | done % | on rhythm % | max gap s | p50 s | p90 s \
             | CPU ms/snapshot | startup RSS MiB | peak RSS MiB | threads | status p50 ms \
             | status p99 ms | RELOAD→snapshot s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for row in rows {
            let r = &row.result;
            println!(
                "| {} | {}/{:.0} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} \
                 | {} | {:.2} | {:.2} | {} |",
                row.name,
                r.done,
                r.scheduled,
                100.0 * r.done as f64 / r.scheduled,
                100.0 * r.on_rhythm,
                r.max_gap,
                percentile(&r.durations, 0.5),
                percentile(&r.durations, 0.9),
                row.cpu_ms / r.done.max(1) as f64,
                row.startup.rss_mib,
                row.memory.peak_mib,
                row.memory.threads,
                percentile(&row.latency, 0.5),
                percentile(&row.latency, 0.99),
                row.reload.map_or("none".to_string(), |s| format!("{s:.1}")),
            );
        }
    }
}

/// Peak RSS while one server with a large datasource is snapshotted,
/// against the same collector on a server with a small one.
fn datasource(args: &[String]) {
    let statements: usize = arg(args, 0, 35_000);
    let comment: usize = arg(args, 1, 1024);
    let collectors = collectors(args.get(2), "fleet,1.3.2,1.2.0");
    let cache = cache_dir();
    println!("datasource: {statements} statements with {comment}-byte comments");
    let small = SimFleet::build(1, 100, 2000, 0).unwrap();
    let large = SimFleet::build(1, 100, statements, comment).unwrap();
    let size = large.remotes[0]
        .psql("powa", "SELECT sum(length(query)) FROM pg_stat_statements")
        .unwrap();
    println!("query text in pg_stat_statements: {} bytes", size.trim());
    println!("| collector | peak RSS small MiB | peak RSS large MiB | growth MiB |");
    println!("|---|---|---|---|");
    for collector in &collectors {
        let peaks: Vec<f64> = [&small, &large]
            .iter()
            .map(|fleet| {
                let srvid = fleet.register(0..1, 5).unwrap()[0];
                fleet.reset().unwrap();
                let running = collector.start(&fleet.repository_dsn(), &cache);
                let deadline = Instant::now() + Duration::from_secs(600);
                let mut peak = f64::NAN;
                while Instant::now() < deadline {
                    let log = logged_snapshots(&fleet.repository).unwrap();
                    peak = process_memory(running.pid()).peak_mib;
                    if log.iter().any(|s| s.srvid == srvid) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                running.stop();
                fleet.unregister(srvid).unwrap();
                peak
            })
            .collect();
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            collector.name(),
            peaks[0],
            peaks[1],
            peaks[1] - peaks[0]
        );
    }
}

/// Many servers registered, snapshots running: memory and WORKERS_STATUS.
fn scale(args: &[String]) {
    let servers: usize = arg(args, 0, 1000);
    let frequency: i32 = arg(args, 1, 300);
    let window: u64 = arg(args, 2, 60);
    let collectors = collectors(args.get(3), "fleet:threads=1,fleet");
    let cache = cache_dir();
    println!("scale: {servers} servers at {frequency}s, {window}s window after 30s");
    let fleet = SimFleet::build(servers, servers + 60, 200, 0).unwrap();
    let srvids = fleet.register(0..servers, frequency).unwrap();
    println!(
        "| collector | snapshots | CPU ms/snapshot | RSS MiB | peak RSS MiB | threads \
         | status n | status p50 ms | status p99 ms | status max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for collector in &collectors {
        fleet.reset().unwrap();
        let running = collector.start(&fleet.repository_dsn(), &cache);
        let pid = running.pid();
        std::thread::sleep(Duration::from_secs(30));
        let Window {
            from,
            to,
            cpu,
            memory,
            latency,
            log,
            ..
        } = measure_window(&fleet, pid, window, Duration::from_millis(200));
        let done = window_result(&log, &srvids, frequency as f64, from, to).done;
        running.stop();
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.2} | {:.2} | {:.2} |",
            collector.name(),
            done,
            1000.0 * cpu / done.max(1) as f64,
            memory.rss_mib,
            memory.peak_mib,
            memory.threads,
            latency.len(),
            percentile(&latency, 0.5),
            percentile(&latency, 0.99),
            percentile(&latency, 1.0),
        );
    }
}

/// One GET of `/metrics` over a plain TCP connection: (milliseconds, body bytes).
fn scrape_once(address: &str) -> Option<(f64, usize)> {
    use std::io::{Read, Write};
    let asked = Instant::now();
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let elapsed = asked.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then_some((elapsed, body.len()))
}

/// Many servers, the HTTP endpoint on: how long a scrape takes and how big
/// it is, and WORKERS_STATUS latency without and with a scrape a second.
fn scrape(args: &[String]) {
    let servers: usize = arg(args, 0, 1000);
    let frequency: i32 = arg(args, 1, 300);
    let window: u64 = arg(args, 2, 60);
    println!("scrape: {servers} servers at {frequency}s, two {window}s windows after 30s");
    let fleet = SimFleet::build(servers, servers + 60, 200, 0).unwrap();
    fleet.register(0..servers, frequency).unwrap();
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let config = format!("[log]\nlevel = \"warning\"\n[http]\nlisten = \"{address}\"\n");
    let mut daemon = Daemon::start(Path::new(BIN), &fleet.repository_dsn(), &config).unwrap();
    let pid = daemon.pid() as u32;
    std::thread::sleep(Duration::from_secs(30));
    let quiet = measure_window(&fleet, pid, window, Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        let address = address.clone();
        std::thread::spawn(move || {
            let mut scrapes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                if let Some(scrape) = scrape_once(&address) {
                    scrapes.push(scrape);
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            }
            scrapes
        })
    };
    let scraped = measure_window(&fleet, pid, window, Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().unwrap();
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(15));
    let mut times: Vec<f64> = scrapes.iter().map(|(ms, _)| *ms).collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let bytes = scrapes.last().map_or(0, |(_, b)| *b);
    println!(
        "scrapes n={} p50={:.2}ms p99={:.2}ms max={:.2}ms bytes={bytes}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0)
    );
    println!("| WORKERS_STATUS | n | unanswered | p50 ms | p99 ms | max ms | CPU s | RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, w) in [("no scrape", &quiet), ("a scrape every second", &scraped)] {
        println!(
            "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            w.latency.len(),
            w.unanswered,
            percentile(&w.latency, 0.5),
            percentile(&w.latency, 0.99),
            percentile(&w.latency, 1.0),
            w.cpu,
            w.memory.rss_mib,
        );
    }
}

/// A fault made to one remote cluster (all its servers) for a while.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Stopped in immediate mode, started again.
    Crash,
    /// Every process stopped with SIGSTOP, then SIGCONT.
    Freeze,
}

/// powa-fleet on many servers for a long time with random faults on the
/// remote clusters: RSS sampled all along, and every gap in a server's
/// snapshots longer than 1.5 periods must overlap a fault of its cluster.
fn soak(args: &[String]) {
    let servers: usize = arg(args, 0, 500);
    let frequency: i32 = arg(args, 1, 180);
    let minutes: u64 = arg(args, 2, 30);
    println!("soak: {servers} servers at {frequency}s for {minutes} min, random faults");
    let fleet = SimFleet::build(servers, 100, 200, 0).unwrap();
    let srvids = fleet.register(0..servers, frequency).unwrap();
    let collector = Collector::parse("fleet");
    let running = collector.start(&fleet.repository_dsn(), &cache_dir());
    let pid = running.pid();
    let started = repository_clock(&fleet.repository).unwrap();
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    // (cluster, fault, from, to) in repository clock seconds.
    let mut faults: Vec<(usize, Fault, f64, f64)> = Vec::new();
    let mut rss = Vec::new();
    let mut step = 0u64;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(30));
        step += 1;
        let memory = process_memory(pid);
        rss.push(memory.rss_mib);
        println!(
            "t={:>5}s rss={:.1}MiB peak={:.1}MiB",
            step * 30,
            memory.rss_mib,
            memory.peak_mib
        );
        // Every other step, one fault of 10 to 40 s on a random cluster.
        if step % 2 == 0 && Instant::now() + Duration::from_secs(60) < end {
            let cluster = rand_below(fleet.remotes.len() as u64, step) as usize;
            let fault = if rand_below(2, step * 7) == 0 {
                Fault::Crash
            } else {
                Fault::Freeze
            };
            let hold = Duration::from_secs(10 + rand_below(31, step * 13));
            let from = repository_clock(&fleet.repository).unwrap();
            let remote = &fleet.remotes[cluster];
            match fault {
                Fault::Crash => remote.stop_immediate().unwrap(),
                Fault::Freeze => remote.freeze(),
            }
            std::thread::sleep(hold);
            match fault {
                Fault::Crash => remote.start_again().unwrap(),
                Fault::Freeze => remote.thaw(),
            }
            let to = repository_clock(&fleet.repository).unwrap();
            println!("fault {fault:?} on cluster {cluster} for {:.0}s", to - from);
            faults.push((cluster, fault, from, to));
        }
    }
    let finished = repository_clock(&fleet.repository).unwrap();
    let alive = process_memory(pid).threads > 0;
    let peak = process_memory(pid).peak_mib;
    running.stop();

    // A server's cluster: addresses are handed out cluster by cluster.
    let per_cluster = powa_fleet_harness::simfleet::ADDRESSES_PER_REMOTE;
    let log = logged_snapshots(&fleet.repository).unwrap();
    let freq = frequency as f64;
    // After a fault, recovery may take the remaining backoff plus one period.
    let allowance = freq + 60.0;
    let mut done = 0;
    let mut gaps = 0;
    let mut own = 0;
    let mut collateral = 0;
    let mut unexplained = Vec::new();
    for (index, srvid) in srvids.iter().enumerate() {
        let cluster = index / per_cluster;
        let mut times: Vec<f64> = vec![started + freq];
        times.extend(log.iter().filter(|s| s.srvid == *srvid).map(|s| s.ended));
        done += times.len() - 1;
        times.push(finished);
        for pair in times.windows(2) {
            if pair[1] - pair[0] <= 1.5 * freq {
                continue;
            }
            gaps += 1;
            let during = |c: Option<usize>| {
                faults.iter().any(|(fc, _, from, to)| {
                    c.map_or(true, |c| *fc == c) && *from < pair[1] && to + allowance > pair[0]
                })
            };
            if during(Some(cluster)) {
                own += 1;
            } else if during(None) {
                // Slots held by a server that froze mid-snapshot, until
                // `timeouts.remote` gave it up.
                collateral += 1;
            } else {
                unexplained.push((*srvid, pair[0] - started, pair[1] - started));
            }
        }
    }
    let scheduled = servers as f64 * (finished - started) / freq;
    let first = rss.first().copied().unwrap_or(f64::NAN);
    let last = rss.last().copied().unwrap_or(f64::NAN);
    let max = rss.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "\nsoak: {done} snapshots of {scheduled:.0} scheduled, {} faults, {gaps} gaps longer \
         than 1.5 periods: {own} during a fault of the server's cluster, {collateral} during a \
         fault elsewhere, {} not explained by a fault; RSS first {first:.1} MiB, last \
         {last:.1} MiB, max {max:.1} MiB, peak {peak:.1} MiB; daemon alive at the end: {alive}",
        faults.len(),
        unexplained.len()
    );
    for (srvid, from, to) in unexplained.iter().take(20) {
        println!("unexplained gap: server {srvid} from t={from:.0}s to t={to:.0}s");
    }
}

/// A number below `n`, varied by `salt`, without a generator crate.
/// A member of a shared fleet, named, with the fleet-wide limit.
fn start_member(dsn: &str, name: &str, limit: usize) -> Daemon {
    let config = format!(
        "[snapshots]\nmax_concurrent = {limit}\n[log]\nlevel = \"warning\"\n\
         [member]\nname = \"{name}\"\n"
    );
    Daemon::start(Path::new(BIN), dsn, &config).unwrap()
}

/// Member name → the servers its membership session holds, from the
/// repository's `pg_locks` (key spaces of `actors/src/membership.rs`).
fn holdings(fleet: &SimFleet) -> BTreeMap<String, Vec<i32>> {
    let out = fleet
        .repository
        .psql(
            "powa",
            "SELECT substr(a.application_name, length('powa-fleet: member ') + 1), \
                    s.objid::int \
             FROM pg_locks m \
             JOIN pg_stat_activity a ON a.pid = m.pid \
             JOIN pg_locks s ON s.pid = m.pid AND s.locktype = 'advisory' \
                  AND s.objsubid = 2 AND s.classid = x'706f7702'::int::oid \
             WHERE m.locktype = 'advisory' AND m.objsubid = 2 \
               AND m.classid = x'706f7701'::int::oid AND m.objid = m.pid::oid",
        )
        .unwrap_or_default();
    let mut held: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for line in out.lines() {
        if let Some((name, srvid)) = line.rsplit_once('|') {
            if let Ok(srvid) = srvid.parse() {
                held.entry(name.to_string()).or_default().push(srvid);
            }
        }
    }
    held
}

/// Every one of `names` holds servers, and together they hold `srvids`.
fn settled(fleet: &SimFleet, names: &[String], srvids: &[i32]) -> bool {
    let held = holdings(fleet);
    let mut all: Vec<i32> = held.values().flatten().copied().collect();
    all.sort_unstable();
    let mut wanted = srvids.to_vec();
    wanted.sort_unstable();
    names
        .iter()
        .all(|n| held.get(n).is_some_and(|s| !s.is_empty()))
        && all == wanted
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    done()
}

/// The most snapshot transactions the repository logged in flight at one
/// instant between `from` and `to`, whichever member ran them.
fn most_in_flight(log: &[LoggedSnapshot], from: f64, to: f64) -> usize {
    let mut events: Vec<(f64, i32)> = log
        .iter()
        .filter(|s| s.ended > from && s.started < to)
        .flat_map(|s| [(s.started, 1), (s.ended, -1)])
        .collect();
    // At one instant, a commit before a start.
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in events {
        open += d;
        most = most.max(open);
    }
    most as usize
}

/// The closest two committed snapshots of one server after `from`.
fn closest_pair(log: &[LoggedSnapshot], from: f64) -> f64 {
    log.windows(2)
        .filter(|p| p[0].srvid == p[1].srvid && p[0].started > from)
        .map(|p| p[1].started - p[0].started)
        .fold(f64::INFINITY, f64::min)
}

/// One kill -9 of a member and what the repository saw after it.
struct Takeover {
    victim: String,
    servers: usize,
    /// Until the survivors' membership sessions held every server of the
    /// victim (polled in `pg_locks` every 250 ms).
    reclaimed: f64,
    /// Until every server of the victim had a new committed snapshot.
    snapshotted: f64,
    /// The latest of those snapshots past its due time (last snapshot
    /// before the kill plus one period).
    late: f64,
}

fn kill_one(
    fleet: &SimFleet,
    daemons: &mut [Daemon],
    names: &[String],
    victim: usize,
    frequency: f64,
) -> Option<Takeover> {
    let held = holdings(fleet).remove(&names[victim]).unwrap_or_default();
    let before = logged_snapshots(&fleet.repository).unwrap();
    let t_kill = repository_clock(&fleet.repository).unwrap();
    daemons[victim].signal(Signal::SIGKILL);
    let _ = daemons[victim].wait_exit(Duration::from_secs(5));
    let survivors: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n.clone())
        .collect();
    let mut reclaimed = None;
    let reclaimed_in_time = wait_until(Duration::from_secs(60), || {
        let now = holdings(fleet);
        let all = held.iter().all(|srvid| {
            survivors
                .iter()
                .any(|n| now.get(n).is_some_and(|s| s.contains(srvid)))
        });
        if all {
            reclaimed = Some(repository_clock(&fleet.repository).unwrap() - t_kill);
        }
        all
    });
    let mut first_after = BTreeMap::new();
    let snapshotted_in_time = wait_until(Duration::from_secs_f64(3.0 * frequency + 30.0), || {
        first_after.clear();
        for s in logged_snapshots(&fleet.repository).unwrap() {
            if s.ended > t_kill && held.contains(&s.srvid) {
                first_after.entry(s.srvid).or_insert(s.ended);
            }
        }
        first_after.len() == held.len()
    });
    if !(reclaimed_in_time && snapshotted_in_time) {
        eprintln!(
            "kill of {}: reclaimed after {reclaimed:?} s (within 60 s: {reclaimed_in_time}); \
             {} of {} servers snapshotted again",
            names[victim],
            first_after.len(),
            held.len()
        );
        return None;
    }
    let mut late = f64::NEG_INFINITY;
    let mut snapshotted: f64 = 0.0;
    for (srvid, ended) in &first_after {
        snapshotted = snapshotted.max(ended - t_kill);
        let last = before
            .iter()
            .filter(|s| s.srvid == *srvid && s.ended <= t_kill)
            .map(|s| s.ended)
            .fold(f64::NEG_INFINITY, f64::max);
        late = late.max(ended - (last + frequency));
    }
    Some(Takeover {
        victim: names[victim].clone(),
        servers: held.len(),
        reclaimed: reclaimed.unwrap_or(f64::NAN),
        snapshotted,
        late,
    })
}

/// Three members against one on the same fleet, with the same fleet-wide
/// limit: the schedule kept and the snapshots in flight over a window
/// (counts from the repository's log of committed snapshots), then
/// repeated kill -9 of one member: the takeover time of its servers.
fn members(args: &[String]) {
    let servers: usize = arg(args, 0, 300);
    let frequency: i32 = arg(args, 1, 30);
    let window: u64 = arg(args, 2, 60);
    let kills: usize = arg(args, 3, 10);
    let limit: usize = arg(args, 4, 2);
    let freq = frequency as f64;
    println!(
        "members: {servers} servers at {frequency}s, limit {limit} fleet-wide, \
         {window}s window after one period, {kills} kills"
    );
    let fleet = SimFleet::build(servers, servers + 60, 200, 0).unwrap();
    let srvids = fleet.register(0..servers, frequency).unwrap();
    let dsn = fleet.repository_dsn();
    println!(
        "| members | done/scheduled | done % | on rhythm % | max gap s | most in flight | \
         CPU ms/snapshot (all members) | closest pair s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut running = Vec::new();
    let mut names = Vec::new();
    for count in [1usize, 3] {
        fleet.reset().unwrap();
        names = (1..=count).map(|i| format!("m{i}")).collect();
        running = names
            .iter()
            .map(|n| start_member(&dsn, n, limit))
            .collect::<Vec<_>>();
        let start_clock = repository_clock(&fleet.repository).unwrap();
        assert!(
            wait_until(Duration::from_secs(60), || settled(&fleet, &names, &srvids)),
            "{count} members did not settle: {:?}",
            holdings(&fleet).keys().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_secs(frequency as u64 + 10));
        let pids: Vec<u32> = running.iter().map(|d| d.pid() as u32).collect();
        let cpu = || {
            pids.iter()
                .map(|p| cpu_seconds(*p).unwrap_or(0.0))
                .sum::<f64>()
        };
        let from = repository_clock(&fleet.repository).unwrap();
        let cpu_before = cpu();
        std::thread::sleep(Duration::from_secs(window));
        let to = repository_clock(&fleet.repository).unwrap();
        let cpu_used = cpu() - cpu_before;
        let log = logged_snapshots(&fleet.repository).unwrap();
        let result = window_result(&log, &srvids, freq, from, to);
        println!(
            "| {count} | {}/{:.0} | {:.1} | {:.1} | {:.1} | {} (limit {limit}) | {:.1} | {:.2} |",
            result.done,
            result.scheduled,
            100.0 * result.done as f64 / result.scheduled,
            100.0 * result.on_rhythm,
            result.max_gap,
            most_in_flight(&log, from, to),
            1000.0 * cpu_used / result.done.max(1) as f64,
            closest_pair(&log, start_clock),
        );
        if count == 1 {
            for d in running.drain(..) {
                Running::Fleet(d).stop();
            }
        }
    }

    // Repeated kill -9 of one member of three, each restarted once the
    // survivors took its servers over, and the fleet settled again.
    let kills_from = repository_clock(&fleet.repository).unwrap();
    let mut takeovers = Vec::new();
    println!("| kill | victim | servers held | reclaimed s | all snapshotted again s | latest past due s |");
    println!("|---|---|---|---|---|---|");
    for k in 0..kills {
        let victim = k % names.len();
        if !wait_until(Duration::from_secs(60), || settled(&fleet, &names, &srvids)) {
            eprintln!("kill {k}: the fleet did not settle before it");
        }
        // A few seconds for the hand-overs to the rejoined member to end.
        std::thread::sleep(Duration::from_secs(5));
        match kill_one(&fleet, &mut running, &names, victim, freq) {
            Some(t) => {
                println!(
                    "| {} | {} | {} | {:.2} | {:.1} | {:.1} |",
                    k + 1,
                    t.victim,
                    t.servers,
                    t.reclaimed,
                    t.snapshotted,
                    t.late
                );
                takeovers.push(t);
            }
            None => println!(
                "| {} | {} | - | not taken over in time | | |",
                k + 1,
                names[victim]
            ),
        }
        running[victim] = start_member(&dsn, &names[victim], limit);
    }
    let log = logged_snapshots(&fleet.repository).unwrap();
    let to = repository_clock(&fleet.repository).unwrap();
    for d in running.drain(..) {
        Running::Fleet(d).stop();
    }
    let sorted = |f: fn(&Takeover) -> f64| {
        let mut v: Vec<f64> = takeovers.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    println!(
        "\ntakeovers: {} of {kills} within the bounds",
        takeovers.len()
    );
    println!("| measure | median s | p90 s | max s |");
    println!("|---|---|---|---|");
    for (what, values) in [
        ("servers reclaimed (pg_locks)", sorted(|t| t.reclaimed)),
        ("every server snapshotted again", sorted(|t| t.snapshotted)),
        ("latest snapshot past its due time", sorted(|t| t.late)),
    ] {
        println!(
            "| {what} | {:.2} | {:.2} | {:.2} |",
            percentile(&values, 0.5),
            percentile(&values, 0.9),
            percentile(&values, 1.0)
        );
    }
    println!(
        "during the kills: most in flight {} (limit {limit}); closest two snapshots \
         of one server {:.2} s (half a period {:.1} s)",
        most_in_flight(&log, kills_from, to),
        closest_pair(&log, kills_from),
        freq / 2.0
    );
}

fn rand_below(n: u64, salt: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % n.max(1)
}

fn collectors(spec: Option<&String>, default: &str) -> Vec<Collector> {
    spec.map_or(default, |s| s.as_str())
        .split(',')
        .map(Collector::parse)
        .collect()
}

fn cache_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reference-releases");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    require_binaries().expect("PostgreSQL and PoWA installed");
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("compare") | None => compare(rest),
        Some("datasource") => datasource(rest),
        Some("scale") => scale(rest),
        Some("soak") => soak(rest),
        Some("scrape") => scrape(rest),
        Some("members") => members(rest),
        Some("smoke") => compare(&["4".into(), "5".into(), "10".into(), "fleet".into()]),
        Some(other) => {
            eprintln!(
                "unknown benchmark {other:?}: compare, datasource, scale, soak, scrape, members or smoke"
            );
            std::process::exit(2);
        }
    }
}
