//! Logs: console (slog-term) or JSON lines (slog-json), to stderr or a
//! file, through an asynchronous drain that blocks rather than drop a line.
//! The level can change at run time (on reload) without rebuilding loggers.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use slog::{o, Drain, Level, Logger};

use crate::config::{ConfigError, LogFormat};
use crate::logfile::ReopenableFile;

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

/// The root logger and its level control. Cloning shares both.
#[derive(Clone)]
pub struct Logging {
    pub logger: Logger,
    level: Arc<AtomicUsize>,
    /// The log file, reopened at each reload (SIGHUP after a rotation).
    file: Option<ReopenableFile>,
    format: LogFormat,
    // Flushes the asynchronous drain when the last clone goes.
    _guard: Arc<Mutex<Option<slog_async::AsyncGuard>>>,
}

impl Logging {
    pub fn new(
        level: Level,
        format: LogFormat,
        file: Option<&Path>,
    ) -> Result<Logging, ConfigError> {
        let file = file
            .map(|path| {
                ReopenableFile::open(path).map_err(|e| ConfigError::LogFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let writer: Box<dyn std::io::Write + Send> = match &file {
            Some(file) => Box::new(file.clone()),
            None => Box::new(std::io::stderr()),
        };
        let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match format {
            LogFormat::Console => {
                let decorator = slog_term::PlainDecorator::new(writer);
                Box::new(slog_term::FullFormat::new(decorator).build().fuse())
            }
            LogFormat::Json => Box::new(
                slog_json::Json::new(writer)
                    .add_default_keys()
                    .build()
                    .fuse(),
            ),
        };
        let (drain, guard) = slog_async::Async::new(drain)
            .chan_size(4096)
            .overflow_strategy(slog_async::OverflowStrategy::Block)
            .build_with_guard();
        let level_cell = Arc::new(AtomicUsize::new(level.as_usize()));
        let drain = RuntimeLevel {
            drain: drain.fuse(),
            level: level_cell.clone(),
        };
        Ok(Logging {
            logger: Logger::root(drain.fuse(), o!()),
            level: level_cell,
            file,
            format,
            _guard: Arc::new(Mutex::new(Some(guard))),
        })
    }

    pub fn set_level(&self, level: Level) {
        self.level.store(level.as_usize(), Ordering::Relaxed);
    }

    /// Apply a reloaded `[log]` section: the file is reopened (by the same
    /// name after a rotation, or the new one). What cannot change without
    /// a restart (the format, stderr to a file or back) is returned.
    pub fn reload(
        &self,
        format: LogFormat,
        file: Option<&Path>,
    ) -> Result<Vec<&'static str>, String> {
        let mut restart = Vec::new();
        if format != self.format {
            restart.push("log.format");
        }
        match (&self.file, file) {
            (Some(current), Some(path)) => current
                .reopen(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?,
            (None, None) => {}
            _ => restart.push("log.file"),
        }
        Ok(restart)
    }

    /// Flush what is queued (before exiting).
    pub fn flush(&self) {
        if let Ok(mut guard) = self._guard.lock() {
            guard.take();
        }
    }
}
