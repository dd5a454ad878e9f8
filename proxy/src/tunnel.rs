//! HTTP/1.1 `Upgrade` (WebSocket, and any other protocol switch): the request goes
//! to the backend with its `Upgrade` and `Connection: upgrade`; once the backend
//! answers `101 Switching Protocols`, the client's connection and the backend's are
//! joined and bytes are copied both ways for as long as both ends keep them open.
//!
//! An upgraded connection can carry writes the proxy cannot see, so by default it
//! is routed like a write (`upgrades = "writes"`): to the route's write side, and
//! held by a writes hold. It can also be closed on order ([`Disconnect`]): when a
//! hold moves the writes away from its backend, or over a window from the admin
//! API. A WebSocket is closed with a close frame, `1012` (service restart), sent
//! between two of the backend's frames, so that the client reconnects.

use std::time::Duration;

use http::header::{
    CONNECTION, CONTENT_LENGTH, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::upstream::Lease;

/// Whether the request asks to switch protocols: HTTP/1.1 with an `Upgrade`
/// header that its `Connection` header names, or an HTTP/2 WebSocket.
pub fn requested(parts: &Parts) -> bool {
    (parts.version == Version::HTTP_11
        && parts.headers.contains_key(UPGRADE)
        && names_upgrade(&parts.headers))
        || h2_websocket(parts)
}

/// An HTTP/2 extended CONNECT for a WebSocket (RFC 8441). The backend gets the
/// HTTP/1.1 handshake ([`as_http1_handshake`]); its `101` becomes the `200` the
/// HTTP/2 client waits for ([`as_h2_accept`]).
pub fn h2_websocket(parts: &Parts) -> bool {
    parts.method == Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Turns an upstream request made from an extended CONNECT into an HTTP/1.1
/// WebSocket handshake: GET, with a key of its own.
pub fn as_http1_handshake(method: &mut Method, headers: &mut HeaderMap) {
    use base64::Engine as _;
    *method = Method::GET;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    if let Ok(v) = HeaderValue::from_str(&key) {
        headers.insert(SEC_WEBSOCKET_KEY, v);
    }
    if !headers.contains_key(SEC_WEBSOCKET_VERSION) {
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
}

/// The backend's `101` as the HTTP/2 client's `200`: without the HTTP/1.1
/// handshake's own headers.
pub fn as_h2_accept(status: &mut StatusCode, headers: &mut HeaderMap) {
    *status = StatusCode::OK;
    headers.remove(SEC_WEBSOCKET_ACCEPT);
    headers.remove(UPGRADE);
    headers.remove(CONNECTION);
    headers.remove(CONTENT_LENGTH);
}

fn names_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    })
}

/// Puts back the hop-by-hop headers a protocol switch needs, after they were
/// stripped: `upgrade` (the value it had) and `Connection: upgrade`.
pub fn restore(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(UPGRADE, upgrade);
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// An order to close the upgraded connections of one route and backend, each at a
/// random moment within `over` (zero: at once). A new order has a new `seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disconnect {
    pub seq: u64,
    pub over: Duration,
}

/// One upgraded connection, ready to be joined.
pub struct Tunnel {
    pub client: OnUpgrade,
    pub backend: OnUpgrade,
    /// The backend connection, kept (for its drop) until the tunnel ends.
    pub _lease: Lease,
    /// Counts the tunnel while it is open.
    pub open: IntGauge,
    pub orders: watch::Receiver<Disconnect>,
    /// The client asked for a WebSocket: closed with a close frame.
    pub websocket: bool,
}

/// A WebSocket close frame from a server (unmasked): status 1012, "service restart".
const CLOSE_1012: [u8; 4] = [0x88, 0x02, 0x03, 0xF4];

/// How long a closing tunnel waits for the backend's frame in progress to end.
const FRAME_WAIT: Duration = Duration::from_secs(1);

impl Tunnel {
    /// Joins the two sides in the background.
    pub fn spawn(mut self) {
        self.open.inc();
        // Orders given before this tunnel existed are not for it.
        self.orders.mark_unchanged();
        tokio::spawn(async move {
            match tokio::try_join!(&mut self.client, &mut self.backend) {
                Ok((c, b)) => {
                    let (up, down) = self.carry(c, b).await;
                    tracing::debug!(up, down, "upgraded connection closed");
                }
                Err(e) => tracing::debug!(error = %e, "a side of an upgrade did not switch"),
            }
            self.open.dec();
        });
    }

