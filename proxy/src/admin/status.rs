//! `GET /status`: the routing state as JSON, for operators and the controller.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use cutover_config::{Snapshot, format_percent};
use serde_json::{Map, Value, json};

use crate::metrics::RouteGauges;
use crate::state::{Live, Shared};

pub(super) fn status(shared: &Shared) -> Value {
    let live = shared.live();
    let snap = &live.snap;
    let reload = shared.reload_status();
    let routes: Vec<Value> = (0..snap.routes().len())
        .map(|i| route_json(&live, i))
        .collect();
    let backends: Vec<Value> = snap
        .config
        .backends
        .iter()
        .zip(&live.backends)
        .map(|(b, rt)| {
            let addrs: Vec<Value> = rt
                .set
                .list
                .load()
                .iter()
                .map(|e| json!({ "addr": e.addr, "host": e.host, "healthy": e.health.is_up() }))
                .collect();
            json!({ "name": b.name, "configured": b.addrs, "addrs": addrs, "healthy": rt.any_up() })
        })
        .collect();
    json!({
        // Tells an operator (and the upgrade test) which process answers.
        "pid": std::process::id(),
        // The server's clock, so pages compute a hold's age without client skew.
        "now": unix(SystemTime::now()),
        "generation": snap.generation,
        "config_file": shared.config_path.display().to_string(),
        "last_reload_error": reload.last_error.as_ref().map(|e| json!({
            "at": unix(e.at),
            "errors": e.errors,
        })),
        "last_reload": reload.last_success.map(unix),
        "reload_errors_total": shared.metrics.config_reload_errors.get(),
        "routes": routes,
        "backends": backends,
    })
}

pub(super) fn route_json(live: &Live, i: usize) -> Value {
    let snap = &live.snap;
    let r = &snap.routes()[i];
    let rt = &live.routes[i];
    let (mut inflight, mut reads, mut writes, mut drained, mut long_lived) =
        (Map::new(), Map::new(), Map::new(), Map::new(), Map::new());
    for (id, b) in snap.config.backends.iter().enumerate() {
        let c = &rt.counters[id];
        let (r, w) = (
            c.reads.load(Ordering::SeqCst),
            c.writes.load(Ordering::SeqCst),
        );
        inflight.insert(b.name.clone(), json!(r + w));
        reads.insert(b.name.clone(), json!(r));
        writes.insert(b.name.clone(), json!(w));
        drained.insert(b.name.clone(), json!(live.drained(i, id)));
        long_lived.insert(b.name.clone(), json!(rt.pairs[id].upgraded.get()));
    }
    let hold = rt.hold.info().map(|h| {
        json!({
            "scope": h.scope.as_str(),
            "since": unix(h.since),
            "deadline": unix(h.deadline),
            "held": rt.hold.held(),
            "expired": rt.hold.expired(),
        })
    });
    let (effective, why) = effective_weights(live, i);
    let effective: Map<String, Value> = effective
        .iter()
        .map(|&(m, bp)| {
            (
                snap.config.backends[m].name.clone(),
                json!(format_percent(bp)),
            )
        })
        .collect();
    json!({
        "name": r.name,
        "hosts": r.hosts,
        "weights": weights_json(snap, i),
        "weights_source": snap.weights_source(i).as_str(),
        "effective_weights": effective,
        "effective_reason": if why.is_empty() { Value::Null } else { json!(why) },
        "writes": snap.writes(i).describe(&snap.config),
        "writes_source": snap.writes_source(i).as_str(),
        "sticky": match &r.sticky {
            cutover_config::Sticky::Cookie { name, .. } => json!({ "cookie": name }),
            cutover_config::Sticky::Header(h) => json!({ "header": h }),
            cutover_config::Sticky::ClientIp => json!({ "client_ip": true }),
        },
        "inflight": inflight,
        "inflight_reads": reads,
        "inflight_writes": writes,
        "drained": drained,
        "long_lived": long_lived,
        "hold": hold,
        "members": r.members.iter().map(|&m| snap.config.backends[m].name.clone()).collect::<Vec<_>>(),
    })
}

/// The routing gauges `/metrics` exports (weights, drained, hold start), read from
/// the live state the way [`route_json`] reads it, for the route's member backends.
pub(super) fn gauges(shared: &Shared) -> Vec<RouteGauges> {
    let live = shared.live();
    let snap = &live.snap;
    snap.routes()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let w = snap.weights(i);
            let name = |m: usize| snap.config.backends[m].name.clone();
            RouteGauges {
                route: r.name.clone(),
                weights: r
                    .members
                    .iter()
                    .map(|&m| (name(m), f64::from(w.basis_points(m)) / 100.0))
                    .collect(),
                drained: r
                    .members
                    .iter()
                    .map(|&m| (name(m), live.drained(i, m)))
                    .collect(),
                effective: effective_weights(&live, i)
                    .0
                    .into_iter()
                    .map(|(m, bp)| (name(m), f64::from(bp) / 100.0))
                    .collect(),
                hold_since: live.routes[i].hold.info().map(|h| unix(h.since)),
            }
        })
        .collect()
}

/// The share of a route's reads each member actually gets now, in basis points,
/// and why it differs from the weights. As the request path does it: a member with
/// every address down (health checks, ejection) hands its share to the member with
/// an address up and the largest weight, unless the route sets `failover = false`,
/// when that share is answered 503.
pub(super) fn effective_weights(live: &Live, i: usize) -> (Vec<(usize, u16)>, Vec<String>) {
    let snap = &live.snap;
    let r = &snap.routes()[i];
    let w = snap.weights(i);
    let mut out: Vec<(usize, u16)> = r.members.iter().map(|&m| (m, w.basis_points(m))).collect();
    let mut why = Vec::new();
    for &m in &r.members {
        let share = w.basis_points(m);
        if share == 0 || live.backends[m].any_up() {
            continue;
        }
        let name = &snap.config.backends[m].name;
        let fallback = r
            .members
            .iter()
            .copied()
            .filter(|&o| o != m && live.backends[o].any_up())
            .max_by_key(|&o| (w.basis_points(o), std::cmp::Reverse(o)));
        for e in out.iter_mut().filter(|e| e.0 == m) {
            e.1 = 0;
        }
        match fallback {
            Some(f) if r.failover => {
                for e in out.iter_mut().filter(|e| e.0 == f) {
                    e.1 += share;
                }
                why.push(format!(
                    "{name} has no healthy address: its {}% goes to {}",
                    format_percent(share),
                    snap.config.backends[f].name
                ));
            }
            _ => why.push(format!(
                "{name} has no healthy address and {}: its {}% is answered 503",
                if r.failover {
                    "no other backend has one"
                } else {
                    "failover is off"
                },
                format_percent(share)
            )),
        }
    }
    (out, why)
}

pub(super) fn weights_json(snap: &Snapshot, i: usize) -> Value {
    let w = snap.weights(i);
    let mut m = Map::new();
    for (id, b) in snap.config.backends.iter().enumerate() {
        m.insert(b.name.clone(), json!(format_percent(w.basis_points(id))));
    }
    Value::Object(m)
}

pub(super) fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
