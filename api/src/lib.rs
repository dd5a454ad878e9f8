//! The contract of cutover-proxy's admin API: every request body and answer the
//! proxy serves and the controller sends, as serde types. Both sides build from
//! these, so a change to the contract is a compile error on the other side, not a
//! field that silently reads as missing at run time.
//!
//! Times are Unix seconds as `f64` (what `/status` has always shown); durations in
//! bodies are human strings such as `"30s"`.

pub mod duration;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The runtime state of one replica: what the admin API set over the config
/// file (weights, write sides, holds), with the fleet epoch it belongs to.
/// `GET /state` answers it; `PUT /state` adopts one that is newer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Increases with every change anywhere in the fleet. A replica adopts a
    /// state with a higher epoch and refuses a call naming a lower one.
    pub epoch: u64,
    /// The replica whose change made this epoch, to order two states of the same
    /// epoch the same way on every replica.
    #[serde(default)]
    pub origin: String,
    /// The replica that answers (its `[fleet] name`, or host name and pid).
    #[serde(default)]
    pub replica: String,
    /// By route name.
    pub routes: BTreeMap<String, RouteState>,
}

impl State {
    /// Whether `self` is newer than `other`: a higher epoch, or the same epoch from
    /// a greater origin (so two replicas that each took a different call at the
    /// same epoch settle on one of them, the same everywhere).
    pub fn newer_than(&self, other: &State) -> bool {
        (self.epoch, &self.origin) > (other.epoch, &other.origin)
    }
}

/// One route's runtime state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteState {
    /// Percent per backend.
    pub weights: BTreeMap<String, f64>,
    pub weights_source: Source,
    /// A backend name, or `split`.
    pub writes: String,
    pub writes_source: Source,
    pub hold: Option<HoldState>,
    /// The config file's own weights and write side for this route when this state
    /// was written: a file changed since wins over the state (last write wins).
    pub file: FileBasis,
}

/// Who set a value: the config file or the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Admin,
}

/// What the config file said for a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileBasis {
    pub weights: BTreeMap<String, f64>,
    pub writes: String,
}

/// A hold, by its absolute times, so that every replica holding it ends it at
/// the same moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldState {
    pub scope: Scope,
    /// Unix seconds.
    pub since: f64,
    /// Unix seconds.
    pub deadline: f64,
}

/// Which requests a hold covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every method but GET, HEAD, OPTIONS and TRACE (and reads the route names).
    #[default]
    Writes,
    All,
    /// Only the upgrade handshakes (WebSockets) of routes whose upgrades follow
    /// the writes: a switchover's first step, so that the upgraded connections to
    /// the old side close and their clients' reconnects wait while the other
    /// writes still flow.
    Upgrades,
}

/// `PUT /routes/{host}/weights`: `{"weights": {"old": 50, "new": 50}, "epoch": 7}`,
/// or the bare map `{"old": 50, "new": 50}` (no epoch) as before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WeightsRequest {
    Epoch {
        weights: BTreeMap<String, f64>,
        #[serde(default)]
        epoch: Option<u64>,
    },
    Bare(BTreeMap<String, f64>),
}

impl WeightsRequest {
    pub fn weights(&self) -> &BTreeMap<String, f64> {
        match self {
            WeightsRequest::Epoch { weights, .. } | WeightsRequest::Bare(weights) => weights,
        }
    }

    pub fn epoch(&self) -> Option<u64> {
        match self {
            WeightsRequest::Epoch { epoch, .. } => *epoch,
            WeightsRequest::Bare(_) => None,
        }
    }
}

/// `POST /routes/{host}/hold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// How long the hold may last, e.g. `"30s"`; `[hold] max` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// The answer to a hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldAnswer {
    pub hold: Option<HoldState>,
    pub routes: Vec<String>,
    #[serde(default)]
    pub epoch: u64,
}

/// `POST /routes/{host}/release`: `{"writes": "new"}` switches the write side,
/// then releases, in that order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// The answer to a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseAnswer {
    /// Held requests let go.
    pub released: usize,
    pub routes: Vec<String>,
    pub writes: String,
    #[serde(default)]
    pub epoch: u64,
}

/// `POST /routes/{host}/disconnect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    pub backend: String,
    /// Spread the closes over this long, e.g. `"30s"`; at once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<String>,
}

