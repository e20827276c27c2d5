//! Logs: console (slog-term) or JSON lines (slog-json), to stderr or a
//! file, through an asynchronous drain. The level can change at run time
//! (on reload) without rebuilding loggers.
//!
//! Logging never stops collection: a log call never blocks on the sink and
//! never panics. When the sink cannot take a line (a full filesystem, a
//! queue filled by a stuck disk), the line is dropped and counted
//! ([`Logging::lines_dropped`]); stderr says so once, and again once lines
//! get through, with how many were lost.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use slog::{o, Drain, Level, Logger};

use crate::config::{ConfigError, LogFormat};

/// Lines queued for the log thread before new ones are dropped.
const QUEUE: usize = 4096;

/// A drain that passes records at or above a level that can change.
struct RuntimeLevel<D> {
    drain: D,
    level: Arc<AtomicUsize>,
}

impl<D: Drain> Drain for RuntimeLevel<D> {
    type Ok = Option<D::Ok>;
    type Err = D::Err;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<Self::Ok, Self::Err> {
        let current = Level::from_usize(self.level.load(Ordering::Relaxed)).unwrap_or(Level::Info);
        if record.level().is_at_least(current) {
            self.drain.log(record, values).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Lines lost, and whether the loss is being reported: shared by the
/// queue (full) and the sink (write error).
struct Losses {
    /// Where the lines go, for the stderr notes.
    target: String,
    dropped: AtomicU64,
    /// Lines dropped since the last note that lines get through again.
    failing: AtomicBool,
    since: AtomicU64,
}

impl Losses {
    fn drop_line(&self, why: &dyn std::fmt::Display) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.since.fetch_add(1, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            // Best effort: stderr may be the very sink that fails.
            let _ = writeln!(
                std::io::stderr(),
                "powa-fleet: cannot log to {}: {why}; dropping log lines until it works again",
                self.target
            );
        }
    }

    fn line_written(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            let lost = self.since.swap(0, Ordering::Relaxed);
            let _ = writeln!(
                std::io::stderr(),
                "powa-fleet: logging to {} works again; {lost} log lines were dropped",
                self.target
            );
        }
    }
}

/// The formatter's writer: keeps one record and writes it whole when the
/// formatter flushes at its end; a failed write drops that line instead
/// of returning an error (slog's `Fuse` would panic on it).
struct LineSink {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    losses: Arc<Losses>,
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        match self
            .out
            .write_all(&self.line)
            .and_then(|_| self.out.flush())
        {
            Ok(()) => self.losses.line_written(),
            Err(e) => self.losses.drop_line(&e),
        }
        self.line.clear();
        Ok(())
    }
}

/// The asynchronous queue, never waiting: a full queue drops the line.
struct NonBlocking {
    core: slog_async::AsyncCore,
    losses: Arc<Losses>,
}

impl Drain for NonBlocking {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        match self.core.log(record, values) {
            Ok(()) => {}
            Err(slog_async::AsyncError::Full) => self.losses.drop_line(&"the log queue is full"),
            Err(e) => self.losses.drop_line(&format_args!("{e:?}")),
        }
        Ok(())
    }
}

/// The root logger and its level control. Cloning shares both.
#[derive(Clone)]
pub struct Logging {
    pub logger: Logger,
    level: Arc<AtomicUsize>,
    losses: Arc<Losses>,
    // Flushes the asynchronous drain when the last clone goes.
    _guard: Arc<Mutex<Option<slog_async::AsyncGuard>>>,
}

