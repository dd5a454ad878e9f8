//! The demo application of the database tests: hyper in front of tokio-postgres.
//! `POST /items` inserts the body into `items` (serial id) and answers `201` with
//! the id; `GET /items/{id}` answers the body, or 404. Every answer carries
//! `x-app: {name}`. It runs on its own thread and runtime, like [`crate::Backend`].
//!
//! Like a real application's pool, it reconnects when the database ends its
//! sessions (which the switchover does on purpose) and retries the statement once
//! on a fresh connection when the old one was found dead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::{Mutex, oneshot};
use tokio_postgres::{Client, NoTls};

/// The application's schema, created by the tests on the source.
pub const APP_SCHEMA: &str = "CREATE TABLE items (
    id serial PRIMARY KEY,
    body text NOT NULL,
    created timestamptz NOT NULL DEFAULT now());
GRANT SELECT, INSERT, UPDATE, DELETE ON items TO app;
GRANT USAGE, SELECT ON SEQUENCE items_id_seq TO app;";

/// Connections per application.
const POOL: usize = 8;

struct Pool {
    dsn: String,
    slots: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

impl Pool {
    async fn connect(&self) -> Result<Client, String> {
        let (client, conn) = tokio_postgres::connect(&self.dsn, NoTls)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs `sql` with one text parameter on a pooled connection; on a connection
    /// the server ended, once more on a fresh one.
    async fn query(&self, sql: &str, param: &str) -> Result<Vec<tokio_postgres::Row>, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        for attempt in 0..2 {
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = Some(self.connect().await?);
            }
            let Some(client) = slot.as_ref() else {
                continue;
            };
            match client.query(sql, &[&param]).await {
                Ok(rows) => return Ok(rows),
                Err(e) => {
                    let ended = client.is_closed()
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

/// A running demo app; stopped on drop.
pub struct App {
    pub name: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl App {
    /// Starts app `name` on `127.0.0.1:0`, using the database at `dsn`.
    pub fn start(name: &str, dsn: &str) -> App {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let (stop_tx, stop_rx) = oneshot::channel();
        let pool = Arc::new(Pool {
            dsn: dsn.to_string(),
            slots: (0..POOL).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        });
        let app_name: Arc<str> = name.into();
        let thread = std::thread::Builder::new()
            .name(format!("app-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("app runtime");
                rt.block_on(serve(listener, app_name, pool, stop_rx));
                rt.shutdown_background();
            })
            .expect("spawn app thread");
        App {
            name: name.to_string(),
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    name: Arc<str>,
    pool: Arc<Pool>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let (name, pool) = (name.clone(), pool.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, name.clone(), pool.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    pool: Arc<Pool>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await?.to_bytes();
    let (status, text) = match (method, path.strip_prefix("/items")) {
        (Method::POST, Some("")) => {
            let body = String::from_utf8_lossy(&body).into_owned();
            match pool
                .query(
                    "INSERT INTO items (body) VALUES ($1) RETURNING id::text",
                    &body,
                )
                .await
            {
                Ok(rows) => (StatusCode::CREATED, rows[0].get::<_, String>(0)),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        (Method::GET, Some(id)) if id.starts_with('/') => {
            match pool
                .query("SELECT body FROM items WHERE id = $1::text::int", &id[1..])
                .await
            {
                Ok(rows) if rows.is_empty() => (StatusCode::NOT_FOUND, "no such item".into()),
                Ok(rows) => (StatusCode::OK, rows[0].get::<_, String>(0)),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "POST /items or GET /items/{id}".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-app", v);
    }
    Ok(resp)
}
