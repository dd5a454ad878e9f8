//! How the report tells the fleet's part of a rehearsal: the events, the
//! balancer's figures, the requests each replica answered, and whether replicas
//! at one epoch ever served different splits ([`super::consistency`]). Each
//! failure of the fleet's part is a problem that fails the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::consistency::Divergence;
use super::exercise::FleetEvent;
use super::{Fleet, SERVICE};
use crate::balancer::Stats;

impl Fleet {
    /// The figures for the report, read once the plan is over.
    pub async fn report(&self, started_with: usize) -> FleetReport {
        let mut requests = BTreeMap::new();
        for (name, admin) in self.running() {
            if let Some(n) = Self::requests(admin).await {
                requests.insert(name, n);
            }
        }
        let mut problems: Vec<String> = self
            .events
            .iter()
            .filter_map(|e| {
                e.error
                    .as_ref()
                    .map(|err| format!("{} {}: {err}", e.kind, e.replica))
            })
            .collect();
        for d in self.consistency.divergences.iter().filter(|d| d.lasting()) {
            problems.push(format!(
                "replicas at the same epoch {} served different splits from {:.1} s to {:.1} s \
                 ({} looks): {}",
                d.epoch,
                d.first_s,
                d.last_s,
                d.seen,
                d.replicas.join("; ")
            ));
        }
        for kind in ["restart", "add"] {
            if !self.events.iter().any(|e| e.kind == kind) {
                problems.push(match kind {
                    "restart" => {
                        "no replica was restarted: the 50% step was never seen on every replica"
                            .into()
                    }
                    _ => "no replica was added: no hold was seen on any replica".into(),
                });
            }
        }
        FleetReport {
            replicas_at_start: started_with,
            replicas_at_end: self.running().len(),
            service: format!("{SERVICE}:{}", self.port),
            dns: self.dns.addr.to_string(),
            balancer: self.balancer.addr.to_string(),
            events: self.events.clone(),
            balancer_stats: self.balancer.stats(),
            requests_by_replica: requests,
            consistency_looks: self.consistency.looks,
            divergences: self.consistency.divergences.clone(),
            problems,
        }
    }
}

/// The fleet's part of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetReport {
    pub replicas_at_start: usize,
    pub replicas_at_end: usize,
    /// `NAME:PORT` the replicas and the plan resolve.
    pub service: String,
    /// The DNS responder's address.
    pub dns: String,
    /// The one address the users connected to.
    pub balancer: String,
    pub events: Vec<FleetEvent>,
    pub balancer_stats: Stats,
    /// Requests each running replica answered (its current process), at the end.
    pub requests_by_replica: BTreeMap<String, f64>,
    /// How often every replica's state was read and compared while the plan ran.
    pub consistency_looks: u64,
    /// Replicas seen at one epoch serving different splits.
    pub divergences: Vec<Divergence>,
    /// Why the fleet part failed; empty when it did not.
    pub problems: Vec<String>,
}

/// Each restart and addition as a part of the rehearsal, from its first step to
/// its last, in Unix seconds (`start_unix` is the rehearsal's start).
pub fn moments(r: &FleetReport, start_unix: f64) -> Vec<crate::view::Moment> {
    r.events
        .iter()
        .map(|e| {
            let end = e.steps.last().map_or(e.at_s, |s| s.at_s);
            crate::view::Moment {
                part: "fleet".into(),
                what: format!(
                    "{} {} ({}){}",
                    e.kind,
                    e.replica,
                    e.why,
                    e.error
                        .as_ref()
                        .map_or_else(String::new, |x| format!(": FAILED {x}"))
                ),
                from: start_unix + e.at_s,
                to: start_unix + end,
            }
        })
        .collect()
}

/// The report's section on the fleet.
pub fn section(r: &FleetReport) -> String {
    let mut s = String::from("\n## The proxy fleet (--replicas)\n\n");
    let _ = writeln!(
        s,
        "- {} replicas of cutover-proxy at the start, {} at the end, behind one L4 balancer at {} \
         (round-robin per connection over the replicas whose /readyz answers 200); the plan and \
         the replicas found each other through {} (a DNS responder at {} standing in for a \
         headless Service's DNS, TTL 1 s)",
        r.replicas_at_start, r.replicas_at_end, r.balancer, r.service, r.dns
    );
    for e in &r.events {
        let _ = writeln!(
            s,
            "- {:.1} s: {} {}{}: {}",
            e.at_s,
            e.kind,
            e.replica,
            if e.error.is_some() { " (FAILED)" } else { "" },
            e.why
        );
        for step in &e.steps {
            let _ = writeln!(s, "  - {:.1} s: {}", step.at_s, step.what);
        }
        if let Some(err) = &e.error {
            let _ = writeln!(s, "  - failed: {err}");
        }
    }
    let list = |m: &BTreeMap<String, u64>| -> String {
        if m.is_empty() {
            "none".into()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let b = &r.balancer_stats;
    let _ = writeln!(
        s,
        "- balancer: connections by replica: {}; connects that failed and went to the next replica: {}; \
         connections dropped for want of a replica: {}",
        list(&b.connections),
        list(&b.connect_failures),
        b.dropped
    );
    if !b.unanswered.is_empty() {
        let cut: Vec<String> = b
            .unanswered
            .iter()
            .map(|(name, times)| {
                let first = times.iter().copied().fold(f64::INFINITY, f64::min);
                let last = times.iter().copied().fold(0.0, f64::max);
                format!(
                    "{name} {} (between {first:.1} s and {last:.1} s)",
                    times.len()
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "- connections that ended while the client's request had no answer (the users see \
             these as resets): {}",
            cut.join(", ")
        );
    }
    if !b.slow.is_empty() {
        let _ = writeln!(
            s,
            "- connections on which the client once waited 5 s or more for an answer: {} \
             (logs/balancer.log has a line per connection)",
            list(&b.slow)
        );
    }
    let requests: Vec<String> = r
        .requests_by_replica
        .iter()
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect();
    let _ = writeln!(
        s,
        "- requests answered, by replica (since its last start): {}; a keep-alive connection stays \
         on the replica it was first sent to, so one started later gets only new connections",
        requests.join(", ")
    );
    let lasting = r.divergences.iter().filter(|d| d.lasting()).count();
    let _ = writeln!(
        s,
        "- the replicas' states were read and compared {} times while the plan ran: replicas at \
         the same epoch must serve the same weights and write sides; {}",
        r.consistency_looks,
        match (r.divergences.len(), lasting) {
            (0, _) => "they always did".to_string(),
            (n, 0) => format!("{n} difference(s) seen once each (a read racing a change)"),
            (_, n) => format!("{n} lasting difference(s), below"),
        }
    );
    for p in &r.problems {
        let _ = writeln!(s, "- PROBLEM: {p}");
    }
    s
}
