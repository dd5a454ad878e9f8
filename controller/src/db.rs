//! A connection to one side, whose every error names that side, and the
//! `application_name` that makes the controller's sessions recognisable.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::dsn::{Dsn, Side};
use crate::error::{Error, pg_detail};

/// A connected database: the source or the target.
pub struct Db {
    dsn: Dsn,
    client: Client,
    version: i32,
    /// While set, every statement runs under a `statement_timeout` of what is
    /// left until then (the switchover's write pause has a ceiling).
    deadline: Mutex<Option<Instant>>,
    /// A `statement_timeout` is set on the session and must be reset.
    timeout_set: AtomicBool,
}

/// How to open plain tokio-postgres sessions to one DSN as the controller does:
/// its TLS (`sslmode`, `sslrootcert`, …: [`crate::pgtls`]) and its passfile. For
/// programs that run beside the controller and must reach a server the same way
/// (the rehearsal's applications and workers). Built once; the certificate files
/// are read then, not at every connect.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: crate::pgtls::MakePgTls,
}

impl Connector {
    /// Reads the DSN's TLS files and passfile; an error names the side, the
    /// server and the file.
    pub fn new(dsn: &Dsn) -> Result<Connector, Error> {
        Connector::with_config(dsn, dsn.connect_config()?)
    }

    fn with_config(dsn: &Dsn, config: tokio_postgres::Config) -> Result<Connector, Error> {
        let tls = crate::pgtls::MakePgTls::new(dsn.tls()).map_err(|detail| Error::TlsSetup {
            side: dsn.side(),
            dsn: dsn.redacted(),
            detail,
        })?;
        Ok(Connector { config, tls })
    }

    /// A new session; its connection runs on a task of its own, and its errors
    /// surface as errors of the next statement.
    pub async fn client(&self) -> Result<Client, tokio_postgres::Error> {
        self.open(&self.config).await
    }

    /// As [`Connector::client`], to the same server over the same TLS as another
    /// role, on another database.
    pub async fn client_as(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut config = self.config.clone();
        config.user(user).password(password).dbname(dbname);
        self.open(&config).await
    }

