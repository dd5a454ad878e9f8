//! Kubernetes Secrets as `kubectl get secrets -A -o json` prints them (a `List`),
//! or one Secret: read from a file, stdin or `kubectl` itself, decoded, and the
//! ones Kubernetes manages skipped. Errors name the Secret and the key, never a
//! value: the JSON is walked by hand rather than through serde's messages, which
//! quote the offending input.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::Value;

use super::error::{Role, SecretsError};
use super::{Entry, SecretText};

/// Types Kubernetes (or Helm) creates and owns; copying them would be wrong.
const MANAGED_TYPES: [&str; 2] = ["kubernetes.io/service-account-token", "helm.sh/release.v1"];

/// A Secret left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub secret: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
}

/// What a Kubernetes source holds.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
}

/// Reads `k8s-json:FILE` (`None`: stdin).
pub(crate) async fn read_json_file(
    path: Option<PathBuf>,
    include_managed: bool,
) -> Result<Loaded, SecretsError> {
    let input = match &path {
        Some(p) => format!("k8s-json:{}", p.display()),
        None => "k8s-json:- (stdin)".to_string(),
    };
    let bytes = tokio::task::spawn_blocking(move || match path {
        Some(p) => std::fs::read(p),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map(|_| buf)
        }
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r)
    .map_err(|e| SecretsError::Input {
        role: Role::Source,
        input: input.clone(),
        reason: format!("cannot read: {e}"),
    })?;
    parse(&input, &bytes, include_managed)
}

/// Runs `kubectl get secrets -A -o json --context CONTEXT` with the user's own
/// kubeconfig and credentials.
pub(crate) async fn read_kubectl(
    context: &str,
    include_managed: bool,
) -> Result<Loaded, SecretsError> {
    let fail = |detail: String| SecretsError::Kubectl {
        role: Role::Source,
        context: context.to_string(),
        detail,
    };
    let ctx = context.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .args(["get", "secrets", "-A", "-o", "json", "--context", &ctx])
            .stdin(Stdio::null())
            .output()
    })
    .await
    .map_err(|e| fail(e.to_string()))?
    .map_err(|e| {
        fail(format!(
            "cannot run kubectl ({e}); is it installed and on PATH?"
        ))
    })?;
    if !out.status.success() {
        // kubectl's own diagnostics (context unknown, forbidden, unreachable);
        // its stdout, which may hold Secrets, is not shown.
        let err = String::from_utf8_lossy(&out.stderr);
        let mut detail: String = err.trim().chars().take(600).collect();
        if detail.is_empty() {
            detail = format!("exited with {}", out.status);
        }
        return Err(fail(detail));
    }
    parse(
        &format!("kubectl --context {context}"),
        &out.stdout,
        include_managed,
    )
}

/// Parses a `List` of Secrets or one Secret.
pub(crate) fn parse(
    input: &str,
    bytes: &[u8],
    include_managed: bool,
) -> Result<Loaded, SecretsError> {
    let bad = |reason: String| SecretsError::Input {
        role: Role::Source,
        input: input.to_string(),
        reason,
    };
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| {
        bad(format!(
            "not valid JSON (line {} column {}); expected the output of kubectl get secrets -A -o json",
            e.line(),
            e.column()
        ))
    })?;
    let list = doc["kind"].as_str() != Some("Secret");
    let items: Vec<&Value> = match (doc["kind"].as_str(), doc.get("items")) {
        (Some("Secret"), _) => vec![&doc],
        (_, Some(Value::Array(items))) => items.iter().collect(),
        (kind, _) => {
            return Err(bad(format!(
                "expected a Secret or a List of Secrets, found {}",
                kind.map_or("no kind".to_string(), |k| format!("kind {k:?}"))
            )));
        }
    };
    let mut loaded = Loaded::default();
    let mut seen = BTreeSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let entry = secret(item).map_err(|reason| {
            if list {
                bad(format!("items[{i}]: {reason}"))
            } else {
                bad(reason)
            }
        })?;
        if !seen.insert(entry.id()) {
            return Err(bad(format!("secret {} appears twice", entry.id())));
        }
        if !include_managed && MANAGED_TYPES.contains(&entry.kind.as_str()) {
            loaded.skipped.push(Skipped {
                secret: entry.id(),
                kind: entry.kind,
                reason: "managed by Kubernetes or Helm (--include-managed copies it)".into(),
            });
            continue;
        }
        loaded.entries.push(entry);
    }
    loaded.entries.sort_by_key(Entry::id);
    Ok(loaded)
}

