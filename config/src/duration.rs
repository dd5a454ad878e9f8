//! Durations in the configuration (`500ms`, `2s`, `1m30s`) use the workspace's one
//! grammar, which lives in `cutover_api::duration` so that the controller, the load
//! generator and the admin API read them the same way. Re-exported here so that the
//! validator and the proxy keep their paths.

pub use cutover_api::duration::{format_duration, parse_duration};
