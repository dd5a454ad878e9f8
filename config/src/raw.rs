//! The file's shape as serde sees it, with spans kept for every value that semantic
//! validation may need to point at.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub hold: RawHold,
    #[serde(default)]
    pub fleet: RawFleet,
    #[serde(default)]
    pub resolver: RawResolver,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub backends: IndexMap<String, RawBackend>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub certificates: Vec<Spanned<RawCertificate>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    pub http: Option<Spanned<String>>,
    pub https: Option<Spanned<String>>,
    pub proxy_protocol: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    /// `"on"`, `"off"`, or a number from 0 to 1.
    pub access: Option<Spanned<toml::Value>>,
    pub query: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub threads: Option<Spanned<i64>>,
    pub grace: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub control_socket: Option<Spanned<String>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHold {
    pub max_queued: Option<Spanned<i64>>,
    pub max: Option<Spanned<String>>,
    pub upgrade_grace: Option<Spanned<String>>,
    pub upgrade_rate: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub name: Option<Spanned<String>>,
    pub state_file: Option<Spanned<String>>,
    /// `"NAME:PORT"` or a list of `"HOST:PORT"`.
    pub peers: Option<Spanned<toml::Value>>,
    pub bootstrap_timeout: Option<Spanned<String>>,
    pub sync_interval: Option<Spanned<String>>,
}

/// `[limits]`: sizes are a byte count or a string such as `"64KiB"` or `"10MB"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub request_head: Option<Spanned<String>>,
    pub keepalive: Option<Spanned<String>>,
    pub h2_ping: Option<Spanned<String>>,
    pub h2_ping_timeout: Option<Spanned<String>>,
    pub body_idle: Option<Spanned<String>>,
    pub send: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub max_header_size: Option<Spanned<toml::Value>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body: Option<Spanned<toml::Value>>,
    pub buffer_memory: Option<Spanned<toml::Value>>,
    pub buffer_dir: Option<Spanned<String>>,
    pub upstream_max_connections: Option<Spanned<i64>>,
    pub upstream_max_waiting: Option<Spanned<i64>>,
    pub upstream_idle: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetryBudget {
    pub ratio: Option<Spanned<f64>>,
    pub window: Option<Spanned<String>>,
    pub min_per_second: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResolver {
    pub nameservers: Option<Vec<Spanned<String>>>,
    pub min_ttl: Option<Spanned<String>>,
    pub max_ttl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub addrs: Spanned<Vec<Spanned<String>>>,
    pub health: Option<Spanned<RawHealth>>,
    pub eject: Option<Spanned<RawEject>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub sni: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy: Option<Spanned<i64>>,
    pub unhealthy: Option<Spanned<i64>>,
    pub host: Option<Spanned<String>>,
    /// `200`, or a range `"200-399"`.
    pub status: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEject {
    pub failures: Option<Spanned<i64>>,
    pub cooldown: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: Option<Spanned<String>>,
    pub response_header: Option<Spanned<String>>,
    pub total: Option<Spanned<String>>,
    pub body_idle: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Option<Spanned<String>>,
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub weights: Spanned<IndexMap<String, Spanned<f64>>>,
    pub writes: Option<Spanned<String>>,
    pub sticky: Option<Spanned<RawSticky>>,
    pub attempts: Option<Spanned<i64>>,
    pub retry_buffer: Option<Spanned<i64>>,
    pub timeouts: Option<Spanned<RawTimeouts>>,
    pub failover: Option<Spanned<bool>>,
    pub upgrades: Option<Spanned<String>>,
    pub grpc_reads: Option<Vec<Spanned<String>>>,
    pub max_body: Option<Spanned<toml::Value>>,
    pub request_buffering: Option<Spanned<bool>>,
    pub retry_budget: Option<Spanned<RawRetryBudget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSticky {
    pub cookie: Option<Spanned<String>>,
    pub max_age: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub client_ip: Option<Spanned<bool>>,
}

/// `[[certificates]]`: a PEM chain and key for a set of SNI names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}
