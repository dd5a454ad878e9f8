//! `GET /status`: the routing state as JSON, for operators and the controller.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use std::collections::BTreeMap;

use cutover_api::{
    AddrStatus, BackendStatus, HoldStatus, ReloadError, RouteStatus, Source, Status, Sticky,
};
use cutover_config::{Snapshot, format_percent};

use crate::metrics::RouteGauges;
use crate::state::{Live, Shared};

pub(super) fn status(shared: &Shared) -> Status {
    let live = shared.live();
    let snap = &live.snap;
    let reload = shared.reload_status();
    let routes = (0..snap.routes().len())
        .map(|i| route_status(&live, i))
        .collect();
    let backends = snap
        .config
        .backends
        .iter()
        .zip(&live.backends)
        .map(|(b, rt)| BackendStatus {
            name: b.name.clone(),
            configured: b.addrs.clone(),
            addrs: rt
                .set
                .list
                .load()
                .iter()
                .map(|e| AddrStatus {
                    addr: e.addr.clone(),
                    host: e.host.clone(),
                    healthy: e.health.is_up(),
                })
                .collect(),
            healthy: rt.any_up(),
        })
        .collect();
    Status {
        // Tells an operator (and the upgrade test) which process answers.
        pid: std::process::id(),
        // The server's clock, so pages compute a hold's age without client skew.
        now: unix(SystemTime::now()),
        generation: snap.generation,
        epoch: shared.fleet.epoch(),
        replica: shared.fleet.name.clone(),
        ready: shared.fleet.ready(),
        config_file: shared.config_path.display().to_string(),
        last_reload_error: reload.last_error.as_ref().map(|e| ReloadError {
            at: unix(e.at),
            errors: e.errors.clone(),
        }),
        last_reload: reload.last_success.map(unix),
        reload_errors_total: shared.metrics.config_reload_errors.get(),
        routes,
        backends,
        fleet: shared.fleet.status(),
    }
}

pub(super) fn route_status(live: &Live, i: usize) -> RouteStatus {
    let snap = &live.snap;
    let r = &snap.routes()[i];
    let rt = &live.routes[i];
    let mut s = RouteStatus {
        name: r.name.clone(),
        hosts: r.hosts.clone(),
        weights: weights_map(snap, i),
        weights_source: source(snap.weights_source(i)),
        effective_weights: BTreeMap::new(),
        effective_reason: None,
        writes: snap.writes(i).describe(&snap.config).to_string(),
        writes_source: source(snap.writes_source(i)),
        sticky: match &r.sticky {
            cutover_config::Sticky::Cookie { name, .. } => Sticky::Cookie(name.clone()),
            cutover_config::Sticky::Header(h) => Sticky::Header(h.clone()),
            cutover_config::Sticky::ClientIp => Sticky::ClientIp(true),
        },
        inflight: BTreeMap::new(),
        inflight_reads: BTreeMap::new(),
        inflight_writes: BTreeMap::new(),
        drained: BTreeMap::new(),
        long_lived: BTreeMap::new(),
        write_tunnels: BTreeMap::new(),
        hold: rt.hold.info().map(|h| HoldStatus {
            scope: h.scope.into(),
            since: unix(h.since),
            deadline: unix(h.deadline),
            held: rt.hold.held(),
            expired: rt.hold.expired(),
        }),
        members: r
            .members
            .iter()
            .map(|&m| snap.config.backends[m].name.clone())
            .collect(),
    };
    for (id, b) in snap.config.backends.iter().enumerate() {
        let c = &rt.counters[id];
        let (reads, writes) = (
            c.reads.load(Ordering::SeqCst),
            c.writes.load(Ordering::SeqCst),
        );
        s.inflight.insert(b.name.clone(), reads + writes);
        s.inflight_reads.insert(b.name.clone(), reads);
        s.inflight_writes.insert(b.name.clone(), writes);
        s.drained.insert(b.name.clone(), live.drained(i, id));
        let open = rt.pairs[id].upgraded.get();
        s.long_lived.insert(b.name.clone(), open);
        let follow_writes = r.upgrades == cutover_config::Upgrades::Writes;
        s.write_tunnels
            .insert(b.name.clone(), if follow_writes { open } else { 0 });
    }
    let (effective, why) = effective_weights(live, i);
    s.effective_weights = effective
        .iter()
        .map(|&(m, bp)| (snap.config.backends[m].name.clone(), format_percent(bp)))
        .collect();
    s.effective_reason = (!why.is_empty()).then_some(why);
    s
}

fn source(s: cutover_config::WeightsSource) -> Source {
    match s {
        cutover_config::WeightsSource::File => Source::File,
        cutover_config::WeightsSource::Admin => Source::Admin,
    }
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

/// Percent per backend, every backend of the config.
pub(super) fn weights_map(snap: &Snapshot, i: usize) -> BTreeMap<String, f64> {
    let w = snap.weights(i);
    snap.config
        .backends
        .iter()
        .enumerate()
        .map(|(id, b)| (b.name.clone(), format_percent(w.basis_points(id))))
        .collect()
}

pub(super) use crate::fleet::unix;
