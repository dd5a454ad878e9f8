//! `cutover-proxy`: the data plane. An L7 edge proxy on hyper and tokio that splits
//! each Host's traffic between backends by weight, keeps each user on one side, and
//! applies weight changes from its hot-reloaded config file or its admin API within
//! milliseconds. The routing model (parse, validate, split, reload) belongs to
//! `cutover_config`; this crate serves it: listeners, the request path, the upstream
//! pool, the admin API, metrics and signals.

mod access;
mod admin;
mod body;
mod budget;
pub mod cli;
mod connect;
mod fleet;
mod forward;
mod handle;
mod headers;
mod health;
mod hold;
mod metrics;
mod proxy_protocol;
mod replay;
mod resolve;
mod run;
mod server;
mod state;
mod sticky;
mod tls;
mod tunnel;
mod upgrade;
mod upstream;

pub use access::set_json as set_log_json;
pub use body::ProxyBody;
pub use handle::X_CUTOVER_BACKEND;
pub use metrics::Metrics;
pub use run::{RunError, run};
pub use state::Shared;
pub use sticky::{cookie, mint};
pub use upgrade::Start;
pub use upstream::{FailureKind, Upstream};
