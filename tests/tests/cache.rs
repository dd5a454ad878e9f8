//! `cutover cache` tests: real `redis-server` processes on loopback (a source and
//! a target per test, no persistence, stopped on drop) and the real `cutover`
//! binary run as a child process, as an operator would run it. What the targets
//! hold is checked independently of `cutover cache verify`, type by type.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "cache/common.rs"]
mod common;
#[path = "cache/compare.rs"]
mod compare;
#[path = "cache/copy.rs"]
mod copy;
#[path = "cache/expiry.rs"]
mod expiry;
#[path = "cache/notifications.rs"]
mod notifications;
#[path = "cache/passwords.rs"]
mod passwords;
#[path = "cache/repair.rs"]
mod repair;
#[path = "cache/tls.rs"]
mod tls;
#[path = "cache/verify.rs"]
mod verify;
