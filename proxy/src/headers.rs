//! Header rewriting between the client and the upstream: hop-by-hop headers out,
//! the client's Host kept, `X-Forwarded-For` and `X-Forwarded-Proto` in.
//! `X-Forwarded-Proto` is `https` for requests that came over the HTTPS listener
//! (the listener marks them with [`Scheme`]), whatever the client sent.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::HOST;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::server::Scheme;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

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
pub fn prepare_request(parts: &mut Parts, peer: SocketAddr) -> Result<(), StatusCode> {
    // HTTP/2 carries the host in :authority; HTTP/1.1 backends need a Host header.
    if !parts.headers.contains_key(HOST) {
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or(StatusCode::BAD_REQUEST)?;
        parts.headers.insert(HOST, host);
    }
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let client = peer.ip().to_string();
    // Handing the string over as `Bytes` validates it without another copy.
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::from_maybe_shared(Bytes::from(format!("{prior}, {client}"))),
        None => HeaderValue::from_maybe_shared(Bytes::from(client)),
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if parts.extensions.get::<Scheme>() == Some(&Scheme::Https) {
        // TLS ended here, so this is known, not claimed.
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    } else if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    Ok(())
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there are none (`Connection` is one of them): one pass over the names,
    // where standard names compare as tags, instead of a lookup per name.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

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

    #[test]
    fn forwarded_for_is_appended() {
        let (mut parts, ()) = Request::get("/")
            .header("host", "a")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap()
            .into_parts();
        prepare_request(&mut parts, "127.0.0.2:5555".parse().unwrap()).unwrap();
        assert_eq!(parts.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(parts.headers["x-forwarded-proto"], "http");
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
        prepare_request(&mut parts, "127.0.0.2:5555".parse().unwrap()).unwrap();
        assert_eq!(parts.headers["x-forwarded-proto"], "https");
    }
}
