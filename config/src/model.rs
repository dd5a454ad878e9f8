//! The typed, validated configuration: what the rest of cutover reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diag::ConfigError;
use crate::weights::Weights;

/// A backend's position in `[backends]`; bucket ranges follow this order.
pub type BackendId = usize;

/// One validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from, for messages.
    pub file: PathBuf,
    pub listen: Listen,
    pub admin: AdminSettings,
    pub proxy: ProxySettings,
    /// In declaration order.
    pub backends: Vec<Backend>,
    pub routes: Vec<Route>,
}

/// `[listen]`: the data-plane listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub http: SocketAddr,
}

/// `[admin]`: the admin API's listener and its bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// A file holding the token; `CUTOVER_ADMIN_TOKEN` is the other source.
    pub token_file: Option<PathBuf>,
}

/// `[proxy]`: process-wide settings. Changing them takes a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Worker threads; defaults to the number of cores.
    pub threads: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub grace: Duration,
    /// Upper bound on establishing a connection to an upstream address.
    pub connect_timeout: Duration,
}

/// A named group of upstream addresses, such as one cluster's load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    /// `ip:port` or `hostname:port`.
    pub addrs: Vec<String>,
}

/// Traffic for a set of hosts, split between backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Label in metrics and `/status`: the `name` field, else the first host.
    pub name: String,
    /// Lower-case; `*.example.com` wildcards and `*` (default route) included.
    pub hosts: Vec<String>,
    /// The weights the file asks for.
    pub weights: Weights,
    pub writes: WriteSide,
    pub sticky: Sticky,
}

/// Where unsafe methods (POST, PUT, PATCH, DELETE) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSide {
    /// By weight, like reads.
    Split,
    Backend(BackendId),
}

/// What keeps a user on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A cookie the proxy mints when absent (128 random bits).
    Cookie { name: String, max_age: Duration },
    /// A request header such as `authorization` (stored lower-case); requests
    /// without it fall back to the client IP.
    Header(String),
    /// The TCP peer's address.
    ClientIp,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text`, naming `file` in every diagnostic.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        crate::validate::parse(text, file)
    }

    /// The id of the backend called `name`.
    pub fn backend_id(&self, name: &str) -> Option<BackendId> {
        self.backends.iter().position(|b| b.name == name)
    }

    /// The backend names in declaration order.
    pub fn backend_names(&self) -> impl Iterator<Item = &str> {
        self.backends.iter().map(|b| b.name.as_str())
    }
}

impl WriteSide {
    /// `"split"` or the backend's name.
    pub fn describe<'a>(&self, config: &'a Config) -> &'a str {
        match self {
            WriteSide::Split => "split",
            WriteSide::Backend(id) => config.backends.get(*id).map_or("?", |b| b.name.as_str()),
        }
    }
}
