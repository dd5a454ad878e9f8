//! One connection task: claims the next request, waits for its due time (open loop),
//! sends it over its own connection, and records the outcome locally.
//!
//! Nothing on this path takes a lock: the ticket counter is one atomic add, the
//! recorder is the task's own, and the timers are the task's own and reused.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::HeaderName;
use http::response::Parts;
use http_body_util::BodyExt;
use tokio::time::Sleep;

use super::connect::{Conn, Connector, Watchdog, bounded, classify};
use super::request::{Maker, RequestSource};
use super::schedule::{Kind, Schedule};
use crate::ledger::{Ledger, LedgerEntry, LedgerError, response_id};
use crate::stats::{ErrorKind, Recorder, Sample};

/// The header whose values are counted per backend.
pub const BACKEND_HEADER: &str = "x-cutover-backend";

/// The same, pre-parsed: a `&str` key would be validated and lowercased on every lookup.
const BACKEND: HeaderName = HeaderName::from_static(BACKEND_HEADER);

/// How long a closed-loop task waits after a failed connect, so that a dead target is
/// reported rather than hammered in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// How often a sleeping task looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Bodies kept for the ledger's id lookup are cut here; an id lives near the top.
const MAX_KEPT_BODY: usize = 64 * 1024;

/// State shared by all connection tasks of a run.
pub struct Shared {
    /// When each request is due.
    pub schedule: Schedule,
    /// The next ticket (open loop) or the count of measured requests (closed loop).
    pub next: AtomicU64,
    /// Set to end the run early (Ctrl-C, a ledger failure).
    pub stop: AtomicBool,
    /// Opens connections.
    pub connector: Arc<Connector>,
    /// Builds requests.
    pub source: RequestSource,
    /// Where acknowledged writes go.
    pub ledger: Option<Ledger>,
    /// The first ledger failure, which ends the run.
    pub ledger_error: Mutex<Option<LedgerError>>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Shared {
    /// Asks every task to stop after its current request.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn ledger_failed(&self, error: LedgerError) {
        let mut slot = self.ledger_error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(error);
        self.request_stop();
    }
}

/// One connection task.
pub struct Worker {
    shared: Arc<Shared>,
    conn: Option<Conn>,
    recorder: Recorder,
    maker: Maker,
    pacer: Pin<Box<Sleep>>,
    watchdog: Watchdog,
    /// When the task's measured requests were last sent and last completed.
    marks: Marks,
}

/// When a task's (or a run's) measured requests were last sent and last completed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Marks {
    /// The last actual send of a measured request.
    pub last_sent: Option<Instant>,
    /// The last completion (response or failure) of a measured request.
    pub last_done: Option<Instant>,
}

impl Marks {
    /// The later of each mark.
    pub fn merge(self, other: Marks) -> Marks {
        Marks {
            last_sent: self.last_sent.max(other.last_sent),
            last_done: self.last_done.max(other.last_done),
        }
    }
}

impl Worker {
    /// A task with an optional connection opened beforehand.
    pub fn new(shared: Arc<Shared>, conn: Option<Conn>, recorder: Recorder, maker: Maker) -> Self {
        let watchdog = Watchdog::new(shared.timeout);
        Self {
            shared,
            conn,
            recorder,
            maker,
            pacer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            watchdog,
            marks: Marks::default(),
        }
    }

    /// Runs until the schedule is done or a stop is requested; returns when its measured
    /// requests were last sent and last completed.
    pub async fn run(mut self) -> Marks {
        match self.shared.schedule.kind {
            Kind::Open {
                first_measured,
                end_ticket,
                give_up,
                ..
            } => self.open_loop(first_measured, end_ticket, give_up).await,
            Kind::Closed { end, requests } => self.closed_loop(end, requests).await,
        }
        self.recorder.flush(Instant::now());
        self.marks
    }

    async fn open_loop(&mut self, first_measured: u64, end_ticket: u64, give_up: Instant) {
        while !self.shared.stopping() {
            let ticket = self.shared.next.fetch_add(1, Ordering::Relaxed);
            if ticket >= end_ticket {
                break;
            }
            let due = self.shared.schedule.due(ticket);
            let now = Instant::now();
            if now >= give_up {
                break;
            }
            // A ticket claimed before its time was waited for by an idle connection: the
            // timer's wake-up slack (tokio's wheel has 1 ms ticks) is the generator's, not
            // the target's, so it is measured from the wake-up. A ticket claimed after its
            // time waited because every connection was busy: that delay is the target's,
            // and it is measured from the due time. That is the correction.
            let intended = if due > now {
                if self.pace(due).await {
                    break;
                }
                None
            } else {
                Some(due)
            };
            self.request(intended, ticket >= first_measured).await;
        }
    }

    async fn closed_loop(&mut self, end: Option<Instant>, requests: Option<u64>) {
        let measure_start = self.shared.schedule.measure_start;
        while !self.shared.stopping() {
            let now = Instant::now();
            if end.is_some_and(|end| now >= end) {
                break;
            }
            let measured = now >= measure_start;
            if measured
                && let Some(limit) = requests
                && self.shared.next.fetch_add(1, Ordering::Relaxed) >= limit
            {
                break;
            }
            if let Some(ErrorKind::Connect | ErrorKind::Tls) = self.request(None, measured).await
                && self.pace(Instant::now() + CONNECT_BACKOFF).await
            {
                break;
            }
        }
    }

