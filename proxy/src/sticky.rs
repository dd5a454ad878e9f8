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

/// A fresh key of 32 hex digits ([`random_hex`]).
pub fn mint() -> String {
    let hex = random_hex();
    // Hex digits are ASCII.
    String::from_utf8(hex.to_vec()).unwrap_or_default()
}

/// 32 lowercase hex digits (two draws of a 64-bit generator), for sticky keys and
/// request ids.
///
/// Neither is a secret (a client can send any cookie or id it likes, and one who
/// sees keys could guess the next ones a thread draws); they only must not
/// repeat. So each runtime thread draws from its own wyrand generator,
/// seeded once from the operating system's random source, instead of the
/// thread's ChaCha12 generator: that one refilled its block on every 16th draw and
/// showed as 1 % of the proxy's CPU at full load.
pub fn random_hex() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
    }
    let v = STATE.with(|s| {
        let (hi, lo) = (wyrand(s), wyrand(s));
        (u128::from(hi) << 64) | u128::from(lo)
    });
    let mut out = [0u8; 32];
    for (i, d) in out.iter_mut().enumerate() {
        *d = HEX[((v >> ((31 - i) * 4)) & 0xf) as usize];
    }
    out
}

/// One step of wyrand (a 64-bit state advanced by a constant, mixed by a 128-bit
/// multiply): every state value once per 2^64 draws, so a thread's keys do not
/// repeat.
fn wyrand(state: &std::cell::Cell<u64>) -> u64 {
    let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
    state.set(s);
    let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
    ((t >> 64) as u64) ^ (t as u64)
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
    fn minted_keys_are_hex_and_do_not_repeat_within_or_across_threads() {
        let draw = || {
            (0..20_000)
                .map(|_| random_hex())
                .collect::<std::collections::HashSet<_>>()
        };
        let here = draw();
        assert_eq!(here.len(), 20_000, "a key repeated on one thread");
        let there = std::thread::spawn(draw).join().unwrap();
        assert_eq!(
            here.intersection(&there).count(),
            0,
            "two threads drew the same key"
        );
        for k in here.iter().take(100) {
            assert!(
                k.iter()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        // Every hex digit shows up in every position (the bits are spread, not a
        // counter in the low digits).
        for pos in [0, 15, 31] {
            let seen: std::collections::HashSet<u8> = here.iter().map(|k| k[pos]).collect();
            assert_eq!(seen.len(), 16, "position {pos}");
        }
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
