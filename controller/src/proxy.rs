//! The proxies' admin API as the switchover and the plan runner use it: status,
//! state, hold, release, weights, metrics, each body and answer a `cutover_api`
//! type. One [`Proxies`] is the list of every replica's admin URL plus the bearer
//! token and, when built from a [`ProxySource`], how to find the replicas again.
//!
//! This file has the calls to one replica; `proxy/fleet.rs` the fleet as a whole
//! (finding replicas again, bringing a new one up to date, the epoch of each
//! change); `proxy/book.rs` what is remembered between calls.
//!
//! A change carries an epoch ([`Proxies::next_epoch`]): a replica that has seen a
//! newer one refuses it (409), and the refusal comes back as
//! [`Error::EpochConflict`], never retried; a replica found past this controller's
//! last change before a change is sent stops it as [`Error::FleetMoved`]. A
//! replica that has no `/state` (an older cutover-proxy) is sent no epoch, as
//! before.

mod book;
mod fleet;
#[cfg(test)]
pub(crate) mod testing;

pub use book::{Note, Seen};
pub use fleet::{CatchUp, Caught};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cutover_api::duration::format_duration;
use cutover_api::{
    ErrorBody, HoldAnswer, HoldRequest, ReleaseAnswer, ReleaseRequest, RouteStatus, Scope, State,
    Status, WeightsRequest,
};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::plan::discover::ProxySource;
use book::Book;

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Every proxy replica in front of the application. Clones share what is known
/// of the fleet (the epoch counter, what each replica showed), not the list:
/// [`Proxies::refresh`] updates the list of the clone it is called on.
#[derive(Clone)]
pub struct Proxies {
    urls: Vec<String>,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    source: Option<ProxySource>,
    book: Arc<Mutex<Book>>,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies")
            .field("urls", &self.urls)
            .field("source", &self.source)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// What `PUT /state` did.
#[derive(Debug, Clone, PartialEq)]
pub enum StatePut {
    /// The replica took it (or had it already); its state now.
    Adopted(State),
    /// The replica's own state is newer (409); its epoch.
    Newer(u64),
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
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Ok(Proxies {
            urls: clean_urls(urls)?,
            token: token.filter(|t| !t.is_empty()),
            client,
            source: None,
            book: Arc::default(),
        })
    }

