//! The proxies' admin API as the switchover and the plan runner use it: status,
//! hold, release, weights, metrics. One [`Proxies`] is the list of every replica's
//! admin URL plus the bearer token.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Error;

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Every proxy replica in front of the application.
#[derive(Clone)]
pub struct Proxies {
    urls: Vec<String>,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies")
            .field("urls", &self.urls)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// One route as a proxy's `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteState {
    pub name: String,
    pub hosts: Vec<String>,
    /// The write side: a backend name or `split`.
    pub writes: String,
    /// Writes in flight per backend.
    pub inflight_writes: BTreeMap<String, u64>,
    pub hold: Option<Value>,
}

impl Proxies {
    /// `urls` are admin base URLs such as `http://10.0.0.5:9901`.
    pub fn new(urls: &[String], token: Option<String>) -> Result<Proxies, Error> {
        if urls.is_empty() {
            return Err(Error::ProxyUrl {
                url: String::new(),
                reason: "give at least one proxy admin URL".into(),
            });
        }
        let mut clean = Vec::new();
        for u in urls {
            let t = u.trim().trim_end_matches('/');
            let t = if t.contains("://") {
                t.to_string()
            } else {
                format!("http://{t}")
            };
            let uri: http::Uri = t.parse().map_err(|e| Error::ProxyUrl {
                url: u.clone(),
                reason: format!("{e}"),
            })?;
            if uri.scheme_str() != Some("http") {
                return Err(Error::ProxyUrl {
                    url: u.clone(),
                    reason: "the admin API is plain HTTP; use http://HOST:PORT".into(),
                });
            }
            if uri.authority().is_none() || uri.path() != "/" && !uri.path().is_empty() {
                return Err(Error::ProxyUrl {
                    url: u.clone(),
                    reason: "expected http://HOST:PORT with no path".into(),
                });
            }
            clean.push(t);
        }
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Ok(Proxies {
            urls: clean,
            token: token.filter(|t| !t.is_empty()),
            client,
        })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    async fn call(
        &self,
        url: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, Error> {
        let (status, bytes) = self.exchange(url, method, path, body, what).await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        Err(refusal(url, what, status, &value, &bytes))
    }

    /// One admin request: the answer's status and body, whatever the status. The
    /// token goes into the header only; no error message carries it.
    async fn exchange(
        &self,
        url: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<(StatusCode, Bytes), Error> {
        let fail = |detail: String| Error::Proxy {
            url: url.to_string(),
            what: what.to_string(),
            detail,
        };
        let mutating = method != Method::GET;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{url}{path}"));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        // The admin API takes state changes only as JSON (a web page cannot send
        // that without a preflight), also when there is no body.
        if mutating {
            req = req.header("content-type", "application/json");
        }
        let body = match body {
            Some(v) => Full::new(Bytes::from(v.to_string())),
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut s = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    s.push_str(": ");
                    s.push_str(&c.to_string());
                    cause = c.source();
                }
                fail(s)
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| fail(format!("no answer within {}s", CALL_TIMEOUT.as_secs())))?
    }

    /// The routes of proxy `url` that `route` names: by route name or by one of its
    /// hosts; `*` names every route.
    pub async fn routes(&self, url: &str, route: &str) -> Result<Vec<RouteState>, Error> {
        let status = self
            .call(url, Method::GET, "/status", None, "read /status")
            .await?;
        let routes = status
            .get("routes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let want = route.to_ascii_lowercase();
        let found: Vec<RouteState> = routes
            .iter()
            .map(parse_route)
            .filter(|r| {
                want == "*"
                    || r.name.eq_ignore_ascii_case(&want)
                    || r.hosts.iter().any(|h| h.eq_ignore_ascii_case(&want))
            })
            .collect();
        if found.is_empty() {
            return Err(Error::Proxy {
                url: url.to_string(),
                what: format!("find route {route}"),
                detail: "no route has that name or host".into(),
            });
        }
        Ok(found)
    }

    /// Holds writes on `route`, answering 503 by itself after `max` if nobody
    /// releases them. Returns the names of the routes held.
    pub async fn hold(&self, url: &str, route: &str, max: Duration) -> Result<Vec<String>, Error> {
        let body = json!({ "scope": "writes", "max": duration_text(max) });
        let v = self
            .call(
                url,
                Method::POST,
                &format!("/routes/{}/hold", encode(route)),
                Some(body),
                &format!("hold writes on route {route}"),
            )
            .await?;
        Ok(names(&v))
    }

    /// Releases the hold on `route`, switching its write side to `writes` in the
    /// same step when given. Returns how many held requests were let go.
    pub async fn release(
        &self,
        url: &str,
        route: &str,
        writes: Option<&str>,
    ) -> Result<u64, Error> {
        let body = writes.map(|w| json!({ "writes": w }));
        let v = self
            .call(
                url,
                Method::POST,
                &format!("/routes/{}/release", encode(route)),
                body,
                &format!(
                    "release route {route}{}",
                    writes
                        .map(|w| format!(" with writes={w}"))
                        .unwrap_or_default()
                ),
            )
            .await?;
        Ok(v.get("released").and_then(Value::as_u64).unwrap_or(0))
    }

    /// Proxy `url`'s `/metrics` exposition as text (parse it with
    /// [`crate::plan::metrics`]).
    pub async fn metrics_text(&self, url: &str) -> Result<String, Error> {
        let what = "read /metrics";
        let (status, bytes) = self
            .exchange(url, Method::GET, "/metrics", None, what)
            .await?;
        if !status.is_success() {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(refusal(url, what, status, &value, &bytes));
        }
        String::from_utf8(bytes.to_vec()).map_err(|e| Error::Proxy {
            url: url.to_string(),
            what: what.to_string(),
            detail: format!("the exposition is not UTF-8: {e}"),
        })
    }

    /// Proxy `url`'s whole `/status` document.
    pub async fn status(&self, url: &str) -> Result<Value, Error> {
        self.call(url, Method::GET, "/status", None, "read /status")
            .await
    }

    /// Sets the weights (backend → percent) of the route that `host` names (one of
    /// its hosts or its name) on proxy `url`. The proxy applies them before it
    /// answers; a refusal (422: invalid weights, 404: no such route) is an error
    /// carrying the proxy's reason.
    pub async fn set_weights(
        &self,
        url: &str,
        host: &str,
        weights: &BTreeMap<String, f64>,
    ) -> Result<(), Error> {
        let body = Value::Object(weights.iter().map(|(k, w)| (k.clone(), json!(w))).collect());
        let shown = weights
            .iter()
            .map(|(k, w)| format!("{k}={w}"))
            .collect::<Vec<_>>()
            .join(" ");
        // `*` alone is the default route here, not "every route" as for a hold.
        let segment = if host == "*" {
            "%2A".to_string()
        } else {
            encode(host)
        };
        self.call(
            url,
            Method::PUT,
            &format!("/routes/{segment}/weights"),
            Some(body),
            &format!("set weights {shown} on route {host}"),
        )
        .await
        .map(|_| ())
    }
}

fn parse_route(v: &Value) -> RouteState {
    let counts = |key: &str| -> BTreeMap<String, u64> {
        v.get(key)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    RouteState {
        name: v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        hosts: v
            .get("hosts")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        writes: v
            .get("writes")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        inflight_writes: counts("inflight_writes"),
        hold: v.get("hold").filter(|h| !h.is_null()).cloned(),
    }
}

/// `30s`, or `2500ms` when not whole seconds: what the proxy's duration parser reads.
fn duration_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn names(v: &Value) -> Vec<String> {
    v.get("routes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A non-2xx answer as an error: the status, the proxy's own reason (its JSON
/// `error`, else the body), and a hint for the usual 401.
fn refusal(url: &str, what: &str, status: StatusCode, value: &Value, bytes: &Bytes) -> Error {
    let reason = value
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_string());
    let hint = if status == StatusCode::UNAUTHORIZED {
        " (give the admin token with --proxy-token-file or CUTOVER_ADMIN_TOKEN)"
    } else {
        ""
    };
    Error::Proxy {
        url: url.to_string(),
        what: what.to_string(),
        detail: format!("HTTP {}: {reason}{hint}", status.as_u16()),
    }
}

/// A route or host as a path segment: `*` alone means every route; a wildcard host
/// is sent as `%2A.example.com`.
fn encode(route: &str) -> String {
    if route == "*" {
        return "*".into();
    }
    route
        .chars()
        .map(|c| match c {
            '*' => "%2A".to_string(),
            '/' => "%2F".to_string(),
            ' ' => "%20".to_string(),
            '%' => "%25".to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
#[path = "proxy/tests.rs"]
mod tests;
