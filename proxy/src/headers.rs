//! Header rewriting between the client and the upstream: hop-by-hop headers out
//! (but `TE: trailers`, which gRPC needs),
//! the client's Host kept, `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded`
//! set (appended to only after a trusted proxy), `X-Request-Id` kept or made, and
//! HTTP/2's split cookies joined. `X-Forwarded-Proto` is `https` for requests that
//! came over the HTTPS listener (the listener marks them with [`Scheme`]), whatever
//! the client sent.

use std::net::SocketAddr;

use bytes::Bytes;
use cutover_config::Cidr;
use http::header::{COOKIE, HOST, TE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

use crate::server::Scheme;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded.
static HOP_BY_HOP: [HeaderName; 7] = [
    // Positions CONNECTION_AT and TE_AT are named below.
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
];

const CONNECTION_AT: usize = 0;
const TE_AT: usize = 3;

/// Rewrites a downstream request's headers for the upstream, once per request.
///
/// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
/// describe this hop. From a peer in `trusted` (another proxy in front of this
/// one) the incoming values are kept and this hop is appended; from anyone else
/// they are claims, and are replaced.
pub fn prepare_request(
    parts: &mut Parts,
    peer: SocketAddr,
    trusted: &[Cidr],
) -> Result<(), StatusCode> {
    // HTTP/2 carries the host in :authority; HTTP/1.1 backends need a Host header.
    if !parts.headers.contains_key(HOST) {
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or(StatusCode::BAD_REQUEST)?;
        parts.headers.insert(HOST, host);
    }
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    let https = parts.extensions.get::<Scheme>() == Some(&Scheme::Https);
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let trusted = trusted.iter().any(|c| c.contains(peer.ip()));
    let client = peer.ip();
    let host = headers.get(HOST).cloned();
    // What a trusted proxy in front already put there, all lines joined; nothing
    // from anyone else (and nothing read or allocated for them).
    let prior = |h: &HeaderMap, name: &HeaderName| -> Option<String> {
        if !trusted {
            return None;
        }
        let all: Vec<&str> = h
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!all.is_empty()).then(|| all.join(", "))
    };
    let mut xff = Built::default();
    if let Some(p) = prior(headers, &X_FORWARDED_FOR) {
        xff.push(p.as_bytes());
        xff.push(b", ");
    }
    xff.ip(client);
    let mut forwarded = Built::default();
    if let Some(p) = prior(headers, &FORWARDED) {
        forwarded.push(p.as_bytes());
        forwarded.push(b", ");
    }
    if client.is_ipv6() {
        forwarded.push(b"for=\"[");
        forwarded.ip(client);
        forwarded.push(b"]\"");
    } else {
        forwarded.push(b"for=");
        forwarded.ip(client);
    }
    forwarded.push(if https {
        b";proto=https"
    } else {
        b";proto=http"
    });
    if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
        forwarded.push(b";host=\"");
        // A quote or backslash would end the quoted string early: left out.
        for piece in h.split(['"', '\\']) {
            forwarded.push(piece.as_bytes());
        }
        forwarded.push(b"\"");
    }
    let (xff, forwarded) = (xff.value(), forwarded.value());
    // TLS ended here, so `https` is known, not claimed; a trusted proxy in front
    // may have ended it before us.
    let xfp = match prior(headers, &X_FORWARDED_PROTO).filter(|_| !https) {
        Some(p) => HeaderValue::from_maybe_shared(Bytes::from(p)).ok(),
        None if https => Some(HeaderValue::from_static("https")),
        None => Some(HeaderValue::from_static("http")),
    };
    let xfh = match prior(headers, &X_FORWARDED_HOST) {
        Some(p) => HeaderValue::from_maybe_shared(Bytes::from(p)).ok(),
        None => host,
    };
    for (name, value) in [
        (&X_FORWARDED_FOR, xff),
        (&FORWARDED, forwarded),
        (&X_FORWARDED_PROTO, xfp),
        (&X_FORWARDED_HOST, xfh),
    ] {
        match value {
            Some(v) => headers.insert(name.clone(), v),
            None => headers.remove(name),
        };
    }
    Ok(())
}

