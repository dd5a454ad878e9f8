//! `POST /routes/{host}/hold` and `POST /routes/{host}/release`: the proxy's part of
//! the database switchover; and `POST /routes/{host}/disconnect`, which closes
//! upgraded connections. `{host}` is a host the route lists, its name, or `*` for
//! every route.

use std::time::Duration;

use bytes::Bytes;
use cutover_api::{
    DisconnectAnswer, DisconnectRequest, HoldAnswer, HoldRequest, HoldState, ReleaseAnswer,
    ReleaseRequest,
};
use cutover_config::{WeightsError, WriteSide, format_duration, parse_duration};
use http::{Response, StatusCode};

use super::{error, stale, status, typed};
use crate::body::ProxyBody;
use crate::hold::Scope;
use crate::state::{Live, Shared, UpdateError};

/// `{"scope":"writes"|"all"|"upgrades","max":"30s","epoch":N}`, each optional (writes;
/// `[hold] max`; one more than this replica's epoch).
pub(super) fn hold(shared: &Shared, host: &str, body: &Bytes) -> Response<ProxyBody> {
    let req: HoldRequest = match parse(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let scope = Scope::from(req.scope.unwrap_or_default());
    let live = shared.live();
    let max = match duration_field(req.max.as_deref(), "max", live.snap.config.hold.max) {
        Ok(d) if d > Duration::ZERO => d,
        Ok(_) => return error(StatusCode::UNPROCESSABLE_ENTITY, "max must be above zero"),
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let routes = match live.snap.routes_for(host) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let change = match shared.fleet.begin(req.epoch) {
        Ok(c) => c,
        Err(current) => return stale(req.epoch, current),
    };
    let mut names = Vec::new();
    let mut info = None;
    let grace = live.snap.config.hold.upgrade_grace;
    for &ri in &routes {
        info = Some(live.routes[ri].hold.hold(scope, max));
        names.push(live.snap.routes()[ri].name.clone());
        close_upgraded_after(&live, ri, grace);
    }
    let epoch = change.commit(shared);
    tracing::warn!(routes = ?names, scope = scope.as_str(), max = ?max, epoch, "hold started: requests in scope wait in the proxy");
    let hold = info.map(|h| HoldState {
        scope: req.scope.unwrap_or_default(),
        since: status::unix(h.since),
        deadline: status::unix(h.deadline),
    });
    typed(
        StatusCode::OK,
        &HoldAnswer {
            hold,
            routes: names,
            epoch,
        },
    )
}

/// How often a hold closes again the upgraded connections that opened since.
const CLOSE_AGAIN: Duration = Duration::from_millis(250);

/// The writes are about to move: after `grace`, the upgraded connections (which
/// may carry writes the proxy cannot hold) to the side that has the writes now are
/// closed, so that their clients reconnect, wait in the hold, and follow the writes.
/// A split write side has no one side: every member's are closed.
fn close_upgraded_after(live: &Live, ri: usize, grace: Duration) {
    if live.snap.routes()[ri].upgrades != cutover_config::Upgrades::Writes {
        return;
    }
    let losing: Vec<usize> = match live.snap.writes(ri) {
        WriteSide::Backend(b) => vec![b],
        WriteSide::Split => live.snap.routes()[ri].members.clone(),
    };
    let pairs: Vec<_> = losing
        .into_iter()
        .map(|b| live.routes[ri].counters[b].clone())
        .collect();
    let hold = live.routes[ri].hold.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        // Again while the hold lasts: a handshake that was on its way when the
        // hold began becomes a tunnel after the first close, and the drain
        // waits for it.
        loop {
            for p in &pairs {
                p.disconnect(Duration::ZERO);
            }
            tokio::time::sleep(CLOSE_AGAIN).await;
            if hold.info().is_none() {
                return;
            }
        }
    });
}

/// `{"backend":"old","over":"30s"}`: closes the route's upgraded connections to
/// that backend, each at a random moment within `over` (default at once), so that
/// a thousand clients do not reconnect in the same second.
pub(super) fn disconnect(shared: &Shared, host: &str, body: &Bytes) -> Response<ProxyBody> {
    let req: DisconnectRequest = match parse(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("{e}; e.g. {{\"backend\":\"old\",\"over\":\"30s\"}}"),
            );
        }
    };
    let live = shared.live();
    let backend = &req.backend;
    let Some(b) = live
        .snap
        .config
        .backends
        .iter()
        .position(|x| &x.name == backend)
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("backend {backend:?} is not in the config"),
        );
    };
    let over = match duration_field(req.over.as_deref(), "over", Duration::ZERO) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let routes = match live.snap.routes_for(host) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let mut names = Vec::new();
    let mut open = 0;
    for &ri in &routes {
        open += live.routes[ri].pairs[b].upgraded.get();
        live.routes[ri].counters[b].disconnect(over);
        names.push(live.snap.routes()[ri].name.clone());
    }
    tracing::warn!(routes = ?names, backend = %backend, open, over = ?over,
        "closing upgraded connections on request");
    typed(
        StatusCode::OK,
        &DisconnectAnswer {
            routes: names,
            backend: backend.clone(),
            closing: open,
            over: format_duration(over),
        },
    )
}

/// A body's duration field (`"30s"`), `default` when absent, or why not (for a
/// 422).
fn duration_field(v: Option<&str>, name: &str, default: Duration) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|e| format!("{name}: {e}")),
    }
}

/// Optional `{"writes":"new","epoch":N}`: switch the write side, then release, in
/// that order.
pub(super) fn release(shared: &Shared, host: &str, body: &Bytes) -> Response<ProxyBody> {
    let req: ReleaseRequest = match parse(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let writes = req.writes.clone();
    let routes = match shared.live().snap.routes_for(host) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let change = match shared.fleet.begin(req.epoch) {
        Ok(c) => c,
        Err(current) => return stale(req.epoch, current),
    };
    let mut released = 0;
    let wake = |live: &crate::state::Live| {
        // The new write side is published before anyone wakes, so a held request
        // re-routes on it and can never reach the old side.
        routes
            .iter()
            .map(|&ri| live.routes[ri].hold.release())
            .sum::<usize>()
    };
    let live = match &writes {
        Some(backend) => match shared.update_then(
            |snap| snap.with_writes(host, backend),
            |live| released = wake(live),
        ) {
            Ok(live) => live,
            Err(UpdateError::Rejected(WeightsError::NoSuchRoute(h))) => {
                return error(StatusCode::NOT_FOUND, &format!("no route lists host {h:?}"));
            }
            Err(UpdateError::Rejected(e)) => {
                return error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
            }
            Err(UpdateError::State(e)) => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            }
        },
        None => {
            let live = shared.live();
            released = wake(&live);
            live
        }
    };
    let names: Vec<String> = routes
        .iter()
        .map(|&ri| live.snap.routes()[ri].name.clone())
        .collect();
    let writes_now: Vec<&str> = routes
        .iter()
        .map(|&ri| live.snap.writes(ri).describe(&live.snap.config))
        .collect();
    let epoch = change.commit(shared);
    tracing::warn!(routes = ?names, released, writes = ?writes_now, epoch, "hold released");
    let writes = writes.unwrap_or_else(|| {
        writes_now
            .first()
            .map(|s| s.to_string())
            .unwrap_or_default()
    });
    typed(
        StatusCode::OK,
        &ReleaseAnswer {
            released,
            routes: names,
            writes,
            epoch,
        },
    )
}

/// A request body of the contract; an empty body is the type's default.
fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, String> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("body: {e}"))
}
