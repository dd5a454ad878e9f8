//! The fleet's invariant, watched from outside while the plan runs: replicas at
//! the same epoch serve the same weights and write sides. Every change to the
//! fleet carries an epoch and every replica commits a change and its epoch
//! together, so two replicas at one epoch that serve different splits are a bug
//! (one took the epoch without the state), and anti-entropy will not mend it:
//! neither looks newer to the other.
//!
//! Holds are left out of the comparison: each replica ends a hold at its own
//! deadline, so they may differ for a moment.

use std::collections::BTreeMap;

use cutover_api::State;

/// What a replica serves: each route's weights (in basis points) and write side.
type Served = BTreeMap<String, (Vec<(String, i64)>, String)>;

/// What `st` serves.
pub fn served(st: &State) -> Served {
    st.routes
        .iter()
        .map(|(name, r)| {
            let w = r
                .weights
                .iter()
                .map(|(b, p)| (b.clone(), (p * 100.0).round() as i64))
                .collect();
            (name.clone(), (w, r.writes.clone()))
        })
        .collect()
}

/// Replicas seen at one epoch serving different splits.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Divergence {
    pub epoch: u64,
    /// The replicas at that epoch, each with what it served, in a few words.
    pub replicas: Vec<String>,
    /// First and last seen, in seconds since the rehearsal began.
    pub first_s: f64,
    pub last_s: f64,
    /// How many looks saw it.
    pub seen: u32,
}

impl Divergence {
    /// Seen more than once: not a read that raced a change.
    pub fn lasting(&self) -> bool {
        self.seen >= 2
    }
}

/// The divergences seen so far.
#[derive(Debug, Clone, Default)]
pub struct Consistency {
    pub divergences: Vec<Divergence>,
    /// Looks taken.
    pub looks: u64,
}

impl Consistency {
    /// One look at `states` (replica name, its state) at `at_s`; `describe` puts a
    /// state in a few words.
    pub fn look(
        &mut self,
        at_s: f64,
        states: &[(String, State)],
        describe: impl Fn(&State) -> String,
    ) {
        self.looks += 1;
        let mut by_epoch: BTreeMap<u64, Vec<&(String, State)>> = BTreeMap::new();
        for s in states {
            by_epoch.entry(s.1.epoch).or_default().push(s);
        }
        for (epoch, group) in by_epoch {
            let Some(first) = group.first() else { continue };
            let reference = served(&first.1);
            if group.iter().all(|(_, s)| served(s) == reference) {
                continue;
            }
            let replicas: Vec<String> = group
                .iter()
                .map(|(n, s)| format!("{n}: {}", describe(s)))
                .collect();
            match self
                .divergences
                .iter_mut()
                .find(|d| d.epoch == epoch && d.replicas == replicas)
            {
                Some(d) => {
                    d.last_s = at_s;
                    d.seen += 1;
                }
                None => self.divergences.push(Divergence {
                    epoch,
                    replicas,
                    first_s: at_s,
                    last_s: at_s,
                    seen: 1,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(epoch: u64, new: f64, writes: &str) -> State {
        serde_json::from_value(serde_json::json!({"epoch": epoch, "routes": {"a": {
            "weights": {"old": 100.0 - new, "new": new},
            "weights_source": "admin", "writes": writes, "writes_source": "admin",
            "hold": null, "file": {"weights": {"old": 100.0, "new": 0.0}, "writes": "old"}
        }}}))
        .unwrap()
    }

    fn looks(c: &mut Consistency, at: f64, states: &[(&str, State)]) {
        let owned: Vec<(String, State)> = states
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect();
        c.look(at, &owned, |s| format!("epoch {}", s.epoch));
    }

    #[test]
    fn one_epoch_must_mean_one_split() {
        let mut c = Consistency::default();
        // Mid-change: different epochs may serve different splits.
        looks(
            &mut c,
            1.0,
            &[("p0", st(3, 50.0, "old")), ("p1", st(2, 10.0, "old"))],
        );
        looks(
            &mut c,
            1.5,
            &[("p0", st(3, 50.0, "old")), ("p1", st(3, 50.0, "old"))],
        );
        assert!(c.divergences.is_empty());
        // A replica that took epoch 19 without the fleet's weights.
        looks(
            &mut c,
            2.0,
            &[("p0", st(19, 100.0, "old")), ("p3", st(19, 0.0, "old"))],
        );
        assert_eq!(c.divergences.len(), 1);
        assert!(!c.divergences[0].lasting());
        looks(
            &mut c,
            2.5,
            &[("p0", st(19, 100.0, "old")), ("p3", st(19, 0.0, "old"))],
        );
        let d = &c.divergences[0];
        assert!(d.lasting());
        assert_eq!((d.epoch, d.first_s, d.last_s, d.seen), (19, 2.0, 2.5, 2));
        // Write sides count too.
        looks(
            &mut c,
            3.0,
            &[("p0", st(20, 100.0, "new")), ("p3", st(20, 100.0, "old"))],
        );
        assert_eq!(c.divergences.len(), 2);
        assert_eq!(c.looks, 5);
    }
}
