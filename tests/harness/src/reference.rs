//! The reference collector (Debian's `powa-collector`, or a release from
//! PyPI installed into a private directory), run beside powa-fleet in
//! compatibility tests and benchmarks. It only reads its JSON configuration
//! from fixed places; the launcher points that list at a private file
//! instead, leaving the system's file alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::HarnessError;

/// Where Debian installs the reference collector's Python package.
pub const PACKAGE_DIR: &str = "/usr/lib/python3/dist-packages/powa_collector";

const LAUNCHER: &str = "import sys\n\
import powa_collector.options as options\n\
options.CONF_LOCATIONS = [sys.argv[1]]\n\
from powa_collector import PowaCollector\n\
PowaCollector().main()\n";

/// A running reference collector, killed when dropped.
pub struct Reference {
    child: Child,
    dir: tempfile::TempDir,
}

/// The reference release compared with on PoWA 5 (per-database modules
/// and catalogs came with 1.3.0).
pub const POWA5_RELEASE: &str = "1.3.2";

impl Reference {
    /// Is the reference collector installed?
    pub fn available() -> bool {
        Path::new(PACKAGE_DIR).is_dir() && Path::new("/usr/bin/python3").exists()
    }

    /// Debian's release.
    pub fn start(repository_dsn: &str) -> Result<Reference, HarnessError> {
        Reference::start_from(None, repository_dsn)
    }

    /// The release installed in `package_root` (see [`install_release`]),
    /// or Debian's when `None`.
    pub fn start_from(
        package_root: Option<&Path>,
        repository_dsn: &str,
    ) -> Result<Reference, HarnessError> {
        let dir = tempfile::tempdir().map_err(|e| HarnessError::io("reference dir", e))?;
        let config = dir.path().join("powa-collector.conf");
        let json = format!(
            "{{\"repository\": {{\"dsn\": \"{}\"}}, \"debug\": false}}",
            repository_dsn.replace('\\', "\\\\").replace('"', "\\\"")
        );
        std::fs::write(&config, json).map_err(|e| HarnessError::io("reference config", e))?;
        let log = std::fs::File::create(dir.path().join("reference.log"))
            .map_err(|e| HarnessError::io("reference log", e))?;
        let err = log
            .try_clone()
            .map_err(|e| HarnessError::io("reference log", e))?;
        let mut command = Command::new("/usr/bin/python3");
        if let Some(root) = package_root {
            command.env("PYTHONPATH", root);
        }
        let child = command
            .args(["-c", LAUNCHER])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| HarnessError::io("starting the reference collector", e))?;
        Ok(Reference { child, dir })
    }

    /// The release that collects a PoWA `major` repository: Debian's on
    /// PoWA 4 (it knows no other), [`POWA5_RELEASE`] from PyPI, installed
    /// once under `cache`, on PoWA 5.
    pub fn start_for_powa(
        major: u32,
        repository_dsn: &str,
        cache: &Path,
    ) -> Result<Reference, HarnessError> {
        if major >= 5 {
            let root = install_release(POWA5_RELEASE, cache)?;
            Reference::start_from(Some(&root), repository_dsn)
        } else {
            Reference::start(repository_dsn)
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("reference.log")).unwrap_or_default()
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Install powa-collector `version` from PyPI into `dir` (once) for
/// Debian's Python, which has psycopg2; the directory to give
/// [`Reference::start_from`].
pub fn install_release(version: &str, dir: &Path) -> Result<PathBuf, HarnessError> {
    let root = dir.join(format!("powa-collector-{version}"));
    if root.join("powa_collector").is_dir() {
        return Ok(root);
    }
    let status = Command::new("/usr/bin/python3")
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
        .arg(&root)
        .arg(format!("powa-collector=={version}"))
        .status()
        .map_err(|e| HarnessError::io("running pip", e))?;
    if !status.success() {
        return Err(HarnessError::Other(format!(
            "pip could not install powa-collector {version} ({status})"
        )));
    }
    Ok(root)
}

/// CPU seconds a process's live threads have used so far, in nanosecond
/// precision (`/proc/<pid>/task/*/schedstat`; clock ticks are too coarse
/// for one snapshot).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut nanos: u64 = 0;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(nanos as f64 / 1e9)
}
