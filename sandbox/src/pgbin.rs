//! Where the PostgreSQL programs of the selected stack are, and who runs
//! them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::HarnessError;
use crate::stack::{passwd_ids, Stack};

/// The environment variable naming a hand-built PostgreSQL bin directory
/// (for example a tree with PoWA 5.1 built in) instead of a stack.
pub const BINDIR_ENV: &str = "POWAFLEET_PG_BINDIR";

/// The exact command that installs what the harness needs on Debian.
pub const INSTALL_HINT: &str = "apt-get update && apt-get install -y postgresql-15 \
postgresql-15-powa postgresql-15-pg-qualstats postgresql-15-pg-stat-kcache postgresql-15-hypopg";

#[derive(Debug, Clone)]
pub struct PgBin {
    /// The bin directory as the programs see it (inside `root`, if any).
    dir: PathBuf,
    /// The root the programs run in (`chroot`), when not the host's.
    root: Option<PathBuf>,
}

impl PgBin {
    /// The programs of the stack the environment selects (see
    /// [`crate::stack`]); an invalid selection panics with its reason,
    /// which [`require_binaries`] reports first.
    pub fn from_env() -> PgBin {
        let stack = Stack::from_env().unwrap_or_else(|e| panic!("{e}"));
        PgBin::for_stack(&stack)
    }

    pub fn for_stack(stack: &Stack) -> PgBin {
        PgBin {
            dir: stack.bindir(),
            root: stack.root().map(Path::to_path_buf),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `program` is, as the host sees it.
    pub fn path(&self, program: &str) -> PathBuf {
        self.host_path(&self.dir.join(program))
    }

    /// A path of the stack's file system, as the host sees it.
    fn host_path(&self, inside: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join(inside.strip_prefix("/").unwrap_or(inside)),
            None => inside.to_path_buf(),
        }
    }

    /// A command for `program`, run as the `postgres` system user when we
    /// are root (PostgreSQL refuses to run as root); in the stack's root
    /// when it has one (`chroot ROOT runuser -u postgres --`).
    pub fn command(&self, program: &str) -> Command {
        if let Some(root) = &self.root {
            let mut command = Command::new("chroot");
            command
                .arg(root)
                .args(["runuser", "-u", "postgres", "--"])
                .arg(self.dir.join(program));
            return command;
        }
        let mut command = Command::new(self.path(program));
        if let Some((uid, gid)) = self.postgres_user() {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// The psql to run as ourselves: the stack's when it runs on the host,
    /// else the host's (any psql talks to any server over TCP).
    pub fn psql(&self) -> PathBuf {
        let own = self.path("psql");
        if self.root.is_none() && own.exists() {
            own
        } else {
            PathBuf::from("psql")
        }
    }

    /// uid/gid of the `postgres` user that runs the server, when we are
    /// root: the host's, or the stack root's (another uid), whose files
    /// the server must own.
    pub fn postgres_user(&self) -> Option<(u32, u32)> {
        if !nix::unistd::Uid::effective().is_root() {
            return None;
        }
        match &self.root {
            Some(root) => {
                let passwd = std::fs::read_to_string(root.join("etc/passwd")).ok()?;
                passwd_ids(&passwd, "postgres")
            }
            None => {
                let user = nix::unistd::User::from_name("postgres").ok().flatten()?;
                Some((user.uid.as_raw(), user.gid.as_raw()))
            }
        }
    }

    /// The extension directory of this installation, as the host sees it.
    pub fn share_dir(&self) -> Result<PathBuf, HarnessError> {
        let out = self
            .command("pg_config")
            .arg("--sharedir")
            .output()
            .map_err(|e| HarnessError::io("running pg_config --sharedir", e))?;
        let inside = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(self.host_path(&inside))
    }
}

/// uid/gid of the `postgres` user that runs the selected stack's servers,
/// when running as root.
pub fn postgres_user() -> Option<(u32, u32)> {
    PgBin::from_env().postgres_user()
}

/// Check that the selected stack is there: initdb and the powa extension
/// installed, the chroot's mounts in place; the error names what installs
/// them.
pub fn require_binaries() -> Result<(), HarnessError> {
    let stack = Stack::from_env()?;
    let hint = stack.install_hint();
    let name = stack.name();
    let bin = PgBin::for_stack(&stack);
    if !bin.path("initdb").exists() {
        return Err(HarnessError::Missing(format!(
            "PostgreSQL of the {name} stack is not installed ({} not found); {hint}",
            bin.path("initdb").display()
        )));
    }
    stack.check_mounts()?;
    let control = bin.share_dir()?.join("extension/powa.control");
    if !control.exists() {
        return Err(HarnessError::Missing(format!(
            "the PoWA extension of the {name} stack is not installed ({} not found); {hint}",
            control.display()
        )));
    }
    if nix::unistd::Uid::effective().is_root() && bin.postgres_user().is_none() {
        return Err(HarnessError::Missing(format!(
            "running as root needs the postgres system user of the {name} stack; {hint}"
        )));
    }
    Ok(())
}
