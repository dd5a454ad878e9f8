//! cutover-load against real HTTP servers on 127.0.0.1:0: the open-loop schedule, the
//! coordinated-omission correction, the SLO gate, the ledger, failure kinds, TLS and
//! HTTP/2, and the command line's errors and exit codes.

// The helpers outside #[test] functions (servers, the binary runner) fail the test on a
// setup error by panicking, exactly as the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod failures;
mod gate;
mod ledger;
mod open_loop;
mod server;
mod tls;