    /// Sleeps until `until`; returns true when a stop was requested meanwhile.
    async fn pace(&mut self, until: Instant) -> bool {
        loop {
            // Time first: a request that came due while waiting is sent even when a stop
            // arrived meanwhile, so that an interrupted run does not report it as unsent.
            let now = Instant::now();
            if now >= until {
                return false;
            }
            if self.shared.stopping() {
                return true;
            }
            // Short sleeps in one go; long ones in steps, to notice a stop. A flag checked
            // between steps keeps a lock (a Notify's waiter list) off the request path.
            self.pacer
                .as_mut()
                .reset(until.min(now + STOP_CHECK).into());
            self.pacer.as_mut().await;
        }
    }

    /// Sends one request and records it; returns the failure kind, if any. Latency is
    /// corrected from `intended` when given, else measured from the actual send.
    async fn request(&mut self, intended: Option<Instant>, measured: bool) -> Option<ErrorKind> {
        let built = match self.shared.source.build(&mut self.maker) {
            Ok(built) => built,
            Err(kind) => {
                if measured {
                    self.recorder.failure(kind, None, Instant::now());
                }
                return Some(kind);
            }
        };
        let sent = Instant::now();
        self.watchdog.start(sent);
        if measured {
            self.marks.last_sent = Some(sent);
        }
        let keep_body = built.ledger.is_some();
        let result = self.exchange(built.request, keep_body).await;
        let done = Instant::now();
        let sample = Sample {
            corrected_us: micros(done.saturating_duration_since(intended.unwrap_or(sent))),
            uncorrected_us: micros(done.saturating_duration_since(sent)),
        };
        match result {
            Ok((parts, body)) => {
                let status = parts.status.as_u16();
                if measured {
                    let backend = parts.headers.get(&BACKEND).map(|v| v.as_bytes());
                    self.recorder.response(sample, status, backend, done);
                    self.marks.last_done = Some(done);
                }
                if let Some((index, request_id)) = built.ledger
                    && parts.status.is_success()
                {
                    self.record_write(index, request_id, status, &parts, &body);
                }
                None
            }
            Err(kind) => {
                if measured {
                    let sample = (kind == ErrorKind::Timeout).then_some(sample);
                    self.recorder.failure(kind, sample, done);
                    self.marks.last_done = Some(done);
                }
                Some(kind)
            }
        }
    }

    fn record_write(
        &self,
        index: usize,
        request_id: String,
        status: u16,
        parts: &Parts,
        body: &[u8],
    ) {
        let Some(ledger) = &self.shared.ledger else {
            return;
        };
        let template = &self.shared.source.templates()[index];
        let entry = LedgerEntry {
            request_id,
            template: template.name.clone(),
            status,
            id: response_id(&parts.headers, body, template.id_header.as_ref()),
        };
        if let Err(e) = ledger.record(&entry) {
            self.shared.ledger_failed(e);
        }
    }

    /// Sends `request` and reads the whole response; the body is kept only when asked.
    async fn exchange(
        &mut self,
        request: http::Request<http_body_util::Full<bytes::Bytes>>,
        keep_body: bool,
    ) -> Result<(Parts, Vec<u8>), ErrorKind> {
        let mut conn = self.ready_conn().await?;
        let Conn { sender, driver } = &mut conn;
        let exchange = async {
            let response = sender.send(request).await?;
            let (parts, mut body) = response.into_parts();
            let mut kept = Vec::new();
            // The body is read to its end either way: a keep-alive connection can carry the
            // next request only once this response is fully off the wire.
            while let Some(frame) = body.frame().await {
                let frame = frame?;
                if keep_body
                    && let Some(data) = frame.data_ref()
                    && kept.len() < MAX_KEPT_BODY
                {
                    kept.extend_from_slice(data);
                }
            }
            Ok::<_, hyper::Error>((parts, kept))
        };
        match driver.drive(exchange, &mut self.watchdog).await {
            None => Err(ErrorKind::Timeout),
            Some(Err(e)) => Err(classify(&e)),
            Some(Ok(answer)) => {
                self.conn = Some(conn);
                Ok(answer)
            }
        }
    }

    /// A connection ready for a request. A kept-alive connection that the server has
    /// closed in the meantime is replaced once without counting an error: nothing was sent
    /// on it.
    async fn ready_conn(&mut self) -> Result<Conn, ErrorKind> {
        for _ in 0..2 {
            let mut conn = match self.conn.take() {
                Some(conn) if !conn.driver.is_closed() => conn,
                _ => self.open().await?,
            };
            let Conn { sender, driver } = &mut conn;
            match driver.drive(sender.ready(), &mut self.watchdog).await {
                None => return Err(ErrorKind::Timeout),
                Some(Ok(())) => return Ok(conn),
                Some(Err(_)) => continue,
            }
        }
        Err(ErrorKind::Reset)
    }

    async fn open(&mut self) -> Result<Conn, ErrorKind> {
        bounded(self.shared.connector.connect(), &mut self.watchdog)
            .await
            .unwrap_or(Err(ErrorKind::Connect))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
