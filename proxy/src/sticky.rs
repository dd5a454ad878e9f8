//! The sticky key of a request: the proxy's cookie, a configured header, or the
//! client's address. The key only picks a bucket; the split itself lives in
//! `cutover_config::Weights`.

use std::net::IpAddr;

use cutover_config::{Sticky, bucket_of};
use http::HeaderMap;
use http::header::COOKIE;

/// The bucket of a request, and the cookie value to set when the proxy minted one.
pub struct Key {
    pub bucket: u16,
    pub minted: Option<String>,
}

/// Computes the request's key under the route's sticky policy.
#[inline]
pub fn key(policy: &Sticky, headers: &HeaderMap, client: IpAddr) -> Key {
    match policy {
        Sticky::Cookie { name, .. } => match cookie(headers, name) {
            Some(v) => Key {
                bucket: bucket_of(v),
                minted: None,
            },
            None => {
                let value = mint();
                Key {
                    bucket: bucket_of(value.as_bytes()),
                    minted: Some(value),
                }
            }
        },
        Sticky::Header(name) => match headers.get(name.as_str()) {
            Some(v) => Key {
                bucket: bucket_of(v.as_bytes()),
                minted: None,
            },
            None => ip_key(client),
        },
        Sticky::ClientIp => ip_key(client),
    }
}

fn ip_key(ip: IpAddr) -> Key {
    let bucket = match ip {
        IpAddr::V4(v4) => bucket_of(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => bucket_of(&v4.octets()),
            None => bucket_of(&v6.octets()),
        },
    };
    Key {
        bucket,
        minted: None,
    }
}

/// The value of cookie `name`, scanning every `Cookie` header without allocating.
#[inline]
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    for h in headers.get_all(COOKIE) {
        for pair in h.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            if pair.len() > name.len() && pair.starts_with(name) && pair[name.len()] == b'=' {
                let value = trim(&pair[name.len() + 1..]);
                let value = value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value);
                if !value.is_empty() {
                    return Some(value);
                }
            }
        }
    }
    None
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A fresh 128-bit random key as 32 hex digits.
pub fn mint() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v: u128 = rand::random();
    // Hand-rolled hex: this runs for every new user, and `format!` costs 3x more.
    (0..32)
        .rev()
        .map(|i| char::from(HEX[((v >> (i * 4)) & 0xf) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn finds_the_cookie_among_others_and_across_headers() {
        let h = headers(&["a=1; cutoverx=2", "theme=dark;  cutover=abc ; z=9"]);
        assert_eq!(cookie(&h, "cutover"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(
            cookie(&headers(&["cutover=\"q\""]), "cutover"),
            Some(&b"q"[..])
        );
        assert_eq!(cookie(&headers(&["cutover="]), "cutover"), None);
    }

    #[test]
    fn a_request_with_the_cookie_keeps_its_bucket_and_mints_nothing() {
        let policy = Sticky::Cookie {
            name: "cutover".into(),
            max_age: std::time::Duration::ZERO,
        };
        let ip = IpAddr::from([127, 0, 0, 1]);
        let k = key(&policy, &headers(&["cutover=0123"]), ip);
        assert!(k.minted.is_none());
        assert_eq!(k.bucket, bucket_of(b"0123"));
        let fresh = key(&policy, &HeaderMap::new(), ip);
        let minted = fresh.minted.unwrap();
        assert_eq!(minted.len(), 32);
        assert_eq!(fresh.bucket, bucket_of(minted.as_bytes()));
        assert_ne!(minted, mint());
    }

    #[test]
    fn header_policy_falls_back_to_the_client_ip() {
        let policy = Sticky::Header("authorization".into());
        let ip = IpAddr::from([10, 1, 2, 3]);
        let mut h = HeaderMap::new();
        assert_eq!(key(&policy, &h, ip).bucket, bucket_of(&[10, 1, 2, 3]));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        assert_eq!(key(&policy, &h, ip).bucket, bucket_of(b"Bearer x"));
    }

    #[test]
    fn mapped_v6_and_v4_share_a_bucket() {
        let v4 = IpAddr::from([192, 0, 2, 1]);
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(ip_key(v4).bucket, ip_key(mapped).bucket);
    }
}
