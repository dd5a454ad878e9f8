//! The record of a run: what the state file holds after every action, and what the
//! report is rendered from. One type for both, so a resumed run's report covers the
//! whole migration, not only its last part.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The state file's format version.
pub const RECORD_VERSION: u32 = 1;

/// How a run stands or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Started and not finished (or the controller stopped mid-way).
    Running,
    /// Every phase done.
    Succeeded,
    /// A gate failed; the weights were rolled back.
    GateFailed,
    /// An action failed (a proxy or database error); see `stop_reason`.
    Failed,
    /// `cutover abort` rolled the run back.
    Aborted,
}

impl Outcome {
    /// The outcome as reports and progress lines word it.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::GateFailed => "gate failed",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
        }
    }
}

/// The plan's phases in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseName {
    Preflight,
    Sync,
    Steps,
    Switchover,
    Finalize,
    Done,
}

impl PhaseName {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Preflight => "preflight",
            PhaseName::Sync => "sync",
            PhaseName::Steps => "steps",
            PhaseName::Switchover => "switchover",
            PhaseName::Finalize => "finalize",
            PhaseName::Done => "done",
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub at: f64,
    pub phase: PhaseName,
    /// The step's index (0-based) for step events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub what: String,
    pub ok: bool,
}

/// Requests seen by the proxies in one span of the run (a phase or a step).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub requests: u64,
    /// 5xx answers.
    pub errors: u64,
    /// Seconds, from the proxies' histograms; `None` without requests.
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    /// Per backend: (requests, errors).
    #[serde(default)]
    pub by_backend: BTreeMap<String, BackendTraffic>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackendTraffic {
    pub requests: u64,
    pub errors: u64,
}

/// A span of the run with its traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Span {
    /// e.g. "preflight", "step 1 (new 10%)", "switchover tasks", "finalize".
    pub name: String,
    pub phase: PhaseName,
    pub started_at: f64,
    pub ended_at: f64,
    pub traffic: Traffic,
}

/// One gate's verdict at the end of a step's bake (or when it failed early).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateRecord {
    pub step: usize,
    /// As written in the plan, e.g. "p99 < 1s".
    pub gate: String,
    /// The measured value in the gate's unit (seconds for latencies and lag);
    /// `None` when it could not be measured (no requests).
    pub value: Option<f64>,
    pub threshold: f64,
    pub passed: bool,
    /// e.g. "p99 1.42s is 0.42s over 1s" or "no requests in the window".
    pub detail: String,
}

/// The largest replication lag seen for one database.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LagRecord {
    pub max_seconds: Option<f64>,
    pub max_bytes: Option<i64>,
}

/// One switchover's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchoverRecord {
    pub app: String,
    pub write_pause_ms: f64,
    pub released_requests: u64,
    pub sequences: usize,
    /// (step number, description, milliseconds).
    pub steps: Vec<(String, String, f64)>,
}

/// One table's verification after a switchover: every row the frozen source had is
/// on the target, unchanged; rows only on the target are writes made after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableCheck {
    pub table: String,
    pub source_rows: u64,
    pub target_rows: u64,
    /// Source rows absent from the target: lost writes.
    pub missing: u64,
    /// Source rows present on the target with other contents (changed since).
    pub changed: u64,
    pub source_checksum: String,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub app: String,
    pub tables: Vec<TableCheck>,
    pub passed: bool,
}

/// The acknowledged-writes check of `cutover rehearse` (or `cutover run --ledger`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerCheck {
    pub acknowledged: u64,
    pub found: u64,
    pub missing: u64,
    /// Up to 10 missing entries, as "app id".
    pub missing_examples: Vec<String>,
}

