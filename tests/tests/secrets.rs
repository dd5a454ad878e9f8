//! Secrets migration tests: the real `cutover` binary against real OpenBao dev
//! servers (two where a test moves store to store), the fixtures in the exact
//! JSON `kubectl get secrets -A -o json` prints, and AWS Secrets Manager through
//! moto's emulator. Every run's output is checked for every fixture value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "secrets/aws.rs"]
mod aws;
#[path = "secrets/common.rs"]
mod common;
#[path = "secrets/errors.rs"]
mod errors;
#[path = "secrets/kubectl.rs"]
mod kubectl;
#[path = "secrets/no_values.rs"]
mod no_values;
#[path = "secrets/render.rs"]
mod render;
#[path = "secrets/store_to_store.rs"]
mod store_to_store;
#[path = "secrets/sync.rs"]
mod sync;
#[path = "secrets/tls.rs"]
mod tls;
