//! The deployment artifacts and the live status page, checked against the real
//! programs: the status page in a real headless Chromium, every metric named in the
//! dashboard and the alerts against a running proxy's `/metrics`, and the
//! Kubernetes manifests (schemas, cross-file references, the ConfigMap's
//! `cutover.toml` through `cutover-proxy --check`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "deploy/browser.rs"]
mod browser;
#[path = "deploy/manifests.rs"]
mod manifests;
#[path = "deploy/metric_names.rs"]
mod metric_names;
#[path = "deploy/page.rs"]
mod page;