/// A header value built in place and then owned by its `Bytes` (one allocation;
/// a `String` handed over as `Bytes` cost a second one whenever its capacity was
/// not its length, and cloning a value made from an exact copy a third, and
/// `format!` of an address cost more than the rest of the request's header work).
/// Past 256 bytes (a long chain from trusted proxies) it continues on the heap.
struct Built {
    buf: [u8; 256],
    len: usize,
    spill: Option<Vec<u8>>,
}

impl Default for Built {
    fn default() -> Self {
        Built {
            buf: [0; 256],
            len: 0,
            spill: None,
        }
    }
}

impl Built {
    #[inline]
    fn push(&mut self, b: &[u8]) {
        if let Some(v) = &mut self.spill {
            v.extend_from_slice(b);
        } else if let Some(room) = self.buf.get_mut(self.len..self.len + b.len()) {
            room.copy_from_slice(b);
            self.len += b.len();
        } else {
            let mut v = Vec::with_capacity(self.len + b.len() + 64);
            v.extend_from_slice(&self.buf[..self.len]);
            v.extend_from_slice(b);
            self.spill = Some(v);
        }
    }

    /// An IPv4 address in dotted decimal; IPv6 as `Display` writes it.
    #[inline]
    fn ip(&mut self, ip: std::net::IpAddr) {
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b".");
                    }
                    let digits = [b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10];
                    let skip = if o >= 100 {
                        0
                    } else if o >= 10 {
                        1
                    } else {
                        2
                    };
                    self.push(&digits[skip..]);
                }
            }
            std::net::IpAddr::V6(v6) => self.push(v6.to_string().as_bytes()),
        }
    }

    /// The value, owning the buffer: one allocation, shared by the copy of the
    /// request kept for a retry.
    fn value(self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(Bytes::from_owner(self)).ok()
    }
}

impl AsRef<[u8]> for Built {
    fn as_ref(&self) -> &[u8] {
        match &self.spill {
            Some(v) => v.as_slice(),
            None => &self.buf[..self.len],
        }
    }
}

/// HTTP/2 may send each cookie as its own header (RFC 9113 §8.2.3); an HTTP/1.1
/// upstream wants one, joined with `; `.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let joined = joined.join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, v);
    }
}

