//! Hot reload: watch the config file's directory, debounce, re-read and validate.
//!
//! The directory is watched rather than the file because a Kubernetes ConfigMap
//! update swaps a `..data` symlink and editors rename a new file over the old one;
//! both replace the directory entry, which a watch on the old inode would miss.
//! Events only trigger a read: a file whose bytes did not change is not reloaded,
//! and a slow poll backs up the watcher on filesystems that drop events.
//! Publishing the result is the caller's job.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::diag::ConfigError;
use crate::model::Config;

/// Tuning for [`watch`].
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time after the last event before the file is read.
    pub debounce: Duration,
    /// How often the file is re-read even without events.
    pub poll: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(50),
            poll: Duration::from_secs(2),
        }
    }
}

/// What a reload attempt produced.
#[derive(Debug)]
pub enum Reloaded {
    Loaded(Box<Config>),
    Failed(ConfigError),
}

/// Keeps the watch alive; dropping it stops watching.
pub struct ReloadHandle {
    _watcher: notify::RecommendedWatcher,
    force: mpsc::UnboundedSender<()>,
}

impl std::fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadHandle")
    }
}

impl ReloadHandle {
    /// Re-reads the file now, even if its bytes did not change (SIGHUP).
    pub fn force(&self) {
        let _ = self.force.send(());
    }

    /// A sender that triggers a forced reload, for signal handlers.
    pub fn forcer(&self) -> mpsc::UnboundedSender<()> {
        self.force.clone()
    }
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {dir} for config changes: {source}")]
pub struct WatchError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

/// Starts watching `path`; must be called inside a tokio runtime. `current` is the
/// text already loaded, so the first event that leaves the bytes unchanged is
/// ignored.
pub fn watch(
    path: &Path,
    current: &str,
    opts: WatchOptions,
) -> Result<(ReloadHandle, mpsc::Receiver<Reloaded>), WatchError> {
    let path = path.to_path_buf();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Errors from the backend also deserve a look at the file.
        let _ = res;
        let _ = event_tx.send(());
    })
    .map_err(|source| WatchError {
        dir: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError {
            dir: dir.clone(),
            source,
        })?;
    let (force_tx, force_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(16);
    let last = Some(digest(current.as_bytes()));
    tokio::spawn(run(path, opts, last, event_rx, force_rx, out_tx));
    Ok((
        ReloadHandle {
            _watcher: watcher,
            force: force_tx,
        },
        out_rx,
    ))
}

async fn run(
    path: PathBuf,
    opts: WatchOptions,
    mut last: Option<u64>,
    mut events: mpsc::UnboundedReceiver<()>,
    mut force: mpsc::UnboundedReceiver<()>,
    out: mpsc::Sender<Reloaded>,
) {
    let mut poll = tokio::time::interval(opts.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    loop {
        let forced = tokio::select! {
            ev = events.recv() => {
                if ev.is_none() {
                    return;
                }
                // Debounce: wait until the directory has been quiet for a while.
                loop {
                    match tokio::time::timeout(opts.debounce, events.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                false
            }
            f = force.recv() => {
                if f.is_none() {
                    return;
                }
                true
            }
            _ = poll.tick() => false,
        };
        let text = match tokio::fs::read(&path).await {
            Ok(t) => t,
            Err(source) => {
                // A missing file mid-swap is retried on the next event or poll.
                last = None;
                let e = ConfigError::Io {
                    path: path.clone(),
                    source,
                };
                if out.send(Reloaded::Failed(e)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let d = digest(&text);
        if !forced && last == Some(d) {
            continue;
        }
        last = Some(d);
        let outcome = match String::from_utf8(text) {
            Ok(text) => match Config::parse(&text, &path) {
                Ok(c) => Reloaded::Loaded(Box::new(c)),
                Err(e) => Reloaded::Failed(e),
            },
            Err(_) => Reloaded::Failed(ConfigError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
            }),
        };
        if out.send(outcome).await.is_err() {
            return;
        }
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}