    async fn open(&self, config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Db {
    /// Connects (over TLS as the DSN's `sslmode` says: [`crate::pgtls`]) and reads
    /// the server version. The session opts out of
    /// `default_transaction_read_only`, so the controller can still write its own
    /// bookkeeping on a side whose application roles it has blocked. Unless the
    /// DSN names one, the session's `application_name` is
    /// `cutover <command> (<host> pid <pid>)`, so that an operator (and another
    /// controller refused by [`crate::lock`]) can tell which process holds it.
    pub async fn connect(dsn: &Dsn) -> Result<Db, Error> {
        let mut config = dsn.connect_config()?;
        if config.get_application_name().is_none() {
            config.application_name(application_name(&hostname(), std::process::id()));
        }
        let connector = Connector::with_config(dsn, config)?;
        let client = connector.client().await.map_err(|e| Error::Connect {
            side: dsn.side(),
            dsn: dsn.redacted(),
            detail: pg_detail(&e),
            source: e,
        })?;
        let mut db = Db {
            dsn: dsn.clone(),
            client,
            version: 0,
            deadline: Mutex::new(None),
            timeout_set: AtomicBool::new(false),
        };
        db.batch(
            "prepare the session",
            "SET default_transaction_read_only = off; SET lock_timeout = '10s'",
        )
        .await?;
        let row = db
            .query_one(
                "read the server version",
                "SELECT current_setting('server_version_num')::int",
                &[],
            )
            .await?;
        db.version = row.get(0);
        Ok(db)
    }

    /// Connects to both sides at once.
    pub async fn connect_pair(source: &Dsn, target: &Dsn) -> Result<(Db, Db), Error> {
        let (s, t) = tokio::join!(Db::connect(source), Db::connect(target));
        Ok((s?, t?))
    }

    pub fn side(&self) -> Side {
        self.dsn.side()
    }

    pub fn dsn(&self) -> &Dsn {
        &self.dsn
    }

    /// `server_version_num`, e.g. 150018.
    pub fn version(&self) -> i32 {
        self.version
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub(crate) fn err(&self, what: &str, e: tokio_postgres::Error) -> Error {
        Error::Query {
            side: self.side(),
            dsn: self.dsn.redacted(),
            what: what.to_string(),
            detail: pg_detail(&e),
            source: e,
        }
    }

    /// Every statement from now on must end by `deadline` (`None`: no limit). The
    /// limit is a `statement_timeout` sent in the same round trip as each
    /// statement, so a lock wait or a slow server cannot outlast it.
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = deadline;
    }

    /// The `SET` to send before the next statement, if any: the time left until
    /// the deadline, or a reset once there is none.
    fn timeout_prefix(&self, what: &str) -> Result<Option<String>, Error> {
        let deadline = *self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Precondition(format!(
                        "{} database: {what}: the pause budget (--max-pause) ran out before it could start",
                        self.side()
                    )));
                }
                self.timeout_set.store(true, Ordering::Relaxed);
                Ok(Some(format!(
                    "SET statement_timeout = {}",
                    left.as_millis().max(1)
                )))
            }
            None if self.timeout_set.swap(false, Ordering::Relaxed) => {
                Ok(Some("SET statement_timeout = 0".into()))
            }
            None => Ok(None),
        }
    }

    /// Runs `run` after the timeout prefix, pipelined with it in one round trip.
    async fn bounded<T, Fut>(&self, what: &str, run: Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        match self.timeout_prefix(what)? {
            None => run.await.map_err(|e| self.err(what, e)),
            Some(set) => {
                // join! polls the SET first, so it is sent first.
                let (set, out) = tokio::join!(self.client.batch_execute(&set), run);
                set.map_err(|e| self.err(what, e))?;
                out.map_err(|e| self.err(what, e))
            }
        }
    }

    pub async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.bounded(what, self.client.query(sql, params)).await
    }

    pub async fn query_one(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        self.bounded(what, self.client.query_one(sql, params)).await
    }

    pub async fn query_opt(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        self.bounded(what, self.client.query_opt(sql, params)).await
    }

    pub async fn execute(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        self.bounded(what, self.client.execute(sql, params)).await
    }

    /// Runs statements with the simple protocol (no parameters); needed for
    /// commands such as `CREATE SUBSCRIPTION` that refuse to run in a transaction.
    pub async fn batch(&self, what: &str, sql: &str) -> Result<(), Error> {
        self.bounded(what, self.client.batch_execute(sql)).await
    }

    /// Ends the open transaction, whatever the deadline: an aborted transaction
    /// must not outlive a failed step. Errors are ignored (there may be none open).
    pub async fn rollback(&self) {
        let _ = self.client.batch_execute("ROLLBACK").await;
    }

    /// [`Db::query`] outside the deadline, for what explains a failure after it.
    pub async fn query_unbounded(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.client
            .query(sql, params)
            .await
            .map_err(|e| self.err(what, e))
    }

    /// A server setting as text.
    pub async fn setting(&self, name: &str) -> Result<String, Error> {
        let row = self
            .query_one(
                &format!("read setting {name}"),
                "SELECT current_setting($1)",
                &[&name],
            )
            .await?;
        Ok(row.get(0))
    }

    /// A server setting as an integer.
    pub async fn setting_int(&self, name: &str) -> Result<i64, Error> {
        let v = self.setting(name).await?;
        v.parse().map_err(|_| {
            Error::Precondition(format!(
                "{} database: setting {name} is {v:?}, not an integer",
                self.side()
            ))
        })
    }
}

/// The command this process runs (`db sync`, `run`, …), set once by the CLI.
static COMMAND: OnceLock<String> = OnceLock::new();

/// Names the command this process runs, for the `application_name` of every
/// connection it makes from now on. The first call wins; later ones are ignored
/// (one process runs one command).
pub fn set_command(command: &str) {
    let _ = COMMAND.set(command.to_string());
}

/// PostgreSQL keeps the first 63 bytes of an `application_name` (NAMEDATALEN - 1).
const APPLICATION_NAME_MAX: usize = 63;

/// `cutover db sync (pod-7f9c pid 4242)`; `cutover (…)` before a command is set.
/// A long host name is shortened rather than the pid, which is what tells two
/// controllers on one host apart.
fn application_name(host: &str, pid: u32) -> String {
    let program = match COMMAND.get() {
        Some(c) if !c.is_empty() => format!("cutover {c}"),
        _ => "cutover".to_string(),
    };
    let tail = format!(" pid {pid})");
    let room = APPLICATION_NAME_MAX.saturating_sub(program.len() + 2 + tail.len());
    let mut host: String = host.chars().filter(|c| c.is_ascii_graphic()).collect();
    if host.len() > room {
        // ASCII only (filtered above), so any byte index is a char boundary.
        host.truncate(room);
    }
    format!("{program} ({host}{tail}")
}

/// This machine's (or pod's) name, without a crate: the kernel's, else `$HOSTNAME`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// Polls `check` every `every` until it yields `Some`, or fails with a timeout that
/// names `what`.
pub(crate) async fn poll<T, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, Error>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: within,
            });
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_names_fit_and_keep_the_pid() {
        let short = application_name("box", 42);
        assert!(short.starts_with("cutover"), "{short}");
        assert!(short.ends_with("(box pid 42)"), "{short}");
        let long = application_name(&"h".repeat(100), 4_194_304);
        assert!(long.len() <= APPLICATION_NAME_MAX, "{long}");
        assert!(long.ends_with("hh pid 4194304)"), "{long}");
    }
}
