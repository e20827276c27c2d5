//! Which PostgreSQL and PoWA the clusters run: one switch for the whole
//! suite, so that the same tests run on every stack.
//!
//! - `POWAFLEET_STACK=pg15-powa4` (the default): Debian 12's PostgreSQL 15
//!   and PoWA 4.1, installed on the host.
//! - `POWAFLEET_STACK=pg17-powa5`: Debian 13's PostgreSQL 17 and PoWA 5, in
//!   a debootstrap root (`POWAFLEET_TRIXIE_ROOT`, default
//!   [`DEFAULT_TRIXIE_ROOT`]) that `tests/run` builds; its programs run
//!   under `chroot ROOT runuser -u postgres --`, with the host's `/tmp`
//!   bind-mounted on `ROOT/tmp` so that cluster paths are the same inside
//!   and out. Clusters listen on 127.0.0.x as on the host.
//! - `POWAFLEET_PG_BINDIR=DIR`: a PostgreSQL tree built by hand on the
//!   host (for example with PoWA 5.1), instead of a named stack.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::HarnessError;

pub const STACK_ENV: &str = "POWAFLEET_STACK";
pub const TRIXIE_ROOT_ENV: &str = "POWAFLEET_TRIXIE_ROOT";
pub const DEFAULT_TRIXIE_ROOT: &str = "/var/cache/powa-fleet/trixie";
/// Also in [`crate::pgbin::BINDIR_ENV`].
const BINDIR_ENV: &str = "POWAFLEET_PG_BINDIR";

const PG15_BINDIR: &str = "/usr/lib/postgresql/15/bin";
const PG17_BINDIR: &str = "/usr/lib/postgresql/17/bin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stack {
    /// Debian 12's PostgreSQL 15 and PoWA 4.1 on the host.
    Pg15Powa4,
    /// Debian 13's PostgreSQL 17 and PoWA 5 in the root `root`.
    Pg17Powa5 { root: PathBuf },
    /// A hand-built tree's bin directory on the host.
    BinDir(PathBuf),
}

impl Stack {
    /// The stack the environment selects.
    pub fn from_env() -> Result<Stack, HarnessError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Stack::select(
            var(STACK_ENV).as_deref(),
            var(BINDIR_ENV).map(PathBuf::from),
            var(TRIXIE_ROOT_ENV).map(PathBuf::from),
        )
    }

    fn select(
        stack: Option<&str>,
        bindir: Option<PathBuf>,
        trixie_root: Option<PathBuf>,
    ) -> Result<Stack, HarnessError> {
        match (stack, bindir) {
            (Some(name), Some(dir)) => Err(HarnessError::Other(format!(
                "{STACK_ENV}={name} and {BINDIR_ENV}={} both name the PostgreSQL to test: \
                 set one of them",
                dir.display()
            ))),
            (None, Some(dir)) => Ok(Stack::BinDir(dir)),
            (None | Some("pg15-powa4"), None) => Ok(Stack::Pg15Powa4),
            (Some("pg17-powa5"), None) => Ok(Stack::Pg17Powa5 {
                root: trixie_root.unwrap_or_else(|| PathBuf::from(DEFAULT_TRIXIE_ROOT)),
            }),
            (Some(other), None) => Err(HarnessError::Other(format!(
                "unknown {STACK_ENV} \"{other}\": pg15-powa4 or pg17-powa5"
            ))),
        }
    }

    /// The name `tests/run` and the messages use.
    pub fn name(&self) -> String {
        match self {
            Stack::Pg15Powa4 => "pg15-powa4".to_string(),
            Stack::Pg17Powa5 { .. } => "pg17-powa5".to_string(),
            Stack::BinDir(dir) => format!("{BINDIR_ENV}={}", dir.display()),
        }
    }

    /// The PostgreSQL bin directory, as the stack's own programs see it.
    pub fn bindir(&self) -> PathBuf {
        match self {
            Stack::Pg15Powa4 => PathBuf::from(PG15_BINDIR),
            Stack::Pg17Powa5 { .. } => PathBuf::from(PG17_BINDIR),
            Stack::BinDir(dir) => dir.clone(),
        }
    }

    /// The root the stack's programs run in, when not the host's.
    pub fn root(&self) -> Option<&Path> {
        match self {
            Stack::Pg17Powa5 { root } => Some(root),
            _ => None,
        }
    }

    /// What installs the stack, for error messages.
    pub fn install_hint(&self) -> String {
        match self {
            Stack::Pg15Powa4 => crate::pgbin::INSTALL_HINT.to_string(),
            Stack::Pg17Powa5 { root } => format!(
                "run `bash tests/run` as root with {STACK_ENV}=pg17-powa5, which builds the \
                 Debian 13 root {} and mounts /proc, /dev and /tmp in it",
                root.display()
            ),
            Stack::BinDir(dir) => format!("build PostgreSQL and PoWA into {}", dir.display()),
        }
    }

    /// A chroot stack is usable only with the host's `/tmp` on its `/tmp`
    /// (cluster directories are created on the host and used inside) and
    /// `/proc` mounted.
    pub fn check_mounts(&self) -> Result<(), HarnessError> {
        let Some(root) = self.root() else {
            return Ok(());
        };
        let same_tmp = match (
            std::fs::metadata("/tmp"),
            std::fs::metadata(root.join("tmp")),
        ) {
            (Ok(host), Ok(inside)) => host.dev() == inside.dev() && host.ino() == inside.ino(),
            _ => false,
        };
        if !same_tmp || !root.join("proc/self").exists() {
            return Err(HarnessError::Missing(format!(
                "the {} root {} lacks its mounts (/proc, /dev, and the host's /tmp on its /tmp); {}",
                self.name(),
                root.display(),
                self.install_hint()
            )));
        }
        Ok(())
    }
}

/// uid and gid of user `name` in a `passwd` file's text.
pub fn passwd_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || fields[0] != name {
            return None;
        }
        Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_names_one_stack() {
        assert_eq!(Stack::select(None, None, None).unwrap(), Stack::Pg15Powa4);
        assert_eq!(
            Stack::select(Some("pg15-powa4"), None, None).unwrap(),
            Stack::Pg15Powa4
        );
        assert_eq!(
            Stack::select(Some("pg17-powa5"), None, None).unwrap(),
            Stack::Pg17Powa5 {
                root: PathBuf::from(DEFAULT_TRIXIE_ROOT)
            }
        );
        let custom = Stack::select(Some("pg17-powa5"), None, Some("/r".into())).unwrap();
        assert_eq!(custom.root(), Some(Path::new("/r")));
        assert_eq!(custom.bindir(), PathBuf::from(PG17_BINDIR));
        let tree = Stack::select(None, Some("/opt/pg/bin".into()), None).unwrap();
        assert_eq!(tree, Stack::BinDir("/opt/pg/bin".into()));
        assert_eq!(tree.root(), None);
        let both = Stack::select(Some("pg17-powa5"), Some("/opt".into()), None).unwrap_err();
        assert!(both.to_string().contains("set one of them"), "{both}");
        let bad = Stack::select(Some("pg16"), None, None).unwrap_err();
        assert!(bad.to_string().contains("unknown POWAFLEET_STACK"), "{bad}");
    }

    #[test]
    fn passwd_ids_reads_the_named_user() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(passwd_ids(passwd, "postgres"), Some((101, 104)));
        assert_eq!(passwd_ids(passwd, "nobody"), None);
    }
}
