//! The state file: the run's [`Record`], rewritten after every action so that a
//! controller that dies resumes where it stopped. Writes are atomic (a temp file in
//! the same directory, fsynced, renamed over the old one, then the directory
//! fsynced), so a crash leaves either the old state or the new one, never half.
//!
//! One run at a time: `cutover run` and `cutover abort` hold an exclusive lock on
//! `STATE.lock` for as long as they act. The lock is the kernel's (flock), so a
//! killed controller does not leave it behind.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::record::{RECORD_VERSION, Record};
use crate::error::Error;

/// `plan.toml` → `plan.state.json`, next to the plan.
pub fn default_path(plan: &Path) -> PathBuf {
    let stem = plan
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan".into());
    plan.with_file_name(format!("{stem}.state.json"))
}

/// Reads a state file; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Record>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Plan(format!(
                "cannot read the state file {}: {e}",
                path.display()
            )));
        }
    };
    let record: Record = serde_json::from_str(&text).map_err(|e| {
        Error::Plan(format!(
            "the state file {} is not a cutover run record ({e}); move it away to start over",
            path.display()
        ))
    })?;
    if record.version != RECORD_VERSION {
        return Err(Error::Plan(format!(
            "the state file {} has format version {}, this cutover writes {RECORD_VERSION}",
            path.display(),
            record.version
        )));
    }
    Ok(Some(record))
}

/// The state file of a run in progress, locked.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    _lock: File,
}

impl StateFile {
    /// Takes the run's lock; fails at once if another `cutover` holds it.
    pub fn lock(path: &Path) -> Result<StateFile, Error> {
        let lock_path = lock_path(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Plan(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::Plan(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Plan(format!(
                    "another cutover run or abort is using {} (its lock {} is held); \
                     stop it first (Ctrl-C saves its state)",
                    path.display(),
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Plan(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
        Ok(StateFile {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the record atomically.
    pub fn save(&self, record: &Record) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::Plan(format!("cannot encode the run state: {e}")))?;
        write_atomic(&self.path, &text)
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

/// Writes `bytes` to `path` through a temp file in the same directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::Plan(format!("cannot write {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_sits_next_to_the_plan() {
        assert_eq!(
            default_path(Path::new("/srv/plans/night.toml")),
            PathBuf::from("/srv/plans/night.state.json")
        );
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.state.json");
        let first = StateFile::lock(&path).unwrap();
        let err = StateFile::lock(&path).unwrap_err().to_string();
        assert!(err.contains("another cutover run"), "{err}");
        drop(first);
        StateFile::lock(&path).unwrap();
    }

    #[test]
    fn a_missing_state_file_is_none_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert!(load(&path).unwrap().is_none());
        std::fs::write(&path, "{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("s.json") && err.contains("start over"),
            "{err}"
        );
    }
}
