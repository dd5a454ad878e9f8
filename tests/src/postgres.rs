//! Real PostgreSQL clusters for the database tests: `initdb` and `pg_ctl` in a temp
//! dir, on a free loopback port, with `wal_level = logical`, stopped (immediate
//! mode) on drop. As root, the server programs run as the `postgres` user, since
//! `initdb` refuses root.
//!
//! Passwords are deliberately distinctive strings, so tests can assert that none of
//! them ever shows in any output.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::{Client, NoTls};

/// The superuser's password in every cluster.
pub const SUPERUSER_PASSWORD: &str = "su-pw-Zq81xR";

/// The directory of the server programs: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server packages are installed (/usr/lib/postgresql); see controller/README-db.md")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .expect("no /usr/lib/postgresql/*/bin/initdb found")
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

fn run(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// A running cluster; stopped on drop.
pub struct Postgres {
    pub name: String,
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    stopped: AtomicBool,
}

impl Postgres {
    /// Creates and starts a cluster called `name` (for messages only).
    pub fn start(name: &str) -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix(&format!("cutover-pg-{name}-"))
            .tempdir()
            .expect("temp dir");
        if running_as_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(st.success(), "chown the cluster dir to postgres");
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write the password file");
        if running_as_root() {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pwfile)
                .status();
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
        let out = run(initdb, "initdb");
        assert!(
            out.status.success(),
            "initdb for {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).expect("socket dir");
        if running_as_root() {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&socket_dir)
                .status();
        }
        let mut pg = Postgres {
            name: name.to_string(),
            port: 0,
            dir,
            bin,
            stopped: AtomicBool::new(true),
        };
        // Another test may take the port between the probe and the bind: retry.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let conf = format!(
                "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
                 wal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
                 max_logical_replication_workers = 8\nmax_worker_processes = 16\n\
                 max_connections = 100\nshared_buffers = 32MB\nfsync = off\nfull_page_writes = off\n\
                 wal_writer_delay = 10ms\n",
                socket_dir.display()
            );
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .expect("open postgresql.conf");
            std::io::Write::write_all(&mut f, conf.as_bytes()).expect("write postgresql.conf");
            let mut start = server_command(&pg.bin.join("pg_ctl"));
            start
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.dir.path().join("log"))
                .args(["-w", "-t", "60", "start"]);
            let out = run(start, "pg_ctl start");
            if out.status.success() {
                pg.port = port;
                pg.stopped.store(false, Ordering::SeqCst);
                return pg;
            }
            last = format!("{}\n{}", String::from_utf8_lossy(&out.stderr), pg.log());
        }
        panic!("cluster {name} did not start: {last}");
    }

    /// Starts two clusters, `old` and `new`, at the same time.
    pub fn start_pair() -> (Postgres, Postgres) {
        std::thread::scope(|s| {
            let old = s.spawn(|| Postgres::start("old"));
            let new = s.spawn(|| Postgres::start("new"));
            (
                old.join().expect("start old"),
                new.join().expect("start new"),
            )
        })
    }

    /// A DSN for the superuser on database `db`, password included.
    pub fn dsn(&self, db: &str) -> String {
        self.dsn_as("postgres", SUPERUSER_PASSWORD, db)
    }

    pub fn dsn_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} connect_timeout=5",
            self.port
        )
    }

    /// A superuser connection to `db`.
    pub async fn connect(&self, db: &str) -> Client {
        self.connect_as("postgres", SUPERUSER_PASSWORD, db)
            .await
            .unwrap_or_else(|e| panic!("connect to {} {db}: {e}", self.name))
    }

    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.dsn_as(user, password, db), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs SQL as the superuser on `db`.
    pub async fn sql(&self, db: &str, sql: &str) {
        self.connect(db)
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{} {db}: {sql}: {e:?}", self.name));
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    /// Blocking; safe to call twice.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut stop = server_command(&self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = run(stop, "pg_ctl stop");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
