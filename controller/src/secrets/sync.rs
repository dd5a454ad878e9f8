//! `sync` and `verify`: read every Secret from the source, read the target's
//! entry, and write only what differs (so a second run adds no KV or AWS
//! version), or report what is missing, changed or extra.

mod report;

use std::collections::BTreeSet;

use super::diff::compare;
use super::error::{Role, SecretsError};
use super::kube::{self, Loaded, Skipped};
use super::location::{Source, Target, Tokens};
use super::store::Store;
use super::{DEFAULT_PREFIX, Data, Entry};

pub use report::{Action, Changed, EntryReport, SyncReport, VerifyReport};

/// What to read and where it goes.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Entries live at `{prefix}/{namespace}/{name}`.
    pub prefix: String,
    /// Copy the Secrets Kubernetes and Helm manage, skipped by default.
    pub include_managed: bool,
    pub tokens: Tokens,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            include_managed: false,
            tokens: Tokens::default(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    pub load: LoadOptions,
    /// Report what would be written, write nothing.
    pub dry_run: bool,
}

/// Reads every Secret `from` holds, and names the source for reports.
pub(crate) async fn load(from: &Source, opts: &LoadOptions) -> Result<Loaded, SecretsError> {
    match from {
        Source::K8sJson(path) => kube::read_json_file(path.clone(), opts.include_managed).await,
        Source::Kubectl(ctx) => kube::read_kubectl(ctx, opts.include_managed).await,
        Source::Vault(addr) => {
            let store =
                Store::open(&Target::Vault(addr.clone()), &opts.tokens, Role::Source).await?;
            load_store(&store, &opts.prefix).await
        }
    }
}

/// Entries of a store under `prefix`; only `{prefix}/{namespace}/{name}` paths
/// are Secrets, anything else is listed as skipped.
async fn load_store(store: &Store, prefix: &str) -> Result<Loaded, SecretsError> {
    let mut loaded = Loaded::default();
    let start = if prefix.is_empty() {
        0
    } else {
        prefix.len() + 1
    };
    for path in store.list(prefix).await? {
        let rel = path.get(start..).unwrap_or_default();
        let parts: Vec<&str> = rel.split('/').collect();
        let &[namespace, name] = &parts[..] else {
            loaded.skipped.push(Skipped {
                secret: path.clone(),
                kind: String::new(),
                reason: format!("not at {}NAMESPACE/NAME", folder(prefix)),
            });
            continue;
        };
        let Some(data) = store.read(&path).await?.data else {
            continue; // listed, but its latest version is deleted
        };
        loaded.entries.push(Entry {
            namespace: namespace.to_string(),
            name: name.to_string(),
            kind: "Opaque".to_string(),
            data,
            binary: BTreeSet::new(),
        });
    }
    Ok(loaded)
}

fn folder(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Moving a store onto itself would compare each entry with itself.
fn refuse_same(from: &Source, to: &Target, prefix: &str) -> Result<(), SecretsError> {
    if let (Source::Vault(a), Target::Vault(b)) = (from, to)
        && a == b
    {
        return Err(SecretsError::Usage(format!(
            "the source and the target are the same store ({a}, prefix {prefix:?})"
        )));
    }
    Ok(())
}

/// Copies every Secret of `from` into `to`, writing only entries that differ.
pub async fn sync(
    from: &Source,
    to: &Target,
    opts: &SyncOptions,
) -> Result<SyncReport, SecretsError> {
    let prefix = &opts.load.prefix;
    refuse_same(from, to, prefix)?;
    let loaded = load(from, &opts.load).await?;
    let target = Store::open(to, &opts.load.tokens, Role::Target).await?;
    let mut report = SyncReport::new(from, &target, prefix, opts.dry_run, loaded.skipped);
    for entry in &loaded.entries {
        let path = entry.path(prefix);
        let current = target.read(&path).await?;
        let (action, changes) = match &current.data {
            None => (Action::Create, Vec::new()),
            Some(have) => {
                let changes = compare(&entry.data, have);
                let action = if changes.is_empty() {
                    Action::Unchanged
                } else {
                    Action::Update
                };
                (action, changes)
            }
        };
        if action != Action::Unchanged && !opts.dry_run {
            target
                .write(&path, &entry.data, &current)
                .await
                .map_err(|e| scrub(e, &entry.data))?;
        }
        report.push(EntryReport {
            secret: entry.id(),
            path,
            kind: entry.kind.clone(),
            action,
            keys: entry.data.keys().cloned().collect(),
            changes,
        });
    }
    Ok(report)
}

/// Compares every Secret of `from` with `to`'s entries under the prefix.
pub async fn verify(
    from: &Source,
    to: &Target,
    opts: &LoadOptions,
) -> Result<VerifyReport, SecretsError> {
    refuse_same(from, to, &opts.prefix)?;
    let loaded = load(from, opts).await?;
    let target = Store::open(to, &opts.tokens, Role::Target).await?;
    let mut report = VerifyReport::new(from, &target, &opts.prefix, loaded.skipped);
    let mut expected = BTreeSet::new();
    for entry in &loaded.entries {
        let path = entry.path(&opts.prefix);
        expected.insert(path.clone());
        match target.read(&path).await?.data {
            None => report.missing.push(path),
            Some(have) => {
                let keys = compare(&entry.data, &have);
                if keys.is_empty() {
                    report.matched += 1;
                } else {
                    report.changed.push(report::Changed { path, keys });
                }
            }
        }
    }
    for path in target.list(&opts.prefix).await? {
        if !expected.contains(&path) && target.read(&path).await?.data.is_some() {
            report.extra.push(path);
        }
    }
    report.passed =
        report.missing.is_empty() && report.changed.is_empty() && report.extra.is_empty();
    Ok(report)
}

/// A store's error text should never hold a value, but a write's answer is the
/// one place an echo of the request could appear: blank out every value that is
/// long enough to be recognised.
fn scrub(mut e: SecretsError, data: &Data) -> SecretsError {
    if let SecretsError::Store { detail, .. } = &mut e {
        for v in data.values() {
            if v.expose().len() >= 4 {
                *detail = detail.replace(v.expose(), "<redacted>");
            }
        }
    }
    e
}
