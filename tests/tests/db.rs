//! Database migration tests: real PostgreSQL clusters (two per test), the real
//! `cutover` binary and library, and for the switchover the demo app behind the real
//! `cutover-proxy`; which write block holds against which bypass writer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "db/blocks.rs"]
mod blocks;
#[path = "db/bypass.rs"]
mod bypass;
#[path = "db/check.rs"]
mod check;
#[path = "db/common.rs"]
mod common;
#[path = "db/contains.rs"]
mod contains;
#[path = "db/copy.rs"]
mod copy;
#[path = "db/errors.rs"]
mod errors;
#[path = "db/failure.rs"]
mod failure;
#[path = "db/fence.rs"]
mod fence;
#[path = "db/load.rs"]
mod load;
#[path = "db/lock.rs"]
mod lock;
#[path = "db/outcome.rs"]
mod outcome;
#[path = "db/passfile.rs"]
mod passfile;
#[path = "db/refusals.rs"]
mod refusals;
#[path = "db/schema.rs"]
mod schema;
#[path = "db/switchover.rs"]
mod switchover;
#[path = "db/sync.rs"]
mod sync;
#[path = "db/tls.rs"]
mod tls;
#[path = "db/uploads.rs"]
mod uploads;
#[path = "db/websockets.rs"]
mod websockets;
#[path = "db/writers.rs"]
mod writers;
