//! How two versions of an entry differ, key by key, shown as fingerprints.

use serde::Serialize;

use super::{Data, Fingerprint};

/// What happened to one key between the source (wanted) and the target (held).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyChange {
    /// In the source, not in the target.
    Missing,
    /// In both, with different values.
    Changed,
    /// In the target only.
    Extra,
}

/// One key that differs.
#[derive(Debug, Clone, Serialize)]
pub struct KeyDiff {
    pub key: String,
    pub change: KeyChange,
    /// The source's value, when it has one.
    pub source: Option<Fingerprint>,
    /// The target's value, when it has one.
    pub target: Option<Fingerprint>,
}

impl std::fmt::Display for KeyDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show =
            |fp: &Option<Fingerprint>| fp.as_ref().map(|p| p.to_string()).unwrap_or_default();
        match self.change {
            KeyChange::Missing => write!(
                f,
                "key {:?} missing in the target (source: {})",
                self.key,
                show(&self.source)
            ),
            KeyChange::Extra => write!(
                f,
                "key {:?} only in the target ({})",
                self.key,
                show(&self.target)
            ),
            KeyChange::Changed => write!(
                f,
                "key {:?} differs: source {}, target {}",
                self.key,
                show(&self.source),
                show(&self.target)
            ),
        }
    }
}

/// Every key of `want` (the source) and `have` (the target) that differs, in key
/// order; empty when they are equal.
pub(crate) fn compare(want: &Data, have: &Data) -> Vec<KeyDiff> {
    let mut out = Vec::new();
    for (key, w) in want {
        match have.get(key) {
            None => out.push(KeyDiff {
                key: key.clone(),
                change: KeyChange::Missing,
                source: Some(w.fingerprint()),
                target: None,
            }),
            Some(h) if h != w => out.push(KeyDiff {
                key: key.clone(),
                change: KeyChange::Changed,
                source: Some(w.fingerprint()),
                target: Some(h.fingerprint()),
            }),
            Some(_) => {}
        }
    }
    for (key, h) in have {
        if !want.contains_key(key) {
            out.push(KeyDiff {
                key: key.clone(),
                change: KeyChange::Extra,
                source: None,
                target: Some(h.fingerprint()),
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretText;

    fn data(pairs: &[(&str, &str)]) -> Data {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretText::new(v.to_string())))
            .collect()
    }

    #[test]
    fn equal_maps_have_no_differences() {
        let a = data(&[("a", "1"), ("b", "2")]);
        assert!(compare(&a, &a.clone()).is_empty());
    }

    #[test]
    fn each_kind_of_difference_is_named_without_values() {
        let want = data(&[("a", "same"), ("b", "old-Secret-1"), ("c", "only-source")]);
        let have = data(&[("a", "same"), ("b", "new-Secret-2"), ("d", "only-target")]);
        let d = compare(&want, &have);
        let kinds: Vec<(&str, &KeyChange)> =
            d.iter().map(|k| (k.key.as_str(), &k.change)).collect();
        assert_eq!(
            kinds,
            [
                ("b", &KeyChange::Changed),
                ("c", &KeyChange::Missing),
                ("d", &KeyChange::Extra)
            ]
        );
        let text: String = d.iter().map(|k| k.to_string()).collect();
        for v in ["old-Secret-1", "new-Secret-2", "only-source", "only-target"] {
            assert!(!text.contains(v), "{text}");
        }
        assert!(text.contains("12 bytes, sha256 "), "{text}");
    }
}
