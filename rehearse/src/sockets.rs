//! WebSocket clients of the social app: long-lived connections through the proxy
//! (a chat tab left open), each sending a message a second that the app writes to
//! its database and acknowledges with the row's id. They stay through the whole
//! migration: when the proxy closes a connection with `1012` (service restart:
//! a switchover moves the writes, a replica stops), the client reconnects at once,
//! as browsers' WebSocket code does, and its next handshake is held with the writes
//! and released to the side that has them.
//!
//! Every acknowledged message is checked at the end like the workers' writes
//! (`workers::check`): by id and body, where the social app's writes go. A
//! connection that ends without a close frame is counted as cut: the proxy is
//! meant to ask clients to leave, never to drop them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::platform::AppDef;
use super::workers::{Ack, Side, Tally, unix_now};

/// Clients in a full rehearsal (a quarter with `--quick`).
pub const CLIENTS: usize = 200;
/// The report's label for these writes (the record's `past_proxy` key).
pub const KIND: &str = "websocket messages";
/// Time between two messages of a client.
const EVERY: Duration = Duration::from_secs(1);
/// How long a handshake, or the answer to a message, may take. A handshake is
/// held during a switchover's pause, for up to its `max_pause`.
const WAIT: Duration = Duration::from_secs(15);
/// The wait before connecting again after a failed handshake.
const RETRY_AFTER: Duration = Duration::from_millis(200);

type Ws = WebSocketStream<TcpStream>;

/// How the connections ended and what they carried, over every client.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SocketsReport {
    pub clients: usize,
    /// Handshakes answered `101`.
    pub opened: u64,
    /// Connections the proxy (or the app) closed, by close code.
    pub closed_by_server: BTreeMap<u16, u64>,
    /// Connections that ended without a close frame.
    pub cut: u64,
    /// Handshakes that failed, by reason.
    pub refused: BTreeMap<String, u64>,
    pub sent: u64,
    pub acknowledged: u64,
    /// Messages the app answered with an error (not acknowledged).
    pub errors: u64,
}

impl SocketsReport {
    /// What is wrong: the verdict fails on any.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.acknowledged == 0 {
            p.push("no WebSocket message was acknowledged".into());
        }
        if self.cut > 0 {
            p.push(format!(
                "{} WebSocket connections ended without a close frame",
                self.cut
            ));
        }
        if self.errors > 0 {
            p.push(format!(
                "{} WebSocket messages were answered with an error",
                self.errors
            ));
        }
        let refused: u64 = self.refused.values().sum();
        if refused > 0 {
            p.push(format!("{refused} WebSocket handshakes failed"));
        }
        p
    }
}

/// One client's figures.
#[derive(Debug, Default)]
struct Client {
    report: SocketsReport,
    acks: Vec<Ack>,
}

/// The running clients; stopped by [`Sockets::stop`] (each closes normally).
pub struct Sockets {
    app: &'static AppDef,
    stop: watch::Sender<bool>,
    /// How many clients have had a connection open (each counts once).
    connected: watch::Receiver<usize>,
    tasks: Vec<JoinHandle<Client>>,
}

impl Sockets {
    /// Starts `n` clients of `app` through `front`, their first messages spread
    /// over a second.
    pub fn start(front: SocketAddr, app: &'static AppDef, n: usize) -> Sockets {
        let (stop, stopped) = watch::channel(false);
        let (opened, connected) = watch::channel(0);
        let tasks = (0..n)
            .map(|i| {
                let stopped = stopped.clone();
                let opened = opened.clone();
                let url = format!("ws://{}/ws", app.host());
                let first = EVERY * u32::try_from(i).unwrap_or(0) / u32::try_from(n).unwrap_or(1);
                tokio::spawn(client(front, url, i, first, stopped, opened))
            })
            .collect();
        Sockets {
            app,
            stop,
            connected,
            tasks,
        }
    }