/// The final verdict, derived from a [`Record`] by `report::verdict` (never stored,
/// so it cannot disagree with the figures it comes from).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// The longest span, in seconds, in which users got errors (sampled every second).
    pub downtime_s: f64,
    pub failed_requests: u64,
    /// Writes lost: source rows missing after a switchover, plus acknowledged writes
    /// missing from the ledger check when there was one, and from the check of the
    /// writers past the proxies.
    pub lost_writes: u64,
}

/// A replication object at the end of a plan: dropped by finalize, already
/// absent, or kept (and why).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetiredObject {
    /// The app whose database it belongs to.
    pub app: String,
    /// `source` or `target`.
    pub side: String,
    /// e.g. "replication slot cutover_tasks_reverse".
    pub object: String,
    /// `dropped`, `absent` or `kept`.
    pub done: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One proxy replica the run heard from, under one name (a replica that restarts
/// at the same address under another name is another entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Its admin URL.
    pub url: String,
    /// The name it gives (`/state`'s `replica`); empty for an older proxy.
    #[serde(default)]
    pub replica: String,
    /// When it first and last answered, in seconds since the run started.
    pub first_answered_s: f64,
    pub last_answered_s: f64,
    /// The distinct epochs it served, ascending.
    #[serde(default)]
    pub epochs: Vec<u64>,
}

impl ReplicaRecord {
    /// Adds `seen` to `list`: to the newest entry of the same URL if it has the
    /// same name (or either has none yet), widening its times and adding its
    /// epochs; as a new entry otherwise. Merging the same figures again changes
    /// nothing, so the runner can merge everything it knows at every save.
    pub fn merge(list: &mut Vec<ReplicaRecord>, seen: ReplicaRecord) {
        let same = list
            .iter_mut()
            .rev()
            .find(|r| r.url == seen.url)
            .filter(|r| {
                r.replica == seen.replica || r.replica.is_empty() || seen.replica.is_empty()
            });
        let Some(r) = same else {
            list.push(seen);
            return;
        };
        if r.replica.is_empty() {
            r.replica = seen.replica;
        }
        r.first_answered_s = r.first_answered_s.min(seen.first_answered_s);
        r.last_answered_s = r.last_answered_s.max(seen.last_answered_s);
        r.epochs.extend(seen.epochs);
        r.epochs.sort_unstable();
        r.epochs.dedup();
    }
}

/// Everything about a run so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub plan_name: String,
    pub plan_path: String,
    /// SHA-256 of the plan file the run started with (a resumed run refuses a
    /// changed plan unless told otherwise).
    pub plan_sha256: String,
    pub started_at: f64,
    pub updated_at: f64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// The phase to run next (or running).
    pub phase: PhaseName,
    /// The next traffic step to run (index into the plan's steps).
    pub next_step: usize,
    /// The last step whose gates passed.
    #[serde(default)]
    pub last_good_step: Option<usize>,
    /// The weights (backend → percent) last set on every replica.
    #[serde(default)]
    pub weights: Option<BTreeMap<String, f64>>,
    /// Apps whose switchover finished.
    #[serde(default)]
    pub switched: Vec<String>,
    /// The app whose switchover began and has not finished.
    #[serde(default)]
    pub switching: Option<String>,
    pub timeline: Vec<Event>,
    pub spans: Vec<Span>,
    pub gates: Vec<GateRecord>,
    /// Database (app name) → the largest lag seen.
    pub lag: BTreeMap<String, LagRecord>,
    pub switchovers: Vec<SwitchoverRecord>,
    pub verify: Vec<VerifyRecord>,
    /// What finalize did with each database's replication links.
    #[serde(default)]
    pub retired: Vec<RetiredObject>,
    #[serde(default)]
    pub ledger: Option<LedgerCheck>,
    /// Writers that go to the databases past the proxies (a rehearsal's workers
    /// and jobs), by kind: their acknowledged writes checked like the ledger's.
    /// The verdict counts their missing writes as lost.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub past_proxy: BTreeMap<String, LedgerCheck>,
    /// Failed requests as a load generator running alongside saw them (what users
    /// see: also connections refused before the proxies, answers cut short, 4xx).
    /// The verdict counts the larger of this and the proxies' 5xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_failed_requests: Option<u64>,
    /// Seconds (Unix) in which users got errors, one entry per 1 s sample; the
    /// verdict's downtime is the longest run of consecutive seconds.
    #[serde(default)]
    pub error_seconds: Vec<u64>,
    /// Every proxy replica the run heard from, in the order they first answered.
    #[serde(default)]
    pub replicas: Vec<ReplicaRecord>,
    /// App → its cache (`[apps.cache]`): the copy's figures, or the hit ratio.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub caches: BTreeMap<String, CacheRecord>,
}

