//! The Prometheus metrics, in one registry (prometheus-client).
//!
//! Per-server families carry `srvid` and `server` (the name the status
//! shows: alias or `host:port`). They are fed where reports reach the status
//! actor ([`Metrics::report`], [`Metrics::snapshot_failed`],
//! [`Metrics::forget`]), so the snapshot actors need no metrics code; a
//! retired server's series are removed. Fleet-wide values (readiness,
//! snapshot slots, process) are read at scrape time by [`Dynamic`].
//! Encoding reads atomics and takes each family's lock briefly: a scrape
//! never waits on an actor.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::gate::Gate;
use crate::membership::FleetView;
use crate::probes::Readiness;
use crate::server::SrvId;
use crate::status::{WorkerReport, WorkerState};

/// Reads a counter kept elsewhere (the binary's log lines dropped).
type CountSource = Box<dyn Fn() -> u64 + Send + Sync>;

/// Upper bounds of the snapshot duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A label value escaped as the exposition formats require (`\`, `"` and
/// newlines), whatever an alias contains. The client library writes label
/// values as they are.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Escaped(pub String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&escape_label_value(&self.0))
    }
}

pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    srvid: i64,
    server: Escaped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    srvid: i64,
    server: Escaped,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    status: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.into_iter())
}

/// The counters of a server's last report.
struct Seen {
    name: String,
    restarts: u32,
    skipped: u64,
    last_snapshot: Option<SystemTime>,
}

