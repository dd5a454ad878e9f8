//! What the controller knows of the fleet from one call to the next: the epoch
//! counter, which replicas take epochs, the membership last resolved, and what each
//! replica showed of itself (when it answered, its name, the epochs it served).
//! Every clone of a `Proxies` shares one book. Pure bookkeeping: times come in as
//! parameters, nothing here talks to a proxy.
//!
//! The counter starts from what the fleet said before this controller's first
//! change, and moves only with this controller's own changes. It never follows an
//! epoch seen later: a replica that is ahead of it was changed by someone else, and
//! the check before the next change (or the replica's refusal, 409) is how the
//! operator hears of it.

use std::collections::{BTreeMap, BTreeSet};

/// One replica as this controller saw it, under one name: a new name at the same
/// URL (a replica that restarted there) starts a new entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub url: String,
    /// `/state`'s `replica`; empty until it says (an older proxy never does).
    pub replica: String,
    /// Unix seconds of the first and the last answer (any HTTP answer).
    pub first: f64,
    pub last: f64,
    /// The epochs its answers carried.
    pub epochs: BTreeSet<u64>,
}

/// Something about the fleet worth a line in the run's timeline, kept until the
/// runner takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Unix seconds.
    pub at: f64,
    pub text: String,
    pub ok: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Book {
    /// The highest epoch read from the fleet before the first change, or sent
    /// since; `None` until read.
    epoch: Option<u64>,
    /// By URL: whether the replica serves `/state` (an older proxy answers 404 and
    /// takes no epoch in its bodies).
    serves_state: BTreeMap<String, bool>,
    /// The replicas as last resolved, to note arrivals and departures once however
    /// many clones resolve; `None` before the first resolution.
    members: Option<BTreeSet<String>>,
    seen: Vec<Seen>,
    notes: Vec<Note>,
}

impl Book {
    /// Whether the counter has its starting point.
    pub fn started(&self) -> bool {
        self.epoch.is_some()
    }

    /// The starting point: the highest epoch the fleet showed before the first
    /// change. Only the first read counts; later reads do not move the counter.
    pub fn start(&mut self, highest: u64) {
        self.epoch.get_or_insert(highest);
    }

    /// The epoch of the next change (one change: the same number to every
    /// replica); `None` before [`Book::start`].
    pub fn next(&mut self) -> Option<u64> {
        let next = self.epoch?.checked_add(1)?;
        self.epoch = Some(next);
        Some(next)
    }

    /// The epoch of the last change sent (or the starting point).
    pub fn current(&self) -> Option<u64> {
        self.epoch
    }

    pub fn set_serves_state(&mut self, url: &str, serves: bool) {
        self.serves_state.insert(url.to_string(), serves);
    }

    /// `None` when not known yet.
    pub fn serves_state(&self, url: &str) -> Option<bool> {
        self.serves_state.get(url).copied()
    }

    /// Records the membership resolved now; returns the replicas that joined and
    /// the ones that left since the last resolution (none the first time).
    pub fn resolved(&mut self, urls: &[String]) -> (Vec<String>, Vec<String>) {
        let now: BTreeSet<String> = urls.iter().cloned().collect();
        let Some(before) = self.members.replace(now.clone()) else {
            return (Vec::new(), Vec::new());
        };
        let joined = urls
            .iter()
            .filter(|u| !before.contains(*u))
            .cloned()
            .collect();
        let left = before.difference(&now).cloned().collect();
        (joined, left)
    }

    /// Replica `url` answered at `at`.
    pub fn answered(&mut self, url: &str, at: f64) {
        match self.entry(url) {
            Some(s) => {
                s.first = s.first.min(at);
                s.last = s.last.max(at);
            }
            None => self.seen.push(Seen {
                url: url.to_string(),
                replica: String::new(),
                first: at,
                last: at,
                epochs: BTreeSet::new(),
            }),
        }
    }

    /// Replica `url` said at `at` that it is `name` and serves `epoch`.
    pub fn showed(&mut self, url: &str, name: &str, epoch: Option<u64>, at: f64) {
        let same = match self.entry(url) {
            Some(s) if s.replica.is_empty() || name.is_empty() || s.replica == name => {
                if s.replica.is_empty() {
                    s.replica = name.to_string();
                }
                true
            }
            _ => false,
        };
        if !same {
            self.seen.push(Seen {
                url: url.to_string(),
                replica: name.to_string(),
                first: at,
                last: at,
                epochs: BTreeSet::new(),
            });
        }
        self.answered(url, at);
        if let (Some(e), Some(s)) = (epoch, self.entry(url)) {
            s.epochs.insert(e);
        }
    }

    /// The newest entry for `url`.
    fn entry(&mut self, url: &str) -> Option<&mut Seen> {
        self.seen.iter_mut().rev().find(|s| s.url == url)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.clone()
    }

    pub fn note(&mut self, at: f64, text: String, ok: bool) {
        self.notes.push(Note { at, text, ok });
    }

    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_starts_once_and_moves_only_with_changes() {
        let mut b = Book::default();
        assert!(!b.started());
        assert_eq!(b.next(), None);
        b.start(7);
        // A later read (another controller moved the fleet to 12) does not move it:
        // the next change must be refused, not silently adopt theirs.
        b.start(12);
        assert_eq!(b.current(), Some(7));
        assert_eq!(b.next(), Some(8));
        assert_eq!(b.next(), Some(9));
        assert_eq!(b.current(), Some(9));
    }

    #[test]
    fn arrivals_and_departures_are_noted_against_the_last_resolution() {
        let mut b = Book::default();
        let urls = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(b.resolved(&urls(&["a", "b"])), (vec![], vec![]));
        assert_eq!(b.resolved(&urls(&["a", "b", "c"])), (urls(&["c"]), vec![]));
        // A second clone resolving the same set hears nothing new.
        assert_eq!(b.resolved(&urls(&["a", "b", "c"])), (vec![], vec![]));
        assert_eq!(
            b.resolved(&urls(&["c", "d"])),
            (urls(&["d"]), urls(&["a", "b"]))
        );
    }

    #[test]
    fn a_replica_is_named_once_and_a_new_name_is_a_new_entry() {
        let mut b = Book::default();
        b.answered("http://a", 10.0);
        b.showed("http://a", "proxy-0", Some(3), 11.0);
        b.showed("http://a", "proxy-0", Some(4), 12.0);
        b.answered("http://a", 13.0);
        let seen = b.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].replica, "proxy-0");
        assert_eq!((seen[0].first, seen[0].last), (10.0, 13.0));
        assert_eq!(seen[0].epochs, BTreeSet::from([3, 4]));

        // Restarted at the same address under another name.
        b.showed("http://a", "proxy-0b", Some(4), 20.0);
        // An answer that names nobody (an older proxy's /status) counts for the
        // newest entry.
        b.showed("http://a", "", None, 21.0);
        let seen = b.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].replica, "proxy-0b");
        assert_eq!((seen[1].first, seen[1].last), (20.0, 21.0));
        assert_eq!(seen[1].epochs, BTreeSet::from([4]));
    }
}
