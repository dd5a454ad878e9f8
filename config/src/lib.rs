//! The proxy's routing model. This crate owns the configuration file's contract
//! (parse → validate → typed [`Config`]), the routing table (Host → route), the
//! monotone sticky split (key → bucket → backend), the merge of file weights with
//! weights set over the admin API ([`Snapshot`]), and the file watcher that feeds hot
//! reloads. It does no I/O on the request path and knows nothing about HTTP servers:
//! publishing snapshots and serving requests is the proxy's business.

mod diag;
mod duration;
mod hash;
mod model;
mod raw;
pub mod reload;
mod snapshot;
mod table;
mod validate;
mod weights;

pub use diag::{ConfigError, Diagnostic};
pub use duration::{format_duration, parse_duration};
pub use hash::{BUCKETS, bucket_of, stable_hash};
pub use model::{
    AdminSettings, Backend, BackendId, Certificate, Cidr, Config, Eject, FleetSettings,
    HealthCheck, HoldSettings, Limits, Listen, LogSettings, Peers, Protocol, ProxySettings,
    ResolverSettings, RetryBudget, Route, Sticky, Timeouts, Upgrades, UpstreamTls, WriteSide,
};
pub use snapshot::{RouteRuntime, Snapshot, WeightsError, WeightsSource};
pub use table::RouteTable;
pub use validate::parse_size;
pub use weights::{Weights, format_percent, parse_percent};