impl Logging {
    pub fn new(
        level: Level,
        format: LogFormat,
        file: Option<&Path>,
    ) -> Result<Logging, ConfigError> {
        let (out, target): (Box<dyn Write + Send>, String) = match file {
            Some(path) => (
                Box::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| ConfigError::LogFile {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        })?,
                ),
                format!("log file {}", path.display()),
            ),
            None => (Box::new(std::io::stderr()), "stderr".to_string()),
        };
        let losses = Arc::new(Losses {
            target,
            dropped: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            since: AtomicU64::new(0),
        });
        let sink = LineSink {
            out,
            line: Vec::with_capacity(512),
            losses: losses.clone(),
        };
        // The sink never fails; `ignore_res` keeps a formatter error from
        // ever reaching a panicking `Fuse`.
        let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match format {
            LogFormat::Console => {
                let decorator = slog_term::PlainDecorator::new(sink);
                Box::new(slog_term::FullFormat::new(decorator).build().ignore_res())
            }
            LogFormat::Json => Box::new(
                slog_json::Json::new(sink)
                    .add_default_keys()
                    .set_flush(true)
                    .build()
                    .ignore_res(),
            ),
        };
        let (core, guard) = slog_async::AsyncCore::custom(drain)
            .chan_size(QUEUE)
            .blocking(false)
            .build_with_guard();
        let level_cell = Arc::new(AtomicUsize::new(level.as_usize()));
        let drain = RuntimeLevel {
            drain: NonBlocking {
                core,
                losses: losses.clone(),
            },
            level: level_cell.clone(),
        };
        Ok(Logging {
            logger: Logger::root(drain.ignore_res(), o!()),
            level: level_cell,
            losses,
            _guard: Arc::new(Mutex::new(Some(guard))),
        })
    }

    pub fn set_level(&self, level: Level) {
        self.level.store(level.as_usize(), Ordering::Relaxed);
    }

    /// Log lines dropped since start (sink failing or queue full), for
    /// `powa_fleet_log_lines_dropped_total`.
    #[cfg_attr(not(test), allow(dead_code))] // no metrics endpoint yet
    pub fn lines_dropped(&self) -> u64 {
        self.losses.dropped.load(Ordering::Relaxed)
    }

    /// Flush what is queued (before exiting).
    pub fn flush(&self) {
        if let Ok(mut guard) = self._guard.lock() {
            guard.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::info;

    #[test]
    fn a_log_file_that_cannot_be_written_costs_counted_lines_only() {
        // Every write to /dev/full fails with ENOSPC.
        for format in [LogFormat::Console, LogFormat::Json] {
            let logging = Logging::new(Level::Info, format, Some(Path::new("/dev/full"))).unwrap();
            for n in 0..10 {
                info!(logging.logger, "lost"; "n" => n);
            }
            logging.flush();
            assert_eq!(logging.lines_dropped(), 10);
        }
    }

    #[test]
    fn a_failing_sink_drops_counts_and_recovers() {
        let losses = Arc::new(Losses {
            target: "test".into(),
            dropped: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            since: AtomicU64::new(0),
        });
        struct Flaky(Arc<AtomicBool>, Arc<Mutex<Vec<u8>>>);
        impl Write for Flaky {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0.load(Ordering::Relaxed) {
                    return Err(std::io::Error::other("No space left on device"));
                }
                self.1.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let broken = Arc::new(AtomicBool::new(true));
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = LineSink {
            out: Box::new(Flaky(broken.clone(), written.clone())),
            line: Vec::new(),
            losses: losses.clone(),
        };
        let decorator = slog_term::PlainDecorator::new(sink);
        let logger = Logger::root(
            std::sync::Mutex::new(slog_term::FullFormat::new(decorator).build()).fuse(),
            o!(),
        );
        info!(logger, "lost"; "n" => 1);
        info!(logger, "lost"; "n" => 2);
        assert_eq!(losses.dropped.load(Ordering::Relaxed), 2);
        broken.store(false, Ordering::Relaxed);
        info!(logger, "kept");
        assert_eq!(losses.dropped.load(Ordering::Relaxed), 2);
        assert!(!losses.failing.load(Ordering::Relaxed));
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(text.contains("kept") && !text.contains("lost"), "{text}");
    }
}
