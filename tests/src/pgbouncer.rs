//! A real PgBouncer in front of a test cluster, for the pooled writer: transaction
//! pooling, `auth_type = md5` against a generated `auth_file` (plain passwords, so
//! that PgBouncer can answer the server's SCRAM challenge itself), listening on a
//! free loopback port, killed on drop.
//!
//! PgBouncer refuses to run as root. When the tests run as root it runs as the
//! `postgres` user, as the clusters do, but through `Command::uid`/`gid` rather
//! than `runuser`: `runuser` forks and waits, so killing it would leave PgBouncer
//! running; this way the child we kill is PgBouncer itself.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::openbao::{find_on_path, free_port};

/// How long PgBouncer may take to listen.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// `pgbouncer` from `$PGBOUNCER_BIN`, `PATH` or `/usr/sbin`; panics with the install
/// command when it is missing.
pub fn pgbouncer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PGBOUNCER_BIN") {
        return PathBuf::from(p);
    }
    find_on_path("pgbouncer")
        .or_else(|| {
            let p = Path::new("/usr/sbin/pgbouncer");
            p.is_file().then(|| p.to_path_buf())
        })
        .unwrap_or_else(|| {
            panic!(
                "PgBouncer is not installed: the pooled writer runs through a real `pgbouncer`. \
                 Run scripts/install-deps.sh (Debian package `pgbouncer`), or set PGBOUNCER_BIN"
            )
        })
}

/// A running PgBouncer; killed on drop.
pub struct Pgbouncer {
    pub port: u16,
    /// Holds the configuration, the `auth_file` and the log.
    dir: tempfile::TempDir,
    child: Child,
}

impl std::fmt::Debug for Pgbouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pgbouncer")
            .field("port", &self.port)
            .finish()
    }
}

impl Pgbouncer {
    /// Starts PgBouncer in front of the cluster on loopback port `pg_port`, every
    /// database name passed through, admitting `users` as (name, password).
    /// Blocking until it listens.
    pub fn start(pg_port: u16, users: &[(&str, &str)]) -> Pgbouncer {
        let bin = pgbouncer_bin();
        let owner = postgres_ids_if_root();
        let mut last = String::new();
        // Another process may take the probed port before PgBouncer binds it.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("cutover-pgbouncer-")
                .tempdir()
                .expect("temp dir");
            let port = free_port();
            let auth: String = users
                .iter()
                .map(|(u, p)| format!("\"{u}\" \"{p}\"\n"))
                .collect();
            let auth_file = dir.path().join("userlist.txt");
            std::fs::write(&auth_file, auth).expect("write the auth file");
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(&ini, config(pg_port, port, &auth_file)).expect("write the config");
            let log = dir.path().join("log");
            let log_file = std::fs::File::create(&log).expect("log file");
            let mut cmd = Command::new(&bin);
            cmd.arg(&ini)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone log handle"))
                .stderr(log_file);
            if let Some((uid, gid)) = owner {
                use std::os::unix::process::CommandExt;
                for p in [dir.path(), &auth_file, &ini, &log] {
                    std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to postgres");
                }
                cmd.uid(uid).gid(gid);
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let mut bouncer = Pgbouncer { port, dir, child };
            match bouncer.wait_ready() {
                Ok(()) => return bouncer,
                // Dropping `bouncer` kills this attempt.
                Err(e) => last = e,
            }
        }
        panic!("PgBouncer did not start: {last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("pgbouncer exited with {status}:\n{}", self.log()));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not listening within {READY_WITHIN:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A libpq DSN through the pooler, password included (never print it).
    pub fn dsn_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} connect_timeout=5",
            self.port
        )
    }

    /// PgBouncer's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Transaction pooling, as most deployments in front of web apps run it. A failed
/// server login is retried after a second (the default 15 s would make a test that
/// refuses connections and then allows them again wait for no reason).
fn config(pg_port: u16, port: u16, auth_file: &Path) -> String {
    format!(
        "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = md5\nauth_file = {}\npool_mode = transaction\n\
         max_client_conn = 200\ndefault_pool_size = 10\nserver_login_retry = 1\n\
         ignore_startup_parameters = extra_float_digits\n\
         log_connections = 0\nlog_disconnections = 0\n",
        auth_file.display()
    )
}

/// The `postgres` user's (uid, gid) when the tests run as root, else `None`.
fn postgres_ids_if_root() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .unwrap_or_else(|| {
            panic!("running as root, and PgBouncer refuses root: there is no `postgres` user")
        });
    let fields: Vec<&str> = line.split(':').collect();
    let id = |i: usize| fields.get(i).and_then(|v| v.parse().ok());
    Some((id(2).expect("postgres uid"), id(3).expect("postgres gid")))
}
