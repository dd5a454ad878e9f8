//! `--from SOURCE` and `--to TARGET` as typed values, and where each side's token
//! comes from (a file, or `VAULT_TOKEN`; never a flag's value, which other users
//! can read in the process list).

use std::path::{Path, PathBuf};

use super::error::{Role, SecretsError};

/// Where secrets are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `k8s-json:FILE`: `kubectl get secrets -A -o json` output or one Secret;
    /// `None` is stdin (`k8s-json:-`).
    K8sJson(Option<PathBuf>),
    /// `kubectl:CONTEXT`: the live cluster, through the user's own kubectl.
    Kubectl(String),
    /// `vault:URL#MOUNT`: a KV v2 mount, for store-to-store moves.
    Vault(VaultAddr),
}

/// Where secrets are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `vault:URL#MOUNT`: KV v2 on Vault or OpenBao.
    Vault(VaultAddr),
    /// `aws-sm:REGION`: AWS Secrets Manager (`AWS_ENDPOINT_URL` overrides the
    /// endpoint).
    AwsSm(String),
}

/// A Vault or OpenBao server and a KV v2 mount on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultAddr {
    /// `http(s)://host:port`, without a trailing slash.
    pub url: String,
    /// The mount path, e.g. `secret` or `kv/team`.
    pub mount: String,
}

impl std::fmt::Display for VaultAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vault:{}#{}", self.url, self.mount)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::K8sJson(None) => f.write_str("k8s-json:-"),
            Source::K8sJson(Some(p)) => write!(f, "k8s-json:{}", p.display()),
            Source::Kubectl(c) => write!(f, "kubectl:{c}"),
            Source::Vault(v) => v.fmt(f),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Vault(v) => v.fmt(f),
            Target::AwsSm(r) => write!(f, "aws-sm:{r}"),
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Source, String> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or("expected k8s-json:FILE, kubectl:CONTEXT or vault:URL#MOUNT".to_string())?;
        match scheme {
            "k8s-json" => match rest {
                "" => Err("k8s-json needs a file, or - for stdin".into()),
                "-" => Ok(Source::K8sJson(None)),
                path => Ok(Source::K8sJson(Some(PathBuf::from(path)))),
            },
            "kubectl" if rest.trim().is_empty() => {
                Err("kubectl needs a context name (kubectl config get-contexts)".into())
            }
            "kubectl" => Ok(Source::Kubectl(rest.to_string())),
            "vault" => parse_vault(rest).map(Source::Vault),
            other => Err(format!(
                "unknown source kind {other:?}; use k8s-json:FILE, kubectl:CONTEXT or vault:URL#MOUNT"
            )),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or("expected vault:URL#MOUNT or aws-sm:REGION".to_string())?;
        match scheme {
            "vault" => parse_vault(rest).map(Target::Vault),
            "aws-sm" => {
                let ok = !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if ok {
                    Ok(Target::AwsSm(rest.to_string()))
                } else {
                    Err("aws-sm needs a region such as eu-west-1".into())
                }
            }
            other => Err(format!(
                "unknown target kind {other:?}; use vault:URL#MOUNT or aws-sm:REGION"
            )),
        }
    }
}

fn parse_vault(rest: &str) -> Result<VaultAddr, String> {
    let (url, mount) = rest
        .split_once('#')
        .ok_or("vault needs URL#MOUNT, e.g. vault:https://vault.example:8200#secret")?;
    let url = url.trim_end_matches('/');
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("URL {url:?} is not valid: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "URL {url:?}: use http://HOST:PORT or https://HOST:PORT"
        ));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("URL {url:?}: give the server's base URL, no path"));
    }
    let mount = mount.trim_matches('/');
    let mount_ok = !mount.is_empty()
        && mount.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
    if !mount_ok {
        return Err(format!(
            "mount {mount:?}: give the KV v2 mount path, e.g. secret"
        ));
    }
    Ok(VaultAddr {
        url: url.to_string(),
        mount: mount.to_string(),
    })
}

/// Where the Vault tokens of both sides come from.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub from_file: Option<PathBuf>,
    pub to_file: Option<PathBuf>,
}

impl Tokens {
    /// The token for `role`'s store: its token file, else `VAULT_TOKEN`.
    pub(crate) fn resolve(&self, role: Role, store: &str) -> Result<String, SecretsError> {
        let file = match role {
            Role::Source => self.from_file.as_deref(),
            Role::Target => self.to_file.as_deref(),
        };
        if let Some(path) = file {
            return read_token(role, path);
        }
        match std::env::var("VAULT_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => Err(SecretsError::NoToken {
                role,
                store: store.to_string(),
            }),
        }
    }
}

fn read_token(role: Role, path: &Path) -> Result<String, SecretsError> {
    let fail = |source| SecretsError::TokenFile {
        role,
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(fail)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail(std::io::Error::other("the file is empty")));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!("k8s-json:-".parse(), Ok(Source::K8sJson(None)));
        assert_eq!(
            "k8s-json:/tmp/s.json".parse(),
            Ok(Source::K8sJson(Some("/tmp/s.json".into())))
        );
        assert_eq!("kubectl:old".parse(), Ok(Source::Kubectl("old".into())));
        assert_eq!(
            "vault:http://127.0.0.1:8200/#kv/team/".parse(),
            Ok(Source::Vault(VaultAddr {
                url: "http://127.0.0.1:8200".into(),
                mount: "kv/team".into()
            }))
        );
        for bad in [
            "x",
            "k8s-json:",
            "kubectl:",
            "vault:http://h:1",
            "vault:ftp://h#m",
            "vault:http://h/v1#m",
            "vault:http://h#",
            "s3:b",
        ] {
            assert!(bad.parse::<Source>().is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "aws-sm:eu-west-1".parse(),
            Ok(Target::AwsSm("eu-west-1".into()))
        );
        assert!("aws-sm:".parse::<Target>().is_err());
        assert!("aws-sm:EU WEST".parse::<Target>().is_err());
        assert!("kubectl:x".parse::<Target>().is_err());
        let t: Target = "vault:https://v.example:8200#secret".parse().unwrap();
        assert_eq!(t.to_string(), "vault:https://v.example:8200#secret");
    }

    #[test]
    fn a_token_file_wins_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  s.abc\n").unwrap();
        let tokens = Tokens {
            from_file: Some(p.clone()),
            to_file: None,
        };
        assert_eq!(tokens.resolve(Role::Source, "v").unwrap(), "s.abc");
        std::fs::write(&p, "\n").unwrap();
        let e = tokens.resolve(Role::Source, "v").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
