//! The plan runner (`cutover run`) against real things: real `cutover-proxy`
//! processes, a DNS server speaking the real protocol, real sockets on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "plan/abort.rs"]
mod abort;
#[path = "plan/cache.rs"]
mod cache;
#[path = "plan/common.rs"]
mod common;
#[path = "plan/discover.rs"]
mod discover;
#[path = "plan/exporter.rs"]
mod exporter;
#[path = "plan/fleet.rs"]
mod fleet;
#[path = "plan/gate_failure.rs"]
mod gate_failure;
#[path = "plan/lag_gate.rs"]
mod lag_gate;
#[path = "plan/rehearse.rs"]
mod rehearse;
#[path = "plan/replicas.rs"]
mod replicas;
#[path = "plan/resume.rs"]
mod resume;
#[path = "plan/users_gate.rs"]
mod users_gate;