/// One Secret object; the error names it once its name is known.
fn secret(item: &Value) -> Result<Entry, String> {
    if let Some(kind) = item["kind"].as_str().filter(|k| *k != "Secret") {
        return Err(format!("kind {kind:?} is not a Secret"));
    }
    let name = item["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("a Secret without metadata.name")?;
    let namespace = item["metadata"]["namespace"].as_str().unwrap_or("default");
    let id = format!("secret {namespace}/{name}");
    let kind = match &item["type"] {
        Value::Null => "Opaque",
        Value::String(t) => t.as_str(),
        _ => return Err(format!("{id}: type is not a string")),
    };
    let mut raw: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (field, decode) in [("data", true), ("stringData", false)] {
        let map = match &item[field] {
            Value::Null => continue,
            Value::Object(m) => m,
            _ => return Err(format!("{id}: {field} is not an object")),
        };
        for (key, v) in map {
            let Some(text) = v.as_str() else {
                return Err(format!("{id}: {field}.{key} is not a string"));
            };
            let bytes = if decode {
                STANDARD
                    .decode(text)
                    .map_err(|_| format!("{id}: key {key:?}: data is not valid base64"))?
            } else {
                text.as_bytes().to_vec()
            };
            // stringData wins over data, as the API server merges them.
            raw.insert(key.clone(), bytes);
        }
    }
    let mut entry = Entry {
        namespace: namespace.to_string(),
        name: name.to_string(),
        kind: kind.to_string(),
        data: BTreeMap::new(),
        binary: BTreeSet::new(),
    };
    for (key, bytes) in raw {
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => {
                entry.binary.insert(key.clone());
                STANDARD.encode(e.into_bytes())
            }
        };
        entry.data.insert(key, SecretText::new(text));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &str) -> Vec<u8> {
        format!(r#"{{"apiVersion":"v1","kind":"List","items":[{items}]}}"#).into_bytes()
    }

    #[test]
    fn a_list_is_decoded_and_managed_secrets_skipped() {
        let doc = list(
            r#"{"kind":"Secret","metadata":{"name":"db","namespace":"shop"},"type":"Opaque","data":{"password":"czNjcjN0"}},
               {"kind":"Secret","metadata":{"name":"sa","namespace":"shop"},"type":"kubernetes.io/service-account-token","data":{"token":"eA=="}},
               {"kind":"Secret","metadata":{"name":"bin","namespace":"a"},"data":{"k":"/wA="},"stringData":{"s":"plain"}}"#,
        );
        let loaded = parse("t", &doc, false).unwrap();
        let ids: Vec<String> = loaded.entries.iter().map(Entry::id).collect();
        assert_eq!(ids, ["a/bin", "shop/db"]);
        assert_eq!(loaded.entries[1].data["password"].expose(), "s3cr3t");
        assert_eq!(loaded.entries[0].kind, "Opaque");
        assert!(loaded.entries[0].binary.contains("k"));
        assert_eq!(loaded.entries[0].data["k"].expose(), "/wA=");
        assert_eq!(loaded.entries[0].data["s"].expose(), "plain");
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].secret, "shop/sa");
        let all = parse("t", &doc, true).unwrap();
        assert_eq!(all.entries.len(), 3);
    }

    #[test]
    fn a_single_secret_is_accepted() {
        let doc = br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"},"data":{}}"#;
        let loaded = parse("t", doc, false).unwrap();
        assert_eq!(loaded.entries[0].id(), "default/x");
    }

    #[test]
    fn errors_name_the_secret_and_key_but_not_the_value() {
        let doc = list(
            r#"{"kind":"Secret","metadata":{"name":"db","namespace":"shop"},"data":{"password":"not*base64-Pa55word"}}"#,
        );
        let e = parse("k8s-json:f", &doc, false).unwrap_err().to_string();
        assert!(
            e.contains("shop/db") && e.contains("password") && e.contains("base64"),
            "{e}"
        );
        assert!(!e.contains("Pa55word"), "{e}");
        let e = parse("k8s-json:f", br#"{"items": [ "Pa55word" "#, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not valid JSON") && !e.contains("Pa55word"),
            "{e}"
        );
        let e = parse("f", br#"{"kind":"ConfigMap"}"#, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ConfigMap"), "{e}");
        let dup = list(
            r#"{"metadata":{"name":"a","namespace":"n"}},{"metadata":{"name":"a","namespace":"n"}}"#,
        );
        let e = parse("f", &dup, false).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
