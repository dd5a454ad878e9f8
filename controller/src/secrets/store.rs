//! A secrets store, whichever kind: opened from a `vault:` or `aws-sm:` location,
//! checked once (token, mount, reachability), then listed, read and written by
//! entry path. Sync and verify only see this.

use super::aws::AwsSm;
use super::error::{Role, SecretsError};
use super::location::{Target, Tokens, VaultAddr};
use super::vault::Vault;
use super::{Data, SecretText};

/// An entry as a store holds it now.
#[derive(Debug)]
pub(crate) struct Remote {
    /// `None`: absent (never written, deleted, or its latest version deleted).
    pub data: Option<Data>,
    /// KV v2's current version number (for check-and-set); 0 when none or AWS.
    pub version: u64,
}

pub(crate) enum Store {
    Vault(Box<Vault>),
    Aws(Box<AwsSm>),
}

impl Store {
    /// Opens and checks a store; `role` says which side it plays.
    pub async fn open(target: &Target, tokens: &Tokens, role: Role) -> Result<Store, SecretsError> {
        let store = match target {
            Target::Vault(addr) => Store::vault(addr, tokens, role)?,
            Target::AwsSm(region) => Store::Aws(Box::new(AwsSm::new(region, role)?)),
        };
        store.check().await?;
        Ok(store)
    }

    fn vault(addr: &VaultAddr, tokens: &Tokens, role: Role) -> Result<Store, SecretsError> {
        let token = tokens.resolve(role, &addr.to_string())?;
        Ok(Store::Vault(Box::new(Vault::new(addr, token, role)?)))
    }

    /// The store as messages name it, e.g. `vault:http://127.0.0.1:8200#secret`.
    pub fn name(&self) -> String {
        match self {
            Store::Vault(v) => v.name(),
            Store::Aws(a) => a.name(),
        }
    }

    async fn check(&self) -> Result<(), SecretsError> {
        match self {
            Store::Vault(v) => v.check().await,
            Store::Aws(a) => a.check().await,
        }
    }

    /// Every entry path under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, SecretsError> {
        match self {
            Store::Vault(v) => v.list(prefix).await,
            Store::Aws(a) => a.list(prefix).await,
        }
    }

    pub async fn read(&self, path: &str) -> Result<Remote, SecretsError> {
        match self {
            Store::Vault(v) => v.read(path).await,
            Store::Aws(a) => a.read(path).await,
        }
    }

    /// Writes `data` over what `current` says is there now.
    pub async fn write(
        &self,
        path: &str,
        data: &Data,
        current: &Remote,
    ) -> Result<(), SecretsError> {
        match self {
            Store::Vault(v) => v.write(path, data, current.version).await,
            Store::Aws(a) => a.write(path, data, current.data.is_some()).await,
        }
    }
}

/// Parses a stored JSON object of strings (AWS's SecretString) without echoing
/// any of it in the error.
pub(crate) fn data_from_json(text: &str) -> Result<Data, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "not a JSON object (syntax error at line {} column {})",
            e.line(),
            e.column()
        )
    })?;
    let map = value
        .as_object()
        .ok_or("not a JSON object of keys and values")?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), SecretText::new(s.to_string()))),
            None => Err(format!(
                "key {k:?} holds a non-string value; cutover copies string values only"
            )),
        })
        .collect()
}

/// The JSON object a store keeps for `data`, keys sorted.
pub(crate) fn data_to_json(data: &Data) -> String {
    let map: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose().to_string())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_round_trip_and_errors_hide_values() {
        let mut d = Data::new();
        d.insert("b".into(), SecretText::new("two \"quoted\"".into()));
        d.insert("a".into(), SecretText::new("one".into()));
        let text = data_to_json(&d);
        assert_eq!(text, r#"{"a":"one","b":"two \"quoted\""}"#);
        assert_eq!(data_from_json(&text).unwrap(), d);
        let e = data_from_json(r#"{"k": 12345678}"#).unwrap_err();
        assert!(!e.contains("12345678"), "{e}");
        let e = data_from_json("s3cr3t-not-json").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
