//! Hitless restart: a new process (`cutover-proxy --upgrade`) takes over the
//! running one's listening sockets, and the old one stops accepting and drains.
//!
//! Every process listens on a control socket (`proxy.control_socket`). The new
//! process connects and asks for the sockets; the old one sends duplicates of its
//! listeners (SCM_RIGHTS) and the state set over the admin API. Both now hold the
//! same sockets, so they share one accept queue and no waiting connection is
//! reset. Once the new process serves it says so; the old one stops accepting,
//! confirms, and drains within `proxy.grace`; the new one then takes over the
//! control socket's path, ready for the next upgrade.
//!
//! Messages are lines of JSON: `takeover` → `sockets` (with the descriptors) or
//! `refused` → `ready` → `stopped`. If the new process goes away before `ready`,
//! the old one simply keeps serving.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixStream};

use crate::server;

mod carry;
mod control;
mod fds;

pub use carry::{Carried, apply as apply_carried};
pub use control::{control, duplicates};

/// How long each side waits for the other's next message. The new process needs
/// a moment to load its config and start serving before it says `ready`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOPPED_TIMEOUT: Duration = Duration::from_secs(10);

/// How this process gets its listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Bind them.
    Fresh,
    /// Take them over from the process on the control socket.
    Upgrade,
}

/// Which listener a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Http,
    Https,
    Admin,
}

impl Role {
    /// The config field that names its address.
    pub fn field(self) -> &'static str {
        match self {
            Role::Http => "listen.http",
            Role::Https => "listen.https",
            Role::Admin => "admin.listen",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Message {
    Takeover {
        pid: u32,
    },
    Sockets {
        pid: u32,
        /// The role of each descriptor, in order.
        roles: Vec<Role>,
        carried: Carried,
    },
    Refused {
        reason: String,
    },
    Ready,
    Stopped,
}

/// Why an upgrade could not go ahead.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "--upgrade: no running cutover-proxy answers on {path} ({source}); start without --upgrade, or set [proxy] control_socket to the running proxy's"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--upgrade: the running proxy refused: {0}")]
    Refused(String),
    #[error("--upgrade: control socket {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
}

/// The sockets taken over from the old process, and the conversation with it.
pub struct Takeover {
    path: PathBuf,
    stream: UnixStream,
    buf: Vec<u8>,
    pub old_pid: u32,
    inherited: Vec<(Role, std::net::TcpListener)>,
    carried: Option<Carried>,
}

/// Asks the process on `path` for its listening sockets.
pub async fn take_over(path: &Path) -> Result<Takeover, UpgradeError> {
    let fail = |reason: String| UpgradeError::Protocol {
        path: path.to_path_buf(),
        reason,
    };
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| UpgradeError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let hello = Message::Takeover {
        pid: std::process::id(),
    };
    write(&mut stream, &hello)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = Vec::new();
    let (message, received) = read(&stream, &mut buf, READY_TIMEOUT).await.map_err(fail)?;
    let (pid, roles, carried) = match message {
        Message::Sockets {
            pid,
            roles,
            carried,
        } => (pid, roles, carried),
        Message::Refused { reason } => return Err(UpgradeError::Refused(reason)),
        other => return Err(fail(format!("unexpected message {other:?}"))),
    };
    if roles.len() != received.len() {
        return Err(fail(format!(
            "{} sockets announced, {} received",
            roles.len(),
            received.len()
        )));
    }
    let mut inherited = Vec::with_capacity(roles.len());
    for (role, fd) in roles.into_iter().zip(received) {
        let listener =
            fds::tcp_listener(fd).map_err(|e| fail(format!("{} socket: {e}", role.field())))?;
        inherited.push((role, listener));
    }
    tracing::info!(
        old_pid = pid,
        sockets = inherited.len(),
        "took over the listening sockets"
    );
    Ok(Takeover {
        path: path.to_path_buf(),
        stream,
        buf,
        old_pid: pid,
        inherited,
        carried: Some(carried),
    })
}

impl Takeover {
    /// The admin state the old process carried over (once).
    pub fn carried(&mut self) -> Carried {
        self.carried.take().unwrap_or_default()
    }

    /// Tells the old process that this one serves, and waits until it has stopped
    /// accepting.
    pub async fn finish(mut self) -> Result<(), UpgradeError> {
        let fail = |reason: String| UpgradeError::Protocol {
            path: self.path.clone(),
            reason,
        };
        write(&mut self.stream, &Message::Ready)
            .await
            .map_err(|e| fail(e.to_string()))?;
        match read(&self.stream, &mut self.buf, STOPPED_TIMEOUT).await {
            Ok((Message::Stopped, _)) => Ok(()),
            Ok((other, _)) => Err(fail(format!("unexpected message {other:?}"))),
            Err(e) => Err(fail(e)),
        }
    }
}

/// The listener for `role` at `addr`: the one taken over when its address is the
/// configured one (any port when the config says port 0), else a fresh bind.
pub fn listener(
    takeover: Option<&mut Takeover>,
    role: Role,
    addr: SocketAddr,
) -> io::Result<TcpListener> {
    if let Some(t) = takeover
        && let Some(i) = t.inherited.iter().position(|(r, _)| *r == role)
    {
        let (_, l) = t.inherited.swap_remove(i);
        let have = l.local_addr()?;
        if have == addr || (addr.port() == 0 && have.ip() == addr.ip()) {
            return TcpListener::from_std(l);
        }
        tracing::warn!(field = role.field(), from = %have, to = %addr, "the address changed: binding the new one; the old process's socket closes when it exits");
    }
    server::bind(addr)
}

fn encode(message: &Message) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

async fn write(stream: &mut UnixStream, message: &Message) -> io::Result<()> {
    let line = encode(message).map_err(io::Error::other)?;
    stream.write_all(&line).await
}

/// The next message, with any descriptors that came with it.
async fn read(
    stream: &UnixStream,
    buf: &mut Vec<u8>,
    within: Duration,
) -> Result<(Message, Vec<OwnedFd>), String> {
    let (line, received) = tokio::time::timeout(within, fds::recv_line(stream, buf))
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
        .map_err(|e| e.to_string())?;
    let message = serde_json::from_slice(&line).map_err(|e| format!("bad message: {e}"))?;
    Ok((message, received))
}
