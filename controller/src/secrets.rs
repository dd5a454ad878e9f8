//! `cutover secrets …`: moves Kubernetes Secrets out of the old cluster into a
//! secrets store, checks the copy, and renders the External Secrets Operator
//! manifests that bring them into the new cluster.
//!
//! A source ([`Source`]) is a `kubectl get secrets -A -o json` document, a live
//! cluster through the user's own `kubectl`, or a store; a target ([`Target`]) is
//! Vault/OpenBao KV v2 or AWS Secrets Manager. Each Secret becomes one entry at
//! `{prefix}/{namespace}/{name}` holding every key.
//!
//! Values live in [`SecretText`], which has no `Display` and a redacting `Debug`:
//! reports, errors and JSON only ever carry key names and [`Fingerprint`]s. The
//! stores' HTTP details are in `vault`, `aws` (with `sigv4`) and `http`; what to
//! write is decided in `diff`, the commands are `sync`, `verify` and `render`.

mod aws;
pub mod cli;
mod diff;
mod error;
mod gate;
mod http;
mod kube;
mod location;
mod render;
mod sigv4;
mod store;
mod sync;
mod vault;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use diff::{KeyChange, KeyDiff};
pub use error::{Role, SecretsError};
pub use gate::{GateReport, SecretsPlan, gate};
pub use kube::Skipped;
pub use location::{Source, Target, Tokens};
pub use render::STORE_FILE;
pub use render::{RenderOptions, RenderReport, render};
pub use sync::{
    Action, Changed, EntryReport, LoadOptions, SyncOptions, SyncReport, VerifyReport, sync, verify,
};

/// The prefix entries go under unless `--prefix` says otherwise.
pub const DEFAULT_PREFIX: &str = "cutover";

/// A secret value as stored: UTF-8 text. Never displayed; `Debug` shows its length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    pub fn new(s: String) -> SecretText {
        SecretText(s)
    }

    /// The value itself, for writing to a store. Callers must not print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.0.as_bytes())
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0.len())
    }
}

/// What may be shown of a value: its length and the first 8 hex digits of its
/// SHA-256, enough to tell two values apart, not to recover one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    pub len: usize,
    pub sha256: String,
}

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let sha256 = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Fingerprint {
            len: bytes.len(),
            sha256,
        }
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, sha256 {}", self.len, self.sha256)
    }
}

/// The keys and values of one entry, in key order.
pub type Data = BTreeMap<String, SecretText>;

/// One Secret as a source gives it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub namespace: String,
    pub name: String,
    /// The Kubernetes type (`Opaque`, `kubernetes.io/tls`, …); a store does not
    /// know it and says `Opaque`.
    pub kind: String,
    pub data: Data,
    /// Keys whose bytes are not UTF-8: stored base64-encoded, and rendered with
    /// `decodingStrategy: Base64` so the new Secret gets the original bytes.
    pub binary: BTreeSet<String>,
}

impl Entry {
    /// The entry's path under the mount (Vault) or its name (AWS).
    pub fn path(&self, prefix: &str) -> String {
        entry_path(prefix, &self.namespace, &self.name)
    }

    /// `namespace/name`, as operators know the Secret.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

pub(crate) fn entry_path(prefix: &str, namespace: &str, name: &str) -> String {
    if prefix.is_empty() {
        format!("{namespace}/{name}")
    } else {
        format!("{prefix}/{namespace}/{name}")
    }
}

/// Checks and normalises `--prefix`: path segments of letters, digits, `.`, `_`,
/// `-`, joined by `/` (they become Vault paths and AWS names as they are).
pub fn parse_prefix(s: &str) -> Result<String, String> {
    let trimmed = s.trim_matches('/');
    for seg in trimmed.split('/').filter(|_| !trimmed.is_empty()) {
        let ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(format!(
                "segment {seg:?}: use letters, digits, '.', '_' and '-' between slashes"
            ));
        }
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_show_length_and_a_short_hash() {
        let f = Fingerprint::of(b"abc");
        assert_eq!(f.len, 3);
        assert_eq!(f.sha256, "ba7816bf");
        assert_eq!(f.to_string(), "3 bytes, sha256 ba7816bf");
    }

    #[test]
    fn debug_never_shows_a_value() {
        let v = SecretText::new("hunter2-very-secret".into());
        let shown = format!("{v:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("19 bytes"));
    }

    #[test]
    fn prefixes_are_path_segments() {
        assert_eq!(parse_prefix("cutover").unwrap(), "cutover");
        assert_eq!(parse_prefix("/apps/prod/").unwrap(), "apps/prod");
        assert_eq!(parse_prefix("").unwrap(), "");
        for bad in ["a//b", "a/../b", "a b", "a/?", "x#y"] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_join_prefix_namespace_and_name() {
        assert_eq!(entry_path("cutover", "shop", "db"), "cutover/shop/db");
        assert_eq!(entry_path("", "shop", "db"), "shop/db");
    }
}