    /// The replicas `source` finds now; [`Proxies::refresh`] asks it again.
    pub async fn discover(source: ProxySource, token: Option<String>) -> Result<Proxies, Error> {
        let mut p = Proxies::new(&source.urls().await?, token)?;
        p.book().resolved(&p.urls);
        p.source = Some(source);
        Ok(p)
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Never held across an await; a panic while holding it leaves bookkeeping
        // that is still worth reading.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call whose answer is a `T`; a non-2xx answer is an error (a 409 naming a
    /// newer epoch than `epoch` an [`Error::EpochConflict`]).
    async fn call<T: DeserializeOwned>(
        &self,
        url: &str,
        method: Method,
        path: &str,
        body: Option<String>,
        what: &str,
        epoch: Option<u64>,
    ) -> Result<T, Error> {
        let (status, bytes) = self.exchange(url, method, path, body, what).await?;
        if !status.is_success() {
            return Err(refusal(url, what, status, &bytes, epoch));
        }
        answer(url, what, &bytes)
    }

    /// One admin request: the answer's status and body, whatever the status. The
    /// token goes into the header only; no error message carries it.
    async fn exchange(
        &self,
        url: &str,
        method: Method,
        path: &str,
        body: Option<String>,
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
        let body = Full::new(body.map(Bytes::from).unwrap_or_default());
        let req = req.body(body).map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut s = e.to_string();
                let mut refused = false;
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    s.push_str(": ");
                    s.push_str(&c.to_string());
                    refused |= c
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
                    cause = c.source();
                }
                if refused {
                    Error::ProxyNotListening {
                        url: url.to_string(),
                        what: what.to_string(),
                        detail: s,
                    }
                } else {
                    fail(s)
                }
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
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| fail(format!("no answer within {}s", CALL_TIMEOUT.as_secs())))??;
        self.book().answered(url, unix_now());
        Ok((status, bytes))
    }

    /// `epoch` for a body to replica `url`, or none if it is an older proxy that
    /// takes none (asked with `GET /state` the first time).
    async fn stamp(&self, url: &str, epoch: u64) -> Result<Option<u64>, Error> {
        let serves = self.book().serves_state(url);
        let serves = match serves {
            Some(s) => s,
            None => self.state(url).await?.is_some(),
        };
        Ok(serves.then_some(epoch))
    }

    /// Replica `url`'s runtime state (`GET /state`); `None` from an older proxy
    /// that has no such endpoint (404).
    pub async fn state(&self, url: &str) -> Result<Option<State>, Error> {
        let what = "read /state";
        let (status, bytes) = self
            .exchange(url, Method::GET, "/state", None, what)
            .await?;
        if status == StatusCode::NOT_FOUND {
            self.book().set_serves_state(url, false);
            return Ok(None);
        }
        if !status.is_success() {
            return Err(refusal(url, what, status, &bytes, None));
        }
        let state: State = answer(url, what, &bytes)?;
        let mut book = self.book();
        book.set_serves_state(url, true);
        book.showed(url, &state.replica, Some(state.epoch), unix_now());
        Ok(Some(state))
    }

    /// Offers `state` to replica `url` (`PUT /state`): it adopts a newer one and
    /// keeps its own otherwise.
    pub async fn put_state(&self, url: &str, state: &State) -> Result<StatePut, Error> {
        let what = format!("bring it to epoch {} (PUT /state)", state.epoch);
        let (status, bytes) = self
            .exchange(url, Method::PUT, "/state", Some(to_json(state)), &what)
            .await?;
        if status == StatusCode::CONFLICT
            && let Some(epoch) = serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .and_then(|b| b.epoch)
        {
            return Ok(StatePut::Newer(epoch));
        }
        if !status.is_success() {
            return Err(refusal(url, &what, status, &bytes, None));
        }
        let now: State = answer(url, &what, &bytes)?;
        self.book()
            .showed(url, &now.replica, Some(now.epoch), unix_now());
        Ok(StatePut::Adopted(now))
    }

    /// Proxy `url`'s `/status`, read as the contract says.
    pub async fn read_status(&self, url: &str) -> Result<Status, Error> {
        let status: Status = self
            .call(url, Method::GET, "/status", None, "read /status", None)
            .await?;
        let epoch = (!status.replica.is_empty()).then_some(status.epoch);
        self.book().showed(url, &status.replica, epoch, unix_now());
        Ok(status)
    }

    /// The routes of proxy `url` that `route` names: by route name or by one of its
    /// hosts; `*` names every route.
    pub async fn routes(&self, url: &str, route: &str) -> Result<Vec<RouteStatus>, Error> {
        let status = self.read_status(url).await?;
        let want = route.to_ascii_lowercase();
        let found: Vec<RouteStatus> = status
            .routes
            .into_iter()
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

    /// Holds the requests of `scope` (writes, for a switchover) on `route` as part
    /// of change `epoch`, answering 503 by itself after `max` if nobody releases
    /// them. Returns the names of the routes held.
    pub async fn hold(
        &self,
        url: &str,
        route: &str,
        max: Duration,
        epoch: u64,
        scope: Scope,
    ) -> Result<Vec<String>, Error> {
        let epoch = self.stamp(url, epoch).await?;
        let body = HoldRequest {
            scope: Some(scope),
            max: Some(format_duration(max)),
            epoch,
        };
        let what = format!(
            "hold {} on route {route}{}",
            match scope {
                Scope::Writes => "writes",
                Scope::All => "every request",
                Scope::Upgrades => "upgrade handshakes",
            },
            at(epoch)
        );
        let a: HoldAnswer = self
            .call(
                url,
                Method::POST,
                &format!("/routes/{}/hold", encode(route)),
                Some(to_json(&body)),
                &what,
                epoch,
            )
            .await?;
        self.served(url, epoch, a.epoch);
        Ok(a.routes)
    }

    /// Releases the hold on `route` as part of change `epoch`, switching its write
    /// side to `writes` in the same step when given. Returns how many held
    /// requests were let go.
    pub async fn release(
        &self,
        url: &str,
        route: &str,
        writes: Option<&str>,
        epoch: u64,
    ) -> Result<u64, Error> {
        let epoch = self.stamp(url, epoch).await?;
        let body = ReleaseRequest {
            writes: writes.map(str::to_string),
            epoch,
        };
        // An older proxy gets what it always got: no body without a write side.
        let body = (body != ReleaseRequest::default()).then(|| to_json(&body));
        let what = format!(
            "release route {route}{}{}",
            writes
                .map(|w| format!(" with writes={w}"))
                .unwrap_or_default(),
            at(epoch)
        );
        let a: ReleaseAnswer = self
            .call(
                url,
                Method::POST,
                &format!("/routes/{}/release", encode(route)),
                body,
                &what,
                epoch,
            )
            .await?;
        self.served(url, epoch, a.epoch);
        Ok(a.released as u64)
    }

    /// Sets the weights (backend → percent) of the route that `host` names (one of
    /// its hosts or its name) on proxy `url`, with no epoch: the replica counts the
    /// change itself. The proxy applies them before it answers; a refusal (422:
    /// invalid weights, 404: no such route) is an error carrying the proxy's reason.
    pub async fn set_weights(
        &self,
        url: &str,
        host: &str,
        weights: &BTreeMap<String, f64>,
    ) -> Result<(), Error> {
        self.put_weights(url, host, weights, None).await
    }

    /// [`Proxies::set_weights`] as part of change `epoch`.
    pub async fn set_weights_at(
        &self,
        url: &str,
        host: &str,
        weights: &BTreeMap<String, f64>,
        epoch: u64,
    ) -> Result<(), Error> {
        let epoch = self.stamp(url, epoch).await?;
        self.put_weights(url, host, weights, epoch).await
    }

    async fn put_weights(
        &self,
        url: &str,
        host: &str,
        weights: &BTreeMap<String, f64>,
        epoch: Option<u64>,
    ) -> Result<(), Error> {
        let body = match epoch {
            Some(_) => WeightsRequest::Epoch {
                weights: weights.clone(),
                epoch,
            },
            // The bare map: what every version of the proxy reads.
            None => WeightsRequest::Bare(weights.clone()),
        };
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
        let what = format!("set weights {shown} on route {host}{}", at(epoch));
        let (status, bytes) = self
            .exchange(
                url,
                Method::PUT,
                &format!("/routes/{segment}/weights"),
                Some(to_json(&body)),
                &what,
            )
            .await?;
        if !status.is_success() {
            return Err(refusal(url, &what, status, &bytes, epoch));
        }
        self.served(url, epoch, epoch.unwrap_or(0));
        Ok(())
    }

    /// Records the epoch a change's answer carried, from a replica that takes
    /// epochs (an older proxy's answers have none).
    fn served(&self, url: &str, sent: Option<u64>, answered: u64) {
        if let Some(sent) = sent {
            self.book()
                .showed(url, "", Some(answered.max(sent)), unix_now());
        }
    }

    /// Proxy `url`'s `/metrics` exposition as text (parse it with
    /// [`crate::plan::metrics`]).
    pub async fn metrics_text(&self, url: &str) -> Result<String, Error> {
        let what = "read /metrics";
        let (status, bytes) = self
            .exchange(url, Method::GET, "/metrics", None, what)
            .await?;
        if !status.is_success() {
            return Err(refusal(url, what, status, &bytes, None));
        }
        String::from_utf8(bytes.to_vec()).map_err(|e| Error::Proxy {
            url: url.to_string(),
            what: what.to_string(),
            detail: format!("the exposition is not UTF-8: {e}"),
        })
    }
}

