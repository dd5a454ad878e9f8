//! The demo platform of a rehearsal: one HTTP server per side (a [`Site`], standing
//! in for one cluster's ingress) that dispatches by Host to small applications.
//!
//! An application with a database (hyper in front of tokio-postgres):
//! - `POST /items` inserts the body into its table and answers `201` with the new id
//!   as the body and in `x-item-id` (the load generator's ledger takes it from there);
//! - `GET /items` answers `200` with the latest 10 ids as a JSON array: a read that
//!   cannot fail for lack of data;
//! - `GET /items/{id}` answers the stored body, or `404`;
//! - `GET /ws` opens a WebSocket whose text messages are inserted like `POST /items`
//!   (see [`ws`]).
//!
//! The stateless application (`weather`) answers any `GET` with a forecast computed
//! from the path, without a database; given a Redis, it caches each city's forecast
//! there (see [`cache`]). Every answer carries `x-app` and `x-side`; a
//! Host the site does not serve gets `404`.
//!
//! Like a real application's pool, each app reconnects when the database ends its
//! sessions (which the switchover does on purpose) and retries the statement once on
//! a fresh connection when the old one was found dead. A site runs on its own thread
//! and runtime, so the controller's work never delays its answers.

mod cache;
mod ws;

pub use cache::{CacheCounts, key as cache_key};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::{Mutex, oneshot};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use self::cache::Cache;
use cutover_controller::cache::RedisUrl;
use cutover_controller::{Connector, Dsn, Side};

/// The schema of the single-app demo (table `items`, role `app`), as the database
/// tests create it on the source.
pub const APP_SCHEMA: &str = "CREATE TABLE items (
    id serial PRIMARY KEY,
    body text NOT NULL,
    created timestamptz NOT NULL DEFAULT now());
GRANT SELECT, INSERT, UPDATE, DELETE ON items TO app;
GRANT USAGE, SELECT ON SEQUENCE items_id_seq TO app;";

/// The schema of an application whose records live in `table`, used by `role`.
/// Both names are plain identifiers chosen by the caller.
pub fn schema(table: &str, role: &str) -> String {
    format!(
        "CREATE TABLE {table} (
    id serial PRIMARY KEY,
    body text NOT NULL,
    created timestamptz NOT NULL DEFAULT now());
GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role};
GRANT USAGE, SELECT ON SEQUENCE {table}_id_seq TO {role};"
    )
}

/// Connections per application.
const POOL: usize = 8;

/// The header that carries a created record's id.
pub const ITEM_ID_HEADER: &str = "x-item-id";

/// One application of a site.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// Its name (the `x-app` header).
    pub name: String,
    /// The Host it answers (matched without the port, case-insensitively).
    pub host: String,
    /// Its database; `None` for a stateless app.
    pub dsn: Option<String>,
    /// The table its records go to (a plain identifier).
    pub table: String,
    /// The stateless app's cache.
    pub cache: Option<RedisUrl>,
}

impl AppSpec {
    /// An application with a database, keeping its records in `table`.
    pub fn with_db(name: &str, host: &str, dsn: &str, table: &str) -> AppSpec {
        AppSpec {
            name: name.into(),
            host: host.into(),
            dsn: Some(dsn.into()),
            table: table.into(),
            cache: None,
        }
    }

    /// The stateless application: forecasts computed from the path.
    pub fn stateless(name: &str, host: &str) -> AppSpec {
        AppSpec {
            name: name.into(),
            host: host.into(),
            dsn: None,
            table: String::new(),
            cache: None,
        }
    }

    /// The stateless application with its forecasts cached in `redis`.
    pub fn cached(name: &str, host: &str, redis: RedisUrl) -> AppSpec {
        AppSpec {
            cache: Some(redis),
            ..AppSpec::stateless(name, host)
        }
    }
}

struct Pool {
    /// How to connect, over the TLS the DSN asks for; an unreadable DSN or
    /// certificate file is every query's error.
    connector: Result<Connector, String>,
    slots: Vec<Mutex<Option<Pooled>>>,
    next: AtomicUsize,
}

/// One pooled connection and the statements prepared on it, by their text.
struct Pooled {
    client: Client,
    prepared: HashMap<String, Statement>,
}

impl Pooled {
    /// Runs `sql` with text parameters: prepared on this connection's first use
    /// of it (a round trip), then only bound and executed, as an application's
    /// driver does with its statement cache.
    async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = match self.prepared.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = self
                    .client
                    .prepare_typed(sql, &vec![Type::TEXT; params.len()])
                    .await?;
                self.prepared.insert(sql.to_owned(), s.clone());
                s
            }
        };
        self.client.query(&statement, params).await
    }
}

