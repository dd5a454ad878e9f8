//! The PROXY protocol (v1 text and v2 binary), which an L4 load balancer in front of
//! the proxy sends at the start of each connection to name the real client. With
//! `[listen] proxy_protocol = true` every data-plane connection must start with one:
//! a connection without it is closed, so no client can reach the proxy around the
//! load balancer and claim another address.
//!
//! The header is consumed exactly (v2 by its length field, v1 by peeking for its
//! CRLF), so the bytes after it (a TLS ClientHello, an HTTP request) are left to the
//! listener.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header (the listener requires one)")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
}

/// Reads the header at the start of `stream`. Returns the client it names, or
/// `None` when it names none (v2 LOCAL, such as the balancer's own health check, or
/// v1 UNKNOWN): the connection's own peer stands then.
pub async fn read_header(
    stream: &mut TcpStream,
    within: Duration,
) -> Result<Option<SocketAddr>, HeaderError> {
    tokio::time::timeout(within, read(stream))
        .await
        .map_err(|_| HeaderError::Timeout(within))?
}

async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    // Both versions are at least 15 bytes long: 12 can be read outright.
    let mut start = [0u8; 12];
    stream.read_exact(&mut start).await?;
    if start == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        let mut rest = vec![0u8; len];
        stream.read_exact(&mut rest).await?;
        return parse_v2(fixed[0], fixed[1], &rest);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(HeaderError::Missing);
    }
    // The rest of the line, up to its CRLF: peek for it, then consume that much.
    let mut line = start.to_vec();
    let mut peeked = [0u8; V1_MAX];
    loop {
        let n = stream.peek(&mut peeked[..V1_MAX - line.len()]).await?;
        if n == 0 {
            return Err(HeaderError::Malformed(
                "the connection closed within the header",
            ));
        }
        let mut whole = line.clone();
        whole.extend_from_slice(&peeked[..n]);
        if let Some(end) = whole.windows(2).position(|w| w == b"\r\n") {
            let take = end + 2 - line.len();
            let mut consumed = vec![0u8; take];
            stream.read_exact(&mut consumed).await?;
            line.extend_from_slice(&consumed);
            return parse_v1(&line);
        }
        if whole.len() >= V1_MAX {
            return Err(HeaderError::Malformed("a v1 header longer than 107 bytes"));
        }
        // Part of the line has arrived: wait a moment for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n` or `PROXY UNKNOWN …\r\n`.
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| HeaderError::Malformed("a v1 header that is not ASCII"))?
        .trim_end_matches("\r\n");
    let mut fields = text.split(' ');
    fields.next(); // "PROXY"
    let family = fields.next().unwrap_or("");
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let (src, _dst, sport) = (fields.next(), fields.next(), fields.next());
    let ip: IpAddr = src
        .and_then(|s| s.parse().ok())
        .ok_or(HeaderError::Malformed(
            "a v1 source address that does not parse",
        ))?;
    let port: u16 = sport
        .and_then(|p| p.parse().ok())
        .ok_or(HeaderError::Malformed(
            "a v1 source port that does not parse",
        ))?;
    match (family, ip) {
        ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(Some(SocketAddr::new(ip, port))),
        _ => Err(HeaderError::Malformed(
            "a v1 family other than TCP4, TCP6 or UNKNOWN",
        )),
    }
}

/// The v2 header after its signature: version and command, family and transport,
/// and the `addrs` block (TLVs after the addresses are skipped).
fn parse_v2(ver_cmd: u8, family: u8, addrs: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::Malformed("a v2 header whose version is not 2"));
    }
    match ver_cmd & 0x0f {
        0 => return Ok(None), // LOCAL: the balancer speaking for itself.
        1 => {}
        _ => {
            return Err(HeaderError::Malformed(
                "a v2 command other than LOCAL or PROXY",
            ));
        }
    }
    match family >> 4 {
        // AF_INET: source, destination (4 bytes each), source port, destination port.
        1 if addrs.len() >= 12 => {
            let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
            let port = u16::from_be_bytes([addrs[8], addrs[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // AF_INET6: 16 bytes each.
        2 if addrs.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addrs[..16]);
            let port = u16::from_be_bytes([addrs[32], addrs[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        1 | 2 => Err(HeaderError::Malformed(
            "a v2 address block too short for its family",
        )),
        // AF_UNSPEC or AF_UNIX: no client address to use.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_names_the_client_and_unknown_names_none() {
        let a = parse_v1(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n").unwrap();
        assert_eq!(a, Some("203.0.113.7:51234".parse().unwrap()));
        let a = parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n").unwrap();
        assert_eq!(a, Some("[2001:db8::7]:51234".parse().unwrap()));
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(parse_v1(b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n").is_err());
        assert!(parse_v1(b"PROXY TCP4 nonsense 10.0.0.1 1 2\r\n").is_err());
    }

    #[test]
    fn v2_names_the_client_and_local_names_none() {
        let mut addrs = vec![198, 51, 100, 9, 10, 0, 0, 1];
        addrs.extend_from_slice(&40000u16.to_be_bytes());
        addrs.extend_from_slice(&443u16.to_be_bytes());
        let a = parse_v2(0x21, 0x11, &addrs).unwrap();
        assert_eq!(a, Some("198.51.100.9:40000".parse().unwrap()));
        assert_eq!(parse_v2(0x20, 0x00, &[]).unwrap(), None);
        assert!(parse_v2(0x21, 0x11, &addrs[..6]).is_err());
        assert!(parse_v2(0x11, 0x11, &addrs).is_err());
    }
}
