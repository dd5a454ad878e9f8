//! Local PostgreSQL clusters for `cutover rehearse` and the database tests: `initdb`
//! and `pg_ctl` in a temp dir (in memory when `/dev/shm` has room), on a free
//! loopback port, configured for logical
//! replication with room for one subscription per application in each direction,
//! and stopped (immediate mode, as a crash would) on drop unless kept.
//!
//! `initdb` refuses to run as root, so as root the server programs run as the
//! `postgres` user (`runuser`), in a directory that user owns. Durability is off
//! (`fsync`, `full_page_writes`): a rehearsal's cluster lives for minutes and its
//! figures should measure the migration, not this machine's disk.
//!
//! Every step returns a [`ClusterError`] that says what failed and, where it helps,
//! the server's log; nothing here panics. Passwords are never part of a message.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cutover_controller::{Connector, Dsn, Side};
use tokio_postgres::{Client, NoTls};

/// What cannot be done without a working cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No server programs were found.
    #[error(
        "cutover rehearse needs PostgreSQL's server programs (initdb, pg_ctl): none in $PG_BIN, \
         PATH or /usr/lib/postgresql/*/bin; on Debian: apt-get install postgresql-15"
    )]
    NoServer,
    /// `$PG_BIN` names a directory without `initdb`.
    #[error("$PG_BIN is {0}, which has no initdb")]
    BadPgBin(PathBuf),
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root, and initdb refuses root: the server runs as the `postgres` user, \
         which does not exist here (useradd --system postgres, or run as another user)"
    )]
    NoPostgresUser,
    /// A file or directory operation failed.
    #[error("cluster {cluster}: {what}: {source}")]
    Io {
        cluster: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A server program ran and failed.
    #[error("cluster {cluster}: {program} failed: {detail}")]
    Program {
        cluster: String,
        program: String,
        detail: String,
    },
    /// A connection or statement failed.
    #[error("cluster {cluster}, database {db}: {what}: {detail}")]
    Sql {
        cluster: String,
        db: String,
        what: String,
        detail: String,
    },
}

/// The directory of the server programs: `$PG_BIN`; else the directory of `initdb`
/// on `PATH` (symlinks resolved, so `pg_ctl` is found beside it); else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn server_programs() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(ClusterError::BadPgBin(dir))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if !initdb.is_file() {
                continue;
            }
            let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(bin) = real.parent().filter(|b| b.join("pg_ctl").is_file()) {
                return Ok(bin.to_path_buf());
            }
            if dir.join("pg_ctl").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| ClusterError::NoServer)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or(ClusterError::NoServer)
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A server program run as the cluster's owner.
fn server_command(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The settings appended to `postgresql.conf`. Slots, senders and workers leave
/// room for six subscriptions per direction plus their table-copy workers.
/// Prepared transactions are allowed (off by default) so that tests can leave one
/// pending, as an application using two-phase commit would.
fn settings(port: u16, socket_dir: &Path) -> String {
    format!(
        "\n# cutover: a local cluster for rehearsals and tests\n\
         listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
         wal_level = logical\nmax_replication_slots = 24\nmax_wal_senders = 24\n\
         max_logical_replication_workers = 20\nmax_sync_workers_per_subscription = 2\n\
         max_worker_processes = 40\nwal_retrieve_retry_interval = 1s\n\
         max_connections = 200\nshared_buffers = 32MB\nmax_prepared_transactions = 10\n\
         fsync = off\nfull_page_writes = off\n\
         wal_writer_delay = 10ms\nmin_wal_size = 32MB\nmax_wal_size = 256MB\n",
        socket_dir.display()
    )
}

/// Where cluster directories go: `/dev/shm` when it is a memory filesystem with
/// at least 1 GiB free, else the temp dir. These clusters are thrown away (and run
/// without fsync); in memory they start, run and are removed in a fraction of the
/// time a busy or nearly full disk takes, and cannot fill that disk.
fn home_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let free_kib = Command::new("df")
        .args(["-Pk"])
        .arg(shm)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().nth(1)?.to_string();
            let fields: Vec<&str> = line.split_whitespace().collect();
            let is_tmpfs = fields.first().is_some_and(|f| *f == "tmpfs");
            let free = fields.get(3)?.parse::<u64>().ok()?;
            is_tmpfs.then_some(free)
        });
    match free_kib {
        Some(kib) if kib >= 1 << 20 => shm.to_path_buf(),
        _ => std::env::temp_dir(),
    }
}