/// An app's cache as the run last saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// `sync` or `warm`.
    pub mode: String,
    pub source: String,
    pub target: String,
    pub converged: bool,
    /// When the step to 100% saw it converged (or warm), in seconds since the run
    /// started.
    #[serde(default)]
    pub ready_at_s: Option<f64>,
    #[serde(default)]
    pub keys_copied: u64,
    #[serde(default)]
    pub bytes_copied: u64,
    #[serde(default)]
    pub big_keys: u64,
    #[serde(default)]
    pub skipped_expired: u64,
    #[serde(default)]
    pub deleted: u64,
    /// Writes the target refused.
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub events: u64,
    #[serde(default)]
    pub pending: u64,
    #[serde(default)]
    pub notifications_lost: u64,
    #[serde(default)]
    pub verify_passes: u64,
    #[serde(default)]
    pub last_verify: Option<crate::cache::Tally>,
    /// The new cache's hit ratio since the run started (judged in `warm` mode).
    #[serde(default)]
    pub hit_ratio: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(url: &str, replica: &str, first: f64, last: f64, epochs: &[u64]) -> ReplicaRecord {
        ReplicaRecord {
            url: url.into(),
            replica: replica.into(),
            first_answered_s: first,
            last_answered_s: last,
            epochs: epochs.to_vec(),
        }
    }

    #[test]
    fn replicas_merge_by_url_and_name() {
        let mut list = Vec::new();
        ReplicaRecord::merge(&mut list, seen("http://a", "", 0.5, 1.0, &[]));
        ReplicaRecord::merge(&mut list, seen("http://a", "proxy-0", 0.5, 9.0, &[3, 4]));
        ReplicaRecord::merge(&mut list, seen("http://b", "proxy-1", 4.0, 9.0, &[4]));
        // The same figures again (the runner merges at every save): no change.
        ReplicaRecord::merge(&mut list, seen("http://a", "proxy-0", 0.5, 9.0, &[3, 4]));
        // A resumed run hears from it again, at a later epoch.
        ReplicaRecord::merge(&mut list, seen("http://a", "proxy-0", 30.0, 40.0, &[6, 4]));
        assert_eq!(
            list,
            vec![
                seen("http://a", "proxy-0", 0.5, 40.0, &[3, 4, 6]),
                seen("http://b", "proxy-1", 4.0, 9.0, &[4]),
            ]
        );
        // Restarted at the same address under another name: its own entry.
        ReplicaRecord::merge(&mut list, seen("http://a", "proxy-9", 50.0, 51.0, &[7]));
        assert_eq!(list.len(), 3);
        assert_eq!(list[2].replica, "proxy-9");
    }

    #[test]
    fn an_old_state_file_reads_without_replicas() {
        let r: Record = serde_json::from_value(serde_json::json!({
            "version": 1, "plan_name": "p", "plan_path": "p.toml", "plan_sha256": "x",
            "started_at": 0.0, "updated_at": 1.0, "outcome": "running",
            "phase": "steps", "next_step": 0, "timeline": [], "spans": [],
            "gates": [], "lag": {}, "switchovers": [], "verify": []
        }))
        .unwrap();
        assert!(r.replicas.is_empty());
    }
}
