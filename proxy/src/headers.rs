//! Header rewriting between the client and the upstream: hop-by-hop headers out
//! (but `TE: trailers`, which gRPC needs),
//! the client's Host kept, `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded`
//! set (appended to only after a trusted proxy), `X-Request-Id` kept or made, and
//! HTTP/2's split cookies joined. `X-Forwarded-Proto` is `https` for requests that
//! came over the HTTPS listener (the listener marks them with [`Scheme`]), whatever
//! the client sent.

use std::fmt::Write as _;
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
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
];

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
    let xff = match prior(headers, &X_FORWARDED_FOR) {
        Some(p) => format!("{p}, {client}"),
        None => client.to_string(),
    };
    let mut forwarded = prior(headers, &FORWARDED).map_or_else(String::new, |p| p + ", ");
    // Writing into a String cannot fail.
    let _ = match client {
        std::net::IpAddr::V6(v6) => write!(forwarded, "for=\"[{v6}]\""),
        v4 => write!(forwarded, "for={v4}"),
    };
    let _ = write!(forwarded, ";proto={}", if https { "https" } else { "http" });
    if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
        let _ = write!(forwarded, ";host=\"{}\"", h.replace(['"', '\\'], ""));
    }
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
        // Handing the strings over as `Bytes` validates them without another copy.
        (
            &X_FORWARDED_FOR,
            HeaderValue::from_maybe_shared(Bytes::from(xff)).ok(),
        ),
        (
            &FORWARDED,
            HeaderValue::from_maybe_shared(Bytes::from(forwarded)).ok(),
        ),
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
    let id =
        HeaderValue::from_maybe_shared(Bytes::from(format!("{:032x}", rand::random::<u128>())))
            .unwrap_or(HeaderValue::from_static("0"));
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there are none (`Connection` is one of them): one pass over the names,
    // where standard names compare as tags, instead of a lookup per name.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // `TE: trailers` is the one hop-by-hop value that goes on: it says the client
    // accepts trailers, which gRPC needs (RFC 9113 §8.2.2 allows it in HTTP/2).
    let trailers = headers.get_all(TE).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
    });
    if let Some(conn) = headers.get(http::header::CONNECTION) {
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            // `Connection: host` must not take away the host the request was
            // routed by.
            .filter(|n| n != HOST)
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
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

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-app"], "kept");
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
