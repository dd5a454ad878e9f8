//! What `rehearse --replicas` does to the fleet while the plan runs, and how the
//! report tells it:
//!
//! 1. Once every replica in the balancer serves 50% new on every route (step 2's
//!    bake is under way), replica `proxy-0` is restarted the way Kubernetes
//!    restarts a pod: out of the balancer, SIGTERM, its exit awaited (it drains),
//!    a fresh process on the same config and state file, `/readyz` 200, back in.
//! 2. Once any replica holds a route (a switchover's write pause), one replica is
//!    added: started, listed in DNS at once (so its peers and the controller see
//!    it), put in the balancer once `/readyz` answers 200.
//!
//! Both moments are read from the replicas' `GET /state`, what the fleet really
//! serves, rather than from a hook in the plan runner. Each step is a progress
//! line with its time and a line of the event, which the report lists
//! ([`super::report`]). Every look at the replicas also checks that those at one
//! epoch serve one split ([`super::consistency`]), until the plan ends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cutover_api::State;
use futures_util::future::join_all;

use super::consistency::served;
use super::{Fleet, SERVICE};
use crate::Progress;
use crate::procs;

/// How often the replicas' state is read while waiting for the 50% step; a bake
/// lasts seconds.
const STEP_POLL: Duration = Duration::from_millis(100);

/// How often while waiting for a hold; a write pause lasts a few hundred ms.
const HOLD_POLL: Duration = Duration::from_millis(25);

/// How often the replicas are compared once both events are done.
const WATCH_POLL: Duration = Duration::from_millis(250);

/// The replica restarted during the bake.
const RESTARTED: usize = 0;

/// One restart or addition, step by step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetEvent {
    /// `restart` or `add`.
    pub kind: &'static str,
    pub replica: String,
    /// Seconds since the rehearsal began.
    pub at_s: f64,
    /// What the fleet was doing that set it off.
    pub why: String,
    pub steps: Vec<FleetStep>,
    /// What went wrong, if anything did; the verdict fails then.
    pub error: Option<String>,
}

/// One step of an event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetStep {
    pub at_s: f64,
    pub what: String,
}

impl FleetEvent {
    fn begin(progress: &Progress, kind: &'static str, replica: &str, why: String) -> FleetEvent {
        progress.line(&format!("fleet: {kind} {replica}: {why}"));
        FleetEvent {
            kind,
            replica: replica.to_string(),
            at_s: progress.at(),
            why,
            steps: Vec::new(),
            error: None,
        }
    }

    fn step(&mut self, progress: &Progress, what: String) {
        progress.line(&format!("fleet: {what}"));
        self.steps.push(FleetStep {
            at_s: progress.at(),
            what,
        });
    }

    fn fail(mut self, progress: &Progress, error: impl std::fmt::Display) -> FleetEvent {
        let error = error.to_string();
        progress.line(&format!(
            "fleet: {} {} FAILED: {error}",
            self.kind, self.replica
        ));
        self.error = Some(error);
        self
    }
}

/// `GET /state` of one replica.
async fn state(admin: SocketAddr) -> Result<State, String> {
    match procs::http_get(admin, "/state", Duration::from_secs(2)).await? {
        (200, body) => serde_json::from_str(&body).map_err(|e| format!("{admin}: /state: {e}")),
        (status, body) => Err(format!(
            "{admin}: GET /state answered {status}: {}",
            body.trim()
        )),
    }
}

/// The state of every listed replica (by name) that answered.
async fn states(replicas: &[(String, SocketAddr)]) -> Vec<(String, State)> {
    let answers = join_all(replicas.iter().map(|(_, a)| state(*a))).await;
    replicas
        .iter()
        .zip(answers)
        .filter_map(|((n, _), s)| s.ok().map(|s| (n.clone(), s)))
        .collect()
}

/// Every route of `st` serves `percent` to new.
fn all_routes_at(st: &State, percent: f64) -> bool {
    !st.routes.is_empty()
        && st.routes.values().all(|r| {
            r.weights
                .get("new")
                .is_some_and(|w| (*w - percent).abs() < 0.01)
        })
}

