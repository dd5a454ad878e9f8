//! The state file: written whole on every change (a temporary file beside it,
//! fsync, rename, fsync of the directory), so a crash leaves the old record or the
//! new one, never half of one.

use std::io::Write;
use std::path::Path;

use cutover_api::State;

use crate::state::Shared;

/// Writes `st` to the state file, when there is one. A failure is logged, not
/// returned: the change already took effect in memory, and refusing it now would
/// leave this replica unlike its peers.
pub fn save(shared: &Shared, st: &State) {
    let Some(path) = shared.fleet.settings.state_file.as_deref() else {
        return;
    };
    if let Err(e) = off_the_workers(|| write(path, st)) {
        shared.metrics.state_file_errors.inc();
        tracing::error!(file = %path.display(), epoch = st.epoch,
            "cannot write the state file: {e}; a restart would lose this change");
    }
}

/// Runs `f` (file writes and fsyncs, which can take a few hundred milliseconds on a
/// disk busy with a database's commits) so that the requests of the runtime worker
/// it was called on move to another worker meanwhile instead of waiting for it; on
/// a single-threaded runtime (`threads = 1`) there is no other worker, and `f` just
/// runs.
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn write(path: &Path, st: &State) -> std::io::Result<()> {
    let mut body = serde_json::to_vec_pretty(st).map_err(std::io::Error::other)?;
    body.push(b'\n');
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The state file's record; `None` when there is no file yet.
pub fn read(path: &Path) -> Result<Option<State>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the state file: {e}")),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("the state file is not a state record ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_written_state_reads_back_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("state.json");
        assert_eq!(read(&path).unwrap(), None);
        let st = State {
            epoch: 7,
            origin: "a".into(),
            replica: "a".into(),
            routes: BTreeMap::new(),
        };
        write(&path, &st).unwrap();
        assert_eq!(read(&path).unwrap(), Some(st));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        std::fs::write(&path, b"{\"epoch\":").unwrap();
        assert!(read(&path).unwrap_err().contains("not a state record"));
    }
}