    /// Copies both ways until either side ends or an order closes the tunnel.
    /// Returns the bytes sent each way.
    async fn carry(&mut self, client: Upgraded, backend: Upgraded) -> (u64, u64) {
        let (mut c_read, mut c_write) = tokio::io::split(TokioIo::new(client));
        let (mut b_read, mut b_write) = tokio::io::split(TokioIo::new(backend));
        let mut frames = self.websocket.then(Frames::default);
        let mut close_at: Option<tokio::time::Instant> = None;
        let mut orders_open = true;
        let mut orders = self.orders.clone();
        let (mut up, mut down) = (0u64, 0u64);
        let mut from_client = vec![0u8; 16 * 1024];
        let mut from_backend = vec![0u8; 16 * 1024];
        loop {
            let wake = close_at.unwrap_or_else(far_future);
            tokio::select! {
                changed = orders.changed(), if orders_open && close_at.is_none() => {
                    if changed.is_err() {
                        // Nobody can give an order any more.
                        orders_open = false;
                        continue;
                    }
                    let over = orders.borrow_and_update().over;
                    close_at = Some(tokio::time::Instant::now() + jitter(over));
                }
                () = tokio::time::sleep_until(wake), if close_at.is_some() => break,
                n = c_read.read(&mut from_client) => match n {
                    Ok(0) | Err(_) => {
                        let _ = b_write.shutdown().await;
                        // The backend may still answer; carry it to its end.
                        down += drain(&mut b_read, &mut c_write, &mut from_backend).await;
                        return (up, down);
                    }
                    Ok(n) => {
                        if b_write.write_all(&from_client[..n]).await.is_err() {
                            return (up, down);
                        }
                        up += n as u64;
                    }
                },
                n = b_read.read(&mut from_backend) => match n {
                    Ok(0) | Err(_) => {
                        let _ = c_write.shutdown().await;
                        return (up, down);
                    }
                    Ok(n) => {
                        if let Some(f) = frames.as_mut() {
                            f.advance(&from_backend[..n]);
                        }
                        if c_write.write_all(&from_backend[..n]).await.is_err() {
                            return (up, down);
                        }
                        down += n as u64;
                    }
                },
            }
        }
        // Closing on order: a WebSocket gets its close frame between two frames.
        if let Some(mut f) = frames {
            let deadline = tokio::time::Instant::now() + FRAME_WAIT;
            while !f.at_boundary() {
                let read = tokio::time::timeout_at(deadline, b_read.read(&mut from_backend));
                let Ok(Ok(n)) = read.await else {
                    break;
                };
                if n == 0 {
                    break;
                }
                let take = f.until_boundary(&from_backend[..n]);
                if c_write.write_all(&from_backend[..take]).await.is_err() {
                    break;
                }
                down += take as u64;
            }
            if f.at_boundary() {
                let _ = c_write.write_all(&CLOSE_1012).await;
            }
        }
        let _ = c_write.shutdown().await;
        let _ = b_write.shutdown().await;
        (up, down)
    }
}

/// Copies what `from` still sends into `to`, up to a few seconds.
async fn drain<R, W>(from: &mut R, to: &mut W, buf: &mut [u8]) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut n_all = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, from.read(buf)).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        n_all += n as u64;
    }
    let _ = to.shutdown().await;
    n_all
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

/// A moment within `over`, spread so that many clients do not reconnect at once.
fn jitter(over: Duration) -> Duration {
    if over.is_zero() {
        return Duration::ZERO;
    }
    over.mul_f64(rand::random::<f64>())
}

/// Where the backend's WebSocket frames begin and end, from their headers (RFC
/// 6455 §5.2): so that a close frame is never put inside another frame.
#[derive(Debug, Default)]
struct Frames {
    /// The header bytes read so far of the frame being read (at most 14).
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.payload == 0
    }

    /// Takes in `data` in full.
    fn advance(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            i += self.step(&data[i..]);
        }
    }

    /// Takes in `data` up to the first frame boundary after at least one byte;
    /// returns how many bytes that is.
    fn until_boundary(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            i += self.step(&data[i..]);
            if self.at_boundary() {
                break;
            }
        }
        i
    }

    /// Consumes part of `data` (at least one byte): header bytes, or payload.
    fn step(&mut self, data: &[u8]) -> usize {
        if self.payload > 0 {
            let n = (data.len() as u64).min(self.payload);
            self.payload -= n;
            return n as usize;
        }
        self.header.push(data[0]);
        if let Some(len) = header_len(&self.header)
            && self.header.len() == len
        {
            self.payload = payload_len(&self.header);
            self.header.clear();
        }
        1
    }
}

/// The whole header's length, once its first two bytes are known.
fn header_len(h: &[u8]) -> Option<usize> {
    let b1 = *h.get(1)?;
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    Some(2 + ext + mask)
}

fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: usize) -> Vec<u8> {
        let mut f = vec![0x81];
        match payload {
            0..=125 => f.push(payload as u8),
            126..=65535 => {
                f.push(126);
                f.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                f.push(127);
                f.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(b'x', payload));
        f
    }

    #[test]
    fn frame_boundaries_are_found_whatever_the_reads() {
        let mut stream = Vec::new();
        for n in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(n));
        }
        // Fed in pieces of every size from 1 to 97 bytes, the tracker ends at a
        // boundary, and is mid-frame one byte before the end.
        for piece in 1..98 {
            let mut f = Frames::default();
            for chunk in stream[..stream.len() - 1].chunks(piece) {
                f.advance(chunk);
            }
            assert!(!f.at_boundary(), "piece {piece}");
            f.advance(&stream[stream.len() - 1..]);
            assert!(f.at_boundary(), "piece {piece}");
        }
        // Stopping at the first boundary: after the empty frame (2 bytes), then
        // after the 5-byte one (7 bytes).
        let mut f = Frames::default();
        assert_eq!(f.until_boundary(&stream), 2);
        assert_eq!(f.until_boundary(&stream[2..]), 7);
        let mut masked = vec![0x81, 0x83, 1, 2, 3, 4, b'a', b'b', b'c'];
        masked.push(0x88);
        let mut f = Frames::default();
        assert_eq!(f.until_boundary(&masked), 9);
    }
}