/// The route of `status` that `host` names exactly: its name or one of its hosts.
pub(crate) fn find_route<'s>(status: &'s Status, host: &str) -> Option<&'s RouteStatus> {
    status
        .routes
        .iter()
        .find(|r| r.name == host || r.hosts.iter().any(|h| h == host))
}

/// Admin base URLs as the calls use them: `http://HOST:PORT`, no trailing slash.
fn clean_urls(urls: &[String]) -> Result<Vec<String>, Error> {
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
    Ok(clean)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A body as JSON. The contract's types serialize whatever their values (string
/// keys, finite or not, become JSON), so this cannot fail.
fn to_json<T: Serialize>(body: &T) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

/// " at epoch N" for a call's description, nothing without one.
fn at(epoch: Option<u64>) -> String {
    epoch.map(|e| format!(" at epoch {e}")).unwrap_or_default()
}

/// A 2xx answer's body as the contract's type.
fn answer<T: DeserializeOwned>(url: &str, what: &str, bytes: &Bytes) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Proxy {
        url: url.to_string(),
        what: what.to_string(),
        detail: format!(
            "the answer is not what the admin API serves ({e}); is this a cutover-proxy of the \
             same version?"
        ),
    })
}

/// A non-2xx answer as an error: a 409 that names the replica's epoch, against a
/// call that carried one, is an [`Error::EpochConflict`]; anything else the
/// status, the proxy's own reason (its `error`, else the body), and a hint for the
/// usual 401.
fn refusal(url: &str, what: &str, status: StatusCode, bytes: &Bytes, epoch: Option<u64>) -> Error {
    let body: Option<ErrorBody> = serde_json::from_slice(bytes).ok();
    if status == StatusCode::CONFLICT
        && let (Some(call_epoch), Some(replica_epoch)) =
            (epoch, body.as_ref().and_then(|b| b.epoch))
    {
        return Error::EpochConflict {
            url: url.to_string(),
            what: what.to_string(),
            replica_epoch,
            call_epoch,
        };
    }
    let reason = body
        .map(|b| b.error)
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