/// The request's `X-Request-Id` if it has a usable one (at most 200 visible ASCII
/// characters), else a new one (32 hex digits) set on it. Sent upstream and
/// returned to the client, so one id names the request in both logs.
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 200
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    // Owned by its `Bytes`: one allocation, and the copies that go upstream (one
    // kept for a retry) and back to the client share it.
    let id = HeaderValue::from_maybe_shared(Bytes::from_owner(crate::sticky::random_hex()))
        .unwrap_or(HeaderValue::from_static("0"));
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of them are here: one pass over the names, where standard names
    // compare as tags. Usually none on a request; on a response usually just
    // `Connection: keep-alive`, so only what is present is looked up and removed.
    let mut present = 0u8;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `TE: trailers` is the one hop-by-hop value that goes on: it says the client
    // accepts trailers, which gRPC needs (RFC 9113 §8.2.2 allows it in HTTP/2).
    let trailers = present & (1 << TE_AT) != 0
        && headers.get_all(TE).iter().any(|v| {
            v.to_str().unwrap_or("").split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        });
    if present & (1 << CONNECTION_AT) != 0 {
        // Every Connection line (usually one: the rest collect without allocating).
        let mut lines = headers.get_all(http::header::CONNECTION).iter();
        let first = lines.next().cloned();
        let more: Vec<HeaderValue> = lines.cloned().collect();
        for conn in first.iter().chain(&more) {
            strip_listed(headers, conn);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes the headers a Connection line names.
fn strip_listed(headers: &mut HeaderMap, conn: &HeaderValue) {
    for name in conn.to_str().unwrap_or("").split(',').map(str::trim) {
        // Hop-by-hop names go anyway (`keep-alive`; `close` is none);
        // `Connection: host` must not take away the host the request was routed by.
        let listed = HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str()));
        if !name.is_empty() && !listed && !name.eq_ignore_ascii_case("host") {
            // A name that is not a valid header name removes nothing.
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn te_trailers_is_kept_and_other_te_values_are_not() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip, trailers;q=1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("te"));
    }

    /// A header map of `pairs`, in order, repeated names appended.
    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-app"], "kept");

        // Names in any case, with spaces and empty items; `host` is never taken;
        // every value of a named header goes.
        let mut h = map(&[
            ("host", "shop.test"),
            ("connection", "Upgrade, ,  X-Hop-A ,host,x-hop-b"),
            ("upgrade", "websocket"),
            ("x-hop-a", "1"),
            ("x-hop-a", "2"),
            ("x-hop-b", "3"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-app"]);

        // A name on a second Connection line goes too.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-hop-c"),
            ("x-hop-c", "1"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-app"]);
    }

    fn forged(peer: &str, trusted: &[&str]) -> HeaderMap {
        let (mut parts, ()) = Request::get("/")
            .header("host", "shop.test")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "bank.test")
            .header("forwarded", "for=10.0.0.1")
            .body(())
            .unwrap()
            .into_parts();
        let trusted: Vec<Cidr> = trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect();
        prepare_request(&mut parts, peer.parse().unwrap(), &trusted).unwrap();
        parts.headers
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
        let h = forged("127.0.0.2:5555", &["10.0.0.0/8"]);
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.test");
        assert_eq!(
            h["forwarded"],
            "for=127.0.0.2;proto=http;host=\"shop.test\""
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for o in [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 255] {
            for ip in [
                std::net::IpAddr::from([o, 255 - o, 7, o / 2]),
                std::net::IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(o)]),
            ] {
                let mut b = Built::default();
                b.ip(ip);
                assert_eq!(b.value().unwrap(), ip.to_string().as_str());
            }
        }
    }

    #[test]
    fn a_chain_longer_than_the_stack_buffer_is_kept_whole() {
        let chain: Vec<String> = (0..40).map(|i| format!("10.0.0.{i}")).collect();
        let chain = chain.join(", ");
        assert!(chain.len() > 256);
        let (mut parts, ()) = Request::get("/")
            .header("host", "shop.test")
            .header("x-forwarded-for", chain.as_str())
            .body(())
            .unwrap()
            .into_parts();
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        prepare_request(&mut parts, "10.9.9.9:5555".parse().unwrap(), &trusted).unwrap();
        assert_eq!(
            parts.headers["x-forwarded-for"],
            format!("{chain}, 10.9.9.9").as_str()
        );
    }

    #[test]
    fn a_quote_or_backslash_in_the_host_cannot_end_the_forwarded_string() {
        let (mut parts, ()) = Request::get("/")
            .header("host", "shop.test\";for=\\evil")
            .body(())
            .unwrap()
            .into_parts();
        prepare_request(&mut parts, "127.0.0.2:5555".parse().unwrap(), &[]).unwrap();
        assert_eq!(
            parts.headers["forwarded"],
            "for=127.0.0.2;proto=http;host=\"shop.test;for=evil\""
        );
    }

    #[test]
    fn forwarding_headers_from_a_trusted_proxy_are_kept_and_appended_to() {
        let h = forged("10.1.2.3:5555", &["192.168.0.0/16", "10.0.0.0/8"]);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "bank.test");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1, for=10.1.2.3;proto=http;host=\"shop.test\""
        );
        let h = forged("[::1]:5555", &["::1"]);
        assert!(
            h["forwarded"]
                .to_str()
                .unwrap()
                .ends_with("for=\"[::1]\";proto=http;host=\"shop.test\"")
        );
    }

    #[test]
    fn http2_cookies_are_joined_and_request_ids_kept_or_made() {
        let (mut parts, ()) = Request::get("http://shop.test/")
            .version(Version::HTTP_2)
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap()
            .into_parts();
        prepare_request(&mut parts, "127.0.0.2:5555".parse().unwrap(), &[]).unwrap();
        assert_eq!(parts.headers.get_all("cookie").iter().count(), 1);
        assert_eq!(parts.headers["cookie"], "a=1; b=2");

        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&mut h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let made = request_id(&mut h);
        assert_eq!(made.len(), 32);
        assert_eq!(h["x-request-id"], made);
        assert_ne!(request_id(&mut HeaderMap::new()), made);
    }

    #[test]
    fn requests_over_tls_are_forwarded_as_https_whatever_the_client_claims() {
        let (mut parts, ()) = Request::get("/")
            .header("host", "a")
            .header("x-forwarded-proto", "http")
            .extension(Scheme::Https)
            .body(())
            .unwrap()
            .into_parts();
        prepare_request(&mut parts, "127.0.0.2:5555".parse().unwrap(), &[]).unwrap();
        assert_eq!(parts.headers["x-forwarded-proto"], "https");
    }
}
