//! The controller's error type. Every database error names the side (source or
//! target) and shows the DSN redacted; proxy errors name the admin URL.

use std::time::Duration;

use crate::dsn::Side;

/// What went wrong, with enough context that the operator knows where to look.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{side} DSN is not valid: {reason}")]
    Dsn { side: Side, reason: String },

    #[error("{side} database ({dsn}): cannot connect: {detail}")]
    Connect {
        side: Side,
        dsn: String,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The DSN's certificate files cannot be used.
    #[error("{side} database ({dsn}): cannot set up TLS: {detail}")]
    TlsSetup {
        side: Side,
        dsn: String,
        detail: String,
    },

    #[error("{side} database ({dsn}): {what}: {detail}")]
    Query {
        side: Side,
        dsn: String,
        what: String,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// An external program (`pg_dump`, `psql`) failed.
    #[error("{side} database ({dsn}): {program} failed: {detail}")]
    Tool {
        side: Side,
        dsn: String,
        program: &'static str,
        detail: String,
    },

    #[error("proxy {url}: {what}: {detail}")]
    Proxy {
        url: String,
        what: String,
        detail: String,
    },

    /// Nothing listens on the replica's admin port: a process that has not
    /// started yet (its admin API listens before anything else), or has stopped.
    #[error("proxy {url}: {what}: {detail}")]
    ProxyNotListening {
        url: String,
        what: String,
        detail: String,
    },

    #[error("bad proxy admin URL {url:?}: {reason}")]
    ProxyUrl { url: String, reason: String },

    /// A replica refused a change (409) because it has seen a newer epoch than the
    /// change carried: the fleet was changed by someone else since this controller
    /// read it. Never retried: going on would undo their change unseen.
    #[error(
        "proxy {url}: {what}: refused: the replica is at epoch {replica_epoch}, this call \
         carried epoch {call_epoch}; another controller (or an operator) has changed the fleet \
         since this run read it. Nothing was retried: compare GET /state on the replicas and \
         find who else is changing them before going on"
    )]
    EpochConflict {
        url: String,
        what: String,
        replica_epoch: u64,
        call_epoch: u64,
    },

    /// Before a change: a replica is past the last change this controller sent,
    /// so someone else changed the fleet (a replica takes a change at its own
    /// epoch, so sending this one could overwrite theirs unseen). Nothing was sent.
    #[error(
        "proxy {url}: the replica is at epoch {replica_epoch}, past epoch {ours} of this \
         controller's last change; another controller (or an operator) has changed the fleet \
         since. Nothing was sent: compare GET /state on the replicas and find who else is \
         changing them before going on"
    )]
    FleetMoved {
        url: String,
        replica_epoch: u64,
        ours: u64,
    },

    /// The state of the databases or proxies does not allow the command.
    #[error("{0}")]
    Precondition(String),

    /// The preflight found blockers; `cutover db check` lists them with their fixes.
    /// The preflight found blockers; `list` names each with its fix.
    #[error("the preflight found {count} blocker(s):\n{list}")]
    Blocked { count: usize, list: String },

    #[error("timed out after {:.1}s waiting for {what}", .after.as_secs_f64())]
    Timeout { what: String, after: Duration },

    /// A switchover or rollback stopped before its point of no return and undid
    /// what it had done.
    #[error("{operation} aborted during {phase}: {cause}; {undo}")]
    Aborted {
        operation: &'static str,
        phase: String,
        cause: Box<Error>,
        undo: String,
    },

    /// The plan (or its state file) cannot be used; the message names the file and
    /// the field.
    #[error("{0}")]
    Plan(String),

    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),

    #[error("cannot read the admin token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether this error came from the named side's database.
    pub fn side(&self) -> Option<Side> {
        match self {
            Error::Dsn { side, .. }
            | Error::Connect { side, .. }
            | Error::TlsSetup { side, .. }
            | Error::Query { side, .. }
            | Error::Tool { side, .. } => Some(*side),
            Error::Aborted { cause, .. } => cause.side(),
            _ => None,
        }
    }
}

/// The useful part of a driver error: the server's message with its detail and hint,
/// or the transport error and its cause. Never includes the connection string.
pub(crate) fn pg_detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} ({})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str("; ");
            s.push_str(d);
        }
        if let Some(h) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(h);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
