//! `GET /`: the live status page, one self-contained HTML file (inline CSS and
//! JavaScript, no external assets, so it works in an air-gapped cluster).
//!
//! The page is static and the same on every proxy; everything it shows comes from
//! `/status` and `/metrics`, fetched once a second by its script. With an admin
//! token configured those calls need `Authorization: Bearer`, which the script
//! sends from a token given in the URL fragment (`/#token=…`, never sent to the
//! server or written to logs) or typed into the page. Rates, error ratios and
//! p99 are computed in the browser from successive `/metrics` scrapes.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response};

use crate::body::ProxyBody;

/// The page, compiled into the binary.
pub(super) const PAGE: &str = include_str!("page.html");

/// Allows the inline style and script and calls to this origin only: no asset
/// can be loaded from elsewhere, and the page cannot be framed.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub(super) fn page() -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::text(PAGE));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let lower = PAGE.to_ascii_lowercase();
        for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
            assert!(!lower.contains(needle), "page.html contains {needle:?}");
        }
        assert!(PAGE.contains("get('status')") && PAGE.contains("get('metrics')"));
    }
}