/// The answer to a disconnect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisconnectAnswer {
    pub routes: Vec<String>,
    pub backend: String,
    pub closing: i64,
    pub over: String,
}

/// Every refusal: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// On a 409: the replica's epoch, newer than the call's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// The server's clock, Unix seconds.
    pub now: f64,
    pub generation: u64,
    /// The runtime state's epoch.
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub replica: String,
    /// Whether `/readyz` answers 200.
    #[serde(default)]
    pub ready: bool,
    pub config_file: String,
    pub last_reload_error: Option<ReloadError>,
    pub last_reload: Option<f64>,
    pub reload_errors_total: u64,
    pub routes: Vec<RouteStatus>,
    pub backends: Vec<BackendStatus>,
    /// The fleet as this replica sees it; absent without `[fleet] peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadError {
    pub at: f64,
    pub errors: Vec<String>,
}

/// One route in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    pub name: String,
    pub hosts: Vec<String>,
    pub weights: BTreeMap<String, f64>,
    pub weights_source: Source,
    pub effective_weights: BTreeMap<String, f64>,
    /// Why the effective weights differ from the weights, when they do.
    pub effective_reason: Option<Vec<String>>,
    pub writes: String,
    pub writes_source: Source,
    pub sticky: Sticky,
    pub inflight: BTreeMap<String, i64>,
    pub inflight_reads: BTreeMap<String, i64>,
    pub inflight_writes: BTreeMap<String, i64>,
    pub drained: BTreeMap<String, bool>,
    pub long_lived: BTreeMap<String, i64>,
    /// Of `long_lived`, those that follow the writes (`upgrades = "writes"`), by
    /// backend: they may carry writes the proxy cannot see, so a switchover's
    /// drain waits for them to close (a writes hold closes them on the losing
    /// side after `hold.upgrade_grace`). Absent from older proxies: none.
    #[serde(default)]
    pub write_tunnels: BTreeMap<String, i64>,
    pub hold: Option<HoldStatus>,
    pub members: Vec<String>,
}

/// How a route keeps a user on one side: `{"cookie": NAME}`, `{"header": NAME}`
/// or `{"client_ip": true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    Cookie(String),
    Header(String),
    ClientIp(bool),
}

/// A hold in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldStatus {
    pub scope: Scope,
    pub since: f64,
    pub deadline: f64,
    /// Requests waiting now.
    pub held: usize,
    pub expired: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub configured: Vec<String>,
    pub addrs: Vec<AddrStatus>,
    pub healthy: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddrStatus {
    pub addr: String,
    pub host: Option<String>,
    pub healthy: bool,
}

/// The peers a replica compares its state with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// `NAME:PORT` or the static list, as configured.
    pub peers: Vec<String>,
    /// Each peer last asked, by admin address.
    pub seen: BTreeMap<String, PeerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub replica: Option<String>,
    pub epoch: Option<u64>,
    /// Why the last call failed, when it did.
    pub error: Option<String>,
    /// Unix seconds of the last answer.
    pub answered: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_take_both_forms() {
        let bare: WeightsRequest = serde_json::from_str(r#"{"old":50,"new":50}"#).unwrap();
        assert_eq!(bare.epoch(), None);
        assert_eq!(bare.weights()["old"], 50.0);
        let with: WeightsRequest =
            serde_json::from_str(r#"{"weights":{"old":10,"new":90},"epoch":4}"#).unwrap();
        assert_eq!(with.epoch(), Some(4));
        assert_eq!(with.weights()["new"], 90.0);
    }

    #[test]
    fn newer_is_epoch_then_origin() {
        let s = |epoch, origin: &str| State {
            epoch,
            origin: origin.into(),
            replica: String::new(),
            routes: BTreeMap::new(),
        };
        assert!(s(2, "a").newer_than(&s(1, "z")));
        assert!(s(2, "b").newer_than(&s(2, "a")));
        assert!(!s(2, "a").newer_than(&s(2, "a")));
    }

    #[test]
    fn sticky_reads_as_status_shows_it() {
        let v: Sticky = serde_json::from_str(r#"{"cookie":"cutover"}"#).unwrap();
        assert_eq!(v, Sticky::Cookie("cutover".into()));
        let v: Sticky = serde_json::from_str(r#"{"client_ip":true}"#).unwrap();
        assert_eq!(v, Sticky::ClientIp(true));
    }
}