fn free_port() -> Option<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()
}

/// Where a cluster lives: a temp dir removed on drop, or kept.
enum Home {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Home {
    fn path(&self) -> &Path {
        match self {
            Home::Temp(t) => t.path(),
            Home::Kept(p) => p,
        }
    }
}

/// A running cluster; stopped on drop unless [`Cluster::keep`] was called.
pub struct Cluster {
    name: String,
    port: u16,
    password: String,
    bin: PathBuf,
    home: Option<Home>,
    stopped: AtomicBool,
    keep: bool,
    /// Set by [`Cluster::require_tls`]: the CA file clients verify against, and
    /// how to connect over TLS.
    tls: OnceLock<(PathBuf, Connector)>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("dir", &self.dir())
            .field("password_len", &self.password.len())
            .finish()
    }
}

impl Cluster {
    /// Creates and starts cluster `name` (used in messages and the temp dir's name)
    /// whose superuser `postgres` has `password`. Blocking: a few seconds.
    pub fn start(name: &str, password: &str) -> Result<Cluster, ClusterError> {
        let bin = server_programs()?;
        let root = running_as_root();
        let io = |what: &str| {
            let (cluster, what) = (name.to_string(), what.to_string());
            move |source| ClusterError::Io {
                cluster,
                what,
                source,
            }
        };
        if root && !postgres_user_exists() {
            return Err(ClusterError::NoPostgresUser);
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("cutover-pg-{name}-"))
            .tempdir_in(home_parent())
            .map_err(io("create a temp dir"))?;
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, password).map_err(io("write the password file"))?;
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).map_err(io("create the socket dir"))?;
        if root {
            let out = run(
                name,
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
            )?;
            check(name, "chown", &out)?;
        }
        let data = dir.path().join("data");
        let mut initdb = server_command(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        let out = run(name, "initdb", &mut initdb)?;
        check(name, "initdb", &out)?;
        // The password is in the cluster now; the file is no longer needed.
        let _ = std::fs::remove_file(&pwfile);

        let mut cluster = Cluster {
            name: name.to_string(),
            port: 0,
            password: password.to_string(),
            bin,
            home: Some(Home::Temp(dir)),
            stopped: AtomicBool::new(true),
            keep: false,
            tls: OnceLock::new(),
        };
        // Another process may take the port between the probe and the bind: retry
        // with a fresh one (the last `port` line in the file wins).
        let mut last = String::new();
        for _ in 0..5 {
            let Some(port) = free_port() else {
                continue;
            };
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .map_err(io("open postgresql.conf"))?;
            std::io::Write::write_all(&mut f, settings(port, &socket_dir).as_bytes())
                .map_err(io("write postgresql.conf"))?;
            let mut start = server_command(&cluster.bin.join("pg_ctl"));
            start
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir().join("log"))
                .args(["-w", "-t", "60", "start"]);
            let out = run(name, "pg_ctl start", &mut start)?;
            if out.status.success() {
                cluster.port = port;
                cluster.stopped.store(false, Ordering::SeqCst);
                return Ok(cluster);
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
        Err(ClusterError::Program {
            cluster: name.to_string(),
            program: "pg_ctl start".into(),
            detail: format!("{last}\n{}", tail(&cluster.log(), 10)),
        })
    }

    /// Starts two clusters, `old` and `new`, at the same time.
    pub fn start_pair(
        old_password: &str,
        new_password: &str,
    ) -> Result<(Cluster, Cluster), ClusterError> {
        std::thread::scope(|s| {
            let old = s.spawn(|| Cluster::start("old", old_password));
            let new = s.spawn(|| Cluster::start("new", new_password));
            let joined = |h: std::thread::ScopedJoinHandle<'_, _>, name: &str| {
                h.join().unwrap_or_else(|_| {
                    Err(ClusterError::Program {
                        cluster: name.to_string(),
                        program: "start".into(),
                        detail: "the starting thread panicked".into(),
                    })
                })
            };
            let old = joined(old, "old");
            let new = joined(new, "new");
            Ok((old?, new?))
        })
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (never print it).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The cluster's directory (data, log, socket).
    pub fn dir(&self) -> &Path {
        self.home.as_ref().map_or(Path::new(""), Home::path)
    }

    /// The data directory, for `pg_ctl -D`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The directory of the server programs in use.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Leaves the cluster running and its directory in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
        if let Some(Home::Temp(t)) = self.home.take() {
            self.home = Some(Home::Kept(t.keep()));
        }
    }

    /// The command that stops a kept cluster, for the operator.
    pub fn stop_command(&self) -> String {
        let pg_ctl = self.bin.join("pg_ctl");
        let base = format!(
            "{} -D {} stop -m fast",
            pg_ctl.display(),
            self.data_dir().display()
        );
        if running_as_root() {
            format!("runuser -u postgres -- {base}")
        } else {
            base
        }
    }

    /// A libpq DSN for the superuser on database `db`, password included.
    pub fn dsn(&self, db: &str) -> String {
        self.dsn_as("postgres", &self.password, db)
    }

    /// A libpq DSN for `user` on database `db`, password included; once the
    /// cluster requires TLS, with `sslmode=verify-full` against its CA.
    pub fn dsn_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} \
             connect_timeout=5{}",
            self.port,
            self.tls_keys()
        )
    }

    /// The superuser's DSN without the password, for display.
    pub fn dsn_shown(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}{}",
            self.port,
            self.tls_keys()
        )
    }

    fn tls_keys(&self) -> String {
        match self.tls.get() {
            Some((ca, _)) => format!(" sslmode=verify-full sslrootcert={}", ca.display()),
            None => String::new(),
        }
    }

    /// The CA file its clients verify against, once it requires TLS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.get().map(|(ca, _)| ca.as_path())
    }

    /// Writes `name` into the data directory, owned by the server's OS user and
    /// readable by it alone (as the server wants its key, and libpq a passfile);
    /// returns its path.
    pub fn private_file(&self, name: &str, text: &str) -> Result<PathBuf, ClusterError> {
        self.owned_file(&self.data_dir().join(name), text, 0o600)
    }

    fn owned_file(&self, path: &Path, text: &str, mode: u32) -> Result<PathBuf, ClusterError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let io = |what: String| {
            let cluster = self.name.clone();
            move |source| ClusterError::Io {
                cluster,
                what,
                source,
            }
        };
        let shown = path.display();
        let owner = std::fs::metadata(self.data_dir()).map_err(io("stat the data dir".into()))?;
        std::fs::write(path, text).map_err(io(format!("write {shown}")))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {shown}")))?;
        std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
            .map_err(io(format!("chown {shown}")))?;
        Ok(path.to_path_buf())
    }

    /// Turns TLS on with `cert_pem`/`key_pem` and makes TCP clients use it:
    /// `pg_hba.conf` then has `hostssl` lines only (the unix socket stays
    /// `trust`). `ca_pem`, the CA that signed the certificate, goes beside the
    /// data directory for the clients, which from now on verify the server
    /// against it and its address ([`Cluster::dsn_as`], [`Cluster::connect_as`]).
    /// Returns once a plain TCP connection is refused.
    pub async fn require_tls(
        &self,
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Result<(), ClusterError> {
        self.private_file("server.crt", cert_pem)?;
        self.private_file("server.key", key_pem)?;
        // Readable by any local user: a subscriber's server may read it too.
        let ca = self.owned_file(&self.dir().join("ca.pem"), ca_pem, 0o644)?;
        let io = |what: &str| {
            let (cluster, what) = (self.name.clone(), what.to_string());
            move |source| ClusterError::Io {
                cluster,
                what,
                source,
            }
        };
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .map_err(io("open postgresql.conf"))?;
        std::io::Write::write_all(
            &mut conf,
            b"\n# TLS only, with the rehearsal CA's certificate\n\
              ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .map_err(io("write postgresql.conf"))?;
        self.owned_file(
            &self.data_dir().join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl replication all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n",
            0o600,
        )?;
        let mut reload = server_command(&self.bin.join("pg_ctl"));
        reload.arg("-D").arg(self.data_dir()).arg("reload");
        let out = run(&self.name, "pg_ctl reload", &mut reload)?;
        check(&self.name, "pg_ctl reload", &out)?;

        let shown = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full \
             sslrootcert={}",
            self.port,
            ca.display()
        );
        let tls_error = |detail: String| ClusterError::Sql {
            cluster: self.name.clone(),
            db: "postgres".into(),
            what: "set up TLS".into(),
            detail,
        };
        let dsn = Dsn::parse(Side::Target, &format!("{shown} password={}", self.password))
            .map_err(|e| tls_error(e.to_string()))?;
        let connector = Connector::new(&dsn).map_err(|e| tls_error(e.to_string()))?;
        // The reload is a signal: wait until plain connections are refused.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let plain = tokio_postgres::connect(
                &self.dsn_as("postgres", &self.password, "postgres"),
                NoTls,
            )
            .await;
            // Refused by pg_hba.conf (28000), not merely failed.
            if let Err(e) = &plain
                && e.code()
                    == Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(tls_error(
                    "the server did not refuse a plain connection (pg_hba.conf, SQLSTATE 28000) \
                     within 10 s of the reload"
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        connector
            .client()
            .await
            .map_err(|e| self.sql_error("postgres", "connect over TLS", &e))?;
        let _ = self.tls.set((ca, connector));
        Ok(())
    }

    /// A superuser connection to `db`.
    pub async fn connect(&self, db: &str) -> Result<Client, ClusterError> {
        let password = self.password.clone();
        self.connect_as("postgres", &password, db)
            .await
            .map_err(|e| self.sql_error(db, "connect", &e))
    }

    /// A connection as `user` to `db`.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        if let Some((_, tls)) = self.tls.get() {
            return tls.client_as(user, password, db).await;
        }
        let (client, conn) =
            tokio_postgres::connect(&self.dsn_as(user, password, db), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs `sql` (one or more statements) as the superuser on `db`.
    pub async fn sql(&self, db: &str, sql: &str) -> Result<(), ClusterError> {
        let client = self.connect(db).await?;
        client
            .batch_execute(sql)
            .await
            .map_err(|e| self.sql_error(db, "run SQL", &e))
    }

    /// An error about `db` on this cluster.
    pub fn sql_error(&self, db: &str, what: &str, e: &tokio_postgres::Error) -> ClusterError {
        let detail = match e.as_db_error() {
            Some(d) => format!("{}: {}", d.code().code(), d.message()),
            None => e.to_string(),
        };
        ClusterError::Sql {
            cluster: self.name.clone(),
            db: db.to_string(),
            what: what.to_string(),
            detail,
        }
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("log")).unwrap_or_default()
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    /// Blocking; safe to call twice.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut stop = server_command(&self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = run(&self.name, "pg_ctl stop", &mut stop);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.keep {
            self.stop();
        }
    }
}

