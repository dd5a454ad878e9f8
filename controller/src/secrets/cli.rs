//! `cutover secrets sync|verify|render`: flags, the call into the library, the
//! report on stdout (text, or JSON with `--json`), errors on stderr, and the exit
//! code (0 done or matching, 1 a mismatch or a failure; clap uses 2 for bad
//! usage).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::error::SecretsError;
use super::location::{Source, Target, Tokens};
use super::render::{RenderOptions, render};
use super::sync::{LoadOptions, SyncOptions, sync, verify};
use super::{DEFAULT_PREFIX, parse_prefix};

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Copy every Secret into the target store, one entry per Secret at
    /// PREFIX/NAMESPACE/NAME. Entries that are already equal are not written, so
    /// a second run creates no new version.
    Sync(SyncArgs),
    /// Compare the source with the target: exits 0 when every entry and key
    /// matches, 1 listing what is missing, changed or extra (as key names,
    /// lengths and SHA-256 prefixes, never values).
    Verify(VerifyArgs),
    /// Write one ExternalSecret (external-secrets.io/v1) per Secret, plus a
    /// ClusterSecretStore example, as YAML under --out.
    Render(RenderArgs),
}

/// SOURCE: k8s-json:FILE (- for stdin), kubectl:CONTEXT, or vault:URL#MOUNT.
#[derive(Args, Debug, Clone)]
pub struct FromArgs {
    /// Where the Secrets are: k8s-json:FILE (kubectl get secrets -A -o json
    /// output, or one Secret; k8s-json:- reads stdin), kubectl:CONTEXT (runs
    /// kubectl with your own credentials), or vault:URL#MOUNT.
    #[arg(long, value_name = "SOURCE")]
    pub from: Source,

    /// Entries live at PREFIX/NAMESPACE/NAME.
    #[arg(long, default_value = DEFAULT_PREFIX, value_parser = parse_prefix, value_name = "PATH")]
    pub prefix: String,

    /// Also copy the Secrets Kubernetes and Helm manage (service-account tokens,
    /// helm.sh/release.v1), skipped by default.
    #[arg(long)]
    pub include_managed: bool,

    /// File holding the source Vault's token (else VAULT_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub from_token_file: Option<PathBuf>,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// TARGET: vault:URL#MOUNT (KV v2 on Vault or OpenBao) or aws-sm:REGION.
#[derive(Args, Debug, Clone)]
pub struct ToArgs {
    /// Where the Secrets go: vault:URL#MOUNT (KV v2) or aws-sm:REGION (AWS
    /// Secrets Manager; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
    /// endpoint override AWS_ENDPOINT_URL).
    #[arg(long, value_name = "TARGET")]
    pub to: Target,

    /// File holding the target Vault's token (else VAULT_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub to_token_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    #[command(flatten)]
    pub from: FromArgs,
    #[command(flatten)]
    pub to: ToArgs,
    /// List create, update and unchanged per entry; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub from: FromArgs,
    #[command(flatten)]
    pub to: ToArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RenderArgs {
    #[command(flatten)]
    pub from: FromArgs,

    /// Name of the ClusterSecretStore the ExternalSecrets refer to.
    #[arg(long, value_name = "NAME", value_parser = parse_store_name)]
    pub store: String,

    /// Directory to write into: NAMESPACE/NAME.yaml per Secret and
    /// cluster-secret-store.yaml.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The store the new cluster reads, for the ClusterSecretStore example
    /// (vault:URL#MOUNT or aws-sm:REGION).
    #[arg(long, value_name = "TARGET")]
    pub to: Option<Target>,

    /// spec.refreshInterval of each ExternalSecret.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub refresh_interval: String,
}

/// A Kubernetes object name (DNS-1123 subdomain).
fn parse_store_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(s.to_string())
    } else {
        Err("use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit".into())
    }
}

fn load_options(from: &FromArgs, to_token_file: Option<PathBuf>) -> LoadOptions {
    LoadOptions {
        prefix: from.prefix.clone(),
        include_managed: from.include_managed,
        tokens: Tokens {
            from_file: from.from_token_file.clone(),
            to_file: to_token_file,
        },
    }
}

/// Runs the command and returns the process exit code.
pub async fn run(cmd: SecretsCommand) -> u8 {
    let json = match &cmd {
        SecretsCommand::Sync(a) => a.from.json,
        SecretsCommand::Verify(a) => a.from.json,
        SecretsCommand::Render(a) => a.from.json,
    };
    match execute(cmd).await {
        Ok(code) => code,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": e.to_string(), "side": e.role() })
                );
            }
            eprintln!("cutover: {e}");
            1
        }
    }
}

async fn execute(cmd: SecretsCommand) -> Result<u8, SecretsError> {
    match cmd {
        SecretsCommand::Sync(a) => {
            let opts = SyncOptions {
                load: load_options(&a.from, a.to.to_token_file.clone()),
                dry_run: a.dry_run,
            };
            let report = sync(&a.from.from, &a.to.to, &opts).await?;
            print(a.from.json, &report);
            Ok(0)
        }
        SecretsCommand::Verify(a) => {
            let opts = load_options(&a.from, a.to.to_token_file.clone());
            let report = verify(&a.from.from, &a.to.to, &opts).await?;
            print(a.from.json, &report);
            Ok(if report.passed { 0 } else { 1 })
        }
        SecretsCommand::Render(a) => {
            let opts = RenderOptions {
                load: load_options(&a.from, None),
                store: a.store.clone(),
                out: a.out.clone(),
                to: a.to.clone(),
                refresh_interval: a.refresh_interval.clone(),
            };
            let report = render(&a.from.from, &opts).await?;
            print(a.from.json, &report);
            Ok(0)
        }
    }
}

fn print<T: Serialize + std::fmt::Display>(json: bool, report: &T) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cutover: cannot encode the result as JSON: {e}"),
        }
    } else {
        println!("{report}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_are_kubernetes_names() {
        assert!(parse_store_name("vault-backend").is_ok());
        for bad in ["", "Vault", "-a", "a-", "a_b"] {
            assert!(parse_store_name(bad).is_err(), "{bad}");
        }
    }
}