/// The first held route of `st`, with its deadline (Unix seconds).
fn held_route(st: &State) -> Option<(String, f64)> {
    st.routes
        .iter()
        .find_map(|(name, r)| r.hold.as_ref().map(|h| (name.clone(), h.deadline)))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What `st` serves, in a few words: the new side's share and the write sides,
/// e.g. "new 50% on all 6 routes, writes on old ×6".
fn describe(st: &State) -> String {
    let mut shares: Vec<f64> = st
        .routes
        .values()
        .filter_map(|r| r.weights.get("new").copied())
        .collect();
    shares.sort_by(f64::total_cmp);
    shares.dedup_by(|a, b| (*a - *b).abs() < 0.01);
    let shares: Vec<String> = shares.iter().map(|s| format!("{s}%")).collect();
    let mut writes: BTreeMap<&str, usize> = BTreeMap::new();
    for r in st.routes.values() {
        *writes.entry(r.writes.as_str()).or_default() += 1;
    }
    let writes: Vec<String> = writes.iter().map(|(w, n)| format!("{w} ×{n}")).collect();
    format!(
        "new {} on all {} routes, writes on {}",
        shares.join(" or "),
        st.routes.len(),
        writes.join(", ")
    )
}

impl Fleet {
    /// The replicas in the balancer now, by name and admin address.
    fn in_balancer(&self) -> Vec<(String, SocketAddr)> {
        let names: Vec<String> = self
            .balancer
            .members()
            .into_iter()
            .map(|m| m.name)
            .collect();
        self.replicas
            .iter()
            .filter(|r| names.contains(&r.name))
            .map(|r| (r.name.clone(), r.admin))
            .collect()
    }

    /// Reads every running replica's state and checks the fleet's invariant on
    /// it (see [`super::consistency`]).
    async fn look(&mut self, progress: &Progress) -> Vec<(String, State)> {
        let seen = states(&self.running()).await;
        let before = self.consistency.divergences.len();
        self.consistency.look(progress.at(), &seen, describe);
        for d in &self.consistency.divergences[before..] {
            progress.line(&format!(
                "fleet: replicas at the same epoch {} serve different splits: {}",
                d.epoch,
                d.replicas.join("; ")
            ));
        }
        seen
    }

    /// Every running replica, by name and admin address.
    pub(super) fn running(&self) -> Vec<(String, SocketAddr)> {
        self.replicas
            .iter()
            .filter(|r| r.running())
            .map(|r| (r.name.clone(), r.admin))
            .collect()
    }

    /// How replica `i`'s state compares with its peers': its epoch and theirs, and
    /// whether it serves what they serve.
    async fn compare(&self, i: usize) -> String {
        let me = &self.replicas[i];
        let Ok(mine) = state(me.admin).await else {
            return "its /state did not answer".into();
        };
        let peers: Vec<(String, SocketAddr)> = self
            .running()
            .into_iter()
            .filter(|(n, _)| *n != me.name)
            .collect();
        let theirs = states(&peers).await;
        let epochs: Vec<String> = theirs
            .iter()
            .map(|(n, s)| format!("{n} {}", s.epoch))
            .collect();
        let same = theirs.iter().all(|(_, s)| served(s) == served(&mine));
        let mut s = format!(
            "epoch {} (peers: {}); {}, {}",
            mine.epoch,
            if epochs.is_empty() {
                "none".into()
            } else {
                epochs.join(", ")
            },
            describe(&mine),
            if same {
                "as its peers"
            } else {
                "UNLIKE its peers (they may have moved on since)"
            }
        );
        match held_route(&mine) {
            Some((route, deadline)) => {
                let _ = write!(
                    s,
                    "; holds {route} (deadline in {:.0} ms), which it got from the fleet",
                    ((deadline - unix_now()) * 1000.0).max(0.0)
                );
            }
            None => s.push_str("; holds nothing"),
        }
        s
    }

    /// Requests replica `admin` has answered (its `cutover_requests_total`).
    pub(super) async fn requests(admin: SocketAddr) -> Option<f64> {
        match procs::http_get(admin, "/metrics", Duration::from_secs(2)).await {
            Ok((200, text)) => Some(procs::requests_total(&text)),
            _ => None,
        }
    }

    /// Restarts replica `i` (see the module doc).
    async fn restart(&mut self, i: usize, progress: &Progress, why: String) {
        let name = self.replicas[i].name.clone();
        let mut ev = FleetEvent::begin(progress, "restart", &name, why);
        let served = Self::requests(self.replicas[i].admin).await;
        let pid = self.replicas[i].pid().unwrap_or(0);
        ev.step(
            progress,
            format!(
                "{name} out of the balancer; SIGTERM to pid {pid} (it had answered {} requests)",
                served.map_or_else(|| "?".into(), |n| format!("{n:.0}"))
            ),
        );
        let stopped = match self.terminate(i).await {
            Ok(s) => s,
            Err(e) => return self.events.push(ev.fail(progress, e)),
        };
        ev.step(
            progress,
            format!(
                "{name} exited ({}) {:.2}s after SIGTERM; {} connection(s) open when it stopped accepting, {}; out of DNS",
                stopped.exit,
                stopped.took.as_secs_f64(),
                stopped
                    .open_connections
                    .map_or_else(|| "?".into(), |n| n.to_string()),
                if stopped.drained {
                    "all finished within its grace period"
                } else {
                    "NOT all finished within its grace period"
                }
            ),
        );
        let since = Instant::now();
        let pid = match self.spawn(i) {
            Ok(pid) => pid,
            Err(e) => return self.events.push(ev.fail(progress, e)),
        };
        ev.step(
            progress,
            format!("{name} started again (pid {pid}), same config and state file; in DNS"),
        );
        let ready = match self.until_ready(i, since).await {
            Ok(d) => d,
            Err(e) => return self.events.push(ev.fail(progress, e)),
        };
        let compared = self.compare(i).await;
        ev.step(
            progress,
            format!(
                "{name} ready (GET /readyz 200) {:.2}s after its start: {compared}",
                ready.as_secs_f64()
            ),
        );
        self.admit(i);
        ev.step(progress, format!("{name} back in the balancer"));
        self.events.push(ev);
    }

    /// Adds a replica (see the module doc).
    async fn add_one(&mut self, progress: &Progress, why: String) {
        let i = self.replicas.len();
        let name = format!("proxy-{i}");
        let mut ev = FleetEvent::begin(progress, "add", &name, why);
        let since = Instant::now();
        let pid = match self.add() {
            Ok((_, pid)) => pid,
            Err(e) => return self.events.push(ev.fail(progress, e)),
        };
        ev.step(
            progress,
            format!(
                "{name} started (pid {pid}) at admin {}; in DNS at once: {SERVICE} lists {} replica(s)",
                self.replicas[i].admin,
                self.dns.ips().len()
            ),
        );
        let ready = match self.until_ready(i, since).await {
            Ok(d) => d,
            Err(e) => return self.events.push(ev.fail(progress, e)),
        };
        let compared = self.compare(i).await;
        ev.step(
            progress,
            format!(
                "{name} ready (GET /readyz 200) {:.2}s after its start: {compared}",
                ready.as_secs_f64()
            ),
        );
        self.admit(i);
        ev.step(
            progress,
            format!(
                "{name} in the balancer ({} replicas serve)",
                self.balancer.members().len()
            ),
        );
        self.events.push(ev);
    }
}

/// Runs the two events as the plan reaches them, then waits forever: the caller
/// stops waiting when the plan ends.
pub async fn exercise(fleet: &mut Fleet, progress: &Progress) {
    loop {
        let seen = fleet.look(progress).await;
        let serving: Vec<&State> = fleet
            .in_balancer()
            .iter()
            .filter_map(|(n, _)| seen.iter().find(|(m, _)| m == n).map(|(_, s)| s))
            .collect();
        if !serving.is_empty()
            && serving.len() == fleet.in_balancer().len()
            && serving.iter().all(|s| all_routes_at(s, 50.0))
        {
            break;
        }
        tokio::time::sleep(STEP_POLL).await;
    }
    let n = fleet.in_balancer().len();
    fleet
        .restart(
            RESTARTED,
            progress,
            format!("step 2's bake is under way: all {n} replicas serve 50% new on every route"),
        )
        .await;
    let (holder, route, deadline) = loop {
        let seen = fleet.look(progress).await;
        if let Some((holder, (route, deadline))) = seen
            .iter()
            .find_map(|(n, s)| held_route(s).map(|h| (n.clone(), h)))
        {
            break (holder, route, deadline);
        }
        tokio::time::sleep(HOLD_POLL).await;
    };
    fleet
        .add_one(
            progress,
            format!(
                "a switchover's hold is on: {holder} holds {route} (for up to {:.1}s more)",
                (deadline - unix_now()).max(0.0)
            ),
        )
        .await;
    loop {
        fleet.look(progress).await;
        tokio::time::sleep(WATCH_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(json: serde_json::Value) -> State {
        serde_json::from_value(json).unwrap()
    }

    fn route(new: f64, hold: Option<f64>) -> serde_json::Value {
        serde_json::json!({
            "weights": {"old": 100.0 - new, "new": new},
            "weights_source": "admin", "writes": "old", "writes_source": "file",
            "hold": hold.map(|d| serde_json::json!({"scope": "writes", "since": 1.0, "deadline": d})),
            "file": {"weights": {"old": 100.0, "new": 0.0}, "writes": "old"}
        })
    }

    #[test]
    fn the_half_step_is_every_route_at_fifty_and_a_hold_is_any_route_held() {
        let half = st(serde_json::json!({"epoch": 3, "routes": {
            "a": route(50.0, None), "b": route(50.0, None)}}));
        assert!(all_routes_at(&half, 50.0));
        assert_eq!(held_route(&half), None);
        let midway = st(serde_json::json!({"epoch": 3, "routes": {
            "a": route(50.0, None), "b": route(10.0, Some(99.0))}}));
        assert!(!all_routes_at(&midway, 50.0));
        assert_eq!(held_route(&midway), Some(("b".into(), 99.0)));
        assert!(!all_routes_at(
            &st(serde_json::json!({"epoch": 0, "routes": {}})),
            50.0
        ));
        assert_eq!(served(&half), served(&half.clone()));
        assert_ne!(served(&half), served(&midway));
    }
}