    /// Waits until every client has a connection open, as the chat tabs of a
    /// platform in service have before a migration begins; false if some still had
    /// none after `within`.
    pub async fn wait_connected(&mut self, within: Duration) -> bool {
        let all = self.tasks.len();
        timeout(within, self.connected.wait_for(|n| *n >= all))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// How many clients have had a connection open.
    pub fn connected(&self) -> usize {
        *self.connected.borrow()
    }

    /// Stops every client and returns their figures, and their acknowledged
    /// messages as one writer's tally for `workers::check`.
    pub async fn stop(self) -> (SocketsReport, Tally) {
        let _ = self.stop.send(true);
        let mut all = SocketsReport {
            clients: self.tasks.len(),
            ..SocketsReport::default()
        };
        let mut acks = Vec::new();
        for t in self.tasks {
            let Ok(c) = t.await else { continue };
            let r = c.report;
            all.opened += r.opened;
            all.cut += r.cut;
            all.sent += r.sent;
            all.acknowledged += r.acknowledged;
            all.errors += r.errors;
            for (code, n) in r.closed_by_server {
                *all.closed_by_server.entry(code).or_default() += n;
            }
            for (why, n) in r.refused {
                *all.refused.entry(why).or_default() += n;
            }
            acks.extend(c.acks);
        }
        let mut refused = all.refused.clone();
        if all.errors > 0 {
            refused.insert("answered with an error".into(), all.errors);
        }
        let tally = Tally {
            app: self.app,
            kind: KIND,
            side: Side::Proxy,
            role: "websocket clients".into(),
            acks,
            refused,
            attempts: all.sent,
            reconnects: all.opened.saturating_sub(all.clients as u64),
        };
        (all, tally)
    }
}

/// How a connection ended.
enum End {
    /// The server closed it with this code (0: a close frame without one).
    Closed(u16),
    Cut,
    Stopped,
}

async fn client(
    front: SocketAddr,
    url: String,
    id: usize,
    first: Duration,
    mut stopped: watch::Receiver<bool>,
    opened: watch::Sender<usize>,
) -> Client {
    let mut c = Client::default();
    let mut n = 0u64;
    let mut next = Instant::now() + first;
    while !*stopped.borrow() {
        let ws = timeout(WAIT, async {
            let tcp = TcpStream::connect(front)
                .await
                .map_err(|e| format!("connect: {}", e.kind()))?;
            tokio_tungstenite::client_async(url.as_str(), tcp)
                .await
                .map_err(|e| handshake_error(&e))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no handshake within {WAIT:?}")));
        let mut ws = match ws {
            Ok((ws, _)) => ws,
            Err(why) => {
                *c.report.refused.entry(why).or_default() += 1;
                tokio::select! {
                    () = sleep(RETRY_AFTER) => {}
                    _ = stopped.changed() => {}
                }
                continue;
            }
        };
        if c.report.opened == 0 {
            opened.send_modify(|n| *n += 1);
        }
        c.report.opened += 1;
        match talk(&mut ws, &mut c, id, &mut n, &mut next, &mut stopped).await {
            End::Closed(code) => *c.report.closed_by_server.entry(code).or_default() += 1,
            End::Cut => c.report.cut += 1,
            End::Stopped => {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "done".into(),
                };
                let _ = timeout(Duration::from_secs(2), ws.close(Some(close))).await;
            }
        }
    }
    c
}

/// Messages on one connection until it ends.
async fn talk(
    ws: &mut Ws,
    c: &mut Client,
    id: usize,
    n: &mut u64,
    next: &mut Instant,
    stopped: &mut watch::Receiver<bool>,
) -> End {
    loop {
        tokio::select! {
            _ = stopped.changed() => return End::Stopped,
            msg = ws.next() => match ending(msg) {
                Some(end) => return end,
                None => continue,
            },
            () = sleep_until(*next) => {}
        }
        *next = (*next + EVERY).max(Instant::now());
        *n += 1;
        let body = format!(r#"{{"writer":"websocket","client":{id},"n":{n}}}"#);
        c.report.sent += 1;
        if ws.send(Message::text(body.clone())).await.is_err() {
            return End::Cut;
        }
        // The answer; a close may come first (the message is then unacknowledged).
        loop {
            let Ok(msg) = timeout(WAIT, ws.next()).await else {
                return End::Cut;
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    match t.as_str().strip_prefix("ok ").map(str::parse::<i32>) {
                        Some(Ok(row)) => {
                            c.report.acknowledged += 1;
                            c.acks.push(Ack {
                                id: row,
                                body,
                                at: unix_now(),
                            });
                        }
                        _ => c.report.errors += 1,
                    }
                    break;
                }
                other => match ending(other) {
                    Some(end) => return end,
                    None => continue,
                },
            }
        }
    }
}

/// What a message not waited for means: the end of the connection, or nothing.
fn ending(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Option<End> {
    match msg {
        Some(Ok(Message::Close(frame))) => {
            Some(End::Closed(frame.map_or(0, |f| u16::from(f.code))))
        }
        Some(Ok(_)) => None,
        Some(Err(_)) | None => Some(End::Cut),
    }
}

/// A failed handshake's reason, without details that differ per attempt.
fn handshake_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => format!("answered {}", resp.status().as_u16()),
        Error::Io(io) => format!("handshake: {}", io.kind()),
        other => format!("handshake: {other}"),
    }
}

/// The report's section.
pub fn section(r: &SocketsReport) -> String {
    let mut s = String::from("\n## WebSocket clients\n\n");
    let closes = if r.closed_by_server.is_empty() {
        "none".to_string()
    } else {
        r.closed_by_server
            .iter()
            .map(|(code, n)| format!("{n} with {code}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "- {} clients of the social app held a WebSocket through the proxy, each sending a \
         message a second that the app inserts; a client reconnects as soon as its \
         connection is closed.",
        r.clients
    );
    let _ = writeln!(
        s,
        "- {} connections opened; closed by the server: {closes}; ended without a close \
         frame: {}; handshakes failed: {}.",
        r.opened,
        r.cut,
        r.refused.values().sum::<u64>()
    );
    let _ = writeln!(
        s,
        "- {} messages sent, {} acknowledged (each looked up in the social database: see \
         \"Writers past the proxy\", row `websocket clients`), {} answered with an error.",
        r.sent, r.acknowledged, r.errors
    );
    for p in r.problems() {
        let _ = writeln!(s, "- **Problem:** {p}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_connections_refusals_and_silence_are_problems() {
        let good = SocketsReport {
            clients: 2,
            opened: 4,
            closed_by_server: [(1012, 2)].into_iter().collect(),
            sent: 10,
            acknowledged: 10,
            ..SocketsReport::default()
        };
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        let text = section(&good);
        assert!(text.contains("closed by the server: 2 with 1012"), "{text}");
        let cut = SocketsReport {
            cut: 3,
            ..good.clone()
        };
        assert!(cut.problems()[0].contains("3 WebSocket connections"));
        let refused = SocketsReport {
            refused: [("answered 502".to_string(), 1)].into_iter().collect(),
            ..good.clone()
        };
        assert!(refused.problems()[0].contains("1 WebSocket handshakes failed"));
        let failed = SocketsReport {
            errors: 2,
            ..good.clone()
        };
        assert!(failed.problems()[0].contains("2 WebSocket messages"));
        let silent = SocketsReport {
            acknowledged: 0,
            ..good
        };
        assert!(!silent.problems().is_empty());
    }
}
