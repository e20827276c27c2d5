//! Where the PostgreSQL programs are, and who runs them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::HarnessError;

/// The environment variable naming another PostgreSQL bin directory (for
/// example a tree with PoWA 5 built in).
pub const BINDIR_ENV: &str = "POWAFLEET_PG_BINDIR";
const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// The exact command that installs what the harness needs on Debian.
pub const INSTALL_HINT: &str = "apt-get update && apt-get install -y postgresql-15 \
postgresql-15-powa postgresql-15-pg-qualstats postgresql-15-pg-stat-kcache postgresql-15-hypopg";

#[derive(Debug, Clone)]
pub struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    pub fn from_env() -> PgBin {
        let dir = std::env::var_os(BINDIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINDIR));
        PgBin { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }

    /// A command for `program`, run as the `postgres` system user when we
    /// are root (PostgreSQL refuses to run as root).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.path(program));
        if let Some((uid, gid)) = postgres_user() {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// The extension directory of this installation.
    pub fn share_dir(&self) -> Result<PathBuf, HarnessError> {
        let out = Command::new(self.path("pg_config"))
            .arg("--sharedir")
            .output()
            .map_err(|e| HarnessError::io("running pg_config --sharedir", e))?;
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

/// uid/gid of the `postgres` user when running as root.
pub fn postgres_user() -> Option<(u32, u32)> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres").ok().flatten()?;
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// Check that initdb and the powa extension are installed; the error names
/// the command that installs them.
pub fn require_binaries() -> Result<(), HarnessError> {
    let bin = PgBin::from_env();
    if !bin.path("initdb").exists() {
        return Err(HarnessError::Missing(format!(
            "PostgreSQL 15 is not installed ({} not found); run as root: {INSTALL_HINT}",
            bin.path("initdb").display()
        )));
    }
    let control = bin.share_dir()?.join("extension/powa.control");
    if !control.exists() {
        return Err(HarnessError::Missing(format!(
            "the PoWA extension is not installed ({} not found); run as root: {INSTALL_HINT}",
            control.display()
        )));
    }
    if nix::unistd::Uid::effective().is_root() && postgres_user().is_none() {
        return Err(HarnessError::Missing(
            "running as root needs the postgres system user; install postgresql-15".into(),
        ));
    }
    Ok(())
}
