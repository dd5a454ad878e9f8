//! The writers' acknowledged writes checked at the end, and the report's section
//! about them. Every acknowledged write must be in its app's database where that
//! app's writes go now (new once its switchover is done, old otherwise: the rule of
//! `writes.rs`), in the row with its id, with its body. A row with the id and
//! another body counts as missing: an id handed out twice.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use cutover_controller::plan::record::{LedgerCheck, PhaseName, Record};

use super::{Ack, NIGHTLY_APP, NIGHTLY_BATCH, NIGHTLY_EVERY, Side, Tally, WORKER_EVERY};
use crate::cluster::{Cluster, ClusterError};

const BATCH: usize = 1000;
const EXAMPLES: usize = 10;

/// One writer after the check.
#[derive(Debug, Clone)]
pub struct WriterResult {
    pub app: &'static str,
    pub side: Side,
    pub role: String,
    /// Where its writes were looked up.
    pub checked_on: Side,
    pub acknowledged: u64,
    pub found: u64,
    pub missing: u64,
    pub missing_examples: Vec<String>,
    pub refused: BTreeMap<String, u64>,
    pub attempts: u64,
    pub reconnects: u64,
    /// The first and last acknowledgement, Unix seconds.
    pub first_ack: Option<f64>,
    pub last_ack: Option<f64>,
}

/// Every writer past the proxy, checked.
#[derive(Debug, Clone, Default)]
pub struct PastProxy {
    pub writers: Vec<WriterResult>,
    /// By kind ([`Kind::label`]), as the record keeps it for the verdict.
    pub by_kind: BTreeMap<String, LedgerCheck>,
}

impl PastProxy {
    pub fn acknowledged(&self) -> u64 {
        self.by_kind.values().map(|l| l.acknowledged).sum()
    }

    pub fn found(&self) -> u64 {
        self.by_kind.values().map(|l| l.found).sum()
    }

    pub fn missing(&self) -> u64 {
        self.by_kind.values().map(|l| l.missing).sum()
    }
}

/// Looks up every acknowledged write of `tallies` on `new` for the apps in
/// `switched`, on `old` for the others.
pub async fn check(
    old: &Cluster,
    new: &Cluster,
    switched: &[String],
    tallies: &[Tally],
) -> Result<PastProxy, ClusterError> {
    // App → (its database, its table, every acknowledged id).
    let mut wanted: BTreeMap<&'static str, (&'static str, &'static str, Vec<i32>)> =
        BTreeMap::new();
    for t in tallies {
        let e = wanted
            .entry(t.app.name)
            .or_insert_with(|| (t.app.database(), t.app.table.unwrap_or("items"), Vec::new()));
        e.2.extend(t.acks.iter().map(|a| a.id));
    }
    let on = |app: &str| {
        if switched.iter().any(|s| s == app) {
            (Side::New, new)
        } else {
            (Side::Old, old)
        }
    };
    let mut rows: HashMap<&'static str, HashMap<i32, String>> = HashMap::new();
    for (app, (db, table, ids)) in wanted {
        let cluster = on(app).1;
        let found = rows.entry(app).or_default();
        if ids.is_empty() {
            continue;
        }
        let client = cluster.connect(db).await?;
        let sql = format!("SELECT id, body FROM {table} WHERE id = ANY($1)");
        for chunk in ids.chunks(BATCH) {
            let got = client.query(&sql, &[&chunk]).await.map_err(|e| {
                cluster.sql_error(db, "look up the writers' acknowledged writes", &e)
            })?;
            found.extend(
                got.iter()
                    .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1))),
            );
        }
    }
    let empty = HashMap::new();
    let mut result = PastProxy::default();
    for t in tallies {
        let (found, missing) = compare(&t.acks, rows.get(t.app.name).unwrap_or(&empty));
        let w = WriterResult {
            app: t.app.name,
            side: t.side,
            role: t.role.clone(),
            checked_on: on(t.app.name).0,
            acknowledged: t.acks.len() as u64,
            found,
            missing: missing.len() as u64,
            missing_examples: missing
                .into_iter()
                .take(EXAMPLES)
                .map(|m| format!("{} {} ({} side): {m}", t.app.name, t.role, t.side.label()))
                .collect(),
            refused: t.refused.clone(),
            attempts: t.attempts,
            reconnects: t.reconnects,
            first_ack: t.acks.iter().map(|a| a.at).reduce(f64::min),
            last_ack: t.acks.iter().map(|a| a.at).reduce(f64::max),
        };
        let l = result.by_kind.entry(t.kind.to_string()).or_default();
        l.acknowledged += w.acknowledged;
        l.found += w.found;
        l.missing += w.missing;
        for m in &w.missing_examples {
            if l.missing_examples.len() < EXAMPLES {
                l.missing_examples.push(m.clone());
            }
        }
        result.writers.push(w);
    }
    Ok(result)
}

