//! End-to-end tests: real backends and real `cutover-proxy` processes on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "e2e/admin.rs"]
mod admin;
#[path = "e2e/check.rs"]
mod check;
#[path = "e2e/dns.rs"]
mod dns;
#[path = "e2e/fleet.rs"]
mod fleet;
#[path = "e2e/fleet_epoch.rs"]
mod fleet_epoch;
#[path = "e2e/grpc.rs"]
mod grpc;
#[path = "e2e/grpc_proxy.rs"]
mod grpc_proxy;
#[path = "e2e/headers.rs"]
mod headers;
#[path = "e2e/hold.rs"]
mod hold;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/limits_attacks.rs"]
mod limits_attacks;
#[path = "e2e/limits_caps.rs"]
mod limits_caps;
#[path = "e2e/limits_h2.rs"]
mod limits_h2;
#[path = "e2e/reload.rs"]
mod reload;
#[path = "e2e/resilience.rs"]
mod resilience;
#[path = "e2e/robustness.rs"]
mod robustness;
#[path = "e2e/routing.rs"]
mod routing;
#[path = "e2e/split.rs"]
mod split;
#[path = "e2e/streams.rs"]
mod streams;
#[path = "e2e/tls.rs"]
mod tls;
#[path = "e2e/upgrade.rs"]
mod upgrade;
#[path = "e2e/upstream_tls.rs"]
mod upstream_tls;
#[path = "e2e/websocket.rs"]
mod websocket;