fn postgres_user_exists() -> bool {
    std::fs::read_to_string("/etc/passwd")
        .map(|p| p.lines().any(|l| l.starts_with("postgres:")))
        .unwrap_or(true)
}

fn run(cluster: &str, program: &str, cmd: &mut Command) -> Result<Output, ClusterError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Io {
            cluster: cluster.to_string(),
            what: format!("cannot run {program}"),
            source,
        })
}

fn check(cluster: &str, program: &str, out: &Output) -> Result<(), ClusterError> {
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError::Program {
        cluster: cluster.to_string(),
        program: program.to_string(),
        detail: format!(
            "{} ({})",
            tail(&String::from_utf8_lossy(&out.stderr), 5),
            out.status
        ),
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_leave_room_for_six_subscriptions_each_way() {
        let s = settings(5432, Path::new("/tmp/s"));
        let value = |key: &str| -> u32 {
            s.lines()
                .find_map(|l| l.strip_prefix(&format!("{key} = ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert!(value("max_replication_slots") >= 20);
        assert!(value("max_wal_senders") >= 20);
        assert!(value("max_logical_replication_workers") >= 16);
        assert!(value("max_worker_processes") >= 32);
        assert!(value("max_connections") >= 200);
        assert!(value("max_prepared_transactions") >= 1);
        assert!(s.contains("wal_level = logical") && s.contains("fsync = off"));
        assert!(s.contains("listen_addresses = '127.0.0.1'"));
    }
}
