//! The typed, validated configuration: what the rest of cutover reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;

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
    pub hold: HoldSettings,
    pub fleet: FleetSettings,
    pub resolver: ResolverSettings,
    pub log: LogSettings,
    pub limits: Limits,
    /// In declaration order.
    pub backends: Vec<Backend>,
    pub routes: Vec<Route>,
    /// `[[certificates]]` for the HTTPS listener, loaded and checked.
    pub certificates: Vec<Certificate>,
}

/// `[listen]`: the data-plane listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub http: SocketAddr,
    /// TLS on this address when set; it needs `[[certificates]]`.
    pub https: Option<SocketAddr>,
    /// Every connection to the data-plane listeners starts with a PROXY protocol
    /// header (v1 or v2) from an L4 load balancer, naming the real client; one
    /// without it is closed. Changing it takes a restart.
    pub proxy_protocol: bool,
}

/// `[log]`: the access log, one line per request on standard output.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    /// The share of requests logged: 0 (off, the default), 1 (every request), or a
    /// fraction in between. Read per request, so a reload applies it.
    pub access: f64,
    /// Whether the path is logged with its query string (which may carry tokens).
    pub query: bool,
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
    /// The Unix socket a new process (`--upgrade`) asks for the listening sockets
    /// on. Default: beside the config file, `<config file>.sock`.
    pub control_socket: PathBuf,
    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are kept (and appended
    /// to); from anyone else they are replaced. Read per request, so a reload
    /// applies it.
    pub trusted_proxies: Vec<Cidr>,
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n`, or a bare address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or block; use e.g. 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// `[limits]`: what a client, a connection and a backend address may take. The
/// connection-level ones (timeouts, caps, header limits, the upstream pool) apply
/// to connections accepted or opened after a change, and the pool settings take a
/// restart; `max_body` is each route's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// From accept until the first request's head has arrived (TLS handshake and
    /// PROXY header included), and for every later head from its first byte: a
    /// silent or trickling client is closed after it.
    pub request_head: Duration,
    /// An HTTP/1 connection may wait this long for the first byte of its next
    /// request (the head then has `request_head`); an HTTP/2 connection with no
    /// stream open this long is closed.
    pub keepalive: Duration,
    /// HTTP/2: a PING after this long without a frame from the client, and the
    /// connection closes when it is not answered within `h2_ping_timeout`.
    pub h2_ping: Duration,
    pub h2_ping_timeout: Duration,
    /// A request body with no byte for this long is ended (per route under
    /// `timeouts.body_idle`).
    pub body_idle: Duration,
    /// A client that takes no byte of the answer for this long is cut off.
    pub send: Duration,
    /// Open client connections at most, in all and per client address (0: no cap);
    /// over either, a new connection is closed at accept.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// The request head's header block in bytes, and its header count, at most:
    /// over either, 431 (HTTP/1 and HTTP/2 alike).
    pub max_header_size: usize,
    pub max_headers: usize,
    /// Each route's default request body limit (413 over it).
    pub max_body: u64,
    /// A buffered request body is kept in memory up to this size, then in a
    /// temporary file.
    pub buffer_memory: usize,
    /// Where those files go (unlinked at once); default: the system's temporary
    /// directory.
    pub buffer_dir: Option<PathBuf>,
    /// Per backend address: connections at most, and requests waiting for one;
    /// beyond both, 503 at once with `Retry-After`.
    pub upstream_max_connections: usize,
    pub upstream_max_waiting: usize,
    /// An idle upstream connection is closed after this long, before the
    /// backend's own keep-alive timeout can race a request on it.
    pub upstream_idle: Duration,
}

/// `retry_budget`: retries per route at most `ratio` of the requests of the last
/// `window`, plus `min_per_second`, so a failing side cannot double the load on
/// the other.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub window: Duration,
    pub min_per_second: u32,
}

/// `[hold]`: limits on requests held during a switchover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSettings {
    /// Held requests beyond this many, across all routes, get 503 at once.
    pub max_queued: usize,
    /// The hold's deadline when the hold call names none.
    pub max: Duration,
    /// How long after a hold starts the upgraded connections (WebSockets) to the
    /// side losing writes are closed, so that their clients reconnect (and are
    /// held, then released to the new side).
    pub upgrade_grace: Duration,
    /// After a release, the upgrade handshakes it held go on at most this many
    /// per second on each route of each replica (0: all at once), so that a thousand WebSocket
    /// clients do not reach the new side's entry point in the same instant.
    pub upgrade_rate: u32,
}

/// `[fleet]`: how replicas keep the runtime state (weights, write sides and holds
/// set over the admin API) durable and shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// This replica's name; default the host name and the process id.
    pub name: Option<String>,
    /// Where the runtime state is written on every change and read at start;
    /// `None` when turned off (`state_file = ""`). Default: beside the control
    /// socket, `<control socket stem>.state.json`.
    pub state_file: Option<PathBuf>,
    /// Where the other replicas' admin APIs are.
    pub peers: Peers,
    /// How long a starting replica waits for a peer to answer before it serves
    /// with its own state.
    pub bootstrap_timeout: Duration,
    /// How often a running replica compares epochs with its peers.
    pub sync_interval: Duration,
}

/// The other replicas' admin addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    None,
    /// `NAME:PORT`: every address the name resolves to, re-resolved each round
    /// (a headless Service).
    Dns {
        host: String,
        port: u16,
    },
    /// `HOST:PORT` each.
    Static(Vec<String>),
}

/// `[resolver]`: how backend host names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Empty: the system's resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    /// Bounds on how long an answer is used before it is resolved again.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

/// A named group of upstream addresses, such as one cluster's load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    /// `ip:port` or `hostname:port`.
    pub addrs: Vec<String>,
    /// Active health checks; none when not configured.
    pub health: Option<HealthCheck>,
    /// Passive ejection after consecutive connect failures.
    pub eject: Eject,
    /// TLS to this backend's addresses; plain HTTP when none.
    pub tls: Option<UpstreamTls>,
    /// The HTTP version spoken to the backend's addresses.
    pub protocol: Protocol,
}

/// `protocol`: the HTTP version spoken to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// HTTP/1.1 on pooled connections, one request at a time on each.
    #[default]
    Http1,
    /// HTTP/2 (cleartext prior knowledge, or ALPN `h2` over TLS), all requests
    /// multiplexed on one connection per address: gRPC backends.
    H2,
    /// Over TLS, whatever the backend picks by ALPN (`h2` or `http/1.1`).
    Auto,
}

/// TLS from the proxy to a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified against the backend's certificate. Default:
    /// the backend's first host name, else its first IP address.
    pub sni: Option<String>,
    /// A PEM file of the CAs to trust instead of the system's roots (checked to hold
    /// at least one certificate when the config loads).
    pub ca_file: Option<PathBuf>,
}

/// An active HTTP check against every address of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make a down address healthy again.
    pub healthy: u32,
    /// Consecutive failures that take an address out.
    pub unhealthy: u32,
    /// The Host header of a probe; default: the address.
    pub host: Option<String>,
    /// The statuses that count as healthy, inclusive; default 200 to 399.
    pub status: (u16, u16),
}

/// Passive ejection: `failures` consecutive connect failures take an address out for
/// `cooldown`. `failures = 0` turns it off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eject {
    pub failures: u32,
    pub cooldown: Duration,
}

/// Per-route limits on one upstream attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// From the request sent until the response head arrives.
    pub response_header: Duration,
    /// The whole exchange including the response body; none when unset.
    pub total: Option<Duration>,
    /// No byte of the request body for this long ends the request.
    pub body_idle: Duration,
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
    /// The backends this route may use: those named in its weights (even at 0) and
    /// its write side, in declaration order. Retries and failover stay among them.
    pub members: Vec<BackendId>,
    pub writes: WriteSide,
    pub sticky: Sticky,
    /// Upstream attempts per request, the first included.
    pub attempts: u32,
    /// Request bodies up to this size are kept so they can be replayed on a retry.
    pub retry_buffer: usize,
    pub timeouts: Timeouts,
    /// Whether a backend with every address down hands its share to the others.
    pub failover: bool,
    /// Where a protocol switch (a WebSocket) goes.
    pub upgrades: Upgrades,
    /// gRPC methods that only read, as paths (`/pkg.Service/Get`) or prefixes
    /// ending in `*` (`/pkg.Service/Get*`). Every other gRPC call is a write: it is
    /// a POST.
    pub grpc_reads: Vec<String>,
    /// Request bodies over this many bytes get 413.
    pub max_body: u64,
    /// Whether a write's body is read whole before a backend is chosen (see the
    /// README's "Slow uploads").
    pub request_buffering: bool,
    pub retry_budget: RetryBudget,
}

/// `upgrades`: an upgraded connection may carry writes the proxy cannot see, so by
/// default it goes where writes go and a writes hold holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upgrades {
    /// To the write side, held by a writes hold.
    #[default]
    Writes,
    /// Split by weight like a read (the application's upgraded connections
    /// never write to the database).
    Split,
}

/// A certificate chain and its key, served to TLS clients whose SNI matches `hosts`.
/// The files are read and checked (the key matches the chain's first certificate)
/// during validation, so a snapshot never holds a certificate that cannot be used.
#[derive(Clone)]
pub struct Certificate {
    /// Lower-case: exact names, `*.example.com` wildcards, `*` for the default.
    pub hosts: Vec<String>,
    /// The files as the config names them, resolved against the config's folder.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: Arc<CertifiedKey>,
}

impl PartialEq for Certificate {
    /// Same names, same files, same chain. The key is not compared: it was checked
    /// to match the chain.
    fn eq(&self, other: &Self) -> bool {
        self.hosts == other.hosts
            && self.cert == other.cert
            && self.key == other.key
            && self.certified.cert == other.certified.cert
    }
}

impl std::fmt::Debug for Certificate {
    // The chain's bytes are noise in a log line, and the key must never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("hosts", &self.hosts)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("chain_len", &self.certified.cert.len())
            .finish()
    }
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