impl Pool {
    fn new(dsn: &str) -> Pool {
        let connector = Dsn::parse(Side::Target, dsn)
            .and_then(|d| Connector::new(&d))
            .map_err(|e| e.to_string());
        Pool {
            connector,
            slots: (0..POOL).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    async fn connect(&self) -> Result<Pooled, String> {
        let connector = self.connector.as_ref().map_err(Clone::clone)?;
        let client = connector
            .client()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Ok(Pooled {
            client,
            prepared: HashMap::new(),
        })
    }

    /// Opens every slot's connection ahead of the first request, as a deployed
    /// application's pool does (its minimum size) before traffic reaches it: the
    /// TLS handshake and the password exchange are not paid by the first users
    /// the proxy sends. A failure stops the warming; the slot connects on use.
    async fn warm(&self) {
        for slot in &self.slots {
            let mut slot = slot.lock().await;
            if slot.is_none() {
                match self.connect().await {
                    Ok(p) => *slot = Some(p),
                    Err(_) => return,
                }
            }
        }
    }

    /// Runs `sql` with text parameters on a pooled connection; on a connection the
    /// server ended, once more on a fresh one.
    async fn query(&self, sql: &str, params: &[&str]) -> Result<Vec<Row>, String> {
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        for attempt in 0..2 {
            if slot.as_ref().is_none_or(|p| p.client.is_closed()) {
                *slot = Some(self.connect().await?);
            }
            let Some(pooled) = slot.as_mut() else {
                continue;
            };
            match pooled.query(sql, &params).await {
                Ok(rows) => return Ok(rows),
                Err(e) => {
                    let ended = pooled.client.is_closed()
                        || e.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN);
                    if !ended || attempt == 1 {
                        return Err(format!("{e:?}"));
                    }
                    *slot = None;
                }
            }
        }
        Err("no connection".into())
    }
}

/// A running application's state.
struct AppState {
    name: Arc<str>,
    db: Option<Db>,
    cache: Option<Cache>,
}

/// The statements of one app, built once from its table name.
struct Db {
    pool: Pool,
    insert: String,
    latest: String,
    get: String,
}

impl AppState {
    fn new(spec: &AppSpec) -> AppState {
        let db = spec.dsn.as_deref().map(|dsn| {
            let t = &spec.table;
            Db {
                pool: Pool::new(dsn),
                insert: format!("INSERT INTO {t} (body) VALUES ($1) RETURNING id::text"),
                latest: format!(
                    "SELECT coalesce(json_agg(id)::text, '[]') FROM \
                     (SELECT id FROM {t} ORDER BY id DESC LIMIT 10) s"
                ),
                get: format!("SELECT body FROM {t} WHERE id = $1::text::int"),
            }
        });
        AppState {
            name: spec.name.as_str().into(),
            db,
            cache: spec.cache.clone().map(Cache::new),
        }
    }
}

/// Who answers which Host.
struct Routes {
    side: Arc<str>,
    by_host: HashMap<String, Arc<AppState>>,
    /// Answers every Host (the single-app form).
    any: Option<Arc<AppState>>,
}

impl Routes {
    fn find(&self, host: Option<&str>) -> Option<&Arc<AppState>> {
        if let Some(app) = &self.any {
            return Some(app);
        }
        let host = host?;
        let bare = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        self.by_host.get(&bare.to_ascii_lowercase())
    }
}

/// A running site: one listener on `127.0.0.1:0`; stopped on drop.
pub struct Site {
    /// The side it stands for (`x-side`).
    pub side: String,
    /// Where it listens.
    pub addr: SocketAddr,
    routes: Arc<Routes>,
    /// Its HTTPS listener's figures, when it serves HTTPS.
    tls: Option<Arc<TlsCounters>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What an HTTPS site's listener saw.
#[derive(Debug, Default)]
struct TlsCounters {
    h2: AtomicU64,
    http1: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
}

/// An HTTPS site's handshakes so far: completed by the protocol ALPN chose,
/// and failed (a client that did not trust the certificate, say, or spoke
/// plain HTTP to it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TlsCounts {
    pub h2: u64,
    pub http1: u64,
    /// Of those, the ones that resumed an earlier session (no certificate sent
    /// or verified).
    pub resumed: u64,
    pub failed: u64,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("side", &self.side)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Site {
    /// Starts side `side` serving `apps`, each on its Host, over plain HTTP, or
    /// HTTPS only with `tls` (as a load balancer with a certificate does).
    pub fn start(
        side: &str,
        apps: Vec<AppSpec>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Site> {
        let by_host = apps
            .iter()
            .map(|a| (a.host.to_ascii_lowercase(), Arc::new(AppState::new(a))))
            .collect();
        Site::spawn(
            side,
            Routes {
                side: side.into(),
                by_host,
                any: None,
            },
            tls,
        )
    }

    /// Its TLS handshakes, when it serves HTTPS.
    pub fn tls_counts(&self) -> Option<TlsCounts> {
        self.tls.as_ref().map(|c| TlsCounts {
            h2: c.h2.load(Ordering::Relaxed),
            http1: c.http1.load(Ordering::Relaxed),
            resumed: c.resumed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        })
    }

    fn spawn(
        side: &str,
        routes: Routes,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Site> {
        let listener = crate::loopback_listener()?;
        let addr = listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("site-{side}"))
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let routes = Arc::new(routes);
        let serving = routes.clone();
        let counters = tls.as_ref().map(|_| Arc::new(TlsCounters::default()));
        let tls = tls.map(|c| {
            (
                tokio_rustls::TlsAcceptor::from(c),
                counters.clone().unwrap_or_default(),
            )
        });
        let warming = routes.clone();
        let thread = std::thread::Builder::new()
            .name(format!("site-{side}"))
            .spawn(move || {
                for app in warming.by_host.values().chain(&warming.any) {
                    let app = app.clone();
                    rt.spawn(async move {
                        if let Some(db) = &app.db {
                            db.pool.warm().await;
                        }
                    });
                }
                rt.block_on(serve(listener, serving, tls, stop_rx));
                rt.shutdown_background();
            })?;
        Ok(Site {
            side: side.to_string(),
            addr,
            routes,
            tls: counters,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// How its cached apps' answers were served so far (all zero without a cache).
    pub fn cache_counts(&self) -> CacheCounts {
        self.routes
            .by_host
            .values()
            .filter_map(|a| a.cache.as_ref())
            .map(Cache::counts)
            .fold(CacheCounts::default(), |a, b| CacheCounts {
                hits: a.hits + b.hits,
                misses: a.misses + b.misses,
                errors: a.errors + b.errors,
            })
    }

    /// Stops serving; connections in progress are dropped. Safe to call twice.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The single-app form used by the database tests: app `name` (also its side)
/// answers every Host, with its records in `items`.
#[derive(Debug)]
pub struct App {
    /// The app's name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    _site: Site,
}

impl App {
    /// Starts app `name` on `127.0.0.1:0`, using the database at `dsn`.
    pub fn start(name: &str, dsn: &str) -> std::io::Result<App> {
        let spec = AppSpec::with_db(name, "*", dsn, "items");
        let site = Site::spawn(
            name,
            Routes {
                side: name.into(),
                by_host: HashMap::new(),
                any: Some(Arc::new(AppState::new(&spec))),
            },
            None,
        )?;
        Ok(App {
            name: name.to_string(),
            addr: site.addr,
            _site: site,
        })
    }
}

async fn serve(
    listener: std::net::TcpListener,
    routes: Arc<Routes>,
    tls: Option<(tokio_rustls::TlsAcceptor, Arc<TlsCounters>)>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let routes = routes.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some((acceptor, counters)) = tls else {
                serve_connection(TokioIo::new(stream), routes).await;
                return;
            };
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
            let tls = stream.get_ref().1;
            let h2 = tls.alpn_protocol() == Some(b"h2");
            if tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                counters.resumed.fetch_add(1, Ordering::Relaxed);
            }
            let counter = if h2 { &counters.h2 } else { &counters.http1 };
            counter.fetch_add(1, Ordering::Relaxed);
            serve_connection(TokioIo::new(stream), routes).await;
        });
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// HTTP/1.1 (with upgrades) or HTTP/2, as the client speaks, until it closes.
async fn serve_connection<I>(io: I, routes: Arc<Routes>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| answer(req, routes.clone()));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, svc)
        .await;
}

/// An answer before the common headers are added.
struct Answer {
    status: StatusCode,
    body: String,
    json: bool,
    item_id: Option<String>,
    cache: Option<cache::Lookup>,
}

impl Answer {
    fn text(status: StatusCode, body: impl Into<String>) -> Answer {
        Answer {
            status,
            body: body.into(),
            json: false,
            item_id: None,
            cache: None,
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    routes: Arc<Routes>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let app = routes.find(host.as_deref()).cloned();
    if path == "/ws"
        && ws::requested(&req)
        && let Some(app) = app.as_ref().filter(|a| a.db.is_some())
    {
        return Ok(ws::accept(req, app.clone()));
    }
    let body = req.into_body().collect().await?.to_bytes();
    let answer = match &app {
        None => Answer::text(
            StatusCode::NOT_FOUND,
            format!(
                "no application for host {:?} on side {}",
                host.unwrap_or_default(),
                routes.side
            ),
        ),
        Some(app) => match &app.db {
            _ if path == "/healthz" => Answer::text(StatusCode::OK, "ok"),
            None => match &app.cache {
                Some(cache) => cached_forecast(cache, &method, &path).await,
                None => forecast(&method, &path),
            },
            Some(db) => records(db, &method, &path, &body).await,
        },
    };
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = answer.status;
    let headers = resp.headers_mut();
    if let Some(v) = app
        .as_ref()
        .and_then(|a| HeaderValue::from_str(&a.name).ok())
    {
        headers.insert("x-app", v);
    }
    if let Ok(v) = HeaderValue::from_str(&routes.side) {
        headers.insert("x-side", v);
    }
    if let Some(id) = answer
        .item_id
        .and_then(|id| HeaderValue::from_str(&id).ok())
    {
        headers.insert(ITEM_ID_HEADER, id);
    }
    if let Some(lookup) = answer.cache {
        headers.insert("x-cache", HeaderValue::from_static(lookup.header()));
    }
    let kind = if answer.json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(kind));
    Ok(resp)
}

async fn records(db: &Db, method: &Method, path: &str, body: &[u8]) -> Answer {
    match (method, path.strip_prefix("/items")) {
        (&Method::POST, Some("")) => {
            let body = String::from_utf8_lossy(body);
            match db.pool.query(&db.insert, &[&body]).await {
                Ok(rows) => match rows.first() {
                    Some(row) => {
                        let id: String = row.get(0);
                        Answer {
                            item_id: Some(id.clone()),
                            ..Answer::text(StatusCode::CREATED, id)
                        }
                    }
                    None => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, "no id returned"),
                },
                Err(e) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        (&Method::GET, Some("")) => match db.pool.query(&db.latest, &[]).await {
            Ok(rows) => Answer {
                json: true,
                ..Answer::text(
                    StatusCode::OK,
                    rows.first()
                        .map_or_else(|| "[]".to_string(), |r| r.get::<_, String>(0)),
                )
            },
            Err(e) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        (&Method::GET, Some(id)) if id.starts_with('/') => {
            let id = &id[1..];
            if id.is_empty() || id.len() > 9 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Answer::text(StatusCode::NOT_FOUND, "no such item");
            }
            match db.pool.query(&db.get, &[id]).await {
                Ok(rows) => match rows.first() {
                    Some(row) => Answer::text(StatusCode::OK, row.get::<_, String>(0)),
                    None => Answer::text(StatusCode::NOT_FOUND, "no such item"),
                },
                Err(e) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        _ => Answer::text(
            StatusCode::NOT_FOUND,
            "POST /items, GET /items or GET /items/{id}",
        ),
    }
}

/// [`forecast`], read from the cache first and stored there on a miss.
async fn cached_forecast(cache: &Cache, method: &Method, path: &str) -> Answer {
    if method != Method::GET && method != Method::HEAD {
        return forecast(method, path);
    }
    let city = city_of(path);
    let (body, lookup) = cache
        .get_or_set(&cache::key(city), || forecast_of(city))
        .await;
    Answer {
        json: true,
        cache: Some(lookup),
        ..Answer::text(StatusCode::OK, body)
    }
}

/// The city a forecast path asks for: its last segment.
fn city_of(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|c| !c.is_empty())
        .unwrap_or("anywhere")
}

/// A forecast for the last segment of the path: the same city gets the same
/// weather on both sides, so a user moved between them sees no difference.
fn forecast(method: &Method, path: &str) -> Answer {
    if method != Method::GET && method != Method::HEAD {
        return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "forecasts are read-only");
    }
    Answer {
        json: true,
        ..Answer::text(StatusCode::OK, forecast_of(city_of(path)))
    }
}

/// `city`'s forecast as JSON, the same every time.
pub fn forecast_of(city: &str) -> String {
    // FNV-1a: stable across runs and processes.
    let h = city.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    const SKIES: [&str; 5] = ["sunny", "cloudy", "rain", "wind", "snow"];
    let temperature = (h % 45) as i64 - 10;
    let sky = SKIES[(h / 45 % SKIES.len() as u64) as usize];
    let city: String = city
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect();
    format!(r#"{{"city":"{city}","temperature_c":{temperature},"sky":"{sky}"}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_without_port_and_case() {
        let spec = AppSpec::stateless("weather", "Weather.Test");
        let routes = Routes {
            side: "old".into(),
            by_host: [(
                spec.host.to_ascii_lowercase(),
                Arc::new(AppState::new(&spec)),
            )]
            .into_iter()
            .collect(),
            any: None,
        };
        assert!(routes.find(Some("weather.test:8080")).is_some());
        assert!(routes.find(Some("WEATHER.test")).is_some());
        assert!(routes.find(Some("shop.test")).is_none());
        assert!(routes.find(None).is_none());
    }

    #[test]
    fn a_city_gets_the_same_forecast_every_time() {
        let a = forecast(&Method::GET, "/forecast/lisbon");
        let b = forecast(&Method::GET, "/forecast/lisbon/");
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, b.body);
        assert!(a.body.contains(r#""city":"lisbon""#), "{}", a.body);
        assert_eq!(
            forecast(&Method::POST, "/forecast/x").status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
