//! Passing listening sockets between processes over a Unix stream socket
//! (SCM_RIGHTS), and the newline-framed messages around them.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, getsockopt, recvmsg, sendmsg, sockopt,
};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// More than we ever send (http, https, admin), so the control buffer never
/// truncates and no received descriptor is lost.
const MAX_FDS: usize = 8;
/// A message is one line of JSON; anything longer is not from a cutover-proxy.
const MAX_LINE: usize = 1 << 20;

/// Sends `line` (which ends in `\n`) with `fds` attached to its first byte.
pub async fn send_with_fds(
    stream: &mut UnixStream,
    line: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = loop {
        stream.writable().await?;
        let attempt = stream.try_io(Interest::WRITABLE, || {
            let cmsg = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(line)],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        });
        match attempt {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    // The descriptors travelled with the first chunk; the rest is plain bytes.
    stream.write_all(line.get(sent..).unwrap_or_default()).await
}

/// Reads until `buf` holds a whole line, keeping every descriptor that arrives on
/// the way. Returns the line (without `\n`) and the descriptors; bytes after the
/// line stay in `buf` for the next read.
pub async fn recv_line(
    stream: &UnixStream,
    buf: &mut Vec<u8>,
) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf[..end].to_vec();
            buf.drain(..=end);
            return Ok((line, fds));
        }
        if buf.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message longer than 1 MiB",
            ));
        }
        stream.readable().await?;
        let mut chunk = [0u8; 4096];
        let attempt = stream.try_io(Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut raw = Vec::new();
            for c in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(r) = c {
                    raw.extend(r);
                }
            }
            Ok((msg.bytes, adopt(raw)))
        });
        match attempt {
            Ok((0, _)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the other process closed the control connection",
                ));
            }
            Ok((n, got)) => {
                buf.extend_from_slice(&chunk[..n]);
                fds.extend(got);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Takes ownership of descriptors the kernel just installed for a received
/// SCM_RIGHTS message.
#[allow(unsafe_code)]
fn adopt(raw: Vec<RawFd>) -> Vec<OwnedFd> {
    raw.into_iter()
        // SAFETY: each descriptor was created in this process by the recvmsg call
        // that returned it, and is handed out exactly once, here; nothing else
        // holds or closes it, so the OwnedFd is its sole owner.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// A received descriptor as a listening TCP socket, refusing anything else.
pub fn tcp_listener(fd: OwnedFd) -> io::Result<std::net::TcpListener> {
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(io::Error::from)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the received socket is not listening",
        ));
    }
    let listener = std::net::TcpListener::from(fd);
    // Non-blocking is a property of the shared open file; tokio needs it set.
    listener.set_nonblocking(true)?;
    // Fails for a socket that is not TCP/IP.
    listener.local_addr()?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn a_listening_socket_crosses_with_its_message() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        send_with_fds(&mut a, b"{\"hello\":1}\nrest\n", &[listener.as_fd()])
            .await
            .unwrap();
        let mut buf = Vec::new();
        let (line, fds) = recv_line(&b, &mut buf).await.unwrap();
        assert_eq!(line, b"{\"hello\":1}");
        assert_eq!(fds.len(), 1);
        let got = tcp_listener(fds.into_iter().next().unwrap()).unwrap();
        assert_eq!(got.local_addr().unwrap(), addr);
        // Both descriptors name one socket: a connection queued on it is accepted
        // through the received one.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let got = tokio::net::TcpListener::from_std(got).unwrap();
        got.accept().await.unwrap();
        let (line, fds) = recv_line(&b, &mut buf).await.unwrap();
        assert_eq!((line.as_slice(), fds.len()), (&b"rest"[..], 0));
    }

    #[tokio::test]
    async fn a_socket_that_is_not_listening_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        send_with_fds(&mut a, b"x\n", &[x.as_fd()]).await.unwrap();
        let (_, fds) = recv_line(&b, &mut Vec::new()).await.unwrap();
        assert!(tcp_listener(fds.into_iter().next().unwrap()).is_err());
        drop(a);
        let eof = recv_line(&b, &mut Vec::new()).await.unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }
}
