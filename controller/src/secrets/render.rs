//! `render`: one External Secrets Operator `ExternalSecret` per Secret (key names
//! and store paths, never values) plus an example `ClusterSecretStore`, as YAML
//! files ready to commit to a GitOps repository. `external-secrets.io/v1`: the
//! v1beta1 API is no longer served.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Entry;
use super::error::SecretsError;
use super::kube::Skipped;
use super::location::{Source, Target, VaultAddr};
use super::sync::{LoadOptions, load};
use super::yaml::{Node, map, s, to_yaml};

const API_VERSION: &str = "external-secrets.io/v1";
/// The file that holds the store example, beside one folder per namespace.
pub const STORE_FILE: &str = "cluster-secret-store.yaml";

#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub load: LoadOptions,
    /// The `ClusterSecretStore` every `ExternalSecret` refers to.
    pub store: String,
    pub out: PathBuf,
    /// The store the new cluster will read; shapes the store example. Without
    /// it a `vault:` source is used, else a Vault placeholder.
    pub to: Option<Target>,
    /// How often the operator re-reads each entry (`spec.refreshInterval`).
    pub refresh_interval: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RenderReport {
    pub source: String,
    pub out: String,
    pub store: String,
    /// Files written, relative to `out`.
    pub files: Vec<String>,
    pub skipped: Vec<Skipped>,
}

impl std::fmt::Display for RenderReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "render {} -> {} (store {})",
            self.source, self.out, self.store
        )?;
        for file in &self.files {
            writeln!(f, "  wrote   {file}")?;
        }
        for s in &self.skipped {
            writeln!(f, "  skipped {} ({}): {}", s.secret, s.kind, s.reason)?;
        }
        write!(
            f,
            "{} ExternalSecrets and 1 ClusterSecretStore example; {} skipped",
            self.files.len().saturating_sub(1),
            self.skipped.len()
        )
    }
}

/// Writes the manifests for every Secret of `from` under `opts.out`.
pub async fn render(from: &Source, opts: &RenderOptions) -> Result<RenderReport, SecretsError> {
    let loaded = load(from, &opts.load).await?;
    let provider = opts.to.clone().or(match from {
        Source::Vault(addr) => Some(Target::Vault(addr.clone())),
        _ => None,
    });
    let mut files = Vec::new();
    let header = "# Example ClusterSecretStore for the ExternalSecrets beside it.\n\
                  # Review the auth section for your cluster before applying it.\n";
    let store_doc =
        header.to_string() + &to_yaml(&cluster_secret_store(&opts.store, provider.as_ref()));
    write(&opts.out, STORE_FILE, &store_doc)?;
    files.push(STORE_FILE.to_string());
    for entry in &loaded.entries {
        let rel = format!("{}/{}.yaml", entry.namespace, entry.name);
        let doc = format!(
            // No source path or time here: the same Secrets render to the same
            // bytes on every operator's machine, so a GitOps diff shows real changes.
            "# {} ({}): key names only; the values stay in the store.\n{}",
            entry.id(),
            entry.kind,
            to_yaml(&external_secret(
                entry,
                &opts.load.prefix,
                &opts.store,
                &opts.refresh_interval
            ))
        );
        write(&opts.out, &rel, &doc)?;
        files.push(rel);
    }
    Ok(RenderReport {
        source: from.to_string(),
        out: opts.out.display().to_string(),
        store: opts.store.clone(),
        files,
        skipped: loaded.skipped,
    })
}

