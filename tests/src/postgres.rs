//! Real PostgreSQL clusters for the database tests: a thin wrapper over the
//! rehearsal's [`cutover_rehearse::cluster::Cluster`] (`initdb` and
//! `pg_ctl` in a temp dir, a free loopback port, `wal_level = logical`, stopped in
//! immediate mode on drop, run as `postgres` when the tests run as root) that
//! panics with the cluster's message instead of returning it, as a test wants.
//!
//! Passwords are deliberately distinctive strings, so tests can assert that none of
//! them ever shows in any output.

use std::path::PathBuf;

use cutover_rehearse::cluster::{self, Cluster};
use tokio_postgres::Client;

/// The superuser's password in every cluster.
pub const SUPERUSER_PASSWORD: &str = "su-pw-Zq81xR";

/// The directory of the server programs: `$PG_BIN`, else `initdb` on `PATH`, else
/// the newest `/usr/lib/postgresql/*/bin`.
pub fn pg_bin() -> PathBuf {
    cluster::server_programs().unwrap_or_else(|e| panic!("{e}"))
}

/// A running cluster; stopped on drop.
pub struct Postgres {
    pub name: String,
    pub port: u16,
    inner: Cluster,
}

impl Postgres {
    /// Creates and starts a cluster called `name` (for messages only).
    pub fn start(name: &str) -> Postgres {
        let inner = Cluster::start(name, SUPERUSER_PASSWORD)
            .unwrap_or_else(|e| panic!("cluster {name} did not start: {e}"));
        Postgres {
            name: name.to_string(),
            port: inner.port(),
            inner,
        }
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
        self.inner.dsn(db)
    }

    pub fn dsn_as(&self, user: &str, password: &str, db: &str) -> String {
        self.inner.dsn_as(user, password, db)
    }

    /// A superuser connection to `db`.
    pub async fn connect(&self, db: &str) -> Client {
        self.inner
            .connect(db)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        self.inner.connect_as(user, password, db).await
    }

    /// Runs SQL as the superuser on `db`.
    pub async fn sql(&self, db: &str, sql: &str) {
        self.inner
            .sql(db, sql)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
    }

    /// Writes `name` into the data directory, owned by the server's OS user and
    /// readable by it alone (as the server wants its key, and libpq a passfile);
    /// returns its path.
    pub fn private_file(&self, name: &str, text: &str) -> PathBuf {
        self.inner
            .private_file(name, text)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Turns TLS on with `cert_pem`/`key_pem` as `server.crt`/`server.key` and
    /// `ca_pem` as the CA of client certificates (`root.crt`), and rewrites
    /// `pg_hba.conf` so that TCP connections must use TLS (`hostssl`;
    /// `hostnossl … reject`) and role `certuser` must log in with a client
    /// certificate whose CN is its name (`cert`), then reloads. The unix socket stays open (trust), but
    /// this harness's own [`Postgres::connect`] uses TCP without TLS: do the setup
    /// that needs it first. Returns once a plain connection is refused.
    pub async fn enable_tls(&self, cert_pem: &str, key_pem: &str, ca_pem: &str) {
        let data = self.inner.data_dir();
        for (file, text) in [
            ("server.crt", cert_pem),
            ("server.key", key_pem),
            ("root.crt", ca_pem),
        ] {
            self.private_file(file, text);
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
              ssl_ca_file = 'root.crt'\n",
        )
        .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all 127.0.0.1/32 reject\n\
             hostnossl all all ::1/128 reject\n",
        )
        .unwrap();
        self.sql("postgres", "SELECT pg_reload_conf()").await;
        crate::eventually(
            std::time::Duration::from_secs(10),
            "the server to refuse plain TCP",
            || async {
                let plain = self.connect_as("postgres", SUPERUSER_PASSWORD, "postgres");
                plain.await.is_err().then_some(())
            },
        )
        .await;
    }

    /// Appends `conf` to `postgresql.conf` and restarts the server (`pg_ctl restart
    /// -m fast`), for settings only a restart applies, such as `wal_level`, and for
    /// custom settings (`ALTER SYSTEM` refuses those before PostgreSQL 17).
    /// Blocking; the port stays the same.
    pub fn restart_with(&self, conf: &str) {
        use std::os::unix::fs::MetadataExt;
        let data = self.inner.data_dir();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut file, format!("\n{conf}\n").as_bytes())
            .expect("write postgresql.conf");
        let pg_ctl = self.inner.bin().join("pg_ctl");
        // As the cluster's owner, as the cluster module runs it.
        let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let mut cmd = if as_root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        // `-l`, or the new server would write to (and hold open) this command's output.
        let out = cmd
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.inner.dir().join("log"))
            .args(["-w", "-t", "60", "-m", "fast", "restart"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run pg_ctl restart");
        assert!(
            out.status.success(),
            "cluster {}: pg_ctl restart failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    /// Blocking; safe to call twice.
    pub fn stop(&self) {
        self.inner.stop();
    }
}

/// The application role's password on both clusters of a [`Pair`].
pub const APP_PASSWORD: &str = "app-pw-Kd93vT";

/// Two clusters, each with role `app` and database `app`; the demo app's schema on
/// `old` only (sync copies it).
pub struct Pair {
    pub old: Postgres,
    pub new: Postgres,
}

impl Pair {
    pub async fn start() -> Pair {
        Pair::start_seeded(0).await
    }

    /// Like [`Pair::start`], with `rows` items already on `old`.
    pub async fn start_seeded(rows: u32) -> Pair {
        let (old, new) = tokio::task::spawn_blocking(Postgres::start_pair)
            .await
            .expect("start the clusters");
        for pg in [&old, &new] {
            pg.sql(
                "postgres",
                &format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"),
            )
            .await;
            pg.sql("postgres", "CREATE DATABASE app").await;
        }
        old.sql("app", crate::APP_SCHEMA).await;
        if rows > 0 {
            old.sql(
                "app",
                &format!(
                    "INSERT INTO items (body) SELECT 'seed ' || g FROM generate_series(1, {rows}) g"
                ),
            )
            .await;
        }
        Pair { old, new }
    }

    /// The application's DSN on `pg` (role `app`).
    pub fn app_dsn(pg: &Postgres) -> String {
        pg.dsn_as("app", APP_PASSWORD, "app")
    }

    /// Asserts that the application (role `app`) cannot write to `items` on `pg`:
    /// the database refuses with a read-only error.
    pub async fn assert_app_read_only(pg: &Postgres) {
        let app = pg.connect_as("app", APP_PASSWORD, "app").await.unwrap();
        let err = app
            .execute("INSERT INTO items (body) VALUES ('refused')", &[])
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            "{err:?}"
        );
    }

    /// `CUTOVER_SOURCE`/`CUTOVER_TARGET` for the superuser on database `app`.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_prefixed("CUTOVER")
    }

    /// `{prefix}_SOURCE` and `{prefix}_TARGET`, e.g. for a plan's `source_env`.
    pub fn env_prefixed(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            (format!("{prefix}_SOURCE"), self.old.dsn("app")),
            (format!("{prefix}_TARGET"), self.new.dsn("app")),
        ]
    }

    /// Connected library handles on both sides.
    pub async fn dbs(&self) -> (cutover_controller::Db, cutover_controller::Db) {
        use cutover_controller::{Db, Dsn, Side};
        let s = Dsn::parse(Side::Source, &self.old.dsn("app")).expect("source DSN");
        let t = Dsn::parse(Side::Target, &self.new.dsn("app")).expect("target DSN");
        Db::connect_pair(&s, &t).await.expect("connect both sides")
    }
}