/// How many of `acks` are in `rows` (id → body) with their own body, and a
/// description of each one that is not.
pub(super) fn compare(acks: &[Ack], rows: &HashMap<i32, String>) -> (u64, Vec<String>) {
    let mut found = 0;
    let mut missing = Vec::new();
    for a in acks {
        match rows.get(&a.id) {
            Some(body) if *body == a.body => found += 1,
            Some(_) => missing.push(format!("id {} holds another write's body", a.id)),
            None => missing.push(format!("id {} absent", a.id)),
        }
    }
    (found, missing)
}

/// Seconds from the plan's start, signed: "+12.3s", "-4.0s".
fn at(t: Option<f64>, start: f64) -> String {
    match t {
        Some(t) if t.is_finite() => format!("{:+.1}s", t - start),
        _ => "-".into(),
    }
}

/// When `app`'s switchover began and when its writes were on new, from the
/// record's timeline.
fn switchover(record: &Record, app: &str) -> (Option<f64>, Option<f64>) {
    let events = || {
        record
            .timeline
            .iter()
            .filter(move |e| e.phase == PhaseName::Switchover && e.app.as_deref() == Some(app))
    };
    let began = events()
        .find(|e| e.what.starts_with("switchover of route"))
        .map(|e| e.at);
    let done = events()
        .find(|e| e.what.starts_with("writes on"))
        .map(|e| e.at);
    (began, done)
}

/// The report's section "Writers past the proxy".
pub fn section(p: &PastProxy, record: &Record) -> String {
    let start = record.started_at;
    let mut s = String::from("## Writers past the proxy\n\n");
    let _ = write!(
        s,
        "Besides the users, each database app had a background worker in each cluster \
         (role `<app>_worker`), connected straight to that cluster's database and inserting \
         a row every {} ms throughout, and {NIGHTLY_APP} a nightly job (role \
         `{NIGHTLY_APP}_nightly`) inserting {NIGHTLY_BATCH} rows in one transaction every \
         {} s on both sides. The new cluster's writers write from the start: their table \
         does not exist until `sync` creates it, with its write block in the same \
         transaction, and the block refuses them until the switchover. Every write they were acknowledged was looked up, by id and \
         body, where its app's writes go at the end (new once its switchover was done). A \
         write that failed was not acknowledged; it is counted by reason, and the writer \
         went on. Figures count rows (a nightly batch is {NIGHTLY_BATCH}); times are seconds \
         from the plan's start.\n\n",
        WORKER_EVERY.as_millis(),
        NIGHTLY_EVERY.as_secs()
    );
    s.push_str("| Writers | Acknowledged | Found | Missing |\n|---|---:|---:|---:|\n");
    for (kind, l) in &p.by_kind {
        let _ = writeln!(
            s,
            "| {kind} | {} | {} | {} |",
            l.acknowledged, l.found, l.missing
        );
    }
    s.push_str(
        "\n| App | Role | Side | Rows tried | Acknowledged | Looked up on | Found | Missing \
         | Refused | Reconnects | First / last acknowledged | Switchover began / writes on new |\n\
         |---|---|---|---:|---:|---|---:|---:|---|---:|---|---|\n",
    );
    for w in &p.writers {
        let refused = if w.refused.is_empty() {
            "0".to_string()
        } else {
            w.refused
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let (began, done) = switchover(record, w.app);
        let switch = match (began, done) {
            (None, None) => "not switched".to_string(),
            (b, d) => format!("{} / {}", at(b, start), at(d, start)),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {refused} | {} | {} / {} | {switch} |",
            w.app,
            w.role,
            w.side.label(),
            w.attempts,
            w.acknowledged,
            w.checked_on.label(),
            w.found,
            w.missing,
            w.reconnects,
            at(w.first_ack, start),
            at(w.last_ack, start),
        );
    }
    s.push('\n');
    let examples: Vec<&String> = p
        .by_kind
        .values()
        .flat_map(|l| &l.missing_examples)
        .collect();
    if !examples.is_empty() {
        s.push_str("Missing, for example:\n\n");
        for m in examples {
            let _ = writeln!(s, "- {m}");
        }
        s.push('\n');
    }
    s
}