fn write(dir: &Path, rel: &str, text: &str) -> Result<(), SecretsError> {
    let path = dir.join(rel);
    let fail = |source| SecretsError::Output {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    std::fs::write(&path, text).map_err(fail)
}

/// The `ExternalSecret` that recreates `entry` as a Secret of the same name,
/// namespace, type and keys.
pub(crate) fn external_secret(entry: &Entry, prefix: &str, store: &str, refresh: &str) -> Node {
    let remote_key = entry.path(prefix);
    let data = entry
        .data
        .keys()
        .map(|key| {
            let mut remote = vec![
                ("key".to_string(), s(remote_key.as_str())),
                ("property".to_string(), s(key.as_str())),
            ];
            if entry.binary.contains(key) {
                remote.push(("decodingStrategy".to_string(), s("Base64")));
            }
            map([
                ("secretKey", s(key.as_str())),
                ("remoteRef", Node::Map(remote)),
            ])
        })
        .collect();
    // The operator refuses an ExternalSecret with neither `data` nor `dataFrom`;
    // a Secret without keys extracts its (empty) entry whole instead.
    let body = if entry.data.is_empty() {
        (
            "dataFrom",
            Node::List(vec![map([(
                "extract",
                map([("key", s(remote_key.as_str()))]),
            )])]),
        )
    } else {
        ("data", Node::List(data))
    };
    let mut target = vec![
        ("name".to_string(), s(entry.name.as_str())),
        ("creationPolicy".to_string(), s("Owner")),
    ];
    // Opaque is the default; any other type must be carried by the template or
    // the new Secret would lose it (a TLS Secret that Ingress cannot use).
    if entry.kind != "Opaque" {
        target.push((
            "template".to_string(),
            map([("type", s(entry.kind.as_str()))]),
        ));
    }
    map([
        ("apiVersion", s(API_VERSION)),
        ("kind", s("ExternalSecret")),
        (
            "metadata",
            map([
                ("name", s(entry.name.as_str())),
                ("namespace", s(entry.namespace.as_str())),
            ]),
        ),
        (
            "spec",
            map([
                ("refreshInterval", s(refresh)),
                (
                    "secretStoreRef",
                    map([("kind", s("ClusterSecretStore")), ("name", s(store))]),
                ),
                ("target", Node::Map(target)),
                body,
            ]),
        ),
    ])
}

/// A `ClusterSecretStore` for `provider`, with the operator's own service
/// account as the usual way in (no long-lived token in the repository).
pub(crate) fn cluster_secret_store(name: &str, provider: Option<&Target>) -> Node {
    let sa = || {
        map([
            ("name", s("external-secrets")),
            ("namespace", s("external-secrets")),
        ])
    };
    let vault = |addr: &VaultAddr| {
        map([(
            "vault",
            map([
                ("server", s(addr.url.as_str())),
                ("path", s(addr.mount.as_str())),
                ("version", s("v2")),
                (
                    "auth",
                    map([(
                        "kubernetes",
                        map([
                            ("mountPath", s("kubernetes")),
                            ("role", s("external-secrets")),
                            ("serviceAccountRef", sa()),
                        ]),
                    )]),
                ),
            ]),
        )])
    };
    let spec = match provider {
        Some(Target::Vault(addr)) => vault(addr),
        Some(Target::AwsSm(region)) => map([(
            "aws",
            map([
                ("service", s("SecretsManager")),
                ("region", s(region.as_str())),
                ("auth", map([("jwt", map([("serviceAccountRef", sa())]))])),
            ]),
        )]),
        None => vault(&VaultAddr {
            url: "https://vault.example.internal:8200".into(),
            mount: "secret".into(),
        }),
    };
    map([
        ("apiVersion", s(API_VERSION)),
        ("kind", s("ClusterSecretStore")),
        ("metadata", map([("name", s(name))])),
        ("spec", map([("provider", spec)])),
    ])
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::secrets::SecretText;

    fn entry(kind: &str, keys: &[&str], binary: &[&str]) -> Entry {
        Entry {
            namespace: "shop".into(),
            name: "web".into(),
            kind: kind.into(),
            data: keys
                .iter()
                .map(|k| (k.to_string(), SecretText::new("v".into())))
                .collect::<BTreeMap<_, _>>(),
            binary: binary
                .iter()
                .map(|k| k.to_string())
                .collect::<BTreeSet<_>>(),
        }
    }

    #[test]
    fn a_tls_secret_keeps_its_type_and_keys() {
        let yaml = to_yaml(&external_secret(
            &entry("kubernetes.io/tls", &["tls.crt", "tls.key"], &["tls.key"]),
            "cutover",
            "vault",
            "1h",
        ));
        assert!(
            yaml.contains("    template:\n      type: kubernetes.io/tls\n"),
            "{yaml}"
        );
        assert!(yaml.contains("  - secretKey: tls.crt\n    remoteRef:\n      key: cutover/shop/web\n      property: tls.crt\n"), "{yaml}");
        assert!(
            yaml.contains("property: tls.key\n      decodingStrategy: Base64\n"),
            "{yaml}"
        );
        assert!(!yaml.contains("dataFrom"), "{yaml}");
    }

    #[test]
    fn an_opaque_secret_without_keys_extracts_its_entry() {
        let yaml = to_yaml(&external_secret(&entry("Opaque", &[], &[]), "p", "s", "1h"));
        assert!(!yaml.contains("template"), "{yaml}");
        assert!(
            yaml.contains("  dataFrom:\n  - extract:\n      key: p/shop/web\n"),
            "{yaml}"
        );
    }
}
