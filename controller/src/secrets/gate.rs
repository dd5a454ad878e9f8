//! The `[secrets]` section of a migration plan: `sync`, then `verify`, as a gate
//! the plan runner passes before it starts the database sync. The plan file
//! format belongs to the plan runner; this is the section's contract.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::SecretsError;
use super::location::{Source, Target, Tokens};
use super::sync::{LoadOptions, SyncOptions, SyncReport, VerifyReport, sync, verify};
use super::{DEFAULT_PREFIX, parse_prefix};

/// ```toml
/// [secrets]
/// from = "kubectl:old-cluster"
/// to = "vault:https://vault.internal:8200#secret"
/// prefix = "cutover"             # optional
/// to_token_file = "/run/vault-token"   # optional; else VAULT_TOKEN
/// include_managed = false        # optional
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsPlan {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub from_token_file: Option<PathBuf>,
    #[serde(default)]
    pub to_token_file: Option<PathBuf>,
    #[serde(default)]
    pub include_managed: bool,
}

/// What the gate did: the sync, and the verify that passed after it.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub sync: SyncReport,
    pub verify: VerifyReport,
}

impl SecretsPlan {
    /// The section as typed values; every problem is reported by name.
    pub fn parse(&self) -> Result<(Source, Target, LoadOptions), SecretsError> {
        let bad = |field: &str, spec: &str, reason: String| {
            SecretsError::Usage(format!("[secrets] {field} = {spec:?}: {reason}"))
        };
        let from: Source = self.from.parse().map_err(|r| bad("from", &self.from, r))?;
        let to: Target = self.to.parse().map_err(|r| bad("to", &self.to, r))?;
        let prefix = self.prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
        let prefix = parse_prefix(prefix).map_err(|r| bad("prefix", prefix, r))?;
        Ok((
            from,
            to,
            LoadOptions {
                prefix,
                include_managed: self.include_managed,
                tokens: Tokens {
                    from_file: self.from_token_file.clone(),
                    to_file: self.to_token_file.clone(),
                },
            },
        ))
    }
}

/// Syncs, then verifies; an error unless the target then matches the source.
pub async fn gate(plan: &SecretsPlan) -> Result<GateReport, SecretsError> {
    let (from, to, load) = plan.parse()?;
    let sync = sync(
        &from,
        &to,
        &SyncOptions {
            load: load.clone(),
            dry_run: false,
        },
    )
    .await?;
    let verify = verify(&from, &to, &load).await?;
    if !verify.passed {
        return Err(SecretsError::Gate(format!(
            "after the sync, {} entries are missing, {} changed and {} extra in {}",
            verify.missing.len(),
            verify.changed.len(),
            verify.extra.len(),
            verify.target
        )));
    }
    Ok(GateReport { sync, verify })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Plan {
        secrets: SecretsPlan,
    }

    #[test]
    fn the_plan_section_parses_from_toml() {
        let plan: Plan = toml::from_str(
            r#"
            [secrets]
            from = "kubectl:old"
            to = "vault:http://127.0.0.1:8200#secret"
            to_token_file = "/run/t"
            "#,
        )
        .unwrap();
        let (from, to, load) = plan.secrets.parse().unwrap();
        assert_eq!(from, Source::Kubectl("old".into()));
        assert_eq!(to.to_string(), "vault:http://127.0.0.1:8200#secret");
        assert_eq!(load.prefix, "cutover");
        assert_eq!(load.tokens.to_file, Some(PathBuf::from("/run/t")));
    }

    #[test]
    fn mistakes_in_the_section_are_named() {
        let bad: Result<Plan, _> =
            toml::from_str("[secrets]\nfrom = \"kubectl:a\"\nto = \"x\"\ntoken = \"t\"\n");
        assert!(bad.is_err(), "unknown fields are refused");
        let plan = SecretsPlan {
            from: "kubectl:a".into(),
            to: "s3:bucket".into(),
            prefix: None,
            from_token_file: None,
            to_token_file: None,
            include_managed: false,
        };
        let e = plan.parse().unwrap_err().to_string();
        assert!(e.contains("[secrets] to") && e.contains("s3"), "{e}");
    }
}
