//! A log file that can be reopened by path (SIGHUP, reload): logrotate
//! renames the file, then signals the daemon, which goes on in a new file
//! of the same name; no `copytruncate` needed, nothing lost.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A cloneable handle on the open file; writes go to whichever file is
/// open now.
#[derive(Clone)]
pub struct ReopenableFile {
    inner: Arc<Mutex<(PathBuf, File)>>,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl ReopenableFile {
    pub fn open(path: &Path) -> io::Result<ReopenableFile> {
        Ok(ReopenableFile {
            inner: Arc::new(Mutex::new((path.to_path_buf(), open(path)?))),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (PathBuf, File)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open `path` (the same one after a rotation, or a new one after a
    /// reload) and write there from now on. On error the current file is
    /// kept.
    pub fn reopen(&self, path: &Path) -> io::Result<()> {
        let file = open(path)?;
        let mut current = self.lock();
        let _ = current.1.flush();
        *current = (path.to_path_buf(), file);
        Ok(())
    }
}

impl Write for ReopenableFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().1.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.lock().1.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_file_is_reopened_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.log");
        let mut file = ReopenableFile::open(&path).unwrap();
        writeln!(file, "before").unwrap();
        std::fs::rename(&path, dir.path().join("fleet.log.1")).unwrap();
        writeln!(file, "still the old one").unwrap();
        file.reopen(&path).unwrap();
        writeln!(file, "after").unwrap();
        let old = std::fs::read_to_string(dir.path().join("fleet.log.1")).unwrap();
        assert_eq!(old, "before\nstill the old one\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert!(file.reopen(&dir.path().join("no/such/dir.log")).is_err());
        writeln!(file, "kept").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\nkept\n");
    }
}
