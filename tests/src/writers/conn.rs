//! One session of a prepared writer, and what a failed write looks like: the
//! kind's insert, an insert left open, a prepared (two-phase) transaction, each
//! as simple queries; every error with its SQLSTATE, and whether the connection is
//! gone (the server's reason kept, so that a terminated session reads `57P01`,
//! not "closed").

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{Prepared, WriterKind, quote};

/// One session of a [`Prepared`] writer. Statements go as simple queries, which
/// PgBouncer's transaction pooling passes through unchanged.
pub struct Conn {
    pub(super) client: Client,
    /// Set when the connection ends: why, with the server's SQLSTATE if it sent one.
    pub(super) closed: watch::Receiver<Option<WriteError>>,
    pub(super) prepared: Prepared,
}

impl Conn {
    /// Inserts one row in its own transaction; the id once the commit returned.
    pub async fn insert(&self, body: &str) -> Result<i64, WriteError> {
        let p = &self.prepared;
        let sql = match p.kind {
            WriterKind::ReadWriteSession => {
                format!("{} {}; COMMIT", p.begin(), p.statement(body))
            }
            _ => p.statement(body),
        };
        self.returning_id(&sql).await
    }

    /// Begins a transaction and inserts one row, leaving the transaction open.
    pub async fn begin_insert(&self, body: &str) -> Result<i64, WriteError> {
        let p = &self.prepared;
        self.returning_id(&format!("{} {}", p.begin(), p.statement(body)))
            .await
    }

    /// Commits the open transaction.
    pub async fn commit(&self) -> Result<(), WriteError> {
        self.simple("COMMIT").await.map(drop)
    }

    /// `BEGIN; INSERT …; PREPARE TRANSACTION 'gid'`: the row is written but
    /// neither committed nor visible until [`Conn::commit_prepared`].
    pub async fn prepare_pending(&self, gid: &str, body: &str) -> Result<i64, WriteError> {
        let p = &self.prepared;
        let sql = format!(
            "{} {}; PREPARE TRANSACTION {}",
            p.begin(),
            p.statement(body),
            quote(gid)
        );
        self.returning_id(&sql).await
    }

    /// `COMMIT PREPARED 'gid'`, from any session of the same database.
    pub async fn commit_prepared(&self, gid: &str) -> Result<(), WriteError> {
        self.simple(&format!("COMMIT PREPARED {}", quote(gid)))
            .await
            .map(drop)
    }

    /// Runs `sql` (one or more statements) as a simple query. After an error on a
    /// live connection the session is rolled back, so that it can go on.
    pub async fn simple(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, WriteError> {
        match self.client.simple_query(sql).await {
            Ok(m) => Ok(m),
            Err(e) => {
                let mut err = WriteError::from_pg(&e);
                if err.lost || self.client.is_closed() {
                    err = self.why_closed(err).await;
                } else if self.client.batch_execute("ROLLBACK").await.is_err() {
                    err.lost = true;
                }
                Err(err)
            }
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The raw client, for anything else.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn returning_id(&self, sql: &str) -> Result<i64, WriteError> {
        let rows = self.simple(sql).await?;
        rows.iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .ok_or_else(|| WriteError {
                lost: false,
                ..WriteError::closed("the write returned no id")
            })
    }

    /// A request failed because the connection ended: the connection's own reason
    /// (e.g. `57P01` when the session was terminated) says more than "closed".
    /// The connection task records it as it ends, which may be just after.
    async fn why_closed(&self, fallback: WriteError) -> WriteError {
        if fallback.code.is_some() {
            return WriteError {
                lost: true,
                ..fallback
            };
        }
        let mut rx = self.closed.clone();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(Duration::from_secs(2), wait).await {
            Ok(Ok(why)) => why.clone().unwrap_or(fallback),
            _ => fallback,
        }
    }
}

/// A write, connection or commit that did not succeed.
#[derive(Debug, Clone)]
pub struct WriteError {
    /// The SQLSTATE, when the server (or PgBouncer) sent one.
    pub code: Option<String>,
    pub message: String,
    /// The connection is gone: a worker would reconnect.
    pub lost: bool,
    pub at: Instant,
}

impl WriteError {
    pub(super) fn from_pg(e: &tokio_postgres::Error) -> WriteError {
        match e.as_db_error() {
            Some(d) => WriteError {
                code: Some(d.code().code().to_string()),
                message: d.message().to_string(),
                lost: matches!(d.severity(), "FATAL" | "PANIC"),
                at: Instant::now(),
            },
            None => WriteError::closed(&e.to_string()),
        }
    }

    pub(super) fn closed(message: &str) -> WriteError {
        WriteError {
            code: None,
            message: message.to_string(),
            lost: true,
            at: Instant::now(),
        }
    }

    /// The SQLSTATE, or `closed` when the connection ended without one.
    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("closed")
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message)
    }
}
