//! The access log: one line per request on standard output, in logfmt or (with
//! `--log-format json`) JSON, for all requests, none, or a sampled share
//! (`[log] access`). A line is written when the response's last byte has gone to
//! the client, so it carries the bytes sent and the whole duration.
//!
//! It never holds a header value other than the request id: no cookies, no
//! authorization, and no query string unless `[log] query = true`.
//!
//! Lines go to a writer thread over a bounded queue. A proxy whose standard output
//! is slower than its traffic drops lines (and says how many, in warnings at 1, 2,
//! 4, 8 … dropped) rather than slowing requests down.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};
use crate::state::Live;

/// Lines waiting for the writer at most.
const QUEUE: usize = 16 * 1024;

/// How lines are written: set once by the binary before traffic starts.
static JSON: OnceLock<bool> = OnceLock::new();
static WRITER: OnceLock<Option<SyncSender<String>>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Chooses JSON lines over logfmt, for the access log and `tracing` alike.
pub fn set_json(json: bool) {
    let _ = JSON.set(json);
}

fn json() -> bool {
    JSON.get().copied().unwrap_or(false)
}

/// What the request path learnt about a request, for its log line.
#[derive(Default)]
pub struct Served {
    pub live: Option<std::sync::Arc<Live>>,
    pub route: Option<usize>,
    /// The backend that answered, or failed last.
    pub backend: Option<usize>,
    /// Upstream attempts made, and why each retry happened.
    pub attempts: u32,
    pub retries: Vec<&'static str>,
    /// `kept` (the sticky choice answered), `minted` (a new sticky key) or `moved`
    /// (another backend answered: a write to the write side, a retry, a failover).
    pub sticky: Option<&'static str>,
    pub write: bool,
    /// The request body's size, when known.
    pub bytes_in: Option<u64>,
}

/// A request's line, filled in as it goes.
pub struct Entry {
    time: SystemTime,
    start: Instant,
    client: SocketAddr,
    method: http::Method,
    host: String,
    path: String,
    id: HeaderValue,
    served: Served,
    status: u16,
}

impl Entry {
    /// A line for this request if the log is on and it falls in the sample.
    pub fn sample(
        share: f64,
        parts: &Parts,
        client: SocketAddr,
        id: &HeaderValue,
        query: bool,
        start: Instant,
    ) -> Option<Box<Entry>> {
        if share <= 0.0 || (share < 1.0 && rand::random::<f64>() >= share) {
            return None;
        }
        let path = match parts.uri.query() {
            Some(q) if query => format!("{}?{q}", parts.uri.path()),
            _ => parts.uri.path().to_string(),
        };
        let host = parts
            .uri
            .host()
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("")
            .to_string();
        Some(Box::new(Entry {
            time: SystemTime::now(),
            start,
            client,
            method: parts.method.clone(),
            host,
            path,
            id: id.clone(),
            served: Served::default(),
            status: 0,
        }))
    }

    /// Wraps the response body so the line is written once it has been sent.
    pub fn finish(
        mut self: Box<Self>,
        status: StatusCode,
        served: Served,
        body: ProxyBody,
    ) -> ProxyBody {
        self.status = status.as_u16();
        self.served = served;
        ProxyBody::Logged(Box::new(Logged {
            body,
            entry: self,
            bytes_out: 0,
        }))
    }

    fn line(&self, bytes_out: u64) -> String {
        let s = &self.served;
        let names = s.live.as_ref();
        let route = names
            .zip(s.route)
            .map_or("", |(l, r)| l.snap.routes()[r].name.as_str());
        let backend = names
            .zip(s.backend)
            .map_or("", |(l, b)| l.backends[b].name.as_str());
        let retries = s.retries.join(",");
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let time = humantime::format_rfc3339_millis(self.time).to_string();
        let id = self.id.to_str().unwrap_or("");
        if json() {
            let line = serde_json::json!({
                "time": time,
                "client": self.client.ip().to_string(),
                "host": self.host,
                "route": route,
                "backend": backend,
                "method": self.method.as_str(),
                "path": self.path,
                "status": self.status,
                "bytes_in": s.bytes_in,
                "bytes_out": bytes_out,
                "duration_ms": (duration_ms * 1000.0).round() / 1000.0,
                "attempts": s.attempts,
                "retries": retries,
                "request_id": id,
                "sticky": s.sticky,
                "write": s.write,
            });
            return line.to_string();
        }
        let mut out = String::with_capacity(256);
        let _ = write!(out, "time={time} client={}", self.client.ip());
        for (k, v) in [
            ("host", self.host.as_str()),
            ("route", route),
            ("backend", backend),
            ("method", self.method.as_str()),
            ("path", self.path.as_str()),
        ] {
            out.push(' ');
            out.push_str(k);
            out.push('=');
            logfmt_value(&mut out, v);
        }
        let _ = write!(out, " status={}", self.status);
        match s.bytes_in {
            Some(n) => {
                let _ = write!(out, " bytes_in={n}");
            }
            None => out.push_str(" bytes_in="),
        }
        let _ = write!(
            out,
            " bytes_out={bytes_out} duration_ms={duration_ms:.3} attempts={}",
            s.attempts
        );
        out.push_str(" retries=");
        logfmt_value(&mut out, &retries);
        out.push_str(" request_id=");
        logfmt_value(&mut out, id);
        let _ = write!(out, " sticky={} write={}", s.sticky.unwrap_or(""), s.write);
        out
    }
}

/// A value as logfmt wants it: bare when it can be, else quoted with `"` and `\`
/// escaped.
fn logfmt_value(out: &mut String, v: &str) {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\')
    {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A response body that writes its request's line when it ends or is dropped.
pub struct Logged {
    body: ProxyBody,
    entry: Box<Entry>,
    bytes_out: u64,
}

impl Logged {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled
            && let Some(d) = f.data_ref()
        {
            self.bytes_out += d.len() as u64;
        }
        polled
    }

    pub fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        write_line(self.entry.line(self.bytes_out));
    }
}

fn write_line(line: String) {
    let writer = WRITER.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx))
            .ok()
            .map(|_| tx)
    });
    let Some(tx) = writer else { return };
    match tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            let n = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "access log lines dropped: standard output is not keeping up"
                );
            }
        }
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Writes queued lines to standard output, flushing whenever the queue runs dry.
fn writer(rx: Receiver<String>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    while let Ok(line) = rx.recv() {
        let mut next = Some(line);
        while let Some(l) = next {
            if writeln!(out, "{l}").is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}