/// A cloneable handle on the registry and its families.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    server_up: Family<ServerLabels, Gauge>,
    snapshots: Family<OutcomeLabels, Counter>,
    duration: Family<ServerLabels, Histogram, fn() -> Histogram>,
    last_snapshot: Family<ServerLabels, FloatGauge>,
    lag: Family<ServerLabels, FloatGauge>,
    rows: Family<ServerLabels, Counter>,
    restarts: Family<ServerLabels, Counter>,
    commands: Family<CommandLabels, Counter>,
    reload_ok: Gauge,
    reload_time: FloatGauge,
    /// What the last report of each server said, for the counters'
    /// differences and the label set its series carry now.
    seen: Mutex<HashMap<SrvId, Seen>>,
    gate: Arc<OnceLock<Gate>>,
    readiness: Arc<OnceLock<Readiness>>,
    log_drops: Arc<OnceLock<CountSource>>,
    fleet: Arc<OnceLock<FleetView>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let server_up = Family::<ServerLabels, Gauge>::default();
        let snapshots = Family::<OutcomeLabels, Counter>::default();
        let duration: Family<ServerLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        let last_snapshot = Family::<ServerLabels, FloatGauge>::default();
        let lag = Family::<ServerLabels, FloatGauge>::default();
        let rows = Family::<ServerLabels, Counter>::default();
        let restarts = Family::<ServerLabels, Counter>::default();
        let commands = Family::<CommandLabels, Counter>::default();
        let reload_ok = Gauge::default();
        let reload_time = FloatGauge::default();
        registry.register(
            "powa_fleet_build",
            "powa-fleet's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "powa_fleet_server_up",
            "1 while the server's worker is running (connected, on schedule)",
            server_up.clone(),
        );
        registry.register(
            "powa_fleet_snapshots",
            "Snapshots by outcome: ok (recorded), error (lost or refused), skipped (missed slots)",
            snapshots.clone(),
        );
        registry.register(
            "powa_fleet_snapshot_duration_seconds",
            "Duration of recorded snapshots",
            duration.clone(),
        );
        registry.register(
            "powa_fleet_last_snapshot_timestamp_seconds",
            "When the last recorded snapshot ended (Unix time)",
            last_snapshot.clone(),
        );
        registry.register(
            "powa_fleet_snapshot_lag_seconds",
            "How late the last snapshot started after its due time (waiting for a slot)",
            lag.clone(),
        );
        registry.register(
            "powa_fleet_rows_copied",
            "Rows copied from the server into the repository by recorded snapshots",
            rows.clone(),
        );
        registry.register(
            "powa_fleet_worker_restarts",
            "Restarts of the server's worker after a failure",
            restarts.clone(),
        );
        registry.register(
            "powa_fleet_commands",
            "NOTIFY commands answered, by command and answer status",
            commands.clone(),
        );
        registry.register(
            "powa_fleet_config_last_reload_successful",
            "1 if the last reload (configuration and server list) succeeded",
            reload_ok.clone(),
        );
        registry.register(
            "powa_fleet_config_last_reload_success_timestamp_seconds",
            "When the last successful reload (or the start-up load) happened (Unix time)",
            reload_time.clone(),
        );
        let gate = Arc::new(OnceLock::new());
        let readiness = Arc::new(OnceLock::new());
        let log_drops = Arc::new(OnceLock::new());
        let fleet = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(Dynamic {
            gate: gate.clone(),
            readiness: readiness.clone(),
            log_drops: log_drops.clone(),
            fleet: fleet.clone(),
        }));
        registry.register_collector(Box::new(Process));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                server_up,
                snapshots,
                duration,
                last_snapshot,
                lag,
                rows,
                restarts,
                commands,
                reload_ok,
                reload_time,
                seen: Mutex::new(HashMap::new()),
                gate,
                readiness,
                log_drops,
                fleet,
            }),
        }
    }

    /// Export `powa_fleet_log_lines_dropped_total` from this counter (set once).
    pub fn watch_log_drops(&self, count: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.inner.log_drops.set(Box::new(count));
    }

    /// Export the snapshot slots of this gate (set once).
    pub fn watch_gate(&self, gate: Gate) {
        let _ = self.inner.gate.set(gate);
    }

    /// Export this member's part in the fleet: its membership session,
    /// leadership and servers (set once).
    pub fn watch_fleet(&self, fleet: FleetView) {
        let _ = self.inner.fleet.set(fleet);
    }

    /// Export `repository_up` and `listener_up` from this readiness (set once).
    pub fn watch_readiness(&self, readiness: Readiness) {
        let _ = self.inner.readiness.set(readiness);
    }

    fn labels(&self, srvid: SrvId, name: &str) -> ServerLabels {
        ServerLabels {
            srvid: srvid.into(),
            server: Escaped(name.to_string()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<SrvId, Seen>> {
        self.inner.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove_series(&self, srvid: SrvId, name: &str) {
        let i = &self.inner;
        let labels = self.labels(srvid, name);
        i.server_up.remove(&labels);
        i.duration.remove(&labels);
        i.last_snapshot.remove(&labels);
        i.lag.remove(&labels);
        i.rows.remove(&labels);
        i.restarts.remove(&labels);
        for outcome in ["ok", "error", "skipped"] {
            i.snapshots.remove(&OutcomeLabels {
                srvid: srvid.into(),
                server: Escaped(name.to_string()),
                outcome,
            });
        }
    }

    fn outcome(&self, srvid: SrvId, name: &str, outcome: &'static str) -> Counter {
        self.inner
            .snapshots
            .get_or_create(&OutcomeLabels {
                srvid: srvid.into(),
                server: Escaped(name.to_string()),
                outcome,
            })
            .clone()
    }

    /// A new report of one server. Counters grow by the difference with
    /// the last report seen here (not the status actor's copy, which a
    /// restart of that actor may lose): a report sent again counts nothing
    /// twice.
    pub fn report(&self, report: &WorkerReport) {
        let (srvid, name) = (report.srvid, report.name.as_str());
        let previous = {
            let mut seen = self.seen();
            let now = Seen {
                name: name.to_string(),
                restarts: report.restarts,
                skipped: report.skipped,
                last_snapshot: report.last_snapshot,
            };
            match seen.insert(srvid, now) {
                Some(old) if old.name != name => {
                    self.remove_series(srvid, &old.name);
                    None
                }
                old => old,
            }
        };
        let i = &self.inner;
        let labels = self.labels(srvid, name);
        i.server_up
            .get_or_create(&labels)
            .set((report.state == WorkerState::Running).into());
        // A worker started again (changed row) counts from zero again.
        let restarts = report.restarts
            - previous
                .as_ref()
                .map_or(0, |p| p.restarts.min(report.restarts));
        i.restarts.get_or_create(&labels).inc_by(restarts.into());
        let skipped = report.skipped
            - previous
                .as_ref()
                .map_or(0, |p| p.skipped.min(report.skipped));
        self.outcome(srvid, name, "skipped").inc_by(skipped);
        let ok = self.outcome(srvid, name, "ok");
        // Present from the start, at zero.
        self.outcome(srvid, name, "error");
        if let Some(lag) = report.last_lag {
            i.lag.get_or_create(&labels).set(lag.as_secs_f64());
        }
        let new_snapshot = report.last_snapshot.is_some()
            && report.last_snapshot != previous.and_then(|p| p.last_snapshot);
        if new_snapshot {
            ok.inc();
            i.rows.get_or_create(&labels).inc_by(report.last_rows);
            if let Some(d) = report.last_duration {
                i.duration.get_or_create(&labels).observe(d.as_secs_f64());
            }
        } else {
            // Present from the start, at zero.
            drop(i.rows.get_or_create(&labels));
            drop(i.duration.get_or_create(&labels));
        }
        if let Some(at) = report.last_snapshot {
            i.last_snapshot.get_or_create(&labels).set(unix_seconds(at));
        }
    }

    /// A snapshot of this server was lost or refused by the repository.
    pub fn snapshot_failed(&self, srvid: SrvId) {
        let name = self.seen().get(&srvid).map(|s| s.name.clone());
        if let Some(name) = name {
            self.outcome(srvid, &name, "error").inc();
        }
    }

    /// The server left the fleet: its series go.
    pub fn forget(&self, srvid: SrvId) {
        let seen = self.seen().remove(&srvid);
        if let Some(seen) = seen {
            self.remove_series(srvid, &seen.name);
        }
    }

    /// A NOTIFY command was answered with `status` (`OK`, `ERROR`, …).
    pub fn command(&self, command: &'static str, status: &'static str) {
        self.inner
            .commands
            .get_or_create(&CommandLabels { command, status })
            .inc();
    }

    /// A reload (or the start-up load) ended.
    pub fn reload(&self, ok: bool) {
        self.inner.reload_ok.set(ok.into());
        if ok {
            self.inner.reload_time.set(unix_seconds(SystemTime::now()));
        }
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text format 0.0.4, which most scrapers ask for.
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode_openmetrics())
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// OpenMetrics → Prometheus text 0.0.4: the client library writes
/// OpenMetrics only. The differences that matter to a 0.0.4 parser:
/// counters are declared by their sample name (`x_total`), info metrics
/// become gauges, and there is no `# UNIT` or `# EOF` line.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    // Families whose declared name differs from their samples' prefix.
    let renamed: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.rsplit_once(' '))
        .filter_map(|(name, kind)| match kind {
            "counter" => Some((name, "_total")),
            "info" => Some((name, "_info")),
            _ => None,
        })
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.rsplit_once(' ') {
                if let Some(suffix) = renamed.get(name) {
                    let kind = if kind == "info" { "gauge" } else { kind };
                    let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
                    continue;
                }
            }
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                if let Some(suffix) = renamed.get(name) {
                    let _ = writeln!(out, "# HELP {name}{suffix} {help}");
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Fleet-wide values read at scrape time.
struct Dynamic {
    gate: Arc<OnceLock<Gate>>,
    readiness: Arc<OnceLock<Readiness>>,
    log_drops: Arc<OnceLock<CountSource>>,
    fleet: Arc<OnceLock<FleetView>>,
}

impl std::fmt::Debug for Dynamic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dynamic")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Dynamic {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let readiness = self.readiness.get();
        let flag = |f: fn(&Readiness) -> bool| readiness.map_or(0, |r| f(r).into());
        gauge(
            &mut encoder,
            "powa_fleet_repository_up",
            "1 while the collector's session on the repository is connected",
            flag(Readiness::repository),
        )?;
        gauge(
            &mut encoder,
            "powa_fleet_listener_up",
            "1 while LISTEN powa_collector is active on the repository",
            flag(Readiness::listening),
        )?;
        let (running, waiting) = self.gate.get().map_or((0, 0), Gate::load);
        gauge(
            &mut encoder,
            "powa_fleet_snapshots_in_flight",
            "Snapshots running now (holding one of the fleet-wide slots)",
            running as i64,
        )?;
        gauge(
            &mut encoder,
            "powa_fleet_snapshot_slot_waiters",
            "Snapshots due and waiting for a slot",
            waiting as i64,
        )?;
        let view = self.fleet.get().map(FleetView::get).unwrap_or_default();
        gauge(
            &mut encoder,
            "powa_fleet_member_up",
            "1 while this member's membership session holds its locks on the repository",
            view.pid.is_some().into(),
        )?;
        gauge(
            &mut encoder,
            "powa_fleet_member_leader",
            "1 while this member leads the fleet (answers fleet-wide requests)",
            (view.leader && view.pid.is_some()).into(),
        )?;
        gauge(
            &mut encoder,
            "powa_fleet_member_servers_owned",
            "Servers this member holds and collects",
            view.owned.len() as i64,
        )?;
        gauge(
            &mut encoder,
            "powa_fleet_members",
            "Live members sharing the fleet, as this member last saw them",
            view.members.len() as i64,
        )?;
        let dropped = ConstCounter::new(self.log_drops.get().map_or(0, |count| count()));
        dropped.encode(encoder.encode_descriptor(
            "powa_fleet_log_lines_dropped",
            "Log lines dropped because the log sink failed",
            None,
            dropped.metric_type(),
        )?)
    }
}

/// The standard process families, from `/proc/self` (Linux).
#[derive(Debug)]
struct Process;

/// The kernel's `USER_HZ`, the unit of `/proc` CPU times: 100 on every
/// architecture Linux exposes to user space.
const TICKS_PER_SECOND: f64 = 100.0;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return Ok(());
        };
        // Fields after the command name, which is in parentheses and may
        // hold spaces: state is field 3, utime 14, stime 15, starttime 22.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let cpu = ConstCounter::new((utime + stime) / TICKS_PER_SECOND);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            let g = ConstGauge::new(boot + start / TICKS_PER_SECOND);
            g.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                g.metric_type(),
            )?)?;
        }
        let rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            });
        if let Some(kb) = rss {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                kb * 1024,
            )?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            let open = dir.count().saturating_sub(1);
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                open as i64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(srvid: SrvId, name: &str) -> WorkerReport {
        WorkerReport::new(srvid, name.to_string())
    }

    #[test]
    fn series_follow_reports_and_go_with_the_server() {
        let m = Metrics::new();
        let r = report(3, "we\"ird\\alias\nx");
        m.report(&r);
        let mut next = r.clone();
        next.state = WorkerState::Running;
        next.last_snapshot = Some(UNIX_EPOCH + Duration::from_secs(1000));
        next.last_duration = Some(Duration::from_millis(300));
        next.last_rows = 42;
        next.restarts = 2;
        next.skipped = 1;
        m.report(&next);
        m.snapshot_failed(3);
        // The same report again (a status actor restarted, say) counts
        // nothing twice.
        m.report(&next);
        let text = m.encode_text();
        let labels = r#"srvid="3",server="we\"ird\\alias\nx""#;
        for line in [
            format!("powa_fleet_server_up{{{labels}}} 1"),
            format!("powa_fleet_rows_copied_total{{{labels}}} 42"),
            format!("powa_fleet_worker_restarts_total{{{labels}}} 2"),
            format!("powa_fleet_snapshots_total{{{labels},outcome=\"ok\"}} 1"),
            format!("powa_fleet_snapshots_total{{{labels},outcome=\"error\"}} 1"),
            format!("powa_fleet_snapshots_total{{{labels},outcome=\"skipped\"}} 1"),
            format!("powa_fleet_snapshot_duration_seconds_count{{{labels}}} 1"),
            format!("powa_fleet_last_snapshot_timestamp_seconds{{{labels}}} 1000.0"),
        ] {
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
        assert!(text.contains("# TYPE powa_fleet_snapshots_total counter"));
        assert!(text.contains("# TYPE powa_fleet_build_info gauge"));
        assert!(!text.contains("# EOF"));
        assert!(m.encode_openmetrics().ends_with("# EOF\n"));
        m.forget(3);
        let text = m.encode_text();
        assert!(!text.contains("srvid=\"3\""), "{text}");
    }

    #[test]
    fn a_renamed_server_keeps_only_its_new_series() {
        let m = Metrics::new();
        m.report(&report(1, "old:5432"));
        m.report(&report(1, "new:5432"));
        let text = m.encode_text();
        assert!(!text.contains("old:5432"), "{text}");
        assert!(text.contains("new:5432"), "{text}");
    }

    #[test]
    fn the_members_part_follows_its_view() {
        let m = Metrics::new();
        let text = m.encode_text();
        assert!(text.contains("powa_fleet_member_up 0"), "{text}");
        let fleet = FleetView::new("collector-1");
        m.watch_fleet(fleet.clone());
        fleet.update(|v| {
            v.pid = Some(42);
            v.leader = true;
            v.owned.extend([1, 2, 3]);
        });
        let text = m.encode_text();
        for line in [
            "powa_fleet_member_up 1",
            "powa_fleet_member_leader 1",
            "powa_fleet_member_servers_owned 3",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        // A lost membership session: no longer up, and no longer leading.
        fleet.update(|v| v.pid = None);
        let text = m.encode_text();
        assert!(text.contains("powa_fleet_member_up 0"), "{text}");
        assert!(text.contains("powa_fleet_member_leader 0"), "{text}");
    }

    #[test]
    fn process_families_are_there() {
        let text = Metrics::new().encode_text();
        for family in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "powa_fleet_log_lines_dropped_total 0",
        ] {
            assert!(text.contains(family), "{family} not in\n{text}");
        }
        let m = Metrics::new();
        m.watch_log_drops(|| 7);
        assert!(m
            .encode_text()
            .contains("powa_fleet_log_lines_dropped_total 7"));
    }
}
