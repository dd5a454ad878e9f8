//! Talking to the other replicas: `GET /state` from each peer, at start (the
//! bootstrap) and every `sync_interval` after (anti-entropy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cutover_api::{PeerStatus, State};
use cutover_config::Peers;
use futures_util::future::join_all;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::{adopt, unix};
use crate::state::Shared;

/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// A state larger than this is not a state.
const MAX_STATE: usize = 4 * 1024 * 1024;

/// Before anything is served: asks the peers until one answers (or
/// `bootstrap_timeout` passes) and adopts the newest state among the answers.
pub async fn bootstrap(shared: &Arc<Shared>) {
    let fleet = &shared.fleet;
    if fleet.settings.peers == Peers::None {
        return;
    }
    let started = Instant::now();
    let until = started + fleet.settings.bootstrap_timeout;
    loop {
        let answers = ask_all(shared).await;
        if !answers.is_empty() {
            let n = answers.len();
            take_newest(shared, answers);
            tracing::info!(
                peers = n,
                epoch = fleet.epoch(),
                took_ms = started.elapsed().as_millis() as u64,
                "fleet state synced with the peers; serving"
            );
            break;
        }
        if Instant::now() >= until {
            tracing::warn!(
                timeout = %cutover_config::format_duration(fleet.settings.bootstrap_timeout),
                "no peer answered within fleet.bootstrap_timeout; serving with this replica's own state"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250).min(until - Instant::now())).await;
    }
    fleet.bootstrapped.store(true, Ordering::SeqCst);
    shared.metrics.fleet_ready.set(i64::from(fleet.ready()));
}

/// Every `sync_interval`: asks the peers and adopts a newer state.
pub fn start_sync(shared: Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    if shared.fleet.settings.peers == Peers::None {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(shared.fleet.settings.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let answers = ask_all(&shared).await;
            take_newest(&shared, answers);
            shared
                .metrics
                .fleet_ready
                .set(i64::from(shared.fleet.ready()));
        }
    }))
}

/// Adopts the newest of `answers` if it is newer than this replica's; marks the
/// replica behind while it cannot.
fn take_newest(shared: &Shared, answers: Vec<State>) {
    let Some(newest) = answers
        .into_iter()
        .reduce(|a, b| if b.newer_than(&a) { b } else { a })
    else {
        return;
    };
    match adopt(shared, &newest) {
        Ok(_) => shared.fleet.behind.store(false, Ordering::SeqCst),
        Err(e) => {
            shared.fleet.behind.store(true, Ordering::SeqCst);
            tracing::error!(
                peer = %newest.replica,
                epoch = newest.epoch,
                "cannot adopt the newer state of a peer: {e}"
            );
        }
    }
    shared.metrics.fleet_epoch.set(shared.fleet.epoch() as i64);
}

/// The states of every peer that answered, this replica's own answer left out.
async fn ask_all(shared: &Shared) -> Vec<State> {
    let addrs = resolve(shared).await;
    let asked = join_all(addrs.iter().map(|a| ask(shared, *a))).await;
    let mut seen = shared.fleet.seen.lock().unwrap_or_else(|p| p.into_inner());
    seen.clear();
    let mut out = Vec::new();
    for (addr, answer) in addrs.iter().zip(asked) {
        match answer {
            Ok(st) if st.replica == shared.fleet.name => {}
            Ok(st) => {
                seen.insert(
                    addr.to_string(),
                    PeerStatus {
                        replica: Some(st.replica.clone()),
                        epoch: Some(st.epoch),
                        error: None,
                        answered: Some(unix(SystemTime::now())),
                    },
                );
                out.push(st);
            }
            Err(e) => {
                seen.insert(
                    addr.to_string(),
                    PeerStatus {
                        replica: None,
                        epoch: None,
                        error: Some(e),
                        answered: None,
                    },
                );
            }
        }
    }
    out
}

/// The peers' admin addresses now: the name re-resolved, or the static list.
async fn resolve(shared: &Shared) -> Vec<SocketAddr> {
    let one = |host: &str, port: u16| {
        let host = host.to_string();
        async move {
            if let Ok(ip) = host.parse() {
                return vec![SocketAddr::new(ip, port)];
            }
            match shared.dns.resolve(&host, port).await {
                Ok((addrs, _)) => addrs,
                Err(e) => {
                    tracing::debug!(%host, "cannot resolve the fleet peers: {e}");
                    Vec::new()
                }
            }
        }
    };
    let mut out = Vec::new();
    match &shared.fleet.settings.peers {
        Peers::None => {}
        Peers::Dns { host, port } => out = one(host, *port).await,
        Peers::Static(list) => {
            for p in list {
                let (h, port) = match p.rsplit_once(':') {
                    Some((h, port)) => (h.trim_matches(['[', ']']), port.parse().unwrap_or(0)),
                    None => continue,
                };
                out.extend(one(h, port).await);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `GET /state` from one peer, with the admin token.
async fn ask(shared: &Shared, addr: SocketAddr) -> Result<State, String> {
    let call = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::get("/state").header(http::header::HOST, addr.to_string());
        if let Some(t) = &shared.admin_token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_STATE)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("GET /state answered {status}"));
        }
        serde_json::from_slice::<State>(&body).map_err(|e| format!("not a state: {e}"))
    };
    tokio::time::timeout(PEER_TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer within {} ms", PEER_TIMEOUT.as_millis()))?
}
