//! The weather app's cache: one `redis-server` per side, as each cluster runs its
//! own. Each listens on a free loopback port with a password (given in a config
//! file readable by its owner only, so it is never on a command line), keeps
//! nothing on disk, and is killed with the rehearsal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cutover_controller::Side;
use cutover_controller::cache::{Cmd, Conn, RedisUrl};

use super::procs::Proc;
use super::{RehearseError, io};

/// How long a server may take to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A running `redis-server`.
#[derive(Debug)]
pub struct Redis {
    /// `old` or `new`.
    pub side: &'static str,
    pub port: u16,
    password: String,
    pub proc: Proc,
}

impl Redis {
    /// `redis://:PASSWORD@127.0.0.1:PORT`.
    pub fn url(&self) -> RedisUrl {
        RedisUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: self.port,
            user: None,
            password: Some(self.password.clone()),
            db: 0,
            ca: None,
        }
    }

    /// [`Redis::url`] as text, password included (for the private plan file).
    pub fn url_with_password(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}", self.password, self.port)
    }

    /// A connection, logged in.
    pub async fn conn(&self) -> Result<Conn, RehearseError> {
        Conn::connect(&self.url(), Side::Source)
            .await
            .map_err(|e| RehearseError::Step(format!("the {} Redis: {e}", self.side)))
    }
}

/// `redis-server` from `$REDIS_SERVER` or `PATH`.
pub fn server_program() -> Result<PathBuf, RehearseError> {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("redis-server"))
                .find(|f| f.is_file())
        })
        .ok_or_else(|| {
            RehearseError::Step(
                "the weather app's cache needs redis-server on PATH (or $REDIS_SERVER): \
                 apt-get install redis-server, or scripts/install-deps.sh"
                    .into(),
            )
        })
}

/// Starts side `side`'s Redis in `dir` (its config and log go there) with
/// `password`, and waits until it answers `PING`.
pub async fn start(side: &'static str, dir: &Path, password: &str) -> Result<Redis, RehearseError> {
    let bin = server_program()?;
    let config = dir.join(format!("redis-{side}.conf"));
    let log = dir.join(format!("redis-{side}.log"));
    let mut last = String::new();
    // A port found free may be taken before the server binds it: a few tries.
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("find a free port for Redis"))?
            .port();
        super::run::write_private(
            &config,
            &format!(
                "# cutover rehearse: the {side} side's cache\n\
                 bind 127.0.0.1\nport {port}\nrequirepass {password}\n\
                 save \"\"\nappendonly no\ndir {}\n",
                dir.display()
            ),
        )?;
        let mut cmd = Command::new(&bin);
        cmd.arg(&config);
        let proc = Proc::spawn("redis-server", cmd, &log)
            .map_err(io(format!("start {}", bin.display())))?;
        let mut redis = Redis {
            side,
            port,
            password: password.to_string(),
            proc,
        };
        match wait_ready(&mut redis).await {
            Ok(()) => return Ok(redis),
            Err(e) => last = e,
        }
    }
    Err(RehearseError::Step(format!(
        "the {side} Redis did not start: {last}"
    )))
}

async fn wait_ready(redis: &mut Redis) -> Result<(), String> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some(status) = redis.proc.exited() {
            return Err(format!(
                "redis-server exited ({status}): {}",
                redis.proc.output()
            ));
        }
        if let Ok(mut conn) = Conn::connect(&redis.url(), Side::Source).await
            && conn.ok(Cmd::new("PING")).await.is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("no PONG within {READY_WITHIN:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
