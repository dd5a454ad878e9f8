//! What can go wrong moving secrets. Every error names the side (source or
//! target), the store or input, and the entry; none carries a value. Details
//! taken from a store's answer are its error messages, never a request body.

use std::path::PathBuf;

/// Which end of the move an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Target,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Target => "target",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// `--from`/`--to` could not be understood.
    #[error("{role} {spec:?} is not valid: {reason}")]
    Location {
        role: Role,
        spec: String,
        reason: String,
    },

    /// A store answered with an error, or could not be reached.
    #[error("{role} {store}: {what}: {detail}")]
    Store {
        role: Role,
        store: String,
        what: String,
        detail: String,
    },

    /// The Kubernetes input is not what `kubectl get secrets -o json` prints.
    #[error("{role} {input}: {reason}")]
    Input {
        role: Role,
        input: String,
        reason: String,
    },

    #[error("{role} kubectl --context {context}: {detail}")]
    Kubectl {
        role: Role,
        context: String,
        detail: String,
    },

    #[error("cannot read the {role} token file {}: {source}", path.display())]
    TokenFile {
        role: Role,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{role} {store}: no token: give --{}-token-file FILE or set VAULT_TOKEN",
        if *role == Role::Source { "from" } else { "to" }
    )]
    NoToken { role: Role, store: String },

    #[error(
        "{role} {store}: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones)"
    )]
    NoAwsCredentials { role: Role, store: String },

    #[error("cannot write {}: {source}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The command cannot run with this combination of source and target.
    #[error("{0}")]
    Usage(String),

    /// The plan's secrets gate: the copy does not match after the sync.
    #[error("secrets gate: {0}")]
    Gate(String),
}

impl SecretsError {
    /// The side the error is about, when it is about one.
    pub fn role(&self) -> Option<Role> {
        match self {
            SecretsError::Location { role, .. }
            | SecretsError::Store { role, .. }
            | SecretsError::Input { role, .. }
            | SecretsError::Kubectl { role, .. }
            | SecretsError::TokenFile { role, .. }
            | SecretsError::NoToken { role, .. }
            | SecretsError::NoAwsCredentials { role, .. } => Some(*role),
            _ => None,
        }
    }
}
