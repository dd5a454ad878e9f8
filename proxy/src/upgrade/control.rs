//! The old process's side of an upgrade: the control socket, which answers a
//! takeover request with duplicates of this process's listening sockets and the
//! carried admin state, then waits until the successor serves.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{HELLO_TIMEOUT, Message, READY_TIMEOUT, Role, carry, encode, fds, read, write};
use crate::state::Shared;

/// Duplicates of this process's listening sockets, to hand to a successor; none
/// (and no upgrades) when the process is out of descriptors.
pub fn duplicates(listeners: &[(Role, &TcpListener)]) -> Option<Vec<(Role, OwnedFd)>> {
    let dups = listeners
        .iter()
        .map(|(role, l)| Ok((*role, l.as_fd().try_clone_to_owned()?)))
        .collect::<io::Result<Vec<_>>>();
    dups.map_err(|e| tracing::warn!(error = %e, "cannot duplicate the listening sockets; --upgrade will not work for this process"))
        .ok()
}

/// The control socket if it could be set up, and the handover it may bring.
pub struct Controlled {
    control: Option<Control>,
    handover: Option<oneshot::Receiver<HandedOver>>,
}

/// Starts the control socket at `path`. Serving matters more than being
/// upgradable, so a failure is logged and the process runs without one.
pub fn control(
    path: &Path,
    sockets: Option<Vec<(Role, OwnedFd)>>,
    shared: Arc<Shared>,
) -> Controlled {
    let Some(sockets) = sockets else {
        return Controlled {
            control: None,
            handover: None,
        };
    };
    match Control::start(path, sockets, shared) {
        Ok((control, rx)) => Controlled {
            control: Some(control),
            handover: Some(rx),
        },
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot listen on the control socket; --upgrade will not work for this process (set [proxy] control_socket to a writable path)");
            Controlled {
                control: None,
                handover: None,
            }
        }
    }
}

impl Controlled {
    /// Resolves when a successor has taken over and serves; never without a
    /// control socket.
    pub async fn handed_over(&mut self) -> HandedOver {
        if let Some(rx) = self.handover.as_mut() {
            if let Ok(h) = rx.await {
                return h;
            }
            // The control task ended without a handover; nothing more will come.
            self.handover = None;
        }
        std::future::pending().await
    }

    /// See [`Control::close`].
    pub async fn close(self) {
        if let Some(c) = self.control {
            c.close().await;
        }
    }
}

/// A successor that has taken over and serves; answer it once this process has
/// stopped accepting.
pub struct HandedOver {
    stream: UnixStream,
    pub pid: u32,
}

impl HandedOver {
    pub async fn confirm_stopped(mut self) {
        if let Err(e) = write(&mut self.stream, &Message::Stopped).await {
            tracing::warn!(error = %e, pid = self.pid, "could not confirm the stop to the new process");
        }
    }
}

/// This process's control socket: answers takeover requests with duplicates of
/// its listening sockets until one succeeds.
pub struct Control {
    path: PathBuf,
    /// (device, inode) of the socket file this process bound, so that it removes
    /// only its own file, never a successor's.
    identity: (u64, u64),
    task: JoinHandle<()>,
}

impl Control {
    /// Binds `path` (replacing a stale socket file, never a live one or anything
    /// that is not a socket). The first successful handover arrives on the
    /// receiver. Dropping or closing the Control closes the duplicates, so a
    /// stopped listener really closes.
    pub fn start(
        path: &Path,
        sockets: Vec<(Role, OwnedFd)>,
        shared: Arc<Shared>,
    ) -> io::Result<(Control, oneshot::Receiver<HandedOver>)> {
        let listener = bind_control(path)?;
        let meta = std::fs::metadata(path)?;
        let identity = (meta.dev(), meta.ino());
        let owner = meta.uid();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, sockets, shared, owner, tx));
        tracing::info!(path = %path.display(), "control socket listening (for --upgrade)");
        Ok((
            Control {
                path: path.to_path_buf(),
                identity,
                task,
            },
            rx,
        ))
    }

    /// Stops answering, closes the duplicated sockets and removes the socket file
    /// if it is still this process's.
    pub async fn close(self) {
        self.task.abort();
        let _ = self.task.await;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn bind_control(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process answers on it",
                ));
            }
            // Left behind by a process that is gone.
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let listener = UnixListener::bind(path)?;
    // Whoever can connect can take the proxy's ports: owner only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve(
    listener: UnixListener,
    sockets: Vec<(Role, OwnedFd)>,
    shared: Arc<Shared>,
    owner: u32,
    done: oneshot::Sender<HandedOver>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match converse(stream, &sockets, &shared, owner).await {
            Ok(handed) => {
                let _ = done.send(handed);
                // The duplicates close here; the listeners themselves stay with
                // their accept loops until the stop.
                return;
            }
            Err(e) => tracing::warn!("upgrade attempt failed, still serving: {e}"),
        }
    }
}

async fn converse(
    mut stream: UnixStream,
    sockets: &[(Role, OwnedFd)],
    shared: &Shared,
    owner: u32,
) -> Result<HandedOver, String> {
    let peer = stream.peer_cred().map_err(|e| e.to_string())?;
    if peer.uid() != owner && peer.uid() != 0 {
        return Err(format!(
            "refused a connection from uid {} (the socket belongs to uid {owner})",
            peer.uid()
        ));
    }
    let mut buf = Vec::new();
    let pid = match read(&stream, &mut buf, HELLO_TIMEOUT).await? {
        (Message::Takeover { pid }, _) => pid,
        (other, _) => return Err(format!("unexpected message {other:?}")),
    };
    let live = shared.live();
    if let Some(route) = carry::active_hold(&live) {
        let reason = format!(
            "route {route:?} has a hold in force; release it before upgrading (held requests live in this process)"
        );
        let _ = write(
            &mut stream,
            &Message::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(format!("refused pid {pid}: {reason}"));
    }
    let message = Message::Sockets {
        pid: std::process::id(),
        roles: sockets.iter().map(|(r, _)| *r).collect(),
        carried: carry::capture(&live),
    };
    let line = encode(&message).map_err(|e| e.to_string())?;
    let fds: Vec<_> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    fds::send_with_fds(&mut stream, &line, &fds)
        .await
        .map_err(|e| format!("sending the sockets to pid {pid}: {e}"))?;
    tracing::info!(
        pid,
        "handed the listening sockets to a new process; waiting until it serves"
    );
    match read(&stream, &mut buf, READY_TIMEOUT).await {
        Ok((Message::Ready, _)) => Ok(HandedOver { stream, pid }),
        Ok((other, _)) => Err(format!("unexpected message {other:?} from pid {pid}")),
        Err(e) => Err(format!("pid {pid} did not get ready: {e}")),
    }
}
