//! What a fence comparison found in one table, apart from the database:
//! [`ChunkDiff`] matches one differing chunk's rows by key, and [`Findings`] keeps
//! the table's counts and a few example keys and words the problem.

use std::collections::HashMap;

/// How a row differs at the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// On the source only: a lost write.
    Missing,
    /// On both, with other contents.
    Changed,
    /// On the target only.
    Extra,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Changed => "changed",
            Kind::Extra => "extra",
        }
    }
}

/// One table's differences: exact counts, the first `limit` keys as examples, and
/// notes for what rows cannot say (a table compared as a whole).
#[derive(Debug, Clone)]
pub(super) struct Findings {
    pub missing: u64,
    pub changed: u64,
    pub extra: u64,
    examples: Vec<(Kind, String)>,
    limit: usize,
    notes: Vec<String>,
}

impl Findings {
    pub fn new(limit: usize) -> Findings {
        Findings {
            missing: 0,
            changed: 0,
            extra: 0,
            examples: Vec::new(),
            limit,
            notes: Vec::new(),
        }
    }

    pub fn add(&mut self, kind: Kind, key: &str) {
        match kind {
            Kind::Missing => self.missing += 1,
            Kind::Changed => self.changed += 1,
            Kind::Extra => self.extra += 1,
        }
        if self.examples.len() < self.limit {
            self.examples.push((kind, key.to_string()));
        }
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Rows that differ, of any kind.
    pub fn rows(&self) -> u64 {
        self.missing + self.changed + self.extra
    }

    pub fn passed(&self) -> bool {
        self.rows() == 0 && self.notes.is_empty()
    }

    /// "1 source row missing on the target (lost writes), 1 changed, 2 only on the
    /// target: keys 42 missing, 7 changed, 1001 extra and 1 more", then the notes. The
    /// counts are left to the notes when no key can be named (a table absent from
    /// the target, or without a primary key), since those say them already.
    pub fn problem(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.rows() > 0 && (!self.examples.is_empty() || self.notes.is_empty()) {
            parts.push(self.counts());
        }
        parts.extend(self.notes.iter().cloned());
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    fn counts(&self) -> String {
        let mut counts = Vec::new();
        if self.missing > 0 {
            let rows = if self.missing == 1 { "row" } else { "rows" };
            counts.push(format!(
                "{} source {rows} missing on the target (lost writes)",
                self.missing
            ));
        }
        if self.changed > 0 {
            counts.push(format!("{} changed", self.changed));
        }
        if self.extra > 0 {
            counts.push(format!("{} only on the target", self.extra));
        }
        let counts = counts.join(", ");
        if self.examples.is_empty() {
            return counts;
        }
        let keys: Vec<String> = self
            .examples
            .iter()
            .map(|(kind, key)| format!("{key} {}", kind.word()))
            .collect();
        let label = if keys.len() == 1 { "key" } else { "keys" };
        let shown = self.examples.len() as u64;
        let more = if self.rows() > shown {
            format!(" and {} more", self.rows() - shown)
        } else {
            String::new()
        };
        format!("{counts}: {label} {}{more}", keys.join(", "))
    }
}

/// One chunk's rows matched by key: the source's go in at [`ChunkDiff::new`] (at
/// most a chunk of them, since chunks are cut on the source), the target's stream
/// through [`ChunkDiff::target`], and what is left at [`ChunkDiff::finish`] is
/// missing.
pub(super) struct ChunkDiff {
    /// Key → (position in key order, digest).
    source: HashMap<String, (usize, i64)>,
}

impl ChunkDiff {
    pub fn new(rows: impl IntoIterator<Item = (String, i64)>) -> ChunkDiff {
        let source = rows
            .into_iter()
            .enumerate()
            .map(|(i, (key, digest))| (key, (i, digest)))
            .collect();
        ChunkDiff { source }
    }

    /// A target row of the chunk.
    pub fn target(&mut self, key: &str, digest: i64, found: &mut Findings) {
        match self.source.remove(key) {
            Some((_, d)) if d == digest => {}
            Some(_) => found.add(Kind::Changed, key),
            None => found.add(Kind::Extra, key),
        }
    }

    /// The source rows no target row matched, in key order.
    pub fn finish(self, found: &mut Findings) {
        let mut left: Vec<(usize, String)> = self
            .source
            .into_iter()
            .map(|(key, (i, _))| (i, key))
            .collect();
        left.sort_unstable();
        for (_, key) in left {
            found.add(Kind::Missing, &key);
        }
    }
}
