//! The results of `sync` and `verify`, as text for a terminal and as JSON. Both
//! carry key names and fingerprints only.

use serde::Serialize;

use crate::secrets::diff::KeyDiff;
use crate::secrets::kube::Skipped;
use crate::secrets::location::Source;
use crate::secrets::store::Store;

/// What sync does (or, in a dry run, would do) with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Unchanged,
}

/// One Secret's entry in the target.
#[derive(Debug, Clone, Serialize)]
pub struct EntryReport {
    /// `namespace/name`.
    pub secret: String,
    /// The entry's path (Vault) or name (AWS).
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub action: Action,
    /// The entry's key names.
    pub keys: Vec<String>,
    /// For an update: every key that differed.
    pub changes: Vec<KeyDiff>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub source: String,
    pub target: String,
    pub prefix: String,
    pub dry_run: bool,
    pub entries: Vec<EntryReport>,
    pub skipped: Vec<Skipped>,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

impl SyncReport {
    pub(crate) fn new(
        from: &Source,
        target: &Store,
        prefix: &str,
        dry_run: bool,
        skipped: Vec<Skipped>,
    ) -> SyncReport {
        SyncReport {
            source: from.to_string(),
            target: target.name(),
            prefix: prefix.to_string(),
            dry_run,
            entries: Vec::new(),
            skipped,
            created: 0,
            updated: 0,
            unchanged: 0,
        }
    }

    pub(crate) fn push(&mut self, e: EntryReport) {
        match e.action {
            Action::Create => self.created += 1,
            Action::Update => self.updated += 1,
            Action::Unchanged => self.unchanged += 1,
        }
        self.entries.push(e);
    }
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.dry_run { " (dry run)" } else { "" };
        writeln!(
            f,
            "sync {} -> {} under {:?}{mode}",
            self.source, self.target, self.prefix
        )?;
        for e in &self.entries {
            let verb = match (e.action, self.dry_run) {
                (Action::Create, false) => "created",
                (Action::Create, true) => "would create",
                (Action::Update, false) => "updated",
                (Action::Update, true) => "would update",
                (Action::Unchanged, _) => "unchanged",
            };
            let n = e.keys.len();
            let keys = if n == 1 { "key" } else { "keys" };
            writeln!(f, "  {verb:<13} {} ({n} {keys}, {})", e.path, e.kind)?;
            for c in &e.changes {
                writeln!(f, "                  {c}")?;
            }
        }
        write_skipped(f, &self.skipped)?;
        write!(
            f,
            "{} entries: {} {}, {} {}, {} unchanged; {} skipped",
            self.entries.len(),
            self.created,
            if self.dry_run { "to create" } else { "created" },
            self.updated,
            if self.dry_run { "to update" } else { "updated" },
            self.unchanged,
            self.skipped.len()
        )?;
        if self.dry_run {
            write!(f, "\ndry run: nothing was written")?;
        }
        Ok(())
    }
}

fn write_skipped(f: &mut std::fmt::Formatter<'_>, skipped: &[Skipped]) -> std::fmt::Result {
    for s in skipped {
        let kind = if s.kind.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.kind)
        };
        writeln!(f, "  {:<13} {}{kind}: {}", "skipped", s.secret, s.reason)?;
    }
    Ok(())
}

/// An entry whose keys differ.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub path: String,
    pub keys: Vec<KeyDiff>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub source: String,
    pub target: String,
    pub prefix: String,
    pub passed: bool,
    /// Entries equal in both.
    pub matched: usize,
    /// Source Secrets with no entry in the target.
    pub missing: Vec<String>,
    /// Entries whose keys or values differ.
    pub changed: Vec<Changed>,
    /// Entries under the prefix that no source Secret accounts for.
    pub extra: Vec<String>,
    pub skipped: Vec<Skipped>,
}

impl VerifyReport {
    pub(crate) fn new(
        from: &Source,
        target: &Store,
        prefix: &str,
        skipped: Vec<Skipped>,
    ) -> VerifyReport {
        VerifyReport {
            source: from.to_string(),
            target: target.name(),
            prefix: prefix.to_string(),
            passed: false,
            matched: 0,
            missing: Vec::new(),
            changed: Vec::new(),
            extra: Vec::new(),
            skipped,
        }
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "verify {} -> {} under {:?}",
            self.source, self.target, self.prefix
        )?;
        for p in &self.missing {
            writeln!(f, "  {:<13} {p}", "missing")?;
        }
        for c in &self.changed {
            writeln!(f, "  {:<13} {}", "changed", c.path)?;
            for k in &c.keys {
                writeln!(f, "                  {k}")?;
            }
        }
        for p in &self.extra {
            writeln!(f, "  {:<13} {p} (no source Secret)", "extra")?;
        }
        write_skipped(f, &self.skipped)?;
        if self.passed {
            write!(f, "OK: all {} entries match", self.matched)
        } else {
            write!(
                f,
                "MISMATCH: {} match, {} missing, {} changed, {} extra",
                self.matched,
                self.missing.len(),
                self.changed.len(),
                self.extra.len()
            )
        }
    }
}
